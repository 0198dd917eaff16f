//! A relay's attached agents as the hub holds them: the whole list from an
//! older relay, or the changes a relay sends ([`AgentsDelta`], see
//! `relay::report_agents`) applied in order. A delta that does not follow
//! the version held (this hub restarted, or the relay did not get the
//! answer to a delta taken here) is not applied: the hub asks for the list
//! again, and shows the one it holds until the new one is whole.
use std::collections::HashMap;

use crate::api::{AgentSeen, AgentsDelta, RelayReport};

#[derive(Default)]
pub struct AgentsHeld {
    /// The list routing and presence read.
    pub shown: HashMap<String, AgentSeen>,
    /// The relay's list (0: none held), and its version.
    list: u64,
    version: u64,
    /// A list started again from empty, until it is whole.
    building: Option<HashMap<String, AgentSeen>>,
    /// The relay sends its whole list (an older one): it asks for nothing.
    older: bool,
}

impl AgentsHeld {
    /// Takes a report's agents in; true when the relay must send its list
    /// again from empty.
    pub fn take(&mut self, r: &RelayReport) -> bool {
        if let Some(all) = &r.agents {
            self.shown = all.iter().map(|a| (a.device.clone(), a.clone())).collect();
            (self.list, self.version, self.building, self.older) = (0, 0, None, true);
            return false;
        }
        let Some(d) = &r.agents_delta else { return self.list == 0 && !self.older };
        self.older = false;
        if d.from == 0 {
            (self.list, self.building) = (d.list, Some(HashMap::new()));
        } else if (d.list, d.from) != (self.list, self.version) {
            return true;
        }
        apply(self.building.as_mut().unwrap_or(&mut self.shown), d);
        self.version = d.to;
        if d.complete
            && let Some(whole) = self.building.take()
        {
            self.shown = whole;
        }
        false
    }
}

fn apply(held: &mut HashMap<String, AgentSeen>, d: &AgentsDelta) {
    for a in &d.seen {
        held.insert(a.device.clone(), a.clone());
    }
    for (device, at) in &d.heard {
        if let Some(a) = held.get_mut(device) {
            a.last_heartbeat = *at;
        }
    }
    for device in &d.gone {
        held.remove(device);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(device: &str) -> AgentSeen {
        AgentSeen { device: device.into(), last_heartbeat: 1, ..AgentSeen::default() }
    }

    fn report(list: u64, (from, to): (u64, u64), seen_: &[&str], complete: bool) -> RelayReport {
        let d = AgentsDelta {
            list,
            from,
            to,
            seen: seen_.iter().map(|d| seen(d)).collect(),
            complete,
            ..AgentsDelta::default()
        };
        RelayReport { agents_delta: Some(d), ..RelayReport::default() }
    }

    fn shown(h: &AgentsHeld) -> Vec<&str> {
        let mut v: Vec<&str> = h.shown.keys().map(String::as_str).collect();
        v.sort();
        v
    }

    #[test]
    fn deltas_apply_in_order_and_one_out_of_order_asks_for_the_list_again() {
        let mut h = AgentsHeld::default();
        assert!(h.take(&RelayReport::default()), "a hub with no list did not ask for one");
        assert!(!h.take(&report(9, (0, 1), &["a", "b"], false)));
        assert!(shown(&h).is_empty(), "a list shown before it was whole");
        assert!(!h.take(&report(9, (1, 2), &["c"], true)));
        assert_eq!(shown(&h), ["a", "b", "c"]);
        assert!(!h.take(&RelayReport::default()), "a hub that holds the list asked for it again");

        let mut next = report(9, (2, 3), &[], true);
        let d = next.agents_delta.as_mut().unwrap();
        d.gone = vec!["a".into()];
        d.heard = vec![("b".into(), 50)];
        assert!(!h.take(&next));
        assert_eq!(shown(&h), ["b", "c"]);
        assert_eq!(h.shown["b"].last_heartbeat, 50);

        // The answer to 3 -> 4 was lost: the relay sends 3 -> 4 again, or a
        // relay restarted sends another list's delta: neither applies.
        assert!(!h.take(&report(9, (3, 4), &["d"], true)));
        assert!(h.take(&report(9, (3, 4), &["e"], true)), "a delta out of order was applied");
        assert!(h.take(&report(5, (4, 5), &["e"], true)), "another list's delta was applied");
        assert_eq!(shown(&h), ["b", "c", "d"], "the list held changed before the new one was whole");
        assert!(!h.take(&report(9, (0, 1), &["b"], false)));
        assert_eq!(shown(&h), ["b", "c", "d"]);
        assert!(!h.take(&report(9, (1, 2), &["f"], true)));
        assert_eq!(shown(&h), ["b", "f"]);
    }

    #[test]
    fn an_older_relays_whole_list_replaces_what_is_held() {
        let mut h = AgentsHeld::default();
        assert!(!h.take(&report(9, (0, 1), &["a"], true)));
        let old = RelayReport { agents: Some(vec![seen("z")]), ..RelayReport::default() };
        assert!(!h.take(&old));
        assert_eq!(shown(&h), ["z"]);
        assert!(!h.take(&RelayReport::default()), "an older relay was asked for what it cannot send");
        assert!(h.take(&report(9, (1, 2), &["a"], true)), "a delta applied on top of a whole list");
    }
}
