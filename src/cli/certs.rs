//! `tether certs`: fleet PKI material for dev and tests.
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::tls::pki::{self, Ca, Validity};

/// A server's certificate: its name and the names it is reached by.
#[derive(clap::Args)]
pub struct ServerCert {
    #[arg(long)]
    ca: PathBuf,
    /// The server's name (its common name, and a DNS name).
    #[arg(long)]
    name: String,
    /// Further DNS names or IP addresses it is reached by.
    #[arg(long = "san")]
    sans: Vec<String>,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Subcommand)]
pub enum CertsCmd {
    /// Fleet CA, two relay certs, the grant-signing key and device `demo-1`.
    Init {
        #[arg(long)]
        out: PathBuf,
    },
    /// A new fleet CA and grant-signing key for production (in `--out`;
    /// refuses to overwrite): keep `ca.key` offline, `grant.key` on the hub only.
    Ca {
        /// The CA's common name, e.g. "ACME Medical fleet CA".
        #[arg(long)]
        name: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a device certificate (`OU=tether device`) from the CA in `--ca`.
    Device {
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        id: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a relay certificate (`OU=tether relay`): server toward agents
    /// and specialists, client toward the hub, both on the twin link.
    Relay(ServerCert),
    /// Issue the hub's HTTPS certificate (`OU=tether hub`).
    Hub(ServerCert),
    /// A new grant-signing key (`grant.key`, `grant.pub` in `--out`; refuses
    /// to overwrite), for a rollover of the hub's grant key (docs/operator.md).
    GrantKey {
        #[arg(long)]
        out: PathBuf,
    },
    /// Device certificate renewals waiting at the hub (admin); `--sign --ca
    /// DIR` signs them with the fleet CA, which never goes online.
    Renewals(super::renewals::RenewalsArgs),
    /// Print a certificate's role, name, serial and validity.
    Show { cert: PathBuf },
    /// Write a CRL revoking the given certificates.
    Revoke {
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        out: PathBuf,
        certs: Vec<PathBuf>,
    },
}

type Issue = fn(&Ca, &str, &[&str]) -> Result<pki::Issued, crate::tls::TlsError>;

fn server_cert(c: &ServerCert, issue: Issue) -> Result<()> {
    let (name, out) = (c.name.as_str(), &c.out);
    std::fs::create_dir_all(out)?;
    let all: Vec<&str> = std::iter::once(name).chain(c.sans.iter().map(String::as_str)).collect();
    issue(&Ca::load(&c.ca)?, name, &all)?.write(out, name)?;
    println!("wrote {0}/{name}.pem and {0}/{name}.key", out.display());
    Ok(())
}

pub async fn run(cmd: CertsCmd) -> Result<()> {
    match cmd {
        CertsCmd::Init { out } => {
            pki::init_dir(&out, &[crate::dev::DEV_DEVICE])?;
            println!("wrote dev PKI to {} (DEV ONLY)", out.display());
        }
        CertsCmd::Ca { name, out } => {
            for f in ["ca.key", "ca.pem", "grant.key", "grant.pub"] {
                if out.join(f).exists() {
                    anyhow::bail!(
                        "{} exists: a fleet CA is made once (remove it yourself to start over)",
                        out.join(f).display()
                    );
                }
            }
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            Ca::generate(&name)?.write(&out)?;
            pki::write_grant_key(&out)?;
            println!(
                "wrote {0}/ca.pem, {0}/ca.key, {0}/grant.key, {0}/grant.pub: keep ca.key offline; grant.key goes \
                 to the hub only; relays and agents get ca.pem and grant.pub",
                out.display()
            );
        }
        CertsCmd::GrantKey { out } => {
            for f in ["grant.key", "grant.pub"] {
                if out.join(f).exists() {
                    anyhow::bail!("{} exists: write the new key to another folder", out.join(f).display());
                }
            }
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let public = pki::write_grant_key(&out)?;
            println!(
                "wrote {0}/grant.key and {0}/grant.pub ({1}): add {1} as a second line of every relay's and \
                 agent's grant_public_key file, reload them (SIGHUP, or wait 30 s), then switch the hub's \
                 grant_signing_key to {0}/grant.key and restart the hub; once the hub signs with it, remove the \
                 old key's line",
                out.display(),
                hex::encode(public)
            );
        }
        CertsCmd::Device { ca, id, out } => {
            std::fs::create_dir_all(&out)?;
            Ca::load(&ca)?.issue_device(&id, Validity::days(825))?.write(&out, &id)?;
            println!("wrote {0}/{id}.pem and {0}/{id}.key", out.display());
        }
        CertsCmd::Relay(c) => server_cert(&c, Ca::issue_relay)?,
        CertsCmd::Hub(c) => server_cert(&c, Ca::issue_hub)?,
        CertsCmd::Show { cert } => {
            for der in crate::tls::load_certs(&cert)? {
                let (_, x) = x509_parser::parse_x509_certificate(&der)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
                let role = crate::tls::Role::of(&der).map_or("none (refused by every tether surface)", |r| r.name());
                println!("subject:  {}", x.subject());
                println!("role:     {role}");
                println!("serial:   {}", hex::encode(x.raw_serial()));
                println!("valid:    {} .. {}", x.validity().not_before, x.validity().not_after);
            }
        }
        CertsCmd::Renewals(a) => super::renewals::run(a).await?,
        CertsCmd::Revoke { ca, out, certs } => {
            let mut serials = Vec::new();
            for c in &certs {
                for der in crate::tls::load_certs(c)? {
                    let (_, x) = x509_parser::parse_x509_certificate(&der)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", c.display()))?;
                    serials.push(x.raw_serial().to_vec());
                }
            }
            pki::write_file(&out, &Ca::load(&ca)?.crl(&serials)?, false)?;
            println!("wrote CRL revoking {} certificate(s) to {}", serials.len(), out.display());
        }
    }
    Ok(())
}
