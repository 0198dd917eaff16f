//! What the hub and the agent's operator socket parse from untrusted input:
//! JSON bodies (`api::*`, `agent::operator::Request`), request paths and the
//! `since` query. Arbitrary bytes never panic them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tether::api::{LoginRequest, RelayReport, Route, SessionRequest, parse_since};

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<LoginRequest>(data);
    let _ = serde_json::from_slice::<SessionRequest>(data);
    let _ = serde_json::from_slice::<RelayReport>(data);
    let _ = serde_json::from_slice::<tether::agent::operator::Request>(data);
    if let Ok(s) = std::str::from_utf8(data) {
        for method in ["GET", "POST", "DELETE"] {
            let _ = Route::label(Route::of(method, s));
        }
        let _ = parse_since(s);
    }
});
