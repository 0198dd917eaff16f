//! Frame type bytes on the wire, and the largest body each type may have.
use super::MAX_FRAME;

pub(super) const HELLO: u8 = 1;
pub(super) const WELCOME: u8 = 2;
pub(super) const HEARTBEAT: u8 = 3;
pub(super) const ACCESS_REQUEST: u8 = 4;
pub(super) const DECISION: u8 = 5;
pub(super) const OPEN: u8 = 6;
pub(super) const OPEN_FAILED: u8 = 7;
pub(super) const SESSION_END: u8 = 8;
pub(super) const ERROR: u8 = 9;
pub(super) const CLIENT_OPEN: u8 = 10;
pub(super) const SESSION_READY: u8 = 11;
pub(super) const CLIENT_JOIN: u8 = 12;
pub(super) const DATA_OPEN: u8 = 13;
pub(super) const PAIRED: u8 = 14;
pub(super) const CLIENT_RESUME: u8 = 15;
pub(super) const RESUMED: u8 = 16;
pub(super) const TWIN_HELLO: u8 = 20;
pub(super) const TWIN_SNAPSHOT: u8 = 21;
pub(super) const TWIN_SNAPSHOT_END: u8 = 22;
pub(super) const TWIN_FACT: u8 = 23;
pub(super) const TWIN_ACK: u8 = 24;
pub(super) const TWIN_OPEN: u8 = 25;
pub(super) const AUDIT_HEAD: u8 = 26;
pub(super) const REPO_GET: u8 = 27;
pub(super) const REPO_DATA: u8 = 28;
pub(super) const REPO_FAILED: u8 = 29;
pub(super) const JOBS_GET: u8 = 30;
pub(super) const JOB_REPORT: u8 = 31;
pub(super) const JOBS_WAITING: u8 = 32;
pub(super) const UPLOAD_PUT: u8 = 33;
pub(super) const CERT_RENEW: u8 = 34;
pub(super) const WAITING: u8 = 35;

/// The largest body a frame of type `ty` may have. Preambles and small
/// control frames are capped tightly; frames carrying a grant, a list or a
/// replicated fact get room for them.
pub(super) fn max_len(ty: u8) -> usize {
    match ty {
        HEARTBEAT | DECISION | OPEN_FAILED | SESSION_END | PAIRED | RESUMED | TWIN_SNAPSHOT | TWIN_SNAPSHOT_END
        | TWIN_ACK | WAITING => 256,
        REPO_GET | JOBS_GET | JOBS_WAITING | UPLOAD_PUT => 1024,
        REPO_FAILED => 4 * 1024,
        CERT_RENEW => 10 * 1024,
        CLIENT_JOIN | DATA_OPEN | CLIENT_RESUME | OPEN | TWIN_OPEN | SESSION_READY => 1024,
        ERROR | WELCOME | TWIN_HELLO | AUDIT_HEAD => 4 * 1024,
        HELLO | ACCESS_REQUEST | CLIENT_OPEN => 16 * 1024,
        _ => MAX_FRAME,
    }
}
