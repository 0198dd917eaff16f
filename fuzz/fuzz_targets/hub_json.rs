//! The hub's JSON bodies (`api::*`): arbitrary bytes never panic the parsers
//! the hub runs on untrusted input.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tether::api::{LoginRequest, RelayReport, SessionRequest};

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<LoginRequest>(data);
    let _ = serde_json::from_slice::<SessionRequest>(data);
    let _ = serde_json::from_slice::<RelayReport>(data);
});
