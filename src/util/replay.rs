//! Ids seen once, each kept until its grant expires: the relay's consumed
//! session ids and the agent's replay cache.
//!
//! A set may keep a journal file (one `ID EXPIRES` line per use, 0600), so
//! that a restarted relay or agent still refuses a grant it admitted before
//! the restart. Each use is written before it is answered; the journal is
//! compacted to the live entries when opened and when it grows past four
//! times the live set, and at the use after a write the disk refused (a
//! full disk: no line is left in part). It is written, not synced: it
//! survives a crash of the process, not necessarily a power loss of the host
//! in the same instant.
use std::collections::HashMap;
use std::fs::File;
use std::hash::Hash;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// Past this many entries, expired ones are purged on insert.
const PURGE_ABOVE: usize = 1024;

/// An id that a journal can write and read back.
pub trait ReplayKey: Eq + Hash + Copy + std::fmt::Display {
    fn parse_key(s: &str) -> Option<Self>;
}

impl ReplayKey for u32 {
    fn parse_key(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

#[derive(Debug)]
struct Journal {
    path: PathBuf,
    file: File,
    lines: usize,
    /// Bytes of whole lines in the file.
    size: u64,
    /// A write failed (a full disk): the file lacks ids the set holds, so
    /// the next use rewrites it whole instead of appending.
    behind: bool,
}

impl Journal {
    /// The journal of `path` rewritten with `entries`.
    fn compacted<'a, K: std::fmt::Display + 'a>(
        path: &Path,
        entries: impl ExactSizeIterator<Item = (&'a K, u64)>,
    ) -> std::io::Result<Journal> {
        let lines = entries.len();
        let file = compact(path, entries)?;
        let size = file.metadata()?.len();
        Ok(Journal { path: path.into(), file, lines, size, behind: false })
    }
}

#[derive(Debug)]
pub struct ReplaySet<K> {
    seen: HashMap<K, u64>,
    journal: Option<Journal>,
}

impl<K> Default for ReplaySet<K> {
    fn default() -> Self {
        ReplaySet { seen: HashMap::new(), journal: None }
    }
}

impl<K: Eq + Hash + Copy> ReplaySet<K> {
    /// Records `id` as used until `expires_at` (unix seconds). False when it was used before.
    pub fn first_use(&mut self, id: K, expires_at: u64, now: u64) -> bool
    where
        K: std::fmt::Display,
    {
        if self.seen.len() > PURGE_ABOVE {
            self.seen.retain(|_, exp| *exp > now);
        }
        if self.seen.contains_key(&id) {
            return false;
        }
        self.seen.insert(id, expires_at);
        self.journal_write(id, expires_at);
        true
    }

    pub fn contains(&self, id: &K) -> bool {
        self.seen.contains_key(id)
    }

    /// Every id with its expiry (for a twin's snapshot).
    pub fn entries(&self) -> Vec<(K, u64)> {
        self.seen.iter().map(|(k, v)| (*k, *v)).collect()
    }

    fn journal_write(&mut self, id: K, expires_at: u64)
    where
        K: std::fmt::Display,
    {
        let Some(j) = self.journal.as_mut() else { return };
        j.lines += 1;
        if !j.behind && j.lines <= 4 * self.seen.len().max(PURGE_ABOVE) {
            let line = format!("{id} {expires_at}\n");
            match j.file.write_all(line.as_bytes()) {
                Ok(()) => j.size += line.len() as u64,
                Err(e) => {
                    // No line in part: it would spoil the next one too.
                    let _ = j.file.set_len(j.size);
                    j.behind = true;
                    tracing::error!(path = %j.path.display(), error = %e, "writing the replay journal failed: the ids stay in memory and the journal is rewritten at the next use");
                }
            }
            return;
        }
        let path = j.path.clone();
        match Journal::compacted(&path, self.seen.iter().map(|(k, e)| (k, *e))) {
            Ok(fresh) => self.journal = Some(fresh),
            Err(e) => {
                j.behind = true;
                tracing::error!(path = %path.display(), error = %e, "rewriting the replay journal failed");
            }
        }
    }
}

impl<K: ReplayKey> ReplaySet<K> {
    /// A set kept in `path`: the ids still live at `now` are read back, and
    /// each new use is appended.
    pub fn persistent(path: &Path, now: u64) -> std::io::Result<ReplaySet<K>> {
        let mut seen = HashMap::new();
        if let Ok(f) = File::open(path) {
            for line in BufReader::new(f).lines().map_while(Result::ok) {
                let mut w = line.split_whitespace();
                if let (Some(Some(id)), Some(Ok(exp))) = (w.next().map(K::parse_key), w.next().map(str::parse::<u64>))
                    && exp > now
                {
                    seen.insert(id, exp);
                }
            }
        }
        let journal = Journal::compacted(path, seen.iter().map(|(k, e)| (k, *e)))?;
        Ok(ReplaySet { seen, journal: Some(journal) })
    }
}

/// Rewrites `path` with `entries` (via a 0600 temporary file and a rename)
/// and returns it open for appending.
fn compact<'a, K: std::fmt::Display + 'a>(
    path: &Path,
    entries: impl Iterator<Item = (&'a K, u64)>,
) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("compacting");
    {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        let mut text = String::new();
        for (k, e) in entries {
            text += &format!("{k} {e}\n");
        }
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::OpenOptions::new().append(true).mode(0o600).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_good_once_and_expired_ids_are_purged() {
        let mut s = ReplaySet::default();
        assert!(s.first_use(1u32, 100, 0));
        assert!(!s.first_use(1u32, 100, 0));
        for i in 2..1100u32 {
            assert!(s.first_use(i, 10, 0));
        }
        // Past the purge threshold, expired entries go; live ones stay.
        assert!(s.first_use(5000, 100, 50));
        assert!(!s.contains(&2));
        assert!(s.contains(&1));
        assert_eq!(s.entries().len(), 2);
    }

    #[test]
    fn a_persistent_set_remembers_live_ids_across_a_restart() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("used");
        {
            let mut s = ReplaySet::<u32>::persistent(&path, 0).unwrap();
            assert!(s.first_use(1, 100, 0));
            assert!(s.first_use(2, 10, 0));
        }
        // "Restarted" at 50: id 1 is still live, id 2 has expired.
        let mut s = ReplaySet::<u32>::persistent(&path, 50).unwrap();
        assert!(!s.first_use(1, 100, 50), "a used id was admitted again after a restart");
        assert!(!s.contains(&2));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1, "not compacted on open");
    }

    /// A use the disk refused (`/dev/full` as the journal) is in the
    /// journal after the next use, and no line is spoilt.
    #[test]
    fn a_use_the_disk_refused_is_journalled_with_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("used");
        {
            let mut s = ReplaySet::<u32>::persistent(&path, 0).unwrap();
            assert!(s.first_use(1, 100, 0));
            let full = std::fs::OpenOptions::new().append(true).open("/dev/full").unwrap();
            let j = s.journal.as_mut().unwrap();
            let good = std::mem::replace(&mut j.file, full);
            assert!(s.first_use(2, 100, 0), "a full disk refuses nobody");
            assert!(s.journal.as_ref().unwrap().behind);
            s.journal.as_mut().unwrap().file = good;
            assert!(s.first_use(3, 100, 0));
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.lines().all(|l| l.split(' ').count() == 2), "{text}");
        let mut s = ReplaySet::<u32>::persistent(&path, 0).unwrap();
        for id in [1, 2, 3] {
            assert!(!s.first_use(id, 100, 0), "id {id} forgotten by the journal");
        }
    }
}
