//! The resumable stream's wire (`proto::stream`): arbitrary bytes never
//! panic, and every frame decoded re-encodes to the bytes it came from.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tether::proto::stream::StreamFrame;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut consumed = 0;
    while let Ok(Some(f)) = StreamFrame::decode(&mut buf) {
        let mut again = BytesMut::new();
        f.encode(&mut again);
        assert_eq!(&again[..], &data[consumed..consumed + again.len()]);
        consumed += again.len();
    }
});
