//! More bad input, each case refused by name: at the hub (requests a client
//! can send that the API must turn away), on a connection waiting for its
//! device leg, with a revoked grant at both twins, and a relay answering the
//! end-to-end handshake itself.
use hyper::Method;
use serde_json::{Value, json};
use tether::api::HubClient;
use tether::proto::{Frame, FrameIo, LegSide, Outcome, Reason, SessionId, SignedGrant, VERSION, leg_mac};
use tether::tls::{self, pki::Validity};
use tokio::net::TcpStream;

use super::holes::fake_device;
use super::hub::*;
use crate::harness::*;

async fn call(c: &HubClient, method: Method, path: &str, token: Option<&str>, body: Option<&[u8]>) -> (u16, String) {
    let (status, body) = c.call(method, path, token, body.map(bytes::Bytes::copy_from_slice)).await.unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status.as_u16(), v["error"].as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_refuses_each_bad_request_by_name() {
    let fleet = hub_fleet("[lockout]\nmax_failures = 2\nbase_delay_secs = 60\n").await;
    let alice = add_user(&fleet, "alice", "engineer", &["st-marys"]).await;
    let boss = add_user(&fleet, "boss", "admin", &[]).await;
    let alice_profile = login(&fleet, "alice", &alice).await;
    let alice_t = token_of(&alice_profile);
    let admin_t = token_of(&login(&fleet, "boss", &boss).await);
    let c = hub_client(&fleet);
    let session = |body: Value| serde_json::to_vec(&body).unwrap();
    let ok = json!({"device": DEVICE, "service": "echo", "reason": "INC-1 check", "client_key": "00ff"});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        session(b)
    };
    type Case<'a> = (&'a str, (u16, String), (u16, &'a str));
    let cases: Vec<Case> = vec![
        ("unknown route", call(&c, Method::GET, "/api/v1/nothing", Some(&alice_t), None).await, (404, "not_found")),
        ("wrong method", call(&c, Method::DELETE, "/api/v1/me", Some(&alice_t), None).await, (404, "not_found")),
        ("no bearer token", call(&c, Method::GET, "/api/v1/devices", None, None).await, (401, "no_token")),
        (
            "non-UTF-8 body",
            call(&c, Method::POST, "/api/v1/sessions", Some(&alice_t), Some(&[0xff, 0xfe, 0x7b])).await,
            (400, "bad_json"),
        ),
        (
            "wrong field type",
            call(&c, Method::POST, "/api/v1/sessions", Some(&alice_t), Some(&with("device", json!(42)))).await,
            (400, "bad_json"),
        ),
        (
            "missing field",
            call(&c, Method::POST, "/api/v1/sessions", Some(&alice_t), Some(br#"{"device":"demo-1"}"#)).await,
            (400, "bad_json"),
        ),
        (
            "client key not hex",
            call(&c, Method::POST, "/api/v1/sessions", Some(&alice_t), Some(&with("client_key", json!("zz")))).await,
            (400, "bad_client_key"),
        ),
        (
            "empty client key",
            call(&c, Method::POST, "/api/v1/sessions", Some(&alice_t), Some(&with("client_key", json!("")))).await,
            (400, "bad_client_key"),
        ),
        (
            "oversize client key",
            call(
                &c,
                Method::POST,
                "/api/v1/sessions",
                Some(&alice_t),
                Some(&with("client_key", json!("ab".repeat(1025)))),
            )
            .await,
            (400, "bad_client_key"),
        ),
        (
            "empty reason",
            call(&c, Method::POST, "/api/v1/sessions", Some(&alice_t), Some(&with("reason", json!("  ")))).await,
            (400, "bad_field"),
        ),
        (
            "reason over 500 bytes",
            call(&c, Method::POST, "/api/v1/sessions", Some(&alice_t), Some(&with("reason", json!("r".repeat(501)))))
                .await,
            (400, "bad_field"),
        ),
        (
            "control characters in a name",
            call(&c, Method::POST, "/api/v1/sessions", Some(&alice_t), Some(&with("device", json!("demo-1\u{1b}[2J"))))
                .await,
            (400, "bad_field"),
        ),
        (
            "empty login name",
            call(&c, Method::POST, "/api/v1/login", None, Some(br#"{"user":"","password":"p","code":"1"}"#)).await,
            (400, "bad_user"),
        ),
        (
            "audit export by an engineer",
            call(&c, Method::GET, "/api/v1/audit", Some(&alice_t), None).await,
            (403, "not_admin"),
        ),
        (
            "ending a session as an engineer",
            call(&c, Method::POST, "/api/v1/sessions/00112233445566778899aabbccddeeff/end", Some(&alice_t), None).await,
            (403, "not_admin"),
        ),
        (
            "ending an unknown session",
            call(&c, Method::POST, "/api/v1/sessions/00112233445566778899aabbccddeeff/end", Some(&admin_t), None).await,
            (404, "unknown_session"),
        ),
        (
            "reading someone else's or no session",
            call(&c, Method::GET, "/api/v1/sessions/not-a-session-id", Some(&alice_t), None).await,
            (404, "unknown_session"),
        ),
        (
            "a malformed since",
            call(&c, Method::GET, "/api/v1/audit?since=last-tuesday", Some(&admin_t), None).await,
            (400, "bad_since"),
        ),
        (
            "a relay report from a specialist",
            call(&c, Method::POST, "/api/v1/relay/report", Some(&admin_t), Some(b"{}")).await,
            (403, "not_a_relay"),
        ),
    ];
    // A relay report with a device's certificate (a valid fleet identity, not a relay).
    let (dc, dk, _) = fleet.pki.device_cert("probe-7", Validity::days(1));
    let as_device =
        HubClient::new(&fleet.hub.as_ref().unwrap().url(), &fleet.pki.path("ca.pem"), Some((&dc, &dk)), None).unwrap();
    let device_report = call(&as_device, Method::POST, "/api/v1/relay/report", None, Some(b"{}")).await;
    let mut failed = Vec::new();
    for (what, got, want) in
        cases.iter().chain([&("a relay report with a device certificate", device_report, (403, "not_a_relay"))])
    {
        if (got.0, got.1.as_str()) != *want {
            failed.push(format!("{what}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");

    // Lockout applies to a name that does not exist, end to end: the same
    // answers as for a real account, then `locked`.
    let guess = async |user: &str| login_status(&c, user).await;
    assert_eq!(guess("ghost").await, (401, "login_failed".to_string()));
    assert_eq!(guess("ghost").await, (401, "login_failed".to_string()));
    assert_eq!(guess("ghost").await.0, 429, "a name that does not exist is locked like one that does");

    // Tokens are stored hashed: the database holds SHA-256 of each, never the token.
    let db = rusqlite::Connection::open(fleet.dir().join("hub.db")).unwrap();
    let rows: Vec<(String, String)> = db
        .prepare("SELECT hash, user_name FROM tokens")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(rows.len() >= 2, "{rows:?}");
    for t in [&alice_t, &admin_t] {
        assert!(rows.iter().all(|(h, _)| !h.contains(t.as_str())), "a token is stored in the clear");
        assert!(rows.iter().any(|(h, _)| *h == tether::hub::auth::token_hash(t)), "no hash of a live token");
    }
    let dump = std::fs::read(fleet.dir().join("hub.db")).unwrap();
    assert!(!dump.windows(alice_t.len()).any(|w| w == alice_t.as_bytes()), "the token is in the database file");

    // Refusals about identity are audited.
    let audit = hub_audit(&fleet, &admin_t).await;
    assert!(audited(&audit, "auth_refused", "no_token"));
    assert!(audited(&audit, "admin_refused", "not_admin"));
    assert!(audited(&audit, "relay_report_refused", "not_a_relay"));
    assert!(audit.iter().any(|r| r["event"] == "account_locked" && r["user"] == "ghost"), "lockout of a ghost");
}

async fn login_status(c: &HubClient, user: &str) -> (u16, String) {
    let body = serde_json::to_vec(&json!({"user": user, "password": "not the password", "code": "123456"})).unwrap();
    call(c, Method::POST, "/api/v1/login", None, Some(&body)).await
}

/// The next frame of `kind`, skipping heartbeats.
async fn next<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(io: &mut FrameIo<S>) -> Frame {
    loop {
        match within(10, io.read_frame()).await.unwrap() {
            Frame::Heartbeat { .. } => continue,
            f => return f,
        }
    }
}

async fn raw(addr: std::net::SocketAddr, first: Frame) -> (Frame, FrameIo<TcpStream>) {
    let mut io = FrameIo::new(TcpStream::connect(addr).await.unwrap());
    io.write_frame(&first).await.unwrap();
    (within(30, io.read_frame()).await.unwrap(), io)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_connection_pairs_only_with_its_own_data_leg_once() {
    let fleet = Fleet::start(Opts::default()).await;
    let mut device = fake_device(&fleet, "pending-1").await;
    let cfg = tls::client_config(&fleet.pki.path("ca.pem"), None, tls::ALPN_CLIENT).unwrap();
    let mut control = FrameIo::new(tls::dial(&fleet.relays[0].client.to_string(), "localhost", cfg).await.unwrap());
    let grant = fleet.grant(|g| g.device = "pending-1".into());
    control.write_frame(&Frame::ClientOpen { version: VERSION, grant, service: "echo".into() }).await.unwrap();
    let Frame::AccessRequest { grant, .. } = next(&mut device).await else { panic!("no access request") };
    let session = grant.session_hint();
    device.write_frame(&Frame::Decision { session, outcome: Outcome::Allowed, reason: Reason::Unknown }).await.unwrap();
    let Frame::SessionReady { token, .. } = next(&mut control).await else { panic!("no session") };

    // The client joins connection 1; the relay asks the device to dial its leg.
    let client = fleet.relays[0].client;
    let join = Frame::ClientJoin {
        version: VERSION,
        session,
        conn: 1,
        mac: leg_mac(&token, LegSide::Client { resumes: 0 }, &session, 1),
        resumes: 0,
    };
    let mut client_leg = FrameIo::new(TcpStream::connect(client).await.unwrap());
    client_leg.write_frame(&join).await.unwrap();
    let Frame::Open { conn: 1, key, .. } = next(&mut device).await else { panic!("no open") };

    // A data leg with a MAC under another key: refused; the connection still waits.
    let data = fleet.relays[0].data;
    let open = |mac| Frame::DataOpen { version: VERSION, session, conn: 1, mac };
    let (wrong, _) = raw(data, open(leg_mac(&[3; 32], LegSide::Device, &session, 1))).await;
    assert!(matches!(wrong, Frame::Error { reason: Reason::BadToken, .. }), "{wrong:?}");
    // The device's MAC for another connection number: refused too.
    let (other, _) = raw(data, open(leg_mac(&key, LegSide::Device, &session, 2))).await;
    assert!(matches!(other, Frame::Error { reason: Reason::BadToken, .. }), "{other:?}");
    // The right one pairs it...
    let good = open(leg_mac(&key, LegSide::Device, &session, 1));
    let (paired, _device_leg) = raw(data, good.clone()).await;
    assert!(matches!(paired, Frame::Paired { .. }), "{paired:?}");
    assert!(matches!(next(&mut client_leg).await, Frame::Paired { .. }));
    // ...once: the same frame replayed, and a correctly MAC'd join reusing the number, are refused.
    let (replayed, _) = raw(data, good).await;
    assert!(matches!(replayed, Frame::Error { reason: Reason::AlreadyPaired, .. }), "{replayed:?}");
    let (reused, _) = raw(client, join).await;
    assert!(matches!(reused, Frame::Error { reason: Reason::AlreadyPaired, .. }), "{reused:?}");

    let audit = fleet.relay_audit(0);
    assert!(audited(&audit, "data_leg_refused", "bad_token"), "wrong device MAC not audited");
    assert!(audited(&audit, "data_leg_refused", "already_paired"));
    assert!(audited(&audit, "client_refused", "already_paired"));
    assert!(fleet.metric(0, "tether_relay_leg_refusals_total", &["bad_token"]).await >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_grant_is_refused_at_both_twins() {
    let fleet = hub_fleet("").await;
    let boss = add_user(&fleet, "boss", "admin", &[]).await;
    let admin_t = token_of(&login(&fleet, "boss", &boss).await);
    let c = hub_client(&fleet);
    let body = json!({"device": DEVICE, "service": "echo", "reason": "INC-9 check", "client_key": "00ff"});
    let mut granted = None;
    eventually("device routable", async || {
        granted = c
            .request::<Value, tether::api::SessionGranted>(
                Method::POST,
                "/api/v1/sessions",
                Some(&admin_t),
                Some(&body),
            )
            .await
            .ok();
        granted.is_some()
    })
    .await;
    let granted = granted.unwrap();
    let mut sig = [0u8; 64];
    sig.copy_from_slice(&hex::decode(&granted.sig).unwrap());
    let grant = SignedGrant { body: hex::decode(&granted.grant).unwrap().into(), sig };
    // Ended by an admin before it was ever used.
    let (st, _) =
        c.call(Method::POST, &format!("/api/v1/sessions/{}/end", granted.session), Some(&admin_t), None).await.unwrap();
    assert!(st.is_success(), "{st}");
    for i in 0..2 {
        // Each relay learns it from its own report (and from its twin).
        eventually("the revocation reached the relay", async || {
            fleet
                .relay_audit(i)
                .iter()
                .any(|r| r["event"] == "grant_revoked" && r["session"] == granted.session.as_str())
        })
        .await;
        match fleet.open_raw(i, grant.clone(), "echo").await {
            Frame::Error { reason, .. } => assert_eq!(reason, Reason::GrantReused, "relay {i}"),
            other => panic!("relay {i} admitted a revoked grant: {other:?}"),
        }
        assert!(audited(&fleet.relay_audit(i), "client_refused", "grant_reused"));
    }
    assert_eq!(SessionId::parse(&granted.session), Some(grant.session_hint()));
}

#[tokio::test]
async fn a_relay_answering_the_end_to_end_handshake_itself_is_refused() {
    use tether::stream::e2e;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let key = e2e::ClientKey::generate().unwrap();
    let client = e2e::client_config(&pki.path("ca.pem"), &key).unwrap();
    // The relay terminates the tunnel with its own valid fleet certificate,
    // even accepting the grant's client key.
    let relay = e2e::agent_config(&pki.path("relay-a.pem"), &pki.path("relay-a.key"), key.public_key()).unwrap();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move { tokio_rustls::TlsAcceptor::from(relay).accept(b).await.map(|_| ()) });
    let name = tls::server_name(DEVICE).unwrap();
    let r = within(10, tokio_rustls::TlsConnector::from(client).connect(name, a)).await;
    let err = r.map(drop).expect_err("the client accepted the relay's certificate as the device's").to_string();
    assert!(err.contains("NotValidForName") || err.contains("not valid for name"), "{err}");
    let _ = server.await;
    // The device's own certificate passes the same check (the test is not vacuous).
    let device =
        e2e::agent_config(&pki.path(&format!("{DEVICE}.pem")), &pki.path(&format!("{DEVICE}.key")), key.public_key())
            .unwrap();
    let client = e2e::client_config(&pki.path("ca.pem"), &key).unwrap();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move { tokio_rustls::TlsAcceptor::from(device).accept(b).await.map(|_| ()) });
    let _stream = within(10, tokio_rustls::TlsConnector::from(client).connect(tls::server_name(DEVICE).unwrap(), a))
        .await
        .unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_channel_refuses_a_lying_or_confused_device_by_name() {
    let fleet = Fleet::start(Opts::default()).await;
    let session = fleet.session("echo").await;
    let mut live = within(30, session.connect()).await.unwrap();
    let (cert, key, _) = fleet.pki.device_cert("honest-1", Validity::days(1));
    let cfg = tls::client_config(&fleet.pki.path("ca.pem"), Some((&cert, &key)), tls::ALPN_AGENT).unwrap();
    let first = async |hello: Frame| {
        let mut io =
            FrameIo::new(tls::dial(&fleet.relays[0].control.to_string(), "localhost", cfg.clone()).await.unwrap());
        io.write_frame(&hello).await.unwrap();
        (within(10, io.read_frame()).await.unwrap(), io)
    };
    let hello = |device: &str, version| Frame::Hello {
        version,
        device: device.into(),
        agent_version: "t".into(),
        services: vec![],
        streams: false,
    };
    // A hello naming another device than the certificate does (the real one, attached).
    let (ans, _) = first(hello(DEVICE, VERSION)).await;
    assert!(matches!(ans, Frame::Error { reason: Reason::DeviceMismatch, .. }), "{ans:?}");
    // A protocol version this relay does not speak.
    let (ans, _) = first(hello("honest-1", VERSION + 1)).await;
    assert!(matches!(ans, Frame::Error { reason: Reason::VersionMismatch, .. }), "{ans:?}");
    // A second hello on an attached channel, and a client's frame on it.
    for confused in [
        hello("honest-1", VERSION),
        Frame::ClientOpen { version: VERSION, grant: fleet.grant(|_| {}), service: "echo".into() },
    ] {
        let (ans, mut io) = first(hello("honest-1", VERSION)).await;
        assert!(matches!(ans, Frame::Welcome { .. }), "{ans:?}");
        let kind = confused.kind();
        io.write_frame(&confused).await.unwrap();
        let ans = next(&mut io).await;
        assert!(
            matches!(ans, Frame::Error { reason: Reason::BadFrame, ref message } if message.contains(kind)),
            "{kind}: {ans:?}"
        );
    }
    let audit = fleet.relay_audit(0);
    assert!(audited(&audit, "control_refused", "device_mismatch"));
    assert!(audited(&audit, "control_refused", "version_mismatch"));
    assert!(
        audit
            .iter()
            .filter(|r| r["event"] == "control_refused" && r["device"] == "honest-1" && r["reason"] == "bad_frame")
            .count()
            >= 2
    );
    // The real device stays attached and its session carries bytes.
    tokio::io::AsyncWriteExt::write_all(&mut live, b"ok").await.unwrap();
    tokio::io::AsyncWriteExt::flush(&mut live).await.unwrap();
    let mut b = [0u8; 2];
    within(10, tokio::io::AsyncReadExt::read_exact(&mut live, &mut b)).await.unwrap();
    assert_eq!(&b, b"ok");
}
