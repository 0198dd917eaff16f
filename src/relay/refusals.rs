//! Refused handshakes past the budget ([`crate::util::budget`]), written
//! as one `handshakes_refused` record per listener every 10 s (by reason,
//! with the busiest sources).
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::audit::AuditLog;
use crate::util::budget::Refusals;

/// Writes the aggregate records every 10 s, and once more at the drain.
pub async fn report(refusals: &Refusals, audit: &AuditLog, relay: &str, drain: &CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        let last = tokio::select! {
            _ = drain.cancelled() => true,
            _ = tick.tick() => false,
        };
        for mut fields in refusals.take() {
            fields["relay"] = relay.into();
            tracing::warn!("handshakes refused past the budget for one record each, in aggregate: {fields}");
            audit.record("handshakes_refused", fields);
        }
        if last {
            return;
        }
    }
}
