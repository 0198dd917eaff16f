//! `hub.toml`.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::model::Role;
use crate::config::{ConfigFile, must_exist, resolve};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// HTTPS API (`/api/v1`), for specialists, admins and relays (17010).
    pub listen: SocketAddr,
    /// Fleet root CA: relays present certificates chaining to it.
    pub ca: PathBuf,
    /// The hub's server certificate and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CRL (PEM) of the fleet CA: a revoked relay certificate is refused,
    /// and dropped if connected. Reloaded on SIGHUP and every minute.
    #[serde(default)]
    pub crl: Option<PathBuf>,
    /// The Ed25519 grant-signing key (PKCS#8 PEM). Only the hub holds it.
    pub grant_signing_key: PathBuf,
    /// Development only: accept the committed `certs-dev/` material.
    #[serde(default)]
    pub dev: bool,
    /// The key (64 hex digits, 0600) that seals TOTP seeds in the database;
    /// created on first start when missing. Back it up apart from the database.
    #[serde(default = "default_secrets_key")]
    pub secrets_key: PathBuf,
    /// Where hub audit records that wait for the database are kept, so that
    /// they outlive a stop of the hub (default: `hub-audit-waiting.jsonl`
    /// beside `secrets_key`, in the hub's state directory).
    #[serde(default)]
    pub audit_spool: Option<PathBuf>,
    /// `sqlite:PATH` (relative to this file) or `postgres://user:pass@host/db`.
    #[serde(default = "default_database")]
    pub database: String,
    /// Name shown in authenticator apps.
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// Lifetime of a login token.
    #[serde(default = "default_token_ttl")]
    pub token_ttl_secs: u64,
    /// The web console: a session ends after this long without use…
    #[serde(default = "default_console_idle")]
    pub console_idle_secs: u64,
    /// …and this long after sign-in in any case.
    #[serde(default = "default_console_session")]
    pub console_session_secs: u64,
    /// Lifetime of a grant: the client must open the session within it.
    #[serde(default = "default_grant_ttl")]
    pub grant_ttl_secs: u64,
    /// Largest request body accepted.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// A request's body must arrive within this (a trickled body is cut off: 408).
    #[serde(default = "default_body_timeout")]
    pub body_timeout_secs: u64,
    /// Load balancers in front of `listen` (CIDR blocks) that
    /// send a PROXY v2 header (HAProxy `send-proxy-v2`): from them it is
    /// required and its source is what site rules, login limits and audit
    /// see; from anyone else a PROXY header is refused. Default: none.
    #[serde(default)]
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
    /// Sources (CIDR blocks) that may read `/metrics`: the port faces the
    /// specialists, and the counts (logins refused, sessions, fleet size)
    /// are nobody else's business. Default: loopback only; name the
    /// Prometheus server's address.
    #[serde(default = "default_metrics_from")]
    pub metrics_from: Vec<ipnet::IpNet>,
    /// Connections open at once; past it, new ones are closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// The least role a service needs; services not listed need `default_service_role`.
    #[serde(default)]
    pub service_roles: BTreeMap<String, Role>,
    #[serde(default = "default_service_role")]
    pub default_service_role: Role,
    /// A relay that has not reported for this long is not routed to.
    #[serde(default = "default_stale")]
    pub relay_stale_ms: u64,
    /// A live session that no relay has listed for this long (and every
    /// relay has reported since, or been silent that long) is recorded as
    /// ended, reason `lost` (docs/hub.md). Longer than a client's resume.
    #[serde(default = "default_session_lost")]
    pub session_lost_secs: u64,
    #[serde(default)]
    pub lockout: Lockout,
    /// Bounds on login attempts before any password is checked.
    #[serde(default)]
    pub login: super::limits::LoginLimits,
    /// The relay pair, with the address specialists dial.
    pub relays: Vec<HubRelay>,
    /// The signed software repository (docs/fleet.md); none: no repository.
    #[serde(default)]
    pub repo: Option<RepoConfig>,
    /// Where files that devices upload are kept (none: upload jobs refused).
    #[serde(default)]
    pub uploads: Option<UploadsConfig>,
}

/// `[uploads]`: device uploads, one archive per job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadsConfig {
    /// Created if missing; `JOB.part` while arriving, `JOB.tar` once whole.
    pub dir: PathBuf,
    /// Largest upload one job may store.
    #[serde(default = "default_max_upload")]
    pub max_bytes: u64,
}

fn default_session_lost() -> u64 {
    120
}

fn default_secrets_key() -> PathBuf {
    "hub-secrets.key".into()
}

fn default_max_upload() -> u64 {
    256 << 20
}

/// `[repo]`: where the repository lives and the hub's online keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// Metadata and content-addressed artifacts; `metadata/root.json` must be there.
    pub dir: PathBuf,
    /// Online keys (PKCS#8 PEM) for the snapshot and timestamp roles.
    pub snapshot_key: PathBuf,
    pub timestamp_key: PathBuf,
    /// Largest artifact accepted.
    #[serde(default = "default_max_artifact")]
    pub max_artifact_bytes: u64,
}

fn default_max_artifact() -> u64 {
    1 << 30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubRelay {
    /// The relay's name; its client certificate's common name when it reports.
    pub name: String,
    /// Specialist-leg address (17443), or the load balancer in front of the twins.
    pub addr: String,
    #[serde(default)]
    pub server_name: Option<String>,
}

/// Failed logins in a row before the account name is locked, and for how long.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Lockout {
    pub max_failures: u32,
    /// First lock; doubles with each further failure, up to `max_delay_secs`.
    pub base_delay_secs: u64,
    pub max_delay_secs: u64,
}

impl Default for Lockout {
    fn default() -> Self {
        Lockout { max_failures: 5, base_delay_secs: 30, max_delay_secs: 3600 }
    }
}

impl Lockout {
    /// Seconds locked after `failures` failures in a row (0: not locked).
    pub fn delay(&self, failures: i64) -> u64 {
        let over = failures - i64::from(self.max_failures);
        if over < 0 {
            return 0;
        }
        let doubled = self.base_delay_secs.saturating_mul(1u64 << over.min(30));
        doubled.min(self.max_delay_secs)
    }
}

fn default_body_timeout() -> u64 {
    10
}

fn default_metrics_from() -> Vec<ipnet::IpNet> {
    ["127.0.0.0/8", "::1/128"].iter().filter_map(|n| n.parse().ok()).collect()
}

fn default_max_connections() -> usize {
    4096
}

fn default_database() -> String {
    "sqlite:hub.db".into()
}
fn default_issuer() -> String {
    "tether".into()
}
fn default_console_idle() -> u64 {
    900
}
fn default_console_session() -> u64 {
    8 * 3600
}
fn default_token_ttl() -> u64 {
    900
}
fn default_grant_ttl() -> u64 {
    120
}
fn default_max_body() -> usize {
    64 * 1024
}
fn default_service_role() -> Role {
    Role::Engineer
}
fn default_stale() -> u64 {
    3000
}

impl HubConfig {
    /// Where the database is, for people: the URL without its user and
    /// password (PostgreSQL) or the `sqlite:` path.
    pub fn database_place(&self) -> &str {
        self.database.split('@').next_back().unwrap_or("")
    }

    /// The least role `service` needs.
    pub fn service_role(&self, service: &str) -> Role {
        self.service_roles.get(service).copied().unwrap_or(self.default_service_role)
    }

    /// The file that keeps hub audit records waiting for the database.
    pub fn audit_spool(&self) -> PathBuf {
        self.audit_spool.clone().unwrap_or_else(|| {
            let dir = self.secrets_key.parent().unwrap_or(Path::new("."));
            dir.join("hub-audit-waiting.jsonl")
        })
    }
}

impl ConfigFile for HubConfig {
    fn resolve_paths(&mut self, base: &Path) {
        for p in [&mut self.ca, &mut self.cert, &mut self.key, &mut self.grant_signing_key, &mut self.secrets_key] {
            resolve(base, p);
        }
        if let Some(crl) = &mut self.crl {
            resolve(base, crl);
        }
        if let Some(spool) = &mut self.audit_spool {
            resolve(base, spool);
        }
        if let Some(r) = &mut self.repo {
            for p in [&mut r.dir, &mut r.snapshot_key, &mut r.timestamp_key] {
                resolve(base, p);
            }
        }
        if let Some(u) = &mut self.uploads {
            resolve(base, &mut u.dir);
        }
        if let Some(path) = self.database.strip_prefix("sqlite:")
            && Path::new(path).is_relative()
        {
            self.database = format!("sqlite:{}", base.join(path).display());
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        crate::config::refuse_dev_material(
            &mut p,
            self.dev,
            &[("ca", self.ca.as_path()), ("grant_signing_key", self.grant_signing_key.as_path())],
        );
        must_exist(&mut p, "ca", &self.ca);
        must_exist(&mut p, "cert", &self.cert);
        must_exist(&mut p, "key", &self.key);
        must_exist(&mut p, "grant_signing_key", &self.grant_signing_key);
        if let Some(crl) = &self.crl {
            must_exist(&mut p, "crl", crl);
        }
        if self.relays.is_empty() {
            p.push("relays: at least one relay is required".into());
        }
        if !(self.database.starts_with("sqlite:") || self.database.starts_with("postgres")) {
            p.push(format!("database: {:?}: use sqlite:PATH or postgres://…", self.database));
        }
        if self.token_ttl_secs == 0 || self.grant_ttl_secs == 0 {
            p.push("token_ttl_secs and grant_ttl_secs must be at least 1".into());
        }
        if let Some(r) = &self.repo {
            must_exist(&mut p, "repo.dir", &r.dir);
            must_exist(&mut p, "repo.snapshot_key", &r.snapshot_key);
            must_exist(&mut p, "repo.timestamp_key", &r.timestamp_key);
        }
        if self.lockout.max_failures == 0 {
            p.push("lockout.max_failures: must be at least 1".into());
        }
        p
    }
}
