//! Audit anchors: the latest head of each relay's and agent's chain, and
//! every head the hub accepted.
use super::{Store, StoreError};

impl Store {
    /// The latest head of `source`, kept also in its history.
    pub async fn anchor_put(
        &self,
        source: &str,
        (seq, hash, sig): (u64, &str, &str),
        at: i64,
    ) -> Result<(), StoreError> {
        self.db
            .exec(
                "INSERT INTO anchor_history (source, seq, hash, sig, at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (source, seq) DO NOTHING",
                vec![source.into(), seq.into(), hash.into(), sig.into(), at.into()],
            )
            .await?;
        self.db
            .exec(
                "INSERT INTO anchors (source, seq, hash, at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (source) DO UPDATE SET seq = $2, hash = $3, at = $4",
                vec![source.into(), seq.into(), hash.into(), at.into()],
            )
            .await
            .map(|_| ())
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
        let rows = self.db.query("SELECT seq, hash, at FROM anchors WHERE source = $1", vec![source.into()]).await?;
        Ok(rows.first().map(|r| (r.int(0) as u64, r.text(1), r.int(2))))
    }

    pub async fn anchors(&self) -> Result<Vec<(String, u64, String, i64)>, StoreError> {
        let rows = self.db.query("SELECT source, seq, hash, at FROM anchors ORDER BY source", vec![]).await?;
        Ok(rows.iter().map(|r| (r.text(0), r.int(1) as u64, r.text(2), r.int(3))).collect())
    }

    /// Records that `relay` delivered head `seq` of `source`, unless it had
    /// delivered a higher one.
    pub async fn delivery_raise(&self, source: &str, relay: &str, seq: u64) -> Result<(), StoreError> {
        self.db
            .exec(
                "INSERT INTO anchor_deliveries (source, relay, seq) VALUES ($1, $2, $3)
                 ON CONFLICT (source, relay) DO UPDATE SET seq = excluded.seq WHERE excluded.seq > anchor_deliveries.seq",
                vec![source.into(), relay.into(), seq.into()],
            )
            .await
            .map(|_| ())
    }

    /// The highest head each relay delivered of each source: (source, relay, seq).
    pub async fn deliveries(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        let rows = self.db.query("SELECT source, relay, seq FROM anchor_deliveries", vec![]).await?;
        Ok(rows.iter().map(|r| (r.text(0), r.text(1), r.int(2) as u64)).collect())
    }
}
