//! Grant refusals at the relay and, independently, at the agent.
use std::sync::Arc;

use tether::proto::{Frame, FrameIo, Grant, GrantSigner, Outcome, Reason, SessionId, VERSION};
use tether::tls::{self, Identity};
use tether::util::now_secs;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::harness::*;

async fn refused_with(fleet: &Fleet, answer: Frame, reason: Reason) {
    match answer {
        Frame::Error { reason: r, .. } => assert_eq!(r, reason),
        other => panic!("expected {reason}, got {other:?}"),
    }
    assert!(
        fleet.metric(0, "tether_relay_grant_refusals_total", &[&format!("reason=\"{}\"", reason.label())]).await >= 1.0,
        "{reason} not counted"
    );
    assert!(audited(&fleet.relay_audit(0), "client_refused", reason.label()), "{reason} not audited");
}

fn foreign_signer() -> GrantSigner {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let doc = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    GrantSigner::from_pkcs8(doc.as_ref()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_refuses_bad_grants_by_name() {
    let fleet = Fleet::start(Opts::default()).await;
    let live = fleet.session("echo").await;

    // Bad signature: signed by a key that is not the hub's.
    let good = fleet.grant(|_| {});
    let body = Grant {
        session: SessionId::random(),
        ..tether::proto::GrantVerifier::new(fleet.pki.signer.public_key()).verify(&good).unwrap()
    };
    let forged = foreign_signer().sign(&body);
    refused_with(&fleet, fleet.open_raw(0, forged, "echo").await, Reason::GrantBadSignature).await;

    // A flipped byte in a genuine grant.
    let mut tampered = fleet.grant(|_| {});
    let mut b = tampered.body.to_vec();
    let last = b.len() - 1;
    b[last] ^= 1;
    tampered.body = b.into();
    refused_with(&fleet, fleet.open_raw(0, tampered, "echo").await, Reason::GrantBadSignature).await;

    let expired = fleet.grant(|g| g.expires_at = now_secs() - 1);
    refused_with(&fleet, fleet.open_raw(0, expired, "echo").await, Reason::GrantExpired).await;

    let other_service = fleet.grant(|_| {});
    refused_with(&fleet, fleet.open_raw(0, other_service, "vnc").await, Reason::GrantServiceNotGranted).await;

    let ghost = fleet.grant(|g| g.device = "ghost-device".into());
    refused_with(&fleet, fleet.open_raw(0, ghost, "echo").await, Reason::NotAttached).await;

    // A grant the hub routed to another relay pair.
    let elsewhere = fleet.grant(|g| g.relays = vec!["relay-x".into(), "relay-y".into()]);
    refused_with(&fleet, fleet.open_raw(0, elsewhere, "echo").await, Reason::GrantWrongRelay).await;

    let once = fleet.grant(|_| {});
    assert!(matches!(fleet.open_raw(0, once.clone(), "echo").await, Frame::SessionReady { .. }));
    refused_with(&fleet, fleet.open_raw(0, once, "echo").await, Reason::GrantReused).await;

    // The grant names a service the device does not allow: the agent refuses.
    let telnet = fleet.grant(|g| g.services = vec!["telnet".into()]);
    refused_with(&fleet, fleet.open_raw(0, telnet, "telnet").await, Reason::ServiceNotAllowed).await;
    assert!(audited(&fleet.agent_audit(), "access_refused", "service_not_allowed"));

    // Nothing of this disturbed the live session.
    assert!(live.end_reason().is_none());
    assert!(live.connect().await.is_ok());
}

/// A relay that is not honest (test double): it forwards whatever grant it
/// likes. The agent must refuse on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_forged_grants_from_a_compromised_relay() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let id = Identity { ca: &pki.path("ca.pem"), cert: &pki.path("relay-a.pem"), key: &pki.path("relay-a.key") };
    let acceptor = TlsAcceptor::from(tls::server_config(&id, true, None, tls::ALPN_AGENT).unwrap());
    let control = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake = RelayProc::stand_in(control.local_addr().unwrap(), tmp.path());
    let echo: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let cfg = write_agent_config(
        tmp.path(),
        &pki,
        &[&fake],
        echo,
        &Opts::default(),
        (&pki.path(&format!("{DEVICE}.pem")), &pki.path(&format!("{DEVICE}.key"))),
    );
    let _agent = start_agent(tmp.path(), &cfg);

    let (tcp, _) = control.accept().await.unwrap();
    let mut io = FrameIo::new(acceptor.accept(tcp).await.unwrap());
    assert!(matches!(within(30, io.read_frame()).await.unwrap(), Frame::Hello { .. }));
    io.write_frame(&Frame::Welcome { version: VERSION, relay: "relay-a".into(), heartbeat_secs: 30, raw_legs: false })
        .await
        .unwrap();

    let now = now_secs();
    let base = Grant {
        session: SessionId::random(),
        device: DEVICE.into(),
        services: vec!["echo".into()],
        specialist: "mallory".into(),
        role: "engineer".into(),
        client_key: Default::default(),
        relays: vec!["relay-a".into()],
        issued_at: now,
        expires_at: now + 60,
        consent: false,
        reason: String::new(),
    };
    let signer = Arc::new(pki.signer);
    let cases = [
        (foreign_signer().sign(&base), Reason::GrantBadSignature),
        (
            signer.sign(&Grant { session: SessionId::random(), device: "other-device".into(), ..base.clone() }),
            Reason::GrantWrongDevice,
        ),
        (
            signer.sign(&Grant { session: SessionId::random(), expires_at: now - 5, ..base.clone() }),
            Reason::GrantExpired,
        ),
    ];
    for (grant, want) in cases {
        let session = grant.session_hint();
        io.write_frame(&Frame::AccessRequest { grant, service: "echo".into() }).await.unwrap();
        loop {
            match within(30, io.read_frame()).await.unwrap() {
                Frame::Decision { session: s, outcome, reason } => {
                    assert_eq!((s, outcome, reason), (session, Outcome::Refused, want));
                    break;
                }
                Frame::Heartbeat { .. } | Frame::AuditHead { .. } => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
        let audit = tether::audit::read_all(&tmp.path().join("agent-audit.jsonl"));
        assert!(audited(&audit, "access_refused", want.label()), "{want} not audited by the agent");
    }
}

#[test]
fn agent_config_refuses_targets_outside_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let fake_relay = RelayProc::stand_in("127.0.0.1:1".parse().unwrap(), tmp.path());
    // Only written into a config file, never dialled.
    let opts = Opts { extra_services: vec![("pacs".into(), "192.0.2.10:104".into())], ..Opts::default() };
    let cert = (pki.path(&format!("{DEVICE}.pem")), pki.path(&format!("{DEVICE}.key")));
    let cfg =
        write_agent_config(tmp.path(), &pki, &[&fake_relay], "127.0.0.1:9".parse().unwrap(), &opts, (&cert.0, &cert.1));
    let out = std::process::Command::new(BIN).args(["agent", "--check", "--config"]).arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("services.pacs.target") && err.contains("outside loopback"), "{err}");

    // Listing it explicitly makes it allowed.
    let text =
        std::fs::read_to_string(&cfg).unwrap().replace("consent =", "extra_targets = [\"192.0.2.10:104\"]\nconsent =");
    std::fs::write(&cfg, text).unwrap();
    let out = std::process::Command::new(BIN).args(["agent", "--check", "--config"]).arg(&cfg).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A rollover of the hub's grant key without a moment in which grants fail:
/// the new public key is added beside the old one on the relay and the agent
/// (SIGHUP), grants by either key open sessions, then the old key is
/// removed and its grants are refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grant_key_rolls_over_without_a_restart() {
    let fleet = Fleet::start(Opts { relays: 1, ..Opts::default() }).await;
    let next_dir = fleet.dir().join("next-grant-key");
    let (ok, out, err) = crate::hub::run(&["certs", "grant-key", "--out", next_dir.to_str().unwrap()], "").await;
    assert!(ok, "{err}");
    let next_pub: [u8; 32] = tls::read_grant_keys(&next_dir.join("grant.pub")).unwrap()[0];
    assert!(out.contains(&hex::encode(next_pub)) && out.contains("second line"), "{out}");
    let (ok, _, err) = crate::hub::run(&["certs", "grant-key", "--out", next_dir.to_str().unwrap()], "").await;
    assert!(!ok && err.contains("exists"), "never overwrites a key: {err}");
    let mut by_next = fleet.profile();
    by_next.grant_signing_key = Some(next_dir.join("grant.key"));
    let echo_through = async |profile: &tether::client::Profile| {
        let s = tether::client::ClientSession::open(profile, DEVICE, "echo").await?;
        let mut t = s.connect().await?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        t.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        t.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        s.close();
        Ok::<(), tether::client::ClientError>(())
    };
    let keys = fleet.pki.path("grant.pub");
    let old_pub = std::fs::read_to_string(&keys).unwrap();
    let hup = |fleet: &Fleet| {
        for pid in [fleet.relays[0].proc.pid(), fleet.agent.as_ref().unwrap().pid()] {
            assert!(std::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap().success());
        }
    };
    let relay_keys = async |fleet: &Fleet| fleet.metric(0, "tether_grant_keys", &[]).await;
    assert_eq!(relay_keys(&fleet).await, 1.0);

    // Before the rollover: the next key's grants are refused by name.
    let err = echo_through(&by_next).await.unwrap_err().to_string();
    assert!(err.contains("signature"), "{err}");

    // Both keys in force: grants by either open sessions.
    std::fs::write(&keys, format!("# old, then new\n{old_pub}{}\n", hex::encode(next_pub))).unwrap();
    hup(&fleet);
    eventually("the relay holds two grant keys", async || relay_keys(&fleet).await == 2.0).await;
    eventually("a grant by the next key opens a session", async || echo_through(&by_next).await.is_ok()).await;
    echo_through(&fleet.profile()).await.expect("the old key's grants still work");

    // The old key removed: its grants are refused, the next key's work.
    std::fs::write(&keys, format!("{}\n", hex::encode(next_pub))).unwrap();
    hup(&fleet);
    eventually("the relay holds one grant key", async || relay_keys(&fleet).await == 1.0).await;
    let err = echo_through(&fleet.profile()).await.unwrap_err().to_string();
    assert!(err.contains("signature"), "{err}");
    echo_through(&by_next).await.expect("the next key's grants work");
    assert!(audited(&fleet.relay_audit(0), "client_refused", Reason::GrantBadSignature.label()));

    // A file that cannot be read keeps the keys in force.
    std::fs::write(&keys, "not a key\n").unwrap();
    hup(&fleet);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(relay_keys(&fleet).await, 1.0);
    echo_through(&by_next).await.expect("the keys in force stay");
    let log = std::fs::read_to_string(fleet.dir().join("relay-a.log")).unwrap_or_default();
    assert!(log.contains("grant keys cannot be read"), "{log}");
}
