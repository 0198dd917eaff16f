//! Specialist credentials: argon2id passwords under a strength policy, TOTP
//! (RFC 6238) codes, bearer tokens.
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use ring::hmac;
use sha2::{Digest, Sha256};

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 12;
/// zxcvbn score (0–4) a password must reach.
pub const MIN_STRENGTH: u8 = 3;
/// TOTP step in seconds and digits (RFC 6238 defaults, what authenticator apps use).
pub const TOTP_STEP: u64 = 30;
const TOTP_DIGITS: u32 = 6;

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

/// A new 160-bit TOTP secret, base32 (what enrolment URIs carry).
pub fn new_totp_secret() -> String {
    data_encoding::BASE32_NOPAD.encode(&crate::random_bytes::<20>())
}

/// The code for time step `step`.
pub fn totp_at(secret_b32: &str, step: u64) -> Option<String> {
    let key = data_encoding::BASE32_NOPAD.decode(secret_b32.trim_end_matches('=').as_bytes()).ok()?;
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &key), &step.to_be_bytes());
    let t = tag.as_ref();
    let off = usize::from(t[19] & 0x0f);
    let bin = u32::from_be_bytes([t[off] & 0x7f, t[off + 1], t[off + 2], t[off + 3]]);
    Some(format!("{:0width$}", bin % 10u32.pow(TOTP_DIGITS), width = TOTP_DIGITS as usize))
}

/// The time step `code` belongs to, allowing one step of clock skew either way.
pub fn totp_check(secret_b32: &str, code: &str, now: u64) -> Option<u64> {
    if code.len() != TOTP_DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let step = now / TOTP_STEP;
    [step, step.saturating_sub(1), step + 1]
        .into_iter()
        .find(|s| totp_at(secret_b32, *s).is_some_and(|c| same(c.as_bytes(), code.as_bytes())))
}

/// Equal without an early exit.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `otpauth://` URI for authenticator apps.
pub fn totp_uri(issuer: &str, user: &str, secret: &str) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    format!(
        "otpauth://totp/{}:{}?secret={secret}&issuer={}&algorithm=SHA1&digits={TOTP_DIGITS}&period={TOTP_STEP}",
        enc(issuer),
        enc(user),
        enc(issuer)
    )
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
    fn totp_matches_rfc6238_sha1_vectors() {
        // RFC 6238 appendix B, SHA-1 key "12345678901234567890", 8 digits there; the last 6 here.
        let secret = data_encoding::BASE32_NOPAD.encode(b"12345678901234567890");
        for (t, code8) in
            [(59u64, "94287082"), (1111111109, "07081804"), (1234567890, "89005924"), (2000000000, "69279037")]
        {
            assert_eq!(totp_at(&secret, t / 30).unwrap(), code8[2..], "t={t}");
            assert_eq!(totp_check(&secret, &code8[2..], t), Some(t / 30));
        }
        assert_eq!(totp_check(&secret, "12345", 59), None);
        assert_eq!(totp_check(&secret, "abcdef", 59), None);
    }

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
