//! One side vanishing mid-transfer closes the other side and ends the session
//! with its byte counts audited.
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tether::agent::operator::{Request, request};
use tether::client::ClientSession;
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

/// A device that stops answering while a specialist's request waits (frozen,
/// cut off: no FIN, no RST) is refused by name once its relay gives up on the
/// channel, and the specialist is told the relay concluded it, not that the
/// device refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_stops_answering_is_refused_as_gone_not_as_its_own_decision() {
    let opts = Opts { heartbeat_secs: 1, relay_limits: "agent_idle_timeout_secs = 3", ..Opts::default() };
    let fleet = Fleet::start(opts).await;
    let err = refusal_while_frozen(&fleet).await;
    assert_eq!(err.reason(), Some(Reason::AgentGone), "{err}");
    let text = format!("{err:#}");
    assert!(text.contains("the relay lost its channel to the device"), "{text}");
    assert!(!text.contains("refused by the device"), "{text}");
    assert!(audited(&fleet.relay_audit(0), "client_refused", "agent_gone"));
    assert_eq!(fleet.metric(0, "tether_relay_grant_refusals_total", &["agent_gone"]).await, 1.0);
}

/// A device that sends nothing for a few seconds after a request, its
/// channel still open (a frozen agent; the relay would wait 95 s for the
/// channel's idle timeout), is refused by name as silent, audited and
/// counted; once it runs again it admits the next session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_silent_after_a_request_is_refused_in_seconds_and_serves_again_once_it_runs() {
    let fleet = Fleet::start(Opts::default()).await;
    let err = refusal_while_frozen(&fleet).await;
    assert_eq!(err.reason(), Some(Reason::AgentSilent), "{err}");
    let text = format!("{err:#}");
    assert!(text.contains("the device sent nothing for 5 s after the request"), "{text}");
    assert!(audited(&fleet.relay_audit(0), "client_refused", "agent_silent"));
    assert_eq!(fleet.metric(0, "tether_relay_grant_refusals_total", &["agent_silent"]).await, 1.0);
    // Running again, the device reads the request and its withdrawal together:
    // it starts nothing (no session the relay does not know of).
    eventually("the device audits the withdrawn request", async || {
        audited(&fleet.agent_audit(), "access_withdrawn", "agent_silent")
    })
    .await;
    let live = request(&fleet.socket(), &Request::Sessions).await.unwrap();
    assert_eq!(live["sessions"].as_array().map(Vec::len), Some(0), "{live}");

    fleet.echo_through_new_session(b"awake").await;
}

/// What a session request gets from the fleet's device while its agent is
/// stopped (SIGSTOP: no FIN, no RST); the agent runs again afterwards.
async fn refusal_while_frozen(fleet: &Fleet) -> tether::client::ClientError {
    let agent = fleet.agent.as_ref().unwrap().pid();
    crate::failover::signal(agent, "-STOP");
    let opened = within(60, ClientSession::open(&fleet.profile(), DEVICE, "echo")).await;
    crate::failover::signal(agent, "-CONT");
    opened.err().expect("refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_sigterm_ends_sessions_by_name_and_exits() {
    let mut fleet = Fleet::start(Opts::default()).await;
    let session = fleet.session("echo").await;
    let _t = within(30, session.connect()).await.unwrap();
    let status = fleet.relays[0].proc.term_and_wait(10).await;
    let reason = within(10, session.ended()).await;
    assert_eq!(reason, Reason::RelayShutdown);
    assert!(status.success(), "relay exited with {status}");
    assert!(audited(&fleet.relay_audit(0), "session_end", "relay_shutdown"));
}

/// The device's service resets a connection while the client still sends:
/// the agent's end of it is over, so the client's resume of it is refused
/// for good (`resume_refused`) and the connection ends at once, not after a
/// resume deadline of tries through both relays. The session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_service_reset_ends_at_the_client_without_resuming() {
    // Reads a little, waits while more arrives, then closes with SO_LINGER 0: a reset.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let svc = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                #[allow(deprecated)] // linger 0 does not block: it resets
                let _ = s.set_linger(Some(Duration::ZERO));
            });
        }
    });
    // A resume deadline far longer than the test's wait: only a refusal for good ends it in time.
    let opts = Opts {
        relays: 2,
        twins: true,
        resume_deadline_secs: 300,
        extra_services: vec![("resets".into(), svc.to_string())],
        ..Opts::default()
    };
    let fleet = Fleet::start(opts).await;
    let mut profile = fleet.profile();
    profile.resume_deadline_secs = 300;
    let session = within(30, tether::client::ClientSession::open(&profile, DEVICE, "resets")).await.unwrap();
    let t = within(30, session.connect()).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(t);
    let writer = tokio::spawn(async move {
        // As fast as it goes: bytes are in flight toward the device when the reset comes.
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..16_384 {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut buf = [0u8; 64];
    let r = within(30, rd.read(&mut buf)).await;
    assert!(matches!(r, Ok(0) | Err(_)), "the service never sends, yet: {r:?}");
    writer.abort();

    // Bytes for the service were still arriving when it reset: the agent
    // dropped the connection's leg, and the client tried to resume it.
    let audit = fleet.agent_audit();
    let lost: Vec<_> = audit.iter().filter(|r| r["event"] == "tunnel_lost").collect();
    assert_eq!(lost.len(), 1, "{audit:?}");
    let refused: Vec<_> =
        audit.iter().filter(|r| r["event"] == "open_refused" && r["reason"] == "resume_refused").collect();
    assert!((1..=2).contains(&refused.len()), "one round of refusals, through each relay at most once: {audit:?}");
    // The session goes on: a new connection completes its end-to-end handshake.
    within(30, session.connect()).await.expect("a new connection after the reset one");
    assert_eq!(session.end_reason(), None, "the session ended");
}

/// A relay that is gone when a session is asked for: the request goes to its
/// twin, and the specialist is told which relay did not answer and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_asked_of_a_dead_relay_opens_through_its_twin_and_says_so() {
    use tether::client::{GrantSource, Progress};
    let mut fleet = Fleet::start(Opts { relays: 2, twins: true, ..Opts::default() }).await;
    fleet.relays[0].proc.kill(); // SIGKILL
    let profile = fleet.profile();
    assert_eq!(profile.relays[0].name, "relay-a", "relay-a is asked first");
    let source = GrantSource::from_profile(&profile, None).unwrap();
    let told = std::sync::Mutex::new(Vec::new());
    let progress = |p: Progress| told.lock().unwrap().push(p);
    let session = within(30, ClientSession::open_watching(&profile, &source, DEVICE, "echo", &progress)).await.unwrap();
    assert_eq!(session.relay.name, "relay-b");
    let told = told.into_inner().unwrap();
    let trying = told.iter().find_map(|p| match p {
        Progress::Trying { failed, why, next } => Some((failed.clone(), why.clone(), next.clone())),
        _ => None,
    });
    let (failed, why, next) = trying.unwrap_or_else(|| panic!("not told: {told:?}"));
    assert_eq!((failed.as_str(), next.as_str()), ("relay-a", "relay-b"));
    assert!(!why.is_empty(), "no reason given");
    assert!(told.contains(&Progress::Asked { relay: "relay-b".into(), consent: false }), "{told:?}");
    let mut c = within(30, session.connect()).await.unwrap();
    c.write_all(b"twin").await.unwrap();
    let mut back = [0u8; 4];
    within(10, c.read_exact(&mut back)).await.unwrap();
    assert_eq!(&back, b"twin");
}
