//! How many refusals before authentication are told one by one (an audit
//! record and a log line each): per source and in all, per window. Past the
//! budget a refusal is still counted in its metric, and goes into a tally
//! written in aggregate; a flood of bad handshakes then costs the audit log
//! a record per listener and period, not a signed record per connection,
//! and one source cannot use up the records of the others.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{DropTally, lock};

/// Refusals told one by one per source and window.
pub const PER_SOURCE: u32 = 20;
/// Refusals told one by one per window, all sources together.
pub const TOTAL: u32 = 200;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(60);

pub struct RefusalBudget {
    per_source: u32,
    total: u32,
    window: Duration,
    inner: Mutex<Spent>,
}

struct Spent {
    since: Instant,
    total: u32,
    /// At most `total` entries: a source gets one only when it is admitted.
    by_source: HashMap<IpAddr, u32>,
}

impl Default for RefusalBudget {
    fn default() -> Self {
        RefusalBudget::new(PER_SOURCE, TOTAL, WINDOW)
    }
}

impl RefusalBudget {
    pub fn new(per_source: u32, total: u32, window: Duration) -> RefusalBudget {
        let spent = Spent { since: Instant::now(), total: 0, by_source: HashMap::new() };
        RefusalBudget { per_source, total, window, inner: Mutex::new(spent) }
    }

    /// Whether a refusal of `source` is told one by one (and spends the budget).
    pub fn one_by_one(&self, source: IpAddr) -> bool {
        let mut s = lock(&self.inner);
        if s.since.elapsed() >= self.window {
            *s = Spent { since: Instant::now(), total: 0, by_source: HashMap::new() };
        }
        if s.total >= self.total {
            return false;
        }
        let n = s.by_source.entry(source).or_default();
        if *n >= self.per_source {
            return false;
        }
        *n += 1;
        s.total += 1;
        true
    }
}

/// A [`RefusalBudget`], and what went past it, tallied per listener (or
/// kind of refusal) for aggregate records.
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

    /// One record's fields per listener (or kind) with refusals past the budget since the last call.
    pub fn take(&self) -> Vec<serde_json::Value> {
        let past = std::mem::take(&mut *lock(&self.past_budget));
        let told = |mut fields: serde_json::Value| {
            fields["one_by_one_per_source_and_minute"] = self.budget.per_source.into();
            fields
        };
        past.iter().filter_map(|(listener, t)| t.take(listener)).map(told).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_has_its_share_and_all_together_a_cap() {
        let b = RefusalBudget::new(3, 5, Duration::from_secs(60));
        let (a, c, d) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]), IpAddr::from([10, 0, 0, 3]));
        assert_eq!((0..10).filter(|_| b.one_by_one(a)).count(), 3, "a source's share");
        assert_eq!((0..10).filter(|_| b.one_by_one(c)).count(), 2, "what is left of the cap");
        assert!(!b.one_by_one(d), "the cap holds for a new source too");
    }

    #[test]
    fn the_budget_comes_back_with_the_next_window() {
        let b = RefusalBudget::new(1, 10, Duration::from_millis(50));
        let a = IpAddr::from([10, 0, 0, 1]);
        assert!(b.one_by_one(a) && !b.one_by_one(a));
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.one_by_one(a), "a new window");
    }
}
