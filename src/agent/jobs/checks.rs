//! `run CHECK` jobs: a command from the device's own allow-list
//! (`[checks.NAME]` in agent.toml), its output capped and returned with the
//! job. The hub names a check, never a command.
use std::path::Path;
use std::time::Duration;

use crate::agent::config::Check;
use crate::proto::repo::MAX_OUTPUT;

/// Runs `sh -c cmd` (in `dir`, if given, with `env` added) for at most
/// `limit`; the error says why it did not run to its end. Installs and
/// health checks use it too.
pub async fn sh(
    cmd: &str,
    dir: Option<&Path>,
    env: &[(&str, &str)],
    limit: Duration,
) -> Result<std::process::Output, String> {
    let mut c = tokio::process::Command::new("sh");
    c.arg("-c").arg(cmd).stdin(std::process::Stdio::null()).kill_on_drop(true);
    c.envs(env.iter().copied());
    if let Some(d) = dir {
        c.current_dir(d);
    }
    match tokio::time::timeout(limit, c.output()).await {
        Err(_) => Err(format!("timed out after {limit:?}")),
        Ok(Err(e)) => Err(format!("cannot run it: {e}")),
        Ok(Ok(o)) => Ok(o),
    }
}

/// Runs the check with `TETHER_DEVICE` set: (succeeded, what happened, output).
pub async fn run(c: &Check, device: &str) -> (bool, String, String) {
    let env = [("TETHER_DEVICE", device)];
    let out = match sh(&c.command, None, &env, Duration::from_secs(c.timeout_secs.max(1))).await {
        Err(why) => return (false, why, String::new()),
        Ok(o) => o,
    };
    let mut both = out.stdout;
    both.extend_from_slice(&out.stderr);
    let total = both.len();
    both.truncate(MAX_OUTPUT);
    let mut text = String::from_utf8_lossy(&both).into_owned();
    while text.len() > MAX_OUTPUT {
        text.pop();
    }
    let cut = if total > MAX_OUTPUT { format!("; output cut to {MAX_OUTPUT} of {total} bytes") } else { String::new() };
    (out.status.success(), format!("{}{cut}", out.status), text)
}
