//! `relay.toml`.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::twin::TwinConfig;

use crate::config::{ConfigFile, must_exist, resolve};

/// Everything a relay needs; see `tether dev init` for a generated example.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// This relay's name, as grants and agents know it (`relay-a`).
    pub name: String,
    /// Agent control channels (17001).
    pub control: SocketAddr,
    /// Agent data legs (17002).
    pub data: SocketAddr,
    /// Specialist legs (17443).
    pub client: SocketAddr,
    /// QUIC (UDP) for agents and specialists. Default true.
    #[serde(default = "default_true")]
    pub quic: bool,
    /// UDP address of agents' QUIC; default: the data address's.
    #[serde(default)]
    pub quic_agents: Option<SocketAddr>,
    /// UDP address of specialists' QUIC; default: the client address's.
    #[serde(default)]
    pub quic_clients: Option<SocketAddr>,
    /// `/metrics`, `/healthz`, `/readyz` (17090).
    pub admin: SocketAddr,
    /// Fleet root CA (PEM) that device certificates must chain to.
    pub ca: PathBuf,
    /// This relay's certificate chain and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Optional CRL (PEM) of revoked device certificates.
    #[serde(default)]
    pub crl: Option<PathBuf>,
    /// The hub's grant-verifying key (hex of the Ed25519 public key).
    pub grant_public_key: PathBuf,
    /// Append-only audit log (JSON lines, hash-chained).
    pub audit_log: PathBuf,
    /// Start a new audit file past this size (bytes; 0: never). The full
    /// one is renamed `NAME.SEQ`; `tether audit verify NAME.* NAME` checks
    /// the chain across them. Default 64 MiB.
    #[serde(default = "crate::config::default_audit_rotate_bytes")]
    pub audit_rotate_bytes: u64,
    /// Development only: accept the committed `certs-dev/` material.
    #[serde(default)]
    pub dev: bool,
    /// Session ids of grants used or revoked, kept until they expire, so
    /// that a restart admits none of them again (default: beside the audit
    /// log, `NAME.used-grants`).
    #[serde(default)]
    pub replay_file: Option<PathBuf>,
    /// Accept raw-TCP legs (HMAC-authenticated preamble; payload is end-to-end
    /// TLS) besides TLS legs on the data and client ports. Default true: the
    /// relay then does no cryptography per byte.
    #[serde(default = "default_true")]
    pub raw_legs: bool,
    /// Load balancers in front of the client port (CIDR blocks)
    /// that send a PROXY v2 header (HAProxy `send-proxy-v2`): from them it is
    /// required and its source is used for per-source limits and audit; from
    /// anyone else a PROXY header is refused. Default: none.
    #[serde(default)]
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
    /// The twin of this relay's pair, and where this relay listens for it.
    #[serde(default)]
    pub twin: Option<TwinConfig>,
    /// The hub this relay reports to (load, agents, session ends, audit head)
    /// and takes revocations from.
    #[serde(default)]
    pub hub: Option<HubLink>,
    #[serde(default)]
    pub limits: RelayLimits,
}

/// Reports to the hub: HTTPS with this relay's certificate as client certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubLink {
    /// `https://host:port` of the hub's API.
    pub url: String,
    /// Name to verify in the hub's certificate; defaults to the URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Report period; revocations reach this relay within it.
    #[serde(default = "default_report_ms")]
    pub report_ms: u64,
}

fn default_report_ms() -> u64 {
    250
}

/// Timeouts and caps; defaults suit production.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayLimits {
    /// A TLS handshake and first frame must complete within this.
    pub handshake_timeout_ms: u64,
    /// Concurrent handshakes per listener; past this, new connections are refused at once.
    pub max_handshakes: usize,
    /// Concurrent handshakes per listener from one source address.
    pub max_pending_per_source: usize,
    /// A new connection must send its first byte within this.
    pub first_byte_ms: u64,
    /// Concurrent connections of all kinds (each QUIC stream counts as one).
    pub max_connections: usize,
    /// Streams one QUIC connection may hold open at once (an agent's: its
    /// control channel and every tunnelled connection of its sessions; a
    /// session's: one per connection). Granted 16 at first, more as they are used.
    pub quic_max_streams: u32,
    /// Heartbeat interval announced to agents.
    pub heartbeat_secs: u32,
    /// An agent silent for this long is dropped.
    pub agent_idle_timeout_secs: u64,
    /// How long a client join waits for the agent's data leg.
    pub pairing_timeout_ms: u64,
    /// How long a client waits for the agent's decision (covers on-site consent).
    pub decision_timeout_secs: u64,
    /// Longest a session may last.
    pub max_session_secs: u64,
    /// Time given to live tasks to finish after SIGTERM.
    pub drain_secs: u64,
    /// Threads that run the relay: 0 (the default) is one per core, for a
    /// relay with a machine of its own; 1 runs it on one thread, which
    /// costs no wake-up of another thread between its tasks, for a relay
    /// that shares a small machine (`tether dev`, docs/operator.md).
    pub threads: usize,
}

fn default_true() -> bool {
    true
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            handshake_timeout_ms: 10_000,
            max_handshakes: 4096,
            max_pending_per_source: 512,
            first_byte_ms: 1000,
            max_connections: 50_000,
            quic_max_streams: 16_384,
            heartbeat_secs: 30,
            agent_idle_timeout_secs: 95,
            pairing_timeout_ms: 10_000,
            decision_timeout_secs: 330,
            max_session_secs: 8 * 3600,
            drain_secs: 10,
            threads: 0,
        }
    }
}

impl ConfigFile for RelayConfig {
    fn resolve_paths(&mut self, base: &Path) {
        for p in [&mut self.ca, &mut self.cert, &mut self.key, &mut self.grant_public_key, &mut self.audit_log] {
            resolve(base, p);
        }
        if let Some(crl) = self.crl.as_mut() {
            resolve(base, crl);
        }
        if let Some(p) = self.replay_file.as_mut() {
            resolve(base, p);
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        crate::config::refuse_dev_material(
            &mut p,
            self.dev,
            &[("ca", self.ca.as_path()), ("grant_public_key", self.grant_public_key.as_path())],
        );
        if self.name.trim().is_empty() {
            p.push("name: must not be empty".into());
        }
        must_exist(&mut p, "ca", &self.ca);
        must_exist(&mut p, "cert", &self.cert);
        must_exist(&mut p, "key", &self.key);
        must_exist(&mut p, "grant_public_key", &self.grant_public_key);
        if let Some(crl) = &self.crl {
            must_exist(&mut p, "crl", crl);
        }
        let l = &self.limits;
        if l.heartbeat_secs == 0 {
            p.push("limits.heartbeat_secs: must be at least 1".into());
        }
        if l.agent_idle_timeout_secs <= u64::from(l.heartbeat_secs) {
            p.push("limits.agent_idle_timeout_secs: must exceed heartbeat_secs".into());
        }
        if let Some(t) = &self.twin
            && t.name == self.name
        {
            p.push("twin.name: must differ from this relay's name".into());
        }
        if l.threads > 1024 {
            p.push("limits.threads: at most 1024 (0 is one per core)".into());
        }
        if l.max_handshakes == 0 || l.max_connections == 0 {
            p.push("limits: max_handshakes and max_connections must be at least 1".into());
        }
        p
    }
}

impl RelayConfig {
    /// Where used grants are kept: `replay_file`, or beside the audit log.
    pub fn replay_path(&self) -> PathBuf {
        self.replay_file.clone().unwrap_or_else(|| self.audit_log.with_extension("used-grants"))
    }
}
