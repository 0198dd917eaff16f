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
/// What a device signs with its current key to ask for its next certificate
/// (followed by the hex SHA-256 of the request's PEM): a signature made for
/// one purpose never passes for the other.
pub const RENEWAL: &[u8] = b"tether cert renewal v1\0";
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
        self.sign_as(CONTEXT, hash)
    }

    /// The signature (hex) over `context` followed by `text`.
    pub fn sign_as(&self, context: &[u8], text: &str) -> String {
        let Some(s) = self.key.choose_scheme(&SCHEMES) else { return String::new() };
        let mut msg = context.to_vec();
        msg.extend_from_slice(text.as_bytes());
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
    verify_as(CONTEXT, cert, hash, sig)
}

/// Whether `sig` (hex) is the signature of the key of `cert` (DER) over
/// `context` followed by `text`.
pub fn verify_as(context: &[u8], cert: &[u8], text: &str, sig: &str) -> bool {
    let (Some(key), Ok(sig)) = (public_key(cert), hex::decode(sig)) else { return false };
    let mut msg = context.to_vec();
    msg.extend_from_slice(text.as_bytes());
    let algs: [&'static dyn signature::VerificationAlgorithm; 3] =
        [&signature::ECDSA_P256_SHA256_ASN1, &signature::ECDSA_P384_SHA384_ASN1, &signature::ED25519];
    algs.iter().any(|alg| UnparsedPublicKey::new(*alg, &key).verify(&msg, &sig).is_ok())
}

/// The certificates a log's signatures are checked with: the one given,
/// then each that a `cert_renewed` record names (that record signed by the
/// key before it, which stays accepted until the first record the new key
/// signed: the agent restarts with the new key only once no session is live).
pub struct Certs {
    now: Vec<u8>,
    old: Option<Vec<u8>>,
}

impl Certs {
    pub fn new(cert: &[u8]) -> Certs {
        Certs { now: cert.to_vec(), old: None }
    }

    /// Whether a key in force made `sig` over `hash`.
    pub fn check(&mut self, hash: &str, sig: &str) -> bool {
        if verify(&self.now, hash, sig) {
            self.old = None;
            return true;
        }
        self.old.as_ref().is_some_and(|o| verify(o, hash, sig))
    }

    /// A checked `cert_renewed` record named `next` (DER).
    pub fn renewed(&mut self, next: Vec<u8>) {
        self.old = Some(std::mem::replace(&mut self.now, next));
    }
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

    #[test]
    fn a_renewal_record_hands_the_chain_to_the_next_certificate_and_no_other() {
        use crate::audit::{AuditLog, verify_file};
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        crate::tls::pki::init_dir(d, &["d1", "d2"]).unwrap();
        let der = |n: &str| crate::tls::load_certs(&d.join(format!("{n}.pem"))).unwrap().remove(0).to_vec();
        let log = d.join("audit.jsonl");
        {
            let a = AuditLog::open_signed(&log, &d.join("d1.key")).unwrap();
            a.record("session_start", serde_json::json!({"n": 1}));
            a.record("cert_renewed", serde_json::json!({"cert": hex::encode(der("d2"))}));
            a.record("agent_restarting", serde_json::json!({})); // still the old key
        }
        AuditLog::open_signed(&log, &d.join("d2.key")).unwrap().record("agent_start", serde_json::json!({}));
        assert_eq!(verify_file(&log, Some(&der("d1"))).unwrap().0, 4, "one chain across the renewal");

        // Once the new key signed, the old one signs nothing more.
        AuditLog::open_signed(&log, &d.join("d1.key")).unwrap().record("forged", serde_json::json!({}));
        let e = verify_file(&log, Some(&der("d1"))).unwrap_err().to_string();
        assert!(e.contains("record seq 5: the signature does not match"), "{e}");
        // And a log that names no renewal takes no other key.
        let plain = d.join("plain.jsonl");
        AuditLog::open_signed(&plain, &d.join("d1.key")).unwrap().record("a", serde_json::json!({}));
        AuditLog::open_signed(&plain, &d.join("d2.key")).unwrap().record("b", serde_json::json!({}));
        let e = verify_file(&plain, Some(&der("d1"))).unwrap_err().to_string();
        assert!(e.contains("record seq 2: the signature does not match"), "{e}");
    }
}
