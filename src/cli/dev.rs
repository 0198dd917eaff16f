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
    },
    /// Start relays, agent and echo service from an initialised folder.
    Up,
}

pub async fn run(cmd: Option<DevCmd>, dir: &Path) -> Result<()> {
    match cmd {
        Some(DevCmd::Init { services, consent }) => {
            let services = services
                .iter()
                .map(|s| {
                    s.split_once('=')
                        .map(|(a, b)| (a.to_string(), b.to_string()))
                        .context("--service takes NAME=HOST:PORT")
                })
                .collect::<Result<_>>()?;
            dev::init(dir, &dev::InitOptions { services, consent }).await?;
            println!("wrote dev setup to {}", dir.display());
            Ok(())
        }
        Some(DevCmd::Up) => dev::up(dir, super::shutdown_on_signal()).await,
        None => {
            if !dir.join("hub.toml").exists() {
                dev::init(dir, &dev::InitOptions { services: vec![], consent: "auto".into() }).await?;
                println!("wrote dev setup to {}", dir.display());
            }
            dev::up(dir, super::shutdown_on_signal()).await
        }
    }
}
