//! Bounds on connections before they authenticate, per listener: a budget
//! of handshakes in progress, a cap per source address, and a tally of what
//! was turned away, written to the audit log at most every 10 s (a flood
//! writes one record per listener and period, not one per connection).
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::util::{DropTally, lock};

/// One listener's gate.
pub struct Gate {
    pub name: &'static str,
    handshakes: Arc<Semaphore>,
    /// Extra handshake slots only for sources that presented a valid
    /// certificate before (a device's address): a flood from other addresses
    /// that fills the budget does not keep a known device from re-attaching.
    reserve: Arc<Semaphore>,
    known: Mutex<KnownSources>,
    per_source: usize,
    pending: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Dropped since the last audit record: by reason, and by source.
    dropped: DropTally,
}

/// An open connection on a listener: holds its `max_connections` slot and
/// counts it in `tether_relay_open_connections` until dropped.
pub struct Open {
    _slot: OwnedSemaphorePermit,
    listener: &'static str,
}

impl Open {
    pub fn new(slot: OwnedSemaphorePermit, listener: &'static str) -> Open {
        crate::metrics::RELAY_OPEN.with_label_values(&[listener]).inc();
        Open { _slot: slot, listener }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        crate::metrics::RELAY_OPEN.with_label_values(&[self.listener]).dec();
    }
}

/// Addresses that completed an mTLS handshake, most recent last; bounded.
#[derive(Default)]
struct KnownSources {
    order: std::collections::VecDeque<IpAddr>,
    set: std::collections::HashSet<IpAddr>,
}

/// Known sources remembered per listener (oldest forgotten first).
const MAX_KNOWN: usize = 65_536;

/// A handshake in progress; frees its budget slot and its source's count when dropped.
pub struct Pending {
    _slot: OwnedSemaphorePermit,
    listener: &'static str,
    pending: Arc<Mutex<HashMap<IpAddr, usize>>>,
    source: IpAddr,
}

impl Drop for Pending {
    fn drop(&mut self) {
        crate::metrics::RELAY_PENDING.with_label_values(&[self.listener]).dec();
        let mut p = lock(&self.pending);
        if let Some(n) = p.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                p.remove(&self.source);
            }
        }
    }
}

impl Gate {
    pub fn new(name: &'static str, max_handshakes: usize, per_source: usize) -> Gate {
        Gate {
            name,
            handshakes: Arc::new(Semaphore::new(max_handshakes.max(1))),
            reserve: Arc::new(Semaphore::new((max_handshakes / 8).max(1))),
            known: Mutex::new(KnownSources::default()),
            per_source: per_source.max(1),
            pending: Arc::new(Mutex::new(HashMap::new())),
            dropped: DropTally::default(),
        }
    }

    /// Admits a connection from `source` to its handshake, or names why not.
    pub fn admit(&self, source: IpAddr) -> Result<Pending, &'static str> {
        let slot = match self.handshakes.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) if lock(&self.known).set.contains(&source) => {
                self.reserve.clone().try_acquire_owned().map_err(|_| "max_handshakes")?
            }
            Err(_) => return Err("max_handshakes"),
        };
        let mut p = lock(&self.pending);
        let n = p.entry(source).or_insert(0);
        if *n >= self.per_source {
            return Err("per_source");
        }
        *n += 1;
        crate::metrics::RELAY_PENDING.with_label_values(&[self.name]).inc();
        Ok(Pending { _slot: slot, listener: self.name, pending: self.pending.clone(), source })
    }

    /// `source` presented a valid certificate: from now on it may use the
    /// reserved slots when the budget is full.
    pub fn known_good(&self, source: IpAddr) {
        let mut k = lock(&self.known);
        if k.set.insert(source) {
            k.order.push_back(source);
            if k.order.len() > MAX_KNOWN
                && let Some(old) = k.order.pop_front()
            {
                k.set.remove(&old);
            }
        }
    }

    /// Counts a connection turned away before it authenticated.
    pub fn dropped(&self, source: IpAddr, reason: &'static str) {
        crate::metrics::RELAY_CONNECTIONS_REFUSED.with_label_values(&[self.name, reason]).inc();
        self.dropped.add(source, reason);
    }

    /// What was dropped since the last call, as an audit record's fields; `None` when nothing.
    pub fn take_tally(&self) -> Option<serde_json::Value> {
        self.dropped.take(self.name)
    }
}

/// A QUIC leg that holds its `max_connections` slot and its place in its
/// connection's open streams until dropped.
pub type Counted = crate::quic::Guarded<(Open, crate::quic::OpenStream)>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_and_budget_are_bounded_and_freed() {
        let g = Gate::new("client", 3, 2);
        let a: IpAddr = [127, 0, 0, 9].into();
        let b: IpAddr = [127, 0, 0, 1].into();
        let a1 = g.admit(a).unwrap();
        let _a2 = g.admit(a).unwrap();
        assert_eq!(g.admit(a).err(), Some("per_source"));
        let _b1 = g.admit(b).unwrap();
        assert_eq!(g.admit(b).err(), Some("max_handshakes"), "the budget is shared by the listener");
        drop(a1);
        assert!(g.admit(b).is_ok(), "a freed slot is reusable");
        g.dropped(a, "per_source");
        g.dropped(a, "per_source");
        let t = g.take_tally().unwrap();
        assert_eq!(t["dropped"]["per_source"], 2);
        assert_eq!(t["top_sources"][0]["source"], "127.0.0.9");
        assert!(g.take_tally().is_none(), "the tally starts over");
    }

    #[test]
    fn a_source_that_presented_a_certificate_has_reserved_slots() {
        let g = Gate::new("control", 16, 100);
        let flood: Vec<Pending> = (0..16).map(|i| g.admit([127, 0, 1, i].into()).unwrap()).collect();
        let device: IpAddr = [127, 0, 0, 1].into();
        assert_eq!(g.admit(device).err(), Some("max_handshakes"), "an unknown source waits like the flood");
        assert_eq!(g.admit([127, 0, 2, 1].into()).err(), Some("max_handshakes"));
        g.known_good(device);
        let r1 = g.admit(device).expect("a known device gets a reserved slot");
        let _r2 = g.admit(device).expect("two reserved slots of 16 / 8");
        assert_eq!(g.admit(device).err(), Some("max_handshakes"), "the reserve is bounded too");
        assert_eq!(g.admit([127, 0, 2, 1].into()).err(), Some("max_handshakes"), "not for unknown sources");
        drop(r1);
        assert!(g.admit(device).is_ok(), "a freed reserved slot is reusable");
        drop(flood);
    }
}
