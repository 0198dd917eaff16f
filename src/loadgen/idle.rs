//! Many idle agents on one relay, for the memory-per-agent figure. Each
//! attaches as a real agent does: hello, then its audit chain's head, and
//! a heartbeat with its clock at once and every `heartbeat_secs` the
//! relay's welcome names (a relay gives up on an agent that sends none for
//! three periods).
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

async fn relay_metric(admin: &str, name: &str) -> Result<f64> {
    let (_, body) = crate::util::http::get(admin, "/metrics").await.with_context(|| format!("admin {admin}"))?;
    let prefix = format!("{name} ");
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("relay did not report {name}"))
}

async fn relay_rss(admin: &str) -> Result<f64> {
    relay_metric(admin, "tether_relay_resident_memory_bytes").await
}

/// Where the simulated agents attach.
pub struct To<'a> {
    pub control: &'a str,
    /// QUIC (UDP) address; `None`: TCP to `control`.
    pub quic: Option<&'a str>,
    pub admin: &'a str,
    pub server_name: &'a str,
}

/// One attached agent, heartbeating while held: its task, and its QUIC
/// connection (closed when dropped).
type Held = (tokio::task::JoinHandle<()>, Option<quinn::Connection>);

/// Heartbeats as a real agent does, each with the device's clock, and reads
/// what the relay sends (its answers); ends when the channel does.
async fn heartbeat(mut io: FrameIo<crate::leg::Leg>, every: Duration) {
    let mut seq = 0u64;
    loop {
        seq += 1;
        let beat = Frame::Heartbeat { seq, clock: Some(crate::util::clock::now_ms()) };
        if io.write_frame(&beat).await.is_err() {
            return;
        }
        let until = tokio::time::Instant::now() + every;
        while let Ok(read) = tokio::time::timeout_at(until, io.read_frame()).await {
            if read.is_err() {
                return;
            }
        }
    }
}

pub async fn run(pki: &Path, to: To<'_>, n: usize, hold: Duration) -> Result<()> {
    let (dir, configs) = devices(pki, "load", n)?;
    // Over QUIC, every agent's connection shares one UDP socket here (the
    // relay side is what is measured).
    let endpoint = match to.quic {
        Some(_) => Some(quinn::Endpoint::client("127.0.0.1:0".parse()?)?),
        None => None,
    };
    let quic_addr: Option<std::net::SocketAddr> = match to.quic {
        Some(a) => Some(tokio::net::lookup_host(a).await?.next().context("QUIC address")?),
        None => None,
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = relay_rss(to.admin).await?;
    let transport = if to.quic.is_some() { "QUIC" } else { "TCP" };
    eprintln!("relay RSS before: {:.1} MiB; attaching {n} agents over {transport}...", before / 1048576.0);
    let started = std::time::Instant::now();
    let mut channels: Vec<Held> = Vec::with_capacity(n);
    for (id, cfg) in configs {
        let (leg, conn): (crate::leg::Leg, _) = match (&endpoint, quic_addr) {
            (Some(ep), Some(addr)) => {
                let mut c = (*cfg).clone();
                c.alpn_protocols = vec![tls::ALPN_QUIC_AGENT.to_vec()];
                let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(c)?;
                let mut qc = quinn::ClientConfig::new(Arc::new(crypto));
                qc.transport_config(crate::quic::transport_config(4, crate::quic::Dialler::Agent));
                let conn = ep.connect_with(qc, addr, to.server_name)?.await.with_context(|| format!("agent {id}"))?;
                (Box::new(crate::quic::open_leg(&conn).await?), Some(conn))
            }
            _ => (
                Box::new(tls::dial(to.control, to.server_name, cfg).await.with_context(|| format!("agent {id}"))?),
                None,
            ),
        };
        let mut io = FrameIo::new(leg);
        io.write_frame(&Frame::Hello {
            version: VERSION,
            device: id.clone(),
            agent_version: "loadgen".into(),
            services: vec!["echo".into()],
            streams: false,
        })
        .await?;
        let every = match io.read_frame().await? {
            Frame::Welcome { heartbeat_secs, .. } => Duration::from_secs(u64::from(heartbeat_secs.max(1))),
            other => bail!("agent {id}: expected welcome, got {}", other.kind()),
        };
        // As a real agent does after its welcome: its audit chain's head,
        // signed with its key, which the relay passes on to the hub.
        let signer = crate::audit::sign::Signer::load(&dir.join(format!("{id}.key")))?;
        let hash = hex::encode(crate::random_bytes::<32>());
        io.write_frame(&Frame::AuditHead { seq: 1, sig: signer.sign(&hash), hash }).await?;
        channels.push((tokio::spawn(heartbeat(io, every)), conn));
    }
    let attach = started.elapsed();
    let cpu_before = relay_metric(to.admin, "tether_process_cpu_seconds").await?;
    let held_from = std::time::Instant::now();
    tokio::time::sleep(hold).await;
    let idle_cpu =
        (relay_metric(to.admin, "tether_process_cpu_seconds").await? - cpu_before) / held_from.elapsed().as_secs_f64();
    let after = relay_rss(to.admin).await?;
    let per = (after - before) / n as f64;
    println!(
        "{n} idle agents attached over {transport} in {:.1} s ({:.0}/s): relay RSS {:.1} MiB -> {:.1} MiB, \
         {:.1} KiB per attached agent; relay CPU at idle {:.1} % of one core",
        attach.as_secs_f64(),
        n as f64 / attach.as_secs_f64(),
        before / 1048576.0,
        after / 1048576.0,
        per / 1024.0,
        idle_cpu * 100.0
    );
    for (task, _) in &channels {
        task.abort();
    }
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
