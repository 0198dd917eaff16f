//! Reports to the hub every `report_ms`: readiness, load, attached agents
//! (what changed, `report_agents`, in the next report),
//! session starts and ends (with byte counts), live sessions' byte counts
//! that moved (all of them in every full report), audit chain heads (this
//! relay's when it moved, and in every full report; its agents' as
//! `report_heads` says). A report is full every 10 s and at the drain
//! (and, to a hub that takes no deltas, when agents changed). The answer names sessions an admin revoked: they are ended here
//! (and, by replication, at the twin) and their grants refused; and, when
//! this relay's list is not the hub's, the retired devices (`retired.rs`).
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;

use super::state::State;
use super::{report_agents, report_heads};
use crate::api::{AgentHead, Head, HubClient, LiveBytes, RelayReport, ReportAnswer};
use crate::proto::{Reason, SessionId};
use crate::util::now_secs;

/// Full agent list at least this often, even when nothing changed.
const FULL_AGENTS_EVERY: Duration = Duration::from_secs(10);
/// How long a draining relay waits for the hub to take its last report.
const LAST_REPORT_WAIT: Duration = Duration::from_secs(3);
/// Session starts, moves and ends per report, each at most: after a long
/// outage of the hub (up to `HUB_OUTBOX_CAP` ends queued, about 200 bytes
/// each) one report would pass the hub's 16 MiB body limit and be refused
/// at every try; batches go one per `report_ms` instead.
const REPORT_BATCH: usize = 5_000;
/// The pause after the hub first refuses this relay's certificate, and its cap.
pub const REFUSED_FIRST: Duration = Duration::from_secs(1);
pub const REFUSED_CAP: Duration = Duration::from_secs(60);

pub async fn run(state: Arc<State>) {
    let Some(link) = state.cfg.hub.clone() else { return };
    let cert = (state.cfg.cert.as_path(), state.cfg.key.as_path());
    let client = match HubClient::with_crl(
        &link.url,
        (&state.cfg.ca, state.cfg.crl.as_deref()),
        Some(cert),
        link.server_name.as_deref(),
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "hub link disabled");
            return;
        }
    };
    let mut ticker = tokio::time::interval(Duration::from_millis(link.report_ms.max(50)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The sequence of this relay's own head the hub last took.
    let mut own_sent: Option<u64> = None;
    // Full reports so far: which old heads go again (`report_heads`).
    let mut cycle: u64 = 0;
    // The hub keeps the device certificates that came with heads.
    let mut certs_kept = false;
    // The agents as the hub holds them.
    let mut agents_sent = report_agents::Sent::default();
    // Each live session's byte counts as the hub last took them.
    let mut sent_live: HashMap<SessionId, (u64, u64)> = HashMap::new();
    let mut last_full = Instant::now() - FULL_AGENTS_EVERY;
    let mut failing_since: Option<Instant> = None;
    // A hub that refuses this relay's certificate (or the relay the hub's)
    // is asked again after 1 s, doubling to 60 s, not every report_ms: that
    // waits for a person. A hub that is merely unreachable (restarting) is
    // asked every report_ms, so the relay is back the moment it is.
    let mut refused = crate::util::Backoff::new(REFUSED_FIRST, REFUSED_CAP);
    loop {
        // Draining: the sessions this relay ended (a relay without a twin
        // ends them all) and the last counts of those its twin takes over
        // go in one last full report, or the hub would learn of them only
        // by its `lost` rule, minutes later and without the last bytes.
        let last = tokio::select! {
            _ = state.drain.cancelled() => true,
            _ = ticker.tick() => false,
        };
        // Agents that changed go at once: as a delta in any report, or, to a
        // hub that takes no deltas, in a full report (its whole list marks
        // the report full there). A full report otherwise goes every 10 s:
        // its heads (`report_heads`) are many while a fleet attaches.
        let changed = std::mem::take(&mut state.hub_out().agents_changed);
        let full = last || last_full.elapsed() >= FULL_AGENTS_EVERY || (changed && !agents_sent.hub_takes());
        // The live counts before the ends (see `State::end_session`).
        let live_now = live_bytes(&state);
        let (mut report, heads) = build(&state, (full, changed, cycle), (own_sent, certs_kept), &agents_sent);
        let carried_agents = report.agents_delta.is_some() || report.agents.is_some();
        cycle += u64::from(full);
        report.live = live_to_send(&live_now, &sent_live, full);
        let post = client.post::<_, ReportAnswer>("/api/v1/relay/report", None, &report);
        if last {
            match tokio::time::timeout(LAST_REPORT_WAIT, post).await {
                Ok(Ok(_)) => tracing::info!(ended = report.ended.len(), "last report to the hub sent"),
                Ok(Err(e)) => tracing::warn!(error = %e, ended = report.ended.len(), "last report to the hub failed"),
                Err(_) => tracing::warn!(ended = report.ended.len(), "last report to the hub timed out"),
            }
            return;
        }
        match post.await {
            Ok(answer) => {
                refused.reset();
                if failing_since.take().is_some() {
                    tracing::info!("hub reachable again");
                }
                if full {
                    last_full = Instant::now();
                }
                agents_sent.answered(report.agents_delta.take(), answer.agents_delta, answer.agents_resync);
                let now_ms = crate::util::clock::now_ms();
                if let Some(own) = heads.iter().find(|h| h.device.is_empty()) {
                    own_sent = Some(own.seq);
                }
                heads_answered(&state.agents, &heads, (answer.certs_kept, &answer.certs_wanted), now_ms);
                certs_kept = answer.certs_kept;
                sent_live = live_now;
                apply(&state, answer);
            }
            Err(e) => {
                // Keep what was not delivered for the next report.
                {
                    let mut out = state.hub_out();
                    put_back(report.started, &mut out.started);
                    put_back(report.started_transports, &mut out.started_transports);
                    put_back(report.moved, &mut out.moved);
                    put_back(report.moved_transports, &mut out.moved_transports);
                    put_back(report.ended, &mut out.ended);
                    out.agents_changed |= carried_agents;
                }
                if failing_since.is_none() {
                    failing_since = Some(Instant::now());
                    let retry = match e.tls_refused() {
                        true => format!("after {REFUSED_FIRST:?}, then up to every {REFUSED_CAP:?}"),
                        false => "every report".into(),
                    };
                    tracing::warn!(error = %e, retry, "cannot report to the hub");
                }
                if e.tls_refused() {
                    tokio::select! {
                        _ = state.drain.cancelled() => {}
                        _ = tokio::time::sleep(refused.next_pause()) => {}
                    }
                }
            }
        }
    }
}

/// What the hub's answer to a report says of the agents' heads it carried:
/// each was taken, and its certificate kept when the hub keeps them, but
/// for the devices whose certificate the hub wants (it named a SHA-256 the
/// hub does not hold): their heads count as not taken, and go again whole
/// in the next report (a head the hub had taken before it restarted would
/// otherwise wait for its next full report while young, or its slot).
fn heads_answered(
    agents: &dashmap::DashMap<String, super::agents::AgentHandle>,
    sent: &[report_heads::Sent],
    (kept, wanted): (bool, &[String]),
    now_ms: u64,
) {
    let wanted: std::collections::HashSet<&str> = wanted.iter().map(String::as_str).collect();
    for h in sent.iter().filter(|h| !h.device.is_empty()) {
        let Some(a) = agents.get(&h.device).filter(|a| a.attach_id == h.attach_id) else { continue };
        a.audit_head.answered(h.seq, (h.whole, kept, wanted.contains(h.device.as_str())), now_ms);
    }
}

/// The oldest [`REPORT_BATCH`] of `queued` (all of it, when fewer).
fn take_batch<T>(queued: &mut Vec<T>) -> Vec<T> {
    if queued.len() <= REPORT_BATCH {
        return std::mem::take(queued);
    }
    let rest = queued.split_off(REPORT_BATCH);
    std::mem::replace(queued, rest)
}

/// Puts what a failed report carried back in front of what was queued since.
fn put_back<T>(mut sent: Vec<T>, queued: &mut Vec<T>) {
    sent.append(queued);
    *queued = sent;
}

fn build(
    state: &State,
    (full, changed, cycle): (bool, bool, u64),
    (own_sent, certs_kept): (Option<u64>, bool),
    agents_sent: &report_agents::Sent,
) -> (RelayReport, Vec<report_heads::Sent>) {
    let (started, started_transports, moved, moved_transports, ended) = {
        let mut out = state.hub_out();
        (
            take_batch(&mut out.started),
            take_batch(&mut out.started_transports),
            take_batch(&mut out.moved),
            take_batch(&mut out.moved_transports),
            take_batch(&mut out.ended),
        )
    };
    let now_ms = crate::util::clock::now_ms();
    let mode = agents_sent.mode(full || changed, state.agents.len());
    let mut agents = Vec::new();
    let mut delta = (mode == Some(true)).then(|| agents_sent.begin());
    // (priority, device, head): the heads this report may carry.
    let mut due = Vec::new();
    for a in state.agents.iter() {
        let now = report_agents::Now {
            device: a.key(),
            agent_version: &a.agent_version,
            transport: a.transport,
            last_heartbeat: a.last_heartbeat.load(Ordering::Relaxed),
            cert_expires: a.cert_expires,
            clock_offset_ms: a.clock.get(),
        };
        if let Some(d) = delta.as_mut() {
            d.look(now);
        } else if mode == Some(false) {
            agents.push(now.seen());
        }
        if let Some(p) = a.audit_head.due(a.key(), (full, cycle), now_ms)
            && let Some((seq, hash, sig)) = a.audit_head.head()
        {
            due.push((p, a.key().clone(), Head { seq, hash, sig }));
        }
    }
    let agents_delta = delta.map(|d| d.finish(|device| state.agents.contains_key(device)));
    due.sort_by_key(|d| d.0);
    due.truncate(report_heads::PER_REPORT);
    let mut heads = Vec::with_capacity(due.len() + 1);
    let mut agent_heads = Vec::with_capacity(due.len());
    for (_, device, head) in due {
        let Some(a) = state.agents.get(&device) else { continue };
        // A certificate the hub keeps goes by its name: 64 bytes, not 1.3 KiB.
        let whole = !(certs_kept && a.audit_head.cert_kept());
        let (cert, cert_sha) = match whole {
            true => (hex::encode(&a.cert), String::new()),
            false => (String::new(), crate::api::cert_sha(&a.cert)),
        };
        heads.push(report_heads::Sent { device: device.clone(), seq: head.seq, attach_id: a.attach_id, whole });
        agent_heads.push(AgentHead { device, head, cert, cert_sha });
    }
    let (seq, hash) = state.audit.head();
    // Keyed by "" (no device id is empty): this relay's own head, one head,
    // in every full report, moved or not: the hub anchors a source at most
    // every 10 s, so a head it skipped as too soon is anchored once the chain
    // stops moving. (Agents' heads: `report_heads`.)
    let own_moved = seq > 0 && (full || own_sent != Some(seq));
    if own_moved {
        heads.push(report_heads::Sent { device: String::new(), seq, attach_id: 0, whole: true });
    }
    let ready = state.ready.load(Ordering::Relaxed) && !state.shutdown.is_cancelled();
    let report = RelayReport {
        ready,
        sessions: state.sessions.len() as u64,
        agents: (mode == Some(false)).then_some(agents),
        started,
        started_transports,
        moved,
        moved_transports,
        ended,
        audit_head: own_moved.then(|| Head { seq, sig: state.audit.sign_head(&hash), hash }),
        agent_heads,
        live: Vec::new(),
        retired_tag: state.retired.tag(),
        full: full && agents_sent.hub_takes(),
        agents_delta,
    };
    (report, heads)
}

/// What each live session has moved so far (`tether sessions` and the
/// console show it), by session.
fn live_bytes(state: &State) -> HashMap<SessionId, (u64, u64)> {
    state
        .sessions
        .iter()
        .map(|s| (*s.key(), (s.to_device.load(Ordering::Relaxed), s.to_client.load(Ordering::Relaxed))))
        .collect()
}

/// The counts to report: every session's in a full report, else those that
/// moved since the hub last took them (a session in use is at most one
/// report behind, an idle one costs nothing).
fn live_to_send(
    now: &HashMap<SessionId, (u64, u64)>,
    sent: &HashMap<SessionId, (u64, u64)>,
    full: bool,
) -> Vec<LiveBytes> {
    now.iter()
        .filter(|(id, counts)| full || sent.get(*id) != Some(*counts))
        .map(|(id, (to_device, to_client))| LiveBytes {
            session: id.to_string(),
            bytes_to_device: *to_device,
            bytes_to_client: *to_client,
        })
        .collect()
}

fn apply(state: &State, answer: ReportAnswer) {
    if let Some(list) = answer.retired {
        take_retired(state, list);
    }
    let now = now_secs();
    for r in answer.revoked {
        let Some(id) = SessionId::parse(&r.session) else { continue };
        // Its grant admits nothing from now on, here and (replicated) at the twin.
        let fresh = state.revoke_grant(id, r.expires_at, now);
        if state.sessions.contains_key(&id) {
            tracing::info!(session = %id, "session revoked by the hub");
            state.end_session(id, Reason::Revoked, true);
        } else if fresh {
            state.audit.record("grant_revoked", json!({"relay": state.cfg.name, "session": r.session}));
        }
        let waiter = state.pairing().decide(id);
        if let Some(tx) = waiter {
            let _ = tx.send((crate::proto::Outcome::Refused, Reason::Revoked));
        }
    }
}

/// Takes the hub's list in, and drops the channel of each device on it
/// that is attached here.
fn take_retired(state: &State, list: crate::api::RetiredDevices) {
    let attached: Vec<String> = list.devices.iter().filter(|d| state.agents.contains_key(*d)).cloned().collect();
    tracing::info!(retired = list.devices.len(), tag = %list.tag, "retired devices from the hub");
    state.retired.replace(list);
    crate::metrics::RELAY_RETIRED_DEVICES.set(state.retired.len() as i64);
    for device in attached {
        if let Some(a) = state.agents.get(&device) {
            // The channel's loop sees the device on the list, and tells the agent why.
            a.cancel.cancel();
            crate::metrics::RELAY_AGENTS_DROPPED.with_label_values(&["device_retired"]).inc();
            state.audit.record(
                "agent_dropped",
                json!({"relay": state.cfg.name, "device": device, "reason": "device_retired"}),
            );
            tracing::warn!(%device, "the hub retired this device: dropping its control channel");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A long outage of the hub queues many ends: each report carries the
    /// oldest batch, a failed one puts its batch back in front, and every
    /// end goes once, in order.
    #[test]
    fn queued_ends_go_in_batches_in_order_and_a_failed_batch_goes_again_first() {
        let mut queued: Vec<usize> = (0..REPORT_BATCH * 2 + 7).collect();
        let first = take_batch(&mut queued);
        assert_eq!(first.len(), REPORT_BATCH, "a report carried more than a batch");
        assert_eq!(queued.len(), REPORT_BATCH + 7);
        // The report fails; one more end is queued meanwhile.
        queued.push(usize::MAX);
        put_back(first, &mut queued);
        let mut sent = Vec::new();
        while !queued.is_empty() {
            let batch = take_batch(&mut queued);
            assert!(batch.len() <= REPORT_BATCH);
            sent.extend(batch);
        }
        let mut want: Vec<usize> = (0..REPORT_BATCH * 2 + 7).collect();
        want.push(usize::MAX);
        assert_eq!(sent, want, "an end was lost, repeated or reordered");
    }

    /// A report with a whole batch of ends (device ids of 64 characters,
    /// counts at their widest) stays well under the hub's 16 MiB body limit.
    #[test]
    fn a_batch_of_ends_fits_the_hubs_body_limit() {
        let end = crate::api::EndedSession {
            session: "f".repeat(32),
            device: "d".repeat(64),
            reason: "relay_shutdown".into(),
            bytes_to_device: u64::MAX,
            bytes_to_client: u64::MAX,
            duration_ms: u64::MAX,
            ended_at: u64::MAX,
        };
        let report = RelayReport { ended: vec![end; REPORT_BATCH], ..Default::default() };
        let size = serde_json::to_vec(&report).unwrap().len();
        assert!(size < 4 * 1024 * 1024, "a batch of ends takes {size} bytes");
    }

    /// A report with a whole batch of agents' heads, each at the widest the
    /// relay passes on (hash 128 and signature 512 characters) with a device
    /// certificate of 1 KiB (twice a real one), stays under half the hub's
    /// 16 MiB body limit.
    #[test]
    fn a_batch_of_heads_fits_the_hubs_body_limit() {
        let head = AgentHead {
            device: "d".repeat(64),
            head: Head { seq: u64::MAX, hash: "f".repeat(128), sig: "e".repeat(512) },
            cert: "c".repeat(2048),
            cert_sha: String::new(),
        };
        let report = RelayReport { agent_heads: vec![head; report_heads::PER_REPORT], ..Default::default() };
        let size = serde_json::to_vec(&report).unwrap().len();
        assert!(size < 8 * 1024 * 1024, "a batch of heads takes {size} bytes");
    }

    #[test]
    fn only_moved_counts_go_between_full_reports() {
        let (a, b, c) = (SessionId([1; 16]), SessionId([2; 16]), SessionId([3; 16]));
        let now: HashMap<SessionId, (u64, u64)> = [(a, (10, 20)), (b, (5, 5)), (c, (1, 0))].into();
        let sent: HashMap<SessionId, (u64, u64)> = [(a, (10, 20)), (b, (4, 5))].into();
        let mut moved: Vec<String> = live_to_send(&now, &sent, false).into_iter().map(|l| l.session).collect();
        moved.sort();
        assert_eq!(moved, [b.to_string(), c.to_string()], "an unchanged count was sent, or a moved or new one was not");
        assert_eq!(live_to_send(&now, &sent, true).len(), 3, "a full report leaves a live session out");
    }
}
