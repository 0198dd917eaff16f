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

impl RelayEntry {
    pub fn server_name(&self) -> &str {
        self.server_name.as_deref().unwrap_or(&self.name)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Who the specialist is (the hub will fill this from the login).
    pub specialist: String,
    #[serde(default = "default_role")]
    pub role: String,
    /// Fleet root CA that relay certificates chain to.
    pub ca: PathBuf,
    /// DEV ONLY: the grant-signing key, so the client signs its own grants
    /// until the hub exists. A production profile never holds it.
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
    /// The relay pair, in order of preference.
    pub relays: Vec<RelayEntry>,
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
        if let Some(k) = self.grant_signing_key.as_mut() {
            resolve(base, k);
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        must_exist(&mut p, "ca", &self.ca);
        match &self.grant_signing_key {
            Some(k) => must_exist(&mut p, "grant_signing_key", k),
            None => p.push("grant_signing_key: required until the hub exists (dev profiles only)".into()),
        }
        if self.relays.is_empty() {
            p.push("relays: at least one relay is required".into());
        }
        p
    }
}
