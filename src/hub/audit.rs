//! The hub's audit log: the same hash-chained records as the relay's and
//! agent's files, kept in the database (table `audit`) so that they are
//! backed up and replicated with it. Export gives the JSON lines back.
//!
//! A record the database cannot take now (it is unreachable) waits, in
//! order and with the time it happened, and is chained when the database is
//! back (up to [`PENDING_MAX`]; beyond that the oldest are dropped, counted,
//! and the chain says how many). They are kept on disk too, so that a stop
//! of the hub meanwhile loses none ([`super::audit_spool`]).
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::audit_spool::{Due, Found, Pending, Spool, not_stored};
use super::store::{Store, StoreError};
use crate::audit::{GENESIS, link};

/// Records kept while the database is unreachable.
pub const PENDING_MAX: usize = 10_000;

/// Says that `count` records were dropped, past [`PENDING_MAX`].
fn dropped_record(count: u64) -> Pending {
    let why = format!("more than {PENDING_MAX} records waited for the database");
    Pending::now("audit_records_dropped", json!({"count": count, "why": why}))
}

#[derive(Default)]
struct Waiting {
    records: VecDeque<Pending>,
    dropped: u64,
    /// Counts every change of `records` (for the spool).
    changes: u64,
    /// The last try to chain them found the database unreachable or full.
    stuck: bool,
}

pub struct HubAudit {
    store: Store,
    /// The head as stored; held while records are chained.
    head: Mutex<(u64, String)>,
    /// Records not chained yet, in order. A record is queued here at once
    /// (never waiting for the database), and taken off only by the holder
    /// of `head`, once stored.
    waiting: std::sync::Mutex<Waiting>,
    /// The same records on disk, while the database is unreachable (the
    /// hub's; an admin command has none: it gives up with its statement).
    spool: Option<Spool>,
    /// Records a stop of the hub left on disk, chained first at this start.
    kept: usize,
}

enum Append {
    Done,
    /// The database is unreachable or full: the record waits.
    Wait,
    /// Refused for another reason (logged): the record is dropped.
    Refused,
}

impl HubAudit {
    /// The chain in `store`; records that waited when the hub last stopped
    /// are read from `spool` and chained first.
    pub async fn open(store: Store, spool: Option<std::path::PathBuf>) -> Result<HubAudit, StoreError> {
        let head = store.audit_head().await?.unwrap_or((0, GENESIS.to_string()));
        let Some(spool) = spool else {
            let waiting = Default::default();
            return Ok(HubAudit { store, head: Mutex::new(head), waiting, spool: None, kept: 0 });
        };
        let (spool, found) = Spool::open(spool);
        let records = match found {
            Found::Records(r) if r.is_empty() => r,
            Found::Records(r) => {
                // A kill after some were stored, before the file was rewritten:
                // those are among the stored records of the same seconds.
                let (first, last) = r.iter().fold((i64::MAX, i64::MIN), |(a, b), p| (a.min(p.unix), b.max(p.unix)));
                let r = not_stored(r, &store.audit_newest(first, last + 1, 100_000).await?);
                tracing::info!(records = r.len(), path = %spool.path().display(),
                    "hub audit records that waited for the database when the hub stopped are chained first");
                r
            }
            Found::Unreadable { at, error } => {
                let path = at.display().to_string();
                tracing::error!(
                    path,
                    error,
                    "the file of waiting hub audit records does not read: left for you to look at"
                );
                vec![Pending::now("audit_spool_unreadable", json!({"path": path, "error": error}))]
            }
        };
        crate::metrics::HUB_AUDIT_PENDING.set(records.len() as i64);
        let kept = records.len();
        let waiting = std::sync::Mutex::new(Waiting { records: records.into(), ..Default::default() });
        Ok(HubAudit { store, head: Mutex::new(head), waiting, spool: Some(spool), kept })
    }

    /// Records a stop of the hub left on disk, chained first at this start.
    pub fn kept(&self) -> usize {
        self.kept
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        crate::util::lock(&self.waiting)
    }

    /// Appends one record, after any that wait for the database. While the
    /// database is known to be unreachable, the record is queued and the
    /// call returns at once ([`watch_database`] chains it later).
    pub async fn record(&self, event: &str, fields: Value) {
        self.record_all([(event, fields)]).await
    }

    /// Appends several records, in order, as [`HubAudit::record`] does; the
    /// database takes them in few statements (up to 256 records each).
    pub async fn record_all<'a>(&self, records: impl IntoIterator<Item = (&'a str, Value)>) {
        {
            let mut w = self.waiting();
            for (event, fields) in records {
                if w.records.len() >= PENDING_MAX {
                    w.records.pop_front();
                    w.dropped += 1;
                    crate::metrics::HUB_AUDIT_DROPPED.inc();
                }
                w.records.push_back(Pending::now(event, fields));
                w.changes += 1;
            }
            crate::metrics::HUB_AUDIT_PENDING.set(w.records.len() as i64);
        }
        if self.store.reachable() {
            self.flush().await;
        }
    }

    /// Chains the records that wait, while the database takes them: up to
    /// 256 in one statement (`store::row_chunk`); one at a time after the database refused
    /// a chunk, so that only the record it refuses is dropped.
    pub async fn flush(&self) {
        if self.waiting().records.is_empty() {
            return; // nothing waits (a drop always leaves records waiting)
        }
        let mut head = self.head.lock().await;
        {
            let mut w = self.waiting();
            if w.dropped > 0 {
                let marker = dropped_record(w.dropped);
                w.records.push_front(marker);
                w.dropped = 0;
                w.changes += 1;
            }
        }
        let mut alone = 0;
        // Only the holder of `head` takes records off: the front stays put.
        loop {
            let chunk: Vec<Pending> = {
                let w = self.waiting();
                let take = if alone > 0 { 1 } else { super::store::row_chunk(w.records.len()) };
                w.records.iter().take(take).cloned().collect()
            };
            if chunk.is_empty() {
                break;
            }
            match self.append(&mut head, &chunk).await {
                Append::Refused if chunk.len() > 1 => alone = chunk.len(),
                Append::Done | Append::Refused => {
                    let mut w = self.waiting();
                    w.records.drain(..chunk.len());
                    w.changes += 1;
                    crate::metrics::HUB_AUDIT_PENDING.set(w.records.len() as i64);
                    alone = alone.saturating_sub(1);
                }
                Append::Wait => {
                    self.waiting().stuck = true;
                    return;
                }
            }
        }
        self.waiting().stuck = false;
    }

    /// Another writer (the `tether hub` admin commands, or a second hub on
    /// the same database) may have appended meanwhile: the sequence number
    /// is the table's key, so that append fails, and the records are linked
    /// again to the head as stored.
    async fn append(&self, head: &mut (u64, String), records: &[Pending]) -> Append {
        let events = || records.iter().map(|p| p.event.as_str()).collect::<Vec<_>>().join(",");
        for _ in 0..8 {
            let mut linked = Vec::with_capacity(records.len());
            let mut at = head.clone();
            for p in records {
                let (line, hash) = link(at.0 + 1, &at.1, &p.ts, &p.event, p.fields.clone());
                at = (at.0 + 1, hash.clone());
                linked.push((at.0, p.unix, hash, line));
            }
            match self.store.audit_append(&linked).await {
                Ok(()) => {
                    *head = at;
                    return Append::Done;
                }
                Err(e) if super::store::is_unique_violation(&e) => match self.store.audit_head().await {
                    Ok(Some(h)) => *head = h,
                    Err(e) if e.is_unavailable() => return Append::Wait,
                    _ => break,
                },
                Err(e) if e.is_unavailable() => return Append::Wait,
                Err(e) if records.len() > 1 => {
                    tracing::debug!(events = events(), error = %e, "hub audit records refused together; one at a time");
                    return Append::Refused;
                }
                Err(e) => {
                    tracing::error!(event = events(), error = %e, "hub audit write failed");
                    return Append::Refused;
                }
            }
        }
        tracing::error!(event = events(), "hub audit write failed: the chain head keeps moving");
        Append::Refused
    }

    pub async fn head(&self) -> (u64, String) {
        self.head.lock().await.clone()
    }

    /// Makes the spool hold the records that wait for a database that
    /// cannot take them (unreachable, or full; none: no file).
    pub async fn keep(&self) {
        let Some(spool) = &self.spool else { return };
        let mut on_disk = spool.lock().await;
        let (changes, due, records) = {
            let w = self.waiting();
            let due = on_disk.due(w.changes, w.records.len(), w.stuck || !self.store.reachable());
            let records: Vec<Pending> = match due {
                Due::Write => {
                    let marker = (w.dropped > 0).then(|| dropped_record(w.dropped));
                    marker.into_iter().chain(w.records.iter().cloned()).collect()
                }
                _ => Vec::new(),
            };
            (w.changes, due, records)
        };
        match due {
            Due::Write => spool.write(&mut on_disk, changes, records).await,
            Due::Remove => spool.remove(&mut on_disk).await,
            Due::Nothing => {}
        }
    }
}

/// A `database_outage` record's fields; `at_stop`: the hub stopped while it
/// went on (the record then says so, and how far it had gone).
pub fn outage_fields(o: &super::store::Outage, at_stop: bool) -> Value {
    let since = crate::util::clock::rfc3339(o.since as i64);
    let mut f =
        json!({"since": since, "seconds": o.seconds, "statements_refused": o.statements_refused, "cause": o.cause});
    if at_stop {
        f["ongoing_at_hub_stop"] = true.into();
    }
    f
}

/// Every second: an outage of the database that has ended goes into the
/// audit (`database_outage`), and records that waited for it are chained.
pub async fn watch_database(hub: Arc<super::Hub>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while tokio::select! { _ = stop.cancelled() => false, _ = tick.tick() => true } {
        for o in hub.store.outages_ended() {
            hub.audit.record("database_outage", outage_fields(&o, false)).await;
        }
        hub.audit.flush().await;
        hub.audit.keep().await;
    }
}
