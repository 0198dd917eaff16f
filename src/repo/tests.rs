//! Each attack TUF names, met by the checks in `trust` (docs/fleet.md links here).
use super::RepoError;
use super::edit::{self, Online, RootPlan};
use super::keys::RepoKey;
use super::meta::{Envelope, Snapshot, Target, TargetInfo, Targets, Timestamp};
use super::trust::{Fetched, Trusted, check_artifact};

const NOW: u64 = 1_800_000_000;

struct Repo {
    root_keys: Vec<RepoKey>,
    targets_key: RepoKey,
    online: Online,
    root: Envelope,
    targets: Option<(Targets, Envelope)>,
    snapshot: Option<(Snapshot, Envelope)>,
    timestamp: Option<(Timestamp, Envelope)>,
}

fn entry(bytes: &[u8], class: Option<&str>) -> Target {
    use sha2::Digest;
    Target {
        length: bytes.len() as u64,
        sha256: hex::encode(sha2::Sha256::digest(bytes)),
        custom: TargetInfo {
            name: "tool".into(),
            version: "1".into(),
            install: None,
            health: None,
            min_agent: None,
            device_class: class.map(str::to_string),
            kind: None,
        },
    }
}

impl Repo {
    fn new() -> Repo {
        let root_keys: Vec<RepoKey> = (0..3).map(|_| RepoKey::generate().unwrap()).collect();
        let targets_key = RepoKey::generate().unwrap();
        let online = Online { snapshot: RepoKey::generate().unwrap(), timestamp: RepoKey::generate().unwrap() };
        let rk: Vec<&RepoKey> = root_keys.iter().take(2).collect();
        let root = {
            let all: Vec<&RepoKey> = root_keys.iter().collect();
            let plan = RootPlan {
                root: (&all, 2),
                targets: (&[&targets_key], 1),
                snapshot: &online.snapshot,
                timestamp: &online.timestamp,
            };
            let mut env = edit::root(&plan, 1, NOW, &[]);
            // Only two of the three root keys sign: the threshold.
            env.signatures.retain(|s| rk.iter().any(|k| k.id() == s.keyid));
            env
        };
        Repo { root_keys, targets_key, online, root, targets: None, snapshot: None, timestamp: None }
    }

    /// Publishes `bytes` as `name` (targets signed by `signer`), then the online roles.
    fn publish(&mut self, name: &str, bytes: &[u8], signer: Option<&RepoKey>) -> Fetched {
        let t = edit::add_target(self.targets.as_ref().map(|t| &t.0), name.into(), entry(bytes, None), NOW);
        let env = Envelope::sign(&t, &[signer.unwrap_or(&self.targets_key)]);
        self.targets = Some((t, env));
        self.resign(NOW)
    }

    fn resign(&mut self, now: u64) -> Fetched {
        let tv = self.targets.as_ref().unwrap().0.common.version;
        let sn = self.online.snapshot(self.snapshot.as_ref().map(|s| &s.0), tv, now);
        let ts = self.online.timestamp(self.timestamp.as_ref().map(|t| &t.0), (&sn.0, &sn.1), now);
        self.snapshot = Some(sn);
        self.timestamp = Some(ts);
        self.fetched()
    }

    fn fetched(&self) -> Fetched {
        Fetched {
            roots: vec![],
            timestamp: self.timestamp.as_ref().unwrap().1.clone(),
            snapshot: self.snapshot.as_ref().unwrap().1.clone(),
            targets: self.targets.as_ref().unwrap().1.clone(),
        }
    }

    fn device(&self) -> Trusted {
        Trusted::new(self.root.clone()).unwrap()
    }
}

#[test]
fn a_published_target_is_trusted_and_its_bytes_check() {
    let mut repo = Repo::new();
    let f = repo.publish("tool/1", b"new tool", None);
    let mut dev = repo.device();
    dev.update(f, NOW + 10).unwrap();
    let t = dev.target("tool/1", None).unwrap();
    check_artifact("tool/1", t, b"new tool").unwrap();
}

#[test]
fn an_artifact_with_another_hash_or_length_is_refused() {
    let mut repo = Repo::new();
    let mut dev = repo.device();
    dev.update(repo.publish("tool/1", b"new tool", None), NOW).unwrap();
    let t = dev.target("tool/1", None).unwrap().clone();
    let e = check_artifact("tool/1", &t, b"new tooL").unwrap_err();
    assert!(e.to_string().contains("tampered"), "{e}");
    let e = check_artifact("tool/1", &t, b"new tool!").unwrap_err();
    assert!(e.to_string().contains("signed length"), "{e}");
}

#[test]
fn targets_signed_by_a_key_the_root_does_not_name_are_refused() {
    let mut repo = Repo::new();
    let mut dev = repo.device();
    let stranger = RepoKey::generate().unwrap();
    let before = dev.targets().cloned();
    let e = dev.update(repo.publish("tool/1", b"evil", Some(&stranger)), NOW).unwrap_err();
    assert_eq!(e, RepoError::Signatures { role: "targets", valid: 0, threshold: 1 });
    assert_eq!(dev.targets().cloned(), before, "a refused update changed nothing");
}

#[test]
fn an_expired_timestamp_is_a_freeze_and_refused() {
    let mut repo = Repo::new();
    let f = repo.publish("tool/1", b"x", None);
    let mut dev = repo.device();
    let e = dev.update(f, NOW + edit::TIMESTAMP_LIFE + 1).unwrap_err();
    assert!(matches!(e, RepoError::Expired { role: "timestamp", .. }), "{e}");
}

#[test]
fn replaying_older_metadata_is_a_rollback_and_refused() {
    let mut repo = Repo::new();
    let old = repo.publish("tool/1", b"v1", None);
    let new = repo.publish("tool/2", b"v2", None);
    let mut dev = repo.device();
    dev.update(new, NOW).unwrap();
    let e = dev.update(old, NOW).unwrap_err();
    assert_eq!(e, RepoError::Rollback { role: "timestamp", have: 2, got: 1 });
    assert!(dev.target("tool/2", None).is_ok());
}

#[test]
fn compromised_online_keys_cannot_roll_targets_back() {
    // The hub's online keys sign a fresh snapshot and timestamp over old targets.
    let mut repo = Repo::new();
    repo.publish("tool/1", b"v1", None);
    let old_targets = repo.targets.clone().unwrap();
    let new = repo.publish("tool/2", b"v2", None);
    let mut dev = repo.device();
    dev.update(new, NOW).unwrap();
    repo.targets = Some(old_targets);
    let e = dev.update(repo.resign(NOW), NOW).unwrap_err();
    assert_eq!(e, RepoError::Rollback { role: "targets", have: 2, got: 1 });
}

#[test]
fn mixing_roles_from_different_moments_is_refused() {
    let mut repo = Repo::new();
    let first = repo.publish("tool/1", b"v1", None);
    let second = repo.publish("tool/2", b"v2", None);
    let mut dev = repo.device();
    // The new timestamp with the old snapshot.
    let mixed = Fetched { snapshot: first.snapshot.clone(), ..second.clone() };
    let e = dev.update(mixed, NOW).unwrap_err();
    assert!(matches!(e, RepoError::Mismatch { role: "snapshot", .. }), "{e}");
    // The new timestamp and snapshot with the old targets.
    let mixed = Fetched { targets: first.targets.clone(), ..second.clone() };
    let e = dev.update(mixed, NOW).unwrap_err();
    assert!(matches!(e, RepoError::Mismatch { role: "targets", .. }), "{e}");
    dev.update(second, NOW).unwrap();
}

#[test]
fn a_target_for_another_device_class_is_refused() {
    let mut repo = Repo::new();
    let t = edit::add_target(None, "scan/1".into(), entry(b"s", Some("scanner")), NOW);
    repo.targets = Some((t.clone(), Envelope::sign(&t, &[&repo.targets_key])));
    let mut dev = repo.device();
    dev.update(repo.resign(NOW), NOW).unwrap();
    assert!(dev.target("scan/1", Some("scanner")).is_ok());
    let e = dev.target("scan/1", Some("injector")).unwrap_err();
    assert!(e.to_string().contains("device class scanner"), "{e}");
}

#[test]
fn a_root_needs_its_threshold_and_each_signature_counts_once() {
    let repo = Repo::new();
    let mut one = repo.root.clone();
    one.signatures.truncate(1);
    assert_eq!(Trusted::new(one.clone()).unwrap_err(), RepoError::Signatures { role: "root", valid: 1, threshold: 2 });
    let twice = Envelope { signatures: vec![one.signatures[0].clone(), one.signatures[0].clone()], ..one };
    assert_eq!(Trusted::new(twice).unwrap_err(), RepoError::Signatures { role: "root", valid: 1, threshold: 2 });
}

#[test]
fn a_new_root_needs_the_old_keys_and_its_own_and_comes_in_order() {
    let mut repo = Repo::new();
    let f = repo.publish("tool/1", b"v1", None);
    let mut dev = repo.device();
    dev.update(f, NOW).unwrap();
    let new_keys: Vec<RepoKey> = (0..2).map(|_| RepoKey::generate().unwrap()).collect();
    let nk: Vec<&RepoKey> = new_keys.iter().collect();
    let old: Vec<&RepoKey> = repo.root_keys.iter().take(2).collect();
    let plan = RootPlan {
        root: (&nk, 2),
        targets: (&[&repo.targets_key], 1),
        snapshot: &repo.online.snapshot,
        timestamp: &repo.online.timestamp,
    };
    // Only the new keys: refused (the old root never allowed them).
    let alone = edit::root(&plan, 2, NOW, &[]);
    let e = dev.update(Fetched { roots: vec![alone], ..repo.fetched() }, NOW).unwrap_err();
    assert_eq!(e, RepoError::Signatures { role: "root", valid: 0, threshold: 2 });
    // Skipping a version: refused.
    let skip = edit::root(&plan, 3, NOW, &old);
    let e = dev.update(Fetched { roots: vec![skip], ..repo.fetched() }, NOW).unwrap_err();
    assert!(matches!(e, RepoError::Rollback { role: "root", .. }), "{e}");
    // Old and new keys, next version: trusted.
    let good = edit::root(&plan, 2, NOW, &old);
    dev.update(Fetched { roots: vec![good], ..repo.fetched() }, NOW).unwrap();
    assert_eq!(dev.root().common.version, 2);
}

#[test]
fn saved_metadata_restores_only_with_valid_signatures() {
    let mut repo = Repo::new();
    let f = repo.publish("tool/1", b"v1", None);
    let ok = Trusted::restore(repo.root.clone(), f.timestamp.clone(), f.snapshot.clone(), f.targets.clone());
    assert!(ok.unwrap().target("tool/1", None).is_ok());
    let mut bad = f.targets.clone();
    bad.signed = bad.signed.replace("\"length\":2", "\"length\":3");
    let e = Trusted::restore(repo.root.clone(), f.timestamp, f.snapshot, bad).unwrap_err();
    assert!(matches!(e, RepoError::Signatures { role: "targets", .. }), "{e}");
}
