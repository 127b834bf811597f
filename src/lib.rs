//! # retryq
//!
//! An asynchronous retry processor for failed HTTP calls between services,
//! on AWS Lambda and SQS. Service A puts a **Retry Message** (a model of the
//! HTTP request) on the retry queue when a call to service B fails; the
//! `retryq-processor` function replays it, backs off retryable failures with
//! `ChangeMessageVisibility`, dead-letters what cannot succeed, and answers
//! Lambda with a partial batch response so only unfinished records return.
//!
//! The outside of the product (message schema, outcome table, actions,
//! configuration, DLQ attributes, CLI) is specified in the repository's
//! `docs/spec.md`; comments cite it by section (`spec §4`), and §8, the
//! rules that keep a message from being lost or looping, is
//! `docs/reliability.md`.
//!
//! ## Layout
//!
//! The decision core is pure (no I/O, no clock, no randomness of its own);
//! the adapters around it are thin.
//!
//! | module | job |
//! |---|---|
//! | [`message`] | Retry Message v1: the serde model and its validation |
//! | [`policy`] | pure: what to do with a record ([`policy::RetryPolicy`]) |
//! | [`policy::classify`] | pure: what kind of answer was this (§3) |
//! | [`policy::backoff`] | pure: exponential backoff with jitter |
//! | [`config`] | the environment, parsed and validated once |
//! | [`auth`] | auth profiles: tokens and API keys the processor holds |
//! | [`deliver`] | HTTP adapter: replay one request; [`deliver::destination`] is the SSRF policy |
//! | [`queue`] | SQS adapter: visibility, DLQ copies, deletes |
//! | [`breaker`] | per-host circuit breaker and concurrency limit |
//! | [`process`] | one batch: deliver → decide → apply, each record isolated |
//! | [`metrics`] | CloudWatch Embedded Metric Format per batch |
//! | [`lambda`] | Lambda adapter: `SqsEvent` → `SqsBatchResponse` |
//! | [`worker`] | path 3.2: the long-lived poller, same core |
//! | [`trigger`] | the Lambda SQS event source, emulated for local runs |
//! | [`dlq`] | list and redrive dead letters |
//! | [`check`] | pure: queue settings the processor would refuse or warn about |
//! | [`producer`] | service A's side: build, enqueue, call-then-enqueue |
//! | [`cli`] | the `retryq` command line |
//!
//! The binaries `retryq-processor` and `retryq` only wire these together.
//!
//! ## The core in one example
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use retryq::message::RetryMessage;
//! use retryq::policy::{Action, Attempt, RetryPolicy};
//! use retryq::policy::backoff::Backoff;
//! use retryq::policy::classify::{classify, Answer};
//!
//! let msg = RetryMessage::parse(r#"{"id": "order-42",
//!     "destinationUrl": "https://partner.example.com/orders",
//!     "request": {"method": "POST", "body": "{}"}}"#).unwrap();
//! let policy = RetryPolicy {
//!     max_attempts: 5,
//!     backoff: Backoff::new(Duration::from_secs(10), Duration::from_secs(900)).unwrap(),
//!     retry_after_max: Duration::from_secs(43_200),
//! };
//! // Second receive of the message; the destination said 429, retry in 30 s.
//! let attempt = Attempt { number: Attempt::number(msg.received_count, 2),
//!                         limit: msg.attempt_limit(policy.max_attempts), expires_at: None,
//!                         retained_until: None };
//! let mut headers = http::HeaderMap::new();
//! headers.insert("retry-after", "30".parse().unwrap());
//! let now = SystemTime::now();
//! let outcome = classify(&Answer::Status { status: 429, headers: &headers }, now);
//! let action = policy.after_attempt(&attempt, outcome, now, &mut fastrand::Rng::with_seed(1));
//! assert_eq!(action, Action::Retry { delay: Duration::from_secs(30) });
//! ```

pub mod auth;
pub mod breaker;
pub mod check;
pub mod cli;
pub mod config;
pub mod deliver;
pub mod dlq;
pub mod lambda;
pub mod message;
pub mod metrics;
pub mod policy;
pub mod process;
pub mod producer;
pub mod queue;
pub mod trigger;
pub mod worker;
