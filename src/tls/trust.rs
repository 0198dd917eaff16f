//! Who a certificate may be, and whether it still may: roles and CRLs.
//!
//! Every fleet certificate names its **role** in its subject's
//! organizational unit (`OU=tether device`, `tether relay`, `tether hub`),
//! signed by the fleet CA like the rest of the subject. Each surface knows
//! the role its peer must have (from its ALPN, see [`roles_of`]) and its
//! verifiers refuse any other: a device certificate issued with the id
//! `relay-b` is never a twin or a relay.
//!
//! A [`Trust`] is one CA file plus an optional CRL file, shared by every
//! config of the process that names them. Its CRL is re-read on
//! [`reload_all`] (SIGHUP, and periodically by [`spawn_reloader`]); the
//! verifiers use the new list at once, and [`Trust::until_revoked`] lets a
//! live connection end when its peer's certificate is revoked.
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore, SignatureScheme};

use super::TlsError;

/// What a fleet certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Device,
    Relay,
    Hub,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Device, Role::Relay, Role::Hub];

    pub fn name(self) -> &'static str {
        match self {
            Role::Device => "device",
            Role::Relay => "relay",
            Role::Hub => "hub",
        }
    }

    /// The subject organizational unit that names this role.
    pub fn unit(self) -> &'static str {
        match self {
            Role::Device => "tether device",
            Role::Relay => "tether relay",
            Role::Hub => "tether hub",
        }
    }

    /// The role a certificate (DER) names; `None` for none or more than one.
    pub fn of(der: &[u8]) -> Option<Role> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let mut found = cert
            .subject()
            .iter_organizational_unit()
            .filter_map(|ou| ou.as_str().ok())
            .filter_map(|ou| Role::ALL.into_iter().find(|r| r.unit() == ou));
        let role = found.next()?;
        found.next().is_none().then_some(role)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How [`WrongRole`] shows in rustls's text of the error (QUIC passes TLS errors on as text).
pub const WRONG_ROLE_MARK: &str = "WrongRole";

/// A verified certificate of the wrong role (or of none).
#[derive(Debug, thiserror::Error)]
#[error("the certificate's role is {}, this surface needs a {want} certificate", got.map_or("none", Role::name))]
pub struct WrongRole {
    pub want: Role,
    pub got: Option<Role>,
}

fn check_role(der: &[u8], want: Role) -> Result<(), rustls::Error> {
    match Role::of(der) {
        Some(got) if got == want => Ok(()),
        got => Err(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(WrongRole {
            want,
            got,
        }))))),
    }
}

/// The roles of a surface, by its ALPN: the server's, and the client
/// certificate's (`None` where clients present none).
pub fn roles_of(alpn: &[u8]) -> (Role, Option<Role>) {
    use super::*;
    match alpn {
        a if a == ALPN_AGENT || a == ALPN_DATA || a == ALPN_QUIC_AGENT => (Role::Relay, Some(Role::Device)),
        a if a == ALPN_CLIENT || a == ALPN_CLIENT_WAITS || a == ALPN_QUIC_CLIENT || a == ALPN_QUIC_CLIENT_WAITS => {
            (Role::Relay, None)
        }
        a if a == ALPN_TWIN => (Role::Relay, Some(Role::Relay)),
        a if a == ALPN_HTTP1 => (Role::Hub, Some(Role::Relay)),
        a if a == ALPN_E2E || a == ALPN_E2E_KEYED => (Role::Device, None),
        _ => (Role::Relay, None),
    }
}

/// The serial number of a certificate (DER), as revocation lists name it.
pub fn serial_of(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.raw_serial().to_vec())
}

/// The verifiers built from one version of the CRL.
struct Built {
    revoked: HashSet<Vec<u8>>,
    client_required: Arc<dyn ClientCertVerifier>,
    client_optional: Arc<dyn ClientCertVerifier>,
    server: Arc<WebPkiServerVerifier>,
}

/// One CA file and its optional CRL file, shared by the configs that name them.
pub struct Trust {
    ca: PathBuf,
    crl: Option<PathBuf>,
    roots: Arc<RootCertStore>,
    hints: Vec<DistinguishedName>,
    built: RwLock<Arc<Built>>,
    /// SHA-256 of the CRL file's bytes in force.
    crl_stamp: Mutex<Option<[u8; 32]>>,
    generation: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust").field("ca", &self.ca).field("crl", &self.crl).finish()
    }
}

static ALL: LazyLock<Mutex<Vec<Arc<Trust>>>> = LazyLock::new(Default::default);

/// What a CRL file holds, by content (a rewrite within the same second, of
/// the same length, still counts as a change).
fn stamp(path: &Path) -> Option<[u8; 32]> {
    use sha2::Digest;
    let bytes = std::fs::read(path).ok()?;
    Some(sha2::Sha256::digest(&bytes).into())
}

impl Trust {
    /// The process's trust for `ca` and `crl`, loaded once.
    pub fn get(ca: &Path, crl: Option<&Path>) -> Result<Arc<Trust>, TlsError> {
        let mut all = crate::util::lock(&ALL);
        if let Some(t) = all.iter().find(|t| t.ca == ca && t.crl.as_deref() == crl) {
            return Ok(t.clone());
        }
        let roots = super::load_roots(ca)?;
        let hints = roots.subjects();
        let crls = match crl {
            Some(p) => super::load_crls(p)?,
            None => Vec::new(),
        };
        let built = build(&roots, crls)?;
        let t = Arc::new(Trust {
            ca: ca.into(),
            crl: crl.map(Path::to_path_buf),
            roots,
            hints,
            built: RwLock::new(Arc::new(built)),
            crl_stamp: Mutex::new(crl.and_then(stamp)),
            generation: tokio::sync::watch::Sender::new(0),
        });
        all.push(t.clone());
        Ok(t)
    }

    fn current(&self) -> Arc<Built> {
        self.built.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-reads the CRL file if it changed. `Ok(true)` when a new list is in force.
    /// A CRL that does not parse leaves the old one in force.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let Some(path) = &self.crl else { return Ok(false) };
        let now = stamp(path);
        {
            let mut last = crate::util::lock(&self.crl_stamp);
            if *last == now {
                return Ok(false);
            }
            *last = now;
        }
        let built = build(&self.roots, super::load_crls(path)?)?;
        let count = built.revoked.len();
        *self.built.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(built);
        self.generation.send_modify(|g| *g += 1);
        tracing::info!(crl = %path.display(), revoked = count, "CRL reloaded");
        Ok(true)
    }

    /// How many times a new CRL came into force (session caches follow it).
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Whether the CRL in force revokes `serial`.
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        self.current().revoked.contains(serial)
    }

    /// Completes when the certificate with `serial` is revoked by a reloaded CRL
    /// (at once if it already is). Never completes for a trust without a CRL.
    pub async fn until_revoked(self: Arc<Self>, serial: Vec<u8>) {
        let mut rx = self.generation.subscribe();
        loop {
            if self.is_revoked(&serial) {
                return;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Completes when the certificate `cert` (DER) is revoked; never without one.
    pub fn watch(self: &Arc<Self>, cert: Option<&[u8]>) -> Revoked {
        match cert.and_then(serial_of) {
            Some(s) => Box::pin(self.clone().until_revoked(s)),
            None => Box::pin(std::future::pending()),
        }
    }

    /// A client certificate verifier requiring `role` (any role where the
    /// application checks it itself; and, when `mandatory` is false,
    /// accepting clients without a certificate).
    pub fn client_verifier(self: &Arc<Self>, role: Option<Role>, mandatory: bool) -> Arc<dyn ClientCertVerifier> {
        Arc::new(ClientRole { trust: self.clone(), role, mandatory })
    }

    /// A server certificate verifier requiring `role` and the server name.
    pub fn server_verifier(self: &Arc<Self>, role: Role) -> Arc<dyn ServerCertVerifier> {
        Arc::new(ServerRole { trust: self.clone(), role })
    }
}

/// Completes when a live connection's peer is revoked (see [`Trust::watch`]).
pub type Revoked = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// [`Trust::watch`] for the peer presenting `certs`, under the CRL of
/// (`ca`, `crl`) (never completes without a CRL).
pub fn watch_peer(ca: &Path, crl: Option<&Path>, certs: Option<&[CertificateDer<'_>]>) -> Revoked {
    match crl.and_then(|crl| Trust::get(ca, Some(crl)).ok()) {
        Some(t) => t.watch(certs.and_then(|c| c.first()).map(|c| c.as_ref())),
        None => Box::pin(std::future::pending()),
    }
}

fn build(roots: &Arc<RootCertStore>, crls: Vec<CertificateRevocationListDer<'static>>) -> Result<Built, TlsError> {
    let mut revoked = HashSet::new();
    let issuers: HashSet<Vec<u8>> = roots.subjects().iter().map(|s| s.as_ref().to_vec()).collect();
    for crl in &crls {
        if let Ok((_, list)) = x509_parser::parse_x509_crl(crl) {
            // Only lists that name a trusted CA as issuer; webpki checks their
            // signatures at each handshake.
            if issuers.contains(list.issuer().as_raw()) {
                revoked.extend(list.iter_revoked_certificates().map(|r| r.raw_serial().to_vec()));
            }
        }
    }
    let client = |optional: bool| -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
        let mut b = WebPkiClientVerifier::builder_with_provider(roots.clone(), super::provider());
        if !crls.is_empty() {
            b = b.with_crls(crls.clone()).only_check_end_entity_revocation();
        }
        if optional {
            b = b.allow_unauthenticated();
        }
        Ok(b.build()?)
    };
    let mut server = WebPkiServerVerifier::builder_with_provider(roots.clone(), super::provider());
    if !crls.is_empty() {
        server = server.with_crls(crls.clone()).only_check_end_entity_revocation();
    }
    let server = server.build().map_err(|e| TlsError::GrantKey(format!("server verifier: {e}")))?;
    Ok(Built { revoked, client_required: client(false)?, client_optional: client(true)?, server })
}

/// Re-reads every changed CRL of the process; returns how many changed.
/// A CRL that cannot be read is logged and the old one stays in force.
pub fn reload_all() -> usize {
    let all: Vec<Arc<Trust>> = crate::util::lock(&ALL).clone();
    let mut changed = 0;
    for t in all {
        match t.reload() {
            Ok(true) => {
                crate::metrics::CRL_RELOADS.with_label_values(&["loaded"]).inc();
                changed += 1
            }
            Ok(false) => {}
            Err(e) => {
                crate::metrics::CRL_RELOADS.with_label_values(&["failed"]).inc();
                tracing::error!(error = %e, "CRL reload failed; the previous list stays in force")
            }
        }
    }
    changed
}

/// How often a running process re-reads its CRL files: a certificate revoked
/// while connected is dropped within this (plus the CRL's distribution).
pub const CRL_RELOAD_PERIOD: Duration = Duration::from_secs(30);

/// SIGHUP caught by [`catch_sighup`] before the reloader runs.
static EARLY_HUP: Mutex<Option<tokio::signal::unix::Signal>> = Mutex::new(None);

/// Takes SIGHUP over from its default action (ending the process) now: call
/// it before the process says it is up, so that a SIGHUP sent at once
/// reloads instead of killing it. [`spawn_reloader`] then answers every
/// SIGHUP from this moment on.
pub fn catch_sighup() {
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    if let Ok(mut early) = EARLY_HUP.lock() {
        *early = hup;
    }
}

/// Reloads CRLs and grant keys every `period` and on SIGHUP, until the runtime ends.
pub fn spawn_reloader(period: Duration) {
    // The handler caught before the process said it is up, if any; else one
    // registered now, before the task first runs.
    let early = EARLY_HUP.lock().ok().and_then(|mut e| e.take());
    let mut hup = early.or_else(|| tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            match hup.as_mut() {
                Some(h) => tokio::select! {
                    _ = tick.tick() => {}
                    _ = h.recv() => tracing::info!("SIGHUP: reloading CRLs and grant keys"),
                },
                None => {
                    tick.tick().await;
                }
            }
            reload_all();
            super::grant_keys::reload_all();
        }
    });
}

#[derive(Debug)]
struct ClientRole {
    trust: Arc<Trust>,
    role: Option<Role>,
    mandatory: bool,
}

impl ClientRole {
    fn inner(&self) -> Arc<dyn ClientCertVerifier> {
        let b = self.trust.current();
        if self.mandatory { b.client_required.clone() } else { b.client_optional.clone() }
    }
}

impl ClientCertVerifier for ClientRole {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.trust.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self.inner().verify_client_cert(end_entity, intermediates, now)?;
        if let Some(role) = self.role {
            check_role(end_entity, role)?;
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner().supported_verify_schemes()
    }
}

#[derive(Debug)]
struct ServerRole {
    trust: Arc<Trust>,
    role: Role,
}

impl ServerCertVerifier for ServerRole {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ok = self.trust.current().server.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        check_role(end_entity, self.role)?;
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trust.current().server.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trust.current().server.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust.current().server.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::pki::{Ca, Validity};

    #[test]
    fn a_rewritten_crl_is_in_force_after_reload_and_roles_are_read_from_the_subject() {
        let dir = tempfile::tempdir().unwrap();
        crate::tls::pki::init_dir(dir.path(), &["d1"]).unwrap();
        let ca = Ca::load(dir.path()).unwrap();
        let (a, b) =
            (ca.issue_device("a", Validity::days(1)).unwrap(), ca.issue_device("b", Validity::days(1)).unwrap());
        let crl = dir.path().join("crl.pem");
        std::fs::write(&crl, ca.crl(std::slice::from_ref(&a.serial)).unwrap()).unwrap();
        let t = Trust::get(&dir.path().join("ca.pem"), Some(&crl)).unwrap();
        assert!(t.is_revoked(&a.serial) && !t.is_revoked(&b.serial));
        assert!(!t.reload().unwrap(), "an unchanged CRL counts as a change");
        // At once, with no time for the file's mtime to move.
        std::fs::write(&crl, ca.crl(std::slice::from_ref(&b.serial)).unwrap()).unwrap();
        assert!(t.reload().unwrap());
        assert!(!t.is_revoked(&a.serial) && t.is_revoked(&b.serial));
        let der = |p: &str| crate::tls::load_certs(&dir.path().join(p)).unwrap().remove(0);
        assert_eq!(Role::of(&der("d1.pem")), Some(Role::Device));
        assert_eq!(Role::of(&der("relay-a.pem")), Some(Role::Relay));
        assert_eq!(Role::of(&der("hub.pem")), Some(Role::Hub));
        assert_eq!(Role::of(&der("ca.pem")), None);
    }
}
