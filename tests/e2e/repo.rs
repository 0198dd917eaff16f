//! The signed repository through the hub, with real processes: `tether repo
//! publish` and `list` as an admin would run them, a device-side check of the
//! whole metadata chain fetched from the hub, and each refusal named,
//! counted, audited, and leaving the published state as it was.
use hyper::Method;
use serde_json::Value;
use tether::repo::keys::RepoKey;
use tether::repo::meta::{Envelope, Targets};
use tether::repo::trust::{Fetched, Trusted, check_artifact};

use crate::harness::*;
use crate::hub::{add_user, hub_audit, hub_client, login, run, token_of};

async fn meta(fleet: &Fleet, token: &str, name: &str) -> Envelope {
    let (status, body) =
        hub_client(fleet).call(Method::GET, &format!("/api/v1/repo/metadata/{name}"), Some(token), None).await.unwrap();
    assert!(status.is_success(), "{name}: {status} {}", String::from_utf8_lossy(&body));
    Envelope::parse("test", &body).unwrap()
}

async fn blob(fleet: &Fleet, token: &str, sha: &str, len: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while (out.len() as u64) < len {
        let path = format!("/api/v1/repo/blobs/{sha}?offset={}&len={}", out.len(), 1 << 20);
        let (status, body) = hub_client(fleet).call(Method::GET, &path, Some(token), None).await.unwrap();
        assert!(status.is_success(), "{status}");
        assert!(!body.is_empty(), "an empty chunk before the end");
        out.extend_from_slice(&body);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_list_and_a_device_verifies_the_chain_and_every_refusal_is_named() {
    let fleet = Fleet::start(Opts { relays: 1, hub: true, repo: true, agent: false, ..Opts::default() }).await;
    let boss = add_user(&fleet, "boss", "admin", &[]).await;
    let admin = login(&fleet, "boss", &boss).await;
    let token = token_of(&admin);
    let (p, key) = (admin.to_str().unwrap(), fleet.dir().join("repo-keys/targets.pem"));
    let k = key.to_str().unwrap();
    let file = fleet.dir().join("tool.tar");
    let content = random(3 << 20);
    std::fs::write(&file, &content).unwrap();
    let f = file.to_str().unwrap();

    let publish =
        ["repo", "publish", "--profile", p, "--targets-key", k, "tool", "1.0", f, "--install", "sh install.sh"];
    let (ok, out, err) = run(&[&publish[..], &["--health", "true"]].concat(), "").await;
    assert!(ok, "publish failed: {err}");
    assert!(out.contains("published tool/1.0") && out.contains("targets version 1"), "{out}");

    let (ok, out, err) = run(&["repo", "list", "--profile", p, "--json"], "").await;
    assert!(ok, "{err}");
    let l: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(l["targets"][0]["name"], "tool");
    assert_eq!(l["targets"][0]["length"], 3 << 20);
    assert_eq!(l["targets"][0]["install"], "sh install.sh");
    let sha = l["targets"][0]["sha256"].as_str().unwrap().to_string();
    let (ok, out, _) = run(&["repo", "list", "--profile", p], "").await;
    assert!(ok && out.contains("tool") && out.contains("1.0") && out.contains(&sha[..16]), "{out}");

    // A device that trusts only the root checks timestamp, snapshot, targets
    // and the artifact's bytes fetched in chunks.
    let root = Envelope::parse("root", &std::fs::read(fleet.dir().join("repo/metadata/root.json")).unwrap()).unwrap();
    let mut device = Trusted::new(root.clone()).unwrap();
    let fetched = Fetched {
        roots: vec![],
        timestamp: meta(&fleet, &token, "timestamp.json").await,
        snapshot: meta(&fleet, &token, "snapshot.json").await,
        targets: meta(&fleet, &token, "targets.json").await,
    };
    device.update(fetched.clone(), tether::util::now_secs()).unwrap();
    let target = device.target("tool/1.0", None).unwrap().clone();
    let bytes = blob(&fleet, &token, &sha, target.length).await;
    check_artifact("tool/1.0", &target, &bytes).unwrap();
    assert_eq!(bytes, content, "the artifact arrives byte for byte");

    // Refusals. Each leaves the published targets as they were.
    let hub = hub_client(&fleet);
    let post = |body: Vec<u8>| {
        let (hub, token) = (&hub, token.clone());
        async move { hub.call(Method::POST, "/api/v1/repo/targets", Some(&token), Some(body.into())).await.unwrap() }
    };
    let current: Targets = fetched.targets.peek().unwrap();
    // 1. Targets signed by a key the root does not name.
    let stranger = RepoKey::generate().unwrap();
    let mut next = current.clone();
    next.common.version += 1;
    let (status, body) = post(serde_json::to_vec(&Envelope::sign(&next, &[&stranger])).unwrap()).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("metadata_refused"));
    // 2. The same (older) targets again: a rollback.
    let (status, body) = post(serde_json::to_vec(&fetched.targets).unwrap()).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("older than the trusted"), "{}", String::from_utf8_lossy(&body));
    // 3. Targets naming an artifact that was never uploaded.
    let targets_key = RepoKey::load(&key).unwrap();
    let mut ghost = current.clone();
    ghost.common.version += 1;
    let mut entry = target.clone();
    entry.sha256 = "ab".repeat(32);
    ghost.targets.insert("ghost/1".into(), entry);
    let (status, body) = post(serde_json::to_vec(&Envelope::sign(&ghost, &[&targets_key])).unwrap()).await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("missing_artifact"));
    // 4. An upload whose bytes are not the hash it names: nothing stays.
    let wrong = "cd".repeat(32);
    let (status, body) = hub
        .send(
            Method::PUT,
            &format!("/api/v1/repo/blobs/{wrong}"),
            Some(&token),
            Some(b"x".to_vec().into()),
            "application/octet-stream",
        )
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("hash_mismatch"));
    let left: Vec<_> =
        std::fs::read_dir(fleet.dir().join("repo/blobs/sha256")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 1, "only the published artifact is stored: {left:?}");
    // 5. A key the root does not name, through the CLI: refused before any upload.
    let other = fleet.dir().join("other.pem");
    std::fs::write(&other, stranger.to_pem()).unwrap();
    let (ok, _, err) =
        run(&["repo", "publish", "--profile", p, "--targets-key", other.to_str().unwrap(), "tool", "2.0", f], "").await;
    assert!(!ok && err.contains("is not a targets key"), "{err}");
    // 6. The same name and version with other content.
    std::fs::write(&file, b"other content").unwrap();
    let (ok, _, err) = run(&publish, "").await;
    assert!(!ok && err.contains("already published with another content"), "{err}");
    // 7. Not an admin.
    let eve = add_user(&fleet, "eve", "engineer", &[]).await;
    let eve_p = login(&fleet, "eve", &eve).await;
    let (ok, _, err) =
        run(&["repo", "publish", "--profile", eve_p.to_str().unwrap(), "--targets-key", k, "tool", "3.0", f], "").await;
    assert!(!ok && err.contains("admin"), "{err}");

    // Nothing moved; each refusal is counted and audited.
    let after = meta(&fleet, &token, "targets.json").await;
    assert_eq!(after, fetched.targets);
    let metrics = String::from_utf8_lossy(&hub.call(Method::GET, "/metrics", None, None).await.unwrap().1).into_owned();
    for reason in ["metadata_refused", "missing_artifact", "hash_mismatch", "not_admin"] {
        assert!(parse_metric(&metrics, "tether_hub_refusals_total", &[reason]) >= 1.0, "{reason} not counted");
    }
    let audit = hub_audit(&fleet, &token).await;
    assert!(audit.iter().any(|r| r["event"] == "repo_published" && r["changed"][0] == "tool/1.0"));
    for reason in ["metadata_refused", "missing_artifact", "hash_mismatch"] {
        assert!(audited(&audit, "repo_refused", reason), "{reason} not audited");
    }
}
