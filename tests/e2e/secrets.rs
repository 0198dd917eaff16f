//! Secrets at rest: sealed TOTP seeds, 0600 files, and the committed dev
//! key material refused outside development.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::harness::*;
use crate::hub::{add_user, hub_fleet, login, run, token_of};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_seeds_are_sealed_at_rest_and_secret_files_are_0600() {
    let fleet = hub_fleet("").await;
    let secret = add_user(&fleet, "alice", "engineer", &["st-marys"]).await;
    let db = fleet.dir().join("hub.db");
    let stored: String = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT totp_secret FROM users WHERE name = 'alice'", [], |r| r.get(0))
        .unwrap();
    assert!(stored.starts_with("v1:") && !stored.contains(&secret), "the TOTP seed is stored plain: {stored}");
    assert_eq!(mode(&db), 0o600, "hub.db");
    assert_eq!(mode(&fleet.dir().join("hub-secrets.key")), 0o600, "the secrets key");
    // The sealed seed still logs in.
    assert!(!token_of(&login(&fleet, "alice", &secret).await).is_empty());
    // A key file loosened by hand is 0600 again after the next write.
    let out = fleet.dir().join("issued");
    std::fs::create_dir_all(&out).unwrap();
    let key = out.join("relay-c.key");
    std::fs::write(&key, "old").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let ca = fleet.pki.dir.to_str().unwrap().to_string();
    let r = run(&["certs", "relay", "--ca", &ca, "--name", "relay-c", "--out", out.to_str().unwrap()], "").await;
    assert!(r.0, "{r:?}");
    assert_eq!(mode(&key), 0o600, "a rewritten key file kept its loose mode");
    // The hub refuses to start with a secrets key others can read.
    let keyfile = fleet.dir().join("hub-secrets.key");
    std::fs::set_permissions(&keyfile, std::fs::Permissions::from_mode(0o644)).unwrap();
    let hub = fleet.hub.as_ref().unwrap();
    let r = run(&["hub", "--config", hub.config.to_str().unwrap(), "user", "list"], "").await;
    assert!(!r.0 && r.2.contains("chmod 600"), "{r:?}");
}

/// Starts `tether ROLE --config CFG`; returns (exited within 5 s with failure, stderr).
fn start(role: &str, cfg: &Path) -> (bool, String) {
    let mut child = Command::new(BIN)
        .args([role, "--config"])
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..50 {
        if let Some(status) = child.try_wait().unwrap() {
            let err = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
            return (!status.success(), err);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    (false, String::new())
}

#[test]
fn the_committed_dev_keys_are_refused_unless_the_config_says_dev() {
    let dev = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs-dev");
    let tmp = tempfile::tempdir().unwrap();
    let d = dev.display();
    let relay = |flag: &str| {
        format!(
            "{flag}name = \"relay-a\"\ncontrol = \"127.0.0.1:0\"\ndata = \"127.0.0.1:0\"\nclient = \"127.0.0.1:0\"\n\
             admin = \"127.0.0.1:0\"\nquic = false\nca = \"{d}/ca.pem\"\ncert = \"{d}/relay-a.pem\"\nkey = \"{d}/relay-a.key\"\n\
             grant_public_key = \"{d}/grant.pub\"\naudit_log = \"{}/relay.jsonl\"\n",
            tmp.path().display()
        )
    };
    let agent = |flag: &str| {
        format!(
            "{flag}device = \"demo-1\"\nca = \"{d}/ca.pem\"\ncert = \"{d}/demo-1.pem\"\nkey = \"{d}/demo-1.key\"\n\
             grant_public_key = \"{d}/grant.pub\"\nconsent = \"auto\"\noperator_socket = \"{0}/a.sock\"\n\
             audit_log = \"{0}/agent.jsonl\"\n\n[[relays]]\nname = \"relay-a\"\ncontrol = \"127.0.0.1:9\"\ndata = \"127.0.0.1:9\"\n\n\
             [services.ssh]\ntarget = \"127.0.0.1:22\"\n",
            tmp.path().display()
        )
    };
    let hub = |flag: &str| {
        format!(
            "{flag}listen = \"127.0.0.1:0\"\nca = \"{d}/ca.pem\"\ncert = \"{d}/hub.pem\"\nkey = \"{d}/hub.key\"\n\
             grant_signing_key = \"{d}/grant.key\"\ndatabase = \"sqlite:{0}/hub.db\"\nsecrets_key = \"{0}/s.key\"\n\n\
             [[relays]]\nname = \"relay-a\"\naddr = \"127.0.0.1:9\"\n",
            tmp.path().display()
        )
    };
    type Config<'a> = &'a dyn Fn(&str) -> String;
    let cases: [(&str, Config); 3] = [("relay", &relay), ("agent", &agent), ("hub", &hub)];
    for (role, text) in cases {
        let cfg = tmp.path().join(format!("{role}.toml"));
        std::fs::write(&cfg, text("")).unwrap();
        let (refused, err) = start(role, &cfg);
        assert!(refused && err.contains("certs-dev/ material"), "{role} accepted the committed dev keys: {err}");
        std::fs::write(&cfg, text("dev = true\n")).unwrap();
        let (refused, err) = start(role, &cfg);
        assert!(!refused, "{role} refused the dev keys with dev = true: {err}");
    }
}
