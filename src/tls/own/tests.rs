use super::*;
use crate::tls::pki::{Ca, Validity};

fn fleet() -> (tempfile::TempDir, Ca) {
    let dir = tempfile::tempdir().unwrap();
    crate::tls::pki::init_dir(dir.path(), &["dev-1"]).unwrap();
    let ca = Ca::load(dir.path()).unwrap();
    (dir, ca)
}

fn now() -> i64 {
    crate::util::now_secs() as i64
}

#[test]
fn a_pair_of_the_right_role_and_name_is_the_process_s_own() {
    let (dir, _) = fleet();
    let d = dir.path();
    let own = identity(&d.join("relay-a.pem"), &d.join("relay-a.key"), Role::Relay, Some("relay-a")).unwrap();
    assert_eq!((own.name.as_str(), own.role), ("relay-a", Role::Relay));
    let s = standing(&own, &d.join("ca.pem"), None, now()).unwrap();
    assert!(s.problems.is_empty() && s.warnings.is_empty(), "{s:?}");
    let hub = identity(&d.join("hub.pem"), &d.join("hub.key"), Role::Hub, None).unwrap();
    let s = standing(&hub, &d.join("ca.pem"), None, now()).unwrap();
    assert!(s.problems.is_empty(), "the hub's server-only certificate verifies as a server's: {s:?}");
    assert!(own.describe(now()).starts_with("relay relay-a, until "), "{}", own.describe(now()));
}

#[test]
fn a_wrong_key_role_or_name_is_refused_naming_what_to_fix() {
    let (dir, _) = fleet();
    let d = dir.path();
    let err =
        |cert: &str, key: &str, role, name| identity(&d.join(cert), &d.join(key), role, name).unwrap_err().to_string();
    let e = err("relay-a.pem", "relay-b.key", Role::Relay, Some("relay-a"));
    assert!(e.contains("relay-b.key is not the private key of") && e.contains("relay-a.pem"), "{e}");
    let e = err("relay-a.pem", "relay-a.key", Role::Device, Some("dev-1"));
    assert!(e.contains("is a relay certificate (\"relay-a\"); a device needs a device certificate"), "{e}");
    let e = err("relay-b.pem", "relay-b.key", Role::Relay, Some("relay-a"));
    assert!(e.contains("the certificate of relay \"relay-b\", but the config names this relay \"relay-a\""), "{e}");
}

#[test]
fn an_expired_foreign_revoked_or_ending_certificate_is_flagged() {
    let (dir, ca) = fleet();
    let d = dir.path();
    let (ca_pem, t) = (d.join("ca.pem"), now());
    let write = |name: &str, issued: crate::tls::pki::Issued| {
        issued.write(d, name).unwrap();
        identity(&d.join(format!("{name}.pem")), &d.join(format!("{name}.key")), Role::Device, Some("dev-9")).unwrap()
    };
    let expired = write("old", ca.issue_device("dev-9", Validity::expired()).unwrap());
    let s = standing(&expired, &ca_pem, None, t).unwrap();
    assert!(s.problems[0].contains("the certificate expired at"), "{s:?}");
    let ending = write("ending", ca.issue_device("dev-9", Validity::days(3)).unwrap());
    let s = standing(&ending, &ca_pem, None, t).unwrap();
    assert!(s.problems.is_empty() && s.warnings.len() == 1 && s.warnings[0].contains("in 3 day(s): renew it"), "{s:?}");

    let other = Ca::generate("another fleet").unwrap();
    let foreign = write("foreign", other.issue_device("dev-9", Validity::days(30)).unwrap());
    let s = standing(&foreign, &ca_pem, None, t).unwrap();
    assert!(s.problems[0].contains("is not signed by the fleet CA in"), "{s:?}");

    let issued = ca.issue_device("dev-9", Validity::days(30)).unwrap();
    let crl = d.join("crl.pem");
    std::fs::write(&crl, ca.crl(std::slice::from_ref(&issued.serial)).unwrap()).unwrap();
    let revoked = write("revoked", issued);
    let s = standing(&revoked, &ca_pem, Some(&crl), t).unwrap();
    assert!(s.problems[0].contains("is revoked by") && s.problems[0].contains("crl.pem"), "{s:?}");
}
