//! Bad input on the QUIC listeners: each is refused, named, counted and
//! audited, and a live QUIC session beside it is untouched.
use std::net::SocketAddr;
use std::time::Duration;

use tether::agent::operator::{Request, request};
use tether::proto::{Frame, FrameIo, Reason, SessionId, VERSION};
use tether::quic::{self, QuicLeg};
use tether::tls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

async fn still_echoes(addr: SocketAddr) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    let data = random(64 * 1024);
    c.write_all(&data).await.unwrap();
    let mut back = vec![0u8; data.len()];
    within(30, c.read_exact(&mut back)).await.unwrap();
    assert_eq!(back, data, "the live session's bytes");
}

async fn fleet() -> (Fleet, std::sync::Arc<tether::client::ClientSession>, SocketAddr) {
    let opts = Opts {
        transport: "quic",
        handshake_timeout_ms: 1500,
        relay_limits: "quic_max_streams = 256\n",
        ..Opts::default()
    };
    let fleet = Fleet::start(opts).await;
    let (session, addr) = serve_locally(&fleet).await;
    assert_eq!(session.transport(), "quic");
    still_echoes(addr).await;
    (fleet, session, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stranger_datagrams_on_both_quic_ports_change_nothing() {
    let (fleet, _session, addr) = fleet().await;
    let r = &fleet.relays[0];
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for port in [r.data, r.client] {
        for i in 0..300usize {
            let mut d = random(1 + (i * 37) % 1400);
            if i % 3 == 0 {
                // A long header claiming QUIC v1 with nonsense after it.
                d.resize(1200, 0);
                d[0] = 0xc0;
                d[1..5].copy_from_slice(&1u32.to_be_bytes());
            }
            sock.send_to(&d, port).await.unwrap();
        }
    }
    still_echoes(addr).await;
    assert!(http_get(r.admin, "/healthz").await.contains("200"), "the relay is healthy");
    assert_eq!(fleet.metric(0, "tether_relay_agents_attached", &[]).await, 1.0, "the agent stays attached");
}

/// A QUIC connection to `addr` with `alpn`, presenting `cert` if given.
pub(crate) async fn dial(
    fleet: &Fleet,
    addr: SocketAddr,
    alpn: &[u8],
    cert: Option<(&str, &str)>,
) -> Result<quinn::Connection, String> {
    let (c, k) = cert.map(|(c, k)| (fleet.pki.path(c), fleet.pki.path(k))).unzip();
    let cfg = tls::quic_client_config(&fleet.pki.path("ca.pem"), None, c.as_deref().zip(k.as_deref()), alpn).unwrap();
    let conn = quic::connect(&addr.to_string(), "localhost", cfg, (Duration::from_secs(5), quic::Dialler::Session))
        .await
        .map_err(|e| e.to_string())?;
    // A server that refuses the client's certificate says so after the handshake's last flight.
    match tokio::time::timeout(Duration::from_millis(500), conn.closed()).await {
        Ok(e) => Err(e.to_string()),
        Err(_) => Ok(conn),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_agent_without_a_device_certificate_or_with_another_alpn_is_refused_by_name() {
    let (fleet, _session, addr) = fleet().await;
    let data = fleet.relays[0].data;
    let device = (&format!("{DEVICE}.pem")[..], &format!("{DEVICE}.key")[..]);
    let (pem, key) = (device.0.to_string(), device.1.to_string());

    let e = dial(&fleet, data, tls::ALPN_QUIC_AGENT, None).await.expect_err("no device certificate");
    assert!(e.to_lowercase().contains("certificate"), "the refusal names the certificate: {e}");
    eventually("counted: no_client_cert", async || {
        fleet
            .metric(
                0,
                "tether_relay_handshake_failures_total",
                &["listener=\"quic-agent\"", "reason=\"no_client_cert\""],
            )
            .await
            == 1.0
    })
    .await;

    let e = dial(&fleet, data, b"h3", Some((&pem, &key))).await.expect_err("another ALPN");
    assert!(e.contains("120") || e.to_lowercase().contains("application protocol"), "named: {e}");
    eventually("counted: alpn_mismatch", async || {
        fleet
            .metric(
                0,
                "tether_relay_handshake_failures_total",
                &["listener=\"quic-agent\"", "reason=\"alpn_mismatch\""],
            )
            .await
            == 1.0
    })
    .await;
    let refused: Vec<_> = fleet
        .relay_audit(0)
        .into_iter()
        .filter(|r| r["event"] == "handshake_refused" && r["listener"] == "quic-agent")
        .collect();
    assert_eq!(refused.len(), 2, "both audited: {refused:?}");
    still_echoes(addr).await;
}

async fn frame_io(conn: &quinn::Connection) -> FrameIo<QuicLeg> {
    FrameIo::new(quic::open_leg(conn).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_a_valid_join_is_refused_and_streams_past_the_limit_wait() {
    let (fleet, session, addr) = fleet().await;
    let client = fleet.relays[0].client;
    let conn = dial(&fleet, client, tls::ALPN_QUIC_CLIENT, None).await.unwrap();

    // A join for a session that does not exist, and one with a wrong MAC for one that does.
    for id in [SessionId(tether::random_bytes()), session.id] {
        let mut io = frame_io(&conn).await;
        let join = Frame::ClientJoin { version: VERSION, session: id, conn: 7, mac: [0; 32], resumes: 0 };
        io.write_frame(&join).await.unwrap();
        match within(10, io.read_frame()).await {
            Ok(Frame::Error { reason, .. }) => {
                assert!(matches!(reason, Reason::UnknownSession | Reason::BadToken), "named: {reason}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    assert!(fleet.relay_audit(0).iter().filter(|r| r["event"] == "client_refused").count() >= 2);
    // The refusals closed streams, not the connection.
    assert!(conn.close_reason().is_none(), "the relay closed the connection: {:?}", conn.close_reason());

    // Streams past the limit (`quic_max_streams`, 256 here): a peer that
    // holds them silent waits for more (quinn's flow control), its silent
    // streams are closed at the relay's deadline, and the session beside it
    // goes on.
    let mut held = Vec::new();
    while held.len() < 300 {
        let Ok(leg) = tokio::time::timeout(Duration::from_millis(500), quic::open_leg(&conn)).await else { break };
        let mut leg = leg.unwrap();
        leg.write_all(&[0]).await.unwrap();
        held.push(leg);
    }
    assert!((250..=256).contains(&held.len()), "{} streams opened at once", held.len());
    still_echoes(addr).await;
    eventually("silent streams closed at the deadline, and counted", async || {
        let labels = ["listener=\"quic-client\"", "reason=\"preamble_timeout\""];
        fleet.metric(0, "tether_relay_handshake_failures_total", &labels).await >= held.len() as f64
    })
    .await;
    // Once the peer lets go of them, it may open streams again.
    drop(held);
    let later = within(15, quic::open_leg(&conn)).await;
    assert!(later.is_ok(), "no stream after the held ones were closed: {:?}", later.err());
    still_echoes(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_specialists_quic_connection_without_a_stream_is_closed() {
    let (fleet, _session, addr) = fleet().await;
    // Anyone may complete a handshake with the client port (no certificate):
    // holding the connection without a stream gets it closed at the deadline.
    let conn = dial(&fleet, fleet.relays[0].client, tls::ALPN_QUIC_CLIENT, None).await.unwrap();
    let why = within(15, conn.closed()).await;
    assert!(why.to_string().contains("no stream"), "closed for another reason: {why}");
    let labels = ["listener=\"quic-client\"", "reason=\"no_stream\""];
    assert_eq!(fleet.metric(0, "tether_relay_connections_refused_total", &labels).await, 1.0);
    still_echoes(addr).await;
}

/// A QUIC listener for agents as relay-a's (its certificate, device
/// certificates required), on a port of its own: a relay double.
pub fn agent_listener(pki: &Pki) -> (quinn::Endpoint, SocketAddr) {
    let id = tls::Identity { ca: &pki.path("ca.pem"), cert: &pki.path("relay-a.pem"), key: &pki.path("relay-a.key") };
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = udp.local_addr().unwrap();
    let server = tls::quic_server_config(&id, true, None, tls::ALPN_QUIC_AGENT, "agent").unwrap();
    (quic::server(udp, server, b"test", quic::INITIAL_STREAMS).unwrap(), addr)
}

/// An agent on QUIC takes its data legs as streams its relay opens; each such
/// stream must begin with an `Open` the agent accepts, exactly as on the
/// control channel. A relay (here a double) that opens streams with anything
/// else gets a refusal on that stream, named, counted and audited, and the
/// agent's channel and connection stay up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_relay_opens_are_checked_like_its_open_frames() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let (endpoint, addr) = agent_listener(&pki);
    let fake = RelayProc { quic_agents: Some(addr), ..RelayProc::stand_in(addr, tmp.path()) };
    let echo: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let opts = Opts { transport: "quic", ..Opts::default() };
    let (cert, key) = (pki.path(&format!("{DEVICE}.pem")), pki.path(&format!("{DEVICE}.key")));
    let device = (cert.as_path(), key.as_path());
    let cfg = write_agent_config(tmp.path(), &pki, &[&fake], echo, &opts, device);
    let _agent = start_agent(tmp.path(), &cfg);

    let conn = within(30, async { endpoint.accept().await.unwrap().await.unwrap() }).await;
    let (send, recv) = within(10, conn.accept_bi()).await.unwrap();
    let mut control = FrameIo::new(QuicLeg::new(send, recv));
    match within(10, control.read_frame()).await.unwrap() {
        Frame::Hello { streams, .. } => assert!(streams, "an agent on QUIC says it takes streams"),
        other => panic!("expected hello, got {other:?}"),
    }
    let welcome = Frame::Welcome { version: VERSION, relay: "relay-a".into(), heartbeat_secs: 30, raw_legs: false };
    control.write_frame(&welcome).await.unwrap();

    let answer = |first: Frame| {
        let conn = conn.clone();
        async move {
            let mut s = frame_io(&conn).await;
            s.write_frame(&first).await.unwrap();
            within(10, s.read_frame()).await.unwrap()
        }
    };
    // Not an `Open` at all.
    let f = answer(Frame::Heartbeat { seq: 1, clock: None }).await;
    assert!(matches!(f, Frame::Error { reason: Reason::BadFrame, .. }), "{f:?}");
    // An `Open` naming another relay: only the control channel may ask that.
    let open =
        |via: &str| Frame::Open { session: SessionId::random(), conn: 1, key: [0; 32], resumes: 0, via: via.into() };
    let f = answer(open("relay-b")).await;
    assert!(matches!(f, Frame::Error { reason: Reason::BadFrame, .. }), "{f:?}");
    // An `Open` for a session the agent never admitted.
    let f = answer(open("")).await;
    assert!(matches!(f, Frame::OpenFailed { reason: Reason::UnknownSession, .. }), "{f:?}");

    let records = tether::audit::read_all(&tmp.path().join("agent-audit.jsonl"));
    assert_eq!(records.iter().filter(|r| r["event"] == "stream_refused").count(), 2, "{records:?}");
    assert!(audited(&records, "open_refused", "unknown_session"), "{records:?}");
    let metrics = request(&tmp.path().join("agent.sock"), &Request::Metrics).await.unwrap();
    let text = metrics["text"].as_str().unwrap();
    for (reason, n) in [("bad_frame", 2), ("unknown_session", 1)] {
        let line = format!("tether_agent_refusals_total{{reason=\"{reason}\"}} {n}");
        assert!(text.lines().any(|l| l == line), "{line} in {text}");
    }
    // The channel is untouched: the agent reports its audit head, moved past
    // these refusals, on it (checked every 3 s), on the same connection.
    let last = records.iter().filter_map(|r| r["seq"].as_u64()).max().unwrap();
    within(15, async {
        loop {
            match control.read_frame().await.unwrap() {
                Frame::AuditHead { seq, .. } if seq >= last => return,
                Frame::AuditHead { .. } | Frame::Heartbeat { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert!(conn.close_reason().is_none());
}
