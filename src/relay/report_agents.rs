//! The attached agents in the reports to the hub, as changes to the list
//! the hub holds ([`AgentsDelta`]): agents attached or changed since the
//! hub last took a report, later heartbeats, agents gone; at most
//! [`PER_REPORT`] of them a report, the rest in the next. A hub that does
//! not hold this relay's list (it restarted, or took a report whose answer
//! was lost) asks for it again, and it goes again from empty, a batch a
//! report. Until the hub's first answer says what it takes, a full report
//! carries the whole list when it fits a batch (either hub takes that); a
//! hub that takes no deltas (an older one) gets the whole list in each full
//! report, as before.
//!
//! Why: a whole list of 100 000 agents (about 140 bytes each) would pass the
//! hub's 16 MiB body limit, and relays sent the whole list at every attach
//! or detach, up to every `report_ms`: 2 MiB every 250 ms at 15 000 agents
//! while they attached. A heartbeat alone travels as (device, seconds).
use std::collections::HashMap;

use crate::api::{AgentSeen, AgentsDelta};
use crate::util::clock;

/// Changes per report, at most (seen, heard and gone together): about
/// 2.7 MiB of real agents, 5.0 MiB at their widest.
pub const PER_REPORT: usize = 20_000;

/// An attached agent as the relay holds it now, borrowed for one look.
pub struct Now<'a> {
    pub device: &'a str,
    pub agent_version: &'a str,
    pub transport: &'a str,
    pub last_heartbeat: u64,
    pub cert_expires: u64,
    pub clock_offset_ms: Option<i64>,
}

impl Now<'_> {
    /// The agent as a report carries it whole.
    pub fn seen(&self) -> AgentSeen {
        AgentSeen {
            device: self.device.to_string(),
            agent_version: self.agent_version.to_string(),
            transport: self.transport.to_string(),
            last_heartbeat: self.last_heartbeat,
            cert_expires: self.cert_expires,
            clock_offset_ms: self.clock_offset_ms,
        }
    }

    /// What the hub must hear of this agent, against what it holds.
    fn news(&self, held: Option<&AgentSeen>) -> News {
        let Some(h) = held else { return News::Seen };
        let changed = h.agent_version != self.agent_version
            || h.transport != self.transport
            || h.cert_expires != self.cert_expires
            || clock::moved(h.clock_offset_ms, self.clock_offset_ms);
        match (changed, h.last_heartbeat != self.last_heartbeat) {
            (true, _) => News::Seen,
            (false, true) => News::Heard,
            (false, false) => News::None,
        }
    }
}

enum News {
    None,
    Heard,
    Seen,
}

/// The list as the hub holds it, once it took every delta sent so far.
pub struct Sent {
    list: u64,
    version: u64,
    held: HashMap<String, AgentSeen>,
    /// Whether the hub takes deltas; `None` before its first answer: until
    /// then full reports carry the whole list, as either hub takes it,
    /// unless it passes a batch (a relay that could not reach the hub since
    /// it started may hold many agents).
    hub_takes: Option<bool>,
    /// A delta is due before the next full report: the last one left
    /// changes behind, or the hub asked for the list again.
    due: bool,
}

impl Default for Sent {
    fn default() -> Self {
        Sent::new(u64::from_le_bytes(crate::random_bytes::<8>()) | 1)
    }
}

impl Sent {
    pub fn new(list: u64) -> Sent {
        Sent { list, version: 0, held: HashMap::new(), hub_takes: None, due: false }
    }

    /// Whether this report carries agents as a delta (`Some(true)`), as the
    /// whole list of `attached` (`Some(false)`), or not at all (`None`).
    /// `wanted`: agents changed since the last report, or it is a full one
    /// (a report with the whole list must be full: the hub takes it so).
    pub fn mode(&self, wanted: bool, attached: usize) -> Option<bool> {
        match self.hub_takes {
            None => (wanted && attached <= PER_REPORT).then_some(false),
            Some(true) => (wanted || self.due).then_some(true),
            Some(false) => wanted.then_some(false),
        }
    }

    /// Whether the hub's last answer said it takes deltas.
    pub fn hub_takes(&self) -> bool {
        self.hub_takes == Some(true)
    }

    /// Starts the delta to the list the hub holds.
    pub fn begin(&self) -> Building<'_> {
        let delta = AgentsDelta {
            list: self.list,
            from: self.version,
            to: self.version + 1,
            complete: true,
            ..AgentsDelta::default()
        };
        Building { sent: self, delta, room: PER_REPORT }
    }

    /// The hub answered a report that carried `delta` (if any).
    pub fn answered(&mut self, delta: Option<AgentsDelta>, takes: bool, resync: bool) {
        let first = self.hub_takes != Some(true);
        self.hub_takes = Some(takes);
        if resync || !takes || first {
            // Its list is not ours (or it keeps none, or it took a whole
            // list): from empty again, at once.
            self.version = 0;
            self.held.clear();
            self.due = takes;
            return;
        }
        let Some(d) = delta else { return };
        if d.from == 0 {
            self.held.clear();
        }
        for a in d.seen {
            self.held.insert(a.device.clone(), a);
        }
        for (device, at) in d.heard {
            if let Some(a) = self.held.get_mut(&device) {
                a.last_heartbeat = at;
            }
        }
        for device in d.gone {
            self.held.remove(&device);
        }
        self.version = d.to;
        self.due = !d.complete;
    }
}

/// A delta being made: [`Building::look`] at each attached agent, then
/// [`Building::finish`].
pub struct Building<'a> {
    sent: &'a Sent,
    delta: AgentsDelta,
    room: usize,
}

impl Building<'_> {
    /// Takes in what changed of one attached agent; false once the delta is
    /// full (the rest waits for the next report).
    pub fn look(&mut self, now: Now<'_>) -> bool {
        if self.room == 0 {
            self.delta.complete = false;
            return false;
        }
        match now.news(self.sent.held.get(now.device)) {
            News::None => return true,
            News::Heard => self.delta.heard.push((now.device.to_string(), now.last_heartbeat)),
            News::Seen => self.delta.seen.push(now.seen()),
        }
        self.room -= 1;
        true
    }

    /// The delta, with the agents the hub holds that `attached` says are gone.
    pub fn finish(mut self, attached: impl Fn(&str) -> bool) -> AgentsDelta {
        if self.delta.complete {
            for device in self.sent.held.keys().filter(|d| !attached(d)) {
                if self.room == 0 {
                    self.delta.complete = false;
                    break;
                }
                self.delta.gone.push(device.clone());
                self.room -= 1;
            }
        }
        self.delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RelayReport;

    fn now(device: &str, heartbeat: u64) -> Now<'_> {
        Now {
            device,
            agent_version: "0.1.0",
            transport: "quic",
            last_heartbeat: heartbeat,
            cert_expires: 1_900_000_000,
            clock_offset_ms: Some(12),
        }
    }

    /// One report's delta from `attached` (device, heartbeat).
    fn delta(sent: &Sent, attached: &[(String, u64)]) -> AgentsDelta {
        let mut b = sent.begin();
        for (d, hb) in attached {
            if !b.look(now(d, *hb)) {
                break;
            }
        }
        b.finish(|d| attached.iter().any(|(a, _)| a == d))
    }

    /// What the hub holds after it applied `d` to `held` (as `hub::relays` does).
    fn apply(held: &mut HashMap<String, u64>, d: &AgentsDelta) {
        if d.from == 0 {
            held.clear();
        }
        held.extend(d.seen.iter().map(|a| (a.device.clone(), a.last_heartbeat)));
        held.extend(d.heard.iter().cloned());
        d.gone.iter().for_each(|g| {
            held.remove(g);
        });
    }

    /// 45 000 agents go in batches of at most [`PER_REPORT`]; then only
    /// what changed: a heartbeat as (device, seconds), a clock that moved 2 s
    /// or more in full, an agent gone by its id; jitter not at all.
    #[test]
    fn the_list_goes_a_batch_at_a_time_then_only_what_changed() {
        let mut sent = Sent::new(7);
        assert_eq!(sent.mode(true, 45_000), None, "more than a batch went before the hub said what it takes");
        sent.answered(None, true, false);
        let mut attached: Vec<(String, u64)> = (0..45_000).map(|i| (format!("dev-{i:05}"), 100)).collect();
        let mut hub = HashMap::new();
        let mut reports = 0;
        loop {
            assert_eq!(sent.mode(false, 45_000), Some(true), "a report left changes behind yet the next carried none");
            let d = delta(&sent, &attached);
            assert!(d.seen.len() + d.heard.len() + d.gone.len() <= PER_REPORT, "a report carried more than a batch");
            assert_eq!((d.from, d.to), (reports, reports + 1));
            apply(&mut hub, &d);
            let complete = d.complete;
            sent.answered(Some(d), true, false);
            reports += 1;
            if complete {
                break;
            }
        }
        assert_eq!(reports, 3, "45 000 agents in batches of 20 000");
        assert_eq!(hub.len(), 45_000);
        assert_eq!(sent.mode(false, 45_000), None, "a delta went between full reports with nothing due");

        attached[3].1 = 130;
        attached.remove(9);
        attached.push(("dev-new".into(), 131));
        let mut b = sent.begin();
        for (i, (d, hb)) in attached.iter().enumerate() {
            let mut n = now(d, *hb);
            match i {
                5 => n.clock_offset_ms = Some(12 + 2_000),
                6 => n.clock_offset_ms = Some(12 + 1_999),
                _ => {}
            }
            b.look(n);
        }
        let d = b.finish(|d| attached.iter().any(|(a, _)| a == d));
        let seen: Vec<&str> = d.seen.iter().map(|a| a.device.as_str()).collect();
        assert_eq!(seen, ["dev-00005", "dev-new"], "a new agent or a moved clock missed, or jitter sent");
        assert_eq!(d.heard, [("dev-00003".to_string(), 130)]);
        assert_eq!(d.gone, ["dev-00009"]);
        assert!(d.complete);
        apply(&mut hub, &d);
        sent.answered(Some(d), true, false);
        assert_eq!(hub.len(), 45_000);
        assert_eq!(hub.get("dev-00003"), Some(&130));
        assert!(!hub.contains_key("dev-00009"));

        // The hub lost its list: the next report, full or not, starts it
        // again from empty.
        sent.answered(None, true, true);
        assert_eq!(sent.mode(false, 45_000), Some(true));
        let d = delta(&sent, &attached);
        assert_eq!((d.from, d.seen.len(), d.complete), (0, PER_REPORT, false));
    }

    /// Before the hub's first answer a full report carries the whole list
    /// (either hub takes it) when it fits a batch; a hub that takes deltas
    /// then gets the list from empty at once; an older hub gets the whole
    /// list in each full report, none between.
    #[test]
    fn the_whole_list_goes_first_and_to_an_older_hub() {
        let mut sent = Sent::new(7);
        assert_eq!((sent.mode(true, 3), sent.mode(false, 3)), (Some(false), None));
        assert_eq!(sent.mode(true, PER_REPORT + 1), None);
        sent.answered(None, true, false);
        assert_eq!(sent.mode(false, 3), Some(true), "the hub that took a whole list waits for deltas");
        assert_eq!(sent.begin().delta.from, 0);
        let mut older = Sent::new(7);
        older.answered(None, false, false);
        assert_eq!((older.mode(true, 3), older.mode(false, 3)), (Some(false), None));
    }

    /// A whole batch, each agent at its widest (a device id of 64
    /// characters, a long version), stays under a third of the hub's 16 MiB.
    #[test]
    fn a_batch_of_agents_fits_the_hubs_body_limit() {
        let a = AgentSeen {
            device: "d".repeat(64),
            agent_version: "v".repeat(32),
            transport: "quic".into(),
            last_heartbeat: u64::MAX,
            cert_expires: u64::MAX,
            clock_offset_ms: Some(i64::MIN),
        };
        let d = AgentsDelta {
            seen: vec![a; PER_REPORT],
            list: u64::MAX,
            from: u64::MAX,
            to: u64::MAX,
            ..Default::default()
        };
        let report = RelayReport { agents_delta: Some(d), ..Default::default() };
        let size = serde_json::to_vec(&report).unwrap().len();
        assert!(size < 16 * 1024 * 1024 / 3, "a batch of agents takes {size} bytes");
    }
}
