//! `tether dev`: the whole system locally on dev certificates.
use std::path::Path;

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::dev;

#[derive(Subcommand)]
pub enum DevCmd {
    /// Write dev PKI and configs.
    Init {
        /// Extra services for the agent's allow-list, NAME=HOST:PORT.
        #[arg(long = "service")]
        services: Vec<String>,
        #[arg(long, default_value = "auto", value_parser = ["auto", "required"])]
        consent: String,
        /// How the agent and the dev profile reach the relays.
        #[arg(long, env = "TETHER_TRANSPORT", default_value = "auto", value_parser = ["auto", "quic", "tcp"])]
        transport: String,
    },
    /// Start relays, agent and echo service from an initialised folder.
    Up,
    /// Print the dev account's current sign-in code (for the web console).
    Code,
}

pub async fn run(cmd: Option<DevCmd>, dir: &Path) -> Result<()> {
    match cmd {
        Some(DevCmd::Init { services, consent, transport }) => {
            let services = services
                .iter()
                .map(|s| {
                    s.split_once('=')
                        .map(|(a, b)| (a.to_string(), b.to_string()))
                        .context("--service takes NAME=HOST:PORT")
                })
                .collect::<Result<_>>()?;
            dev::init(dir, &dev::InitOptions { services, consent, transport }).await?;
            println!("wrote dev setup to {}", dir.display());
            Ok(())
        }
        Some(DevCmd::Up) => dev::up(dir, dev::Signals::listen()).await,
        Some(DevCmd::Code) => dev_code(dir).await,
        None => {
            if !dir.join("hub.toml").exists() {
                let transport = std::env::var("TETHER_TRANSPORT").unwrap_or_else(|_| "auto".into());
                if crate::quic::Transport::parse(&transport).is_none() {
                    anyhow::bail!("TETHER_TRANSPORT={transport:?}: expected auto, quic or tcp");
                }
                let opts = dev::InitOptions { services: vec![], consent: "auto".into(), transport };
                dev::init(dir, &opts).await?;
                println!("wrote dev setup to {}", dir.display());
            }
            dev::up(dir, dev::Signals::listen()).await
        }
    }
}

/// The dev account's next usable sign-in code: a code works once, and
/// `tether dev` itself signs in with the current one, so this may be the
/// next step's (the hub takes one step of skew).
async fn dev_code(dir: &Path) -> Result<()> {
    use crate::config::ConfigFile;
    let file = dir.join("dev-login/totp-secret");
    let secret = std::fs::read_to_string(&file)
        .with_context(|| format!("reading {} (run `tether dev` first)", file.display()))?;
    let cfg = crate::hub::HubConfig::load(&dir.join("hub.toml"))?;
    let admin = crate::hub::admin::Admin::open(&cfg).await?;
    let used = admin.store.totp_last_step(dev::DEV_USER).await? as u64;
    let now = crate::util::now_secs();
    let step = (now / 30).max(used + 1);
    if step > now / 30 + 1 {
        anyhow::bail!("the next code is not valid yet: try again in {} s", 30 - now % 30);
    }
    let code = crate::totp::code_at(secret.trim(), step).context("the dev TOTP secret is not base32")?;
    let left = (step + 1) * 30 - now;
    println!(
        "{code}  (user {}, password in {}; valid {left} s more)",
        dev::DEV_USER,
        dir.join("dev-login/password").display()
    );
    Ok(())
}
