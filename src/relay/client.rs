//! Specialist legs (17443): a session's control leg (`ClientOpen`, TLS only:
//! it carries the grant and receives the session token) and one leg per
//! tunnelled connection (`ClientJoin`, TLS or raw, proven by a MAC).
//!
//! Every check returns a [`Refusal`]; [`serve`] is the one place that counts,
//! audits and names it to the client.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::decision::Waited;
use super::session::Session;
use super::state::{LegEvent, State};
use super::{Accepted, Auth};
use crate::leg::Leg;
use crate::metrics;
use crate::proto::{self, Frame, FrameIo, FrameIoError, LegSide, Outcome, Reason, SessionId, SignedGrant};
use crate::util::now_secs;

type Io = FrameIo<Leg>;

/// How long, and for how many bytes, a refused leg is read before it is closed.
const LINGER: Duration = Duration::from_millis(250);
const LINGER_BYTES: usize = 64 * 1024;

/// Why a specialist leg is turned away, and whose session it named.
struct Refusal {
    reason: Reason,
    detail: String,
    session: Option<(SessionId, String)>,
    /// A replacement leg for a connection (`ClientJoin{resumes}`): counted apart.
    resumes: u32,
}

impl Refusal {
    fn new(reason: Reason, detail: impl Into<String>) -> Refusal {
        Refusal { reason, detail: detail.into(), session: None, resumes: 0 }
    }

    fn of(mut self, id: SessionId, device: &str) -> Refusal {
        self.session = Some((id, device.to_string()));
        self
    }

    /// Counts, audits, and names the reason to the client.
    async fn send(self, state: &State, io: &mut Io, peer: SocketAddr) {
        if self.resumes != 0 {
            metrics::RELAY_RESUMES_REFUSED.with_label_values(&[self.reason.label()]).inc();
        }
        let mut fields = json!({"peer": peer.to_string(), "detail": self.detail});
        if let Some((id, device)) = &self.session {
            fields["session"] = id.to_string().into();
            fields["device"] = device.as_str().into();
        }
        state.refused("client_refused", &metrics::RELAY_GRANT_REFUSALS, self.reason, fields);
        let _ = io.write_frame(&Frame::Error { reason: self.reason, message: self.detail }).await;
        // A client writes its first end-to-end flight right behind its join:
        // closing with those bytes unread would reset the connection, and the
        // reset can overtake the refusal. Close our side, then read what
        // follows, briefly and boundedly.
        let leg = io.get_mut();
        let _ = leg.shutdown().await;
        let drain = async {
            let (mut sink, mut total) = ([0u8; 4096], 0);
            while total < LINGER_BYTES {
                match leg.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }
}

fn version(v: u16) -> Result<(), Refusal> {
    proto::check_version(v).map_err(|e| Refusal::new(Reason::VersionMismatch, e.to_string()))
}

pub async fn serve(state: Arc<State>, accepted: Accepted, peer: SocketAddr) {
    let (is_tls, alpn_ok, waits) = match accepted.auth {
        Auth::Tls { alpn_ok, waits, .. } => (true, alpn_ok, waits),
        Auth::Raw => (false, true, false),
    };
    let listener = if accepted.transport == "quic" { "quic-client" } else { "client" };
    let mut io = FrameIo::new(accepted.leg);
    match first_frame(&state, &mut io, (peer, listener), is_tls, (alpn_ok, waits)).await {
        Err(r) => r.send(&state, &mut io, peer).await,
        Ok(Some(Paired { session, conn, leg, prefix })) => {
            super::tunnel::tunnel(&state, (session, conn), io.into_parts(), (leg, prefix)).await
        }
        Ok(None) => {}
    }
}

/// A connection's client leg and the device's data leg, paired and told so.
struct Paired {
    session: Arc<Session>,
    conn: u32,
    leg: Leg,
    /// Bytes read from the device's leg past its preamble.
    prefix: Bytes,
}

/// The leg's first frame decides what it is; each kind runs to its end.
async fn first_frame(
    state: &State,
    io: &mut Io,
    (peer, listener): (SocketAddr, &'static str),
    is_tls: bool,
    (alpn_ok, waits): (bool, bool),
) -> Result<Option<Paired>, Refusal> {
    if !alpn_ok {
        return Err(Refusal::new(Reason::AlpnRequired, "no tether ALPN negotiated"));
    }
    if !state.ready.load(Ordering::Relaxed) {
        return Err(Refusal::new(Reason::RelayShutdown, "relay is draining"));
    }
    let first = state.first_frame(io, (listener, peer), ("preamble_timeout", "no first frame in time")).await;
    let frame = match first {
        Some(Ok(f)) => f,
        Some(Err(p)) => return Err(Refusal::new(p.reason(), FrameIoError::from(p).to_string())),
        None => return Ok(None),
    };
    match frame {
        // The grant and the session token must never cross a raw leg.
        Frame::ClientOpen { .. } if !is_tls => Err(Refusal::new(Reason::BadFrame, "client_open requires TLS")),
        Frame::ClientOpen { version: v, grant, service } => {
            version(v)?;
            let transport = if listener == "quic-client" { "quic" } else { "tcp" };
            open(state, io, (peer, transport, waits), grant, service).await.map(|()| None)
        }
        Frame::ClientJoin { version: v, session, conn, mac, resumes } => {
            version(v)?;
            join(state, io, session, conn, mac, resumes).await.map_err(|mut r| {
                r.resumes = resumes;
                r
            })
        }
        // The session's token must never cross a raw leg.
        Frame::ClientResume { .. } if !is_tls => Err(Refusal::new(Reason::BadFrame, "client_resume requires TLS")),
        Frame::ClientResume { version: v, session, mac } => {
            version(v)?;
            let transport = if listener == "quic-client" { "quic" } else { "tcp" };
            resume_control(state, io, (peer, transport), session, mac).await.map(|()| None)
        }
        other => {
            Err(Refusal::new(Reason::BadFrame, format!("expected client_open or client_join, got {}", other.kind())))
        }
    }
}

async fn open(
    state: &State,
    io: &mut Io,
    (peer, transport, waits): (SocketAddr, &'static str, bool),
    signed: SignedGrant,
    service: String,
) -> Result<(), Refusal> {
    let grant = state.grants.verify(&signed).map_err(|e| Refusal::new(e.reason(), e.to_string()))?;
    let id = grant.session;
    tracing::Span::current().record("session", id.to_string()).record("device", grant.device.as_str());
    let refuse = |reason: Reason, detail: &str| Refusal::new(reason, detail).of(id, &grant.device);
    let now = now_secs();
    grant.check(&grant.device, &service, now).map_err(|e| refuse(e.reason(), &e.to_string()))?;
    // The hub names the pair it routed to; a grant for another pair is not ours.
    let ours = |name: &String| *name == state.cfg.name || state.cfg.twin.as_ref().is_some_and(|t| t.name == *name);
    if !grant.relays.iter().any(ours) {
        return Err(refuse(Reason::GrantWrongRelay, "the grant names neither this relay nor its twin"));
    }
    let (attach_id, agent_tx) = state
        .agents
        .get(&grant.device)
        .map(|a| (a.attach_id, a.tx.clone()))
        .ok_or_else(|| refuse(Reason::NotAttached, "device not attached"))?;
    if !state.consume(id, grant.expires_at, now) {
        return Err(refuse(Reason::GrantReused, "session id already used"));
    }

    // Ask the agent; it verifies the grant itself and may wait for on-site consent.
    let asked = crate::util::clock::now_ms();
    let (tx, rx) = oneshot::channel();
    state.pairing().expect_decision(id, attach_id, tx);
    let request = Frame::AccessRequest { grant: signed, service: service.clone() };
    if !agent_tx.send(request).await {
        state.pairing().decide(id);
        return Err(refuse(Reason::NotAttached, "agent channel closed"));
    }
    state.audit.record(
        "session_requested",
        json!({"relay": state.cfg.name, "session": id.to_string(), "device": grant.device, "service": service,
               "specialist": grant.specialist, "role": grant.role, "client": peer.to_string()}),
    );
    let waited = super::decision::wait(state, rx, (&grant.device, attach_id), asked, (io, waits)).await;
    // `ours`: the relay gave up on the device, and why.
    let (decision, ours) = match waited {
        Waited::Decided(outcome, reason) => ((outcome, reason), None),
        Waited::GaveUp(reason, why) => ((Outcome::Refused, reason), Some(why)),
        // The specialist gave up while waiting: withdraw the request.
        Waited::Withdrawn => {
            state.pairing().decide(id);
            let _ = agent_tx.try_send(Frame::SessionEnd {
                session: id,
                reason: Reason::ClientClosed,
                bytes_to_device: 0,
                bytes_to_client: 0,
            });
            state.audit.record(
                "session_withdrawn",
                json!({"relay": state.cfg.name, "session": id.to_string(), "device": grant.device}),
            );
            state.hub_ended(id, &grant.device, Reason::ClientClosed, 0, 0, 0);
            return Ok(());
        }
    };
    if let (Outcome::Refused, reason) = decision {
        let withdrawn = state.pairing().decide(id).is_some();
        if withdrawn {
            // The relay gave up waiting: withdraw the request at the device too.
            let _ =
                agent_tx.try_send(Frame::SessionEnd { session: id, reason, bytes_to_device: 0, bytes_to_client: 0 });
        }
        metrics::RELAY_SESSIONS_ENDED.with_label_values(&[reason.label()]).inc();
        state.hub_ended(id, &grant.device, reason, 0, 0, 0);
        let why = ours.unwrap_or_else(|| super::clock::refused_why(state, &grant.device, reason));
        return Err(refuse(reason, &why));
    }

    let session = Arc::new(Session::new(&grant, &service, peer.to_string(), attach_id, CancellationToken::new()));
    state.sessions.insert(id, session.clone());
    state.hub_started(id, transport);
    metrics::RELAY_SESSIONS_ACTIVE.inc();
    let index = state.publish(crate::proto::twin::Fact::SessionUp(session.fact()));
    session.up_index.store(index, Ordering::Relaxed);
    // Tell the client only once the twin holds the session (it can take over
    // if this relay dies a moment later), or that it does not.
    let twin_holds = state.replica.replicated(index, TWIN_ACK_WAIT).await;
    state.audit.record(
        "session_start",
        json!({"relay": state.cfg.name, "session": id.to_string(), "device": grant.device, "service": service,
               "specialist": grant.specialist, "client": peer.to_string()}),
    );
    let ready = Frame::SessionReady { session: id, token: session.token, raw_legs: state.cfg.raw_legs, twin_holds };
    if io.write_frame(&ready).await.is_err() {
        state.end_session(id, Reason::ClientClosed, true);
        return Ok(());
    }
    control_loop(state, io, &session).await;
    Ok(())
}

/// The session's control leg: runs until the client leaves, the session ends
/// elsewhere, or it expires.
async fn control_loop(state: &State, io: &mut Io, session: &Session) {
    let id = session.id;
    let epoch = session.control_epoch.load(Ordering::Relaxed);
    let max = Duration::from_secs(state.cfg.limits.max_session_secs);
    let reason = loop {
        tokio::select! {
            // Drained: let go without ending; the client moves to the twin.
            _ = state.drain.cancelled() => return,
            _ = session.end.cancelled() => break None,
            _ = tokio::time::sleep_until((session.started + max).into()) => break Some(Reason::SessionExpired),
            // The control leg came back here on a new connection: that one carries on.
            _ = session.control_moved.notified() => if session.control_epoch.load(Ordering::Relaxed) != epoch { return },
            f = io.read_frame() => match f {
                Ok(Frame::Heartbeat { seq, .. }) => { let _ = io.write_frame(&Frame::Heartbeat { seq, clock: None }).await; }
                Ok(Frame::SessionEnd { .. }) => break Some(Reason::ClientClosed),
                // Lost without a goodbye: the client may be moving it to the twin.
                Err(_) if state.cfg.twin.is_some() => {
                    if linger(state, session, epoch).await {
                        return;
                    }
                    break Some(Reason::ClientClosed);
                }
                Err(_) => break Some(Reason::ClientClosed),
                Ok(_) => break Some(Reason::BadFrame),
            },
        }
    };
    // `None`: ended elsewhere (agent, operator) or the relay is shutting down;
    // end_session is a no-op when the session was already ended and audited.
    let reason = reason.unwrap_or(if state.shutdown.is_cancelled() { Reason::RelayShutdown } else { Reason::Unknown });
    state.end_session(id, reason, true);
    let end = Frame::SessionEnd {
        session: id,
        reason: session.reason(),
        bytes_to_device: session.to_device.load(Ordering::Relaxed),
        bytes_to_client: session.to_client.load(Ordering::Relaxed),
    };
    let _ = io.write_frame(&end).await;
}

/// How long a new session waits for the twin to acknowledge it before the
/// client is told it is ready anyway (with `twin_holds: false`).
const TWIN_ACK_WAIT: Duration = Duration::from_secs(1);

/// How long a relay keeps a session whose control leg was lost without a
/// goodbye, waiting for it to reappear (here, or at the twin: a client whose
/// probe found this relay silent moves it there).
const CONTROL_GRACE: Duration = Duration::from_secs(10);

/// After the control leg was lost: true when it reappeared (at the twin, or
/// here on a new connection) or the session ended elsewhere, so this relay
/// lets go without ending it; false when the grace ran out.
async fn linger(state: &State, session: &Session, epoch: u64) -> bool {
    let deadline = tokio::time::Instant::now() + CONTROL_GRACE;
    loop {
        let changed = state.replica.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let moved_here = session.control_moved.notified();
        tokio::pin!(moved_here);
        moved_here.as_mut().enable();
        if session.end.is_cancelled() || session.control_epoch.load(Ordering::Relaxed) != epoch {
            return true;
        }
        if state.peer().controls.contains(&session.id) {
            state.audit.record(
                "session_control_moved_away",
                json!({"relay": state.cfg.name, "session": session.id.to_string(), "device": session.device}),
            );
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return false,
            _ = changed => {}
            _ = moved_here => {}
            _ = session.end.cancelled() => return true,
            _ = state.drain.cancelled() => return true,
        }
    }
}

/// The session's control leg moves here (its relay failed); the session is
/// ours or the twin's by replication.
async fn resume_control(
    state: &State,
    io: &mut Io,
    (peer, transport): (SocketAddr, &'static str),
    id: SessionId,
    mac: [u8; 32],
) -> Result<(), Refusal> {
    tracing::Span::current().record("session", id.to_string());
    let session =
        state.find_session(id).await.ok_or_else(|| Refusal::new(Reason::UnknownSession, "no such live session"))?;
    if !proto::leg_mac_ok(&session.token, LegSide::Control, &id, 0, &mac) {
        return Err(Refusal::new(Reason::BadToken, "wrong resume MAC").of(id, &session.device));
    }
    state.audit.record(
        "session_control_moved",
        json!({"relay": state.cfg.name, "session": id.to_string(), "device": session.device, "client": peer.to_string()}),
    );
    // A control loop still holding the old leg here lets go; the twin's, if any, too.
    session.control_epoch.fetch_add(1, Ordering::Relaxed);
    session.control_moved.notify_waiters();
    state.publish(crate::proto::twin::Fact::ControlHere { session: id });
    // The hub's record names the relay the session's control leg is on now.
    state.hub_moved(id, transport);
    let twin_holds = state.replica.link_up();
    let ready = Frame::SessionReady { session: id, token: session.token, raw_legs: state.cfg.raw_legs, twin_holds };
    if io.write_frame(&ready).await.is_ok() {
        control_loop(state, io, &session).await;
    }
    Ok(())
}

/// A connection joins its session: checks, then waits for the device's leg.
async fn join(
    state: &State,
    io: &mut Io,
    id: SessionId,
    conn: u32,
    mac: [u8; 32],
    resumes: u32,
) -> Result<Option<Paired>, Refusal> {
    let joined_at = Instant::now();
    tracing::Span::current().record("session", id.to_string());
    // A session the twin admitted pairs here too (the twin replicated it).
    let session =
        state.find_session(id).await.ok_or_else(|| Refusal::new(Reason::UnknownSession, "no such live session"))?;
    let refuse = |reason: Reason, detail: &str| Refusal::new(reason, detail).of(id, &session.device);
    if !proto::leg_mac_ok(&session.token, LegSide::Client { resumes }, &id, conn, &mac) {
        return Err(refuse(Reason::BadToken, "wrong join MAC"));
    }
    let fresh = session.joined.lock().map(|mut j| j.insert(conn)).unwrap_or(false);
    if !fresh {
        return Err(refuse(Reason::AlreadyPaired, "connection number reused"));
    }
    // An agent that takes streams gets the leg opened to it, with the
    // client's first flight; else it dials one when asked (`Open`).
    let streams = state.agents.get(&session.device).and_then(|a| a.streams.clone()).filter(crate::quic::alive);
    let (leg, prefix, told) = match streams {
        Some(quic) => {
            let (leg, prefix) = super::streams::open(state, &session, (conn, resumes), &quic, io)
                .await
                .map_err(|(r, d)| refuse(r, d))?;
            (leg, prefix, true)
        }
        None => {
            let (leg, prefix) = ask_for_leg(state, &session, conn, resumes).await.map_err(|(r, d)| refuse(r, d))?;
            (leg, prefix, false)
        }
    };
    let mut leg = FrameIo::new(leg);
    let paired = Frame::Paired { session: id, conn };
    // On a stream we opened, the agent said `Paired` itself.
    if !told && leg.write_frame(&paired).await.is_err() {
        return Ok(None);
    }
    // Ours goes with what the device sent behind its own (its first
    // end-to-end bytes, see `agent/tunnel.rs`): one write, one packet.
    let counter = metrics::RELAY_BYTES.with_label_values(&["to_client"]);
    let meter = super::tunnel::to_client_meter(state, &session, &counter);
    if super::tunnel::write_with(io.get_mut(), &paired, &prefix, &meter).await.is_err() {
        return Ok(None);
    }
    metrics::RELAY_PAIRING_SECONDS.observe(joined_at.elapsed().as_secs_f64());
    let (leg, _) = leg.into_parts();
    Ok(Some(Paired { session, conn, leg, prefix: Bytes::new() }))
}

/// Asks the device (directly, or through the twin it is attached to) for a
/// data leg for `conn`, and waits for it.
async fn ask_for_leg(
    state: &State,
    session: &Session,
    conn: u32,
    resumes: u32,
) -> Result<(Leg, Bytes), (Reason, &'static str)> {
    let id = session.id;
    let agent_tx = state.agents.get(&session.device).map(|a| a.tx.clone());
    // The agent may be attached only to the twin: the request goes over the
    // twin link, and the data leg still comes here.
    let via_twin = agent_tx.is_none() && state.replica.link_up() && state.peer().attached.contains(&session.device);
    if agent_tx.is_none() && !via_twin {
        return Err((Reason::NotAttached, "device not attached"));
    }
    let (tx, rx) = oneshot::channel();
    let key: [u8; 32] = crate::random_bytes();
    state.pairing().expect_leg(id, conn, key, tx);
    let asked = match &agent_tx {
        Some(tx) => tx.send(Frame::Open { session: id, conn, key, resumes, via: String::new() }).await,
        None => state.replica.request(Frame::TwinOpen { session: id, conn, key, resumes, via: state.cfg.name.clone() }),
    };
    if !asked {
        state.pairing().withdraw_leg(id, conn);
        return Err((Reason::NotAttached, "agent channel closed"));
    }
    let wait = Duration::from_millis(state.cfg.limits.pairing_timeout_ms);
    let event = tokio::select! {
        r = tokio::time::timeout(wait, rx) => match r {
            Ok(Ok(ev)) => ev,
            Ok(Err(_)) => LegEvent::Failed(Reason::AgentGone),
            Err(_) => LegEvent::Failed(Reason::PairingTimedOut),
        },
        _ = session.end.cancelled() => LegEvent::Failed(session.reason()),
    };
    state.pairing().withdraw_leg(id, conn);
    match event {
        LegEvent::Leg(leg, prefix) => Ok((leg, prefix)),
        LegEvent::Failed(reason) => Err(super::pairing::open_failed(reason)),
    }
}
