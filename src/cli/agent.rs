//! `tether agent`: run the device agent, or talk to a running one over its
//! operator socket (`pending`, `approve`, `deny`, `end`, `sessions`, `metrics`,
//! `fetch`).
//! The person at the device reads tables (`--json` prints the agent's answer
//! as is) and may answer requests as they come (`pending --watch`).
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::agent::{self, operator::Request};
use crate::config::ConfigFile;

/// How the operator's answers are printed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Output {
    pub json: bool,
    pub watch: bool,
}

pub async fn run(config: &Path, check: bool, cmd: Option<Request>, out: Output) -> Result<()> {
    let cfg = agent::AgentConfig::load(config)?;
    match cmd {
        None if check => super::check::agent(config, &cfg),
        None => {
            // A renewal a crash interrupted puts the new pair in place first.
            agent::finish_renewal(&cfg)?;
            let fleet = (cfg.ca.as_path(), cfg.crl.as_deref());
            super::check::at_start((&cfg.cert, &cfg.key), crate::tls::Role::Device, Some(&cfg.device), fleet)?;
            crate::tls::catch_sighup();
            Ok(agent::run(cfg, super::shutdown_on_signal()).await?)
        }
        Some(Request::Pending) if out.watch => watch(&cfg.operator_socket).await,
        Some(_) if out.watch => bail!("--watch goes with pending: tether agent pending --watch"),
        Some(req) => operator(&cfg.operator_socket, req, out.json).await,
    }
}

async fn ask(socket: &Path, req: &Request) -> Result<Value> {
    let answer = agent::operator::request(socket, req)
        .await
        .with_context(|| format!("talking to the agent at {}", socket.display()))?;
    if answer["ok"] != true {
        bail!("{}", answer["error"].as_str().unwrap_or("the agent refused"));
    }
    Ok(answer)
}

async fn operator(socket: &Path, req: Request, json: bool) -> Result<()> {
    let answer = ask(socket, &req).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    match &req {
        Request::Metrics => print!("{}", answer["text"].as_str().unwrap_or_default()),
        Request::Pending => print!("{}", pending_text(&answer)),
        Request::Sessions => print!("{}", sessions_text(&answer)),
        Request::Approve { session } => println!("Approved {session}."),
        Request::Deny { session } => println!("Denied {session}."),
        Request::End { session } => println!("Ended session {session}."),
        Request::Fetch { .. } => print!("{}", fetched_text(&answer)),
    }
    Ok(())
}

/// What `fetch` got: the target, its size and digest as the signed targets
/// name them, how much came through the relays now, and where it is.
fn fetched_text(answer: &Value) -> String {
    let d = &answer["fetched"];
    let n = |k: &str| d[k].as_u64().unwrap_or(0);
    let how = match (n("fetched"), n("resumes")) {
        (0, _) => "already here and verified again: nothing fetched".to_string(),
        (got, 0) => format!("{got} bytes fetched through the relays"),
        (got, r) => format!("{got} bytes fetched through the relays, resumed {r} times"),
    };
    format!(
        "{}: {} bytes, sha256 {}, as the signed targets name it ({how})\n  at {}\n",
        s(d, "name"),
        n("length"),
        s(d, "sha256"),
        s(d, "path")
    )
}

fn list(answer: &Value, key: &str) -> Vec<Value> {
    answer[key].as_array().cloned().unwrap_or_default()
}

fn s(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(t) => t.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `12 s`, `3 min 4 s`, `2 h 5 min`.
fn ago(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min {} s", secs / 60, secs % 60),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

fn secs(v: &Value, key: &str) -> String {
    ago(v[key].as_u64().unwrap_or(0))
}

/// Columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&width).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out += &line(r.clone());
    }
    out
}

fn pending_text(answer: &Value) -> String {
    let (access, jobs) = (list(answer, "pending"), list(answer, "jobs"));
    if access.is_empty() && jobs.is_empty() {
        return "Nothing is waiting for your consent.\n".into();
    }
    let mut out = String::new();
    if !access.is_empty() {
        let rows: Vec<Vec<String>> = access
            .iter()
            .map(|p| {
                let who = format!("{} ({})", s(p, "specialist"), s(p, "role"));
                vec![s(p, "session"), who, s(p, "service"), reason(p, 48), s(p, "relay"), secs(p, "waiting_secs")]
            })
            .collect();
        out += "Access requests waiting for your consent:\n";
        out += &table(&["SESSION", "SPECIALIST", "SERVICE", "REASON", "VIA", "WAITING"], &rows);
    }
    if !jobs.is_empty() {
        let rows: Vec<Vec<String>> = jobs
            .iter()
            .map(|j| vec![s(j, "job"), s(j, "kind"), s(j, "target"), s(j, "by"), secs(j, "waiting_secs")])
            .collect();
        if !out.is_empty() {
            out.push('\n');
        }
        out += "Maintenance jobs waiting for your consent:\n";
        out += &table(&["JOB", "KIND", "TARGET", "BY", "WAITING"], &rows);
    }
    out + "\nAnswer with: tether agent approve ID, or tether agent deny ID (or: tether agent pending --watch)\n"
}

/// The request's reason (and ticket) as the hub signed it, cut to `max`
/// characters; a dash when the hub sent none (an older hub).
fn reason(p: &Value, max: usize) -> String {
    let r: String = s(p, "reason").chars().filter(|c| !c.is_control()).collect();
    match r.chars().count() {
        0 => "-".into(),
        n if n > max => r.chars().take(max - 1).chain(['…']).collect(),
        _ => r,
    }
}

fn sessions_text(answer: &Value) -> String {
    let live = list(answer, "sessions");
    if live.is_empty() {
        return "No live session.\n".into();
    }
    let rows: Vec<Vec<String>> = live
        .iter()
        .map(|l| {
            vec![s(l, "session"), s(l, "specialist"), s(l, "service"), s(l, "relay"), secs(l, "secs"), s(l, "tunnels")]
        })
        .collect();
    table(&["SESSION", "SPECIALIST", "SERVICE", "VIA", "FOR", "TUNNELS"], &rows)
        + "\nEnd one with: tether agent end SESSION\n"
}

/// The first request not answered here yet: (id, description).
fn next_request(answer: &Value, answered: &HashSet<String>) -> Option<(String, String)> {
    let access = list(answer, "pending").into_iter().map(|p| {
        let text = format!(
            "Access request {}\n  specialist  {} ({})\n  service     {}\n  reason      {}\n  via         {}\n  waiting     {}\n",
            s(&p, "session"),
            s(&p, "specialist"),
            s(&p, "role"),
            s(&p, "service"),
            reason(&p, 200),
            s(&p, "relay"),
            secs(&p, "waiting_secs")
        );
        (s(&p, "session"), text)
    });
    let jobs = list(answer, "jobs").into_iter().map(|j| {
        let text = format!(
            "Maintenance job {}\n  kind        {}\n  target      {}\n  queued by   {}\n  waiting     {}\n",
            s(&j, "job"),
            s(&j, "kind"),
            s(&j, "target"),
            s(&j, "by"),
            secs(&j, "waiting_secs")
        );
        (s(&j, "job"), text)
    });
    access.chain(jobs).find(|(id, _)| !answered.contains(id))
}

/// Waits for each next request and asks yes or no at the terminal, until
/// Ctrl-C or the end of input.
async fn watch(socket: &Path) -> Result<()> {
    println!("Watching for requests at this device. Ctrl-C to stop.");
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    let mut answered = HashSet::new();
    let mut idle = true;
    loop {
        let answer = ask(socket, &Request::Pending).await?;
        let Some((id, text)) = next_request(&answer, &answered) else {
            if !idle {
                println!("Waiting for the next request…");
                idle = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => continue,
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        };
        idle = false;
        println!("\n{text}");
        let allow = loop {
            print!("Approve? [y]es / [n]o: ");
            std::io::stdout().flush()?;
            let line = tokio::select! {
                l = input.next_line() => l?,
                _ = tokio::signal::ctrl_c() => return Ok(()),
            };
            match line.as_deref().map(|l| l.trim().to_ascii_lowercase()) {
                None => return Ok(()), // end of input
                Some(a) if a == "y" || a == "yes" => break true,
                Some(a) if a == "n" || a == "no" => break false,
                Some(_) => println!("Please answer y or n."),
            }
        };
        answered.insert(id.clone());
        let req = if allow { Request::Approve { session: id } } else { Request::Deny { session: id } };
        match ask(socket, &req).await {
            Ok(_) if allow => println!("Approved: the session opens now."),
            Ok(_) => println!("Denied: the specialist is told so."),
            Err(e) => println!("Too late: {e} (it timed out or was answered elsewhere)."),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_line_up_and_name_what_is_waiting() {
        let answer = json!({"ok": true, "pending": [
            {"session": "aa11", "specialist": "alice", "role": "engineer", "service": "ssh", "relay": "relay-a", "waiting_secs": 75, "reason": "CHG-1881: pressure\u{1b}[2J fault"},
        ], "jobs": [{"job": "job-7", "kind": "install", "target": "tool@2", "by": "boss", "waiting_secs": 3}]});
        let text = pending_text(&answer);
        assert!(
            text.contains("SESSION  SPECIALIST        SERVICE  REASON                       VIA      WAITING\n"),
            "{text}"
        );
        assert!(
            text.contains("aa11     alice (engineer)  ssh      CHG-1881: pressure[2J fault  relay-a  1 min 15 s\n"),
            "{text}"
        );
        assert!(text.contains("job-7  install  tool@2  boss  3 s\n"), "{text}");
        assert_eq!(pending_text(&json!({"pending": [], "jobs": []})), "Nothing is waiting for your consent.\n");
        assert_eq!(sessions_text(&json!({"sessions": []})), "No live session.\n");
        assert_eq!(ago(7300), "2 h 1 min");
        let mut seen = HashSet::new();
        assert_eq!(next_request(&answer, &seen).unwrap().0, "aa11");
        seen.insert("aa11".to_string());
        assert_eq!(next_request(&answer, &seen).unwrap().0, "job-7");
    }
}
