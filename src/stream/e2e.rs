//! End-to-end TLS between client and agent, bound to the grant.
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

use crate::tls::{self, TlsError};

/// ALPN of the end-to-end TLS inside a tunnel.
pub use crate::tls::{ALPN_E2E, ALPN_E2E_KEYED};

/// The specialist's ephemeral key for one session: its public key goes into
/// the grant, and the client proves possession of it to the agent.
pub struct ClientKey {
    cert: CertificateDer<'static>,
    key_der: Vec<u8>,
    spki: Vec<u8>,
}

impl ClientKey {
    pub fn generate() -> Result<ClientKey, TlsError> {
        let key = rcgen::KeyPair::generate()?;
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(rcgen::DnType::CommonName, "tether specialist session key");
        let cert = p.self_signed(&key)?;
        let spki = spki_of(cert.der()).ok_or(TlsError::GrantKey("generated certificate does not parse".into()))?;
        Ok(ClientKey { cert: cert.der().clone(), key_der: key.serialize_der(), spki })
    }

    /// DER SubjectPublicKeyInfo, as carried in `Grant::client_key`.
    pub fn public_key(&self) -> &[u8] {
        &self.spki
    }
}

/// The DER SubjectPublicKeyInfo of a certificate.
fn spki_of(cert: &[u8]) -> Option<Vec<u8>> {
    let (_, c) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(c.public_key().raw.to_vec())
}

/// The client side: verifies the device's fleet certificate for `device`,
/// presents the session key.
pub fn client_config(ca: &std::path::Path, key: &ClientKey) -> Result<Arc<ClientConfig>, TlsError> {
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.key_der.clone()));
    let mut cfg = ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(tls::Trust::get(ca, None)?.server_verifier(tls::Role::Device))
        .with_client_auth_cert(vec![key.cert.clone()], key_der)?;
    cfg.alpn_protocols = vec![ALPN_E2E_KEYED.to_vec(), ALPN_E2E.to_vec()];
    Ok(Arc::new(cfg))
}

/// The agent side for one session: proves the device key, and accepts only a
/// client that proves the key named in the grant.
pub fn agent_config(
    cert: &std::path::Path,
    key: &std::path::Path,
    grant_key: &[u8],
) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = Arc::new(GrantKeyVerifier { spki: grant_key.to_vec(), provider: tls::provider() });
    let mut cfg = ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(tls::load_certs(cert)?, tls::load_key(key)?)?;
    cfg.alpn_protocols = vec![ALPN_E2E_KEYED.to_vec(), ALPN_E2E.to_vec()];
    Ok(Arc::new(cfg))
}

/// Accepts exactly one client public key (the grant's); the TLS handshake
/// signature then proves the client holds its private key.
#[derive(Debug)]
struct GrantKeyVerifier {
    spki: Vec<u8>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ClientCertVerifier for GrantKeyVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let spki =
            spki_of(end_entity).ok_or(rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
        if self.spki.is_empty() || spki != self.spki {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
