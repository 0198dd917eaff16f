//! State that must survive a restart: used grants at the relay and the
//! agent, revocations at the hub.
use serde_json::json;
use tether::proto::{Frame, Reason};

use crate::harness::*;
use crate::hub::{add_user, hub_client, hub_fleet, login, run, token_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn used_grants_stay_used_across_restarts_of_relay_and_agent() {
    // One relay, no twin: nothing but its own file can remember the grant.
    let mut fleet = Fleet::start(Opts::default()).await;
    let once = fleet.grant(|_| {});
    assert!(matches!(fleet.open_raw(0, once.clone(), "echo").await, Frame::SessionReady { .. }));
    let used = std::fs::read_to_string(fleet.dir().join("relay-a-audit.used-grants")).unwrap();
    assert_eq!(used.lines().count(), 1, "the relay did not keep the used grant: {used:?}");

    // The relay restarts: the grant is still used.
    fleet.restart_relay(0);
    fleet.wait_metric(0, "tether_relay_agents_attached", 1.0).await;
    match fleet.open_raw(0, once.clone(), "echo").await {
        Frame::Error { reason, .. } => assert_eq!(reason, Reason::GrantReused),
        other => panic!("a grant used before the relay's restart was admitted again: {other:?}"),
    }

    // A relay that forgot (its file lost) and an agent that restarted: the
    // agent still refuses the grant on its own.
    std::fs::remove_file(fleet.dir().join("relay-a-audit.used-grants")).unwrap();
    fleet.agent.as_mut().unwrap().kill();
    fleet.agent = Some(start_agent(fleet.dir(), &fleet.agent_cfg));
    fleet.restart_relay(0);
    fleet.wait_metric(0, "tether_relay_agents_attached", 1.0).await;
    match fleet.open_raw(0, once, "echo").await {
        Frame::Error { reason, .. } => assert_eq!(reason, Reason::GrantReused),
        other => panic!("the restarted agent admitted a grant it had admitted before: {other:?}"),
    }
    assert!(audited(&fleet.agent_audit(), "access_refused", "grant_reused"), "the agent did not audit the replay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_keeps_revocations_across_a_restart() {
    let mut fleet = hub_fleet("").await;
    let alice = add_user(&fleet, "alice", "engineer", &["st-marys"]).await;
    let boss = add_user(&fleet, "boss", "admin", &[]).await;
    let alice_t = token_of(&login(&fleet, "alice", &alice).await);
    let boss_profile = login(&fleet, "boss", &boss).await;
    let body = json!({"device": DEVICE, "service": "echo", "reason": "INC-7", "client_key": "00ff"});
    let granted: serde_json::Value =
        hub_client(&fleet).post("/api/v1/sessions", Some(&alice_t), &body).await.expect("a grant");
    let id = granted["session"].as_str().expect("session id").to_string();
    let end = run(&["session", "end", &id, "--profile", boss_profile.to_str().unwrap()], "").await;
    assert!(end.0, "{end:?}");

    fleet.restart_hub();
    // What the restarted hub answers a relay's report: the revocation is there.
    let cert = (fleet.pki.path("relay-a.pem"), fleet.pki.path("relay-a.key"));
    let as_relay = tether::api::HubClient::new(
        &fleet.hub.as_ref().unwrap().url(),
        &fleet.pki.path("ca.pem"),
        Some((&cert.0, &cert.1)),
        None,
    )
    .unwrap();
    let answer: tether::api::ReportAnswer = as_relay
        .post("/api/v1/relay/report", None, &tether::api::RelayReport { ready: true, ..Default::default() })
        .await
        .unwrap();
    assert!(
        answer.revoked.iter().any(|r| r.session == id),
        "the restarted hub forgot the revocation of {id}: {answer:?}"
    );
}
