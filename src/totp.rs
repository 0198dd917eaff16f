//! TOTP (RFC 6238, SHA-1, 6 digits, 30 s steps: what authenticator apps use)
//! and its `otpauth://` enrolment URI. The hub checks codes; a dev profile
//! computes them to log in by itself.
use aws_lc_rs::hmac;

/// TOTP step in seconds.
pub const STEP: u64 = 30;
/// Digits of a code.
pub const DIGITS: u32 = 6;

/// A new 160-bit secret, base32 (what enrolment URIs carry).
pub fn new_secret() -> String {
    data_encoding::BASE32_NOPAD.encode(&crate::util::random_bytes::<20>())
}

/// The code for time step `step`; `None` when the secret is not base32.
pub fn code_at(secret_b32: &str, step: u64) -> Option<String> {
    let key = data_encoding::BASE32_NOPAD.decode(secret_b32.trim_end_matches('=').as_bytes()).ok()?;
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &key), &step.to_be_bytes());
    let t = tag.as_ref();
    let off = usize::from(t[19] & 0x0f);
    let bin = u32::from_be_bytes([t[off] & 0x7f, t[off + 1], t[off + 2], t[off + 3]]);
    Some(format!("{:0width$}", bin % 10u32.pow(DIGITS), width = DIGITS as usize))
}

/// The code for the current step at `now` (unix seconds), `ahead` steps on.
pub fn code_now(secret_b32: &str, now: u64, ahead: u64) -> Option<String> {
    code_at(secret_b32, now / STEP + ahead)
}

/// The time step `code` belongs to, allowing one step of clock skew either way.
pub fn check(secret_b32: &str, code: &str, now: u64) -> Option<u64> {
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let step = now / STEP;
    [step, step.saturating_sub(1), step + 1]
        .into_iter()
        .find(|s| code_at(secret_b32, *s).is_some_and(|c| crate::util::ct_eq(c.as_bytes(), code.as_bytes())))
}

/// `otpauth://` URI for authenticator apps.
pub fn uri(issuer: &str, user: &str, secret: &str) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    format!(
        "otpauth://totp/{}:{}?secret={secret}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP}",
        enc(issuer),
        enc(user),
        enc(issuer)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rfc6238_sha1_vectors() {
        // RFC 6238 appendix B, SHA-1 key "12345678901234567890", 8 digits there; the last 6 here.
        let secret = data_encoding::BASE32_NOPAD.encode(b"12345678901234567890");
        for (t, code8) in
            [(59u64, "94287082"), (1111111109, "07081804"), (1234567890, "89005924"), (2000000000, "69279037")]
        {
            assert_eq!(code_at(&secret, t / 30).unwrap(), code8[2..], "t={t}");
            assert_eq!(check(&secret, &code8[2..], t), Some(t / 30));
        }
        assert_eq!(check(&secret, "12345", 59), None);
        assert_eq!(check(&secret, "abcdef", 59), None);
        assert!(uri("tether dev", "a b", "S").starts_with("otpauth://totp/tether%20dev:a%20b?secret=S&"));
    }
}
