//! The twin link's I/O. Each relay dials its twin and streams its own facts on
//! that connection (snapshot first, then changes); it accepts its twin's
//! connection and applies what arrives, acknowledging as it goes. Both sides
//! are mTLS with relay certificates; the peer's common name must be the
//! configured twin.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::Outbox;
use crate::metrics;
use crate::proto::twin::Fact;
use crate::proto::{Frame, FrameIo, FrameIoError, Reason, VERSION, check_version};
use crate::relay::{RelayError, State, TwinConfig};
use crate::tls::{self, Identity};
use crate::util::Backoff;

/// ALPN of the twin link.
pub const ALPN_TWIN: &[u8] = b"tether-twin/1";

const BACKOFF_START: Duration = Duration::from_millis(200);
/// The sender probes the link this often when idle...
const HEARTBEAT: Duration = Duration::from_secs(1);
/// ...and either side declares it dead after this much silence (a partition
/// that drops packets sends no FIN).
const LINK_DEAD_AFTER: Duration = Duration::from_secs(3);
const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// Starts both halves of the link: accepting the twin's facts, and sending ours.
pub fn start(state: Arc<State>, listener: TcpListener) -> Result<(), RelayError> {
    let Some(twin) = state.cfg.twin.clone() else { return Ok(()) };
    let id = Identity { ca: &state.cfg.ca, cert: &state.cfg.cert, key: &state.cfg.key };
    let acceptor = TlsAcceptor::from(tls::server_config(&id, true, None, ALPN_TWIN)?);
    let connector =
        TlsConnector::from(tls::client_config(&state.cfg.ca, Some((&state.cfg.cert, &state.cfg.key)), ALPN_TWIN)?);
    metrics::TWIN_LINK_UP.with_label_values(&["in"]).set(0);
    metrics::TWIN_LINK_UP.with_label_values(&["out"]).set(0);
    state.tracker.spawn(accept_loop(state.clone(), listener, acceptor, twin.clone()));
    state.tracker.spawn(send_loop(state.clone(), connector, twin));
    Ok(())
}

async fn accept_loop(state: Arc<State>, listener: TcpListener, acceptor: TlsAcceptor, twin: TwinConfig) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = state.drain.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => { tokio::time::sleep(Duration::from_millis(100)).await; continue; }
            },
        };
        let (state, acceptor, twin) = (state.clone(), acceptor.clone(), twin.clone());
        state.tracker.clone().spawn(async move {
            let why = receive(&state, tcp, peer, &acceptor, &twin).await;
            metrics::TWIN_LINK_UP.with_label_values(&["in"]).set(0);
            state.twin_in_up.store(false, std::sync::atomic::Ordering::Relaxed);
            state.peer().link_lost();
            tracing::info!(twin = %twin.name, %why, "twin link (in) closed");
        });
    }
}

/// Receives the twin's facts until the connection ends; returns why it ended.
async fn receive(state: &State, tcp: TcpStream, peer: SocketAddr, acceptor: &TlsAcceptor, twin: &TwinConfig) -> String {
    let timeout = Duration::from_millis(state.cfg.limits.handshake_timeout_ms);
    let tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            state.handshake_failed("twin", peer, tls::handshake_failure_label(&e), &e.to_string());
            return "handshake failed".into();
        }
        Err(_) => {
            state.handshake_failed("twin", peer, "timeout", "handshake timed out");
            return "handshake timed out".into();
        }
    };
    let name = tls::peer_common_name(tls.get_ref().1.peer_certificates());
    let mut io = FrameIo::new(tls);
    if name.as_deref() != Some(twin.name.as_str()) {
        let detail = format!("certificate names {name:?}, the twin is {}", twin.name);
        state.handshake_failed("twin", peer, "not_the_twin", &detail);
        let _ = io.write_frame(&Frame::Error { reason: Reason::DeviceMismatch, message: detail }).await;
        return "not the twin".into();
    }
    match tokio::time::timeout(timeout, io.read_frame()).await {
        Ok(Ok(Frame::TwinHello { version, .. })) if check_version(version).is_ok() => {}
        other => {
            let detail = format!("bad twin hello: {other:?}");
            state.handshake_failed("twin", peer, "bad_hello", &detail);
            let _ = io.write_frame(&Frame::error(Reason::BadFrame)).await;
            return detail;
        }
    }
    metrics::TWIN_LINK_UP.with_label_values(&["in"]).set(1);
    state.twin_in_up.store(true, std::sync::atomic::Ordering::Relaxed);
    state.audit.record("twin_link_up", json!({"relay": state.cfg.name, "twin": twin.name, "direction": "in"}));
    loop {
        let frame = tokio::select! {
            _ = state.drain.cancelled() => return "drained".into(),
            f = tokio::time::timeout(LINK_DEAD_AFTER, io.read_frame()) => match f {
                Ok(f) => f,
                Err(_) => return format!("twin silent for {LINK_DEAD_AFTER:?}"),
            },
        };
        match frame {
            Ok(Frame::TwinSnapshot) => state.peer().snapshot_begin(),
            Ok(Frame::TwinSnapshotEnd { seq }) => {
                // A twin that restarted knows less than before; sessions we
                // carry stay until someone ends them.
                state.peer().snapshot_end();
                if io.write_frame(&Frame::TwinAck { seq }).await.is_err() {
                    return "ack failed".into();
                }
            }
            Ok(Frame::TwinOpen { session, conn, key, resumes, via }) => {
                // Relay the twin's request to the agent attached here.
                let device = state
                    .sessions
                    .get(&session)
                    .map(|s| s.device.clone())
                    .or_else(|| state.peer().sessions.get(&session).map(|s| s.device.clone()));
                if let Some(tx) = device.and_then(|d| state.agents.get(&d).map(|a| a.tx.clone())) {
                    let _ = tx.try_send(Frame::Open { session, conn, key, resumes, via });
                }
            }
            Ok(Frame::Heartbeat { seq }) => {
                if io.write_frame(&Frame::Heartbeat { seq }).await.is_err() {
                    return "heartbeat reply failed".into();
                }
            }
            Ok(Frame::TwinFact { seq, fact }) => {
                metrics::TWIN_FACTS_RECEIVED.inc();
                let ended = match &fact {
                    Fact::SessionDown { session, reason } => Some((*session, *reason)),
                    _ => None,
                };
                state.peer().apply(fact);
                // The twin ended a session we hold too: end our copy (the
                // device was told by the twin).
                if let Some((id, reason)) = ended {
                    // Tell the device too if it is attached here (it may be
                    // attached only to us); ending twice is harmless.
                    state.end_session(id, reason, true);
                }
                if io.write_frame(&Frame::TwinAck { seq }).await.is_err() {
                    return "ack failed".into();
                }
            }
            Ok(other) => return format!("unexpected {}", other.kind()),
            Err(FrameIoError::Closed) => return "twin closed".into(),
            Err(e) => return e.to_string(),
        }
    }
}

async fn send_loop(state: Arc<State>, connector: TlsConnector, twin: TwinConfig) {
    let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_CAP);
    let mut out_requests = state.twin_out_rx.lock().ok().and_then(|mut r| r.take());
    loop {
        // Subscribe before the snapshot: facts may overlap it, never go missing.
        let rx = state.facts.subscribe();
        let Some(mut requests) = out_requests.take() else { return };
        let started = Instant::now();
        let why = send(&state, &connector, &twin, rx, &mut requests).await;
        out_requests = Some(requests);
        metrics::TWIN_LINK_UP.with_label_values(&["out"]).set(0);
        tracing::info!(twin = %twin.name, %why, "twin link (out) closed");
        if started.elapsed() > Duration::from_secs(10) {
            backoff.reset();
        }
        tokio::select! {
            _ = state.drain.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_pause()) => {}
        }
    }
}

/// Sends a snapshot and then every new fact until the connection ends.
async fn send(
    state: &State,
    connector: &TlsConnector,
    twin: &TwinConfig,
    mut rx: broadcast::Receiver<Fact>,
    requests: &mut tokio::sync::mpsc::UnboundedReceiver<Frame>,
) -> String {
    let name = match tls::server_name(twin.server_name.as_deref().unwrap_or(&twin.name)) {
        Ok(n) => n,
        Err(e) => return e.to_string(),
    };
    let dial = async {
        let tcp = TcpStream::connect(&twin.addr).await?;
        let _ = tcp.set_nodelay(true);
        connector.connect(name, tcp).await
    };
    let tls = match tokio::time::timeout(tls::DIAL_TIMEOUT, dial).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return format!("dial: {e}"),
        Err(_) => return "dial timed out".into(),
    };
    let mut io = FrameIo::new(tls);
    let mut outbox = Outbox::default();
    let hello = Frame::TwinHello { version: VERSION, relay: state.cfg.name.clone() };
    if io.write_frame(&hello).await.is_err() || io.write_frame(&Frame::TwinSnapshot).await.is_err() {
        return "write failed".into();
    }
    for fact in state.own_facts() {
        if io.write_frame(&Frame::TwinFact { seq: 0, fact }).await.is_err() {
            return "write failed".into();
        }
    }
    let seq = outbox.stamp(Instant::now());
    if io.write_frame(&Frame::TwinSnapshotEnd { seq }).await.is_err() {
        return "write failed".into();
    }
    metrics::TWIN_LINK_UP.with_label_values(&["out"]).set(1);
    state.audit.record("twin_link_up", json!({"relay": state.cfg.name, "twin": twin.name, "direction": "out"}));
    let mut tick = tokio::time::interval(HEARTBEAT);
    let mut last_heard = Instant::now();
    let mut beat = 0u64;
    loop {
        tokio::select! {
            _ = state.drain.cancelled() => return "drained".into(),
            f = rx.recv() => match f {
                Ok(fact) => {
                    let seq = outbox.stamp(Instant::now());
                    if io.write_frame(&Frame::TwinFact { seq, fact }).await.is_err() {
                        return "write failed".into();
                    }
                }
                // We fell behind the fact stream: start over with a snapshot.
                Err(broadcast::error::RecvError::Lagged(n)) => return format!("lagged by {n} facts"),
                Err(broadcast::error::RecvError::Closed) => return "closed".into(),
            },
            r = requests.recv() => if let Some(f) = r
                && io.write_frame(&f).await.is_err()
            {
                return "write failed".into();
            },
            a = io.read_frame() => match a {
                Ok(Frame::TwinAck { seq }) => {
                    last_heard = Instant::now();
                    outbox.on_ack(seq);
                }
                Ok(Frame::Heartbeat { .. }) => last_heard = Instant::now(),
                Ok(other) => return format!("unexpected {}", other.kind()),
                Err(e) => return e.to_string(),
            },
            _ = tick.tick() => {
                if last_heard.elapsed() > LINK_DEAD_AFTER {
                    return format!("twin silent for {:?}", last_heard.elapsed());
                }
                beat += 1;
                if io.write_frame(&Frame::Heartbeat { seq: beat }).await.is_err() {
                    return "heartbeat failed".into();
                }
            }
        }
        let (events, age) = outbox.lag(Instant::now());
        state.twin_lag.store(events as u64, std::sync::atomic::Ordering::Relaxed);
        metrics::TWIN_LAG_EVENTS.set(events as i64);
        metrics::TWIN_LAG_SECONDS.set(age.as_secs_f64());
    }
}
