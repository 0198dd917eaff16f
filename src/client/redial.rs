//! Replacement legs for one tunnelled connection whose leg was lost: dialled
//! through the twin first, round after round until the resume deadline, or
//! until the device says the connection is gone for good.
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{ClientError, ClientSession, FAILOVER_DIAL};
use crate::leg::Leg;
use crate::proto::Reason;
use crate::stream::resumable::LegSource;

/// Replacement legs for one connection: dialled through the twin first.
pub(super) struct DialLegs {
    pub(super) session: Arc<ClientSession>,
    pub(super) conn: u32,
    /// The relay the last leg went through: a replacement tries the twin first.
    pub(super) via: String,
    /// Why the last round found no leg, for the message if none comes in time.
    pub(super) last_failure: Option<String>,
    /// Set when the device said it never opened the connection (and now
    /// will not): nothing of it reached the service, and the stream ends.
    pub(super) never_opened: Arc<std::sync::atomic::AtomicBool>,
}

/// The QUIC stream under a client's leg: a replacement leg is the stream
/// itself, a new connection's first leg waits for its pairing around it.
fn send_under(leg: &mut Leg) -> Option<&mut quinn::SendStream> {
    let any: &mut dyn std::any::Any = &mut **leg;
    if any.is::<super::pipelined::AwaitPaired>() {
        return any.downcast_mut::<super::pipelined::AwaitPaired>().and_then(super::pipelined::AwaitPaired::send_under);
    }
    crate::quic::send_of(any)
}

impl LegSource for DialLegs {
    fn send_under(&self) -> Option<crate::leg::SendUnder> {
        Some(send_under)
    }

    fn next_leg(
        &mut self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<(Leg, Bytes)>> + Send + '_>> {
        Box::pin(async move {
            let s = &self.session;
            if s.ended.is_cancelled() {
                return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "session ended"));
            }
            // Round after round until the caller's resume deadline: a relay that
            // just restarted does not know the session, and the one that does may
            // be turning connections away while every client reconnects at once.
            let mut backoff = crate::util::Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
            loop {
                let mut last = None;
                // What each relay said this round, for the message if none ever takes it.
                let mut round = Vec::new();
                for relay in s.order_avoiding(&self.via) {
                    let rx = s.links.rx(&relay.name);
                    // A frozen relay still accepts TCP: give each try a short deadline.
                    let joined =
                        tokio::time::timeout(FAILOVER_DIAL, s.join_leg(&relay, self.conn)).await.unwrap_or_else(|_| {
                            Err(ClientError::Protocol { relay: relay.name.clone(), detail: "timed out".into() })
                        });
                    match joined {
                        Ok((_, leg)) => {
                            s.set_current(&relay);
                            self.via = relay.name.clone();
                            return Ok(leg);
                        }
                        // Never opened, or over at the device (its service closed it): for good.
                        Err(ClientError::Refused {
                            reason: r @ (Reason::NeverOpened | Reason::ResumeRefused),
                            message,
                        }) => {
                            let never = r == Reason::NeverOpened;
                            self.never_opened.store(never, std::sync::atomic::Ordering::Relaxed);
                            return Err(std::io::Error::new(std::io::ErrorKind::NotFound, message));
                        }
                        Err(e) => {
                            round.push(format!("{}: {e}", relay.name));
                            if let ClientError::Refused { reason: Reason::UnknownSession, .. } = e {
                                last = Some(std::io::Error::new(std::io::ErrorKind::NotFound, "session unknown"));
                            } else {
                                // Silent or broken: the path may be (UDP blocked mid-session).
                                s.links.suspect(&relay.name, rx).await;
                                last = Some(std::io::Error::other(e.to_string()));
                            }
                        }
                    }
                }
                if s.ended.is_cancelled() {
                    return Err(last.unwrap_or_else(|| std::io::Error::other("no relay")));
                }
                let why = round.join("; ");
                tracing::debug!(conn = self.conn, %why, "no relay took the replacement leg; trying again");
                self.last_failure = Some(why);
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_pause()) => {}
                    _ = s.ended.cancelled() => {}
                }
            }
        })
    }

    fn last_failure(&self) -> Option<String> {
        self.last_failure.clone()
    }
}
