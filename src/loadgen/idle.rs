//! Many idle agents on one relay, for the memory-per-agent figure.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::proto::{Frame, FrameIo, VERSION};
use crate::tls::{
    self,
    pki::{Ca, Validity},
};

async fn relay_rss(admin: &str) -> Result<f64> {
    let (_, body) = crate::util::http::get(admin, "/metrics").await.with_context(|| format!("admin {admin}"))?;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("tether_relay_resident_memory_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .context("relay did not report tether_relay_resident_memory_bytes")
}

pub async fn run(pki: &Path, control: &str, admin: &str, server_name: &str, n: usize, hold: Duration) -> Result<()> {
    let (dir, configs) = devices(pki, "load", n)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = relay_rss(admin).await?;
    eprintln!("relay RSS before: {:.1} MiB; attaching {n} agents...", before / 1048576.0);
    let mut channels = Vec::with_capacity(n);
    for (id, cfg) in configs {
        let conn = tls::dial(control, server_name, cfg).await.with_context(|| format!("agent {id}"))?;
        let mut io = FrameIo::new(conn);
        io.write_frame(&Frame::Hello {
            version: VERSION,
            device: id.clone(),
            agent_version: "loadgen".into(),
            services: vec!["echo".into()],
        })
        .await?;
        match io.read_frame().await? {
            Frame::Welcome { .. } => channels.push(io),
            other => bail!("agent {id}: expected welcome, got {}", other.kind()),
        }
    }
    tokio::time::sleep(hold).await;
    let after = relay_rss(admin).await?;
    let per = (after - before) / n as f64;
    println!(
        "{n} idle agents attached: relay RSS {:.1} MiB -> {:.1} MiB, {:.1} KiB per attached agent",
        before / 1048576.0,
        after / 1048576.0,
        per / 1024.0
    );
    drop(channels);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A simulated device: its id and agent TLS config.
pub type Device = (String, Arc<ClientConfig>);

/// `n` simulated devices `PREFIX-000000`...: certificates issued from the
/// CA in `pki` into a fresh temporary folder (returned, for removal), and
/// each one's agent TLS config.
pub fn devices(pki: &Path, prefix: &str, n: usize) -> Result<(PathBuf, Vec<Device>)> {
    let ca = Ca::load(pki)?;
    let dir = std::env::temp_dir().join(format!("tether-loadgen-{}", hex::encode(crate::random_bytes::<6>())));
    std::fs::create_dir_all(&dir)?;
    eprintln!("issuing {n} device certificates...");
    let mut configs = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("{prefix}-{i:06}");
        ca.issue_device(&id, Validity::days(1))?.write(&dir, &id)?;
        let cert = (dir.join(format!("{id}.pem")), dir.join(format!("{id}.key")));
        configs.push((id, tls::client_config(&pki.join("ca.pem"), Some((&cert.0, &cert.1)), tls::ALPN_AGENT)?));
    }
    Ok((dir, configs))
}
