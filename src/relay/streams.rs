//! Data legs the relay opens itself: a stream of the agent's QUIC connection,
//! for an agent whose `Hello` said it takes them.
//!
//! The agent-dialled way costs a round trip before the first end-to-end
//! flight reaches the device: `Open` down the control channel, the agent's
//! `DataOpen` back on a new leg, then the client's bytes. Here the stream's
//! first frame is the `Open`, and the client's first flight (written right
//! behind its join, see `client/pipelined.rs`) follows as it arrives, before
//! the agent answers. The agent's first frame says whether it took the leg:
//! `Paired`, or `OpenFailed` with its reason. The stream is as authenticated
//! as the control channel (the same QUIC connection, the device's certificate),
//! so it needs no MAC; the agent still checks session, connection number and
//! allow-list exactly as for an `Open` on the control channel.
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::session::Session;
use super::state::State;
use crate::leg::Leg;
use crate::metrics;
use crate::proto::{Frame, FrameIo, Reason};
use crate::quic::QuicLeg;

/// Opens connection `conn`'s data leg on `quic`, sends the `Open` and the
/// client's bytes so far, and goes on passing the client's bytes to the
/// agent while it waits for the agent's answer (the client computes its
/// first flight while the join travels, so it is rarely here yet).
pub async fn open(
    state: &State,
    session: &Session,
    (conn, resumes): (u32, u32),
    quic: &quinn::Connection,
    client: &mut FrameIo<Leg>,
) -> Result<(Leg, Bytes), (Reason, &'static str)> {
    const GONE: (Reason, &str) = (Reason::AgentGone, "the device's QUIC connection closed");
    let (send, recv) = quic.open_bi().await.map_err(|_| GONE)?;
    let mut leg = FrameIo::new(Box::new(QuicLeg::new(send, recv)) as Leg);
    // One write: the `Open` and what the client sent leave in one packet.
    // No key: the stream itself is the proof (see the module's comment).
    let open = Frame::Open { session: session.id, conn, key: [0; 32], resumes, via: String::new() };
    let counter = metrics::RELAY_BYTES.with_label_values(&["to_device"]);
    let meter = state.to_device_meter(session, &counter);
    super::tunnel::write_with(leg.get_mut(), &open, &client.take_buffered(), &meter).await.map_err(|_| GONE)?;
    let mut buf = BytesMut::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(state.cfg.limits.pairing_timeout_ms);
    // Until the agent answers, what the client sends goes on to it; the
    // stream's flow control bounds how much that can be.
    let mut client_open = true;
    let answer = loop {
        buf.clear();
        tokio::select! {
            r = tokio::time::timeout_at(deadline, leg.read_frame()) => break r,
            n = client.get_mut().read_buf(&mut buf), if client_open => match n {
                Ok(n) if n > 0 => {
                    meter.tap(&mut buf);
                    leg.get_mut().write_all(&buf).await.map_err(|_| GONE)?;
                    meter.add(n);
                }
                // The client's end or failure is the splice's to see (it reads it again).
                _ => client_open = false,
            },
            _ = session.end.cancelled() => return Err((session.reason(), "the session ended")),
        }
    };
    match answer {
        Ok(Ok(Frame::Paired { .. })) => Ok(leg.into_parts()),
        Ok(Ok(Frame::OpenFailed { reason, .. })) => Err(super::pairing::open_failed(reason)),
        Ok(Ok(_)) => Err((Reason::BadFrame, "the device answered the stream's open with another frame")),
        Ok(Err(_)) => Err(GONE),
        Err(_) => Err((Reason::PairingTimedOut, "the device did not answer the stream's open")),
    }
}
