//! Append-only, hash-chained audit log: one JSON object per line.
//!
//! Each record carries `seq`, `ts`, `prev` (the previous record's hash) and
//! `hash` = SHA-256 over `prev` and the record without `hash` and `sig`. A
//! log that was edited, truncated in the middle or reordered no longer
//! verifies. A host's log is also signed: `sig` is the host key's signature
//! over `hash` ([`sign`]), so an edit followed by re-hashing every later
//! record shows too. Records cut off the end show only against an anchor
//! kept elsewhere (the hub's, see [`verify_against`]).
mod log;
pub mod sign;

pub use log::AuditLog;
pub use sign::{SignError, Signer};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Why the audit log could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("audit log {path}: record {line} is broken: {why}")]
    Broken { path: PathBuf, line: usize, why: String },
    #[error("audit log {path}: {source}")]
    Key { path: PathBuf, source: SignError },
}

/// The `prev` of a chain's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn hash_record(prev: &str, record: &Map<String, Value>) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(serde_json::to_vec(record).unwrap_or_default());
    hex::encode(h.finalize())
}

/// The record after `prev` in a chain: `event` plus `fields` (an object).
/// Returns the JSON line (no newline) and its hash.
pub fn link(seq: u64, prev: &str, ts: &str, event: &str, fields: Value) -> (String, String) {
    link_signed(seq, prev, (ts, event), fields, None)
}

/// [`link`], with `sig` by `signer` when given.
pub fn link_signed(
    seq: u64,
    prev: &str,
    (ts, event): (&str, &str),
    fields: Value,
    signer: Option<&Signer>,
) -> (String, String) {
    let mut rec = match fields {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    // The chain's own keys win over any field of the same name.
    rec.insert("seq".into(), seq.into());
    rec.insert("ts".into(), ts.into());
    rec.insert("event".into(), event.into());
    rec.insert("prev".into(), prev.into());
    rec.remove("hash");
    rec.remove("sig");
    let hash = hash_record(prev, &rec);
    rec.insert("hash".into(), hash.clone().into());
    if let Some(s) = signer {
        rec.insert("sig".into(), s.sign(&hash).into());
    }
    (serde_json::to_string(&rec).unwrap_or_default(), hash)
}

/// The rotated files of the log at `path` (`NAME.SEQ`), oldest first.
pub fn rotated(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|f| f.strip_prefix(name)?.strip_prefix('.'))
                .is_some_and(|seq| seq.len() == 20 && seq.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| dir.join(e.file_name()))
        .collect();
    out.sort();
    out
}

/// Checks every record's chain link; returns the number of records. The
/// error names the first record that is altered, missing or out of order.
pub fn verify(path: &Path) -> Result<u64, AuditError> {
    verify_file(path, None).map(|h| h.0)
}

/// [`verify`], and (with `cert`, DER) every record's signature by that
/// certificate's key. Returns the number of records and the last one's hash.
pub fn verify_file(path: &Path, cert: Option<&[u8]>) -> Result<(u64, String), AuditError> {
    let f = File::open(path).map_err(|source| AuditError::Io { path: path.into(), source })?;
    let mut last = GENESIS.to_string();
    let n = verify_chain(BufReader::new(f), (GENESIS, 0), &mut cert.map(sign::Certs::new), &mut last)
        .map_err(|(line, why)| AuditError::Broken { path: path.into(), line, why })?;
    Ok((n, last))
}

/// [`verify_file`] over files that continue one chain, in order (the
/// rotated files of a log, then the log): one chain from the first record of
/// the first to the last of the last. Returns the records and the last hash.
pub fn verify_files(paths: &[PathBuf], cert: Option<&[u8]>) -> Result<(u64, String), AuditError> {
    let (mut seq, mut prev) = (0, GENESIS.to_string());
    let mut certs = cert.map(sign::Certs::new);
    for path in paths {
        let f = File::open(path).map_err(|source| AuditError::Io { path: path.clone(), source })?;
        let mut last = String::new();
        let n = verify_chain(BufReader::new(f), (&prev, seq), &mut certs, &mut last)
            .map_err(|(line, why)| AuditError::Broken { path: path.clone(), line, why })?;
        (seq, prev) = (seq + n, last);
    }
    Ok((seq, prev))
}

/// Checks a chain read from `r` that continues after (`prev`, `seq`).
/// Errors carry the 1-based line and why.
pub fn verify_lines(r: impl BufRead, prev: &str, seq: u64) -> Result<u64, (usize, String)> {
    verify_chain(r, (prev, seq), &mut None, &mut String::new())
}

fn verify_chain(
    r: impl BufRead,
    (prev, seq): (&str, u64),
    certs: &mut Option<sign::Certs>,
    last: &mut String,
) -> Result<u64, (usize, String)> {
    let mut prev = prev.to_string();
    let mut n = 0;
    for (expected, (i, line)) in (seq + 1..).zip(r.lines().enumerate()) {
        let broken = |why: String| (i + 1, why);
        let line = line.map_err(|_| broken("unreadable".into()))?;
        let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(&line) else {
            return Err(broken("not a JSON object".into()));
        };
        let Some(Value::String(hash)) = m.remove("hash") else {
            return Err(broken("no hash".into()));
        };
        let sig = m.remove("sig");
        let seq = m.get("seq").and_then(Value::as_u64).unwrap_or(0);
        if hash_record(m.get("prev").and_then(Value::as_str).unwrap_or(""), &m) != hash {
            return Err(broken(format!("record seq {seq} was altered (its hash does not match its content)")));
        }
        if seq > expected {
            let missing = if seq == expected + 1 { format!("{expected}") } else { format!("{expected}..{}", seq - 1) };
            return Err(broken(format!("record(s) seq {missing} missing before seq {seq}")));
        }
        if seq < expected {
            return Err(broken(format!("record seq {seq} out of order (expected seq {expected})")));
        }
        if m.get("prev").and_then(Value::as_str) != Some(prev.as_str()) {
            return Err(broken(format!("record seq {seq} does not follow the previous record (prev differs)")));
        }
        if let Some(certs) = certs.as_mut() {
            match sig.as_ref().and_then(Value::as_str) {
                None => return Err(broken(format!("record seq {seq} is not signed"))),
                Some(s) if !certs.check(&hash, s) => {
                    return Err(broken(format!(
                        "record seq {seq}: the signature does not match (the record was changed after it was written, or another key signed it)"
                    )));
                }
                Some(_) => {}
            }
            // The device renewed its certificate: the new one signs from here.
            if m.get("event").and_then(Value::as_str) == Some("cert_renewed") {
                match m.get("cert").and_then(Value::as_str).and_then(|c| hex::decode(c).ok()) {
                    Some(next) => certs.renewed(next),
                    None => return Err(broken(format!("record seq {seq}: a renewal that names no certificate"))),
                }
            }
        }
        prev = hash;
        n += 1;
    }
    *last = prev;
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
            Err(AuditError::Broken { line, why, .. }) => {
                assert_eq!((line, why.contains("seq 2 was altered")), (2, true))
            }
            other => panic!("edit not detected: {other:?}"),
        }
    }

    #[test]
    fn removed_and_reordered_records_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&p).unwrap();
        for i in 0..5 {
            log.record("e", serde_json::json!({"i": i}));
        }
        let lines: Vec<String> = std::fs::read_to_string(&p).unwrap().lines().map(String::from).collect();
        let check = |ls: Vec<&String>| {
            let text = ls.iter().map(|l| format!("{l}\n")).collect::<String>();
            verify_lines(text.as_bytes(), GENESIS, 0)
        };
        assert_eq!(check(lines.iter().collect()), Ok(5));
        let removed = check(vec![&lines[0], &lines[1], &lines[3], &lines[4]]).unwrap_err();
        assert_eq!(removed, (3, "record(s) seq 3 missing before seq 4".to_string()));
        let reordered = check(vec![&lines[0], &lines[2], &lines[1], &lines[3]]).unwrap_err();
        assert_eq!(reordered.0, 2);
        assert!(reordered.1.contains("missing") || reordered.1.contains("order"), "{}", reordered.1);
        let truncated_head = check(vec![&lines[1], &lines[2]]).unwrap_err();
        assert_eq!(truncated_head, (1, "record(s) seq 1 missing before seq 2".to_string()));
    }

    #[test]
    fn a_record_cut_short_by_a_crash_is_removed_at_open_and_the_chain_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        {
            let log = AuditLog::open(&p).unwrap();
            log.record("a", serde_json::json!({}));
            log.record("b", serde_json::json!({}));
        }
        let whole = std::fs::read(&p).unwrap();
        // The third record, cut off mid-write.
        let (third, _) = link(3, "00", "2026-01-01T00:00:00Z", "c", serde_json::json!({}));
        let mut cut = whole.clone();
        cut.extend_from_slice(&third.as_bytes()[..20]);
        std::fs::write(&p, &cut).unwrap();
        assert!(verify(&p).is_err(), "a cut record breaks the file as it is");
        let log = AuditLog::open(&p).unwrap();
        log.record("d", serde_json::json!({}));
        drop(log);
        assert_eq!(verify(&p).unwrap(), 4, "whole records, one chain");
        let all = read_all(&p);
        let events: Vec<&str> = all.iter().map(|r| r["event"].as_str().unwrap()).collect();
        assert_eq!(events, ["a", "b", "audit_tail_cut", "d"]);
        assert_eq!(all[2]["bytes"], 20);
        assert!(std::fs::read(&p).unwrap().starts_with(&whole), "the whole records stay as they were");
    }

    #[test]
    fn a_rotated_log_is_one_chain_across_its_files_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&p).unwrap().rotating_at(600);
        for i in 0..20 {
            log.record("e", serde_json::json!({"i": i, "pad": "x".repeat(40)}));
        }
        let old = rotated(&p);
        assert!(old.len() >= 3, "rotated into {old:?}");
        // A restart right after a rotation (empty current file) goes on.
        while std::fs::metadata(&p).unwrap().len() > 0 {
            log.record("e", serde_json::json!({"pad": "y".repeat(40)}));
        }
        let (seq, _) = log.head();
        drop(log);
        let again = AuditLog::open(&p).unwrap();
        assert_eq!(again.head().0, seq, "the reopened log continues the rotated chain");
        again.record("after_restart", serde_json::json!({}));
        let mut all = rotated(&p);
        all.push(p.clone());
        assert_eq!(verify_files(&all, None).unwrap().0, seq + 1);
        // Alone, a later file names what is missing; without a middle file, the gap.
        match verify_file(&p, None) {
            Err(AuditError::Broken { why, .. }) => assert!(why.contains("missing before"), "{why}"),
            other => panic!("a continuation verified alone: {other:?}"),
        }
        let mut gap = all.clone();
        gap.remove(1);
        assert!(matches!(verify_files(&gap, None), Err(AuditError::Broken { .. })));
        // File names sort in chain order.
        let mut sorted = all[..all.len() - 1].to_vec();
        sorted.sort();
        assert_eq!(sorted, all[..all.len() - 1]);
    }
}
