//! rustls client and server configs, peer identity, handshake failure labels.
use std::path::Path;
use std::sync::{Arc, LazyLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::TlsError;

/// ALPN of the agent control channel (17001).
pub const ALPN_AGENT: &[u8] = b"tether-agent/1";
/// ALPN of agent data legs (17002).
pub const ALPN_DATA: &[u8] = b"tether-data/1";
/// ALPN of specialist legs (17443).
pub const ALPN_CLIENT: &[u8] = b"tether-client/1";
/// The same, from a client that reads [`crate::proto::Frame::Waiting`] while
/// its session request waits. A relay lists it first, so a client offering
/// both gets it from a relay that sends them, `tether-client/1` from an
/// older relay; an older client offers only `tether-client/1`.
pub const ALPN_CLIENT_WAITS: &[u8] = b"tether-client/2";
/// ALPN of the hub's HTTPS API (and of its clients).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// ALPN of the twin link (17003).
pub const ALPN_TWIN: &[u8] = b"tether-twin/1";
/// ALPN of the end-to-end TLS inside a tunnel.
pub const ALPN_E2E: &[u8] = b"tether-e2e/1";
/// The same, from an end that derives its session's later connections' keys
/// from this connection ([`crate::stream::derived`]); both ends offer it first.
pub const ALPN_E2E_KEYED: &[u8] = b"tether-e2e/2";

/// The one crypto provider (aws-lc-rs) used by every config.
///
/// Key exchange prefers the hybrid X25519MLKEM768 (post-quantum), then
/// X25519 and P-256 for peers without it (an old curl at the hub): a client
/// offers key shares for both X25519MLKEM768 and X25519, so a server without
/// ML-KEM answers without a retry. TLS 1.3 suites in order AES-128-GCM,
/// AES-256-GCM, ChaCha20-Poly1305: AES-128-GCM is the cheapest per byte with
/// AES-NI, and the relay pays for every byte twice.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::kx_group;
    static ONE: LazyLock<Arc<CryptoProvider>> =
        LazyLock::new(|| provider_with_groups(vec![kx_group::X25519MLKEM768, kx_group::X25519, kx_group::SECP256R1]));
    ONE.clone()
}

/// [`provider`] without ML-KEM: what a peer that lacks post-quantum key
/// exchange offers (tests and the handshake benchmark).
pub fn classical_provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::kx_group;
    provider_with_groups(vec![kx_group::X25519, kx_group::SECP256R1])
}

fn provider_with_groups(kx_groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup>) -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.kx_groups = kx_groups;
    p.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        // TLS 1.2 suites stay available only so that a client built with this
        // provider can *offer* 1.2 (tests); every listener is TLS 1.3 only.
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ];
    Arc::new(p)
}

/// The surface a TLS connection belongs to, named by its ALPN.
pub fn surface(alpn: Option<&[u8]>) -> &'static str {
    match alpn {
        Some(ALPN_AGENT) => "control",
        Some(ALPN_DATA) => "data",
        Some(ALPN_CLIENT | ALPN_CLIENT_WAITS) => "client",
        Some(ALPN_TWIN) => "twin",
        Some(ALPN_E2E | ALPN_E2E_KEYED) => "e2e",
        Some(ALPN_HTTP1) => "hub",
        _ => "other",
    }
}

/// Counts a completed handshake in `tether_tls_handshakes_total` by surface
/// (from the negotiated ALPN), key exchange group and kind (full, resumed,
/// full after a HelloRetryRequest).
pub fn handshake_done(conn: &rustls::CommonState) {
    count_handshake(surface(conn.alpn_protocol()), conn)
}

/// [`handshake_done`] for a surface named by the caller (the hub's HTTPS,
/// whose clients need not offer ALPN).
pub fn count_handshake(surface: &'static str, conn: &rustls::CommonState) {
    use rustls::HandshakeKind as K;
    let group = group_label(conn.negotiated_key_exchange_group().map(|g| g.name()));
    let kind = match conn.handshake_kind() {
        Some(K::Resumed) => "resumed",
        Some(K::FullWithHelloRetryRequest) => "retry",
        _ => "full",
    };
    crate::metrics::TLS_HANDSHAKES.with_label_values(&[surface, group, kind]).inc();
}

/// The metric label of a key exchange group.
pub(super) fn group_label(group: Option<rustls::NamedGroup>) -> &'static str {
    match group {
        Some(rustls::NamedGroup::X25519MLKEM768) => "X25519MLKEM768",
        Some(rustls::NamedGroup::X25519) => "X25519",
        Some(rustls::NamedGroup::secp256r1) => "secp256r1",
        Some(_) => "other",
        None => "none",
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.into(), source })
}

/// All certificates of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::BadPem { path: path.into(), what: "certificate" })?;
    if certs.is_empty() {
        return Err(TlsError::Missing { path: path.into(), what: "certificate" });
    }
    Ok(certs)
}

/// The first private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|_| TlsError::BadPem { path: path.into(), what: "private key" })?
        .ok_or_else(|| TlsError::Missing { path: path.into(), what: "private key" })
}

/// All CRLs of a PEM file.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::crls(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::BadPem { path: path.into(), what: "CRL" })
}

/// A root store holding the fleet CA(s) of a PEM file.
pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c)?;
    }
    Ok(Arc::new(roots))
}

/// Paths of one side's identity.
#[derive(Debug, Clone)]
pub struct Identity<'a> {
    pub ca: &'a Path,
    pub cert: &'a Path,
    pub key: &'a Path,
}

/// A relay listener's server config: TLS 1.3 only, one ALPN, and (for agent
/// listeners) a required client certificate checked against the CA and CRL.
pub fn server_config(
    id: &Identity<'_>,
    client_auth: bool,
    crl: Option<&Path>,
    alpn: &[u8],
) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with(provider(), id, client_auth, crl, alpn)
}

pub(super) fn server_config_with(
    provider: Arc<CryptoProvider>,
    id: &Identity<'_>,
    client_auth: bool,
    crl: Option<&Path>,
    alpn: &[u8],
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider).with_protocol_versions(&[&rustls::version::TLS13])?;
    let trust = super::Trust::get(id.ca, crl)?;
    let builder = match (client_auth, super::roles_of(alpn).1) {
        (true, Some(role)) => builder.with_client_cert_verifier(trust.client_verifier(Some(role), true)),
        _ => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(load_certs(id.cert)?, load_key(id.key)?)?;
    // A resumed session skips the verifier: forget them all when the CRL changes.
    cfg.session_storage = super::ServerSessions::new(trust);
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(cfg))
}

/// Whether a specialist leg negotiated the ALPN of a client that reads
/// [`crate::proto::Frame::Waiting`] (over TCP or QUIC).
pub fn client_waits(alpn: Option<&[u8]>) -> bool {
    matches!(alpn, Some(a) if a == ALPN_CLIENT_WAITS || a == super::ALPN_QUIC_CLIENT_WAITS)
}

/// Whether `negotiated` is the ALPN a listener of `listener_alpn` serves
/// (its own, or the newer one of the same surface it also offers).
pub fn alpn_serves(negotiated: Option<&[u8]>, listener_alpn: &[u8]) -> bool {
    negotiated == Some(listener_alpn) || (listener_alpn == ALPN_CLIENT && negotiated == Some(ALPN_CLIENT_WAITS))
}

/// `cfg` offering `alpns`, most preferred first: a server's order decides.
pub fn server_offering(cfg: Arc<ServerConfig>, alpns: &[&[u8]]) -> Arc<ServerConfig> {
    let mut cfg = (*cfg).clone();
    cfg.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

/// `cfg` offering `alpns` (the server picks by its own order).
pub fn client_offering(cfg: Arc<ClientConfig>, alpns: &[&[u8]]) -> Arc<ClientConfig> {
    let mut cfg = (*cfg).clone();
    cfg.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

/// A client config that trusts the fleet CA and requires the server role of
/// the surface named by `alpn`, optionally presenting a client cert.
pub fn client_config(
    ca: &Path,
    client_cert: Option<(&Path, &Path)>,
    alpn: &[u8],
) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_with_crl(ca, None, client_cert, alpn)
}

/// [`client_config`], also refusing servers whose certificate `crl` revokes
/// (reloaded while running, see [`super::Trust`]).
pub fn client_config_with_crl(
    ca: &Path,
    crl: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
    alpn: &[u8],
) -> Result<Arc<ClientConfig>, TlsError> {
    let trust = super::Trust::get(ca, crl)?;
    let verifier = trust.server_verifier(super::roles_of(alpn).0);
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match client_cert {
        Some((cert, key)) => builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    // A resumed session skips the verifier: forget them all when the CRL changes.
    cfg.resumption = rustls::client::Resumption::store(super::ClientSessions::new(trust));
    Ok(Arc::new(cfg))
}

/// The server name to verify for a relay address like `relay-a` or `127.0.0.1`.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_string()).map_err(|_| TlsError::GrantKey(format!("invalid server name {name}")))
}

/// The common name of a verified peer certificate (the device id for agents).
pub fn peer_common_name(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let der = certs?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// A stable label for why a TLS handshake failed, for metrics and audit.
pub fn handshake_failure_label(err: &std::io::Error) -> &'static str {
    use rustls::{CertificateError as C, Error as E};
    let Some(inner) = err.get_ref().and_then(|e| e.downcast_ref::<E>()) else {
        return match err.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof",
            std::io::ErrorKind::ConnectionReset => "reset",
            _ => "io",
        };
    };
    match inner {
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "cert_expired",
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => "cert_not_yet_valid",
        E::InvalidCertificate(C::Revoked) => "cert_revoked",
        E::InvalidCertificate(C::UnknownIssuer) => "cert_unknown_issuer",
        E::InvalidCertificate(C::BadSignature) => "cert_bad_signature",
        E::InvalidCertificate(C::Other(o)) if o.0.downcast_ref::<super::WrongRole>().is_some() => "cert_wrong_role",
        E::InvalidCertificate(_) => "cert_invalid",
        E::NoCertificatesPresented => "no_client_cert",
        E::NoApplicationProtocol => "alpn_mismatch",
        E::PeerIncompatible(_) => "peer_incompatible",
        E::InvalidMessage(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => "malformed",
        E::AlertReceived(_) => "alert_received",
        _ => "tls_other",
    }
}
