//! Grants as relays and agents receive them: arbitrary bytes through the
//! decoder, the signature check, the body decoder (which the product runs only
//! after the signature verified) and the field checks never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tether::proto::{GrantVerifier, SignedGrant};

fuzz_target!(|data: &[u8]| {
    let mut b = bytes::Bytes::copy_from_slice(data);
    let Ok(signed) = SignedGrant::decode(&mut b) else { return };
    let _ = signed.session_hint();
    let _ = GrantVerifier::new([7u8; 32]).verify(&signed);
    if let Ok(g) = signed.decode_unverified() {
        let _ = g.check(&g.device, "echo", g.issued_at);
        let _ = g.check("other", "ssh", u64::MAX);
    }
});
