//! The hub's storage: one interface ([`Sql`]), two engines (SQLite, PostgreSQL),
//! migrations, and the queries, written once for both.
mod anchors;
mod certs;
mod console;
mod devices;
mod jobs;
mod measured;
mod open;
mod pg_conn;
mod pg_tls;
mod postgres;
pub mod probe;
mod rollouts;
mod schema;
mod sessions;
mod sql;
mod sqlite;

use std::sync::Arc;

pub use certs::DeviceCert;
pub use sessions::{Live, SessionEnd};
pub use sql::{Outage, Row, Sql, StoreError, Val, is_unique_violation, row_chunk};

use super::model::{Site, User};

/// The engine a database URL names (`postgres` or `sqlite`), as
/// [`Store::engine`] says once it is open.
pub fn engine_of(url: &str) -> &'static str {
    if open::is_postgres(url) { "postgres" } else { "sqlite" }
}

/// The hub's database.
#[derive(Clone)]
pub struct Store {
    db: Arc<dyn Sql>,
    /// Seals TOTP seeds at rest (none: stored plain, tests of the store alone).
    secrets: Option<Arc<crate::hub::secrets::SecretBox>>,
}

fn user_from(r: &Row, secrets: Option<&crate::hub::secrets::SecretBox>) -> Result<User, StoreError> {
    let name = r.text(0);
    let totp_secret = match secrets {
        Some(b) => b.open(&name, &r.text(3)).map_err(|e| StoreError::Db(format!("user {name}: {e}")))?,
        None => r.text(3),
    };
    Ok(User {
        name,
        role: r.text(1).parse().map_err(StoreError::Db)?,
        password_hash: r.text(2),
        totp_secret,
        disabled: r.int(4) != 0,
        created_at: r.int(5),
    })
}

impl Store {
    pub fn engine(&self) -> &'static str {
        self.db.engine()
    }

    /// False while the database cannot be reached.
    pub fn reachable(&self) -> bool {
        self.db.reachable()
    }

    /// Outages that have ended since the last call.
    pub fn outages_ended(&self) -> Vec<Outage> {
        self.db.outages_ended()
    }

    /// The outage going on now, if any, as far as it went.
    pub fn outage_now(&self) -> Option<Outage> {
        self.db.outage_now()
    }

    async fn insert(&self, what: &'static str, name: &str, sql: &str, params: Vec<Val>) -> Result<(), StoreError> {
        match self.db.exec(sql, params).await {
            Err(e) if sql::is_unique_violation(&e) => Err(StoreError::Exists { what, name: name.into() }),
            r => r.map(|_| ()),
        }
    }

    fn must_change(n: u64, what: &'static str, name: &str) -> Result<(), StoreError> {
        if n == 0 { Err(StoreError::NotFound { what, name: name.into() }) } else { Ok(()) }
    }

    // --- accounts -----------------------------------------------------------

    /// Seals TOTP seeds with `secrets` from now on, and seals every seed
    /// still stored plain (written before sealing was configured).
    pub async fn with_secrets(mut self, secrets: Arc<crate::hub::secrets::SecretBox>) -> Result<Store, StoreError> {
        let rows = self.db.query("SELECT name, totp_secret FROM users", vec![]).await?;
        for r in rows {
            let (name, stored) = (r.text(0), r.text(1));
            if !crate::hub::secrets::SecretBox::is_sealed(&stored) {
                let sealed = secrets.seal(&name, &stored);
                self.db
                    .exec(
                        "UPDATE users SET totp_secret = $2 WHERE name = $1",
                        vec![name.as_str().into(), sealed.into()],
                    )
                    .await?;
                tracing::info!(user = %name, "sealed a TOTP seed that was stored plain");
            }
        }
        self.secrets = Some(secrets);
        Ok(self)
    }

    pub async fn user_add(&self, u: &User) -> Result<(), StoreError> {
        let totp = match &self.secrets {
            Some(b) => b.seal(&u.name, &u.totp_secret),
            None => u.totp_secret.clone(),
        };
        self.insert(
            "user",
            &u.name,
            "INSERT INTO users (name, role, password_hash, totp_secret, disabled, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            vec![u.name.as_str().into(), u.role.as_str().into(), (&u.password_hash).into(), totp.into(), u.disabled.into(), u.created_at.into()],
        )
        .await
    }

    pub async fn user(&self, name: &str) -> Result<Option<User>, StoreError> {
        let rows = self
            .db
            .query(
                "SELECT name, role, password_hash, totp_secret, disabled, created_at FROM users WHERE name = $1",
                vec![name.into()],
            )
            .await?;
        rows.first().map(|r| user_from(r, self.secrets.as_deref())).transpose()
    }

    pub async fn users(&self) -> Result<Vec<User>, StoreError> {
        let rows = self
            .db
            .query(
                "SELECT name, role, password_hash, totp_secret, disabled, created_at FROM users ORDER BY name",
                vec![],
            )
            .await?;
        rows.iter().map(|r| user_from(r, self.secrets.as_deref())).collect()
    }

    pub async fn user_set_disabled(&self, name: &str, disabled: bool) -> Result<(), StoreError> {
        let n =
            self.db.exec("UPDATE users SET disabled = $2 WHERE name = $1", vec![name.into(), disabled.into()]).await?;
        Self::must_change(n, "user", name)
    }

    pub async fn user_set_password(&self, name: &str, hash: &str) -> Result<(), StoreError> {
        let n =
            self.db.exec("UPDATE users SET password_hash = $2 WHERE name = $1", vec![name.into(), hash.into()]).await?;
        Self::must_change(n, "user", name)
    }

    /// Marks TOTP time step `step` used. False when it (or a later one) was
    /// used before: a code is good once.
    pub async fn totp_use(&self, name: &str, step: i64) -> Result<bool, StoreError> {
        let n = self
            .db
            .exec(
                "UPDATE users SET totp_last_step = $2 WHERE name = $1 AND totp_last_step < $2",
                vec![name.into(), step.into()],
            )
            .await?;
        Ok(n == 1)
    }

    /// Failures in a row and the time (unix s) until which logins are refused.
    pub async fn login_failures(&self, name: &str) -> Result<(i64, i64), StoreError> {
        let rows = self
            .db
            .query("SELECT failures, locked_until FROM login_failures WHERE name = $1", vec![name.into()])
            .await?;
        Ok(rows.first().map(|r| (r.int(0), r.int(1))).unwrap_or((0, 0)))
    }

    /// Counts one more failed login for `name` in one statement (parallel
    /// failures each count); returns the new count.
    pub async fn login_failure_add(&self, name: &str) -> Result<i64, StoreError> {
        let rows = self
            .db
            .query(
                "INSERT INTO login_failures (name, failures, locked_until) VALUES ($1, 1, 0)
                 ON CONFLICT (name) DO UPDATE SET failures = login_failures.failures + 1 RETURNING failures",
                vec![name.into()],
            )
            .await?;
        Ok(rows.first().map(|r| r.int(0)).unwrap_or(1))
    }

    /// Refuses logins to `name` until `until` (unix s); never shortens a longer lock.
    pub async fn login_lock(&self, name: &str, until: i64) -> Result<(), StoreError> {
        self.db
            .exec(
                "UPDATE login_failures SET locked_until = CASE WHEN locked_until < $2 THEN $2 ELSE locked_until END
                 WHERE name = $1",
                vec![name.into(), until.into()],
            )
            .await
            .map(|_| ())
    }

    pub async fn clear_login_failures(&self, name: &str) -> Result<(), StoreError> {
        self.db.exec("DELETE FROM login_failures WHERE name = $1", vec![name.into()]).await.map(|_| ())
    }

    pub async fn token_add(&self, hash: &str, user: &str, expires_at: i64) -> Result<(), StoreError> {
        // Expired tokens go as new ones come.
        self.db.exec("DELETE FROM tokens WHERE expires_at < $1", vec![(expires_at - 86_400).into()]).await?;
        self.db
            .exec(
                "INSERT INTO tokens (hash, user_name, expires_at) VALUES ($1, $2, $3)",
                vec![hash.into(), user.into(), expires_at.into()],
            )
            .await
            .map(|_| ())
    }

    /// The account and expiry of a token (by its hash).
    pub async fn token(&self, hash: &str) -> Result<Option<(String, i64)>, StoreError> {
        let rows = self.db.query("SELECT user_name, expires_at FROM tokens WHERE hash = $1", vec![hash.into()]).await?;
        Ok(rows.first().map(|r| (r.text(0), r.int(1))))
    }

    /// Revokes every login token of `user`; returns how many there were.
    pub async fn tokens_revoke(&self, user: &str) -> Result<u64, StoreError> {
        self.db.exec("DELETE FROM tokens WHERE user_name = $1", vec![user.into()]).await
    }

    // --- sites, devices, entitlements ----------------------------------------

    /// Creates or updates a site.
    pub async fn site_put(&self, s: &Site) -> Result<(), StoreError> {
        self.db
            .exec(
                "INSERT INTO sites (name, allow_from, require_ticket) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET allow_from = $2, require_ticket = $3",
                vec![s.name.as_str().into(), s.allow_from_text().into(), s.require_ticket.into()],
            )
            .await
            .map(|_| ())
    }

    pub async fn site(&self, name: &str) -> Result<Option<Site>, StoreError> {
        let rows = self
            .db
            .query("SELECT name, allow_from, require_ticket FROM sites WHERE name = $1", vec![name.into()])
            .await?;
        rows.first()
            .map(|r| {
                Ok(Site {
                    name: r.text(0),
                    allow_from: Site::parse_allow_from(&r.text(1)).map_err(StoreError::Db)?,
                    require_ticket: r.int(2) != 0,
                })
            })
            .transpose()
    }

    pub async fn entitle(&self, user: &str, site: &str) -> Result<(), StoreError> {
        if self.site(site).await?.is_none() {
            self.site_put(&Site { name: site.into(), ..Site::default() }).await?;
        }
        self.db
            .exec(
                "INSERT INTO entitlements (user_name, site) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                vec![user.into(), site.into()],
            )
            .await
            .map(|_| ())
    }

    pub async fn entitled(&self, user: &str, site: &str) -> Result<bool, StoreError> {
        let rows = self
            .db
            .query("SELECT 1 FROM entitlements WHERE user_name = $1 AND site = $2", vec![user.into(), site.into()])
            .await?;
        Ok(!rows.is_empty())
    }

    /// Whether an account in use, not an admin, is entitled to `site`.
    pub async fn site_has_specialist(&self, site: &str) -> Result<bool, StoreError> {
        let rows = self
            .db
            .query(
                "SELECT 1 FROM entitlements e JOIN users u ON u.name = e.user_name
                 WHERE e.site = $1 AND u.role <> 'admin' AND u.disabled = 0 LIMIT 1",
                vec![site.into()],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    pub async fn entitlements(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let rows = self
            .db
            .query("SELECT site FROM entitlements WHERE user_name = $1 ORDER BY site", vec![user.into()])
            .await?;
        Ok(rows.iter().map(|r| r.text(0)).collect())
    }

    // --- audit ---------------------------------------------------------------

    /// Appends records (seq, unix time, hash, line) to the chain in one
    /// statement: all or none. At most [`sql::MAX_PARAMS`] / 4 of them.
    pub async fn audit_append(&self, records: &[(u64, i64, String, String)]) -> Result<(), StoreError> {
        debug_assert!(records.len() * 4 <= sql::MAX_PARAMS);
        let params =
            records.iter().flat_map(|(seq, ts, hash, line)| [(*seq).into(), (*ts).into(), hash.into(), line.into()]);
        let sql = format!("INSERT INTO audit (seq, ts, hash, line) VALUES {}", sql::values(records.len(), 4));
        self.db.exec(&sql, params.collect()).await.map(|_| ())
    }

    /// The chain's head: last sequence number and hash.
    pub async fn audit_head(&self) -> Result<Option<(u64, String)>, StoreError> {
        let rows = self.db.query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", vec![]).await?;
        Ok(rows.first().map(|r| (r.int(0) as u64, r.text(1))))
    }

    /// Records from unix time `since` on, in chain order.
    pub async fn audit_since(&self, since: i64, limit: i64) -> Result<Vec<String>, StoreError> {
        let rows = self
            .db
            .query("SELECT line FROM audit WHERE ts >= $1 ORDER BY seq LIMIT $2", vec![since.into(), limit.into()])
            .await?;
        Ok(rows.iter().map(|r| r.text(0)).collect())
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_batch;
#[cfg(test)]
mod tests_retired;
