//! PostgreSQL backend: a few pipelined connections, prepared statements cached
//! per connection (at most [`STATEMENTS_KEPT`] texts each); a connection that
//! ends is dialled again (`pg_conn`).
use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::BytesMut;
use tokio_postgres::Statement;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::pg_conn::{Link, Live, STATEMENT_TIMEOUT, Slot, pg};
use super::sql::{Outage, Row, Sql, StoreError, Val};

const CONNECTIONS: usize = 4;
/// Statement texts a connection keeps prepared. The server holds each for
/// the connection's life, so a text built per call (a row count, a list's
/// length) would grow it, and the hub, without end. The hub's own texts are
/// fixed (about 90, and five sizes of each chunked statement, `sql::ROW_CHUNKS`),
/// well under this; past it a statement is prepared for its one use and
/// closed when done.
pub const STATEMENTS_KEPT: usize = 512;

pub struct Postgres {
    link: Link,
    slots: Vec<Slot>,
    next: AtomicUsize,
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

impl Postgres {
    /// Connects to `url`; with `sslmode=verify-full&sslrootcert=CA.pem`
    /// (relative to `base`) over TLS, checking the server's certificate and name.
    pub async fn connect(url: &str, base: &std::path::Path) -> Result<Postgres, StoreError> {
        let link = Link::new(super::pg_tls::target(url, base)?);
        let slots: Vec<Slot> = (0..CONNECTIONS).map(|_| Slot::default()).collect();
        for slot in &slots {
            Link::fill(slot, link.dial().await?);
        }
        Ok(Postgres { link, slots, next: AtomicUsize::new(0) })
    }

    /// The next slot and its connection (dialled again if it ended).
    async fn conn(&self) -> Result<(&Slot, Arc<Live>), StoreError> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        Ok((slot, self.link.live(slot).await?))
    }

    /// Runs `work` within [`STATEMENT_TIMEOUT`]; past it, the slot's
    /// connection is dropped and the statement refused as unavailable.
    async fn bounded<T>(
        &self,
        (slot, live): (&Slot, &Arc<Live>),
        work: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<Result<T, tokio_postgres::Error>, StoreError> {
        tokio::time::timeout(STATEMENT_TIMEOUT, work).await.map_err(|_| self.link.stalled(slot, live))
    }

    async fn prepare(conn: &Live, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = conn.statements.lock().ok().and_then(|m| m.get(sql).cloned()) {
            return Ok(s);
        }
        let st = conn.client.prepare(sql).await?;
        if let Ok(mut m) = conn.statements.lock()
            && m.len() < STATEMENTS_KEPT
        {
            m.insert(sql.to_string(), st.clone());
        }
        Ok(st)
    }

    /// A failure because the connection ended is the outage's, not the statement's.
    fn failed(&self, e: tokio_postgres::Error) -> StoreError {
        if e.is_closed() { self.link.lost(pg(e)) } else { pg(e) }
    }
}

fn refs(params: &[Val]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

#[async_trait]
impl Sql for Postgres {
    async fn exec(&self, sql: &str, params: Vec<Val>) -> Result<u64, StoreError> {
        let (slot, c) = self.conn().await?;
        let work = async {
            let st = Self::prepare(&c, sql).await?;
            c.client.execute(&st, &refs(&params)).await
        };
        self.bounded((slot, &c), work).await?.map_err(|e| self.failed(e))
    }

    async fn query(&self, sql: &str, params: Vec<Val>) -> Result<Vec<Row>, StoreError> {
        // A read that went out on a connection that had just ended (a
        // restart the driver had not yet seen) goes again, once, on a
        // fresh one. A write is never sent twice: it may have been applied.
        let mut again = sql.trim_start().get(..6).is_some_and(|w| w.eq_ignore_ascii_case("SELECT"));
        loop {
            let (slot, c) = self.conn().await?;
            let work = async {
                let st = Self::prepare(&c, sql).await?;
                c.client.query(&st, &refs(&params)).await
            };
            match self.bounded((slot, &c), work).await? {
                Ok(rows) => return rows.iter().map(read).collect(),
                Err(e) if e.is_closed() && again => again = false,
                Err(e) => return Err(self.failed(e)),
            }
        }
    }

    /// Not bounded in time: a migration may take long on a big database.
    async fn batch(&self, sql: &str) -> Result<(), StoreError> {
        let c = self.link.live(&self.slots[0]).await?;
        let r = c.client.batch_execute(&format!("BEGIN; {sql}; COMMIT;")).await;
        if r.is_err() {
            // The failed transaction stays open (aborted) on this connection.
            let _ = c.client.batch_execute("ROLLBACK").await;
        }
        r.map_err(|e| self.failed(e))
    }

    fn reachable(&self) -> bool {
        self.link.reachable()
    }

    fn outages_ended(&self) -> Vec<Outage> {
        self.link.outages_ended()
    }

    fn outage_now(&self) -> Option<Outage> {
        self.link.outage_now()
    }

    fn engine(&self) -> &'static str {
        "postgres"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More distinct statement texts than a connection keeps: each still
    /// answers, each connection keeps at most [`STATEMENTS_KEPT`], and the
    /// server holds no more than that for it (the rest were closed).
    #[tokio::test]
    async fn a_connection_keeps_a_bounded_number_of_prepared_statements() {
        let Ok(url) = std::env::var("TETHER_TEST_POSTGRES") else {
            assert!(std::env::var_os("CI").is_none(), "CI must set TETHER_TEST_POSTGRES (.ci/run starts PostgreSQL)");
            eprintln!("SKIPPED: TETHER_TEST_POSTGRES is not set (CI runs it)");
            return;
        };
        let pg = Postgres::connect(&url, std::path::Path::new(".")).await.unwrap();
        let texts = CONNECTIONS * STATEMENTS_KEPT + 200;
        for i in 0..texts as i64 {
            let rows = pg.query(&format!("SELECT {i}::bigint + $1"), vec![Val::Int(1)]).await.unwrap();
            assert_eq!(rows[0].0[0], Val::Int(i + 1));
        }
        for slot in &pg.slots {
            let live = pg.link.live(slot).await.unwrap();
            assert!(live.statements.lock().unwrap().len() <= STATEMENTS_KEPT);
            let st = live.client.prepare("SELECT count(*) FROM pg_prepared_statements").await.unwrap();
            let held: i64 = live.client.query_one(&st, &[]).await.unwrap().get(0);
            assert!(held as usize <= STATEMENTS_KEPT + 1, "the server holds {held} statements for one connection");
            assert!(held as usize >= STATEMENTS_KEPT, "the kept statements are prepared on the server ({held})");
        }
    }
}
