//! The device certificate that travels with an agent's audit head: whole
//! until the hub kept it, then by its SHA-256 (64 bytes, not 1.3 KiB); a
//! restarted hub, which keeps none, asks for it, and anchors on. A name the
//! hub does not keep is asked for, never refused; a head named by a kept
//! certificate is checked as one that came whole.
use tether::api::{AgentHead, Anchor, Head, RelayReport, ReportAnswer};

use crate::audit_chain::anchored_seq;
use crate::harness::*;
use crate::hub::{add_user, hub_client, hub_fleet, hub_metric, login, token_of};

async fn came(fleet: &Fleet, how: &str) -> f64 {
    hub_metric(fleet, "tether_hub_head_certs_total", &[&format!("came=\"{how}\"")]).await
}

/// Records in the agent's chain (a session) until the hub anchors its head,
/// and until the hub has counted `how` at least `at_least` times.
async fn session_anchored(fleet: &Fleet, token: &str, (how, at_least): (&str, f64)) -> u64 {
    let s = fleet.session("echo").await;
    drop(within(30, s.connect()).await.unwrap());
    s.close();
    let head = || fleet.agent_audit().last().map_or(0, |r| r["seq"].as_u64().unwrap());
    for _ in 0..600 {
        if head() > 0 && anchored_seq(fleet, token).await == head() && came(fleet, how).await >= at_least {
            return head();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!(
        "the agent's head {} was not anchored ({}) with {how} >= {at_least} ({})\n{}",
        head(),
        anchored_seq(fleet, token).await,
        came(fleet, how).await,
        fleet.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_device_certificate_goes_by_its_name_and_a_restarted_hub_asks_for_it() {
    let mut fleet = hub_fleet("").await;
    let boss = add_user(&fleet, "boss", "admin", &[]).await;
    let token = token_of(&login(&fleet, "boss", &boss).await);
    // The first heads carry the certificate whole; once the hub has answered,
    // the relays name it (young heads go again in full reports, every 10 s).
    let first = session_anchored(&fleet, &token, ("by_sha", 1.0)).await;
    assert!(came(&fleet, "whole").await >= 1.0);
    let by_name = came(&fleet, "by_sha").await;
    // A head that moved goes by name too, and is anchored with the kept one.
    let second = session_anchored(&fleet, &token, ("by_sha", by_name + 1.0)).await;
    assert!(second > first, "the chain did not move: {first} -> {second}");
    assert_eq!(came(&fleet, "wanted").await, 0.0, "a hub that keeps certificates asked for one");

    // A restarted hub keeps none: it asks, the relays send the certificate
    // whole with the head again, and the chain is anchored on.
    fleet.restart_hub();
    eventually("the hub is back", async || hub_client(&fleet).text("/metrics", None).await.is_ok()).await;
    let third = session_anchored(&fleet, &token, ("whole", 1.0)).await;
    assert!(third > second, "the chain did not move: {second} -> {third}");
    assert!(came(&fleet, "wanted").await >= 1.0, "the restarted hub never asked for a certificate");
    let refused = hub_metric(&fleet, "tether_hub_anchor_refusals_total", &[]).await;
    assert_eq!(refused, 0.0, "a head was refused\n{}", fleet.logs());
}

/// Sent straight to the hub as a relay: a name the hub does not keep is
/// asked for (the answer says which device), not refused; a head signed by
/// the relay, naming the device's kept certificate, is refused as forged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_certificate_name_is_asked_for_and_a_kept_one_is_checked() {
    let fleet = hub_fleet("").await;
    let boss = add_user(&fleet, "boss", "admin", &[]).await;
    let token = token_of(&login(&fleet, "boss", &boss).await);
    session_anchored(&fleet, &token, ("whole", 1.0)).await;
    let (c, k) = (fleet.pki.path("relay-a.pem"), fleet.pki.path("relay-a.key"));
    let as_relay = tether::api::HubClient::new(
        &fleet.hub.as_ref().unwrap().url(),
        &fleet.pki.path("ca.pem"),
        Some((&c, &k)),
        None,
    )
    .unwrap();
    let der = tether::tls::load_certs(&fleet.pki.path(&format!("{DEVICE}.pem"))).unwrap()[0].as_ref().to_vec();
    let relay_key = tether::audit::Signer::load(&fleet.pki.path("relay-a.key")).unwrap();
    let hash = "cd".repeat(32);
    let head = Head { seq: anchored_seq(&fleet, &token).await + 50, hash: hash.clone(), sig: relay_key.sign(&hash) };
    let by_name = |sha: String| RelayReport {
        ready: true,
        agent_heads: vec![AgentHead { device: DEVICE.into(), head: head.clone(), cert: String::new(), cert_sha: sha }],
        ..Default::default()
    };
    let refused = async || hub_metric(&fleet, "tether_hub_anchor_refusals_total", &[]).await;

    let answer: ReportAnswer = as_relay.post("/api/v1/relay/report", None, &by_name("00".repeat(32))).await.unwrap();
    assert!(answer.certs_kept);
    assert_eq!(answer.certs_wanted, vec![DEVICE.to_string()]);
    assert_eq!(refused().await, 0.0, "an unknown name was refused");

    let answer: ReportAnswer =
        as_relay.post("/api/v1/relay/report", None, &by_name(tether::api::cert_sha(&der))).await.unwrap();
    assert!(answer.certs_wanted.is_empty(), "{answer:?}");
    let forged = hub_metric(&fleet, "tether_hub_anchor_refusals_total", &["reason=\"bad_signature\""]).await;
    assert_eq!(forged, 1.0, "a head signed by the relay, named by the kept certificate, was not refused");
    let anchored: Vec<Anchor> =
        hub_client(&fleet).get(&format!("/api/v1/audit/anchors/agent:{DEVICE}"), Some(&token)).await.unwrap();
    assert!(anchored.iter().all(|a| a.hash != hash), "the forged head was anchored");
}
