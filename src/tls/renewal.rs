//! A device certificate's renewal, the parts every role shares: the request
//! a device makes with its next key, the checks the hub and the CA's holder
//! make of it, the CA's signature, and the checks the device makes of what
//! comes back. The fleet CA's key never needs to be online: whoever holds it
//! signs the requests the hub collected (`tether certs renewals --sign`).
use std::path::Path;

use rcgen::{CertificateParams, CertificateSigningRequestParams, DnType, KeyPair};
use rustls::pki_types::{CertificateDer, UnixTime};

use super::pki::{Ca, Validity};
use super::{Role, TlsError, Trust};

/// Why a request or a certificate is refused: a stable code and the words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

fn refuse(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal { code, message: message.into() }
}

/// A certificate signing request (PEM) for `device`, signed by `next`.
pub fn make_request(device: &str, next: &KeyPair) -> Result<String, TlsError> {
    let mut p = CertificateParams::new(vec![device.to_string()])?;
    p.distinguished_name.push(DnType::CommonName, device);
    Ok(p.serialize_request(next)?.pem()?)
}

/// The subject public key (its raw bits) of a request, once its signature
/// is checked and it names `device`.
pub fn check_request(device: &str, csr_pem: &str) -> Result<Vec<u8>, Refusal> {
    CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| refuse("bad_csr", format!("not a signed certificate request: {e}")))?;
    let der = pem::parse(csr_pem).map_err(|_| refuse("bad_csr", "not PEM"))?;
    use x509_parser::prelude::FromDer;
    let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(der.contents())
        .map_err(|_| refuse("bad_csr", "not a certificate request"))?;
    let info = &req.certification_request_info;
    let cn = info.subject.iter_common_name().next().and_then(|c| c.as_str().ok());
    if cn != Some(device) {
        let named = cn.unwrap_or("no name");
        return Err(refuse("csr_mismatch", format!("the request names {named:?}, the device is {device:?}")));
    }
    Ok(info.subject_pki.subject_public_key.data.to_vec())
}

/// The raw public key bits of a certificate (DER).
pub fn cert_key(der: &[u8]) -> Option<Vec<u8>> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(c.public_key().subject_public_key.data.to_vec())
}

/// When a certificate (DER) expires, Unix seconds.
pub fn not_after(der: &[u8]) -> Option<u64> {
    validity(der).map(|(_, until)| until)
}

/// When the certificate (DER) starts and stops being valid, Unix seconds.
pub fn validity(der: &[u8]) -> Option<(u64, u64)> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    let v = c.validity();
    Some((u64::try_from(v.not_before.timestamp()).ok()?, u64::try_from(v.not_after.timestamp()).ok()?))
}

/// The certificate (DER) of a PEM text.
pub fn der_of(pem_text: &str) -> Result<Vec<u8>, Refusal> {
    match pem::parse(pem_text) {
        Ok(p) if p.tag() == "CERTIFICATE" => Ok(p.into_contents()),
        _ => Err(refuse("bad_certificate", "not a PEM certificate")),
    }
}

/// `der` is a valid device certificate of the fleet (`ca`, `crl`: chain,
/// validity, revocation, the device role) naming `device`.
pub fn check_device_cert(ca: &Path, crl: Option<&Path>, device: &str, der: &[u8]) -> Result<(), Refusal> {
    let trust = Trust::get(ca, crl).map_err(|e| refuse("bad_certificate", e.to_string()))?;
    let cert = CertificateDer::from(der);
    trust
        .client_verifier(Some(Role::Device), true)
        .verify_client_cert(&cert, &[], UnixTime::now())
        .map_err(|e| refuse("bad_certificate", format!("not a valid device certificate of this fleet: {e}")))?;
    match super::peer_common_name(Some(std::slice::from_ref(&cert))) {
        Some(cn) if cn == device => Ok(()),
        other => Err(refuse("wrong_device", format!("the certificate names {other:?}, the device is {device:?}"))),
    }
}

/// The CA's holder signs `device`'s request: a device certificate valid
/// for `days`, for the request's key. Returns the certificate (PEM).
pub fn sign_request(ca: &Ca, device: &str, csr_pem: &str, days: i64) -> Result<String, Refusal> {
    check_request(device, csr_pem)?;
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| refuse("bad_csr", e.to_string()))?;
    ca.issue_for_key(device, &csr.public_key, Validity::days(days)).map_err(|e| refuse("sign_failed", e.to_string()))
}

#[cfg(test)]
mod tests;
