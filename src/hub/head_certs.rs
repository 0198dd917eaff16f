//! The device certificates that came with agents' audit heads, kept so that
//! a relay need not send a certificate (about 1.3 KiB in hex) with every
//! head: once the hub answered a report that carried it, the relay names it
//! by its SHA-256 (`api::cert_sha`). Kept in memory only: a restarted hub
//! holds none and asks for them (`ReportAnswer::certs_wanted`).
//!
//! A kept certificate is checked again (CA, CRL, device) each time a head
//! is checked with it, as one that came whole is: keeping it saves bytes on
//! the wire, not the check.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Certificates kept per device, newest first: its current one and the one
/// before a renewal (one relay may still hold the agent's old channel).
const PER_DEVICE: usize = 2;

/// A device's certificates: (SHA-256 in hex, DER), newest first.
type Kept = Vec<(String, Arc<[u8]>)>;

#[derive(Default)]
pub struct HeadCerts {
    map: Mutex<HashMap<String, Kept>>,
}

impl HeadCerts {
    /// Keeps `der`, a certificate that checked out for `device`.
    pub fn keep(&self, device: &str, der: &[u8]) {
        let sha = crate::api::cert_sha(der);
        let mut map = crate::util::lock(&self.map);
        let kept = map.entry(device.to_string()).or_default();
        if kept.first().is_some_and(|(s, _)| *s == sha) {
            return;
        }
        kept.retain(|(s, _)| *s != sha);
        kept.insert(0, (sha, der.into()));
        kept.truncate(PER_DEVICE);
    }

    /// The certificate of `device` named `sha`, if kept.
    pub fn get(&self, device: &str, sha: &str) -> Option<Arc<[u8]>> {
        let map = crate::util::lock(&self.map);
        map.get(device)?.iter().find(|(s, _)| s == sha).map(|(_, der)| der.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::cert_sha;

    /// A device's certificates are found by name only for that device; a
    /// renewal keeps the one before, and no more than two.
    #[test]
    fn certificates_are_found_by_device_and_name_two_per_device() {
        let kept = HeadCerts::default();
        let (old, new, newer) = (b"cert-1".as_slice(), b"cert-2".as_slice(), b"cert-3".as_slice());
        assert!(kept.get("d1", &cert_sha(old)).is_none());
        kept.keep("d1", old);
        kept.keep("d1", old);
        assert_eq!(kept.get("d1", &cert_sha(old)).as_deref(), Some(old));
        assert!(kept.get("d2", &cert_sha(old)).is_none(), "another device's name finds nothing");
        kept.keep("d1", new);
        assert_eq!(kept.get("d1", &cert_sha(old)).as_deref(), Some(old), "the one before a renewal stays");
        kept.keep("d1", newer);
        assert!(kept.get("d1", &cert_sha(old)).is_none(), "two per device");
        assert_eq!(kept.get("d1", &cert_sha(new)).as_deref(), Some(new));
        assert_eq!(kept.get("d1", &cert_sha(newer)).as_deref(), Some(newer));
    }
}
