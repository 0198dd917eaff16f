//! The trust chain: certificates that name their role, and revocation of
//! every role, at connect time and while connected.
use std::path::PathBuf;
use std::sync::Arc;

use tether::tls::pki::Validity;
use tether::tls::{self, Role};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::harness::*;
use crate::hub::{hub_metric, hub_metrics};

/// A certificate of `role` named `cn` (also a DNS name, and `localhost`).
fn cert_as(fleet: &Fleet, role: Role, cn: &str) -> (PathBuf, PathBuf) {
    let issued = fleet.pki.ca.issue_as(role, cn, &[cn, "localhost"], Validity::days(1)).unwrap();
    let name = format!("{cn}-as-{role}-{}", hex::encode(&issued.serial[..4]));
    issued.write(&fleet.pki.dir, &name).unwrap();
    (fleet.pki.dir.join(format!("{name}.pem")), fleet.pki.dir.join(format!("{name}.key")))
}

/// A TLS server on port 0 presenting `cert` for `alpn`; it accepts one
/// connection at a time and answers nothing.
async fn server_presenting(fleet: &Fleet, cert: &(PathBuf, PathBuf), alpn: &'static [u8]) -> std::net::SocketAddr {
    let id = tls::Identity { ca: &fleet.pki.path("ca.pem"), cert: &cert.0, key: &cert.1 };
    let acceptor = TlsAcceptor::from(tls::server_config(&id, false, None, alpn).unwrap());
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            if let Ok(mut t) = acceptor.accept(tcp).await {
                let _ = t.flush().await;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    });
    addr
}

/// The label of a client handshake against `addr` with `cfg` ("ok" if it completed).
async fn client_outcome(addr: std::net::SocketAddr, name: &str, cfg: Arc<rustls::ClientConfig>) -> String {
    match tls::dial(&addr.to_string(), name, cfg).await {
        Ok(_) => "ok".into(),
        Err(e) => tls::handshake_failure_label(&e).into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_refuses_a_server_certificate_of_the_wrong_role() {
    let fleet = Fleet::start(Opts { relays: 1, agent: false, ..Opts::default() }).await;
    let ca = fleet.pki.path("ca.pem");
    let device = (fleet.pki.path(&format!("{DEVICE}.pem")), fleet.pki.path(&format!("{DEVICE}.key")));
    // (surface, what its client requires, a certificate of the right role, one of a wrong role)
    let cases: Vec<(&str, &'static [u8], Role, Role)> = vec![
        ("agent to relay (control)", tls::ALPN_AGENT, Role::Relay, Role::Device),
        ("agent to relay (data)", tls::ALPN_DATA, Role::Relay, Role::Hub),
        ("specialist to relay", tls::ALPN_CLIENT, Role::Relay, Role::Device),
        ("relay to its twin", tls::ALPN_TWIN, Role::Relay, Role::Device),
        ("relay or specialist to the hub", tls::ALPN_HTTP1, Role::Hub, Role::Relay),
    ];
    let mut failed = Vec::new();
    for (what, alpn, right, wrong) in cases {
        let client = tls::client_config(&ca, Some((&device.0, &device.1)), alpn).unwrap();
        for (role, want) in [(right, "ok"), (wrong, "cert_wrong_role")] {
            let addr = server_presenting(&fleet, &cert_as(&fleet, role, "relay-a"), alpn).await;
            let got = client_outcome(addr, "relay-a", client.clone()).await;
            if got != want {
                failed.push(format!("{what}: a {role} certificate gave {got}, want {want}"));
            }
        }
    }
    // End to end: the specialist checks that the device's certificate is a device's.
    let key = tether::stream::e2e::ClientKey::generate().unwrap();
    let e2e = tether::stream::e2e::client_config(&ca, &key).unwrap();
    for (role, want) in [(Role::Device, "ok"), (Role::Relay, "cert_wrong_role")] {
        let addr = server_presenting(&fleet, &cert_as(&fleet, role, DEVICE), tls::ALPN_E2E).await;
        let got = client_outcome(addr, DEVICE, e2e.clone()).await;
        if got != want {
            failed.push(format!("end-to-end: a {role} certificate named {DEVICE} gave {got}, want {want}"));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_refuses_a_client_certificate_of_the_wrong_role() {
    let fleet =
        Fleet::start(Opts { relays: 2, twins: true, hub: true, agent: false, transport: "quic", ..Opts::default() })
            .await;
    let ca = fleet.pki.path("ca.pem");
    // A relay certificate that names the device, on the device surfaces.
    let impostor = cert_as(&fleet, Role::Relay, DEVICE);
    for (listener, addr, alpn) in
        [("control", fleet.relays[0].control, tls::ALPN_AGENT), ("data", fleet.relays[0].data, tls::ALPN_DATA)]
    {
        let cfg = tls::client_config(&ca, Some((&impostor.0, &impostor.1)), alpn).unwrap();
        let _ = tls::dial(&addr.to_string(), "localhost", cfg).await;
        let labels = [format!("listener=\"{listener}\""), "reason=\"cert_wrong_role\"".to_string()];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        eventually(&format!("{listener} refuses a relay certificate"), async || {
            fleet.metric(0, "tether_relay_handshake_failures_total", &labels).await >= 1.0
        })
        .await;
    }
    // The same over QUIC.
    let quic_cfg = tls::quic_client_config(&ca, None, Some((&impostor.0, &impostor.1)), tls::ALPN_QUIC_AGENT).unwrap();
    let addr = fleet.relays[0].quic_agents.expect("QUIC agent listener");
    let r = tether::quic::connect(
        &addr.to_string(),
        "localhost",
        quic_cfg,
        (tls::DIAL_TIMEOUT, tether::quic::Dialler::Agent),
    )
    .await;
    if let Ok(c) = r {
        // The server's verdict may arrive just after the client's handshake completes.
        let _ = c.closed().await;
    }
    eventually("QUIC refuses a relay certificate", async || {
        fleet
            .metric(
                0,
                "tether_relay_handshake_failures_total",
                &["listener=\"quic-agent\"", "reason=\"cert_wrong_role\""],
            )
            .await
            >= 1.0
    })
    .await;
    // A device certificate that names the twin, on the twin link.
    let fake_twin = cert_as(&fleet, Role::Device, "relay-a");
    let cfg = tls::client_config(&ca, Some((&fake_twin.0, &fake_twin.1)), tether::twin::link::ALPN_TWIN).unwrap();
    let _ = tls::dial(&fleet.relays[1].twin.unwrap().to_string(), "localhost", cfg).await;
    eventually("the twin link refuses a device certificate named relay-a", async || {
        fleet.metric(1, "tether_relay_handshake_failures_total", &["reason=\"cert_wrong_role\""]).await >= 1.0
    })
    .await;
    assert!(
        fleet.relay_audit(1).iter().any(|r| r["reason"] == "cert_wrong_role"),
        "the twin link's refusal is not audited"
    );
    // The hub: a report with a device's or the hub's certificate named relay-a.
    let url = fleet.hub.as_ref().unwrap().url();
    for role in [Role::Device, Role::Hub] {
        let c = cert_as(&fleet, role, "relay-a");
        let client = tether::api::HubClient::new(&url, &ca, Some((&c.0, &c.1)), None).unwrap();
        let err = client.post::<_, serde_json::Value>("/api/v1/relay/report", None, &serde_json::json!({})).await;
        let code = err.as_ref().err().and_then(|e| e.code()).map(str::to_string);
        assert_eq!(
            code.as_deref(),
            Some("not_a_relay"),
            "a {role} certificate named relay-a reported to the hub: {err:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_relay_and_hub_certificates_are_refused() {
    let mut fleet = Fleet::start(Opts { relays: 2, hub: true, agent: false, crl_all: true, ..Opts::default() }).await;
    let (relay_b, hub) = (fleet.pki.path("relay-b.pem"), fleet.pki.path("hub.pem"));
    fleet.revoke(&[relay_b.clone(), hub.clone()]);
    let ca = fleet.pki.path("ca.pem");
    let crl = fleet.dir().join("crl.pem");
    // The hub read the empty CRL at start: SIGHUP makes it read the new one
    // now rather than at its next periodic reload.
    hub_metrics(&fleet).await;
    let hub_pid = fleet.hub.as_ref().unwrap().proc.pid().to_string();
    std::process::Command::new("kill").args(["-HUP", &hub_pid]).status().unwrap();
    // The agent, configured with the CRL, attaches to relay-a only.
    fleet.agent = Some(start_agent(fleet.dir(), &fleet.agent_cfg));
    fleet.wait_metric(0, "tether_relay_agents_attached", 1.0).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(
        fleet.metric(1, "tether_relay_agents_attached", &[]).await,
        0.0,
        "the agent attached to a revoked relay"
    );
    // What the relays' hub client refuses: a hub whose certificate is revoked.
    let relay_a = (fleet.pki.path("relay-a.pem"), fleet.pki.path("relay-a.key"));
    let url = fleet.hub.as_ref().unwrap().url();
    let hc = tether::api::HubClient::with_crl(&url, (&ca, Some(&crl)), Some((&relay_a.0, &relay_a.1)), None).unwrap();
    let err = format!("{:?}", hc.get::<serde_json::Value>("/api/v1/healthz", None).await);
    assert!(err.contains("Revoked") || err.contains("revoked"), "a revoked hub certificate was accepted: {err}");
    // The hub refuses relay-b's revoked certificate at the handshake.
    let relay_b_key = fleet.pki.path("relay-b.key");
    let as_b = tether::api::HubClient::new(&url, &ca, Some((&relay_b, &relay_b_key)), None).unwrap();
    let refused = as_b.post::<_, serde_json::Value>("/api/v1/relay/report", None, &serde_json::json!({})).await;
    // The error names the hub's alert (a relay logs it), from the one
    // connection: a fresh connection that fails is not dialled again.
    let refused = refused.expect_err("the hub answered a revoked relay certificate").to_string();
    assert!(refused.contains("CertificateRevoked"), "the refusal does not say why: {refused}");
    // The hub counts the refusal once its side of the handshake has failed,
    // which may be just after the client saw the failure.
    eventually("the hub counts the revoked relay certificate", async || {
        parse_metric(&hub_metrics(&fleet).await, "tether_hub_refusals_total", &["reason=\"cert_revoked\""]) >= 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_revoked_while_connected_is_dropped_within_a_minute() {
    let fleet = Fleet::start(Opts { relays: 2, twins: true, crl_all: true, ..Opts::default() }).await;
    let session = fleet.session("echo").await;
    let mut t = session.connect().await.unwrap();
    t.write_all(b"ping").await.unwrap();
    // No SIGHUP: the periodic reload alone must notice.
    let t0 = std::time::Instant::now();
    fleet.revoke(&[fleet.pki.path(&format!("{DEVICE}.pem"))]);
    for i in 0..2 {
        let t = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            loop {
                if fleet.metric(i, "tether_peers_revoked_total", &["role=\"device\""]).await >= 1.0
                    && fleet.metric(i, "tether_relay_agents_attached", &[]).await == 0.0
                {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
        .await;
        if t.is_err() {
            let m = fleet.metrics(i).await;
            let lines: Vec<&str> =
                m.lines().filter(|l| l.contains("revoked") || l.contains("crl") || l.contains("attached")).collect();
            panic!("relay {i} did not drop the revoked device within 60 s: {lines:#?}\n{:#?}", fleet.relay_audit(i));
        }
        assert!(fleet.relay_audit(i).iter().any(|r| r["event"] == "peer_revoked" && r["device"] == DEVICE));
    }
    eprintln!("device dropped by both relays {:?} after its revocation", t0.elapsed());
    // Its session ended, and it cannot come back.
    within(30, async {
        let mut buf = [0u8; 64];
        while let Ok(n) = tokio::io::AsyncReadExt::read(&mut t, &mut buf).await
            && n > 0
        {}
    })
    .await;
    // The agent keeps trying (with its back-off): each try is refused as revoked.
    within(60, async {
        while fleet.metric(0, "tether_relay_handshake_failures_total", &["reason=\"cert_revoked\""]).await < 1.0 {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    })
    .await;
    assert_eq!(fleet.metric(0, "tether_relay_agents_attached", &[]).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_revoked_while_connected_is_dropped_by_its_agent_twin_and_hub() {
    let fleet = Fleet::start(Opts { relays: 2, twins: true, hub: true, crl_all: true, ..Opts::default() }).await;
    for i in 0..2 {
        eventually("twin link up", async || fleet.metric(i, "tether_twin_link_up", &["direction=\"in\""]).await == 1.0)
            .await;
    }
    // relay-b is connected to the hub: it has reported (its report and job
    // event connections are kept alive from then on).
    eventually("relay-b reports to the hub", async || {
        hub_metric(&fleet, "tether_hub_relay_reports_total", &["relay=\"relay-b\""]).await >= 1.0
    })
    .await;
    fleet.revoke(&[fleet.pki.path("relay-b.pem")]);
    // SIGHUP reloads at once.
    let hup = |pid: u32| {
        std::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap();
    };
    hup(fleet.agent.as_ref().unwrap().pid());
    hup(fleet.relays[0].proc.pid());
    hup(fleet.hub.as_ref().unwrap().proc.pid());
    eventually("the agent drops relay-b", async || {
        fleet.agent_audit().iter().any(|r| r["event"] == "peer_revoked" && r["relay"] == "relay-b")
    })
    .await;
    eventually("relay-a drops its twin", async || {
        fleet.relay_audit(0).iter().any(|r| r["event"] == "peer_revoked" && r["role"] == "relay")
    })
    .await;
    eventually("the hub drops relay-b's connection", async || {
        let m = hub_metrics(&fleet).await;
        parse_metric(&m, "tether_peers_revoked_total", &["role=\"relay\""]) >= 1.0
    })
    .await;
    // The agent stays on relay-a, and relay-b cannot come back to anyone.
    assert_eq!(fleet.metric(0, "tether_relay_agents_attached", &[]).await, 1.0);
    eventually("relay-b's agent channel is gone", async || {
        fleet.metric(1, "tether_relay_agents_attached", &[]).await == 0.0
    })
    .await;
    assert_eq!(fleet.metric(0, "tether_twin_link_up", &["direction=\"in\""]).await, 0.0);
    // relay-b's operator reads why its reports stopped.
    eventually("relay-b's log says the hub refuses its certificate", async || {
        let log = std::fs::read_to_string(fleet.dir().join("relay-b.log")).unwrap_or_default();
        log.lines().any(|l| l.contains("cannot report to the hub") && l.contains("CertificateRevoked"))
    })
    .await;
    // And asks again less and less often (1 s, doubling to 60 s), not at
    // every report and job poll (about 5 handshakes a second before).
    let refused = async || hub_metric(&fleet, "tether_hub_refusals_total", &["cert_revoked"]).await;
    let before = refused().await;
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let tried = refused().await - before;
    assert!((1.0..=8.0).contains(&tried), "relay-b tried {tried} handshakes in 6 s after the hub refused it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_cannot_come_back_by_resuming_its_tls_session() {
    let fleet = Fleet::start(Opts { relays: 1, agent: false, crl_all: true, ..Opts::default() }).await;
    let (cert, key, _) = fleet.pki.device_cert("resumer-1", Validity::days(1));
    // This client keeps its TLS sessions (no CRL of its own): it offers to resume.
    let cfg = tls::client_config(&fleet.pki.path("ca.pem"), Some((&cert, &key)), tls::ALPN_AGENT).unwrap();
    let addr = fleet.relays[0].control.to_string();
    let mut first = tls::dial(&addr, "localhost", cfg.clone()).await.unwrap();
    // Reading takes in the session tickets the relay sends after the handshake.
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        tokio::io::AsyncReadExt::read(&mut first, &mut buf),
    )
    .await;
    drop(first);
    let again = tls::dial(&addr, "localhost", cfg.clone()).await.unwrap();
    assert_eq!(
        again.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "the relay does not resume at all"
    );
    drop(again);
    fleet.revoke(std::slice::from_ref(&cert));
    std::process::Command::new("kill").args(["-HUP", &fleet.relays[0].proc.pid().to_string()]).status().unwrap();
    eventually("the relay reloaded its CRL", async || {
        fleet.metric(0, "tether_crl_reloads_total", &["outcome=\"loaded\""]).await >= 1.0
    })
    .await;
    // The same client offers its session again: the relay has forgotten it,
    // runs the verifier, and refuses the revoked certificate.
    let _ = tls::dial(&addr, "localhost", cfg).await;
    eventually("the resumption attempt is refused as revoked", async || {
        fleet.metric(0, "tether_relay_handshake_failures_total", &["reason=\"cert_revoked\""]).await >= 1.0
    })
    .await;
}

/// SIGHUP sent the moment a relay or the hub prints that it listens reloads
/// its CRL: it never ends the process (SIGHUP's default action), however
/// soon it comes. The handler is in place before the line is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_as_soon_as_a_relay_or_the_hub_listens_ends_neither() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let hup = |pid: u32| {
        std::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap();
    };
    let mut relay = start_relay(tmp.path(), &pki, "relay-a", &Opts::default(), None);
    hup(relay.proc.pid());
    let mut hub = start_hub(tmp.path(), &pki, free_port(), std::slice::from_ref(&relay), "");
    hup(hub.proc.pid());
    let log = |name: &str| std::fs::read_to_string(tmp.path().join(format!("{name}.log"))).unwrap_or_default();
    for name in ["relay-a", "hub"] {
        eventually(&format!("{name} reloaded on SIGHUP"), async || log(name).contains("SIGHUP: reloading CRLs")).await;
    }
    assert!(relay.proc.child.try_wait().unwrap().is_none(), "the relay runs on:\n{}", log("relay-a"));
    assert!(hub.proc.child.try_wait().unwrap().is_none(), "the hub runs on:\n{}", log("hub"));
}
