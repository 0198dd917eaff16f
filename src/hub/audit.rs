//! The hub's audit log: the same hash-chained records as the relay's and
//! agent's files, kept in the database (table `audit`) so that they are
//! backed up and replicated with it. Export gives the JSON lines back.
//!
//! A record the database cannot take now (it is unreachable) waits, in
//! order and with the time it happened, and is chained when the database is
//! back (up to [`PENDING_MAX`]; beyond that the oldest are dropped, counted,
//! and the chain says how many).
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::store::{Store, StoreError};
use crate::audit::{GENESIS, link};

/// Records kept while the database is unreachable.
pub const PENDING_MAX: usize = 10_000;

#[derive(Clone)]
struct Pending {
    ts: String,
    unix: i64,
    event: String,
    fields: Value,
}

impl Pending {
    fn now(event: &str, fields: Value) -> Pending {
        let now = time::OffsetDateTime::now_utc();
        let ts = now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        Pending { ts, unix: now.unix_timestamp(), event: event.to_string(), fields }
    }
}

#[derive(Default)]
struct Waiting {
    records: VecDeque<Pending>,
    dropped: u64,
}

pub struct HubAudit {
    store: Store,
    /// The head as stored; held while records are chained.
    head: Mutex<(u64, String)>,
    /// Records not chained yet, in order. A record is queued here at once
    /// (never waiting for the database), and taken off only by the holder
    /// of `head`, once stored.
    waiting: std::sync::Mutex<Waiting>,
}

enum Append {
    Done,
    /// The database is unreachable: the record waits.
    Wait,
    /// Refused for another reason (logged): the record is dropped.
    Refused,
}

impl HubAudit {
    pub async fn open(store: Store) -> Result<HubAudit, StoreError> {
        let head = store.audit_head().await?.unwrap_or((0, GENESIS.to_string()));
        crate::metrics::HUB_AUDIT_PENDING.set(0);
        Ok(HubAudit { store, head: Mutex::new(head), waiting: Default::default() })
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        crate::util::lock(&self.waiting)
    }

    /// Appends one record, after any that wait for the database. While the
    /// database is known to be unreachable, the record is queued and the
    /// call returns at once ([`watch_database`] chains it later).
    pub async fn record(&self, event: &str, fields: Value) {
        {
            let mut w = self.waiting();
            if w.records.len() >= PENDING_MAX {
                w.records.pop_front();
                w.dropped += 1;
                crate::metrics::HUB_AUDIT_DROPPED.inc();
            }
            w.records.push_back(Pending::now(event, fields));
            crate::metrics::HUB_AUDIT_PENDING.set(w.records.len() as i64);
        }
        if self.store.reachable() {
            self.flush().await;
        }
    }

    /// Chains the records that wait, while the database takes them.
    pub async fn flush(&self) {
        if self.waiting().records.is_empty() {
            return; // nothing waits (a drop always leaves records waiting)
        }
        let mut head = self.head.lock().await;
        {
            let mut w = self.waiting();
            if w.dropped > 0 {
                let why = format!("more than {PENDING_MAX} records waited for the database");
                let fields = json!({"count": w.dropped, "why": why});
                w.records.push_front(Pending::now("audit_records_dropped", fields));
                w.dropped = 0;
            }
        }
        // Only the holder of `head` takes records off: the front stays put.
        loop {
            let Some(p) = self.waiting().records.front().cloned() else { break };
            match self.append(&mut head, &p).await {
                Append::Done | Append::Refused => {
                    let mut w = self.waiting();
                    w.records.pop_front();
                    crate::metrics::HUB_AUDIT_PENDING.set(w.records.len() as i64);
                }
                Append::Wait => break,
            }
        }
    }

    /// Another writer (the `tether hub` admin commands, or a second hub on
    /// the same database) may have appended meanwhile: the sequence number
    /// is the table's key, so that append fails, and the record is linked
    /// again to the head as stored.
    async fn append(&self, head: &mut (u64, String), p: &Pending) -> Append {
        for _ in 0..8 {
            let (line, hash) = link(head.0 + 1, &head.1, &p.ts, &p.event, p.fields.clone());
            match self.store.audit_append(head.0 + 1, p.unix, &hash, &line).await {
                Ok(()) => {
                    *head = (head.0 + 1, hash);
                    return Append::Done;
                }
                Err(e) if super::store::is_unique_violation(&e) => match self.store.audit_head().await {
                    Ok(Some(h)) => *head = h,
                    Err(StoreError::Unavailable(_)) => return Append::Wait,
                    _ => break,
                },
                Err(StoreError::Unavailable(_)) => return Append::Wait,
                Err(e) => {
                    tracing::error!(event = p.event, error = %e, "hub audit write failed");
                    return Append::Refused;
                }
            }
        }
        tracing::error!(event = p.event, "hub audit write failed: the chain head keeps moving");
        Append::Refused
    }

    pub async fn head(&self) -> (u64, String) {
        self.head.lock().await.clone()
    }
}

/// Every second: an outage of the database that has ended goes into the
/// audit (`database_outage`), and records that waited for it are chained.
pub async fn watch_database(hub: Arc<super::Hub>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while tokio::select! { _ = stop.cancelled() => false, _ = tick.tick() => true } {
        for o in hub.store.outages_ended() {
            let since = crate::util::clock::rfc3339(o.since as i64);
            let fields = json!({"since": since, "seconds": o.seconds,
                                "statements_refused": o.statements_refused, "cause": o.cause});
            hub.audit.record("database_outage", fields).await;
        }
        hub.audit.flush().await;
    }
}
