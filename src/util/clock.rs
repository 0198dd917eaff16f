//! The one wall clock: unix seconds and RFC 3339 text.
use std::time::{SystemTime, UNIX_EPOCH};

/// Unix seconds now.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The current time as RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Unix seconds as RFC 3339 (UTC); "-" for a time that cannot be one.
/// The UTC date of Unix second `secs`, `YYYY-MM-DD`.
pub fn day(secs: u64) -> String {
    rfc3339(secs as i64).get(..10).unwrap_or("-").to_string()
}

pub fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| "-".into())
}
