//! The one wall clock: unix seconds and RFC 3339 text; and how far a
//! device's clock is off from its relay's.
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Unix seconds now.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The current time as RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The UTC date of Unix second `secs`, `YYYY-MM-DD`.
pub fn day(secs: u64) -> String {
    rfc3339(secs as i64).get(..10).unwrap_or("-").to_string()
}

/// Unix seconds as RFC 3339 (UTC); "-" for a time that cannot be one.
pub fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "-".into())
}

/// A device clock this far from its relay's, either way, is flagged: its
/// audit records carry wrong times, and one this far ahead or more uses up a
/// quarter of a grant's default two minutes before the grant even arrives.
pub const SKEW_WARN_MS: i64 = 30_000;

/// Whether an offset (device minus relay, milliseconds) is flagged.
pub fn skewed(offset_ms: i64) -> bool {
    offset_ms.unsigned_abs() >= SKEW_WARN_MS as u64
}

/// A device clock's offset in words: "5 min 3 s ahead", "40 s behind",
/// "in step" (under a second).
pub fn describe_offset(offset_ms: i64) -> String {
    let secs = offset_ms.unsigned_abs().saturating_add(500) / 1000;
    if secs == 0 {
        return "in step".into();
    }
    let way = if offset_ms > 0 { "ahead" } else { "behind" };
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let text = match (d, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, _) => format!("{m} min {s} s"),
        (0, _, _) => format!("{h} h {m} min"),
        _ => format!("{d} d {h} h"),
    };
    format!("{text} {way}")
}

/// A device clock's offset from a relay's as heartbeats measure it
/// (milliseconds, device minus relay), and the value last reported on.
pub struct Offset {
    now: AtomicI64,
    reported: AtomicI64,
}

/// Nothing measured yet.
const UNKNOWN: i64 = i64::MIN;
/// A change smaller than this is heartbeat jitter, not worth a report.
const REPORT_STEP_MS: i64 = 2_000;

impl Default for Offset {
    fn default() -> Self {
        Offset { now: AtomicI64::new(UNKNOWN), reported: AtomicI64::new(UNKNOWN) }
    }
}

impl Offset {
    /// The last measured offset.
    pub fn get(&self) -> Option<i64> {
        Some(self.now.load(Ordering::Relaxed)).filter(|v| *v != UNKNOWN)
    }

    /// Takes a measurement; true when it is the first, or moved far enough
    /// from the last one taken as news that others should hear of it.
    pub fn set(&self, offset_ms: i64) -> bool {
        let offset_ms = offset_ms.max(UNKNOWN + 1);
        self.now.store(offset_ms, Ordering::Relaxed);
        let last = Some(self.reported.load(Ordering::Relaxed)).filter(|v| *v != UNKNOWN);
        let news = moved(last, Some(offset_ms));
        if news {
            self.reported.store(offset_ms, Ordering::Relaxed);
        }
        news
    }
}

/// Whether a device's clock offset moved from `was` to `now` by a report's
/// worth ([`Offset::set`]'s rule: appearing, going, or 2 s or more).
pub fn moved(was: Option<i64>, now: Option<i64>) -> bool {
    match (was, now) {
        (Some(a), Some(b)) => a.abs_diff(b) >= REPORT_STEP_MS as u64,
        (a, b) => a.is_some() != b.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_told_in_words_and_only_real_moves_are_news() {
        assert_eq!(describe_offset(400), "in step");
        assert_eq!(describe_offset(299_600), "5 min 0 s ahead", "rounded to the second");
        assert_eq!(describe_offset(-40_200), "40 s behind");
        assert_eq!(describe_offset(303_000), "5 min 3 s ahead");
        assert_eq!(describe_offset(-(3 * 3600 + 120) * 1000), "3 h 2 min behind");
        assert_eq!(describe_offset(400 * 86_400_000), "400 d 0 h ahead");
        assert!(skewed(30_000) && skewed(-31_000) && !skewed(29_999));
        let o = Offset::default();
        assert_eq!(o.get(), None);
        assert!(o.set(12), "the first measurement is news");
        assert!(!o.set(1_500), "jitter of a second and a half is not");
        assert_eq!(o.get(), Some(1_500));
        assert!(o.set(300_000), "a clock set five minutes ahead is");
        assert!(!o.set(299_000));
        assert!(o.set(i64::MIN), "a clock as far off as can be is still a value");
        assert_eq!(o.get(), Some(i64::MIN + 1));
    }
}
