//! Specialist legs (17443): a session's control leg (`ClientOpen`, TLS only:
//! it carries the grant and receives the session token) and one leg per
//! tunnelled connection (`ClientJoin`, TLS or raw, proven by a MAC).
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::Accepted;
use super::session::Session;
use super::state::{LegEvent, State};
use crate::leg::Leg;
use crate::metrics;
use crate::proto::{
    self, Frame, FrameIo, FrameIoError, LegSide, Outcome, Reason, SessionId, SignedGrant, grant::now_secs,
};
use crate::splice::{Meter, splice};
use crate::tls;

type Io = FrameIo<Leg>;

pub async fn serve(state: Arc<State>, accepted: Accepted, peer: SocketAddr) {
    let (leg, is_tls, alpn_ok): (Leg, bool, bool) = match accepted {
        Accepted::Tls(tls) => {
            let alpn_ok = tls.get_ref().1.alpn_protocol() == Some(tls::ALPN_CLIENT);
            (tls, true, alpn_ok)
        }
        Accepted::Raw(tcp) => (Box::new(tcp), false, true),
    };
    let mut io = FrameIo::new(leg);
    if !alpn_ok {
        return refuse(&state, &mut io, peer, Reason::AlpnRequired, "no tether ALPN negotiated", None).await;
    }
    if !state.ready.load(Ordering::Relaxed) {
        return refuse(&state, &mut io, peer, Reason::RelayShutdown, "relay is draining", None).await;
    }
    let timeout = Duration::from_millis(state.cfg.limits.handshake_timeout_ms);
    match tokio::time::timeout(timeout, io.read_frame()).await {
        // The grant and the session token must never cross a raw leg.
        Ok(Ok(Frame::ClientOpen { .. })) if !is_tls => {
            refuse(&state, &mut io, peer, Reason::BadFrame, "client_open requires TLS", None).await
        }
        Ok(Ok(Frame::ClientOpen { version, grant, service })) => match proto::check_version(version) {
            Ok(()) => open(state, io, peer, grant, service).await,
            Err(e) => refuse(&state, &mut io, peer, Reason::VersionMismatch, &e.to_string(), None).await,
        },
        Ok(Ok(Frame::ClientJoin { version, session, conn, mac, resumes })) => match proto::check_version(version) {
            Ok(()) => join(state, io, peer, session, conn, mac, resumes).await,
            Err(e) => refuse(&state, &mut io, peer, Reason::VersionMismatch, &e.to_string(), None).await,
        },
        // The session's token must never cross a raw leg.
        Ok(Ok(Frame::ClientResume { .. })) if !is_tls => {
            refuse(&state, &mut io, peer, Reason::BadFrame, "client_resume requires TLS", None).await
        }
        Ok(Ok(Frame::ClientResume { version, session, mac })) => match proto::check_version(version) {
            Ok(()) => resume_control(state, io, peer, session, mac).await,
            Err(e) => refuse(&state, &mut io, peer, Reason::VersionMismatch, &e.to_string(), None).await,
        },
        Ok(Ok(other)) => {
            let detail = format!("expected client_open or client_join, got {}", other.kind());
            refuse(&state, &mut io, peer, Reason::BadFrame, &detail, None).await
        }
        Ok(Err(e)) => {
            let reason = match &e {
                FrameIoError::Proto(p) => p.reason(),
                _ => Reason::BadFrame,
            };
            refuse(&state, &mut io, peer, reason, &e.to_string(), None).await
        }
        Err(_) => state.handshake_failed("client", peer, "preamble_timeout", "no first frame in time"),
    }
}

/// [`refuse`], and counted apart when the join was a replacement leg.
async fn refuse_join(
    resumes: u32,
    state: &State,
    io: &mut Io,
    peer: SocketAddr,
    reason: Reason,
    detail: &str,
    session: Option<(SessionId, &str)>,
) {
    if resumes != 0 {
        metrics::RELAY_RESUMES_REFUSED.with_label_values(&[reason.label()]).inc();
    }
    refuse(state, io, peer, reason, detail, session).await
}

/// Counts, audits, and names the reason to the client.
async fn refuse(
    state: &State,
    io: &mut Io,
    peer: SocketAddr,
    reason: Reason,
    detail: &str,
    session: Option<(SessionId, &str)>,
) {
    let mut fields = json!({"peer": peer.to_string(), "detail": detail});
    if let Some((id, device)) = session {
        fields["session"] = id.to_string().into();
        fields["device"] = device.into();
    }
    state.refused("client_refused", &metrics::RELAY_GRANT_REFUSALS, reason, fields);
    let _ = io.write_frame(&Frame::Error { reason, message: detail.to_string() }).await;
}

async fn open(state: Arc<State>, mut io: Io, peer: SocketAddr, signed: SignedGrant, service: String) {
    let grant = match state.grants.verify(&signed) {
        Ok(g) => g,
        Err(e) => return refuse(&state, &mut io, peer, e.reason(), &e.to_string(), None).await,
    };
    let id = grant.session;
    tracing::Span::current().record("session", id.to_string()).record("device", grant.device.as_str());
    let now = now_secs();
    if let Err(e) = grant.check(&grant.device, &service, now) {
        return refuse(&state, &mut io, peer, e.reason(), &e.to_string(), Some((id, &grant.device))).await;
    }
    let Some((attach_id, agent_tx)) = state.agents.get(&grant.device).map(|a| (a.attach_id, a.tx.clone())) else {
        return refuse(&state, &mut io, peer, Reason::NotAttached, "device not attached", Some((id, &grant.device)))
            .await;
    };
    if !state.consume(id, grant.expires_at, now) {
        return refuse(
            &state,
            &mut io,
            peer,
            Reason::GrantReused,
            "session id already used",
            Some((id, &grant.device)),
        )
        .await;
    }

    // Ask the agent; it verifies the grant itself and may wait for on-site consent.
    let (tx, rx) = oneshot::channel();
    state.pairing().expect_decision(id, attach_id, tx);
    let request = Frame::AccessRequest { grant: signed, service: service.clone() };
    if agent_tx.send(request).await.is_err() {
        state.pairing().decide(id);
        return refuse(&state, &mut io, peer, Reason::NotAttached, "agent channel closed", Some((id, &grant.device)))
            .await;
    }
    state.audit.record(
        "session_requested",
        json!({"relay": state.cfg.name, "session": id.to_string(), "device": grant.device, "service": service,
               "specialist": grant.specialist, "role": grant.role, "client": peer.to_string()}),
    );
    let wait = Duration::from_secs(state.cfg.limits.decision_timeout_secs);
    let decision = tokio::select! {
        d = tokio::time::timeout(wait, rx) => match d {
            Ok(Ok(d)) => d,
            Ok(Err(_)) => (Outcome::Refused, Reason::AgentGone),
            Err(_) => (Outcome::Refused, Reason::ConsentTimedOut),
        },
        // The specialist gave up while waiting: withdraw the request.
        _ = io.read_frame() => {
            state.pairing().decide(id);
            let _ = agent_tx.try_send(Frame::SessionEnd { session: id, reason: Reason::ClientClosed, bytes_to_device: 0, bytes_to_client: 0 });
            state.audit.record("session_withdrawn", json!({"relay": state.cfg.name, "session": id.to_string(), "device": grant.device}));
            state.hub_ended(id, &grant.device, Reason::ClientClosed, 0, 0, 0);
            return;
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
        return refuse(&state, &mut io, peer, reason, "refused by the device", Some((id, &grant.device))).await;
    }

    let session = Arc::new(Session::new(&grant, &service, peer.to_string(), attach_id, CancellationToken::new()));
    state.sessions.insert(id, session.clone());
    state.hub_started(id);
    metrics::RELAY_SESSIONS_ACTIVE.inc();
    state.publish(crate::proto::twin::Fact::SessionUp(session.fact()));
    state.audit.record(
        "session_start",
        json!({"relay": state.cfg.name, "session": id.to_string(), "device": grant.device, "service": service,
               "specialist": grant.specialist, "client": peer.to_string()}),
    );
    let ready = Frame::SessionReady { session: id, token: session.token, raw_legs: state.cfg.raw_legs };
    if io.write_frame(&ready).await.is_err() {
        return state.end_session(id, Reason::ClientClosed, true);
    }
    control_loop(&state, io, &session).await
}

/// The session's control leg: runs until the client leaves, the session ends
/// elsewhere, or it expires.
async fn control_loop(state: &State, mut io: Io, session: &Session) {
    let id = session.id;
    let max = Duration::from_secs(state.cfg.limits.max_session_secs);
    let reason = loop {
        tokio::select! {
            // Drained: let go without ending; the client moves to the twin.
            _ = state.drain.cancelled() => return,
            _ = session.end.cancelled() => break None,
            _ = tokio::time::sleep_until((session.started + max).into()) => break Some(Reason::SessionExpired),
            f = io.read_frame() => match f {
                Ok(Frame::Heartbeat { seq }) => { let _ = io.write_frame(&Frame::Heartbeat { seq }).await; }
                Ok(Frame::SessionEnd { .. }) | Err(_) => break Some(Reason::ClientClosed),
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

/// The session's control leg moves here (its relay failed); the session is
/// ours or the twin's by replication.
async fn resume_control(state: Arc<State>, mut io: Io, peer: SocketAddr, id: SessionId, mac: [u8; 32]) {
    tracing::Span::current().record("session", id.to_string());
    let Some(session) = state.find_session(id).await else {
        return refuse(&state, &mut io, peer, Reason::UnknownSession, "no such live session", None).await;
    };
    if !proto::leg_mac_ok(&session.token, LegSide::Control, &id, 0, &mac) {
        return refuse(&state, &mut io, peer, Reason::BadToken, "wrong resume MAC", Some((id, &session.device))).await;
    }
    state.audit.record(
        "session_control_moved",
        json!({"relay": state.cfg.name, "session": id.to_string(), "device": session.device, "client": peer.to_string()}),
    );
    let ready = Frame::SessionReady { session: id, token: session.token, raw_legs: state.cfg.raw_legs };
    if io.write_frame(&ready).await.is_err() {
        return;
    }
    control_loop(&state, io, &session).await
}

#[allow(clippy::too_many_arguments)]
async fn join(state: Arc<State>, mut io: Io, peer: SocketAddr, id: SessionId, conn: u32, mac: [u8; 32], resumes: u32) {
    let joined_at = Instant::now();
    tracing::Span::current().record("session", id.to_string());
    // A session the twin admitted pairs here too (the twin replicated it).
    let Some(session) = state.find_session(id).await else {
        return refuse_join(resumes, &state, &mut io, peer, Reason::UnknownSession, "no such live session", None).await;
    };
    if !proto::leg_mac_ok(&session.token, LegSide::Client, &id, conn, &mac) {
        return refuse_join(
            resumes,
            &state,
            &mut io,
            peer,
            Reason::BadToken,
            "wrong join MAC",
            Some((id, &session.device)),
        )
        .await;
    }
    let fresh = session.joined.lock().map(|mut j| j.insert(conn)).unwrap_or(false);
    if !fresh {
        return refuse_join(
            resumes,
            &state,
            &mut io,
            peer,
            Reason::AlreadyPaired,
            "connection number reused",
            Some((id, &session.device)),
        )
        .await;
    }
    let agent_tx = state.agents.get(&session.device).map(|a| a.tx.clone());
    // The agent may be attached only to the twin: the request goes over the
    // twin link, and the data leg still comes here.
    let via_twin = agent_tx.is_none() && state.replica.link_up() && state.peer().attached.contains(&session.device);
    if agent_tx.is_none() && !via_twin {
        return refuse_join(
            resumes,
            &state,
            &mut io,
            peer,
            Reason::NotAttached,
            "device not attached",
            Some((id, &session.device)),
        )
        .await;
    }
    let (tx, rx) = oneshot::channel();
    let key: [u8; 32] = crate::random_bytes();
    state.pairing().expect_leg(id, conn, key, tx);
    let asked = match &agent_tx {
        Some(tx) => tx.send(Frame::Open { session: id, conn, key, resumes, via: String::new() }).await.is_ok(),
        None => {
            let open = Frame::TwinOpen { session: id, conn, key, resumes, via: state.cfg.name.clone() };
            state.replica.request(open)
        }
    };
    if !asked {
        state.pairing().withdraw_leg(id, conn);
        return refuse_join(
            resumes,
            &state,
            &mut io,
            peer,
            Reason::NotAttached,
            "agent channel closed",
            Some((id, &session.device)),
        )
        .await;
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
    let (leg, leg_prefix) = match event {
        LegEvent::Leg(leg, prefix) => (leg, prefix),
        LegEvent::Failed(reason) => {
            return refuse_join(
                resumes,
                &state,
                &mut io,
                peer,
                reason,
                "the device did not open the connection",
                Some((id, &session.device)),
            )
            .await;
        }
    };
    let mut leg = FrameIo::new(leg);
    let paired = Frame::Paired { session: id, conn };
    if leg.write_frame(&paired).await.is_err() || io.write_frame(&paired).await.is_err() {
        return;
    }
    metrics::RELAY_PAIRING_SECONDS.observe(joined_at.elapsed().as_secs_f64());
    metrics::RELAY_TUNNELS_TOTAL.inc();
    metrics::RELAY_TUNNELS_ACTIVE.inc();
    session.tunnels.fetch_add(1, Ordering::Relaxed);
    let (client, client_prefix) = io.into_parts();
    let (leg, _) = leg.into_parts();
    let to_device = metrics::RELAY_BYTES.with_label_values(&["to_device"]);
    let to_client = metrics::RELAY_BYTES.with_label_values(&["to_client"]);
    let result = tokio::select! {
        r = splice(
            client, client_prefix, leg, leg_prefix,
            Meter::with_metric(&session.to_device, &to_device).tapped(state.taps.to_device.as_ref()),
            Meter::with_metric(&session.to_client, &to_client).tapped(state.taps.to_client.as_ref()),
        ) => r.map(|_| ()).map_err(|e| e.to_string()),
        _ = session.end.cancelled() => Err("session ended".into()),
        // Drained: the ends resume this connection through the twin.
        _ = state.drain.cancelled() => Err("relay drained".into()),
    };
    metrics::RELAY_TUNNELS_ACTIVE.dec();
    tracing::debug!(conn, ?result, "tunnel closed");
}
