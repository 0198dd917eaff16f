//! Bounds on login attempts, checked before any password is hashed: one
//! attempt at a time per account name (parallel guesses cannot slip in
//! before the lockout), a cap on concurrent argon2 runs (each costs 19 MiB
//! and tens of milliseconds), and a rate per source address.
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::util::lock;

/// `[login]` in hub.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginLimits {
    /// Password checks running at once; past it, logins are answered 429.
    pub max_concurrent: usize,
    /// Login attempts per source address per minute (a burst of as many).
    pub per_source_per_minute: u32,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits { max_concurrent: 4, per_source_per_minute: 60 }
    }
}

/// Why a login was not even tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// This source sent too many attempts; retry after this many seconds.
    RateLimited { retry_after: u64 },
    /// Another attempt for this account name is being checked.
    NameBusy,
    /// Every password-check slot is taken.
    Overloaded,
}

/// A token bucket per source: `per_minute` tokens, refilled continuously.
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Refusals since the last audit record about this source.
    refused: u64,
}

pub struct LoginGate {
    cfg: LoginLimits,
    argon: Arc<Semaphore>,
    names: Mutex<HashSet<String>>,
    sources: Mutex<HashMap<IpAddr, Bucket>>,
}

/// Held while one login is checked; frees its account name and slot when dropped.
pub struct Attempt<'a> {
    gate: &'a LoginGate,
    name: String,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        lock(&self.gate.names).remove(&self.name);
    }
}

impl LoginGate {
    pub fn new(cfg: LoginLimits) -> LoginGate {
        let argon = Arc::new(Semaphore::new(cfg.max_concurrent.max(1)));
        LoginGate { cfg, argon, names: Mutex::new(HashSet::new()), sources: Mutex::new(HashMap::new()) }
    }

    /// Admits one attempt from `from` for `name`, or says why not. On a
    /// refusal, also returns how many refusals of this source went unaudited
    /// (the caller writes one audit record per minute at most).
    pub fn admit(&self, from: IpAddr, name: &str, now: Instant) -> Result<Attempt<'_>, (Busy, Option<u64>)> {
        self.take_token(from, now)?;
        let slot = self.argon.clone().try_acquire_owned().map_err(|_| (Busy::Overloaded, None))?;
        if !lock(&self.names).insert(name.to_string()) {
            return Err((Busy::NameBusy, None));
        }
        Ok(Attempt { gate: self, name: name.to_string(), _slot: slot })
    }

    fn take_token(&self, from: IpAddr, now: Instant) -> Result<(), (Busy, Option<u64>)> {
        let rate = f64::from(self.cfg.per_source_per_minute.max(1)) / 60.0;
        let burst = f64::from(self.cfg.per_source_per_minute.max(1));
        let mut sources = lock(&self.sources);
        if sources.len() > 100_000 {
            // Forget sources whose bucket has refilled: they are as good as new.
            sources.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let b = sources.entry(from).or_insert(Bucket { tokens: burst, at: now, refused: 0 });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        b.refused += 1;
        let retry_after = ((1.0 - b.tokens) / rate).ceil() as u64;
        // The first refusal of a burst is audited with the count of the ones before it.
        let report = (b.refused == 1 || b.refused.is_multiple_of(100)).then_some(b.refused);
        Err((Busy::RateLimited { retry_after: retry_after.max(1) }, report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    #[test]
    fn one_attempt_per_name_and_bounded_slots() {
        let gate = LoginGate::new(LoginLimits { max_concurrent: 2, per_source_per_minute: 100 });
        let t = Instant::now();
        let a = gate.admit(ip(1), "alice", t).unwrap();
        assert_eq!(gate.admit(ip(2), "alice", t).err().map(|e| e.0), Some(Busy::NameBusy));
        let b = gate.admit(ip(1), "bob", t).unwrap();
        assert_eq!(gate.admit(ip(1), "carol", t).err().map(|e| e.0), Some(Busy::Overloaded));
        drop(a);
        drop(b);
        assert!(gate.admit(ip(1), "alice", t).is_ok(), "name and slot are free again");
    }

    #[test]
    fn sources_are_rate_limited_and_refill() {
        let gate = LoginGate::new(LoginLimits { max_concurrent: 8, per_source_per_minute: 3 });
        let t = Instant::now();
        for i in 0..3 {
            drop(gate.admit(ip(1), &format!("u{i}"), t).unwrap());
        }
        let (busy, report) = gate.admit(ip(1), "u9", t).err().unwrap();
        assert_eq!(busy, Busy::RateLimited { retry_after: 20 });
        assert_eq!(report, Some(1), "the first refusal is reported");
        assert_eq!(gate.admit(ip(1), "u9", t).err().unwrap().1, None, "later ones only counted");
        assert!(gate.admit(ip(2), "u9", t).is_ok(), "another source is not affected");
        assert!(gate.admit(ip(1), "u9", t + Duration::from_secs(20)).is_ok(), "one token back after 20 s");
    }
}
