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
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{LinkConfig, Outbox, Replica, TwinHost};
use crate::metrics;
use crate::proto::twin::Fact;
use crate::proto::{Frame, FrameIo, FrameIoError, Reason, VERSION, check_version};
use crate::tls::{self, Identity, TlsError};
use crate::util::Backoff;

/// ALPN of the twin link.
pub use crate::tls::ALPN_TWIN;

const BACKOFF_START: Duration = Duration::from_millis(200);
/// The sender probes the link this often when idle...
const HEARTBEAT: Duration = Duration::from_secs(1);
/// ...and either side declares it dead after this much silence (a partition
/// that drops packets sends no FIN).
const LINK_DEAD_AFTER: Duration = Duration::from_secs(3);
const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// Everything both halves of the link share.
struct Link {
    replica: Arc<Replica>,
    host: Arc<dyn TwinHost>,
    cfg: LinkConfig,
    /// Cancelled when the relay lets go of its connections.
    stop: CancellationToken,
}

/// Starts both halves of the link: accepting the twin's facts, and sending
/// ours. Tasks run on `tracker` until `stop`.
pub fn start(
    replica: Arc<Replica>,
    host: Arc<dyn TwinHost>,
    cfg: LinkConfig,
    listener: TcpListener,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> Result<(), TlsError> {
    let id = Identity { ca: &cfg.ca, cert: &cfg.cert, key: &cfg.key };
    let crl = cfg.crl.as_deref();
    let acceptor = TlsAcceptor::from(tls::server_config(&id, true, crl, ALPN_TWIN)?);
    let connector =
        TlsConnector::from(tls::client_config_with_crl(&cfg.ca, crl, Some((&cfg.cert, &cfg.key)), ALPN_TWIN)?);
    metrics::TWIN_LINK_UP.with_label_values(&["in"]).set(0);
    metrics::TWIN_LINK_UP.with_label_values(&["out"]).set(0);
    let link = Arc::new(Link { replica, host, cfg, stop });
    tracker.spawn(accept_loop(link.clone(), listener, acceptor, tracker.clone()));
    tracker.spawn(send_loop(link, connector));
    Ok(())
}

async fn accept_loop(link: Arc<Link>, listener: TcpListener, acceptor: TlsAcceptor, tracker: TaskTracker) {
    loop {
        let Some((tcp, peer)) = crate::util::net::accept(&listener, "twin", &link.stop).await else { return };
        let (link, acceptor) = (link.clone(), acceptor.clone());
        tracker.spawn(async move {
            // A connection that never came up (a stranger, a health check)
            // was counted and audited, or let go, by `receive`: the link
            // that is up stays up.
            if let Some(why) = receive(&link, tcp, peer, &acceptor).await {
                if link.replica.in_link_down() {
                    metrics::TWIN_LINK_UP.with_label_values(&["in"]).set(0);
                }
                tracing::info!(twin = %link.cfg.twin.name, %why, "twin link (in) closed");
            }
        });
    }
}

/// Receives the twin's facts until the connection ends; returns why it
/// ended, or `None` when it never came up (refused, or left before a byte).
async fn receive(link: &Link, tcp: TcpStream, peer: SocketAddr, acceptor: &TlsAcceptor) -> Option<String> {
    let (twin, host, replica) = (&link.cfg.twin, &link.host, &link.replica);
    let timeout = link.cfg.handshake_timeout;
    let mut first = [0u8; 1];
    // Silence counts against the handshake's deadline once, not twice.
    let started = tokio::time::Instant::now();
    match tokio::time::timeout(timeout, tcp.peek(&mut first)).await {
        Ok(Ok(0)) => {
            host.left_early(peer);
            return None;
        }
        Err(_) => {
            host.refused(peer, "timeout", "no byte within the handshake's deadline");
            return None;
        }
        Ok(_) => {}
    }
    let left = timeout.saturating_sub(started.elapsed());
    let tls = match tokio::time::timeout(left, acceptor.accept(tcp)).await {
        Ok(Ok(t)) => {
            tls::handshake_done(t.get_ref().1);
            t
        }
        Ok(Err(e)) => {
            host.refused(peer, tls::handshake_failure_label(&e), &e.to_string());
            return None;
        }
        Err(_) => {
            host.refused(peer, "timeout", "handshake timed out");
            return None;
        }
    };
    let name = tls::peer_common_name(tls.get_ref().1.peer_certificates());
    let revoked = tls::watch_peer(&link.cfg.ca, link.cfg.crl.as_deref(), tls.get_ref().1.peer_certificates());
    let mut io = FrameIo::new(tls);
    if name.as_deref() != Some(twin.name.as_str()) {
        let detail = format!("certificate names {name:?}, the twin is {}", twin.name);
        host.refused(peer, "not_the_twin", &detail);
        let _ = io.write_frame(&Frame::Error { reason: Reason::DeviceMismatch, message: detail }).await;
        return None;
    }
    match tokio::time::timeout(timeout, io.read_frame()).await {
        Ok(Ok(Frame::TwinHello { version, .. })) if check_version(version).is_ok() => {}
        other => {
            let detail = format!("bad twin hello: {other:?}");
            host.refused(peer, "bad_hello", &detail);
            let _ = io.write_frame(&Frame::error(Reason::BadFrame)).await;
            return None;
        }
    }
    metrics::TWIN_LINK_UP.with_label_values(&["in"]).set(1);
    replica.in_link_up();
    Some(follow(link, io, revoked).await)
}

type ServerTls = tokio_rustls::server::TlsStream<TcpStream>;

/// Applies the facts of a twin link that came up until it ends; returns why.
async fn follow(link: &Link, mut io: FrameIo<ServerTls>, mut revoked: tls::Revoked) -> String {
    let (twin, host, replica) = (&link.cfg.twin, &link.host, &link.replica);
    host.audit("twin_link_up", json!({"relay": link.cfg.me, "twin": twin.name, "direction": "in"}));
    loop {
        let frame = tokio::select! {
            _ = link.stop.cancelled() => return "drained".into(),
            _ = &mut revoked => return twin_revoked(link, "in"),
            f = tokio::time::timeout(LINK_DEAD_AFTER, io.read_frame()) => match f {
                Ok(f) => f,
                Err(_) => return format!("twin silent for {LINK_DEAD_AFTER:?}"),
            },
        };
        match frame {
            Ok(Frame::TwinSnapshot) => replica.snapshot_begin(),
            Ok(Frame::TwinSnapshotEnd { seq }) => {
                // A twin that restarted knows less than before; sessions we
                // carry stay until someone ends them.
                replica.snapshot_end();
                metrics::TWIN_SNAPSHOTS_RECEIVED.inc();
                if io.write_frame(&Frame::TwinAck { seq }).await.is_err() {
                    return "ack failed".into();
                }
            }
            // Relay the twin's request to the agent attached here.
            Ok(open @ Frame::TwinOpen { .. }) => host.twin_open(open),
            Ok(Frame::Heartbeat { seq, .. }) => {
                if io.write_frame(&Frame::Heartbeat { seq, clock: None }).await.is_err() {
                    return "heartbeat reply failed".into();
                }
            }
            Ok(Frame::TwinFact { seq, fact }) => {
                metrics::TWIN_FACTS_RECEIVED.inc();
                let ended = match &fact {
                    Fact::SessionDown { session, reason } => Some((*session, *reason)),
                    _ => None,
                };
                replica.apply(fact);
                // The twin ended a session we hold too: end our copy.
                if let Some((id, reason)) = ended {
                    host.twin_ended(id, reason);
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

async fn send_loop(link: Arc<Link>, connector: TlsConnector) {
    let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_CAP);
    let Some(mut requests) = link.replica.take_requests() else { return };
    loop {
        // Subscribe before the snapshot: facts may overlap it, never go missing.
        let (rx, base) = link.replica.subscribe();
        let started = Instant::now();
        let why = send(&link, &connector, rx, base, &mut requests).await;
        link.replica.set_out_up(false);
        metrics::TWIN_LINK_UP.with_label_values(&["out"]).set(0);
        tracing::info!(twin = %link.cfg.twin.name, %why, "twin link (out) closed");
        if started.elapsed() > Duration::from_secs(10) {
            backoff.reset();
        }
        tokio::select! {
            _ = link.stop.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_pause()) => {}
        }
    }
}

/// A reloaded CRL revokes the twin's certificate: counted, audited, dropped.
fn twin_revoked(link: &Link, direction: &str) -> String {
    metrics::PEERS_REVOKED.with_label_values(&["relay"]).inc();
    let fields = json!({"relay": link.cfg.me, "twin": link.cfg.twin.name, "direction": direction, "role": "relay"});
    link.host.audit("peer_revoked", fields);
    "the twin's certificate was revoked".into()
}

/// Sends a snapshot and then every new fact until the connection ends.
async fn send(
    link: &Link,
    connector: &TlsConnector,
    mut rx: broadcast::Receiver<(u64, Fact)>,
    base: u64,
    requests: &mut tokio::sync::mpsc::UnboundedReceiver<Frame>,
) -> String {
    let twin = &link.cfg.twin;
    let name = match tls::server_name(twin.server_name.as_deref().unwrap_or(&twin.name)) {
        Ok(n) => n,
        Err(e) => return e.to_string(),
    };
    let dial = async {
        let tcp = TcpStream::connect(&twin.addr).await?;
        let _ = tcp.set_nodelay(true);
        let t = connector.connect(name, tcp).await?;
        tls::handshake_done(t.get_ref().1);
        Ok::<_, std::io::Error>(t)
    };
    let tls = match tokio::time::timeout(tls::DIAL_TIMEOUT, dial).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return format!("dial: {e}"),
        Err(_) => return "dial timed out".into(),
    };
    let mut revoked = tls::watch_peer(&link.cfg.ca, link.cfg.crl.as_deref(), tls.get_ref().1.peer_certificates());
    let mut io = FrameIo::new(tls);
    let mut outbox = Outbox::default();
    let hello = Frame::TwinHello { version: VERSION, relay: link.cfg.me.clone() };
    if io.write_frame(&hello).await.is_err() || io.write_frame(&Frame::TwinSnapshot).await.is_err() {
        return "write failed".into();
    }
    for fact in link.host.own_facts() {
        if io.write_frame(&Frame::TwinFact { seq: 0, fact }).await.is_err() {
            return "write failed".into();
        }
    }
    let seq = outbox.stamp(Instant::now(), base);
    if io.write_frame(&Frame::TwinSnapshotEnd { seq }).await.is_err() {
        return "write failed".into();
    }
    link.replica.set_out_up(true);
    metrics::TWIN_LINK_UP.with_label_values(&["out"]).set(1);
    link.host.audit("twin_link_up", json!({"relay": link.cfg.me, "twin": twin.name, "direction": "out"}));
    let mut tick = tokio::time::interval(HEARTBEAT);
    let mut last_heard = Instant::now();
    let mut beat = 0u64;
    loop {
        tokio::select! {
            _ = link.stop.cancelled() => return "drained".into(),
            _ = &mut revoked => return twin_revoked(link, "out"),
            f = rx.recv() => match f {
                Ok((index, fact)) => {
                    let seq = outbox.stamp(Instant::now(), index);
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
                    if let Some(index) = outbox.on_ack(seq) {
                        link.replica.set_acked(index);
                    }
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
                if io.write_frame(&Frame::Heartbeat { seq: beat, clock: None }).await.is_err() {
                    return "heartbeat failed".into();
                }
            }
        }
        let (events, age) = outbox.lag(Instant::now());
        link.replica.set_lag(events as u64);
        metrics::TWIN_LAG_EVENTS.set(events as i64);
        metrics::TWIN_LAG_SECONDS.set(age.as_secs_f64());
    }
}
