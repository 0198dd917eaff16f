//! Ids seen once, each kept until its grant expires: the relay's consumed
//! session ids and the agent's replay cache.
use std::collections::HashMap;
use std::hash::Hash;

/// Past this many entries, expired ones are purged on insert.
const PURGE_ABOVE: usize = 1024;

#[derive(Debug)]
pub struct ReplaySet<K> {
    seen: HashMap<K, u64>,
}

impl<K> Default for ReplaySet<K> {
    fn default() -> Self {
        ReplaySet { seen: HashMap::new() }
    }
}

impl<K: Eq + Hash + Copy> ReplaySet<K> {
    /// Records `id` as used until `expires_at` (unix seconds). False when it was used before.
    pub fn first_use(&mut self, id: K, expires_at: u64, now: u64) -> bool {
        if self.seen.len() > PURGE_ABOVE {
            self.seen.retain(|_, exp| *exp > now);
        }
        if self.seen.contains_key(&id) {
            return false;
        }
        self.seen.insert(id, expires_at);
        true
    }

    pub fn contains(&self, id: &K) -> bool {
        self.seen.contains_key(id)
    }

    /// Every id with its expiry (for a twin's snapshot).
    pub fn entries(&self) -> Vec<(K, u64)> {
        self.seen.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_good_once_and_expired_ids_are_purged() {
        let mut s = ReplaySet::default();
        assert!(s.first_use(1u32, 100, 0));
        assert!(!s.first_use(1u32, 100, 0));
        for i in 2..1100u32 {
            assert!(s.first_use(i, 10, 0));
        }
        // Past the purge threshold, expired entries go; live ones stay.
        assert!(s.first_use(5000, 100, 50));
        assert!(!s.contains(&2));
        assert!(s.contains(&1));
        assert_eq!(s.entries().len(), 2);
    }
}
