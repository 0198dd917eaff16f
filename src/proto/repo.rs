//! Fleet frames. On a fetch leg an agent asks its relay for repository
//! metadata, a range of an artifact, its jobs, to report a job's state, or
//! to store a range of an upload;
//! the relay forwards to the hub and streams the answer. On the control
//! channel the relay says `JobsWaiting` when the device's jobs changed.
//!
//! A fetch leg is its own TLS connection to the relay's control port (the
//! device's certificate, the agent ALPN) whose first frame is a `Get` instead
//! of a `Hello`, so a download never delays the control channel's heartbeats
//! or access requests. Requests on one leg are answered in order: one or more
//! `Data` frames (`offset` advancing, ending when the requested range or the
//! file is complete), or one `Failed`.
use bytes::{BufMut, Bytes, BytesMut};

use super::frame_type::{CERT_RENEW, JOB_REPORT, JOBS_GET, JOBS_WAITING, REPO_DATA, REPO_FAILED, REPO_GET, UPLOAD_PUT};
use super::wire::*;
use super::{MAX_FRAME, ProtoError};

/// Payload bytes per `Data` frame (the frame stays under [`MAX_FRAME`]).
pub const DATA_CHUNK: usize = MAX_FRAME - 64;
/// The largest range one `Get` may ask for.
pub const MAX_RANGE: u32 = 4 << 20;
/// The most output a job report carries.
pub const MAX_OUTPUT: usize = 32 * 1024;
/// The longest certificate signing request (PEM) a device may send, and
/// the longest certificate (DER) it may send with it.
pub const MAX_CSR: usize = 3 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoFrame {
    /// agent -> relay: metadata file `name` (`timestamp.json`, `2.root.json`,
    /// ...) when `blob` is false; else `len` bytes of the artifact whose hex
    /// SHA-256 is `name`, from `offset`.
    Get { version: u16, blob: bool, name: String, offset: u64, len: u32 },
    /// relay -> agent: bytes at `offset` of a file `total` bytes long.
    Data { offset: u64, total: u64, data: Bytes },
    /// relay -> agent: the request failed. `status` is the hub's HTTP status
    /// (0: the hub was not reached); `code` a stable label.
    Failed { status: u16, code: String, message: String },
    /// agent -> relay on a fetch leg: this device's jobs (answered with
    /// `Data` holding the hub's JSON list).
    JobsGet { version: u16 },
    /// agent -> relay on a fetch leg: job `job` is now `state` (answered
    /// with `Data` holding the job as the hub keeps it); `output`: a check's
    /// output, at most [`MAX_OUTPUT`] bytes.
    JobReport { version: u16, job: String, state: String, reason: String, output: Bytes },
    /// relay -> agent on the control channel: the device's jobs changed;
    /// ask for them.
    JobsWaiting,
    /// agent -> relay on a fetch leg: bytes `offset..offset+len` of upload
    /// job `job`'s archive (`total` bytes, hex SHA-256 `sha256`) follow in
    /// `Data` frames; `len` 0 asks how much the hub already has. Answered
    /// with `Data` holding the hub's JSON progress.
    UploadPut { version: u16, job: String, offset: u64, total: u64, len: u32, sha256: String },
    /// agent -> relay on a fetch leg: a certificate signing request (PEM,
    /// at most [`MAX_CSR`] bytes) for this device's next certificate, made
    /// with a key the device generated and keeps; `cert`, the device's
    /// current certificate (DER), and `proof`, that certificate's key's
    /// signature over the request (so no relay can ask in a device's name).
    /// Answered with `Data` holding the hub's JSON renewal state (and the
    /// certificate once the fleet CA's holder signed it).
    CertRenew { version: u16, csr: Bytes, cert: Bytes, proof: Bytes },
}

impl RepoFrame {
    pub(super) fn encode(&self, buf: &mut BytesMut) {
        match self {
            RepoFrame::Get { version, blob, name, offset, len } => {
                buf.put_u8(REPO_GET);
                buf.put_u16(*version);
                buf.put_u8(u8::from(*blob));
                put_str(buf, name);
                buf.put_u64(*offset);
                buf.put_u32(*len);
            }
            RepoFrame::Data { offset, total, data } => {
                buf.put_u8(REPO_DATA);
                buf.put_u64(*offset);
                buf.put_u64(*total);
                put_bytes(buf, data);
            }
            RepoFrame::Failed { status, code, message } => {
                buf.put_u8(REPO_FAILED);
                buf.put_u16(*status);
                put_str(buf, code);
                put_str(buf, message);
            }
            RepoFrame::JobsGet { version } => {
                buf.put_u8(JOBS_GET);
                buf.put_u16(*version);
            }
            RepoFrame::JobReport { version, job, state, reason, output } => {
                buf.put_u8(JOB_REPORT);
                buf.put_u16(*version);
                put_str(buf, job);
                put_str(buf, state);
                put_str(buf, reason);
                put_bytes(buf, &output[..output.len().min(MAX_OUTPUT)]);
            }
            RepoFrame::JobsWaiting => buf.put_u8(JOBS_WAITING),
            RepoFrame::UploadPut { version, job, offset, total, len, sha256 } => {
                buf.put_u8(UPLOAD_PUT);
                buf.put_u16(*version);
                put_str(buf, job);
                buf.put_u64(*offset);
                buf.put_u64(*total);
                buf.put_u32(*len);
                put_str(buf, sha256);
            }
            RepoFrame::CertRenew { version, csr, cert, proof } => {
                buf.put_u8(CERT_RENEW);
                buf.put_u16(*version);
                for b in [csr, cert, proof] {
                    put_bytes(buf, &b[..b.len().min(MAX_CSR)]);
                }
            }
        }
    }

    pub(super) fn decode(ty: u8, b: &mut Bytes) -> Result<RepoFrame, ProtoError> {
        Ok(match ty {
            REPO_GET => RepoFrame::Get {
                version: get_u16(b)?,
                blob: match get_u8(b)? {
                    0 => false,
                    1 => true,
                    v => return Err(ProtoError::BadValue { field: "blob", value: v.into() }),
                },
                name: get_str(b)?,
                offset: get_u64(b)?,
                len: get_u32(b)?,
            },
            REPO_DATA => RepoFrame::Data { offset: get_u64(b)?, total: get_u64(b)?, data: get_bytes(b, DATA_CHUNK)? },
            REPO_FAILED => RepoFrame::Failed { status: get_u16(b)?, code: get_str(b)?, message: get_str(b)? },
            JOBS_GET => RepoFrame::JobsGet { version: get_u16(b)? },
            JOB_REPORT => RepoFrame::JobReport {
                version: get_u16(b)?,
                job: get_str(b)?,
                state: get_str(b)?,
                reason: get_str(b)?,
                output: get_bytes(b, MAX_OUTPUT)?,
            },
            UPLOAD_PUT => RepoFrame::UploadPut {
                version: get_u16(b)?,
                job: get_str(b)?,
                offset: get_u64(b)?,
                total: get_u64(b)?,
                len: get_u32(b)?,
                sha256: get_str(b)?,
            },
            CERT_RENEW => RepoFrame::CertRenew {
                version: get_u16(b)?,
                csr: get_bytes(b, MAX_CSR)?,
                cert: get_bytes(b, MAX_CSR)?,
                proof: get_bytes(b, MAX_CSR)?,
            },
            _ => RepoFrame::JobsWaiting,
        })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            RepoFrame::Get { .. } => "repo_get",
            RepoFrame::Data { .. } => "repo_data",
            RepoFrame::Failed { .. } => "repo_failed",
            RepoFrame::JobsGet { .. } => "jobs_get",
            RepoFrame::JobReport { .. } => "job_report",
            RepoFrame::JobsWaiting => "jobs_waiting",
            RepoFrame::UploadPut { .. } => "upload_put",
            RepoFrame::CertRenew { .. } => "cert_renew",
        }
    }
}

/// True for the metadata names a fetch leg may ask for.
pub fn metadata_name_ok(name: &str) -> bool {
    match name {
        "root.json" | "timestamp.json" | "snapshot.json" | "targets.json" => true,
        other => other
            .strip_suffix(".root.json")
            .is_some_and(|n| !n.is_empty() && n.len() <= 10 && n.bytes().all(|c| c.is_ascii_digit())),
    }
}

/// True for a lowercase hex SHA-256.
pub fn sha256_name_ok(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}
