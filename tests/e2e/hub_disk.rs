//! A full disk under the hub's SQLite database (the default engine, and the
//! one `tether dev` runs): requests that must write are refused by name (503
//! `database_full`, never a bare 500), open sessions go on, a session that
//! ends meanwhile and the hub's audit records wait and are stored once there
//! is room, and the chain stays whole. The disk is a real 16 MiB tmpfs in
//! the hub's own mount namespace (root only: elsewhere the test says
//! SKIPPED).
use std::process::{Command, Stdio};

use hyper::Method;
use serde_json::Value;

use crate::audit_disk::{can_mount, inside, on_own_tmpfs};
use crate::harness::*;
use crate::hub::{
    add_user, connect, echo_once, grant_body, hub_audit, hub_client, hub_fleet, hub_metric, login, token_of,
};
use crate::restarts::{audit_verifies, grant};

/// A grant request's answer: status and body.
async fn ask_grant(fleet: &Fleet, token: &str, reason: &str) -> (u16, String) {
    let body = grant_body(reason);
    let (status, answer) = hub_client(fleet).call(Method::POST, "/api/v1/sessions", Some(token), body).await.unwrap();
    (status.as_u16(), String::from_utf8_lossy(&answer).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_hubs_database_refuses_writes_by_name_and_loses_no_record() {
    let mut fleet = hub_fleet("").await;
    if !can_mount(fleet.dir()) {
        eprintln!("SKIPPED: mounting a tmpfs in a mount namespace needs root (CAP_SYS_ADMIN) and unshare");
        return;
    }
    let boss = add_user(&fleet, "boss", "admin", &[]).await;
    let profile = login(&fleet, "boss", &boss).await;
    let token = token_of(&profile);
    grant(&fleet, &token, "INC-0").await;

    // The hub moves onto a small disk of its own with its database.
    let (dir, disk) = (fleet.tmp.path().to_path_buf(), fleet.dir().join("hub-disk"));
    let hub = fleet.hub.as_mut().unwrap();
    assert!(hub.proc.term_and_wait(15).await.success());
    std::fs::create_dir_all(&disk).unwrap();
    let cfg = std::fs::read_to_string(&hub.config).unwrap();
    assert!(cfg.contains("database = \"sqlite:hub.db\""), "{cfg}");
    let moved = format!("database = \"sqlite:{}\"", disk.join("hub.db").display());
    std::fs::write(&hub.config, cfg.replace("database = \"sqlite:hub.db\"", &moved)).unwrap();
    let mut child = on_own_tmpfs(&disk, "16m", "cp \"$2\"/hub.db* \"$1\"/ && exec \"$3\" hub --config \"$4\"")
        .arg(&dir)
        .arg(BIN)
        .arg(&hub.config)
        .stdout(Stdio::piped())
        .stderr(log_file(&dir, "hub-full"))
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let log = dir.join("hub-full.log");
    assert!(line.starts_with("hub listening"), "{line:?}\n{}", std::fs::read_to_string(&log).unwrap());
    let pid = child.id();
    hub.proc = Proc { child };

    // A live session, then the disk fills.
    let (mut session, addr, id) = connect(&profile, "echo", "INC-1").await;
    echo_once(&addr, b"before").await;
    let filler = inside(pid, &disk.join("filler"));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let full = (0..8192).map(|_| f.write_all(&[0u8; 4096]).and_then(|()| f.sync_all())).any(|r| r.is_err());
        assert!(full, "a 16 MiB tmpfs took 32 MiB");
    }

    // Writes that need room are refused by name; nothing answers 500. (SQLite
    // reuses the room its write-ahead log already has: the first few may go
    // through.)
    let mut granted = 0;
    loop {
        let (status, answer) = ask_grant(&fleet, &token, &format!("INC-full-{granted}")).await;
        assert_ne!(status, 500, "{answer}");
        if status == 503 {
            assert!(answer.contains("database_full") && answer.contains("no room to write"), "{answer}");
            break;
        }
        assert_eq!(status, 201, "{answer}");
        granted += 1;
        assert!(granted < 200, "200 grants and the full disk took every one");
    }
    // Refusals judged meanwhile: their audit records wait for room.
    let mut refusals = 0;
    while hub_metric(&fleet, "tether_hub_audit_pending_records", &[]).await == 0.0 {
        let path = format!("/api/v1/sessions/full-{refusals}");
        let (status, _) = hub_client(&fleet).call(Method::GET, &path, None, None).await.unwrap();
        assert_eq!(status.as_u16(), 401);
        refusals += 1;
        assert!(refusals < 50, "50 refusals and the full disk took every record");
    }
    echo_once(&addr, b"during").await;
    // A session that ends meanwhile.
    assert!(Command::new("kill").args(["-INT", &session.id().unwrap().to_string()]).status().unwrap().success());
    within(30, session.wait()).await.unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("no room to write").count(), 1, "logged once:\n{text}");

    // Room again: everything that waited is stored, without a restart.
    std::fs::remove_file(&filler).unwrap();
    eventually("grants work again", async || ask_grant(&fleet, &token, "INC-3").await.0 == 201).await;
    eventually("the session's end is recorded", async || {
        let s: Value = hub_client(&fleet).get(&format!("/api/v1/sessions/{id}"), Some(&token)).await.unwrap();
        s["state"] == "ended" && s["end_reason"] == "client_closed"
    })
    .await;
    eventually("no audit record waits", async || {
        hub_metric(&fleet, "tether_hub_audit_pending_records", &[]).await == 0.0
    })
    .await;
    let audit = hub_audit(&fleet, &token).await;
    let count = |check: &dyn Fn(&Value) -> bool| audit.iter().filter(|r| check(r)).count();
    assert_eq!(count(&|r| r["event"] == "session_end" && r["session"] == id.as_str()), 1);
    for i in 0..refusals {
        let path = format!("/api/v1/sessions/full-{i}");
        assert_eq!(count(&|r| r["event"] == "auth_refused" && r["path"] == path.as_str()), 1, "{path}");
    }
    audit_verifies(&fleet, &profile).await;
    assert!(std::fs::read_to_string(&log).unwrap().contains("takes writes again"));
}
