//! Connections turned away before they authenticated, tallied between
//! audit records: one aggregate record per period, however large the flood
//! (by reason, with the busiest sources), instead of one per connection.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use super::lock;

/// Distinct sources remembered per period (a spoofed-source flood cannot grow it further).
const MAX_SOURCES: usize = 10_000;

#[derive(Default)]
pub struct DropTally {
    inner: Mutex<Tally>,
}

#[derive(Default)]
struct Tally {
    by_reason: HashMap<String, u64>,
    by_source: HashMap<IpAddr, u64>,
}

impl DropTally {
    pub fn add(&self, source: IpAddr, reason: &str) {
        let mut t = lock(&self.inner);
        match t.by_reason.get_mut(reason) {
            Some(n) => *n += 1,
            None => {
                t.by_reason.insert(reason.to_string(), 1);
            }
        }
        if t.by_source.len() < MAX_SOURCES || t.by_source.contains_key(&source) {
            *t.by_source.entry(source).or_default() += 1;
        }
    }

    /// What was dropped since the last call, as an audit record's fields
    /// (`listener`, `dropped` by reason, `top_sources`, `sources`); `None` when nothing.
    pub fn take(&self, listener: &str) -> Option<serde_json::Value> {
        let t = std::mem::take(&mut *lock(&self.inner));
        if t.by_reason.is_empty() {
            return None;
        }
        let mut sources: Vec<(IpAddr, u64)> = t.by_source.into_iter().collect();
        sources.sort_by_key(|s| std::cmp::Reverse(s.1));
        let top: Vec<serde_json::Value> =
            sources.iter().take(5).map(|(ip, n)| serde_json::json!({"source": ip.to_string(), "dropped": n})).collect();
        Some(
            serde_json::json!({"listener": listener, "dropped": t.by_reason, "top_sources": top, "sources": sources.len()}),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_period_is_one_record_with_the_busiest_sources() {
        let t = DropTally::default();
        assert!(t.take("hub").is_none());
        for i in 0..20u8 {
            for _ in 0..=i {
                t.add(IpAddr::from([10, 0, 0, i]), "max_connections");
            }
        }
        let r = t.take("hub").unwrap();
        assert_eq!(r["dropped"]["max_connections"], 210);
        assert_eq!(r["sources"], 20);
        assert_eq!(r["top_sources"].as_array().unwrap().len(), 5);
        assert_eq!(r["top_sources"][0]["source"], "10.0.0.19");
        assert!(t.take("hub").is_none(), "taken once");
    }
}
