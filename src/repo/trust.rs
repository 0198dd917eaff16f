//! A device's trusted metadata, and the update that moves it forward.
//!
//! The order is TUF's client workflow: new roots one version at a time, each
//! signed by the old root's keys and its own; then timestamp, snapshot,
//! targets, each checked against the one before (versions and hashes), the
//! trusted copy (no version goes back) and the clock (nothing expired).
//! An update either passes whole or leaves the trusted state as it was.
use sha2::{Digest, Sha256};

use super::RepoError;
use super::meta::{Common, Envelope, Root, Snapshot, Target, Targets, Timestamp, check_threshold};

/// What a device fetched: newer roots (in order, possibly none) and the
/// current timestamp, snapshot and targets.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Fetched {
    #[serde(default)]
    pub roots: Vec<Envelope>,
    pub timestamp: Envelope,
    pub snapshot: Envelope,
    pub targets: Envelope,
}

/// The last metadata a device trusted.
#[derive(Debug, Clone)]
pub struct Trusted {
    root: Root,
    root_env: Envelope,
    timestamp: Option<(Timestamp, Envelope)>,
    snapshot: Option<(Snapshot, Envelope)>,
    targets: Option<(Targets, Envelope)>,
}

fn fresh(c: &Common, role: &'static str, now: u64) -> Result<(), RepoError> {
    if c.expires <= now {
        return Err(RepoError::Expired { role, expires: c.expires, now });
    }
    Ok(())
}

fn forward(role: &'static str, have: Option<u64>, got: u64) -> Result<(), RepoError> {
    match have {
        Some(have) if got < have => Err(RepoError::Rollback { role, have, got }),
        _ => Ok(()),
    }
}

impl Trusted {
    /// Starts from a root shipped with the device (signed by its own keys).
    pub fn new(root_env: Envelope) -> Result<Trusted, RepoError> {
        let root: Root = root_env.peek()?;
        let rk = root.roles.get("root").ok_or(RepoError::Signatures { role: "root", valid: 0, threshold: 1 })?;
        check_threshold("root", &root_env, &root, rk)?;
        Ok(Trusted { root, root_env, timestamp: None, snapshot: None, targets: None })
    }

    /// Restores saved metadata: every role is checked against the root again
    /// (signatures, not the clock: the next update checks that).
    pub fn restore(root_env: Envelope, ts: Envelope, sn: Envelope, tg: Envelope) -> Result<Trusted, RepoError> {
        let mut t = Trusted::new(root_env)?;
        t.timestamp = Some((ts.open(&t.root)?, ts));
        t.snapshot = Some((sn.open(&t.root)?, sn));
        t.targets = Some((tg.open(&t.root)?, tg));
        Ok(t)
    }

    pub fn root(&self) -> &Root {
        &self.root
    }

    /// The envelopes to save: root, and timestamp, snapshot, targets once known.
    pub fn envelopes(&self) -> (&Envelope, Option<(&Envelope, &Envelope, &Envelope)>) {
        let rest = match (&self.timestamp, &self.snapshot, &self.targets) {
            (Some(a), Some(b), Some(c)) => Some((&a.1, &b.1, &c.1)),
            _ => None,
        };
        (&self.root_env, rest)
    }

    pub fn targets(&self) -> Option<&Targets> {
        self.targets.as_ref().map(|t| &t.0)
    }

    /// Moves to `f` if every check passes; otherwise nothing changes.
    pub fn update(&mut self, f: Fetched, now: u64) -> Result<(), RepoError> {
        let mut next = self.clone();
        next.rotate_roots(&f.roots)?;
        fresh(&next.root.common, "root", now)?;
        let root = &next.root;

        let ts: Timestamp = f.timestamp.open(root)?;
        forward("timestamp", next.timestamp.as_ref().map(|t| t.0.common.version), ts.common.version)?;
        forward("snapshot", next.timestamp.as_ref().map(|t| t.0.snapshot.version), ts.snapshot.version)?;
        fresh(&ts.common, "timestamp", now)?;

        let want = f.snapshot.reference(ts.snapshot.version);
        if want.sha256 != ts.snapshot.sha256 || want.length != ts.snapshot.length {
            return Err(RepoError::Mismatch {
                role: "snapshot",
                detail: "not the snapshot the timestamp names".into(),
            });
        }
        let sn: Snapshot = f.snapshot.open(root)?;
        if sn.common.version != ts.snapshot.version {
            return Err(RepoError::Mismatch {
                role: "snapshot",
                detail: format!("version {} but the timestamp names {}", sn.common.version, ts.snapshot.version),
            });
        }
        forward("snapshot", next.snapshot.as_ref().map(|s| s.0.common.version), sn.common.version)?;
        forward("targets", next.snapshot.as_ref().map(|s| s.0.targets_version), sn.targets_version)?;
        fresh(&sn.common, "snapshot", now)?;

        let tg: Targets = f.targets.open(root)?;
        if tg.common.version != sn.targets_version {
            return Err(RepoError::Mismatch {
                role: "targets",
                detail: format!("version {} but the snapshot names {}", tg.common.version, sn.targets_version),
            });
        }
        forward("targets", next.targets.as_ref().map(|t| t.0.common.version), tg.common.version)?;
        fresh(&tg.common, "targets", now)?;

        next.timestamp = Some((ts, f.timestamp));
        next.snapshot = Some((sn, f.snapshot));
        next.targets = Some((tg, f.targets));
        *self = next;
        Ok(())
    }

    /// Each new root is the next version, signed by the trusted root's keys
    /// and by its own. Keys of a role that changed drop that role's trusted
    /// copy (recovery from a fast-forward attack, as TUF says).
    fn rotate_roots(&mut self, roots: &[Envelope]) -> Result<(), RepoError> {
        for env in roots {
            let new = check_next_root(&self.root, env)?;
            if self.root.roles.get("timestamp") != new.roles.get("timestamp") {
                self.timestamp = None;
            }
            if self.root.roles.get("snapshot") != new.roles.get("snapshot") {
                self.snapshot = None;
                self.timestamp = None;
            }
            self.root = new;
            self.root_env = env.clone();
        }
        Ok(())
    }

    /// The trusted entry `name` (`NAME/VERSION`), for a device of `class`.
    pub fn target(&self, name: &str, class: Option<&str>) -> Result<&Target, RepoError> {
        let t =
            self.targets().and_then(|t| t.targets.get(name)).ok_or_else(|| RepoError::UnknownTarget(name.into()))?;
        if let (Some(want), Some(have)) = (&t.custom.device_class, class)
            && want != have
        {
            return Err(RepoError::Target {
                name: name.into(),
                detail: format!("built for device class {want}, this device is {have}"),
            });
        }
        if t.custom.device_class.is_some() && class.is_none() {
            return Err(RepoError::Target {
                name: name.into(),
                detail: "built for a device class; this device names none".into(),
            });
        }
        Ok(t)
    }
}

/// `env` is the root after `old`: the next version, signed by enough of
/// `old`'s root keys and of its own.
pub fn check_next_root(old: &Root, env: &Envelope) -> Result<Root, RepoError> {
    let new: Root = env.peek()?;
    if new.common.version != old.common.version + 1 {
        return Err(RepoError::Rollback { role: "root", have: old.common.version, got: new.common.version });
    }
    let none = RepoError::Signatures { role: "root", valid: 0, threshold: 1 };
    check_threshold("root", env, old, old.roles.get("root").ok_or(none.clone())?)?;
    check_threshold("root", env, &new, new.roles.get("root").ok_or(none)?)?;
    Ok(new)
}

/// Checks an artifact's bytes against its trusted entry.
pub fn check_artifact(name: &str, target: &Target, bytes: &[u8]) -> Result<(), RepoError> {
    if bytes.len() as u64 != target.length {
        return Err(RepoError::Target {
            name: name.into(),
            detail: format!("{} bytes, the signed length is {}", bytes.len(), target.length),
        });
    }
    check_hash(name, target, &hex::encode(Sha256::digest(bytes)))
}

/// Checks a hash computed while streaming against its trusted entry.
pub fn check_hash(name: &str, target: &Target, sha256: &str) -> Result<(), RepoError> {
    if !crate::util::ct_eq(sha256.as_bytes(), target.sha256.as_bytes()) {
        return Err(RepoError::Target {
            name: name.into(),
            detail: "SHA-256 differs from the signed one (tampered)".into(),
        });
    }
    Ok(())
}
