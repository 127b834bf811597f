//! One record's whole decision, pure (spec §2–§4, §8): [`plan`] before the
//! attempt, [`conclude`] after it. The processor only does the I/O between
//! them (fetch a credential, ask the breaker, send the request) and carries
//! out the [`Action`]; the fuzzer and the bench call the same two functions.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use retryq::policy::backoff::Backoff;
//! use retryq::policy::record::{conclude, plan, AttemptResult, Label, Plan, Received, Settings};
//! use retryq::policy::{Action, RetryPolicy};
//! use retryq::policy::classify::Answer;
//!
//! let retry = RetryPolicy {
//!     max_attempts: 5,
//!     backoff: Backoff::new(Duration::from_secs(10), Duration::from_secs(900)).unwrap(),
//!     retry_after_max: Duration::from_secs(43_200),
//! };
//! let settings = Settings::new(&retry, &|_, _| None);
//! let body = r#"{"id": "o-1", "destinationUrl": "https://partner.example.com/", "request": {"method": "GET"}}"#;
//! let now = SystemTime::now();
//! let Plan::Attempt { attempt, .. } = plan(&Received::new(body, 1), &settings, now) else { panic!() };
//! let headers = http::HeaderMap::new();
//! let answer = AttemptResult::Answer(Answer::Status { status: 503, headers: &headers });
//! let decision = conclude(&settings, &attempt, answer, now, Duration::from_secs(43_200),
//!                         &mut fastrand::Rng::with_seed(1));
//! assert_eq!(decision.label, Label::Retryable);
//! assert!(matches!(decision.action, Action::Retry { .. }));
//! ```

use std::time::{Duration, SystemTime};

use super::backoff::VISIBILITY_LIMIT;
use super::classify::{classify, Answer, NoResponse, Outcome};
use super::destinations::DestinationPolicies;
use super::{Action, Attempt, DeadLetter, FailureReason, RetryPolicy};
use crate::message::RetryMessage;

/// SQS counts the 12-hour visibility limit from the receive, which happened
/// before the batch reached us: by up to the batching window, plus this much
/// for the rest of the way.
pub const RECEIVE_SLACK: Duration = Duration::from_secs(60);

/// Whether an auth profile's credentials may go to a destination: `None`
/// when there is no such profile.
pub type ProfileCheck<'a> = dyn Fn(&str, &url::Url) -> Option<bool> + Sync + 'a;

/// Why the destination policy refuses a destination (its URL alone: the
/// addresses a name stands for are checked when connecting); `None` when
/// it does not.
pub type DestinationCheck<'a> = dyn Fn(&url::Url) -> Option<String> + Sync + 'a;

fn any_destination(_: &url::Url) -> Option<String> {
    None
}

/// What the decision knows of the processor's configuration.
#[derive(Clone, Copy)]
pub struct Settings<'a> {
    pub retry: &'a RetryPolicy,
    /// May this auth profile's credentials go to this destination (§12.8)?
    /// `None`: no such profile.
    pub profile_allows: &'a ProfileCheck<'a>,
    /// `ALLOWED_DESTINATIONS` and the address rules, checked before any
    /// rate token or breaker is spent on the record.
    pub destination_refusal: &'a DestinationCheck<'a>,
    /// `DESTINATION_POLICIES`.
    pub destinations: &'a DestinationPolicies,
    /// Statuses retried besides those of §3 (a destination's `retryOn`).
    pub retry_on: &'a [u16],
}

static NO_POLICIES: DestinationPolicies = DestinationPolicies::none();

impl<'a> Settings<'a> {
    /// The processor's settings, without destination policies.
    pub fn new(retry: &'a RetryPolicy, profile_allows: &'a ProfileCheck<'a>) -> Self {
        Settings {
            retry,
            profile_allows,
            destination_refusal: &any_destination,
            destinations: &NO_POLICIES,
            retry_on: &[],
        }
    }

    /// Refusing destinations as `check` says.
    pub fn with_destination_check(self, check: &'a DestinationCheck<'a>) -> Self {
        Settings {
            destination_refusal: check,
            ..self
        }
    }

    /// With these destination policies.
    pub fn with_destinations(self, destinations: &'a DestinationPolicies) -> Self {
        Settings {
            destinations,
            ..self
        }
    }

    /// The settings for a request to `url`: its destination policy's
    /// attempts, backoff and `retryOn`, if one matches. Call it on the
    /// processor's settings (a narrowed one keeps its destination's).
    pub fn for_destination(&self, url: &url::Url) -> Settings<'a> {
        match self.destinations.for_url(url) {
            None => *self,
            Some(rules) => Settings {
                retry: &rules.retry,
                retry_on: &rules.retry_on,
                ..*self
            },
        }
    }
}

/// The parts of a received record the decision looks at.
#[derive(Debug, Clone)]
pub struct Received<'a> {
    /// The body exactly as received.
    pub body: &'a str,
    /// SQS `ApproximateReceiveCount`.
    pub receive_count: u32,
    /// The latest a retry may end (§8.1), when the retention is known.
    pub retained_until: Option<SystemTime>,
    /// A dead letter decided on an earlier receive whose send failed: it is
    /// sent again, without a new attempt (§8.2).
    pub pending_dead_letter: Option<DeadLetter>,
    /// Is the record too large for the DLQ even with the fewest attributes?
    /// It is then left in its queue, unattempted (§8.2).
    pub too_large_for_dlq: Option<String>,
    /// With an attempt ledger (§9): the failed attempts it holds for this
    /// SQS message. The attempt number then counts these, not receives, so
    /// a receive that made no request uses up no attempt.
    pub recorded_failures: Option<u32>,
    /// For a payload pointer (§11): the request body may be this large
    /// (`MAX_OFFLOADED_BODY_BYTES`), and `body` is the payload read from S3.
    pub offloaded_body_limit: Option<usize>,
    /// A payload pointer that cannot be resolved (no such object, too
    /// large): the record is an `invalid-message`, saying why.
    pub unresolvable: Option<String>,
    /// A payload pointer whose object is marked finished (§12.3): this is
    /// a redelivery of a delivered or dead-lettered record, acknowledged
    /// without a new attempt.
    pub already_finished: Option<Finished>,
    /// A carried copy's `RetryqCarry.attempts` (§12.5): the attempts made
    /// before this SQS message, `receivedCount` included. It stands in for
    /// `receivedCount`.
    pub carried_attempts: Option<u32>,
    /// `MAX_AGE_SECONDS` after the first copy's `SentTimestamp`.
    pub age_limit: Option<SystemTime>,
}

impl<'a> Received<'a> {
    /// A record with nothing known beyond its body and receive count.
    pub fn new(body: &'a str, receive_count: u32) -> Received<'a> {
        Received {
            body,
            receive_count,
            retained_until: None,
            pending_dead_letter: None,
            too_large_for_dlq: None,
            recorded_failures: None,
            offloaded_body_limit: None,
            unresolvable: None,
            already_finished: None,
            carried_attempts: None,
            age_limit: None,
        }
    }
}

/// What to do before any attempt.
#[derive(Debug)]
pub enum Plan {
    /// Make the attempt.
    Attempt {
        message: Box<RetryMessage>,
        attempt: Attempt,
    },
    /// Decided without an attempt.
    Decided(Decision),
    /// Leave the record in its queue unattempted, for this reason.
    Leave(String),
}

/// What kind of ending a record had: the `outcome` of its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Label {
    Delivered,
    Retryable,
    NonRetryable,
    /// Not a valid message (or no such auth profile).
    Invalid,
    /// Refused by the destination policy.
    NotAllowed,
    /// Its auth profile's `hosts` do not name its destination (§12.8): an
    /// invalid message, counted as refused.
    NotForProfile,
    /// `expiresAt` passed before the attempt.
    Expired,
    /// The circuit breaker refused the attempt.
    CircuitOpen,
    /// No rate-limit token in time: deferred, without an attempt (§9).
    RateLimited,
    /// A dead letter from an earlier receive, sent again.
    DeadLetterPending,
    /// A redelivery of a record whose payload is marked delivered:
    /// acknowledged without a request (§12.3).
    AlreadyDelivered,
    /// A redelivery of a record whose payload is marked dead-lettered: its
    /// DLQ copy exists; acknowledged without an attempt.
    AlreadyDeadLettered,
    /// A record carried over before (§12.5: its copy was sent, the
    /// acknowledgement lost): acknowledged without an attempt.
    CarriedBefore,
    /// A carried copy received before its next try is due: hidden again,
    /// without an attempt (§12.5).
    NotYetDue,
    /// An operator paused its destination (§13.3): put back, without an
    /// attempt.
    Paused,
}

impl Label {
    pub fn as_str(self) -> &'static str {
        match self {
            Label::Delivered => "delivered",
            Label::Retryable => "retryable",
            Label::NonRetryable => "non-retryable",
            Label::Invalid => "invalid",
            Label::NotAllowed => "not-allowed",
            Label::NotForProfile => "not-for-profile",
            Label::Expired => "expired",
            Label::CircuitOpen => "circuit-open",
            Label::RateLimited => "rate-limited",
            Label::DeadLetterPending => "dead-letter-pending",
            Label::AlreadyDelivered => "already-delivered",
            Label::AlreadyDeadLettered => "already-dead-lettered",
            Label::CarriedBefore => "carried-before",
            Label::NotYetDue => "not-yet-due",
            Label::Paused => "paused",
        }
    }
}

/// How an attempt went, as far as the destination host's health is
/// concerned (the circuit breaker's input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// It answered, and not with a retryable failure.
    Answered,
    /// A retryable failure (5xx, 408, 409, 429, `Retry-After`, no answer).
    Failed,
}

/// The decision for one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The attempt number (§2).
    pub attempt: u32,
    pub label: Label,
    /// The status of the answer, when there was one.
    pub status: Option<u16>,
    pub action: Action,
    /// What the attempt says of the host's health; `None` when it says
    /// nothing (no attempt, or no request reached the host).
    pub health: Option<Health>,
}

/// What became of the attempt, or of the try to make one.
#[derive(Debug)]
pub enum AttemptResult<'a> {
    /// The destination answered (or said the token expired again right
    /// after its refresh).
    Answer(Answer<'a>),
    /// No answer; `detail` is one line without the URL.
    NoResponse { kind: NoResponse, detail: &'a str },
    /// The circuit breaker for this host is open: not attempted.
    BreakerOpen { host: &'a str },
    /// No credential could be had: the token endpoint or Secrets Manager did
    /// not answer, or failed. Retryable.
    CredentialUnavailable(&'a str),
    /// The credentials were refused, even after a re-read (§8.3).
    CredentialRejected(&'a str),
    /// The destination policy refused it; no connection was made.
    NotAllowed(String),
    /// The message cannot be turned into a request.
    Invalid(&'a str),
}

/// How the message of a payload was finished, as the object's tag
/// `retryq-finished` records it (§12.3): a redelivery of that message is
/// then acknowledged without a new attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Its request was delivered.
    Delivered,
    /// It was dead-lettered; the DLQ copy points to a copy of the object.
    DeadLettered,
}

impl Finished {
    /// Its name, as the payload's tag carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            Finished::Delivered => "delivered",
            Finished::DeadLettered => "dead-lettered",
        }
    }

    /// The tag value read back.
    pub fn from_tag(value: &str) -> Option<Finished> {
        match value {
            "delivered" => Some(Finished::Delivered),
            "dead-lettered" => Some(Finished::DeadLettered),
            _ => None,
        }
    }
}

/// Before the attempt: parse, check, and decide whether to make one.
pub fn plan(received: &Received<'_>, settings: &Settings<'_>, now: SystemTime) -> Plan {
    if let Some(finished) = received.already_finished {
        return Plan::Decided(Decision {
            attempt: received.receive_count,
            label: match finished {
                Finished::Delivered => Label::AlreadyDelivered,
                Finished::DeadLettered => Label::AlreadyDeadLettered,
            },
            status: None,
            action: Action::Ack,
            health: None,
        });
    }
    if let Some(why) = &received.too_large_for_dlq {
        return Plan::Leave(why.clone());
    }
    if let Some(dead_letter) = &received.pending_dead_letter {
        return Plan::Decided(Decision {
            attempt: dead_letter.attempt,
            label: Label::DeadLetterPending,
            status: dead_letter.last_status,
            action: Action::DeadLetter(dead_letter.clone()),
            health: None,
        });
    }
    if let Some(why) = &received.unresolvable {
        return Plan::Decided(refused(
            FailureReason::InvalidMessage,
            received.receive_count,
            why,
        ));
    }
    let parsed = match received.offloaded_body_limit {
        None => RetryMessage::parse(received.body),
        Some(limit) => RetryMessage::parse_with_body_limit(received.body, limit),
    };
    let message = match parsed {
        Ok(message) => message,
        Err(e) => {
            return Plan::Decided(refused(
                FailureReason::InvalidMessage,
                received.receive_count,
                &e.to_string(),
            ))
        }
    };
    let settings = settings.for_destination(&message.destination_url);
    let retry = settings.retry;
    let before = Attempt::before(message.received_count, received.carried_attempts);
    let attempt = Attempt {
        number: Attempt::counted(before, received.recorded_failures, received.receive_count),
        limit: Attempt::limit_of(message.max_attempts, retry.max_attempts),
        expires_at: message.expires_at.map(SystemTime::from),
        retained_until: received.retained_until,
        age_limit: received.age_limit,
    };
    if let Some(decision) = refusal(&message, &settings, attempt.number) {
        return Plan::Decided(decision);
    }
    if let Some(action) = retry.before_attempt(&attempt, now) {
        return Plan::Decided(Decision {
            attempt: attempt.number,
            label: Label::Expired,
            status: None,
            action,
            health: None,
        });
    }
    Plan::Attempt {
        message: Box::new(message),
        attempt,
    }
}

/// A message refused before anything is spent on it: its destination by
/// the destination policy, or its auth profile, not configured or whose
/// `hosts` do not name the destination (§12.8; the error names the
/// profile, never the host).
fn refusal(message: &RetryMessage, settings: &Settings<'_>, attempt: u32) -> Option<Decision> {
    let url = &message.destination_url;
    if let Some(why) = (settings.destination_refusal)(url) {
        return Some(refused(FailureReason::DestinationNotAllowed, attempt, &why));
    }
    let profile = message.auth.as_deref()?;
    let (label, why) = match (settings.profile_allows)(profile, url) {
        None => (Label::Invalid, "is not configured"),
        // Nothing is sent: its credentials go only to its `hosts`.
        Some(false) => (
            Label::NotForProfile,
            "may not be sent to this destination's host (its hosts)",
        ),
        Some(true) => return None,
    };
    let error = format!("auth: profile {profile:?} {why}");
    Some(Decision {
        label,
        ..refused(FailureReason::InvalidMessage, attempt, &error)
    })
}

/// What is known of a record whose message is not read yet: a large
/// payload admitted on its head before its body is fetched (§12.4). The
/// message's fields are those its head held (retryq's producer writes them
/// before the request; another producer may not).
#[derive(Debug, Clone, Copy, Default)]
pub struct Unread {
    /// SQS's receive count.
    pub receive_count: u32,
    /// Failed attempts in the ledger, when there is one.
    pub recorded_failures: Option<u32>,
    /// The attempts made before this SQS message: a carried copy's count,
    /// else `receivedCount` (0 when the head did not hold it).
    pub received_count: u32,
    pub max_attempts: Option<u32>,
    pub expires_at: Option<SystemTime>,
    pub age_limit: Option<SystemTime>,
}

/// The attempt a record is before its message is read. Only a deferral,
/// or a refusal that counts as an attempt, is decided with it; the
/// attempt itself is planned once the whole message is read.
pub fn attempt_unread(settings: &Settings<'_>, unread: &Unread) -> Attempt {
    Attempt {
        number: Attempt::counted(
            unread.received_count,
            unread.recorded_failures,
            unread.receive_count,
        ),
        limit: Attempt::limit_of(unread.max_attempts, settings.retry.max_attempts),
        expires_at: unread.expires_at,
        retained_until: None,
        age_limit: unread.age_limit,
    }
}

/// After the attempt: classify what happened (§3) and decide what now (§4).
/// `max_delay` is the longest delay SQS will still accept for this receive
/// ([`receive_limit`]).
pub fn conclude(
    settings: &Settings<'_>,
    attempt: &Attempt,
    result: AttemptResult<'_>,
    now: SystemTime,
    max_delay: Duration,
    rng: &mut fastrand::Rng,
) -> Decision {
    let Classified {
        outcome,
        label,
        health,
    } = match classify_result(result, now, settings.retry_on) {
        Ok(classified) => classified,
        Err(Refusal { reason, error }) => return refused(reason, attempt.number, &error),
    };
    let status = outcome.status();
    let action = settings
        .retry
        .after_attempt_within(attempt, outcome, now, max_delay, rng);
    Decision {
        attempt: attempt.number,
        label,
        status,
        action,
        health,
    }
}

/// The §3 outcome of an attempt result (for callers that decide for
/// themselves, such as `retryq call`), or, when the request was refused
/// before it was made, why.
pub fn outcome(result: AttemptResult<'_>, now: SystemTime) -> Result<Outcome, String> {
    classify_result(result, now, &[])
        .map(|c| c.outcome)
        .map_err(|r| r.error)
}

struct Classified {
    outcome: Outcome,
    label: Label,
    health: Option<Health>,
}

/// A request refused before it was made: dead-lettered with this reason.
struct Refusal {
    reason: FailureReason,
    error: String,
}

fn classify_result(
    result: AttemptResult<'_>,
    now: SystemTime,
    retry_on: &[u16],
) -> Result<Classified, Refusal> {
    let retryable = |error: String| Outcome::Retryable {
        status: None,
        retry_after: None,
        error,
    };
    let (outcome, label, health) = match result {
        AttemptResult::NotAllowed(error) => {
            return Err(Refusal {
                reason: FailureReason::DestinationNotAllowed,
                error,
            })
        }
        AttemptResult::Invalid(error) => {
            return Err(Refusal {
                reason: FailureReason::InvalidMessage,
                error: error.to_owned(),
            })
        }
        AttemptResult::BreakerOpen { host } => (
            retryable(format!("circuit breaker open for {host}: not attempted")),
            Some(Label::CircuitOpen),
            None,
        ),
        AttemptResult::CredentialUnavailable(e) => (retryable(e.to_owned()), None, None),
        AttemptResult::CredentialRejected(e) => (
            Outcome::NonRetryable {
                status: None,
                error: e.to_owned(),
            },
            None,
            None,
        ),
        AttemptResult::NoResponse { kind, detail } => {
            let mut outcome = classify(&Answer::NoResponse(kind), now);
            if let Outcome::Retryable { error, .. } = &mut outcome {
                *error = format!("{error}: {detail}");
            }
            (outcome, None, Some(Health::Failed))
        }
        AttemptResult::Answer(answer) => {
            let outcome = match classify(&answer, now) {
                Outcome::NonRetryable {
                    status: Some(status),
                    error,
                } if retry_on.contains(&status) => Outcome::Retryable {
                    status: Some(status),
                    retry_after: None,
                    error: format!("{error} (in this destination's retryOn)"),
                },
                outcome => outcome,
            };
            let health = match outcome {
                Outcome::Retryable { .. } => Health::Failed,
                _ => Health::Answered,
            };
            (outcome, None, Some(health))
        }
    };
    let label = label.unwrap_or(match &outcome {
        Outcome::Delivered { .. } => Label::Delivered,
        Outcome::Retryable { .. } => Label::Retryable,
        Outcome::NonRetryable { .. } => Label::NonRetryable,
    });
    Ok(Classified {
        outcome,
        label,
        health,
    })
}

/// Why a record is deferred: put back without an attempt (§9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferral {
    /// The circuit breaker for its host is open, or another process holds
    /// the probe.
    BreakerOpen,
    /// No rate-limit token could be had before the batch must answer.
    RateLimited,
    /// A record that holds no count of its own (it cannot be carried over)
    /// could not have its attempt counted in the ledger first (§12.6).
    Uncountable,
    /// An operator paused its destination (§13.3).
    Paused,
}

/// A record put back unattempted for about `wait`. With an attempt ledger
/// this uses up no attempt, so it is never dead-lettered as
/// `attempts-exhausted`; only `expiresAt` or the queue's retention can end
/// it (as `expired`), as they would end a retry.
pub fn defer(
    settings: &Settings<'_>,
    attempt: &Attempt,
    why: Deferral,
    wait: Duration,
    now: SystemTime,
    max_delay: Duration,
) -> Decision {
    let (label, error) = match why {
        Deferral::BreakerOpen => (Label::CircuitOpen, "circuit breaker open: not attempted"),
        Deferral::RateLimited => (Label::RateLimited, "rate limit: deferred, not attempted"),
        Deferral::Paused => (Label::Paused, "destination paused: deferred, not attempted"),
        Deferral::Uncountable => (
            Label::CircuitOpen,
            "state table unavailable: the attempt could not be counted first, not attempted",
        ),
    };
    // Whole seconds (SQS's unit), rounded up, and at least one so a
    // deferred record does not come straight back.
    let wait = Duration::from_secs(
        wait.as_secs()
            .saturating_add(u64::from(wait.subsec_nanos() > 0))
            .max(1),
    );
    let delay = wait.min(max_delay).min(VISIBILITY_LIMIT);
    let action = settings.retry.defer_within(attempt, delay, now, error);
    Decision {
        attempt: attempt.number,
        label,
        status: None,
        action,
        health: None,
    }
}

/// How long a record waits when the state table it needs does not answer
/// (a rate token or a probe is not given without it): a second, doubling
/// with each receive up to 15 minutes, so that a long outage does not
/// spend the receives of a FIFO record (which cannot be carried over)
/// before the table is back.
pub fn table_retry(receive_count: u32) -> Duration {
    let doublings = receive_count.saturating_sub(1).min(10);
    Duration::from_secs(1u64 << doublings).min(Duration::from_secs(900))
}

/// The longest delay SQS still accepts for a receive: its 12-hour limit,
/// less the time since the batch started, the batching window (the receive
/// may have come that much earlier) and [`RECEIVE_SLACK`] (§8.8).
pub fn receive_limit(since_batch_started: Duration, batching_window: Duration) -> Duration {
    VISIBILITY_LIMIT.saturating_sub(
        since_batch_started
            .saturating_add(batching_window)
            .saturating_add(RECEIVE_SLACK),
    )
}

/// Invalid messages and refused destinations: dead-lettered unattempted.
fn refused(reason: FailureReason, attempt: u32, error: &str) -> Decision {
    let label = match reason {
        FailureReason::DestinationNotAllowed => Label::NotAllowed,
        _ => Label::Invalid,
    };
    Decision {
        attempt,
        label,
        status: None,
        action: Action::DeadLetter(DeadLetter::new(reason, attempt, None, error)),
        health: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::backoff::Backoff;

    fn retry() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            backoff: Backoff::new(Duration::from_secs(10), Duration::from_secs(900)).unwrap(),
            retry_after_max: Duration::from_secs(3600),
        }
    }

    const NOW: SystemTime = SystemTime::UNIX_EPOCH;

    fn body(extra: &str) -> String {
        format!(
            r#"{{"id": "m-1", "destinationUrl": "https://h.example.com/", "request": {{"method": "POST"}}{extra}}}"#
        )
    }

    fn planned(received: &Received<'_>) -> Plan {
        let retry = retry();
        let settings = Settings::new(&retry, &|p, _| (p == "known").then_some(true));
        plan(received, &settings, NOW)
    }

    #[test]
    fn a_record_waiting_for_the_table_backs_off_to_fifteen_minutes() {
        let waits: Vec<u64> = [1, 2, 3, 10, 11, 12, 100, u32::MAX]
            .into_iter()
            .map(|n| table_retry(n).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 512, 900, 900, 900, 900]);
        // A FIFO record's 100 receives (the template's redrive) last about
        // 22 hours.
        let total: u64 = (1..=100).map(|n| table_retry(n).as_secs()).sum();
        assert!(total > 20 * 3600, "{total} s");
    }

    #[test]
    fn a_redelivery_of_a_finished_payload_is_acknowledged_without_an_attempt() {
        let b = body("");
        let mut received = Received::new(&b, 4);
        // Its fourth receive, past the three attempts: finished is final.
        for (finished, label, name) in [
            (
                Finished::Delivered,
                Label::AlreadyDelivered,
                "already-delivered",
            ),
            (
                Finished::DeadLettered,
                Label::AlreadyDeadLettered,
                "already-dead-lettered",
            ),
        ] {
            received.already_finished = Some(finished);
            let Plan::Decided(d) = planned(&received) else {
                panic!("no attempt is made")
            };
            assert_eq!((d.label, d.action, d.health), (label, Action::Ack, None));
            assert_eq!(d.label.as_str(), name);
        }
    }

    fn concluded(attempt: u32, result: AttemptResult<'_>) -> Decision {
        let retry = retry();
        let settings = Settings::new(&retry, &|_, _| Some(true));
        let attempt = Attempt {
            number: attempt,
            limit: 3,
            expires_at: None,
            retained_until: None,
            age_limit: None,
        };
        conclude(
            &settings,
            &attempt,
            result,
            NOW,
            VISIBILITY_LIMIT,
            &mut fastrand::Rng::with_seed(7),
        )
    }

    #[test]
    fn a_destination_policy_sets_attempts_backoff_and_extra_retried_statuses() {
        let retry = retry();
        let policies = DestinationPolicies::parse(
            r#"{"h.example.com": {"maxAttempts": 2, "backoff": {"baseSeconds": 100, "maxSeconds": 100}, "retryOn": [404]}}"#,
            &retry,
        )
        .unwrap();
        let base = Settings::new(&retry, &|_, _| Some(true)).with_destinations(&policies);
        let text = body("");
        let Plan::Attempt { message, attempt } = plan(&Received::new(&text, 1), &base, NOW) else {
            panic!("expected an attempt")
        };
        assert_eq!(attempt.limit, 2, "maxAttempts of the matching pattern");
        let settings = base.for_destination(&message.destination_url);
        let headers = http::HeaderMap::new();
        let not_found = || {
            AttemptResult::Answer(Answer::Status {
                status: 404,
                headers: &headers,
            })
        };
        let mut rng = fastrand::Rng::with_seed(1);
        let d = conclude(
            &settings,
            &attempt,
            not_found(),
            NOW,
            VISIBILITY_LIMIT,
            &mut rng,
        );
        assert_eq!(d.label, Label::Retryable, "404 is in retryOn");
        let Action::Retry { delay } = d.action else {
            panic!("expected a retry")
        };
        assert!(
            (50..=100).contains(&delay.as_secs()),
            "its backoff (100 s, jittered): {delay:?}"
        );
        let last = Attempt {
            number: 2,
            ..attempt
        };
        let d = conclude(
            &settings,
            &last,
            not_found(),
            NOW,
            VISIBILITY_LIMIT,
            &mut rng,
        );
        assert_eq!(reason(&d), Some(FailureReason::AttemptsExhausted));
        // Another host keeps the processor's own settings.
        let other = body("").replace("h.example.com", "other.example.com");
        let Plan::Attempt { attempt, .. } = plan(&Received::new(&other, 1), &base, NOW) else {
            panic!("expected an attempt")
        };
        assert_eq!(attempt.limit, 3);
    }

    #[test]
    fn with_a_ledger_the_attempt_counts_recorded_failures_not_receives() {
        let text = body(r#", "receivedCount": 1"#);
        let mut received = Received::new(&text, 7);
        received.recorded_failures = Some(1);
        let Plan::Attempt { attempt, .. } = planned(&received) else {
            panic!("expected an attempt")
        };
        assert_eq!(
            attempt.number, 3,
            "1 before enqueueing + 1 recorded + this one"
        );
        assert!(attempt.is_final());
        received.recorded_failures = None;
        let Plan::Attempt { attempt, .. } = planned(&received) else {
            panic!("expected an attempt")
        };
        assert_eq!(
            attempt.number, 8,
            "without a ledger: receivedCount + receives"
        );
        // Never more than the receive count would give.
        let mut received = Received::new(&text, 1);
        received.recorded_failures = Some(5);
        let Plan::Attempt { attempt, .. } = planned(&received) else {
            panic!("expected an attempt")
        };
        assert_eq!(attempt.number, 2);
    }

    #[test]
    fn a_deferral_on_the_final_attempt_is_not_dead_lettered_but_expiry_still_ends_it() {
        let retry = retry();
        let settings = Settings::new(&retry, &|_, _| Some(true));
        let last = Attempt {
            number: 3,
            limit: 3,
            expires_at: None,
            retained_until: None,
            age_limit: None,
        };
        for why in [Deferral::BreakerOpen, Deferral::RateLimited] {
            let d = defer(
                &settings,
                &last,
                why,
                Duration::from_millis(1500),
                NOW,
                VISIBILITY_LIMIT,
            );
            assert_eq!(
                d.action,
                Action::Retry {
                    delay: Duration::from_secs(2)
                },
                "rounded up"
            );
            assert_eq!(d.health, None);
        }
        let expiring = Attempt {
            expires_at: Some(NOW + Duration::from_secs(10)),
            ..last
        };
        let d = defer(
            &settings,
            &expiring,
            Deferral::RateLimited,
            Duration::from_secs(30),
            NOW,
            VISIBILITY_LIMIT,
        );
        assert_eq!(reason(&d), Some(FailureReason::Expired));
        assert_eq!(d.label, Label::RateLimited);
    }

    fn reason(d: &Decision) -> Option<FailureReason> {
        match &d.action {
            Action::DeadLetter(dl) => Some(dl.reason),
            _ => None,
        }
    }

    #[test]
    fn every_way_a_plan_ends_before_the_attempt() {
        let Plan::Decided(d) = planned(&Received::new("not json", 2)) else {
            panic!()
        };
        assert_eq!((d.label, d.attempt), (Label::Invalid, 2));
        assert_eq!(reason(&d), Some(FailureReason::InvalidMessage));

        let text = body(r#", "auth": "unknown""#);
        let Plan::Decided(d) = planned(&Received::new(&text, 1)) else {
            panic!()
        };
        assert_eq!(d.label, Label::Invalid, "an unknown profile is invalid");

        let text = body(r#", "expiresAt": "1960-01-01T00:00:00Z""#);
        let Plan::Decided(d) = planned(&Received::new(&text, 1)) else {
            panic!()
        };
        assert_eq!(d.label, Label::Expired);

        let text = body("");
        let mut r = Received::new(&text, 1);
        r.pending_dead_letter = Some(DeadLetter::new(
            FailureReason::NonRetryable,
            1,
            Some(404),
            "x",
        ));
        let Plan::Decided(d) = planned(&r) else {
            panic!()
        };
        assert_eq!((d.label, d.status), (Label::DeadLetterPending, Some(404)));
        r.too_large_for_dlq = Some("too large".into());
        assert!(matches!(planned(&r), Plan::Leave(why) if why == "too large"));

        let text = body(r#", "auth": "known", "receivedCount": 1"#);
        let Plan::Attempt { attempt, .. } = planned(&Received::new(&text, 1)) else {
            panic!()
        };
        assert_eq!((attempt.number, attempt.limit), (2, 3));
    }

    #[test]
    fn every_attempt_result_concludes() {
        let headers = http::HeaderMap::new();
        let status = |s| {
            AttemptResult::Answer(Answer::Status {
                status: s,
                headers: &headers,
            })
        };
        let d = concluded(1, status(200));
        assert_eq!(
            (d.label, d.health, &d.action),
            (Label::Delivered, Some(Health::Answered), &Action::Ack)
        );
        let d = concluded(1, status(503));
        assert_eq!(
            (d.label, d.health),
            (Label::Retryable, Some(Health::Failed))
        );
        assert!(matches!(d.action, Action::Retry { .. }));
        let d = concluded(1, status(404));
        assert_eq!(
            (d.label, d.health),
            (Label::NonRetryable, Some(Health::Answered))
        );
        let d = concluded(3, status(503));
        assert_eq!(reason(&d), Some(FailureReason::AttemptsExhausted));

        let d = concluded(
            1,
            AttemptResult::NoResponse {
                kind: NoResponse::Timeout,
                detail: "after 10 s",
            },
        );
        assert_eq!(
            (d.label, d.health),
            (Label::Retryable, Some(Health::Failed))
        );
        let d = concluded(1, AttemptResult::BreakerOpen { host: "h:443" });
        assert_eq!((d.label, d.health), (Label::CircuitOpen, None));
        assert!(matches!(d.action, Action::Retry { .. }));
        let d = concluded(3, AttemptResult::BreakerOpen { host: "h:443" });
        assert_eq!(
            reason(&d),
            Some(FailureReason::AttemptsExhausted),
            "the final attempt is used up"
        );
        let d = concluded(
            1,
            AttemptResult::CredentialUnavailable("token endpoint timed out"),
        );
        assert_eq!((d.label, d.health), (Label::Retryable, None));
        let d = concluded(1, AttemptResult::CredentialRejected("rejected"));
        assert_eq!(reason(&d), Some(FailureReason::NonRetryable));
        let d = concluded(1, AttemptResult::NotAllowed("private address".into()));
        assert_eq!(
            (d.label, reason(&d)),
            (
                Label::NotAllowed,
                Some(FailureReason::DestinationNotAllowed)
            )
        );
        let d = concluded(1, AttemptResult::Invalid("request.method"));
        assert_eq!(
            (d.label, reason(&d)),
            (Label::Invalid, Some(FailureReason::InvalidMessage))
        );
        let d = concluded(
            1,
            AttemptResult::Answer(Answer::ExpiredAfterRefresh { status: 401 }),
        );
        assert_eq!(
            (d.label, d.health),
            (Label::Retryable, Some(Health::Failed))
        );
    }

    #[test]
    fn the_receive_limit_keeps_the_batching_window_and_the_slack() {
        assert_eq!(
            receive_limit(Duration::from_secs(10), Duration::from_secs(300)),
            Duration::from_secs(43_200 - 10 - 300 - 60)
        );
        assert_eq!(receive_limit(Duration::MAX, Duration::ZERO), Duration::ZERO);
    }
}
