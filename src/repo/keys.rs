//! Role keys: Ed25519 (ring). A key id is the hex SHA-256 of the public key.
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sha2::{Digest, Sha256};

use super::RepoError;

/// A role's signing key.
pub struct RepoKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for RepoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RepoKey({})", self.id())
    }
}

impl RepoKey {
    pub fn generate() -> Result<RepoKey, RepoError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| RepoError::Key("rng".into()))?;
        RepoKey::from_pkcs8(doc.as_ref())
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<RepoKey, RepoError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|_| RepoError::Key("not an Ed25519 PKCS#8 key".into()))?;
        Ok(RepoKey { pair, pkcs8: der.to_vec() })
    }

    /// PEM ("PRIVATE KEY"), for a key file.
    pub fn to_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PRIVATE KEY", self.pkcs8.clone()))
    }

    pub fn from_pem(text: &str) -> Result<RepoKey, RepoError> {
        let p = pem::parse(text).map_err(|e| RepoError::Key(format!("not PEM: {e}")))?;
        RepoKey::from_pkcs8(p.contents())
    }

    pub fn load(path: &std::path::Path) -> Result<RepoKey, RepoError> {
        let text = std::fs::read_to_string(path).map_err(|e| RepoError::Key(format!("{}: {e}", path.display())))?;
        RepoKey::from_pem(&text)
    }

    pub fn public(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }

    pub fn id(&self) -> String {
        key_id(self.pair.public_key().as_ref())
    }

    pub fn sign(&self, msg: &[u8]) -> String {
        hex::encode(self.pair.sign(msg).as_ref())
    }
}

pub fn key_id(public: &[u8]) -> String {
    hex::encode(Sha256::digest(public))
}

/// Whether `sig` (hex) is `public`'s (hex) signature of `msg`.
pub fn verify(public_hex: &str, msg: &[u8], sig_hex: &str) -> bool {
    let (Ok(public), Ok(sig)) = (hex::decode(public_hex), hex::decode(sig_hex)) else { return false };
    UnparsedPublicKey::new(&ED25519, public).verify(msg, &sig).is_ok()
}
