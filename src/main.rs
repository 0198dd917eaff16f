//! The `tether` command tree. Parsing only; the work is in the library.
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tether::config::ConfigFile;
use tether::{agent, client, dev, hub, relay, tls};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "tether", version, about = "Remote-service connectivity for fleets of medical devices")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the whole system locally on dev certificates (init if needed, then up).
    Dev {
        #[command(subcommand)]
        cmd: Option<DevCmd>,
        /// Folder holding the dev setup.
        #[arg(long, default_value = "tether-dev", global = true)]
        dir: PathBuf,
    },
    /// Generate fleet PKI material (dev and tests).
    Certs {
        #[command(subcommand)]
        cmd: CertsCmd,
    },
    /// Run a relay.
    Relay {
        #[arg(long)]
        config: PathBuf,
        /// Validate the config and exit.
        #[arg(long)]
        check: bool,
    },
    /// Run the device agent, or talk to a running one as its on-site operator.
    Agent {
        #[arg(long, default_value = "/etc/tether/agent.toml")]
        config: PathBuf,
        #[arg(long)]
        check: bool,
        #[command(subcommand)]
        cmd: Option<AgentCmd>,
    },
    /// Run the hub, or administer its accounts, sites and devices.
    Hub {
        #[arg(long, default_value = "/etc/tether/hub.toml", global = true)]
        config: PathBuf,
        /// Validate the config and exit.
        #[arg(long)]
        check: bool,
        #[command(subcommand)]
        cmd: Option<HubCmd>,
    },
    /// Log in to the hub (password and 6-digit code); the token goes in the profile (0600).
    Login {
        /// Profile file (default $TETHER_PROFILE or ~/.config/tether/profile.toml).
        #[arg(long)]
        profile: Option<PathBuf>,
        #[arg(long)]
        hub: Option<String>,
        #[arg(long)]
        user: Option<String>,
        /// Fleet CA the hub's and relays' certificates chain to (creating a profile).
        #[arg(long)]
        ca: Option<PathBuf>,
    },
    /// Devices you are entitled to: online on which relay, last heartbeat, agent version.
    Devices {
        #[arg(long)]
        profile: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Your sessions, live and past (admins: everyone's).
    Sessions {
        #[arg(long)]
        profile: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Admin: act on one session.
    Session {
        #[command(subcommand)]
        cmd: SessionCmd,
    },
    /// Expose DEVICE's SERVICE on a local port, like `ssh -L`.
    Connect {
        #[arg(long)]
        profile: Option<PathBuf>,
        device: String,
        service: String,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Why (kept in the session record; shown on site). May carry the ticket.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Load generator against running relays (benchmarks).
    Loadgen {
        #[command(subcommand)]
        cmd: tether::loadgen::LoadCmd,
    },
}

#[derive(Subcommand)]
enum DevCmd {
    /// Write dev PKI and configs.
    Init {
        /// Extra services for the agent's allow-list, NAME=HOST:PORT.
        #[arg(long = "service")]
        services: Vec<String>,
        #[arg(long, default_value = "auto", value_parser = ["auto", "required"])]
        consent: String,
    },
    /// Start relays, agent and echo service from an initialised folder.
    Up,
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Fleet CA, two relay certs, the grant-signing key and device `demo-1`.
    Init {
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a device certificate from the CA in `--ca`.
    Device {
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        id: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a CRL revoking the given certificates.
    Revoke {
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        out: PathBuf,
        certs: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AgentCmd {
    /// List access requests waiting for consent.
    Pending,
    /// List live sessions.
    Sessions,
    /// Approve a waiting request.
    Approve { session: String },
    /// Deny a waiting request.
    Deny { session: String },
    /// End a live session now.
    End { session: String },
    /// Print the agent's metrics.
    Metrics,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check an audit log's hash chain; names the first altered, missing or reordered record.
    Verify { file: PathBuf },
    /// Admin: the hub's audit records since a time, as JSON lines (for a SIEM).
    Export {
        /// RFC 3339 time or unix seconds.
        #[arg(long)]
        since: String,
        #[arg(long)]
        profile: Option<PathBuf>,
        /// Write here (0600) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SessionCmd {
    /// End a live session at both relays (admin).
    End {
        id: String,
        #[arg(long)]
        profile: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum HubCmd {
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
}

#[derive(Subcommand)]
enum UserCmd {
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
enum DeviceCmd {
    Add {
        id: String,
        #[arg(long)]
        site: String,
        #[arg(long, default_value = "auto", value_parser = ["auto", "required"])]
        consent: String,
    },
}

#[derive(Subcommand)]
enum SiteCmd {
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

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run(cli))
}

/// A token cancelled on the first SIGINT/SIGTERM; the second exits at once.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        for n in 0..2 {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            if n == 0 {
                tracing::info!("shutting down (signal again to exit at once)");
                t.cancel();
            } else {
                std::process::exit(130);
            }
        }
    });
    token
}

async fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Dev { cmd, dir } => match cmd {
            Some(DevCmd::Init { services, consent }) => {
                let services = services
                    .iter()
                    .map(|s| {
                        s.split_once('=')
                            .map(|(a, b)| (a.to_string(), b.to_string()))
                            .context("--service takes NAME=HOST:PORT")
                    })
                    .collect::<Result<_>>()?;
                dev::init(&dir, &dev::InitOptions { services, consent }).await?;
                println!("wrote dev setup to {}", dir.display());
                Ok(())
            }
            Some(DevCmd::Up) => dev::up(&dir, shutdown_on_signal()).await,
            None => {
                if !dir.join("hub.toml").exists() {
                    dev::init(&dir, &dev::InitOptions { services: vec![], consent: "auto".into() }).await?;
                    println!("wrote dev setup to {}", dir.display());
                }
                dev::up(&dir, shutdown_on_signal()).await
            }
        },
        Cmd::Certs { cmd } => certs(cmd),
        Cmd::Relay { config, check } => {
            let cfg = relay::RelayConfig::load(&config)?;
            if check {
                println!("{}: ok", config.display());
                return Ok(());
            }
            let listeners = relay::Listeners::bind(&cfg).await?;
            let a = listeners.addrs();
            let twin = a.twin.map(|t| format!(" twin={t}")).unwrap_or_default();
            println!(
                "relay {} listening control={} data={} client={} admin={}{twin}",
                cfg.name, a.control, a.data, a.client, a.admin
            );
            relay::run(listeners, cfg, shutdown_on_signal()).await?;
            Ok(())
        }
        Cmd::Agent { config, check, cmd } => {
            let cfg = agent::AgentConfig::load(&config)?;
            match cmd {
                None if check => {
                    println!("{}: ok", config.display());
                    Ok(())
                }
                None => Ok(agent::run(cfg, shutdown_on_signal()).await?),
                Some(cmd) => operator(&cfg.operator_socket, cmd).await,
            }
        }
        Cmd::Hub { config, check, cmd } => hub_cmd(&config, check, cmd).await,
        Cmd::Login { profile, hub, user, ca } => {
            client::cli::login(&client::cli::profile_path(profile), hub, user, ca).await
        }
        Cmd::Devices { profile, json } => client::cli::devices(&client::cli::profile_path(profile), json).await,
        Cmd::Sessions { profile, json, limit } => {
            client::cli::sessions(&client::cli::profile_path(profile), json, limit).await
        }
        Cmd::Session { cmd: SessionCmd::End { id, profile } } => {
            client::cli::session_end(&client::cli::profile_path(profile), &id).await
        }
        Cmd::Connect { profile, device, service, listen, reason } => {
            connect(client::cli::profile_path(profile), device, service, listen, reason).await
        }
        Cmd::Audit { cmd: AuditCmd::Verify { file } } => {
            let n = tether::audit::verify(&file)?;
            println!("{}: {n} records, chain intact", file.display());
            Ok(())
        }
        Cmd::Audit { cmd: AuditCmd::Export { since, profile, out } } => {
            client::cli::audit_export(&client::cli::profile_path(profile), &since, out.as_deref()).await
        }
        Cmd::Loadgen { cmd } => tether::loadgen::run(cmd).await,
    }
}

fn certs(cmd: CertsCmd) -> Result<()> {
    use tls::pki::{Ca, Validity};
    match cmd {
        CertsCmd::Init { out } => {
            tls::pki::init_dir(&out, &[dev::DEV_DEVICE])?;
            println!("wrote dev PKI to {} (DEV ONLY)", out.display());
        }
        CertsCmd::Device { ca, id, out } => {
            std::fs::create_dir_all(&out)?;
            Ca::load(&ca)?.issue_device(&id, Validity::days(825))?.write(&out, &id)?;
            println!("wrote {0}/{id}.pem and {0}/{id}.key", out.display());
        }
        CertsCmd::Revoke { ca, out, certs } => {
            let mut serials = Vec::new();
            for c in &certs {
                for der in tls::load_certs(c)? {
                    let (_, x) = x509_parser::parse_x509_certificate(&der)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", c.display()))?;
                    serials.push(x.raw_serial().to_vec());
                }
            }
            tls::pki::write_file(&out, &Ca::load(&ca)?.crl(&serials)?, false)?;
            println!("wrote CRL revoking {} certificate(s) to {}", serials.len(), out.display());
        }
    }
    Ok(())
}

async fn operator(socket: &std::path::Path, cmd: AgentCmd) -> Result<()> {
    use agent::operator::Request;
    let req = match cmd {
        AgentCmd::Pending => Request::Pending,
        AgentCmd::Sessions => Request::Sessions,
        AgentCmd::Approve { session } => Request::Approve { session },
        AgentCmd::Deny { session } => Request::Deny { session },
        AgentCmd::End { session } => Request::End { session },
        AgentCmd::Metrics => Request::Metrics,
    };
    let answer = agent::operator::request(socket, &req)
        .await
        .with_context(|| format!("talking to the agent at {}", socket.display()))?;
    if answer["ok"] != true {
        bail!("{}", answer["error"].as_str().unwrap_or("the agent refused"));
    }
    match (&req, answer.get("text")) {
        (Request::Metrics, Some(t)) => print!("{}", t.as_str().unwrap_or_default()),
        _ => println!("{}", serde_json::to_string_pretty(&answer)?),
    }
    Ok(())
}

async fn hub_cmd(config: &std::path::Path, check: bool, cmd: Option<HubCmd>) -> Result<()> {
    let cfg = hub::HubConfig::load(config)?;
    let Some(cmd) = cmd else {
        if check {
            println!("{}: ok", config.display());
            return Ok(());
        }
        let listener = hub::bind(&cfg).await?;
        println!(
            "hub listening on https://{} (database {})",
            listener.local_addr()?,
            cfg.database.split('@').next_back().unwrap_or("")
        );
        return Ok(hub::run(listener, cfg, shutdown_on_signal()).await?);
    };
    let admin = hub::admin::Admin::open(&cfg).await?;
    match cmd {
        HubCmd::User { cmd: UserCmd::Add { name, role, sites } } => {
            let password = client::cli::ask(&format!("new password for {name}: "))?;
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) && client::cli::ask("again: ")? != password {
                bail!("the passwords differ");
            }
            let secret = admin.user_add(&name, role.parse().map_err(anyhow::Error::msg)?, &password, &sites).await?;
            println!(
                "added {name} ({role}){}",
                if sites.is_empty() { String::new() } else { format!(", sites: {}", sites.join(", ")) }
            );
            print!("{}", hub::admin::enrolment(&admin.issuer, &name, &secret));
        }
        HubCmd::User { cmd: UserCmd::Entitle { name, site } } => {
            admin.entitle(&name, &site).await?;
            println!("{name} is entitled to site {site}");
        }
        HubCmd::User { cmd: UserCmd::Disable { name } } => {
            admin.set_disabled(&name, true).await?;
            println!("{name} disabled; its tokens admit nothing from now on");
        }
        HubCmd::User { cmd: UserCmd::Enable { name } } => {
            admin.set_disabled(&name, false).await?;
            println!("{name} enabled");
        }
        HubCmd::User { cmd: UserCmd::Passwd { name } } => {
            let password = client::cli::ask(&format!("new password for {name}: "))?;
            admin.set_password(&name, &password).await?;
            println!("password of {name} changed");
        }
        HubCmd::User { cmd: UserCmd::List } => {
            for u in admin.store.users().await? {
                let sites = admin.store.entitlements(&u.name).await?.join(",");
                println!("{}\t{}\t{}\t{}", u.name, u.role, if u.disabled { "disabled" } else { "enabled" }, sites);
            }
        }
        HubCmd::Device { cmd: DeviceCmd::Add { id, site, consent } } => {
            admin.device_add(&id, &site, &consent).await?;
            println!("added device {id} at site {site} (consent {consent})");
        }
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

async fn connect(profile: PathBuf, device: String, service: String, listen: SocketAddr, reason: String) -> Result<()> {
    let p = client::cli::load(&profile)?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let reason = if reason.is_empty() && p.hub.as_ref().is_some_and(|h| h.dev_password_file.is_some()) {
        "tether dev".to_string()
    } else {
        reason
    };
    let source = client::GrantSource::from_profile(&p, Some(&reason))?;
    eprintln!("asking {device} for {service} (the device may need on-site approval)...");
    let session = match client::ClientSession::open_with(&p, &source, &device, &service).await {
        Ok(s) => s,
        Err(e) => bail!("{e}"),
    };
    println!(
        "session {} ready: {} -> {device}/{service} via {}",
        session.id,
        listener.local_addr()?,
        session.relay.name
    );
    let stop = shutdown_on_signal();
    let s = session.clone();
    let reason = tokio::select! {
        r = s.serve(listener) => r,
        _ = stop.cancelled() => { session.close(); tether::proto::Reason::ClientClosed }
    };
    println!(
        "session {} ended: {reason}; {} bytes to the device, {} bytes back",
        session.id,
        session.to_device.load(std::sync::atomic::Ordering::Relaxed),
        session.to_client.load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}
