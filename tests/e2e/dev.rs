//! `tether dev` as a newcomer uses it: run it, wait for its "is up" line, run
//! the printed `tether connect` at once, then `kill -9` the relay carrying
//! the session. Uses the dev setup's fixed ports (127.0.0.1/127.0.0.2:
//! 17001-17003, 17090, 17443; hub 17010; echo 17007).
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{BIN, within};

/// A child that gets SIGTERM (and its own children a clean stop) when dropped.
struct Gentle(Child);

impl Drop for Gentle {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        let _ = Command::new("kill").arg("-TERM").arg(self.0.id().to_string()).status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lines of a child's stream, as they come.
fn lines(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits (up to `secs`) for a line containing `needle`; returns it.
fn wait_line(rx: &mpsc::Receiver<String>, needle: &str, secs: u64, seen: &mut Vec<String>) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => {
                seen.push(l.clone());
                if l.contains(needle) {
                    return l;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("stream closed; saw:\n{}", seen.join("\n")),
        }
    }
    panic!("no line with {needle:?} within {secs} s; saw:\n{}", seen.join("\n"))
}

/// `tether ARGS` with its output read line by line; stopped gently when dropped.
fn tether(args: &[&OsStr]) -> (Gentle, mpsc::Receiver<String>, mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (out, err) = (lines(child.stdout.take().unwrap()), lines(child.stderr.take().unwrap()));
    (Gentle(child), out, err)
}

fn pid_of(up_pids: &str, name: &str) -> u32 {
    up_pids
        .split(", ")
        .find_map(|p| p.trim_start_matches("pids: ").strip_prefix(&format!("{name} ")))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid for {name} in {up_pids:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_is_up_when_it_says_so_and_supervises_a_killed_relay() {
    for port in ["127.0.0.1:17010", "127.0.0.1:17001", "127.0.0.2:17001", "127.0.0.1:17007"] {
        if std::net::TcpListener::bind(port).is_err() {
            panic!("{port} is taken: is a `tether dev` running? This test runs the dev setup on its fixed ports");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let devdir = dir.path().join("tether-dev");
    let (dev, out, err) = tether(&[OsStr::new("dev"), OsStr::new("--dir"), devdir.as_os_str()]);
    let mut seen = Vec::new();
    wait_line(&out, "tether dev is up", 120, &mut seen);
    let pids = wait_line(&out, "pids: ", 5, &mut seen);
    let hint = wait_line(&out, "Try failover: kill -9", 5, &mut seen);
    assert!(hint.contains(&pid_of(&pids, "relay-a").to_string()), "the hint names relay-a's pid: {hint}");
    // A clean start warns of nothing (a relay reporting to a hub that was
    // listening but not yet serving would).
    let start: Vec<String> = seen.iter().cloned().chain(err.try_iter()).collect();
    let alarms: Vec<&String> = start.iter().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
    assert!(alarms.is_empty(), "a clean start warned: {alarms:#?}");
    // dev's relays run on one thread: the whole setup shares this machine.
    let relays: Vec<&String> = seen.iter().filter(|l| l.starts_with("relay ") && l.contains(" listening ")).collect();
    assert_eq!(relays.len(), 2, "both relays' start lines: {seen:#?}");
    assert!(relays.iter().all(|l| l.ends_with(" threads=1")), "{relays:#?}");

    // At once, the printed command: the device is online, nothing to wait for.
    let profile = devdir.join("client.toml");
    let profile_arg = profile.to_str().unwrap();
    let args = ["connect", "--profile", profile_arg, "demo-1", "echo", "--listen", "127.0.0.1:0", "--wait", "0"];
    let (connect, c_out, c_err) = tether(&args.map(OsStr::new));
    let mut c_seen = Vec::new();
    let ready = wait_line(&c_out, "ready:", 30, &mut c_seen);
    assert!(c_err.try_iter().all(|l| !l.contains("offline")), "connect right after 'is up' had to wait");
    let addr: SocketAddr = ready.split_whitespace().nth(3).unwrap().parse().unwrap();
    // "... via relay-a over quic": dev's agent and client use QUIC where UDP gets through.
    let words: Vec<&str> = ready.split_whitespace().collect();
    let carrier = words.iter().skip_while(|w| **w != "via").nth(1).unwrap().to_string();
    assert!(ready.ends_with("over quic"), "{ready}");

    // A refusal is an answer, not a crash: its reason, and no stack
    // backtrace even in a shell with RUST_BACKTRACE=1.
    let refused = Command::new(BIN)
        .args(["connect", "--profile", profile_arg, "demo-1", "vnc", "--listen", "127.0.0.1:0", "--wait", "0"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{said}");
    assert!(
        said.contains("Error: refused: the service is not in the device's allow-list (service_not_allowed)"),
        "{said}"
    );
    assert!(!said.contains("backtrace") && !said.contains("tether::"), "a refusal printed a backtrace: {said}");

    // A paced echo across a SIGKILL of the relay carrying the session.
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    let data = crate::harness::random(400 * 16 * 1024);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(16 * 1024) {
            w.write_all(chunk).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        w.shutdown().await.unwrap();
    });
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.map(|_| got)
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let victim = pid_of(&pids, &carrier);
    assert!(Command::new("kill").arg("-9").arg(victim.to_string()).status().unwrap().success());
    within(60, writer).await.unwrap();
    let got = within(60, reader).await.unwrap().expect("the local connection saw no error");
    assert!(got == data, "every byte came back once, in order, across the kill of {carrier}");

    // dev said which part died and how, restarted it, and kept the rest.
    let mut e_seen = Vec::new();
    let died = wait_line(&err, &format!("{carrier} (pid {victim}) was killed (SIGKILL)"), 30, &mut e_seen);
    assert!(died.contains("restarting"), "{died}");
    let back = wait_line(&err, &format!("{carrier} restarted (pid "), 30, &mut e_seen);
    assert!(!back.contains(&format!("(pid {victim})")), "a new process: {back}");
    let devices = || {
        let out = Command::new(BIN).args(["devices", "--json", "--profile"]).arg(&profile).output().unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    // Over QUIC (dev's default) nothing tells the agent that relay-a died:
    // its next keep-alive (every 10 s) reaches the restarted relay, which
    // answers with a stateless reset, and the agent re-attaches at once.
    within(30, async {
        while devices()[0]["relays"].as_array().is_none_or(|r| r.len() != 2) {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    let v = devices();
    assert_eq!(v[0]["transports"], serde_json::json!(["quic", "quic"]), "{v}");
    // `tether sessions` names the relay the session's control leg moved to.
    let twin = if carrier == "relay-a" { "relay-b" } else { "relay-a" };
    let sessions = || {
        let out = Command::new(BIN).args(["sessions", "--json", "--profile"]).arg(&profile).output().unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    within(30, async {
        while !sessions().as_array().into_iter().flatten().any(|s| s["id"] == words[1] && s["relay"] == twin) {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    let live = sessions().as_array().into_iter().flatten().find(|s| s["id"] == words[1]).cloned();
    assert_eq!(live.map(|s| s["state"].clone()), Some("live".into()));
    ctrl_c_stops_the_parts_in_order(dev, err, &devdir, words[1]).await;
    drop(connect);
}

/// Ctrl-C at the terminal reaches `tether dev` alone (its parts run in their
/// own process group), which stops the agent, then the relays, then the hub:
/// the relays' last reports reach a hub still up, so the live session's
/// record ends at once with its reason, and an agent that stops is not taken
/// for one that sent a bad frame.
async fn ctrl_c_stops_the_parts_in_order(mut dev: Gentle, err: mpsc::Receiver<String>, devdir: &Path, id: &str) {
    // (parent, process group) of a process, from /proc (after its name, which may hold spaces).
    let stat = |pid: &str| {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let f: Vec<String> = s.rsplit_once(')')?.1.split_whitespace().map(str::to_owned).collect();
        Some((f[1].clone(), f[2].clone()))
    };
    let me = dev.0.id().to_string();
    let parts: Vec<(String, String)> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| stat(e.ok()?.file_name().to_str()?))
        .filter(|(parent, _)| *parent == me)
        .collect();
    assert_eq!(parts.len(), 4, "hub, two relays, agent: {parts:?}");
    let dev_group = stat(&me).unwrap().1;
    assert!(
        parts.iter().all(|(_, g)| *g != dev_group),
        "a part shares dev's process group: a terminal's Ctrl-C hits it too"
    );
    assert!(Command::new("kill").arg("-INT").arg(dev.0.id().to_string()).status().unwrap().success());
    let status = within(30, async {
        loop {
            if let Some(s) = dev.0.try_wait().unwrap() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(status.success(), "{status}");
    let mut said = Vec::new();
    while let Ok(l) = err.recv_timeout(Duration::from_secs(10)) {
        said.push(l);
    }
    let all = said.join("\n");
    assert_eq!(said.iter().filter(|l| l.contains("last report to the hub sent")).count(), 2, "{all}");
    assert!(!all.contains("last report to the hub failed"), "{all}");
    assert!(!all.contains("dropping control channel"), "a stopped agent taken for a bad frame:\n{all}");
    assert!(!all.contains("killing it"), "a part did not stop in time:\n{all}");
    use tether::config::ConfigFile;
    let cfg = tether::hub::HubConfig::load(&devdir.join("hub.toml")).unwrap();
    let admin = tether::hub::admin::Admin::open(&cfg).await.unwrap();
    let record = admin.store.session(id).await.unwrap().expect("the session's record");
    assert_eq!((record.state.as_str(), record.end_reason.as_deref()), ("ended", Some("agent_gone")), "{record:?}");
    assert!(record.bytes_to_device > 0 && record.bytes_to_client > 0, "{record:?}");
    // The device's own audit log says the same: its agent stopped, no relay was lost.
    let audit = tether::audit::read_all(&devdir.join("audit/agent.jsonl"));
    let ends: Vec<_> = audit.iter().filter(|r| r["event"] == "session_end" && r["session"] == id).collect();
    assert_eq!(ends.len(), 1, "{audit:?}");
    assert_eq!(ends[0]["reason"], "agent_gone", "{}", ends[0]);
}
