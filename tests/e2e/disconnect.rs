//! One side vanishing mid-transfer closes the other side and ends the session
//! with its byte counts audited.
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tether::proto::Reason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_closes_the_device_side_and_audits_bytes() {
    let svc = CountingService::start(CancellationToken::new()).await;
    let fleet =
        Fleet::start(Opts { extra_services: vec![("sink".into(), svc.addr.to_string())], ..Opts::default() }).await;
    let profile = fleet.dir().join("client.toml");
    std::fs::write(
        &profile,
        format!(
            "specialist = \"alice\"\nca = \"{}\"\ngrant_signing_key = \"{}\"\n[[relays]]\nname = \"relay-a\"\naddr = \"{}\"\nserver_name = \"localhost\"\n",
            fleet.pki.path("ca.pem").display(),
            fleet.pki.path("grant.key").display(),
            fleet.relays[0].client
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["connect", "--profile"])
        .arg(&profile)
        .args([DEVICE, "sink", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let client = Proc { child };
    let local = line.split_whitespace().nth(3).expect("listen address").to_string();
    let session = line.split_whitespace().nth(1).unwrap().to_string();

    let mut conn = TcpStream::connect(&local).await.unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    for _ in 0..32 {
        conn.write_all(&chunk).await.unwrap();
    }
    eventually("bytes reach the device service", async || svc.bytes.load(Ordering::SeqCst) >= 1 << 20).await;
    assert_eq!(svc.open.load(Ordering::SeqCst), 1);

    drop(client); // SIGKILL: the client vanishes mid-transfer.
    eventually("the device-side connection is closed", async || svc.open.load(Ordering::SeqCst) == 0).await;
    eventually("the relay audits the end with byte counts", async || {
        fleet.relay_audit(0).iter().any(|r| {
            r["event"] == "session_end"
                && r["session"] == session.as_str()
                && r["reason"] == "client_closed"
                && r["bytes_to_device"].as_u64().unwrap_or(0) >= 1 << 20
        })
    })
    .await;
    eventually("the agent audits the end with byte counts", async || {
        fleet.agent_audit().iter().any(|r| {
            r["event"] == "session_end"
                && r["session"] == session.as_str()
                && r["bytes_to_device"].as_u64().unwrap_or(0) >= 1 << 20
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_vanishing_closes_the_client_side_and_audits_bytes() {
    let mut fleet = Fleet::start(Opts::default()).await;
    let session = fleet.session("echo").await;
    let mut t = within(30, session.connect()).await.unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    let mut back = vec![0u8; chunk.len()];
    for _ in 0..8 {
        t.write_all(&chunk).await.unwrap();
        t.flush().await.unwrap();
        within(30, t.read_exact(&mut back)).await.unwrap();
    }
    fleet.agent.take().unwrap().kill(); // SIGKILL: the device side vanishes.

    let reason = tokio::time::timeout(Duration::from_secs(10), session.ended()).await.expect("session ended");
    assert_eq!(reason, Reason::AgentGone);
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(10), t.read(&mut buf)).await.expect("tunnel closed");
    assert!(matches!(r, Ok(0) | Err(_)), "tunnel still open: {r:?}");
    let id = session.id.to_string();
    eventually("the relay audits the end with byte counts", async || {
        fleet.relay_audit(0).iter().any(|r| {
            r["event"] == "session_end"
                && r["session"] == id.as_str()
                && r["reason"] == "agent_gone"
                && r["bytes_to_device"].as_u64().is_some_and(|n| n >= 8 << 16)
        })
    })
    .await;
    assert_eq!(fleet.metric(0, "tether_relay_sessions_ended_total", &["agent_gone"]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_sigterm_ends_sessions_by_name_and_exits() {
    let mut fleet = Fleet::start(Opts::default()).await;
    let session = fleet.session("echo").await;
    let _t = within(30, session.connect()).await.unwrap();
    let pid = fleet.relays[0].proc.pid().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let reason = within(10, session.ended()).await;
    assert_eq!(reason, Reason::RelayShutdown);
    let status = within(10, async {
        loop {
            if let Some(s) = fleet.relays[0].proc.child.try_wait().unwrap() {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(status.success(), "relay exited with {status}");
    assert!(audited(&fleet.relay_audit(0), "session_end", "relay_shutdown"));
}
