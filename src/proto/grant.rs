//! Session grants: what the hub signs, and how relays and agents check it.

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use bytes::{BufMut, Bytes, BytesMut};

use super::wire::*;
use super::{ProtoError, Reason, SessionId};

/// Format 1: no reason. Format 2: format 1 then the reason. A grant without
/// a reason is written as format 1, byte for byte as before, so agents and
/// relays that know only format 1 still take it.
const GRANT_FORMAT: u8 = 1;
const GRANT_FORMAT_REASON: u8 = 2;
/// The longest reason a grant carries (the hub refuses longer ones).
pub const MAX_GRANT_REASON: usize = 500;
const MAX_GRANT_BODY: usize = 8 * 1024;
const MAX_CLIENT_KEY: usize = 1024;

/// The decoded, verified content of a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub session: SessionId,
    pub device: String,
    pub services: Vec<String>,
    pub specialist: String,
    pub role: String,
    /// The client's public key for end-to-end encryption (may be empty until used).
    pub client_key: Bytes,
    /// Relay pair, in order of preference.
    pub relays: Vec<String>,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; after this the grant admits nothing.
    pub expires_at: u64,
    /// The hub's policy asks for on-site consent (the agent asks when either
    /// this or its own policy says so).
    pub consent: bool,
    /// Why, as the specialist gave it to the hub (with the ticket): shown to
    /// the person at the device. Empty: none (the hub leaves it out for agents
    /// older than 0.1.1, which read format 1 only).
    pub reason: String,
}

/// A grant body and the hub's Ed25519 signature over exactly those bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedGrant {
    pub body: Bytes,
    pub sig: [u8; 64],
}

/// Why a grant was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrantError {
    #[error("grant signature is not valid")]
    BadSignature,
    #[error("grant cannot be decoded: {0}")]
    Malformed(#[from] ProtoError),
    #[error("grant for session {session} expired at {expired_at}")]
    Expired { session: SessionId, expired_at: u64 },
    #[error("grant for session {session} names device {granted}, not {wanted}")]
    WrongDevice { session: SessionId, granted: String, wanted: String },
    #[error("grant for session {session} does not name service {service}")]
    ServiceNotGranted { session: SessionId, service: String },
    #[error("grant for session {session} names no client key")]
    NoClientKey { session: SessionId },
}

impl GrantError {
    pub fn reason(&self) -> Reason {
        match self {
            GrantError::BadSignature => Reason::GrantBadSignature,
            GrantError::Malformed(_) => Reason::GrantMalformed,
            GrantError::Expired { .. } => Reason::GrantExpired,
            GrantError::WrongDevice { .. } => Reason::GrantWrongDevice,
            GrantError::ServiceNotGranted { .. } => Reason::GrantServiceNotGranted,
            GrantError::NoClientKey { .. } => Reason::GrantNoClientKey,
        }
    }
}

impl Grant {
    fn encode_body(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(256);
        b.put_u8(if self.reason.is_empty() { GRANT_FORMAT } else { GRANT_FORMAT_REASON });
        b.put_slice(&self.session.0);
        put_str(&mut b, &self.device);
        put_list(&mut b, &self.services);
        put_str(&mut b, &self.specialist);
        put_str(&mut b, &self.role);
        put_bytes(&mut b, &self.client_key[..self.client_key.len().min(MAX_CLIENT_KEY)]);
        put_list(&mut b, &self.relays);
        b.put_u64(self.issued_at);
        b.put_u64(self.expires_at);
        b.put_u8(self.consent.into());
        if !self.reason.is_empty() {
            let mut end = self.reason.len().min(MAX_GRANT_REASON);
            while !self.reason.is_char_boundary(end) {
                end -= 1;
            }
            put_str(&mut b, &self.reason[..end]);
        }
        b.freeze()
    }

    fn decode_body(mut b: Bytes) -> Result<Grant, ProtoError> {
        let format = get_u8(&mut b)?;
        if format != GRANT_FORMAT && format != GRANT_FORMAT_REASON {
            return Err(ProtoError::BadValue { field: "grant format", value: format.into() });
        }
        let g = Grant {
            session: SessionId(get_array(&mut b)?),
            device: get_str(&mut b)?,
            services: get_list(&mut b)?,
            specialist: get_str(&mut b)?,
            role: get_str(&mut b)?,
            client_key: get_bytes(&mut b, MAX_CLIENT_KEY)?,
            relays: get_list(&mut b)?,
            issued_at: get_u64(&mut b)?,
            expires_at: get_u64(&mut b)?,
            consent: match get_u8(&mut b)? {
                0 => false,
                1 => true,
                v => return Err(ProtoError::BadValue { field: "grant consent", value: v.into() }),
            },
            reason: String::new(),
        };
        let mut g = g;
        if format == GRANT_FORMAT_REASON {
            g.reason = get_str(&mut b)?;
            if g.reason.is_empty() || g.reason.len() > MAX_GRANT_REASON {
                return Err(ProtoError::BadValue { field: "grant reason length", value: g.reason.len() as u64 });
            }
        }
        if !b.is_empty() {
            return Err(ProtoError::Trailing { extra: b.len() });
        }
        Ok(g)
    }

    /// Checks expiry, device and service of an already signature-checked grant.
    pub fn check(&self, device: &str, service: &str, now: u64) -> Result<(), GrantError> {
        if now >= self.expires_at {
            return Err(GrantError::Expired { session: self.session, expired_at: self.expires_at });
        }
        if self.device != device {
            return Err(GrantError::WrongDevice {
                session: self.session,
                granted: self.device.clone(),
                wanted: device.to_string(),
            });
        }
        if self.client_key.is_empty() {
            return Err(GrantError::NoClientKey { session: self.session });
        }
        if !self.services.iter().any(|s| s == service) {
            return Err(GrantError::ServiceNotGranted { session: self.session, service: service.to_string() });
        }
        Ok(())
    }
}

impl SignedGrant {
    pub fn encode(&self, buf: &mut BytesMut) {
        put_bytes(buf, &self.body);
        buf.put_slice(&self.sig);
    }

    /// FUZZING ONLY: the body decoder, which in the product runs only after
    /// the signature has verified.
    #[cfg(fuzzing)]
    pub fn decode_unverified(&self) -> Result<Grant, ProtoError> {
        Grant::decode_body(self.body.clone())
    }

    /// The session id of an unverified grant, only to address a refusal.
    pub fn session_hint(&self) -> SessionId {
        let mut id = [0u8; 16];
        if let Some(raw) = self.body.get(1..17) {
            id.copy_from_slice(raw);
        }
        SessionId(id)
    }

    pub fn decode(buf: &mut Bytes) -> Result<SignedGrant, ProtoError> {
        let body = get_bytes(buf, MAX_GRANT_BODY)?;
        let sig = get_array(buf)?;
        Ok(SignedGrant { body, sig })
    }
}

/// Holds the hub's grant-signing key (today also the dev client's).
pub struct GrantSigner {
    key: Ed25519KeyPair,
}

impl GrantSigner {
    /// From a PKCS#8 document (the body of a `PRIVATE KEY` PEM block).
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, GrantError> {
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|_| GrantError::BadSignature)?;
        Ok(GrantSigner { key })
    }

    pub fn public_key(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.key.public_key().as_ref());
        out
    }

    pub fn sign(&self, grant: &Grant) -> SignedGrant {
        let body = grant.encode_body();
        let mut sig = [0u8; 64];
        sig.copy_from_slice(self.key.sign(&body).as_ref());
        SignedGrant { body, sig }
    }
}

/// Holds the hub's public key (two during a rollover: the old and the new
/// one); relays and agents verify grants with it. Clones share the keys, so
/// a reload puts new ones in force for every holder.
#[derive(Clone)]
pub struct GrantVerifier {
    keys: std::sync::Arc<std::sync::RwLock<Vec<[u8; 32]>>>,
}

impl GrantVerifier {
    pub fn new(key: [u8; 32]) -> Self {
        GrantVerifier::with_keys(vec![key])
    }

    pub fn with_keys(keys: Vec<[u8; 32]>) -> Self {
        GrantVerifier { keys: std::sync::Arc::new(std::sync::RwLock::new(keys)) }
    }

    /// Puts `keys` in force; true when they differ from those before.
    pub fn set_keys(&self, keys: Vec<[u8; 32]>) -> bool {
        let mut held = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let changed = *held != keys;
        *held = keys;
        changed
    }

    pub fn key_count(&self) -> usize {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Verifies the signature (by any key in force), then decodes. Nothing
    /// of an unsigned body is trusted.
    pub fn verify(&self, g: &SignedGrant) -> Result<Grant, GrantError> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        if !keys.iter().any(|k| UnparsedPublicKey::new(&ED25519, k).verify(&g.body, &g.sig).is_ok()) {
            return Err(GrantError::BadSignature);
        }
        drop(keys);
        Ok(Grant::decode_body(g.body.clone())?)
    }
}
