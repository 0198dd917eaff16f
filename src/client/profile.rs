//! `client.toml`: the specialist's profile.
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{ConfigFile, must_exist, resolve};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayEntry {
    pub name: String,
    /// Specialist-leg address (17443), or the load balancer in front of the twins.
    pub addr: String,
    /// Name to verify in the relay's certificate; defaults to `name`.
    #[serde(default)]
    pub server_name: Option<String>,
}

impl From<crate::api::RelayAddr> for RelayEntry {
    fn from(r: crate::api::RelayAddr) -> RelayEntry {
        RelayEntry { name: r.name, addr: r.addr, server_name: r.server_name }
    }
}

impl RelayEntry {
    pub fn server_name(&self) -> &str {
        self.server_name.as_deref().unwrap_or(&self.name)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Who the specialist is, for dev-signed grants (the hub uses the login).
    #[serde(default)]
    pub specialist: String,
    #[serde(default = "default_role")]
    pub role: String,
    /// Fleet root CA that relay certificates chain to.
    pub ca: PathBuf,
    /// The hub that authenticates the specialist and signs grants.
    #[serde(default)]
    pub hub: Option<HubLogin>,
    /// TESTS ONLY: the grant-signing key, so the client signs its own grants
    /// without a hub. A production profile never holds it.
    #[serde(default)]
    pub grant_signing_key: Option<PathBuf>,
    #[serde(default = "default_ttl")]
    pub grant_ttl_secs: u64,
    /// Bytes kept unacknowledged per direction of a tunnelled connection, for
    /// resuming after a relay fails.
    #[serde(default = "crate::agent::config::default_resume_buffer")]
    pub resume_buffer_bytes: usize,
    /// A connection whose leg broke is closed if it cannot resume within this.
    #[serde(default = "crate::agent::config::default_resume_deadline")]
    pub resume_deadline_secs: u64,
    /// `auto` (QUIC when UDP gets through, else TCP), `quic` or `tcp`.
    #[serde(default)]
    pub transport: crate::quic::Transport,
    /// The relay pair, in order of preference (with a hub: the hub's answer).
    #[serde(default)]
    pub relays: Vec<RelayEntry>,
    /// The repository's targets key (PKCS#8 PEM) that `tether repo publish`
    /// signs with: an admin's offline key (the dev profile: the dev key).
    #[serde(default)]
    pub repo_targets_key: Option<PathBuf>,
    /// Where the profile was read from (`tether login` writes the token there).
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

/// `[hub]` of a profile.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HubLogin {
    /// `https://host:port`.
    pub url: String,
    #[serde(default)]
    pub server_name: Option<String>,
    pub user: String,
    /// Written by `tether login`; short-lived.
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub token_expires_at: Option<u64>,
    /// DEV ONLY (`tether dev`): files holding the dev account's password and
    /// TOTP secret, so the dev profile logs in by itself. Never in a real profile.
    #[serde(default)]
    pub dev_password_file: Option<PathBuf>,
    #[serde(default)]
    pub dev_totp_secret_file: Option<PathBuf>,
}

impl Profile {
    /// Loads a profile and remembers its path.
    pub fn open(path: &Path) -> Result<Profile, crate::config::ConfigError> {
        let mut p = Profile::load(path)?;
        p.path = Some(path.to_path_buf());
        Ok(p)
    }
}

fn default_role() -> String {
    "engineer".into()
}
fn default_ttl() -> u64 {
    120
}

impl ConfigFile for Profile {
    fn resolve_paths(&mut self, base: &Path) {
        resolve(base, &mut self.ca);
        for k in [self.grant_signing_key.as_mut(), self.repo_targets_key.as_mut()].into_iter().flatten() {
            resolve(base, k);
        }
        if let Some(h) = self.hub.as_mut() {
            for f in [h.dev_password_file.as_mut(), h.dev_totp_secret_file.as_mut()].into_iter().flatten() {
                resolve(base, f);
            }
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        must_exist(&mut p, "ca", &self.ca);
        match (&self.hub, &self.grant_signing_key) {
            (Some(h), _) => {
                if !h.url.starts_with("https://") {
                    p.push(format!("hub.url: {:?} must start with https://", h.url));
                }
                if h.user.is_empty() {
                    p.push("hub.user: must not be empty".into());
                }
            }
            (None, Some(k)) => must_exist(&mut p, "grant_signing_key", k),
            (None, None) => p.push("[hub]: required (url and user; then `tether login`)".into()),
        }
        if self.hub.is_none() && self.relays.is_empty() {
            p.push("relays: at least one relay is required without a hub".into());
        }
        p
    }
}
