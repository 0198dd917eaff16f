//! Software for the device, fetched through its relays: the repository's
//! metadata (checked the TUF way, see [`crate::repo::trust`]) and artifacts
//! (checked against the signed length and SHA-256 before anything uses them).
//!
//! Downloads go in ranges over a fetch leg to one relay; when that relay
//! fails or stalls the download goes on from the last byte received through
//! the twin, never from zero. A partial download survives an agent restart
//! (`downloads/SHA.part`, re-hashed on resume). Only a verified artifact
//! reaches `artifacts/SHA`.
mod leg;
mod store;
mod upload;

pub use upload::Archive;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::Write;

use super::Shared;
use super::config::RepoSettings;
use crate::metrics;
use crate::proto::repo::{MAX_RANGE, RepoFrame};
use crate::repo::RepoError;
use crate::repo::meta::{Envelope, Target};
use crate::repo::trust::{Fetched, Trusted, check_hash};
use leg::FetchLeg;

/// Largest metadata file the agent takes.
const MAX_METADATA: usize = 4 << 20;
/// Leg failures in a row before a download gives up.
const MAX_BREAKS: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("this agent has no [repo] settings")]
    NoRepo,
    #[error("fetch leg: {0}")]
    Leg(String),
    #[error("{relay} could not fetch it ({code}, status {status}): {message}")]
    Refused { relay: String, status: u16, code: String, message: String },
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("local storage: {0}")]
    Io(#[from] std::io::Error),
    #[error("gave up after {breaks} broken legs; last: {last}")]
    GaveUp { breaks: u32, last: String },
    #[error("cancelled")]
    Canceled,
}

impl FetchError {
    /// Worth another try through the twin.
    fn retry(&self) -> bool {
        match self {
            FetchError::Leg(_) => true,
            FetchError::Refused { code, .. } => matches!(code.as_str(), "busy" | "hub_unreachable" | "no_hub"),
            _ => false,
        }
    }
}

/// Takes each arriving piece of an answer, with the file's total length.
pub(crate) type Sink<'a> = dyn FnMut(u64, &[u8]) -> Result<(), FetchError> + Send + 'a;

/// A verified artifact on the device.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Downloaded {
    pub name: String,
    pub path: PathBuf,
    pub length: u64,
    pub sha256: String,
    /// Bytes received for it this time (0: it was already here).
    pub fetched: u64,
    /// Times the download went on through another leg.
    pub resumes: u32,
    /// What the signed targets say about it (install and health commands).
    pub info: crate::repo::meta::TargetInfo,
}

/// One device's fetching: a leg to one relay at a time, moving to the twin
/// when it breaks.
pub struct Fetcher {
    state: Shared,
    leg: Option<FetchLeg>,
    next_relay: usize,
    pub resumes: u32,
    /// Cancelled: the download stops and its partial file is removed.
    pub cancel: tokio_util::sync::CancellationToken,
}

impl Fetcher {
    pub fn new(state: Shared) -> Fetcher {
        Fetcher { state, leg: None, next_relay: 0, resumes: 0, cancel: Default::default() }
    }

    fn settings(&self) -> Result<RepoSettings, FetchError> {
        self.state.cfg.repo.clone().ok_or(FetchError::NoRepo)
    }

    /// One request on the current leg (dialled if there is none); a failure
    /// worth retrying drops the leg so the next attempt goes to the twin.
    /// `sink` sees each piece; for ranges the caller re-asks from where it
    /// got to (see `download`).
    async fn once(
        &mut self,
        req: RepoFrame,
        payload: (u64, bytes::Bytes),
        range: (u64, Option<u64>),
        sink: &mut Sink<'_>,
        pace: &Pace,
    ) -> Result<(), FetchError> {
        if self.leg.is_none() {
            let relays = &self.state.cfg.relays;
            let relay = relays[self.next_relay % relays.len()].clone();
            self.leg = Some(FetchLeg::dial(&self.state, &relay).await.inspect_err(|_| self.next_relay += 1)?);
        }
        let leg = self.leg.as_mut().expect("dialled above");
        let r = leg.exchange(req, payload, range, sink, pace).await;
        if r.as_ref().is_err_and(FetchError::retry) {
            self.leg = None;
            self.next_relay += 1;
        }
        r
    }

    /// Metadata file `name`, or `len` bytes of artifact `name` from `offset`.
    async fn request(
        &mut self,
        blob: bool,
        name: &str,
        offset: u64,
        len: u32,
        sink: &mut Sink<'_>,
        pace: &Pace,
    ) -> Result<(), FetchError> {
        let req = RepoFrame::Get { version: crate::proto::VERSION, blob, name: name.into(), offset, len };
        let end = blob.then(|| offset + u64::from(len));
        self.once(req, (0, Default::default()), (offset, end), sink, pace).await
    }

    /// A small request answered whole (jobs, reports), through the twin if
    /// the first relay fails.
    pub async fn call(&mut self, req: RepoFrame) -> Result<Vec<u8>, FetchError> {
        let mut breaks = 0;
        loop {
            let mut buf = Vec::new();
            let mut sink = |_: u64, data: &[u8]| {
                buf.extend_from_slice(data);
                Ok(())
            };
            match self.once(req.clone(), (0, Default::default()), (0, None), &mut sink, &Pace::new(0)).await {
                Ok(()) => return Ok(buf),
                Err(e) if e.retry() && breaks < self.state.cfg.relays.len() as u32 => breaks += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// A whole metadata file; `None` when the hub has no such file.
    async fn metadata(&mut self, name: &str) -> Result<Option<Vec<u8>>, FetchError> {
        let mut breaks = 0;
        loop {
            let mut buf = Vec::new();
            let mut sink = |total: u64, data: &[u8]| {
                if total as usize > MAX_METADATA {
                    return Err(FetchError::Repo(RepoError::Malformed {
                        role: "metadata",
                        detail: format!("{total} bytes, more than the {MAX_METADATA} allowed"),
                    }));
                }
                buf.extend_from_slice(data);
                Ok(())
            };
            match self.request(false, name, 0, MAX_RANGE, &mut sink, &Pace::new(0)).await {
                Ok(()) => {
                    metrics::AGENT_REPO_BYTES.inc_by(buf.len() as u64);
                    return Ok(Some(buf));
                }
                Err(FetchError::Refused { status: 404, .. }) => return Ok(None),
                Err(e) if e.retry() && breaks < MAX_BREAKS => {
                    breaks += 1;
                    tracing::info!(error = %e, file = name, "metadata fetch broke; trying the twin");
                    tokio::time::sleep(pause(breaks)).await;
                }
                Err(e) if e.retry() => return Err(FetchError::GaveUp { breaks, last: e.to_string() }),
                Err(e) => return Err(e),
            }
        }
    }

    async fn envelope(&mut self, role: &'static str, name: &str) -> Result<Envelope, FetchError> {
        let bytes = self.metadata(name).await?.ok_or_else(|| FetchError::Refused {
            relay: String::new(),
            status: 404,
            code: "not_found".into(),
            message: format!("the repository has no {name}"),
        })?;
        Ok(Envelope::parse(role, &bytes)?)
    }

    /// Brings the trusted metadata up to date (newer roots one by one, then
    /// timestamp, snapshot, targets) and saves it. A refusal leaves the
    /// trusted copy as it was, and is counted and audited.
    pub async fn update(&mut self) -> Result<Trusted, FetchError> {
        let s = self.settings()?;
        let mut trusted = store::load(&s).inspect_err(|e| self.refused(e))?;
        let mut roots = Vec::new();
        let mut next = trusted.root().common.version + 1;
        while roots.len() < 64 {
            match self.metadata(&format!("{next}.root.json")).await? {
                Some(b) => roots.push(Envelope::parse("root", &b)?),
                None => break,
            }
            next += 1;
        }
        let fetched = Fetched {
            roots,
            timestamp: self.envelope("timestamp", "timestamp.json").await?,
            snapshot: self.envelope("snapshot", "snapshot.json").await?,
            targets: self.envelope("targets", "targets.json").await?,
        };
        let before = trusted.targets().map(|t| t.common.version);
        trusted.update(fetched, crate::util::now_secs()).inspect_err(|e| self.refused(e))?;
        store::save(&s, &trusted)?;
        let after = trusted.targets().map(|t| t.common.version);
        if before != after {
            self.state.audit.record(
                "repo_updated",
                json!({"device": self.state.cfg.device, "root": trusted.root().common.version, "targets": after}),
            );
        }
        Ok(trusted)
    }

    fn refused(&self, e: &RepoError) {
        metrics::AGENT_REPO_REFUSED.with_label_values(&[e.label()]).inc();
        tracing::warn!(error = %e, "repository metadata or artifact refused");
        self.state.audit.record(
            "repo_refused",
            json!({"device": self.state.cfg.device, "reason": e.label(), "detail": e.to_string()}),
        );
    }

    /// Fetches and verifies target `name` (`NAME/VERSION`) after updating
    /// the metadata.
    pub async fn download(&mut self, name: &str) -> Result<Downloaded, FetchError> {
        let s = self.settings()?;
        let trusted = self.update().await?;
        let target = trusted.target(name, s.device_class.as_deref()).inspect_err(|e| self.refused(e))?.clone();
        let started = Instant::now();
        let got = self.artifact(&s, name, &target).await?;
        if got.fetched > 0 {
            self.state.audit.record(
                "artifact_fetched",
                json!({
                    "device": self.state.cfg.device, "target": name, "sha256": got.sha256, "length": got.length,
                    "fetched": got.fetched, "resumes": got.resumes, "ms": started.elapsed().as_millis() as u64,
                }),
            );
        }
        Ok(got)
    }

    async fn artifact(&mut self, s: &RepoSettings, name: &str, t: &Target) -> Result<Downloaded, FetchError> {
        let done = s.state_dir.join("artifacts").join(&t.sha256);
        let mut out = Downloaded {
            name: name.into(),
            path: done.clone(),
            length: t.length,
            sha256: t.sha256.clone(),
            fetched: 0,
            resumes: 0,
            info: t.custom.clone(),
        };
        if std::fs::metadata(&done).is_ok_and(|m| m.len() == t.length) {
            return Ok(out);
        }
        let part_dir = s.state_dir.join("downloads");
        std::fs::create_dir_all(&part_dir)?;
        std::fs::create_dir_all(done.parent().expect("has a parent"))?;
        let part = part_dir.join(format!("{}.part", t.sha256));
        // What an earlier run left: hashed again, and kept only if it is not
        // longer than the signed length.
        let mut hasher = Sha256::new();
        let mut have = 0u64;
        if let Ok(bytes) = std::fs::read(&part) {
            if bytes.len() as u64 <= t.length {
                hasher.update(&bytes);
                have = bytes.len() as u64;
            } else {
                std::fs::remove_file(&part)?;
            }
        }
        // Written as each frame arrives (64 KiB; the page cache takes it at
        // once), so a restart loses at most the frame in flight.
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&part)?;
        let pace = Pace::new(s.max_download_bytes_per_sec);
        let mut breaks = 0;
        let cancel = self.cancel.clone();
        while have < t.length {
            let len = (t.length - have).min(u64::from(MAX_RANGE)) as u32;
            let at = have;
            let mut sink = |total: u64, data: &[u8]| {
                if total != t.length {
                    return Err(FetchError::Repo(RepoError::Target {
                        name: name.into(),
                        detail: format!("the relay offers {total} bytes, the signed length is {}", t.length),
                    }));
                }
                if cancel.is_cancelled() {
                    return Err(FetchError::Canceled);
                }
                file.write_all(data)?;
                hasher.update(data);
                have += data.len() as u64;
                Ok(())
            };
            // Whatever arrives is kept, even from a leg that breaks midway.
            let r = self.request(true, &t.sha256, at, len, &mut sink, &pace).await;
            out.fetched += have - at;
            metrics::AGENT_REPO_BYTES.inc_by(have - at);
            match r {
                Ok(()) => breaks = 0,
                Err(e) if e.retry() && breaks < MAX_BREAKS => {
                    breaks += 1;
                    out.resumes += 1;
                    self.resumes += 1;
                    metrics::AGENT_REPO_RESUMES.inc();
                    tracing::info!(error = %e, target = name, at = have, "download broke; going on through the twin");
                    tokio::time::sleep(pause(breaks)).await;
                }
                Err(e) if e.retry() => return Err(FetchError::GaveUp { breaks, last: e.to_string() }),
                Err(FetchError::Repo(e)) => {
                    self.refused(&e);
                    drop(file);
                    let _ = std::fs::remove_file(&part);
                    return Err(e.into());
                }
                Err(FetchError::Canceled) => {
                    // The leg is mid-answer: start the next request on a new one.
                    self.leg = None;
                    drop(file);
                    let _ = std::fs::remove_file(&part);
                    return Err(FetchError::Canceled);
                }
                Err(e) => return Err(e),
            }
        }
        file.sync_all()?;
        drop(file);
        let sha = hex::encode(hasher.finalize());
        if let Err(e) = check_hash(name, t, &sha) {
            // Tampered or corrupted: nothing of it is kept or used.
            self.refused(&e);
            let _ = std::fs::remove_file(&part);
            return Err(e.into());
        }
        std::fs::rename(&part, &done)?;
        Ok(out)
    }
}

/// The pause before the n-th retry: the first goes at once (to the twin).
fn pause(n: u32) -> Duration {
    if n <= 1 { Duration::ZERO } else { Duration::from_millis(100 << n.min(6)) }
}

/// Keeps a device's downloads under its rate cap: the leg waits after each
/// frame, so the relay's sending is held back by TCP flow control and a
/// download never bursts past the cap.
pub(crate) struct Pace {
    start: Instant,
    rate: u64,
    bytes: std::sync::atomic::AtomicU64,
}

impl Pace {
    fn new(rate: u64) -> Pace {
        Pace { start: Instant::now(), rate, bytes: 0.into() }
    }

    pub(crate) async fn took(&self, n: usize) {
        let total = self.bytes.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed) + n as u64;
        if self.rate == 0 {
            return;
        }
        let due = Duration::from_secs_f64(total as f64 / self.rate as f64);
        if let Some(ahead) = due.checked_sub(self.start.elapsed()) {
            tokio::time::sleep(ahead).await;
        }
    }
}
