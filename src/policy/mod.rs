//! The pure decision core: what to do with a record (spec §3 and §4).
//!
//! The processor asks two separate questions, as reqwest-retry does:
//! *what kind of failure was this?* ([`classify`]) and *what now?*
//! ([`RetryPolicy::after_attempt`]). Unlike a policy that sees only an attempt
//! count, ours also sees the destination's `Retry-After` and the message's
//! `expiresAt`, because both change the answer.
//!
//! Nothing here does I/O or reads a clock: the current time and the random
//! generator are arguments, so every decision is exactly testable.
//!
//! ```
//! use retryq::policy::{Action, Attempt, FailureReason, RetryPolicy};
//! use retryq::policy::backoff::Backoff;
//! use retryq::policy::classify::Outcome;
//! use std::time::{Duration, SystemTime};
//!
//! let policy = RetryPolicy {
//!     max_attempts: 5,
//!     backoff: Backoff::new(Duration::from_secs(10), Duration::from_secs(900)).unwrap(),
//!     retry_after_max: Duration::from_secs(43_200),
//! };
//! let failed = Outcome::Retryable { status: Some(503), retry_after: None, error: "HTTP 503".into() };
//! let mut rng = fastrand::Rng::with_seed(1);
//!
//! let second = Attempt { number: 2, limit: 5, expires_at: None, retained_until: None, age_limit: None };
//! assert!(matches!(policy.after_attempt(&second, failed.clone(), SystemTime::now(), &mut rng),
//!                  Action::Retry { .. }));
//!
//! let last = Attempt { number: 5, limit: 5, expires_at: None, retained_until: None, age_limit: None };
//! assert!(matches!(policy.after_attempt(&last, failed, SystemTime::now(), &mut rng),
//!                  Action::DeadLetter(d) if d.reason == FailureReason::AttemptsExhausted));
//! ```

pub mod backoff;
pub mod carry;
pub mod classify;
pub mod destinations;
pub mod fifo;
pub mod hosts;
pub mod record;

use std::time::{Duration, SystemTime};

use backoff::{Backoff, VISIBILITY_LIMIT};
use classify::Outcome;

/// Longest `LastError` attribute (spec §4).
pub const LAST_ERROR_MAX_CHARS: usize = 256;

/// The `FailureReason` of a dead letter (spec §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    NonRetryable,
    AttemptsExhausted,
    Expired,
    InvalidMessage,
    DestinationNotAllowed,
}

impl FailureReason {
    /// The attribute value, as written in spec §4.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::NonRetryable => "non-retryable",
            FailureReason::AttemptsExhausted => "attempts-exhausted",
            FailureReason::Expired => "expired",
            FailureReason::InvalidMessage => "invalid-message",
            FailureReason::DestinationNotAllowed => "destination-not-allowed",
        }
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything the DLQ copy says about why it is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub reason: FailureReason,
    /// The attempt number (§2).
    pub attempt: u32,
    /// The status of the last answer, when there was one.
    pub last_status: Option<u16>,
    /// One line, at most [`LAST_ERROR_MAX_CHARS`] characters.
    pub last_error: String,
}

impl DeadLetter {
    pub fn new(
        reason: FailureReason,
        attempt: u32,
        last_status: Option<u16>,
        last_error: &str,
    ) -> DeadLetter {
        DeadLetter {
            reason,
            attempt,
            last_status,
            last_error: one_line(last_error, LAST_ERROR_MAX_CHARS),
        }
    }
}

/// What the processor does with a record (the rows of §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Delivered: acknowledge.
    Ack,
    /// Retryable: `ChangeMessageVisibility` to `delay`, report as failed.
    Retry { delay: Duration },
    /// Send a copy to the DLQ, then acknowledge.
    DeadLetter(DeadLetter),
}

/// The attempt being made, as §2 defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// `receivedCount` + SQS `ApproximateReceiveCount`.
    pub number: u32,
    /// `min(maxAttempts, MAX_ATTEMPTS)`: the attempt that reaches it is final.
    pub limit: u32,
    pub expires_at: Option<SystemTime>,
    /// The latest instant a retry may end: the queue's retention, counted
    /// from the message's `SentTimestamp`, less `RETENTION_MARGIN_SECONDS`
    /// (§8.1). `None` when the retention is not known.
    pub retained_until: Option<SystemTime>,
    /// When the message has been retried for `MAX_AGE_SECONDS`, counted
    /// from its first copy's `SentTimestamp` (§12.5): no attempt after it.
    pub age_limit: Option<SystemTime>,
}

impl Attempt {
    /// The attempt number of §2: attempts made before the message was
    /// enqueued plus SQS's receive count.
    pub fn number(received_count: u32, approximate_receive_count: u32) -> u32 {
        received_count.saturating_add(approximate_receive_count)
    }

    /// The attempt number with an attempt ledger (§9): attempts made
    /// before the message was enqueued, this one, and the failed attempts
    /// recorded for this SQS message; never more than the receive count
    /// would give.
    pub fn from_ledger(
        received_count: u32,
        recorded_failures: u32,
        approximate_receive_count: u32,
    ) -> u32 {
        received_count
            .saturating_add(1)
            .saturating_add(recorded_failures)
            .min(Attempt::number(
                received_count,
                approximate_receive_count.max(1),
            ))
    }

    /// The attempts made before this SQS message: its `receivedCount`, or
    /// a carried copy's count (§12.5), which never lowers it.
    pub fn before(received_count: u32, carried: Option<u32>) -> u32 {
        carried.map_or(received_count, |c| c.max(received_count))
    }

    /// This attempt's number, `before` this SQS message: by its receive
    /// count, or with a ledger, by the failures it recorded for it (§9).
    pub fn counted(before: u32, recorded_failures: Option<u32>, receive_count: u32) -> u32 {
        match recorded_failures {
            None => Attempt::number(before, receive_count),
            Some(failed) => Attempt::from_ledger(before, failed, receive_count),
        }
    }

    /// `min(maxAttempts, MAX_ATTEMPTS)`: a message's own limit only lowers
    /// the processor's.
    pub fn limit_of(max_attempts: Option<u32>, processor: u32) -> u32 {
        max_attempts.map_or(processor, |m| m.min(processor))
    }

    pub fn is_final(&self) -> bool {
        self.number >= self.limit
    }
}

/// The retry settings of the processor (from `MAX_ATTEMPTS`,
/// `BACKOFF_*_SECONDS` and `RETRY_AFTER_MAX_SECONDS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub retry_after_max: Duration,
}

impl RetryPolicy {
    /// Checked before any attempt: an expired message is dead-lettered
    /// without being tried.
    pub fn before_attempt(&self, attempt: &Attempt, now: SystemTime) -> Option<Action> {
        let passed = |at: Option<SystemTime>| at.is_some_and(|at| now > at);
        let why = if passed(attempt.expires_at) {
            "expiresAt passed before the attempt"
        } else if passed(attempt.age_limit) {
            "MAX_AGE_SECONDS passed (counted from the first copy) before the attempt"
        } else {
            return None;
        };
        Some(Action::DeadLetter(DeadLetter::new(
            FailureReason::Expired,
            attempt.number,
            None,
            why,
        )))
    }

    /// Decides after an attempt. The delay never exceeds SQS's 12-hour
    /// visibility limit; see [`RetryPolicy::after_attempt_within`] to lower
    /// that bound further.
    pub fn after_attempt(
        &self,
        attempt: &Attempt,
        outcome: Outcome,
        now: SystemTime,
        rng: &mut fastrand::Rng,
    ) -> Action {
        self.after_attempt_within(attempt, outcome, now, VISIBILITY_LIMIT, rng)
    }

    /// As [`after_attempt`](Self::after_attempt), with the longest delay SQS
    /// will still accept for this receive (the 12 hours count from the
    /// receive, not from now).
    pub fn after_attempt_within(
        &self,
        attempt: &Attempt,
        outcome: Outcome,
        now: SystemTime,
        max_delay: Duration,
        rng: &mut fastrand::Rng,
    ) -> Action {
        let (status, retry_after, error) = match outcome {
            Outcome::Delivered { .. } => return Action::Ack,
            Outcome::NonRetryable { status, error } => {
                return Action::DeadLetter(DeadLetter::new(
                    FailureReason::NonRetryable,
                    attempt.number,
                    status,
                    &error,
                ))
            }
            Outcome::Retryable {
                status,
                retry_after,
                error,
            } => (status, retry_after, error),
        };
        if attempt.is_final() {
            return Action::DeadLetter(DeadLetter::new(
                FailureReason::AttemptsExhausted,
                attempt.number,
                status,
                &error,
            ));
        }
        let delay = self.delay(attempt.number, retry_after, max_delay, rng);
        put_back(
            attempt,
            status,
            delay,
            now,
            &error,
            attempt.number.saturating_add(1),
        )
    }

    /// A record put back for `delay` without an attempt: a retry, unless
    /// it would come back after `expiresAt` or after the queue's retention
    /// (then `expired`). Never `attempts-exhausted`: no attempt was made.
    pub fn defer_within(
        &self,
        attempt: &Attempt,
        delay: Duration,
        now: SystemTime,
        why: &str,
    ) -> Action {
        put_back(attempt, None, delay, now, why, attempt.number)
    }

    /// The longest a message can stay in its queue while still being
    /// retried: every delay at its longest (the larger of the backoff and
    /// the longest `Retry-After` honoured) before each attempt but the
    /// first, plus `per_attempt` (the request's own time) for every attempt.
    pub fn worst_case_horizon(&self, per_attempt: Duration) -> Duration {
        let longest_wait = |n: u32| self.backoff.nominal(n).max(self.retry_after_max);
        let waits = (1..self.max_attempts).map(longest_wait).sum::<Duration>();
        waits.saturating_add(per_attempt.saturating_mul(self.max_attempts))
    }

    /// The backoff delay of §4: the destination's `Retry-After` (capped at
    /// `retry_after_max`) if it sent one, else exponential backoff; never
    /// above `max_delay` nor the visibility limit.
    pub fn delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        max_delay: Duration,
        rng: &mut fastrand::Rng,
    ) -> Duration {
        let wanted = match retry_after {
            // "Not before that time": round a fractional delay up.
            Some(ra) => Duration::from_secs(
                ra.as_secs()
                    .saturating_add(u64::from(ra.subsec_nanos() > 0)),
            )
            .min(self.retry_after_max),
            None => self.backoff.delay(attempt, rng),
        };
        wanted.min(max_delay).min(VISIBILITY_LIMIT)
    }
}

/// A retry after `delay`, or `expired` when the record would come back
/// after `expiresAt` or after the queue's retention would delete it (§8.1).
fn put_back(
    attempt: &Attempt,
    status: Option<u16>,
    delay: Duration,
    now: SystemTime,
    error: &str,
    next_attempt: u32,
) -> Action {
    let next = now + delay;
    if attempt.expires_at.is_some_and(|at| next > at) {
        return Action::DeadLetter(DeadLetter::new(
            FailureReason::Expired,
            attempt.number,
            status,
            &format!("{error}; no time left before expiresAt for another attempt"),
        ));
    }
    if attempt.age_limit.is_some_and(|at| next > at) {
        return Action::DeadLetter(DeadLetter::new(
            FailureReason::Expired,
            attempt.number,
            status,
            &format!("{error}; no time left before MAX_AGE_SECONDS for another attempt"),
        ));
    }
    if attempt.retained_until.is_some_and(|until| next > until) {
        // SQS would delete the message before it came back: dead-letter
        // it now, while it can still be.
        return Action::DeadLetter(DeadLetter::new(
            FailureReason::Expired,
            attempt.number,
            status,
            &format!("retention: the queue would delete the message before attempt {next_attempt} ({error})"),
        ));
    }
    Action::Retry { delay }
}

/// `text` on one line (control characters become spaces), cut to `max` chars.
pub fn one_line(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_carried_count_never_lowers_received_count_and_every_path_counts_alike() {
        assert_eq!(Attempt::before(2, None), 2);
        assert_eq!(Attempt::before(2, Some(5)), 5, "a carried count continues");
        assert_eq!(
            Attempt::before(4, Some(1)),
            4,
            "a lower one is not believed"
        );
        // By receives, or by the ledger (capped by the receives).
        assert_eq!(Attempt::counted(3, None, 2), 5);
        assert_eq!(Attempt::counted(3, Some(0), 2), 4);
        assert_eq!(Attempt::counted(3, Some(9), 2), 5);
        assert_eq!(Attempt::limit_of(None, 5), 5);
        assert_eq!(Attempt::limit_of(Some(3), 5), 3);
        assert_eq!(Attempt::limit_of(Some(9), 5), 5, "a message only lowers it");
    }
    use proptest::prelude::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            backoff: Backoff::new(Duration::from_secs(10), Duration::from_secs(900)).unwrap(),
            retry_after_max: Duration::from_secs(3600),
        }
    }

    const T0: SystemTime = SystemTime::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        T0 + Duration::from_secs(secs)
    }

    fn attempt(number: u32) -> Attempt {
        Attempt {
            number,
            limit: 5,
            expires_at: None,
            retained_until: None,
            age_limit: None,
        }
    }

    fn retryable(retry_after: Option<u64>) -> Outcome {
        Outcome::Retryable {
            status: Some(503),
            retry_after: retry_after.map(Duration::from_secs),
            error: "HTTP 503 Service Unavailable".into(),
        }
    }

    fn decide(a: &Attempt, o: Outcome) -> Action {
        policy().after_attempt(a, o, T0, &mut fastrand::Rng::with_seed(3))
    }

    fn reason(action: Action) -> FailureReason {
        match action {
            Action::DeadLetter(d) => d.reason,
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }

    #[test]
    fn delivered_is_acknowledged() {
        assert_eq!(
            decide(&attempt(5), Outcome::Delivered { status: 204 }),
            Action::Ack
        );
    }

    #[test]
    fn retryable_before_the_final_attempt_backs_off() {
        let Action::Retry { delay } = decide(&attempt(2), retryable(None)) else {
            panic!("expected a retry")
        };
        assert!((10..=20).contains(&delay.as_secs()), "{delay:?}");
    }

    #[test]
    fn retryable_on_the_final_attempt_is_exhausted() {
        let action = decide(&attempt(5), retryable(None));
        assert_eq!(
            action,
            Action::DeadLetter(DeadLetter {
                reason: FailureReason::AttemptsExhausted,
                attempt: 5,
                last_status: Some(503),
                last_error: "HTTP 503 Service Unavailable".into(),
            })
        );
        assert_eq!(
            reason(decide(&attempt(9), retryable(Some(1)))),
            FailureReason::AttemptsExhausted
        );
    }

    #[test]
    fn the_message_limit_lowers_the_final_attempt() {
        let a = Attempt {
            number: 2,
            limit: 2,
            expires_at: None,
            retained_until: None,
            age_limit: None,
        };
        assert_eq!(
            reason(decide(&a, retryable(None))),
            FailureReason::AttemptsExhausted
        );
    }

    #[test]
    fn non_retryable_is_dead_lettered_at_once() {
        let o = Outcome::NonRetryable {
            status: Some(404),
            error: "HTTP 404 Not Found".into(),
        };
        assert_eq!(reason(decide(&attempt(1), o)), FailureReason::NonRetryable);
    }

    #[test]
    fn an_expired_message_is_not_attempted() {
        let a = Attempt {
            number: 1,
            limit: 5,
            expires_at: Some(at(100)),
            retained_until: None,
            age_limit: None,
        };
        assert_eq!(
            policy().before_attempt(&a, at(100)),
            None,
            "expiry instant itself is still in time"
        );
        assert_eq!(
            reason(policy().before_attempt(&a, at(101)).unwrap()),
            FailureReason::Expired
        );
        assert_eq!(
            policy().before_attempt(&attempt(1), at(u32::MAX.into())),
            None
        );
    }

    #[test]
    fn retryable_with_no_time_left_is_expired() {
        // Backoff for attempt 1 is 5..=10s: an expiry 3s away leaves no room.
        let a = Attempt {
            number: 1,
            limit: 5,
            expires_at: Some(at(3)),
            retained_until: None,
            age_limit: None,
        };
        assert_eq!(reason(decide(&a, retryable(None))), FailureReason::Expired);
        // A Retry-After beyond the expiry too.
        let a = Attempt {
            number: 1,
            limit: 5,
            expires_at: Some(at(60)),
            retained_until: None,
            age_limit: None,
        };
        assert_eq!(
            reason(decide(&a, retryable(Some(61)))),
            FailureReason::Expired
        );
        assert_eq!(
            decide(&a, retryable(Some(60))),
            Action::Retry {
                delay: Duration::from_secs(60)
            }
        );
    }

    #[test]
    fn a_retry_that_would_outlive_the_retention_is_dead_lettered_as_expired() {
        let a = Attempt {
            number: 2,
            limit: 5,
            expires_at: None,
            retained_until: Some(at(100)),
            age_limit: None,
        };
        let Action::DeadLetter(d) = decide(&a, retryable(Some(101))) else {
            panic!("expected a dead letter")
        };
        assert_eq!(d.reason, FailureReason::Expired);
        assert!(d.last_error.starts_with("retention"), "{}", d.last_error);
        assert_eq!(d.last_status, Some(503));
        assert_eq!(
            decide(&a, retryable(Some(100))),
            Action::Retry {
                delay: Duration::from_secs(100)
            },
            "ending exactly at the horizon is still in time"
        );
        let gone = Attempt {
            retained_until: Some(at(0)),
            ..a
        };
        assert_eq!(
            decide(&gone, Outcome::Delivered { status: 200 }),
            Action::Ack,
            "a delivery is never refused for retention"
        );
    }

    #[test]
    fn retry_after_overrides_the_backoff_and_is_capped() {
        assert_eq!(
            decide(&attempt(1), retryable(Some(300))),
            Action::Retry {
                delay: Duration::from_secs(300)
            }
        );
        assert_eq!(
            decide(&attempt(1), retryable(Some(0))),
            Action::Retry {
                delay: Duration::ZERO
            }
        );
        assert_eq!(
            decide(&attempt(1), retryable(Some(90_000))),
            Action::Retry {
                delay: Duration::from_secs(3600)
            },
            "capped at RETRY_AFTER_MAX_SECONDS"
        );
    }

    #[test]
    fn a_fractional_retry_after_rounds_up() {
        let d = policy().delay(
            1,
            Some(Duration::from_millis(1500)),
            VISIBILITY_LIMIT,
            &mut fastrand::Rng::new(),
        );
        assert_eq!(d, Duration::from_secs(2));
    }

    #[test]
    fn no_delay_goes_past_the_visibility_limit_or_the_time_left() {
        let mut p = policy();
        p.retry_after_max = Duration::from_secs(100_000);
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(
            p.delay(
                1,
                Some(Duration::from_secs(99_999)),
                VISIBILITY_LIMIT,
                &mut rng
            ),
            VISIBILITY_LIMIT
        );
        assert_eq!(
            p.delay(
                1,
                Some(Duration::from_secs(99_999)),
                Duration::from_secs(40_000),
                &mut rng
            ),
            Duration::from_secs(40_000)
        );
    }

    #[test]
    fn the_worst_case_horizon_counts_every_wait_at_its_longest() {
        // Attempts 1..=4 wait before attempts 2..=5: max(backoff, 3600) each.
        assert_eq!(
            policy().worst_case_horizon(Duration::from_secs(10)),
            Duration::from_secs(4 * 3600 + 5 * 10)
        );
        let mut p = policy();
        p.retry_after_max = Duration::from_secs(1);
        // 10, 20, 40, 80 of backoff.
        assert_eq!(
            p.worst_case_horizon(Duration::ZERO),
            Duration::from_secs(150)
        );
        p.max_attempts = 1;
        assert_eq!(
            p.worst_case_horizon(Duration::from_secs(7)),
            Duration::from_secs(7)
        );
    }

    #[test]
    fn last_error_is_one_short_line() {
        let d = DeadLetter::new(
            FailureReason::NonRetryable,
            1,
            None,
            &format!("a\nb\r{}", "x".repeat(400)),
        );
        assert_eq!(d.last_error.chars().count(), LAST_ERROR_MAX_CHARS);
        assert!(d.last_error.starts_with("a b x"));
        assert_eq!(one_line("ünïcödé", 3), "ünï");
    }

    #[test]
    fn attempt_numbers_add_up_without_overflow() {
        assert_eq!(Attempt::number(0, 1), 1);
        assert_eq!(Attempt::number(3, 2), 5);
        assert_eq!(Attempt::number(u32::MAX, 2), u32::MAX);
    }

    proptest! {
        #[test]
        fn every_retry_delay_is_within_bounds(
            n in 1u32..50, ra in proptest::option::of(0u64..200_000), max_delay in 0u64..=43_200, seed: u64
        ) {
            let d = policy().delay(n, ra.map(Duration::from_secs), Duration::from_secs(max_delay),
                                   &mut fastrand::Rng::with_seed(seed));
            prop_assert!(d <= Duration::from_secs(max_delay));
            prop_assert!(d <= VISIBILITY_LIMIT);
            match ra {
                Some(ra) => prop_assert_eq!(d, Duration::from_secs(ra.min(3600).min(max_delay))),
                None => prop_assert!(d <= Duration::from_secs(900)),
            }
        }

        #[test]
        fn a_retry_never_lands_after_expiry(n in 1u32..5, exp in 0u64..2000, ra in proptest::option::of(0u64..5000), seed: u64) {
            let a = Attempt { number: n, limit: 5, expires_at: Some(at(exp)), retained_until: None, age_limit: None };
            let action = policy().after_attempt(&a, retryable(ra), T0, &mut fastrand::Rng::with_seed(seed));
            if let Action::Retry { delay } = action {
                prop_assert!(T0 + delay <= at(exp));
            }
        }

        #[test]
        fn a_retry_never_ends_after_the_retention_horizon(
            n in 1u32..5, until in 0u64..2000, ra in proptest::option::of(0u64..u64::MAX), seed: u64
        ) {
            let a = Attempt { number: n, limit: 5, expires_at: None, retained_until: Some(at(until)), age_limit: None };
            match policy().after_attempt(&a, retryable(ra), T0, &mut fastrand::Rng::with_seed(seed)) {
                Action::Retry { delay } => prop_assert!(T0 + delay <= at(until)),
                Action::DeadLetter(d) => prop_assert!(
                    d.reason == FailureReason::AttemptsExhausted
                        || d.last_error.starts_with("retention")),
                Action::Ack => prop_assert!(false, "a failure is never acknowledged"),
            }
        }
    }
}
