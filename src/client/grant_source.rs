//! Where the client's grant comes from. Today: signed locally with the dev
//! key. The hub replaces exactly this step (a `Hub` variant).
use crate::proto::{Grant, GrantSigner, SessionId, SignedGrant, grant::now_secs};

use super::{ClientError, Profile};

pub enum GrantSource {
    /// Dev only: the profile holds the grant-signing key.
    DevSigner { signer: GrantSigner, specialist: String, role: String, ttl: u64, relays: Vec<String> },
}

impl GrantSource {
    pub fn from_profile(p: &Profile) -> Result<GrantSource, ClientError> {
        let path =
            p.grant_signing_key.as_ref().ok_or_else(|| ClientError::Grant("profile has no grant source".into()))?;
        let signer = crate::tls::pki::load_grant_signer(path)?;
        Ok(GrantSource::DevSigner {
            signer,
            specialist: p.specialist.clone(),
            role: p.role.clone(),
            ttl: p.grant_ttl_secs,
            relays: p.relays.iter().map(|r| r.name.clone()).collect(),
        })
    }

    /// A grant for `service` on `device`, bound to the session's `client_key`.
    pub async fn obtain(&self, device: &str, service: &str, client_key: &[u8]) -> Result<SignedGrant, ClientError> {
        match self {
            GrantSource::DevSigner { signer, specialist, role, ttl, relays } => {
                let now = now_secs();
                Ok(signer.sign(&Grant {
                    session: SessionId::random(),
                    device: device.into(),
                    services: vec![service.into()],
                    specialist: specialist.clone(),
                    role: role.clone(),
                    client_key: client_key.to_vec().into(),
                    relays: relays.clone(),
                    issued_at: now,
                    expires_at: now + ttl,
                }))
            }
        }
    }
}
