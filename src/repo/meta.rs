//! The four roles' metadata and the signed envelope they travel in.
use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::RepoError;
use super::keys::{RepoKey, verify};

pub const SPEC_VERSION: &str = "1.0.0";

/// What every role's metadata carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Common {
    #[serde(rename = "_type")]
    pub kind: String,
    pub spec_version: String,
    /// Grows by one with each change; never goes back.
    pub version: u64,
    /// Unix seconds; past it the role is not trusted (freeze attack).
    pub expires: u64,
}

impl Common {
    pub fn new(kind: &str, version: u64, expires: u64) -> Common {
        Common { kind: kind.into(), spec_version: SPEC_VERSION.into(), version, expires }
    }
}

/// A role of the repository.
pub trait Role: Serialize + DeserializeOwned {
    const NAME: &'static str;
    fn common(&self) -> &Common;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    pub keytype: String,
    /// Hex of the 32-byte Ed25519 public key.
    pub public: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    pub keyids: BTreeSet<String>,
    pub threshold: usize,
}

/// Which keys may sign which role, and how many must.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    #[serde(flatten)]
    pub common: Common,
    pub keys: BTreeMap<String, PublicKey>,
    pub roles: BTreeMap<String, RoleKeys>,
}

/// What a target is and how it installs (signed with it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetInfo {
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_agent: Option<String>,
    /// Only devices of this class install it; none: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_class: Option<String>,
    /// `agent`: the artifact is the agent's own binary (a self-update);
    /// none: an ordinary package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub length: u64,
    /// Hex SHA-256 of the artifact; also its name in the content-addressed store.
    pub sha256: String,
    pub custom: TargetInfo,
}

/// The artifacts, by `NAME/VERSION`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targets {
    #[serde(flatten)]
    pub common: Common,
    pub targets: BTreeMap<String, Target>,
}

/// Pins the targets version (no mixing of a new snapshot with old targets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    #[serde(flatten)]
    pub common: Common,
    pub targets_version: u64,
}

/// A reference to another role's signed text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaRef {
    pub version: u64,
    pub length: u64,
    pub sha256: String,
}

/// Pins the snapshot, short-lived: a device that stops seeing fresh
/// timestamps knows it is being kept from updates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    #[serde(flatten)]
    pub common: Common,
    pub snapshot: MetaRef,
}

macro_rules! role {
    ($t:ty, $name:literal) => {
        impl Role for $t {
            const NAME: &'static str = $name;
            fn common(&self) -> &Common {
                &self.common
            }
        }
    };
}
role!(Root, "root");
role!(Targets, "targets");
role!(Snapshot, "snapshot");
role!(Timestamp, "timestamp");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub keyid: String,
    pub sig: String,
}

/// A role's metadata as it travels and is stored: the exact JSON text that
/// was signed, and the signatures over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub signed: String,
    pub signatures: Vec<Signature>,
}

impl Envelope {
    /// Signs `role` with each of `keys`.
    pub fn sign<T: Role>(role: &T, keys: &[&RepoKey]) -> Envelope {
        let signed = serde_json::to_string(role).expect("metadata serialises");
        let signatures = keys.iter().map(|k| Signature { keyid: k.id(), sig: k.sign(signed.as_bytes()) }).collect();
        Envelope { signed, signatures }
    }

    pub fn parse(role: &'static str, bytes: &[u8]) -> Result<Envelope, RepoError> {
        serde_json::from_slice(bytes).map_err(|e| RepoError::Malformed { role, detail: e.to_string() })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("envelope serialises")
    }

    /// The role inside, without checking any signature (to read a version).
    pub fn peek<T: Role>(&self) -> Result<T, RepoError> {
        let value: T = serde_json::from_str(&self.signed)
            .map_err(|e| RepoError::Malformed { role: T::NAME, detail: e.to_string() })?;
        if value.common().kind != T::NAME {
            return Err(RepoError::Malformed {
                role: T::NAME,
                detail: format!("_type is {:?}, not {:?}", value.common().kind, T::NAME),
            });
        }
        Ok(value)
    }

    /// The role inside, once `root` says enough of its keys signed it.
    pub fn open<T: Role>(&self, root: &Root) -> Result<T, RepoError> {
        let value = self.peek::<T>()?;
        let Some(rk) = root.roles.get(T::NAME) else {
            return Err(RepoError::Signatures { role: T::NAME, valid: 0, threshold: 1 });
        };
        check_threshold(T::NAME, self, root, rk)?;
        Ok(value)
    }

    /// Reference to this envelope's signed text (for the timestamp).
    pub fn reference(&self, version: u64) -> MetaRef {
        MetaRef {
            version,
            length: self.signed.len() as u64,
            sha256: hex::encode(Sha256::digest(self.signed.as_bytes())),
        }
    }
}

/// At least `threshold` distinct keys of the role, each known to `keys_of`, signed.
pub fn check_threshold(role: &'static str, env: &Envelope, keys_of: &Root, rk: &RoleKeys) -> Result<(), RepoError> {
    let mut good = BTreeSet::new();
    for s in &env.signatures {
        if !rk.keyids.contains(&s.keyid) || good.contains(&s.keyid) {
            continue;
        }
        if let Some(k) = keys_of.keys.get(&s.keyid)
            && k.keytype == "ed25519"
            && verify(&k.public, env.signed.as_bytes(), &s.sig)
        {
            good.insert(s.keyid.clone());
        }
    }
    // A threshold of zero would trust anyone: treat it as one.
    let threshold = rk.threshold.max(1);
    if good.len() < threshold {
        return Err(RepoError::Signatures { role, valid: good.len(), threshold });
    }
    Ok(())
}
