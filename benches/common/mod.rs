//! Setup shared by the in-process benches: a real relay on port 0, a real
//! agent, a client profile, all on a generated dev PKI.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tether::client::{ClientSession, Profile, RelayEntry};
use tether::config::ConfigFile;
use tether::relay::{BoundAddrs, Listeners, RelayConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Bytes moved per measured connection.
pub const SIZE: usize = 32 << 20;

/// Reads to EOF, then answers with the count (8 bytes).
pub async fn sink_conn<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    while let Ok(k) = s.read(&mut buf).await {
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    let _ = s.write_all(&n.to_be_bytes()).await;
    let _ = s.shutdown().await;
}

/// Writes SIZE bytes, half-closes, and checks the sink's count.
pub async fn push<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let buf = vec![0x17u8; 256 * 1024];
    for _ in 0..SIZE / buf.len() {
        s.write_all(&buf).await.unwrap();
    }
    s.shutdown().await.unwrap();
    let mut n = [0u8; 8];
    s.read_exact(&mut n).await.unwrap();
    assert_eq!(u64::from_be_bytes(n), SIZE as u64);
}

/// Starts a relay (raw legs, no twin) on loopback port 0.
pub async fn start_relay(pki: &Path, dir: &Path, stop: CancellationToken) -> BoundAddrs {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let cfg = RelayConfig {
        name: "relay-a".into(),
        control: any,
        data: any,
        client: any,
        admin: any,
        ca: pki.join("ca.pem"),
        cert: pki.join("relay-a.pem"),
        key: pki.join("relay-a.key"),
        crl: None,
        grant_public_key: pki.join("grant.pub"),
        audit_log: dir.join("relay-audit.jsonl"),
        replay_file: None,
        dev: false,
        raw_legs: true,
        proxy_protocol_from: vec![],
        audit_rotate_bytes: 0,
        quic: false,
        quic_agents: None,
        quic_clients: None,
        twin: None,
        hub: None,
        limits: Default::default(),
    };
    let listeners = Listeners::bind(&cfg).await.unwrap();
    let addrs = listeners.addrs();
    tokio::spawn(tether::relay::run(listeners, cfg, stop));
    addrs
}

/// Starts the real agent for `device` (its cert in `dir/pki`) with `services`.
pub async fn start_agent(
    dir: &Path,
    device: &str,
    relay: &BoundAddrs,
    services: &[(&str, SocketAddr)],
    stop: CancellationToken,
) {
    let mut toml = format!(
        "device = \"{device}\"\nca = \"pki/ca.pem\"\ncert = \"pki/{device}.pem\"\nkey = \"pki/{device}.key\"\n\
         grant_public_key = \"pki/grant.pub\"\nconsent = \"auto\"\noperator_socket = \"agent.sock\"\naudit_log = \"agent-audit.jsonl\"\n\
         [[relays]]\nname = \"relay-a\"\ncontrol = \"{}\"\ndata = \"{}\"\nserver_name = \"localhost\"\n",
        relay.control, relay.data
    );
    for (name, addr) in services {
        toml += &format!("[services.{name}]\ntarget = \"{addr}\"\n");
    }
    std::fs::write(dir.join("agent.toml"), toml).unwrap();
    let cfg = tether::agent::AgentConfig::load(&dir.join("agent.toml")).unwrap();
    tokio::spawn(tether::agent::run(cfg, stop));
}

pub fn profile(pki: &Path, client: SocketAddr) -> Profile {
    Profile {
        specialist: "bench".into(),
        role: "engineer".into(),
        ca: pki.join("ca.pem"),
        hub: None,
        path: None,
        grant_signing_key: Some(pki.join("grant.key")),
        grant_ttl_secs: 600,
        repo_targets_key: None,
        resume_buffer_bytes: 8 << 20,
        resume_deadline_secs: 30,
        transport: tether::quic::Transport::Tcp,
        relays: vec![RelayEntry {
            name: "relay-a".into(),
            addr: client.to_string(),
            server_name: Some("localhost".into()),
        }],
    }
}

/// Opens a session, retrying while the agent is still attaching.
pub async fn open_session(profile: &Profile, device: &str, service: &str) -> Arc<ClientSession> {
    for _ in 0..100 {
        if let Ok(s) = ClientSession::open(profile, device, service).await {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no session to {device}/{service}: agent never attached");
}
