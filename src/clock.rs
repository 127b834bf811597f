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
