//! TOML config files: read, resolve relative paths, validate everything at once.
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a config file was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path} has {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
    Invalid { path: PathBuf, problems: Vec<String> },
}

/// A config file: paths inside it are relative to the file's folder.
pub trait ConfigFile: DeserializeOwned + Sized {
    /// Makes every relative path absolute against `base`.
    fn resolve_paths(&mut self, base: &Path);
    /// Every problem found, not just the first.
    fn problems(&self) -> Vec<String>;

    fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut cfg: Self =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        cfg.resolve_paths(&base);
        let problems = cfg.problems();
        if problems.is_empty() { Ok(cfg) } else { Err(ConfigError::Invalid { path: path.into(), problems }) }
    }
}

/// `p` made absolute against `base` when it is relative.
pub fn resolve(base: &Path, p: &mut PathBuf) {
    if p.is_relative() {
        *p = base.join(&*p);
    }
}

/// Adds a problem when a file the config names does not exist.
pub fn must_exist(problems: &mut Vec<String>, what: &str, p: &Path) {
    if !p.exists() {
        problems.push(format!("{what}: {} does not exist", p.display()));
    }
}

/// The committed, public `certs-dev/` material: anyone can mint fleet
/// certificates and grants with it.
const DEV_CA: &str = include_str!("../certs-dev/ca.pem");
const DEV_GRANT_PUB: &str = include_str!("../certs-dev/grant.pub");
const DEV_GRANT_KEY: &str = include_str!("../certs-dev/grant.key");

/// Adds a problem when `files` include the committed `certs-dev/` CA or
/// grant key and the config does not say `dev = true`.
pub fn refuse_dev_material(problems: &mut Vec<String>, dev: bool, files: &[(&str, &Path)]) {
    if dev {
        return;
    }
    for (key, path) in files {
        let Ok(text) = std::fs::read_to_string(path) else { continue };
        let committed = [DEV_CA, DEV_GRANT_PUB, DEV_GRANT_KEY].iter().any(|d| d.trim() == text.trim());
        if committed {
            problems.push(format!(
                "{key}: {} is the committed certs-dev/ material, public to anyone: \
                 issue your own (`tether certs init`), or set dev = true for development only",
                path.display()
            ));
        }
    }
}

/// Relays' and agents' audit files rotate at 64 MiB unless configured.
pub fn default_audit_rotate_bytes() -> u64 {
    64 << 20
}
