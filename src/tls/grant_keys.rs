//! The grant-verifying keys of a relay or an agent, kept in force from their
//! file. A rollover of the hub's grant key: add the new public key to the
//! file beside the old one on every relay and agent, switch the hub's
//! `grant_signing_key`, then remove the old key. Each process re-reads the
//! file with its CRLs (SIGHUP, and every 30 s); a file it cannot read keeps
//! the keys in force and says so.
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};

use super::TlsError;
use crate::proto::GrantVerifier;

/// Every verifier loaded in this process, with its file.
static ALL: LazyLock<Mutex<Vec<(PathBuf, GrantVerifier)>>> = LazyLock::new(Default::default);

/// The grant-verifying public keys in `path`: one per line (64 hex
/// digits), blank lines and `#` comments allowed, at least one.
pub fn read_grant_keys(path: &Path) -> Result<Vec<[u8; 32]>, TlsError> {
    let text = super::pki::read_string(path)?;
    let bad = |what: &str| TlsError::GrantKey(format!("{}: {what}", path.display()));
    let mut keys = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let raw = hex::decode(line).map_err(|_| bad("a line that is not hex"))?;
        keys.push(raw.try_into().map_err(|_| bad("a line that is not a 32-byte Ed25519 key"))?);
    }
    if keys.is_empty() {
        return Err(bad("no key"));
    }
    Ok(keys)
}

/// Reads the grant-verifying keys of `path` (one key, or the old and the
/// new one during a rollover) and keeps them in force from the file
/// (reloaded with the CRLs: SIGHUP and every 30 s).
pub fn load_grant_verifier(path: &Path) -> Result<GrantVerifier, TlsError> {
    let v = GrantVerifier::with_keys(read_grant_keys(path)?);
    crate::metrics::GRANT_KEYS.set(v.key_count() as i64);
    crate::util::lock(&ALL).push((path.into(), v.clone()));
    Ok(v)
}

/// Re-reads every verifier's file; returns how many changed their keys.
pub fn reload_all() -> usize {
    let all = crate::util::lock(&ALL).clone();
    let mut changed = 0;
    for (path, v) in all {
        match read_grant_keys(&path) {
            Ok(keys) => {
                let n = keys.len();
                if v.set_keys(keys) {
                    changed += 1;
                    crate::metrics::GRANT_KEYS.set(n as i64);
                    tracing::info!(path = %path.display(), keys = n, "grant keys reloaded");
                }
            }
            Err(e) => tracing::error!(error = %e, "grant keys cannot be read; the keys in force stay"),
        }
    }
    changed
}
