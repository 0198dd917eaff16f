//! The relay: TLS listeners for agents, data legs and specialists; pairing by
//! session id; splicing; admin endpoints.
//!
//! [`Listeners::bind`] binds all four ports (port 0 works) and [`run`] serves
//! them until the shutdown token fires, then drains.

mod admin;
mod client;
pub mod config;
mod control;
mod data;
mod hub_report;
mod pairing;
mod session;
mod state;

pub use config::{RelayConfig, RelayLimits, TwinConfig};
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

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}

/// The four bound listeners of a relay.
pub struct Listeners {
    pub control: TcpListener,
    pub data: TcpListener,
    pub client: TcpListener,
    pub admin: TcpListener,
    /// The twin link listener, when a twin is configured.
    pub twin: Option<TcpListener>,
}

/// Addresses actually bound (useful with port 0).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    pub control: SocketAddr,
    pub data: SocketAddr,
    pub client: SocketAddr,
    pub admin: SocketAddr,
    pub twin: Option<SocketAddr>,
}

impl Listeners {
    pub async fn bind(cfg: &RelayConfig) -> Result<Listeners, RelayError> {
        async fn one(what: &'static str, addr: SocketAddr) -> Result<TcpListener, RelayError> {
            TcpListener::bind(addr).await.map_err(|source| RelayError::Bind { what, addr, source })
        }
        Ok(Listeners {
            control: one("control", cfg.control).await?,
            data: one("data", cfg.data).await?,
            client: one("client", cfg.client).await?,
            admin: one("admin", cfg.admin).await?,
            twin: match &cfg.twin {
                Some(t) => Some(one("twin", t.listen).await?),
                None => None,
            },
        })
    }

    pub fn addrs(&self) -> BoundAddrs {
        let a = |l: &TcpListener| l.local_addr().expect("bound listener has an address");
        BoundAddrs {
            control: a(&self.control),
            data: a(&self.data),
            client: a(&self.client),
            admin: a(&self.admin),
            twin: self.twin.as_ref().map(a),
        }
    }
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
    metrics::init();
    let id = Identity { ca: &cfg.ca, cert: &cfg.cert, key: &cfg.key };
    let crl = cfg.crl.as_deref();
    let control_tls = TlsAcceptor::from(tls::server_config(&id, true, crl, tls::ALPN_AGENT)?);
    let data_tls = TlsAcceptor::from(tls::server_config(&id, true, crl, tls::ALPN_DATA)?);
    let client_tls = TlsAcceptor::from(tls::server_config(&id, false, None, tls::ALPN_CLIENT)?);
    let state = State::new(cfg, shutdown.clone(), taps)?;
    tracing::info!(relay = %state.cfg.name, "relay serving");

    let tracker = state.tracker.clone();
    let raw = state.cfg.raw_legs;
    tracker.spawn(accept_loop("control", listeners.control, control_tls, false, state.clone(), control::serve));
    tracker.spawn(accept_loop("data", listeners.data, data_tls, raw, state.clone(), data::serve));
    tracker.spawn(accept_loop("client", listeners.client, client_tls, raw, state.clone(), client::serve));
    tracker.spawn(admin::serve(listeners.admin, state.clone()));
    tracker.spawn(hub_report::run(state.clone()));
    if let (Some(listener), Some(twin)) = (listeners.twin, state.cfg.twin.clone()) {
        let cfg = crate::twin::LinkConfig {
            me: state.cfg.name.clone(),
            twin,
            ca: state.cfg.ca.clone(),
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

/// A connection after its TLS handshake, or a raw leg (see [`crate::leg`]).
pub enum Accepted {
    Tls(Box<TlsStream<TcpStream>>),
    Raw(TcpStream),
}

/// TLS, or (where `allow_raw`) raw TCP when the first byte is not a TLS handshake.
async fn accept_one(tcp: TcpStream, acceptor: &TlsAcceptor, allow_raw: bool) -> std::io::Result<Accepted> {
    if allow_raw {
        let mut first = [0u8; 1];
        if tcp.peek(&mut first).await? == 1 && first[0] != crate::leg::TLS_HANDSHAKE {
            return Ok(Accepted::Raw(tcp));
        }
    }
    Ok(Accepted::Tls(Box::new(acceptor.accept(tcp).await?)))
}

/// Accepts connections; each one's TLS handshake runs in its own task under a
/// timeout, so a slow peer never stalls the loop.
async fn accept_loop<F, Fut>(
    listener_name: &'static str,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    allow_raw: bool,
    state: Arc<State>,
    handler: F,
) where
    F: Fn(Arc<State>, Accepted, SocketAddr) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let hs_timeout = Duration::from_millis(state.cfg.limits.handshake_timeout_ms);
    loop {
        let Some((tcp, peer)) = crate::util::net::accept(&listener, listener_name, &state.shutdown).await else {
            return;
        };
        let refuse = |reason: &str| {
            metrics::RELAY_CONNECTIONS_REFUSED.with_label_values(&[listener_name, reason]).inc();
        };
        let Ok(conn_permit) = state.conn_limit.clone().try_acquire_owned() else {
            refuse("max_connections");
            continue;
        };
        let Ok(hs_permit) = state.hs_limit.clone().try_acquire_owned() else {
            refuse("max_handshakes");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, state2, handler) = (acceptor.clone(), state.clone(), handler.clone());
        let span = tracing::info_span!(
            "conn",
            listener = listener_name,
            %peer,
            device = tracing::field::Empty,
            session = tracing::field::Empty
        );
        state.tracker.spawn(
            async move {
                let _conn = conn_permit;
                let res = tokio::time::timeout(hs_timeout, accept_one(tcp, &acceptor, allow_raw)).await;
                drop(hs_permit);
                let tls = match res {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        return state2.handshake_failed(
                            listener_name,
                            peer,
                            tls::handshake_failure_label(&e),
                            &e.to_string(),
                        );
                    }
                    Err(_) => return state2.handshake_failed(listener_name, peer, "timeout", "handshake timed out"),
                };
                handler(state2, tls, peer).await
            }
            .instrument(span),
        );
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
        let sessions = state.sessions.len();
        tracing::info!(sessions, "draining: live sessions move to the twin");
        state.audit.record("relay_draining", serde_json::json!({"relay": state.cfg.name, "sessions": sessions}));
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
