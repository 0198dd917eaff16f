//! What the relays tell the hub, and routing. Relays *report* (push): every
//! `report_ms` each relay POSTs `/api/v1/relay/report` over mTLS with its
//! relay certificate: readiness, load, attached agents, ended sessions with
//! byte counts, and audit chain heads. The answer carries the sessions the hub
//! revoked, so an admin's "end" reaches both twins within one report period.
//! Nothing has to reach into the relays' networks.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::config::HubRelay;
use crate::api::{AgentSeen, RelayReport, ReportAnswer, RevokedSession};
use crate::util::lock;

struct RelayView {
    seen: Instant,
    ready: bool,
    sessions: u64,
    agents: HashMap<String, AgentSeen>,
    /// Live sessions' bytes (to device, to client): replaced by each full
    /// report, updated by the counts that moved in between.
    live: HashMap<String, (u64, u64)>,
}

/// The relays as their reports describe them, and revocations in flight.
pub struct Board {
    relays: Vec<HubRelay>,
    stale: Duration,
    views: Mutex<HashMap<String, RelayView>>,
    revoked: Mutex<HashMap<String, u64>>,
}

/// Where a device can be reached.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Presence {
    /// `online` or `offline`.
    pub status: String,
    /// Relays it is attached to (with a fresh report).
    pub relays: Vec<String>,
    /// The transport to each of `relays` (`tcp` or `quic`).
    pub transports: Vec<String>,
    pub last_heartbeat: Option<u64>,
    pub agent_version: Option<String>,
}

impl Board {
    pub fn new(relays: Vec<HubRelay>, stale: Duration) -> Board {
        Board { relays, stale, views: Mutex::new(HashMap::new()), revoked: Mutex::new(HashMap::new()) }
    }

    pub fn is_relay(&self, name: &str) -> bool {
        self.relays.iter().any(|r| r.name == name)
    }

    /// Takes a report in; returns what the relay must act on.
    pub fn report(&self, relay: &str, r: &RelayReport, now: u64) -> ReportAnswer {
        {
            let mut views = lock(&self.views);
            let v = views.entry(relay.to_string()).or_insert_with(|| RelayView {
                seen: Instant::now(),
                ready: false,
                sessions: 0,
                agents: HashMap::new(),
                live: HashMap::new(),
            });
            v.seen = Instant::now();
            v.ready = r.ready;
            v.sessions = r.sessions;
            let live = r.live.iter().map(|l| (l.session.clone(), (l.bytes_to_device, l.bytes_to_client)));
            if let Some(agents) = &r.agents {
                // A full report: every live session's counts, and only those.
                v.agents = agents.iter().map(|a| (a.device.clone(), a.clone())).collect();
                v.live = live.collect();
            } else {
                // Between them: the counts that moved.
                v.live.extend(live);
            }
        }
        let mut revoked = lock(&self.revoked);
        revoked.retain(|_, exp| *exp > now);
        ReportAnswer {
            revoked: revoked.iter().map(|(s, e)| RevokedSession { session: s.clone(), expires_at: *e }).collect(),
        }
    }

    pub fn revoke(&self, session: &str, expires_at: u64) {
        lock(&self.revoked).insert(session.to_string(), expires_at);
    }

    fn fresh<'a>(&self, views: &'a HashMap<String, RelayView>, name: &str) -> Option<&'a RelayView> {
        views.get(name).filter(|v| v.seen.elapsed() <= self.stale)
    }

    /// The device's pair ordered for a session: ready relays the device is
    /// attached to, least loaded first, then the others (the twin pairs
    /// through either). `None` when no live relay holds the device.
    pub fn route(&self, device: &str) -> Option<Vec<HubRelay>> {
        let views = lock(&self.views);
        let mut holding: Vec<(u64, usize)> = self
            .relays
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let v = self.fresh(&views, &r.name)?;
                (v.ready && v.agents.contains_key(device)).then_some((v.sessions, i))
            })
            .collect();
        holding.sort();
        let first = holding.first()?.1;
        let mut out = vec![self.relays[first].clone()];
        out.extend(self.relays.iter().enumerate().filter(|(i, _)| *i != first).map(|(_, r)| r.clone()));
        Some(out)
    }

    /// Counts the routed session against the relay until its next report.
    pub fn routed(&self, relay: &str) {
        if let Some(v) = lock(&self.views).get_mut(relay) {
            v.sessions += 1;
        }
    }

    pub fn presence(&self, device: &str) -> Presence {
        let views = lock(&self.views);
        let mut p = Presence { status: "offline".into(), ..Presence::default() };
        for r in &self.relays {
            if let Some(a) = self.fresh(&views, &r.name).and_then(|v| v.agents.get(device)) {
                p.relays.push(r.name.clone());
                p.transports.push(a.transport.clone());
                if p.last_heartbeat.is_none_or(|h| h < a.last_heartbeat) {
                    p.last_heartbeat = Some(a.last_heartbeat);
                    p.agent_version = Some(a.agent_version.clone());
                }
            }
        }
        if !p.relays.is_empty() {
            p.status = "online".into();
        }
        p
    }

    /// A live session's bytes (to device, to client) as its relays last
    /// counted them (after a failover, the larger count).
    pub fn live_bytes(&self, session: &str) -> Option<(u64, u64)> {
        let views = lock(&self.views);
        self.relays
            .iter()
            .filter_map(|r| self.fresh(&views, &r.name)?.live.get(session).copied())
            .max_by_key(|(d, c)| d + c)
    }

    /// Relays with a fresh report, ready or not (health endpoint).
    pub fn relay_states(&self) -> Vec<(String, bool, bool, u64)> {
        let views = lock(&self.views);
        self.relays
            .iter()
            .map(|r| match self.fresh(&views, &r.name) {
                Some(v) => (r.name.clone(), true, v.ready, v.sessions),
                None => (r.name.clone(), false, false, 0),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AgentSeen, LiveBytes};

    fn live(session: &str, to_device: u64, to_client: u64) -> LiveBytes {
        LiveBytes { session: session.into(), bytes_to_device: to_device, bytes_to_client: to_client }
    }

    #[test]
    fn live_counts_move_between_full_reports_and_a_full_report_drops_ended_sessions() {
        let relay = HubRelay { name: "relay-a".into(), addr: "127.0.0.1:1".into(), server_name: None };
        let board = Board::new(vec![relay], Duration::from_secs(60));
        let full = |live: Vec<LiveBytes>| RelayReport {
            agents: Some(Vec::<AgentSeen>::new()),
            live,
            ..RelayReport::default()
        };
        let between = |live: Vec<LiveBytes>| RelayReport { live, ..RelayReport::default() };
        board.report("relay-a", &full(vec![live("s1", 0, 0), live("s2", 5, 5)]), 0);
        // Between full reports only the counts that moved come; the others stay.
        board.report("relay-a", &between(vec![live("s1", 100, 40)]), 0);
        assert_eq!(board.live_bytes("s1"), Some((100, 40)), "a count between full reports was not taken");
        assert_eq!(board.live_bytes("s2"), Some((5, 5)), "an unchanged session lost its count");
        // A full report lists every live session: one it leaves out ended.
        board.report("relay-a", &full(vec![live("s1", 120, 50)]), 0);
        assert_eq!(board.live_bytes("s1"), Some((120, 50)));
        assert_eq!(board.live_bytes("s2"), None, "an ended session kept its live count");
    }
}
