//! Post-quantum key exchange on every TLS surface: each handshake between
//! tether's own parts negotiates X25519MLKEM768, and a peer without ML-KEM
//! still connects with X25519 in one round trip (no HelloRetryRequest).
use std::sync::Arc;

use tether::agent::operator::{Request, request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;
use crate::hub::hub_metrics;

const PQ: &str = "group=\"X25519MLKEM768\"";
const METRIC: &str = "tether_tls_handshakes_total";

/// Asserts that `text` counts handshakes on `surface`, every one of them PQ.
fn all_pq(text: &str, who: &str, surface: &str) {
    let on = format!("surface=\"{surface}\"");
    let pq = parse_metric(text, METRIC, &[&on, PQ]);
    let all = parse_metric(text, METRIC, &[&on]);
    assert!(pq >= 1.0, "{who}: no X25519MLKEM768 handshake on {surface}:\n{text}");
    assert_eq!(pq, all, "{who}: a handshake on {surface} without X25519MLKEM768:\n{text}");
}

async fn echo(addr: std::net::SocketAddr) {
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(b"post-quantum").await.unwrap();
    let mut back = [0u8; 12];
    within(10, c.read_exact(&mut back)).await.unwrap();
    assert_eq!(&back, b"post-quantum");
}

async fn agent_metrics(fleet: &Fleet) -> String {
    let v = request(&fleet.socket(), &Request::Metrics).await.unwrap();
    v["text"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tls_surface_negotiates_x25519mlkem768() {
    // TLS data legs (not raw), twins, and a hub the relays report to: every surface.
    let fleet = Fleet::start(Opts { relays: 2, twins: true, hub: true, raw_legs: false, ..Opts::default() }).await;
    let (_session, local) = serve_locally(&fleet).await;
    echo(local).await;
    echo(local).await;
    eventually("both relays report to the hub and hold their twin link", async || {
        let m = fleet.metrics(0).await;
        parse_metric(&m, METRIC, &["surface=\"hub\""]) >= 1.0 && parse_metric(&m, METRIC, &["surface=\"twin\""]) >= 2.0
    })
    .await;

    // The relay: agents' control channels and data legs, specialists' legs,
    // the twin link (both directions), its reports to the hub.
    let relay = fleet.metrics(0).await;
    for surface in ["control", "data", "client", "twin", "hub"] {
        all_pq(&relay, "relay-a", surface);
    }
    // The hub: its HTTPS, which the relays dial.
    let hub = hub_metrics(&fleet).await;
    all_pq(&hub, "hub", "hub");
    // The agent: the end-to-end TLS with the client (the relay never sees
    // it), and the legs it dials.
    let agent = agent_metrics(&fleet).await;
    for surface in ["e2e", "control", "data"] {
        all_pq(&agent, "agent", surface);
    }
    // Two tunnelled connections, one end-to-end handshake: the second is
    // keyed from the first's secret (which only this session's two ends hold).
    assert!(parse_metric(&agent, METRIC, &["surface=\"e2e\""]) >= 1.0, "{agent}");
    assert_eq!(parse_metric(&agent, "tether_agent_e2e_connections_total", &["kind=\"handshake\""]), 1.0, "{agent}");
    assert_eq!(parse_metric(&agent, "tether_agent_e2e_connections_total", &["kind=\"keyed\""]), 1.0, "{agent}");
}

/// Dials `addr` with a client that has no ML-KEM; returns the negotiated group.
async fn classical_dial(fleet: &Fleet, addr: &str, alpn: &[u8]) -> String {
    let mut cfg = rustls::ClientConfig::builder_with_provider(tether::tls::classical_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(tether::tls::load_roots(&fleet.pki.path("ca.pem")).unwrap())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tls = tether::tls::dial(addr, "localhost", Arc::new(cfg)).await.unwrap();
    let conn = tls.get_ref().1;
    assert_eq!(conn.handshake_kind(), Some(rustls::HandshakeKind::Full), "no HelloRetryRequest");
    format!("{:?}", conn.negotiated_key_exchange_group().unwrap().name())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_ml_kem_gets_x25519_in_one_round_trip() {
    let fleet = Fleet::start(Opts { hub: true, agent: false, ..Opts::default() }).await;
    let hub = fleet.hub.as_ref().unwrap().addr.to_string();
    let client = fleet.relays[0].client.to_string();
    assert_eq!(classical_dial(&fleet, &hub, tether::tls::ALPN_HTTP1).await, "X25519");
    assert_eq!(classical_dial(&fleet, &client, tether::tls::ALPN_CLIENT).await, "X25519");
    let x25519 = ["group=\"X25519\"", "kind=\"full\""];
    eventually("the relay counts the classical handshake", async || {
        fleet.metric(0, METRIC, &[&["surface=\"client\""], &x25519[..]].concat()).await == 1.0
    })
    .await;
    assert_eq!(fleet.metric(0, METRIC, &["kind=\"retry\""]).await, 0.0);

    // A real old client: Debian's curl (OpenSSL 3.0, no ML-KEM) against the hub.
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(fleet.pki.path("ca.pem"))
        .arg(format!("https://{hub}/api/v1/healthz"))
        .output()
        .expect("curl runs (.ci/run installs it)");
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    let hub_metrics = hub_metrics(&fleet).await;
    // The rustls client above and curl: two classical handshakes, no retry.
    assert_eq!(parse_metric(&hub_metrics, METRIC, &[&["surface=\"hub\""], &x25519[..]].concat()), 2.0, "{hub_metrics}");
    assert_eq!(parse_metric(&hub_metrics, METRIC, &["kind=\"retry\""]), 0.0, "{hub_metrics}");
}
