//! What the web console reads beyond the API's queries: one login token
//! ended (logout), audit records by sequence number, accounts' sites.
use super::{Store, StoreError};

impl Store {
    /// Ends one login token (by its hash); true when it existed.
    pub async fn token_remove(&self, hash: &str) -> Result<bool, StoreError> {
        Ok(self.db.exec("DELETE FROM tokens WHERE hash = $1", vec![hash.into()]).await? > 0)
    }

    /// The last TOTP time step `name` signed in with (0: never).
    pub async fn totp_last_step(&self, name: &str) -> Result<i64, StoreError> {
        let rows = self.db.query("SELECT totp_last_step FROM users WHERE name = $1", vec![name.into()]).await?;
        Ok(rows.first().map(|r| r.int(0)).unwrap_or(0))
    }

    /// Up to `limit` records after sequence number `seq`, in chain order.
    pub async fn audit_after(&self, seq: u64, limit: i64) -> Result<Vec<String>, StoreError> {
        let rows = self
            .db
            .query("SELECT line FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2", vec![seq.into(), limit.into()])
            .await?;
        Ok(rows.iter().map(|r| r.text(0)).collect())
    }

    /// The newest `limit` records at or after unix time `since` and before
    /// `until`, newest first.
    pub async fn audit_newest(&self, since: i64, until: i64, limit: i64) -> Result<Vec<String>, StoreError> {
        let rows = self
            .db
            .query(
                "SELECT line FROM audit WHERE ts >= $1 AND ts < $2 ORDER BY seq DESC LIMIT $3",
                vec![since.into(), until.into(), limit.into()],
            )
            .await?;
        Ok(rows.iter().map(|r| r.text(0)).collect())
    }
}
