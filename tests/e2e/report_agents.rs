//! A relay tells the hub of its agents by what changed (attached, changed,
//! a later heartbeat, gone), not by its whole list in every full report:
//! the whole list of 100 000 agents would pass the hub's 16 MiB body limit.
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::hub::hub_metric;
use crate::report_heads::idle_agents;

const N: usize = 2_500;

/// The hub's count of agents on relay-a, of agents the reports named as
/// attached or changed (or in a whole list), and of later heartbeats.
async fn listed(fleet: &Fleet) -> (f64, f64, f64) {
    let held = hub_metric(fleet, "tether_hub_relay_agents", &["relay=\"relay-a\""]).await;
    let seen = hub_metric(fleet, "tether_hub_report_agents_total", &["change=\"seen\""]).await;
    let whole = hub_metric(fleet, "tether_hub_report_agents_total", &["change=\"whole\""]).await;
    let heard = hub_metric(fleet, "tether_hub_report_agents_total", &["change=\"heard\""]).await;
    (held, seen + whole, heard)
}

/// Waits (up to 10 s) until the hub's count of agents named as attached or
/// changed holds still for a second (each agent's first heartbeat brings
/// its clock, news that may come a report after its attach); that count.
async fn settled(fleet: &Fleet) -> f64 {
    let mut last = listed(fleet).await.1;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = listed(fleet).await.1;
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the agents named as changed never settled\n{}", fleet.logs());
}

/// Waits up to `secs` for the hub to hold `want` agents on relay-a; how long it took.
async fn until_held(fleet: &Fleet, want: f64, secs: u64) -> Duration {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        if listed(fleet).await.0 == want {
            return t.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the hub never held {want} agents on relay-a (it holds {})\n{}", listed(fleet).await.0, fleet.logs());
}

/// 2 500 agents (`tether loadgen idle`, each attaching as a real agent
/// does) on one relay: the hub holds them all; for a full-report period
/// with none changing, no report names any of them again; a hub restarted
/// asks for the list and holds it whole again within seconds; as they
/// leave, each is reported gone and the hub holds none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_holds_a_relays_agents_from_what_changed_and_asks_again_after_a_restart() {
    let mut fleet =
        Fleet::start(Opts { relays: 1, hub: true, agent: false, heartbeat_secs: 4, ..Opts::default() }).await;
    let load = idle_agents(&fleet, N, 35);
    until_held(&fleet, N as f64, 60).await;

    // A full report goes every 10 s: none names an agent again; their
    // heartbeats (every 4 s here) go as heartbeats alone.
    let before = settled(&fleet).await;
    let heard_before = listed(&fleet).await.2;
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (held, after, heard) = listed(&fleet).await;
    assert_eq!(held, N as f64);
    assert_eq!(after, before, "reports named unchanged agents again");
    assert!(heard - heard_before >= N as f64, "heartbeats that never reached the hub: {}", heard - heard_before);

    // A restarted hub holds nothing: it asks, and the relay sends its list.
    fleet.restart_hub();
    let took = until_held(&fleet, N as f64, 15).await;
    let resyncs = hub_metric(&fleet, "tether_hub_agent_list_resyncs_total", &["relay=\"relay-a\""]).await;
    assert!(resyncs >= 1.0, "the restarted hub holds the list without asking for it");
    assert_eq!(listed(&fleet).await.1, N as f64, "the list came with more or fewer agents than attached");
    eprintln!("the restarted hub held all {N} agents after {took:?}");

    let (ok, out, err) = load.await.unwrap();
    assert!(ok, "loadgen failed: {out}{err}");
    until_held(&fleet, 0.0, 30).await;
    let gone = hub_metric(&fleet, "tether_hub_report_agents_total", &["change=\"gone\""]).await;
    assert_eq!(gone, N as f64, "agents that left and were not reported gone, or reported twice");
}
