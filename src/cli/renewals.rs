//! `tether certs renewals`: the device certificate renewals waiting at the
//! hub, and (`--sign --ca DIR`, where the fleet CA's key is) signing them.
//! The hub and the devices check what is signed; the CA's key stays here.
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::specialist::load;
use crate::api::{CertIssue, CertRenewalState, CertRequestView};
use crate::client::hub::HubSession;
use crate::tls::pki::Ca;
use crate::tls::renewal;

#[derive(clap::Args)]
pub struct RenewalsArgs {
    /// The admin's profile (`tether login`).
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Sign every renewal listed, with the fleet CA in `--ca`.
    #[arg(long, requires = "ca")]
    sign: bool,
    /// The folder of the fleet CA (`ca.pem`, `ca.key`).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Sign only this device's renewal.
    #[arg(long)]
    device: Option<String>,
    /// Days the renewed certificates are valid.
    #[arg(long, default_value_t = 825)]
    days: i64,
    #[arg(long)]
    json: bool,
}

fn date(secs: u64) -> String {
    match secs {
        0 => "not seen".into(),
        s => crate::util::clock::day(s),
    }
}

pub async fn run(a: RenewalsArgs) -> Result<()> {
    let hub = HubSession::from_profile(&load(&super::profile_path(a.profile))?)?;
    let mut list: Vec<CertRequestView> = hub.get("/api/v1/cert-requests").await?;
    if let Some(d) = &a.device {
        list.retain(|r| &r.device == d);
    }
    if !a.sign {
        if a.json {
            println!("{}", serde_json::to_string_pretty(&list)?);
        } else if list.is_empty() {
            println!("no certificate renewal is waiting");
        } else {
            println!("{:<20} {:<14} {:<12} {:<12}", "DEVICE", "SITE", "EXPIRES", "ASKED");
            for r in &list {
                println!(
                    "{:<20} {:<14} {:<12} {:<12}",
                    r.device,
                    r.site,
                    date(r.current_not_after),
                    date(r.requested_at)
                );
            }
            println!("sign them where the fleet CA's key is: tether certs renewals --sign --ca DIR");
        }
        return Ok(());
    }
    let dir = a.ca.expect("clap requires --ca with --sign");
    let ca = Ca::load(&dir).with_context(|| format!("the fleet CA in {}", dir.display()))?;
    let (mut signed, mut failed) = (Vec::new(), 0);
    for r in &list {
        let done = match renewal::sign_request(&ca, &r.device, &r.csr, a.days) {
            Ok(cert) => {
                let path = format!("/api/v1/cert-requests/{}", r.device);
                hub.post::<_, CertRenewalState>(&path, &CertIssue { cert }).await.map_err(anyhow::Error::from)
            }
            Err(e) => Err(anyhow::anyhow!("not signed: {e}")),
        };
        match done {
            Ok(s) if a.json => signed.push(s),
            Ok(s) => println!(
                "{}: signed, valid until {}; the device installs it at its next check",
                r.device,
                date(s.not_after)
            ),
            Err(e) => {
                failed += 1;
                eprintln!("{}: {e:#}", r.device);
            }
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&signed)?);
    } else if list.is_empty() {
        println!("no certificate renewal is waiting");
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} renewal(s) not signed", list.len());
    }
    Ok(())
}
