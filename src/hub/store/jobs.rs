//! Maintenance jobs in the hub's database.
use super::sql::Row;
use super::{Store, StoreError};
use crate::api::{JobKind, JobState, JobView};

const COLUMNS: &str = "id, device, kind, target, state, reason, consent_required, created_by, created_at, updated_at, deadline, output, rollout";

fn job_from(r: &Row) -> Result<JobView, StoreError> {
    let bad = |what: &str, v: String| StoreError::Db(format!("job {}: bad {what} {v:?}", r.text(0)));
    Ok(JobView {
        id: r.text(0),
        device: r.text(1),
        kind: JobKind::parse(&r.text(2)).ok_or_else(|| bad("kind", r.text(2)))?,
        target: r.text(3),
        state: JobState::parse(&r.text(4)).ok_or_else(|| bad("state", r.text(4)))?,
        reason: r.text(5),
        consent_required: r.int(6) != 0,
        created_by: r.text(7),
        created_at: r.int(8),
        updated_at: r.int(9),
        deadline: r.int(10),
        output: r.text(11),
        rollout: r.text(12),
    })
}

impl Store {
    pub async fn job_add(&self, j: &JobView) -> Result<(), StoreError> {
        self.insert(
            "job",
            &j.id,
            &format!("INSERT INTO jobs ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"),
            vec![
                j.id.as_str().into(),
                j.device.as_str().into(),
                j.kind.as_str().into(),
                j.target.as_str().into(),
                j.state.as_str().into(),
                j.reason.as_str().into(),
                j.consent_required.into(),
                j.created_by.as_str().into(),
                j.created_at.into(),
                j.updated_at.into(),
                j.deadline.into(),
                j.output.as_str().into(),
                j.rollout.as_str().into(),
            ],
        )
        .await
    }

    pub async fn job(&self, id: &str) -> Result<Option<JobView>, StoreError> {
        let rows = self.db.query(&format!("SELECT {COLUMNS} FROM jobs WHERE id = $1"), vec![id.into()]).await?;
        rows.first().map(job_from).transpose()
    }

    /// Newest first; `device` narrows to one device.
    pub async fn jobs(&self, device: Option<&str>, limit: i64) -> Result<Vec<JobView>, StoreError> {
        let rows = match device {
            Some(d) => {
                self.db
                    .query(
                        &format!("SELECT {COLUMNS} FROM jobs WHERE device = $1 ORDER BY created_at DESC, id LIMIT $2"),
                        vec![d.into(), limit.into()],
                    )
                    .await?
            }
            None => {
                self.db
                    .query(
                        &format!("SELECT {COLUMNS} FROM jobs ORDER BY created_at DESC, id LIMIT $1"),
                        vec![limit.into()],
                    )
                    .await?
            }
        };
        rows.iter().map(job_from).collect()
    }

    /// What a device should know about: its unfinished jobs, and those
    /// cancelled in the last hour (so it stops them), oldest first.
    pub async fn jobs_for_device(&self, device: &str, now: i64) -> Result<Vec<JobView>, StoreError> {
        let rows = self
            .db
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM jobs WHERE device = $1 AND (state IN ('QUEUED', 'IN_PROGRESS')
                     OR (state = 'CANCELED' AND updated_at > $2)) ORDER BY created_at, id LIMIT 100"
                ),
                vec![device.into(), (now - 3600).into()],
            )
            .await?;
        rows.iter().map(job_from).collect()
    }

    /// Moves a job from `from` to `to` (compare and set): false when it was
    /// no longer in `from`. A non-empty `output` is kept with the move.
    pub async fn job_move(
        &self,
        id: &str,
        (from, to): (JobState, JobState),
        reason: &str,
        output: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let n = self
            .db
            .exec(
                "UPDATE jobs SET state = $3, reason = $4, updated_at = $5,
                 output = CASE WHEN CAST($6 AS TEXT) = '' THEN output ELSE CAST($6 AS TEXT) END WHERE id = $1 AND state = $2",
                vec![id.into(), from.as_str().into(), to.as_str().into(), reason.into(), now.into(), output.into()],
            )
            .await?;
        Ok(n == 1)
    }

    /// The jobs a rollout queued, oldest first.
    pub async fn jobs_of_rollout(&self, rollout: &str) -> Result<Vec<JobView>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM jobs WHERE rollout = $1 ORDER BY created_at, id");
        let rows = self.db.query(&sql, vec![rollout.into()]).await?;
        rows.iter().map(job_from).collect()
    }

    /// Unfinished jobs past their deadline.
    pub async fn jobs_overdue(&self, now: i64) -> Result<Vec<JobView>, StoreError> {
        let rows = self
            .db
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM jobs WHERE state IN ('QUEUED', 'IN_PROGRESS') AND deadline < $1 LIMIT 1000"
                ),
                vec![now.into()],
            )
            .await?;
        rows.iter().map(job_from).collect()
    }
}
