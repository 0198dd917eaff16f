//! Append-only, hash-chained audit log: one JSON object per line.
//!
//! Each record carries `seq`, `ts`, `prev` (the previous record's hash) and
//! `hash` = SHA-256 over `prev` and the record without `hash`. A log that was
//! edited, truncated in the middle or reordered no longer verifies.
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Why the audit log could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("audit log {path}: record {line} is broken: {why}")]
    Broken { path: PathBuf, line: usize, why: String },
}

struct Chain {
    file: Option<File>,
    seq: u64,
    prev: String,
}

/// An open audit log. Cheap to share behind an `Arc`.
pub struct AuditLog {
    path: PathBuf,
    chain: Mutex<Chain>,
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn hash_record(prev: &str, record: &Map<String, Value>) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(serde_json::to_vec(record).unwrap_or_default());
    hex::encode(h.finalize())
}

impl AuditLog {
    /// Opens (or creates, 0600) the log and continues its chain.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        use std::os::unix::fs::OpenOptionsExt;
        let io = |source| AuditError::Io { path: path.into(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let (seq, prev) = match File::open(path) {
            Ok(f) => last_link(BufReader::new(f)),
            Err(_) => (0, GENESIS.to_string()),
        };
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path).map_err(io)?;
        Ok(AuditLog { path: path.into(), chain: Mutex::new(Chain { file: Some(file), seq, prev }) })
    }

    /// A log that records nothing (for tools that audit elsewhere).
    pub fn disabled() -> AuditLog {
        AuditLog { path: PathBuf::new(), chain: Mutex::new(Chain { file: None, seq: 0, prev: GENESIS.into() }) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record: `event` plus `fields` (an object). Never holds payload.
    pub fn record(&self, event: &str, fields: Value) {
        let mut chain = match self.chain.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        if chain.file.is_none() {
            return;
        }
        let mut rec = Map::new();
        chain.seq += 1;
        rec.insert("seq".into(), chain.seq.into());
        rec.insert("ts".into(), crate::now_rfc3339().into());
        rec.insert("event".into(), event.into());
        if let Value::Object(m) = fields {
            rec.extend(m);
        }
        rec.insert("prev".into(), chain.prev.clone().into());
        let hash = hash_record(&chain.prev, &rec);
        rec.insert("hash".into(), hash.clone().into());
        let mut line = serde_json::to_vec(&rec).unwrap_or_default();
        line.push(b'\n');
        if let Some(f) = chain.file.as_mut()
            && let Err(e) = f.write_all(&line)
        {
            tracing::error!(path = %self.path.display(), error = %e, "audit write failed");
        }
        chain.prev = hash;
    }
}

fn last_link(r: impl BufRead) -> (u64, String) {
    let mut out = (0, GENESIS.to_string());
    for line in r.lines().map_while(Result::ok) {
        if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&line)
            && let (Some(seq), Some(hash)) =
                (m.get("seq").and_then(Value::as_u64), m.get("hash").and_then(Value::as_str))
        {
            out = (seq, hash.to_string());
        }
    }
    out
}

/// Checks every record's chain link; returns the number of records.
pub fn verify(path: &Path) -> Result<u64, AuditError> {
    let f = File::open(path).map_err(|source| AuditError::Io { path: path.into(), source })?;
    let mut prev = GENESIS.to_string();
    let mut n = 0;
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let broken = |why: &str| AuditError::Broken { path: path.into(), line: i + 1, why: why.into() };
        let line = line.map_err(|_| broken("unreadable"))?;
        let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(&line) else {
            return Err(broken("not a JSON object"));
        };
        let Some(Value::String(hash)) = m.remove("hash") else {
            return Err(broken("no hash"));
        };
        if m.get("prev").and_then(Value::as_str) != Some(prev.as_str()) {
            return Err(broken("prev does not match the previous record"));
        }
        if hash_record(&prev, &m) != hash {
            return Err(broken("hash does not match the record"));
        }
        prev = hash;
        n += 1;
    }
    Ok(n)
}

/// Reads every record of a log (tests and tools).
pub fn read_all(path: &Path) -> Vec<Value> {
    let Ok(f) = File::open(path) else { return Vec::new() };
    BufReader::new(f).lines().map_while(Result::ok).filter_map(|l| serde_json::from_str(&l).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_verifies_and_detects_edits() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        {
            let log = AuditLog::open(&p).unwrap();
            log.record("a", serde_json::json!({"device": "d1"}));
            log.record("b", serde_json::json!({"bytes": 5}));
        }
        // Reopening continues the chain.
        AuditLog::open(&p).unwrap().record("c", serde_json::json!({}));
        assert_eq!(verify(&p).unwrap(), 3);
        let text = std::fs::read_to_string(&p).unwrap().replace("\"bytes\":5", "\"bytes\":6");
        std::fs::write(&p, text).unwrap();
        match verify(&p) {
            Err(AuditError::Broken { line, .. }) => assert_eq!(line, 2),
            other => panic!("edit not detected: {other:?}"),
        }
    }
}
