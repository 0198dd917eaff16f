//! A process's own certificate, checked before it serves.
//!
//! [`identity`]: the key is the certificate's, the certificate names the
//! process's role and the name its config gives it. A mismatch stops the
//! start, with what to fix: run otherwise, every peer would refuse it (a
//! twin as `not_the_twin`, agents as a wrong role) and say less about why.
//!
//! [`standing`]: the certificate chains to the fleet CA, is within its
//! validity and not revoked by the CRL. `--check` fails on these; a start
//! logs them (an expired certificate is replaced while the rest keeps its
//! config), and peers refuse the process by name.
use std::path::Path;

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::{CertificateError, Error as RustlsError};

use super::{Role, TlsError, Trust, load_certs, load_key, provider};

/// Within this many days of its end a certificate is flagged (the alert's 14).
pub const EXPIRING_DAYS: i64 = 14;

/// What the certificate says of the process.
#[derive(Debug, Clone)]
pub struct Own {
    pub name: String,
    pub role: Role,
    pub not_after: i64,
    der: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    /// The first subject alternative name (the hub's server name to verify).
    san: Option<String>,
}

/// `cert` and `key` are one pair, the certificate is a `want` certificate
/// and, where `name` is given, names it.
pub fn identity(cert: &Path, key: &Path, want: Role, name: Option<&str>) -> Result<Own, TlsError> {
    let fail = |text: String| Err(TlsError::Identity(text));
    let chain = load_certs(cert)?;
    let signer = provider().key_provider.load_private_key(load_key(key)?)?;
    let pair = rustls::sign::CertifiedKey::new(chain.clone(), signer);
    if let Err(RustlsError::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) = pair.keys_match() {
        return fail(format!("{} is not the private key of {}", key.display(), cert.display()));
    }
    let der = chain[0].clone();
    let Ok((_, x)) = x509_parser::parse_x509_certificate(&der) else {
        return fail(format!("{}: not an X.509 certificate", cert.display()));
    };
    let cn = x.subject().iter_common_name().next().and_then(|c| c.as_str().ok()).unwrap_or("").to_string();
    let san = x.subject_alternative_name().ok().flatten().and_then(|s| {
        s.value.general_names.iter().find_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            x509_parser::extensions::GeneralName::IPAddress(ip) => ip_text(ip),
            _ => None,
        })
    });
    let not_after = x.validity().not_after.timestamp();
    match Role::of(&der) {
        Some(got) if got == want => {}
        got => {
            let got = got.map_or("no fleet role".to_string(), |r| format!("a {r} certificate"));
            return fail(format!(
                "{} is {got} ({cn:?}); a {want} needs a {want} certificate (tether certs {want} …)",
                cert.display()
            ));
        }
    }
    if let Some(name) = name.filter(|n| *n != cn) {
        return fail(format!(
            "{} is the certificate of {want} {cn:?}, but the config names this {want} {name:?}",
            cert.display()
        ));
    }
    Ok(Own { name: cn, role: want, not_after, der, chain, san })
}

fn ip_text(octets: &[u8]) -> Option<String> {
    match octets.len() {
        4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(octets).ok()?).to_string()),
        16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(octets).ok()?).to_string()),
        _ => None,
    }
}

/// How a certificate stands in the fleet at `now`: problems (peers refuse
/// it) and warnings (it ends within [`EXPIRING_DAYS`]).
#[derive(Debug, Default)]
pub struct Standing {
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

/// [`Standing`] of `own` under the fleet CA `ca` and its CRL `crl`.
pub fn standing(own: &Own, ca: &Path, crl: Option<&Path>, now: i64) -> Result<Standing, TlsError> {
    let trust = Trust::get(ca, crl)?;
    let mut s = Standing::default();
    let left = own.not_after - now;
    let until = crate::util::clock::rfc3339(own.not_after);
    if left <= 0 {
        s.problems.push(format!("the certificate expired at {until}: peers refuse it; issue a new one"));
        return Ok(s);
    }
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.max(0) as u64));
    let checked = match own.role {
        // The hub's certificate is a server's only: verify it as its clients do.
        Role::Hub => {
            let name = super::server_name(own.san.as_deref().unwrap_or(&own.name))?;
            trust.server_verifier(Role::Hub).verify_server_cert(&own.der, &own.chain[1..], &name, &[], at).map(|_| ())
        }
        role => trust.client_verifier(Some(role), true).verify_client_cert(&own.der, &own.chain[1..], at).map(|_| ()),
    };
    match checked {
        Ok(()) => {}
        Err(RustlsError::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature)) => s
            .problems
            .push(format!("the certificate is not signed by the fleet CA in {}: peers refuse it", ca.display())),
        Err(RustlsError::InvalidCertificate(CertificateError::Revoked)) => s.problems.push(format!(
            "the certificate is revoked by {}: peers refuse it",
            crl.map_or("the CRL".into(), |p| p.display().to_string())
        )),
        Err(RustlsError::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        )) => s.problems.push("the certificate is not valid yet (is this host's clock right?)".into()),
        Err(e) => s.problems.push(format!("the certificate does not verify under the fleet CA: {e}")),
    }
    if left < EXPIRING_DAYS * 86_400 {
        s.warnings.push(format!("the certificate ends at {until}, in {} day(s): renew it", left / 86_400));
    }
    Ok(s)
}

impl Own {
    /// "relay relay-a, until 2029-03-07T20:57:00Z (825 days)".
    pub fn describe(&self, now: i64) -> String {
        let days = (self.not_after - now).max(0) / 86_400;
        format!("{} {}, until {} ({days} days)", self.role, self.name, crate::util::clock::rfc3339(self.not_after))
    }
}

#[cfg(test)]
mod tests;
