//! Uploads from the device, with real processes: `upload SET` jobs send a
//! file set from the agent's allow-list through its relay to the hub, on
//! through the twin when that relay dies, and `tether uploads get` brings
//! the files back byte for byte. The hub keeps an upload only whole and
//! matching its SHA-256; every refusal is named and audited.
use hyper::Method;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::harness::*;
use crate::hub::{add_user, hub_audit, login, run, token_of};
use crate::jobs::{add_job, as_relay, jobs_fleet, jobs_fleet_with, wait_final};

async fn uploads_get(p: &str, id: &str, out: &std::path::Path) -> (bool, String, String) {
    run(&["uploads", "get", "--profile", p, id, "--out", out.to_str().unwrap()], "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_goes_on_through_the_twin_and_arrives_byte_for_byte() {
    // 8 MiB/s: the 16 MiB upload takes about 2 s, time to kill its relay.
    let opts = Opts { relays: 2, twins: true, hub: true, repo: true, download_rate: 8 << 20, ..Opts::default() };
    let (mut fleet, p) = jobs_fleet_with(opts).await;
    let logs = fleet.dir().join("device-logs");
    std::fs::create_dir_all(logs.join("old")).unwrap();
    let big = random(16 << 20);
    std::fs::write(logs.join("big.log"), &big).unwrap();
    std::fs::write(logs.join("old/boot.log"), "booted\n").unwrap();

    let id = add_job(&p, &["upload", "logs"]).await;
    eventually("relay-a forwarded a quarter of the upload", async || {
        fleet.metric(0, "tether_relay_upload_bytes_total", &[]).await >= (4 << 20) as f64
    })
    .await;
    fleet.relays[0].proc.kill();
    let job = wait_final(&fleet, &p, &id).await;
    assert_eq!(job["state"], "SUCCEEDED", "{job}\n{}", fleet.logs());
    let sha = hex::encode(Sha256::digest(std::fs::read(fleet.dir().join(format!("uploads/{id}.tar"))).unwrap()));
    assert!(job["reason"].as_str().unwrap().contains(&format!("sha256:{sha}")), "{job}");
    assert!(fleet.metric(1, "tether_relay_upload_bytes_total", &[]).await > 0.0, "relay-b carried the rest");
    let audit = fleet.agent_audit();
    let sent = audit.iter().find(|r| r["event"] == "upload_sent" && r["job"] == id.as_str()).expect("audited");
    let (total, sent) = (sent["bytes"].as_u64().unwrap(), sent["sent"].as_u64().unwrap());
    eprintln!("upload through a relay failover: {sent} bytes sent for a {total} byte archive");
    assert!(sent < total * 12 / 10, "went on from the hub's count, not from zero: {sent} of {total}");
    let left: Vec<_> = std::fs::read_dir(fleet.dir().join("agent-state/uploads")).unwrap().flatten().collect();
    assert!(left.is_empty(), "the device keeps no archive once the hub has it: {left:?}");

    // `jobs show` says where the archive is and how to get it.
    let (ok, shown, err) = crate::jobs::jobs_cli(&["show", "--profile", &p, &id]).await;
    assert!(ok && shown.contains(&format!("archive:  at the hub: tether uploads get {id} --out DIR")), "{shown} {err}");
    let out = fleet.dir().join("fetched");
    let (ok, said, err) = uploads_get(&p, &id, &out).await;
    assert!(ok, "{err}");
    assert!(said.contains("2 files") && said.contains(&sha), "{said}");
    assert!(std::fs::read(out.join("device-logs/big.log")).unwrap() == big, "byte-identical");
    assert_eq!(std::fs::read_to_string(out.join("device-logs/old/boot.log")).unwrap(), "booted\n");
    let token = token_of(std::path::Path::new(&p));
    let hub = hub_audit(&fleet, &token).await;
    assert!(hub.iter().any(|r| r["event"] == "upload_stored" && r["job"] == id.as_str() && r["sha256"] == sha));
    assert!(hub.iter().any(|r| r["event"] == "upload_fetched" && r["job"] == id.as_str() && r["by"] == "boss"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_refusals_are_named_audited_and_send_nothing() {
    let (fleet, p) = jobs_fleet(true).await;
    std::fs::create_dir_all(fleet.dir().join("device-logs")).unwrap();
    std::fs::write(fleet.dir().join("device-logs/big.log"), random(5000)).unwrap();
    std::fs::create_dir_all(fleet.dir().join("bulk")).unwrap();
    std::fs::write(fleet.dir().join("bulk/huge.bin"), random(33 << 20)).unwrap();

    // A set the device does not list: the hub names a set, never a path.
    let job = wait_final(&fleet, &p, &add_job(&p, &["upload", "secrets"]).await).await;
    assert_eq!(job["state"], "REJECTED", "{job}");
    assert!(job["reason"].as_str().unwrap().contains("not on this device's allow-list"), "{job}");
    // Over the set's own cap on the device: refused before a byte is sent.
    let job = wait_final(&fleet, &p, &add_job(&p, &["upload", "tiny"]).await).await;
    assert_eq!(job["state"], "FAILED", "{job}");
    let reason = job["reason"].as_str().unwrap();
    assert!(reason.contains("upload_too_large") && reason.contains("over its cap of 1000"), "{reason}");
    assert_eq!(fleet.metric(0, "tether_relay_upload_bytes_total", &[]).await, 0.0, "nothing was sent");
    // Over the hub's cap: the hub refuses when asked, before the bytes.
    let id = add_job(&p, &["upload", "bulk"]).await;
    let job = wait_final(&fleet, &p, &id).await;
    assert_eq!(job["state"], "FAILED", "{job}");
    assert!(job["reason"].as_str().unwrap().contains("this hub takes at most 33554432"), "{job}");
    assert_eq!(fleet.metric(0, "tether_relay_upload_bytes_total", &[]).await, 0.0, "nothing was sent");
    assert!(!fleet.dir().join(format!("agent-state/uploads/{id}.tar")).exists(), "the archive is not kept");

    // Nothing to fetch for a job that stored no upload; a stranger may not.
    let (ok, _, err) = uploads_get(&p, &id, &fleet.dir().join("out")).await;
    assert!(!ok && err.contains("has no complete upload"), "{err}");
    let stranger = add_user(&fleet, "stranger", "admin", &[]).await;
    let sp = login(&fleet, "stranger", &stranger).await;
    let (ok, _, err) = uploads_get(sp.to_str().unwrap(), &id, &fleet.dir().join("out")).await;
    assert!(!ok && err.contains("not entitled"), "{err}");
    let token = token_of(std::path::Path::new(&p));
    let hub = hub_audit(&fleet, &token).await;
    assert!(audited(&hub, "upload_refused", "upload_too_large"), "the hub audits its refusal");
    assert!(audited(&hub, "job_refused", "not_entitled"), "and the stranger");
    let agent = fleet.agent_audit();
    assert!(agent.iter().any(|r| r["event"] == "job_ended" && r["state"] == "REJECTED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_keeps_an_upload_only_whole_and_matching_its_hash() {
    let (fleet, p) = jobs_fleet(false).await;
    let relay = as_relay(&fleet);
    let id = add_job(&p, &["upload", "logs"]).await;
    let put = async |offset: u64, total: u64, sha: &str, data: Vec<u8>| {
        let path = format!("/api/v1/device/{DEVICE}/uploads/{id}?offset={offset}&total={total}&sha256={sha}");
        let (status, body) = relay.call(Method::POST, &path, None, Some(data.into())).await.unwrap();
        (status.as_u16(), serde_json::from_slice::<Value>(&body).unwrap())
    };
    let data = random(300_000);
    let sha = hex::encode(Sha256::digest(&data));
    let total = data.len() as u64;
    // Not running yet: the hub takes no bytes for a queued job.
    let (status, body) = put(0, total, &sha, vec![]).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("job_not_running")), "{body}");
    let report = async |state: &str| {
        let body = serde_json::to_vec(&serde_json::json!({"state": state})).unwrap();
        let path = format!("/api/v1/device/{DEVICE}/jobs/{id}");
        let (status, body) = relay.call(Method::POST, &path, None, Some(body.into())).await.unwrap();
        (status.as_u16(), serde_json::from_slice::<Value>(&body).unwrap())
    };
    assert_eq!(report("IN_PROGRESS").await.0, 200);
    assert_eq!(put(0, total, &sha, data[..100_000].to_vec()).await.1["received"], 100_000);
    // A range past what arrived is a gap; a resend from earlier overwrites.
    let (status, body) = put(150_000, total, &sha, data[150_000..].to_vec()).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("upload_gap")), "{body}");
    assert_eq!(put(50_000, total, &sha, data[50_000..200_000].to_vec()).await.1["received"], 200_000);
    // Done is only done when the hub has every byte.
    let (status, body) = report("SUCCEEDED").await;
    assert_eq!((status, body["error"].as_str()), (409, Some("upload_incomplete")), "{body}");
    // The last bytes altered: the whole upload is refused and discarded.
    let mut bad = data[200_000..].to_vec();
    bad[0] ^= 1;
    let (status, body) = put(200_000, total, &sha, bad).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("upload_corrupt")), "{body}");
    assert_eq!(put(0, total, &sha, vec![]).await.1["received"], 0, "nothing kept of a corrupt upload");
    assert_eq!(put(0, total, &sha, data.clone()).await.1["complete"], true);
    assert_eq!(report("SUCCEEDED").await.0, 200);
    let out = fleet.dir().join("uploads").join(format!("{id}.tar"));
    assert!(std::fs::read(out).unwrap() == data);
    let token = token_of(std::path::Path::new(&p));
    let hub = hub_audit(&fleet, &token).await;
    for code in ["upload_corrupt", "upload_gap", "job_not_running"] {
        assert!(audited(&hub, "upload_refused", code), "{code} audited");
    }
    assert!(audited(&hub, "job_report_refused", "upload_incomplete"));
    assert!(hub.iter().any(|r| r["event"] == "upload_stored" && r["job"] == id.as_str()));
}
