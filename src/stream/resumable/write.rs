//! The writing side of a leg: what the stream's book says to send next,
//! as chunks to a QUIC leg's stream (no copy) or as bytes to any other leg.
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{LegEnd, ResumeConfig, Shared};
use crate::leg::{Leg, SendUnder};
use crate::proto::stream::StreamFrame;
use crate::stream::Prefixed;
use crate::util::split::WritePart;

/// A greeting held back until the stream has bytes of its own to send (the
/// agent's `Paired` goes with its first end-to-end bytes, which it writes as
/// soon as the client's first flight is read: one packet from the device,
/// and one from the relay to the client, instead of two each).
pub struct Hold {
    /// Longest it waits: then it goes alone (a client that waits for it
    /// before it writes, or an end-to-end check that takes its time).
    pub at_most: Duration,
    /// What goes instead of it if this comes first: the refusal of a stream
    /// that fails before its first bytes (the leg is closed behind it). A
    /// dropped sender lets the greeting go.
    pub instead: oneshot::Receiver<Bytes>,
}

/// The first leg's greeting, not yet written, and how it is held.
#[derive(Default)]
pub(super) struct Greeting {
    bytes: Bytes,
    /// Until when it is held, and where what goes instead of it may come from.
    hold: Option<(Instant, oneshot::Receiver<Bytes>)>,
    /// What goes instead of it, once that came.
    instead: Option<Bytes>,
}

impl Greeting {
    pub(super) fn new(bytes: Bytes, hold: Option<Hold>) -> Greeting {
        let hold = hold.map(|h| (Instant::now() + h.at_most, h.instead));
        Greeting { bytes, hold, instead: None }
    }

    /// What goes instead of a held greeting, if it came (and lets the
    /// greeting go once its time is up or its sender is dropped). Looked at
    /// before the stream's own frames: an end-to-end check that fails drops
    /// the stream's end (a FIN to send) just before it sends its refusal.
    fn refusal(&mut self) -> Option<Bytes> {
        if let Some(instead) = self.instead.take() {
            return Some(instead);
        }
        let (until, instead) = self.hold.as_mut()?;
        match instead.try_recv() {
            Ok(refusal) => return Some(refusal),
            Err(oneshot::error::TryRecvError::Empty) if Instant::now() < *until => return None,
            Err(_) => self.hold = None,
        }
        None
    }

    /// Resolves when a held greeting's time is up, or something came on
    /// (or closed) its receiver; never if it is not held.
    async fn released(&mut self) {
        let Some((until, instead)) = &mut self.hold else { return std::future::pending().await };
        let until = *until;
        let came = tokio::select! {
            _ = tokio::time::sleep_until(until) => None,
            r = instead => Some(r),
        };
        match came {
            None => {}
            Some(Ok(refusal)) => self.instead = Some(refusal),
            Some(Err(_)) => self.hold = None,
        }
    }
}

pub(super) async fn write_leg(
    sh: &Shared,
    lw: &mut WritePart<Prefixed<Leg>>,
    quic: Option<SendUnder>,
    out: &mut BytesMut,
    greeting: &mut Greeting,
    cfg: ResumeConfig,
) -> LegEnd {
    let mut chunks = Vec::new();
    // Ticks on the process's grid: the pings of a connection's idle streams
    // leave together (one QUIC datagram carries dozens), and their tasks
    // wake in one pass of the timer. (Not a first tick at once: that would
    // hold a new leg's first bytes, the ClientHello of every new
    // connection, up to 1 ms.)
    let mut ping = crate::util::interval_on_grid(cfg.ping);
    loop {
        // Done once both FINs are through and our last ACK is written: the
        // writer decides, so that ACK is never cut off.
        if sh.book().is_done() {
            let _ = lw.flush().await;
            return LegEnd::Done;
        }
        if let Some(refusal) = greeting.refusal() {
            let _ = lw.write_all(&refusal).await;
            return LegEnd::Refused;
        }
        out.clear();
        chunks.clear();
        sh.book().fill_chunks(&mut chunks, 96 * 1024);
        if !greeting.bytes.is_empty() && (greeting.hold.is_none() || !chunks.is_empty()) {
            // Now, with whatever the stream has (or alone, unless held).
            chunks.insert(0, std::mem::take(&mut greeting.bytes));
            greeting.hold = None;
        }
        if chunks.is_empty() {
            if let Err(e) = lw.flush().await {
                return LegEnd::Broken(e.to_string());
            }
            tokio::select! {
                _ = sh.to_send.notified() => {}
                // The loop's top sees which.
                _ = greeting.released() => {}
                // Nothing goes before the greeting (the peer's relay reads it first).
                _ = ping.tick(), if greeting.bytes.is_empty() => {
                    // Acknowledgements held back (see `ACK_EVERY`) go now.
                    sh.book().force_ack();
                    out.clear();
                    StreamFrame::Ping.encode(out);
                    if let Err(e) = lw.write_all(out).await {
                        return LegEnd::Broken(e.to_string());
                    }
                }
            }
            continue;
        }
        let written = match quic {
            Some(find) => write_chunks(lw, find, &mut chunks).await,
            None => {
                for c in &chunks {
                    out.extend_from_slice(c);
                }
                lw.write_all(out).await
            }
        };
        if let Err(e) = written {
            return LegEnd::Broken(e.to_string());
        }
    }
}

/// Hands `chunks` to the QUIC stream under the leg without copying them.
async fn write_chunks(lw: &WritePart<Prefixed<Leg>>, find: SendUnder, chunks: &mut [Bytes]) -> std::io::Result<()> {
    let mut at = 0;
    while at < chunks.len() {
        let rest = &mut chunks[at..];
        let written = std::future::poll_fn(|cx| {
            lw.with(|s| match find(s.get_mut()) {
                Some(send) => std::pin::pin!(send.write_chunks(rest)).poll(cx).map_err(std::io::Error::from),
                None => std::task::Poll::Ready(Err(std::io::Error::other("the leg is no QUIC stream"))),
            })
        })
        .await?;
        at += written.chunks;
    }
    Ok(())
}
