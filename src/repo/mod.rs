//! The signed software repository: TUF roles, without I/O.
//!
//! - [`keys`]: Ed25519 role keys (ring), key ids, PEM key files.
//! - [`meta`]: the four roles' metadata (root, targets, snapshot, timestamp)
//!   and the signed envelope.
//! - [`edit`]: what signs: the publisher's targets (offline key), the hub's
//!   snapshot and timestamp (online keys), a new repository's root.
//! - [`trust`]: what verifies: a device's last trusted metadata and the
//!   update that refuses rollback, freeze, mix-and-match, keys it does not
//!   trust, and artifacts whose length or hash differ.
//!
//! The roles and checks are TUF's (theupdateframework.io, spec 1.0). The
//! envelope differs: each role's `signed` part travels as the exact JSON text
//! that was signed, so nothing depends on a canonical JSON encoder; this is
//! not byte-compatible with other TUF tools. Why not the `tough` crate: it
//! brings a second cryptography library (aws-lc-rs, a C build) beside ring,
//! about a hundred crates and minutes of build on a two-core CI host, and a
//! URL transport, while our metadata travels inside the relay's channel.
pub mod edit;
pub mod keys;
pub mod meta;
pub mod trust;

/// Why the repository refuses something. Each names its role.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RepoError {
    #[error("{role}: malformed metadata: {detail}")]
    Malformed { role: &'static str, detail: String },
    #[error("{role}: {valid} valid signature(s) from trusted keys, {threshold} needed")]
    Signatures { role: &'static str, valid: usize, threshold: usize },
    #[error("{role}: expired at {expires} (now {now}): a frozen repository is not trusted")]
    Expired { role: &'static str, expires: u64, now: u64 },
    #[error("{role}: version {got} is older than the trusted version {have} (rollback)")]
    Rollback { role: &'static str, have: u64, got: u64 },
    #[error("{role}: {detail} (mix-and-match)")]
    Mismatch { role: &'static str, detail: String },
    #[error("no target {0} in the trusted targets")]
    UnknownTarget(String),
    #[error("target {name}: {detail}")]
    Target { name: String, detail: String },
    #[error("key: {0}")]
    Key(String),
}

impl RepoError {
    /// Label for metrics and audit records.
    pub fn label(&self) -> &'static str {
        match self {
            RepoError::Malformed { .. } => "malformed",
            RepoError::Signatures { .. } => "signatures",
            RepoError::Expired { .. } => "expired",
            RepoError::Rollback { .. } => "rollback",
            RepoError::Mismatch { .. } => "mix_and_match",
            RepoError::UnknownTarget(_) => "unknown_target",
            RepoError::Target { .. } => "target_mismatch",
            RepoError::Key(_) => "key",
        }
    }
}

#[cfg(test)]
mod tests;
