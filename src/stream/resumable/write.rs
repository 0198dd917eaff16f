//! The writing side of a leg: what the stream's book says to send next,
//! as chunks to a QUIC leg's stream (no copy) or as bytes to any other leg.
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;

use super::{LegEnd, ResumeConfig, Shared};
use crate::leg::{Leg, SendUnder};
use crate::proto::stream::StreamFrame;
use crate::stream::Prefixed;
use crate::util::split::WritePart;

pub(super) async fn write_leg(
    sh: &Shared,
    lw: &mut WritePart<Prefixed<Leg>>,
    quic: Option<SendUnder>,
    out: &mut BytesMut,
    greeting: &mut Bytes,
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
        out.clear();
        chunks.clear();
        sh.book().fill_chunks(&mut chunks, 96 * 1024);
        if !greeting.is_empty() {
            // Now, with whatever the stream has (or alone).
            chunks.insert(0, std::mem::take(greeting));
        }
        if chunks.is_empty() {
            if let Err(e) = lw.flush().await {
                return LegEnd::Broken(e.to_string());
            }
            tokio::select! {
                _ = sh.to_send.notified() => {}
                _ = ping.tick() => {
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
