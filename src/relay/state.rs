//! The relay's shared state: attached agents, sessions, waiters, limits.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dashmap::DashMap;
use serde_json::json;
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::RelayConfig;
use super::pairing::Pairing;
use super::session::Session;
use crate::audit::AuditLog;
use crate::leg::Leg;
use crate::metrics;
use crate::proto::twin::Fact;
use crate::proto::{Frame, FrameIo, FrameIoError, GrantVerifier, Outcome, ProtoError, Reason, SessionId};
use crate::twin::{PeerView, Replica, TwinHost};
use crate::util::{ReplaySet, lock};

pub use super::agents::{AgentHandle, AgentTx};

/// What the next report to the hub carries besides the current load.
#[derive(Default)]
pub struct HubOutbox {
    pub started: Vec<String>,
    pub started_transports: Vec<String>,
    pub moved: Vec<String>,
    pub moved_transports: Vec<String>,
    pub ended: Vec<crate::api::EndedSession>,
    /// Agents attached or detached since the last answered report.
    pub agents_changed: bool,
}

/// Past this many unreported session ends, the oldest are dropped (the
/// audit log keeps them all).
const HUB_OUTBOX_CAP: usize = 100_000;

/// How long a join for an unknown session waits for the twin's replication
/// (the join can overtake the fact that announces its session by milliseconds).
pub const REPLICATION_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// The relay's pairing table: joins wake with a leg, requests with the device's decision.
pub type RelayPairing = Pairing<oneshot::Sender<LegEvent>, oneshot::Sender<(Outcome, Reason)>>;

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
    /// Joins waiting for their data leg, requests waiting for the device's decision.
    pairing: Mutex<RelayPairing>,
    pub ready: AtomicBool,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    pub conn_limit: Arc<Semaphore>,
    pub taps: super::Taps,
    next_attach: AtomicU64,
    /// Replication with the twin: its view, our facts, requests for it.
    pub replica: Arc<Replica>,
    /// Cancelled when the relay lets go of its connections: at the end of a
    /// drain (sessions go on at the twin) or of a shutdown without twin.
    pub drain: CancellationToken,
    pub hub_out: Mutex<HubOutbox>,
    /// Fetch legs' hub connections (none without a hub link).
    pub repo: Option<super::hub_pool::Forward>,
    /// The CA and CRL that device and twin certificates are checked against.
    pub trust: Arc<crate::tls::Trust>,
    /// Refused handshakes past the budget told one by one.
    pub refusals: crate::util::budget::Refusals,
    /// The devices the hub retired: dropped and refused.
    pub retired: super::retired::Retired,
}

impl State {
    /// How a session's bytes to the device are counted (and, in tests,
    /// tapped): the splice's, and what `streams::open` passes on before it.
    pub fn to_device_meter<'a>(
        &'a self,
        session: &'a Session,
        metric: &'a prometheus::IntCounter,
    ) -> crate::splice::Meter<'a> {
        crate::splice::Meter::with_metric(&session.to_device, metric).tapped(self.taps.to_device.as_ref())
    }

    pub fn new(
        cfg: RelayConfig,
        shutdown: CancellationToken,
        taps: super::Taps,
    ) -> Result<Arc<State>, super::RelayError> {
        let grants = crate::tls::load_grant_verifier(&cfg.grant_public_key)?;
        let audit = AuditLog::open_signed(&cfg.audit_log, &cfg.key)?.rotating_at(cfg.audit_rotate_bytes);
        let trust = crate::tls::Trust::get(&cfg.ca, cfg.crl.as_deref())?;
        Ok(Arc::new(State {
            trust,
            grants,
            audit,
            agents: DashMap::new(),
            sessions: DashMap::new(),
            consumed: Mutex::new(
                ReplaySet::persistent(&cfg.replay_path(), crate::util::now_secs())
                    .map_err(|source| super::RelayError::State { path: cfg.replay_path(), source })?,
            ),
            pairing: Mutex::new(Pairing::default()),
            ready: AtomicBool::new(true),
            shutdown,
            tracker: TaskTracker::new(),
            conn_limit: Arc::new(Semaphore::new(cfg.limits.max_connections)),
            next_attach: AtomicU64::new(1),
            taps,
            replica: Arc::new(Replica::default()),
            drain: CancellationToken::new(),
            hub_out: Mutex::new(HubOutbox { agents_changed: true, ..HubOutbox::default() }),
            repo: super::hub_pool::Forward::new(&cfg),
            refusals: Default::default(),
            retired: Default::default(),
            cfg,
        }))
    }

    /// The pairing table (held only between statements, never across an await).
    pub fn pairing(&self) -> std::sync::MutexGuard<'_, RelayPairing> {
        lock(&self.pairing)
    }

    pub fn next_attach_id(&self) -> u64 {
        self.next_attach.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts and audits a failed TLS handshake. The peer already got the TLS alert.
    /// Past the budget ([`crate::util::budget`]) it is tallied instead, for
    /// an aggregate record (`super::refusals`).
    pub fn handshake_failed(&self, listener: &str, peer: SocketAddr, reason: &str, detail: &str) {
        metrics::RELAY_HANDSHAKE_FAILURES.with_label_values(&[listener, reason]).inc();
        if !self.refusals.one_by_one(listener, peer.ip(), reason) {
            return;
        }
        tracing::info!(listener, reason, detail, "handshake failed");
        self.audit.record(
            "handshake_refused",
            json!({"relay": self.cfg.name, "listener": listener, "peer": peer.to_string(), "reason": reason, "detail": detail}),
        );
    }

    /// A connection that ended before its first frame: its peer closed it,
    /// or its path broke. Nothing was refused, so nothing is audited and no
    /// answer is owed; it is counted with the handshakes that did not
    /// complete (`closed_early`).
    pub fn left_before_first_frame(&self, listener: &str, peer: SocketAddr, detail: &str) {
        tracing::debug!(listener, %peer, detail, "connection ended before its first frame");
        metrics::RELAY_HANDSHAKE_FAILURES.with_label_values(&[listener, "closed_early"]).inc();
    }

    /// The first frame on a leg or channel, read within the handshake
    /// timeout. `None` when there is nothing to answer: the peer left first
    /// (`closed_early`) or sent no frame in time (counted and audited as
    /// `timeout`, with `detail`). A frame that does not decode is the
    /// caller's to refuse by name.
    pub async fn first_frame<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        &self,
        io: &mut FrameIo<S>,
        (listener, peer): (&str, SocketAddr),
        (timeout, detail): (&str, &str),
    ) -> Option<Result<Frame, ProtoError>> {
        let wait = std::time::Duration::from_millis(self.cfg.limits.handshake_timeout_ms);
        match tokio::time::timeout(wait, io.read_frame()).await {
            Ok(Ok(f)) => Some(Ok(f)),
            Ok(Err(FrameIoError::Proto(e))) => Some(Err(e)),
            Ok(Err(e)) => {
                self.left_before_first_frame(listener, peer, &e.to_string());
                None
            }
            Err(_) => {
                self.handshake_failed(listener, peer, timeout, detail);
                None
            }
        }
    }

    /// A reloaded CRL revokes the certificate of `device`, connected through
    /// `listener`: counted, audited, and every session of the device here
    /// ends (its legs with it). The caller drops the connection itself.
    pub fn peer_revoked(&self, listener: &str, peer: SocketAddr, device: &str) {
        tracing::warn!(listener, device, "certificate revoked while connected: dropping");
        metrics::PEERS_REVOKED.with_label_values(&["device"]).inc();
        self.audit.record(
            "peer_revoked",
            json!({"relay": self.cfg.name, "listener": listener, "peer": peer.to_string(), "device": device, "role": "device"}),
        );
        if let Some(h) = self.agents.get(device) {
            h.cancel.cancel();
        }
        let ids: Vec<_> = self.sessions.iter().filter(|s| s.device == device).map(|s| s.id).collect();
        for id in ids {
            self.end_session(id, Reason::CertRevoked, true);
        }
    }

    /// Counts and audits a refused frame-level request.
    pub fn refused(&self, event: &str, metric: &prometheus::IntCounterVec, reason: Reason, fields: serde_json::Value) {
        metric.with_label_values(&[reason.label()]).inc();
        self.audit.refusal(event, ("relay", &self.cfg.name), reason.label(), fields);
    }

    /// Marks a session id used. False when it was used before.
    pub fn consume(&self, session: SessionId, expires_at: u64, now: u64) -> bool {
        if self.peer().consumed.contains_key(&session) || !lock(&self.consumed).first_use(session, expires_at, now) {
            return false;
        }
        self.publish(Fact::Consumed { session, expires_at });
        true
    }

    /// Marks a grant the hub revoked as used. True when this relay had not
    /// seen it used or revoked before (the twin may have; each relay audits
    /// a revocation once, when its own report brings it).
    pub fn revoke_grant(&self, session: SessionId, expires_at: u64, now: u64) -> bool {
        if !lock(&self.consumed).first_use(session, expires_at, now) {
            return false;
        }
        if !self.peer().consumed.contains_key(&session) {
            self.publish(Fact::Consumed { session, expires_at });
        }
        true
    }

    /// Streams a fact to the twin (dropped when no link is up; the next
    /// link starts with a snapshot). Returns its publish index.
    pub fn publish(&self, fact: Fact) -> u64 {
        self.replica.publish(fact)
    }

    pub fn hub_out(&self) -> std::sync::MutexGuard<'_, HubOutbox> {
        lock(&self.hub_out)
    }

    /// Queues a session start for the hub's record.
    pub fn hub_started(&self, id: SessionId, transport: &'static str) {
        self.hub_live(id, transport, false);
    }

    /// Queues a session's control leg's arrival here from the twin for the
    /// hub's record. Kept apart from starts: a start reported late (by a
    /// relay that froze, then thawed) must not take the record back from
    /// the relay the session moved to.
    pub fn hub_moved(&self, id: SessionId, transport: &'static str) {
        self.hub_live(id, transport, true);
    }

    fn hub_live(&self, id: SessionId, transport: &'static str, moved: bool) {
        if self.cfg.hub.is_some() {
            let mut guard = self.hub_out();
            let out = &mut *guard;
            let (ids, transports) = match moved {
                false => (&mut out.started, &mut out.started_transports),
                true => (&mut out.moved, &mut out.moved_transports),
            };
            if ids.len() < HUB_OUTBOX_CAP {
                ids.push(id.to_string());
                transports.push(transport.to_string());
            }
        }
    }

    /// Queues a session end (or a refusal by the device) for the hub's record.
    pub fn hub_ended(&self, id: SessionId, device: &str, reason: Reason, to_device: u64, to_client: u64, ms: u64) {
        self.queue_end(&mut self.hub_out(), id, device, reason, (to_device, to_client), ms);
    }

    fn queue_end(
        &self,
        out: &mut HubOutbox,
        id: SessionId,
        device: &str,
        reason: Reason,
        (to_device, to_client): (u64, u64),
        ms: u64,
    ) {
        if self.cfg.hub.is_none() {
            return;
        }
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
            ended_at: crate::util::now_secs(),
        });
    }

    pub fn peer(&self) -> std::sync::MutexGuard<'_, PeerView> {
        self.replica.peer()
    }

    /// The device a session belongs to, as this relay knows it (its own, or the twin's).
    pub fn session_device(&self, id: &SessionId) -> Option<String> {
        self.sessions
            .get(id)
            .map(|s| s.device.clone())
            .or_else(|| self.peer().session(id, crate::util::now_secs()).map(|s| s.device.clone()))
    }

    /// Session ids used here (for the twin's snapshot).
    pub fn consumed_snapshot(&self) -> Vec<(SessionId, u64)> {
        lock(&self.consumed).entries()
    }

    /// A session the twin admitted, taken up here so that its connections can
    /// pair through this relay (a load balancer may send them either way).
    pub fn adopt(&self, id: SessionId) -> Option<Arc<Session>> {
        let fact = self.peer().session(&id, crate::util::now_secs()).cloned()?;
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
            self.sessions.iter().filter(|s| s.control_moved_here()).map(|s| Fact::ControlHere { session: s.id }),
        );
        facts.extend(
            self.consumed_snapshot().into_iter().map(|(session, expires_at)| Fact::Consumed { session, expires_at }),
        );
        facts.extend(self.agents.iter().map(|a| Fact::Attached { device: a.key().clone() }));
        facts
    }

    /// Ends a session once: removes it, signals its tasks, audits, counts,
    /// and tells the agent unless the agent itself ended it.
    pub fn end_session(&self, id: SessionId, reason: Reason, tell_agent: bool) {
        // Removed and its end queued under the outbox's lock: the hub
        // reporter takes the live counts before the queued ends, so a
        // report never misses a session in both (the hub would take its
        // counts as forgotten by a restarted relay, and count them twice).
        let (s, to_device, to_client) = {
            let mut out = self.hub_out();
            let Some((_, s)) = self.sessions.remove(&id) else { return };
            let (to_device, to_client) = (s.to_device.load(Ordering::Relaxed), s.to_client.load(Ordering::Relaxed));
            let ms = s.started.elapsed().as_millis() as u64;
            self.queue_end(&mut out, id, &s.device, reason, (to_device, to_client), ms);
            (s, to_device, to_client)
        };
        if let Ok(mut r) = s.end_reason.lock() {
            r.get_or_insert(reason);
        }
        s.end.cancel();
        metrics::RELAY_SESSIONS_ACTIVE.dec();
        metrics::RELAY_SESSIONS_ENDED.with_label_values(&[reason.label()]).inc();
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

    /// A live session: ours, or the twin's (adopted). While the twin link is up,
    /// waits for replication to announce it, woken by each change of the twin's
    /// view (no polling), for at most [`REPLICATION_GRACE`].
    pub async fn find_session(&self, id: SessionId) -> Option<Arc<Session>> {
        let deadline = tokio::time::Instant::now() + REPLICATION_GRACE;
        loop {
            let changed = self.replica.changed();
            tokio::pin!(changed);
            // Registered before looking, so a change between the look and the wait is not missed.
            changed.as_mut().enable();
            if let Some(s) = self.sessions.get(&id).map(|s| s.clone()).or_else(|| self.adopt(id)) {
                return Some(s);
            }
            if !self.replica.link_up() || tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    /// Ends every session admitted through a control channel that is gone.
    pub fn agent_gone(&self, device: &str, attach_id: u64) {
        if self.drain.is_cancelled() && self.cfg.twin.is_some() {
            // Drained: the sessions go on at the twin.
            self.pairing().channel_gone(attach_id);
            return;
        }
        let ids: Vec<SessionId> =
            self.sessions.iter().filter(|s| s.device == device && s.attach_id == attach_id).map(|s| s.id).collect();
        // During shutdown the channels close because of us, not the agent.
        let reason = if self.shutdown.is_cancelled() { Reason::RelayShutdown } else { Reason::AgentGone };
        for id in ids {
            self.end_session(id, reason, false);
        }
        self.pairing().channel_gone(attach_id);
    }
}

/// What the twin link asks of this relay.
impl TwinHost for State {
    fn own_facts(&self) -> Vec<Fact> {
        State::own_facts(self)
    }

    fn twin_open(&self, open: Frame) {
        let Frame::TwinOpen { session, conn, key, resumes, via } = open else { return };
        if let Some(tx) = self.session_device(&session).and_then(|d| self.agents.get(&d).map(|a| a.tx.clone())) {
            let _ = tx.try_send(Frame::Open { session, conn, key, resumes, via });
        }
    }

    fn twin_ended(&self, session: SessionId, reason: Reason) {
        // Tell the device too if it is attached here (it may be attached only
        // to us); ending twice is harmless.
        self.end_session(session, reason, true);
    }

    fn refused(&self, peer: SocketAddr, reason: &str, detail: &str) {
        self.handshake_failed("twin", peer, reason, detail);
    }

    fn left_early(&self, peer: SocketAddr) {
        self.left_before_first_frame("twin", peer, "closed before its first byte");
    }

    fn audit(&self, event: &str, fields: serde_json::Value) {
        self.audit.record(event, fields);
    }
}
