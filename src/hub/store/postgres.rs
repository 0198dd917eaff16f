//! PostgreSQL backend: a few pipelined connections, prepared statements cached
//! per connection.
use std::collections::HashMap;
use std::error::Error;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::BytesMut;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls, Statement};

use super::sql::{Row, Sql, StoreError, Val};

const CONNECTIONS: usize = 4;

struct Conn {
    client: Client,
    statements: Mutex<HashMap<String, Statement>>,
}

pub struct Postgres {
    conns: Vec<Conn>,
    next: AtomicUsize,
}

fn db(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// Full error text: tokio-postgres puts the server's message in the source.
fn pg(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(d) if d.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION => {
            StoreError::Db(format!("duplicate key: {}", d.message()))
        }
        Some(d) => StoreError::Db(format!("{}: {}", d.code().code(), d.message())),
        // A TLS or network failure: its cause is in the source chain.
        None => {
            let mut text = e.to_string();
            let mut cause = e.source();
            while let Some(c) = cause {
                text = format!("{text}: {c}");
                cause = c.source();
            }
            db(text)
        }
    }
}

impl ToSql for Val {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            Val::Null => Ok(IsNull::Yes),
            Val::Int(n) if *ty == Type::INT4 => i32::try_from(*n)?.to_sql(ty, out),
            Val::Int(n) if *ty == Type::BOOL => (*n != 0).to_sql(ty, out),
            Val::Int(n) => n.to_sql(ty, out),
            Val::Text(s) => s.as_str().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn read(row: &tokio_postgres::Row) -> Result<Row, StoreError> {
    let mut vals = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let t = col.type_();
        let v = if *t == Type::INT8 {
            row.try_get::<_, Option<i64>>(i).map_err(pg)?.map(Val::Int)
        } else if *t == Type::INT4 {
            row.try_get::<_, Option<i32>>(i).map_err(pg)?.map(|n| Val::Int(n.into()))
        } else if *t == Type::BOOL {
            row.try_get::<_, Option<bool>>(i).map_err(pg)?.map(|b| Val::Int(b.into()))
        } else {
            row.try_get::<_, Option<String>>(i).map_err(pg)?.map(Val::Text)
        };
        vals.push(v.unwrap_or(Val::Null));
    }
    Ok(Row(vals))
}

async fn watch<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        tracing::error!(error = %e, "postgres connection lost");
    }
}

impl Postgres {
    /// Connects to `url`; with `sslmode=verify-full&sslrootcert=CA.pem`
    /// (relative to `base`) over TLS, checking the server's certificate and name.
    pub async fn connect(url: &str, base: &std::path::Path) -> Result<Postgres, StoreError> {
        let target = super::pg_tls::target(url, base)?;
        let mut conns = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            let client = match &target.tls {
                Some(cfg) => {
                    let tls = super::pg_tls::MakeRustls(cfg.clone());
                    let (client, connection) = tokio_postgres::connect(&target.url, tls).await.map_err(pg)?;
                    tokio::spawn(watch(connection));
                    client
                }
                None => {
                    let (client, connection) = tokio_postgres::connect(&target.url, NoTls).await.map_err(pg)?;
                    tokio::spawn(watch(connection));
                    client
                }
            };
            conns.push(Conn { client, statements: Mutex::new(HashMap::new()) });
        }
        Ok(Postgres { conns, next: AtomicUsize::new(0) })
    }

    fn conn(&self) -> &Conn {
        &self.conns[self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len()]
    }

    async fn prepare(conn: &Conn, sql: &str) -> Result<Statement, StoreError> {
        if let Some(s) = conn.statements.lock().ok().and_then(|m| m.get(sql).cloned()) {
            return Ok(s);
        }
        let st = conn.client.prepare(sql).await.map_err(pg)?;
        if let Ok(mut m) = conn.statements.lock() {
            m.insert(sql.to_string(), st.clone());
        }
        Ok(st)
    }
}

fn refs(params: &[Val]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

#[async_trait]
impl Sql for Postgres {
    async fn exec(&self, sql: &str, params: Vec<Val>) -> Result<u64, StoreError> {
        let c = self.conn();
        let st = Self::prepare(c, sql).await?;
        c.client.execute(&st, &refs(&params)).await.map_err(pg)
    }

    async fn query(&self, sql: &str, params: Vec<Val>) -> Result<Vec<Row>, StoreError> {
        let c = self.conn();
        let st = Self::prepare(c, sql).await?;
        c.client.query(&st, &refs(&params)).await.map_err(pg)?.iter().map(read).collect()
    }

    async fn batch(&self, sql: &str) -> Result<(), StoreError> {
        let c = &self.conns[0];
        let r = c.client.batch_execute(&format!("BEGIN; {sql}; COMMIT;")).await;
        if r.is_err() {
            // The failed transaction stays open (aborted) on this connection.
            let _ = c.client.batch_execute("ROLLBACK").await;
        }
        r.map_err(pg)
    }

    fn engine(&self) -> &'static str {
        "postgres"
    }
}
