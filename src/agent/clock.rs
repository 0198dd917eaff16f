//! How far this device's clock is off from its relays'. Each heartbeat
//! carries the agent's clock and the relay answers with its own; a device
//! whose clock runs off writes audit records with wrong times and, once it
//! runs two minutes ahead, takes every grant for expired. Measured here, it
//! is logged, audited, counted per relay, and named when a grant is refused.
use tokio::time::Instant;

use serde_json::json;

use super::Shared;
use crate::metrics;
use crate::util::clock::{describe_offset, skewed};

/// The heartbeat the agent sent last: its number and when.
pub struct Sent {
    pub seq: u64,
    pub at: Instant,
    pub clock_ms: u64,
}

/// A relay's answer to heartbeat `seq`, with its clock `relay_ms`. The
/// answer left the relay between our send and now: the relay's clock is
/// taken at the middle of the round trip. `was_skewed` is this channel's
/// state, so that a crossing is told once.
pub fn heard(state: &Shared, relay: &str, sent: &Sent, (seq, relay_ms): (u64, u64), was_skewed: &mut bool) {
    if seq != sent.seq {
        return;
    }
    let half = sent.at.elapsed().as_millis() as i64 / 2;
    let offset = (sent.clock_ms as i64).saturating_add(half).saturating_sub(relay_ms as i64);
    state.clock.insert(relay.to_string(), offset);
    metrics::AGENT_CLOCK_OFFSET.with_label_values(&[relay]).set(offset / 1000);
    let now = skewed(offset);
    if now == *was_skewed {
        return;
    }
    *was_skewed = now;
    let words = describe_offset(offset);
    let event = if now { "clock_skewed" } else { "clock_in_step" };
    state.audit.record(event, json!({"device": state.cfg.device, "relay": relay, "offset_ms": offset}));
    if now {
        tracing::warn!(offset = %words, "this device's clock is off from the relay's: audit records carry wrong times, and grants may look expired; set its time (NTP)");
    } else {
        tracing::info!(offset = %words, "this device's clock is back in step with the relay's");
    }
}

/// What to add to a refusal of an expired grant: the clock, when it runs
/// ahead of a relay's by more than the warning step.
pub fn expired_hint(state: &Shared) -> String {
    let ahead = state.clock.iter().map(|e| *e.value()).filter(|o| *o > 0 && skewed(*o)).max();
    match ahead {
        Some(o) => format!(" (this device's clock is {} of its relay's: set its time)", describe_offset(o)),
        None => String::new(),
    }
}

/// A relay older than the clock in heartbeats refuses ours as a frame with
/// trailing bytes (`bad_frame`), and drops the channel.
pub fn refused_by_older_relay(frame: &crate::proto::Frame) -> bool {
    matches!(frame, crate::proto::Frame::Error { reason: crate::proto::Reason::BadFrame, message }
        if message.contains("trailing bytes"))
}

/// When the device's clock lies outside its own certificate's validity, what
/// to tell whoever reads the agent's log: TLS checks the relays'
/// certificates against that clock, so no relay can be reached. (A clock
/// reset to 1970 or 2000 by a flat battery lands here.)
pub fn outside_own_certificate(state: &Shared) -> Option<String> {
    let pem = std::fs::read_to_string(&state.cfg.cert).ok()?;
    let der = crate::tls::renewal::der_of(&pem).ok()?;
    let (from, until) = crate::tls::renewal::validity(&der)?;
    let now = crate::util::now_secs();
    let reads = crate::util::clock::rfc3339(now as i64);
    if now < from {
        let start = crate::util::clock::rfc3339(from as i64);
        return Some(format!(
            "this device's clock reads {reads}, before its own certificate's start ({start}): the clock is wrong, and TLS refuses every relay's certificate against it; set the device's time"
        ));
    }
    (now > until).then(|| {
        let end = crate::util::clock::rfc3339(until as i64);
        format!("this device's clock reads {reads}, after its own certificate's end ({end}): the certificate expired (it needs a new one, tether certs device), or the clock is wrong")
    })
}
