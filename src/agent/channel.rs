//! One control channel to one relay: dial, hello, heartbeats, requests in,
//! decisions out; reconnect with exponential back-off and jitter.
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, interval, sleep};
use tracing::Instrument;

use super::Shared;
use super::config::RelayEndpoint;
use super::transport::{self, ControlLeg};
use crate::metrics;
use crate::proto::{Frame, FrameIo, FrameIoError, VERSION};
use crate::quic::Transport;
use crate::tls;
use crate::util::Backoff;

const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(60);
const DIAL_TIMEOUT: Duration = tls::DIAL_TIMEOUT;
/// How often the agent checks whether its audit head moved.
const HEAD_EVERY: Duration = Duration::from_secs(3);
/// A re-probe of QUIC gives up after this.
const REPROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Keeps a channel to `relay` up until shutdown.
pub async fn attach_loop(state: Shared, relay: RelayEndpoint) {
    let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_CAP).with_jitter();
    let span = tracing::info_span!("channel", relay = %relay.name, device = %state.cfg.device);
    let mut next: Option<ControlLeg> = None;
    loop {
        metrics::AGENT_RECONNECTS.with_label_values(&[&relay.name]).inc();
        let mut attached = false;
        let result = attach_once(&state, &relay, next.take(), &mut attached).instrument(span.clone()).await;
        state.relays.remove(&relay.name);
        if let Some((_, old)) = state.quic.remove(&relay.name) {
            old.close(0u32.into(), b"control channel closed");
        }
        let result = match result {
            Ok(Ended::Moved(to)) => {
                // QUIC got through again: attach over it at once.
                next = Some(to);
                continue;
            }
            other => other.map(|_| ()),
        };
        state.relay_lost(&relay.name);
        metrics::AGENT_CONTROL_CHANNELS.with_label_values(&[&relay.name]).set(0);
        if let Err(e) = result {
            span.in_scope(|| tracing::warn!(error = %e, "control channel failed"));
            if !attached && let Some(why) = super::clock::outside_own_certificate(&state) {
                span.in_scope(|| tracing::error!("{why}"));
                if !state.clock_suspect.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    let now = crate::util::now_secs();
                    state.audit.record("clock_suspect", serde_json::json!({"device": state.cfg.device, "relay": relay.name, "clock": now, "detail": why}));
                }
            }
        }
        if attached {
            // It worked until now, however it ended: retry soon, not after the
            // back-off of earlier failures.
            backoff.reset();
        }
        let pause = backoff.next_pause();
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = sleep(pause) => {}
        }
    }
}

/// How an attachment that the relay welcomed ended.
enum Ended {
    /// The channel closed, or we are shutting down.
    Closed,
    /// On TCP, QUIC got through again and no session was live: attach over it.
    Moved(ControlLeg),
}

/// One attachment (over `leg` when given, else a new dial); `attached`
/// turns true once the relay welcomed us.
async fn attach_once(
    state: &Shared,
    relay: &RelayEndpoint,
    leg: Option<ControlLeg>,
    attached: &mut bool,
) -> Result<Ended, String> {
    let leg = match leg {
        Some(l) => l,
        None => transport::control(state, relay).await?,
    };
    let transport = leg.transport();
    let on_tcp = leg.quic.is_none();
    let mut revoked = leg.revoked;
    let quic = leg.quic;
    if let Some(conn) = &quic {
        state.quic.insert(relay.name.clone(), conn.clone());
    }
    let mut io = FrameIo::new(leg.leg);
    let services = state.cfg.services.keys().cloned().collect();
    let hello = Frame::Hello {
        version: VERSION,
        device: state.cfg.device.clone(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        services,
        // On QUIC the relay opens our data legs as streams (see `streams`).
        streams: quic.is_some(),
    };
    io.write_frame(&hello).await.map_err(|e| format!("hello: {e}"))?;
    let (hb_relay, raw_legs) = match tokio::time::timeout(DIAL_TIMEOUT, io.read_frame()).await {
        Ok(Ok(Frame::Welcome { heartbeat_secs, raw_legs, .. })) => (u64::from(heartbeat_secs), raw_legs),
        Ok(Ok(Frame::Error { reason, message })) => return Err(format!("relay refused: {reason}: {message}")),
        Ok(Ok(other)) => return Err(format!("expected welcome, got {}", other.kind())),
        Ok(Err(e)) => return Err(format!("welcome: {e}")),
        Err(_) => return Err("no welcome in time".into()),
    };
    let hb = Duration::from_secs(state.cfg.heartbeat_secs.min(hb_relay.max(1)));
    let dead_after = hb * 5 / 2;
    let (tx, mut rx) = mpsc::channel(64);
    state.relays.insert(relay.name.clone(), tx.clone());
    metrics::AGENT_CONTROL_CHANNELS.with_label_values(&[&relay.name]).set(1);
    *attached = true;
    tracing::info!(transport, "attached");
    if let Some(conn) = quic {
        // Ends with the connection (attach_loop closes it when the channel ends).
        tokio::spawn(super::streams::accept(state.clone(), relay.clone(), tx.clone(), conn).in_current_span());
    }
    state.jobs_waiting.notify_one();
    io.write_frame(&state.head_frame()).await.map_err(|e| format!("write: {e}"))?;
    // A first heartbeat at once: the relay's answer tells how far our clock is off.
    let with_clock = !state.no_clock.contains(&relay.name);
    let beat = |seq: u64| {
        let sent = super::clock::Sent { seq, at: Instant::now(), clock_ms: crate::util::clock::now_ms() };
        (Frame::Heartbeat { seq, clock: with_clock.then_some(sent.clock_ms) }, sent)
    };
    let (first, mut sent) = beat(1);
    let mut skewed = false;
    io.write_frame(&first).await.map_err(|e| format!("write: {e}"))?;

    let mut ticker = crate::util::interval_after(hb);
    // The head also goes out when it moved (checked every few seconds), so
    // that the hub anchors a session's records soon after they are written.
    let mut head_check = interval(HEAD_EVERY);
    let mut head_sent = state.audit.head().0;
    let reprobe_every = Duration::from_secs(state.cfg.quic_reprobe_secs);
    let reprobe = on_tcp && state.cfg.transport == Transport::Auto;
    let mut reprobe_at = Instant::now() + reprobe_every;
    let mut seq = 1u64;
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return Ok(Ended::Closed),
            _ = &mut revoked => {
                // Sessions through this relay resume through its twin.
                metrics::PEERS_REVOKED.with_label_values(&["relay"]).inc();
                state.audit.record("peer_revoked", serde_json::json!({"device": state.cfg.device, "relay": relay.name, "role": "relay"}));
                return Err("the relay's certificate was revoked (CRL reloaded): dropped its channel".into());
            }
            _ = tokio::time::sleep_until(reprobe_at), if reprobe => {
                reprobe_at = Instant::now() + reprobe_every;
                // Moving the control channel ends the relay's sessions of
                // this device: only while none is live or waiting.
                if state.sessions.is_empty() && state.pending.is_empty() {
                    match transport::quic_control(state, relay, REPROBE_TIMEOUT).await {
                        Ok(to) => {
                            tracing::info!("QUIC gets through again: moving the control channel to QUIC");
                            return Ok(Ended::Moved(to));
                        }
                        Err(e) => tracing::debug!(error = %e, "QUIC still does not get through"),
                    }
                }
            }
            _ = head_check.tick() => {
                let seq = state.audit.head().0;
                if seq != head_sent {
                    head_sent = seq;
                    io.write_frame(&state.head_frame()).await.map_err(|e| format!("write: {e}"))?;
                }
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() > dead_after {
                    return Err(format!("relay silent for {:?}", last_heard.elapsed()));
                }
                seq += 1;
                let f;
                (f, sent) = beat(seq);
                io.write_frame(&f).await.map_err(|e| format!("write: {e}"))?;
                io.write_frame(&state.head_frame()).await.map_err(|e| format!("write: {e}"))?;
            }
            out = rx.recv() => if let Some(f) = out {
                io.write_frame(&f).await.map_err(|e| format!("write: {e}"))?;
            },
            r = io.read_frame() => {
                let frame = match r {
                    Ok(f) => f,
                    Err(FrameIoError::Closed) => return Ok(Ended::Closed),
                    Err(e) => return Err(format!("read: {e}")),
                };
                last_heard = Instant::now();
                if let Frame::Heartbeat { seq, clock: Some(theirs) } = frame {
                    super::clock::heard(state, &relay.name, &sent, (seq, theirs), &mut skewed);
                }
                if with_clock && super::clock::refused_by_older_relay(&frame) {
                    state.no_clock.insert(relay.name.clone());
                    return Err("the relay is older than this agent and refuses heartbeats with a clock: attaching again without (upgrade the relay to see this device's clock there)".into());
                }
                on_frame(state, relay, raw_legs, &tx, frame)?;
                io.shrink();
            }
        }
    }
}

fn on_frame(
    state: &Shared,
    relay: &RelayEndpoint,
    raw_legs: bool,
    tx: &mpsc::Sender<Frame>,
    frame: Frame,
) -> Result<(), String> {
    match frame {
        Frame::Heartbeat { .. } => {}
        Frame::AccessRequest { grant, service } => {
            let (state, relay, tx) = (state.clone(), relay.name.clone(), tx.clone());
            tokio::spawn(async move { super::access::handle(state, relay, tx, grant, service).await });
        }
        Frame::Open { session, conn, key, resumes, via } => {
            // `via`: the twin holding the client leg asked through this relay;
            // the data leg goes to the twin.
            let target = if via.is_empty() {
                Some(relay.clone())
            } else {
                state.cfg.relays.iter().find(|r| r.name == via).cloned()
            };
            let Some(target) = target else {
                let _ = tx.try_send(Frame::OpenFailed { session, conn, reason: crate::proto::Reason::Internal });
                return Ok(());
            };
            let (state, tx) = (state.clone(), tx.clone());
            let leg = super::tunnel::LegOrigin::Dial(super::tunnel::LegPlan { raw: raw_legs, key, resumes });
            tokio::spawn(async move { super::tunnel::open(state, target, tx, session, conn, leg).await });
        }
        Frame::SessionEnd { session, reason, .. } => {
            if !state.end_session(session, reason, false) {
                if state.pending.remove(&session).is_some() {
                    state.audit.record("consent_withdrawn", serde_json::json!({"device": state.cfg.device, "session": session.to_string(), "reason": reason.label()}));
                } else {
                    // Its request may be read but not yet taken up (`access.rs`).
                    state.note_withdrawn(session, reason);
                }
            }
        }
        Frame::Repo(crate::proto::repo::RepoFrame::JobsWaiting) => state.jobs_waiting.notify_one(),
        Frame::Error { reason, message } => return Err(format!("relay error: {reason}: {message}")),
        other => return Err(format!("unexpected {} frame", other.kind())),
    }
    Ok(())
}
