//! The device's trusted repository metadata on disk: written whole and
//! renamed into place, so a crash leaves the old or the new set, never a mix.
use std::path::{Path, PathBuf};

use crate::agent::config::RepoSettings;
use crate::repo::RepoError;
use crate::repo::meta::Envelope;
use crate::repo::trust::Trusted;

pub fn meta_dir(s: &RepoSettings) -> PathBuf {
    s.state_dir.join("metadata")
}

/// The last trusted metadata, or the shipped root when there is none yet.
/// Saved files are checked against the root again (signatures).
pub fn load(s: &RepoSettings) -> Result<Trusted, RepoError> {
    let dir = meta_dir(s);
    let read = |role: &'static str, p: &Path| -> Result<Option<Envelope>, RepoError> {
        match std::fs::read(p) {
            Ok(b) => Envelope::parse(role, &b).map(Some),
            Err(_) => Ok(None),
        }
    };
    let shipped = std::fs::read(&s.root)
        .map_err(|e| RepoError::Malformed { role: "root", detail: format!("{}: {e}", s.root.display()) })?;
    let root = match read("root", &dir.join("root.json"))? {
        Some(r) => r,
        None => Envelope::parse("root", &shipped)?,
    };
    match (
        read("timestamp", &dir.join("timestamp.json"))?,
        read("snapshot", &dir.join("snapshot.json"))?,
        read("targets", &dir.join("targets.json"))?,
    ) {
        (Some(ts), Some(sn), Some(tg)) => Trusted::restore(root, ts, sn, tg),
        _ => Trusted::new(root),
    }
}

pub fn save(s: &RepoSettings, t: &Trusted) -> std::io::Result<()> {
    let dir = meta_dir(s);
    std::fs::create_dir_all(&dir)?;
    let (root, rest) = t.envelopes();
    let mut files = vec![("root.json", root)];
    if let Some((ts, sn, tg)) = rest {
        files.extend([("targets.json", tg), ("snapshot.json", sn), ("timestamp.json", ts)]);
    }
    for (name, env) in files {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, env.to_bytes())?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))?;
    }
    Ok(())
}
