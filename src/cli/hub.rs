//! `tether hub`: run the hub, or administer its accounts, devices and sites
//! on the hub host, against its database.
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Subcommand;

use crate::config::ConfigFile;
use crate::hub;

#[derive(Subcommand)]
pub enum HubCmd {
    /// Specialist accounts.
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Devices.
    Device {
        #[command(subcommand)]
        cmd: DeviceCmd,
    },
    /// Customer sites: where specialists may connect from, ticket rule.
    Site {
        #[command(subcommand)]
        cmd: SiteCmd,
    },
    /// Copy the SQLite database, consistent, while the hub runs (PostgreSQL: pg_dump).
    Backup {
        /// The new file to write (0600).
        to: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Add an account: prompts for a password, prints the TOTP enrolment URI and QR code.
    Add {
        name: String,
        #[arg(long, value_parser = ["viewer", "engineer", "admin"])]
        role: String,
        /// Sites the account is entitled to (repeatable).
        #[arg(long = "site")]
        sites: Vec<String>,
    },
    /// Entitle an account to a site.
    Entitle {
        name: String,
        site: String,
    },
    Disable {
        name: String,
    },
    Enable {
        name: String,
    },
    /// Set a new password (prompts).
    Passwd {
        name: String,
    },
    List,
}

#[derive(Subcommand)]
pub enum DeviceCmd {
    Add {
        id: String,
        #[arg(long)]
        site: String,
        #[arg(long, default_value = "auto", value_parser = ["auto", "required"])]
        consent: String,
    },
    /// Change a device's site or consent policy (for sessions granted from now on).
    Set {
        id: String,
        #[arg(long)]
        site: Option<String>,
        #[arg(long, value_parser = ["auto", "required"])]
        consent: Option<String>,
    },
    /// Take a device out of service for good (sold, scrapped, handed over):
    /// its sessions are revoked, its unfinished jobs cancelled, and nobody
    /// is granted a session with it, gives it a job or renews its certificate.
    Retire {
        id: String,
        /// Why (kept in the audit log and shown on the device's page).
        #[arg(long)]
        reason: String,
    },
    /// Put a retired device back in service.
    Reinstate { id: String },
    /// Every device in service: site and consent policy.
    List {
        /// The retired devices instead: when, by whom, why.
        #[arg(long)]
        retired: bool,
    },
}

#[derive(Subcommand)]
pub enum SiteCmd {
    /// Create or change a site.
    Set {
        name: String,
        /// Comma-separated CIDR blocks specialists must connect from ("" = anywhere).
        #[arg(long)]
        allow_from: Option<String>,
        #[arg(long)]
        require_ticket: Option<bool>,
    },
}

pub async fn run(config: &Path, check: bool, cmd: Option<HubCmd>) -> Result<()> {
    let cfg = hub::HubConfig::load(config)?;
    let Some(cmd) = cmd else {
        if check {
            return super::check::hub(config, &cfg).await;
        }
        super::check::at_start((&cfg.cert, &cfg.key), crate::tls::Role::Hub, None, (&cfg.ca, cfg.crl.as_deref()))?;
        let stop = super::shutdown_on_signal();
        crate::tls::catch_sighup();
        let tls = hub::prepare(&cfg)?;
        // Listening first: a port already taken stops the start now, and
        // while the database does not answer, requests are told so (503).
        let listener = hub::bind(&cfg).await?;
        let (addr, place) = (listener.local_addr()?, cfg.database_place().to_string());
        let serving = |_: &hub::Hub| println!("hub listening on https://{addr} (database {place})");
        return Ok(hub::run(listener, cfg, tls, stop, serving).await?);
    };
    let admin = hub::admin::Admin::open(&cfg).await?;
    match cmd {
        HubCmd::Backup { to } => {
            admin.store.backup_to(&to).await?;
            let copy = hub::store::Store::open(&format!("sqlite:{}", to.display()), Path::new(".")).await?;
            let sessions = copy.sessions(None, i64::MAX).await?.len();
            let lines = copy.audit_since(0, i64::MAX).await?.join("\n");
            let records = crate::audit::verify_lines(std::io::Cursor::new(lines), crate::audit::GENESIS, 0)
                .map_err(|(line, why)| anyhow::anyhow!("the copy's audit chain breaks at record {line}: {why}"))?;
            println!(
                "backed up to {}: {sessions} session records; the audit chain's {records} records verify",
                to.display()
            );
        }
        HubCmd::User { cmd } => user(&admin, cmd).await?,
        HubCmd::Device { cmd } => device(&admin, cmd).await?,
        HubCmd::Site { cmd: SiteCmd::Set { name, allow_from, require_ticket } } => {
            let s = admin.site_set(&name, allow_from.as_deref(), require_ticket).await?;
            let from = if s.allow_from.is_empty() { "anywhere".to_string() } else { s.allow_from_text() };
            println!(
                "site {name}: specialists from {from}; ticket {}",
                if s.require_ticket { "required" } else { "optional" }
            );
        }
    }
    Ok(())
}

async fn user(admin: &hub::admin::Admin, cmd: UserCmd) -> Result<()> {
    match cmd {
        UserCmd::Add { name, role, sites } => {
            let password = super::ask(&format!("new password for {name}: "))?;
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) && super::ask("again: ")? != password {
                bail!("the passwords differ");
            }
            let secret = admin.user_add(&name, role.parse().map_err(anyhow::Error::msg)?, &password, &sites).await?;
            println!(
                "added {name} ({role}){}",
                if sites.is_empty() { String::new() } else { format!(", sites: {}", sites.join(", ")) }
            );
            print!("{}", hub::admin::enrolment(&admin.issuer, &name, &secret));
        }
        UserCmd::Entitle { name, site } => {
            admin.entitle(&name, &site).await?;
            println!("{name} is entitled to site {site}");
        }
        UserCmd::Disable { name } => {
            admin.set_disabled(&name, true).await?;
            println!("{name} disabled; its tokens admit nothing from now on");
        }
        UserCmd::Enable { name } => {
            admin.set_disabled(&name, false).await?;
            println!("{name} enabled");
        }
        UserCmd::Passwd { name } => {
            let password = super::ask(&format!("new password for {name}: "))?;
            admin.set_password(&name, &password).await?;
            println!("password of {name} changed; its login tokens are revoked");
        }
        UserCmd::List => {
            for u in admin.store.users().await? {
                let sites = admin.store.entitlements(&u.name).await?.join(",");
                println!("{}\t{}\t{}\t{}", u.name, u.role, if u.disabled { "disabled" } else { "enabled" }, sites);
            }
        }
    }
    Ok(())
}

async fn device(admin: &hub::admin::Admin, cmd: DeviceCmd) -> Result<()> {
    match cmd {
        DeviceCmd::Add { id, site, consent } => {
            admin.device_add(&id, &site, &consent).await?;
            println!("added device {id} at site {site} (consent {consent})");
        }
        DeviceCmd::Set { id, site, consent } => {
            if site.is_none() && consent.is_none() {
                bail!("nothing to change: give --site SITE or --consent auto|required");
            }
            let (was, now) = admin.device_set(&id, site.as_deref(), consent.as_deref()).await?;
            if was == now {
                println!("device {id}: site {}, consent {}; nothing changed", now.site, now.consent);
                return Ok(());
            }
            println!(
                "device {id}: site {}, consent {} (was site {}, consent {}); sessions granted from now on follow it, \
                 live ones go on",
                now.site, now.consent, was.site, was.consent
            );
        }
        DeviceCmd::Retire { id, reason } => {
            let r = admin.device_retire(&id, &reason).await?;
            print!("{}", retired_text(&r));
        }
        DeviceCmd::Reinstate { id } => {
            let d = admin.device_reinstate(&id).await?;
            println!(
                "device {id} is back in service at site {} (consent {}); sessions and jobs the retirement ended \
                 stay ended. If its certificate was revoked, it needs a new one (tether certs device) before it \
                 can attach.",
                d.site, d.consent
            );
        }
        DeviceCmd::List { retired: true } => {
            let devices = admin.store.devices_retired().await?;
            if devices.is_empty() {
                println!("No retired devices.");
            }
            for d in devices {
                let r = d.retired.as_ref().map(hub::model::Retired::describe).unwrap_or_default();
                println!("{}  site {}  {r}", d.id, d.site);
            }
        }
        DeviceCmd::List { retired: false } => {
            let devices = admin.store.devices_for("", true).await?;
            let retired = admin.store.devices_retired().await?.len();
            if devices.is_empty() && retired == 0 {
                println!("No devices yet: tether hub device add ID --site SITE");
            } else if devices.is_empty() {
                println!("No device in service.");
            }
            let w = devices.iter().map(|d| d.id.len()).max().unwrap_or(0).max(6);
            let ws = devices.iter().map(|d| d.site.len()).max().unwrap_or(0).max(4);
            if !devices.is_empty() {
                println!("{:w$}  {:ws$}  CONSENT", "DEVICE", "SITE");
            }
            for d in devices {
                println!("{:w$}  {:ws$}  {}", d.id, d.site, d.consent);
            }
            if retired > 0 {
                let s = if retired == 1 { "" } else { "s" };
                println!("({retired} retired device{s} not listed: tether hub device list --retired)");
            }
        }
    }
    Ok(())
}

/// What `device retire` did, and what is left for the operator to do.
fn retired_text(r: &hub::retire::Retirement) -> String {
    let id = &r.device.id;
    let mut out = match (&r.device.retired, r.finishing) {
        (Some(was), true) => format!(
            "device {id} was {}, but that retirement left something open (cut short, or raced by a grant or \
             a job); closed now:\n",
            was.describe()
        ),
        _ => format!("device {id} retired: nobody is granted a session with it from now on.\n"),
    };
    let sessions: Vec<String> = r.sessions.iter().map(|s| s.0.clone()).collect();
    out += &listed(
        &sessions,
        "no session was open",
        "revoked",
        "session",
        " (the relays end them within 5 s: the running hub looks every 5 s)",
    );
    let jobs: Vec<String> = r.jobs.iter().map(|j| format!("{} ({} {})", j.id, j.kind.as_str(), j.target)).collect();
    out += &listed(&jobs, "no job was waiting", "cancelled", "job", "");
    out.push_str(&format!(
        "The relays drop its channels and refuse it once the running hub tells them (within 5 s). Revoke its \
         certificate too, with every certificate revoked before (a CRL lists only those it is given), and give \
         the CRL to the relays and the hub: that holds even where a relay cannot reach the hub:\n  \
         tether certs revoke --ca DIR --out fleet.crl.pem REVOKED-BEFORE.pem… {id}.pem\n"
    ));
    out
}

/// "  revoked 2 sessions: a, b…" or `none`, on a line.
fn listed(items: &[String], none: &str, verb: &str, noun: &str, after: &str) -> String {
    match items.len() {
        0 => format!("  {none}\n"),
        n => format!("  {verb} {n} {noun}{}: {}{after}\n", if n == 1 { "" } else { "s" }, items.join(", ")),
    }
}
