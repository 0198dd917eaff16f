//! Small pieces every role uses once from here: the clock, random bytes,
//! back-off, a replay set, a set of connection numbers, constant-time comparison.
pub mod backoff;
pub mod budget;
pub mod clock;
pub mod drops;
pub mod http;
pub mod net;
pub mod numbers;
pub mod proxy;
pub mod replay;
pub mod split;
pub mod version;

pub use backoff::Backoff;
pub use budget::RefusalBudget;
pub use clock::{now_rfc3339, now_secs};
pub use drops::DropTally;
pub use numbers::NumberSet;
pub use replay::ReplaySet;

/// `N` bytes from the system's secure random source.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use aws_lc_rs::rand::SecureRandom;
    let mut out = [0u8; N];
    // The system RNG failing is not recoverable; ring reports it only on broken systems.
    aws_lc_rs::rand::SystemRandom::new().fill(&mut out).expect("system random source");
    out
}

/// Replaces `path` with `bytes` (0600) at once: a new file, synced, renamed
/// over it, and the rename synced. A crash leaves the old or the new.
pub fn replace_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("new");
    {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// An error and the chain of what caused it, each once ("connection error:
/// received fatal alert: CertificateRevoked"): hyper's and tokio-postgres's
/// own texts leave out the TLS or I/O cause.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

/// Points `link` at `to` atomically (a new link renamed over the old).
pub fn point_symlink(link: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(to, &tmp)?;
    std::fs::rename(&tmp, link)
}

/// A file's length and at most `len` of its bytes from `offset`.
pub fn read_range(path: &std::path::Path, offset: u64, len: usize) -> std::io::Result<(u64, Vec<u8>)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let total = f.metadata()?.len();
    f.seek(SeekFrom::Start(offset.min(total)))?;
    let mut buf = Vec::with_capacity(len.min(total.saturating_sub(offset) as usize));
    f.take(len as u64).read_to_end(&mut buf)?;
    Ok((total, buf))
}

/// A file's length and lowercase hex SHA-256, read in 64 KiB pieces.
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<(u64, String)> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let (mut h, mut len) = (Sha256::new(), 0u64);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((len, hex::encode(h.finalize())));
        }
        len += n as u64;
        h.update(&buf[..n]);
    }
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

/// An interval whose first tick is one `period` from now. Not `interval`
/// and its "immediate" first tick: that tick waits for the timer's next
/// millisecond, and whatever waited on it (a new leg's first bytes, a QUIC
/// connection's first stream) waited with it.
pub fn interval_after(period: std::time::Duration) -> tokio::time::Interval {
    tokio::time::interval_at(tokio::time::Instant::now() + period, period)
}

/// The first instant at least `gap` from now that is a whole multiple of
/// `grid` since the process's first call. Timers rounded this way fire
/// together: thousands of idle streams' pings wake their tasks in one pass
/// of the timer, and the pings of the streams of one QUIC connection leave
/// in a few datagrams instead of one each.
pub fn on_grid(grid: std::time::Duration, gap: std::time::Duration) -> tokio::time::Instant {
    static EPOCH: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(tokio::time::Instant::now);
    let grid_ns = grid.as_nanos().max(1);
    let since = (tokio::time::Instant::now() + gap).saturating_duration_since(epoch).as_nanos();
    let slots = since.div_ceil(grid_ns);
    let at = u64::try_from(slots.saturating_mul(grid_ns)).unwrap_or(u64::MAX);
    epoch + std::time::Duration::from_nanos(at)
}

/// An interval of `period` whose ticks fall on the process's `period` grid
/// (see [`on_grid`]), the first at least `period / 4` from now; a late tick
/// skips to the grid rather than shifting it.
pub fn interval_on_grid(period: std::time::Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval_at(on_grid(period, period / 4), period);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    i
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

    #[tokio::test]
    async fn grid_instants_are_shared_and_keep_their_gap() {
        use std::time::Duration;
        let grid = Duration::from_millis(500);
        let gap = Duration::from_millis(125);
        let before = tokio::time::Instant::now();
        let a = super::on_grid(grid, gap);
        let b = super::on_grid(grid, gap);
        assert!(a >= before + gap, "a grid instant came sooner than its gap");
        assert!(a < before + gap + grid, "a grid instant came more than one slot late");
        // Two timers set a moment apart land on the same instant, or one slot apart.
        let apart = b.saturating_duration_since(a);
        assert!(apart == Duration::ZERO || apart == grid, "instants off the grid: {apart:?}");
    }
}
