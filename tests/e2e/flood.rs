//! A flood before authentication from one source address (127.0.0.9): far
//! more silent connections than the handshake budget, on both relays' client
//! and data ports, while from 127.0.0.1 a new session opens and echoes 1 MiB,
//! the agent re-attaches, and a live session fails over. None of those is
//! refused; the flood is counted, and audited in aggregate.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::harness::*;

const FLOODER: [u8; 4] = [127, 0, 0, 9];

/// Keeps `per_port` silent connections from 127.0.0.9 open to each of
/// `ports`, re-opening what the relay drops, until `stop` (bounded: 60 s).
fn flood(ports: Vec<SocketAddr>, per_port: usize, stop: CancellationToken) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut opened = 0u64;
        let mut held: Vec<TcpStream> = Vec::new();
        let until = Instant::now() + Duration::from_secs(60);
        while !stop.is_cancelled() && Instant::now() < until {
            held.retain(|s| s.peer_addr().is_ok());
            for port in &ports {
                for _ in 0..per_port / 4 {
                    let sock = TcpSocket::new_v4().unwrap();
                    sock.bind(SocketAddr::from((FLOODER, 0))).unwrap();
                    if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), sock.connect(*port)).await {
                        held.push(s);
                        opened += 1;
                    }
                }
            }
            held.truncate(per_port * ports.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        opened
    })
}

/// Relay `i`'s `event` records (aggregates, written every 10 s), once there
/// is one or `secs` have passed.
async fn records_within(fleet: &Fleet, i: usize, event: &str, secs: u64) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let r: Vec<_> = fleet.relay_audit(i).into_iter().filter(|r| r["event"] == event).collect();
        if !r.is_empty() || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn echo_1mib(session: &std::sync::Arc<tether::client::ClientSession>) {
    let mut t = within(30, session.connect()).await.expect("a tunnel during the flood");
    let data = random(1 << 20);
    let (mut r, mut w) = tokio::io::split(&mut t);
    let back = async {
        let mut got = vec![0u8; data.len()];
        r.read_exact(&mut got).await.map(|_| got)
    };
    let send = async {
        w.write_all(&data).await.unwrap();
        w.flush().await.unwrap();
    };
    let (got, ()) = within(60, async { tokio::join!(back, send) }).await;
    assert!(got.unwrap() == data, "1 MiB echoed intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_source_refuses_no_legitimate_connection() {
    let mut fleet = Fleet::start(Opts {
        relays: 2,
        twins: true,
        relay_limits: "max_handshakes = 256\nmax_pending_per_source = 64\nfirst_byte_ms = 1000",
        ..Opts::default()
    })
    .await;
    let live = fleet.session("echo").await;
    let live_addr = serve(&live).await;

    let stop = CancellationToken::new();
    let ports = fleet.relays.iter().flat_map(|r| [r.client, r.data]).collect();
    let flooder = flood(ports, 400, stop.clone());
    eventually("the flood is being turned away", async || {
        fleet
            .metric(0, "tether_relay_connections_refused_total", &["listener=\"client\"", "reason=\"per_source\""])
            .await
            >= 100.0
    })
    .await;

    // A live session fails over: SIGKILL of the relay carrying it, once its
    // twin holds the session (on a loaded host the twin link can come up
    // after the session did; a session the twin does not hold cannot move,
    // and the join through the twin is refused `unknown_session`).
    let victim = if live.current_relay().name == "relay-a" { 0 } else { 1 };
    crate::twins::replicated(&fleet, victim).await;
    let transfer = Transfer::start(live_addr, random(8 << 20)).await;
    fleet.relays[victim].proc.kill();
    transfer.finish("the live session across a relay kill during the flood").await;
    assert!(live.end_reason().is_none());
    // The agent re-attaches (its old sessions end with it, as they must).
    // The survivor must see the old one go first: under the flood it may
    // still count the killed agent's channel, and a session opened on that
    // count finds the device gone (`not_attached`).
    if let Some(mut a) = fleet.agent.take() {
        a.kill();
    }
    let survivor = 1 - victim;
    fleet.wait_metric(survivor, "tether_relay_agents_attached", 0.0).await;
    fleet.agent = Some(start_agent(fleet.dir(), &fleet.agent_cfg));
    fleet.wait_metric(survivor, "tether_relay_agents_attached", 1.0).await;
    // A new session, and 1 MiB through it.
    let fresh = within(30, tether::client::ClientSession::open(&fleet.profile(), DEVICE, "echo")).await.unwrap();
    echo_1mib(&fresh).await;

    stop.cancel();
    let opened = within(30, flooder).await.unwrap();
    assert!(opened >= 1000, "the flood opened only {opened} connections");
    // The flood is in the survivor's audit as one aggregate record per period, naming the flooder only.
    let records = records_within(&fleet, survivor, "connections_dropped", 15).await;
    assert!(!records.is_empty(), "no aggregate record of the flood");
    assert!(records.len() <= 8, "aggregate, not one record per connection: {}", records.len());
    for r in &records {
        for s in r["top_sources"].as_array().unwrap() {
            assert_eq!(s["source"], "127.0.0.9", "a legitimate source was turned away: {r}");
        }
    }
    assert!(fresh.end_reason().is_none());
}

/// A flood from many addresses fills the control port's handshake budget; an
/// address that presented a valid device certificate before still gets in,
/// through the slots reserved for such sources.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_distributed_flood_does_not_keep_a_known_device_out() {
    use tether::proto::{Frame, FrameIo, VERSION};
    use tether::tls::{self, pki::Validity};
    let fleet =
        Fleet::start(Opts { relay_limits: "max_handshakes = 64\nmax_pending_per_source = 64", ..Opts::default() })
            .await;
    // The real agent attached from 127.0.0.1: that address is known now.
    let control = fleet.relays[0].control;
    let stop = CancellationToken::new();
    let flood = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut held: Vec<TcpStream> = Vec::new();
            let until = Instant::now() + Duration::from_secs(60);
            while !stop.is_cancelled() && Instant::now() < until {
                held.retain(|s| s.peer_addr().is_ok());
                for i in 0..16u8 {
                    let sock = TcpSocket::new_v4().unwrap();
                    sock.bind(SocketAddr::from(([127, 0, 0, 50 + i], 0))).unwrap();
                    if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), sock.connect(control)).await {
                        held.push(s);
                    }
                }
                held.truncate(256);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    eventually("the flood fills the control port's budget", async || {
        fleet
            .metric(0, "tether_relay_connections_refused_total", &["listener=\"control\"", "reason=\"max_handshakes\""])
            .await
            >= 50.0
    })
    .await;
    // A device from the known address attaches, five times, while the budget stays full.
    let (cert, key, _) = fleet.pki.device_cert("known-1", Validity::days(1));
    let cfg = tls::client_config(&fleet.pki.path("ca.pem"), Some((&cert, &key)), tls::ALPN_AGENT).unwrap();
    for round in 0..5 {
        let conn = within(10, tls::dial(&control.to_string(), "localhost", cfg.clone()))
            .await
            .unwrap_or_else(|e| panic!("round {round}: the known address was turned away: {e}"));
        let mut io = FrameIo::new(conn);
        let hello = Frame::Hello {
            version: VERSION,
            device: "known-1".into(),
            agent_version: "t".into(),
            services: vec![],
            streams: false,
        };
        io.write_frame(&hello).await.unwrap();
        assert!(matches!(within(10, io.read_frame()).await.unwrap(), Frame::Welcome { .. }), "round {round}");
    }
    assert!(
        fleet
            .metric(0, "tether_relay_connections_refused_total", &["listener=\"control\"", "reason=\"max_handshakes\""])
            .await
            >= 50.0
    );
    stop.cancel();
    within(30, flood).await.unwrap();
}

/// Failed handshakes are audited and logged one by one up to a budget (20
/// per source and 200 in all per minute); past it they are counted as
/// ever and written in aggregate, one record per listener every 10 s. A
/// source that floods the control port with plain HTTP does not grow the
/// audit log by a signed record per connection, and does not use up the
/// records of another source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_past_a_budget_are_audited_in_aggregate() {
    const FLOOD: usize = 300;
    let fleet = Fleet::start(Opts { relays: 1, ..Opts::default() }).await;
    let control = fleet.relays[0].control;
    let counted = || fleet.metric(0, "tether_relay_handshake_failures_total", &["listener=\"control\""]);
    let before = counted().await;
    let mut flooders = tokio::task::JoinSet::new();
    for worker in 0..8 {
        flooders.spawn(async move {
            for _ in (worker..FLOOD).step_by(8) {
                let sock = TcpSocket::new_v4().unwrap();
                sock.bind(SocketAddr::from((FLOODER, 0))).unwrap();
                let mut s = within(5, sock.connect(control)).await.unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n").await.unwrap();
                // The relay's TLS alert, or its close.
                let mut buf = [0u8; 256];
                let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
            }
        });
    }
    within(120, async {
        while let Some(r) = flooders.join_next().await {
            r.unwrap();
        }
    })
    .await;
    eventually("every refusal is counted", async || counted().await - before >= FLOOD as f64).await;
    // A refusal from another source is still audited one by one.
    let mut other = within(5, TcpStream::connect(control)).await.unwrap();
    other.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), other.read(&mut [0u8; 64])).await;
    let from = |records: &[serde_json::Value], ip: &str| {
        records
            .iter()
            .filter(|r| r["event"] == "handshake_refused" && r["peer"].as_str().unwrap_or("").starts_with(ip))
            .count()
    };
    eventually("the other source's refusal is audited", async || from(&fleet.relay_audit(0), "127.0.0.1:") >= 1).await;
    // The rest of the flood, in aggregate (written every 10 s).
    let aggregate = records_within(&fleet, 0, "handshakes_refused", 25).await;
    let one_by_one = from(&fleet.relay_audit(0), "127.0.0.9:");
    assert_eq!(one_by_one, 20, "refusals from the flooder audited one by one");
    assert!(!aggregate.is_empty(), "no aggregate record of the refusals past the budget");
    let in_aggregate: u64 = aggregate
        .iter()
        .map(|r| r["dropped"].as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum::<u64>())
        .sum();
    assert_eq!(one_by_one as u64 + in_aggregate, FLOOD as u64, "each refusal is in the audit once: {aggregate:?}");
    for r in &aggregate {
        assert_eq!(r["listener"], "control");
        assert_eq!(r["top_sources"][0]["source"], "127.0.0.9", "{r}");
    }
    // The relay's log names each audited refusal, and the aggregate: not each connection.
    let log = std::fs::read_to_string(fleet.dir().join("relay-a.log")).unwrap();
    let lines = log.lines().filter(|l| l.contains("handshake failed")).count();
    assert!(lines <= 21 + 2, "the relay logged {lines} failed handshakes");
    tether::audit::verify(&fleet.relays[0].audit).expect("the relay's audit chain verifies");
    // The device is still attached, and a session opens.
    assert_eq!(fleet.metric(0, "tether_relay_agents_attached", &[]).await, 1.0);
    let _t = within(30, fleet.session("echo").await.connect()).await.unwrap();
}
