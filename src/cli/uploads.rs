//! `tether uploads get`: the files an upload job brought from a device,
//! fetched from the hub in ranges, checked against the SHA-256 the hub
//! verified, and unpacked into a folder.
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use hyper::Method;
use sha2::{Digest, Sha256};

use super::specialist::load;
use crate::client::hub::HubSession;

/// Bytes asked for per request (the hub answers at most 4 MiB).
const RANGE: u64 = 4 << 20;

#[derive(Subcommand)]
pub enum UploadsCmd {
    /// Fetch an upload job's files into DIR (created if missing).
    Get {
        #[arg(long)]
        profile: Option<PathBuf>,
        /// The upload job's id.
        job: String,
        /// Where the files go: DIR/SET/...
        #[arg(long)]
        out: PathBuf,
    },
}

pub async fn run(cmd: UploadsCmd) -> Result<()> {
    let UploadsCmd::Get { profile, job, out } = cmd;
    if !job.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-') {
        bail!("{job:?} is not a job id");
    }
    let hub = HubSession::from_profile(&load(&super::profile_path(profile))?)?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let archive = out.join(format!(".{job}.tar.part"));
    let mut file = std::fs::File::create(&archive).with_context(|| format!("writing {}", archive.display()))?;
    let (mut at, mut total, mut want_sha) = (0u64, None::<u64>, String::new());
    let mut hasher = Sha256::new();
    while total.is_none_or(|t| at < t) {
        let path = format!("/api/v1/jobs/{job}/upload?offset={at}&len={RANGE}");
        let (headers, bytes) = hub.raw_with_headers(Method::GET, &path, None, "application/json").await?;
        let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        let t = header("x-total-length").and_then(|v| v.parse().ok()).context("the hub named no total length")?;
        if total.is_some_and(|old| old != t) {
            bail!("the upload changed length while being fetched");
        }
        total = Some(t);
        want_sha = header("x-sha256").unwrap_or_default();
        if bytes.is_empty() && at < t {
            bail!("the hub sent nothing at byte {at} of {t}");
        }
        file.write_all(&bytes)?;
        hasher.update(&bytes);
        at += bytes.len() as u64;
    }
    file.sync_all()?;
    drop(file);
    let got = hex::encode(hasher.finalize());
    if got != want_sha {
        let _ = std::fs::remove_file(&archive);
        bail!("the upload's SHA-256 is {got}, the hub verified {want_sha:?}; nothing was unpacked");
    }
    // GNU tar drops leading '/' and refuses '..' in names: nothing lands
    // outside DIR. Ownership is not copied from the device.
    let o = std::process::Command::new("tar")
        .args(["-xf"])
        .arg(&archive)
        .args(["--no-same-owner", "--no-same-permissions", "-C"])
        .arg(&out)
        .output()
        .context("running tar")?;
    let listing = std::process::Command::new("tar").arg("-tf").arg(&archive).output().context("running tar")?;
    let _ = std::fs::remove_file(&archive);
    if !o.status.success() {
        bail!("unpacking failed ({}): {}", o.status, String::from_utf8_lossy(&o.stderr).trim());
    }
    let names = String::from_utf8_lossy(&listing.stdout);
    let files = names.lines().filter(|l| !l.ends_with('/')).count();
    let count = if files == 1 { "1 file".to_string() } else { format!("{files} files") };
    println!("{job}: {count}, {at} bytes (sha256 {got}) in {}", out.display());
    for n in names.lines().filter(|l| !l.ends_with('/')).take(20) {
        println!("  {}", out.join(n).display());
    }
    if files > 20 {
        println!("  ... and {} more", files - 20);
    }
    Ok(())
}
