//! A device's clock against this relay's, from its heartbeats.
use serde_json::json;

use super::state::State;
use crate::proto::Reason;
use crate::util::clock::{describe_offset, skewed};

/// Takes a device's clock offset (device minus relay, milliseconds) from a
/// heartbeat. News goes to the hub with the next report; a clock that moves
/// past [`crate::util::clock::SKEW_WARN_MS`] either way, or back within it,
/// is logged and audited.
pub(super) fn heard(state: &State, device: &str, offset_ms: i64) {
    let Some((before, news)) = state.agents.get(device).map(|a| (a.clock.get(), a.clock.set(offset_ms))) else {
        return;
    };
    if news {
        state.hub_out().agents_changed = true;
    }
    let was = before.is_some_and(skewed);
    if skewed(offset_ms) != was {
        let event = if was { "device_clock_in_step" } else { "device_clock_skewed" };
        let words = describe_offset(offset_ms);
        state.audit.record(event, json!({"relay": state.cfg.name, "device": device, "offset_ms": offset_ms}));
        if was {
            tracing::info!(offset = %words, "the device's clock is back in step with this relay's");
        } else {
            tracing::warn!(offset = %words, "the device's clock is off from this relay's: its audit times are wrong, and grants may look expired to it");
        }
    }
}

/// Why the device refused, for the specialist: a grant that expired at a
/// device whose clock runs ahead names the clock.
pub(super) fn refused_why(state: &State, device: &str, reason: Reason) -> String {
    match (reason, state.agents.get(device).and_then(|a| a.clock.get())) {
        (Reason::GrantExpired, Some(off)) if off > 0 && skewed(off) => format!(
            "refused by the device: its clock is {} of the relay's, so every grant looks expired to it; set its time",
            describe_offset(off)
        ),
        _ => "refused by the device".into(),
    }
}
