//! The relay's shared state: attached agents, sessions, waiters, limits.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dashmap::DashMap;
use serde_json::json;
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::RelayConfig;
use super::session::Session;
use crate::audit::AuditLog;
use crate::leg::Leg;
use crate::metrics;
use crate::proto::twin::Fact;
use crate::proto::{Frame, GrantVerifier, Outcome, Reason, SessionId};
use crate::twin::PeerView;
use crate::util::{ReplaySet, lock};

/// A live agent control channel.
pub struct AgentHandle {
    pub attach_id: u64,
    pub tx: mpsc::Sender<Frame>,
    pub cancel: CancellationToken,
    pub agent_version: String,
    /// Unix seconds of the last heartbeat (or the attach).
    pub last_heartbeat: AtomicU64,
    /// The agent's audit chain head, as it last told us.
    pub audit_head: Mutex<Option<(u64, String)>>,
}

/// What the next report to the hub carries besides the current load.
#[derive(Default)]
pub struct HubOutbox {
    pub started: Vec<String>,
    pub ended: Vec<crate::api::EndedSession>,
    /// Agents attached or detached since the last answered report.
    pub agents_changed: bool,
}

/// Past this many unreported session ends, the oldest are dropped (the
/// audit log keeps them all).
const HUB_OUTBOX_CAP: usize = 100_000;

/// What a client join waits for.
pub enum LegEvent {
    Leg(Leg, Bytes),
    Failed(Reason),
}

pub struct State {
    pub cfg: RelayConfig,
    pub grants: GrantVerifier,
    pub audit: AuditLog,
    pub agents: DashMap<String, AgentHandle>,
    pub sessions: DashMap<SessionId, Arc<Session>>,
    /// Session ids already used, with the grant's expiry (purged after it).
    consumed: Mutex<ReplaySet<SessionId>>,
    pub decisions: DashMap<SessionId, (u64, oneshot::Sender<(Outcome, Reason)>)>,
    /// Joins waiting for their data leg, with the one-time key its MAC uses.
    pub legs: DashMap<(SessionId, u32), ([u8; 32], oneshot::Sender<LegEvent>)>,
    pub ready: AtomicBool,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    pub conn_limit: Arc<Semaphore>,
    pub hs_limit: Arc<Semaphore>,
    pub taps: super::Taps,
    next_attach: AtomicU64,
    /// Facts this relay is the authority for, streamed to the twin.
    pub facts: broadcast::Sender<Fact>,
    /// What the twin holds, as it told us.
    pub peer: Mutex<PeerView>,
    /// The twin's facts are flowing to us.
    pub twin_in_up: AtomicBool,
    /// Facts sent to the twin and not yet acknowledged.
    pub twin_lag: AtomicU64,
    /// Cancelled when the relay lets go of its connections: at the end of a
    /// drain (sessions go on at the twin) or of a shutdown without twin.
    pub drain: CancellationToken,
    /// Requests for the twin (not facts): `TwinOpen`.
    pub twin_out: mpsc::UnboundedSender<Frame>,
    pub twin_out_rx: Mutex<Option<mpsc::UnboundedReceiver<Frame>>>,
    pub hub_out: Mutex<HubOutbox>,
}

impl State {
    pub fn new(
        cfg: RelayConfig,
        shutdown: CancellationToken,
        taps: super::Taps,
    ) -> Result<Arc<State>, super::RelayError> {
        let grants = crate::tls::pki::load_grant_verifier(&cfg.grant_public_key)?;
        let (twin_out, twin_out_rx) = mpsc::unbounded_channel();
        let audit = AuditLog::open(&cfg.audit_log)?;
        Ok(Arc::new(State {
            grants,
            audit,
            agents: DashMap::new(),
            sessions: DashMap::new(),
            consumed: Mutex::new(ReplaySet::default()),
            decisions: DashMap::new(),
            legs: DashMap::new(),
            ready: AtomicBool::new(true),
            shutdown,
            tracker: TaskTracker::new(),
            conn_limit: Arc::new(Semaphore::new(cfg.limits.max_connections)),
            hs_limit: Arc::new(Semaphore::new(cfg.limits.max_handshakes)),
            next_attach: AtomicU64::new(1),
            taps,
            facts: broadcast::channel(8192).0,
            peer: Mutex::new(PeerView::default()),
            twin_in_up: AtomicBool::new(false),
            twin_lag: AtomicU64::new(0),
            drain: CancellationToken::new(),
            twin_out,
            twin_out_rx: Mutex::new(Some(twin_out_rx)),
            hub_out: Mutex::new(HubOutbox { agents_changed: true, ..HubOutbox::default() }),
            cfg,
        }))
    }

    pub fn next_attach_id(&self) -> u64 {
        self.next_attach.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts and audits a failed TLS handshake. The peer already got the TLS alert.
    pub fn handshake_failed(&self, listener: &str, peer: SocketAddr, reason: &str, detail: &str) {
        tracing::info!(listener, reason, detail, "handshake failed");
        metrics::RELAY_HANDSHAKE_FAILURES.with_label_values(&[listener, reason]).inc();
        self.audit.record(
            "handshake_refused",
            json!({"relay": self.cfg.name, "listener": listener, "peer": peer.to_string(), "reason": reason, "detail": detail}),
        );
    }

    /// Counts and audits a refused frame-level request.
    pub fn refused(
        &self,
        event: &str,
        metric: &prometheus::IntCounterVec,
        reason: Reason,
        mut fields: serde_json::Value,
    ) {
        metric.with_label_values(&[reason.label()]).inc();
        if let Some(m) = fields.as_object_mut() {
            m.insert("relay".into(), self.cfg.name.clone().into());
            m.insert("reason".into(), reason.label().into());
        }
        tracing::info!(event, reason = reason.label(), "refused");
        self.audit.record(event, fields);
    }

    /// Marks a session id used. False when it was used before.
    pub fn consume(&self, session: SessionId, expires_at: u64, now: u64) -> bool {
        if self.peer().consumed.contains_key(&session) || !lock(&self.consumed).first_use(session, expires_at, now) {
            return false;
        }
        self.publish(Fact::Consumed { session, expires_at });
        true
    }

    /// Streams a fact to the twin (dropped when no link is up; the next
    /// link starts with a snapshot).
    pub fn publish(&self, fact: Fact) {
        let _ = self.facts.send(fact);
    }

    pub fn hub_out(&self) -> std::sync::MutexGuard<'_, HubOutbox> {
        lock(&self.hub_out)
    }

    /// Queues a session start for the hub's record.
    pub fn hub_started(&self, id: SessionId) {
        if self.cfg.hub.is_some() {
            let mut out = self.hub_out();
            if out.started.len() < HUB_OUTBOX_CAP {
                out.started.push(id.to_string());
            }
        }
    }

    /// Queues a session end (or a refusal by the device) for the hub's record.
    pub fn hub_ended(&self, id: SessionId, device: &str, reason: Reason, to_device: u64, to_client: u64, ms: u64) {
        if self.cfg.hub.is_none() {
            return;
        }
        let mut out = self.hub_out();
        if out.ended.len() >= HUB_OUTBOX_CAP {
            out.ended.remove(0);
        }
        out.ended.push(crate::api::EndedSession {
            session: id.to_string(),
            device: device.into(),
            reason: reason.label().into(),
            bytes_to_device: to_device,
            bytes_to_client: to_client,
            duration_ms: ms,
            ended_at: crate::proto::grant::now_secs(),
        });
    }

    pub fn peer(&self) -> std::sync::MutexGuard<'_, PeerView> {
        lock(&self.peer)
    }

    /// Session ids used here (for the twin's snapshot).
    pub fn consumed_snapshot(&self) -> Vec<(SessionId, u64)> {
        lock(&self.consumed).entries()
    }

    /// A session the twin admitted, taken up here so that its connections can
    /// pair through this relay (a load balancer may send them either way).
    pub fn adopt(&self, id: SessionId) -> Option<Arc<Session>> {
        let fact = self.peer().sessions.get(&id).cloned()?;
        // 0: the agent is attached only to the twin (requests go over the link).
        let attach_id = self.agents.get(&fact.device).map(|a| a.attach_id).unwrap_or(0);
        let session = Arc::new(Session::adopted(&fact, attach_id, CancellationToken::new()));
        let entry = self.sessions.entry(id).or_insert_with(|| {
            metrics::RELAY_SESSIONS_ACTIVE.inc();
            // Carried here now: if the admitting twin restarts, it learns the session back.
            self.publish(Fact::SessionUp(fact.clone()));
            self.audit.record(
                "session_adopted",
                json!({"relay": self.cfg.name, "session": id.to_string(), "device": fact.device, "service": fact.service,
                       "specialist": fact.specialist, "from_twin": self.cfg.twin.as_ref().map(|t| t.name.clone())}),
            );
            session
        });
        Some(entry.clone())
    }

    /// Our facts as they stand, for a snapshot to the twin.
    pub fn own_facts(&self) -> Vec<Fact> {
        let mut facts: Vec<Fact> = self.sessions.iter().map(|s| Fact::SessionUp(s.fact())).collect();
        facts.extend(
            self.consumed_snapshot().into_iter().map(|(session, expires_at)| Fact::Consumed { session, expires_at }),
        );
        facts.extend(self.agents.iter().map(|a| Fact::Attached { device: a.key().clone() }));
        facts
    }

    /// Ends a session once: removes it, signals its tasks, audits, counts,
    /// and tells the agent unless the agent itself ended it.
    pub fn end_session(&self, id: SessionId, reason: Reason, tell_agent: bool) {
        let Some((_, s)) = self.sessions.remove(&id) else { return };
        if let Ok(mut r) = s.end_reason.lock() {
            r.get_or_insert(reason);
        }
        s.end.cancel();
        metrics::RELAY_SESSIONS_ACTIVE.dec();
        metrics::RELAY_SESSIONS_ENDED.with_label_values(&[reason.label()]).inc();
        let (to_device, to_client) = (s.to_device.load(Ordering::Relaxed), s.to_client.load(Ordering::Relaxed));
        tracing::info!(session = %id, device = %s.device, reason = reason.label(), to_device, to_client, "session ended");
        self.audit.record(
            "session_end",
            json!({
                "relay": self.cfg.name, "session": id.to_string(), "device": s.device, "service": s.service, "adopted": s.adopted,
                "specialist": s.specialist, "client": s.client_addr, "reason": reason.label(),
                "duration_ms": s.started.elapsed().as_millis() as u64, "tunnels": s.tunnels.load(Ordering::Relaxed),
                "bytes_to_device": to_device, "bytes_to_client": to_client,
            }),
        );
        self.hub_ended(id, &s.device, reason, to_device, to_client, s.started.elapsed().as_millis() as u64);
        // Whichever twin ends a session says so; the other ends its copy.
        self.publish(Fact::SessionDown { session: id, reason });
        if tell_agent && let Some(agent) = self.agents.get(&s.device) {
            let _ = agent.tx.try_send(Frame::SessionEnd {
                session: id,
                reason,
                bytes_to_device: to_device,
                bytes_to_client: to_client,
            });
        }
    }

    /// Ends every session admitted through a control channel that is gone.
    pub fn agent_gone(&self, device: &str, attach_id: u64) {
        if self.drain.is_cancelled() && self.cfg.twin.is_some() {
            // Drained: the sessions go on at the twin.
            self.decisions.retain(|_, (a, _)| *a != attach_id);
            return;
        }
        let ids: Vec<SessionId> =
            self.sessions.iter().filter(|s| s.device == device && s.attach_id == attach_id).map(|s| s.id).collect();
        // During shutdown the channels close because of us, not the agent.
        let reason = if self.shutdown.is_cancelled() { Reason::RelayShutdown } else { Reason::AgentGone };
        for id in ids {
            self.end_session(id, reason, false);
        }
        self.decisions.retain(|_, (a, _)| *a != attach_id);
    }
}
