//! The one interface both storage backends implement: run a statement, run a
//! query. SQL text uses `$1, $2, …` placeholders and only types both engines
//! share (TEXT, BIGINT), so the queries in `store` are written once.
use async_trait::async_trait;

/// A value bound to, or read from, a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    Int(i64),
    Text(String),
    Null,
}

impl From<i64> for Val {
    fn from(v: i64) -> Val {
        Val::Int(v)
    }
}
impl From<u64> for Val {
    fn from(v: u64) -> Val {
        Val::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<bool> for Val {
    fn from(v: bool) -> Val {
        Val::Int(v.into())
    }
}
impl From<&str> for Val {
    fn from(v: &str) -> Val {
        Val::Text(v.into())
    }
}
impl From<String> for Val {
    fn from(v: String) -> Val {
        Val::Text(v)
    }
}
impl From<&String> for Val {
    fn from(v: &String) -> Val {
        Val::Text(v.clone())
    }
}
impl<T: Into<Val>> From<Option<T>> for Val {
    fn from(v: Option<T>) -> Val {
        v.map(Into::into).unwrap_or(Val::Null)
    }
}

/// One result row.
#[derive(Debug, Clone)]
pub struct Row(pub Vec<Val>);

impl Row {
    pub fn text(&self, i: usize) -> String {
        match self.0.get(i) {
            Some(Val::Text(s)) => s.clone(),
            Some(Val::Int(n)) => n.to_string(),
            _ => String::new(),
        }
    }
    pub fn opt_text(&self, i: usize) -> Option<String> {
        match self.0.get(i) {
            Some(Val::Text(s)) => Some(s.clone()),
            _ => None,
        }
    }
    pub fn int(&self, i: usize) -> i64 {
        self.opt_int(i).unwrap_or(0)
    }
    pub fn opt_int(&self, i: usize) -> Option<i64> {
        match self.0.get(i) {
            Some(Val::Int(n)) => Some(*n),
            Some(Val::Text(s)) => s.parse().ok(),
            _ => None,
        }
    }
}

/// Why the database refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(String),
    /// The database cannot be reached (down, restarting, unreachable): the
    /// statement was not run. The hub answers 503 `database_unavailable`.
    #[error("the database is unreachable: {0}")]
    Unavailable(String),
    /// The database has no room to write (its disk is full): the statement
    /// was not applied. The hub answers 503 `database_full`.
    #[error("the database has no room to write: {0}")]
    Full(String),
    #[error("database url {0:?}: use sqlite:PATH or postgres://…")]
    BadUrl(String),
    #[error("{what} {name:?} already exists")]
    Exists { what: &'static str, name: String },
    #[error("{what} {name:?} not found")]
    NotFound { what: &'static str, name: String },
}

impl StoreError {
    /// True when the database cannot take the statement now, for a reason
    /// that heals by itself (it is unreachable, or its disk is full): the
    /// store logs that once and counts it; callers need not log each
    /// statement, and what the statement carried should be tried again.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Full(_))
    }
}

/// A SQL engine. Implementations: SQLite (a file) and PostgreSQL (a URL).
#[async_trait]
pub trait Sql: Send + Sync {
    /// Runs one statement; returns the rows it changed.
    async fn exec(&self, sql: &str, params: Vec<Val>) -> Result<u64, StoreError>;
    /// Runs one query; returns its rows.
    async fn query(&self, sql: &str, params: Vec<Val>) -> Result<Vec<Row>, StoreError>;
    /// Runs several statements without parameters, in one transaction.
    async fn batch(&self, sql: &str) -> Result<(), StoreError>;
    /// `sqlite` or `postgres`.
    fn engine(&self) -> &'static str;
    /// False while the database cannot be reached.
    fn reachable(&self) -> bool {
        true
    }
    /// Outages that have ended since the last call (for the hub's audit).
    fn outages_ended(&self) -> Vec<Outage> {
        Vec::new()
    }
    /// The outage going on now, if any, as far as it went.
    fn outage_now(&self) -> Option<Outage> {
        None
    }
}

/// A time the database could not be reached, from the first failed dial to
/// the first good one.
#[derive(Debug, Clone, PartialEq)]
pub struct Outage {
    /// Unix seconds of the first failed dial.
    pub since: u64,
    pub seconds: f64,
    /// Statements that failed for it (each a refused request, or a relay's
    /// report that the relay sends again).
    pub statements_refused: u64,
    /// The first failed dial's error.
    pub cause: String,
}

/// The rows of a multi-row `VALUES` list: `($1, $2), ($3, $4)` for 2 rows
/// of 2 columns. Callers keep `rows * cols` within [`MAX_PARAMS`], and
/// `rows` one of [`ROW_CHUNKS`].
pub fn values(rows: usize, cols: usize) -> String {
    let row =
        |r: usize| format!("({})", (1..=cols).map(|c| format!("${}", r * cols + c)).collect::<Vec<_>>().join(", "));
    (0..rows).map(row).collect::<Vec<_>>().join(", ")
}

/// Parameters one statement binds at most here (SQLite allows 32 766,
/// PostgreSQL 65 535): statements over many rows go in chunks within it.
pub const MAX_PARAMS: usize = 2_500;

/// The row counts multi-row statements are written for. Both engines keep
/// each statement text prepared (PostgreSQL per connection, for as long as
/// it lives): rows go in chunks of these sizes, largest first, so that a
/// statement has a few texts, not one per row count.
pub const ROW_CHUNKS: [usize; 5] = [256, 64, 16, 4, 1];
// The widest multi-row statement (5 columns) binds within MAX_PARAMS.
const _: () = assert!(ROW_CHUNKS[0] * 5 <= MAX_PARAMS);

/// The rows of the next chunk of `n` rows that wait: the largest of
/// [`ROW_CHUNKS`] that is not more (0 when none wait).
pub fn row_chunk(n: usize) -> usize {
    ROW_CHUNKS.into_iter().find(|c| *c <= n).unwrap_or(0)
}

/// `rows` in chunks of [`ROW_CHUNKS`] sizes.
pub fn row_chunks<T>(mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let (chunk, rest) = rows.split_at(row_chunk(rows.len()));
        rows = rest;
        (!chunk.is_empty()).then_some(chunk)
    })
}

/// True when a database error is a uniqueness violation.
pub fn is_unique_violation(e: &StoreError) -> bool {
    matches!(e, StoreError::Db(m) if m.contains("UNIQUE") || m.contains("duplicate key"))
}
