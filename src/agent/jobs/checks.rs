//! `run CHECK` jobs: a command from the device's own allow-list
//! (`[checks.NAME]` in agent.toml), its output capped and returned with the
//! job. The hub names a check, never a command.
use std::time::Duration;

use crate::agent::config::Check;
use crate::proto::repo::MAX_OUTPUT;

/// Runs the check: (succeeded, what happened, output).
pub async fn run(c: &Check) -> (bool, String, String) {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&c.command)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let limit = Duration::from_secs(c.timeout_secs.max(1));
    let out = match tokio::time::timeout(limit, child).await {
        Err(_) => return (false, format!("timed out after {limit:?}"), String::new()),
        Ok(Err(e)) => return (false, format!("cannot run it: {e}"), String::new()),
        Ok(Ok(o)) => o,
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
