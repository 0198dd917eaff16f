//! Fetch legs: an agent's requests for repository metadata and artifact
//! ranges, its jobs and reports, its uploads' ranges and its certificate
//! renewal, forwarded to the
//! hub over this relay's mTLS link and answered in `Data` frames. The relay
//! keeps nothing: the agent checks every byte against the signed metadata and
//! the hub checks every upload against its SHA-256, so a relay can delay a
//! transfer but never alter one unnoticed.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use serde_json::json;

use super::state::State;
use crate::leg::Leg;
use crate::metrics;
use crate::proto::repo::{DATA_CHUNK, MAX_RANGE, RepoFrame, metadata_name_ok, sha256_name_ok};
use crate::proto::{Frame, FrameIo, FrameIoError};

/// A fetch leg with no request for this long is closed.
const IDLE: Duration = Duration::from_secs(60);
/// A request waits this long for a forwarding slot before it is answered
/// `busy` (well inside the agent's 5 s stall limit).
const TURN_WAIT: Duration = Duration::from_secs(2);

fn failed(status: u16, code: &str, message: impl Into<String>) -> RepoFrame {
    RepoFrame::Failed { status, code: code.into(), message: message.into() }
}

/// Serves a fetch leg whose first frame was `first`, until the agent closes
/// it or stays idle.
pub async fn serve(state: Arc<State>, mut io: FrameIo<Leg>, peer: SocketAddr, device: String, first: RepoFrame) {
    let mut next = Some(first);
    let mut ahead: Option<Prefetch> = None;
    loop {
        let req = match next.take() {
            Some(r) => r,
            None => match tokio::time::timeout(IDLE, io.read_frame()).await {
                Err(_) | Ok(Err(FrameIoError::Closed)) => return,
                Ok(Ok(Frame::Repo(r))) => r,
                Ok(Ok(other)) => {
                    let why = format!("expected a repository request, got {}", other.kind());
                    return refuse(&state, &mut io, peer, &device, "unexpected_frame", why).await;
                }
                Ok(Err(e)) => return refuse(&state, &mut io, peer, &device, "bad_frame", e.to_string()).await,
            },
        };
        let (offset, call) = match req {
            RepoFrame::Get { blob, name, offset, len, .. } => (offset, Call::Get { blob, name, offset, len }),
            RepoFrame::JobsGet { .. } => (0, Call::Jobs),
            RepoFrame::JobReport { job, state: st, reason, output, .. } => {
                (0, Call::Report { job, state: st, reason, output })
            }
            RepoFrame::UploadPut { job, offset, total, len, sha256, .. } => {
                (0, Call::Upload { job, offset, total, len, sha256, data: Bytes::new() })
            }
            RepoFrame::CertRenew { csr, cert, proof, .. } => (0, Call::Cert { csr, cert, proof }),
            other => {
                let why = format!("expected a request, got {}", other.kind());
                return refuse(&state, &mut io, peer, &device, "unexpected_frame", why).await;
            }
        };
        // The range asked for next was fetched from the hub while the last
        // one was sent: hub and agent links work at once, not in turn.
        let key = match &call {
            Call::Get { blob: true, name, offset, len } => Some((name.clone(), *offset, *len)),
            _ => None,
        };
        let early = match ahead.take() {
            Some(mut p) if key.as_ref() == Some(&p.key) => (&mut p.task).await.ok(),
            _ => None,
        };
        // Held until the answer is sent: a slow agent keeps its slot.
        let (turn, early) = match early {
            Some((permit, r)) => (Some(permit), Some(r)),
            None => (queue_for_turn(&state).await, None),
        };
        let mut call = call;
        if let (Some(_), Call::Upload { offset, len, data, .. }) = (&turn, &mut call) {
            // The range's bytes follow the request; read them whole (at
            // most MAX_RANGE, under the turn) before forwarding.
            match read_range(&mut io, *offset, *len).await {
                Ok(d) => *data = d,
                Err(why) => return refuse(&state, &mut io, peer, &device, "bad_upload", why).await,
            }
        }
        // Busy with an upload's bytes on their way: answer, then close the
        // leg rather than read bytes nobody will forward.
        let unread = turn.is_none() && matches!(call, Call::Upload { len: 1.., .. });
        let answer = match (turn.is_some(), early) {
            (_, Some(r)) => r,
            (true, None) => answer(&state, &device, call).await,
            (false, None) if state.repo.is_none() => {
                Err(failed(0, "no_hub", "this relay has no hub link to fetch from"))
            }
            (false, None) => Err(failed(0, "busy", "the relay is forwarding too many downloads; retry shortly")),
        };
        if let (Some((name, offset, len)), Ok((total, _))) = (key, &answer) {
            ahead = prefetch(&state, &device, name, offset + u64::from(len), len, *total);
        }
        let sent = match answer {
            Ok((total, bytes)) => send_data(&mut io, offset, total, bytes).await,
            Err(f) => {
                if let RepoFrame::Failed { code, message, .. } = &f {
                    metrics::RELAY_REPO_REQUESTS.with_label_values(&[code]).inc();
                    if matches!(code.as_str(), "bad_name" | "bad_range" | "upload_too_large" | "bad_csr") {
                        state.audit.record(
                            "repo_fetch_refused",
                            json!({"relay": state.cfg.name, "device": device, "peer": peer.to_string(), "reason": code, "detail": message}),
                        );
                    }
                }
                io.write_frame(&Frame::Repo(f)).await
            }
        };
        if sent.is_err() || unread {
            return;
        }
        io.shrink();
    }
}

/// A slot to forward one request, waiting up to [`TURN_WAIT`] for one to
/// free (a waiting request holds no buffer); `None`: busy, or no hub link.
async fn queue_for_turn(state: &State) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let slots = state.repo.as_ref()?.waiting.clone();
    tokio::time::timeout(TURN_WAIT, slots.acquire_owned()).await.ok()?.ok()
}

/// The next range of an artifact, asked of the hub before the agent asks.
struct Prefetch {
    key: (String, u64, u32),
    task: tokio::task::JoinHandle<(tokio::sync::OwnedSemaphorePermit, Answer)>,
}

impl Drop for Prefetch {
    /// Not asked for after all (another request came, or the leg closed).
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Answer = Result<(u64, Bytes), RepoFrame>;

/// Starts fetching `len` bytes at `offset` (agents ask for ranges in order,
/// each as long as the last until the end), if there is more and a slot.
fn prefetch(state: &Arc<State>, device: &str, name: String, offset: u64, len: u32, total: u64) -> Option<Prefetch> {
    if offset >= total {
        return None;
    }
    let len = (u64::from(len)).min(total - offset) as u32;
    let permit = state.repo.as_ref()?.waiting.clone().try_acquire_owned().ok()?;
    let (st, dev) = (state.clone(), device.to_string());
    let call = Call::Get { blob: true, name: name.clone(), offset, len };
    let task = tokio::spawn(async move { (permit, answer(&st, &dev, call).await) });
    Some(Prefetch { key: (name, offset, len), task })
}

/// One request on a fetch leg.
enum Call {
    Get { blob: bool, name: String, offset: u64, len: u32 },
    Jobs,
    Report { job: String, state: String, reason: String, output: Bytes },
    Upload { job: String, offset: u64, total: u64, len: u32, sha256: String, data: Bytes },
    Cert { csr: Bytes, cert: Bytes, proof: Bytes },
}

/// Reads `len` bytes of an upload from `Data` frames starting at `offset`.
/// Refused when the range is too long or the frames do not follow on.
async fn read_range(io: &mut FrameIo<Leg>, offset: u64, len: u32) -> Result<Bytes, String> {
    if len > MAX_RANGE {
        return Err(format!("an upload range is at most {MAX_RANGE} bytes"));
    }
    let mut buf = bytes::BytesMut::with_capacity(len as usize);
    while buf.len() < len as usize {
        let at = offset + buf.len() as u64;
        match tokio::time::timeout(IDLE, io.read_frame()).await {
            Err(_) => return Err(format!("no upload data for {IDLE:?}")),
            Ok(Ok(Frame::Repo(RepoFrame::Data { offset: o, data, .. }))) if o == at => {
                if buf.len() + data.len() > len as usize {
                    return Err(format!("more than the {len} bytes announced"));
                }
                buf.extend_from_slice(&data);
            }
            Ok(Ok(Frame::Repo(RepoFrame::Data { offset: o, .. }))) => {
                return Err(format!("upload bytes at {o}, expected {at}"));
            }
            Ok(Ok(other)) => return Err(format!("expected upload data, got {}", other.kind())),
            Ok(Err(e)) => return Err(e.to_string()),
        }
    }
    Ok(buf.freeze())
}

/// The hub's answer to one request: the file's total length and the bytes.
/// The device is the one the leg's certificate names: a device asks and
/// reports only for itself.
async fn answer(state: &State, device: &str, call: Call) -> Answer {
    let Some(fwd) = state.repo.as_ref() else {
        return Err(failed(0, "no_hub", "this relay has no hub link to fetch from"));
    };
    let (method, path, body, blob) = match call {
        Call::Get { blob: true, name, offset, len } => {
            if !sha256_name_ok(&name) {
                return Err(failed(0, "bad_name", "an artifact is named by its lowercase hex SHA-256"));
            }
            if len == 0 || len > MAX_RANGE {
                return Err(failed(0, "bad_range", format!("a range is 1 to {MAX_RANGE} bytes")));
            }
            (Method::GET, format!("/api/v1/repo/blobs/{name}?offset={offset}&len={len}"), None, true)
        }
        Call::Get { name, .. } => {
            if !metadata_name_ok(&name) {
                return Err(failed(0, "bad_name", "not a repository metadata file name"));
            }
            (Method::GET, format!("/api/v1/repo/metadata/{name}"), None, false)
        }
        Call::Jobs => (Method::GET, format!("/api/v1/device/{device}/jobs"), None, false),
        Call::Report { job, state: st, reason, output } => {
            if !job_id_ok(&job) {
                return Err(failed(0, "bad_name", "a job id is letters, digits and '-'"));
            }
            let output = String::from_utf8_lossy(&output);
            let body =
                serde_json::to_vec(&json!({"state": st, "reason": reason, "output": output})).unwrap_or_default();
            (Method::POST, format!("/api/v1/device/{device}/jobs/{job}"), Some(Bytes::from(body)), false)
        }
        Call::Upload { job, offset, total, len, sha256, data } => {
            if !job_id_ok(&job) || !sha256_name_ok(&sha256) {
                return Err(failed(0, "bad_name", "an upload names its job id and the archive's hex SHA-256"));
            }
            if len > MAX_RANGE {
                return Err(failed(0, "bad_range", format!("a range is 0 to {MAX_RANGE} bytes")));
            }
            let path = format!("/api/v1/device/{device}/uploads/{job}?offset={offset}&total={total}&sha256={sha256}");
            metrics::RELAY_UPLOAD_BYTES.inc_by(data.len() as u64);
            (Method::POST, path, Some(data), false)
        }
        Call::Cert { csr, cert, proof } => {
            let Ok(csr) = std::str::from_utf8(&csr) else {
                return Err(failed(0, "bad_csr", "a certificate signing request is PEM text"));
            };
            let request =
                crate::api::CertRenewal { csr: csr.into(), cert: hex::encode(cert), proof: hex::encode(proof) };
            let body = serde_json::to_vec(&request).unwrap_or_default();
            (Method::POST, format!("/api/v1/device/{device}/cert"), Some(Bytes::from(body)), false)
        }
    };
    let got = fwd.hub().exchange(method, &path, None, body, "application/json").await;
    let (status, headers, body) = got.map_err(|e| failed(0, "hub_unreachable", e.to_string()))?;
    // A report on a cancelled job comes back 409 with the job: the device
    // needs it to stop.
    let job_answer =
        status == hyper::StatusCode::CONFLICT && serde_json::from_slice::<crate::api::JobView>(&body).is_ok();
    if !status.is_success() && !job_answer {
        let e = crate::api::HubClientError::from_answer(status, &body);
        let code = e.code().unwrap_or("hub_refused").to_string();
        return Err(failed(status.as_u16(), &code, e.to_string()));
    }
    let total = if blob {
        let header = headers.get("x-total-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        header.ok_or_else(|| failed(status.as_u16(), "bad_answer", "the hub named no total length"))?
    } else {
        body.len() as u64
    };
    tracing::debug!(device, bytes = body.len(), "fleet request forwarded");
    Ok((total, body))
}

fn job_id_ok(job: &str) -> bool {
    !job.is_empty() && job.len() <= 64 && job.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
}

async fn send_data(io: &mut FrameIo<Leg>, offset: u64, total: u64, bytes: Bytes) -> std::io::Result<()> {
    metrics::RELAY_REPO_REQUESTS.with_label_values(&["ok"]).inc();
    let mut at = 0;
    loop {
        let end = (at + DATA_CHUNK).min(bytes.len());
        let data = bytes.slice(at..end);
        io.write_frame(&Frame::Repo(RepoFrame::Data { offset: offset + at as u64, total, data })).await?;
        metrics::RELAY_REPO_BYTES.inc_by((end - at) as u64);
        at = end;
        if at >= bytes.len() {
            return Ok(());
        }
    }
}

async fn refuse(state: &State, io: &mut FrameIo<Leg>, peer: SocketAddr, device: &str, label: &str, detail: String) {
    metrics::RELAY_FRAME_ERRORS.with_label_values(&["fetch", label]).inc();
    state.audit.record(
        "repo_fetch_refused",
        json!({"relay": state.cfg.name, "device": device, "peer": peer.to_string(), "reason": label, "detail": detail}),
    );
    let _ = io.write_frame(&Frame::Error { reason: crate::proto::Reason::BadFrame, message: detail }).await;
}
