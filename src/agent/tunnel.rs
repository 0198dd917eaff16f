//! One tunnelled connection on the device: get a data leg (dial it when the
//! relay's `Open` asks, or take the stream the relay opened on our QUIC
//! connection), run end-to-end TLS with the client over a resumable stream on
//! that leg, then connect the local service and splice. A later `Open` naming
//! `resumes` hands a replacement leg to a live stream whose leg broke.
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::Shared;
use super::config::{RelayEndpoint, target_allowed};
use crate::leg::Leg;
use crate::metrics;
use crate::proto::{Frame, FrameIo, LegSide, Reason, SessionId, VERSION, leg_mac};
use crate::splice::{Meter, splice};
use crate::stream::resumable::{self, FirstLeg, LegSource, ResumeConfig, ResumeKey, Side};

const SERVICE_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest our `Paired` on a relay's stream waits for our first end-to-end
/// bytes (the client's first flight is right behind the relay's `Open`, so
/// they are normally there within a millisecond; a full handshake under load
/// may take longer, and is then answered in two packets as before).
const HOLD_PAIRED: Duration = Duration::from_millis(50);

fn resume_config(cfg: &super::AgentConfig) -> ResumeConfig {
    ResumeConfig {
        cap: cfg.resume_buffer_bytes,
        resume_deadline: Duration::from_secs(cfg.resume_deadline_secs.max(1)),
        ..ResumeConfig::default()
    }
}

/// How to dial the data leg the relay asked for.
pub struct LegPlan {
    /// Raw TCP (the relay accepts it) rather than mTLS.
    pub raw: bool,
    /// The one-time key from `Open`; the leg's MAC proves we received it.
    pub key: [u8; 32],
    /// Non-zero: the leg replaces a broken one of this connection.
    pub resumes: u32,
}

/// Where a connection's data leg comes from.
pub enum LegOrigin {
    /// Dial it, as the relay's `Open` on the control channel asked.
    Dial(LegPlan),
    /// The relay opened it as a stream of our QUIC connection, its `Open`
    /// (the first frame) read; our answer goes on the stream itself.
    Opened { leg: FrameIo<Leg>, resumes: u32 },
}

impl LegOrigin {
    fn resumes(&self) -> u32 {
        match self {
            LegOrigin::Dial(plan) => plan.resumes,
            LegOrigin::Opened { resumes, .. } => *resumes,
        }
    }

    /// Tells the relay the leg will not come: on the control channel, or on
    /// the stream it opened (then closed).
    async fn refuse(self, tx: &mpsc::Sender<Frame>, failed: Frame) {
        match self {
            LegOrigin::Dial(_) => {
                let _ = tx.send(failed).await;
            }
            LegOrigin::Opened { mut leg, .. } => {
                let _ = leg.write_frame(&failed).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(leg.get_mut()).await;
            }
        }
    }

    /// The leg, ready for the resumable stream, with any bytes that came
    /// after the pairing (a stream we were handed carries the client's
    /// first flight right behind its `Open`).
    async fn into_leg(
        self,
        state: &Shared,
        relay: &RelayEndpoint,
        id: SessionId,
        conn: u32,
    ) -> std::io::Result<(Leg, Bytes)> {
        match self {
            LegOrigin::Dial(plan) => dial_leg(state, relay, &plan, id, conn).await,
            LegOrigin::Opened { mut leg, .. } => {
                leg.write_frame(&Frame::Paired { session: id, conn }).await.map_err(std::io::Error::other)?;
                Ok(leg.into_parts())
            }
        }
    }

    /// [`Self::into_leg`] for a connection's first leg. On a relay's stream
    /// our `Paired` goes with our first end-to-end bytes, or the refusal
    /// sent on the returned sender instead of it (see [`resumable::Hold`]).
    async fn into_first_leg(
        self,
        state: &Shared,
        relay: &RelayEndpoint,
        id: SessionId,
        conn: u32,
    ) -> std::io::Result<(FirstLeg, Option<oneshot::Sender<Bytes>>)> {
        let LegOrigin::Opened { leg, .. } = self else {
            return Ok((self.into_leg(state, relay, id, conn).await?.into(), None));
        };
        let (leg, read) = leg.into_parts();
        let greeting = Frame::Paired { session: id, conn }.encoded();
        let (refuse, instead) = oneshot::channel();
        let hold = Some(resumable::Hold { at_most: HOLD_PAIRED, instead });
        Ok((FirstLeg { leg, read, greeting, hold }, Some(refuse)))
    }
}

/// Replacement legs arrive from `Open{resumes}` on any relay of the pair; the
/// name of the relay that handed over the current leg is kept for reports.
struct HandedLegs {
    rx: mpsc::Receiver<(Leg, Bytes, String)>,
    /// One taken from `rx` while the current leg was up ([`LegSource::replacement`]).
    waiting: Option<(Leg, Bytes, String)>,
    via: Arc<Mutex<String>>,
}

type LegFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<(Leg, Bytes)>> + Send + 'a>>;

/// The QUIC stream under an agent's leg: a relay's stream, counted open.
fn send_under(leg: &mut Leg) -> Option<&mut quinn::SendStream> {
    crate::quic::send_of(&mut **leg)
}

impl LegSource for HandedLegs {
    fn send_under(&self) -> Option<crate::leg::SendUnder> {
        Some(send_under)
    }

    fn next_leg(&mut self) -> LegFuture<'_> {
        Box::pin(async move {
            let handed = match self.waiting.take() {
                Some(l) => Some(l),
                None => self.rx.recv().await,
            };
            let (leg, prefix, relay) =
                handed.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "session over"))?;
            if let Ok(mut v) = self.via.lock() {
                *v = relay;
            }
            Ok((leg, prefix))
        })
    }

    /// A relay hands us a leg for this connection only when the client
    /// resumed through it: the client has left the current leg's relay.
    fn replacement(&mut self) -> resumable::ReplacementFuture<'_> {
        Box::pin(async move {
            if self.waiting.is_none() {
                match self.rx.recv().await {
                    Some(l) => self.waiting = Some(l),
                    // The session is over: the current leg ends it.
                    None => std::future::pending().await,
                }
            }
        })
    }
}

/// Counts and audits resumes, and reports them to the relay that carried them.
fn on_resume_event(state: Shared, id: SessionId, conn: u32, via: Arc<Mutex<String>>) -> resumable::OnEvent {
    Box::new(move |event| {
        let relay = via.lock().map(|v| v.clone()).unwrap_or_default();
        match event {
            resumable::ResumeEvent::Resumed { pause, retransmitted } => {
                metrics::AGENT_RESUMES.inc();
                let pause_ms = pause.as_millis().min(u128::from(u32::MAX)) as u32;
                if let Some(tx) = state.relays.get(&relay) {
                    let _ = tx.try_send(Frame::Resumed { session: id, conn, pause_ms, retransmitted });
                }
            }
            resumable::ResumeEvent::Refused { why } => {
                metrics::AGENT_RESUMES_REFUSED.inc();
                state.refused(
                    "resume_refused",
                    Reason::ResumeRefused,
                    json!({"session": id.to_string(), "conn": conn, "relay": relay, "detail": why}),
                );
            }
        }
    })
}

/// Dials the data leg and waits for the relay to pair it.
async fn dial_leg(
    state: &Shared,
    relay: &RelayEndpoint,
    plan: &LegPlan,
    id: SessionId,
    conn: u32,
) -> std::io::Result<(Leg, Bytes)> {
    let leg = super::transport::data_leg(state, relay, plan.raw).await?;
    let mut io = FrameIo::new(leg);
    let mac = leg_mac(&plan.key, LegSide::Device, &id, conn);
    io.write_frame(&Frame::DataOpen { version: VERSION, session: id, conn, mac }).await?;
    match tokio::time::timeout(SERVICE_TIMEOUT, io.read_frame()).await {
        Ok(Ok(Frame::Paired { .. })) => Ok(io.into_parts()),
        Ok(Ok(Frame::Error { reason, message })) => Err(std::io::Error::other(format!("{reason}: {message}"))),
        Ok(Ok(other)) => Err(std::io::Error::other(format!("unexpected {}", other.kind()))),
        Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no pairing in time")),
    }
}

pub async fn open(
    state: Shared,
    relay: RelayEndpoint,
    tx: mpsc::Sender<Frame>,
    id: SessionId,
    conn: u32,
    origin: LegOrigin,
) {
    let fail = |reason: Reason, detail: String| {
        state.refused(
            "open_refused",
            reason,
            json!({"session": id.to_string(), "relay": relay.name, "conn": conn, "detail": detail}),
        );
        Frame::OpenFailed { session: id, conn, reason }
    };
    // Either twin of the pair may ask: the one that admitted the session, or
    // its twin that replicated it (a load balancer may send the client there).
    let Some(session) = state.sessions.get(&id).map(|s| s.clone()) else {
        return origin.refuse(&tx, fail(Reason::UnknownSession, "no live session with that id".into())).await;
    };
    // Each connection number is opened once, whichever relay asks.
    if !session.conns.lock().map(|mut c| c.insert(conn)).unwrap_or(false) {
        return origin.refuse(&tx, fail(Reason::AlreadyPaired, format!("connection {conn} was opened before"))).await;
    }
    if origin.resumes() != 0 {
        return hand_over(&state, &relay, &tx, &session, (id, conn), origin).await;
    }
    // The target comes from the local allow-list only, never from the network.
    let target = match state.cfg.services.get(&session.service).map(|s| s.target.parse::<SocketAddr>()) {
        Some(Ok(addr)) if target_allowed(&addr, &state.cfg.extra_targets) => addr,
        _ => return origin.refuse(&tx, fail(Reason::TargetNotAllowed, format!("service {}", session.service))).await,
    };
    let started = Instant::now();
    let (leg, refuse) = match origin.into_first_leg(&state, &relay, id, conn).await {
        Ok(l) => l,
        Err(e) => {
            // Tell the relay now rather than let the client wait for the pairing timeout.
            tracing::warn!(session = %id, conn, error = %e, "data leg failed");
            let _ = tx.send(Frame::OpenFailed { session: id, conn, reason: Reason::Internal }).await;
            return;
        }
    };
    metrics::AGENT_HANDSHAKE_SECONDS.with_label_values(&[&relay.name]).observe(started.elapsed().as_secs_f64());
    metrics::AGENT_TUNNELS.inc();
    session.tunnels.fetch_add(1, std::sync::atomic::Ordering::Relaxed);

    // Resumable stream on the leg; end-to-end TLS (or keys derived from the
    // session's) on top. The service is not even connected to unless the
    // client proves the key the grant names.
    let (legs_tx, legs_rx) = mpsc::channel(4);
    session.resumable.insert(conn, legs_tx);
    let key = ResumeKey::default();
    let via = Arc::new(Mutex::new(relay.name.clone()));
    let source = Box::new(HandedLegs { rx: legs_rx, waiting: None, via: via.clone() });
    let events = on_resume_event(state.clone(), id, conn, via);
    let (pipe, mut driver) =
        resumable::start(leg, Side::Device, conn, key.clone(), source, resume_config(&state.cfg), Some(events));
    let e2e = match tokio::time::timeout(SERVICE_TIMEOUT * 2, super::e2e::accept(&session, conn, pipe, &key)).await {
        Ok(Ok(s)) => {
            // Our `Paired` went with our first bytes (or goes now, alone).
            drop(refuse);
            s
        }
        outcome => {
            let detail = match outcome {
                Ok(Err(e)) => e,
                _ => format!(
                    "neither an end-to-end TLS handshake nor a keyed header completed within {} s",
                    (SERVICE_TIMEOUT * 2).as_secs()
                ),
            };
            state.refused(
                "e2e_refused",
                Reason::EndToEndFailed,
                json!({"session": id.to_string(), "relay": relay.name, "conn": conn, "detail": detail}),
            );
            session.over(conn);
            // Before our first bytes (a keyed header that fails): the relay
            // hears why instead of our `Paired`, and refuses the client so.
            let failed = Frame::OpenFailed { session: id, conn, reason: Reason::EndToEndFailed };
            if let Some(refuse) = refuse
                && refuse.send(failed.encoded()).is_ok()
            {
                let _ = tokio::time::timeout(Duration::from_secs(1), &mut driver).await;
            }
            driver.abort();
            return;
        }
    };
    let service = match tokio::time::timeout(SERVICE_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(s)) => s,
        outcome => {
            let detail = match outcome {
                Ok(Err(e)) => format!("{target}: {e}"),
                _ => format!("{target}: connect timed out"),
            };
            // The client sees this connection close; the relay and the audit learn why.
            let _ = tx.send(fail(Reason::ServiceUnreachable, detail)).await;
            session.over(conn);
            driver.abort();
            return;
        }
    };
    let _ = service.set_nodelay(true);
    let (to_service, from_service) = (Meter::new(&session.to_service), Meter::new(&session.from_service));
    let result = tokio::select! {
        r = splice(e2e, Bytes::new(), service, Bytes::new(), to_service, from_service) => r.map(|_| ()),
        _ = session.cancel.cancelled() => Err(std::io::Error::other("session ended")),
    };
    session.over(conn);
    let mut driver = driver;
    if let Err(e) = &result {
        // A connection that could not resume is closed; the audit says why.
        match tokio::time::timeout(Duration::from_secs(1), &mut driver).await {
            Ok(Ok(Err(why))) => state.audit.record(
                "tunnel_lost",
                json!({"device": state.cfg.device, "session": id.to_string(), "conn": conn, "why": why}),
            ),
            _ => tracing::debug!(session = %id, conn, error = %e, "tunnel closed"),
        }
        driver.abort();
    } else if let Ok(Ok(Ok(stats))) = tokio::time::timeout(Duration::from_secs(5), driver).await
        && stats.resumes > 0
    {
        state.audit.record(
            "tunnel_resumed",
            json!({"device": state.cfg.device, "session": id.to_string(), "conn": conn, "resumes": stats.resumes,
                   "retransmitted": stats.retransmitted, "max_pause_ms": stats.max_pause.as_millis() as u64}),
        );
    }
}

/// A replacement leg for the connection `origin` resumes: dial it (or take
/// the relay's stream) and hand it to the live stream, which authenticates
/// the resume end to end.
async fn hand_over(
    state: &Shared,
    relay: &RelayEndpoint,
    tx: &mpsc::Sender<Frame>,
    session: &super::state::AgentSession,
    (id, conn): (SessionId, u32),
    origin: LegOrigin,
) {
    let resumes = origin.resumes();
    if session.ended.lock().is_ok_and(|e| e.contains(resumes)) {
        // Over here for good: the client stops trying.
        let detail = format!("connection {resumes} is over at the device (its service side closed or failed)");
        state.refused(
            "open_refused",
            Reason::ResumeRefused,
            json!({"session": id.to_string(), "relay": relay.name, "conn": conn, "detail": detail}),
        );
        return origin.refuse(tx, Frame::OpenFailed { session: id, conn, reason: Reason::ResumeRefused }).await;
    }
    let Some(stream) = session.resumable.get(&resumes).map(|s| s.clone()) else {
        // A number never opened here is now used up: its own open, still
        // held by a frozen relay, is refused if it ever comes, and the
        // client may send the same first bytes on a new connection.
        let never = session.conns.lock().map(|mut c| c.insert(resumes)).unwrap_or(false);
        let (reason, detail) = match never {
            true => (Reason::NeverOpened, format!("connection {resumes} was never opened; it will not be now")),
            false => (Reason::UnknownSession, format!("no live connection {resumes} to resume")),
        };
        state.refused(
            "open_refused",
            reason,
            json!({"session": id.to_string(), "relay": relay.name, "conn": conn, "detail": detail}),
        );
        return origin.refuse(tx, Frame::OpenFailed { session: id, conn, reason }).await;
    };
    match origin.into_leg(state, relay, id, conn).await {
        Ok(leg) => {
            let _ = stream.send((leg.0, leg.1, relay.name.clone())).await;
        }
        Err(e) => {
            tracing::warn!(session = %id, conn, error = %e, "replacement data leg failed");
            let _ = tx.send(Frame::OpenFailed { session: id, conn, reason: Reason::Internal }).await;
        }
    }
}
