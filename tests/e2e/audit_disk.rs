//! A full disk under the audit log: the agent goes on, holds the records it
//! cannot write, and writes them whole once there is room, so the file is
//! one unbroken chain of whole records at every moment. The disk is a real
//! 128 KiB tmpfs in the agent's own mount namespace (root only: elsewhere
//! the test says SKIPPED).
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use tether::agent::operator::{Request, request};

use crate::harness::*;

/// Whether this host lets us mount a tmpfs in a new mount namespace (root
/// with CAP_SYS_ADMIN, `unshare` at hand): tried once, for real.
pub fn can_mount(dir: &Path) -> bool {
    let probe = dir.join("probe");
    std::fs::create_dir_all(&probe).unwrap();
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs \"$1\"", "sh"])
        .arg(&probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn agent_metric(fleet: &Fleet, name: &str) -> f64 {
    let v = request(&fleet.socket(), &Request::Metrics).await.unwrap();
    parse_metric(v["text"].as_str().unwrap(), name, &[])
}

/// `then` (a shell command line) in a mount namespace of its own, once a
/// tmpfs of `size` is mounted on `disk` (`$1`; the caller's further args are
/// `$2`…).
pub fn on_own_tmpfs(disk: &Path, size: &str, then: &str) -> Command {
    let script = format!("mount -t tmpfs -o size={size} tmpfs \"$1\" && {then}");
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c", &script, "sh"]).arg(disk);
    c
}

/// The agent's log as its own mount namespace sees it.
pub fn inside(pid: u32, path: &Path) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap())
}

/// A session through the relay with one tunnelled connection: the agent
/// audits its request, start and end.
async fn one_session(fleet: &Fleet) {
    let s = fleet.session("echo").await;
    drop(s.connect().await.unwrap());
    s.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_holds_audit_records_and_writes_them_whole_once_there_is_room() {
    let mut fleet = Fleet::start(Opts { relays: 1, agent: false, ..Opts::default() }).await;
    if !can_mount(fleet.dir()) {
        eprintln!("SKIPPED: mounting a tmpfs in a mount namespace needs root (CAP_SYS_ADMIN) and unshare");
        return;
    }
    let disk = fleet.dir().join("audit-disk");
    std::fs::create_dir_all(&disk).unwrap();
    let log = disk.join("agent.jsonl");
    let cfg = std::fs::read_to_string(&fleet.agent_cfg).unwrap();
    let old = format!("audit_log = \"{}\"", fleet.dir().join("agent-audit.jsonl").display());
    assert!(cfg.contains(&old), "{cfg}");
    std::fs::write(&fleet.agent_cfg, cfg.replace(&old, &format!("audit_log = \"{}\"", log.display()))).unwrap();
    let child = on_own_tmpfs(&disk, "128k", "exec \"$2\" agent --config \"$3\"")
        .arg(BIN)
        .arg(&fleet.agent_cfg)
        .stdout(Stdio::null())
        .stderr(log_file(fleet.dir(), "agent"))
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    let pid = child.id();
    fleet.agent = Some(Proc { child });
    fleet.wait_metric(0, "tether_relay_agents_attached", 1.0).await;
    let (log_in, filler) = (inside(pid, &log), inside(pid, &disk.join("filler")));

    // Fill the disk, then open sessions until the log's last page is full too.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let full = (0..64).map(|_| f.write_all(&[0u8; 4096]).and_then(|()| f.sync_all())).any(|r| r.is_err());
        assert!(full, "a 128 KiB tmpfs took 256 KiB");
    }
    let mut sessions = 0;
    while agent_metric(&fleet, "tether_audit_write_errors_total").await == 0.0 {
        assert!(sessions < 40, "40 sessions and the full disk took every record");
        one_session(&fleet).await;
        sessions += 1;
    }
    for _ in 0..3 {
        one_session(&fleet).await;
        sessions += 1;
    }
    let held = agent_metric(&fleet, "tether_audit_held_records").await;
    assert!(held >= 3.0, "the records the disk refused are held: {held}");
    // What is on disk meanwhile: whole records, one chain (no record in part).
    let on_disk = tether::audit::verify(&log_in).expect("the log on a full disk verifies");
    let starts = |recs: &[Value]| recs.iter().filter(|r| r["event"] == "session_start").count();
    assert!(starts(&tether::audit::read_all(&log_in)) < sessions, "some sessions are not on disk yet");

    // Room again: the held records reach the disk without any new record.
    std::fs::remove_file(&filler).unwrap();
    eventually("the held records written", async || agent_metric(&fleet, "tether_audit_held_records").await == 0.0)
        .await;
    let all = tether::audit::read_all(&log_in);
    let n = tether::audit::verify(&log_in).expect("the log verifies once written");
    assert!(n >= on_disk + held as u64, "every held record: {n} against {on_disk} + {held}");
    assert_eq!(starts(&all), sessions, "every session's start is in the log");
    assert_eq!(agent_metric(&fleet, "tether_audit_records_lost_total").await, 0.0);
    one_session(&fleet).await;
    assert!(tether::audit::verify(&log_in).unwrap() > n, "the chain goes on");
    let text = std::fs::read_to_string(fleet.dir().join("agent.log")).unwrap();
    assert!(text.contains("audit log cannot be written") && text.contains("audit log written again"), "{text}");
}
