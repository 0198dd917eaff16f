//! What a TLS handshake costs in CPU, with and without ML-KEM: both ends in
//! one thread, bytes handed over in memory (no sockets), so the time is the
//! handshake's computation on both sides together.
//!
//! The server is a relay's agent listener (P-256 certificate, client
//! certificate required) with tether's provider, which prefers
//! X25519MLKEM768. The client presents a device certificate and offers
//! either tether's groups (`pq`: X25519MLKEM768 is chosen) or only classical
//! ones (`classical`: X25519, what a peer without ML-KEM gets). `resumed`
//! is a TLS 1.3 resumption with a fresh key exchange (psk_dhe_ke), as a
//! session's end-to-end connections did before `keyed`; `keyed` is what a
//! session's later connections cost now (`tether::stream::derived`): the
//! client's header, the agent's check, and both ends' keys.
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use tether::stream::derived;
use tether::tls;

/// Moves what `from` has to send into `to`.
fn transfer<A, B>(from: &mut rustls::ConnectionCommon<A>, to: &mut rustls::ConnectionCommon<B>, buf: &mut Vec<u8>) {
    buf.clear();
    while from.wants_write() {
        from.write_tls(buf).unwrap();
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).unwrap();
        to.process_new_packets().unwrap();
    }
}

fn pump(client: &mut ClientConnection, server: &mut ServerConnection) {
    let mut buf = Vec::with_capacity(16 << 10);
    for _ in 0..16 {
        // Done once both ends finished and the server's tickets arrived.
        if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() && !server.wants_write() {
            return;
        }
        transfer(client, server, &mut buf);
        transfer(server, client, &mut buf);
    }
    panic!("handshake did not finish");
}

fn client_config(pki: &std::path::Path, provider: Arc<rustls::crypto::CryptoProvider>) -> Arc<ClientConfig> {
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(tls::load_roots(&pki.join("ca.pem")).unwrap())
        .with_client_auth_cert(
            tls::load_certs(&pki.join("bench-1.pem")).unwrap(),
            tls::load_key(&pki.join("bench-1.key")).unwrap(),
        )
        .unwrap();
    cfg.alpn_protocols = vec![tls::ALPN_AGENT.to_vec()];
    Arc::new(cfg)
}

fn one(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> &'static str {
    let name = tls::server_name("localhost").unwrap();
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    pump(&mut c, &mut s);
    match c.handshake_kind() {
        Some(rustls::HandshakeKind::Resumed) => "resumed",
        _ => "full",
    }
}

fn handshakes(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path();
    tls::pki::init_dir(pki, &["bench-1"]).unwrap();
    let id = tls::Identity { ca: &pki.join("ca.pem"), cert: &pki.join("relay-a.pem"), key: &pki.join("relay-a.key") };
    let server = tls::server_config(&id, true, None, tls::ALPN_AGENT).unwrap();

    let mut g = c.benchmark_group("tls_handshake");
    for (label, provider) in [("pq", tls::provider()), ("classical", tls::classical_provider())] {
        // Full: a client without a ticket for this server.
        let mut fresh = (*client_config(pki, provider.clone())).clone();
        fresh.resumption = rustls::client::Resumption::disabled();
        let fresh = Arc::new(fresh);
        assert_eq!(one(&fresh, &server), "full");
        g.bench_function(format!("full_{label}"), |b| b.iter(|| one(&fresh, &server)));

        // Resumed: the client holds tickets from an earlier handshake.
        let resuming = client_config(pki, provider);
        one(&resuming, &server);
        assert_eq!(one(&resuming, &server), "resumed");
        g.bench_function(format!("resumed_{label}"), |b| b.iter(|| one(&resuming, &server)));
    }
    // Keyed from one handshake's exporter secret: no handshake at all.
    let name = tls::server_name("localhost").unwrap();
    let (mut cl, mut sv) = (
        ClientConnection::new(client_config(pki, tls::provider()), name).unwrap(),
        ServerConnection::new(server.clone()).unwrap(),
    );
    pump(&mut cl, &mut sv);
    let session = tether::proto::SessionId([7; 16]);
    let client_secret = derived::SessionSecret::export(&cl, &session, 1).unwrap();
    let agent_secret = derived::SessionSecret::export(&sv, &session, 1).unwrap();
    let mut conn = 1u32;
    g.bench_function("keyed", |b| {
        b.iter(|| {
            conn += 1;
            let (h, keys) = client_secret.open(&session, conn);
            let _up = keys.upstream();
            let at_agent = agent_secret.accept(&derived::Header::parse(&h).unwrap(), &session, conn).unwrap();
            let salt = [3u8; 16];
            (
                at_agent.upstream(),
                at_agent.downstream(&salt),
                at_agent.resume_key(),
                keys.downstream(&salt),
                keys.resume_key(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, handshakes);
criterion_main!(benches);
