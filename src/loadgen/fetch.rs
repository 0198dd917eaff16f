//! Many simulated agents each fetching one artifact through a relay (its
//! fetch legs, as a real agent does), for the fleet download benchmark.
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::proto::repo::RepoFrame;
use crate::proto::{Frame, FrameIo, VERSION};
use crate::tls;

/// What each simulated agent fetches, and from where.
pub struct FetchPlan {
    pub control: String,
    pub server_name: String,
    pub sha256: String,
    pub length: u64,
}

/// Outcome of one agent's fetch: time, and retries (busy relay, refused dial).
type Fetched = Result<(Duration, u32)>;

async fn one(plan: &FetchPlan, cfg: Arc<rustls::ClientConfig>) -> Fetched {
    let start = Instant::now();
    let mut retries = 0u32;
    loop {
        match attempt(plan, cfg.clone()).await {
            Ok(()) => return Ok((start.elapsed(), retries)),
            Err(e) if retries < 50 => {
                retries += 1;
                let ms = 20 + u64::from(crate::random_bytes::<1>()[0]) * 2;
                tracing::debug!(error = %e, "fetch retry");
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn attempt(plan: &FetchPlan, cfg: Arc<rustls::ClientConfig>) -> Result<()> {
    let conn = tls::dial(&plan.control, &plan.server_name, cfg).await?;
    let mut io = FrameIo::new(conn);
    let (mut at, mut hash) = (0u64, Sha256::new());
    while at < plan.length {
        let len = (plan.length - at).min(u64::from(crate::proto::repo::MAX_RANGE)) as u32;
        let get = RepoFrame::Get { version: VERSION, blob: true, name: plan.sha256.clone(), offset: at, len };
        io.write_frame(&Frame::Repo(get)).await?;
        let end = at + u64::from(len);
        while at < end {
            match tokio::time::timeout(Duration::from_secs(30), io.read_frame()).await.context("stalled")?? {
                Frame::Repo(RepoFrame::Data { offset, data, .. }) if offset == at => {
                    hash.update(&data);
                    at += data.len() as u64;
                }
                Frame::Repo(RepoFrame::Failed { code, message, .. }) => bail!("{code}: {message}"),
                other => bail!("unexpected {}", other.kind()),
            }
        }
    }
    let got = hex::encode(hash.finalize());
    if got != plan.sha256 {
        bail!("SHA-256 {got}, expected {}", plan.sha256);
    }
    Ok(())
}

/// `n` agents (device certificates issued from the CA in `pki`) fetch the
/// artifact, all at once; prints the total time and the spread.
pub async fn run(pki: &Path, plan: FetchPlan, n: usize) -> Result<()> {
    let (dir, configs) = super::idle::devices(pki, "fetch", n)?;
    let plan = Arc::new(plan);
    eprintln!("{n} agents fetching {} bytes each...", plan.length);
    let start = Instant::now();
    let tasks: Vec<_> = configs
        .into_iter()
        .map(|(_, cfg)| {
            let plan = plan.clone();
            tokio::spawn(async move { one(&plan, cfg).await })
        })
        .collect();
    let (mut times, mut retries, mut failed) = (Vec::with_capacity(n), 0u32, 0usize);
    for t in tasks {
        match t.await? {
            Ok((d, r)) => {
                times.push(d);
                retries += r;
            }
            Err(e) => {
                failed += 1;
                eprintln!("an agent gave up: {e:#}");
            }
        }
    }
    let total = start.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    let bytes = plan.length * times.len() as u64;
    println!(
        "{} of {n} agents fetched {} bytes each in {:.2} s ({:.0} MiB/s in all; {retries} retries, {failed} failed); per agent {}",
        times.len(),
        plan.length,
        total.as_secs_f64(),
        bytes as f64 / 1048576.0 / total.as_secs_f64(),
        super::summary(times)?
    );
    if failed > 0 {
        bail!("{failed} agents failed");
    }
    Ok(())
}
