//! The agent's shared state: sessions, pending consents, channels to relays.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dashmap::DashMap;
use rustls::ClientConfig;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{AgentConfig, AgentError};
use crate::audit::AuditLog;
use crate::metrics;
use crate::proto::{Frame, Grant, GrantVerifier, Reason, SessionId};
use crate::tls;

/// An admitted session as the device sees it.
pub struct AgentSession {
    pub id: SessionId,
    pub relay: String,
    pub service: String,
    pub specialist: String,
    pub started: Instant,
    pub to_service: AtomicU64,
    pub from_service: AtomicU64,
    pub tunnels: AtomicU64,
    pub cancel: CancellationToken,
    /// End-to-end TLS for this session: accepts only the grant's client key.
    pub e2e: Arc<rustls::ServerConfig>,
    /// Connection numbers seen (each may be opened once).
    pub conns: Mutex<crate::util::NumberSet>,
    /// Live resumable streams, by connection number: where replacement legs go.
    pub resumable: DashMap<u32, mpsc::Sender<(crate::leg::Leg, bytes::Bytes, String)>>,
    /// Connections that were live here and are over (their service side
    /// closed or failed): a resume of one is refused for good.
    pub ended: Mutex<crate::util::NumberSet>,
    /// Secrets of its end-to-end TLS connections, which key its later ones.
    pub secrets: crate::stream::derived::Secrets,
}

impl AgentSession {
    /// Connection `conn` is over here: no replacement leg goes to it, and a
    /// resume of it is refused for good.
    pub fn over(&self, conn: u32) {
        self.resumable.remove(&conn);
        if let Ok(mut e) = self.ended.lock() {
            e.insert(conn);
        }
    }
}

/// A maintenance job waiting for the on-site operator.
pub struct PendingJob {
    pub kind: &'static str,
    pub target: String,
    pub created_by: String,
    pub since: Instant,
    pub answer: oneshot::Sender<(bool, String)>,
}

/// A request waiting for the on-site operator.
pub struct Pending {
    pub grant: Grant,
    pub service: String,
    pub relay: String,
    pub since: Instant,
    pub answer: oneshot::Sender<(bool, String)>,
}

/// Withdrawn requests remembered at most (`AgentState::note_withdrawn`).
const WITHDRAWN_MAX: usize = 1024;

pub struct AgentState {
    pub cfg: AgentConfig,
    pub grants: GrantVerifier,
    pub audit: AuditLog,
    pub control_tls: Arc<ClientConfig>,
    pub data_tls: Arc<ClientConfig>,
    /// QUIC: the device's certificate, ALPN of agents' QUIC connections.
    pub quic_tls: Arc<ClientConfig>,
    /// The QUIC connection to each relay whose control channel runs on one:
    /// data and fetch legs to that relay are streams on it.
    pub quic: DashMap<String, quinn::Connection>,
    pub sessions: DashMap<SessionId, Arc<AgentSession>>,
    pub pending: DashMap<SessionId, Pending>,
    /// Requests a relay withdrew before this agent had taken them up (the
    /// relay gave up on a device that ran again only later, or the
    /// specialist left): `access.rs` starts none of them. Bounded.
    withdrawn: Mutex<std::collections::HashMap<SessionId, Reason>>,
    /// Jobs waiting for the on-site operator, by job id.
    pub pending_jobs: DashMap<String, PendingJob>,
    /// Outgoing frames per relay name, while its channel is up.
    pub relays: DashMap<String, mpsc::Sender<Frame>>,
    /// How far this device's clock is off from each relay's (milliseconds,
    /// device minus relay), as the last heartbeat answer said.
    pub clock: DashMap<String, i64>,
    /// Relays older than this agent, which refuse a heartbeat that carries
    /// a clock: they get heartbeats without one.
    pub no_clock: dashmap::DashSet<String>,
    /// The clock was found outside the device's own certificate's validity
    /// (audited once per run).
    pub clock_suspect: std::sync::atomic::AtomicBool,
    seen: Mutex<crate::util::ReplaySet<SessionId>>,
    pub shutdown: CancellationToken,
    /// Held by the one repository update or download running at a time.
    pub fetching: tokio::sync::Mutex<()>,
    /// A relay said this device's jobs changed (or a channel came up).
    pub jobs_waiting: tokio::sync::Notify,
}

impl AgentState {
    pub fn new(cfg: AgentConfig, shutdown: CancellationToken) -> Result<Arc<AgentState>, AgentError> {
        let cert = Some((cfg.cert.as_path(), cfg.key.as_path()));
        let crl = cfg.crl.as_deref();
        Ok(Arc::new(AgentState {
            grants: tls::load_grant_verifier(&cfg.grant_public_key)?,
            audit: AuditLog::open_signed(&cfg.audit_log, &cfg.key)?.rotating_at(cfg.audit_rotate_bytes),
            control_tls: tls::client_config_with_crl(&cfg.ca, crl, cert, tls::ALPN_AGENT)?,
            data_tls: tls::client_config_with_crl(&cfg.ca, crl, cert, tls::ALPN_DATA)?,
            quic_tls: tls::quic_client_config(&cfg.ca, crl, cert, tls::ALPN_QUIC_AGENT)?,
            quic: DashMap::new(),
            sessions: DashMap::new(),
            pending: DashMap::new(),
            withdrawn: Default::default(),
            pending_jobs: DashMap::new(),
            relays: DashMap::new(),
            clock: DashMap::new(),
            no_clock: dashmap::DashSet::new(),
            clock_suspect: Default::default(),
            seen: Mutex::new(
                crate::util::ReplaySet::persistent(&cfg.replay_path(), crate::util::now_secs())
                    .map_err(|source| AgentError::State { path: cfg.replay_path(), source })?,
            ),
            shutdown,
            fetching: tokio::sync::Mutex::new(()),
            jobs_waiting: tokio::sync::Notify::new(),
            cfg,
        }))
    }

    /// Notes that a relay withdrew request `id`, which is neither live nor
    /// waiting for consent here (its frame is read, its handling not begun).
    pub fn note_withdrawn(&self, id: SessionId, reason: Reason) {
        let mut w = crate::util::lock(&self.withdrawn);
        if w.len() >= WITHDRAWN_MAX {
            w.clear(); // a relay that names thousands of unknown sessions loses nothing real
        }
        w.insert(id, reason);
    }

    /// Why request `id` was withdrawn before it was taken up, if it was.
    pub fn take_withdrawn(&self, id: SessionId) -> Option<Reason> {
        crate::util::lock(&self.withdrawn).remove(&id)
    }

    /// The head of the audit chain, signed, as a relay passes it on.
    pub fn head_frame(&self) -> Frame {
        let (seq, hash) = self.audit.head();
        let sig = self.audit.sign_head(&hash);
        Frame::AuditHead { seq, hash, sig }
    }

    /// Records a session id as used; false if it was seen before (replay).
    pub fn first_use(&self, id: SessionId, expires_at: u64, now: u64) -> bool {
        crate::util::lock(&self.seen).first_use(id, expires_at, now)
    }

    /// Counts and audits a refusal by the agent.
    pub fn refused(&self, event: &str, reason: Reason, fields: serde_json::Value) {
        metrics::AGENT_REFUSALS.with_label_values(&[reason.label()]).inc();
        self.audit.refusal(event, ("device", &self.cfg.device), reason.label(), fields);
    }

    /// Ends a session once: stops its tunnels, audits, and tells its relay if asked.
    pub fn end_session(&self, id: SessionId, reason: Reason, tell_relay: bool) -> bool {
        let Some((_, s)) = self.sessions.remove(&id) else { return false };
        s.cancel.cancel();
        metrics::AGENT_SESSIONS_ACTIVE.dec();
        let (to_device, to_client) = (s.to_service.load(Ordering::Relaxed), s.from_service.load(Ordering::Relaxed));
        tracing::info!(session = %id, reason = reason.label(), to_device, to_client, "session ended");
        self.audit.record(
            "session_end",
            json!({
                "device": self.cfg.device, "session": id.to_string(), "relay": s.relay, "service": s.service,
                "specialist": s.specialist, "reason": reason.label(), "duration_ms": s.started.elapsed().as_millis() as u64,
                "tunnels": s.tunnels.load(Ordering::Relaxed), "bytes_to_device": to_device, "bytes_to_client": to_client,
            }),
        );
        if tell_relay && let Some(tx) = self.relays.get(&s.relay) {
            let _ = tx.try_send(Frame::SessionEnd {
                session: id,
                reason,
                bytes_to_device: to_device,
                bytes_to_client: to_client,
            });
        }
        true
    }

    /// A relay's channel was lost. While a twin is still attached, sessions go
    /// on (their connections resume through it); otherwise they end: with
    /// `agent_gone` when the agent itself is stopping (the relays record the
    /// same), else `relay_gone`.
    pub fn relay_lost(&self, relay: &str) {
        self.pending.retain(|_, p| p.relay != relay);
        if !self.relays.is_empty() {
            return;
        }
        let reason = if self.shutdown.is_cancelled() { Reason::AgentGone } else { Reason::RelayGone };
        let ids: Vec<_> = self.sessions.iter().map(|s| s.id).collect();
        for id in ids {
            self.end_session(id, reason, false);
        }
    }
}
