//! The audit log as a process writes it. Records are chained as they come;
//! what the disk does not take (full, failing) is held in memory, in order,
//! and written whole with the next record or at the next retry, so the file
//! only ever holds whole records of one unbroken chain. A record cut short
//! by a crash is removed when the log is opened again, and the chain says so.
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::{AuditError, GENESIS, Signer, link_signed, rotated};
use crate::metrics::{AUDIT_HELD, AUDIT_LOST, AUDIT_WRITE_ERRORS};

/// Bytes of records held in memory while the disk refuses them, at most.
/// Past it a record is only counted as lost, and once the disk takes records
/// again an `audit_records_lost` record says how many and when.
pub const MAX_HELD: usize = 4 << 20;
/// How often held records are tried again while no new record comes.
const RETRY: Duration = Duration::from_secs(5);

struct Chain {
    file: Option<File>,
    seq: u64,
    prev: String,
    signer: Option<Signer>,
    /// Bytes of whole records in the current file, and the size that starts
    /// a new one (0: never).
    size: u64,
    rotate_at: u64,
    /// Records chained and not yet on disk, oldest first; how many they are;
    /// whether the last write failed.
    held: Vec<u8>,
    held_records: u64,
    failing: bool,
    /// Records not chained because `held` was full, and when the first was.
    lost: u64,
    lost_since: String,
}

/// An open audit log. Cheap to share behind an `Arc`.
pub struct AuditLog {
    path: PathBuf,
    chain: Arc<Mutex<Chain>>,
}

/// What opening a log found in its file.
struct Tail {
    seq: u64,
    prev: String,
    /// Bytes up to and including the last newline: the whole records.
    whole: u64,
}

impl Default for Tail {
    /// An empty file: the chain starts at its genesis.
    fn default() -> Self {
        Tail { seq: 0, prev: GENESIS.into(), whole: 0 }
    }
}

/// The last record's link, and where the whole records end (a last line
/// without its newline was cut short while being written).
fn scan(mut r: impl BufRead) -> std::io::Result<Tail> {
    let mut tail = Tail::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok(tail);
        }
        tail.whole += n as u64;
        if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(&line)
            && let (Some(seq), Some(hash)) =
                (m.get("seq").and_then(Value::as_u64), m.get("hash").and_then(Value::as_str))
        {
            (tail.seq, tail.prev) = (seq, hash.to_string());
        }
    }
}

impl Chain {
    /// A chain going on after (`seq`, `prev`) in a file of `size` bytes of whole records.
    fn new(file: Option<File>, (seq, prev): (u64, String), signer: Option<Signer>, size: u64) -> Chain {
        Chain {
            file,
            seq,
            prev,
            signer,
            size,
            rotate_at: 0,
            held: Vec::new(),
            held_records: 0,
            failing: false,
            lost: 0,
            lost_since: String::new(),
        }
    }

    /// Chains one record and holds it for writing; with `held` full it is
    /// only counted as lost.
    fn push(&mut self, event: &str, fields: Value) {
        if self.held.len() >= MAX_HELD {
            if self.lost == 0 {
                self.lost_since = crate::now_rfc3339();
                tracing::error!(
                    held = self.held_records,
                    "audit records held in memory reached 4 MiB: records are lost until the disk takes them"
                );
            }
            self.lost += 1;
            AUDIT_LOST.inc();
            return;
        }
        self.seq += 1;
        let ts = crate::now_rfc3339();
        let (mut line, hash) = link_signed(self.seq, &self.prev, (&ts, event), fields, self.signer.as_ref());
        line.push('\n');
        self.held.extend_from_slice(line.as_bytes());
        self.held_records += 1;
        self.prev = hash;
    }

    /// Writes what is held. When the disk refuses it, what part of it
    /// reached the file is cut off again and all of it stays held.
    fn write_held(&mut self, path: &Path) {
        while !self.held.is_empty() {
            let Some(f) = self.file.as_mut() else { return };
            if let Err(e) = f.write_all(&self.held) {
                AUDIT_WRITE_ERRORS.inc();
                AUDIT_HELD.set(self.held_records as i64);
                if let Err(cut) = f.set_len(self.size) {
                    tracing::error!(path = %path.display(), error = %cut, "audit log: cannot remove a record written in part");
                }
                if !self.failing {
                    self.failing = true;
                    tracing::error!(path = %path.display(), error = %e, "audit log cannot be written: records are held in memory and written when it can");
                }
                return;
            }
            self.size += self.held.len() as u64;
            if self.failing {
                self.failing = false;
                tracing::info!(path = %path.display(), records = self.held_records, "audit log written again: the held records are on disk");
            }
            self.held.clear();
            if self.held.capacity() > 64 << 10 {
                self.held = Vec::new();
            }
            self.held_records = 0;
            AUDIT_HELD.set(0);
            if self.lost > 0 {
                let (lost, since) = (std::mem::take(&mut self.lost), std::mem::take(&mut self.lost_since));
                self.push("audit_records_lost", json!({"lost": lost, "since": since, "until": crate::now_rfc3339()}));
            }
        }
        if self.rotate_at > 0 && self.size >= self.rotate_at {
            self.rotate(path);
        }
    }

    fn rotate(&mut self, path: &Path) {
        use std::os::unix::fs::OpenOptionsExt;
        let to = PathBuf::from(format!("{}.{:020}", path.display(), self.seq));
        if let Err(e) = std::fs::rename(path, &to) {
            tracing::error!(path = %path.display(), error = %e, "audit rotation failed; going on in the same file");
            return;
        }
        match OpenOptions::new().create(true).append(true).mode(0o600).open(path) {
            Ok(f) => {
                self.file = Some(f);
                self.size = 0;
                tracing::info!(rotated = %to.display(), seq = self.seq, "audit log rotated");
            }
            Err(e) => tracing::error!(path = %path.display(), error = %e, "audit log: cannot start a new file"),
        }
    }
}

impl AuditLog {
    /// Opens (or creates, 0600) the log and continues its chain, signing
    /// each new record with the private key in `key` (the host's TLS key).
    pub fn open_signed(path: &Path, key: &Path) -> Result<AuditLog, AuditError> {
        let signer = Signer::load(key).map_err(|source| AuditError::Key { path: key.into(), source })?;
        AuditLog::open_with(path, Some(signer))
    }

    /// Opens (or creates, 0600) the log and continues its chain, unsigned.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        AuditLog::open_with(path, None)
    }

    fn open_with(path: &Path, signer: Option<Signer>) -> Result<AuditLog, AuditError> {
        use std::os::unix::fs::OpenOptionsExt;
        let io = |source| AuditError::Io { path: path.into(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tail = match File::open(path) {
            Ok(f) => scan(BufReader::new(f)).map_err(io)?,
            Err(_) => Tail::default(),
        };
        let (mut seq, mut prev) = (tail.seq, tail.prev);
        // A file started by a rotation just before a restart: the chain goes
        // on from the last rotated file.
        if seq == 0
            && let Some(last) = rotated(path).pop()
            && let Ok(f) = File::open(&last)
        {
            let t = scan(BufReader::new(f)).map_err(io)?;
            (seq, prev) = (t.seq, t.prev);
        }
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path).map_err(io)?;
        let on_disk = file.metadata().map_err(io)?.len();
        // A record cut short (a crash or a full disk mid-write) was never
        // whole, so it never was part of the chain.
        let cut = on_disk.saturating_sub(tail.whole);
        if cut > 0 {
            file.set_len(tail.whole).map_err(io)?;
            tracing::warn!(path = %path.display(), bytes = cut, "the audit log ended in a record cut short (a crash or a full disk mid-write): removed");
        }
        let chain = Chain::new(Some(file), (seq, prev), signer, tail.whole);
        let log = AuditLog { path: path.into(), chain: Arc::new(Mutex::new(chain)) };
        if cut > 0 {
            log.record("audit_tail_cut", json!({"bytes": cut}));
        }
        log.retry_held();
        Ok(log)
    }

    /// Writes held records every [`RETRY`] while no new record comes (in a
    /// task of the current runtime, if any; it ends with the log).
    fn retry_held(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let (chain, path) = (Arc::downgrade(&self.chain), self.path.clone());
        rt.spawn(async move {
            let mut tick = crate::util::interval_after(RETRY);
            loop {
                tick.tick().await;
                let Some(chain) = chain.upgrade() else { return };
                let mut c = crate::util::lock(&chain);
                if !c.held.is_empty() {
                    c.write_held(&path);
                }
            }
        });
    }

    /// A log that records nothing (for tools that audit elsewhere).
    pub fn disabled() -> AuditLog {
        let chain = Chain::new(None, (0, GENESIS.into()), None, 0);
        AuditLog { path: PathBuf::new(), chain: Arc::new(Mutex::new(chain)) }
    }

    /// Starts a new file once the current one reaches `bytes` (0: never):
    /// the full one is renamed `NAME.SEQ` (its last record's sequence, 20
    /// digits, so names sort in order) and the chain goes on in a new `NAME`.
    pub fn rotating_at(self, bytes: u64) -> AuditLog {
        crate::util::lock(&self.chain).rotate_at = bytes;
        self
    }

    /// Signs a chain head for an anchor (empty without a key).
    pub fn sign_head(&self, hash: &str) -> String {
        crate::util::lock(&self.chain).signer.as_ref().map(|s| s.sign(hash)).unwrap_or_default()
    }

    /// The chain's head: last sequence number and hash (records held in
    /// memory included: a head anchored elsewhere that the file never
    /// reaches shows the records lost with the process).
    pub fn head(&self) -> (u64, String) {
        let c = crate::util::lock(&self.chain);
        (c.seq, c.prev.clone())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A refusal: logs it and appends `fields` with who refused (`by`, a
    /// field name and value) and the reason's label.
    pub fn refusal(&self, event: &str, by: (&str, &str), reason: &str, mut fields: Value) {
        if let Some(m) = fields.as_object_mut() {
            m.insert(by.0.into(), by.1.into());
            m.insert("reason".into(), reason.into());
        }
        tracing::info!(event, reason, "refused");
        self.record(event, fields);
    }

    /// Appends one record: `event` plus `fields` (an object). Never holds payload.
    pub fn record(&self, event: &str, fields: Value) {
        let mut chain = crate::util::lock(&self.chain);
        if chain.file.is_none() {
            return;
        }
        // What is held first: a disk that has room again takes it, and this
        // record is then not lost to a full memory.
        if !chain.held.is_empty() {
            chain.write_held(&self.path);
        }
        chain.push(event, fields);
        chain.write_held(&self.path);
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        let mut c = crate::util::lock(&self.chain);
        c.write_held(&self.path);
        if c.held_records > 0 || c.lost > 0 {
            tracing::error!(path = %self.path.display(), held = c.held_records, lost = c.lost, "audit records that never reached the disk are lost with this process");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log whose disk refuses every write (`/dev/full`) holds its records,
    /// counts those past `MAX_HELD` as lost, and once a disk takes them
    /// writes them whole, followed by the record of the loss: one chain.
    #[test]
    fn records_past_the_held_limit_are_lost_counted_and_told_in_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&p).unwrap();
        log.record("before", json!({}));
        let full = OpenOptions::new().append(true).open("/dev/full").unwrap();
        let good = crate::util::lock(&log.chain).file.replace(full).unwrap();
        let pad = "x".repeat(1000);
        let mut n = 0;
        while crate::util::lock(&log.chain).held_records > 0 || n == 0 {
            log.record("while_full", json!({"n": n, "pad": pad}));
            n += 1;
            if crate::util::lock(&log.chain).lost >= 3 {
                break;
            }
        }
        let held = crate::util::lock(&log.chain).held_records;
        let bytes = crate::util::lock(&log.chain).held.len();
        assert!((MAX_HELD..MAX_HELD + 2000).contains(&bytes), "held up to the limit: {bytes} bytes, {held} records");
        assert_eq!(n, held + 3, "every record past the limit is lost, none dropped silently");
        crate::util::lock(&log.chain).file = Some(good);
        log.record("after", json!({}));
        drop(log);
        let all = crate::audit::read_all(&p);
        assert_eq!(crate::audit::verify(&p).unwrap(), all.len() as u64, "one chain");
        let events: Vec<&str> = all.iter().map(|r| r["event"].as_str().unwrap()).collect();
        assert_eq!(events.iter().filter(|e| **e == "while_full").count() as u64, held);
        assert_eq!(&events[..1], ["before"]);
        assert_eq!(&events[events.len() - 2..], ["audit_records_lost", "after"]);
        assert_eq!(all[all.len() - 2]["lost"], 3);
    }
}
