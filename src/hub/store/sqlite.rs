//! SQLite backend: one file, WAL, one connection used from blocking threads.
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::types::Value as SqlValue;

use super::sql::{Row, Sql, StoreError, Val};

pub struct Sqlite {
    conn: Arc<Mutex<rusqlite::Connection>>,
}

fn db(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// SQLite's error, a full disk told apart (SQLITE_FULL: nothing applied).
fn sq(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => StoreError::Full(e.to_string()),
        _ => db(e),
    }
}

/// `$1` → `?1`: SQLite's numbered placeholder.
fn placeholders(sql: &str) -> String {
    sql.replace('$', "?")
}

fn to_sqlite(v: Val) -> SqlValue {
    match v {
        Val::Int(n) => SqlValue::Integer(n),
        Val::Text(s) => SqlValue::Text(s),
        Val::Null => SqlValue::Null,
    }
}

impl Sqlite {
    pub fn open(path: &Path) -> Result<Sqlite, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(db)?;
        }
        let conn = rusqlite::Connection::open(path).map_err(db)?;
        // The wait for a lock first: switching a fresh file to WAL takes one,
        // and another process (an admin command) may be opening it too.
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(db)?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")
            .map_err(db)?;
        // Room for every statement text the store writes (multi-row ones
        // have a few each: `sql::ROW_CHUNKS`), so none is prepared again.
        conn.set_prepared_statement_cache_capacity(128);
        Ok(Sqlite { conn: Arc::new(Mutex::new(conn)) })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let guard = crate::util::lock(&conn);
            f(&guard)
        })
        .await
        .map_err(db)?
    }
}

#[async_trait]
impl Sql for Sqlite {
    async fn exec(&self, sql: &str, params: Vec<Val>) -> Result<u64, StoreError> {
        let sql = placeholders(sql);
        self.with(move |c| {
            let mut st = c.prepare_cached(&sql).map_err(sq)?;
            let n = st.execute(rusqlite::params_from_iter(params.into_iter().map(to_sqlite))).map_err(sq)?;
            Ok(n as u64)
        })
        .await
    }

    async fn query(&self, sql: &str, params: Vec<Val>) -> Result<Vec<Row>, StoreError> {
        let sql = placeholders(sql);
        self.with(move |c| {
            let mut st = c.prepare_cached(&sql).map_err(sq)?;
            let n = st.column_count();
            let mut rows = st.query(rusqlite::params_from_iter(params.into_iter().map(to_sqlite))).map_err(sq)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(sq)? {
                let mut vals = Vec::with_capacity(n);
                for i in 0..n {
                    vals.push(match r.get::<_, SqlValue>(i).map_err(sq)? {
                        SqlValue::Integer(v) => Val::Int(v),
                        SqlValue::Text(s) => Val::Text(s),
                        SqlValue::Real(f) => Val::Int(f as i64),
                        SqlValue::Blob(b) => Val::Text(String::from_utf8_lossy(&b).into_owned()),
                        SqlValue::Null => Val::Null,
                    });
                }
                out.push(Row(vals));
            }
            Ok(out)
        })
        .await
    }

    async fn batch(&self, sql: &str) -> Result<(), StoreError> {
        // IMMEDIATE: the write lock first, so a second process waits its turn.
        let sql = format!("BEGIN IMMEDIATE; {sql}; COMMIT;");
        self.with(move |c| {
            c.execute_batch(&sql).map_err(|e| {
                // A failed statement leaves the transaction open on this connection.
                let _ = c.execute_batch("ROLLBACK");
                sq(e)
            })
        })
        .await
    }

    fn engine(&self) -> &'static str {
        "sqlite"
    }
}
