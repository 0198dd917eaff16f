//! The agent updating itself: a target of kind `agent` is the agent's own
//! binary. It is checked before anything switches (the new binary must run
//! `--version` and accept this device's config with `--check`), installed as
//! `packages/NAME/VERSION/NAME` with `current` switched to it, and the agent
//! restarts as it: under systemd it exits (status 75) and systemd starts
//! `packages/NAME/current/NAME` again; otherwise it replaces itself with the
//! new binary in place (exec, the same process id). After the restart the job's
//! record says what was expected: the agent reports SUCCEEDED if it now runs
//! the new binary, else it switches `current` back and reports FAILED.
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a self-update expects to find after its restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Restart {
    pub name: String,
    pub version: String,
    /// The version `current` pointed at before (none: first install).
    pub previous: Option<String>,
    /// `packages/NAME/VERSION/NAME`.
    pub exe: PathBuf,
    /// `packages/NAME/current`.
    pub current: PathBuf,
}

/// The exit status that asks systemd for a restart.
pub const RESTART_STATUS: i32 = 75;

async fn runs(bin: &Path, args: &[std::ffi::OsString], what: &str) -> Result<String, String> {
    let mut c = tokio::process::Command::new(bin);
    c.args(args).stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = match tokio::time::timeout(Duration::from_secs(30), c.output()).await {
        Err(_) => return Err(format!("the new binary's {what} did not finish in 30 s")),
        Ok(Err(e)) => return Err(format!("the new binary does not run ({what}): {e}")),
        Ok(Ok(o)) => o,
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("the new binary's {what} failed ({}): {}", out.status, err.trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The new binary runs here and takes this agent's command line with
/// `--check` (it can read this device's config).
pub async fn preflight(bin: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    runs(bin, &["--version".into()], "--version").await?;
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    args.push("--check".into());
    runs(bin, &args, "config check").await.map(|_| ())
}

/// Restarts the agent as `current`'s binary; returns only if that failed.
pub fn restart(r: &Restart) -> String {
    if std::env::var_os("INVOCATION_ID").is_some() {
        tracing::info!(version = %r.version, "exiting for systemd to start the new agent");
        std::process::exit(RESTART_STATUS);
    }
    use std::os::unix::process::CommandExt;
    let bin = r.current.join(&r.name);
    tracing::info!(version = %r.version, bin = %bin.display(), "replacing this process with the new agent");
    let e = std::process::Command::new(&bin).args(std::env::args_os().skip(1)).exec();
    format!("could not start the new agent {}: {e}", bin.display())
}

/// After the restart: SUCCEEDED if this process is the new binary; else
/// `current` goes back and the reason says why.
pub fn confirm(r: &Restart) -> Result<String, String> {
    let me = std::env::current_exe().and_then(std::fs::canonicalize);
    let want = std::fs::canonicalize(&r.exe);
    let prev = r.previous.as_deref().unwrap_or("none");
    match (me, want) {
        (Ok(me), Ok(want)) if me == want => {
            Ok(format!("the agent restarted as {} {} (previous: {prev})", r.name, r.version))
        }
        (me, _) => {
            let back = switch_back(r);
            let me = me.map_or_else(|e| e.to_string(), |p| p.display().to_string());
            Err(format!(
                "after the restart the agent runs {me}, not {}; {back} (start the agent as {}/{})",
                r.exe.display(),
                r.current.display(),
                r.name
            ))
        }
    }
}

/// Points `current` back at the previous version (or removes it).
pub fn switch_back(r: &Restart) -> String {
    let done = match &r.previous {
        Some(p) => {
            crate::util::point_symlink(&r.current, Path::new(p)).map(|()| format!("current switched back to {p}"))
        }
        None => std::fs::remove_file(&r.current).map(|()| "no previous version; current removed".to_string()),
    };
    done.unwrap_or_else(|e| format!("switching back failed: {e}"))
}

pub use crate::util::version::older;
