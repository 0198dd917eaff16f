//! `tether certs`: fleet PKI material for dev and tests.
use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use crate::tls::pki::{self, Ca, Validity};

#[derive(Subcommand)]
pub enum CertsCmd {
    /// Fleet CA, two relay certs, the grant-signing key and device `demo-1`.
    Init {
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a device certificate from the CA in `--ca`.
    Device {
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        id: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a CRL revoking the given certificates.
    Revoke {
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        out: PathBuf,
        certs: Vec<PathBuf>,
    },
}

pub fn run(cmd: CertsCmd) -> Result<()> {
    match cmd {
        CertsCmd::Init { out } => {
            pki::init_dir(&out, &[crate::dev::DEV_DEVICE])?;
            println!("wrote dev PKI to {} (DEV ONLY)", out.display());
        }
        CertsCmd::Device { ca, id, out } => {
            std::fs::create_dir_all(&out)?;
            Ca::load(&ca)?.issue_device(&id, Validity::days(825))?.write(&out, &id)?;
            println!("wrote {0}/{id}.pem and {0}/{id}.key", out.display());
        }
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
