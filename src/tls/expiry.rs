//! `tether_cert_expiry_timestamp_seconds{role,name}`: when a process's own
//! certificate and its fleet CA expire, so an alert fires weeks before a
//! relay, the hub or a device stops being able to connect.
use std::path::Path;

use super::{Role, load_certs};

/// Exports the expiry of the first certificate in each of `files`.
pub fn export(files: &[&Path]) {
    for path in files {
        let Ok(certs) = load_certs(path) else { continue };
        let Some(der) = certs.first() else { continue };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { continue };
        let role = match Role::of(der) {
            Some(r) => r.name(),
            None if cert.is_ca() => "ca",
            None => "unknown",
        };
        let name = cert.subject().iter_common_name().next().and_then(|c| c.as_str().ok()).unwrap_or("").to_string();
        let not_after = cert.validity().not_after.timestamp();
        crate::metrics::CERT_EXPIRY.with_label_values(&[role, &name]).set(not_after);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_certificate_and_ca_expiry_are_exported_by_role() {
        let dir = tempfile::tempdir().unwrap();
        crate::tls::pki::init_dir(dir.path(), &["dev-1"]).unwrap();
        super::export(&[&dir.path().join("dev-1.pem"), &dir.path().join("ca.pem")]);
        let text = crate::metrics::render();
        let line = |role: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("tether_cert_expiry_timestamp_seconds") && l.contains(&format!("role=\"{role}\""))
                })
                .map(|l| l.rsplit(' ').next().unwrap().parse::<i64>().unwrap())
        };
        let now = crate::util::now_secs() as i64;
        let device = line("device").expect("the device certificate's expiry");
        assert!(device > now + 86_400, "expires in the future: {device}");
        assert!(line("ca").expect("the CA's expiry") >= device);
        assert!(text.contains("name=\"dev-1\""), "{text}");
    }
}
