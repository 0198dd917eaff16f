//! Replicated twin facts (`proto::twin::Fact`): arbitrary bytes never panic,
//! and a decoded fact re-encodes to a fact that decodes the same.
#![no_main]
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tether::proto::twin::Fact;

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::copy_from_slice(data);
    if let Ok(f) = Fact::decode(&mut b) {
        let mut out = BytesMut::new();
        f.encode(&mut out);
        let again = Fact::decode(&mut out.freeze()).expect("a re-encoded fact decodes");
        assert_eq!(again, f);
    }
});
