//! Oversize, unknown, random and truncated frames are refused by name, counted,
//! audited, and leave live sessions alone.
use tether::proto::{Frame, FrameIo, Reason};
use tether::tls::{self, pki::Validity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

/// Sends `bytes` as the first thing on a fresh control channel (valid device
/// cert), half-closes, and returns the relay's answer frame.
async fn send_raw(fleet: &Fleet, cert: &(std::path::PathBuf, std::path::PathBuf), bytes: &[u8]) -> Option<Frame> {
    let cfg = tls::client_config(&fleet.pki.path("ca.pem"), Some((&cert.0, &cert.1)), tls::ALPN_AGENT).unwrap();
    let mut conn = tls::dial(&fleet.relays[0].control.to_string(), "localhost", cfg).await.unwrap();
    conn.write_all(bytes).await.unwrap();
    conn.flush().await.unwrap();
    conn.shutdown().await.unwrap();
    FrameIo::new(conn).read_frame().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_are_refused_by_name() {
    let fleet = Fleet::start(Opts::default()).await;
    let (c, k, _) = fleet.pki.device_cert("probe-1", Validity::days(30));
    let cert = (c, k);
    let session = fleet.session("echo").await;
    let mut live = within(30, session.connect()).await.unwrap();

    // Oversize: a 1 MiB length prefix is refused before anything is allocated.
    let mut oversize = (1u32 << 20).to_be_bytes().to_vec();
    oversize.push(1);
    let ans = send_raw(&fleet, &cert, &oversize).await;
    assert!(matches!(ans, Some(Frame::Error { reason: Reason::FrameTooLarge, .. })), "{ans:?}");

    // Unknown frame type.
    let ans = send_raw(&fleet, &cert, &[0, 0, 0, 1, 200]).await;
    assert!(
        matches!(ans, Some(Frame::Error { reason: Reason::BadFrame, ref message }) if message.contains("unknown frame type 200")),
        "{ans:?}"
    );

    // Truncated: a frame that promises 100 bytes and delivers 10.
    let mut trunc = 100u32.to_be_bytes().to_vec();
    trunc.extend_from_slice(&[1; 10]);
    let ans = send_raw(&fleet, &cert, &trunc).await;
    assert!(
        matches!(ans, Some(Frame::Error { reason: Reason::BadFrame, ref message }) if message.contains("truncated")),
        "{ans:?}"
    );

    // Random bytes.
    let noise: [u8; 64] = tether::random_bytes();
    let ans = send_raw(&fleet, &cert, &noise).await;
    assert!(matches!(ans, Some(Frame::Error { .. })), "{ans:?}");

    // A wrong first frame: heartbeat before hello.
    let mut hb = bytes::BytesMut::new();
    Frame::Heartbeat { seq: 1, clock: None }.encode(&mut hb);
    let ans = send_raw(&fleet, &cert, &hb).await;
    assert!(matches!(ans, Some(Frame::Error { reason: Reason::BadFrame, .. })), "{ans:?}");

    for label in ["oversize", "unknown_type", "malformed", "unexpected_frame"] {
        assert!(
            fleet.metric(0, "tether_relay_frame_errors_total", &[&format!("reason=\"{label}\"")]).await >= 1.0,
            "{label} not counted"
        );
    }
    let audit = fleet.relay_audit(0);
    assert!(audited(&audit, "control_refused", "frame_too_large"));
    assert!(audited(&audit, "control_refused", "bad_frame"));

    // Random bytes on the specialist port too.
    let tls_cfg = tls::client_config(&fleet.pki.path("ca.pem"), None, tls::ALPN_CLIENT).unwrap();
    let mut conn = tls::dial(&fleet.relays[0].client.to_string(), "localhost", tls_cfg).await.unwrap();
    conn.write_all(&[0, 0, 0, 3, 99, 1, 2]).await.unwrap();
    conn.flush().await.unwrap();
    let ans = FrameIo::new(conn).read_frame().await.unwrap();
    assert!(matches!(ans, Frame::Error { reason: Reason::BadFrame, .. }), "{ans:?}");
    assert!(fleet.metric(0, "tether_relay_grant_refusals_total", &["bad_frame"]).await >= 1.0);

    // The live session is untouched.
    live.write_all(b"still here").await.unwrap();
    live.flush().await.unwrap();
    let mut buf = [0u8; 10];
    within(30, live.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"still here");
}

/// The relay's refusal records (audit events) and counts of refused frames,
/// summed: what a peer that leaves before its first frame must not add to.
async fn refusals(fleet: &Fleet) -> (usize, f64) {
    let events = ["control_refused", "data_leg_refused", "client_refused"];
    let audited = fleet.relay_audit(0).iter().filter(|r| events.iter().any(|e| r["event"] == *e)).count();
    let mut counted = fleet.metric(0, "tether_relay_frame_errors_total", &[]).await;
    counted += fleet.metric(0, "tether_relay_leg_refusals_total", &[]).await;
    counted += fleet.metric(0, "tether_relay_grant_refusals_total", &[]).await;
    (audited, counted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_leaves_before_its_first_frame_is_counted_not_refused() {
    let fleet = Fleet::start(Opts { transport: "quic", ..Opts::default() }).await;
    let session = fleet.session("echo").await;
    let mut live = within(30, session.connect()).await.unwrap();
    let before = refusals(&fleet).await;
    let r = &fleet.relays[0];
    let device = (fleet.pki.path(&format!("{DEVICE}.pem")), fleet.pki.path(&format!("{DEVICE}.key")));
    let with_cert = |alpn| tls::client_config(&fleet.pki.path("ca.pem"), Some((&device.0, &device.1)), alpn).unwrap();
    // Over TCP, on each port: a TLS close (close_notify), and on the
    // control port also a connection dropped without one (a broken path).
    for (addr, cfg) in [
        (r.control, with_cert(tls::ALPN_AGENT)),
        (r.data, with_cert(tls::ALPN_DATA)),
        (r.client, tls::client_config(&fleet.pki.path("ca.pem"), None, tls::ALPN_CLIENT).unwrap()),
    ] {
        let mut conn = tls::dial(&addr.to_string(), "localhost", cfg).await.unwrap();
        conn.shutdown().await.unwrap();
        let ans = within(10, FrameIo::new(conn).read_frame()).await;
        assert!(ans.is_err(), "a peer that said nothing was answered: {ans:?}");
    }
    let conn = tls::dial(&r.control.to_string(), "localhost", with_cert(tls::ALPN_AGENT)).await.unwrap();
    drop(conn);
    // A TCP connection closed before its first byte (a balancer's health
    // check, a port scan), on each port.
    for addr in [r.control, r.data, r.client] {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.shutdown().await.unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(within(10, tcp.read(&mut buf)).await.unwrap(), 0, "a peer that said nothing was answered");
    }
    // Over QUIC: an agent's stream that ends inside its first frame's
    // header, and a specialist's stream that ends before any byte.
    let agent = crate::quic_inputs::dial(
        &fleet,
        r.quic_agents.unwrap(),
        tls::ALPN_QUIC_AGENT,
        Some((&format!("{DEVICE}.pem"), &format!("{DEVICE}.key"))),
    )
    .await
    .unwrap();
    let mut leg = tether::quic::open_leg(&agent).await.unwrap();
    leg.write_all(&[0, 0]).await.unwrap();
    leg.shutdown().await.unwrap();
    let client = crate::quic_inputs::dial(&fleet, r.quic_clients.unwrap(), tls::ALPN_QUIC_CLIENT, None).await.unwrap();
    let mut leg = tether::quic::open_leg(&client).await.unwrap();
    leg.shutdown().await.unwrap();

    for (listener, n) in [("control", 3.0), ("data", 2.0), ("client", 2.0), ("quic-agent", 1.0), ("quic-client", 1.0)] {
        eventually(&format!("{n} early leaves counted on {listener}"), async || {
            let labels = [&format!("listener=\"{listener}\"")[..], "reason=\"closed_early\""];
            fleet.metric(0, "tether_relay_handshake_failures_total", &labels).await == n
        })
        .await;
    }
    assert_eq!(refusals(&fleet).await, before, "a peer that left was recorded as refused");
    assert!(
        !fleet.relay_audit(0).iter().any(|r| r["event"] == "handshake_refused"),
        "a peer that left was audited as refused"
    );
    live.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    within(30, live.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"still here");
}
