//! The `tether` command tree, one file per command group; `main.rs` parses
//! and calls [`run`]. Everything here is the command-line edge: it prints
//! for people (tables, `--json` for scripts) and returns `anyhow` errors.
mod agent;
mod audit;
mod certs;
mod check;
mod connect;
mod dev;
mod hub;
mod jobs;
mod relay;
mod renewals;
mod repo;
mod specialist;
mod uploads;

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "tether", version, about = "Remote-service connectivity for fleets of medical devices")]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

impl Cli {
    /// How many threads this command runs on: the device agent and the
    /// specialist's forwarder sit on the latency path of every tunnelled
    /// byte and carry a handful of sessions, so a hand-off between tasks
    /// costs no wake-up of another thread (measured with the peer kit: echo
    /// RTT p50 352 -> 275 us, p99 560 -> 445 us, throughput unchanged);
    /// the hub keeps a thread per core, and a relay what its `[limits]
    /// threads` says (default one per core). `None`: one per core.
    pub fn threads(&self) -> Option<usize> {
        match &self.cmd {
            Cmd::Agent { cmd: None, .. } | Cmd::Connect(_) => Some(1),
            // A config that does not load gets the default here; the relay
            // then stops on it with its own message.
            Cmd::Relay { config, .. } => <crate::relay::RelayConfig as crate::config::ConfigFile>::load(config)
                .ok()
                .map(|c| c.limits.threads)
                .filter(|&t| t > 0),
            _ => None,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the whole system locally on dev certificates (init if needed, then up).
    Dev {
        #[command(subcommand)]
        cmd: Option<dev::DevCmd>,
        /// Folder holding the dev setup.
        #[arg(long, default_value = "tether-dev", global = true)]
        dir: PathBuf,
    },
    /// Generate fleet PKI material (dev and tests).
    Certs {
        #[command(subcommand)]
        cmd: certs::CertsCmd,
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
        /// With pending, sessions and the answers: print the agent's JSON (for scripts).
        #[arg(long, global = true)]
        json: bool,
        /// With pending: wait for each next request and approve or deny it at a prompt.
        #[arg(long, global = true, conflicts_with = "json")]
        watch: bool,
        #[command(subcommand)]
        cmd: Option<crate::agent::operator::Request>,
    },
    /// Run the hub, or administer its accounts, sites and devices.
    Hub {
        #[arg(long, default_value = "/etc/tether/hub.toml", global = true)]
        config: PathBuf,
        /// Validate the config and exit.
        #[arg(long)]
        check: bool,
        #[command(subcommand)]
        cmd: Option<hub::HubCmd>,
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
        /// The retired devices instead: when, by whom and why (admins).
        #[arg(long)]
        retired: bool,
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
        cmd: specialist::SessionCmd,
    },
    /// Expose DEVICE's SERVICE on a local port, like `ssh -L`.
    Connect(connect::ConnectArgs),
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        cmd: audit::AuditCmd,
    },
    /// Load generator against running relays (benchmarks).
    Loadgen {
        #[command(subcommand)]
        cmd: crate::loadgen::LoadCmd,
    },
    /// The signed software repository: publish (admin) and list.
    Repo {
        #[command(subcommand)]
        cmd: repo::RepoCmd,
    },
    /// Maintenance jobs for devices: add (admin), list, cancel (admin).
    Jobs {
        #[command(subcommand)]
        cmd: jobs::JobsCmd,
    },
    /// Files that upload jobs brought from devices.
    Uploads {
        #[command(subcommand)]
        cmd: uploads::UploadsCmd,
    },
}

/// Runs one parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Dev { cmd, dir } => dev::run(cmd, &dir).await,
        Cmd::Certs { cmd } => certs::run(cmd).await,
        Cmd::Relay { config, check } => relay::run(&config, check).await,
        Cmd::Agent { config, check, json, watch, cmd } => {
            agent::run(&config, check, cmd, agent::Output { json, watch }).await
        }
        Cmd::Hub { config, check, cmd } => hub::run(&config, check, cmd).await,
        Cmd::Login { profile, hub, user, ca } => specialist::login(&profile_path(profile), hub, user, ca).await,
        Cmd::Devices { profile, json, retired } => specialist::devices(&profile_path(profile), json, retired).await,
        Cmd::Sessions { profile, json, limit } => specialist::sessions(&profile_path(profile), json, limit).await,
        Cmd::Session { cmd } => specialist::session(cmd).await,
        Cmd::Connect(args) => connect::run(args).await,
        Cmd::Audit { cmd } => audit::run(cmd).await,
        Cmd::Loadgen { cmd } => crate::loadgen::run(cmd).await,
        Cmd::Repo { cmd } => repo::run(cmd).await,
        Cmd::Jobs { cmd } => jobs::run(cmd).await,
        Cmd::Uploads { cmd } => uploads::run(cmd).await,
    }
}

/// A token cancelled on the first SIGINT/SIGTERM (or when the parent named by
/// [`crate::dev::STOP_WITH_PARENT`] is gone); the second signal exits at once.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    if let Some(parent) = std::env::var(crate::dev::STOP_WITH_PARENT).ok().and_then(|p| p.parse::<u32>().ok()) {
        tokio::spawn(stop_with_parent(parent, token.clone()));
    }
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

/// Cancels `token` once this process's parent is no longer `parent` (it
/// exited, and the process was handed to init or a subreaper).
async fn stop_with_parent(parent: u32, token: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    while std::os::unix::process::parent_id() == parent {
        tokio::select! {
            _ = tick.tick() => {}
            _ = token.cancelled() => return,
        }
    }
    tracing::info!(parent, "the process that started this one is gone; shutting down");
    token.cancel();
}

/// `--profile`, else `$TETHER_PROFILE`, else `~/.config/tether/profile.toml`.
pub fn profile_path(given: Option<PathBuf>) -> PathBuf {
    given.or_else(|| std::env::var_os("TETHER_PROFILE").map(PathBuf::from)).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| ".".into());
        home.join(".config/tether/profile.toml")
    })
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
