//! One fetch leg: a TLS connection to a relay's control port that carries
//! repository requests (see [`crate::proto::repo`]).
use std::time::Duration;

use super::{FetchError, Sink};
use crate::agent::Shared;
use crate::agent::config::RelayEndpoint;
use bytes::Bytes;

use crate::proto::repo::{DATA_CHUNK, RepoFrame};
use crate::proto::{Frame, FrameIo, FrameIoError};

/// A relay that sends nothing for this long is taken as failed: the next
/// request goes to its twin.
const STALL: Duration = Duration::from_secs(5);

pub struct FetchLeg {
    io: FrameIo<crate::leg::Leg>,
    pub relay: String,
}

fn leg(relay: &str, what: &str, e: impl std::fmt::Display) -> FetchError {
    FetchError::Leg(format!("{relay}: {what}: {e}"))
}

impl FetchLeg {
    pub async fn dial(state: &Shared, relay: &RelayEndpoint) -> Result<FetchLeg, FetchError> {
        let tls = crate::agent::transport::fetch_leg(state, relay).await.map_err(|e| leg(&relay.name, "dial", e))?;
        Ok(FetchLeg { io: FrameIo::new(tls), relay: relay.name.clone() })
    }

    /// Sends `req` (and `payload` after it, in `Data` frames from
    /// `payload.0`), and hands the answer's pieces to `sink`, from `offset`
    /// until `end` (or the whole answer).
    pub async fn exchange(
        &mut self,
        req: RepoFrame,
        payload: (u64, Bytes),
        (offset, end): (u64, Option<u64>),
        sink: &mut Sink<'_>,
        pace: &super::Pace,
    ) -> Result<(), FetchError> {
        self.io.write_frame(&Frame::Repo(req)).await.map_err(|e| leg(&self.relay, "write", e))?;
        let (from, bytes) = payload;
        let mut sent = 0;
        while sent < bytes.len() {
            let end = (sent + DATA_CHUNK).min(bytes.len());
            let data =
                Frame::Repo(RepoFrame::Data { offset: from + sent as u64, total: 0, data: bytes.slice(sent..end) });
            let write = tokio::time::timeout(STALL, self.io.write_frame(&data));
            write
                .await
                .map_err(|_| leg(&self.relay, "write", "stalled"))
                .and_then(|r| r.map_err(|e| leg(&self.relay, "write", e)))?;
            pace.took(end - sent).await;
            sent = end;
        }
        let mut at = offset;
        loop {
            let frame = match tokio::time::timeout(STALL, self.io.read_frame()).await {
                Err(_) => return Err(leg(&self.relay, "read", format!("nothing for {STALL:?}"))),
                Ok(Err(FrameIoError::Closed)) => return Err(leg(&self.relay, "read", "closed")),
                Ok(Err(e)) => return Err(leg(&self.relay, "read", e)),
                Ok(Ok(f)) => f,
            };
            match frame {
                Frame::Repo(RepoFrame::Data { offset: o, total, data }) => {
                    if o != at {
                        return Err(leg(&self.relay, "data", format!("bytes at {o}, expected {at}")));
                    }
                    at += data.len() as u64;
                    sink(total, &data)?;
                    pace.took(data.len()).await;
                    let want = end.map_or(total, |e| e.min(total));
                    if at >= want {
                        self.io.shrink();
                        return Ok(());
                    }
                }
                Frame::Repo(RepoFrame::Failed { status, code, message }) => {
                    return Err(FetchError::Refused { relay: self.relay.clone(), status, code, message });
                }
                Frame::Error { reason, message } => {
                    return Err(leg(&self.relay, "refused", format!("{reason}: {message}")));
                }
                other => return Err(leg(&self.relay, "read", format!("unexpected {} frame", other.kind()))),
            }
        }
    }
}
