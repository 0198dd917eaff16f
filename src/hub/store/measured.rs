//! Every statement the hub runs, timed (`tether_hub_db_seconds{op}`) and its
//! failures counted (`tether_hub_db_errors_total{op}`); a uniqueness
//! violation is an answer (the name is taken), not a failure, and a
//! statement refused because the database is unreachable is the outage's
//! (`tether_hub_database_up`), not the statement's.
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::sql::{Row, Sql, StoreError, Val, is_unique_violation};

pub struct Measured(pub Arc<dyn Sql>);

fn observe<T>(op: &'static str, started: Instant, r: Result<T, StoreError>) -> Result<T, StoreError> {
    crate::metrics::HUB_DB_SECONDS.with_label_values(&[op]).observe(started.elapsed().as_secs_f64());
    if let Err(e) = &r
        && !is_unique_violation(e)
        && !matches!(e, StoreError::Unavailable(_))
    {
        crate::metrics::HUB_DB_ERRORS.with_label_values(&[op]).inc();
    }
    r
}

#[async_trait]
impl Sql for Measured {
    async fn exec(&self, sql: &str, params: Vec<Val>) -> Result<u64, StoreError> {
        let started = Instant::now();
        observe("exec", started, self.0.exec(sql, params).await)
    }

    async fn query(&self, sql: &str, params: Vec<Val>) -> Result<Vec<Row>, StoreError> {
        let started = Instant::now();
        observe("query", started, self.0.query(sql, params).await)
    }

    async fn batch(&self, sql: &str) -> Result<(), StoreError> {
        let started = Instant::now();
        observe("batch", started, self.0.batch(sql).await)
    }

    fn engine(&self) -> &'static str {
        self.0.engine()
    }

    fn reachable(&self) -> bool {
        self.0.reachable()
    }

    fn outages_ended(&self) -> Vec<super::sql::Outage> {
        self.0.outages_ended()
    }

    fn outage_now(&self) -> Option<super::sql::Outage> {
        self.0.outage_now()
    }
}
