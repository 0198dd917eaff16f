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
    Frame::Heartbeat { seq: 1 }.encode(&mut hb);
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
