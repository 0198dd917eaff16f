//! Audit anchors: the latest head of each relay's and agent's chain, and
//! every head the hub accepted.
use std::collections::HashMap;

use super::sql::{Val, row_chunks, values};
use super::{Store, StoreError};

/// The lengths of `IN (…)` lists, as [`super::sql::ROW_CHUNKS`] for rows.
const IN_LISTS: [usize; 4] = [512, 64, 8, 1];

impl Store {
    /// The latest heads of several sources (source, seq, hash, sig), each
    /// kept also in its history: a statement per table for up to 256 heads
    /// ([`super::sql::ROW_CHUNKS`]), not one per head. A source appears once.
    pub async fn anchor_put_all(&self, heads: &[(String, u64, String, String)], at: i64) -> Result<(), StoreError> {
        for chunk in row_chunks(heads) {
            let params = chunk.iter().flat_map(|(source, seq, hash, sig)| {
                [source.into(), (*seq).into(), hash.into(), sig.into(), at.into()]
            });
            let sql = format!(
                "INSERT INTO anchor_history (source, seq, hash, sig, at) VALUES {} ON CONFLICT (source, seq) DO NOTHING",
                values(chunk.len(), 5)
            );
            self.db.exec(&sql, params.collect()).await?;
            let params =
                chunk.iter().flat_map(|(source, seq, hash, _)| [source.into(), (*seq).into(), hash.into(), at.into()]);
            let sql = format!(
                "INSERT INTO anchors (source, seq, hash, at) VALUES {}
                 ON CONFLICT (source) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, at = excluded.at",
                values(chunk.len(), 4)
            );
            self.db.exec(&sql, params.collect()).await?;
        }
        Ok(())
    }

    /// Every anchor of `source`, oldest first: (seq, hash, sig, at).
    pub async fn anchor_history(&self, source: &str) -> Result<Vec<(u64, String, String, i64)>, StoreError> {
        let rows = self
            .db
            .query("SELECT seq, hash, sig, at FROM anchor_history WHERE source = $1 ORDER BY seq", vec![source.into()])
            .await?;
        Ok(rows.iter().map(|r| (r.int(0) as u64, r.text(1), r.text(2), r.int(3))).collect())
    }

    pub async fn anchor(&self, source: &str) -> Result<Option<(u64, String, i64)>, StoreError> {
        Ok(self.anchors_of(&[source]).await?.remove(source))
    }

    /// The latest head of each of `sources` that has one: source -> (seq,
    /// hash, at), in a query per 512 sources.
    pub async fn anchors_of(&self, sources: &[&str]) -> Result<HashMap<String, (u64, String, i64)>, StoreError> {
        let mut found = HashMap::new();
        for chunk in sources.chunks(IN_LISTS[0]) {
            // The list at one of a few lengths (a statement text each), the
            // last source repeated to fill it.
            let len = IN_LISTS.into_iter().rev().find(|l| *l >= chunk.len()).unwrap_or(IN_LISTS[0]);
            let list = (1..=len).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
            let sql = format!("SELECT source, seq, hash, at FROM anchors WHERE source IN ({list})");
            let last = chunk.last().copied().unwrap_or_default();
            let params = chunk.iter().copied().chain(std::iter::repeat(last)).take(len).map(Val::from).collect();
            let rows = self.db.query(&sql, params).await?;
            found.extend(rows.iter().map(|r| (r.text(0), (r.int(1) as u64, r.text(2), r.int(3)))));
        }
        Ok(found)
    }

    pub async fn anchors(&self) -> Result<Vec<(String, u64, String, i64)>, StoreError> {
        let rows = self.db.query("SELECT source, seq, hash, at FROM anchors ORDER BY source", vec![]).await?;
        Ok(rows.iter().map(|r| (r.text(0), r.int(1) as u64, r.text(2), r.int(3))).collect())
    }

    /// Records that each `relay` delivered head `seq` of `source`, unless it
    /// had delivered a higher one: (source, relay, seq), a statement per up
    /// to 256. A (source, relay) appears once.
    pub async fn delivery_raise_all(&self, raised: &[(String, String, u64)]) -> Result<(), StoreError> {
        for chunk in row_chunks(raised) {
            let params = chunk.iter().flat_map(|(source, relay, seq)| [source.into(), relay.into(), (*seq).into()]);
            let sql = format!(
                "INSERT INTO anchor_deliveries (source, relay, seq) VALUES {}
                 ON CONFLICT (source, relay) DO UPDATE SET seq = excluded.seq WHERE excluded.seq > anchor_deliveries.seq",
                values(chunk.len(), 3)
            );
            self.db.exec(&sql, params.collect()).await?;
        }
        Ok(())
    }

    /// The highest head each relay delivered of each source: (source, relay, seq).
    pub async fn deliveries(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        let rows = self.db.query("SELECT source, relay, seq FROM anchor_deliveries", vec![]).await?;
        Ok(rows.iter().map(|r| (r.text(0), r.text(1), r.int(2) as u64)).collect())
    }
}
