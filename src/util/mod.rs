//! Small pieces every role uses once from here: the clock, random bytes,
//! back-off, a replay set, constant-time comparison.
pub mod backoff;
pub mod clock;
pub mod drops;
pub mod http;
pub mod net;
pub mod replay;

pub use backoff::Backoff;
pub use clock::{now_rfc3339, now_secs};
pub use drops::DropTally;
pub use replay::ReplaySet;

/// `N` bytes from the system's secure random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    // The system RNG failing is not recoverable; ring reports it only on broken systems.
    ring::rand::SystemRandom::new().fill(&mut out).expect("system random source");
    out
}

/// Equal, in time that depends only on the lengths (MACs, TOTP codes).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// A mutex's guard even when another thread panicked holding it: the data
/// guarded here (tables, counters) stays consistent between statements.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ct_eq_compares_whole_slices() {
        assert!(super::ct_eq(b"abc", b"abc"));
        assert!(!super::ct_eq(b"abc", b"abd"));
        assert!(!super::ct_eq(b"abc", b"ab"));
        assert!(super::ct_eq(b"", b""));
    }
}
