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
        Some(DevCmd::Up) => dev::up(dir, super::shutdown_on_signal()).await,
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
            dev::up(dir, super::shutdown_on_signal()).await
        }
    }
}
