//! Secrets at rest in the hub's database (TOTP seeds), sealed with
//! AES-256-GCM under a key kept in its own file (`secrets_key` in hub.toml,
//! 0600), so that a copy of the database alone does not hold the second
//! factor of every account.
//!
//! A sealed value is `v1:` and the hex of a 12-byte random nonce followed by
//! the ciphertext and tag; the account name is the associated data, so a
//! sealed seed moved to another account does not open.
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

const PREFIX: &str = "v1:";

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("secrets key {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("secrets key {0}: must hold 32 bytes (64 hex digits)")]
    BadKey(PathBuf),
    #[error("secrets key {0}: readable by others (chmod 600 it)")]
    Loose(PathBuf),
    #[error("a sealed secret does not open with this key (wrong secrets_key, or the value was altered)")]
    Open,
}

pub struct SecretBox {
    key: LessSafeKey,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox")
    }
}

impl SecretBox {
    /// Reads the key (64 hex digits, mode 0600), creating it when missing.
    pub fn load_or_create(path: &Path) -> Result<SecretBox, SecretsError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |source| SecretsError::Io { path: path.into(), source };
        if !path.exists() {
            // Written whole under a temporary name, then linked into place
            // only if no other process (the hub and an admin command starting
            // together) got there first: everyone ends up with one key.
            let key: [u8; 32] = crate::random_bytes();
            let tmp = path.with_extension(format!("new-{}", std::process::id()));
            crate::tls::pki::write_file(&tmp, &format!("{}\n", hex::encode(key)), true)
                .map_err(|e| io(std::io::Error::other(e.to_string())))?;
            let linked = std::fs::hard_link(&tmp, path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => tracing::info!(
                    path = %path.display(),
                    "created the hub's secrets key: back it up apart from the database"
                ),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(e)),
            }
        }
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(SecretsError::Loose(path.into()));
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let raw = hex::decode(text.trim()).map_err(|_| SecretsError::BadKey(path.into()))?;
        let key = UnboundKey::new(&AES_256_GCM, &raw).map_err(|_| SecretsError::BadKey(path.into()))?;
        Ok(SecretBox { key: LessSafeKey::new(key) })
    }

    /// Seals `plain` for the account `name`.
    pub fn seal(&self, name: &str, plain: &str) -> String {
        let nonce: [u8; NONCE_LEN] = crate::random_bytes();
        let mut buf = plain.as_bytes().to_vec();
        let sealed = self.key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(name.as_bytes()),
            &mut buf,
        );
        if sealed.is_err() {
            return String::new();
        }
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        format!("{PREFIX}{}", hex::encode(out))
    }

    /// Opens a value sealed for `name`; a value without the prefix is plain
    /// (written before sealing existed) and is returned as it is.
    pub fn open(&self, name: &str, stored: &str) -> Result<String, SecretsError> {
        let Some(hexed) = stored.strip_prefix(PREFIX) else { return Ok(stored.to_string()) };
        let raw = hex::decode(hexed).map_err(|_| SecretsError::Open)?;
        if raw.len() < NONCE_LEN {
            return Err(SecretsError::Open);
        }
        let (nonce, body) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretsError::Open)?;
        let mut buf = body.to_vec();
        let plain =
            self.key.open_in_place(nonce, Aad::from(name.as_bytes()), &mut buf).map_err(|_| SecretsError::Open)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SecretsError::Open)
    }

    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_account() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let b = SecretBox::load_or_create(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let sealed = b.seal("alice", "JBSWY3DP");
        assert!(SecretBox::is_sealed(&sealed) && !sealed.contains("JBSWY3DP"));
        assert_eq!(b.open("alice", &sealed).unwrap(), "JBSWY3DP");
        assert!(b.open("mallory", &sealed).is_err(), "a seed moved to another account opened");
        let other = SecretBox::load_or_create(&dir.path().join("k2")).unwrap();
        assert!(other.open("alice", &sealed).is_err());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(SecretBox::load_or_create(&p), Err(SecretsError::Loose(_))));
    }
}
