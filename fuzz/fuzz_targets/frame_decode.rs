//! Arbitrary bytes into the frame and grant decoders: no panic, no unbounded allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = bytes::BytesMut::from(data);
    while let Ok(Some(_)) = tether::proto::Frame::decode(&mut buf) {}
    let mut g = bytes::Bytes::copy_from_slice(data);
    let _ = tether::proto::SignedGrant::decode(&mut g);
});
