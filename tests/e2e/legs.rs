//! Data legs and joins that name the wrong session or connection, or carry a
//! wrong MAC, over TLS and over raw TCP.
use tether::proto::{Frame, FrameIo, LegSide, Reason, SessionId, VERSION, leg_mac};
use tether::tls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

async fn tls_data_leg(fleet: &Fleet, first: Frame) -> Frame {
    let (c, k) = (fleet.pki.path(&format!("{DEVICE}.pem")), fleet.pki.path(&format!("{DEVICE}.key")));
    let cfg = tls::client_config(&fleet.pki.path("ca.pem"), Some((&c, &k)), tls::ALPN_DATA).unwrap();
    let conn_tls = tls::dial(&fleet.relays[0].data.to_string(), "localhost", cfg).await.unwrap();
    let mut io = FrameIo::new(conn_tls);
    io.write_frame(&first).await.unwrap();
    within(30, io.read_frame()).await.unwrap()
}

async fn raw(addr: std::net::SocketAddr, first: Frame) -> Frame {
    let mut io = FrameIo::new(TcpStream::connect(addr).await.unwrap());
    io.write_frame(&first).await.unwrap();
    within(30, io.read_frame()).await.unwrap()
}

fn data_open(session: SessionId, conn: u32) -> Frame {
    Frame::DataOpen { version: VERSION, session, conn, mac: [9; 32] }
}

fn is(ans: &Frame, want: Reason) -> bool {
    matches!(ans, Frame::Error { reason, .. } if *reason == want)
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
    let (data, client) = (fleet.relays[0].data, fleet.relays[0].client);

    // Data legs, over mTLS and raw: unknown session, already paired.
    for raw_leg in [false, true] {
        let ask = async |f: Frame| if raw_leg { raw(data, f).await } else { tls_data_leg(&fleet, f).await };
        let ans = ask(data_open(SessionId::random(), 1)).await;
        assert!(is(&ans, Reason::UnknownSession), "raw={raw_leg}: {ans:?}");
        let ans = ask(data_open(session.id, 1)).await;
        assert!(is(&ans, Reason::AlreadyPaired), "raw={raw_leg}: {ans:?}");
    }
    assert!(fleet.metric(0, "tether_relay_leg_refusals_total", &["unknown_session"]).await >= 2.0);
    assert!(fleet.metric(0, "tether_relay_leg_refusals_total", &["already_paired"]).await >= 2.0);
    assert!(audited(&fleet.relay_audit(0), "data_leg_refused", "already_paired"));

    // Joins, over TLS and raw: a MAC under the wrong key, an unknown session.
    let wrong = leg_mac(&[7; 32], LegSide::Client { resumes: 0 }, &session.id, 99);
    let join = |session, mac| Frame::ClientJoin { version: VERSION, session, conn: 99, mac, resumes: 0 };
    for ans in [fleet.client_exchange(0, join(session.id, wrong)).await, raw(client, join(session.id, wrong)).await] {
        assert!(is(&ans, Reason::BadToken), "{ans:?}");
    }
    for ans in [
        fleet.client_exchange(0, join(SessionId::random(), wrong)).await,
        raw(client, join(SessionId::random(), wrong)).await,
    ] {
        assert!(is(&ans, Reason::UnknownSession), "{ans:?}");
    }

    // The grant may only travel over TLS: a raw ClientOpen is refused, and nothing else is raw on 17001.
    let ans =
        raw(client, Frame::ClientOpen { version: VERSION, grant: fleet.grant(|_| {}), service: "echo".into() }).await;
    assert!(
        matches!(ans, Frame::Error { reason: Reason::BadFrame, ref message } if message.contains("TLS")),
        "{ans:?}"
    );
    let mut s = TcpStream::connect(fleet.relays[0].control).await.unwrap();
    let mut hello = bytes::BytesMut::new();
    Frame::Hello {
        version: VERSION,
        device: DEVICE.into(),
        agent_version: "x".into(),
        services: vec![],
        streams: false,
    }
    .encode(&mut hello);
    s.write_all(&hello).await.unwrap();
    let mut buf = [0u8; 64];
    let n = within(30, s.read(&mut buf)).await.unwrap_or(0);
    assert!(n == 0 || buf[0] == 0x15, "the control port answered a raw hello with something other than a TLS alert");
    eventually("the raw hello is counted as a failed handshake", async || {
        fleet.metric(0, "tether_relay_handshake_failures_total", &["listener=\"control\""]).await >= 1.0
    })
    .await;

    // A protocol version this relay does not speak.
    let ans = fleet
        .client_exchange(
            0,
            Frame::ClientJoin { version: VERSION + 1, session: session.id, conn: 5, mac: wrong, resumes: 0 },
        )
        .await;
    assert!(is(&ans, Reason::VersionMismatch), "{ans:?}");
    for raw_leg in [false, true] {
        let open = Frame::DataOpen { version: VERSION + 1, session: session.id, conn: 7, mac: [9; 32] };
        let ans = if raw_leg { raw(data, open).await } else { tls_data_leg(&fleet, open).await };
        assert!(is(&ans, Reason::VersionMismatch), "a data leg's version, raw={raw_leg}: {ans:?}");
    }
    assert!(audited(&fleet.relay_audit(0), "data_leg_refused", "version_mismatch"));

    // The paired tunnel still carries bytes.
    t.write_all(b"y").await.unwrap();
    t.flush().await.unwrap();
    within(30, t.read_exact(&mut b)).await.unwrap();
    assert_eq!(&b, b"y");
}
