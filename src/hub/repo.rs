//! The hub's side of the software repository: content-addressed artifacts on
//! the filesystem, the current metadata, and the online keys that sign the
//! snapshot and timestamp. The targets arrive signed by the publisher (the
//! offline targets key); the hub checks them against the root and never
//! holds that key.
//!
//! Layout under `[repo] dir`: `metadata/root.json` (the newest root),
//! `metadata/N.root.json` (every root, for devices that rotate forward),
//! `metadata/{targets,snapshot,timestamp}.json`, `blobs/sha256/HEX`.
//! Object storage: the blob directory is the only large state and is written
//! once per artifact under its hash; a deployment may mount a bucket there
//! (s3fs, gcsfuse) or sync it, since a blob's name is its content.
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use sha2::{Digest, Sha256};

use crate::repo::RepoError;
use crate::repo::edit::{Online, TIMESTAMP_LIFE, accept_targets};
use crate::repo::keys::RepoKey;
use crate::repo::meta::{Envelope, Root, Snapshot, Targets, Timestamp};

/// Why a repository operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RepoStoreError {
    #[error(transparent)]
    Refused(#[from] RepoError),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("no artifact {0} in the store; upload it first")]
    MissingBlob(String),
}

type Io<T> = Result<T, RepoStoreError>;

fn io<T>(what: &Path, r: std::io::Result<T>) -> Io<T> {
    r.map_err(|e| RepoStoreError::Io(what.display().to_string(), e))
}

#[derive(Default)]
struct Current {
    roots: Vec<(Root, Envelope)>,
    targets: Option<(Targets, Envelope)>,
    snapshot: Option<(Snapshot, Envelope)>,
    timestamp: Option<(Timestamp, Envelope)>,
}

pub struct RepoStore {
    dir: PathBuf,
    online: Online,
    current: RwLock<Current>,
}

/// A valid blob name: 64 lowercase hex digits.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Io<()> {
    let tmp = path.with_extension("tmp");
    io(&tmp, std::fs::write(&tmp, bytes))?;
    io(path, std::fs::rename(&tmp, path))
}

impl RepoStore {
    /// Opens the repository in `dir` (the root must be there) with the online keys.
    pub fn open(dir: &Path, snapshot_key: &Path, timestamp_key: &Path) -> Io<RepoStore> {
        let online = Online { snapshot: RepoKey::load(snapshot_key)?, timestamp: RepoKey::load(timestamp_key)? };
        let meta = dir.join("metadata");
        io(&meta, std::fs::create_dir_all(&meta))?;
        let blobs = dir.join("blobs").join("sha256");
        io(&blobs, std::fs::create_dir_all(&blobs))?;
        let mut roots = Vec::new();
        for n in 1.. {
            let p = meta.join(format!("{n}.root.json"));
            if !p.exists() {
                break;
            }
            let env = Envelope::parse("root", &io(&p, std::fs::read(&p))?)?;
            roots.push((env.peek::<Root>()?, env));
        }
        if roots.is_empty() {
            let p = meta.join("root.json");
            let env = Envelope::parse("root", &io(&p, std::fs::read(&p))?)?;
            let root: Root = env.peek()?;
            write_atomic(&meta.join(format!("{}.root.json", root.common.version)), &env.to_bytes())?;
            roots.push((root, env));
        }
        // The chain must verify from the first root on, as a device would.
        crate::repo::trust::Trusted::new(roots[0].1.clone())?;
        for pair in roots.windows(2) {
            crate::repo::trust::check_next_root(&pair[0].0, &pair[1].1)?;
        }
        let mut cur = Current { roots, ..Current::default() };
        let read = |name: &str| -> Io<Option<Envelope>> {
            let p = meta.join(name);
            if !p.exists() {
                return Ok(None);
            }
            Ok(Some(Envelope::parse("metadata", &io(&p, std::fs::read(&p))?)?))
        };
        let root = &cur.roots.last().expect("one root").0.clone();
        if let (Some(tg), Some(sn), Some(ts)) = (read("targets.json")?, read("snapshot.json")?, read("timestamp.json")?)
        {
            cur.targets = Some((tg.open(root)?, tg));
            cur.snapshot = Some((sn.open(root)?, sn));
            cur.timestamp = Some((ts.open(root)?, ts));
        }
        let store = RepoStore { dir: dir.to_path_buf(), online, current: RwLock::new(cur) };
        Ok(store)
    }

    fn meta_path(&self, name: &str) -> PathBuf {
        self.dir.join("metadata").join(name)
    }

    pub fn blob_path(&self, sha: &str) -> PathBuf {
        self.dir.join("blobs").join("sha256").join(sha)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Current> {
        self.current.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A metadata file by name: `root.json`, `N.root.json`, `targets.json`,
    /// `snapshot.json`, `timestamp.json`.
    pub fn metadata(&self, name: &str) -> Option<Vec<u8>> {
        let cur = self.read();
        let env = match name {
            "root.json" => cur.roots.last().map(|r| &r.1),
            "targets.json" => cur.targets.as_ref().map(|t| &t.1),
            "snapshot.json" => cur.snapshot.as_ref().map(|t| &t.1),
            "timestamp.json" => cur.timestamp.as_ref().map(|t| &t.1),
            other => {
                let n: u64 = other.strip_suffix(".root.json")?.parse().ok()?;
                cur.roots.iter().find(|r| r.0.common.version == n).map(|r| &r.1)
            }
        };
        env.map(Envelope::to_bytes)
    }

    pub fn root(&self) -> Root {
        self.read().roots.last().expect("one root").0.clone()
    }

    pub fn targets(&self) -> Option<Targets> {
        self.read().targets.as_ref().map(|t| t.0.clone())
    }

    /// True when the current targets name `name` (`NAME/VERSION`).
    pub fn has_target(&self, name: &str) -> bool {
        self.read().targets.as_ref().is_some_and(|t| t.0.targets.contains_key(name))
    }

    /// (targets, snapshot, timestamp) versions and the timestamp's expiry.
    pub fn versions(&self) -> (u64, u64, u64, u64) {
        let c = self.read();
        (
            c.targets.as_ref().map_or(0, |t| t.0.common.version),
            c.snapshot.as_ref().map_or(0, |t| t.0.common.version),
            c.timestamp.as_ref().map_or(0, |t| t.0.common.version),
            c.timestamp.as_ref().map_or(0, |t| t.0.common.expires),
        )
    }

    /// Takes a publisher's signed targets: signatures and version checked
    /// against the root and the current targets, every named artifact
    /// present with its length and hash; then a new snapshot and timestamp.
    /// Returns the names added or changed.
    pub fn publish(&self, env: Envelope, now: u64) -> Io<Vec<String>> {
        let mut cur = self.write();
        let root = cur.roots.last().expect("one root").0.clone();
        let t = accept_targets(&root, cur.targets.as_ref().map(|t| &t.0), &env, now)?;
        let mut changed = Vec::new();
        for (name, target) in &t.targets {
            let before = cur.targets.as_ref().and_then(|c| c.0.targets.get(name));
            if before == Some(target) {
                continue;
            }
            let p = self.blob_path(&target.sha256);
            match std::fs::metadata(&p) {
                Ok(m) if m.len() == target.length && is_sha256(&target.sha256) => {}
                _ => return Err(RepoStoreError::MissingBlob(format!("{name} ({})", target.sha256))),
            }
            changed.push(name.clone());
        }
        let (sn, sn_env) = self.online.snapshot(cur.snapshot.as_ref().map(|s| &s.0), t.common.version, now);
        let (ts, ts_env) = self.online.timestamp(cur.timestamp.as_ref().map(|s| &s.0), (&sn, &sn_env), now);
        write_atomic(&self.meta_path("targets.json"), &env.to_bytes())?;
        write_atomic(&self.meta_path("snapshot.json"), &sn_env.to_bytes())?;
        write_atomic(&self.meta_path("timestamp.json"), &ts_env.to_bytes())?;
        cur.targets = Some((t, env));
        cur.snapshot = Some((sn, sn_env));
        cur.timestamp = Some((ts, ts_env));
        Ok(changed)
    }

    /// Signs a new timestamp when the current one has less than half its
    /// life left (devices refuse an expired one as a freeze).
    pub fn refresh_timestamp(&self, now: u64) -> Io<bool> {
        let mut cur = self.write();
        let (Some(ts), Some(sn)) = (&cur.timestamp, &cur.snapshot) else { return Ok(false) };
        if ts.0.common.expires > now + TIMESTAMP_LIFE / 2 {
            return Ok(false);
        }
        let (t, env) = self.online.timestamp(Some(&ts.0), (&sn.0, &sn.1), now);
        write_atomic(&self.meta_path("timestamp.json"), &env.to_bytes())?;
        cur.timestamp = Some((t, env));
        Ok(true)
    }

    /// Up to `len` bytes of blob `sha` from `offset` (a chunk of a download).
    pub fn blob_chunk(&self, sha: &str, offset: u64, len: usize) -> Io<Option<(u64, Vec<u8>)>> {
        if !is_sha256(sha) {
            return Ok(None);
        }
        let p = self.blob_path(sha);
        match crate::util::read_range(&p, offset, len) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            r => io(&p, r).map(Some),
        }
    }
}

/// Writes an upload to the blob store: hashed as it arrives, kept only if
/// its SHA-256 is `sha`. A partial or wrong upload leaves nothing behind.
pub struct BlobWriter {
    tmp: PathBuf,
    dest: PathBuf,
    file: std::fs::File,
    hash: Sha256,
    pub len: u64,
}

impl BlobWriter {
    pub fn start(store: &RepoStore, sha: &str) -> Io<BlobWriter> {
        let dest = store.blob_path(sha);
        let tmp = dest.with_extension(format!("part-{}", hex::encode(crate::util::random_bytes::<6>())));
        let file = io(&tmp, std::fs::File::create(&tmp))?;
        Ok(BlobWriter { tmp, dest, file, hash: Sha256::new(), len: 0 })
    }

    pub fn write(&mut self, chunk: &[u8]) -> Io<()> {
        use std::io::Write;
        self.hash.update(chunk);
        self.len += chunk.len() as u64;
        io(&self.tmp, self.file.write_all(chunk))
    }

    /// Keeps the blob if its hash is `sha`; the hash it had otherwise.
    pub fn finish(self, sha: &str) -> Io<Result<(), String>> {
        let got = hex::encode(self.hash.clone().finalize());
        if got != sha {
            let _ = std::fs::remove_file(&self.tmp);
            return Ok(Err(got));
        }
        io(&self.tmp, self.file.sync_all())?;
        io(&self.dest, std::fs::rename(&self.tmp, &self.dest))?;
        Ok(Ok(()))
    }

    pub fn abandon(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}
