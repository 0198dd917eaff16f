//! Refused handshakes past the budget ([`crate::util::budget`]): tallied
//! per listener, and written as one `handshakes_refused` record per
//! listener every 10 s (by reason, with the busiest sources).
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::audit::AuditLog;
use crate::util::{DropTally, RefusalBudget, lock};

#[derive(Default)]
pub struct Refusals {
    budget: RefusalBudget,
    past_budget: Mutex<HashMap<String, DropTally>>,
}

impl Refusals {
    /// Whether a refusal of `source` on `listener` is told one by one;
    /// when not, it is tallied for the next aggregate record.
    pub fn one_by_one(&self, listener: &str, source: IpAddr, reason: &str) -> bool {
        if self.budget.one_by_one(source) {
            return true;
        }
        let mut past = lock(&self.past_budget);
        match past.get(listener) {
            Some(t) => t.add(source, reason),
            None => {
                let t = DropTally::default();
                t.add(source, reason);
                past.insert(listener.to_string(), t);
            }
        }
        false
    }

    /// One record's fields per listener with refusals past the budget since the last call.
    fn take(&self) -> Vec<serde_json::Value> {
        let past = std::mem::take(&mut *lock(&self.past_budget));
        past.iter().filter_map(|(listener, t)| t.take(listener)).collect()
    }
}

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
            fields["one_by_one_per_source_and_minute"] = crate::util::budget::PER_SOURCE.into();
            tracing::warn!("handshakes refused past the budget for one record each, in aggregate: {fields}");
            audit.record("handshakes_refused", fields);
        }
        if last {
            return;
        }
    }
}
