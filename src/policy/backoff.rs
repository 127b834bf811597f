//! When should we try again? (spec §4, "Backoff delay")
//!
//! The delay for attempt *n* is `base · 2^(n-1)`, capped at `max`, with
//! "equal jitter": a uniform pick in the upper half, `[d/2, d]`. Equal
//! jitter keeps the schedule recognisable (attempt 3 waits roughly 4× the
//! base) while spreading a burst of failures from one outage so they do not
//! come back in lock-step. Delays are whole seconds because SQS visibility
//! timeouts are.
//!
//! The randomness is passed in ([`fastrand::Rng`]), so a seeded generator
//! makes every delay exactly testable.
//!
//! ```
//! use retryq::policy::backoff::Backoff;
//! use std::time::Duration;
//!
//! let backoff = Backoff::new(Duration::from_secs(10), Duration::from_secs(900)).unwrap();
//! let mut rng = fastrand::Rng::with_seed(7);
//! let d = backoff.delay(3, &mut rng);
//! assert!(d >= Duration::from_secs(20) && d <= Duration::from_secs(40));
//! ```

use std::time::Duration;

/// SQS refuses a visibility timeout above 12 hours.
pub const VISIBILITY_LIMIT: Duration = Duration::from_secs(12 * 60 * 60);

/// Exponential backoff with equal jitter, in whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: u64,
    max: u64,
}

/// Why a backoff cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidBackoff {
    #[error("the base delay must be at least one second")]
    ZeroBase,
    #[error("the base delay ({base}s) is longer than the maximum ({max}s)")]
    BaseAboveMax { base: u64, max: u64 },
    #[error("the maximum delay must not exceed SQS's 12-hour visibility limit (43200s)")]
    AboveVisibilityLimit,
}

impl Backoff {
    /// A backoff from `base` up to `max` (both rounded down to seconds).
    pub fn new(base: Duration, max: Duration) -> Result<Backoff, InvalidBackoff> {
        let (base, max) = (base.as_secs(), max.as_secs());
        if base == 0 {
            return Err(InvalidBackoff::ZeroBase);
        }
        if base > max {
            return Err(InvalidBackoff::BaseAboveMax { base, max });
        }
        if max > VISIBILITY_LIMIT.as_secs() {
            return Err(InvalidBackoff::AboveVisibilityLimit);
        }
        Ok(Backoff { base, max })
    }

    /// The first delay.
    pub fn base(&self) -> Duration {
        Duration::from_secs(self.base)
    }

    /// The longest delay.
    pub fn max(&self) -> Duration {
        Duration::from_secs(self.max)
    }

    /// The un-jittered delay for attempt `n` (1-based): `min(base·2^(n-1), max)`.
    pub fn nominal(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(63);
        let d = self.base.saturating_mul(1u64 << exp).min(self.max);
        Duration::from_secs(d)
    }

    /// The jittered delay for attempt `n`, within `[nominal/2, nominal]`
    /// (rounded up, so never zero).
    pub fn delay(&self, attempt: u32, rng: &mut fastrand::Rng) -> Duration {
        let d = self.nominal(attempt).as_secs();
        Duration::from_secs(rng.u64(d.div_ceil(2)..=d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_nominal_schedule_doubles_from_the_base_up_to_the_cap() {
        let b = Backoff::new(secs(10), secs(900)).unwrap();
        let schedule: Vec<u64> = (1..=9).map(|n| b.nominal(n).as_secs()).collect();
        assert_eq!(schedule, [10, 20, 40, 80, 160, 320, 640, 900, 900]);
    }

    #[test]
    fn huge_attempt_numbers_stay_at_the_cap() {
        let b = Backoff::new(secs(1), secs(43_200)).unwrap();
        assert_eq!(b.nominal(u32::MAX), secs(43_200));
        assert_eq!(b.nominal(0), secs(1), "attempt 0 is treated as the first");
    }

    #[test]
    fn a_seeded_rng_gives_exact_delays() {
        let b = Backoff::new(secs(10), secs(900)).unwrap();
        let run = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (1..=6)
                .map(|n| b.delay(n, &mut rng).as_secs())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(1), run(2), "jitter actually varies");
    }

    #[test]
    fn invalid_settings_are_refused() {
        assert_eq!(
            Backoff::new(secs(0), secs(10)),
            Err(InvalidBackoff::ZeroBase)
        );
        assert_eq!(
            Backoff::new(secs(20), secs(10)),
            Err(InvalidBackoff::BaseAboveMax { base: 20, max: 10 })
        );
        assert_eq!(
            Backoff::new(secs(1), secs(43_201)),
            Err(InvalidBackoff::AboveVisibilityLimit)
        );
    }

    proptest! {
        #[test]
        fn the_delay_stays_within_half_nominal_and_nominal(
            base in 1u64..=1000,
            extra in 0u64..=42_200,
            attempt in 0u32..=200,
            seed: u64,
        ) {
            let max = (base + extra).min(43_200);
            let b = Backoff::new(secs(base), secs(max)).unwrap();
            let nominal = b.nominal(attempt);
            let d = b.delay(attempt, &mut fastrand::Rng::with_seed(seed));
            prop_assert!(d <= nominal);
            prop_assert!(d >= nominal / 2);
            prop_assert!(d >= secs(1));
            prop_assert!(d <= secs(max));
            prop_assert!(d <= VISIBILITY_LIMIT);
        }

        #[test]
        fn the_nominal_delay_never_shrinks_with_more_attempts(base in 1u64..=100, max in 100u64..=43_200, n in 1u32..100) {
            let b = Backoff::new(secs(base), secs(max)).unwrap();
            prop_assert!(b.nominal(n + 1) >= b.nominal(n));
        }
    }
}
