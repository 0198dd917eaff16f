//! Hub audit records that wait for the database, kept on disk as well
//! (`audit_spool` in hub.toml), so that a hub stopped or killed during an
//! outage of its database loses none of them.
//!
//! While records wait for a database that cannot take them (unreachable,
//! or with its disk full), the file is rewritten
//! (a temporary file, synced, renamed over it) at most once a second, and
//! once more at the hub's stop: a kill loses at most the last second's
//! records, a stop none. The next start chains what the file holds before
//! anything else, skipping records the database already has (a kill after
//! they were stored and before the file was rewritten), then removes it.
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// A record not chained yet: what happened and when.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Pending {
    pub ts: String,
    pub unix: i64,
    pub event: String,
    pub fields: Value,
}

impl Pending {
    pub fn now(event: &str, fields: Value) -> Pending {
        let now = time::OffsetDateTime::now_utc();
        let ts = now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        Pending { ts, unix: now.unix_timestamp(), event: event.to_string(), fields }
    }
}

/// What the file holds (held while the file is brought up to date).
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum OnDisk {
    /// No file.
    Nothing,
    /// The waiting records as of this change of the queue.
    Holds(u64),
    /// Records read at the start: the file goes once they are chained.
    Read,
    /// A file this hub could not read or move aside: left as it is.
    Untouchable,
}

pub struct Spool {
    path: PathBuf,
    /// One writer at a time.
    on_disk: tokio::sync::Mutex<OnDisk>,
    /// The last write failed (logged once until one succeeds).
    failing: std::sync::atomic::AtomicBool,
}

/// What a start found in the file.
pub enum Found {
    Records(Vec<Pending>),
    /// A file that cannot be read, or does not parse (then moved aside).
    Unreadable {
        /// Where the file is now.
        at: PathBuf,
        error: String,
    },
}

impl Spool {
    /// The spool at `path`, and what it held (nothing when there is no file).
    pub fn open(path: PathBuf) -> (Spool, Found) {
        let (on_disk, found) = match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (OnDisk::Nothing, Found::Records(Vec::new())),
            Err(e) => (OnDisk::Untouchable, Found::Unreadable { at: path.clone(), error: e.to_string() }),
            Ok(text) => match parse(&text) {
                Ok(records) => (OnDisk::Read, Found::Records(records)),
                Err(error) => {
                    let aside = path.with_extension(format!("unreadable-{}", crate::util::now_secs()));
                    match std::fs::rename(&path, &aside) {
                        Ok(()) => (OnDisk::Nothing, Found::Unreadable { at: aside, error }),
                        Err(e) => {
                            let error = format!("{error}; moving it aside: {e}");
                            (OnDisk::Untouchable, Found::Unreadable { at: path.clone(), error })
                        }
                    }
                }
            },
        };
        let spool = Spool { path, on_disk: tokio::sync::Mutex::new(on_disk), failing: Default::default() };
        (spool, found)
    }

    /// What the file holds, held while it is brought up to date.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, OnDisk> {
        self.on_disk.lock().await
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `records` (the queue at change `changes`) over the file.
    pub async fn write(&self, on_disk: &mut OnDisk, changes: u64, records: Vec<Pending>) {
        let path = self.path.clone();
        let done = off_thread(move || replace(&path, &records)).await;
        self.wrote(on_disk, done.map(|()| OnDisk::Holds(changes)));
    }

    /// Removes the file: nothing waits any more.
    pub async fn remove(&self, on_disk: &mut OnDisk) {
        let path = self.path.clone();
        let done = off_thread(move || match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await;
        self.wrote(on_disk, done.map(|()| OnDisk::Nothing));
    }

    fn wrote(&self, on_disk: &mut OnDisk, done: std::io::Result<OnDisk>) {
        use std::sync::atomic::Ordering::Relaxed;
        match done {
            Ok(now) => {
                *on_disk = now;
                if self.failing.swap(false, Relaxed) {
                    tracing::info!(path = %self.path.display(), "hub audit records that wait are kept on disk again");
                }
            }
            Err(e) => {
                crate::metrics::HUB_AUDIT_SPOOL_ERRORS.inc();
                if !self.failing.swap(true, Relaxed) {
                    tracing::error!(path = %self.path.display(), error = %e,
                        "cannot keep waiting hub audit records on disk: they are in memory only, and lost if the hub stops before its database is back");
                }
            }
        }
    }
}

impl OnDisk {
    /// What to do to make the file match the queue at change `changes`,
    /// holding `waiting` records; `keep` when the records wait for a
    /// database that cannot take them (records in flight to one that can
    /// are not written).
    pub fn due(self, changes: u64, waiting: usize, keep: bool) -> Due {
        match self {
            OnDisk::Untouchable => Due::Nothing,
            OnDisk::Holds(c) if c == changes => Due::Nothing,
            OnDisk::Nothing if waiting == 0 || !keep => Due::Nothing,
            OnDisk::Read if waiting > 0 && !keep => Due::Nothing, // chained soon
            _ if waiting == 0 => Due::Remove,
            _ => Due::Write,
        }
    }
}

pub enum Due {
    Nothing,
    Write,
    Remove,
}

/// `f`'s file work on a blocking thread.
async fn off_thread(f: impl FnOnce() -> std::io::Result<()> + Send + 'static) -> std::io::Result<()> {
    tokio::task::spawn_blocking(f).await.map_err(|e| std::io::Error::other(e.to_string()))?
}

fn parse(text: &str) -> Result<Vec<Pending>, String> {
    let lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    lines.map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1))).collect()
}

/// `records` as JSON lines in a new file renamed over `path`, synced.
fn replace(path: &Path, records: &[Pending]) -> std::io::Result<()> {
    let mut text = String::new();
    for r in records {
        text += &serde_json::to_string(r).map_err(std::io::Error::other)?;
        text.push('\n');
    }
    crate::util::replace_file(path, text.as_bytes())
}

/// `records` less those whose time and event are among `stored` (the
/// database's records since the first of them).
pub fn not_stored(records: Vec<Pending>, stored: &[String]) -> Vec<Pending> {
    let key = |ts: &str, event: &str| format!("{ts} {event}");
    let stored: HashSet<String> = stored
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|r| key(r["ts"].as_str().unwrap_or(""), r["event"].as_str().unwrap_or("")))
        .collect();
    records.into_iter().filter(|p| !stored.contains(&key(&p.ts, &p.event))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(ts: &str, event: &str) -> Pending {
        Pending { ts: ts.into(), unix: 1, event: event.into(), fields: json!({"who": "x"}) }
    }

    #[tokio::test]
    async fn records_written_are_found_by_the_next_start_and_a_bad_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("waiting.jsonl");
        let (spool, found) = Spool::open(path.clone());
        assert!(matches!(found, Found::Records(ref r) if r.is_empty()));
        let mut on_disk = spool.lock().await;
        assert!(matches!(on_disk.due(1, 2, false), Due::Nothing), "in flight to a reachable database");
        assert!(matches!(on_disk.due(1, 2, true), Due::Write));
        spool.write(&mut on_disk, 1, vec![rec("t1", "a"), rec("t2", "b")]).await;
        assert!(matches!(on_disk.due(1, 2, true), Due::Nothing), "written already");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

        let (again, found) = Spool::open(path.clone());
        let Found::Records(r) = found else { panic!("unreadable") };
        assert_eq!(r.iter().map(|p| p.event.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let mut on_disk = again.lock().await;
        assert!(matches!(on_disk.due(5, 2, false), Due::Nothing), "read records wait to be chained");
        assert!(matches!(on_disk.due(6, 0, false), Due::Remove), "chained: the file goes");
        again.remove(&mut on_disk).await;
        assert!(!path.exists());

        std::fs::write(&path, "{\"ts\":\"t1\"\n").unwrap();
        let (_, found) = Spool::open(path.clone());
        let Found::Unreadable { at, error } = found else { panic!("a torn file was read") };
        assert!(error.contains("line 1"), "{error}");
        assert!(at.exists() && !path.exists(), "{}", at.display());
    }

    #[tokio::test]
    async fn a_file_that_cannot_be_written_is_counted_and_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path().join("gone").join("waiting.jsonl"));
        let before = crate::metrics::HUB_AUDIT_SPOOL_ERRORS.get();
        let mut on_disk = spool.lock().await;
        spool.write(&mut on_disk, 1, vec![rec("t1", "a")]).await;
        assert!(crate::metrics::HUB_AUDIT_SPOOL_ERRORS.get() > before);
        assert!(matches!(on_disk.due(1, 1, true), Due::Write), "a failed write is not taken for done");
        std::fs::create_dir(dir.path().join("gone")).unwrap();
        spool.write(&mut on_disk, 1, vec![rec("t1", "a")]).await;
        assert!(matches!(on_disk.due(1, 1, true), Due::Nothing));
    }

    #[test]
    fn records_the_database_has_are_not_chained_twice() {
        let stored = vec![json!({"seq": 7, "ts": "t1", "event": "a"}).to_string()];
        let left = not_stored(vec![rec("t1", "a"), rec("t1", "b"), rec("t2", "a")], &stored);
        assert_eq!(left.iter().map(|p| format!("{} {}", p.ts, p.event)).collect::<Vec<_>>(), ["t1 b", "t2 a"]);
    }
}
