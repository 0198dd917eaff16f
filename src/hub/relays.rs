//! What the relays tell the hub, and routing. Relays *report* (push): every
//! `report_ms` each relay POSTs `/api/v1/relay/report` over mTLS with its
//! relay certificate: readiness, load, attached agents, ended sessions with
//! byte counts, and audit chain heads. The answer carries the sessions the hub
//! revoked, so an admin's "end" reaches both twins within one report period,
//! and the retired devices when the relay's list is not the hub's.
//! Nothing has to reach into the relays' networks.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::config::HubRelay;
use crate::api::{RelayReport, ReportAnswer, RetiredDevices, RevokedSession};
use crate::util::lock;

pub(super) struct RelayView {
    pub(super) seen: Instant,
    /// When its last full report came (it lists every live session).
    pub(super) full_at: Option<Instant>,
    ready: bool,
    sessions: u64,
    agents: super::relay_agents::AgentsHeld,
    /// Live sessions' bytes (to device, to client): replaced by each full
    /// report, updated by the counts that moved in between.
    pub(super) live: HashMap<String, (u64, u64)>,
}

/// Bytes a relay had reported for a live session that its reports no
/// longer hold, though it never reported the session's end: the relay
/// restarted (its counts start again from zero) and what it carried
/// before would be lost from the session's record. The caller adds them
/// to the record at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forgotten {
    pub session: String,
    pub to_device: u64,
    pub to_client: u64,
}

/// What a relay's report asks of the hub ([`Board::report`]).
pub struct Taken {
    pub answer: ReportAnswer,
    pub forgotten: Vec<Forgotten>,
    /// Sessions this hub recorded lost that the relay lists again, with
    /// the counts the record took for them then.
    pub found: Vec<(String, u64, u64)>,
}

/// The relays as their reports describe them, and revocations in flight.
pub struct Board {
    pub(super) relays: Vec<HubRelay>,
    stale: Duration,
    /// When this hub started: nothing was listed before.
    pub(super) since: Instant,
    pub(super) views: Mutex<HashMap<String, RelayView>>,
    /// When a relay last listed each session (live counts, start, move);
    /// locked after `views`. See [`super::lost`].
    pub(super) listed: Mutex<HashMap<String, Instant>>,
    /// Sessions this hub recorded as lost, with when: a relay that lists
    /// one again had only been cut off from the hub.
    pub(super) lost: Mutex<HashMap<String, (Instant, u64, u64)>>,
    revoked: Mutex<HashMap<String, u64>>,
    /// Every retired device; `None` until the database was read (nothing is
    /// told to the relays before: an empty list would clear theirs).
    retired: Mutex<Option<RetiredDevices>>,
    /// Session ends taken, by (relay, session), with when: a relay sends a
    /// report again when it did not get the answer, though the hub may
    /// have taken it, and an end's bytes must be added once.
    ends: Mutex<HashMap<(String, String), u64>>,
}

/// How long the hub remembers an end it took ([`Board::first_end`]).
const ENDS_KEPT_SECS: u64 = 3600;

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
    /// How far its clock is off (milliseconds, device minus relay), as the
    /// relay that heard from it last measured it.
    pub clock_offset_ms: Option<i64>,
}

impl Board {
    pub fn new(relays: Vec<HubRelay>, stale: Duration) -> Board {
        Board {
            relays,
            stale,
            since: Instant::now(),
            views: Mutex::new(HashMap::new()),
            listed: Mutex::new(HashMap::new()),
            lost: Mutex::new(HashMap::new()),
            revoked: Mutex::new(HashMap::new()),
            retired: Mutex::new(None),
            ends: Mutex::new(HashMap::new()),
        }
    }

    /// True the first time `relay` reports `session` ended (within
    /// [`ENDS_KEPT_SECS`]); false for the same end sent again.
    pub fn first_end(&self, relay: &str, session: &str, now: u64) -> bool {
        let mut ends = lock(&self.ends);
        if ends.len() >= 1024 {
            ends.retain(|_, at| now.saturating_sub(*at) < ENDS_KEPT_SECS);
        }
        ends.insert((relay.to_string(), session.to_string()), now).is_none()
    }

    /// Forgets that `relay` reported `session` ended (it was not stored):
    /// the same end sent again is taken.
    pub fn forget_end(&self, relay: &str, session: &str) {
        lock(&self.ends).remove(&(relay.to_string(), session.to_string()));
    }

    pub fn is_relay(&self, name: &str) -> bool {
        self.relays.iter().any(|r| r.name == name)
    }

    /// Takes a report in: what the relay must act on, the counts it forgot
    /// (see [`Forgotten`]), and sessions recorded lost that it lists.
    pub fn report(&self, relay: &str, r: &RelayReport, now: u64) -> Taken {
        let (forgotten, found, resync) = {
            let mut views = lock(&self.views);
            let v = views.entry(relay.to_string()).or_insert_with(|| RelayView {
                seen: Instant::now(),
                full_at: None,
                ready: false,
                sessions: 0,
                agents: Default::default(),
                live: HashMap::new(),
            });
            v.seen = Instant::now();
            v.ready = r.ready;
            v.sessions = r.sessions;
            let resync = v.agents.take(r);
            count_agents(relay, r, resync, v.agents.shown.len());
            if is_full(r) {
                v.full_at = Some(v.seen);
            }
            let forgotten = take_live(v, r);
            (forgotten, self.note_listed(r, v.seen), resync)
        };
        let mut revoked = lock(&self.revoked);
        revoked.retain(|_, exp| *exp > now);
        let retired = lock(&self.retired).as_ref().filter(|l| l.tag != r.retired_tag).cloned();
        let answer = ReportAnswer {
            revoked: revoked.iter().map(|(s, e)| RevokedSession { session: s.clone(), expires_at: *e }).collect(),
            retired,
            agents_delta: true,
            agents_resync: resync,
            certs_kept: true,
            certs_wanted: Vec::new(),
        };
        Taken { answer, forgotten, found }
    }

    pub fn revoke(&self, session: &str, expires_at: u64) {
        lock(&self.revoked).insert(session.to_string(), expires_at);
    }

    /// The retired devices, as the database lists them: each relay gets the
    /// list in its next answer when it holds another.
    pub fn set_retired(&self, devices: Vec<String>) {
        *lock(&self.retired) = Some(RetiredDevices::of(devices));
    }

    /// One device retired (`true`) or back in service, in this process: the
    /// relays hear of it at their next report, not after the next sweep.
    pub fn mark_retired(&self, device: &str, retired: bool) {
        let mut held = lock(&self.retired);
        if let Some(l) = held.as_mut() {
            let mut devices = std::mem::take(&mut l.devices);
            devices.retain(|d| d != device);
            if retired {
                devices.push(device.to_string());
            }
            *l = RetiredDevices::of(devices);
        }
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
                (v.ready && v.agents.shown.contains_key(device)).then_some((v.sessions, i))
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
            if let Some(a) = self.fresh(&views, &r.name).and_then(|v| v.agents.shown.get(device)) {
                p.relays.push(r.name.clone());
                p.transports.push(a.transport.clone());
                if p.last_heartbeat.is_none_or(|h| h < a.last_heartbeat) {
                    p.last_heartbeat = Some(a.last_heartbeat);
                    p.agent_version = Some(a.agent_version.clone());
                    p.clock_offset_ms = a.clock_offset_ms;
                }
            }
        }
        if !p.relays.is_empty() {
            p.status = "online".into();
        }
        p
    }

    /// Online devices whose clock is off by [`crate::util::clock::SKEW_WARN_MS`]
    /// or more (each counted once, as the relay that heard from it last says).
    pub fn clock_skewed(&self) -> usize {
        let views = lock(&self.views);
        let mut last: HashMap<&str, (u64, Option<i64>)> = HashMap::new();
        for r in &self.relays {
            for a in self.fresh(&views, &r.name).into_iter().flat_map(|v| v.agents.shown.values()) {
                let e = last.entry(a.device.as_str()).or_insert((a.last_heartbeat, a.clock_offset_ms));
                if e.0 < a.last_heartbeat {
                    *e = (a.last_heartbeat, a.clock_offset_ms);
                }
            }
        }
        last.values().filter(|(_, o)| o.is_some_and(crate::util::clock::skewed)).count()
    }

    /// A live session's bytes (to device, to client) as its relays last
    /// counted them: each relay counts what it carried, so the sum. A relay
    /// that stopped reporting still counts: those bytes went through it.
    pub fn live_bytes(&self, session: &str) -> Option<(u64, u64)> {
        let views = lock(&self.views);
        views
            .values()
            .filter_map(|v| v.live.get(session).copied())
            .reduce(|(d, c), (d2, c2)| (d.saturating_add(d2), c.saturating_add(c2)))
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

/// The agents a report told of, and the list the hub holds now.
fn count_agents(relay: &str, r: &RelayReport, resync: bool, held: usize) {
    use crate::metrics::{HUB_AGENT_RESYNCS, HUB_RELAY_AGENTS, HUB_REPORT_AGENTS};
    let count = |change: &str, n: usize| HUB_REPORT_AGENTS.with_label_values(&[change]).inc_by(n as u64);
    if let Some(d) = &r.agents_delta {
        count("seen", d.seen.len());
        count("heard", d.heard.len());
        count("gone", d.gone.len());
    }
    count("whole", r.agents.as_ref().map_or(0, Vec::len));
    if resync {
        HUB_AGENT_RESYNCS.with_label_values(&[relay]).inc();
    }
    HUB_RELAY_AGENTS.with_label_values(&[relay]).set(held as i64);
}

/// A full report lists every live session: a relay that sends deltas says
/// so, an older one sends its whole agent list.
pub(super) fn is_full(r: &RelayReport) -> bool {
    r.full || r.agents.is_some()
}

/// Takes a report's live counts into the relay's view. A full report holds
/// every live session's counts, and only those; between them come the counts
/// that moved. The relay takes its live counts before the ends it reports
/// (under one lock, see `relay::hub_report`), so the ends are applied last.
/// Returns what the relay forgot without ending it: a session a full report
/// leaves out, or a count that went down.
fn take_live(v: &mut RelayView, r: &RelayReport) -> Vec<Forgotten> {
    let mut forgotten = Vec::new();
    let mut forget = |session: &str, (to_device, to_client): (u64, u64)| {
        if to_device > 0 || to_client > 0 {
            forgotten.push(Forgotten { session: session.to_string(), to_device, to_client });
        }
    };
    let ended: std::collections::HashSet<&str> = r.ended.iter().map(|e| e.session.as_str()).collect();
    // A session this report ends is counted by its end. Its live count here
    // is either the same copy's last one, or a new copy's (the relay took it
    // up again from its twin, from zero): taken as a restart, that would
    // count the end's bytes twice. A new copy's counts come with a later report.
    let fresh: HashMap<String, (u64, u64)> = r
        .live
        .iter()
        .filter(|l| !ended.contains(l.session.as_str()))
        .map(|l| (l.session.clone(), (l.bytes_to_device, l.bytes_to_client)))
        .collect();
    for (session, (d, c)) in &fresh {
        if let Some(&(d0, c0)) = v.live.get(session)
            && (*d < d0 || *c < c0)
        {
            forget(session, (d0, c0));
        }
    }
    if is_full(r) {
        for (session, counts) in &v.live {
            if !fresh.contains_key(session) && !ended.contains(session.as_str()) {
                forget(session, *counts);
            }
        }
        v.live = fresh;
    } else {
        v.live.extend(fresh);
    }
    // An ended session's counts are in its end: the record has them.
    v.live.retain(|s, _| !ended.contains(s.as_str()));
    forgotten
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AgentSeen, EndedSession, LiveBytes};

    fn live(session: &str, to_device: u64, to_client: u64) -> LiveBytes {
        LiveBytes { session: session.into(), bytes_to_device: to_device, bytes_to_client: to_client }
    }

    fn board() -> Board {
        let relay = |name: &str| HubRelay { name: name.into(), addr: "127.0.0.1:1".into(), server_name: None };
        Board::new(vec![relay("relay-a"), relay("relay-b")], Duration::from_secs(60))
    }

    fn full(live: Vec<LiveBytes>) -> RelayReport {
        RelayReport { agents: Some(Vec::<AgentSeen>::new()), live, ..RelayReport::default() }
    }

    fn between(live: Vec<LiveBytes>) -> RelayReport {
        RelayReport { live, ..RelayReport::default() }
    }

    fn ended(session: &str, to_device: u64, to_client: u64) -> EndedSession {
        EndedSession {
            session: session.into(),
            bytes_to_device: to_device,
            bytes_to_client: to_client,
            ..Default::default()
        }
    }

    fn forgot(session: &str, to_device: u64, to_client: u64) -> Vec<Forgotten> {
        vec![Forgotten { session: session.into(), to_device, to_client }]
    }

    #[test]
    fn live_counts_move_between_full_reports_and_an_end_takes_a_session_out() {
        let board = board();
        board.report("relay-a", &full(vec![live("s1", 0, 0), live("s2", 5, 5)]), 0);
        // Between full reports only the counts that moved come; the others stay.
        let lost = board.report("relay-a", &between(vec![live("s1", 100, 40)]), 0).forgotten;
        assert!(lost.is_empty(), "{lost:?}");
        assert_eq!(board.live_bytes("s1"), Some((100, 40)), "a count between full reports was not taken");
        assert_eq!(board.live_bytes("s2"), Some((5, 5)), "an unchanged session lost its count");
        // s2 ends (its counts are in the end); the next full report leaves it out.
        let lost =
            board.report("relay-a", &RelayReport { ended: vec![ended("s2", 7, 7)], ..between(vec![]) }, 0).forgotten;
        assert!(lost.is_empty(), "an ended session's counts were taken as forgotten: {lost:?}");
        assert_eq!(board.live_bytes("s2"), None, "an ended session kept its live count");
        let lost = board.report("relay-a", &full(vec![live("s1", 120, 50)]), 0).forgotten;
        assert!(lost.is_empty(), "{lost:?}");
        assert_eq!(board.live_bytes("s1"), Some((120, 50)));
        // Live counts and the end in one report: the end wins.
        let lost = board
            .report("relay-a", &RelayReport { ended: vec![ended("s1", 130, 60)], ..full(vec![live("s1", 130, 60)]) }, 0)
            .forgotten;
        assert!(lost.is_empty() && board.live_bytes("s1").is_none(), "{lost:?}");
    }

    #[test]
    fn a_session_ended_and_taken_up_again_in_one_report_is_not_a_restart() {
        let board = board();
        board.report("relay-b", &full(vec![live("s1", 1_050_608, 1_050_700)]), 0);
        // The relay ended its copy (the end has its counts) and took the
        // session up again from its twin, from zero, before the report.
        let report = RelayReport { ended: vec![ended("s1", 1_050_608, 1_050_700)], ..between(vec![live("s1", 0, 0)]) };
        let lost = board.report("relay-b", &report, 0).forgotten;
        assert!(lost.is_empty(), "the end's bytes were also taken as forgotten: {lost:?}");
        let lost = board.report("relay-b", &full(vec![live("s1", 0, 0)]), 0).forgotten;
        assert!(lost.is_empty(), "{lost:?}");
        let lost = board.report("relay-b", &full(vec![]), 0).forgotten;
        assert!(lost.is_empty(), "a new copy with nothing carried was forgotten: {lost:?}");
    }

    #[test]
    fn an_end_sent_again_is_taken_once_per_relay() {
        let board = board();
        assert!(board.first_end("relay-a", "s1", 100));
        assert!(!board.first_end("relay-a", "s1", 101), "the same end was taken twice");
        assert!(board.first_end("relay-b", "s1", 101), "the twin's own end of it was not taken");
        // Remembered for an hour, then forgotten once the table is full.
        for i in 0..1024 {
            board.first_end("relay-a", &format!("x{i}"), 100 + ENDS_KEPT_SECS);
        }
        assert!(board.first_end("relay-a", "s1", 102 + ENDS_KEPT_SECS));
        assert!(!board.first_end("relay-a", "x5", 102 + ENDS_KEPT_SECS));
    }

    #[test]
    fn the_twins_counts_add_up_and_a_restarted_relay_gives_back_what_it_forgot() {
        let board = board();
        board.report("relay-a", &full(vec![live("s1", 52_000, 52_100)]), 0);
        board.report("relay-b", &full(vec![live("s1", 0, 0)]), 0);
        // relay-a dies; the session moves on through relay-b.
        board.report("relay-b", &between(vec![live("s1", 10_000, 10_050)]), 0);
        assert_eq!(board.live_bytes("s1"), Some((62_000, 62_150)), "each twin counts what it carried");
        // relay-a restarts and learns the session back from its twin: counts from zero.
        let lost = board.report("relay-a", &full(vec![live("s1", 0, 0)]), 0).forgotten;
        assert_eq!(lost, forgot("s1", 52_000, 52_100));
        assert_eq!(board.live_bytes("s1"), Some((10_000, 10_050)), "the forgotten counts go to the record, once");
        // Or it restarts without it: a full report that leaves a session out unended.
        board.report("relay-a", &between(vec![live("s1", 300, 300)]), 0);
        let lost = board.report("relay-a", &full(vec![]), 0).forgotten;
        assert_eq!(lost, forgot("s1", 300, 300));
        let lost = board.report("relay-a", &full(vec![]), 0).forgotten;
        assert!(lost.is_empty(), "counts were given back twice: {lost:?}");
        // Nothing carried, nothing to give back.
        board.report("relay-b", &full(vec![live("s9", 0, 0)]), 0);
        assert!(board.report("relay-b", &full(vec![]), 0).forgotten.is_empty());
    }

    /// The retired devices go to a relay only when its list is not the
    /// hub's, and never before the hub read them.
    #[test]
    fn the_retired_list_goes_to_a_relay_whose_list_is_another() {
        let b = board();
        let with_tag = |tag: &str| RelayReport { retired_tag: tag.into(), ..RelayReport::default() };
        let answer = |tag: &str| b.report("relay-a", &with_tag(tag), 100).answer.retired;
        assert_eq!(answer(""), None, "nothing before the database was read");
        b.mark_retired("INJ-9", true);
        assert_eq!(answer(""), None, "a single change does not stand for the whole list");
        b.set_retired(vec![]);
        assert_eq!(answer(""), None, "empty, as the relay holds");
        assert_eq!(answer("0011223344556677"), Some(RetiredDevices::default()), "a relay holding a list clears it");
        b.set_retired(vec!["INJ-2".into(), "INJ-1".into(), "INJ-2".into()]);
        let list = answer("").expect("the list, to a relay holding none");
        assert_eq!(list.devices, ["INJ-1", "INJ-2"]);
        assert_eq!(list.tag.len(), 16);
        assert_eq!(answer(&list.tag), None, "the same list is not sent again");
        b.mark_retired("INJ-3", true);
        let more = answer(&list.tag).expect("a retirement changes the list");
        assert_eq!(more.devices, ["INJ-1", "INJ-2", "INJ-3"]);
        b.mark_retired("INJ-3", false);
        assert_eq!(answer(&list.tag), None, "back to the list the relay holds");
        assert_eq!(RetiredDevices::of(vec!["INJ-2".into(), "INJ-1".into()]).tag, list.tag, "the tag names the set");
    }
}
