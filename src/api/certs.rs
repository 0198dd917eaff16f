//! Device certificate renewal through the relays: the device asks with a
//! request signed by the key it will use next (and proven by the key it
//! holds now), the holder of the fleet CA signs it offline, the device
//! fetches and installs it (docs/operator.md, "Device certificates").
use serde::{Deserialize, Serialize};

/// `POST /api/v1/device/D/cert`, sent by a relay for the device whose
/// certificate it saw: the request (PEM), the device's current certificate
/// (hex of DER) and that certificate's key's signature over the request
/// (hex; [`crate::audit::sign::RENEWAL`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertRenewal {
    pub csr: String,
    pub cert: String,
    pub proof: String,
}

/// Where a device's renewal stands.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct CertRenewalState {
    pub device: String,
    /// `pending` (waiting for the CA's holder), `issued` (signed, not yet
    /// seen in use) or `installed` (a relay saw the device present it).
    pub state: String,
    /// Unix seconds.
    pub requested_at: u64,
    /// The issued certificate (PEM), once `issued` or `installed`.
    #[serde(default)]
    pub cert: String,
    /// Unix seconds at which the issued certificate expires (0: none yet).
    #[serde(default)]
    pub not_after: u64,
}

/// `GET /api/v1/cert-requests` (admin): renewals waiting for a signature,
/// on the sites the caller is entitled to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertRequestView {
    pub device: String,
    pub site: String,
    /// Unix seconds.
    pub requested_at: u64,
    /// The request (PEM), checked by the hub: its signature, the device's
    /// id as its name, and the device's current key's proof.
    pub csr: String,
    /// When the certificate the device uses now expires (Unix seconds, 0:
    /// not seen yet).
    pub current_not_after: u64,
}

/// `POST /api/v1/cert-requests/D` (admin): the certificate signed for
/// device D's pending request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertIssue {
    pub cert: String,
}
