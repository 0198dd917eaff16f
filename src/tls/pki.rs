//! Generating the fleet PKI with rcgen: CA, relay certs, device certs, CRLs,
//! and the hub's Ed25519 grant-signing key. Dev and test use only.
use std::path::{Path, PathBuf};

use aws_lc_rs::signature::Ed25519KeyPair;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::{Role, TlsError};

/// Validity window of an issued certificate.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From yesterday for `days` days.
    pub fn days(days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Validity { not_before: now - Duration::days(1), not_after: now + Duration::days(days) }
    }
    /// Already expired (for tests of expiry handling).
    pub fn expired() -> Self {
        let now = OffsetDateTime::now_utc();
        Validity { not_before: now - Duration::days(30), not_after: now - Duration::days(1) }
    }
}

/// A PEM certificate, its PEM key, and its serial (for revocation).
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub serial: Vec<u8>,
}

impl Issued {
    /// Writes `NAME.pem` and `NAME.key` (0600) into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(), TlsError> {
        write_file(&dir.join(format!("{name}.pem")), &self.cert_pem, false)?;
        write_file(&dir.join(format!("{name}.key")), &self.key_pem, true)
    }
}

/// The fleet root CA: certificate PEM and an issuer that can sign with its key.
pub struct Ca {
    pub cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn random_serial() -> SerialNumber {
    let mut s: [u8; 16] = crate::random_bytes();
    s[0] &= 0x7f;
    s[0] |= 0x01;
    SerialNumber::from_slice(&s)
}

impl Ca {
    pub fn generate(name: &str) -> Result<Ca, TlsError> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.distinguished_name.push(DnType::OrganizationName, "tether fleet");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        p.serial_number = Some(random_serial());
        let v = Validity::days(3650);
        p.not_before = v.not_before;
        p.not_after = v.not_after;
        p.key_identifier_method = KeyIdMethod::Sha256;
        let cert = p.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Ca { cert_pem: cert.pem(), key_pem, issuer: Issuer::new(p, key) })
    }

    /// Loads `ca.pem` and `ca.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Ca, TlsError> {
        let cert_pem = read_string(&dir.join("ca.pem"))?;
        let key_pem = read_string(&dir.join("ca.key"))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(Ca { cert_pem, key_pem, issuer })
    }

    /// Writes `ca.pem` and `ca.key` (0600) into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), TlsError> {
        write_file(&dir.join("ca.pem"), &self.cert_pem, false)?;
        write_file(&dir.join("ca.key"), &self.key_pem, true)
    }

    fn issue(
        &self,
        role: Role,
        cn: &str,
        sans: &[&str],
        eku: Vec<ExtendedKeyUsagePurpose>,
        v: Validity,
    ) -> Result<Issued, TlsError> {
        let key = KeyPair::generate()?;
        let (p, serial) = leaf_params(role, cn, sans, eku, v)?;
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), serial: serial.to_bytes() })
    }

    /// A device certificate for a key the device holds (its renewal
    /// request's); returns the certificate (PEM).
    pub fn issue_for_key(&self, id: &str, key: &impl rcgen::PublicKeyData, v: Validity) -> Result<String, TlsError> {
        let eku = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
        let (p, _) = leaf_params(Role::Device, id, &[id], eku, v)?;
        Ok(p.signed_by(key, &self.issuer)?.pem())
    }

    /// A relay's certificate: server toward agents and specialists, client
    /// toward the hub, both on the twin link.
    pub fn issue_relay(&self, name: &str, sans: &[&str]) -> Result<Issued, TlsError> {
        let eku = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(Role::Relay, name, sans, eku, Validity::days(825))
    }

    /// The hub's HTTPS server certificate.
    pub fn issue_hub(&self, name: &str, sans: &[&str]) -> Result<Issued, TlsError> {
        self.issue(Role::Hub, name, sans, vec![ExtendedKeyUsagePurpose::ServerAuth], Validity::days(825))
    }

    /// A certificate of any role (tests of wrong-role refusals).
    pub fn issue_as(&self, role: Role, cn: &str, sans: &[&str], v: Validity) -> Result<Issued, TlsError> {
        let eku = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(role, cn, sans, eku, v)
    }

    /// A device's certificate; the device id is the subject's common name and
    /// a DNS name (the client verifies the device by it in end-to-end TLS).
    /// Client auth toward relays, server auth toward specialists.
    pub fn issue_device(&self, id: &str, v: Validity) -> Result<Issued, TlsError> {
        let eku = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(Role::Device, id, &[id], eku, v)
    }

    /// A CRL (PEM) revoking the given serials.
    pub fn crl(&self, serials: &[Vec<u8>]) -> Result<String, TlsError> {
        let now = OffsetDateTime::now_utc();
        let p = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(7),
            crl_number: random_serial(),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: now - Duration::minutes(1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(p.signed_by(&self.issuer)?.pem()?)
    }
}

/// A leaf certificate's parameters: names, role, usages, a fresh serial.
fn leaf_params(
    role: Role,
    cn: &str,
    sans: &[&str],
    eku: Vec<ExtendedKeyUsagePurpose>,
    v: Validity,
) -> Result<(CertificateParams, SerialNumber), TlsError> {
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name.push(DnType::OrganizationName, "tether fleet");
    p.distinguished_name.push(DnType::OrganizationalUnitName, role.unit());
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = eku;
    let serial = random_serial();
    p.serial_number = Some(serial.clone());
    p.not_before = v.not_before;
    p.not_after = v.not_after;
    p.use_authority_key_identifier_extension = true;
    Ok((p, serial))
}

/// Generates the hub's Ed25519 grant-signing key and writes `grant.key`
/// (PKCS#8 PEM, 0600) and `grant.pub` (hex of the 32-byte public key).
pub fn write_grant_key(dir: &Path) -> Result<[u8; 32], TlsError> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| TlsError::GrantKey("generation failed".into()))?;
    let signer = crate::proto::GrantSigner::from_pkcs8(doc.as_ref()).map_err(|e| TlsError::GrantKey(e.to_string()))?;
    let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", doc.as_ref().to_vec()));
    write_file(&dir.join("grant.key"), &pem, true)?;
    let public = signer.public_key();
    write_file(&dir.join("grant.pub"), &format!("{}\n", hex::encode(public)), false)?;
    Ok(public)
}

/// Reads a grant-signing key written by [`write_grant_key`].
pub fn load_grant_signer(path: &Path) -> Result<crate::proto::GrantSigner, TlsError> {
    let text = read_string(path)?;
    let p = pem::parse(text).map_err(|_| TlsError::BadPem { path: path.into(), what: "grant key" })?;
    crate::proto::GrantSigner::from_pkcs8(p.contents()).map_err(|e| TlsError::GrantKey(e.to_string()))
}

/// Everything `tether certs init` writes.
pub fn init_dir(dir: &Path, devices: &[&str]) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write { path: dir.into(), source })?;
    let ca = Ca::generate("tether dev fleet CA")?;
    ca.write(dir)?;
    ca.issue_relay("relay-a", &["relay-a", "localhost", "127.0.0.1"])?.write(dir, "relay-a")?;
    ca.issue_relay("relay-b", &["relay-b", "localhost", "127.0.0.2"])?.write(dir, "relay-b")?;
    ca.issue_hub("hub", &["hub", "localhost", "127.0.0.1"])?.write(dir, "hub")?;
    for d in devices {
        ca.issue_device(d, Validity::days(825))?.write(dir, d)?;
    }
    write_grant_key(dir)?;
    write_file(
        &dir.join("DEV-ONLY.txt"),
        "Generated by `tether certs init` for development and tests.\nNever use these keys in production.\n",
        false,
    )
}

pub(super) fn read_string(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read { path: path.into(), source })
}

/// Writes a file; secrets get mode 0600 on every write (an existing file
/// with looser permissions is tightened before anything is written).
pub fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), TlsError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |source| TlsError::Write { path: PathBuf::from(path), source };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if secret {
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(err)?;
    if secret {
        f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    std::io::Write::write_all(&mut f, text.as_bytes()).map_err(err)
}
