//! `tether relay --config relay.toml [--check]`.
use std::path::Path;

use anyhow::Result;

use crate::config::ConfigFile;
use crate::relay;

pub async fn run(config: &Path, check: bool) -> Result<()> {
    let cfg = relay::RelayConfig::load(config)?;
    if check {
        println!("{}: ok", config.display());
        return Ok(());
    }
    let listeners = relay::Listeners::bind(&cfg).await?;
    crate::tls::catch_sighup();
    let a = listeners.addrs();
    let twin = a.twin.map(|t| format!(" twin={t}")).unwrap_or_default();
    let quic = match (a.quic_agents, a.quic_clients) {
        (Some(ag), Some(cl)) => format!(" quic-agents={ag} quic-clients={cl}"),
        _ => String::new(),
    };
    println!(
        "relay {} listening control={} data={} client={} admin={}{twin}{quic}",
        cfg.name, a.control, a.data, a.client, a.admin
    );
    relay::run(listeners, cfg, super::shutdown_on_signal()).await?;
    Ok(())
}
