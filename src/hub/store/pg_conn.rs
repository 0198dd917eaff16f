//! PostgreSQL connections that come back. A restart of PostgreSQL, a
//! failover or an administrator's `pg_terminate_backend` ends the hub's
//! connections; a slot whose connection has ended dials again at the next
//! statement. While the database cannot be reached, statements fail at once
//! with [`StoreError::Unavailable`] (the hub answers 503), a slot dials at
//! most once per [`REDIAL_EVERY`], and the outage is measured: when a dial
//! succeeds again, [`Link::outages_ended`] hands it to the hub's audit.
use std::collections::HashMap;
use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls, Statement};

use super::pg_tls::{MakeRustls, Target};
use super::sql::{Outage, StoreError};
use crate::util::lock;

/// A slot whose dial failed tries again after this long; statements in
/// between fail at once.
pub const REDIAL_EVERY: Duration = Duration::from_secs(1);
/// A dial that gets no answer (a host that drops packets) gives up after this.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// A statement with no answer after this is given up, and its connection
/// dropped: a database host that hangs, or a network that drops packets
/// without a reset, would otherwise hold each request until TCP gives up
/// (15 minutes), past every client's patience (10 s). Migrations are not
/// bounded.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// One open connection and the statements prepared on it.
pub struct Live {
    pub client: Client,
    pub statements: Mutex<HashMap<String, Statement>>,
}

/// One of the hub's connections: open, or to be dialled again.
#[derive(Default)]
pub struct Slot {
    live: Mutex<Option<Arc<Live>>>,
    dialing: tokio::sync::Mutex<Option<Instant>>,
}

struct Down {
    since: Instant,
    since_unix: u64,
    refused: u64,
    cause: String,
}

impl Down {
    fn so_far(&self) -> Outage {
        Outage {
            since: self.since_unix,
            seconds: (self.since.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            statements_refused: self.refused,
            cause: self.cause.clone(),
        }
    }
}

/// What all slots share: where the database is, and whether it is down.
pub struct Link {
    target: Target,
    down: Mutex<Option<Down>>,
    ended: Mutex<Vec<Outage>>,
}

/// Full error text: tokio-postgres puts the server's message in the source.
pub fn pg(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(d) if d.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION => {
            StoreError::Db(format!("duplicate key: {}", d.message()))
        }
        Some(d) if d.code() == &tokio_postgres::error::SqlState::DISK_FULL => {
            StoreError::Full(format!("{}: {}", d.code().code(), d.message()))
        }
        Some(d) => StoreError::Db(format!("{}: {}", d.code().code(), d.message())),
        // A TLS or network failure: its cause is in the source chain.
        None => StoreError::Db(crate::util::with_causes(&e)),
    }
}

/// True when a dial failed for want of a database to talk to (refused,
/// reset, no route, a name that does not resolve yet, a server shutting
/// down, starting up or full), as opposed to one that answered with a
/// refusal that will not heal by itself (a wrong password, a TLS failure).
fn unreachable(e: &tokio_postgres::Error) -> bool {
    if let Some(db) = e.as_db_error() {
        // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections
        return matches!(db.code().code(), "57P01" | "57P02" | "57P03" | "53300");
    }
    let mut cause = e.source();
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            // A TLS failure comes as InvalidData (tokio-rustls).
            return io.kind() != std::io::ErrorKind::InvalidData;
        }
        cause = c.source();
    }
    e.is_closed()
}

async fn watch<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        let e = pg(e);
        tracing::warn!(error = %e, "postgres connection lost; the next statement dials again");
    }
}

impl Link {
    pub fn new(target: Target) -> Link {
        Link { target, down: Mutex::new(None), ended: Mutex::new(Vec::new()) }
    }

    /// Opens one connection (its driver runs as a task).
    pub async fn dial(&self) -> Result<Live, StoreError> {
        let url = &self.target.url;
        let dialed = tokio::time::timeout(DIAL_TIMEOUT, async {
            match &self.target.tls {
                Some(cfg) => {
                    let (client, connection) = tokio_postgres::connect(url, MakeRustls(cfg.clone())).await?;
                    tokio::spawn(watch(connection));
                    Ok::<_, tokio_postgres::Error>(client)
                }
                None => {
                    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
                    tokio::spawn(watch(connection));
                    Ok(client)
                }
            }
        })
        .await;
        let client = match dialed {
            Ok(Ok(c)) => c,
            Ok(Err(e)) if unreachable(&e) => return Err(StoreError::Unavailable(pg(e).to_string())),
            Ok(Err(e)) => return Err(pg(e)),
            Err(_) => return Err(StoreError::Unavailable(format!("no answer within {} s", DIAL_TIMEOUT.as_secs()))),
        };
        Ok(Live { client, statements: Mutex::new(HashMap::new()) })
    }

    /// The slot's connection, dialled again if it has ended.
    pub async fn live(&self, slot: &Slot) -> Result<Arc<Live>, StoreError> {
        if let Some(l) = lock(&slot.live).as_ref().filter(|l| !l.client.is_closed()) {
            return Ok(l.clone());
        }
        let mut last_failed = slot.dialing.lock().await;
        // Another statement may have dialled while this one waited.
        if let Some(l) = lock(&slot.live).as_ref().filter(|l| !l.client.is_closed()) {
            return Ok(l.clone());
        }
        if last_failed.is_some_and(|at| at.elapsed() < REDIAL_EVERY) {
            return Err(self.refused());
        }
        match self.dial().await {
            Ok(l) => {
                let l = Arc::new(l);
                *lock(&slot.live) = Some(l.clone());
                *last_failed = None;
                crate::metrics::HUB_DATABASE_RECONNECTS.inc();
                self.up();
                Ok(l)
            }
            Err(e) => {
                *last_failed = Some(Instant::now());
                self.failed(&match e {
                    StoreError::Unavailable(why) => why,
                    other => other.to_string(),
                });
                Err(self.refused())
            }
        }
    }

    /// Puts a slot in use from the start.
    pub fn fill(slot: &Slot, live: Live) {
        *lock(&slot.live) = Some(Arc::new(live));
    }

    fn failed(&self, cause: &str) {
        crate::metrics::HUB_DATABASE_UP.set(0);
        let mut down = lock(&self.down);
        // The first cause is the outage's: what follows (a dial cut as the
        // network comes back) says less.
        if down.is_none() {
            tracing::error!(error = %cause, "the database is unreachable: requests that need it are refused (503) until it is back; live sessions go on");
            *down = Some(Down {
                since: Instant::now(),
                since_unix: crate::util::now_secs(),
                refused: 0,
                cause: cause.to_string(),
            });
        }
    }

    fn up(&self) {
        crate::metrics::HUB_DATABASE_UP.set(1);
        if let Some(d) = lock(&self.down).take() {
            let o = d.so_far();
            tracing::info!(
                seconds = o.seconds,
                statements_refused = o.statements_refused,
                "the database is reachable again"
            );
            lock(&self.ended).push(o);
        }
    }

    /// Counts a refused statement in the outage, if there is one; its cause.
    fn count_refused(&self) -> Option<String> {
        lock(&self.down).as_mut().map(|d| {
            d.refused += 1;
            d.cause.clone()
        })
    }

    /// A statement refused for the outage (counted in it).
    pub fn refused(&self) -> StoreError {
        StoreError::Unavailable(self.count_refused().unwrap_or_else(|| "the connection ended".into()))
    }

    /// A statement that got no answer within [`STATEMENT_TIMEOUT`] on
    /// `live`: the slot's connection is dropped, and dialled again next time.
    pub fn stalled(&self, slot: &Slot, live: &Arc<Live>) -> StoreError {
        let mut held = lock(&slot.live);
        if held.as_ref().is_some_and(|l| Arc::ptr_eq(l, live)) {
            *held = None;
            tracing::warn!(
                "a statement got no answer within {} s: its connection is dropped and dialled again",
                STATEMENT_TIMEOUT.as_secs()
            );
        }
        drop(held);
        self.lost(StoreError::Db(format!("no answer within {} s", STATEMENT_TIMEOUT.as_secs())))
    }

    /// A statement that failed because its connection ended under it.
    pub fn lost(&self, e: StoreError) -> StoreError {
        self.count_refused();
        StoreError::Unavailable(e.to_string())
    }

    pub fn reachable(&self) -> bool {
        lock(&self.down).is_none()
    }

    /// Outages that have ended since the last call.
    pub fn outages_ended(&self) -> Vec<Outage> {
        std::mem::take(&mut *lock(&self.ended))
    }

    /// The outage going on now, if any, as far as it went.
    pub fn outage_now(&self) -> Option<Outage> {
        lock(&self.down).as_ref().map(Down::so_far)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(url: &str) -> Link {
        Link::new(super::super::pg_tls::target(url, std::path::Path::new(".")).unwrap())
    }

    /// A port nobody listens on refuses: the hub waits for that. A server
    /// that answers "wrong password" will not heal by itself: the hub stops
    /// with the reason.
    #[tokio::test]
    async fn a_database_out_of_reach_is_waited_for_and_a_wrong_password_is_not() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let refused = link(&format!("postgres://u:p@127.0.0.1:{port}/db")).dial().await.err();
        assert!(matches!(refused, Some(StoreError::Unavailable(_))), "{refused:?}");
        let Ok(url) = std::env::var("TETHER_TEST_POSTGRES") else {
            eprintln!("SKIPPED (wrong password): TETHER_TEST_POSTGRES is not set");
            return;
        };
        let (user, rest) = url.split_once('@').expect("postgres://USER:PASSWORD@HOST/DB");
        let user = user.rsplit_once(':').map_or(user, |(u, _)| u);
        let wrong = link(&format!("{user}:not-the-password@{rest}")).dial().await.err();
        assert!(
            matches!(&wrong, Some(StoreError::Db(m)) if m.contains("28P01")),
            "a wrong password is taken for an outage: {wrong:?}"
        );
    }
}
