//! The specialist's side: obtain a grant, open a session through a relay (its
//! twin when the first fails), and forward local connections through it.

mod answer;
mod early;
mod forward;
mod grant_source;
pub mod hub;
mod join;
mod links;
mod open;
mod pipelined;
pub mod profile;
mod redial;

pub use answer::{FIRST_NOTICE, NOTICE_EVERY, Progress};
pub use grant_source::GrantSource;
pub use profile::{HubLogin, Profile, RelayEntry};

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ClientConfig;
use tokio_util::sync::CancellationToken;

use crate::leg::Leg;
use crate::proto::{Frame, FrameIo, Reason, SessionId, VERSION};
use crate::stream::resumable::ResumeConfig;
use crate::tls;

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
    /// QUIC or TCP, per relay.
    links: links::Links,
    next_conn: AtomicU32,
    /// The secret of the session's first end-to-end TLS connection (when
    /// the agent offers keyed connections): keys the later ones.
    keyed: std::sync::OnceLock<crate::stream::derived::SessionSecret>,
    resume: ResumeConfig,
    ended: CancellationToken,
    /// The control leg is done: after a close, the relay has the goodbye.
    control_done: CancellationToken,
    end_reason: Mutex<Option<Reason>>,
    pub to_device: AtomicU64,
    pub to_client: AtomicU64,
}

/// A tunnelled connection: end-to-end TLS with the agent, over a resumable
/// stream that survives the loss of a leg (or of the relay carrying it).
/// The session's first connection runs a TLS handshake; its later ones use
/// keys derived from it ([`crate::stream::derived`]).
pub type Tunnel = tokio_util::either::Either<
    tokio_rustls::client::TlsStream<crate::stream::pipe::AppEnd>,
    crate::stream::sealed::Sealed<crate::stream::pipe::AppEnd>,
>;

/// Where a new tunnelled connection's time went (`tether loadgen latency`).
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    /// Dialling the relay, the join, and the relay's `Paired` (the device's
    /// data leg arrived).
    pub paired: Duration,
    /// The end-to-end TLS handshake over the resumable stream.
    pub e2e: Duration,
}

/// How long the session's control leg keeps trying to move to a live relay.
const MOVE_DEADLINE: Duration = Duration::from_secs(30);

/// How long a join waits for the device's leg to be paired with it (the
/// device dials it on request: normally milliseconds).
const PAIRING_WAIT: Duration = Duration::from_secs(5);
/// Deadline of one try at a relay during a failover (dial, join or control resume).
const FAILOVER_DIAL: Duration = Duration::from_secs(2);
/// The control leg sends a heartbeat this often...
const CONTROL_PING: Duration = Duration::from_secs(1);
/// How long a closing client waits for the relay to answer its goodbye.
const GOODBYE_WAIT: Duration = Duration::from_secs(2);
/// ...and moves to the twin after this much silence (a frozen relay sends no
/// FIN): a data leg's `dead_after`. A connection opened while the relay is
/// frozen waits for this move (its own silence limit allows for pairing).
const CONTROL_DEAD: Duration = Duration::from_secs(2);

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
        Self::open_watching(profile, source, device, service, &|_| {}).await
    }

    async fn control_leg(self: Arc<Self>, mut io: FrameIo<Leg>) {
        let mut at = self.relay.name.clone();
        let reason = loop {
            let lost = tokio::select! {
                _ = self.ended.cancelled() => {
                    Self::goodbye(&mut io, self.id).await;
                    break Reason::ClientClosed;
                }
                r = Self::watch_control(&mut io) => r,
            };
            if let Some(reason) = lost {
                break reason;
            }
            // The relay carrying the control leg is gone or silent: move it to
            // the twin, which knows the session by replication.
            tracing::info!(session = %self.id, relay = %at, "control leg lost; moving it");
            self.links.suspect(&at, None).await;
            match self.move_control(&at).await {
                Some((moved, relay)) => (io, at) = (moved, relay),
                None => break Reason::RelayGone,
            }
        };
        if let Ok(mut r) = self.end_reason.lock() {
            r.get_or_insert(reason);
        }
        self.ended.cancel();
        self.control_done.cancel();
    }

    /// Tells the relay the specialist closed the session, and waits (at most
    /// [`GOODBYE_WAIT`]) for its answer: a relay that got no goodbye keeps the
    /// session 10 s for a client that may be moving to the twin.
    async fn goodbye(io: &mut FrameIo<Leg>, id: SessionId) {
        let end =
            Frame::SessionEnd { session: id, reason: Reason::ClientClosed, bytes_to_device: 0, bytes_to_client: 0 };
        let answered = async {
            io.write_frame(&end).await.ok()?;
            loop {
                match io.read_frame().await {
                    Ok(Frame::SessionEnd { .. } | Frame::Error { .. }) | Err(_) => return Some(()),
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(GOODBYE_WAIT, answered).await;
    }

    /// [`Self::close`], then waits (at most `limit`) until the relay has the
    /// goodbye and every QUIC connection's close is sent: what a process that
    /// exits next calls, so that relays and device end the session at once.
    pub async fn close_and_wait(&self, limit: Duration) {
        self.close();
        let _ = tokio::time::timeout(limit, async {
            self.control_done.cancelled().await;
            self.links.close_all().await;
        })
        .await;
    }

    /// Reads the control leg, probing it with heartbeats: the session's end
    /// (`Some`), or `None` when the leg broke or stayed silent past [`CONTROL_DEAD`].
    async fn watch_control(io: &mut FrameIo<Leg>) -> Option<Reason> {
        let mut tick = tokio::time::interval(CONTROL_PING);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Silence is judged at its deadline, not at the next tick.
        let silence = tokio::time::sleep(CONTROL_DEAD);
        tokio::pin!(silence);
        let mut seq = 0u64;
        loop {
            tokio::select! {
                f = io.read_frame() => match f {
                    Ok(Frame::SessionEnd { reason, .. }) | Ok(Frame::Error { reason, .. }) => return Some(reason),
                    Ok(_) => silence.as_mut().reset(tokio::time::Instant::now() + CONTROL_DEAD),
                    Err(_) => return None,
                },
                _ = &mut silence => return None,
                _ = tick.tick() => {
                    seq += 1;
                    let beat = Frame::Heartbeat { seq, clock: None };
                    if !matches!(tokio::time::timeout(CONTROL_PING, io.write_frame(&beat)).await, Ok(Ok(()))) {
                        return None;
                    }
                }
            }
        }
    }

    /// The pair, the relays other than `avoid` first (after a failure there).
    fn order_avoiding(&self, avoid: &str) -> Vec<RelayEntry> {
        let (mut others, same): (Vec<_>, Vec<_>) = self.relays.iter().cloned().partition(|r| r.name != avoid);
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

    /// `quic` or `tcp`: how the session's legs reach the relay it uses now.
    pub fn transport(&self) -> &'static str {
        self.links.transport_to(&self.current_relay().name)
    }

    /// Moves the control leg away from `from`: the twin first, each try with
    /// a short deadline; returns the new leg and its relay.
    async fn move_control(&self, from: &str) -> Option<(FrameIo<Leg>, String)> {
        let deadline = tokio::time::Instant::now() + MOVE_DEADLINE;
        while tokio::time::Instant::now() < deadline && !self.ended.is_cancelled() {
            for relay in self.order_avoiding(from) {
                let attempt = async {
                    let conn = self.links.leg(&relay, false).await.ok()?;
                    let mut io = FrameIo::new(conn);
                    let mac = crate::proto::leg_mac(&self.token, crate::proto::LegSide::Control, &self.id, 0);
                    io.write_frame(&Frame::ClientResume { version: VERSION, session: self.id, mac }).await.ok()?;
                    match io.read_frame().await {
                        Ok(Frame::SessionReady { .. }) => Some(io),
                        _ => None,
                    }
                };
                if let Ok(Some(io)) = tokio::time::timeout(FAILOVER_DIAL, attempt).await {
                    tracing::info!(session = %self.id, relay = %relay.name, "control leg moved");
                    self.set_current(&relay);
                    return Some((io, relay.name.clone()));
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
        Ok(self.connect_timed().await?.0)
    }

    /// [`Self::connect`], with where the time went.
    pub async fn connect_timed(self: &Arc<Self>) -> Result<(Tunnel, Phases), ClientError> {
        self.open_tunnel(None).await
    }

    /// [`Self::connect_timed`] for an application that may already be
    /// writing: on a keyed connection, what `app` yields while the relay
    /// pairs it goes right behind the join (at most [`early::EARLY_MAX`];
    /// the rest, and anything on a first connection, stays in `app`).
    pub async fn connect_early(
        self: &Arc<Self>,
        app: &mut (dyn tokio::io::AsyncRead + Unpin + Send),
    ) -> Result<(Tunnel, Phases), ClientError> {
        let mut early = early::Early::new(app);
        self.open_tunnel(Some(&mut early)).await
    }

    async fn open_tunnel(
        self: &Arc<Self>,
        mut early: Option<&mut early::Early<'_>>,
    ) -> Result<(Tunnel, Phases), ClientError> {
        let current = self.current_relay();
        let mut order = vec![current.clone()];
        order.extend(self.relays.iter().filter(|r| r.name != current.name).cloned());
        let mut last = None;
        // Two rounds: a relay that failed us now may be back by the next (restarted).
        for relay in order.iter().chain(&order) {
            let rx = self.links.rx(&relay.name);
            if let Some(e) = early.as_deref_mut() {
                e.sent = false;
            }
            let before = self.current_relay().name;
            match self.connect_through(relay, early.as_deref_mut()).await {
                Ok(t) => {
                    if let Some(e) = early.as_deref_mut() {
                        // Sent before the splice, which counts the rest.
                        self.to_device.fetch_add(e.confirmed(), Ordering::Relaxed);
                    }
                    // Unless it resumed through the twin, which is current now.
                    if self.current_relay().name == before {
                        self.set_current(relay);
                    }
                    return Ok(t);
                }
                // The application's bytes left on a leg that was lost, and the
                // connection could not be resumed through the twin: the device
                // may have passed them on, and they must not reach its service
                // twice. This connection fails (its application sees it close);
                // the next goes through the twin.
                Err(e @ ClientError::Protocol { .. }) if early.as_ref().is_some_and(|e| e.sent) => {
                    self.links.suspect(&relay.name, rx).await;
                    return Err(e);
                }
                // It never reached the device, which will not open it now:
                // the same bytes go on a new connection.
                Err(ClientError::Refused { reason: reason @ Reason::NeverOpened, message }) => {
                    tracing::info!(session = %self.id, relay = %relay.name, "{message}");
                    self.links.suspect(&relay.name, rx).await;
                    last = Some(ClientError::Refused { reason, message });
                }
                Err(e @ (ClientError::Dial { .. } | ClientError::Protocol { .. })) => {
                    self.links.suspect(&relay.name, rx).await;
                    last = Some(e);
                }
                Err(ClientError::Refused {
                    reason: reason @ (Reason::RelayShutdown | Reason::NotAttached | Reason::Overloaded),
                    message,
                }) => last = Some(ClientError::Refused { reason, message }),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(ClientError::Ended(Reason::Unknown)))
    }
}
