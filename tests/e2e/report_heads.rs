//! A relay passes every agent's audit head to the hub, however many agents
//! it holds: a report carries at most a batch of heads (the hub takes
//! reports of at most 16 MiB, and each head travels with its device's
//! certificate), those the hub has not taken first, and the next reports
//! carry the rest.
use std::time::Duration;

use crate::harness::*;
use crate::hub::run;

/// 2 500 agents (`tether loadgen idle`: each attaches as a real agent does,
/// hello and then its signed audit head) on one relay, more heads than one
/// report carries (2 000): the hub anchors every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_agents_head_reaches_the_hub_though_one_report_carries_at_most_a_batch() {
    const N: usize = 2_500;
    let fleet = Fleet::start(Opts { relays: 1, hub: true, ..Opts::default() }).await;
    let load = idle_agents(&fleet, N, 25);
    let store = tether::hub::store::Store::open("sqlite:hub.db", fleet.dir()).await.unwrap();
    let mut anchored = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        anchored = 0;
        for i in 0..N {
            if store.anchor(&format!("agent:load-{i:06}")).await.unwrap().is_some_and(|a| a.0 == 1) {
                anchored += 1;
            }
        }
        if anchored == N {
            break;
        }
    }
    let (ok, out, err) = load.await.unwrap();
    assert!(ok, "loadgen failed: {out}{err}");
    assert_eq!(anchored, N, "heads the hub never anchored\n{}", fleet.logs());
}

/// `tether loadgen idle`: `n` agents attach to the fleet's first relay as
/// real ones do (hello, then a signed audit head) and hold for `hold_secs`.
pub fn idle_agents(fleet: &Fleet, n: usize, hold_secs: u64) -> tokio::task::JoinHandle<(bool, String, String)> {
    let r = &fleet.relays[0];
    let pki = fleet.pki.dir.to_str().unwrap().to_string();
    let args = [
        "loadgen".to_string(),
        "idle".into(),
        "--pki".into(),
        pki,
        "--control".into(),
        r.control.to_string(),
        "--admin".into(),
        r.admin.to_string(),
        "--agents".into(),
        n.to_string(),
        "--hold-secs".into(),
        hold_secs.to_string(),
    ];
    tokio::spawn(async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args, "").await
    })
}
