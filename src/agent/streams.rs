//! Data legs the relay opens: streams of our QUIC connection to it.
//!
//! Our `Hello` said `streams` (on QUIC only), so the relay opens a new
//! tunnelled connection's leg itself, `Open` first and the client's first
//! end-to-end flight right behind (one round trip less than dialling it;
//! see `relay/streams.rs`). Taking a stream on a connection we dialled is not
//! listening: only the relay we authenticated can open one. Each stream then
//! goes through exactly the checks of an `Open` on the control channel
//! (`tunnel::open`); anything else as its first frame is refused on it.
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::Shared;
use super::config::RelayEndpoint;
use super::tunnel::{self, LegOrigin};
use crate::leg::Leg;
use crate::proto::{Frame, FrameIo, Reason};
use crate::quic::{self, QuicLeg};

/// How long a stream may take to say what it is.
const FIRST_FRAME: Duration = Duration::from_secs(5);
/// The most streams the relay may have open on our connection at once; the
/// limit starts at [`quic::INITIAL_STREAMS`] and doubles as they are used.
const MAX_STREAMS: u32 = 16_384;

/// Takes the relay's streams on `conn` until the connection closes.
pub async fn accept(state: Shared, relay: RelayEndpoint, tx: mpsc::Sender<Frame>, conn: quinn::Connection) {
    let mut count = quic::StreamCount::new(quic::INITIAL_STREAMS, MAX_STREAMS);
    while let Ok((send, recv)) = conn.accept_bi().await {
        // Counted open until the leg itself is dropped, not when this task
        // ends: a replacement leg lives on in its resumable stream.
        let leg = quic::Guarded::new(QuicLeg::new(send, recv), count.opened(&conn));
        let (state, relay, tx) = (state.clone(), relay.clone(), tx.clone());
        tokio::spawn(
            async move {
                let mut io = FrameIo::new(Box::new(leg) as Leg);
                let refuse = |detail: String| {
                    state.refused("stream_refused", Reason::BadFrame, json!({"relay": relay.name, "detail": detail}));
                };
                match tokio::time::timeout(FIRST_FRAME, io.read_frame()).await {
                    // `via` names another relay: that is the control channel's business only.
                    Ok(Ok(Frame::Open { session, conn, resumes, via, .. })) if via.is_empty() => {
                        let origin = LegOrigin::Opened { leg: io, resumes };
                        tunnel::open(state.clone(), relay.clone(), tx, session, conn, origin).await
                    }
                    Ok(Ok(other)) => {
                        refuse(format!("a stream from the relay began with {}", other.kind()));
                        let _ = io.write_frame(&Frame::error(Reason::BadFrame)).await;
                    }
                    Ok(Err(e)) => refuse(format!("a stream from the relay: {e}")),
                    Err(_) => refuse("a stream from the relay said nothing in time".into()),
                }
            }
            .in_current_span(),
        );
    }
}
