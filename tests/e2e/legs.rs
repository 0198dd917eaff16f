//! Data legs and joins that name the wrong session or connection.
use tether::proto::{Frame, FrameIo, Reason, SessionId, VERSION};
use tether::tls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

async fn data_leg(fleet: &Fleet, session: SessionId, conn: u32) -> Frame {
    let (c, k) = (fleet.pki.path(&format!("{DEVICE}.pem")), fleet.pki.path(&format!("{DEVICE}.key")));
    let cfg = tls::client_config(&fleet.pki.path("ca.pem"), Some((&c, &k)), tls::ALPN_DATA).unwrap();
    let conn_tls = tls::dial(&fleet.relays[0].data.to_string(), "localhost", cfg).await.unwrap();
    let mut io = FrameIo::new(conn_tls);
    io.write_frame(&Frame::DataOpen { version: VERSION, session, conn }).await.unwrap();
    within(30, io.read_frame()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_legs_and_joins_with_wrong_ids_are_refused() {
    let fleet = Fleet::start(Opts::default()).await;
    let session = fleet.session("echo").await;
    let mut t = within(30, session.connect()).await.unwrap(); // conn 1, paired
    t.write_all(b"x").await.unwrap();
    t.flush().await.unwrap();
    let mut b = [0u8; 1];
    within(30, t.read_exact(&mut b)).await.unwrap();

    let ans = data_leg(&fleet, SessionId::random(), 1).await;
    assert!(matches!(ans, Frame::Error { reason: Reason::UnknownSession, .. }), "{ans:?}");
    let ans = data_leg(&fleet, session.id, 1).await;
    assert!(matches!(ans, Frame::Error { reason: Reason::AlreadyPaired, .. }), "{ans:?}");
    assert!(fleet.metric(0, "tether_relay_leg_refusals_total", &["unknown_session"]).await >= 1.0);
    assert!(fleet.metric(0, "tether_relay_leg_refusals_total", &["already_paired"]).await >= 1.0);
    assert!(audited(&fleet.relay_audit(0), "data_leg_refused", "already_paired"));

    // Joins: wrong token, unknown session.
    let join = |session, token| Frame::ClientJoin { version: VERSION, session, conn: 99, token };
    let ans = fleet.client_exchange(0, join(session.id, [7u8; 32])).await;
    assert!(matches!(ans, Frame::Error { reason: Reason::BadToken, .. }), "{ans:?}");
    let ans = fleet.client_exchange(0, join(SessionId::random(), [7u8; 32])).await;
    assert!(matches!(ans, Frame::Error { reason: Reason::UnknownSession, .. }), "{ans:?}");

    // A protocol version this relay does not speak.
    let ans = fleet
        .client_exchange(0, Frame::ClientJoin { version: VERSION + 1, session: session.id, conn: 5, token: [0; 32] })
        .await;
    assert!(matches!(ans, Frame::Error { reason: Reason::VersionMismatch, .. }), "{ans:?}");

    // The paired tunnel still carries bytes.
    t.write_all(b"y").await.unwrap();
    t.flush().await.unwrap();
    within(30, t.read_exact(&mut b)).await.unwrap();
    assert_eq!(&b, b"y");
}
