//! Smaller holes, each closed: a device speaking for another device's
//! session, and a replacement-leg join whose MAC does not cover what it resumes.
use std::sync::atomic::Ordering;

use tether::agent::operator::{Request, request};
use tether::client::ClientSession;
use tether::proto::{Frame, FrameIo, LegSide, Outcome, Reason, VERSION, leg_mac};
use tether::tls::{self, pki::Validity};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::harness::*;

/// A device attached to relay 0 by hand (so a test sees what the relay asks
/// of it, or makes it lie).
pub async fn fake_device(fleet: &Fleet, id: &str) -> FrameIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let (cert, key, _) = fleet.pki.device_cert(id, Validity::days(1));
    let cfg = tls::client_config(&fleet.pki.path("ca.pem"), Some((&cert, &key)), tls::ALPN_AGENT).unwrap();
    let conn = tls::dial(&fleet.relays[0].control.to_string(), "localhost", cfg).await.unwrap();
    let mut io = FrameIo::new(conn);
    let hello = Frame::Hello {
        version: VERSION,
        device: id.into(),
        agent_version: "t".into(),
        services: vec![],
        streams: false,
    };
    io.write_frame(&hello).await.unwrap();
    assert!(matches!(within(10, io.read_frame()).await.unwrap(), Frame::Welcome { .. }));
    io
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_decide_fail_or_report_for_another_devices_session() {
    let svc = CountingService::start(CancellationToken::new()).await;
    let fleet = Fleet::start(Opts {
        consent: "required",
        consent_timeout_secs: 60,
        extra_services: vec![("svc".into(), svc.addr.to_string())],
        ..Opts::default()
    })
    .await;
    let mut liar = fake_device(&fleet, "liar-1").await;
    // A request for the real device waits for its operator...
    let profile = fleet.profile();
    let opening = tokio::spawn(async move { ClientSession::open(&profile, DEVICE, "svc").await });
    let mut id = String::new();
    eventually("the request is pending at the device", async || {
        let ans = request(&fleet.socket(), &Request::Pending).await.unwrap();
        ans["pending"].as_array().and_then(|p| p.first()).is_some_and(|p| {
            id = p["session"].as_str().unwrap().to_string();
            true
        })
    })
    .await;
    let session = tether::proto::SessionId::parse(&id).unwrap();
    // ...and another device's approval does not admit it.
    liar.write_frame(&Frame::Decision { session, outcome: Outcome::Allowed, reason: Reason::Unknown }).await.unwrap();
    let Frame::Error { reason, .. } = within(10, liar.read_frame()).await.unwrap() else { panic!("not refused") };
    assert_eq!(reason, Reason::DeviceMismatch);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!opening.is_finished(), "a foreign decision admitted the session");
    assert_eq!(svc.conns.load(Ordering::SeqCst), 0);

    // The operator approves: the session works; a foreign OpenFailed and
    // Resumed about it are refused and change nothing.
    request(&fleet.socket(), &Request::Approve { session: id.clone() }).await.unwrap();
    let live = opening.await.unwrap().expect("admitted after approval");
    for lie in [
        Frame::OpenFailed { session, conn: 1, reason: Reason::ServiceUnreachable },
        Frame::Resumed { session, conn: 1, pause_ms: 1, retransmitted: 1 },
    ] {
        liar.write_frame(&lie).await.unwrap();
        let Frame::Error { reason, .. } = within(10, liar.read_frame()).await.unwrap() else { panic!("not refused") };
        assert_eq!(reason, Reason::DeviceMismatch, "{}", lie.kind());
    }
    let mut t = within(30, live.connect()).await.unwrap();
    t.write_all(b"still mine").await.unwrap();
    t.flush().await.unwrap();
    eventually("the bytes reach the service", async || svc.bytes.load(Ordering::SeqCst) == 10).await;
    assert_eq!(
        fleet.metric(0, "tether_relay_tunnels_resumed_total", &[]).await,
        0.0,
        "a foreign resume report was counted"
    );
    let refused = fleet
        .relay_audit(0)
        .iter()
        .filter(|r| r["event"] == "control_refused" && r["device"] == "liar-1" && r["reason"] == "device_mismatch")
        .count();
    assert_eq!(refused, 3, "each lie audited");
    assert!(
        fleet
            .metric(0, "tether_relay_frame_errors_total", &["listener=\"control\"", "reason=\"not_its_session\""])
            .await
            >= 3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_mac_covers_the_connection_it_resumes_and_is_good_once() {
    let fleet = Fleet::start(Opts::default()).await;
    let cfg = tls::client_config(&fleet.pki.path("ca.pem"), None, tls::ALPN_CLIENT).unwrap();
    let mut control =
        FrameIo::new(tls::dial(&fleet.relays[0].client.to_string(), "localhost", cfg.clone()).await.unwrap());
    let grant = fleet.grant(|_| {});
    control.write_frame(&Frame::ClientOpen { version: VERSION, grant, service: "echo".into() }).await.unwrap();
    let Frame::SessionReady { session, token, .. } = within(30, control.read_frame()).await.unwrap() else {
        panic!("no session")
    };
    let join = async |conn: u32, mac: [u8; 32], resumes: u32| {
        let leg = tls::dial(&fleet.relays[0].client.to_string(), "localhost", cfg.clone()).await.unwrap();
        let mut io = FrameIo::new(leg);
        io.write_frame(&Frame::ClientJoin { version: VERSION, session, conn, mac, resumes }).await.unwrap();
        let answer = within(30, io.read_frame()).await.unwrap();
        (answer, io)
    };
    // A MAC made for a new connection, presented as a replacement leg for connection 3.
    let mac = leg_mac(&token, LegSide::Client { resumes: 0 }, &session, 50);
    let (answer, _) = join(50, mac, 3).await;
    assert!(matches!(answer, Frame::Error { reason: Reason::BadToken, .. }), "{answer:?}");
    // The same MAC as made for: paired; then replayed: refused.
    let (answer, _) = join(50, mac, 0).await;
    assert!(matches!(answer, Frame::Paired { .. }), "{answer:?}");
    let (again, _) = join(50, mac, 0).await;
    assert!(matches!(again, Frame::Error { reason: Reason::AlreadyPaired, .. }), "{again:?}");
    assert!(audited(&fleet.relay_audit(0), "client_refused", "bad_token"));
    assert!(audited(&fleet.relay_audit(0), "client_refused", "already_paired"));
}
