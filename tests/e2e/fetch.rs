//! Software delivery through the outbound channel, with real processes: the
//! agent fetches metadata and artifacts through its relay (which forwards to
//! the hub), goes on through the twin when that relay dies midway, and
//! refuses what the signed metadata does not vouch for.
use serde_json::Value;
use tether::proto::repo::RepoFrame;
use tether::proto::{Frame, FrameIo, VERSION};
use tether::tls;

use crate::harness::*;
use crate::hub::{add_user, login, run};

/// Logs in an admin and publishes `content` as NAME/VERSION (extra CLI args after).
async fn publish(fleet: &Fleet, name: &str, version: &str, content: &[u8], extra: &[&str]) {
    let admin = match std::fs::exists(fleet.dir().join("boss.profile")) {
        Ok(true) => fleet.dir().join("boss.profile"),
        _ => {
            let secret = add_user(fleet, "boss", "admin", &[]).await;
            let p = login(fleet, "boss", &secret).await;
            std::fs::copy(&p, fleet.dir().join("boss.profile")).unwrap();
            p
        }
    };
    let file = fleet.dir().join(format!("{name}-{version}.bin"));
    std::fs::write(&file, content).unwrap();
    let key = fleet.dir().join("repo-keys/targets.pem");
    let (p, k, f) = (admin.to_str().unwrap(), key.to_str().unwrap(), file.to_str().unwrap());
    let args = [&["repo", "publish", "--profile", p, "--targets-key", k, name, version, f][..], extra].concat();
    let (ok, _, err) = run(&args, "").await;
    assert!(ok, "publish failed: {err}");
}

/// `tether agent --config agent.toml fetch TARGET`: (success, JSON answer or error text).
async fn fetch(fleet: &Fleet, target: &str) -> (bool, Value, String) {
    let (ok, out, err) =
        run(&["agent", "--config", fleet.agent_cfg.to_str().unwrap(), "fetch", target, "--json"], "").await;
    (ok, serde_json::from_str(&out).unwrap_or(Value::Null), err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_goes_on_through_the_twin_when_its_relay_dies_midway() {
    let mut fleet = Fleet::start(Opts {
        relays: 2,
        twins: true,
        hub: true,
        repo: true,
        // Slow enough to kill the relay in the middle.
        download_rate: 24 << 20,
        ..Opts::default()
    })
    .await;
    let content = random(64 << 20);
    publish(&fleet, "big", "1.0", &content, &[]).await;

    let fetching = {
        let cfg = fleet.agent_cfg.to_str().unwrap().to_string();
        tokio::spawn(async move { run(&["agent", "--config", &cfg, "fetch", "big@1.0", "--json"], "").await })
    };
    // The agent fetches through relay-a first; it dies a quarter of the way in.
    eventually("relay-a carries a quarter of the download", async || {
        fleet.metric(0, "tether_relay_repo_bytes_total", &[]).await >= (16 << 20) as f64
    })
    .await;
    fleet.relays[0].proc.kill();
    let (ok, out, err) = within(60, fetching).await.unwrap();
    assert!(ok, "fetch failed: {err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    let got = &answer["fetched"];
    eprintln!("download through a relay failover: {got}");
    assert!(got["resumes"].as_u64().unwrap() >= 1, "{answer}");
    let fetched = got["fetched"].as_u64().unwrap();
    assert!(fetched < (content.len() as u64) * 12 / 10, "fetched {fetched} bytes for a 64 MiB file: {answer}");
    let path = got["path"].as_str().unwrap();
    assert!(std::fs::read(path).unwrap() == content, "the artifact arrives byte for byte");
    assert!(fleet.metric(1, "tether_relay_repo_bytes_total", &[]).await > 0.0, "relay-b carried the rest");
    let audit = fleet.agent_audit();
    let rec = audit.iter().find(|r| r["event"] == "artifact_fetched").expect("artifact_fetched audited");
    assert_eq!(rec["target"], "big/1.0");
    assert!(rec["resumes"].as_u64().unwrap() >= 1);

    // Already here and verified: nothing is fetched again.
    let (ok, again, err) = fetch(&fleet, "big@1.0").await;
    assert!(ok, "{err}");
    assert_eq!(again["fetched"]["fetched"], 0, "{again}");
    // The person at the device reads it in words.
    let cfg = fleet.agent_cfg.to_str().unwrap();
    let (ok, out, err) = run(&["agent", "--config", cfg, "fetch", "big@1.0"], "").await;
    assert!(ok, "{err}");
    let sha = got["sha256"].as_str().unwrap();
    let said = format!("big/1.0: {} bytes, sha256 {sha}, as the signed targets name it (already here", 64 << 20);
    assert!(out.starts_with(&said) && out.contains(&format!("\n  at {path}\n")), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_signed_metadata_does_not_vouch_for_is_refused_and_audited() {
    let fleet = Fleet::start(Opts { relays: 1, hub: true, repo: true, ..Opts::default() }).await;
    let content = random(1 << 20);
    publish(&fleet, "tool", "1.0", &content, &[]).await;
    publish(&fleet, "other", "1.0", &random(1000), &["--device-class", "scanner"]).await;
    let refused = |reason: &'static str| {
        let audit = fleet.agent_audit();
        audit.iter().any(|r| r["event"] == "repo_refused" && r["reason"] == reason)
    };

    // 1. A package for another device class.
    let (ok, _, err) = fetch(&fleet, "other@1.0").await;
    assert!(!ok && err.contains("device class"), "{err}");
    assert!(refused("target_mismatch"));

    // 2. A target the metadata does not name.
    let (ok, _, err) = fetch(&fleet, "ghost@9").await;
    assert!(!ok && err.contains("no target ghost/9"), "{err}");

    // 3. A tampered artifact (one byte flipped in the hub's store): refused
    // before anything uses it, and no partial file stays.
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&content));
    let stored = fleet.dir().join("repo/blobs/sha256").join(&sha);
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[1000] ^= 1;
    std::fs::write(&stored, &bytes).unwrap();
    let (ok, _, err) = fetch(&fleet, "tool@1.0").await;
    assert!(!ok && err.contains("sha-256") || err.contains("SHA-256") || err.contains("hash"), "{err}");
    assert!(!fleet.dir().join("agent-state/artifacts").join(&sha).exists(), "nothing unverified is kept");
    assert!(!fleet.dir().join("agent-state/downloads").join(format!("{sha}.part")).exists());
    assert!(refused("target_mismatch"));
    bytes[1000] ^= 1;
    std::fs::write(&stored, &bytes).unwrap();
    let (ok, got, err) = fetch(&fleet, "tool@1.0").await;
    assert!(ok, "the intact artifact is taken: {err}");
    assert_eq!(std::fs::read(got["fetched"]["path"].as_str().unwrap()).unwrap(), content);

    // 4. A repository whose keys the device does not trust: its root is
    // replaced by one from other keys (no saved metadata to fall back on).
    let stranger = tempfile::tempdir().unwrap();
    tether::dev::dev_repository(stranger.path()).unwrap();
    std::fs::copy(stranger.path().join("repo/metadata/root.json"), fleet.dir().join("device-root.json")).unwrap();
    std::fs::remove_dir_all(fleet.dir().join("agent-state/metadata")).unwrap();
    let (ok, _, err) = fetch(&fleet, "tool@1.0").await;
    assert!(!ok && err.contains("valid signature"), "{err}");
    assert!(refused("signatures"));
    assert_eq!(fleet.metric(0, "tether_relay_agents_attached", &[]).await, 1.0, "the agent stays attached");
}

/// A fetch leg asking the relay for what it must not forward: each request
/// gets a named refusal and the leg (and every other session) goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_leg_asking_for_paths_or_huge_ranges_is_refused_by_name() {
    let fleet = Fleet::start(Opts { relays: 1, hub: true, repo: true, ..Opts::default() }).await;
    let cert = (fleet.pki.path(&format!("{DEVICE}.pem")), fleet.pki.path(&format!("{DEVICE}.key")));
    let cfg = tls::client_config(&fleet.pki.path("ca.pem"), Some((&cert.0, &cert.1)), tls::ALPN_AGENT).unwrap();
    let conn = tls::dial(&fleet.relays[0].control.to_string(), "localhost", cfg).await.unwrap();
    let mut io = FrameIo::new(conn);
    let get = |blob: bool, name: &str, len: u32| {
        Frame::Repo(RepoFrame::Get { version: VERSION, blob, name: name.into(), offset: 0, len })
    };
    for (req, code) in [
        (get(false, "../hub.db", 0), "bad_name"),
        (get(true, "../../etc/passwd", 10), "bad_name"),
        (get(true, &"ab".repeat(32), 64 << 20), "bad_range"),
        (get(true, &"ab".repeat(32), 10), "no_artifact"),
        (get(false, "root.json", 0), ""),
    ] {
        io.write_frame(&req).await.unwrap();
        match within(10, io.read_frame()).await.unwrap() {
            Frame::Repo(RepoFrame::Failed { code: got, .. }) => assert_eq!(got, code, "{req:?}"),
            Frame::Repo(RepoFrame::Data { total, .. }) => assert!(code.is_empty() && total > 0, "{req:?}"),
            other => panic!("{other:?}"),
        }
    }
    // Uploads: a job id that is a path; then bytes that do not follow on
    // from the offset announced (the leg is refused and closed).
    let put = |job: &str, len: u32| {
        let sha256 = "ab".repeat(32);
        Frame::Repo(RepoFrame::UploadPut { version: VERSION, job: job.into(), offset: 0, total: 5, len, sha256 })
    };
    io.write_frame(&put("../etc", 0)).await.unwrap();
    match within(10, io.read_frame()).await.unwrap() {
        Frame::Repo(RepoFrame::Failed { code, .. }) => assert_eq!(code, "bad_name"),
        other => panic!("{other:?}"),
    }
    io.write_frame(&put("job-1", 5)).await.unwrap();
    let stray = RepoFrame::Data { offset: 3, total: 5, data: bytes::Bytes::from_static(b"hello") };
    io.write_frame(&Frame::Repo(stray)).await.unwrap();
    match within(10, io.read_frame()).await.unwrap() {
        Frame::Error { message, .. } => assert!(message.contains("upload bytes at 3, expected 0"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(audited(&fleet.relay_audit(0), "repo_fetch_refused", "bad_name"));
    assert!(audited(&fleet.relay_audit(0), "repo_fetch_refused", "bad_range"));
    assert!(audited(&fleet.relay_audit(0), "repo_fetch_refused", "bad_upload"));
    assert_eq!(fleet.metric(0, "tether_relay_repo_requests_total", &["bad_name"]).await, 3.0);
    assert_eq!(fleet.metric(0, "tether_relay_frame_errors_total", &["bad_upload"]).await, 1.0);
}
