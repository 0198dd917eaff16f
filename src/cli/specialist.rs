//! What the specialist's commands print: `tether login`, `devices`,
//! `sessions`, `session end`. Tables for people,
//! `--json` for scripts.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use crate::api::{DeviceView, SessionEnded, SessionRecord};
use crate::client::hub::HubSession;
use crate::client::{HubLogin, Profile};
use crate::config::ConfigFile;

#[derive(Subcommand)]
pub enum SessionCmd {
    /// End a live session at both relays (admin).
    End {
        id: String,
        #[arg(long)]
        profile: Option<PathBuf>,
    },
}

pub fn load(path: &Path) -> Result<Profile> {
    if !path.exists() {
        bail!(
            "no profile at {}: sign in first with `tether login --hub URL --user NAME` (it writes that file), \
             or name one with --profile",
            path.display()
        );
    }
    Profile::open(path).with_context(|| format!("profile {}", path.display()))
}

pub(super) fn hub_session(path: &Path) -> Result<HubSession> {
    Ok(HubSession::from_profile(&load(path)?)?)
}

/// A new profile: the fleet CA and the hub, written with the TOML serializer.
#[derive(serde::Serialize)]
struct NewProfile<'a> {
    ca: String,
    hub: NewHub<'a>,
}

#[derive(serde::Serialize)]
struct NewHub<'a> {
    url: &'a str,
    user: &'a str,
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
        let profile = NewProfile { ca: ca.display().to_string(), hub: NewHub { url: hub, user } };
        let text = format!("# tether profile (written by `tether login`)\n{}", toml::to_string(&profile)?);
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
        p.hub = Some(HubLogin { url, user, ..Default::default() });
    }
    if p.problems().iter().any(|x| x.contains("hub")) {
        bail!("{}", p.problems().join("; "));
    }
    let session = HubSession::from_profile(&p)?;
    let password = super::ask(&format!("password for {}: ", session.user()))?;
    let code = super::ask("6-digit code from your authenticator: ")?;
    let (_, expires_at) = session.login(&password, code.trim()).await?;
    println!(
        "logged in as {}; token valid until {}, kept in {} (0600)",
        session.user(),
        when(Some(expires_at as i64)),
        path.display()
    );
    Ok(())
}

fn when(secs: Option<i64>) -> String {
    secs.map_or_else(|| "-".into(), crate::util::clock::rfc3339)
}

fn or_dash(v: Option<&str>) -> String {
    v.filter(|s| !s.is_empty()).unwrap_or("-").to_string()
}

/// Rows under an upper-cased header, columns as wide as their widest cell.
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

pub async fn devices(path: &Path, json: bool, retired: bool) -> Result<()> {
    let query = if retired { "/api/v1/devices?retired=true" } else { "/api/v1/devices" };
    let list: Vec<DeviceView> = hub_session(path)?.get(query).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if retired {
        if list.is_empty() {
            println!("No retired devices.");
        }
        let rows = list
            .into_iter()
            .filter_map(|d| {
                let r = d.retired?;
                Some(vec![d.id, d.site, when(Some(r.at)), r.by, r.reason])
            })
            .collect::<Vec<_>>();
        if !rows.is_empty() {
            print_table(&["device", "site", "retired", "by", "why"], rows);
        }
        return Ok(());
    }
    if list.is_empty() {
        println!(
            "No device: none is registered at the hub, none is on a site you are entitled to, or those are retired \
             (admins: tether devices --retired)."
        );
        return Ok(());
    }
    let rows = list
        .into_iter()
        .map(|d| {
            let on = d.relays.iter().enumerate().map(|(i, r)| match d.transports.get(i) {
                Some(t) if !t.is_empty() => format!("{r} ({t})"),
                _ => r.clone(),
            });
            let mut status = match d.status.as_str() {
                "online" => format!("online on {}", on.collect::<Vec<_>>().join(", ")),
                _ => "offline".into(),
            };
            if let Some(o) = d.clock_offset_ms.filter(|o| d.status == "online" && crate::util::clock::skewed(*o)) {
                status += &format!("; CLOCK {}", crate::util::clock::describe_offset(o));
            }
            let cert = cert_column(d.cert_expires, d.cert_renewal.as_deref(), crate::util::now_secs());
            vec![
                d.id,
                d.site,
                status,
                when(d.last_heartbeat.map(|h| h as i64)),
                or_dash(d.agent_version.as_deref()),
                d.consent,
                cert,
            ]
        })
        .collect();
    print_table(&["device", "site", "status", "last heartbeat", "agent", "consent", "certificate"], rows);
    Ok(())
}

/// When a device's certificate expires, flagged within 30 days, with its
/// renewal while one is under way.
fn cert_column(expires: Option<u64>, renewal: Option<&str>, now: u64) -> String {
    let Some(t) = expires else { return "-".into() };
    let day = crate::util::clock::day(t);
    let mut out = match t.checked_sub(now) {
        None => format!("EXPIRED {day}"),
        Some(left) if left < 30 * 86_400 => format!("until {day} ({} days left)", left / 86_400),
        Some(_) => format!("until {day}"),
    };
    match renewal {
        Some("pending") => out += ", renewal waits for the CA (tether certs renewals)",
        Some("issued") => out += ", renewed: not yet installed",
        _ => {}
    }
    out
}

pub async fn sessions(path: &Path, json: bool, limit: u32) -> Result<()> {
    let list: Vec<SessionRecord> = hub_session(path)?.get(&format!("/api/v1/sessions?limit={limit}")).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.is_empty() {
        println!("No session yet: `tether connect DEVICE SERVICE` opens one.");
        return Ok(());
    }
    let rows = list
        .into_iter()
        .map(|x| {
            vec![
                x.id,
                x.specialist,
                format!("{}/{}", x.device, x.service),
                x.state,
                if x.transport.is_empty() { x.relay } else { format!("{} ({})", x.relay, x.transport) },
                when(Some(x.created_at)),
                format!("{}↑ {}↓", x.bytes_to_device, x.bytes_to_client),
                or_dash(x.end_reason.as_deref()),
                or_dash(Some(&x.reason)),
            ]
        })
        .collect();
    print_table(
        &["session", "specialist", "device/service", "state", "via", "started", "bytes", "why ended", "stated reason"],
        rows,
    );
    Ok(())
}

pub async fn session(cmd: SessionCmd) -> Result<()> {
    let SessionCmd::End { id, profile } = cmd;
    let hub = hub_session(&super::profile_path(profile))?;
    let _: SessionEnded = hub.post(&format!("/api/v1/sessions/{id}/end"), &()).await?;
    println!("session {id} revoked; both relays close it within a second");
    Ok(())
}
