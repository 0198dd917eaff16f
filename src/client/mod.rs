//! The specialist's side: obtain a grant, open a session through a relay (its
//! twin when the first fails), and forward local connections through it.

mod grant_source;
pub mod hub;
pub mod profile;

pub use grant_source::GrantSource;
pub use profile::{HubLogin, Profile, RelayEntry};

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ClientConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::leg::Leg;
use crate::proto::{Frame, FrameIo, Reason, SessionId, VERSION};
use crate::splice::{Meter, splice};
use crate::stream::e2e;
use crate::stream::resumable::{self, LegSource, ResumeConfig, ResumeKey, Side};
use crate::tls::{self, dial};
use bytes::Bytes;

/// Why a session or a tunnelled connection failed, as the specialist sees it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("grant: {0}")]
    Grant(String),
    /// The hub knows no ready relay holding the device (yet).
    #[error("{message}")]
    DeviceOffline { device: String, message: String },
    #[error("cannot reach relay {relay} at {addr}: {source}")]
    Dial { relay: String, addr: String, source: std::io::Error },
    #[error("refused: {reason}: {message}")]
    Refused { reason: Reason, message: String },
    #[error("protocol error with relay {relay}: {detail}")]
    Protocol { relay: String, detail: String },
    #[error("no relay could admit the session: {detail}")]
    NoRelay { detail: String, last: Option<Reason> },
    #[error("the session has ended: {0}")]
    Ended(Reason),
    #[error("end-to-end TLS with the device failed: {0}")]
    EndToEnd(String),
}

impl ClientError {
    /// The reason code, when the relay or device named one.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            ClientError::Refused { reason, .. } | ClientError::Ended(reason) => Some(*reason),
            ClientError::EndToEnd(_) => Some(Reason::EndToEndFailed),
            ClientError::NoRelay { last, .. } => *last,
            _ => None,
        }
    }
}

/// A live session: one control leg, and any number of tunnelled connections.
pub struct ClientSession {
    pub id: SessionId,
    /// The relay that admitted the session.
    pub relay: RelayEntry,
    /// The relay pair, and which one the session uses now.
    relays: Vec<RelayEntry>,
    current: Mutex<RelayEntry>,
    pub device: String,
    e2e: Arc<ClientConfig>,
    token: [u8; 32],
    /// The relay accepts raw-TCP joins (payload is end-to-end TLS anyway).
    raw_legs: bool,
    tls: Arc<ClientConfig>,
    next_conn: AtomicU32,
    resume: ResumeConfig,
    ended: CancellationToken,
    end_reason: Mutex<Option<Reason>>,
    pub to_device: AtomicU64,
    pub to_client: AtomicU64,
}

/// A tunnelled connection: end-to-end TLS with the agent, over a resumable
/// stream that survives the loss of a leg (or of the relay carrying it).
pub type Tunnel = tokio_rustls::client::TlsStream<tokio::io::DuplexStream>;

/// How long the session's control leg keeps trying to move to a live relay.
const MOVE_DEADLINE: Duration = Duration::from_secs(30);

/// Replacement legs for one connection: dialled through the twin first.
struct DialLegs {
    session: Arc<ClientSession>,
    conn: u32,
}

impl LegSource for DialLegs {
    fn next_leg(
        &mut self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<(Leg, Bytes)>> + Send + '_>> {
        Box::pin(async move {
            let s = &self.session;
            if s.ended.is_cancelled() {
                return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "session ended"));
            }
            let mut last = None;
            for relay in s.failover_order() {
                match s.join_leg(&relay, self.conn).await {
                    Ok((_, leg)) => {
                        s.set_current(&relay);
                        return Ok(leg);
                    }
                    Err(ClientError::Refused { reason: Reason::UnknownSession, .. }) => {
                        last = Some(std::io::Error::new(std::io::ErrorKind::NotFound, "session unknown"));
                    }
                    Err(e) => last = Some(std::io::Error::other(e.to_string())),
                }
            }
            Err(last.unwrap_or_else(|| std::io::Error::other("no relay")))
        })
    }
}

/// How long the end-to-end handshake with the device may take.
const E2E_TIMEOUT: Duration = Duration::from_secs(10);

impl ClientSession {
    /// Obtains a grant and opens the session; waits for the device's decision
    /// (which may include on-site consent).
    pub async fn open(profile: &Profile, device: &str, service: &str) -> Result<Arc<ClientSession>, ClientError> {
        let source = GrantSource::from_profile(profile, None)?;
        Self::open_with(profile, &source, device, service).await
    }

    /// Opens a session with a grant from `source` (the hub, normally).
    pub async fn open_with(
        profile: &Profile,
        source: &GrantSource,
        device: &str,
        service: &str,
    ) -> Result<Arc<ClientSession>, ClientError> {
        let key = e2e::ClientKey::generate()?;
        let e2e = e2e::client_config(&profile.ca, &key)?;
        tls::server_name(device)?;
        let grant_source::Obtained { grant, relays } = source.obtain(device, service, key.public_key()).await?;
        let tls = tls::client_config(&profile.ca, None, tls::ALPN_CLIENT)?;
        let mut failures = Vec::new();
        let mut last = None;
        for relay in &relays {
            let conn = match dial(&relay.addr, relay.server_name(), tls.clone()).await {
                Ok(c) => c,
                Err(source) => {
                    failures.push(
                        ClientError::Dial { relay: relay.name.clone(), addr: relay.addr.clone(), source }.to_string(),
                    );
                    continue;
                }
            };
            let mut io = FrameIo::new(conn);
            let open = Frame::ClientOpen { version: VERSION, grant: grant.clone(), service: service.to_string() };
            let answer = match io.write_frame(&open).await {
                Ok(()) => io.read_frame().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match answer {
                Ok(Frame::SessionReady { session, token, raw_legs }) => {
                    let s = Arc::new(ClientSession {
                        id: session,
                        relay: relay.clone(),
                        relays: relays.clone(),
                        current: Mutex::new(relay.clone()),
                        device: device.to_string(),
                        e2e,
                        token,
                        raw_legs,
                        tls,
                        next_conn: AtomicU32::new(1),
                        resume: ResumeConfig {
                            cap: profile.resume_buffer_bytes.max(64 * 1024),
                            resume_deadline: Duration::from_secs(profile.resume_deadline_secs.max(1)),
                            ..ResumeConfig::default()
                        },
                        ended: CancellationToken::new(),
                        end_reason: Mutex::new(None),
                        to_device: AtomicU64::new(0),
                        to_client: AtomicU64::new(0),
                    });
                    tokio::spawn(s.clone().control_leg(io));
                    return Ok(s);
                }
                // The twin may hold the device, or the other may be draining.
                Ok(Frame::Error {
                    reason: reason @ (Reason::NotAttached | Reason::RelayShutdown | Reason::Overloaded),
                    message,
                }) => {
                    failures.push(format!("{}: {reason}: {message}", relay.name));
                    last = Some(reason);
                }
                Ok(Frame::Error { reason, message }) => return Err(ClientError::Refused { reason, message }),
                Ok(other) => {
                    return Err(ClientError::Protocol {
                        relay: relay.name.clone(),
                        detail: format!("unexpected {}", other.kind()),
                    });
                }
                Err(e) => failures.push(format!("{}: {e}", relay.name)),
            }
        }
        Err(ClientError::NoRelay { detail: failures.join("; "), last })
    }

    async fn control_leg(self: Arc<Self>, mut io: FrameIo<TlsStream<TcpStream>>) {
        let reason = loop {
            let lost = tokio::select! {
                _ = self.ended.cancelled() => {
                    let end = Frame::SessionEnd { session: self.id, reason: Reason::ClientClosed, bytes_to_device: 0, bytes_to_client: 0 };
                    let _ = io.write_frame(&end).await;
                    break Reason::ClientClosed;
                }
                r = async { loop {
                    match io.read_frame().await {
                        Ok(Frame::SessionEnd { reason, .. }) => break Some(reason),
                        Ok(Frame::Error { reason, .. }) => break Some(reason),
                        Ok(_) => continue,
                        Err(_) => break None,
                    }
                }} => r,
            };
            if let Some(reason) = lost {
                break reason;
            }
            // The relay carrying the control leg is gone: move it to the twin,
            // which knows the session by replication.
            match self.move_control().await {
                Some(moved) => io = moved,
                None => break Reason::RelayGone,
            }
        };
        if let Ok(mut r) = self.end_reason.lock() {
            r.get_or_insert(reason);
        }
        self.ended.cancel();
    }

    /// Relays to try after a failure: the ones not in use first.
    fn failover_order(&self) -> Vec<RelayEntry> {
        let current = self.current.lock().map(|c| c.name.clone()).unwrap_or_default();
        let (mut others, same): (Vec<_>, Vec<_>) = self.relays.iter().cloned().partition(|r| r.name != current);
        others.extend(same);
        others
    }

    fn set_current(&self, relay: &RelayEntry) {
        if let Ok(mut c) = self.current.lock() {
            *c = relay.clone();
        }
    }

    /// The relay the session uses now.
    pub fn current_relay(&self) -> RelayEntry {
        self.current.lock().map(|c| c.clone()).unwrap_or_else(|_| self.relay.clone())
    }

    async fn move_control(&self) -> Option<FrameIo<TlsStream<TcpStream>>> {
        let deadline = tokio::time::Instant::now() + MOVE_DEADLINE;
        while tokio::time::Instant::now() < deadline && !self.ended.is_cancelled() {
            for relay in self.failover_order() {
                let Ok(conn) = dial(&relay.addr, relay.server_name(), self.tls.clone()).await else { continue };
                let mut io = FrameIo::new(conn);
                let mac = crate::proto::leg_mac(&self.token, crate::proto::LegSide::Control, &self.id, 0);
                if io.write_frame(&Frame::ClientResume { version: VERSION, session: self.id, mac }).await.is_err() {
                    continue;
                }
                match tokio::time::timeout(tls::DIAL_TIMEOUT, io.read_frame()).await {
                    Ok(Ok(Frame::SessionReady { .. })) => {
                        tracing::info!(session = %self.id, relay = %relay.name, "control leg moved");
                        self.set_current(&relay);
                        return Some(io);
                    }
                    Ok(Ok(Frame::Error { reason: Reason::UnknownSession, .. })) => continue,
                    _ => continue,
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    }

    /// Why the session ended, once it has.
    pub fn end_reason(&self) -> Option<Reason> {
        self.end_reason.lock().ok().and_then(|r| *r)
    }

    /// Resolves when the session has ended, with its reason.
    pub async fn ended(&self) -> Reason {
        self.ended.cancelled().await;
        self.end_reason().unwrap_or(Reason::Unknown)
    }

    /// Ends the session (the relay tells the device).
    pub fn close(&self) {
        self.ended.cancel();
    }

    /// Opens one tunnelled connection to the device's service.
    /// Uses the relay the session uses now, or its twin when that one is
    /// draining or unreachable.
    pub async fn connect(self: &Arc<Self>) -> Result<Tunnel, ClientError> {
        let current = self.current_relay();
        let mut tried = vec![current.clone()];
        tried.extend(self.relays.iter().filter(|r| r.name != current.name).cloned());
        let mut last = None;
        for relay in tried {
            match self.connect_via(&relay).await {
                Ok(t) => {
                    self.set_current(&relay);
                    return Ok(t);
                }
                Err(e @ (ClientError::Dial { .. } | ClientError::Protocol { .. })) => last = Some(e),
                Err(ClientError::Refused {
                    reason: reason @ (Reason::RelayShutdown | Reason::NotAttached | Reason::Overloaded),
                    message,
                }) => last = Some(ClientError::Refused { reason, message }),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(ClientError::Ended(Reason::Unknown)))
    }

    /// Opens one tunnelled connection through `relay`, which may be the twin of
    /// the relay that admitted the session (it knows the session by replication).
    pub async fn connect_via(self: &Arc<Self>, relay: &RelayEntry) -> Result<Tunnel, ClientError> {
        let (conn, leg) = self.join_leg(relay, 0).await?;
        let key = ResumeKey::default();
        let source = Box::new(DialLegs { session: self.clone(), conn });
        let (pipe, driver) = resumable::start(leg, Side::Client, conn, key.clone(), source, self.resume, None);
        tokio::spawn(async move {
            // A connection that could not resume is closed: say why.
            if let Ok(Err(why)) = driver.await {
                tracing::warn!(conn, %why, "tunnelled connection lost");
                eprintln!("tunnelled connection {conn} lost: {why}");
            }
        });
        let name = tls::server_name(&self.device)?;
        let handshake = tokio_rustls::TlsConnector::from(self.e2e.clone()).connect(name, pipe);
        let t = match tokio::time::timeout(E2E_TIMEOUT, handshake).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(ClientError::EndToEnd(e.to_string())),
            Err(_) => return Err(ClientError::EndToEnd("handshake timed out".into())),
        };
        resumable::set_key_from(&**t.get_ref().1, &key, conn);
        Ok(t)
    }

    /// Dials a leg through `relay` and joins it to the session: a new
    /// connection (`resumes` = 0) or a replacement leg for connection `resumes`.
    /// Returns the connection number it used, and the paired leg.
    async fn join_leg(&self, relay: &RelayEntry, resumes: u32) -> Result<(u32, (Leg, Bytes)), ClientError> {
        if self.ended.is_cancelled() {
            return Err(ClientError::Ended(self.end_reason().unwrap_or(Reason::Unknown)));
        }
        let leg = crate::leg::dial(&relay.addr, self.raw_legs, relay.server_name(), self.tls.clone())
            .await
            .map_err(|source| ClientError::Dial { relay: relay.name.clone(), addr: relay.addr.clone(), source })?;
        let mut io = FrameIo::new(leg);
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let mac = crate::proto::leg_mac(&self.token, crate::proto::LegSide::Client { resumes }, &self.id, conn);
        let join = Frame::ClientJoin { version: VERSION, session: self.id, conn, mac, resumes };
        let proto_err = |detail: String| ClientError::Protocol { relay: relay.name.clone(), detail };
        io.write_frame(&join).await.map_err(|e| proto_err(e.to_string()))?;
        match tokio::time::timeout(tls::DIAL_TIMEOUT, io.read_frame()).await {
            Ok(Ok(Frame::Paired { .. })) => Ok((conn, io.into_parts())),
            Ok(Ok(Frame::Error { reason, message })) => Err(ClientError::Refused { reason, message }),
            Ok(Ok(other)) => Err(proto_err(format!("unexpected {}", other.kind()))),
            Ok(Err(e)) => Err(proto_err(e.to_string())),
            Err(_) => Err(proto_err("no answer in time".into())),
        }
    }

    /// Forwards every connection accepted on `listener` through the session,
    /// until the session ends.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> Reason {
        loop {
            let (local, peer) = tokio::select! {
                r = self.ended() => return r,
                a = listener.accept() => match a {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "local accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = local.set_nodelay(true);
            let s = self.clone();
            tokio::spawn(async move {
                let tunnel = match s.connect().await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "tunnelled connection refused");
                        eprintln!("connection from {peer} refused: {e}");
                        return;
                    }
                };
                tokio::select! {
                    r = splice(local, bytes::Bytes::new(), tunnel, bytes::Bytes::new(), Meter::new(&s.to_device), Meter::new(&s.to_client)) => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "tunnelled connection closed");
                        }
                    }
                    _ = s.ended.cancelled() => {}
                }
            });
        }
    }
}
