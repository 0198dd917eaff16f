use rcgen::KeyPair;

use super::*;
use crate::tls::pki::init_dir;

fn tampered(csr_pem: &str) -> String {
    let mut der = pem::parse(csr_pem).unwrap().into_contents();
    // A byte inside the subject (the signed part), not the signature.
    let at = der.windows(6).position(|w| w == b"INJ-42").unwrap();
    der[at] = b'X';
    pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der))
}

#[test]
fn a_request_is_checked_for_its_signature_and_its_name() {
    let next = KeyPair::generate().unwrap();
    let csr = make_request("INJ-42", &next).unwrap();
    let key = check_request("INJ-42", &csr).expect("a request the device made");
    assert_eq!(key, next.public_key_raw(), "the request's key is the next key");

    let e = check_request("INJ-43", &csr).unwrap_err();
    assert_eq!(e.code, "csr_mismatch", "{e}");
    assert!(e.message.contains("INJ-42") && e.message.contains("INJ-43"), "{e}");

    let e = check_request("XNJ-42", &tampered(&csr)).unwrap_err();
    assert_eq!(e.code, "bad_csr", "an edited request no longer verifies: {e}");
    assert_eq!(check_request("INJ-42", "hello").unwrap_err().code, "bad_csr");
}

#[test]
fn the_signed_certificate_is_for_the_requests_key_and_checked_like_any_device_certificate() {
    let dir = tempfile::tempdir().unwrap();
    init_dir(dir.path(), &["INJ-42"]).unwrap();
    let ca_pem = dir.path().join("ca.pem");
    let ca = Ca::load(dir.path()).unwrap();
    let next = KeyPair::generate().unwrap();
    let csr = make_request("INJ-42", &next).unwrap();

    let cert = sign_request(&ca, "INJ-42", &csr, 825).unwrap();
    let der = der_of(&cert).unwrap();
    assert_eq!(cert_key(&der).unwrap(), next.public_key_raw());
    check_device_cert(&ca_pem, None, "INJ-42", &der).expect("a fleet device certificate");
    let left = not_after(&der).unwrap() - crate::util::now_secs();
    assert!((824 * 86_400..=826 * 86_400).contains(&left), "valid for 825 days: {left}");
    assert_eq!(Role::of(&der), Some(Role::Device));

    // The CA's holder signs only what names the device.
    assert_eq!(sign_request(&ca, "INJ-43", &csr, 825).unwrap_err().code, "csr_mismatch");
    // What the device checks before it installs: name, role, CA.
    assert_eq!(check_device_cert(&ca_pem, None, "INJ-43", &der).unwrap_err().code, "wrong_device");
    let relay = der_of(&std::fs::read_to_string(dir.path().join("relay-a.pem")).unwrap()).unwrap();
    assert_eq!(check_device_cert(&ca_pem, None, "relay-a", &relay).unwrap_err().code, "bad_certificate");
    let other = tempfile::tempdir().unwrap();
    init_dir(other.path(), &[]).unwrap();
    let foreign = sign_request(&Ca::load(other.path()).unwrap(), "INJ-42", &csr, 825).unwrap();
    let e = check_device_cert(&ca_pem, None, "INJ-42", &der_of(&foreign).unwrap()).unwrap_err();
    assert_eq!(e.code, "bad_certificate", "another CA's certificate: {e}");
    assert_eq!(der_of("not a certificate").unwrap_err().code, "bad_certificate");
}
