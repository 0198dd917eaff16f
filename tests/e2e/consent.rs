//! On-site consent: nothing reaches the device's service before approval;
//! denial and timeout reach the specialist as named errors.
use std::process::Command;
use std::sync::atomic::Ordering;

use tether::agent::operator::{Request, request};
use tether::client::ClientSession;
use tether::proto::Reason;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::harness::*;

async fn consent_fleet(timeout_secs: u64) -> (Fleet, CountingService) {
    let svc = CountingService::start(CancellationToken::new()).await;
    let opts = Opts {
        consent: "required",
        consent_timeout_secs: timeout_secs,
        extra_services: vec![("svc".into(), svc.addr.to_string())],
        ..Opts::default()
    };
    (Fleet::start(opts).await, svc)
}

async fn pending_session(fleet: &Fleet) -> String {
    let mut id = String::new();
    eventually("the request is pending at the device", async || {
        let ans = request(&fleet.socket(), &Request::Pending).await.unwrap();
        match ans["pending"].as_array().and_then(|p| p.first()) {
            Some(p) => {
                id = p["session"].as_str().unwrap().to_string();
                true
            }
            None => false,
        }
    })
    .await;
    id
}

fn operator_cli(fleet: &Fleet, verb: &str, id: &str) -> std::process::Output {
    Command::new(BIN).args(["agent", "--config"]).arg(&fleet.agent_cfg).args([verb, id]).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_byte_reaches_the_service_before_approval() {
    let (fleet, svc) = consent_fleet(60).await;
    let profile = fleet.profile();
    let opening = tokio::spawn(async move { ClientSession::open(&profile, DEVICE, "svc").await });
    let id = pending_session(&fleet).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!opening.is_finished(), "the session was admitted without consent");
    assert_eq!(svc.conns.load(Ordering::SeqCst), 0, "the service was contacted before approval");

    let out = operator_cli(&fleet, "approve", &id);
    assert!(out.status.success(), "approve failed: {}", String::from_utf8_lossy(&out.stderr));
    let session = opening.await.unwrap().expect("admitted after approval");
    let mut t = within(30, session.connect()).await.unwrap();
    t.write_all(b"after approval").await.unwrap();
    t.flush().await.unwrap();
    eventually("bytes reach the service after approval", async || svc.bytes.load(Ordering::SeqCst) == 14).await;
    let audit = fleet.agent_audit();
    assert!(audit.iter().any(|r| r["event"] == "consent_requested" && r["session"] == id.as_str()));
    assert!(audit.iter().any(|r| r["event"] == "consent_given" && r["session"] == id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denial_gives_the_client_the_named_error() {
    let (fleet, svc) = consent_fleet(60).await;
    let profile = fleet.profile();
    let opening = tokio::spawn(async move { ClientSession::open(&profile, DEVICE, "svc").await });
    let id = pending_session(&fleet).await;
    assert!(operator_cli(&fleet, "deny", &id).status.success());
    let err = opening.await.unwrap().err().expect("denied");
    assert_eq!(err.reason(), Some(Reason::ConsentDenied), "{err}");
    assert_eq!(svc.conns.load(Ordering::SeqCst), 0);
    assert!(audited(&fleet.agent_audit(), "access_refused", "consent_denied"));
    assert!(audited(&fleet.relay_audit(0), "client_refused", "consent_denied"));
    assert_eq!(fleet.metric(0, "tether_relay_grant_refusals_total", &["consent_denied"]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_answering_times_out_with_its_reason() {
    let (fleet, _svc) = consent_fleet(1).await;
    let err = ClientSession::open(&fleet.profile(), DEVICE, "svc").await.err().expect("timed out");
    assert_eq!(err.reason(), Some(Reason::ConsentTimedOut), "{err}");
    assert!(audited(&fleet.agent_audit(), "access_refused", "consent_timed_out"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_ends_a_live_session() {
    let fleet = Fleet::start(Opts::default()).await;
    let session = fleet.session("echo").await;
    let _t = within(30, session.connect()).await.unwrap();
    let out = operator_cli(&fleet, "end", &session.id.to_string());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reason = tokio::time::timeout(std::time::Duration::from_secs(10), session.ended()).await.unwrap();
    assert_eq!(reason, Reason::EndedOnSite);
    assert!(audited(&fleet.relay_audit(0), "session_end", "ended_on_site"));
}
