//! `tether repo publish` and `tether repo list`: the publisher signs the
//! targets with its (offline) targets key; the hub checks them against the
//! root and signs snapshot and timestamp with its online keys.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use hyper::Method;
use sha2::{Digest, Sha256};

use super::specialist::load;
use crate::api::{BlobStored, RepoListing, RepoPublished};
use crate::client::hub::{HubCallError, HubSession};
use crate::repo::edit::add_target;
use crate::repo::keys::RepoKey;
use crate::repo::meta::{Envelope, Root, Target, TargetInfo, Targets};
use crate::util::now_secs;

#[derive(Subcommand)]
// Parsed once per run: the size of the larger variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum RepoCmd {
    /// Admin: sign NAME VERSION with the targets key and publish FILE.
    Publish {
        #[arg(long)]
        profile: Option<PathBuf>,
        name: String,
        version: String,
        file: PathBuf,
        /// Command that installs the unpacked package (run in its folder).
        #[arg(long)]
        install: Option<String>,
        /// Command that must succeed before the new version becomes current.
        #[arg(long)]
        health: Option<String>,
        /// Oldest agent version that may install it.
        #[arg(long)]
        min_agent: Option<String>,
        /// Only devices of this class install it.
        #[arg(long)]
        device_class: Option<String>,
        /// `agent`: FILE is the agent's own binary; installing it restarts
        /// the agent as the new version (a self-update).
        #[arg(long, value_parser = ["agent"])]
        kind: Option<String>,
        /// The targets key (PKCS#8 PEM); default: the profile's `repo_targets_key`.
        #[arg(long)]
        targets_key: Option<PathBuf>,
    },
    /// The repository's signed targets.
    List {
        #[arg(long)]
        profile: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: RepoCmd) -> Result<()> {
    match cmd {
        RepoCmd::List { profile, json } => list(&super::profile_path(profile), json).await,
        RepoCmd::Publish {
            profile,
            name,
            version,
            file,
            install,
            health,
            min_agent,
            device_class,
            kind,
            targets_key,
        } => {
            let info = TargetInfo { name, version, install, health, min_agent, device_class, kind };
            publish(&super::profile_path(profile), info, &file, targets_key).await
        }
    }
}

fn valid_part(what: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'))
        && !s.starts_with('.');
    if !ok {
        bail!("{what} {s:?}: use 1-64 letters, digits, '.', '-', '_' or '+', not starting with '.'");
    }
    Ok(())
}

async fn metadata(hub: &HubSession, name: &str) -> Result<Option<Envelope>> {
    match hub.raw(Method::GET, &format!("/api/v1/repo/metadata/{name}"), None, "application/json").await {
        Ok(bytes) => Ok(Some(Envelope::parse("metadata", &bytes)?)),
        Err(HubCallError::Hub(e)) if e.code() == Some("no_metadata") => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn publish(profile: &Path, info: TargetInfo, file: &Path, key: Option<PathBuf>) -> Result<()> {
    valid_part("NAME", &info.name)?;
    valid_part("VERSION", &info.version)?;
    let p = load(profile)?;
    let key_path = key.or(p.repo_targets_key.clone()).with_context(|| {
        format!("no targets key: give --targets-key or set repo_targets_key in {}", profile.display())
    })?;
    let key = RepoKey::load(&key_path)?;
    let bytes = std::fs::read(file).with_context(|| format!("{}", file.display()))?;
    let sha = hex::encode(Sha256::digest(&bytes));
    let hub = HubSession::from_profile(&p)?;

    // The current targets, checked against the repository's root.
    let root_env = metadata(&hub, "root.json").await?.context("the hub's repository has no root")?;
    let root: Root = crate::repo::trust::Trusted::new(root_env)?.root().clone();
    if !root.roles.get("targets").is_some_and(|r| r.keyids.contains(&key.id())) {
        bail!("{} (key id {}) is not a targets key of this repository's root", key_path.display(), key.id());
    }
    let current: Option<Targets> = match metadata(&hub, "targets.json").await? {
        Some(env) => Some(env.open(&root)?),
        None => None,
    };
    let name = format!("{}/{}", info.name, info.version);
    if let Some(t) = current.as_ref().and_then(|c| c.targets.get(&name))
        && t.sha256 != sha
    {
        bail!("{name} is already published with another content (sha256 {}); publish a new version", t.sha256);
    }

    let stored: BlobStored = serde_json::from_slice(
        &hub.raw(
            Method::PUT,
            &format!("/api/v1/repo/blobs/{sha}"),
            Some(bytes.clone().into()),
            "application/octet-stream",
        )
        .await?,
    )?;
    let entry = Target { length: stored.length, sha256: sha.clone(), custom: info };
    let next = add_target(current.as_ref(), name.clone(), entry, now_secs());
    let env = Envelope::sign(&next, &[&key]);
    let body = serde_json::to_vec(&env)?;
    let out: RepoPublished = serde_json::from_slice(
        &hub.raw(Method::POST, "/api/v1/repo/targets", Some(body.into()), "application/json").await?,
    )?;
    println!(
        "published {name}: {} bytes, sha256 {sha}; targets version {}, snapshot {}, timestamp {}",
        bytes.len(),
        out.targets_version,
        out.snapshot_version,
        out.timestamp_version
    );
    Ok(())
}

async fn list(profile: &Path, json: bool) -> Result<()> {
    let hub = HubSession::from_profile(&load(profile)?)?;
    let l: RepoListing = hub.get("/api/v1/repo/targets").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&l)?);
        return Ok(());
    }
    let expires = time::OffsetDateTime::from_unix_timestamp(l.timestamp_expires as i64)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default();
    println!(
        "targets version {}, snapshot {}, timestamp {} (valid until {expires})",
        l.targets_version, l.snapshot_version, l.timestamp_version
    );
    if l.targets.is_empty() {
        println!("nothing published yet");
        return Ok(());
    }
    println!("{:<24} {:<12} {:>12}  {:<16}  install / health", "NAME", "VERSION", "BYTES", "SHA-256");
    for t in &l.targets {
        println!(
            "{:<24} {:<12} {:>12}  {:<16}  {} / {}",
            t.info.name,
            t.info.version,
            t.length,
            &t.sha256[..16.min(t.sha256.len())],
            t.info.install.as_deref().unwrap_or("-"),
            t.info.health.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}
