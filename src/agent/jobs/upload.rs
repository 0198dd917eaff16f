//! `upload SET` jobs: the files of a set on the device's own allow-list
//! (`[uploads.NAME]` in agent.toml) are archived with `tar` under
//! `state_dir/uploads/JOB.tar` and sent to the hub through the relays. The
//! hub names a set, never a path. A set bigger than its cap is refused before
//! anything is sent; the archive stays on disk until the hub has all of it,
//! so an upload goes on after a relay failover or an agent restart.
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::agent::Shared;
use crate::agent::config::UploadSet;
use crate::agent::fetch::{Archive, FetchError, Fetcher};
use crate::api::JobState;

/// Files and bytes in a set, counted without following links; stops
/// counting once past `cap`.
fn measure(paths: &[PathBuf], cap: u64) -> (u64, u64) {
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut todo: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = todo.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        if m.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                todo.extend(entries.flatten().map(|e| e.path()));
            }
        } else {
            files += 1;
            bytes += m.len();
        }
        if bytes > cap {
            break;
        }
    }
    (files, bytes)
}

/// Archives the set's existing paths into `out` with the system's tar
/// (links stored as links).
async fn archive(paths: &[&PathBuf], out: &Path) -> Result<(), String> {
    let mut c = tokio::process::Command::new("tar");
    c.arg("-cf").arg(out);
    for p in paths {
        let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else { continue };
        c.arg("-C").arg(parent).arg(name);
    }
    let o = c.stdin(std::process::Stdio::null()).output().await.map_err(|e| format!("running tar: {e}"))?;
    // 1: a file changed while it was read (a log being written); the
    // archive is still whole.
    if !o.status.success() && o.status.code() != Some(1) {
        return Err(format!("tar failed ({}): {}", o.status, String::from_utf8_lossy(&o.stderr).trim()));
    }
    Ok(())
}

/// Sends set `name` for job `job`; `Ok` and `Err` both say what happened.
pub async fn upload(
    state: &Shared,
    fetcher: &mut Fetcher,
    job: &str,
    name: &str,
) -> Result<String, (JobState, String)> {
    let Some(set) = state.cfg.uploads.get(name) else {
        return Err((JobState::Rejected, format!("upload set {name:?} is not on this device's allow-list")));
    };
    let Some(repo) = state.cfg.repo.as_ref() else {
        return Err((JobState::Failed, "this agent has no [repo] state_dir to keep the archive in".into()));
    };
    let dir = repo.state_dir.join("uploads");
    let path = dir.join(format!("{job}.tar"));
    let fail = |why: String| (JobState::Failed, why);
    if !path.exists() {
        build(set, name, &dir, &path).await.map_err(fail)?;
    }
    let p = path.clone();
    let (total, sha) = tokio::task::spawn_blocking(move || crate::util::sha256_file(&p))
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(format!("reading the archive: {e}")))?;
    if total > set.max_bytes {
        let _ = std::fs::remove_file(&path);
        return Err(fail(too_large(name, total, set.max_bytes)));
    }
    let a = Archive { job, path: &path, total, sha256: &sha };
    let sent = match fetcher.upload(&a, repo.max_download_bytes_per_sec).await {
        Ok(n) => n,
        Err(FetchError::Canceled) => {
            let _ = std::fs::remove_file(&path);
            return Err((JobState::Canceled, "cancelled while uploading; the partial upload is removed".into()));
        }
        // The hub refused it for good: keeping the archive would only resend it.
        Err(e @ FetchError::Refused { .. }) => {
            let _ = std::fs::remove_file(&path);
            return Err(fail(e.to_string()));
        }
        Err(e) => return Err(fail(e.to_string())),
    };
    let _ = std::fs::remove_file(&path);
    state.audit.record(
        "upload_sent",
        json!({"device": state.cfg.device, "job": job, "set": name, "bytes": total, "sent": sent, "sha256": sha}),
    );
    let resumed = if sent == total { String::new() } else { format!(" ({sent} bytes sent this time)") };
    Ok(format!("uploaded {name}: {total} bytes{resumed}, sha256:{sha}"))
}

fn too_large(name: &str, bytes: u64, cap: u64) -> String {
    format!("upload_too_large: set {name} holds at least {bytes} bytes, over its cap of {cap}; nothing was sent")
}

/// Checks the set's size and archives it to `path` (written whole, then renamed).
async fn build(set: &UploadSet, name: &str, dir: &Path, path: &Path) -> Result<(), String> {
    let present: Vec<&PathBuf> = set.paths.iter().filter(|p| std::fs::symlink_metadata(p).is_ok()).collect();
    if present.is_empty() {
        return Err(format!("upload set {name}: none of its paths exists on this device"));
    }
    let (files, bytes) = measure(&set.paths, set.max_bytes);
    if bytes > set.max_bytes {
        return Err(too_large(name, bytes, set.max_bytes));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = path.with_extension("tar.tmp");
    archive(&present, &tmp).await?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))?;
    tracing::info!(set = name, files, bytes, "upload archived");
    Ok(())
}
