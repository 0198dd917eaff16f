//! A set of connection numbers kept as runs: what a session remembers of the
//! numbers it has used (each connection number may be opened, joined or
//! ended once) costs memory per gap, not per connection. A client numbers
//! its connections 1, 2, 3, … and they end roughly in order, so a session
//! that opened a million connections holds a few runs, where a hash set of
//! the numbers held megabytes until the session ended.
use std::collections::BTreeMap;

/// Disjoint runs of `u32`, each `start → last` (inclusive), never adjacent.
#[derive(Debug, Default, Clone)]
pub struct NumberSet(BTreeMap<u32, u32>);

impl NumberSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `n`; false if it was there already.
    pub fn insert(&mut self, n: u32) -> bool {
        let left = self.0.range(..=n).next_back().map(|(&s, &l)| (s, l));
        if let Some((_, last)) = left
            && n <= last
        {
            return false;
        }
        // `last < n` here, so `last + 1` does not overflow.
        let joins_left = left.filter(|&(_, last)| last + 1 == n).map(|(s, _)| s);
        let right = n.checked_add(1).and_then(|next| self.0.get(&next).map(|&l| (next, l)));
        match (joins_left, right) {
            (Some(s), Some((rs, rl))) => {
                self.0.remove(&rs);
                self.0.insert(s, rl);
            }
            (Some(s), None) => {
                self.0.insert(s, n);
            }
            (None, Some((rs, rl))) => {
                self.0.remove(&rs);
                self.0.insert(n, rl);
            }
            (None, None) => {
                self.0.insert(n, n);
            }
        }
        true
    }

    pub fn contains(&self, n: u32) -> bool {
        self.0.range(..=n).next_back().is_some_and(|(_, &last)| n <= last)
    }

    /// How many runs it holds: what its memory grows with.
    pub fn runs(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever the order, it answers as a hash set of the same numbers
        /// does, and its runs are disjoint and never adjacent.
        #[test]
        fn it_answers_as_a_hash_set_does(ns in proptest::collection::vec(prop_oneof![0u32..200, Just(u32::MAX), Just(u32::MAX - 1), Just(0)], 0..400)) {
            let (mut set, mut want) = (NumberSet::new(), HashSet::new());
            for &n in &ns {
                prop_assert_eq!(set.insert(n), want.insert(n), "insert {}", n);
            }
            for n in (0..210).chain([u32::MAX - 2, u32::MAX - 1, u32::MAX]) {
                prop_assert_eq!(set.contains(n), want.contains(&n), "contains {}", n);
            }
            let runs: Vec<_> = set.0.iter().map(|(&s, &l)| (s, l)).collect();
            for w in runs.windows(2) {
                prop_assert!(w[0].1 < w[1].0 && w[0].1 + 1 < w[1].0, "runs touch: {:?}", w);
            }
            prop_assert!(runs.iter().all(|(s, l)| s <= l));
        }
    }

    /// A session's hundred thousand connections, ending out of order within
    /// windows of 64 as live ones do, leave one run behind.
    #[test]
    fn a_hundred_thousand_connections_ending_out_of_order_leave_one_run() {
        let mut set = NumberSet::new();
        let mut most = 0;
        for window in (1..=100_000u32).collect::<Vec<_>>().chunks(64) {
            // A fixed shuffle: odd positions first, then even ones, reversed.
            let order = window.iter().step_by(2).chain(window.iter().skip(1).step_by(2).rev());
            for &n in order {
                assert!(set.insert(n));
                most = most.max(set.runs());
            }
        }
        assert_eq!(set.runs(), 1);
        assert!(most <= 33, "at most one run per live connection: {most}");
        assert!(set.contains(1) && set.contains(100_000) && !set.contains(0) && !set.contains(100_001));
        assert!(!set.insert(50_000), "a number is used once");
    }
}
