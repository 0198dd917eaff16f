//! What `tether hub --check` says of the database: whether the hub would
//! reach it, and its schema against this build's, creating and migrating
//! nothing.
use std::path::Path;

use super::{Sql, StoreError, postgres, schema, sqlite};

/// The database as the hub would find it at its start.
#[derive(Debug)]
pub struct Probe {
    pub engine: &'static str,
    /// The schema version it holds; `None`: no tables yet (or no file).
    pub version: Option<i64>,
}

impl Probe {
    /// What the hub does with it at its start; `Err` where it should not run on it.
    pub fn verdict(&self) -> Result<String, String> {
        let latest = schema::latest();
        match self.version {
            None => Ok(format!("{}, empty: the hub creates its tables (version {latest}) at its start", self.engine)),
            Some(v) if v == latest => Ok(format!("{}, schema version {v}, this hub's", self.engine)),
            Some(v) if v < latest => {
                Ok(format!("{}, schema version {v}: the hub migrates it to {latest} at its start", self.engine))
            }
            Some(v) => Err(format!(
                "{}, schema version {v}: newer than this hub's {latest}, a newer hub wrote it; run that one",
                self.engine
            )),
        }
    }
}

/// Reaches the database at `url` (relative paths from `base`) the way the
/// hub does, and reads its schema version.
pub async fn probe(url: &str, base: &Path) -> Result<Probe, StoreError> {
    if super::open::is_postgres(url) {
        let db = postgres::Postgres::connect(url, base).await?;
        let tables = db
            .query(
                "SELECT count(*) FROM information_schema.tables
                 WHERE table_schema = current_schema() AND table_name = 'schema_migrations'",
                vec![],
            )
            .await?;
        return version(&db, "postgres", tables.first().is_some_and(|r| r.int(0) > 0)).await;
    }
    let path = base.join(super::open::sqlite_path(url));
    if !path.exists() {
        return Ok(Probe { engine: "sqlite", version: None });
    }
    let db = sqlite::Sqlite::open(&path)?;
    let tables = db
        .query("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'", vec![])
        .await?;
    version(&db, "sqlite", tables.first().is_some_and(|r| r.int(0) > 0)).await
}

async fn version(db: &dyn Sql, engine: &'static str, has_table: bool) -> Result<Probe, StoreError> {
    if !has_table {
        return Ok(Probe { engine, version: None });
    }
    let rows = db.query("SELECT max(version) FROM schema_migrations", vec![]).await?;
    Ok(Probe { engine, version: rows.first().map(|r| r.int(0)).filter(|v| *v > 0) })
}
