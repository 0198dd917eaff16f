//! Specialist credentials: argon2id passwords under a strength policy, the
//! enrolment QR code, bearer tokens. TOTP itself is [`crate::totp`].
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use sha2::{Digest, Sha256};

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 12;
/// zxcvbn score (0–4) a password must reach.
pub const MIN_STRENGTH: u8 = 3;

fn argon() -> Argon2<'static> {
    // OWASP's argon2id minimum: 19 MiB, 2 passes, 1 lane.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Why a password was refused by the policy (told to the person choosing it).
pub fn password_problem(password: &str, user: &str) -> Option<String> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Some(format!("at least {MIN_PASSWORD_LEN} characters"));
    }
    if password.len() > 1024 {
        return Some("at most 1024 bytes".into());
    }
    let estimate = zxcvbn::zxcvbn(password, &[user, "tether"]);
    let score = u8::from(estimate.score());
    if score < MIN_STRENGTH {
        let hint = estimate
            .feedback()
            .and_then(|f| f.warning().map(|w| w.to_string()))
            .unwrap_or_else(|| "too easy to guess".into());
        return Some(format!("too weak (strength {score} of 4, need {MIN_STRENGTH}): {hint}"));
    }
    None
}

/// A PHC-format argon2id hash with a fresh salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::encode_b64(&crate::random_bytes::<16>()).map_err(|e| e.to_string())?;
    argon().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).map(|h| argon().verify_password(password.as_bytes(), &h).is_ok()).unwrap_or(false)
}

/// A hash that verifies nothing, checked against when the account does not
/// exist, so that an unknown user costs the same time as a wrong password.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password(&hex::encode(crate::random_bytes::<16>())).unwrap_or_default())
}

/// The URI as a QR code drawn with Unicode half blocks.
pub fn qr_text(uri: &str) -> String {
    match qrcode::QrCode::new(uri.as_bytes()) {
        Ok(code) => code
            .render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .build(),
        Err(e) => format!("(cannot draw QR code: {e})"),
    }
}

/// A new bearer token, and the hash the hub stores instead of it.
pub fn new_token() -> (String, String) {
    let token = format!("tt_{}", hex::encode(crate::random_bytes::<32>()));
    let hash = token_hash(&token);
    (token, hash)
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_policy_and_hash() {
        assert!(password_problem("short", "alice").is_some());
        assert!(password_problem("password1234", "alice").unwrap().contains("weak"));
        assert!(password_problem("alicealice12", "alice").is_some());
        assert_eq!(password_problem("correct horse battery staple 7!", "alice"), None);
        let h = hash_password("correct horse battery staple 7!").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery staple 7!", &h));
        assert!(!verify_password("correct horse battery staple 8!", &h));
        assert!(!verify_password("x", decoy_hash()));
    }
}
