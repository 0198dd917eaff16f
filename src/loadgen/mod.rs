//! Load generator: drives real agents and sessions against running relays.
//!
//! - `idle`: attaches N agents (fresh device certs from the CA) to one relay
//!   and reports the relay's resident memory per attached agent.
//! - `soak`: many sessions echoing verifiable chunks for a long time.
//! - `latency`: opens one session and measures, per tunnelled connection, the
//!   time from starting the client leg to the first byte back from the service.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

mod fetch;
mod hub;
mod idle;
mod soak;

#[derive(Subcommand, Debug)]
pub enum LoadCmd {
    /// Attach N idle agents to a relay and report its memory per agent.
    Idle {
        /// Folder with the fleet CA (`ca.pem`, `ca.key`), e.g. tether-dev/pki.
        #[arg(long)]
        pki: PathBuf,
        /// The relay's control address (17001).
        #[arg(long)]
        control: String,
        /// The relay's admin address (17090), to read its memory.
        #[arg(long)]
        admin: String,
        #[arg(long, default_value = "relay-a")]
        server_name: String,
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// Attach over QUIC to this UDP address (the relay's 17002) instead
        /// of TCP to `--control`.
        #[arg(long)]
        quic: Option<String>,
        /// Seconds to hold the agents attached before measuring.
        #[arg(long, default_value_t = 3)]
        hold_secs: u64,
    },
    /// Time from client leg start to first echoed byte, over N connections.
    Latency {
        #[command(flatten)]
        target: Target,
        #[arg(long, short = 'n', default_value_t = 1000)]
        count: usize,
    },
    /// Session setup through the hub: `POST /sessions` to the first byte from the device.
    HubSetup {
        #[command(flatten)]
        target: Target,
        #[arg(long, short = 'n', default_value_t = 500)]
        count: usize,
    },
    /// Many sessions echoing verifiable chunks for a long time (see benches/soak.sh).
    Soak {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        args: soak::SoakArgs,
    },
    /// N simulated agents each fetching one artifact through a relay's fetch legs.
    Fetch {
        /// Folder with the fleet CA (`ca.pem`, `ca.key`), e.g. tether-dev/pki.
        #[arg(long)]
        pki: PathBuf,
        /// The relay's control address (17001).
        #[arg(long)]
        control: String,
        #[arg(long, default_value = "relay-a")]
        server_name: String,
        /// The artifact's hex SHA-256 and length (`tether repo list --json`).
        #[arg(long)]
        sha256: String,
        #[arg(long)]
        length: u64,
        #[arg(long, default_value_t = 1000)]
        agents: usize,
    },
    /// Session requests per second the hub sustains (grants only).
    HubRate {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

/// The profile to act as, and the device service to reach.
#[derive(clap::Args, Debug)]
pub struct Target {
    #[arg(long)]
    profile: PathBuf,
    #[arg(long, default_value = "demo-1")]
    device: String,
    #[arg(long, default_value = "echo")]
    service: String,
    /// `auto`, `quic` or `tcp`; default: the profile's.
    #[arg(long, value_parser = crate::quic::Transport::from_arg)]
    transport: Option<crate::quic::Transport>,
}

/// `--transport`, for every profile this run loads.
static TRANSPORT: std::sync::OnceLock<crate::quic::Transport> = std::sync::OnceLock::new();

pub async fn run(cmd: LoadCmd) -> Result<()> {
    let t = match &cmd {
        LoadCmd::Latency { target, .. }
        | LoadCmd::HubSetup { target, .. }
        | LoadCmd::Soak { target, .. }
        | LoadCmd::HubRate { target, .. } => target.transport,
        _ => None,
    };
    if let Some(t) = t {
        let _ = TRANSPORT.set(t);
    }
    match cmd {
        LoadCmd::Idle { pki, control, admin, server_name, agents, quic, hold_secs } => {
            let to = idle::To { control: &control, quic: quic.as_deref(), admin: &admin, server_name: &server_name };
            idle::run(&pki, to, agents, Duration::from_secs(hold_secs)).await
        }
        LoadCmd::Fetch { pki, control, server_name, sha256, length, agents } => {
            fetch::run(&pki, fetch::FetchPlan { control, server_name, sha256, length }, agents).await
        }
        LoadCmd::Latency { target: t, count } => latency(&t.profile, &t.device, &t.service, count).await,
        LoadCmd::HubSetup { target: t, count } => hub::setup(&t.profile, &t.device, &t.service, count).await,
        LoadCmd::Soak { target: t, args } => soak::run(&t.profile, &t.device, &t.service, args).await,
        LoadCmd::HubRate { target: t, concurrency, seconds } => {
            hub::sessions(&t.profile, &t.device, &t.service, concurrency, seconds).await
        }
    }
}

/// Opens a tunnel in `session`, sends one byte and waits for the echo.
pub async fn first_byte(session: &std::sync::Arc<crate::client::ClientSession>) -> Result<crate::client::Phases> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // As `tether connect` does: a byte the application wrote at once goes
    // while the relay pairs a keyed connection; on a first connection it
    // stays here until the end-to-end TLS is up.
    let mut app: &[u8] = b"x";
    let (mut t, phases) = session.connect_early(&mut app).await?;
    t.write_all(app).await?;
    t.flush().await?;
    let mut b = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(5), t.read_exact(&mut b)).await.context("no echo within 5 s")??;
    Ok(phases)
}

/// `N samples: p50 …, p90 …, p99 …, max …` (milliseconds).
pub fn summary(mut samples: Vec<Duration>) -> Result<String> {
    if samples.is_empty() {
        bail!("no samples");
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(format!(
        "{} samples: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        samples.len(),
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.9)),
        ms(percentile(&samples, 0.99)),
        ms(samples[samples.len() - 1])
    ))
}

/// The specialist profile at `path`.
pub fn load_profile(path: &std::path::Path) -> Result<crate::client::Profile> {
    let mut p = crate::client::Profile::open(path).with_context(|| format!("profile {}", path.display()))?;
    if let Some(t) = TRANSPORT.get() {
        p.transport = *t;
    }
    Ok(p)
}

/// Percentile of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn latency(profile: &std::path::Path, device: &str, service: &str, count: usize) -> Result<()> {
    let p = load_profile(profile)?;
    let source = crate::client::GrantSource::from_profile(&p, Some("loadgen: latency"))?;
    let session =
        crate::client::ClientSession::open_with(&p, &source, device, service).await.context("opening the session")?;
    let (mut samples, mut paired, mut e2e, mut echo) = (vec![], vec![], vec![], vec![]);
    for _ in 0..count.min(100_000) {
        let start = Instant::now();
        let phases = first_byte(&session).await?;
        let took = start.elapsed();
        samples.push(took);
        paired.push(phases.paired);
        e2e.push(phases.e2e);
        echo.push(took.saturating_sub(phases.paired + phases.e2e));
    }
    session.close();
    let stats = summary(samples)?;
    println!("client leg start -> first byte from {device}/{service} over {stats}");
    println!("  dial, join, paired with the device's data leg: {}", summary(paired)?);
    println!("  end-to-end TLS handshake:                      {}", summary(e2e)?);
    println!("  first byte to the service and back:            {}", summary(echo)?);
    Ok(())
}
