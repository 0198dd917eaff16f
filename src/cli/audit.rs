//! `tether audit verify` and `tether audit export`.
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Subcommand;

use crate::api::{Anchor, parse_since};
use crate::tls::Role;

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Check an audit log: its hash chain (the first altered, missing or
    /// reordered record is named), with `--cert` every record's signature by
    /// that host's key, and with `--profile` the hub's anchors of this log
    /// (records cut off its end).
    Verify {
        /// The log, or its files in chain order: the rotated ones
        /// (`NAME.SEQ`, as a shell glob sorts them), then `NAME`.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The certificate of the host that wrote the log (relay or device).
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Compare with the hub's anchors (needs `--cert`; admin).
        #[arg(long, requires = "cert")]
        profile: Option<PathBuf>,
    },
    /// Admin: the hub's audit records since a time, as JSON lines (for a SIEM).
    Export {
        /// RFC 3339 time or unix seconds.
        #[arg(long)]
        since: String,
        #[arg(long)]
        profile: Option<PathBuf>,
        /// Write here (0600) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub async fn run(cmd: AuditCmd) -> Result<()> {
    match cmd {
        AuditCmd::Verify { files, cert, profile } => verify(&files, cert.as_deref(), profile.as_deref()).await,
        AuditCmd::Export { since, profile, out } => export(&super::profile_path(profile), &since, out).await,
    }
}

async fn verify(files: &[PathBuf], cert: Option<&Path>, profile: Option<&Path>) -> Result<()> {
    let cert = match cert {
        Some(p) => Some(crate::tls::load_certs(p)?.remove(0).to_vec()),
        None => None,
    };
    let (n, _) = crate::audit::verify_files(files, cert.as_deref())?;
    let signed = if cert.is_some() { ", every record signed by the certificate's key" } else { "" };
    let file = files.last().expect("clap requires one file");
    let shown = match files {
        [one] => one.display().to_string(),
        [first, .., last] => format!("{} .. {} ({} files)", first.display(), last.display(), files.len()),
        [] => String::new(),
    };
    println!("{shown}: {n} records, chain intact{signed}");
    let (Some(profile), Some(cert)) = (profile, cert) else { return Ok(()) };
    let source = source_of(&cert)?;
    let path = format!("/api/v1/audit/anchors/{source}");
    let anchors: Vec<Anchor> = super::specialist::hub_session(profile)?.get(&path).await?;
    let Some(last) = anchors.last() else {
        println!("the hub holds no anchor of {source} yet");
        return Ok(());
    };
    let hashes: std::collections::HashMap<u64, String> = files
        .iter()
        .flat_map(|f| crate::audit::read_all(f))
        .filter_map(|r| Some((r["seq"].as_u64()?, r["hash"].as_str()?.to_string())))
        .collect();
    for a in &anchors {
        match hashes.get(&a.seq) {
            None if a.seq > n => bail!(
                "{}: truncated: the hub anchored record seq {} of {source} (at {}), the log ends at seq {n}: records {}..{} were removed",
                file.display(),
                a.seq,
                a.at,
                n + 1,
                last.seq
            ),
            Some(h) if *h == a.hash => {}
            _ => bail!("{}: record seq {} differs from the hub's anchor of {source}", file.display(), a.seq),
        }
    }
    println!("matches the hub's {} anchor(s) of {source} (last: seq {})", anchors.len(), last.seq);
    Ok(())
}

/// `relay:NAME` or `agent:DEVICE`, from the certificate's role and name.
fn source_of(cert: &[u8]) -> Result<String> {
    let der = rustls::pki_types::CertificateDer::from(cert);
    let name = crate::tls::peer_common_name(Some(std::slice::from_ref(&der)));
    match (Role::of(cert), name) {
        (Some(Role::Relay), Some(n)) => Ok(format!("relay:{n}")),
        (Some(Role::Device), Some(n)) => Ok(format!("agent:{n}")),
        (role, _) => bail!("--cert: a relay's or a device's certificate is needed (role {role:?})"),
    }
}

async fn export(path: &Path, since: &str, out: Option<PathBuf>) -> Result<()> {
    let Some(t) = parse_since(since) else { bail!("--since: RFC 3339 time (2026-11-29T00:00:00Z) or unix seconds") };
    let text = super::specialist::hub_session(path)?.text(&format!("/api/v1/audit?since={t}")).await?;
    match out {
        Some(p) => {
            crate::tls::pki::write_file(&p, &text, true)?;
            eprintln!("wrote {} records to {}", text.lines().count(), p.display());
        }
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    Ok(())
}
