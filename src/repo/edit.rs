//! What signs: a new repository's root, the publisher's targets (offline
//! key), and the hub's snapshot and timestamp (online keys).
use std::collections::{BTreeMap, BTreeSet};

use super::RepoError;
use super::keys::RepoKey;
use super::meta::{Common, Envelope, PublicKey, RoleKeys, Root, Snapshot, Target, Targets, Timestamp};

pub const DAY: u64 = 86_400;
/// How long each role's metadata stays valid by default.
pub const ROOT_LIFE: u64 = 365 * DAY;
pub const TARGETS_LIFE: u64 = 90 * DAY;
pub const SNAPSHOT_LIFE: u64 = 7 * DAY;
pub const TIMESTAMP_LIFE: u64 = DAY;

/// The keys of each role, and how many of them must sign.
pub struct RootPlan<'a> {
    pub root: (&'a [&'a RepoKey], usize),
    pub targets: (&'a [&'a RepoKey], usize),
    pub snapshot: &'a RepoKey,
    pub timestamp: &'a RepoKey,
}

/// A root of `version`, signed by every root key given (`also`: the previous
/// root's keys when rotating).
pub fn root(plan: &RootPlan<'_>, version: u64, now: u64, also: &[&RepoKey]) -> Envelope {
    let mut keys = BTreeMap::new();
    let mut role = |ks: &[&RepoKey], threshold: usize| {
        let mut ids = BTreeSet::new();
        for k in ks {
            keys.insert(k.id(), PublicKey { keytype: "ed25519".into(), public: k.public() });
            ids.insert(k.id());
        }
        RoleKeys { keyids: ids, threshold }
    };
    let mut roles = BTreeMap::new();
    roles.insert("root".to_string(), role(plan.root.0, plan.root.1));
    roles.insert("targets".to_string(), role(plan.targets.0, plan.targets.1));
    roles.insert("snapshot".to_string(), role(&[plan.snapshot], 1));
    roles.insert("timestamp".to_string(), role(&[plan.timestamp], 1));
    let root = Root { common: Common::new("root", version, now + ROOT_LIFE), keys, roles };
    let mut signers: Vec<&RepoKey> = plan.root.0.to_vec();
    signers.extend(also.iter().filter(|k| !plan.root.0.iter().any(|r| r.id() == k.id())));
    Envelope::sign(&root, &signers)
}

/// The publisher's next targets: `current` (if any) with `entry` added or
/// replaced, one version up.
pub fn add_target(current: Option<&Targets>, name: String, entry: Target, now: u64) -> Targets {
    let (version, mut targets) = match current {
        Some(t) => (t.common.version + 1, t.targets.clone()),
        None => (1, BTreeMap::new()),
    };
    targets.insert(name, entry);
    Targets { common: Common::new("targets", version, now + TARGETS_LIFE), targets }
}

/// The hub's online keys and what they sign.
pub struct Online {
    pub snapshot: RepoKey,
    pub timestamp: RepoKey,
}

impl Online {
    /// A snapshot naming `targets_version`, one version past `prev`.
    pub fn snapshot(&self, prev: Option<&Snapshot>, targets_version: u64, now: u64) -> (Snapshot, Envelope) {
        let version = prev.map_or(1, |p| p.common.version + 1);
        let s = Snapshot { common: Common::new("snapshot", version, now + SNAPSHOT_LIFE), targets_version };
        let env = Envelope::sign(&s, &[&self.snapshot]);
        (s, env)
    }

    /// A timestamp naming `snapshot`, one version past `prev`.
    pub fn timestamp(
        &self,
        prev: Option<&Timestamp>,
        snapshot: (&Snapshot, &Envelope),
        now: u64,
    ) -> (Timestamp, Envelope) {
        let version = prev.map_or(1, |p| p.common.version + 1);
        let t = Timestamp {
            common: Common::new("timestamp", version, now + TIMESTAMP_LIFE),
            snapshot: snapshot.1.reference(snapshot.0.common.version),
        };
        let env = Envelope::sign(&t, &[&self.timestamp]);
        (t, env)
    }
}

/// Checks a publisher's new targets against the root and the current ones:
/// enough targets keys signed, and the version moved forward.
pub fn accept_targets(root: &Root, current: Option<&Targets>, env: &Envelope, now: u64) -> Result<Targets, RepoError> {
    let t: Targets = env.open(root)?;
    if let Some(c) = current
        && t.common.version <= c.common.version
    {
        return Err(RepoError::Rollback { role: "targets", have: c.common.version + 1, got: t.common.version });
    }
    if t.common.expires <= now {
        return Err(RepoError::Expired { role: "targets", expires: t.common.expires, now });
    }
    Ok(t)
}
