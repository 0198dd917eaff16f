//! Opening a store (either engine) and migrating it; processes opening one
//! fresh database at once take turns.
use std::path::Path;
use std::sync::Arc;

use super::{Sql, Store, StoreError, measured, postgres, schema, sql, sqlite};

impl Store {
    /// Opens `sqlite:PATH` (or a bare path) or `postgres://…`, and migrates.
    pub async fn open(url: &str, base: &Path) -> Result<Store, StoreError> {
        let db: Arc<dyn Sql> = if is_postgres(url) {
            Arc::new(postgres::Postgres::connect(url, base).await?)
        } else {
            let path = sqlite_path(url);
            if path.is_empty() {
                return Err(StoreError::BadUrl(url.into()));
            }
            return Self::open_sqlite(&base.join(path)).await;
        };
        let store = Store { db: Arc::new(measured::Measured::new(db)), secrets: None };
        store.migrate().await?;
        crate::metrics::HUB_DATABASE_UP.set(1);
        Ok(store)
    }

    /// SQLite answers "database is locked" without waiting in a few cases
    /// (switching a fresh file to WAL while another process opens it): a
    /// bounded retry makes the hub and an admin command starting together
    /// both succeed.
    async fn open_sqlite(path: &Path) -> Result<Store, StoreError> {
        let mut backoff =
            crate::util::Backoff::new(std::time::Duration::from_millis(20), std::time::Duration::from_millis(500));
        for attempt in 0.. {
            let r = match sqlite::Sqlite::open(path) {
                Ok(db) => {
                    restrict(path);
                    let store = Store { db: Arc::new(measured::Measured::new(Arc::new(db))), secrets: None };
                    crate::metrics::HUB_DATABASE_UP.set(1);
                    store.migrate().await.map(|()| store)
                }
                Err(e) => Err(e),
            };
            match r {
                Err(StoreError::Db(m)) if attempt < 20 && m.contains("database is locked") => {
                    tokio::time::sleep(backoff.next_pause()).await;
                }
                r => return r,
            }
        }
        unreachable!("the loop returns")
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        // PostgreSQL: two processes running `CREATE TABLE IF NOT EXISTS` at
        // once can both miss the table and one fails ("type already
        // exists"); a transaction-scoped advisory lock makes them take
        // turns. SQLite's `BEGIN IMMEDIATE` (in `batch`) does the same.
        let turn = match self.engine() {
            // No NOTICE line ("already exists, skipping") at each start.
            "postgres" => "SELECT pg_advisory_xact_lock(7466574865); SET LOCAL client_min_messages TO warning;",
            _ => "",
        };
        self.db
            .batch(&format!("{turn} CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)"))
            .await?;
        let done = self.db.query("SELECT version FROM schema_migrations", vec![]).await?;
        // A database a newer hub migrated: this one would misread it.
        let latest = schema::latest();
        if let Some(v) = done.iter().map(|r| r.int(0)).filter(|v| *v > latest).max() {
            return Err(StoreError::Db(format!(
                "the database's schema version {v} is newer than this hub's {latest}: a newer hub wrote it; \
                 run that one, or restore the backup taken before the upgrade"
            )));
        }
        // A new database gets one line; an upgrade, one per step.
        let (fresh, mut applied) = (done.is_empty(), 0);
        for (version, sql) in schema::MIGRATIONS {
            if done.iter().any(|r| r.int(0) == *version) {
                continue;
            }
            // The version row first: a second process migrating the same
            // database at once (the hub and `tether hub user add` started
            // together) blocks on it, then finds it taken and moves on.
            let step = format!("{turn} INSERT INTO schema_migrations (version) VALUES ({version}); {sql}");
            match self.db.batch(&step).await {
                Ok(()) if fresh => applied = *version,
                Ok(()) => tracing::info!(version, engine = self.engine(), "database migrated"),
                Err(e) if sql::is_unique_violation(&e) => {
                    tracing::debug!(version, "migration applied by another process")
                }
                Err(e) => return Err(e),
            }
        }
        if applied > 0 {
            tracing::info!(version = applied, engine = self.engine(), "database created");
        }
        Ok(())
    }
}

/// Whether `url` names a PostgreSQL database (else a SQLite file).
pub(super) fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// The SQLite file of `sqlite:PATH` (or a bare path).
pub(super) fn sqlite_path(url: &str) -> &str {
    url.strip_prefix("sqlite:").unwrap_or(url)
}

/// The database file (and SQLite's side files) readable by the hub's user only.
fn restrict(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let p = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
        if p.exists()
            && let Err(e) = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
        {
            tracing::warn!(path = %p.display(), error = %e, "cannot make the database file 0600");
        }
    }
}

impl Store {
    /// A consistent copy of a SQLite database at `to` (0600), taken while the
    /// hub runs (`VACUUM INTO`). PostgreSQL is backed up with `pg_dump`.
    pub async fn backup_to(&self, to: &Path) -> Result<(), StoreError> {
        if self.engine() != "sqlite" {
            return Err(StoreError::Db(
                "a PostgreSQL database is backed up with pg_dump --format=custom (docs/operator.md)".into(),
            ));
        }
        if to.exists() {
            return Err(StoreError::Db(format!("{} exists: give a new file", to.display())));
        }
        let name = to.to_str().ok_or_else(|| StoreError::Db(format!("{}: not UTF-8", to.display())))?;
        self.db.exec("VACUUM INTO $1", vec![name.into()]).await?;
        restrict(to);
        Ok(())
    }
}
