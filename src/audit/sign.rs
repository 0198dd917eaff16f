//! Signatures over audit chain hashes, made with the host's own TLS key
//! (the relay's, the device's): whoever can write the log but does not hold
//! the key cannot re-sign an edited record.
//!
//! The signed message is `tether audit v1\0` followed by the record's hash
//! (hex). ECDSA P-256/P-384 (ASN.1) and Ed25519 keys are supported: the
//! fleet issues P-256.
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::signature::{self, UnparsedPublicKey};
use rustls::SignatureScheme;
use rustls::sign::SigningKey;

const CONTEXT: &[u8] = b"tether audit v1\0";
const SCHEMES: [SignatureScheme; 3] =
    [SignatureScheme::ECDSA_NISTP256_SHA256, SignatureScheme::ECDSA_NISTP384_SHA384, SignatureScheme::ED25519];

/// Signs chain hashes with a host key.
#[derive(Debug, Clone)]
pub struct Signer {
    key: Arc<dyn SigningKey>,
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("key {0}: not an ECDSA or Ed25519 key")]
    Unsupported(String),
}

impl Signer {
    /// The private key of a PEM file (the host's TLS key).
    pub fn load(path: &Path) -> Result<Signer, SignError> {
        let der = crate::tls::load_key(path)?;
        let key = crate::tls::provider()
            .key_provider
            .load_private_key(der)
            .map_err(|_| SignError::Unsupported(path.display().to_string()))?;
        if key.choose_scheme(&SCHEMES).is_none() {
            return Err(SignError::Unsupported(path.display().to_string()));
        }
        Ok(Signer { key })
    }

    /// The signature (hex) over a chain hash.
    pub fn sign(&self, hash: &str) -> String {
        let Some(s) = self.key.choose_scheme(&SCHEMES) else { return String::new() };
        let mut msg = CONTEXT.to_vec();
        msg.extend_from_slice(hash.as_bytes());
        s.sign(&msg).map(hex::encode).unwrap_or_default()
    }
}

/// The raw public key of a certificate (DER).
fn public_key(cert: &[u8]) -> Option<Vec<u8>> {
    let (_, c) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(c.public_key().subject_public_key.data.to_vec())
}

/// Whether `sig` (hex) is the signature of the key of `cert` (DER) over `hash`.
pub fn verify(cert: &[u8], hash: &str, sig: &str) -> bool {
    let (Some(key), Ok(sig)) = (public_key(cert), hex::decode(sig)) else { return false };
    let mut msg = CONTEXT.to_vec();
    msg.extend_from_slice(hash.as_bytes());
    let algs: [&'static dyn signature::VerificationAlgorithm; 3] =
        [&signature::ECDSA_P256_SHA256_ASN1, &signature::ECDSA_P384_SHA384_ASN1, &signature::ED25519];
    algs.iter().any(|alg| UnparsedPublicKey::new(*alg, &key).verify(&msg, &sig).is_ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_signature_verifies_only_for_its_hash_and_key() {
        let dir = tempfile::tempdir().unwrap();
        crate::tls::pki::init_dir(dir.path(), &["d1"]).unwrap();
        let s = super::Signer::load(&dir.path().join("d1.key")).unwrap();
        let cert = crate::tls::load_certs(&dir.path().join("d1.pem")).unwrap().remove(0);
        let other = crate::tls::load_certs(&dir.path().join("relay-a.pem")).unwrap().remove(0);
        let sig = s.sign("abc");
        assert!(super::verify(&cert, "abc", &sig));
        assert!(!super::verify(&cert, "abd", &sig));
        assert!(!super::verify(&other, "abc", &sig));
    }
}
