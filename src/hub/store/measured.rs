//! Every statement the hub runs, timed (`tether_hub_db_seconds{op}`) and its
//! failures counted (`tether_hub_db_errors_total{op}`); a uniqueness
//! violation is an answer (the name is taken), not a failure, and a
//! statement refused because the database is unreachable is the outage's
//! (`tether_hub_database_up`), not the statement's. A database without room
//! to write (its disk full) is logged when it begins and when a write goes
//! through again, at most once a minute: SQLite reuses the room its
//! write-ahead log has, so on a full disk some writes go through and others
//! do not.
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;

use super::sql::{Row, Sql, StoreError, Val, is_unique_violation};

pub struct Measured {
    db: Arc<dyn Sql>,
    full: Mutex<NoRoom>,
}

/// Writes refused for want of room.
#[derive(Default)]
struct NoRoom {
    /// Since when, how many, and whether that was logged.
    now: Option<(Instant, u64, bool)>,
    /// When it was last logged.
    logged: Option<Instant>,
}

/// At most one "no room" line in this long.
const NO_ROOM_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl Measured {
    pub fn new(db: Arc<dyn Sql>) -> Measured {
        Measured { db, full: Mutex::default() }
    }

    fn observe<T>(&self, op: &'static str, started: Instant, r: Result<T, StoreError>) -> Result<T, StoreError> {
        crate::metrics::HUB_DB_SECONDS.with_label_values(&[op]).observe(started.elapsed().as_secs_f64());
        match &r {
            Err(e) if is_unique_violation(e) || matches!(e, StoreError::Unavailable(_)) => {}
            Err(e) => {
                crate::metrics::HUB_DB_ERRORS.with_label_values(&[op]).inc();
                if let StoreError::Full(why) = e {
                    self.no_room(why);
                }
            }
            Ok(_) => {}
        }
        r
    }

    fn no_room(&self, why: &str) {
        let mut full = crate::util::lock(&self.full);
        if let Some((_, refused, _)) = &mut full.now {
            *refused += 1;
            return;
        }
        let log = full.logged.is_none_or(|t| t.elapsed() >= NO_ROOM_LOG_EVERY);
        if log {
            tracing::error!(error = %why, "the hub's database has no room to write (its disk is full): requests that write are refused (503 database_full) and audit records wait in memory until there is room; live sessions go on");
            full.logged = Some(Instant::now());
        }
        full.now = Some((Instant::now(), 1, log));
    }

    /// A write went through: the database has room again.
    fn wrote(&self) {
        let mut full = crate::util::lock(&self.full);
        if let Some((since, refused, true)) = full.now.take() {
            let seconds = since.elapsed().as_secs();
            tracing::info!(seconds, writes_refused = refused, "the hub's database takes writes again");
        }
    }
}

#[async_trait]
impl Sql for Measured {
    async fn exec(&self, sql: &str, params: Vec<Val>) -> Result<u64, StoreError> {
        let started = Instant::now();
        let r = self.observe("exec", started, self.db.exec(sql, params).await);
        if matches!(r, Ok(n) if n > 0) {
            self.wrote();
        }
        r
    }

    async fn query(&self, sql: &str, params: Vec<Val>) -> Result<Vec<Row>, StoreError> {
        let started = Instant::now();
        self.observe("query", started, self.db.query(sql, params).await)
    }

    async fn batch(&self, sql: &str) -> Result<(), StoreError> {
        let started = Instant::now();
        let r = self.observe("batch", started, self.db.batch(sql).await);
        if r.is_ok() {
            self.wrote();
        }
        r
    }

    fn engine(&self) -> &'static str {
        self.db.engine()
    }

    fn reachable(&self) -> bool {
        self.db.reachable()
    }

    fn outages_ended(&self) -> Vec<super::sql::Outage> {
        self.db.outages_ended()
    }

    fn outage_now(&self) -> Option<super::sql::Outage> {
        self.db.outage_now()
    }
}
