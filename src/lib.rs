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
//! | [`message`] | pure: Retry Message v1, the serde model and its validation |
//! | [`policy`] | pure: what to do with a record: [`policy::record::plan`] before the attempt, [`policy::record::conclude`] after it |
//! | [`policy::classify`] | pure: what kind of answer was this (spec §3) |
//! | [`policy::backoff`] | pure: exponential backoff with jitter |
//! | [`batch`] | pure data: the records of a batch and what became of them |
//! | `check` | pure: queue settings the processor would refuse or warn about |
//! | `clock` | instants in the future, without overflow |
//! | [`config`] | the environment, parsed and validated once |
//! | `auth` | adapter: auth profiles, the tokens, secrets, signatures and client certificates the processor holds |
//! | [`deliver`] | adapter: replay one request over HTTP; [`deliver::destination`] is the SSRF policy |
//! | [`queue`] | adapter: every SQS call (visibility, DLQ copies, deletes, queue settings) |
//! | `breaker` | per-host circuit breaker, concurrency limit and request slots |
//! | [`logging`] | log lines buffered per batch; the binaries' subscriber |
//! | `tls` | the certificate authorities HTTPS clients trust (public roots and `CA_BUNDLE`) |
//! | [`fleet`] | adapter: the optional DynamoDB table the fleet shares (ledger, breaker, rate limits) |
//! | `gather` | many records' calls gathered into batch calls (SQS, DynamoDB) |
//! | `metrics` | CloudWatch Embedded Metric Format per batch |
//! | [`wiring`] | the adapters the configuration describes, built in one place |
//! | [`process`] | one batch: plan → attempt → conclude → apply, each record isolated |
//! | [`lambda`] | entry point: Lambda's SQS event → `SqsBatchResponse` |
//! | [`worker`] | entry point: path 3.2, the long-lived poller, same core |
//! | [`trigger`] | local: the Lambda SQS event source, emulated |
//! | `dlq` | list and redrive dead letters |
//! | [`fair`] | the `MessageGroupId` of a message on a fair queue (§13.1) |
//! | [`producer`] | service A's side: build, enqueue, call-then-enqueue |
//! | [`cli`] | entry point: the `retryq` command line |
//!
//! **Features.** `processor` (default) builds the Lambda function, the CLI
//! and the local trigger, with `lambda_runtime`, `aws_lambda_events`, `clap`
//! and the Secrets Manager SDK (`secrets-manager`). A service that only
//! builds and enqueues Retry Messages can depend on
//! `retryq = { default-features = false }`: the message model, the producer
//! (including `call_then_enqueue` with env-var auth profiles) and the
//! decision core, without any of those.
//!
//! The public API is the message model, the producer, the policy (for
//! embedding the decision core), the configuration and the entry points;
//! the rest is internal. Modules depend on each other without cycles (`scripts/module-cycles.py
//! --tree` prints the graph; `make lint` checks it).
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
//!                         retained_until: None, age_limit: None };
//! let mut headers = http::HeaderMap::new();
//! headers.insert("retry-after", "30".parse().unwrap());
//! let now = SystemTime::now();
//! let outcome = classify(&Answer::Status { status: 429, headers: &headers }, now);
//! let action = policy.after_attempt(&attempt, outcome, now, &mut fastrand::Rng::with_seed(1));
//! assert_eq!(action, Action::Retry { delay: Duration::from_secs(30) });
//! ```

pub(crate) mod auth;
pub mod batch;
pub mod bounded;
pub(crate) mod breaker;
#[cfg(feature = "processor")]
pub(crate) mod check;
#[cfg(feature = "processor")]
pub mod cli;
pub(crate) mod clock;
pub mod config;
#[cfg(feature = "console")]
pub mod console;
pub mod deliver;
#[cfg(feature = "processor")]
pub(crate) mod dlq;
pub mod fair;
#[cfg(feature = "processor")]
pub mod fleet;
pub(crate) mod gather;
#[cfg(feature = "processor")]
pub mod heartbeat;
#[cfg(feature = "processor")]
pub mod lambda;
pub mod logging;
pub mod message;
pub(crate) mod metrics;
pub mod payload;
pub mod policy;
#[cfg(feature = "processor")]
pub mod process;
pub mod producer;
pub mod queue;
#[cfg(feature = "sim")]
pub mod sim;
pub mod tls;
#[cfg(feature = "processor")]
pub mod trigger;
pub mod wiring;
#[cfg(feature = "processor")]
pub mod worker;
