//! Device uploads: a relay stores ranges of an upload job's archive for its
//! device (`POST /api/v1/device/D/uploads/JOB`), and a specialist entitled to
//! the device's site fetches it (`GET /api/v1/jobs/JOB/upload`).
//!
//! An upload arrives as `JOB.part` in `[uploads] dir`, range by range; a
//! range may start anywhere up to what arrived (a resend after a break
//! overwrites from there). When the last byte arrives the whole file is
//! checked against the SHA-256 the device named and becomes `JOB.tar`, or is
//! deleted. Content is never logged.
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;

use dashmap::DashMap;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;

use super::Hub;
use super::guard::{authenticate, internal, read_body, relay_identity};
use super::http::{self, Answer, ApiError, Peer, json_answer};
use super::repo_api::{MAX_CHUNK, bytes_answer};
use crate::api::{JobKind, JobState, Route, UploadProgress};
use crate::proto::repo::MAX_RANGE;

/// One writer per job at a time (the twin relays may both forward a range
/// of the same upload after a failover).
#[derive(Default)]
pub struct Writing(DashMap<String, Arc<tokio::sync::Mutex<()>>>);

pub async fn handle(hub: &Hub, route: Route<'_>, req: Request<Incoming>, peer: &Peer) -> Result<Answer, ApiError> {
    match route {
        Route::DeviceUpload(device, id) => {
            let relay = relay_identity(hub, peer).await?;
            let q = |name| http::query(&req, name).map(str::to_string);
            let (offset, total, sha) = (q("offset"), q("total"), q("sha256").unwrap_or_default());
            let offset = offset.and_then(|v| v.parse::<u64>().ok());
            let total = total.and_then(|v| v.parse::<u64>().ok());
            let (Some(offset), Some(total)) = (offset, total) else {
                return Err(ApiError::new(StatusCode::BAD_REQUEST, "bad_range", "offset and total are required"));
            };
            let body = read_body(hub, req, MAX_RANGE as usize, peer).await?;
            let put = Put { device, id, relay: &relay, offset, total, sha: &sha };
            Ok(json_answer(StatusCode::OK, &store(hub, put, &body).await?))
        }
        Route::JobUpload(id) => {
            let user = authenticate(hub, &req, peer).await?;
            let job = super::guard::entitled_job(hub, &user, peer, id, "upload_get").await?;
            let offset = http::query(&req, "offset").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let len = http::query(&req, "len").and_then(|v| v.parse::<usize>().ok()).unwrap_or(MAX_CHUNK);
            let path = dir(hub)?.join(format!("{id}.tar"));
            let (total, bytes) = match crate::util::read_range(&path, offset, len.min(MAX_CHUNK)) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let msg = format!("job {id} has no complete upload (it is {})", job.state.as_str());
                    return Err(ApiError::new(StatusCode::NOT_FOUND, "no_upload", msg));
                }
                Err(e) => return Err(internal(e)),
            };
            if offset == 0 {
                hub.audit.record("upload_fetched", json!({"job": id, "device": job.device, "by": user.name})).await;
            }
            let sha = std::fs::read_to_string(dir(hub)?.join(format!("{id}.sha256"))).unwrap_or_default();
            let mut a = bytes_answer(bytes.into(), "application/x-tar");
            for (name, value) in [("x-total-length", total.to_string()), ("x-sha256", sha.trim().to_string())] {
                if let Ok(v) = hyper::header::HeaderValue::from_str(&value) {
                    a.headers_mut().insert(name, v);
                }
            }
            Ok(a)
        }
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such uploads route")),
    }
}

/// Removes what arrived of job `id`'s unfinished upload (it was cancelled
/// or timed out).
pub fn discard(hub: &Hub, id: &str) {
    hub.uploads.0.remove(id);
    if let Some(u) = &hub.cfg.uploads {
        let _ = std::fs::remove_file(u.dir.join(format!("{id}.part")));
    }
}

/// True when job `id`'s upload arrived whole.
pub fn complete(hub: &Hub, id: &str) -> bool {
    hub.cfg.uploads.as_ref().is_some_and(|u| u.dir.join(format!("{id}.tar")).exists())
}

fn dir(hub: &Hub) -> Result<PathBuf, ApiError> {
    hub.cfg.uploads.as_ref().map(|u| u.dir.clone()).ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_uploads", "this hub has no [uploads] configured")
    })
}

/// One range a relay forwards.
struct Put<'a> {
    device: &'a str,
    id: &'a str,
    relay: &'a str,
    offset: u64,
    total: u64,
    sha: &'a str,
}

async fn store(hub: &Hub, put: Put<'_>, body: &[u8]) -> Result<UploadProgress, ApiError> {
    let Put { device, id, offset, total, sha, .. } = put;
    let none = || ApiError::new(StatusCode::NOT_FOUND, "no_job", format!("no upload job {id} for device {device}"));
    let job = hub.store.job(id).await.map_err(internal)?.filter(|j| j.device == device).ok_or_else(none)?;
    if job.kind != JobKind::Upload {
        return Err(none());
    }
    let dir = dir(hub)?;
    let done = dir.join(format!("{id}.tar"));
    if let Ok(m) = std::fs::metadata(&done) {
        return Ok(UploadProgress { received: m.len(), total: m.len(), complete: true });
    }
    if job.state != JobState::InProgress {
        let msg = format!("job {id} is {}; it takes no upload", job.state.as_str());
        return Err(refuse(hub, &put, "job_not_running", msg).await);
    }
    let max = hub.cfg.uploads.as_ref().map_or(0, |u| u.max_bytes);
    if total > max {
        return Err(refuse(hub, &put, "upload_too_large", format!("{total} bytes; this hub takes at most {max}")).await);
    }
    if !crate::proto::repo::sha256_name_ok(sha) || offset + body.len() as u64 > total {
        return Err(refuse(hub, &put, "bad_range", "a range within the total, and the file's hex SHA-256".into()).await);
    }
    let lock = hub.uploads.0.entry(id.to_string()).or_default().clone();
    let _turn = lock.lock().await;
    let part = dir.join(format!("{id}.part"));
    let (p, data) = (part.clone(), body.to_vec());
    let written = tokio::task::spawn_blocking(move || write_at(&p, offset, &data)).await.map_err(internal)?;
    let received = match written {
        Ok(n) => n,
        Err(WriteError::Gap(have)) => {
            return Err(refuse(hub, &put, "upload_gap", format!("bytes at {offset}; the hub has {have}")).await);
        }
        Err(WriteError::Io(e)) => return Err(internal(e)),
    };
    if received < total {
        return Ok(UploadProgress { received, total, complete: false });
    }
    let p = part.clone();
    let (_, got) =
        tokio::task::spawn_blocking(move || crate::util::sha256_file(&p)).await.map_err(internal)?.map_err(internal)?;
    hub.uploads.0.remove(id);
    if got != sha {
        let _ = std::fs::remove_file(&part);
        let why = format!("the upload's SHA-256 is {got}, not {sha}; it is discarded and must be sent again");
        return Err(refuse(hub, &put, "upload_corrupt", why).await);
    }
    std::fs::write(dir.join(format!("{id}.sha256")), sha).map_err(internal)?;
    std::fs::rename(&part, &done).map_err(internal)?;
    crate::metrics::HUB_UPLOAD_BYTES.inc_by(total);
    hub.audit
        .record(
            "upload_stored",
            json!({"job": id, "device": device, "relay": put.relay, "bytes": total, "sha256": sha}),
        )
        .await;
    Ok(UploadProgress { received: total, total, complete: true })
}

async fn refuse(hub: &Hub, put: &Put<'_>, code: &'static str, detail: String) -> ApiError {
    hub.refused(
        "upload_refused",
        code,
        json!({"job": put.id, "device": put.device, "relay": put.relay, "detail": detail}),
    )
    .await;
    let status = match code {
        "upload_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "job_not_running" | "upload_gap" => StatusCode::CONFLICT,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, code, detail)
}

enum WriteError {
    /// The range starts past what arrived (the hub has this many bytes).
    Gap(u64),
    Io(std::io::Error),
}

/// Writes `data` at `offset` of `part` (cutting anything after it), flushed
/// to disk; the bytes the file then holds.
fn write_at(part: &std::path::Path, offset: u64, data: &[u8]) -> Result<u64, WriteError> {
    let mut f =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(part).map_err(WriteError::Io)?;
    let have = f.metadata().map_err(WriteError::Io)?.len();
    if offset > have {
        return Err(WriteError::Gap(have));
    }
    if data.is_empty() {
        return Ok(have);
    }
    f.set_len(offset).map_err(WriteError::Io)?;
    f.seek(SeekFrom::Start(offset)).map_err(WriteError::Io)?;
    f.write_all(data).map_err(WriteError::Io)?;
    f.sync_data().map_err(WriteError::Io)?;
    Ok(offset + data.len() as u64)
}
