//! `agent.toml`.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{ConfigFile, must_exist, resolve};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consent {
    /// Admit at once.
    Auto,
    /// Wait for `tether agent approve` from the on-site operator.
    Required,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayEndpoint {
    pub name: String,
    /// Control channel address (17001).
    pub control: String,
    /// Data leg address (17002).
    pub data: String,
    /// QUIC (UDP) address; defaults to the data address (17002).
    #[serde(default)]
    pub quic: Option<String>,
    /// Name to verify in the relay's certificate; defaults to `name`.
    #[serde(default)]
    pub server_name: Option<String>,
}

impl RelayEndpoint {
    pub fn server_name(&self) -> &str {
        self.server_name.as_deref().unwrap_or(&self.name)
    }

    pub fn quic_addr(&self) -> &str {
        self.quic.as_deref().unwrap_or(&self.data)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// `HOST:PORT` of the local service. Loopback unless listed in `extra_targets`.
    pub target: String,
}

/// `[checks.NAME]`: a command a `run NAME` job may run on this device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// Run with `sh -c` in the agent's working folder.
    pub command: String,
    #[serde(default = "default_check_timeout")]
    pub timeout_secs: u64,
}

fn default_check_timeout() -> u64 {
    60
}

/// `[uploads.NAME]`: files an `upload NAME` job may send to the hub (the
/// hub names a set, never a path).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadSet {
    /// Files or folders (folders whole; symbolic links are sent as links,
    /// never followed).
    pub paths: Vec<PathBuf>,
    /// The largest archive this set may make; a bigger one is refused
    /// before anything is sent.
    #[serde(default = "default_upload_cap")]
    pub max_bytes: u64,
}

fn default_upload_cap() -> u64 {
    64 << 20
}

/// `[repo]`: where the device's software comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoSettings {
    /// The repository's root metadata shipped with the device: the first
    /// thing it trusts (later roots must be signed by this one's keys).
    pub root: PathBuf,
    /// Trusted metadata, partial downloads, verified artifacts, job records.
    pub state_dir: PathBuf,
    /// Where packages install: `NAME/VERSION/` and `NAME/current` pointing at
    /// the active version (default: `state_dir/packages`).
    #[serde(default)]
    pub packages: Option<PathBuf>,
    /// This device's class; targets built for another class are refused.
    #[serde(default)]
    pub device_class: Option<String>,
    /// Download (and upload) rate cap in bytes per second, so a transfer
    /// cannot starve live sessions (0: no cap).
    #[serde(default = "default_download_rate")]
    pub max_download_bytes_per_sec: u64,
}

impl RepoSettings {
    pub fn packages_dir(&self) -> PathBuf {
        self.packages.clone().unwrap_or_else(|| self.state_dir.join("packages"))
    }
}

fn default_download_rate() -> u64 {
    8 << 20
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This device's id; must equal the common name of `cert`.
    pub device: String,
    pub ca: PathBuf,
    /// CRL (PEM) of the fleet CA: a relay whose certificate it revokes is
    /// refused, and dropped if connected. Reloaded on SIGHUP and every minute.
    #[serde(default)]
    pub crl: Option<PathBuf>,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The hub's grant-verifying key (hex).
    pub grant_public_key: PathBuf,
    pub consent: Consent,
    #[serde(default = "default_consent_timeout")]
    pub consent_timeout_secs: u64,
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: u64,
    /// Bytes kept unacknowledged per direction of a tunnelled connection, for
    /// resuming after a relay fails (back-pressure beyond, never a drop).
    #[serde(default = "default_resume_buffer")]
    pub resume_buffer_bytes: usize,
    /// A connection whose leg broke is closed if it cannot resume within this.
    #[serde(default = "default_resume_deadline")]
    pub resume_deadline_secs: u64,
    /// Unix socket for `tether agent approve|deny|pending|end` (mode 0600).
    pub operator_socket: PathBuf,
    pub audit_log: PathBuf,
    /// Start a new audit file past this size (bytes; 0: never). The full
    /// one is renamed `NAME.SEQ`; `tether audit verify NAME.* NAME` checks
    /// the chain across them. Default 64 MiB.
    #[serde(default = "crate::config::default_audit_rotate_bytes")]
    pub audit_rotate_bytes: u64,
    /// Development only: accept the committed `certs-dev/` material.
    #[serde(default)]
    pub dev: bool,
    /// Session ids of grants admitted, kept until they expire, so that a
    /// restart admits none of them again (default: beside the audit log,
    /// `NAME.used-grants`).
    #[serde(default)]
    pub replay_file: Option<PathBuf>,
    /// Both twins of the device's relay pair.
    pub relays: Vec<RelayEndpoint>,
    /// `auto` (QUIC when UDP gets through, else TCP), `quic` or `tcp`.
    #[serde(default)]
    pub transport: crate::quic::Transport,
    /// After falling back to TCP, try QUIC again this often (while no
    /// session is live: moving the control channel would end them).
    #[serde(default = "default_reprobe")]
    pub quic_reprobe_secs: u64,
    /// The local allow-list: service name -> target.
    pub services: BTreeMap<String, Service>,
    /// Non-loopback targets the device owner explicitly allows (`IP:PORT`).
    #[serde(default)]
    pub extra_targets: Vec<SocketAddr>,
    /// The software repository (none: the device takes no software).
    #[serde(default)]
    pub repo: Option<RepoSettings>,
    /// The checks `run` jobs may name (the hub names a check, never a command).
    #[serde(default)]
    pub checks: BTreeMap<String, Check>,
    /// The file sets `upload` jobs may name.
    #[serde(default)]
    pub uploads: BTreeMap<String, UploadSet>,
    /// Ask for a renewed certificate, through the relays, once the device's
    /// has fewer days than this left (0: never; default 60).
    #[serde(default = "default_renew_days")]
    pub cert_renew_days: u64,
    /// How often the renewal checks the certificate and asks the hub
    /// whether the renewed one is signed (seconds; default 3600).
    #[serde(default = "default_cert_check")]
    pub cert_check_secs: u64,
}

fn default_renew_days() -> u64 {
    60
}
fn default_cert_check() -> u64 {
    3600
}

fn default_consent_timeout() -> u64 {
    300
}
fn default_heartbeat() -> u64 {
    30
}
fn default_reprobe() -> u64 {
    300
}
pub(crate) fn default_resume_buffer() -> usize {
    8 << 20
}
pub(crate) fn default_resume_deadline() -> u64 {
    30
}

/// True when `addr` may be dialled as a service target.
pub fn target_allowed(addr: &SocketAddr, extra: &[SocketAddr]) -> bool {
    addr.ip().is_loopback() || extra.contains(addr)
}

impl ConfigFile for AgentConfig {
    fn resolve_paths(&mut self, base: &Path) {
        for p in [
            &mut self.ca,
            &mut self.cert,
            &mut self.key,
            &mut self.grant_public_key,
            &mut self.operator_socket,
            &mut self.audit_log,
        ] {
            resolve(base, p);
        }
        if let Some(crl) = &mut self.crl {
            resolve(base, crl);
        }
        if let Some(p) = &mut self.replay_file {
            resolve(base, p);
        }
        if let Some(r) = &mut self.repo {
            resolve(base, &mut r.root);
            resolve(base, &mut r.state_dir);
            if let Some(p) = &mut r.packages {
                resolve(base, p);
            }
        }
        for set in self.uploads.values_mut() {
            for p in &mut set.paths {
                resolve(base, p);
            }
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        crate::config::refuse_dev_material(
            &mut p,
            self.dev,
            &[("ca", self.ca.as_path()), ("grant_public_key", self.grant_public_key.as_path())],
        );
        if self.device.trim().is_empty() {
            p.push("device: must not be empty".into());
        }
        must_exist(&mut p, "ca", &self.ca);
        must_exist(&mut p, "cert", &self.cert);
        must_exist(&mut p, "key", &self.key);
        must_exist(&mut p, "grant_public_key", &self.grant_public_key);
        if let Some(crl) = &self.crl {
            must_exist(&mut p, "crl", crl);
        }
        if self.relays.is_empty() {
            p.push("relays: at least one relay is required (normally both twins)".into());
        }
        if self.resume_buffer_bytes < 64 * 1024 {
            p.push("resume_buffer_bytes: at least 65536".into());
        }
        if let Some(r) = &self.repo {
            must_exist(&mut p, "repo.root", &r.root);
        }
        if !self.uploads.is_empty() && self.repo.is_none() {
            p.push("uploads: needs [repo] (its state_dir keeps archives while they are sent)".into());
        }
        for (name, set) in &self.uploads {
            if set.paths.is_empty() {
                p.push(format!("uploads.{name}.paths: name at least one file or folder"));
            }
            if set.paths.iter().any(|p| p.file_name().is_none()) {
                p.push(format!("uploads.{name}.paths: each path must end in a file or folder name"));
            }
        }
        if self.quic_reprobe_secs == 0 {
            p.push("quic_reprobe_secs: must be at least 1".into());
        }
        if self.heartbeat_secs == 0 {
            p.push("heartbeat_secs: must be at least 1".into());
        }
        for (name, svc) in &self.services {
            match svc.target.parse::<SocketAddr>() {
                Ok(addr) if target_allowed(&addr, &self.extra_targets) => {}
                Ok(addr) => p.push(format!(
                    "services.{name}.target: {addr} is outside loopback; list it in extra_targets to allow it"
                )),
                Err(_) => p.push(format!("services.{name}.target: {:?} is not IP:PORT", svc.target)),
            }
        }
        p
    }
}

impl AgentConfig {
    /// Where used grants are kept: `replay_file`, or beside the audit log.
    pub fn replay_path(&self) -> PathBuf {
        self.replay_file.clone().unwrap_or_else(|| self.audit_log.with_extension("used-grants"))
    }
}
