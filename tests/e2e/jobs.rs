//! The job queue at the hub, with real processes: `tether jobs add|list|cancel`
//! as an admin runs them, the device's view through its relay (relay
//! certificate only), the relays' long poll, state changes, and each refusal.
use hyper::Method;
use serde_json::Value;
use tether::api::HubClient;

use crate::harness::*;
use crate::hub::{add_user, hub_audit, hub_cli, hub_client, login, run, token_of};

/// A hub with a repository holding tool/1.0, DEVICE at st-marys, and an
/// admin entitled to st-marys; returns the fleet and the admin's profile.
pub async fn jobs_fleet(agent: bool) -> (Fleet, String) {
    let fleet = Fleet::start(Opts { relays: 1, hub: true, repo: true, agent, ..Opts::default() }).await;
    hub_cli(&fleet, &["device", "add", DEVICE, "--site", "st-marys", "--consent", "auto"], "").await;
    let secret = add_user(&fleet, "boss", "admin", &["st-marys"]).await;
    let profile = login(&fleet, "boss", &secret).await.to_str().unwrap().to_string();
    let file = fleet.dir().join("tool.bin");
    std::fs::write(&file, random(100_000)).unwrap();
    let key = fleet.dir().join("repo-keys/targets.pem");
    let (k, f) = (key.to_str().unwrap(), file.to_str().unwrap());
    let (ok, _, err) = run(&["repo", "publish", "--profile", &profile, "--targets-key", k, "tool", "1.0", f], "").await;
    assert!(ok, "{err}");
    (fleet, profile)
}

pub async fn jobs_cli(args: &[&str]) -> (bool, String, String) {
    run(&[&["jobs"], args].concat(), "").await
}

fn as_relay(fleet: &Fleet) -> HubClient {
    let cert = (fleet.pki.path("relay-a.pem"), fleet.pki.path("relay-a.key"));
    HubClient::new(&fleet.hub.as_ref().unwrap().url(), &fleet.pki.path("ca.pem"), Some((&cert.0, &cert.1)), None)
        .unwrap()
}

async fn report(relay: &HubClient, id: &str, state: &str) -> (u16, Value) {
    let body = serde_json::to_vec(&serde_json::json!({"state": state, "reason": "test"})).unwrap();
    let path = format!("/api/v1/device/{DEVICE}/jobs/{id}");
    let (status, body) = relay.call(Method::POST, &path, None, Some(body.into())).await.unwrap();
    (status.as_u16(), serde_json::from_slice(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_queued_listed_reported_and_cancelled_and_each_refusal_is_named() {
    let (fleet, p) = jobs_fleet(false).await;
    let relay = as_relay(&fleet);
    let (status, body) = relay.call(Method::GET, "/api/v1/relay/events?after=0&wait=0", None, None).await.unwrap();
    assert!(status.is_success());
    let start: Value = serde_json::from_slice(&body).unwrap();

    // The relay's long poll is answered as soon as a job is queued.
    let polling = {
        let relay = as_relay(&fleet);
        let after = start["last"].as_u64().unwrap();
        tokio::spawn(async move {
            let path = format!("/api/v1/relay/events?after={after}&wait=8");
            let t = std::time::Instant::now();
            let (_, body) = relay.call(Method::GET, &path, None, None).await.unwrap();
            (t.elapsed(), serde_json::from_slice::<Value>(&body).unwrap())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (ok, out, err) = jobs_cli(&["add", "--profile", &p, "--device", DEVICE, "--json", "install", "tool@1.0"]).await;
    assert!(ok, "{err}");
    let job: Value = serde_json::from_str(&out).unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["state"], "QUEUED");
    assert_eq!(job["kind"], "install");
    let (waited, events) = within(10, polling).await.unwrap();
    assert!(events["devices"].as_array().unwrap().iter().any(|d| d == DEVICE), "{events}");
    assert!(waited < std::time::Duration::from_secs(8), "answered before the poll's 8 s ran out: {waited:?}");

    // The device's view, through its relay only.
    let (status, body) = relay.call(Method::GET, &format!("/api/v1/device/{DEVICE}/jobs"), None, None).await.unwrap();
    assert!(status.is_success());
    let mine: Vec<Value> = serde_json::from_slice(&body).unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["id"], id.as_str());
    let token = token_of(std::path::Path::new(&p));
    let (status, body) = hub_client(&fleet)
        .call(Method::GET, &format!("/api/v1/device/{DEVICE}/jobs"), Some(&token), None)
        .await
        .unwrap();
    assert_eq!(status, 403, "an account is not a relay: {}", String::from_utf8_lossy(&body));

    // States move forward only; a repeated report changes nothing.
    assert_eq!(report(&relay, &id, "IN_PROGRESS").await.0, 200);
    assert_eq!(report(&relay, &id, "IN_PROGRESS").await.0, 200);
    let (status, body) = report(&relay, &id, "QUEUED").await;
    assert_eq!((status, body["error"].as_str()), (409, Some("bad_transition")));
    let (ok, out, _) = jobs_cli(&["list", "--profile", &p, "--device", DEVICE, "--json"]).await;
    assert!(ok);
    let listed: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(listed[0]["state"], "IN_PROGRESS");
    assert!(listed[0]["created_at"].as_i64().unwrap() > 0 && listed[0]["updated_at"].as_i64().is_some());

    // Cancelled while in progress: the device's next report learns it.
    let (ok, out, err) = jobs_cli(&["cancel", "--profile", &p, &id]).await;
    assert!(ok && out.contains("CANCELED"), "{out} {err}");
    let (status, body) = report(&relay, &id, "SUCCEEDED").await;
    assert_eq!((status, body["state"].as_str()), (409, Some("CANCELED")));
    let (ok, _, err) = jobs_cli(&["cancel", "--profile", &p, &id]).await;
    assert!(!ok && err.contains("already ended CANCELED"), "{err}");
    let (ok, out, _) = jobs_cli(&["list", "--profile", &p]).await;
    assert!(ok && out.contains(&id) && out.contains("CANCELED") && out.contains("canceled by boss"), "{out}");

    // Refusals: each named, and audited at the hub.
    let stranger = add_user(&fleet, "stranger", "admin", &[]).await;
    let sp = login(&fleet, "stranger", &stranger).await;
    let sp = sp.to_str().unwrap();
    let (ok, _, err) = jobs_cli(&["add", "--profile", sp, "--device", DEVICE, "install", "tool@1.0"]).await;
    assert!(!ok && err.contains("not entitled"), "an admin of another site: {err}");
    let eng = add_user(&fleet, "eng", "engineer", &["st-marys"]).await;
    let ep = login(&fleet, "eng", &eng).await;
    let (ok, _, err) = jobs_cli(&["add", "--profile", ep.to_str().unwrap(), "--device", DEVICE, "run", "disk"]).await;
    assert!(!ok && err.contains("needs the admin role"), "{err}");
    for (args, code) in [
        (vec!["install", "tool@9.9"], "the repository has no tool@9.9"),
        (vec!["install", "tool"], "an install names NAME@VERSION"),
        (vec!["upload", "../etc"], "a name of 1-64 letters"),
        (vec!["run", "x", "--timeout", "0"], "timeout_secs: 1 to"),
    ] {
        let all = [&["add", "--profile", &p, "--device", DEVICE][..], &args].concat();
        let (ok, _, err) = jobs_cli(&all).await;
        assert!(!ok && err.contains(code), "{args:?}: {err}");
    }
    let (ok, _, err) = jobs_cli(&["add", "--profile", &p, "--device", "ghost", "run", "disk"]).await;
    assert!(!ok && err.contains("not entitled"), "an unknown device looks like one not entitled to: {err}");
    let audit = hub_audit(&fleet, &token).await;
    for code in ["not_entitled", "unknown_target", "bad_target", "bad_timeout"] {
        assert!(audited(&audit, "job_refused", code), "job_refused {code} audited");
    }
    assert!(audit.iter().any(|r| r["event"] == "job_created" && r["job"] == id.as_str()));
    assert!(audit.iter().any(|r| r["event"] == "job_state" && r["to"] == "CANCELED"));
}
