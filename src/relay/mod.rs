//! The relay: TLS listeners for agents, data legs and specialists; pairing by
//! session id; splicing; admin endpoints.
//!
//! [`Listeners::bind`] binds all four ports (port 0 works) and [`run`] serves
//! them until the shutdown token fires, then drains.

mod admin;
mod agents;
mod client;
mod clock;
pub mod config;
mod control;
mod data;
mod decision;
mod gate;
mod hub_pool;
mod hub_report;
mod job_events;
mod listeners;
mod pairing;
mod quic;
mod refusals;
mod repo_fetch;
mod report_agents;
mod report_heads;
mod retired;
mod session;
mod state;
mod streams;
mod tunnel;

pub use config::{RelayConfig, RelayLimits, TwinConfig};
pub use listeners::{BoundAddrs, Listeners};
pub use state::State;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::metrics;
use crate::tls::{self, Identity};
use crate::util::proxy::{self, ProxyTrust};

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error("state file {path}: {source}")]
    State { path: std::path::PathBuf, source: std::io::Error },
}

/// Serves until `shutdown` is cancelled, then drains live tasks for up to
/// `limits.drain_secs` and returns.
pub async fn run(listeners: Listeners, cfg: RelayConfig, shutdown: CancellationToken) -> Result<(), RelayError> {
    run_with_taps(listeners, cfg, shutdown, Taps::default()).await
}

/// Hooks on the spliced bytes of every tunnel (tests only; see [`crate::splice::Tap`]).
#[derive(Default, Clone)]
pub struct Taps {
    pub to_device: Option<crate::splice::Tap>,
    pub to_client: Option<crate::splice::Tap>,
}

/// [`run`], with taps on the spliced bytes.
pub async fn run_with_taps(
    listeners: Listeners,
    cfg: RelayConfig,
    shutdown: CancellationToken,
    taps: Taps,
) -> Result<(), RelayError> {
    metrics::init(metrics::Part::Relay);
    let id = Identity { ca: &cfg.ca, cert: &cfg.cert, key: &cfg.key };
    let crl = cfg.crl.as_deref();
    let acceptor = |client_auth, crl, alpn| -> Result<_, RelayError> {
        Ok((TlsAcceptor::from(tls::server_config(&id, client_auth, crl, alpn)?), alpn))
    };
    let control_tls = acceptor(true, crl, tls::ALPN_AGENT)?;
    let data_tls = acceptor(true, crl, tls::ALPN_DATA)?;
    // A client that reads `Waiting` frames gets them; an older one, not.
    let client_tls = (
        TlsAcceptor::from(tls::server_offering(
            tls::server_config(&id, false, None, tls::ALPN_CLIENT)?,
            &[tls::ALPN_CLIENT_WAITS, tls::ALPN_CLIENT],
        )),
        tls::ALPN_CLIENT,
    );
    let quic = match listeners.quic {
        Some((agents, clients)) => Some((
            quic::endpoint(&cfg, quic::Side::Agents, agents)?,
            quic::endpoint(&cfg, quic::Side::Clients, clients)?,
        )),
        None => None,
    };
    tls::expiry::export(&[&cfg.cert, &cfg.ca]);
    let state = State::new(cfg, shutdown.clone(), taps)?;
    tracing::info!(relay = %state.cfg.name, "relay serving");
    tls::spawn_reloader(tls::CRL_RELOAD_PERIOD);

    let tracker = state.tracker.clone();
    let raw = state.cfg.raw_legs;
    let none = ProxyTrust::default();
    let balancers = ProxyTrust::new(state.cfg.proxy_protocol_from.clone());
    tracker.spawn(accept_loop(
        ("control", none.clone()),
        listeners.control,
        control_tls,
        false,
        state.clone(),
        control::serve,
    ));
    tracker.spawn(accept_loop(("data", none), listeners.data, data_tls, raw, state.clone(), data::serve));
    tracker.spawn(accept_loop(("client", balancers), listeners.client, client_tls, raw, state.clone(), client::serve));
    if let Some((agents, clients)) = quic {
        tracker.spawn(quic::accept_loop(quic::Side::Agents, agents, state.clone()));
        tracker.spawn(quic::accept_loop(quic::Side::Clients, clients, state.clone()));
    }
    tracker.spawn(admin::serve(listeners.admin, state.clone()));
    let s = state.clone();
    tracker.spawn(async move { refusals::report(&s.refusals, &s.audit, &s.cfg.name, &s.drain).await });
    tracker.spawn(hub_report::run(state.clone()));
    tracker.spawn(job_events::run(state.clone()));
    if let (Some(listener), Some(twin)) = (listeners.twin, state.cfg.twin.clone()) {
        let cfg = crate::twin::LinkConfig {
            me: state.cfg.name.clone(),
            twin,
            ca: state.cfg.ca.clone(),
            crl: state.cfg.crl.clone(),
            cert: state.cfg.cert.clone(),
            key: state.cfg.key.clone(),
            handshake_timeout: Duration::from_millis(state.cfg.limits.handshake_timeout_ms),
        };
        let host: Arc<dyn crate::twin::TwinHost> = state.clone();
        crate::twin::link::start(state.replica.clone(), host, cfg, listener, &state.tracker, state.drain.clone())?;
    }

    shutdown.cancelled().await;
    state.ready.store(false, Ordering::Relaxed);
    drain(&state).await;
    tracker.close();
    let drain = Duration::from_secs(state.cfg.limits.drain_secs);
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(tasks = tracker.len(), "drain period over; exiting with tasks still running");
    }
    Ok(())
}

/// A leg after its handshake: TLS over TCP, a QUIC stream, or a raw leg (see [`crate::leg`]).
pub struct Accepted {
    pub leg: crate::leg::Leg,
    pub auth: Auth,
    /// The verified client certificate (DER), if any: shared by the
    /// connection and its legs, and kept by an attached agent's handle.
    pub cert: Option<std::sync::Arc<[u8]>>,
    /// `tcp` or `quic`.
    pub transport: &'static str,
    /// The QUIC connection an agent's stream came on: where the relay opens
    /// data legs to an agent that takes them ([`crate::proto::Frame::Hello`]'s `streams`).
    pub quic: Option<quinn::Connection>,
}

/// What the leg's transport proved.
pub enum Auth {
    /// TLS (over TCP or QUIC): the verified client certificate's common name,
    /// if any, whether the listener's ALPN was negotiated, and whether that
    /// was a specialist's that reads `Waiting` frames.
    Tls { device: Option<String>, alpn_ok: bool, waits: bool },
    /// Raw TCP: nothing; the first frame proves itself by MAC.
    Raw,
}

impl Accepted {
    fn tls(t: TlsStream<TcpStream>, alpn: &[u8]) -> Accepted {
        let conn = t.get_ref().1;
        let cert = conn.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().into());
        let auth = Auth::Tls {
            device: tls::peer_common_name(conn.peer_certificates()),
            alpn_ok: tls::alpn_serves(conn.alpn_protocol(), alpn),
            waits: tls::client_waits(conn.alpn_protocol()),
        };
        Accepted { leg: Box::new(t), auth, cert, transport: "tcp", quic: None }
    }
}

/// Why a connection did not get past its handshake.
enum NotAccepted {
    /// Silent past the first-byte deadline, or the whole handshake deadline.
    Timeout,
    Failed(std::io::Error),
    /// A PROXY header from a source not trusted to send one.
    ForgedProxyHeader,
    /// Closed before its first byte: a balancer's TCP check, a port scan.
    Left,
}

/// TLS, or (where `allow_raw`) raw TCP when the first byte is not a TLS
/// handshake. The first byte must come within `first_byte`.
async fn accept_one(
    tcp: TcpStream,
    acceptor: &TlsAcceptor,
    alpn: &'static [u8],
    allow_raw: bool,
    first_byte: Duration,
) -> Result<Accepted, NotAccepted> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(first_byte, tcp.peek(&mut first)).await {
        Err(_) => return Err(NotAccepted::Timeout),
        Ok(Err(e)) => return Err(NotAccepted::Failed(e)),
        Ok(Ok(0)) => return Err(NotAccepted::Left),
        Ok(Ok(_)) => {}
    }
    if proxy::looks_like_header(&first) {
        return Err(NotAccepted::ForgedProxyHeader);
    }
    if allow_raw && first[0] != crate::leg::TLS_HANDSHAKE {
        return Ok(Accepted { leg: Box::new(tcp), auth: Auth::Raw, cert: None, transport: "tcp", quic: None });
    }
    let t = acceptor.accept(tcp).await.map_err(NotAccepted::Failed)?;
    tls::handshake_done(t.get_ref().1);
    Ok(Accepted::tls(t, alpn))
}

/// Accepts connections; each one's TLS handshake runs in its own task under a
/// timeout, so a slow peer never stalls the loop. Connections from the
/// listener's trusted balancers start with a PROXY v2 header: its source is
/// the peer from then on (per-source bound, audit).
async fn accept_loop<F, Fut>(
    (listener_name, balancers): (&'static str, ProxyTrust),
    listener: TcpListener,
    (acceptor, alpn): (TlsAcceptor, &'static [u8]),
    allow_raw: bool,
    state: Arc<State>,
    handler: F,
) where
    F: Fn(Arc<State>, Accepted, SocketAddr) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limits = &state.cfg.limits;
    let hs_timeout = Duration::from_millis(limits.handshake_timeout_ms);
    let first_byte = Duration::from_millis(limits.first_byte_ms.min(limits.handshake_timeout_ms));
    let gate = Arc::new(gate::Gate::new(listener_name, limits.max_handshakes, limits.max_pending_per_source));
    state.tracker.spawn(report_drops(state.clone(), gate.clone()));
    loop {
        let Some((mut tcp, tcp_peer)) = crate::util::net::accept(&listener, listener_name, &state.shutdown).await
        else {
            return;
        };
        let Ok(conn_permit) = state.conn_limit.clone().try_acquire_owned() else {
            gate.dropped(tcp_peer.ip(), "max_connections");
            continue;
        };
        // A balancer's connections are bounded per source once its header
        // names the source; everyone else's at once.
        let via_balancer = balancers.trusts(tcp_peer.ip());
        let direct_permit = if via_balancer {
            None
        } else {
            match gate.admit(tcp_peer.ip()) {
                Ok(p) => Some(p),
                Err(reason) => {
                    gate.dropped(tcp_peer.ip(), reason);
                    continue;
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, state2, handler, gate) = (acceptor.clone(), state.clone(), handler.clone(), gate.clone());
        let span = tracing::info_span!(
            "conn",
            listener = listener_name,
            peer = %tcp_peer,
            source = tracing::field::Empty,
            device = tracing::field::Empty,
            session = tracing::field::Empty
        );
        state.tracker.spawn(
            async move {
                let _conn = gate::Open::new(conn_permit, listener_name);
                let (peer, hs_permit) = match direct_permit {
                    Some(p) => (tcp_peer, p),
                    None => match tokio::time::timeout(first_byte, proxy::read_header(&mut tcp, tcp_peer)).await {
                        Ok(Ok(source)) => {
                            tracing::Span::current().record("source", tracing::field::display(source));
                            match gate.admit(source.ip()) {
                                Ok(p) => (source, p),
                                Err(reason) => return gate.dropped(source.ip(), reason),
                            }
                        }
                        Ok(Err(e)) => {
                            return state2.handshake_failed(listener_name, tcp_peer, e.label(), &e.to_string());
                        }
                        Err(_) => {
                            metrics::RELAY_HANDSHAKE_FAILURES.with_label_values(&[listener_name, "timeout"]).inc();
                            return gate.dropped(tcp_peer.ip(), "timeout");
                        }
                    },
                };
                // Boxed, as the handler below: a connection lives for days,
                // and its task keeps room for the largest phase inline.
                let handshake =
                    tokio::time::timeout(hs_timeout, accept_one(tcp, &acceptor, alpn, allow_raw, first_byte));
                let res = Box::pin(handshake).await;
                drop(hs_permit);
                let tls = match res {
                    Ok(Ok(tls)) => {
                        // Only a valid certificate gets this far with one: the
                        // source may use the reserved slots from now on.
                        if let Auth::Tls { device: Some(_), .. } = &tls.auth {
                            gate.known_good(peer.ip());
                        }
                        tls
                    }
                    Ok(Err(NotAccepted::Failed(e))) => {
                        return state2.handshake_failed(
                            listener_name,
                            peer,
                            tls::handshake_failure_label(&e),
                            &e.to_string(),
                        );
                    }
                    Ok(Err(NotAccepted::Left)) => {
                        return state2.left_before_first_frame(listener_name, peer, "closed before its first byte");
                    }
                    Ok(Err(NotAccepted::ForgedProxyHeader)) => {
                        let why = "a PROXY header from a source not in proxy_protocol_from";
                        return state2.handshake_failed(listener_name, peer, proxy::FORGED, why);
                    }
                    // Silence is the flood's signature: counted, and audited in aggregate.
                    Ok(Err(NotAccepted::Timeout)) | Err(_) => {
                        metrics::RELAY_HANDSHAKE_FAILURES.with_label_values(&[listener_name, "timeout"]).inc();
                        return gate.dropped(peer.ip(), "timeout");
                    }
                };
                // A certificate revoked while connected ends the connection
                // (and the device's sessions here) at the next CRL reload.
                match &tls.auth {
                    Auth::Tls { device: Some(device), .. } if tls.cert.is_some() => {
                        let (device, revoked, state3) =
                            (device.clone(), state2.trust.watch(tls.cert.as_deref()), state2.clone());
                        let mut served = Box::pin(handler(state2, tls, peer));
                        tokio::select! {
                            _ = &mut served => {}
                            _ = revoked => {
                                // Ends the device's channel and sessions; the
                                // handler then cleans up, or is dropped.
                                state3.peer_revoked(listener_name, peer, &device);
                                let _ = tokio::time::timeout(Duration::from_secs(2), served).await;
                            }
                        }
                    }
                    _ => Box::pin(handler(state2, tls, peer)).await,
                }
            }
            .instrument(span),
        );
    }
}

/// Writes what `gate` turned away, at most once every 10 s (one record per
/// listener and period, however large the flood).
pub(super) async fn report_drops(state: Arc<State>, gate: Arc<gate::Gate>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        // The last period is written at the drain too (the listeners refuse
        // connections until then).
        let last = tokio::select! {
            _ = state.drain.cancelled() => true,
            _ = tick.tick() => false,
        };
        if let Some(mut fields) = gate.take_tally() {
            fields["relay"] = state.cfg.name.clone().into();
            tracing::warn!(listener = gate.name, "connections dropped before authentication: {fields}");
            state.audit.record("connections_dropped", fields);
        }
        if last {
            return;
        }
    }
}

/// SIGTERM. With a twin: stop admitting (`/readyz` 503, new client legs
/// refused), let replication catch up, then let go of every connection without
/// ending a session: clients and agents resume them through the twin. Without
/// a twin: end every session as `relay_shutdown`.
async fn drain(state: &State) {
    if state.cfg.twin.is_some() {
        let t0 = std::time::Instant::now();
        while state.replica.lag() > 0 && t0.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A session the twin never acknowledged (its link was down when the
        // session began) has nowhere to move: it ends here, by name, as on
        // a relay without a twin, rather than leave its client to try the
        // twin until its resume deadline.
        let orphans: Vec<_> = state
            .sessions
            .iter()
            .filter(|s| !state.replica.holds(s.up_index.load(std::sync::atomic::Ordering::Relaxed)))
            .map(|s| s.id)
            .collect();
        for id in &orphans {
            state.end_session(*id, crate::proto::Reason::RelayShutdown, true);
        }
        let sessions = state.sessions.len();
        tracing::info!(sessions, ended = orphans.len(), "draining: live sessions move to the twin");
        state.audit.record(
            "relay_draining",
            serde_json::json!({"relay": state.cfg.name, "sessions": sessions, "ended": orphans.len()}),
        );
        if !orphans.is_empty() {
            // Let control legs tell their clients why.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else {
        let ids: Vec<_> = state.sessions.iter().map(|s| s.id).collect();
        for id in ids {
            state.end_session(id, crate::proto::Reason::RelayShutdown, true);
        }
        // Let control legs tell their clients why.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    state.drain.cancel();
}
