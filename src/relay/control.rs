//! Agent control channels (17001): hello, heartbeats, requests down, decisions up.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use super::state::{AgentHandle, LegEvent, State};
use crate::leg::Leg;
use crate::metrics;
use crate::proto::{self, Frame, FrameIo, FrameIoError, Reason, VERSION};

const LISTENER: &str = "control";

pub async fn serve(state: Arc<State>, accepted: super::Accepted, peer: SocketAddr) {
    // Each phase boxed: a task's future is as large as its largest state, and
    // an attached channel (most of a relay's tasks) should not keep the
    // hello's for its whole life (1.5 KiB per agent).
    if let Some(hello) = Box::pin(hello(&state, accepted, peer)).await {
        let Hello { io, device, transport, cert, agent_version, services, streams } = hello;
        Box::pin(attached(state, io, peer, device, (agent_version, transport, cert), (services, streams))).await
    }
}

/// What an agent's hello established.
struct Hello {
    io: FrameIo<Leg>,
    device: String,
    transport: &'static str,
    cert: Arc<[u8]>,
    agent_version: String,
    services: Vec<String>,
    streams: Option<quinn::Connection>,
}

/// Reads and checks the hello; `None` when the channel ends there (refused,
/// or a fetch leg, served to its end).
async fn hello(state: &Arc<State>, accepted: super::Accepted, peer: SocketAddr) -> Option<Hello> {
    // The control listener never accepts raw connections.
    let super::Auth::Tls { device, alpn_ok, .. } = accepted.auth else { return None };
    let Some(device) = device else {
        state.handshake_failed(LISTENER, peer, "no_device_id", "client certificate has no common name");
        return None;
    };
    let transport = accepted.transport;
    let cert = accepted.cert.unwrap_or_default();
    let mut io = FrameIo::new(accepted.leg);
    if !alpn_ok {
        state.handshake_failed(LISTENER, peer, "alpn_missing", "no tether ALPN negotiated");
        let _ = io.write_frame(&Frame::error(Reason::AlpnRequired)).await;
        return None;
    }
    tracing::Span::current().record("device", device.as_str());
    let hello = match state.first_frame(&mut io, (LISTENER, peer), ("hello_timeout", "no hello in time")).await? {
        Ok(f) => f,
        Err(e) => {
            bad_frame(state, &mut io, peer, &device, e).await;
            return None;
        }
    };
    // A device the hub retired gets nothing here, not even a repository fetch.
    if state.retired.contains(&device) {
        let detail = super::retired::WHY;
        refuse(state, &mut io, peer, &device, "device_retired", Reason::DeviceRetired, detail).await;
        return None;
    }
    let (agent_version, services, streams) = match hello {
        Frame::Hello { version, device: claimed, agent_version, services, streams } => {
            if let Err(e) = proto::check_version(version) {
                bad_frame(state, &mut io, peer, &device, e).await;
                return None;
            }
            if claimed != device {
                let detail = format!("hello names {claimed}, certificate names {device}");
                refuse(state, &mut io, peer, &device, "device_mismatch", Reason::DeviceMismatch, &detail).await;
                return None;
            }
            (agent_version, services, streams)
        }
        // Boxed, as are the rare paths below: an idle channel's task then holds
        // only what waiting needs.
        Frame::Repo(first) => {
            Box::pin(super::repo_fetch::serve(state.clone(), io, peer, device, first)).await;
            return None;
        }
        other => {
            let detail = format!("expected hello, got {}", other.kind());
            refuse(state, &mut io, peer, &device, "unexpected_frame", Reason::BadFrame, &detail).await;
            return None;
        }
    };
    // Data legs as streams we open: only on the QUIC connection this channel came on.
    let streams = accepted.quic.filter(|_| streams);
    Some(Hello { io, device, transport, cert, agent_version, services, streams })
}

async fn bad_frame(state: &State, io: &mut FrameIo<Leg>, peer: SocketAddr, device: &str, e: proto::ProtoError) {
    let (label, reason) = (e.label(), e.reason());
    refuse(state, io, peer, device, label, reason, &FrameIoError::from(e).to_string()).await
}

/// Counts, audits and names the reason to the agent, which is then dropped.
async fn refuse(
    state: &State,
    io: &mut FrameIo<Leg>,
    peer: SocketAddr,
    device: &str,
    label: &str,
    reason: Reason,
    detail: &str,
) {
    metrics::RELAY_FRAME_ERRORS.with_label_values(&[LISTENER, label]).inc();
    state.audit.record(
        "control_refused",
        json!({"relay": state.cfg.name, "peer": peer.to_string(), "device": device, "reason": reason.label(), "detail": detail}),
    );
    tracing::info!(reason = reason.label(), detail, "dropping control channel");
    let _ = io.write_frame(&Frame::Error { reason, message: detail.to_string() }).await;
}

async fn attached(
    state: Arc<State>,
    mut io: FrameIo<Leg>,
    peer: SocketAddr,
    device: String,
    (agent_version, transport, cert): (String, &'static str, Arc<[u8]>),
    (services, streams): (Vec<String>, Option<quinn::Connection>),
) {
    let attach_id = state.next_attach_id();
    let (tx, mut rx) = super::state::AgentTx::channel(64);
    let cancel = state.drain.child_token();
    if let Some(old) = state.agents.insert(
        device.clone(),
        AgentHandle {
            attach_id,
            tx,
            cancel: cancel.clone(),
            agent_version: agent_version.clone(),
            transport,
            last_heartbeat: crate::util::now_secs().into(),
            heard_ms: crate::util::clock::now_ms().into(),
            audit_head: Default::default(),
            cert_expires: crate::tls::renewal::not_after(&cert).unwrap_or(0),
            clock: Default::default(),
            cert,
            streams,
        },
    ) {
        old.cancel.cancel();
    }
    // Retired between its hello and now: the list's drop did not see it.
    if state.retired.contains(&device) {
        cancel.cancel();
    }
    metrics::RELAY_AGENTS_ATTACHED.inc();
    state.hub_out().agents_changed = true;
    state.publish(crate::proto::twin::Fact::Attached { device: device.clone() });
    metrics::RELAY_CONTROL_CHANNELS.with_label_values(&[&state.cfg.name]).inc();
    state.audit.record(
        "agent_attached",
        json!({"relay": state.cfg.name, "device": device, "peer": peer.to_string(), "agent_version": agent_version, "transport": transport, "services": services}),
    );
    tracing::info!(%device, %agent_version, "agent attached");
    // Only the attach record needed them; the channel lives on without.
    drop((services, agent_version));

    let hb = state.cfg.limits.heartbeat_secs;
    let idle = Duration::from_secs(state.cfg.limits.agent_idle_timeout_secs);
    let why = match io
        .write_frame(&Frame::Welcome {
            version: VERSION,
            relay: state.cfg.name.clone(),
            heartbeat_secs: hb,
            raw_legs: state.cfg.raw_legs,
        })
        .await
    {
        Err(e) => format!("write failed: {e}"),
        Ok(()) => {
            let me = Channel { device: &device, attach_id, peer };
            channel_loop(&state, &mut io, &mut rx, &cancel, &me, idle).await
        }
    };

    state.agents.remove_if(&device, |_, h| h.attach_id == attach_id);
    state.hub_out().agents_changed = true;
    state.agent_gone(&device, attach_id);
    metrics::RELAY_AGENTS_ATTACHED.dec();
    if !state.agents.contains_key(&device) {
        state.publish(crate::proto::twin::Fact::Detached { device: device.clone() });
    }
    metrics::RELAY_CONTROL_CHANNELS.with_label_values(&[&state.cfg.name]).dec();
    state.audit.record("agent_detached", json!({"relay": state.cfg.name, "device": device, "why": why}));
    tracing::info!(%device, %why, "agent detached");
}

/// Who is on this control channel.
struct Channel<'a> {
    device: &'a str,
    attach_id: u64,
    peer: SocketAddr,
}

async fn channel_loop(
    state: &State,
    io: &mut FrameIo<Leg>,
    rx: &mut mpsc::Receiver<Box<Frame>>,
    cancel: &tokio_util::sync::CancellationToken,
    me: &Channel<'_>,
    idle: Duration,
) -> String {
    let mut deadline = Instant::now() + idle;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                if state.shutdown.is_cancelled() {
                    let _ = io.write_frame(&Frame::error(Reason::RelayShutdown)).await;
                    return "relay shutdown".into();
                }
                if state.retired.contains(me.device) {
                    let why = Frame::Error { reason: Reason::DeviceRetired, message: super::retired::WHY.into() };
                    let _ = io.write_frame(&why).await;
                    return "the hub retired the device".into();
                }
                let _ = io.write_frame(&Frame::error(Reason::Unknown)).await;
                return "replaced by a newer channel".into();
            }
            _ = sleep_until(deadline) => return "idle timeout".into(),
            out = rx.recv() => match out {
                Some(f) => if let Err(e) = io.write_frame(&f).await { return format!("write failed: {e}") },
                None => return "handle dropped".into(),
            },
            r = io.read_frame() => {
                let frame = match r {
                    Ok(f) => f,
                    Err(FrameIoError::Closed) => return "agent closed".into(),
                    // A connection that breaks (a reset, a QUIC connection the
                    // agent closed as it stopped, a path that died) is not a bad
                    // frame: there is no one to tell and nothing to refuse.
                    Err(FrameIoError::Io(e)) => return lost(&e),
                    Err(FrameIoError::Proto(e)) => {
                        Box::pin(bad_frame(state, io, me.peer, me.device, e)).await;
                        return "bad frame".into();
                    }
                };
                deadline = Instant::now() + idle;
                if let Some(a) = state.agents.get(me.device).filter(|a| a.attach_id == me.attach_id) {
                    a.heard_ms.store(crate::util::clock::now_ms(), std::sync::atomic::Ordering::Relaxed);
                }
                if let Err(why) = Box::pin(on_frame(state, io, me, frame)).await {
                    return why;
                }
                io.shrink();
            }
        }
    }
}

async fn on_frame(state: &State, io: &mut FrameIo<Leg>, me: &Channel<'_>, frame: Frame) -> Result<(), String> {
    let device = me.device;
    // A device speaks only for its own sessions: a decision, a failed open
    // or a resume report about another device's session is refused (the
    // channel stays; the other session is untouched).
    let foreign = match &frame {
        Frame::OpenFailed { session, .. } | Frame::Resumed { session, .. } => {
            state.session_device(session).is_some_and(|o| o != device).then_some(*session)
        }
        Frame::Decision { session, .. } => {
            state.pairing().decided_elsewhere(*session, me.attach_id).then_some(*session)
        }
        _ => None,
    };
    if let Some(session) = foreign {
        let detail = format!("{} about session {session}, which is not this device's", frame.kind());
        refuse(state, io, me.peer, device, "not_its_session", Reason::DeviceMismatch, &detail).await;
        return Ok(());
    }
    match frame {
        Frame::Heartbeat { seq, clock } => {
            let now = crate::util::clock::now_ms();
            if let Some(c) = clock {
                super::clock::heard(state, device, c as i64 - now as i64);
            }
            if let Some(a) = state.agents.get(device) {
                a.last_heartbeat.store(now / 1000, std::sync::atomic::Ordering::Relaxed);
            }
            // An agent that sent its clock hears ours (an older one, none).
            let answer = Frame::Heartbeat { seq, clock: clock.map(|_| now) };
            io.write_frame(&answer).await.map_err(|e| format!("write failed: {e}"))?
        }
        Frame::AuditHead { seq, hash, sig } => {
            if let Some(a) = state.agents.get(device) {
                // Passed on as it came: the hub checks the device's signature.
                a.audit_head.set(seq, hash.chars().take(128).collect(), sig.chars().take(512).collect());
            }
        }
        Frame::Decision { session, outcome, reason } => {
            let waiter = state.pairing().decide(session);
            if let Some(tx) = waiter {
                let _ = tx.send((outcome, reason));
            }
        }
        Frame::OpenFailed { session, conn, reason } => {
            let waiter = state.pairing().withdraw_leg(session, conn);
            if let Some(tx) = waiter {
                let _ = tx.send(LegEvent::Failed(reason));
            }
        }
        Frame::SessionEnd { session, reason, .. } => {
            if state.sessions.get(&session).is_some_and(|s| s.device == device) {
                state.end_session(session, reason, false);
            } else {
                let waiter = state.pairing().decide(session);
                if let Some(tx) = waiter {
                    let _ = tx.send((proto::Outcome::Refused, reason));
                }
            }
        }
        Frame::Resumed { session, conn, pause_ms, retransmitted } => {
            metrics::RELAY_RESUMES.inc();
            metrics::RELAY_RETRANSMITTED.inc_by(retransmitted);
            metrics::RELAY_FAILOVER_PAUSE.observe(f64::from(pause_ms) / 1000.0);
            state.audit.record(
                "tunnel_resumed",
                json!({"relay": state.cfg.name, "device": device, "session": session.to_string(), "conn": conn,
                       "pause_ms": pause_ms, "retransmitted": retransmitted}),
            );
        }
        Frame::Error { reason, message } => {
            tracing::warn!(reason = reason.label(), %message, "agent reported an error")
        }
        other => {
            let detail = format!("unexpected {} frame on an attached channel", other.kind());
            refuse(state, io, me.peer, device, "unexpected_frame", Reason::BadFrame, &detail).await;
            return Err(detail);
        }
    }
    Ok(())
}

/// Why an agent's channel broke, for the detach line: rustls's message for a
/// connection closed without `close_notify` (an agent killed or powered off,
/// a path cut) carries a link to its manual, a line per agent in a storm.
fn lost(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            "connection lost: ended without a close (the agent stopped, or its path broke)".into()
        }
        _ => format!("connection lost: {e}"),
    }
}
