//! Where the client's grant comes from: the hub (`POST /api/v1/sessions`),
//! or — tests and benches without a hub — the dev key in the profile.
use std::sync::Arc;

use super::hub::{HubCallError, HubSession};
use super::{ClientError, Profile, RelayEntry};
use crate::api::{SessionGranted, SessionRequest};
use crate::proto::{Grant, GrantSigner, SessionId, SignedGrant};
use crate::util::now_secs;

pub enum GrantSource {
    /// The hub decides, records and signs; it also says which relay to use.
    Hub { hub: Arc<HubSession>, reason: String, ticket: Option<String> },
    /// TESTS ONLY: the profile holds the grant-signing key.
    DevSigner {
        signer: GrantSigner,
        specialist: String,
        role: String,
        ttl: u64,
        relays: Vec<RelayEntry>,
        reason: String,
    },
}

/// A grant and the relays to present it to, in order.
pub struct Obtained {
    pub grant: SignedGrant,
    pub relays: Vec<RelayEntry>,
    /// The hub's policy asks the person at the device to approve.
    pub consent: bool,
}

impl GrantSource {
    pub fn from_profile(p: &Profile, reason: Option<&str>) -> Result<GrantSource, ClientError> {
        if p.hub.is_some() {
            let hub = HubSession::from_profile(p).map_err(|e| ClientError::Grant(e.to_string()))?;
            return Ok(GrantSource::Hub {
                hub: Arc::new(hub),
                reason: reason.unwrap_or_default().to_string(),
                ticket: None,
            });
        }
        let path = p.grant_signing_key.as_ref().ok_or_else(|| ClientError::Grant("profile has no [hub]".into()))?;
        let signer = crate::tls::pki::load_grant_signer(path)?;
        Ok(GrantSource::DevSigner {
            signer,
            specialist: p.specialist.clone(),
            role: p.role.clone(),
            ttl: p.grant_ttl_secs,
            relays: p.relays.clone(),
            reason: reason.unwrap_or_default().to_string(),
        })
    }

    /// A grant for `service` on `device`, bound to the session's `client_key`.
    pub async fn obtain(&self, device: &str, service: &str, client_key: &[u8]) -> Result<Obtained, ClientError> {
        match self {
            GrantSource::Hub { hub, reason, ticket } => {
                if reason.trim().is_empty() {
                    return Err(ClientError::Grant("a reason is required (--reason \"ticket CHG-1881: …\")".into()));
                }
                let want = SessionRequest {
                    device: device.into(),
                    service: service.into(),
                    reason: reason.clone(),
                    client_key: hex::encode(client_key),
                    ticket: ticket.clone(),
                };
                let v: SessionGranted = hub.post("/api/v1/sessions", &want).await.map_err(|e| match e {
                    HubCallError::Hub(h) if h.code() == Some("device_offline") => {
                        ClientError::DeviceOffline { device: device.into(), message: h.to_string() }
                    }
                    e => ClientError::Grant(e.to_string()),
                })?;
                let bad = |what: &str| ClientError::Grant(format!("hub answer: bad {what}"));
                let body = hex::decode(&v.grant).map_err(|_| bad("grant"))?;
                let sig: [u8; 64] =
                    hex::decode(&v.sig).ok().and_then(|s| s.try_into().ok()).ok_or_else(|| bad("sig"))?;
                let relays: Vec<RelayEntry> = v.relays.into_iter().map(RelayEntry::from).collect();
                if relays.is_empty() {
                    return Err(bad("relays"));
                }
                Ok(Obtained { grant: SignedGrant { body: body.into(), sig }, relays, consent: v.consent_required })
            }
            GrantSource::DevSigner { signer, specialist, role, ttl, relays, reason } => {
                let now = now_secs();
                let grant = signer.sign(&Grant {
                    session: SessionId::random(),
                    device: device.into(),
                    services: vec![service.into()],
                    specialist: specialist.clone(),
                    role: role.clone(),
                    client_key: client_key.to_vec().into(),
                    relays: relays.iter().map(|r| r.name.clone()).collect(),
                    issued_at: now,
                    expires_at: now + ttl,
                    consent: false,
                    reason: reason.clone(),
                });
                Ok(Obtained { grant, relays: relays.clone(), consent: false })
            }
        }
    }
}
