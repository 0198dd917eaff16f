//! Which agents' audit heads a report to the hub carries. A head goes once
//! it moved (or the hub never took it); then again in full reports while it
//! is young, so that the hub, which anchors a source at most every 10 s,
//! anchors the last head of a burst it skipped as too soon; and in one full
//! report in [`SLOTS`] (about every 5 min), so that a head the hub could not
//! store (its database away) is anchored later. Never more than
//! [`PER_REPORT`] in one report, those the hub has not taken first.
//!
//! Each head travels with the device's certificate (hex, about 1.3 KiB in
//! all) until the hub has answered a report that carried it and said it
//! keeps certificates; from then on with the certificate's SHA-256 instead,
//! until the hub asks for it again (it restarted: `certs_wanted`). The hub
//! checks the certificate for every head other than the one it anchored.
//! When every full report carried every head, a relay with
//! 12 000 agents sent reports larger than the hub takes (16 MiB), and every
//! report failed from then on. The check runs every report for every agent,
//! so it reads two counters and takes no lock.
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Heads per report, at most: about 2.6 MiB with their certificates.
pub const PER_REPORT: usize = 2_000;
/// A head the hub took goes again in full reports while younger than this
/// (ms): past twice the hub's 10-s anchoring period, so that at least one
/// full report (every 10 s) finds it due.
pub const YOUNG_MS: u64 = 25_000;
/// Every head goes again once in this many full reports.
pub const SLOTS: u64 = 30;

/// An agent's audit chain head as it last told the relay, and what the hub
/// took of it.
#[derive(Default)]
pub struct HeadSlot {
    /// Sequence, hash and signature, passed on as they came.
    head: Mutex<Option<(u64, String, String)>>,
    /// The sequence told, plus one (0: none yet).
    told: AtomicU64,
    /// The sequence the hub took, plus one (0: none yet), and since when
    /// (Unix ms).
    took: AtomicU64,
    took_ms: AtomicU64,
    /// The hub keeps the certificate this agent attached with (it answered
    /// a report that carried it, and keeps them): heads name it by its
    /// SHA-256 instead of carrying it.
    cert_kept: AtomicBool,
}

impl HeadSlot {
    /// What the agent's `AuditHead` said.
    pub fn set(&self, seq: u64, hash: String, sig: String) {
        *crate::util::lock(&self.head) = Some((seq, hash, sig));
        self.told.store(seq.saturating_add(1), Ordering::Release);
    }

    pub fn head(&self) -> Option<(u64, String, String)> {
        crate::util::lock(&self.head).clone()
    }

    /// Whether the head goes in this report: `Some(0)` when the hub has not
    /// taken it, `Some(1)` when it goes again, else `None`. `cycle` counts
    /// full reports.
    pub fn due(&self, device: &str, (full, cycle): (bool, u64), now_ms: u64) -> Option<u8> {
        let told = self.told.load(Ordering::Acquire);
        if told == 0 {
            return None;
        }
        if self.took.load(Ordering::Acquire) != told {
            return Some(0);
        }
        let young = now_ms.saturating_sub(self.took_ms.load(Ordering::Acquire)) < YOUNG_MS;
        (full && (young || slot(device) == cycle % SLOTS)).then_some(1)
    }

    /// Whether the hub keeps this agent's certificate.
    pub fn cert_kept(&self) -> bool {
        self.cert_kept.load(Ordering::Acquire)
    }

    /// What the hub's answer says of the head at `seq` this slot sent
    /// (`whole`: with its certificate): taken, and the certificate kept
    /// when the hub keeps them (`kept`); or, when the hub `wanted` the
    /// certificate, not taken: it goes again, whole, in the next report.
    pub fn answered(&self, seq: u64, (whole, kept, wanted): (bool, bool, bool), now_ms: u64) {
        if wanted {
            self.cert_kept.store(false, Ordering::Release);
            self.took.store(0, Ordering::Release);
            return;
        }
        self.took(seq, now_ms);
        if whole {
            self.cert_kept.store(kept, Ordering::Release);
        }
    }

    /// The hub took the head at `seq` (in a report it answered): a new
    /// sequence is young from `now_ms`, the same one keeps its first time.
    pub fn took(&self, seq: u64, now_ms: u64) {
        let v = seq.saturating_add(1);
        if self.took.swap(v, Ordering::AcqRel) != v {
            self.took_ms.store(now_ms, Ordering::Release);
        }
    }
}

/// A head a report carried: the agent's (by the attach it came on), or,
/// with an empty `device`, the relay's own.
pub struct Sent {
    pub device: String,
    pub seq: u64,
    pub attach_id: u64,
    /// It carried its certificate whole.
    pub whole: bool,
}

/// The full report in which `device`'s head goes again.
fn slot(device: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    device.hash(&mut h);
    h.finish() % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A moved head always goes; one the hub took goes again in full reports
    /// while young, then in one full report in SLOTS only.
    #[test]
    fn a_head_goes_when_it_moves_again_while_young_and_then_once_a_round() {
        let (t0, s) = (1_000_000, HeadSlot::default());
        assert_eq!(s.due("d1", (true, 0), t0), None, "no head told yet");
        s.set(7, "h7".into(), "s7".into());
        assert_eq!(s.due("d1", (false, 0), t0), Some(0), "never taken");
        s.took(7, t0);
        assert_eq!(s.due("d1", (false, 0), t0), None, "not full: only moved heads");
        s.set(8, "h8".into(), "s8".into());
        assert_eq!(s.due("d1", (false, 0), t0), Some(0), "moved");
        s.took(8, t0 + 5_000);
        s.took(8, t0 + 9_000);
        let young = t0 + 5_000 + YOUNG_MS - 1;
        assert_eq!(s.due("d1", (true, 0), young), Some(1), "young from its first delivery: again");
        let old = young + 2;
        let rounds: Vec<u64> = (0..SLOTS * 3).filter(|c| s.due("d1", (true, *c), old).is_some()).collect();
        assert_eq!(rounds.len(), 3, "once per round of {SLOTS} full reports: {rounds:?}");
        assert_eq!(rounds[1] - rounds[0], SLOTS);
        // Over many devices the rounds spread: no full report carries most.
        let most = (0..SLOTS)
            .map(|c| (0..3000).filter(|i| s.due(&format!("dev-{i}"), (true, c), old).is_some()).count())
            .max()
            .unwrap();
        assert!(most < 3000 / SLOTS as usize * 2, "one full report carries {most} of 3000 old heads");
        assert_eq!(s.head().map(|h| h.0), Some(8));
    }

    /// A certificate the hub keeps is named from then on; one the hub wants
    /// (it restarted) makes the head go again at once, whole.
    #[test]
    fn a_kept_certificate_is_named_and_a_wanted_one_goes_again_whole() {
        let (t0, s) = (1_000_000, HeadSlot::default());
        s.set(3, "h3".into(), "s3".into());
        s.answered(3, (true, false, false), t0);
        assert!(!s.cert_kept(), "a hub that keeps none");
        s.answered(3, (true, true, false), t0);
        assert!(s.cert_kept());
        assert_eq!(s.due("d1", (false, 0), t0), None, "taken");
        s.set(4, "h4".into(), "s4".into());
        s.answered(4, (false, true, false), t0);
        assert!(s.cert_kept(), "a head sent by name keeps the certificate named");
        let old = t0 + YOUNG_MS * 2;
        s.answered(4, (false, true, true), old);
        assert!(!s.cert_kept());
        assert_eq!(s.due("d1", (false, 0), old), Some(0), "wanted: again in the next report, full or not");
    }
}
