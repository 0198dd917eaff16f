//! Installing a package: fetch and verify it, unpack it into
//! `packages/NAME/VERSION/` (a tar archive is extracted; any other file is
//! kept as `NAME`), run its install command there, switch `current` to it,
//! run its health command, and switch back to the previous version if that
//! fails. The commands come from the signed targets metadata (the offline
//! targets key vouches for them as for the bytes).
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use super::self_update::{self, Restart, older};
use crate::agent::Shared;
use crate::agent::fetch::Fetcher;
use crate::util::point_symlink as point;

const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(120);
/// Output kept from a failing command, for the job's reason.
const OUTPUT_TAIL: usize = 600;

/// What an install did.
pub enum Installed {
    /// Installed and current; what happened, in words.
    Done(String),
    /// The agent's own new binary is current: the agent must restart as it.
    Restart(Restart),
}

/// Installs `target` (`NAME@VERSION`); `Ok` and `Err` both say what happened.
pub async fn install(state: &Shared, fetcher: &mut Fetcher, job: &str, target: &str) -> Result<Installed, String> {
    let (name, version) = target.split_once('@').ok_or_else(|| format!("{target:?} is not NAME@VERSION"))?;
    let settings = state.cfg.repo.clone().ok_or("this agent has no [repo] settings")?;
    let got = {
        let _one = state.fetching.lock().await;
        fetcher.download(&format!("{name}/{version}")).await.map_err(|e| format!("download: {e}"))?
    };
    let mine = env!("CARGO_PKG_VERSION");
    if let Some(min) = got.info.min_agent.as_deref().filter(|min| older(mine, min)) {
        return Err(format!("{name} {version} needs agent {min} or newer; this agent is {mine}"));
    }
    let base = settings.packages_dir().join(name);
    let vdir = base.join(version);
    let current = base.join("current");
    let previous = std::fs::read_link(&current).ok();
    if previous.as_deref() == Some(Path::new(version)) && vdir.join(".installed").exists() {
        return Ok(Installed::Done(format!("{name} {version} is already installed and current")));
    }
    let self_update = got.info.kind.as_deref() == Some("agent");
    std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    let tmp = base.join(format!(".{version}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    if let Err(e) = unpack(&got.path, &tmp, name).await {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if self_update && let Err(e) = self_update::preflight(&tmp.join(name)).await {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(format!("the new agent failed its check before the switch: {e}"));
    }
    let was = previous.as_ref().map_or("none".to_string(), |p| p.display().to_string());
    let env = [
        ("TETHER_DEVICE", state.cfg.device.as_str()),
        ("TETHER_PACKAGE", name),
        ("TETHER_VERSION", version),
        ("TETHER_PREVIOUS", was.as_str()),
    ];
    if let Some(cmd) = &got.info.install
        && let Err(e) = shell(cmd, &tmp, &env, INSTALL_TIMEOUT).await
    {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(format!("install command failed: {e}"));
    }
    let _ = std::fs::remove_dir_all(&vdir);
    std::fs::rename(&tmp, &vdir).map_err(|e| format!("{}: {e}", vdir.display()))?;
    std::fs::write(vdir.join(".installed"), job).map_err(|e| e.to_string())?;
    point(&current, Path::new(version)).map_err(|e| format!("switching current: {e}"))?;
    if self_update {
        let previous = previous.map(|p| p.display().to_string());
        let exe = vdir.join(name);
        return Ok(Installed::Restart(Restart { name: name.into(), version: version.into(), previous, exe, current }));
    }
    if let Some(cmd) = &got.info.health
        && let Err(e) = shell(cmd, &vdir, &env, HEALTH_TIMEOUT).await
    {
        let back = match &previous {
            Some(p) => point(&current, p).map(|()| format!("rolled back to {}", p.display())),
            None => std::fs::remove_file(&current).map(|()| "no previous version; current removed".to_string()),
        }
        .unwrap_or_else(|e| format!("rollback failed: {e}"));
        state.audit.record(
            "package_rolled_back",
            json!({"device": state.cfg.device, "job": job, "package": name, "version": version, "previous": was, "detail": back}),
        );
        return Err(format!("health check failed: {e}; {back}"));
    }
    state.audit.record(
        "package_installed",
        json!({"device": state.cfg.device, "job": job, "package": name, "version": version, "previous": was, "sha256": got.sha256}),
    );
    Ok(Installed::Done(format!("installed {name} {version} (previous: {was})")))
}

/// A POSIX tar archive says `ustar` at byte 257.
fn is_tar(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut magic = [0u8; 5];
    std::fs::File::open(path)
        .and_then(|mut f| f.seek(SeekFrom::Start(257)).and_then(|_| f.read_exact(&mut magic)))
        .is_ok()
        && &magic == b"ustar"
}

async fn unpack(artifact: &Path, into: &Path, name: &str) -> Result<(), String> {
    if !is_tar(artifact) {
        return std::fs::copy(artifact, into.join(name)).map(|_| ()).map_err(|e| format!("copying the package: {e}"));
    }
    // --no-same-owner, and no absolute or `..` paths (GNU tar strips them).
    let out = tokio::process::Command::new("tar")
        .args(["-x", "--no-same-owner", "-f"])
        .arg(artifact)
        .arg("-C")
        .arg(into)
        .output()
        .await
        .map_err(|e| format!("running tar: {e}"))?;
    if !out.status.success() {
        return Err(format!("unpacking failed: {}", tail(&out.stderr)));
    }
    Ok(())
}

/// Runs `sh -c cmd` in `dir`; the error names the exit status and the end of
/// its output.
async fn shell(cmd: &str, dir: &Path, env: &[(&str, &str)], limit: Duration) -> Result<(), String> {
    let out = super::checks::sh(cmd, Some(dir), env, limit).await?;
    if out.status.success() {
        return Ok(());
    }
    let mut both = out.stdout;
    both.extend_from_slice(&out.stderr);
    match tail(&both) {
        t if t.is_empty() => Err(out.status.to_string()),
        t => Err(format!("{} ({t})", out.status)),
    }
}

fn tail(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim();
    let start = s.len().saturating_sub(OUTPUT_TAIL);
    let start = (start..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(s.len());
    s[start..].to_string()
}
