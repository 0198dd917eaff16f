//! What the specialist's commands print: `tether login`, `devices`,
//! `sessions`, `session end`, `audit export`. Tables for people, `--json`
//! for scripts.
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use hyper::Method;
use serde_json::Value;

use super::Profile;
use super::hub::HubSession;
use crate::config::ConfigFile;

/// `--profile`, else `$TETHER_PROFILE`, else `~/.config/tether/profile.toml`.
pub fn profile_path(given: Option<PathBuf>) -> PathBuf {
    given.or_else(|| std::env::var_os("TETHER_PROFILE").map(PathBuf::from)).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| ".".into());
        home.join(".config/tether/profile.toml")
    })
}

pub fn load(path: &Path) -> Result<Profile> {
    Profile::open(path).with_context(|| format!("profile {}", path.display()))
}

/// Reads a secret: hidden at a terminal, else one line of stdin (scripts, tests).
pub fn ask(prompt: &str) -> Result<String> {
    if std::io::stdin().is_terminal() {
        return Ok(rpassword::prompt_password(prompt)?);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// `tether login`: writes (or updates) the profile, then logs in.
pub async fn login(path: &Path, hub: Option<String>, user: Option<String>, ca: Option<PathBuf>) -> Result<()> {
    if !path.exists() {
        let (Some(hub), Some(user), Some(ca)) = (&hub, &user, &ca) else {
            bail!("{} does not exist: give --hub, --user and --ca to create it", path.display());
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let ca = std::fs::canonicalize(ca).with_context(|| format!("--ca {}", ca.display()))?;
        let text = format!(
            "# tether profile (written by `tether login`)\nca = {:?}\n\n[hub]\nurl = {hub:?}\nuser = {user:?}\n",
            ca.display().to_string()
        );
        crate::tls::pki::write_file(path, &text, true)?;
    }
    let mut p = load(path)?;
    if let Some(h) = p.hub.as_mut() {
        if let Some(url) = hub {
            h.url = url;
        }
        if let Some(u) = user {
            h.user = u;
        }
    } else {
        let (Some(url), Some(user)) = (hub, user) else {
            bail!("{} has no [hub]: give --hub and --user", path.display())
        };
        p.hub = Some(super::HubLogin { url, user, ..Default::default() });
    }
    if p.problems().iter().any(|x| x.contains("hub")) {
        bail!("{}", p.problems().join("; "));
    }
    let session = HubSession::from_profile(&p)?;
    let password = ask(&format!("password for {}: ", session.user()))?;
    let code = ask("6-digit code from your authenticator: ")?;
    let (_, expires_at) = session.login(&password, code.trim()).await?;
    let until = time::OffsetDateTime::from_unix_timestamp(expires_at as i64)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default();
    println!("logged in as {}; token valid until {until}, kept in {} (0600)", session.user(), path.display());
    Ok(())
}

fn when(secs: Option<i64>) -> String {
    secs.and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "-".into())
}

fn print_table(head: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(head.iter().map(|h| h.to_uppercase()).collect());
    for r in rows {
        line(r);
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub async fn devices(path: &Path, json: bool) -> Result<()> {
    let hub = HubSession::from_profile(&load(path)?)?;
    let v = hub.call(Method::GET, "/api/v1/devices", None).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let rows = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    let relays = d["relays"]
                        .as_array()
                        .map(|r| r.iter().map(s).collect::<Vec<_>>().join(","))
                        .unwrap_or_default();
                    let status = if d["status"] == "online" { format!("online on {relays}") } else { "offline".into() };
                    vec![
                        s(&d["id"]),
                        s(&d["site"]),
                        status,
                        when(d["last_heartbeat"].as_i64()),
                        s(&d["agent_version"]),
                        s(&d["consent"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    print_table(&["device", "site", "status", "last heartbeat", "agent", "consent"], rows);
    Ok(())
}

pub async fn sessions(path: &Path, json: bool, limit: u32) -> Result<()> {
    let hub = HubSession::from_profile(&load(path)?)?;
    let v = hub.call(Method::GET, &format!("/api/v1/sessions?limit={limit}"), None).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let rows = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    vec![
                        s(&x["id"]),
                        s(&x["specialist"]),
                        format!("{}/{}", s(&x["device"]), s(&x["service"])),
                        s(&x["state"]),
                        when(x["created_at"].as_i64()),
                        format!("{}↑ {}↓", s(&x["bytes_to_device"]), s(&x["bytes_to_client"])),
                        s(&x["end_reason"]),
                        s(&x["reason"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    print_table(&["session", "specialist", "device/service", "state", "started", "bytes", "ended", "reason"], rows);
    Ok(())
}

pub async fn session_end(path: &Path, id: &str) -> Result<()> {
    let hub = HubSession::from_profile(&load(path)?)?;
    hub.call(Method::POST, &format!("/api/v1/sessions/{id}/end"), None).await?;
    println!("session {id} revoked; both relays close it within a second");
    Ok(())
}

pub async fn audit_export(path: &Path, since: &str, out: Option<&Path>) -> Result<()> {
    let Some(t) = crate::hub::api_since(since) else {
        bail!("--since: RFC 3339 time (2026-11-29T00:00:00Z) or unix seconds")
    };
    let hub = HubSession::from_profile(&load(path)?)?;
    let text = hub.text(&format!("/api/v1/audit?since={t}")).await?;
    match out {
        Some(p) => {
            crate::tls::pki::write_file(p, &text, true)?;
            eprintln!("wrote {} records to {}", text.lines().count(), p.display());
        }
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    Ok(())
}
