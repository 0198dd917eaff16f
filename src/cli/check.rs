//! `--check` for the relay, the hub and the agent: besides the config's own
//! rules, what the start would refuse (a key that is not the certificate's,
//! a certificate of another role or name) and what peers would refuse (a
//! certificate expired, revoked or from another CA; the hub's database out
//! of reach or refusing it). Each problem is one line naming what to fix.
use std::path::Path;

use anyhow::{Result, bail};

use crate::tls::{self, Role};

/// The findings of one `--check`.
pub struct Report {
    config: String,
    problems: Vec<String>,
    notes: Vec<String>,
}

impl Report {
    pub fn new(config: &Path) -> Report {
        Report { config: config.display().to_string(), problems: Vec::new(), notes: Vec::new() }
    }

    pub fn problem(&mut self, what: &str, text: impl std::fmt::Display) {
        self.problems.push(format!("{what}: {text}"));
    }

    pub fn note(&mut self, what: &str, text: impl std::fmt::Display) {
        self.notes.push(format!("{what}: {text}"));
    }

    /// The process's own certificate: its pair, role and name, and its
    /// standing under the fleet CA and CRL.
    pub fn own(
        &mut self,
        (cert, key): (&Path, &Path),
        role: Role,
        name: Option<&str>,
        (ca, crl): (&Path, Option<&Path>),
    ) {
        let own = match tls::own::identity(cert, key, role, name) {
            Ok(own) => own,
            Err(e) => return self.problem("certificate", e),
        };
        let now = crate::util::now_secs() as i64;
        match tls::own::standing(&own, ca, crl, now) {
            Err(e) => self.problem("certificate", e),
            Ok(s) if s.problems.is_empty() => {
                let crl = if crl.is_some() { ", not revoked" } else { "" };
                self.note("certificate", format!("{}, signed by the fleet CA{crl}", own.describe(now)));
                for w in s.warnings {
                    self.note("warning", w);
                }
            }
            Ok(s) => s.problems.into_iter().for_each(|p| self.problem("certificate", p)),
        }
    }

    /// Prints the findings; fails (exit 1) if there is a problem.
    pub fn finish(self) -> Result<()> {
        if !self.problems.is_empty() {
            let lines: Vec<String> = self.problems.iter().map(|p| format!("  - {p}")).collect();
            bail!("{} has {} problem(s):\n{}", self.config, self.problems.len(), lines.join("\n"));
        }
        println!("{}: ok", self.config);
        for n in &self.notes {
            println!("  {n}");
        }
        Ok(())
    }
}

/// The grant public keys a relay or an agent checks grants with.
pub fn grant_keys(r: &mut Report, path: &Path) {
    match tls::read_grant_keys(path) {
        Ok(keys) => r.note("grant keys", format!("{} in {}", keys.len(), path.display())),
        Err(e) => r.problem("grant_public_key", e),
    }
}

/// At a start: a key, role or name that is not this process's stops it;
/// a certificate its peers would refuse is logged as an error, and one
/// about to end as a warning, and the start goes on (a replaced
/// certificate is picked up without a config change).
pub fn at_start(cert: (&Path, &Path), role: Role, name: Option<&str>, fleet: (&Path, Option<&Path>)) -> Result<()> {
    let own = tls::own::identity(cert.0, cert.1, role, name)?;
    let now = crate::util::now_secs() as i64;
    let s = tls::own::standing(&own, fleet.0, fleet.1, now)?;
    for p in s.problems {
        tracing::error!(cert = %cert.0.display(), "{p}");
    }
    for w in s.warnings {
        tracing::warn!(cert = %cert.0.display(), "{w}");
    }
    Ok(())
}

pub fn relay(config: &Path, cfg: &crate::relay::RelayConfig) -> Result<()> {
    let mut r = Report::new(config);
    r.own((&cfg.cert, &cfg.key), Role::Relay, Some(&cfg.name), (&cfg.ca, cfg.crl.as_deref()));
    grant_keys(&mut r, &cfg.grant_public_key);
    match &cfg.twin {
        Some(t) => r.note("twin", format!("{} at {}", t.name, t.addr)),
        None => r.note("twin", "none: live sessions end with this relay"),
    }
    match &cfg.hub {
        Some(h) => r.note("hub", &h.url),
        None => r.note("hub", "none: this relay reports to no hub"),
    }
    r.finish()
}

pub fn agent(config: &Path, cfg: &crate::agent::AgentConfig) -> Result<()> {
    let mut r = Report::new(config);
    r.own((&cfg.cert, &cfg.key), Role::Device, Some(&cfg.device), (&cfg.ca, cfg.crl.as_deref()));
    grant_keys(&mut r, &cfg.grant_public_key);
    let relays: Vec<&str> = cfg.relays.iter().map(|x| x.name.as_str()).collect();
    r.note("relays", relays.join(", "));
    let mut services: Vec<String> = cfg.services.iter().map(|(n, s)| format!("{n} -> {}", s.target)).collect();
    services.sort();
    r.note("services", services.join(", "));
    r.finish()
}

/// The hub's check reaches its database as its start would (bounded by
/// the dial's timeout), without creating or migrating anything.
pub async fn hub(config: &Path, cfg: &crate::hub::HubConfig) -> Result<()> {
    use crate::hub::store::probe;
    let mut r = Report::new(config);
    r.own((&cfg.cert, &cfg.key), Role::Hub, None, (&cfg.ca, cfg.crl.as_deref()));
    match tls::pki::load_grant_signer(&cfg.grant_signing_key) {
        Ok(_) => r.note("grant key", cfg.grant_signing_key.display()),
        Err(e) => r.problem("grant_signing_key", e),
    }
    if !cfg.secrets_key.exists() {
        r.note("secrets_key", format!("{}: created at the first start; back it up then", cfg.secrets_key.display()));
    } else if let Err(e) = std::fs::read(&cfg.secrets_key) {
        r.problem("secrets_key", format!("{}: {e}", cfg.secrets_key.display()));
    }
    // Where, without the password or the URL's options.
    let db = cfg.database_place().split('?').next().unwrap_or("");
    let why = |e: crate::hub::store::StoreError| e.to_string().trim_start_matches("database: ").to_string();
    match probe::probe(&cfg.database, Path::new(".")).await {
        Ok(p) => match p.verdict() {
            Ok(text) => r.note("database", format!("{db} ({text})")),
            Err(text) => r.problem("database", format!("{db} ({text})")),
        },
        Err(e @ crate::hub::store::StoreError::Unavailable(_)) => {
            r.problem("database", format!("{db}: {} (the hub would start, answer 503 and wait for it)", why(e)))
        }
        Err(e) => r.problem("database", format!("{db}: {} (the hub would not start)", why(e))),
    }
    r.finish()
}
