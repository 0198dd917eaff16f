//! Bad certificates and TLS parameters are refused with a named reason, counted,
//! audited, and leave live sessions alone.
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tether::proto::{Frame, FrameIo, VERSION};
use tether::tls::{
    self,
    pki::{Ca, Validity},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

fn config(
    versions: &[&'static rustls::SupportedProtocolVersion],
    ca: &Path,
    cert: Option<(&Path, &Path)>,
    alpn: Option<&[u8]>,
) -> Arc<ClientConfig> {
    let b = ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(tls::load_roots(ca).unwrap());
    let mut c = match cert {
        Some((c, k)) => b.with_client_auth_cert(tls::load_certs(c).unwrap(), tls::load_key(k).unwrap()).unwrap(),
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = alpn.map(|a| vec![a.to_vec()]).unwrap_or_default();
    Arc::new(c)
}

/// Dials the control port and says hello; Ok(answer) or Err(why it failed).
async fn attempt(addr: std::net::SocketAddr, cfg: Arc<ClientConfig>, device: &str) -> Result<Frame, String> {
    let conn = tls::dial(&addr.to_string(), "localhost", cfg).await.map_err(|e| e.to_string())?;
    let mut io = FrameIo::new(conn);
    let hello = Frame::Hello {
        version: VERSION,
        device: device.into(),
        agent_version: "t".into(),
        services: vec![],
        streams: false,
    };
    io.write_frame(&hello).await.map_err(|e| e.to_string())?;
    io.read_frame().await.map_err(|e| e.to_string())
}

async fn assert_refused(fleet: &Fleet, result: Result<Frame, String>, label: &str) {
    assert!(!matches!(result, Ok(Frame::Welcome { .. })), "{label}: was welcomed");
    eventually(&format!("handshake failure {label} counted"), async || {
        fleet.metric(0, "tether_relay_handshake_failures_total", &[&format!("reason=\"{label}\"")]).await >= 1.0
    })
    .await;
    assert!(audited(&fleet.relay_audit(0), "handshake_refused", label), "{label} not audited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_and_tls_parameters_are_refused_by_name() {
    let fleet = Fleet::start(Opts { revoke: Some("revoked-1"), ..Opts::default() }).await;
    let addr = fleet.relays[0].control;
    let ca = fleet.pki.path("ca.pem");
    let v13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

    // A live session that must not notice any of this.
    let session = fleet.session("echo").await;
    let mut live = within(30, session.connect()).await.unwrap();
    live.write_all(b"before").await.unwrap();
    live.flush().await.unwrap();
    let mut buf = [0u8; 6];
    within(30, live.read_exact(&mut buf)).await.unwrap();

    // Device certificate from a foreign CA.
    let foreign = Ca::generate("foreign CA").unwrap();
    foreign.issue_device("intruder", Validity::days(30)).unwrap().write(fleet.dir(), "intruder").unwrap();
    let (fc, fk) = (fleet.dir().join("intruder.pem"), fleet.dir().join("intruder.key"));
    let r = attempt(addr, config(v13, &ca, Some((&fc, &fk)), Some(tls::ALPN_AGENT)), "intruder").await;
    assert_refused(&fleet, r, "cert_unknown_issuer").await;

    // No client certificate at all.
    let r = attempt(addr, config(v13, &ca, None, Some(tls::ALPN_AGENT)), DEVICE).await;
    assert_refused(&fleet, r, "no_client_cert").await;

    // Expired certificate.
    let (ec, ek, _) = fleet.pki.device_cert("expired-1", Validity::expired());
    let r = attempt(addr, config(v13, &ca, Some((&ec, &ek)), Some(tls::ALPN_AGENT)), "expired-1").await;
    assert_refused(&fleet, r, "cert_expired").await;

    // Revoked certificate (CRL).
    let (rc, rk) = fleet.revoked.clone().unwrap();
    let r = attempt(addr, config(v13, &ca, Some((&rc, &rk)), Some(tls::ALPN_AGENT)), "revoked-1").await;
    assert_refused(&fleet, r, "cert_revoked").await;

    // TLS 1.2 only.
    let (dc, dk) = (fleet.pki.path(&format!("{DEVICE}.pem")), fleet.pki.path(&format!("{DEVICE}.key")));
    let r =
        attempt(addr, config(&[&rustls::version::TLS12], &ca, Some((&dc, &dk)), Some(tls::ALPN_AGENT)), DEVICE).await;
    assert_refused(&fleet, r, "peer_incompatible").await;

    // Unknown ALPN, and no ALPN at all.
    let r = attempt(addr, config(v13, &ca, Some((&dc, &dk)), Some(b"http/1.1")), DEVICE).await;
    assert_refused(&fleet, r, "alpn_mismatch").await;
    let r = attempt(addr, config(v13, &ca, Some((&dc, &dk)), None), DEVICE).await;
    assert!(matches!(r, Ok(Frame::Error { reason: tether::proto::Reason::AlpnRequired, .. })), "{r:?}");
    assert_refused(&fleet, r, "alpn_missing").await;

    // The live session still works, and the real agent is still attached.
    live.write_all(b"after!").await.unwrap();
    live.flush().await.unwrap();
    within(30, live.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"after!");
    assert_eq!(fleet.metric(0, "tether_relay_agents_attached", &[]).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_time_out_and_do_not_block_agents() {
    let fleet = Fleet::start(Opts { agent: false, handshake_timeout_ms: 1000, ..Opts::default() }).await;
    let addr = fleet.relays[0].control;
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // A legitimate agent attaches while 300 peers sit silent.
    let _agent = start_agent(fleet.dir(), &fleet.agent_cfg);
    fleet.wait_metric(0, "tether_relay_agents_attached", 1.0).await;
    let session = fleet.session("echo").await;
    let mut t = within(30, session.connect()).await.unwrap();
    t.write_all(b"ok").await.unwrap();
    t.flush().await.unwrap();
    let mut b = [0u8; 2];
    within(30, t.read_exact(&mut b)).await.unwrap();

    // Each silent peer is dropped after the handshake timeout.
    eventually("300 handshake timeouts counted", async || {
        fleet.metric(0, "tether_relay_handshake_failures_total", &["reason=\"timeout\""]).await >= 300.0
    })
    .await;
    for mut s in idle {
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("relay closed it");
        assert!(matches!(n, Ok(0) | Err(_)), "half-open connection still open");
    }
}
