//! Per-connection keys derived from one end-to-end TLS handshake per session.
//!
//! A session's first tunnelled connection runs TLS 1.3 between client and
//! agent (the agent proves the device key, the client the grant's key). When
//! both ends offered ALPN [`crate::tls::ALPN_E2E_KEYED`], each exports a
//! session secret from that connection ([`SessionSecret::export`]). Every later
//! connection of the session skips the handshake: the client sends a header
//! (its base connection, a fresh random, and a MAC under the secret binding
//! the session id and this connection's number), the agent checks it, and
//! both derive this connection's keys ([`ConnKeys`]); the agent's keys for its
//! own direction also take a random of its own (its first 16 bytes back).
//! Only the session's connections numbered up to [`BASE_MAX`] key others.
//!
//! The relay, which sees the session id, the connection numbers and every
//! byte, holds no secret: it can neither forge a header (the agent refuses it
//! and never connects the service) nor read or alter a record. A replayed
//! header fails: the MAC binds the connection number, which the agent admits
//! once per session. What this gives up against a resumed TLS handshake per
//! connection: no fresh key exchange per connection, so the connections of a
//! session share one secret (in both ends' memory for the session's life).
use std::sync::Mutex;
use std::time::Duration;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::hmac;

use tokio::sync::Notify;

use super::sealed::{Direction, SALT};
use crate::proto::SessionId;

/// The first byte of a keyed connection's header (a TLS record starts 0x16).
pub const MARKER: u8 = 0x01;
/// Bytes of the header: marker, base connection, client random, MAC.
pub const HEADER_LEN: usize = 1 + 4 + 16 + 16;
const EXPORT_LABEL: &[u8] = b"tether session keys";
/// Only connections numbered up to this key later ones: the agent keeps each
/// of their secrets, so whichever of them the client completed first, the
/// agent holds it (a session's first connections are numbered from 1).
pub const BASE_MAX: u32 = 64;

/// The secret one end-to-end TLS connection (`base`) of a session yields.
#[derive(Clone)]
pub struct SessionSecret {
    pub base: u32,
    key: hmac::Key,
}

impl std::fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionSecret {{ base: {} }}", self.base)
    }
}

/// A keyed connection's header, as parsed (not yet verified).
pub struct Header {
    pub base: u32,
    random: [u8; 16],
    mac: [u8; 16],
}

impl Header {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Option<Header> {
        if b[0] != MARKER {
            return None;
        }
        let mut h = Header { base: u32::from_be_bytes([b[1], b[2], b[3], b[4]]), random: [0; 16], mac: [0; 16] };
        h.random.copy_from_slice(&b[5..21]);
        h.mac.copy_from_slice(&b[21..37]);
        Some(h)
    }
}

/// This connection's keys, at either end.
pub struct ConnKeys {
    secret: SessionSecret,
    context: Vec<u8>,
}

impl SessionSecret {
    /// The secret of end-to-end TLS connection `base` of `session`: a TLS
    /// exporter value, which both ends compute alike and the relay cannot.
    pub fn export<D>(tls: &rustls::ConnectionCommon<D>, session: &SessionId, base: u32) -> Option<SessionSecret> {
        let mut k = [0u8; 32];
        let mut context = session.0.to_vec();
        context.extend_from_slice(&base.to_be_bytes());
        tls.export_keying_material(&mut k, EXPORT_LABEL, Some(&context)).ok()?;
        Some(SessionSecret { base, key: hmac::Key::new(hmac::HMAC_SHA256, &k) })
    }

    #[cfg(test)]
    pub(crate) fn for_tests(base: u32, k: [u8; 32]) -> SessionSecret {
        SessionSecret { base, key: hmac::Key::new(hmac::HMAC_SHA256, &k) }
    }

    fn prf(&self, label: &[u8], parts: &[&[u8]]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(label);
        ctx.update(&[0]);
        for p in parts {
            ctx.update(p);
        }
        ctx.sign()
    }

    fn mac(&self, session: &SessionId, conn: u32, random: &[u8; 16]) -> [u8; 16] {
        let t = self.prf(b"header", &[&session.0, &conn.to_be_bytes(), &self.base.to_be_bytes(), random]);
        let mut m = [0u8; 16];
        m.copy_from_slice(&t.as_ref()[..16]);
        m
    }

    /// The client's header for connection `conn`, and the connection's keys.
    pub fn open(&self, session: &SessionId, conn: u32) -> ([u8; HEADER_LEN], ConnKeys) {
        let random: [u8; 16] = crate::util::random_bytes();
        let mut h = [0u8; HEADER_LEN];
        h[0] = MARKER;
        h[1..5].copy_from_slice(&self.base.to_be_bytes());
        h[5..21].copy_from_slice(&random);
        h[21..37].copy_from_slice(&self.mac(session, conn, &random));
        (h, self.keys(session, conn, &random))
    }

    /// The agent's check of a client's header for connection `conn`.
    pub fn accept(&self, h: &Header, session: &SessionId, conn: u32) -> Option<ConnKeys> {
        if h.base != self.base {
            return None;
        }
        verify_slices_are_equal(&self.mac(session, conn, &h.random), &h.mac).ok()?;
        Some(self.keys(session, conn, &h.random))
    }

    fn keys(&self, session: &SessionId, conn: u32, random: &[u8; 16]) -> ConnKeys {
        let mut context = session.0.to_vec();
        context.extend_from_slice(&conn.to_be_bytes());
        context.extend_from_slice(random);
        ConnKeys { secret: self.clone(), context }
    }
}

impl ConnKeys {
    fn direction(&self, label: &[u8], salt: &[u8]) -> Direction {
        let t = self.secret.prf(label, &[&self.context, salt]);
        let (k, iv) = t.as_ref().split_at(16);
        Direction::new(k.try_into().expect("16 bytes"), iv[..12].try_into().expect("12 bytes"))
    }

    /// Client to agent.
    pub fn upstream(&self) -> Direction {
        self.direction(b"client to agent", &[])
    }

    /// Agent to client, salted with the agent's random.
    pub fn downstream(&self, salt: &[u8; SALT]) -> Direction {
        self.direction(b"agent to client", salt)
    }

    /// The resumable stream's key for this connection.
    pub fn resume_key(&self) -> [u8; 32] {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.secret.prf(b"resume", &[&self.context]).as_ref());
        k
    }
}

/// How long a keyed connection waits for its base handshake to complete
/// here (the client finishes a handshake a moment before the agent does).
const BASE_WAIT: Duration = Duration::from_secs(5);

/// The agent's store of a session's secrets, by base connection.
#[derive(Default)]
pub struct Secrets {
    kept: Mutex<Vec<SessionSecret>>,
    added: Notify,
}

impl Secrets {
    /// Keeps the secret of a connection numbered up to [`BASE_MAX`] (at most
    /// that many per session).
    pub fn keep(&self, s: SessionSecret) {
        if s.base <= BASE_MAX {
            crate::util::lock(&self.kept).push(s);
            self.added.notify_waiters();
        }
    }

    /// Connection `base`'s secret, waiting a moment for its handshake.
    pub async fn of(&self, base: u32) -> Option<SessionSecret> {
        if base == 0 || base > BASE_MAX {
            return None;
        }
        let deadline = tokio::time::Instant::now() + BASE_WAIT;
        loop {
            let added = self.added.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            {
                let kept = crate::util::lock(&self.kept);
                if let Some(s) = kept.iter().find(|s| s.base == base) {
                    return Some(s.clone());
                }
            }
            tokio::time::timeout_at(deadline, added).await.ok()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_opens_only_its_own_connection_of_its_own_session_under_its_secret() {
        let secret = SessionSecret::for_tests(1, [7; 32]);
        let session = SessionId([3; 16]);
        let (h, keys) = secret.open(&session, 5);
        let parsed = Header::parse(&h).unwrap();
        let agent = secret.accept(&parsed, &session, 5).expect("the genuine header");
        assert_eq!(agent.resume_key(), keys.resume_key());
        assert!(secret.accept(&parsed, &session, 6).is_none(), "replayed as another connection");
        assert!(secret.accept(&parsed, &SessionId([4; 16]), 5).is_none(), "replayed into another session");
        let other = SessionSecret::for_tests(1, [8; 32]);
        assert!(other.accept(&parsed, &session, 5).is_none(), "accepted under another secret");
        let later = SessionSecret::for_tests(2, [7; 32]);
        assert!(later.accept(&parsed, &session, 5).is_none(), "accepted under another base");
        for at in 1..HEADER_LEN {
            let mut bad = h;
            bad[at] ^= 1;
            let p = Header::parse(&bad).unwrap();
            assert!(secret.accept(&p, &session, 5).is_none(), "altered byte {at} accepted");
        }
        let (h2, _) = secret.open(&session, 5);
        assert_ne!(h[5..21], h2[5..21], "each header takes a fresh random");
    }
}
