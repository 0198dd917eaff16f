//! Config files (relay, agent, hub, client profile): arbitrary text never
//! panics the TOML parsers or the validation that follows.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tether::config::ConfigFile;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(c) = toml::from_str::<tether::relay::RelayConfig>(text) {
        let _ = c.problems();
    }
    if let Ok(c) = toml::from_str::<tether::agent::AgentConfig>(text) {
        let _ = c.problems();
    }
    if let Ok(c) = toml::from_str::<tether::hub::HubConfig>(text) {
        let _ = c.problems();
    }
    if let Ok(c) = toml::from_str::<tether::client::Profile>(text) {
        let _ = c.problems();
    }
});
