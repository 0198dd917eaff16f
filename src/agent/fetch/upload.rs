//! Uploads through the relays: an archive already on disk is sent in ranges
//! to the hub, which says how much it has; after a break the upload goes on
//! through the twin from the hub's count, never from zero.
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use bytes::Bytes;

use super::{FetchError, Fetcher, MAX_BREAKS, Pace, pause};
use crate::api::UploadProgress;
use crate::metrics;
use crate::proto::VERSION;
use crate::proto::repo::RepoFrame;

/// Bytes per range sent (the relay holds one range in memory at a time).
const RANGE: u64 = 1 << 20;

/// An archive to send: job id, file, length and hex SHA-256.
pub struct Archive<'a> {
    pub job: &'a str,
    pub path: &'a Path,
    pub total: u64,
    pub sha256: &'a str,
}

impl Fetcher {
    /// Sends `a` until the hub has all of it and found its SHA-256 right;
    /// the bytes sent this time (resent ones included).
    pub async fn upload(&mut self, a: &Archive<'_>, rate: u64) -> Result<u64, FetchError> {
        let pace = Pace::new(rate);
        let mut breaks = 0;
        let mut sent = 0;
        loop {
            match self.upload_once(a, &pace, &mut sent).await {
                Ok(()) => return Ok(sent),
                Err(e) if e.retry() && breaks < MAX_BREAKS => {
                    breaks += 1;
                    self.resumes += 1;
                    metrics::AGENT_REPO_RESUMES.inc();
                    tracing::info!(error = %e, job = a.job, "upload broke; going on through the twin");
                    tokio::time::sleep(pause(breaks)).await;
                }
                Err(e) if e.retry() => return Err(FetchError::GaveUp { breaks, last: e.to_string() }),
                Err(e) => return Err(e),
            }
        }
    }

    /// Asks the hub how much it has, then sends the rest range by range.
    async fn upload_once(&mut self, a: &Archive<'_>, pace: &Pace, sent: &mut u64) -> Result<(), FetchError> {
        let mut at = self.put(a, 0, Bytes::new(), pace).await?;
        let mut file = std::fs::File::open(a.path)?;
        while !at.complete {
            if self.cancel.is_cancelled() {
                return Err(FetchError::Canceled);
            }
            let from = at.received;
            let mut buf = Vec::with_capacity(RANGE.min(a.total - from.min(a.total)) as usize);
            file.seek(SeekFrom::Start(from))?;
            (&mut file).take(RANGE).read_to_end(&mut buf)?;
            if buf.is_empty() && from < a.total {
                return Err(FetchError::Io(std::io::Error::other("the archive shrank while being sent")));
            }
            let len = buf.len() as u64;
            // Counted as sent even if the answer never comes: a resend shows.
            *sent += len;
            metrics::AGENT_UPLOAD_BYTES.inc_by(len);
            at = self.put(a, from, buf.into(), pace).await?;
            if !at.complete && at.received != from + len {
                return Err(FetchError::Leg(format!(
                    "the hub has {} bytes after a range to {}",
                    at.received,
                    from + len
                )));
            }
        }
        Ok(())
    }

    /// One range (empty: just ask); the hub's progress after it.
    async fn put(
        &mut self,
        a: &Archive<'_>,
        offset: u64,
        data: Bytes,
        pace: &Pace,
    ) -> Result<UploadProgress, FetchError> {
        let req = RepoFrame::UploadPut {
            version: VERSION,
            job: a.job.into(),
            offset,
            total: a.total,
            len: data.len() as u32,
            sha256: a.sha256.into(),
        };
        let mut answer = Vec::new();
        let mut sink = |_: u64, d: &[u8]| {
            answer.extend_from_slice(d);
            Ok(())
        };
        self.once(req, (offset, data), (0, None), &mut sink, pace).await?;
        serde_json::from_slice(&answer).map_err(|e| FetchError::Leg(format!("the hub's upload answer: {e}")))
    }
}
