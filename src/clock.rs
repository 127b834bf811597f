//! Instants in the future, without a panic; wall-clock times as people
//! read them.

use std::time::{Duration, Instant};

/// `now + wait`, or as far as the clock goes: never a panic, whatever the
/// wait.
pub fn later(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait)
        .or_else(|| now.checked_add(Duration::from_secs(u32::MAX.into())))
        .unwrap_or(now)
}

/// A time in ms since the epoch as RFC 3339, to the second (UTC).
pub fn rfc3339(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    let at =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// As [`later`], on tokio's clock: the same instant in a running program,
/// and one that a test can pause and move (`tokio::time::pause`).
pub fn later_on_tokio_clock(wait: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(wait)
        .or_else(|| now.checked_add(Duration::from_secs(u32::MAX.into())))
        .unwrap_or(now)
}
