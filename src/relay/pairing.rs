//! Pairing a specialist's leg with the device's data leg, without I/O.
//!
//! A client join registers the connection it waits for (with the one-time key
//! the device's leg must prove), and a session request registers the device's
//! decision it waits for. Data legs, decisions and failures arrive as events;
//! each returns the waiter to wake (or why the event is refused). The waiter
//! types are parameters: oneshot senders in the relay, plain values in tests.
use std::collections::HashMap;
use std::collections::hash_map::Entry;

use crate::proto::{self, LegSide, Reason, SessionId};

/// A client join waiting for its data leg.
struct WaitingLeg<L> {
    key: [u8; 32],
    waiter: L,
}

/// What the relay knows of a data leg's session when the leg arrives.
#[derive(Debug, Clone, Copy, Default)]
pub struct LegContext<'a> {
    /// The device the session belongs to, if the session is live here.
    pub owner: Option<&'a str>,
    /// The device the leg's certificate names (none on a raw leg).
    pub device: Option<&'a str>,
    /// The connection number was already paired once.
    pub joined: bool,
}

pub struct Pairing<L, D> {
    legs: HashMap<(SessionId, u32), WaitingLeg<L>>,
    /// Session requests waiting for the device's decision, by the control
    /// channel (attach id) they were sent down.
    decisions: HashMap<SessionId, (u64, D)>,
}

impl<L, D> Default for Pairing<L, D> {
    fn default() -> Self {
        Pairing { legs: HashMap::new(), decisions: HashMap::new() }
    }
}

impl<L, D> Pairing<L, D> {
    /// A join waits for the device's leg for `conn`, proven by a MAC under `key`.
    pub fn expect_leg(&mut self, session: SessionId, conn: u32, key: [u8; 32], waiter: L) {
        self.legs.insert((session, conn), WaitingLeg { key, waiter });
    }

    /// The join gave up, or the device could not open the connection: its waiter, if still there.
    pub fn withdraw_leg(&mut self, session: SessionId, conn: u32) -> Option<L> {
        self.legs.remove(&(session, conn)).map(|w| w.waiter)
    }

    /// A data leg arrived: the join it pairs with, or why it is refused.
    pub fn offer_leg(
        &mut self,
        session: SessionId,
        conn: u32,
        mac: &[u8; 32],
        ctx: LegContext<'_>,
    ) -> Result<L, Reason> {
        if let (Some(owner), Some(device)) = (ctx.owner, ctx.device)
            && owner != device
        {
            return Err(Reason::DeviceMismatch);
        }
        if ctx.owner.is_none() {
            // Pending joins exist only for live sessions; a stray leg learns nothing.
            return Err(Reason::UnknownSession);
        }
        match self.legs.entry((session, conn)) {
            Entry::Occupied(w) if proto::leg_mac_ok(&w.get().key, LegSide::Device, &session, conn, mac) => {
                Ok(w.remove().waiter)
            }
            Entry::Occupied(_) => Err(Reason::BadToken),
            Entry::Vacant(_) if ctx.joined => Err(Reason::AlreadyPaired),
            Entry::Vacant(_) => Err(Reason::UnknownSession),
        }
    }

    /// A session request waits for the device's decision, asked on control channel `attach_id`.
    pub fn expect_decision(&mut self, session: SessionId, attach_id: u64, waiter: D) {
        self.decisions.insert(session, (attach_id, waiter));
    }

    /// The device decided (or the request was withdrawn): the waiter, if still there.
    pub fn decide(&mut self, session: SessionId) -> Option<D> {
        self.decisions.remove(&session).map(|(_, w)| w)
    }

    /// A decision for `session` arriving on channel `attach_id` answers a
    /// request that went down another channel (another device's session).
    pub fn decided_elsewhere(&self, session: SessionId, attach_id: u64) -> bool {
        self.decisions.get(&session).is_some_and(|(a, _)| *a != attach_id)
    }

    /// The control channel `attach_id` is gone: its pending decisions are
    /// dropped (their waiters see the channel close).
    pub fn channel_gone(&mut self, attach_id: u64) -> Vec<D> {
        let gone: Vec<SessionId> =
            self.decisions.iter().filter(|(_, (a, _))| *a == attach_id).map(|(id, _)| *id).collect();
        gone.into_iter().filter_map(|id| self.decide(id)).collect()
    }

    /// Joins waiting (metrics, tests).
    pub fn waiting_legs(&self) -> usize {
        self.legs.len()
    }
}

/// What the client is told when the device answers a leg's open with a refusal.
pub fn open_failed(reason: Reason) -> (Reason, &'static str) {
    match reason {
        Reason::ResumeRefused => (reason, "the connection is over at the device: it cannot be resumed"),
        Reason::EndToEndFailed => (reason, "the device refused the connection's end-to-end opening"),
        _ => (reason, "the device did not open the connection"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: SessionId = SessionId([7; 16]);
    const KEY: [u8; 32] = [3; 32];

    fn mac(conn: u32) -> [u8; 32] {
        proto::leg_mac(&KEY, LegSide::Device, &S, conn)
    }

    fn live(device: Option<&str>) -> LegContext<'_> {
        LegContext { owner: Some("d1"), device, joined: false }
    }

    #[test]
    fn a_leg_with_the_right_mac_pairs_once() {
        let mut p: Pairing<&str, ()> = Pairing::default();
        p.expect_leg(S, 1, KEY, "join-1");
        assert_eq!(p.offer_leg(S, 1, &mac(1), live(Some("d1"))), Ok("join-1"));
        assert_eq!(p.waiting_legs(), 0);
        let again = LegContext { joined: true, ..live(Some("d1")) };
        assert_eq!(p.offer_leg(S, 1, &mac(1), again), Err(Reason::AlreadyPaired));
    }

    #[test]
    fn wrong_mac_wrong_device_and_unknown_sessions_are_refused_and_keep_the_join() {
        let mut p: Pairing<&str, ()> = Pairing::default();
        p.expect_leg(S, 1, KEY, "join-1");
        assert_eq!(p.offer_leg(S, 1, &[0; 32], live(None)), Err(Reason::BadToken));
        assert_eq!(p.offer_leg(S, 1, &mac(1), live(Some("d2"))), Err(Reason::DeviceMismatch));
        assert_eq!(p.offer_leg(S, 1, &mac(1), LegContext::default()), Err(Reason::UnknownSession));
        assert_eq!(p.offer_leg(S, 2, &mac(2), live(None)), Err(Reason::UnknownSession));
        // A MAC for another connection number does not fit.
        assert_eq!(p.offer_leg(S, 1, &mac(2), live(None)), Err(Reason::BadToken));
        assert_eq!(p.waiting_legs(), 1, "refusals leave the waiting join alone");
        assert_eq!(p.withdraw_leg(S, 1), Some("join-1"));
        assert_eq!(p.withdraw_leg(S, 1), None);
    }

    #[test]
    fn decisions_wake_once_and_go_with_their_channel() {
        let mut p: Pairing<(), u8> = Pairing::default();
        p.expect_decision(S, 10, 1);
        p.expect_decision(SessionId([8; 16]), 10, 2);
        p.expect_decision(SessionId([9; 16]), 11, 3);
        assert!(p.decided_elsewhere(S, 11), "a decision from another channel is foreign");
        assert!(!p.decided_elsewhere(S, 10));
        assert_eq!(p.decide(S), Some(1));
        assert_eq!(p.decide(S), None);
        assert_eq!(p.channel_gone(10), vec![2]);
        assert_eq!(p.decide(SessionId([9; 16])), Some(3));
    }
}
