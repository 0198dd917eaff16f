//! The hub's audit log: the same hash-chained records as the relay's and
//! agent's files, kept in the database (table `audit`) so that they are
//! backed up and replicated with it. Export gives the JSON lines back.
use serde_json::Value;
use tokio::sync::Mutex;

use super::store::{Store, StoreError};
use crate::audit::{GENESIS, link};

pub struct HubAudit {
    store: Store,
    head: Mutex<(u64, String)>,
}

impl HubAudit {
    pub async fn open(store: Store) -> Result<HubAudit, StoreError> {
        let head = store.audit_head().await?.unwrap_or((0, GENESIS.to_string()));
        Ok(HubAudit { store, head: Mutex::new(head) })
    }

    /// Appends one record. Another writer (the `tether hub` admin commands,
    /// or a second hub on the same database) may have appended meanwhile: the
    /// sequence number is the table's key, so that append fails, and the
    /// record is linked again to the head as stored. Other failures are logged.
    pub async fn record(&self, event: &str, fields: Value) {
        let mut head = self.head.lock().await;
        for _ in 0..8 {
            let now = time::OffsetDateTime::now_utc();
            let ts = now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
            let (line, hash) = link(head.0 + 1, &head.1, &ts, event, fields.clone());
            match self.store.audit_append(head.0 + 1, now.unix_timestamp(), &hash, &line).await {
                Ok(()) => {
                    *head = (head.0 + 1, hash);
                    return;
                }
                Err(e) if super::store::is_unique_violation(&e) => match self.store.audit_head().await {
                    Ok(Some(h)) => *head = h,
                    _ => break,
                },
                Err(e) => {
                    tracing::error!(event, error = %e, "hub audit write failed");
                    return;
                }
            }
        }
        tracing::error!(event, "hub audit write failed: the chain head keeps moving");
    }

    pub async fn head(&self) -> (u64, String) {
        self.head.lock().await.clone()
    }
}
