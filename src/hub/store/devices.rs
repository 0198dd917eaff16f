//! Devices in the hub's database: the inventory, each device's policy, and
//! retirement (a device out of service for good keeps its row: its
//! sessions, jobs and certificate records name it).
use super::sql::Row;
use super::{Store, StoreError};
use crate::hub::model::{Device, Retired, Site};

const COLUMNS: &str = "id, site, consent, retired_at, retired_by, retired_reason";
/// The same, of the table named `d`.
const D_COLUMNS: &str = "d.id, d.site, d.consent, d.retired_at, d.retired_by, d.retired_reason";

fn device_from(r: &Row) -> Device {
    let retired = (r.int(3) > 0).then(|| Retired { at: r.int(3), by: r.text(4), reason: r.text(5) });
    Device { id: r.text(0), site: r.text(1), consent: r.text(2), retired }
}

impl Store {
    pub async fn device_add(&self, d: &Device, now: i64) -> Result<(), StoreError> {
        if self.site(&d.site).await?.is_none() {
            self.site_put(&Site { name: d.site.clone(), ..Site::default() }).await?;
        }
        self.insert(
            "device",
            &d.id,
            "INSERT INTO devices (id, site, consent, created_at) VALUES ($1, $2, $3, $4)",
            vec![d.id.as_str().into(), d.site.as_str().into(), d.consent.as_str().into(), now.into()],
        )
        .await
    }

    /// Changes a device's site and consent policy (the site is created if new).
    pub async fn device_set(&self, d: &Device) -> Result<(), StoreError> {
        if self.site(&d.site).await?.is_none() {
            self.site_put(&Site { name: d.site.clone(), ..Site::default() }).await?;
        }
        let n = self
            .db
            .exec(
                "UPDATE devices SET site = $2, consent = $3 WHERE id = $1",
                vec![d.id.as_str().into(), d.site.as_str().into(), d.consent.as_str().into()],
            )
            .await?;
        Self::must_change(n, "device", &d.id)
    }

    /// Any device, retired or not.
    pub async fn device(&self, id: &str) -> Result<Option<Device>, StoreError> {
        let rows = self.db.query(&format!("SELECT {COLUMNS} FROM devices WHERE id = $1"), vec![id.into()]).await?;
        Ok(rows.first().map(device_from))
    }

    /// Devices in service on sites `user` is entitled to; every device in
    /// service when `all`.
    pub async fn devices_for(&self, user: &str, all: bool) -> Result<Vec<Device>, StoreError> {
        let rows = if all {
            self.db.query(&format!("SELECT {COLUMNS} FROM devices WHERE retired_at = 0 ORDER BY id"), vec![]).await?
        } else {
            self.db
                .query(
                    &format!(
                        "SELECT {D_COLUMNS} FROM devices d JOIN entitlements e ON e.site = d.site
                         WHERE e.user_name = $1 AND d.retired_at = 0 ORDER BY d.id"
                    ),
                    vec![user.into()],
                )
                .await?
        };
        Ok(rows.iter().map(device_from).collect())
    }

    /// Retired devices, the most recently retired first.
    pub async fn devices_retired(&self) -> Result<Vec<Device>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM devices WHERE retired_at > 0 ORDER BY retired_at DESC, id");
        Ok(self.db.query(&sql, vec![]).await?.iter().map(device_from).collect())
    }

    /// Devices retired at or after unix time `since`: (id, when).
    pub async fn devices_retired_since(&self, since: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let sql = "SELECT id, retired_at FROM devices WHERE retired_at >= $1 ORDER BY id";
        Ok(self.db.query(sql, vec![since.max(1).into()]).await?.iter().map(|r| (r.text(0), r.int(1))).collect())
    }

    /// Devices retired at or before unix time `before` that still have a
    /// session granted or live whose grant runs past `now`, or a job not
    /// finished: a retirement cut short, or a grant or job that raced it.
    /// (A grant past its expiry admits nothing; the relays end a session
    /// at it.) Each subquery is read once, not once per device.
    pub async fn devices_retired_unfinished(&self, before: i64, now: i64) -> Result<Vec<Device>, StoreError> {
        let sql = format!(
            "SELECT {D_COLUMNS} FROM devices d WHERE d.retired_at > 0 AND d.retired_at <= $1
             AND (d.id IN (SELECT device FROM sessions WHERE state IN ('granted', 'live') AND expires_at > $2)
                  OR d.id IN (SELECT device FROM jobs WHERE state IN ('QUEUED', 'IN_PROGRESS')))
             ORDER BY d.id"
        );
        Ok(self.db.query(&sql, vec![before.into(), now.into()]).await?.iter().map(device_from).collect())
    }

    /// Marks a device in service retired; false when it was already retired.
    pub async fn device_retire(&self, id: &str, r: &Retired) -> Result<bool, StoreError> {
        let n = self
            .db
            .exec(
                "UPDATE devices SET retired_at = $2, retired_by = $3, retired_reason = $4 WHERE id = $1 AND retired_at = 0",
                vec![id.into(), r.at.max(1).into(), r.by.as_str().into(), r.reason.as_str().into()],
            )
            .await?;
        Ok(n == 1)
    }

    /// Puts a retired device back in service; false when it was not retired.
    pub async fn device_reinstate(&self, id: &str) -> Result<bool, StoreError> {
        let n = self
            .db
            .exec(
                "UPDATE devices SET retired_at = 0, retired_by = '', retired_reason = '' WHERE id = $1 AND retired_at > 0",
                vec![id.into()],
            )
            .await?;
        Ok(n == 1)
    }
}
