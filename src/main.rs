//! The `tether` command tree. Parsing only; the work is in the library.
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tether::config::ConfigFile;
use tether::{agent, client, dev, relay, tls};
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
    /// Expose DEVICE's SERVICE on a local port, like `ssh -L`.
    Connect {
        #[arg(long)]
        profile: PathBuf,
        device: String,
        service: String,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
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
    /// Check an audit log's hash chain.
    Verify { file: PathBuf },
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
                dev::init(&dir, &dev::InitOptions { services, consent })?;
                println!("wrote dev setup to {}", dir.display());
                Ok(())
            }
            Some(DevCmd::Up) => dev::up(&dir, shutdown_on_signal()).await,
            None => {
                if !dir.join("agent.toml").exists() {
                    dev::init(&dir, &dev::InitOptions { services: vec![], consent: "auto".into() })?;
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
        Cmd::Connect { profile, device, service, listen } => connect(profile, device, service, listen).await,
        Cmd::Audit { cmd: AuditCmd::Verify { file } } => {
            let n = tether::audit::verify(&file)?;
            println!("{}: {n} records, chain intact", file.display());
            Ok(())
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

async fn connect(profile: PathBuf, device: String, service: String, listen: SocketAddr) -> Result<()> {
    let p = client::Profile::load(&profile)?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    eprintln!("asking {device} for {service} (the device may need on-site approval)...");
    let session = match client::ClientSession::open(&p, &device, &service).await {
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
