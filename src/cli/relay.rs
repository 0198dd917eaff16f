//! `tether relay --config relay.toml [--check]`.
use std::path::Path;

use anyhow::Result;

use super::check;
use crate::config::ConfigFile;
use crate::relay;
use crate::tls::Role;

pub async fn run(config: &Path, check: bool) -> Result<()> {
    let cfg = relay::RelayConfig::load(config)?;
    let (own, fleet) = ((cfg.cert.as_path(), cfg.key.as_path()), (cfg.ca.as_path(), cfg.crl.as_deref()));
    if check {
        return check::relay(config, &cfg);
    }
    check::at_start(own, Role::Relay, Some(&cfg.name), fleet)?;
    let listeners = relay::Listeners::bind(&cfg).await?;
    crate::tls::catch_sighup();
    let a = listeners.addrs();
    let twin = a.twin.map(|t| format!(" twin={t}")).unwrap_or_default();
    let quic = match (a.quic_agents, a.quic_clients) {
        (Some(ag), Some(cl)) => format!(" quic-agents={ag} quic-clients={cl}"),
        _ => String::new(),
    };
    // The threads the runtime has, not the setting: what it runs on.
    let threads = tokio::runtime::Handle::current().metrics().num_workers();
    println!(
        "relay {} listening control={} data={} client={} admin={}{twin}{quic} threads={threads}",
        cfg.name, a.control, a.data, a.client, a.admin
    );
    relay::run(listeners, cfg, super::shutdown_on_signal()).await?;
    Ok(())
}
