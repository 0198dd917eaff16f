//! Sessions no relay holds any more. A relay reports each session's end, but
//! a relay that dies takes its sessions with it, and when its twin cannot
//! take them up either (it died too, the whole system was stopped, or the
//! client gave up before it could resume) no end ever comes: the record
//! would say "live" forever. The hub notes when a relay last listed each
//! session (each full report, every 10 s, lists every live one). A session
//! recorded live that no relay has listed for `session_lost_secs` is
//! recorded as ended, reason `lost`, ended when it was last listed, once at
//! least one relay has reported in full since then and every other relay
//! has too or has been silent that long. Having heard from no relay, the
//! hub decides nothing. A relay that lists the session again (it had only
//! been cut off from the hub) brings it back to live.
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Hub;
use super::relays::Board;
use crate::api::RelayReport;
use crate::util::lock;

/// A session no relay holds, as [`Board::take_lost`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub session: String,
    /// How long ago a relay last listed it (or the hub started).
    pub unlisted: Duration,
    /// What relays last counted for it while it was live (now in the record).
    pub to_device: u64,
    pub to_client: u64,
}

/// How long the hub remembers a session it recorded lost, and how many.
const LOST_KEPT: Duration = Duration::from_secs(3600);
const LOST_KEPT_MAX: usize = 4096;

impl Board {
    /// Notes the sessions a report lists (locked after `views`); returns
    /// those recorded lost here that it lists again, with the counts the
    /// record took for them when they were lost.
    pub(super) fn note_listed(&self, r: &RelayReport, at: Instant) -> Vec<(String, u64, u64)> {
        let mut listed = lock(&self.listed);
        for id in r.live.iter().map(|l| &l.session).chain(&r.started).chain(&r.moved) {
            listed.insert(id.clone(), at);
        }
        for e in &r.ended {
            listed.remove(&e.session);
        }
        let mut lost = lock(&self.lost);
        if lost.is_empty() {
            return Vec::new();
        }
        let again = r.live.iter().map(|l| &l.session).chain(&r.moved);
        again.filter_map(|id| lost.remove(id).map(|(_, d, c)| (id.clone(), d, c))).collect()
    }

    /// The sessions of `live` (recorded live) that no relay holds, by the
    /// rule in this module's comment. Their live counts leave the relays'
    /// views: the caller puts them in the record.
    pub fn take_lost(&self, live: &[String], after: Duration, now: Instant) -> Vec<Lost> {
        let mut views = lock(&self.views);
        let mut listed = lock(&self.listed);
        listed.retain(|_, at| now.saturating_duration_since(*at) < after.saturating_mul(4));
        let since = |t: Instant| now.saturating_duration_since(t);
        let mut out = Vec::new();
        for id in live {
            let last = listed.get(id).copied().unwrap_or(self.since).max(self.since);
            if since(last) < after {
                continue;
            }
            let mut heard = false;
            let all_told = self.relays.iter().all(|r| match views.get(&r.name) {
                Some(v) if v.full_at.is_some_and(|f| f > last) => {
                    heard = true;
                    true
                }
                Some(v) => since(v.seen) >= after,
                None => since(self.since) >= after,
            });
            if !(all_told && heard) {
                continue;
            }
            let (to_device, to_client) = views
                .values_mut()
                .filter_map(|v| v.live.remove(id))
                .fold((0u64, 0u64), |(d, c), (d2, c2)| (d.saturating_add(d2), c.saturating_add(c2)));
            listed.remove(id);
            out.push(Lost { session: id.clone(), unlisted: since(last), to_device, to_client });
        }
        let mut lost = lock(&self.lost);
        lost.retain(|_, (at, _, _)| now.saturating_duration_since(*at) < LOST_KEPT);
        for l in &out {
            if lost.len() < LOST_KEPT_MAX {
                lost.entry(l.session.clone()).or_insert((now, l.to_device, l.to_client));
            }
        }
        out
    }
}

/// Every few seconds: records as lost the live sessions no relay holds.
pub async fn sweep(hub: Arc<Hub>, stop: CancellationToken) {
    let after = Duration::from_secs(hub.cfg.session_lost_secs.max(1));
    let mut tick = tokio::time::interval((after / 2).clamp(Duration::from_millis(500), Duration::from_secs(5)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let live = match hub.store.sessions_live().await {
            Ok(l) => l,
            Err(e) => {
                if !e.is_unavailable() {
                    tracing::error!(error = %e, "listing live sessions");
                }
                continue;
            }
        };
        let ids: Vec<String> = live.iter().map(|s| s.id.clone()).collect();
        for l in hub.board.take_lost(&ids, after, Instant::now()) {
            let Some(s) = live.iter().find(|s| s.id == l.session) else { continue };
            // The second in which it was last listed.
            let at = std::time::SystemTime::now().checked_sub(l.unlisted).unwrap_or(std::time::UNIX_EPOCH);
            let ended_at = at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
            let bytes = (l.to_device as i64, l.to_client as i64);
            match hub.store.session_lost(&l.session, ended_at, bytes).await {
                Ok(true) => {}
                Ok(false) => continue, // it ended or was revoked meanwhile
                Err(e) => {
                    if !e.is_unavailable() {
                        tracing::error!(session = %l.session, error = %e, "recording a lost session");
                    }
                    continue;
                }
            }
            crate::metrics::HUB_SESSIONS_LOST.inc();
            let why = format!(
                "no relay has listed it for {} s, and every relay has reported since or been silent that long",
                l.unlisted.as_secs()
            );
            tracing::warn!(session = %s.id, device = %s.device, relay = %s.relay, "session lost: {why}");
            hub.audit
                .record(
                    "session_lost",
                    json!({"session": s.id, "device": s.device, "specialist": s.specialist, "relay": s.relay,
                           "ended_at": ended_at, "bytes_to_device": l.to_device, "bytes_to_client": l.to_client, "why": why}),
                )
                .await;
        }
    }
}

/// A relay lists a session recorded lost: it is live after all.
pub async fn found(hub: &Hub, relay: &str, (id, to_device, to_client): (String, u64, u64)) {
    match hub.store.session_found(&id, (to_device as i64, to_client as i64)).await {
        Ok(true) => {
            tracing::info!(session = %id, relay, "a session recorded lost is live again");
            hub.audit.record("session_found", json!({"session": id, "relay": relay})).await;
        }
        Ok(false) => {}
        Err(e) if e.is_unavailable() => {}
        Err(e) => tracing::error!(session = %id, error = %e, "recording a lost session live again"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AgentSeen, EndedSession, LiveBytes};
    use crate::hub::config::HubRelay;

    /// Short, so the tests wait for real: reports stamp themselves with `Instant::now()`.
    const AFTER: Duration = Duration::from_millis(40);

    fn wait() {
        std::thread::sleep(AFTER + Duration::from_millis(10));
    }

    fn board() -> Board {
        let relay = |name: &str| HubRelay { name: name.into(), addr: "127.0.0.1:1".into(), server_name: None };
        Board::new(vec![relay("relay-a"), relay("relay-b")], Duration::from_secs(60))
    }

    fn full(live: &[(&str, u64)]) -> RelayReport {
        let live = live
            .iter()
            .map(|(s, n)| LiveBytes { session: s.to_string(), bytes_to_device: *n, bytes_to_client: *n })
            .collect();
        RelayReport { agents: Some(Vec::<AgentSeen>::new()), live, ..RelayReport::default() }
    }

    fn ids(l: &[Lost]) -> Vec<&str> {
        l.iter().map(|l| l.session.as_str()).collect()
    }

    #[test]
    fn a_session_no_relay_lists_is_lost_once_every_relay_has_reported_since() {
        let board = board();
        board.report("relay-a", &full(&[("s1", 500), ("s2", 7)]), 0);
        board.report("relay-b", &full(&[]), 0);
        let live = ["s1".to_string(), "s2".to_string()];
        // Both relays restart: their full reports leave s1 out (what relay-a
        // had counted goes to the record at once); s2 is still listed.
        let forgotten = board.report("relay-a", &full(&[("s2", 9)]), 0).forgotten;
        assert_eq!(forgotten.len(), 1, "{forgotten:?}");
        board.report("relay-b", &full(&[]), 0);
        assert!(board.take_lost(&live, AFTER, Instant::now()).is_empty(), "lost before session_lost_secs");
        wait();
        board.report("relay-a", &full(&[("s2", 9)]), 0);
        board.report("relay-b", &full(&[]), 0);
        let lost = board.take_lost(&live, AFTER, Instant::now());
        assert_eq!(ids(&lost), ["s1"], "{lost:?}");
        assert_eq!((lost[0].to_device, lost[0].to_client), (0, 0), "counts taken twice");
        assert!(lost[0].unlisted >= AFTER, "{lost:?}");
        // Still recorded live (the record's update failed): found again, so the hub tries again.
        assert_eq!(ids(&board.take_lost(&live, AFTER, Instant::now())), ["s1"]);
        assert_eq!(board.live_bytes("s2"), Some((9, 9)));
    }

    #[test]
    fn a_relay_that_has_not_reported_in_full_since_may_still_hold_it_unless_silent() {
        let board = board();
        board.report("relay-b", &full(&[]), 0);
        board.report("relay-a", &full(&[("s1", 1)]), 0);
        board.report("relay-a", &full(&[]), 0);
        let live = ["s1".to_string()];
        wait();
        // relay-b reports, but not in full: it may have taken s1 up since.
        board.report("relay-b", &RelayReport::default(), 0);
        board.report("relay-a", &full(&[]), 0);
        assert!(board.take_lost(&live, AFTER, Instant::now()).is_empty(), "relay-b had not listed its sessions");
        board.report("relay-b", &full(&[]), 0);
        assert_eq!(ids(&board.take_lost(&live, AFTER, Instant::now())), ["s1"]);

        // A relay silent for session_lost_secs counts as holding nothing; the
        // counts it had reported go to the record.
        board.report("relay-b", &full(&[("s2", 8)]), 0);
        board.report("relay-a", &full(&[]), 0);
        let live = ["s2".to_string()];
        assert!(board.take_lost(&live, AFTER, Instant::now()).is_empty(), "too soon");
        wait();
        board.report("relay-a", &full(&[]), 0);
        let lost = board.take_lost(&live, AFTER, Instant::now());
        assert_eq!(ids(&lost), ["s2"]);
        assert_eq!((lost[0].to_device, lost[0].to_client), (8, 8), "the silent relay's counts");
        assert_eq!(board.live_bytes("s2"), None, "the counts stayed in the live view too");
    }

    #[test]
    fn having_heard_from_no_relay_the_hub_decides_nothing() {
        let board = board();
        let live = ["s1".to_string()];
        // A hub that just started, or one cut off from every relay.
        wait();
        assert!(board.take_lost(&live, AFTER, Instant::now()).is_empty());
        // Unlisted since the hub started, and now both relays say so.
        board.report("relay-a", &full(&[]), 0);
        board.report("relay-b", &full(&[]), 0);
        assert_eq!(ids(&board.take_lost(&live, AFTER, Instant::now())), ["s1"]);
    }

    #[test]
    fn a_session_listed_between_full_reports_is_not_lost_and_an_end_unlists_it() {
        let board = board();
        board.report("relay-a", &full(&[]), 0);
        board.report("relay-b", &full(&[]), 0);
        wait();
        // Counts that moved (a report between full ones) list it.
        let between = RelayReport { live: full(&[("s1", 3)]).live, ..RelayReport::default() };
        board.report("relay-b", &between, 0);
        board.report("relay-a", &full(&[]), 0);
        assert!(board.take_lost(&["s1".to_string()], AFTER, Instant::now()).is_empty());
        // An ended session is the record's business, not this rule's.
        let end = EndedSession { session: "s1".into(), ..EndedSession::default() };
        board.report("relay-b", &RelayReport { ended: vec![end], ..full(&[]) }, 0);
        assert!(lock(&board.listed).get("s1").is_none());
    }

    #[test]
    fn a_relay_that_lists_a_lost_session_again_brings_it_back_with_its_counts() {
        let board = board();
        board.report("relay-a", &full(&[("s1", 40)]), 0);
        board.report("relay-b", &full(&[]), 0);
        let lost = board.take_lost(&["s1".to_string()], Duration::ZERO, Instant::now());
        assert_eq!(ids(&lost), ["s1"]);
        // relay-a had only been cut off from the hub.
        let found = board.report("relay-a", &full(&[("s1", 60)]), 0).found;
        assert_eq!(found, [("s1".to_string(), 40, 40)], "the counts the record took must come back out");
        assert_eq!(board.live_bytes("s1"), Some((60, 60)));
        assert!(board.report("relay-a", &full(&[("s1", 60)]), 0).found.is_empty(), "found twice");
    }
}
