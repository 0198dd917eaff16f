//! Site rollouts in the hub's database (their jobs are in `jobs`, marked
//! with the rollout's id).
use super::sql::Row;
use super::{Store, StoreError};
use crate::api::{JobKind, RolloutState, RolloutView};

const COLUMNS: &str = "id, site, kind, target, devices, batch_size, abort_after, consent_required, timeout_secs, \
                       started, state, reason, created_by, created_at, updated_at";

fn rollout_from(r: &Row) -> Result<RolloutView, StoreError> {
    let bad = |what: &str, v: String| StoreError::Db(format!("rollout {}: bad {what} {v:?}", r.text(0)));
    Ok(RolloutView {
        id: r.text(0),
        site: r.text(1),
        kind: JobKind::parse(&r.text(2)).ok_or_else(|| bad("kind", r.text(2)))?,
        target: r.text(3),
        devices: serde_json::from_str(&r.text(4)).map_err(|_| bad("devices", r.text(4)))?,
        batch_size: r.int(5) as u32,
        abort_after: r.int(6) as u32,
        consent_required: r.int(7) != 0,
        timeout_secs: r.int(8) as u64,
        started: r.int(9) as u32,
        state: RolloutState::parse(&r.text(10)).ok_or_else(|| bad("state", r.text(10)))?,
        reason: r.text(11),
        created_by: r.text(12),
        created_at: r.int(13),
        updated_at: r.int(14),
    })
}

impl Store {
    pub async fn rollout_add(&self, r: &RolloutView) -> Result<(), StoreError> {
        let devices = serde_json::to_string(&r.devices).map_err(|e| StoreError::Db(e.to_string()))?;
        self.insert(
            "rollout",
            &r.id,
            &format!(
                "INSERT INTO rollouts ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
            ),
            vec![
                r.id.as_str().into(),
                r.site.as_str().into(),
                r.kind.as_str().into(),
                r.target.as_str().into(),
                devices.into(),
                i64::from(r.batch_size).into(),
                i64::from(r.abort_after).into(),
                r.consent_required.into(),
                r.timeout_secs.into(),
                i64::from(r.started).into(),
                r.state.as_str().into(),
                r.reason.as_str().into(),
                r.created_by.as_str().into(),
                r.created_at.into(),
                r.updated_at.into(),
            ],
        )
        .await
    }

    pub async fn rollout(&self, id: &str) -> Result<Option<RolloutView>, StoreError> {
        let rows = self.db.query(&format!("SELECT {COLUMNS} FROM rollouts WHERE id = $1"), vec![id.into()]).await?;
        rows.first().map(rollout_from).transpose()
    }

    /// Newest first.
    pub async fn rollouts(&self, limit: i64) -> Result<Vec<RolloutView>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM rollouts ORDER BY created_at DESC, id LIMIT $1");
        let rows = self.db.query(&sql, vec![limit.into()]).await?;
        rows.iter().map(rollout_from).collect()
    }

    /// The ids of rollouts still running.
    pub async fn rollouts_running(&self) -> Result<Vec<String>, StoreError> {
        let rows = self.db.query("SELECT id FROM rollouts WHERE state = 'RUNNING' LIMIT 1000", vec![]).await?;
        Ok(rows.iter().map(|r| r.text(0)).collect())
    }

    /// Moves a rollout on (compare and set on its state and `started`):
    /// false when another writer moved it first.
    pub async fn rollout_move(
        &self,
        id: &str,
        from: (RolloutState, u32),
        to: (RolloutState, u32),
        reason: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let n = self
            .db
            .exec(
                "UPDATE rollouts SET state = $4, started = $5, reason = $6, updated_at = $7
                 WHERE id = $1 AND state = $2 AND started = $3",
                vec![
                    id.into(),
                    from.0.as_str().into(),
                    i64::from(from.1).into(),
                    to.0.as_str().into(),
                    i64::from(to.1).into(),
                    reason.into(),
                    now.into(),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    /// The devices of `site` in service, by id.
    pub async fn devices_of_site(&self, site: &str) -> Result<Vec<String>, StoreError> {
        let sql = "SELECT id FROM devices WHERE site = $1 AND retired_at = 0 ORDER BY id";
        let rows = self.db.query(sql, vec![site.into()]).await?;
        Ok(rows.iter().map(|r| r.text(0)).collect())
    }
}
