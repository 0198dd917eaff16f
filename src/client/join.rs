//! Opening a tunnelled connection: the join (a new connection, or a
//! replacement leg for one), its end-to-end TLS, and where the time went.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, oneshot};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use super::early::Early;
use super::pipelined::{JoinAnswer, await_paired};
use super::redial::DialLegs;
use super::{ClientError, ClientSession, E2E_TIMEOUT, PAIRING_WAIT, Phases, RelayEntry, Tunnel};
use crate::leg::Leg;
use crate::proto::{Frame, FrameIo, Reason, VERSION};
use crate::stream::derived::{self, SessionSecret};
use crate::stream::resumable::{self, ResumeKey, Side};
use crate::stream::sealed::Sealed;
use crate::tls;

impl ClientSession {
    /// Opens one tunnelled connection through `relay`, which may be the twin of
    /// the relay that admitted the session (it knows the session by replication).
    ///
    /// The client's first end-to-end flight follows the join without waiting
    /// for `Paired` ([`super::pipelined`]); the application's bytes wait for
    /// the handshake, which cannot finish before the device answered.
    pub async fn connect_via(self: &Arc<Self>, relay: &RelayEntry) -> Result<(Tunnel, Phases), ClientError> {
        self.connect_through(relay, None).await
    }

    /// [`Self::connect_via`]; on a keyed connection, what `early` yields
    /// while the relay pairs it goes too ([`super::early`]).
    pub(super) async fn connect_through(
        self: &Arc<Self>,
        relay: &RelayEntry,
        early: Option<&mut Early<'_>>,
    ) -> Result<(Tunnel, Phases), ClientError> {
        let started = Instant::now();
        // The join goes out with the stream's first bytes (the keyed header
        // and what the application wrote, or the ClientHello), in one write.
        let (conn, leg, join) = self.dial_join(relay, 0).await?;
        let greeting = join.encoded();
        let (answer_tx, mut answer_rx) = oneshot::channel();
        let give_up = CancellationToken::new();
        let leg: Leg = Box::new(await_paired(leg, answer_tx, give_up.clone()));
        let key = ResumeKey::default();
        let never_opened = Arc::new(AtomicBool::new(false));
        let source = Box::new(DialLegs {
            session: self.clone(),
            conn,
            via: relay.name.clone(),
            last_failure: None,
            never_opened: never_opened.clone(),
        });
        let mut cfg = self.resume;
        // The stream may hear nothing until the relay paired the leg.
        cfg.first_silence = PAIRING_WAIT + cfg.dead_after;
        // Early bytes may have to be settled by a resume: hear of it.
        let (events, resumed) = match early.is_some() && self.keyed.get().is_some() {
            true => {
                let resumed = Arc::new(Notify::new());
                let tell = resumed.clone();
                let on: resumable::OnEvent = Box::new(move |e| {
                    if matches!(e, resumable::ResumeEvent::Resumed { .. }) {
                        tell.notify_one();
                    }
                });
                (Some(on), Some(resumed))
            }
            false => (None, None),
        };
        let first = resumable::FirstLeg { leg, read: Bytes::new(), greeting, hold: None };
        let (pipe, mut driver) = resumable::start(first, Side::Client, conn, key.clone(), source, cfg, events);
        let lost = |detail: String| ClientError::Protocol { relay: relay.name.clone(), detail };
        if let Some(secret) = self.keyed.get() {
            // A later connection of the session: no handshake, keys derived
            // from the session's first one; the header goes out with the join.
            let (header, keys) = secret.open(&self.id, conn);
            let _ = key.set(keys.resume_key());
            let up = keys.upstream();
            let mut sealed = Sealed::salted(pipe, up, Box::new(move |salt| keys.downstream(salt)), header.to_vec());
            let written = sealed.flush().await;
            let (answer, sent) = match (written, early) {
                (Err(e), _) => (Err(lost(e.to_string())), false),
                (Ok(()), None) => (Ok(tokio::time::timeout(PAIRING_WAIT, &mut answer_rx).await), false),
                (Ok(()), Some(early)) => {
                    let answer = early.send_while_pairing(&mut sealed, &mut answer_rx, PAIRING_WAIT).await;
                    (answer.map_err(|e| lost(e.to_string())), early.sent)
                }
            };
            match (answer.map_or_else(Some, |a| refusal(a, &lost)), resumed) {
                (None, _) => {}
                // The application's bytes left on a leg that was lost: the
                // device may have them. Resume the connection through the
                // twin (the device passes on only what it lacks), or learn
                // that the device never opened it.
                (Some(ClientError::Protocol { detail, .. }), Some(resumed)) if sent => {
                    give_up.cancel();
                    self.settle(Settling { relay, conn, driver, resumed, never_opened, detail }).await?;
                    return Ok((Either::Right(sealed), Phases { paired: started.elapsed(), e2e: Duration::ZERO }));
                }
                (Some(e), _) => {
                    driver.abort();
                    return Err(e);
                }
            }
            let paired = started.elapsed();
            self.watch(conn, driver);
            return Ok((Either::Right(sealed), Phases { paired, e2e: Duration::ZERO }));
        }
        let name = tls::server_name(&self.device)?;
        let mut handshake = Box::pin(tokio_rustls::TlsConnector::from(self.e2e.clone()).connect(name, pipe));
        // Polling the handshake writes the ClientHello while the relay pairs.
        let mut early = None;
        let answer = tokio::select! {
            a = tokio::time::timeout(PAIRING_WAIT, &mut answer_rx) => a,
            r = &mut handshake => {
                early = Some(r);
                tokio::time::timeout(PAIRING_WAIT, &mut answer_rx).await
            }
        };
        if let Some(e) = refusal(answer, &lost) {
            driver.abort();
            return Err(e);
        }
        let paired = started.elapsed();
        let outcome = match early {
            Some(r) => Ok(r),
            None => tokio::time::timeout(E2E_TIMEOUT, handshake).await,
        };
        let t = match outcome {
            Ok(Ok(t)) => t,
            failed => {
                // The leg died before end-to-end TLS was up (the relay froze or
                // died): nothing of the application went through, so the
                // caller may open the connection afresh through the twin.
                let leg_lost =
                    matches!(tokio::time::timeout(Duration::from_millis(200), &mut driver).await, Ok(Ok(Err(_))));
                driver.abort();
                let timed_out = failed.is_err();
                let detail = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "handshake timed out".into(),
                };
                if leg_lost || timed_out {
                    return Err(lost(format!("leg lost before end-to-end TLS: {detail}")));
                }
                return Err(ClientError::EndToEnd(detail));
            }
        };
        let c = t.get_ref().1;
        tls::handshake_done(c);
        let phases = Phases { paired, e2e: started.elapsed() - paired };
        resumable::set_key_from(&**c, &key, conn);
        if c.alpn_protocol() == Some(tls::ALPN_E2E_KEYED)
            && conn <= derived::BASE_MAX
            && let Some(secret) = SessionSecret::export(&**c, &self.id, conn)
        {
            // The first to complete keys the session's later connections.
            let _ = self.keyed.set(secret);
        }
        self.watch(conn, driver);
        Ok((Either::Left(t), phases))
    }

    /// Waits for a keyed connection whose first bytes left on a lost leg to
    /// settle: resumed through the twin (the stream goes on), never opened
    /// by the device (a refusal the caller retries with the same bytes on a
    /// new connection), or neither (it fails: the bytes are not sent again).
    async fn settle(&self, s: Settling<'_>) -> Result<(), ClientError> {
        let Settling { relay, conn, mut driver, resumed, never_opened, detail } = s;
        tokio::select! {
            () = resumed.notified() => {
                tracing::info!(session = %self.id, conn, from = %relay.name,
                    "a connection whose first bytes had left resumed through the twin");
                self.watch(conn, driver);
                Ok(())
            }
            ended = &mut driver => {
                if never_opened.load(Ordering::Relaxed) {
                    let message = format!(
                        "connection {conn}: its leg through {} was lost before the pairing ({detail}) and the device never opened it: its first bytes go again on a new connection",
                        relay.name
                    );
                    return Err(ClientError::Refused { reason: Reason::NeverOpened, message });
                }
                let why = match ended {
                    Ok(Err(why)) => why,
                    _ => "stopped".into(),
                };
                let detail = format!(
                    "{detail}; connection {conn} was not resumed through the twin ({why}), and its first bytes had left: not sent again"
                );
                Err(ClientError::Protocol { relay: relay.name.clone(), detail })
            }
        }
    }

    /// Says why connection `conn`'s stream ended, unless it ended with the
    /// session (that has its own message).
    fn watch(&self, conn: u32, driver: tokio::task::JoinHandle<Result<resumable::Stats, String>>) {
        let ended = self.ended.clone();
        tokio::spawn(async move {
            match driver.await {
                Ok(Err(why)) if ended.is_cancelled() => {
                    tracing::debug!(conn, %why, "connection closed with its session")
                }
                Ok(Err(why)) => {
                    tracing::warn!(conn, %why, "tunnelled connection lost");
                    eprintln!("tunnelled connection {conn} lost: {why}");
                }
                _ => {}
            }
        });
    }

    /// Dials a leg through `relay` and makes the join for it: a new
    /// connection (`resumes` = 0) or a replacement leg for connection
    /// `resumes`. The caller writes it.
    async fn dial_join(&self, relay: &RelayEntry, resumes: u32) -> Result<(u32, Leg, Frame), ClientError> {
        if self.ended.is_cancelled() {
            return Err(ClientError::Ended(self.end_reason().unwrap_or(Reason::Unknown)));
        }
        let leg = self.links.leg(relay, self.raw_legs).await.map_err(|source| ClientError::Dial {
            relay: relay.name.clone(),
            addr: relay.addr.clone(),
            source,
        })?;
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let mac = crate::proto::leg_mac(&self.token, crate::proto::LegSide::Client { resumes }, &self.id, conn);
        Ok((conn, leg, Frame::ClientJoin { version: VERSION, session: self.id, conn, mac, resumes }))
    }

    /// [`Self::dial_join`], the join written, then the relay's answer.
    /// Returns the connection number it used, and the paired leg.
    pub(super) async fn join_leg(&self, relay: &RelayEntry, resumes: u32) -> Result<(u32, (Leg, Bytes)), ClientError> {
        let (conn, leg, join) = self.dial_join(relay, resumes).await?;
        let proto_err = |detail: String| ClientError::Protocol { relay: relay.name.clone(), detail };
        let mut io = FrameIo::new(leg);
        io.write_frame(&join).await.map_err(|e| proto_err(e.to_string()))?;
        match tokio::time::timeout(PAIRING_WAIT, io.read_frame()).await {
            Ok(Ok(Frame::Paired { .. })) => Ok((conn, io.into_parts())),
            Ok(Ok(Frame::Error { reason, message })) => Err(ClientError::Refused { reason, message }),
            Ok(Ok(other)) => Err(proto_err(format!("unexpected {}", other.kind()))),
            Ok(Err(e)) => Err(proto_err(e.to_string())),
            Err(_) => Err(proto_err("no answer in time".into())),
        }
    }
}

/// A connection [`ClientSession::settle`] waits for.
struct Settling<'a> {
    relay: &'a RelayEntry,
    conn: u32,
    driver: tokio::task::JoinHandle<Result<resumable::Stats, String>>,
    /// Told when the stream resumed on a new leg.
    resumed: Arc<Notify>,
    never_opened: Arc<AtomicBool>,
    detail: String,
}

/// The relay's answer to a join, as the error it is (if it is one).
fn refusal(
    answer: Result<Result<JoinAnswer, oneshot::error::RecvError>, tokio::time::error::Elapsed>,
    lost: &impl Fn(String) -> ClientError,
) -> Option<ClientError> {
    match answer {
        Ok(Ok(JoinAnswer::Paired)) => None,
        Ok(Ok(JoinAnswer::Refused { reason, message })) => Some(ClientError::Refused { reason, message }),
        Ok(Ok(JoinAnswer::Lost(detail))) => Some(lost(detail)),
        Ok(Err(_)) => Some(lost("the leg ended before the relay answered".into())),
        Err(_) => Some(lost("no answer in time".into())),
    }
}
