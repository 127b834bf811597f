//! One batch: deliver → decide → apply, for every record, in isolation.
//!
//! This is the one path both entry points share: the Lambda handler
//! ([`crate::lambda`]) and the long-lived poller call
//! [`Processor::process_batch`] with neutral [`Record`]s and get back, for
//! each record, whether it was acknowledged.
//!
//! Guarantees, from spec §4 and §8:
//!
//! * **Nothing is lost.** A record counts as acknowledged only when it was
//!   delivered or its DLQ copy was sent. Every other ending (an SQS call that
//!   failed, `DLQ_URL` unset, a panic, the deadline) leaves it
//!   unacknowledged, so SQS redelivers it. No retry is scheduled to end
//!   after the source queue's retention would delete the message: such a
//!   record is dead-lettered as `expired` instead (§8.1).
//! * **Nothing loops.** A DLQ copy is fitted to the DLQ's size by dropping
//!   attributes (§8.2); a record whose body alone cannot fit is left in its
//!   queue without being attempted. A record whose dead letter could not be
//!   sent is remembered, so its next receive in this process sends the dead
//!   letter again instead of the request.
//! * **Records are isolated.** Each record runs as its own task: a panic
//!   fails that record only, and no per-record problem becomes an error of
//!   the batch.
//! * **Deadline-aware.** Records not finished by the deadline are abandoned
//!   and reported unacknowledged, so the answer still reaches Lambda in time.
//! * **Bounded.** At most `MAX_CONCURRENCY` requests are in flight; waiting
//!   for a token or an SQS call does not hold a slot.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub use crate::batch::{BatchReport, Disposition, Processed, Record, RecordReport};
use crate::breaker::{host_key, Admission, Breakers, LocalBuckets};
use crate::config::{BreakerSettings, Config, LogDelivered};
use crate::deliver::{Deliverer, Delivery};
use crate::fleet::breaker::{FleetAdmission, FleetTicket};
use crate::fleet::ledger::AttemptRecord;
use crate::fleet::{FleetState, StateError};
pub use crate::heartbeat::Heartbeat;
use crate::payload::budget::{MemoryBudget, Reserved};
use crate::payload::store::{Kept, PayloadError, PayloadStore, Peeked};
use crate::payload::{Finished, PayloadPointer};
use crate::policy::carry::{Carry, Horizon};
use crate::policy::destinations::Token;
use crate::policy::fifo;
use crate::policy::record::{
    self, AttemptResult, Decision, Deferral, Health, Label, Plan, Received, Settings,
};
use crate::policy::{Action, Attempt, DeadLetter, FailureReason};
use crate::queue::{smallest_copy_size, DeadLetterCopy, QueueError, QueueLimits, Queues};

/// Longest a record waits for a rate-limit token or the breaker's probe
/// before it is deferred.
pub const MAX_WAIT: Duration = Duration::from_secs(20);

/// A fleet probe's lease outlives its request by this much.
const PROBE_LEASE_SLACK: Duration = Duration::from_secs(5);
/// Room for the Retry Message around an offloaded body, in its S3 object.
const OBJECT_ROOM: usize = 1024 * 1024;
/// A payload's finished mark must end this long before the batch's
/// deadline, when the record's task is cut.
const MARK_MARGIN: Duration = Duration::from_millis(300);

/// What the breaker said.
enum Admitted {
    /// Go, reporting on the ticket if there is a breaker.
    Go(Option<Ticket>),
    /// Put the record back without an attempt, for about this long.
    Defer(Duration),
    /// Refused; without a ledger this counts as an attempt (v1).
    Refused,
}

/// An admitted attempt's ticket, from this process's breaker or the fleet's.
enum Ticket {
    Local(crate::breaker::Ticket),
    Fleet(FleetTicket),
}

/// How far processes' clocks, and SQS's, may differ (docs/state.md:
/// the probe lease's slack), and a second for rounding.
const CLOCK_SLACK: Duration = Duration::from_secs(PROBE_LEASE_SLACK.as_secs() + 1);

/// The `Destination` a record's figures go under (§12.9): its host, but
/// `refused` for a record the destination policy refused, so that what a
/// producer names cannot add metric streams.
fn metrics_destination(decision: Option<&Decision>, host: Option<String>) -> Option<String> {
    match decision.map(|d| d.label) {
        Some(Label::NotAllowed | Label::NotForProfile) => Some(crate::metrics::REFUSED.to_owned()),
        _ => host,
    }
}

/// Was the attempt counted in the ledger before it was made?
enum CountedFirst {
    /// Not needed: no ledger, or the record can be carried over.
    No,
    /// Counted; the failures recorded before it.
    Yes(u32),
    /// It had to be and could not: the record waits.
    Failed,
}

/// What admitted an attempt: the breaker's ticket, if there is a breaker,
/// and the moment its rate token must be spent by, if a fleet lease gave
/// it (§9's bound holds however long the wait before the request).
#[derive(Default)]
struct Pass {
    ticket: Option<Ticket>,
    spend_by: Option<tokio::time::Instant>,
}

/// How long a record waits when the table it needs does not answer
/// ([`record::table_retry`]).
fn table_retry(record: &Record) -> Duration {
    record::table_retry(record.receive_count)
}

/// A one-line error of an attempt that got no answer (for the ledger).
fn delivery_error(delivery: &crate::deliver::Delivery) -> Option<String> {
    match delivery {
        Delivery::Answered { status, .. } if (200..300).contains(status) => None,
        Delivery::Answered { status, .. } => Some(format!("HTTP {status}")),
        Delivery::AuthFailed(e) => Some(e.to_string()),
        Delivery::NoResponse { kind, detail } => Some(format!("{kind:?}: {detail}")),
        Delivery::NotAllowed(e) => Some(e.to_string()),
        Delivery::Invalid(e) => Some(e.clone()),
        Delivery::Withheld => Some("withheld: the probe lease was lost before it was sent".into()),
    }
}

/// SQS's smallest `MaximumMessageSize` (1 KiB): every queue holds a
/// message this large.
const SMALLEST_MAXIMUM_MESSAGE_SIZE: usize = 1024;

/// Logs a DLQ smaller than the record's source queue (§8.2: a
/// configuration error), once per process (one try: a queue that cannot be
/// read is not asked again).
async fn compare_dlq_with_source(queues: Arc<Queues>, dlq_url: String, source_arn: String) {
    let Some(dlq) = queues.limits_of(&dlq_url).await else {
        return;
    };
    let Ok(url) = queues.url_of(&source_arn).await else {
        return;
    };
    let Some(source) = queues.limits_of(&url).await else {
        return;
    };
    if dlq.max_message_size < source.max_message_size {
        tracing::error!(
            dlq = %dlq_url,
            dlq_maximum_message_size = dlq.max_message_size,
            source = %url,
            source_maximum_message_size = source.max_message_size,
            "configuration error: the DLQ's MaximumMessageSize is smaller than its source queue's; records too large for the DLQ stay in the source queue unattempted"
        );
    }
}

/// Most records whose dead letter is remembered as not yet sent.
const PENDING_DEAD_LETTERS: usize = 10_000;

/// What every record of one batch shares.
#[derive(Debug, Clone)]
pub struct Batch {
    /// When the batch reached us (the 12-hour limit counts from before it).
    pub started: Instant,
    /// Keeps the records in work hidden (`retryq worker`).
    pub heartbeat: Option<Arc<Heartbeat>>,
    /// When the batch must answer.
    pub(crate) deadline: Option<Instant>,
    /// A call to the state table failed: the rest of the batch goes on
    /// without it (§9), and the log says so once.
    pub(crate) without_table: Arc<AtomicBool>,
}

impl Batch {
    /// A batch starting now, without a heartbeat (Lambda's event source
    /// mapping owns the visibility there).
    pub fn starting_now() -> Batch {
        Batch {
            started: Instant::now(),
            heartbeat: None,
            deadline: None,
            without_table: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A batch starting now, kept hidden by `heartbeat`.
    pub fn with_heartbeat(heartbeat: Arc<Heartbeat>) -> Batch {
        Batch {
            heartbeat: Some(heartbeat),
            ..Batch::starting_now()
        }
    }
}

/// The processor: configuration plus the HTTP and SQS adapters, built once
/// per process and shared by every batch.
#[derive(Debug)]
pub struct Processor {
    config: Config,
    deliverer: Deliverer,
    queues: Arc<Queues>,
    breakers: Arc<Breakers>,
    /// `STATE_TABLE`: the fleet's shared state, when configured.
    fleet: Option<FleetState>,
    /// Rate-limit buckets of this process (no table, or the table failed).
    buckets: LocalBuckets,
    /// Records whose dead letter could not be sent, by SQS message id: their
    /// next receive sends it again without a new attempt.
    pending_dead_letters: Mutex<HashMap<String, DeadLetter>>,
    /// The DLQ's size has been compared with its source queue's.
    dlq_size_checked: AtomicBool,
    /// Payloads offloaded to S3 (§11), read through pointers.
    payloads: PayloadStore,
    /// `PAYLOAD_MEMORY_BYTES`: room for the fetched bodies (§12.4).
    payload_budget: MemoryBudget,
}

/// A record's body once a payload pointer is resolved (§11).
enum Resolved {
    /// Not a pointer: the body is the Retry Message.
    Inline,
    /// A payload in S3: where it is, its size, what a mark keeps of it,
    /// and its body (read, or only its head so far).
    Offloaded {
        pointer: PayloadPointer,
        size: usize,
        kept: Box<Kept>,
        body: Body,
    },
    /// A pointer whose object is marked finished: a redelivery of a
    /// delivered or dead-lettered record (§12.3).
    AlreadyFinished(crate::payload::Finished),
    /// A pointer that can never be resolved: an `invalid-message`. When
    /// its object exists (too large, not text), the pointer and the
    /// object's size: the letter gets a copy of it (§12.1).
    Unresolvable(String, Option<(PayloadPointer, usize)>),
    /// S3 could not answer: left for another receive.
    Unavailable(String),
}

/// An offloaded payload's body (§12.4).
enum Body {
    /// Not read yet: a payload larger than its head, read once the record
    /// is admitted; what its head says (the destination, if it names it).
    Head(crate::payload::head::Head),
    /// Read: the text (released once parsed), and its room in
    /// `PAYLOAD_MEMORY_BYTES`, held until the record's work is done.
    Read { text: String, _reserved: Reserved },
}

/// What [`Processor::decide`] gives: the decision (`Err` leaves the record
/// in its queue unattempted, saying why), the attempt's latency, and its
/// ledger entry.
type Decided = (
    Result<Decision, String>,
    Option<Duration>,
    Option<AttemptRecord>,
);

/// The admission's word: go, with the breaker's ticket if there is one, or
/// what was decided instead.
enum Gate {
    Go(Pass),
    Decided(Decision),
}

/// The send gate of an attempt admitted by the fleet: right before each
/// request goes out, its rate token must still be live, a probe renews
/// its lease, and a request to a proven host checks that it still is
/// (§12.7); the request is withheld when the pass no longer admits it.
struct LeaseGate<'a> {
    processor: &'a Processor,
    batch: &'a Batch,
    ticket: Option<&'a FleetTicket>,
    spend_by: Option<tokio::time::Instant>,
    /// The worker's hold on the message (its receipt handle), confirmed
    /// before anything else: a message this worker may no longer hold is
    /// not sent.
    hold: Option<(&'a Heartbeat, &'a str)>,
}

impl crate::deliver::SendGate for LeaseGate<'_> {
    fn open(&self) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            if let Some((heartbeat, receipt_handle)) = self.hold {
                if !heartbeat
                    .confirm(&self.processor.queues, receipt_handle)
                    .await
                {
                    return false;
                }
            }
            if self
                .spend_by
                .is_some_and(|by| tokio::time::Instant::now() >= by)
            {
                return false;
            }
            let (Some(ticket), Some(fleet)) = (self.ticket, self.processor.table(self.batch))
            else {
                return true;
            };
            let lease_for = self.processor.config.request_timeout + PROBE_LEASE_SLACK;
            match fleet.still_admits(ticket, lease_for).await {
                Ok(held) => held,
                // The table failed: the batch goes on without it, as the
                // breaker's fallback does. A probe whose renewal failed
                // may have lost its lease: it is withheld (another may be
                // in flight); a request to a proven host goes.
                Err(e) => {
                    self.processor.without_table::<()>(self.batch, &e);
                    !ticket.is_probe()
                }
            }
        })
    }
}

/// Can the record be carried over? Not from a FIFO queue (a copy would
/// join the end of its group), nor a message that already has SQS's 10
/// attributes and no `RetryqCarry` to replace: §8.1 stands for those.
/// The copy must fit the queue with its `RetryqCarry` (a payload's copy is
/// a pointer, smaller than its message).
fn can_carry(record: &Record, limits: &QueueLimits) -> bool {
    let carry = crate::policy::carry::CARRY_ATTRIBUTE;
    !crate::queue::is_fifo(&record.source_queue_arn)
        && (record.message_attributes.len() < 10
            || record.message_attributes.iter().any(|a| a.name == carry))
        && carried_size(record) <= limits.max_message_size
}

/// The size SQS counts for a carried copy of `record`: its body, its
/// message attributes (names, types and values) and room for
/// `RetryqCarry`.
fn carried_size(record: &Record) -> usize {
    use crate::batch::AttributeValue;
    /// `RetryqCarry`'s name, type and a value with every field at its widest.
    const CARRY_ROOM: usize = 256;
    let attributes: usize = record
        .message_attributes
        .iter()
        .filter(|a| a.name != crate::policy::carry::CARRY_ATTRIBUTE)
        .map(|a| {
            a.name.len()
                + a.data_type.len()
                + match &a.value {
                    AttributeValue::Text(t) => t.len(),
                    AttributeValue::Bytes(b) => b.len(),
                }
        })
        .sum();
    record.body.len() + attributes + CARRY_ROOM
}

/// A record's carry-over, as the processor counts it (§12.5).
struct Carried {
    carry: Option<Carry>,
    /// The receives of this copy that count: SQS's, less the one early
    /// receive of a copy delayed past 900 s.
    receive_count: u32,
    /// `MAX_AGE_SECONDS` after the first copy was sent.
    age_limit: Option<SystemTime>,
}

impl Carried {
    /// The attempts made before this copy, when it is a carried one.
    fn attempts(&self) -> Option<u32> {
        self.carry.as_ref().map(|c| c.attempts)
    }
}

/// What [`Processor::admit_unread`] did.
enum Early {
    /// Nothing: not a payload read on its head, or one whose head does not
    /// name its destination (admitted once read, as any record).
    NotAsked,
    /// Admitted, and the body read.
    Admitted(Pass),
    /// Deferred or refused before the body was read.
    Decided(Decision),
}

/// An admitted attempt, as [`Processor::attempt`] needs it.
struct Attempted<'s, 'a> {
    settings: &'s Settings<'a>,
    attempt: Attempt,
    pass: Pass,
    first_receive: bool,
    recorded_failures: Option<u32>,
}

impl Processor {
    /// Wires the processor. Makes no network call. `secrets_manager` is
    /// needed only by auth profiles that read Secrets Manager.
    pub fn new(
        config: Config,
        sqs: aws_sdk_sqs::Client,
        secrets_manager: Option<crate::auth::SecretsManager>,
    ) -> Result<Processor, reqwest::Error> {
        Processor::with_queues(config, Queues::new(sqs), secrets_manager)
    }

    /// As [`new`](Self::new), with the SQS adapter given (for example
    /// [`Queues::from_env`], whose client is built on first use).
    pub fn with_queues(
        config: Config,
        queues: Queues,
        secrets_manager: Option<crate::auth::SecretsManager>,
    ) -> Result<Processor, reqwest::Error> {
        let deliverer = crate::wiring::deliverer(&config, config.max_concurrency, secrets_manager)?;
        if config.payload_buckets.is_empty() {
            tracing::warn!(
                "neither PAYLOAD_BUCKETS nor PAYLOAD_BUCKET is set: payload pointers are not followed, \
                 and each is dead-lettered as an invalid message"
            );
        }
        crate::metrics::set_host_state_limit(config.host_state_limit);
        Ok(Processor {
            breakers: Breakers::with_limit(config.host_state_limit),
            fleet: config
                .state
                .clone()
                .map(|s| FleetState::from_env(s).with_host_limit(config.host_state_limit)),
            buckets: LocalBuckets::default(),
            deliverer,
            queues: Arc::new(queues),
            pending_dead_letters: Mutex::new(HashMap::new()),
            dlq_size_checked: AtomicBool::new(false),
            payloads: PayloadStore::new(),
            payload_budget: MemoryBudget::new(config.payload_memory_bytes),
            config,
        })
    }

    /// The most hosts any of its per-host maps keeps (breakers, the fleet
    /// breakers' views, per-host request limits): at most
    /// `HOST_STATE_LIMIT` (§12.9).
    pub fn hosts_kept(&self) -> usize {
        let fleet = self.fleet.as_ref().map_or(0, FleetState::hosts_kept);
        self.breakers
            .hosts_kept()
            .max(fleet)
            .max(self.deliverer.hosts_kept())
    }

    /// With this store of offloaded payloads instead of one whose S3 client
    /// comes from the environment.
    pub fn with_payload_store(mut self, payloads: PayloadStore) -> Processor {
        self.payloads = payloads;
        self
    }

    /// With this state table (its client given) instead of the one
    /// `STATE_TABLE` names.
    pub fn with_fleet(mut self, fleet: FleetState) -> Processor {
        self.fleet = Some(fleet.with_host_limit(self.config.host_state_limit));
        self
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn queues(&self) -> &Arc<Queues> {
        &self.queues
    }

    /// Processes a batch. Records still running at `deadline` are reported
    /// unfinished. Never fails as a whole.
    pub async fn process_batch(
        self: &Arc<Self>,
        records: Vec<Record>,
        deadline: Option<Instant>,
    ) -> BatchReport {
        self.process_batch_in(records, deadline, Batch::starting_now())
            .await
    }

    /// [`process_batch`](Self::process_batch) as part of `batch` (with its
    /// heartbeat, if any).
    pub async fn process_batch_in(
        self: &Arc<Self>,
        records: Vec<Record>,
        deadline: Option<Instant>,
        mut batch: Batch,
    ) -> BatchReport {
        batch.deadline = batch.deadline.or(deadline);
        let heartbeat = batch.heartbeat.clone();
        self.run_batch(records, deadline, heartbeat, move |this, record| {
            let batch = batch.clone();
            async move { this.process_record(record, &batch).await }
        })
        .await
    }

    /// [`process_batch`](Self::process_batch) with each record's work given
    /// by `work` (which may call [`Processor::process_record`]); for tests
    /// that need a record to misbehave, and for instrumentation.
    ///
    /// Records from a FIFO queue (`….fifo` ARN) run in order within their
    /// `MessageGroupId`, groups concurrently; after the first record of a
    /// group that is not acknowledged, the rest of that group are not
    /// attempted (they are made visible again at once, behind the blocking
    /// record, so the group resumes when its backoff ends).
    pub async fn process_batch_with<F, Fut>(
        self: &Arc<Self>,
        records: Vec<Record>,
        deadline: Option<Instant>,
        work: F,
    ) -> BatchReport
    where
        F: Fn(Arc<Processor>, Record) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Processed> + Send + 'static,
    {
        self.run_batch(records, deadline, None, work).await
    }

    async fn run_batch<F, Fut>(
        self: &Arc<Self>,
        records: Vec<Record>,
        deadline: Option<Instant>,
        heartbeat: Option<Arc<Heartbeat>>,
        work: F,
    ) -> BatchReport
    where
        F: Fn(Arc<Processor>, Record) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Processed> + Send + 'static,
    {
        let logs = crate::logging::BatchLogs::begin();
        let ids: Vec<(String, String)> = records
            .iter()
            .map(|r| (r.message_id.clone(), r.receipt_handle.clone()))
            .collect();
        let fifo = records
            .iter()
            .any(|r| crate::queue::is_fifo(&r.source_queue_arn));
        let finished = if fifo {
            self.run_fifo(records, deadline, heartbeat, Arc::new(work))
                .await
        } else {
            run_isolated(records, deadline, self.max_tasks(), |record| {
                work(Arc::clone(self), record)
            })
            .await
        };
        let records = ids
            .into_iter()
            .zip(finished)
            .map(|((message_id, receipt_handle), result)| {
                let processed = result.unwrap_or_else(|unfinished| {
                    tracing::error!(id = %message_id, err = %unfinished, "record not finished");
                    Disposition::Unfinished(unfinished.to_string()).into()
                });
                RecordReport {
                    message_id,
                    receipt_handle,
                    disposition: processed.disposition,
                    attempt_latency: processed.attempt_latency,
                    destination: processed.destination,
                }
            })
            .collect();
        let report = BatchReport { records };
        // Once per batch, whichever entry point it came from, after the
        // batch's log lines.
        crate::metrics::emit(&self.config.metrics, &report, &mut MetricsOut(&logs));
        drop(logs);
        report
    }

    /// FIFO: groups concurrently, each group in order, stopping at the first
    /// record not acknowledged. Results in the records' order.
    async fn run_fifo<F, Fut>(
        self: &Arc<Self>,
        records: Vec<Record>,
        deadline: Option<Instant>,
        heartbeat: Option<Arc<Heartbeat>>,
        work: Arc<F>,
    ) -> Vec<Result<Processed, Unfinished>>
    where
        F: Fn(Arc<Processor>, Record) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Processed> + Send + 'static,
    {
        let count = records.len();
        let plan = fifo::groups(records.iter().map(|r| r.message_group_id.as_deref()));
        let mut records: Vec<Option<Record>> = records.into_iter().map(Some).collect();
        let groups: Vec<(String, Vec<(usize, Record)>)> = plan
            .into_iter()
            .map(|g| {
                let members = g
                    .members
                    .into_iter()
                    .map(|i| (i, records[i].take().expect("each record in one group")))
                    .collect();
                (g.id, members)
            })
            .collect();
        let group_runs = groups.into_iter().map(|(group, members)| {
            let this = Arc::clone(self);
            let work = Arc::clone(&work);
            let heartbeat = heartbeat.clone();
            async move {
                let mut out = Vec::with_capacity(members.len());
                let mut all_acknowledged = true;
                for (i, record) in members {
                    if fifo::Group::after(all_acknowledged) == fifo::Next::Release {
                        if let Some(heartbeat) = &heartbeat {
                            heartbeat.leave(&record.receipt_handle).await;
                        }
                        this.release(&record, deadline).await;
                        tracing::info!(id = %record.message_id, out = %"not-attempted", err = "an earlier record of its message group was not acknowledged", group = %group, "record");
                        out.push((i, Ok(Disposition::Unfinished(format!(
                            "not attempted: an earlier record of message group {group:?} was not acknowledged"
                        )).into())));
                        continue;
                    }
                    let result = run_isolated(vec![record], deadline, 1, |r| work(Arc::clone(&this), r))
                        .await
                        .pop()
                        .expect("one result per record");
                    all_acknowledged = matches!(&result, Ok(p) if p.disposition.acknowledged());
                    out.push((i, result));
                }
                out
            }
        });
        let mut results: Vec<Result<Processed, Unfinished>> =
            (0..count).map(|_| Err(Unfinished::Cancelled)).collect();
        for group in run_isolated(group_runs.collect(), None, self.max_tasks(), |run| run).await {
            // A group task itself cannot panic (each record runs isolated
            // inside it); its records stay `Cancelled` if it somehow did.
            for (i, result) in group.unwrap_or_default() {
                results[i] = result;
            }
        }
        results
    }

    /// Records (or FIFO groups) worked on at once: enough to keep
    /// `MAX_CONCURRENCY` requests in flight while others wait for their SQS
    /// calls, which gather records' actions for a few milliseconds.
    fn max_tasks(&self) -> usize {
        self.config.max_concurrency.saturating_mul(4).max(16)
    }

    /// Makes a record visible again at once (best effort, and never past the
    /// batch's deadline: otherwise it reappears after the queue's visibility
    /// timeout).
    async fn release(&self, record: &Record, deadline: Option<Instant>) {
        let release = self.hide(record, Duration::ZERO);
        let result = match deadline {
            None => release.await,
            Some(at) => tokio::time::timeout_at(at.into(), release)
                .await
                .unwrap_or_else(|_| {
                    Err(QueueError::Sqs {
                        operation: "ChangeMessageVisibility",
                        detail: "not answered before the batch's deadline".into(),
                    })
                }),
        };
        if let Err(e) = result {
            tracing::warn!(message_id = %record.message_id, error = %e, "could not release a record");
        }
    }

    /// All the work for one record: decide, apply, log one line.
    pub async fn process_record(&self, record: Record, batch: &Batch) -> Processed {
        let mut resolved = self.resolve(&record, batch).await;
        let mut destination = None;
        let (decision, latency, ledger) = self
            .decide(&record, &mut resolved, batch, &mut destination)
            .await;
        let disposition = self
            .settle(
                &record,
                &resolved,
                &decision,
                latency.is_some(),
                ledger,
                batch,
            )
            .await;
        if let Disposition::Delivered = disposition {
            // Delivered: marked so, not deleted, so that a redelivery of the
            // message finds it and is acknowledged without a request
            // (§12.3); the bucket's lifecycle rule removes it a day later.
            self.mark(&record, &resolved, Finished::Delivered, batch.deadline)
                .await;
        }
        // `retryq worker` deletes a finished record now, not with its
        // batch: a kill repeats only what was in flight.
        if let (true, Some(heartbeat)) = (disposition.acknowledged(), &batch.heartbeat) {
            // Boxed: an SQS call's future is kilobytes large.
            Box::pin(heartbeat.finish(&self.queues, &record.receipt_handle)).await;
        }
        let decision = decision.ok();
        let (delay_s, reason) = match decision.as_ref().map(|d| &d.action) {
            Some(Action::Retry { delay }) => (Some(delay.as_secs()), None),
            Some(Action::DeadLetter(d)) => (None, Some(d.reason.as_str())),
            _ => (None, None),
        };
        let failure = match &disposition {
            Disposition::Unfinished(why) => Some(why.as_str()),
            _ => None,
        };
        let delivered = matches!(disposition, Disposition::Delivered);
        if !delivered
            || self
                .config
                .log_delivered
                .logs(|| fastrand::u32(..LogDelivered::SAMPLE))
        {
            // One short line per record (docs/operations.md explains the
            // keys): at a million records a byte here is a megabyte of logs.
            tracing::info!(
                id = %record.message_id,
                n = decision.as_ref().map(|d| d.attempt),
                out = %decision.as_ref().map_or("not-attempted", |d| d.label.as_str()),
                st = decision.as_ref().and_then(|d| d.status),
                delay = delay_s,
                dlq = reason.map(tracing::field::display),
                err = failure,
                "record"
            );
        }
        Processed {
            disposition,
            attempt_latency: latency,
            destination: metrics_destination(decision.as_ref(), destination),
        }
    }

    /// Carries out a record's decision on SQS, and writes its attempt to
    /// the ledger. `attempted`: this receive made an attempt.
    async fn settle(
        &self,
        record: &Record,
        resolved: &Resolved,
        decision: &Result<Decision, String>,
        attempted: bool,
        ledger: Option<AttemptRecord>,
        batch: &Batch,
    ) -> Disposition {
        let d = match decision {
            Ok(d) => d,
            Err(why) => {
                self.leave(batch, record).await;
                return Disposition::Unfinished(why.clone());
            }
        };
        // The hold was lost while the request was in flight: its answer
        // is not acted on (the attempt still counts in the ledger).
        if let Some(lost) = self.hold_lost(batch, record) {
            if let (Some(entry), Some(fleet)) = (ledger, self.table(batch)) {
                if let Err(e) = Box::pin(fleet.record(&entry)).await {
                    self.without_table::<()>(batch, &e);
                }
            }
            self.leave(batch, record).await;
            return Disposition::Unfinished(lost);
        }
        self.carry_out(record, resolved, d, attempted, ledger, batch)
            .await
    }

    /// [`settle`](Self::settle) for a decision the worker may act on: the
    /// ledger entry and the SQS action.
    async fn carry_out(
        &self,
        record: &Record,
        resolved: &Resolved,
        d: &Decision,
        attempted: bool,
        ledger: Option<AttemptRecord>,
        batch: &Batch,
    ) -> Disposition {
        let leave = || self.leave(batch, record);
        // A retry whose queue would end the record first is carried over
        // (§12.5): a copy goes back, and this one is acknowledged.
        let mut carry = Box::pin(self.carry_due(record, d, attempted, false)).await;
        let table = self.table(batch);
        // `Some(false)`: not written (the table failed, in this call or
        // before in the batch); `None`: there is no ledger.
        let write = |entry: AttemptRecord| async move {
            self.fleet.as_ref()?;
            let Some(fleet) = table else {
                return Some(false);
            };
            let written = Box::pin(fleet.record(&entry)).await;
            Some(
                written
                    .map_err(|e| self.without_table::<()>(batch, &e))
                    .is_ok(),
            )
        };
        // A failed attempt that is retried counts only once the ledger holds
        // it (§12.6): its entry is written first, and if that fails the
        // record is carried over, so that the message itself holds the count.
        let ledger = match ledger {
            Some(entry)
                if entry.failed && carry.is_none() && matches!(d.action, Action::Retry { .. }) =>
            {
                if write(entry).await == Some(false) {
                    carry = Box::pin(self.carry_due(record, d, attempted, true)).await;
                }
                None
            }
            other => other,
        };
        // A record leaves the heartbeat before a backoff sets its
        // visibility, or when it is left for another receive. One that is
        // acknowledged stays hidden until the worker has deleted it.
        let acknowledging =
            carry.is_some() || matches!(d.action, Action::Ack | Action::DeadLetter(_));
        if !acknowledging {
            leave().await;
        }
        // A copy (DLQ or carried) goes only from a worker that still holds
        // the message: otherwise another may be delivering it.
        if (carry.is_some() || matches!(d.action, Action::DeadLetter(_)))
            && !self.still_held(batch, record).await
        {
            // Not remembered as a letter to send: another worker may hold
            // the message now, and deliver it.
            let lost = self.hold_lost(batch, record);
            leave().await;
            return Disposition::Unfinished(lost.unwrap_or_else(|| {
                "the worker's hold on the message could not be confirmed".into()
            }));
        }
        let apply = self.apply(record, resolved, &d.action, carry, batch.deadline);
        // Any other entry goes out beside its SQS action: a retried record
        // is received again only after its backoff.
        let written = async {
            if let Some(entry) = ledger {
                write(entry).await;
            }
        };
        tokio::join!(apply, written).0
    }

    /// The I/O around the pure decision ([`record::plan`] and
    /// [`record::conclude`]), in steps: a large payload's admission before
    /// its body is read; the plan; the admission (rate limit, then
    /// breaker); the attempt and its ledger entry. The state table's calls
    /// are boxed: their futures (the DynamoDB SDK's) are large, and a
    /// record without a table should not carry their room in its own
    /// future.
    async fn decide(
        &self,
        record: &Record,
        resolved: &mut Resolved,
        batch: &Batch,
        destination: &mut Option<String>,
    ) -> Decided {
        // With a ledger, attempts are counted from it (§9): a record seen
        // for the first time has none; for the others it is read while the
        // request is in flight (until then the receive count stands in).
        let first_receive = record.receive_count <= 1;
        let recorded_failures = match self.table(batch) {
            Some(_) if first_receive => Some(0),
            _ => None,
        };
        // A carried copy received before its next try only hides again.
        if let Some(decision) = self.not_yet_due(record, batch) {
            return (Ok(decision), None, None);
        }
        if let Some(decision) = Box::pin(self.carried_before(record, batch)).await {
            return (Ok(decision), None, None);
        }
        let profile_allows = |p: &str, url: &url::Url| self.deliverer.profile_allows(p, url);
        let destination_refusal = |url: &url::Url| self.deliverer.destination_refusal(url);
        let settings = Settings::new(&self.config.retry, &profile_allows)
            .with_destination_check(&destination_refusal)
            .with_destinations(&self.config.destination_policies);
        // A large payload is admitted on the destination its head names,
        // and its body read only then (§12.4): a deferred record holds none.
        if let Resolved::Offloaded {
            body: Body::Head(head),
            ..
        } = &*resolved
        {
            *destination = head
                .destination
                .as_ref()
                .and_then(|u| u.host_str())
                .map(str::to_owned);
        }
        let early = self
            .admit_unread(record, resolved, batch, &settings, recorded_failures)
            .await;
        let admitted_early = match early {
            Early::NotAsked => None,
            Early::Admitted(pass) => Some(pass),
            Early::Decided(decision) => return (Ok(decision), None, None),
        };
        let planned = self
            .plan(record, resolved, &settings, recorded_failures, destination)
            .await;
        let (message, attempt) = match planned {
            Ok(planned) => planned,
            Err(decided) => {
                let ticket = admitted_early.and_then(|p| p.ticket);
                self.report(batch, ticket, None).await;
                return (decided, None, None);
            }
        };
        let settings = settings.for_destination(&message.destination_url);
        let pass = match admitted_early {
            Some(pass) => pass,
            None => {
                let url = &message.destination_url;
                match Box::pin(self.admission(record, batch, url, &settings, &attempt)).await {
                    Gate::Go(pass) => pass,
                    Gate::Decided(decision) => return (Ok(decision), None, None),
                }
            }
        };
        let attempted = Attempted {
            settings: &settings,
            attempt,
            pass,
            first_receive,
            recorded_failures,
        };
        self.attempt(record, batch, *message, attempted).await
    }

    /// A large payload's admission on what its head says, then the read of
    /// its body (§12.4). Nothing to do for any other record.
    async fn admit_unread(
        &self,
        record: &Record,
        resolved: &mut Resolved,
        batch: &Batch,
        settings: &Settings<'_>,
        recorded_failures: Option<u32>,
    ) -> Early {
        let Resolved::Offloaded {
            body: Body::Head(head),
            ..
        } = &*resolved
        else {
            return Early::NotAsked;
        };
        let mut early = Early::NotAsked;
        // Without a destination in its head, or with one the destination
        // policy refuses (nothing is spent on it), the whole message is
        // read first.
        let head_destination = head
            .destination
            .clone()
            .filter(|u| (settings.destination_refusal)(u).is_none());
        if let Some(url) = head_destination {
            let settings = settings.for_destination(&url);
            let carried = self.carried(record);
            let unread = record::Unread {
                receive_count: carried.receive_count,
                recorded_failures,
                received_count: Attempt::before(
                    head.received_count.unwrap_or(0),
                    carried.attempts(),
                ),
                max_attempts: head.max_attempts,
                expires_at: head.expires_at,
                age_limit: carried.age_limit,
            };
            let attempt = record::attempt_unread(&settings, &unread);
            match Box::pin(self.admission(record, batch, &url, &settings, &attempt)).await {
                Gate::Go(pass) => early = Early::Admitted(pass),
                Gate::Decided(decision) => return Early::Decided(decision),
            }
        }
        // A probe's lease is renewed when its request goes out, however
        // long this read takes (§12.7).
        Box::pin(self.read_body(resolved, batch)).await;
        early
    }

    /// Reads the body of a payload admitted on its head (§12.4), within
    /// `PAYLOAD_MEMORY_BYTES`. What cannot be read becomes what the plan
    /// makes of it: an invalid message, or one left for another receive.
    async fn read_body(&self, resolved: &mut Resolved, batch: &Batch) {
        let Resolved::Offloaded {
            pointer,
            size,
            kept,
            body,
        } = resolved
        else {
            return;
        };
        let until = tokio::time::Instant::from_std(self.wait_limit(batch));
        let read = self
            .payloads
            .body(pointer, *size, kept, &self.payload_budget, until);
        *resolved = match Box::pin(read).await {
            Ok((text, reserved)) => {
                *body = Body::Read {
                    text,
                    _reserved: reserved,
                };
                return;
            }
            Err(PayloadError::Invalid(why)) => Resolved::Unresolvable(why, None),
            Err(PayloadError::Unusable(why, size)) => {
                Resolved::Unresolvable(why, Some((pointer.clone(), size)))
            }
            Err(PayloadError::Unavailable(why)) => Resolved::Unavailable(why),
        };
    }

    /// What the queues and the ledger say of the record, and the pure plan
    /// ([`record::plan`]): the message and its attempt, or what was decided
    /// without one (`Err(Err)` leaves the record in its queue, saying why).
    async fn plan(
        &self,
        record: &Record,
        resolved: &mut Resolved,
        settings: &Settings<'_>,
        recorded_failures: Option<u32>,
        destination: &mut Option<String>,
    ) -> Result<(Box<crate::message::RetryMessage>, Attempt), Result<Decision, String>> {
        let (body, offloaded_body_limit, unresolvable) = match &*resolved {
            Resolved::Inline | Resolved::AlreadyFinished(_) => (record.body.as_str(), None, None),
            Resolved::Offloaded {
                body: Body::Read { text, .. },
                ..
            } => (text.as_str(), Some(self.config.max_offloaded_body), None),
            Resolved::Offloaded { .. } => {
                return Err(Err("payload pointer: its body was not read".into()))
            }
            Resolved::Unresolvable(why, _) => (record.body.as_str(), None, Some(why.clone())),
            Resolved::Unavailable(why) => return Err(Err(why.clone())),
        };
        let carried = self.carried(record);
        let received = Received {
            body,
            offloaded_body_limit,
            unresolvable,
            receive_count: carried.receive_count,
            carried_attempts: carried.attempts(),
            age_limit: carried.age_limit,
            // Asked of SQS only when a retry is decided: a batch that only
            // delivers makes no SQS call for it.
            retained_until: None,
            pending_dead_letter: self.pending_dead_letter(&record.message_id),
            too_large_for_dlq: self.check_dlq_can_hold(record).await.err(),
            recorded_failures,
            already_finished: match &*resolved {
                Resolved::AlreadyFinished(how) => Some(*how),
                _ => None,
            },
        };
        let (mut message, attempt) = match record::plan(&received, settings, SystemTime::now()) {
            Plan::Leave(why) => return Err(Err(why)),
            Plan::Decided(decision) => return Err(Ok(decision)),
            Plan::Attempt { message, attempt } => (message, attempt),
        };
        // Parsed: the payload read from S3 is no longer needed, and the
        // message holds its body.
        if let Resolved::Offloaded {
            body: Body::Read { text, .. },
            ..
        } = resolved
        {
            *text = String::new();
        }
        if let Some(trace) = &record.trace_header {
            message.continue_trace(trace);
        }
        *destination = message.destination_url.host_str().map(str::to_owned);
        Ok((message, attempt))
    }

    /// The rate limit, then the breaker, for an attempt to `url`: go (with
    /// the breaker's ticket, if any), or what was decided instead (a
    /// deferral, or a refusal that counts as an attempt without a ledger).
    async fn admission(
        &self,
        record: &Record,
        batch: &Batch,
        url: &url::Url,
        settings: &Settings<'_>,
        attempt: &Attempt,
    ) -> Gate {
        // An operator's pause (§13.3): put back, using up no attempt.
        if let Some(wait) = Box::pin(self.paused(record, url)).await {
            let deferred = self.deferred(record, batch, settings, *attempt, Deferral::Paused, wait);
            return Gate::Decided(deferred.await);
        }
        let rules = self.config.destination_policies.for_url(url);
        // A fleet-wide (or this process's) rate limit: no token in time
        // defers the record, using up no attempt.
        let mut spend_by = None;
        if let Some((pattern, rate)) = rules.and_then(|r| Some((&r.pattern, r.rate?))) {
            match Box::pin(self.token(record, batch, pattern, rate)).await {
                Token::Granted { spend_by: by } => spend_by = by,
                Token::Deferred(wait) => {
                    let why = Deferral::RateLimited;
                    let deferred = self.deferred(record, batch, settings, *attempt, why, wait);
                    return Gate::Decided(deferred.await);
                }
            }
        }
        let breaker = rules.and_then(|r| r.breaker).or(self.config.breaker);
        match self
            .breaker_gate(record, batch, url, breaker, settings, attempt)
            .await
        {
            Gate::Go(pass) => Gate::Go(Pass { spend_by, ..pass }),
            decided => decided,
        }
    }

    /// How long to put a record back for, when a pause holds its host
    /// (§13.3). Pauses live in the table: without one, none. The pauses
    /// are asked for even when another table call of the batch failed
    /// (the list read last is kept), and a failed read of them never takes
    /// the batch off the table: it is logged, and records go on.
    async fn paused(&self, record: &Record, url: &url::Url) -> Option<Duration> {
        let fleet = self.fleet.as_ref()?;
        let pause = fleet.pause_of(url).await.ok()??;
        let now = crate::fleet::table::Clock::now_ms(&crate::fleet::table::SystemClock);
        // A record that cannot be carried over (FIFO, …) spends a receive
        // each time: it waits longer, so a long pause does not reach the
        // queue's redrive count.
        let carried = match Box::pin(self.source_limits(record)).await {
            Some(limits) => can_carry(record, &limits),
            None => false,
        };
        Some(crate::fleet::pause::wait(
            &pause,
            now,
            record.receive_count,
            carried,
        ))
    }

    /// A token of `pattern`'s bucket: the fleet's when there is a table.
    /// While the table fails, none: the rate is the fleet's, and one
    /// process cannot know its share of it, so the record waits (using up
    /// no attempt) rather than every process sending at the whole rate.
    async fn token(
        &self,
        record: &Record,
        batch: &Batch,
        pattern: &str,
        rate: crate::policy::destinations::Rate,
    ) -> Token {
        let until = self.wait_limit(batch);
        if self.fleet.is_none() {
            return Box::pin(self.buckets.token(pattern, rate, until)).await;
        }
        let unanswered = Token::Deferred(table_retry(record));
        let Some(fleet) = self.table(batch) else {
            return unanswered;
        };
        match Box::pin(fleet.token(pattern, rate, until.into())).await {
            Ok(token) => token,
            Err(e) => self.without_table(batch, &e).unwrap_or(unanswered),
        }
    }

    /// The breaker's part of [`admission`](Self::admission) (`breaker`: the
    /// destination's, else the processor's): the fleet's, or this process's.
    async fn breaker_gate(
        &self,
        record: &Record,
        batch: &Batch,
        url: &url::Url,
        breaker: Option<BreakerSettings>,
        settings: &Settings<'_>,
        attempt: &Attempt,
    ) -> Gate {
        let Some(breaker) = breaker else {
            return Gate::Go(Pass::default());
        };
        let host = host_key(url);
        let until = self.wait_limit(batch);
        match Box::pin(self.admit(record, batch, &host, breaker, until)).await {
            Admitted::Go(ticket) => Gate::Go(Pass {
                ticket,
                spend_by: None,
            }),
            Admitted::Defer(wait) => {
                let why = Deferral::BreakerOpen;
                let deferred = self.deferred(record, batch, settings, *attempt, why, wait);
                Gate::Decided(deferred.await)
            }
            // Without a ledger, a refusal counts as an attempt (v1).
            Admitted::Refused => Gate::Decided(record::conclude(
                settings,
                attempt,
                AttemptResult::BreakerOpen { host: &host },
                SystemTime::now(),
                self.max_delay(batch),
                &mut fastrand::Rng::new(),
            )),
        }
    }

    /// The attempt itself: the request (with the ledger read beside it),
    /// its conclusion, the breaker's report, and the ledger entry.
    async fn attempt(
        &self,
        record: &Record,
        batch: &Batch,
        mut message: crate::message::RetryMessage,
        attempted: Attempted<'_, '_>,
    ) -> Decided {
        let Attempted {
            settings,
            mut attempt,
            pass,
            first_receive,
            mut recorded_failures,
        } = attempted;
        // No attempt after all: back after `wait`, using none up.
        let unattempted =
            |attempt, why, wait| self.deferred(record, batch, settings, attempt, why, wait);
        let counted = Box::pin(self.count_first(batch, record, &message, first_receive)).await;
        let first_receive = match counted {
            CountedFirst::No => first_receive,
            CountedFirst::Yes(failed) => {
                recorded_failures = Some(failed);
                attempt.number = self.number_from_ledger(record, &message, failed);
                // Nothing left to read while the request is in flight.
                true
            }
            CountedFirst::Failed => {
                self.report(batch, pass.ticket, None).await;
                let deferred = unattempted(attempt, Deferral::Uncountable, table_retry(record));
                return (Ok(deferred.await), None, None);
            }
        };
        // The body moves out of the message into the request: a large one
        // is held once, whatever the attempt sends.
        let body = message.take_body().map_err(|e| e.to_string());
        let started_at = SystemTime::now();
        let deliver = self.deliver(batch, record, &message, body, &pass);
        let read = self.ledger_read(batch, record, first_receive);
        let ((delivery, latency), read) = tokio::join!(deliver, read);
        if let Delivery::Withheld = delivery {
            self.report(batch, pass.ticket, None).await;
            // The worker may no longer hold the message: nothing more is
            // done for it (whoever holds it now does the work).
            if let Some(lost) = self.hold_lost(batch, record) {
                return (Err(lost), None, None);
            }
            // The lease was lost, or the host failed, while the request
            // waited: no attempt was made. Back in about a second.
            let deferred = unattempted(attempt, Deferral::BreakerOpen, Duration::from_secs(1));
            return (Ok(deferred.await), None, None);
        }
        if let Some(read) = read {
            recorded_failures = read;
            if let Some(failed) = read {
                attempt.number = self.number_from_ledger(record, &message, failed);
            }
        }
        let decision = self
            .conclude(record, batch, settings, attempt, &delivery)
            .await;
        self.report(batch, pass.ticket, decision.health).await;
        let timing = (started_at, latency);
        let ledger = self.ledger_entry(
            record,
            &message,
            &decision,
            &delivery,
            timing,
            recorded_failures,
        );
        (Ok(decision), Some(latency), ledger)
    }

    /// What the attempt's answer decides. A retry must end before the
    /// queue's retention would delete the message (§8.1): it is decided
    /// again, knowing that horizon.
    async fn conclude(
        &self,
        record: &Record,
        batch: &Batch,
        settings: &Settings<'_>,
        mut attempt: Attempt,
        delivery: &Delivery,
    ) -> Decision {
        let conclude = |attempt: &Attempt| {
            record::conclude(
                settings,
                attempt,
                delivery.result(),
                SystemTime::now(),
                self.max_delay(batch),
                &mut fastrand::Rng::new(),
            )
        };
        let decision = conclude(&attempt);
        if !matches!(decision.action, Action::Retry { .. }) {
            return decision;
        }
        attempt.retained_until = self.retention_ends(record).await;
        match attempt.retained_until {
            Some(_) => conclude(&attempt),
            None => decision,
        }
    }

    /// The attempt's ledger entry, if the ledger records it. With a ledger,
    /// every failed attempt gets one: when the read failed, with its count
    /// by receives (more, never fewer, §12.6). The entry is then written,
    /// or the record carried over with its count ([`settle`](Self::settle)).
    fn ledger_entry(
        &self,
        record: &Record,
        message: &crate::message::RetryMessage,
        decision: &Decision,
        delivery: &Delivery,
        (started, latency): (SystemTime, Duration),
        recorded_failures: Option<u32>,
    ) -> Option<AttemptRecord> {
        let failed = decision.label != Label::Delivered;
        let failed_before = recorded_failures.unwrap_or_else(|| {
            let before = Attempt::before(message.received_count, self.carried(record).attempts());
            decision.attempt.saturating_sub(before.saturating_add(1))
        });
        let fleet = self.fleet.as_ref()?;
        fleet.records(failed).then(|| AttemptRecord {
            id: message.id.clone(),
            sqs_message_id: record.message_id.clone(),
            attempt: decision.attempt,
            started,
            outcome: decision.label.as_str(),
            status: decision.status,
            latency,
            last_error: match &decision.action {
                Action::DeadLetter(d) => Some(d.last_error.clone()),
                _ => delivery_error(delivery),
            },
            snippet: delivery.snippet().to_vec(),
            failed,
            failed_before,
            carried_from: self.carried(record).carry.map(|c| c.original_message_id),
        })
    }

    /// The attempt's number with `failed` recorded for this SQS message
    /// (§9), after the attempts before it (its `receivedCount`, or its
    /// carried count).
    fn number_from_ledger(
        &self,
        record: &Record,
        message: &crate::message::RetryMessage,
        failed: u32,
    ) -> u32 {
        let carried = self.carried(record);
        let before = Attempt::before(message.received_count, carried.attempts());
        Attempt::from_ledger(before, failed, carried.receive_count)
    }

    /// With a ledger, a record that cannot be carried over (§12.5: a FIFO
    /// queue, ten attributes, too large, its queue's limits unknown) holds
    /// no count of its own, so its attempt is counted in the ledger before
    /// it is made (§12.6): its failures read, then the counter set one
    /// ahead. A record that can be carried over is counted after, as any.
    async fn count_first(
        &self,
        batch: &Batch,
        record: &Record,
        message: &crate::message::RetryMessage,
        first_receive: bool,
    ) -> CountedFirst {
        if self.fleet.is_none() {
            return CountedFirst::No;
        }
        let limits = self.source_limits(record).await;
        if limits.is_some_and(|l| can_carry(record, &l)) {
            return CountedFirst::No;
        }
        let Some(fleet) = self.table(batch) else {
            return CountedFirst::Failed;
        };
        let failed = match self.ledger_read(batch, record, first_receive).await {
            None => 0,
            Some(Some(failed)) => failed,
            Some(None) => return CountedFirst::Failed,
        };
        let counted = fleet.count_first(&record.message_id, &message.id, failed.saturating_add(1));
        match Box::pin(counted).await {
            Ok(()) => CountedFirst::Yes(failed),
            Err(e) => {
                self.without_table::<()>(batch, &e);
                CountedFirst::Failed
            }
        }
    }

    /// The failed attempts the ledger holds for a record received before,
    /// read while its request is in flight: `None` when there is nothing to
    /// read, `Some(None)` when the table failed (the batch goes on without
    /// it).
    async fn ledger_read(
        &self,
        batch: &Batch,
        record: &Record,
        first_receive: bool,
    ) -> Option<Option<u32>> {
        let fleet = self.table(batch).filter(|_| !first_receive)?;
        match Box::pin(fleet.recorded_failures(&record.message_id)).await {
            Ok(failed) => Some(Some(failed)),
            Err(e) => Some(self.without_table(batch, &e)),
        }
    }

    /// The request, and how long it took. Asked again right before each
    /// request on a fleet ticket: a probe's lease covers it however long the
    /// wait was (§12.7).
    async fn deliver(
        &self,
        batch: &Batch,
        record: &Record,
        message: &crate::message::RetryMessage,
        body: Result<Option<bytes::Bytes>, String>,
        pass: &Pass,
    ) -> (Delivery, Duration) {
        let started = Instant::now();
        let ticket = match &pass.ticket {
            Some(Ticket::Fleet(ticket)) => Some(ticket),
            _ => None,
        };
        let hold = batch
            .heartbeat
            .as_deref()
            .map(|h| (h, record.receipt_handle.as_str()));
        let delivery = match (ticket, pass.spend_by, hold) {
            (None, None, None) => self.deliverer.deliver_with_body(message, body).await,
            (ticket, spend_by, hold) => {
                let gate = LeaseGate {
                    processor: self,
                    batch,
                    ticket,
                    spend_by,
                    hold,
                };
                Box::pin(self.deliverer.deliver_gated(message, body, &gate)).await
            }
        };
        (delivery, started.elapsed())
    }

    /// Tells the breaker how an admitted attempt went (`None`: it was not
    /// made, or said nothing of the host).
    async fn report(&self, batch: &Batch, ticket: Option<Ticket>, health: Option<Health>) {
        match ticket {
            None => {}
            Some(Ticket::Local(ticket)) => ticket.report(health),
            Some(Ticket::Fleet(ticket)) => {
                if let Some(fleet) = &self.fleet {
                    if let Err(e) = Box::pin(fleet.report(ticket, health)).await {
                        self.without_table::<()>(batch, &e);
                    }
                }
            }
        }
    }

    /// The record is no longer extended by its worker's heartbeat, if any.
    async fn leave(&self, batch: &Batch, record: &Record) {
        if let Some(heartbeat) = &batch.heartbeat {
            heartbeat.leave(&record.receipt_handle).await;
        }
    }

    /// Why nothing more is done for a record whose worker lost its hold on
    /// the message (docs/reliability.md, "The worker's hold"); `None` while
    /// it holds it, and always outside `retryq worker`.
    fn hold_lost(&self, batch: &Batch, record: &Record) -> Option<String> {
        let heartbeat = batch.heartbeat.as_ref()?;
        heartbeat
            .is_lost(&record.receipt_handle)
            .then(|| "the worker no longer holds the message (its hold lapsed or SQS refused its receipt handle): nothing more is done for it here".to_owned())
    }

    /// Does the worker still hold the message (extended first when its hold
    /// is close to its end)? Always outside `retryq worker`.
    async fn still_held(&self, batch: &Batch, record: &Record) -> bool {
        match &batch.heartbeat {
            // Boxed: an SQS call's future is kilobytes large.
            Some(heartbeat) => {
                Box::pin(heartbeat.confirm(&self.queues, &record.receipt_handle)).await
            }
            None => true,
        }
    }

    /// The longest delay SQS still accepts for this batch's receives.
    fn max_delay(&self, batch: &Batch) -> Duration {
        record::receive_limit(batch.started.elapsed(), self.config.batching_window)
    }

    /// The breaker's word on an attempt to `host`: the fleet's when there
    /// is a table (falling back to this process's if it fails).
    async fn admit(
        &self,
        record: &Record,
        batch: &Batch,
        host: &str,
        settings: BreakerSettings,
        until: Instant,
    ) -> Admitted {
        let Some(all) = &self.fleet else {
            return match self.breakers.admit(host, settings).await {
                Admission::Go(ticket) => Admitted::Go(Some(Ticket::Local(ticket))),
                Admission::Open => Admitted::Refused,
            };
        };
        if let Some(fleet) = self.table(batch) {
            let lease_for = self.config.request_timeout + PROBE_LEASE_SLACK;
            match fleet.admit(host, settings, lease_for, until.into()).await {
                Ok(FleetAdmission::Go(ticket)) => return Admitted::Go(Some(Ticket::Fleet(ticket))),
                Ok(FleetAdmission::Open { wait }) => return Admitted::Defer(wait),
                Err(e) => self.without_table::<()>(batch, &e),
            };
        }
        // The table fails: a host this process last saw proven needs no
        // probe and goes on; any other waits for the table, so that no
        // second probe goes out (§12.7). Neither uses up an attempt.
        match all.last_known_proven(host) {
            true => Admitted::Go(None),
            false => Admitted::Defer(table_retry(record)),
        }
    }

    /// A record put back without an attempt (§9), for about `wait`.
    async fn deferred(
        &self,
        record: &Record,
        batch: &Batch,
        settings: &Settings<'_>,
        mut attempt: Attempt,
        why: Deferral,
        wait: Duration,
    ) -> Decision {
        // Spread the records that come back together.
        let wait = wait + Duration::from_millis(fastrand::u64(0..1000));
        attempt.retained_until = self.retention_ends(record).await;
        let max_delay = self.max_delay(batch);
        record::defer(settings, &attempt, why, wait, SystemTime::now(), max_delay)
    }

    /// What a record's `RetryqCarry` says (§12.5), checked: a value that
    /// cannot be read is ignored (the copy counts as a first copy), and the
    /// first copy cannot have been sent after this one.
    fn carried(&self, record: &Record) -> Carried {
        let carry = match record.carry() {
            None => None,
            Some(Ok(mut carry)) => {
                if let Some(sent) = record.sent_at {
                    let sent_ms = sent
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    carry.first_sent = carry.first_sent.min(sent_ms);
                }
                Some(carry)
            }
            Some(Err(e)) => {
                tracing::warn!(id = %record.message_id, error = %e, "RetryqCarry ignored");
                None
            }
        };
        let first_sent = carry.as_ref().map(Carry::first_sent_at).or(record.sent_at);
        // A copy delayed past SQS's 900 s may be received before it is due,
        // and hidden again: that one receive is not an attempt. A copy due
        // within 900 s of being sent was delayed until then (rounded up),
        // so a first receive a little before `notBefore` (clocks differ)
        // was an attempt.
        let beyond_delay = |c: &Carry| {
            record.sent_at.is_some_and(|sent| {
                c.not_before_at()
                    .duration_since(sent)
                    .is_ok_and(|d| d > Duration::from_secs(900) + CLOCK_SLACK)
            })
        };
        let early = carry
            .as_ref()
            .zip(record.first_received_at)
            .is_some_and(|(c, first)| first < c.not_before_at() && beyond_delay(c));
        Carried {
            receive_count: record.receive_count.saturating_sub(u32::from(early)).max(1),
            age_limit: first_sent.and_then(|at| at.checked_add(self.config.max_age)),
            carry,
        }
    }

    /// A record whose copy was sent before (§12.5): the copy exists, and
    /// the acknowledgement was lost, so the record came again. Acknowledged
    /// without an attempt. Only this record's own mark, written once its
    /// copy's send was answered, says so: nothing a message carries can.
    async fn carried_before(&self, record: &Record, batch: &Batch) -> Option<Decision> {
        if record.receive_count <= 1 || crate::queue::is_fifo(&record.source_queue_arn) {
            return None;
        }
        let fleet = self.table(batch)?;
        match Box::pin(fleet.was_carried(&record.message_id)).await {
            Ok(true) => Some(Decision {
                attempt: self.carried(record).attempts().unwrap_or(0),
                label: Label::CarriedBefore,
                status: None,
                action: Action::Ack,
                health: None,
            }),
            Ok(false) => None,
            Err(e) => self.without_table(batch, &e),
        }
    }

    /// A carried copy received before its next try: hidden again until
    /// then, using up no attempt.
    fn not_yet_due(&self, record: &Record, batch: &Batch) -> Option<Decision> {
        let carried = self.carried(record);
        let carry = carried.carry?;
        let now = SystemTime::now();
        // A copy is never due later than SQS's 12 hours after it was sent:
        // a later `notBefore` (a clock that jumped, a broken attribute) is
        // taken as due now, and the message's own limits apply.
        let latest = record
            .sent_at
            .map(|sent| sent + Duration::from_secs(43_200 + 60));
        if latest.is_some_and(|latest| carry.not_before_at() > latest) {
            return None;
        }
        let mut wait = carry.still_waiting(now)?;
        // Never past the message's age: a `notBefore` beyond it (a hostile
        // or broken attribute) must not hide the message for ever.
        if let Some(age_limit) = carried.age_limit {
            wait = wait.min(
                age_limit
                    .duration_since(now)
                    .ok()
                    .filter(|w| !w.is_zero())?,
            );
        }
        Some(Decision {
            attempt: carry.attempts,
            label: Label::NotYetDue,
            status: None,
            action: Action::Retry {
                delay: wait.min(self.max_delay(batch)),
            },
            health: None,
        })
    }

    /// The latest a record may wait for a token or the breaker's probe: in
    /// time to make its request before the batch must answer, and never
    /// more than [`MAX_WAIT`].
    fn wait_limit(&self, batch: &Batch) -> Instant {
        let cap = Instant::now() + MAX_WAIT;
        match batch.deadline {
            None => cap,
            Some(deadline) => deadline
                .checked_sub(self.config.request_timeout + Duration::from_secs(1))
                .unwrap_or_else(Instant::now)
                .min(cap),
        }
    }

    /// The state table, unless there is none or it failed in this batch.
    fn table(&self, batch: &Batch) -> Option<&FleetState> {
        self.fleet
            .as_ref()
            .filter(|_| !batch.without_table.load(Ordering::Relaxed))
    }

    /// A table call failed: the rest of the batch goes on without the
    /// table, and the log says so once per batch.
    fn without_table<T>(&self, batch: &Batch, e: &StateError) -> Option<T> {
        if !batch.without_table.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                err = %e,
                "state table unavailable: for the rest of this batch, records that need a rate token or a probe wait (using up no attempt), failed attempts are carried over with their count, and attempts are counted by receives"
            );
        }
        None
    }

    /// The retention as a horizon that ends the record (§8.1): only for a
    /// record that cannot be carried over; any other is carried before its
    /// retention ends (§12.5).
    async fn retention_ends(&self, record: &Record) -> Option<SystemTime> {
        let limits = self.source_limits(record).await?;
        if can_carry(record, &limits) {
            return None;
        }
        self.retained_until_in(record, &limits)
    }

    /// The latest a retry of this record may end (§8.1): the source queue's
    /// retention from the message's `SentTimestamp`, less the margin.
    fn retained_until_in(&self, record: &Record, limits: &QueueLimits) -> Option<SystemTime> {
        let sent_at = record.sent_at?;
        sent_at
            .checked_add(
                limits
                    .retention
                    .saturating_sub(self.config.retention_margin),
            )
            .or(Some(sent_at))
    }

    /// The record's source queue's limits (read once per process, then
    /// cached by the SQS adapter).
    async fn source_limits(&self, record: &Record) -> Option<QueueLimits> {
        let url = self.queues.url_of(&record.source_queue_arn).await.ok()?;
        self.queues.limits_of(&url).await
    }

    /// §8.2: a record whose body cannot fit the DLQ even with the fewest
    /// attributes is not attempted (its dead letter could never be sent, so
    /// a non-retryable request would be made on every receive). A DLQ
    /// smaller than its source queue is reported once, as an error.
    async fn check_dlq_can_hold(&self, record: &Record) -> Result<(), String> {
        let Some(dlq_url) = &self.config.dlq_url else {
            return Ok(());
        };
        let needed = smallest_copy_size(&record.body, &record.message_id);
        // Every DLQ holds a copy this small: the record need not wait for
        // the DLQ's attributes (the first batch after a cold start would
        // wait for the SQS client and a `GetQueueAttributes` call, which a
        // batch that only delivers never needs).
        if needed <= SMALLEST_MAXIMUM_MESSAGE_SIZE {
            return Ok(());
        }
        self.compare_dlq_once(dlq_url, record);
        let Some(dlq) = self.queues.limits_of(dlq_url).await else {
            return Ok(());
        };
        if needed > dlq.max_message_size {
            return Err(format!(
                "not attempted: its DLQ copy ({needed} bytes) cannot fit the DLQ's MaximumMessageSize ({} bytes)",
                dlq.max_message_size
            ));
        }
        Ok(())
    }

    /// Compares the DLQ's size with the record's source queue's, once per
    /// process, beside the work (no record waits for it): when a record is
    /// large enough for the DLQ's size to matter, or a letter is sent.
    fn compare_dlq_once(&self, dlq_url: &str, record: &Record) {
        if !self.dlq_size_checked.swap(true, Ordering::Relaxed) {
            tokio::spawn(compare_dlq_with_source(
                Arc::clone(&self.queues),
                dlq_url.to_owned(),
                record.source_queue_arn.clone(),
            ));
        }
    }

    fn pending_dead_letter(&self, message_id: &str) -> Option<DeadLetter> {
        let pending = self
            .pending_dead_letters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        pending.get(message_id).cloned()
    }

    /// Remembers (`Some`) or forgets (`None`) a dead letter not yet sent.
    fn set_pending_dead_letter(&self, message_id: &str, dead_letter: Option<&DeadLetter>) {
        let mut pending = self
            .pending_dead_letters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match dead_letter {
            None => {
                pending.remove(message_id);
            }
            Some(dl) => {
                if pending.len() >= PENDING_DEAD_LETTERS {
                    // Bounded: forget an arbitrary one (it falls back to a
                    // new attempt, as without this memory).
                    let any = pending.keys().next().cloned();
                    any.map(|k| pending.remove(&k));
                }
                pending.insert(message_id.to_owned(), dl.clone());
            }
        }
    }

    /// A payload pointer's Retry Message, read from S3 (§11). The object
    /// may hold the body as text or base64 and the message around it, so it
    /// may be somewhat larger than `MAX_OFFLOADED_BODY_BYTES`; the body's
    /// own limit is checked once it is parsed.
    async fn resolve(&self, record: &Record, batch: &Batch) -> Resolved {
        let pointer = match PayloadPointer::parse(&record.body) {
            None => return Resolved::Inline,
            Some(Err(why)) => return Resolved::Unresolvable(why, None),
            Some(Ok(pointer)) => pointer,
        };
        // Only into the configured buckets: the object of any other is
        // neither read nor deleted (§12.2).
        if let Err(why) = pointer.check_bucket(&self.config.payload_buckets) {
            return Resolved::Unresolvable(why, None);
        }
        let max_object = self
            .config
            .max_offloaded_body
            .saturating_mul(2)
            .saturating_add(OBJECT_ROOM);
        // Boxed: the S3 call's future is kilobytes large, and only a
        // pointer needs it. Room in PAYLOAD_MEMORY_BYTES may be waited for
        // as long as a token or the breaker's probe.
        let until = tokio::time::Instant::from_std(self.wait_limit(batch));
        let budget = &self.payload_budget;
        let peek = self
            .payloads
            .peek(&pointer, &record.message_id, max_object, budget, until);
        match Box::pin(peek).await {
            Ok(Peeked {
                finished: Some(how),
                ..
            }) => Resolved::AlreadyFinished(how),
            Ok(head) => Resolved::Offloaded {
                pointer,
                size: head.size,
                kept: Box::new(head.kept),
                body: match head.whole {
                    Some((text, reserved)) => Body::Read {
                        text,
                        _reserved: reserved,
                    },
                    None => Body::Head(head.head),
                },
            },
            Err(PayloadError::Invalid(why)) => Resolved::Unresolvable(why, None),
            Err(PayloadError::Unusable(why, size)) => {
                Resolved::Unresolvable(why, Some((pointer, size)))
            }
            Err(PayloadError::Unavailable(why)) => Resolved::Unavailable(why),
        }
    }

    /// Marks a finished record's payload (§12.3), within the batch's
    /// deadline: the record's work is done either way, and a mark that ran
    /// past it would have the record reported unfinished and its request
    /// made again. A mark not made leaves a redelivery to be handled again.
    async fn mark(
        &self,
        record: &Record,
        resolved: &Resolved,
        how: Finished,
        deadline: Option<Instant>,
    ) {
        let Resolved::Offloaded { pointer, kept, .. } = resolved else {
            return;
        };
        if kept.is_letter() {
            // A letter's copy, named by some message: the letter keeps it.
            return;
        }
        let mark = Box::pin(
            self.payloads
                .mark_finished(pointer, how, &record.message_id, kept),
        );
        let marked = match deadline {
            None => mark.await,
            Some(deadline) => {
                let until = deadline.checked_sub(MARK_MARGIN).unwrap_or(deadline);
                tokio::time::timeout_at(until.into(), mark)
                    .await
                    .unwrap_or_else(|_| Err("no time left before the deadline".into()))
            }
        };
        if let Err(e) = marked {
            tracing::warn!(id = %record.message_id, error = %e, "could not mark the payload {}", how.as_str());
        }
    }

    /// Carries out the action on SQS (a retry as a carried copy when
    /// `carry` says so).
    async fn apply(
        &self,
        record: &Record,
        resolved: &Resolved,
        action: &Action,
        carry: Option<Carry>,
        deadline: Option<Instant>,
    ) -> Disposition {
        match action {
            Action::Ack => Disposition::Delivered,
            Action::Retry { delay } if carry.is_some() => {
                let carry = carry.expect("checked");
                Box::pin(self.carry_over(record, resolved, &carry, *delay)).await
            }
            // The SQS calls are boxed: their futures are kilobytes large,
            // and a delivered record should not carry them.
            Action::Retry { delay } => match Box::pin(self.hide(record, *delay)).await {
                Ok(()) => Disposition::RetryLater { delay: *delay },
                Err(e) => Disposition::Unfinished(e.to_string()),
            },
            Action::DeadLetter(dead_letter) => {
                self.dead_letter(record, resolved, dead_letter, deadline)
                    .await
            }
        }
    }

    /// Sends the record's DLQ copy (a payload's pointing to a copy of its
    /// object written now, §12.1), then marks the old object.
    async fn dead_letter(
        &self,
        record: &Record,
        resolved: &Resolved,
        dead_letter: &DeadLetter,
        deadline: Option<Instant>,
    ) -> Disposition {
        let Some(dlq_url) = &self.config.dlq_url else {
            return Disposition::Unfinished("DLQ_URL is not set".into());
        };
        self.compare_dlq_once(dlq_url, record);
        // Remembered before the copy and the send begin: a task cut by the
        // deadline between them leaves the record to send its letter on
        // the next receive here, not to make its request again.
        self.set_pending_dead_letter(&record.message_id, Some(dead_letter));
        // A payload's dead letter points to a copy written now, which lives
        // as long as the DLQ keeps the letter (§12.1).
        let existing = match resolved {
            Resolved::Offloaded { pointer, kept, .. } => Some((pointer, Some(&**kept))),
            Resolved::Unresolvable(_, unusable) => unusable.as_ref().map(|(p, _)| (p, None)),
            _ => None,
        };
        let fresh = match existing {
            None => None,
            Some((pointer, kept)) => {
                let copy = self.payloads.copy(pointer, Some(&record.message_id), kept);
                match Box::pin(copy).await {
                    Ok(copy) => Some(copy.body()),
                    Err(e) => return Disposition::Unfinished(e),
                }
            }
        };
        // A carried copy's letter names the first copy (§12.5).
        let original = self.carried(record).carry.map(|c| c.original_message_id);
        let copy = DeadLetterCopy {
            body: fresh.as_deref().unwrap_or(&record.body),
            dead_letter,
            source_queue_arn: &record.source_queue_arn,
            original_message_id: original.as_deref().unwrap_or(&record.message_id),
            message_group_id: record.message_group_id.as_deref(),
            trace_header: record.trace_header.as_deref(),
            payload_size: match resolved {
                Resolved::Offloaded { size, .. } => Some(*size),
                Resolved::Unresolvable(_, Some((_, size))) => Some(*size),
                _ => None,
            },
        };
        // Boxed: the SQS calls' futures are kilobytes large, and a
        // delivered record should not carry them.
        let sent = Box::pin(async {
            let max_size = self
                .queues
                .limits_of(dlq_url)
                .await
                .map(|l| l.max_message_size);
            self.queues.send_dead_letter(dlq_url, &copy, max_size).await
        });
        if let Err(e) = sent.await {
            return Disposition::Unfinished(e.to_string());
        }
        self.set_pending_dead_letter(&record.message_id, None);
        // The letter exists: the old object is marked, and goes a day later
        // (§12.1, §12.3); not when the message was invalid, whose object
        // may not be a payload at all.
        if dead_letter.reason != FailureReason::InvalidMessage {
            self.mark(record, resolved, Finished::DeadLettered, deadline)
                .await;
        }
        Disposition::DeadLettered(dead_letter.reason)
    }

    /// The carry of a record whose decision is a retry that its queue would
    /// end first (its receive count at the redrive policy's
    /// `maxReceiveCount` − 1, or its next try after the retention), if so;
    /// with `force`, of any retry that can be carried (its count could not
    /// be written, §12.6). `attempted`: this receive made an attempt.
    async fn carry_due(
        &self,
        record: &Record,
        decision: &Decision,
        attempted: bool,
        force: bool,
    ) -> Option<Carry> {
        let Action::Retry { delay } = decision.action else {
            return None;
        };
        let limits = self.source_limits(record).await?;
        if !can_carry(record, &limits) {
            return None;
        }
        let horizon = Horizon {
            receive_count: record.receive_count,
            max_receive_count: limits.max_receive_count,
            retained_until: self.retained_until_in(record, &limits),
            fifo: false,
        };
        let next_try = SystemTime::now() + delay;
        if !force && !horizon.carry_due(next_try) {
            return None;
        }
        let carried = self.carried(record);
        // Attempts made so far, `receivedCount` included. A deferral with a
        // ledger made none on this receive; without one, SQS counted it.
        let attempts = match decision.label {
            Label::NotYetDue => carried.attempts().unwrap_or(decision.attempt),
            Label::RateLimited | Label::CircuitOpen | Label::Paused
                if !attempted && self.fleet.is_some() =>
            {
                self.attempts_deferred(record, decision, carried.receive_count)
                    .await
            }
            _ => decision.attempt,
        };
        let sent_at = record.sent_at.unwrap_or_else(SystemTime::now);
        let next = match (&carried.carry, decision.label) {
            (Some(c), Label::NotYetDue) => c.not_before_at(),
            _ => next_try,
        };
        Some(Carry::next(
            carried.carry.as_ref(),
            attempts,
            sent_at,
            &record.message_id,
            next,
        ))
    }

    /// The attempts made before a deferred record was carried (§12.5): its
    /// count before this copy and the failures the ledger holds for it. A
    /// deferral's attempt number counts receives until the ledger is read;
    /// a ledger that cannot be read leaves that count (more, never fewer).
    async fn attempts_deferred(&self, record: &Record, decision: &Decision, receives: u32) -> u32 {
        let before = decision.attempt.saturating_sub(receives.max(1));
        let Some(fleet) = &self.fleet else {
            return decision.attempt;
        };
        match Box::pin(fleet.recorded_failures(&record.message_id)).await {
            Ok(failed) => before.saturating_add(failed),
            Err(_) => decision.attempt.saturating_sub(1),
        }
    }

    /// Carries a record over: a copy into its queue (a payload's pointing
    /// to a fresh copy of its object, §12.1) with `RetryqCarry`, delayed by
    /// at most 900 s; the record is acknowledged only once the copy exists.
    ///
    /// With a table, a sent copy is marked under this SQS message id. If
    /// the acknowledgement is lost and the record comes again, its copy is
    /// not sent twice: the message goes on as one chain of copies, not two
    /// that would each spend the remaining attempts.
    async fn carry_over(
        &self,
        record: &Record,
        resolved: &Resolved,
        carry: &Carry,
        delay: Duration,
    ) -> Disposition {
        if let Some(fleet) = &self.fleet {
            if let Ok(true) = Box::pin(fleet.was_carried(&record.message_id)).await {
                tracing::info!(id = %record.message_id, "carried over before: acknowledged, no second copy");
                return Disposition::Carried { delay };
            }
        }
        let url = match self.queues.url_of(&record.source_queue_arn).await {
            Ok(url) => url,
            Err(e) => return Disposition::Unfinished(e.to_string()),
        };
        let body = match resolved {
            Resolved::Offloaded { pointer, kept, .. } => {
                match Box::pin(self.payloads.copy(pointer, None, Some(kept))).await {
                    Ok(copy) => copy.body(),
                    Err(e) => return Disposition::Unfinished(e),
                }
            }
            _ => record.body.clone(),
        };
        let attribute = carry.to_attribute();
        let sent = self
            .queues
            .send_carried(&url, record, &body, &attribute, delay);
        match Box::pin(sent).await {
            Ok(()) => {
                if let Some(fleet) = &self.fleet {
                    if let Err(e) = Box::pin(fleet.mark_carried(&record.message_id)).await {
                        tracing::warn!(id = %record.message_id, error = %e, "carried over, but not marked: a lost acknowledgement would send a second copy");
                    }
                }
                Disposition::Carried { delay }
            }
            Err(e) => Disposition::Unfinished(e.to_string()),
        }
    }

    async fn hide(&self, record: &Record, delay: Duration) -> Result<(), QueueError> {
        let url = self.queues.url_of(&record.source_queue_arn).await?;
        self.queues
            .change_visibility(&url, &record.receipt_handle, delay)
            .await
    }
}

/// The EMF lines, always on stdout (CloudWatch reads them there), after the
/// batch's log lines.
struct MetricsOut<'a>(&'a crate::logging::BatchLogs);

impl std::io::Write for MetricsOut<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.metrics(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Why a record's work did not finish.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unfinished {
    #[error("panicked: {0}")]
    Panicked(String),
    #[error("not finished before the deadline")]
    Deadline,
    #[error("cancelled")]
    Cancelled,
}

/// Runs `work` on every item as its own task and collects the results in
/// order. A panic or the deadline ends only the item concerned. At most
/// `max_tasks` run at once: the rest wait as plain data, so a batch of
/// 10 000 records costs 10 000 records of memory, not 10 000 futures.
pub(crate) async fn run_isolated<T, F, Fut>(
    items: Vec<T>,
    deadline: Option<Instant>,
    max_tasks: usize,
    mut work: F,
) -> Vec<Result<Fut::Output, Unfinished>>
where
    F: FnMut(T) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let mut results: Vec<Option<Result<Fut::Output, Unfinished>>> =
        items.iter().map(|_| None).collect();
    let mut waiting = items.into_iter().enumerate();
    let mut running = tokio::task::JoinSet::new();
    let mut index = std::collections::HashMap::new();
    let deadline = deadline.map(tokio::time::Instant::from_std);
    loop {
        while running.len() < max_tasks.max(1) {
            let Some((i, item)) = waiting.next() else {
                break;
            };
            index.insert(running.spawn(work(item)).id(), i);
        }
        let joined = match deadline {
            None => running.join_next_with_id().await,
            Some(deadline) => {
                match tokio::time::timeout_at(deadline, running.join_next_with_id()).await {
                    Ok(joined) => joined,
                    // Whatever is still running or waiting is unfinished.
                    Err(_) => break,
                }
            }
        };
        match joined {
            None => break,
            // Removed once joined: the index holds only the running tasks.
            Some(Ok((id, output))) => {
                results[index.remove(&id).expect("spawned")] = Some(Ok(output))
            }
            Some(Err(e)) => {
                let i = index.remove(&e.id()).expect("spawned");
                results[i] = Some(Err(if e.is_panic() {
                    Unfinished::Panicked(panic_message(e.into_panic()))
                } else {
                    Unfinished::Cancelled
                }))
            }
        }
    }
    running.abort_all();
    results
        .into_iter()
        .map(|r| r.unwrap_or(Err(Unfinished::Deadline)))
        .collect()
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// An SQS client that reaches nothing, for tests whose records need no SQS
/// call (a dead letter then stays unsent).
#[cfg(test)]
fn unreachable_sqs() -> aws_sdk_sqs::Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version_latest()
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .endpoint_url("http://127.0.0.1:9")
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

#[cfg(all(test, feature = "sim"))]
#[path = "process_gate_tests.rs"]
mod gate_tests;

#[cfg(test)]
#[path = "process_refusal_tests.rs"]
mod refusal_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::FailureReason;

    #[tokio::test]
    async fn a_panic_fails_only_its_own_item() {
        let results = run_isolated(vec![1, 2, 3], None, 2, |n| async move {
            if n == 2 {
                panic!("record two is cursed");
            }
            n * 10
        })
        .await;
        assert_eq!(results[0], Ok(10));
        assert_eq!(
            results[1],
            Err(Unfinished::Panicked("record two is cursed".into()))
        );
        assert_eq!(results[2], Ok(30));
    }

    #[tokio::test(start_paused = true)]
    async fn items_past_the_deadline_are_reported_unfinished() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let results = run_isolated(vec![1u64, 10, 2], Some(deadline), 8, |secs| async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            secs
        })
        .await;
        assert_eq!(results, [Ok(1), Err(Unfinished::Deadline), Ok(2)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_than_max_tasks_run_at_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let results = run_isolated((0..100).collect(), None, 7, |n: u32| {
            let (running, most) = (Arc::clone(&running), Arc::clone(&most));
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                n
            }
        })
        .await;
        assert_eq!(results, (0..100).map(Ok).collect::<Vec<_>>(), "in order");
        assert_eq!(most.load(Ordering::SeqCst), 7);
    }

    #[test]
    fn only_delivered_and_dead_lettered_records_are_acknowledged() {
        assert!(Disposition::Delivered.acknowledged());
        assert!(Disposition::DeadLettered(FailureReason::Expired).acknowledged());
        assert!(!Disposition::RetryLater {
            delay: Duration::ZERO
        }
        .acknowledged());
        assert!(!Disposition::Unfinished("x".into()).acknowledged());
    }

    /// Every record is a task, and its future is copied as it is spawned
    /// and polled: the SDK calls only some records need (S3, SQS, the
    /// state table, credentials) are boxed so it stays small. The bound
    /// is loose; the point is that none of those futures (each kilobytes
    /// large) is held inline again.
    #[tokio::test]
    async fn a_records_future_holds_no_sdk_call_inline() {
        let config = Config::from_lookup(|n| (n == "DLQ_URL").then(|| "http://x".into())).unwrap();
        let sqs = aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::Config::builder()
                .behavior_version_latest()
                .region(aws_sdk_sqs::config::Region::new("us-east-1"))
                .build(),
        );
        let p = Processor::new(config, sqs, None).unwrap();
        let record = Record::from_sqs(
            Some("m".into()),
            Some("r".into()),
            Some("{}".into()),
            "arn".into(),
            |_| None,
        );
        let batch = Batch::starting_now();
        let size = std::mem::size_of_val(&p.process_record(record, &batch));
        // 2.7 KiB with them boxed; 13.7 KiB with them inline.
        assert!(size <= 6 * 1024, "a record's future is {size} bytes");
    }
}
