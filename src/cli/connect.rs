//! `tether connect DEVICE SERVICE --listen ADDR`: expose a device's service
//! on a local port, like `ssh -L`.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

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
    /// Seconds to wait for an offline device to come online.
    #[arg(long, default_value_t = 15)]
    wait: u64,
    /// `auto` (QUIC when UDP gets through, else TCP), `quic` or `tcp`;
    /// default: the profile's `transport` (auto).
    #[arg(long, value_parser = crate::quic::Transport::from_arg)]
    transport: Option<crate::quic::Transport>,
}

/// The device is not reachable right now, but may be soon: the hub sees it on
/// no ready relay, or the relay has not seen it attach yet.
fn offline(e: &client::ClientError) -> bool {
    matches!(e, client::ClientError::DeviceOffline { .. })
        || matches!(e.reason(), Some(crate::proto::Reason::NotAttached))
}

pub async fn run(a: ConnectArgs) -> Result<()> {
    let mut p = super::specialist::load(&super::profile_path(a.profile))?;
    if let Some(t) = a.transport {
        p.transport = t;
    }
    let listener = tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("binding {}", a.listen))?;
    let reason = if a.reason.is_empty() && p.hub.as_ref().is_some_and(|h| h.dev_password_file.is_some()) {
        "tether dev".to_string()
    } else {
        a.reason
    };
    let (device, service) = (a.device, a.service);
    if p.hub.is_some() && reason.trim().is_empty() {
        anyhow::bail!(
            "a reason is required: --reason \"ticket CHG-1881: …\" (the hub records it; the person at the device sees it)"
        );
    }
    let source = client::GrantSource::from_profile(&p, Some(&reason))?;
    eprintln!("asking {device} for {service}...");
    let deadline = Instant::now() + Duration::from_secs(a.wait);
    let mut waiting = false;
    let consent = std::sync::atomic::AtomicBool::new(false);
    let progress = |p: client::Progress| match p {
        client::Progress::Asked { consent: true, .. } if !consent.swap(true, Ordering::Relaxed) => {
            eprintln!(
                "{device} needs the approval of the person at the device (the hub's policy); waiting for them (Ctrl-C to give up)..."
            )
        }
        client::Progress::Asked { .. } => {}
        client::Progress::Trying { failed, why, next } => {
            eprintln!("{failed} did not answer ({why}); asking {next}...")
        }
        client::Progress::Waiting { after, .. }
            if after == client::FIRST_NOTICE && !consent.load(Ordering::Relaxed) =>
        {
            eprintln!(
                "{device} has not decided after {} s: it may be asking the person at the device to approve; \
                 waiting (Ctrl-C to give up)...",
                after.as_secs()
            )
        }
        // The hub's policy was said at once: nothing new to say yet.
        client::Progress::Waiting { after, .. } if after == client::FIRST_NOTICE => {}
        client::Progress::Waiting { after, .. } => {
            eprintln!("still waiting for {device} after {} s...", after.as_secs())
        }
    };
    let session = loop {
        match client::ClientSession::open_watching(&p, &source, &device, &service, &progress).await {
            Ok(s) => break s,
            Err(e) if offline(&e) && Instant::now() < deadline => {
                if !waiting {
                    eprintln!("{device} is offline; waiting up to {} s for it to come online (--wait)...", a.wait);
                    waiting = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) if offline(&e) => bail!(
                "{device} did not come online within {} s: its agent is not attached to a ready relay \
                 (`tether devices` shows where it was last seen)",
                a.wait
            ),
            Err(e) => bail!("{e}"),
        }
    };
    println!(
        "session {} ready: {} -> {device}/{service} via {} over {}",
        session.id,
        listener.local_addr()?,
        session.relay.name,
        session.transport()
    );
    let stop = super::shutdown_on_signal();
    let s = session.clone();
    let reason = tokio::select! {
        r = s.serve(listener) => r,
        _ = stop.cancelled() => {
            session.close_and_wait(std::time::Duration::from_secs(3)).await;
            crate::proto::Reason::ClientClosed
        }
    };
    // The relay knows only that the hub revoked it; the hub's record says why.
    let why = match reason {
        crate::proto::Reason::Revoked => revoked_why(&p, &session.id.to_string(), &device).await,
        _ => None,
    };
    let why = why.unwrap_or_else(|| reason.to_string());
    println!(
        "session {} ended: {why}; {} bytes to the device, {} bytes back",
        session.id,
        session.to_device.load(Ordering::Relaxed),
        session.to_client.load(Ordering::Relaxed)
    );
    // Ended by anyone but the specialist (an admin, the person at the
    // device, expiry, a lost device): a script sees it in the exit status.
    if reason != crate::proto::Reason::ClientClosed {
        anyhow::bail!("the session ended before you stopped it: {why}");
    }
    Ok(())
}

/// Why the hub revoked session `id`, from its record there (at most 3 s;
/// `None` when the hub does not say).
async fn revoked_why(p: &client::Profile, id: &str, device: &str) -> Option<String> {
    let hub = client::hub::HubSession::from_profile(p).ok()?;
    let path = format!("/api/v1/sessions/{id}");
    let get = hub.get::<crate::api::SessionRecord>(&path);
    let rec = tokio::time::timeout(Duration::from_secs(3), get).await.ok()?.ok()?;
    let by = rec.ended_by.unwrap_or_else(|| "?".into());
    match rec.end_reason.as_deref()? {
        "device_retired" => {
            Some(format!("the hub revoked the session: {by} retired {device}, and nobody reaches it now (revoked)"))
        }
        "revoked" => Some(format!("{by} ended the session at the hub (revoked)")),
        _ => None,
    }
}
