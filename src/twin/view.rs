//! The replication state without I/O: what the twin holds ([`PeerView`]) and
//! what we sent it and it has not acknowledged ([`Outbox`]).
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::proto::SessionId;
use crate::proto::twin::{Fact, SessionFact};

/// What the twin has told us it holds.
#[derive(Debug, Default)]
pub struct PeerView {
    pub sessions: HashMap<SessionId, SessionFact>,
    /// Session ids the twin has seen used, with the grant's expiry.
    pub consumed: HashMap<SessionId, u64>,
    pub attached: HashSet<String>,
    /// Sessions whose control leg moved to the twin.
    pub controls: HashSet<SessionId>,
    /// Facts being collected for a snapshot in progress.
    pending: Option<Vec<Fact>>,
    /// Sessions the twin held before it restarted and did not announce
    /// again, with a deadline (unix seconds): their clients may still be on
    /// their way here to resume them.
    orphans: HashMap<SessionId, (SessionFact, u64)>,
}

/// How long a session a restarted twin forgot stays adoptable here (longer
/// than a client's default resume deadline of 30 s).
pub const ORPHAN_SECS: u64 = 60;

impl PeerView {
    /// Applies one fact. Idempotent.
    pub fn apply(&mut self, fact: Fact) {
        if let Some(p) = self.pending.as_mut() {
            p.push(fact);
            return;
        }
        match fact {
            Fact::SessionUp(s) => {
                self.orphans.remove(&s.session);
                self.sessions.insert(s.session, s);
            }
            Fact::SessionDown { session, .. } => {
                self.orphans.remove(&session);
                self.sessions.remove(&session);
                self.controls.remove(&session);
            }
            Fact::ControlHere { session } => {
                self.controls.insert(session);
            }
            Fact::Consumed { session, expires_at } => {
                self.consumed.insert(session, expires_at);
            }
            Fact::Attached { device } => {
                self.attached.insert(device);
            }
            Fact::Detached { device } => {
                self.attached.remove(&device);
            }
        }
    }

    /// A snapshot begins: collect until [`Self::snapshot_end`], then replace.
    pub fn snapshot_begin(&mut self) {
        self.pending = Some(Vec::new());
    }

    /// The snapshot is complete: it replaces what we held of the twin. A twin
    /// that restarted knows less than before: a session it no longer
    /// announces stays adoptable for [`ORPHAN_SECS`] (its client may be
    /// resuming here right now, slowed by a crowd doing the same), and the
    /// grants it had seen used stay used until they expire.
    pub fn snapshot_end(&mut self, now_secs: u64) {
        let facts = self.pending.take().unwrap_or_default();
        let old = std::mem::take(self);
        for f in facts {
            self.apply(f);
        }
        let until = now_secs + ORPHAN_SECS;
        for (id, fact) in old.sessions {
            if !self.sessions.contains_key(&id) {
                self.orphans.insert(id, (fact, until));
            }
        }
        for (id, (fact, until)) in old.orphans {
            if until > now_secs && !self.sessions.contains_key(&id) {
                self.orphans.entry(id).or_insert((fact, until));
            }
        }
        for (id, expires_at) in old.consumed {
            if expires_at > now_secs {
                self.consumed.entry(id).or_insert(expires_at);
            }
        }
    }

    /// A session the twin holds, or held before it restarted (for a while).
    pub fn session(&self, id: &SessionId, now_secs: u64) -> Option<&SessionFact> {
        self.sessions.get(id).or_else(|| self.orphans.get(id).filter(|(_, until)| *until > now_secs).map(|(f, _)| f))
    }

    /// The link is down: forget nothing (the twin may still be serving), but
    /// drop a half-received snapshot.
    pub fn link_lost(&mut self) {
        self.pending = None;
    }

    /// Drops consumed ids whose grants have expired, and orphans past their deadline.
    pub fn purge(&mut self, now_secs: u64) {
        self.consumed.retain(|_, exp| *exp > now_secs);
        self.orphans.retain(|_, (_, until)| *until > now_secs);
    }
}

/// Our side of the stream: numbers facts, remembers what the twin has not
/// acknowledged, and measures replication lag.
#[derive(Debug, Default)]
pub struct Outbox {
    next_seq: u64,
    /// Link sequence number, when it was sent, and the publish index it carries.
    unacked: VecDeque<(u64, Instant, u64)>,
}

impl Outbox {
    /// Numbers a fact about to be sent; `index` is the publish index it
    /// covers (for a snapshot's end: the last index the snapshot reflects).
    pub fn stamp(&mut self, now: Instant, index: u64) -> u64 {
        self.next_seq += 1;
        self.unacked.push_back((self.next_seq, now, index));
        self.next_seq
    }

    /// The twin applied everything up to `seq`; returns the highest publish
    /// index that covers, if any.
    pub fn on_ack(&mut self, seq: u64) -> Option<u64> {
        let mut covered = None;
        while let Some((_, _, index)) = self.unacked.front().filter(|(s, _, _)| *s <= seq) {
            covered = Some(covered.unwrap_or(0).max(*index));
            self.unacked.pop_front();
        }
        covered
    }

    /// The link restarted: nothing is in flight any more (a snapshot follows).
    pub fn reset(&mut self) {
        self.unacked.clear();
    }

    /// Replication lag: facts not yet acknowledged, and the age of the oldest.
    pub fn lag(&self, now: Instant) -> (usize, Duration) {
        let age = self.unacked.front().map(|(_, t, _)| now.saturating_duration_since(*t)).unwrap_or_default();
        (self.unacked.len(), age)
    }

    pub fn last_seq(&self) -> u64 {
        self.next_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Reason;

    fn up(n: u8) -> Fact {
        Fact::SessionUp(SessionFact {
            session: SessionId([n; 16]),
            device: format!("d{n}"),
            service: "ssh".into(),
            specialist: "alice".into(),
            role: "engineer".into(),
            client: "127.0.0.1:1".into(),
            token: [n; 32],
            started_at: 1,
        })
    }

    #[test]
    fn facts_are_idempotent_and_snapshots_replace() {
        let mut v = PeerView::default();
        for f in [up(1), up(1), up(2), Fact::Consumed { session: SessionId([9; 16]), expires_at: 50 }] {
            v.apply(f);
        }
        v.apply(Fact::SessionDown { session: SessionId([2; 16]), reason: Reason::ClientClosed });
        v.apply(Fact::SessionDown { session: SessionId([2; 16]), reason: Reason::ClientClosed });
        assert_eq!(v.sessions.len(), 1);
        assert!(v.consumed.contains_key(&SessionId([9; 16])));

        // A snapshot overlapping the stream that follows it converges.
        v.snapshot_begin();
        v.apply(up(3));
        assert!(v.sessions.contains_key(&SessionId([1; 16])), "old view kept until the snapshot is whole");
        v.snapshot_end(10);
        v.apply(up(3));
        v.apply(Fact::Attached { device: "d3".into() });
        assert_eq!(v.sessions.keys().copied().collect::<Vec<_>>(), vec![SessionId([3; 16])]);
        assert!(v.attached.contains("d3"));
        v.purge(100);
        assert!(v.consumed.is_empty());
    }

    #[test]
    fn a_restarted_twins_sessions_stay_adoptable_for_a_while() {
        let mut v = PeerView::default();
        for f in [up(1), up(2), Fact::Consumed { session: SessionId([9; 16]), expires_at: 500 }] {
            v.apply(f);
        }
        // The twin restarts and announces only a new session.
        v.snapshot_begin();
        v.apply(up(3));
        v.snapshot_end(100);
        assert!(v.session(&SessionId([1; 16]), 100).is_some(), "a forgotten session is still adoptable");
        assert!(v.session(&SessionId([3; 16]), 100).is_some());
        assert!(v.consumed.contains_key(&SessionId([9; 16])), "a used grant stays used after the twin restarts");
        // Ended by the twin: gone at once; else gone after the grace.
        v.apply(Fact::SessionDown { session: SessionId([2; 16]), reason: Reason::ClientClosed });
        assert!(v.session(&SessionId([2; 16]), 101).is_none());
        // A second restart within the grace keeps the deadline, not a new one.
        v.snapshot_begin();
        v.snapshot_end(150);
        assert!(v.session(&SessionId([1; 16]), 159).is_some());
        assert!(v.session(&SessionId([1; 16]), 100 + ORPHAN_SECS).is_none(), "forgotten after the grace");
        assert!(v.session(&SessionId([3; 16]), 150 + ORPHAN_SECS - 1).is_some());
        v.purge(1000);
        assert!(v.orphans.is_empty() && v.consumed.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn lag_counts_unacknowledged_facts_and_their_age() {
        let mut o = Outbox::default();
        let t0 = tokio::time::Instant::now().into_std();
        let a = o.stamp(t0, 7);
        tokio::time::advance(Duration::from_millis(300)).await;
        let b = o.stamp(tokio::time::Instant::now().into_std(), 9);
        let now = tokio::time::Instant::now().into_std();
        assert_eq!(o.lag(now), (2, Duration::from_millis(300)));
        assert_eq!(o.on_ack(a), Some(7), "the acked fact's publish index");
        assert_eq!(o.lag(now), (1, Duration::ZERO));
        assert_eq!(o.on_ack(a), None, "nothing new");
        assert_eq!(o.on_ack(b), Some(9));
        assert_eq!(o.lag(now).0, 0);
    }
}
