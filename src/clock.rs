//! Instants in the future, without a panic.

use std::time::{Duration, Instant};

/// `now + wait`, or as far as the clock goes: never a panic, whatever the
/// wait.
pub fn later(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait)
        .or_else(|| now.checked_add(Duration::from_secs(u32::MAX.into())))
        .unwrap_or(now)
}

/// As [`later`], on tokio's clock: the same instant in a running program,
/// and one that a test can pause and move (`tokio::time::pause`).
pub fn later_on_tokio_clock(wait: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(wait)
        .or_else(|| now.checked_add(Duration::from_secs(u32::MAX.into())))
        .unwrap_or(now)
}
