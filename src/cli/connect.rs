//! `tether connect DEVICE SERVICE --listen ADDR`: expose a device's service
//! on a local port, like `ssh -L`.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, bail};

use crate::client;

#[derive(clap::Args)]
pub struct ConnectArgs {
    #[arg(long)]
    profile: Option<PathBuf>,
    device: String,
    service: String,
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Why (kept in the session record; shown on site). May carry the ticket.
    #[arg(long, default_value = "")]
    reason: String,
}

pub async fn run(a: ConnectArgs) -> Result<()> {
    let p = super::specialist::load(&super::profile_path(a.profile))?;
    let listener = tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("binding {}", a.listen))?;
    let reason = if a.reason.is_empty() && p.hub.as_ref().is_some_and(|h| h.dev_password_file.is_some()) {
        "tether dev".to_string()
    } else {
        a.reason
    };
    let (device, service) = (a.device, a.service);
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
    let stop = super::shutdown_on_signal();
    let s = session.clone();
    let reason = tokio::select! {
        r = s.serve(listener) => r,
        _ = stop.cancelled() => { session.close(); crate::proto::Reason::ClientClosed }
    };
    println!(
        "session {} ended: {reason}; {} bytes to the device, {} bytes back",
        session.id,
        session.to_device.load(Ordering::Relaxed),
        session.to_client.load(Ordering::Relaxed)
    );
    Ok(())
}
