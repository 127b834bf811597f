//! SQS adapter: the only place that talks to SQS, and the one that knows
//! the FIFO rules ([`is_fifo`], [`DEFAULT_GROUP`]).
//!
//! Queue URLs are never built by hand. A record names its queue by ARN
//! (`eventSourceARN`); [`Queues::url_of`] asks SQS (`GetQueueUrl`) once per
//! queue and caches the answer (a failure for 30 s), so the same code works
//! against AWS, a VPC endpoint or a local SQS-compatible server, whatever
//! `AWS_ENDPOINT_URL` says.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry,
    DeleteMessageBatchRequestEntry, Message, MessageAttributeValue, MessageSystemAttributeName,
    MessageSystemAttributeNameForSends, MessageSystemAttributeValue, QueueAttributeName,
    SendMessageBatchRequestEntry,
};

use crate::gather::{Gather, Unanswered};

use crate::batch::Record;

use crate::policy::{one_line, DeadLetter};

/// The names of the DLQ copy's message attributes (spec §4).
pub mod attribute {
    pub const FAILURE_REASON: &str = "FailureReason";
    pub const ATTEMPT_COUNT: &str = "AttemptCount";
    pub const LAST_STATUS_CODE: &str = "LastStatusCode";
    pub const LAST_ERROR: &str = "LastError";
    pub const SOURCE_QUEUE_ARN: &str = "SourceQueueArn";
    pub const ORIGINAL_MESSAGE_ID: &str = "OriginalMessageId";
    /// All of them, for redrive to drop.
    pub const ALL: [&str; 6] = [
        FAILURE_REASON,
        ATTEMPT_COUNT,
        LAST_STATUS_CODE,
        LAST_ERROR,
        SOURCE_QUEUE_ARN,
        ORIGINAL_MESSAGE_ID,
    ];
}

/// A failed SQS call, as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("eventSourceARN {0:?} is not an SQS queue ARN")]
    BadArn(String),
    #[error("SQS {operation} failed: {detail}")]
    Sqs {
        operation: &'static str,
        detail: String,
    },
    /// A payload could not be offloaded to S3 (spec §11).
    #[error("payload offload failed: {0}")]
    Payload(String),
}

impl QueueError {
    /// Did SQS say the receipt handle no longer holds its message (a later
    /// receive replaced it, the message was deleted, or it is not in
    /// flight)? The message is then someone else's, or no one's.
    pub fn receipt_gone(&self) -> bool {
        const GONE: [&str; 2] = ["ReceiptHandleIsInvalid", "MessageNotInflight"];
        let QueueError::Sqs { detail, .. } = self else {
            return false;
        };
        // Codes as the JSON protocol names them; the query protocol's
        // `AWS.SimpleQueueService.…` forms contain them. An
        // `InvalidParameterValue` is about the receipt handle when it names
        // it ("… for parameter ReceiptHandle is invalid"), not when it is
        // the 12-hour limit of a message's total visibility.
        GONE.iter().any(|code| detail.contains(code))
            || (detail.contains("InvalidParameterValue") && detail.contains("ReceiptHandle"))
    }
}

impl Unanswered for QueueError {
    fn unanswered(operation: &'static str, detail: String) -> QueueError {
        QueueError::Sqs { operation, detail }
    }
}

/// Most entries in one SQS batch call.
pub const MAX_ENTRIES: usize = 10;

/// Splits `sizes` (in order) into runs of at most [`MAX_ENTRIES`] whose
/// total stays within `max_total`; an entry larger than `max_total` is a
/// run of its own. Returns each run's length.
pub fn runs_within(sizes: &[usize], max_total: usize) -> Vec<usize> {
    let mut runs = Vec::new();
    let (mut len, mut total) = (0usize, 0usize);
    for &size in sizes {
        if len > 0 && (len == MAX_ENTRIES || total + size > max_total) {
            runs.push(len);
            (len, total) = (0, 0);
        }
        len += 1;
        total += size;
    }
    if len > 0 {
        runs.push(len);
    }
    runs
}

impl QueueError {
    pub(crate) fn sqs<E, R>(operation: &'static str, e: SdkError<E, R>) -> QueueError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        // A service error's code and message say it all; anything else
        // (dispatch, timeout, credentials) needs its source chain.
        let detail = match e.code() {
            Some(code) => format!("{code}: {}", e.message().unwrap_or("no message")),
            None => DisplayErrorContext(&e).to_string(),
        };
        QueueError::Sqs {
            operation,
            detail: one_line(&detail, 300),
        }
    }
}

/// A dead letter ready to send: the record as received plus why.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetterCopy<'a> {
    /// The body byte-for-byte as received.
    pub body: &'a str,
    pub dead_letter: &'a DeadLetter,
    pub source_queue_arn: &'a str,
    pub original_message_id: &'a str,
    /// The record's `MessageGroupId`, for FIFO queues.
    pub message_group_id: Option<&'a str>,
    /// The record's `AWSTraceHeader`, kept on the copy (spec §11).
    pub trace_header: Option<&'a str>,
    /// For a payload pointer (spec §11): the payload's size, kept as the
    /// Number attribute `ExtendedPayloadSize` so that the SQS Extended
    /// Client can read the copy back.
    pub payload_size: Option<usize>,
}

impl DeadLetterCopy<'_> {
    /// The §4 attributes, in the order they are given up when the copy is
    /// too large: `LastError` first, `FailureReason` and
    /// `OriginalMessageId` never.
    pub fn attributes(&self) -> Vec<(&'static str, String)> {
        let dl = self.dead_letter;
        let mut all = vec![
            (attribute::FAILURE_REASON, dl.reason.as_str().to_owned()),
            (
                attribute::ORIGINAL_MESSAGE_ID,
                self.original_message_id.to_owned(),
            ),
        ];
        if let Some(size) = self.payload_size {
            all.push((crate::payload::EXTENDED_PAYLOAD_SIZE, size.to_string()));
        }
        all.push((attribute::ATTEMPT_COUNT, dl.attempt.to_string()));
        if let Some(status) = dl.last_status {
            all.push((attribute::LAST_STATUS_CODE, status.to_string()));
        }
        all.push((
            attribute::SOURCE_QUEUE_ARN,
            self.source_queue_arn.to_owned(),
        ));
        if !dl.last_error.is_empty() {
            all.push((attribute::LAST_ERROR, dl.last_error.clone()));
        }
        all
    }

    /// The attributes that fit beside the body in `max_size` bytes, SQS's
    /// way of counting: body, plus each attribute's name, type and value.
    /// Dropped in this order until it fits: `LastError`, `SourceQueueArn`,
    /// `LastStatusCode`, `AttemptCount`. `None` when even `FailureReason`
    /// and `OriginalMessageId` do not fit.
    pub fn attributes_within(&self, max_size: usize) -> Option<Vec<(&'static str, String)>> {
        let mut attributes = self.attributes();
        let kept = KEPT_ATTRIBUTES + usize::from(self.payload_size.is_some());
        while message_size(self.body, &attributes) > max_size {
            if attributes.len() <= kept {
                return None;
            }
            attributes.pop();
        }
        Some(attributes)
    }
}

/// `FailureReason` and `OriginalMessageId` always stay on a DLQ copy (and
/// `ExtendedPayloadSize` on a pointer's).
const KEPT_ATTRIBUTES: usize = 2;

/// The size SQS counts for a message: its body plus, for each attribute,
/// its name, its data type and its value.
pub fn message_size(body: &str, attributes: &[(&str, String)]) -> usize {
    body.len()
        + attributes
            .iter()
            .map(|(name, value)| name.len() + "String".len() + value.len())
            .sum::<usize>()
}

/// The smallest DLQ copy of a body: the body with the two attributes that
/// always stay, at their longest (the reason and an SQS message id).
pub fn smallest_copy_size(body: &str, original_message_id: &str) -> usize {
    message_size(
        body,
        &[
            (attribute::FAILURE_REASON, "destination-not-allowed".into()),
            (attribute::ORIGINAL_MESSAGE_ID, original_message_id.into()),
        ],
    )
}

/// SQS operations the processor needs. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Queues {
    /// Built on first use: a batch that only delivers never needs it.
    client: tokio::sync::OnceCell<aws_sdk_sqs::Client>,
    /// Each queue's URL, by ARN, as last looked up.
    urls: Mutex<HashMap<String, UrlLookup>>,
    /// One `GetQueueUrl` at a time: a batch's records all need the same
    /// URL, and must not each ask for it.
    url_lookup: tokio::sync::Mutex<()>,
    /// Each queue's limits, by URL, as last read.
    limits: Mutex<HashMap<String, LimitsRead>>,
    /// One read of queue limits at a time.
    limits_read: tokio::sync::Mutex<()>,
    /// Records' visibility changes (receipt handle, seconds), sent ten per
    /// `ChangeMessageVisibilityBatch`.
    visibility: Gather<(String, i32), (), QueueError>,
    /// Dead letters, sent ten per `SendMessageBatch`.
    /// DLQ copies and carried copies, gathered per queue.
    sends: Gather<Outgoing, (), QueueError>,
    /// Finished records' deletes (`retryq worker`), ten per
    /// `DeleteMessageBatch`.
    deletes: Gather<String, (), QueueError>,
}

/// A message to send: body, String attributes, and for FIFO queues its
/// group and deduplication id.
#[derive(Debug)]
struct Outgoing {
    body: String,
    attributes: Vec<(String, MessageAttributeValue)>,
    /// The body's and attributes' bytes, as SQS counts them.
    size: usize,
    /// `AWSTraceHeader`, sent as the system attribute.
    trace: Option<String>,
    /// The message's `MessageGroupId`: on a FIFO queue its order (the
    /// default group when it has none), on a standard queue its tenant for
    /// fair queues (§13.1; none when it had none).
    group: Option<String>,
    dedup: String,
    /// `DelaySeconds`.
    delay: Option<i32>,
}

impl Outgoing {
    fn size(&self) -> usize {
        self.size
    }
}

/// How long a finished record's delete waits for others. Shorter than the
/// other actions' gathering: the delete is the acknowledgement, and a worker
/// killed before it repeats the record (docs/reliability.md).
const DELETE_LINGER: Duration = Duration::from_millis(5);

/// The largest total of one `SendMessageBatch` that every SQS region
/// accepts (bodies plus attributes); a larger message is sent alone.
const BATCH_PAYLOAD_MAX: usize = 256 * 1024;

/// A queue's settings that matter to the processor and `retryq validate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    pub url: String,
    /// `MessageRetentionPeriod`.
    pub retention: Duration,
    /// `MaximumMessageSize`, bytes.
    pub max_message_size: usize,
    /// `VisibilityTimeout`.
    pub visibility_timeout: Duration,
    /// The redrive policy's `maxReceiveCount`, when the queue has one.
    pub max_receive_count: Option<u32>,
}

/// What the processor must know of a queue's settings (§8.1, §8.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// `MessageRetentionPeriod`.
    pub retention: Duration,
    /// `MaximumMessageSize`, in bytes (body plus attributes).
    pub max_message_size: usize,
    /// The redrive policy's `maxReceiveCount`, when the queue has one: the
    /// receive on which SQS moves a message to its DLQ (§12.5).
    pub max_receive_count: Option<u32>,
}

#[derive(Debug)]
struct LimitsRead {
    limits: Option<QueueLimits>,
    /// When a failed read may be tried again.
    retry_at: Option<Instant>,
}

/// A queue URL as looked up: known for good, or a failure remembered
/// until `retry_at`.
#[derive(Debug, Clone)]
enum UrlLookup {
    Known(String),
    Failed { detail: String, retry_at: Instant },
}

fn url_result(entry: UrlLookup) -> Result<String, QueueError> {
    match entry {
        UrlLookup::Known(url) => Ok(url),
        UrlLookup::Failed { detail, .. } => Err(QueueError::Sqs {
            operation: "GetQueueUrl",
            detail,
        }),
    }
}

/// A queue URL that could not be looked up is asked again after this.
const URL_RETRY: Duration = Duration::from_secs(30);

/// A queue whose settings could not be read is asked again after this.
const LIMITS_RETRY: Duration = Duration::from_secs(300);
/// Longest wait for a queue's settings.
const LIMITS_READ_TIMEOUT: Duration = Duration::from_secs(5);

impl Queues {
    pub fn new(client: aws_sdk_sqs::Client) -> Queues {
        Queues::with_client(tokio::sync::OnceCell::new_with(Some(client)))
    }

    /// Queues whose SQS client is built from the standard AWS environment
    /// (`AWS_REGION`, `AWS_ENDPOINT_URL[_SQS]`, the credentials chain) on the
    /// first SQS call, not before: the Lambda function asks for its first
    /// event sooner, and a batch that only delivers never builds it.
    pub fn from_env() -> Queues {
        Queues::with_client(tokio::sync::OnceCell::new())
    }

    async fn client(&self) -> &aws_sdk_sqs::Client {
        self.client
            .get_or_init(crate::wiring::sqs_client_from_env)
            .await
    }

    fn with_client(client: tokio::sync::OnceCell<aws_sdk_sqs::Client>) -> Queues {
        Queues {
            client,
            urls: Mutex::new(HashMap::new()),
            url_lookup: tokio::sync::Mutex::new(()),
            limits: Mutex::new(HashMap::new()),
            limits_read: tokio::sync::Mutex::new(()),
            visibility: Gather::new("ChangeMessageVisibilityBatch", MAX_ENTRIES),
            sends: Gather::new("SendMessageBatch", MAX_ENTRIES),
            deletes: Gather::new("DeleteMessageBatch", MAX_ENTRIES).with_linger(DELETE_LINGER),
        }
    }

    /// The queue's retention and largest message, read once and cached.
    /// `None` when they cannot be read: one warning is logged, and the read
    /// is tried again a few minutes later.
    pub async fn limits_of(&self, queue_url: &str) -> Option<QueueLimits> {
        if let Some(limits) = self.cached_limits(queue_url) {
            return limits;
        }
        let _one_reader = self.limits_read.lock().await;
        if let Some(limits) = self.cached_limits(queue_url) {
            return limits;
        }
        // Bounded: every record waits for this read, so a hanging SQS must
        // not hold the batch.
        // Boxed, as the other SDK calls on a record's path: a cached answer
        // should not make every record's future kilobytes larger.
        let result = Box::pin(tokio::time::timeout(
            LIMITS_READ_TIMEOUT,
            self.read_limits(queue_url),
        ))
        .await
        .unwrap_or_else(|_| {
            Err(QueueError::Sqs {
                operation: "GetQueueAttributes",
                detail: "no answer within 5 s".into(),
            })
        });
        let mut cache = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        let read = match result {
            Ok(limits) => LimitsRead {
                limits: Some(limits),
                retry_at: None,
            },
            Err(e) => {
                if !cache.contains_key(queue_url) {
                    tracing::warn!(queue = %queue_url, error = %e,
                        "cannot read the queue's MessageRetentionPeriod and MaximumMessageSize: going on without the retention and DLQ size checks");
                }
                LimitsRead {
                    limits: None,
                    retry_at: Some(crate::clock::later(LIMITS_RETRY)),
                }
            }
        };
        let limits = read.limits;
        cache.insert(queue_url.to_owned(), read);
        limits
    }

    /// The limits as last read, unless never read or due for another try.
    fn cached_limits(&self, queue_url: &str) -> Option<Option<QueueLimits>> {
        let cache = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        let read = cache.get(queue_url)?;
        read.retry_at
            .is_none_or(|at| Instant::now() < at)
            .then_some(read.limits)
    }

    async fn read_limits(&self, queue_url: &str) -> Result<QueueLimits, QueueError> {
        let s = self.settings(queue_url).await?;
        Ok(QueueLimits {
            retention: s.retention,
            max_message_size: s.max_message_size,
            max_receive_count: s.max_receive_count,
        })
    }

    /// The queue's retention, largest message and visibility timeout.
    pub async fn settings(&self, queue_url: &str) -> Result<QueueSettings, QueueError> {
        use QueueAttributeName as A;
        let attrs = self
            .attributes(
                queue_url,
                &[
                    A::MessageRetentionPeriod,
                    A::MaximumMessageSize,
                    A::VisibilityTimeout,
                    A::RedrivePolicy,
                ],
            )
            .await?;
        let seconds = |name| attrs.number(name).map(Duration::from_secs);
        Ok(QueueSettings {
            url: queue_url.to_owned(),
            retention: seconds(A::MessageRetentionPeriod)?,
            max_message_size: usize::try_from(attrs.number(A::MaximumMessageSize)?)
                .unwrap_or(usize::MAX),
            visibility_timeout: seconds(A::VisibilityTimeout)?,
            max_receive_count: attrs
                .0
                .get(&A::RedrivePolicy)
                .and_then(|policy| max_receive_count(policy)),
        })
    }

    /// These attributes of the queue (`GetQueueAttributes`).
    async fn attributes(
        &self,
        queue_url: &str,
        names: &[QueueAttributeName],
    ) -> Result<Attributes, QueueError> {
        let attrs = self
            .client()
            .await
            .get_queue_attributes()
            .queue_url(queue_url)
            .set_attribute_names(Some(names.to_vec()))
            .send()
            .await
            .map_err(|e| QueueError::sqs("GetQueueAttributes", e))?
            .attributes
            .unwrap_or_default();
        Ok(Attributes(attrs))
    }

    /// The URL of the queue with this ARN, asked of SQS once and cached.
    /// One lookup at a time; a failed one is remembered for [`URL_RETRY`]
    /// (and logged once), so that records do not each ask again.
    pub async fn url_of(&self, arn: &str) -> Result<String, QueueError> {
        if let Some(known) = self.cached_url(arn) {
            return known;
        }
        let _one_lookup = self.url_lookup.lock().await;
        if let Some(known) = self.cached_url(arn) {
            return known;
        }
        let (account, name) =
            parse_queue_arn(arn).ok_or_else(|| QueueError::BadArn(arn.to_owned()))?;
        // Bounded, as the limits' read: every record needing it waits.
        let asked = Box::pin(tokio::time::timeout(LIMITS_READ_TIMEOUT, async {
            self.client()
                .await
                .get_queue_url()
                .queue_name(name)
                .queue_owner_aws_account_id(account)
                .send()
                .await
        }))
        .await;
        let looked_up = match asked {
            Err(_) => Err("no answer within 5 s".to_owned()),
            Ok(Err(e)) => Err(match QueueError::sqs("GetQueueUrl", e) {
                QueueError::Sqs { detail, .. } => detail,
                other => other.to_string(),
            }),
            Ok(Ok(out)) => out
                .queue_url
                .ok_or_else(|| "the answer had no QueueUrl".to_owned()),
        };
        let mut urls = self.urls.lock().unwrap_or_else(|p| p.into_inner());
        let entry = match looked_up {
            Ok(url) => UrlLookup::Known(url),
            Err(detail) => {
                if !urls.contains_key(arn) {
                    tracing::warn!(queue = %arn, error = %detail, "cannot look up the queue's URL; asking again in 30 s");
                }
                UrlLookup::Failed {
                    detail,
                    retry_at: crate::clock::later(URL_RETRY),
                }
            }
        };
        urls.insert(arn.to_owned(), entry.clone());
        url_result(entry)
    }

    /// The URL as last looked up, unless never or due for another try.
    fn cached_url(&self, arn: &str) -> Option<Result<String, QueueError>> {
        let urls = self.urls.lock().unwrap_or_else(|p| p.into_inner());
        match urls.get(arn)? {
            UrlLookup::Failed { retry_at, .. } if Instant::now() >= *retry_at => None,
            entry => Some(url_result(entry.clone())),
        }
    }

    /// Hides the message for `delay` (SQS counts whole seconds). Sent with
    /// other records' changes to the same queue, ten per
    /// `ChangeMessageVisibilityBatch`; the result is this message's own.
    pub async fn change_visibility(
        &self,
        queue_url: &str,
        receipt_handle: &str,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let secs = i32::try_from(delay.as_secs()).unwrap_or(i32::MAX);
        self.visibility
            .submit(
                queue_url,
                (receipt_handle.to_owned(), secs),
                |url, entries| async move { self.change_visibility_entries(&url, &entries).await },
            )
            .await
    }

    /// One `ChangeMessageVisibilityBatch` call for up to ten (receipt
    /// handle, seconds) entries: one result per entry, in order.
    async fn change_visibility_entries(
        &self,
        queue_url: &str,
        entries: &[(String, i32)],
    ) -> Vec<Result<(), QueueError>> {
        const OPERATION: &str = "ChangeMessageVisibilityBatch";
        let request: Vec<_> = entries
            .iter()
            .enumerate()
            .map(|(i, (handle, secs))| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(handle)
                    .visibility_timeout(*secs)
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect();
        let answer = self
            .client()
            .await
            .change_message_visibility_batch()
            .queue_url(queue_url)
            .set_entries(Some(request))
            .send()
            .await;
        entry_results(OPERATION, entries.len(), answer)
    }

    /// Sends the DLQ copy with the attributes of spec §4. To a FIFO DLQ
    /// it keeps the record's group and deduplicates on its message id, so a
    /// retried send does not make a second copy. With `max_size` (the DLQ's
    /// `MaximumMessageSize`), attributes are dropped as
    /// [`DeadLetterCopy::attributes_within`] says so the copy fits.
    pub async fn send_dead_letter(
        &self,
        dlq_url: &str,
        copy: &DeadLetterCopy<'_>,
        max_size: Option<usize>,
    ) -> Result<(), QueueError> {
        let attributes = match max_size {
            None => copy.attributes(),
            Some(max) => copy.attributes_within(max).ok_or_else(|| QueueError::Sqs {
                operation: "SendMessage",
                detail: format!(
                    "the copy cannot fit the DLQ's MaximumMessageSize of {max} bytes (body {} bytes)",
                    copy.body.len()
                ),
            })?,
        };
        let outgoing = Outgoing {
            body: copy.body.to_owned(),
            size: message_size(copy.body, &attributes),
            attributes: attributes
                .iter()
                .map(|(name, value)| ((*name).to_owned(), string(name, value)))
                .collect(),
            trace: copy.trace_header.map(str::to_owned),
            group: copy.message_group_id.map(str::to_owned),
            dedup: copy.original_message_id.to_owned(),
            delay: None,
        };
        self.submit(dlq_url, outgoing).await
    }

    /// Sends `outgoing` with the other messages for `queue_url` of the
    /// moment, in `SendMessageBatch` calls.
    async fn submit(&self, queue_url: &str, outgoing: Outgoing) -> Result<(), QueueError> {
        self.sends
            .submit(queue_url, outgoing, |url, entries| async move {
                self.send_entries(&url, &entries).await
            })
            .await
    }

    /// Sends up to ten messages to one queue: `SendMessageBatch` calls
    /// within [`BATCH_PAYLOAD_MAX`], and `SendMessage` for a message larger
    /// than that or carrying a trace. One result per message, in order.
    async fn send_entries(
        &self,
        queue_url: &str,
        entries: &[Outgoing],
    ) -> Vec<Result<(), QueueError>> {
        let mut results = Vec::with_capacity(entries.len());
        let mut rest = entries;
        while let Some(first) = rest.first() {
            // A message with a trace goes alone: SendMessage keeps its
            // AWSTraceHeader everywhere, where the local SQS-compatible
            // server drops the system attributes of batch entries.
            if first.trace.is_some() || first.size() > BATCH_PAYLOAD_MAX {
                results.push(self.send_one(queue_url, first).await);
                rest = &rest[1..];
                continue;
            }
            let plain = rest
                .iter()
                .position(|e| e.trace.is_some())
                .unwrap_or(rest.len());
            let (untraced, after) = rest.split_at(plain);
            rest = after;
            let sizes: Vec<usize> = untraced.iter().map(Outgoing::size).collect();
            let mut left = untraced;
            for len in runs_within(&sizes, BATCH_PAYLOAD_MAX) {
                let (run, after) = left.split_at(len);
                left = after;
                match run {
                    [one] if one.size() > BATCH_PAYLOAD_MAX => {
                        results.push(self.send_one(queue_url, one).await)
                    }
                    _ => results.extend(self.send_batch(queue_url, run).await),
                }
            }
        }
        results
    }

    async fn send_one(&self, queue_url: &str, one: &Outgoing) -> Result<(), QueueError> {
        let mut send = self
            .client()
            .await
            .send_message()
            .queue_url(queue_url)
            .message_body(&one.body)
            .set_message_attributes(Some(one.attributes.iter().cloned().collect()))
            .set_delay_seconds(one.delay);
        if let Some(trace) = &one.trace {
            send = send.message_system_attributes(
                MessageSystemAttributeNameForSends::AwsTraceHeader,
                trace_attribute(trace),
            );
        }
        if is_fifo(queue_url) {
            send = send
                .message_group_id(fifo_group(one.group.as_deref()))
                .message_deduplication_id(dedup_id(&one.dedup));
        } else if let Some(group) = &one.group {
            send = send.message_group_id(group);
        }
        send.send()
            .await
            .map(drop)
            .map_err(|e| QueueError::sqs("SendMessage", e))
    }

    async fn send_batch(&self, queue_url: &str, run: &[Outgoing]) -> Vec<Result<(), QueueError>> {
        const OPERATION: &str = "SendMessageBatch";
        let fifo = is_fifo(queue_url);
        let request: Vec<_> = run
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut entry = SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(&m.body)
                    .set_message_attributes(Some(m.attributes.iter().cloned().collect()))
                    .set_delay_seconds(m.delay);
                if fifo {
                    entry = entry
                        .message_group_id(fifo_group(m.group.as_deref()))
                        .message_deduplication_id(dedup_id(&m.dedup));
                } else if let Some(group) = &m.group {
                    entry = entry.message_group_id(group);
                }
                entry.build().expect("id and body are set")
            })
            .collect();
        let answer = self
            .client()
            .await
            .send_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(request))
            .send()
            .await;
        entry_results(OPERATION, run.len(), answer)
    }

    /// Sends a message with these attributes (and `trace` as its
    /// `AWSTraceHeader`); returns its SQS message id. On a FIFO queue it
    /// goes to `group` ([`DEFAULT_GROUP`] without one), deduplicated on
    /// `dedup` (made a valid deduplication id); on a standard queue `group`
    /// is its fair-queue tenant (§13.1), when it has one.
    pub async fn send(
        &self,
        queue_url: &str,
        body: &str,
        attributes: &[(&str, String)],
        trace: Option<&str>,
        group: Option<&str>,
        dedup: &str,
    ) -> Result<String, QueueError> {
        let mut send = self
            .client()
            .await
            .send_message()
            .queue_url(queue_url)
            .message_body(body);
        for (name, value) in attributes {
            send = send.message_attributes(*name, string(name, value));
        }
        if let Some(trace) = trace {
            send = send.message_system_attributes(
                MessageSystemAttributeNameForSends::AwsTraceHeader,
                trace_attribute(trace),
            );
        }
        if is_fifo(queue_url) {
            send = send
                .message_group_id(fifo_group(group))
                .message_deduplication_id(dedup_id(dedup));
        } else if let Some(group) = group {
            send = send.message_group_id(group);
        }
        let sent = send
            .send()
            .await
            .map_err(|e| QueueError::sqs("SendMessage", e))?;
        Ok(sent.message_id.unwrap_or_default())
    }

    /// Carries a record over (§12.5): a copy of it into the same queue,
    /// `body` (the record's, or a pointer to a fresh copy of its payload),
    /// its message attributes with `RetryqCarry` set to `carry`, its trace
    /// and its `MessageGroupId`, delayed by `delay` (at most SQS's 900 s);
    /// one `SendMessageBatch` entry, gathered with the other copies of the
    /// moment for that queue.
    pub async fn send_carried(
        &self,
        queue_url: &str,
        record: &Record,
        body: &str,
        carry: &str,
        delay: Duration,
    ) -> Result<(), QueueError> {
        use crate::batch::AttributeValue;
        let carry_name = crate::policy::carry::CARRY_ATTRIBUTE;
        let mut attributes = vec![(carry_name.to_owned(), string(carry_name, carry))];
        let mut size = body.len() + carry_name.len() + "String".len() + carry.len();
        for a in record
            .message_attributes
            .iter()
            .filter(|a| a.name != carry_name)
        {
            let value = MessageAttributeValue::builder().data_type(&a.data_type);
            let (value, len) = match &a.value {
                AttributeValue::Text(text) => (value.string_value(text), text.len()),
                AttributeValue::Bytes(bytes) => (
                    value.binary_value(aws_sdk_sqs::primitives::Blob::new(bytes.clone())),
                    bytes.len(),
                ),
            };
            size += a.name.len() + a.data_type.len() + len;
            attributes.push((a.name.clone(), value.build().expect("data_type is set")));
        }
        let outgoing = Outgoing {
            body: body.to_owned(),
            attributes,
            size,
            trace: record.trace_header.clone(),
            group: record.message_group_id.clone(),
            dedup: record.message_id.clone(),
            // Whole seconds, rounded up: the copy is not visible before its
            // next try (unless that is more than 900 s away).
            delay: Some(i32::try_from(delay_seconds(delay)).unwrap_or(900)),
        };
        self.submit(queue_url, outgoing).await
    }

    /// Sets the visibility of many messages of one queue, ten per call, at
    /// once (not gathered with other records' changes). One result per
    /// receipt handle, in order.
    pub async fn change_visibility_batch(
        &self,
        queue_url: &str,
        receipt_handles: &[String],
        visibility: Duration,
    ) -> Vec<Result<(), QueueError>> {
        let secs = i32::try_from(visibility.as_secs()).unwrap_or(i32::MAX);
        let mut results = Vec::with_capacity(receipt_handles.len());
        for chunk in receipt_handles.chunks(MAX_ENTRIES) {
            let entries: Vec<(String, i32)> = chunk.iter().map(|h| (h.clone(), secs)).collect();
            results.extend(self.change_visibility_entries(queue_url, &entries).await);
        }
        results
    }

    /// Deletes one finished message, gathered with other records' deletes
    /// of the same queue, ten per `DeleteMessageBatch`; the result is this
    /// message's own.
    pub async fn delete(&self, queue_url: &str, receipt_handle: &str) -> Result<(), QueueError> {
        self.deletes
            .submit(
                queue_url,
                receipt_handle.to_owned(),
                |url, handles| async move {
                    let answer = self
                        .client()
                        .await
                        .delete_message_batch()
                        .queue_url(&url)
                        .set_entries(Some(delete_entries(&handles)))
                        .send()
                        .await;
                    entry_results("DeleteMessageBatch", handles.len(), answer)
                },
            )
            .await
    }

    /// Deletes messages (acknowledges them outside Lambda), ten per call.
    /// Returns the receipt handles that could not be deleted; those
    /// messages come back after their visibility timeout, never lost.
    pub async fn delete_batch(&self, queue_url: &str, receipt_handles: &[String]) -> Vec<String> {
        let mut failed = Vec::new();
        for chunk in receipt_handles.chunks(10) {
            let entries = delete_entries(chunk);
            match self
                .client()
                .await
                .delete_message_batch()
                .queue_url(queue_url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(out) => failed.extend(
                    out.failed
                        .iter()
                        .filter_map(|f| f.id.parse::<usize>().ok())
                        .filter_map(|i| chunk.get(i).cloned()),
                ),
                Err(e) => {
                    tracing::warn!(error = %QueueError::sqs("DeleteMessageBatch", e), "delete failed");
                    failed.extend(chunk.iter().cloned());
                }
            }
        }
        failed
    }

    /// Receives up to `max` (≤ 10) messages with every attribute, waiting up
    /// to `wait` for the first one (long polling).
    pub async fn receive(
        &self,
        queue_url: &str,
        max: i32,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<Message>, QueueError> {
        let out = self
            .client()
            .await
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(max.clamp(1, 10))
            .wait_time_seconds(i32::try_from(wait.as_secs().min(20)).unwrap_or(20))
            .set_visibility_timeout(
                visibility.map(|v| i32::try_from(v.as_secs()).unwrap_or(i32::MAX)),
            )
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| QueueError::sqs("ReceiveMessage", e))?;
        Ok(out.messages.unwrap_or_default())
    }

    /// The queue's ARN and visibility timeout.
    pub async fn describe(&self, queue_url: &str) -> Result<QueueInfo, QueueError> {
        use QueueAttributeName as A;
        let attrs = self
            .attributes(queue_url, &[A::QueueArn, A::VisibilityTimeout])
            .await?;
        Ok(QueueInfo {
            arn: attrs.text(A::QueueArn)?.to_owned(),
            visibility_timeout: Duration::from_secs(attrs.number(A::VisibilityTimeout)?),
        })
    }
}

/// A redrive policy's `maxReceiveCount` (SQS writes it as a number, some
/// tools as a string).
fn max_receive_count(policy: &str) -> Option<u32> {
    let policy: serde_json::Value = serde_json::from_str(policy).ok()?;
    match &policy["maxReceiveCount"] {
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A `GetQueueAttributes` answer; a missing attribute is an error naming it.
struct Attributes(HashMap<QueueAttributeName, String>);

impl Attributes {
    fn text(&self, name: QueueAttributeName) -> Result<&str, QueueError> {
        self.0
            .get(&name)
            .map(String::as_str)
            .ok_or_else(|| QueueError::Sqs {
                operation: "GetQueueAttributes",
                detail: format!("the answer had no {}", name.as_str()),
            })
    }

    fn number(&self, name: QueueAttributeName) -> Result<u64, QueueError> {
        self.text(name.clone())?
            .parse()
            .map_err(|_| QueueError::Sqs {
                operation: "GetQueueAttributes",
                detail: format!("{} is not a number", name.as_str()),
            })
    }
}

/// What a receive loop did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopStats {
    pub batches: u64,
    pub records: u64,
    /// Acknowledged and deleted.
    pub acknowledged: u64,
    /// Left in the queue (backoff, unfinished, or not deleted).
    pub returned: u64,
}

impl std::ops::AddAssign for LoopStats {
    fn add_assign(&mut self, o: LoopStats) {
        self.batches += o.batches;
        self.records += o.records;
        self.acknowledged += o.acknowledged;
        self.returned += o.returned;
    }
}

/// How long a stop waits for a receive in flight: SQS's longest long poll
/// and a margin.
const STOP_GRACE: Duration = Duration::from_secs(25);

/// Pause after a failed receive, so a broken endpoint is not hammered.
const RECEIVE_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// What a receive loop's handler did with a batch: the receipt handles
/// it acknowledged and the loop must still delete, and how many it
/// acknowledged and deleted itself.
#[derive(Debug, Default)]
pub struct Handled {
    pub to_delete: Vec<String>,
    pub deleted: u64,
}

/// The receive loop of `retryq worker` and `retryq trigger`: until `stop`
/// completes, `receive` a batch, give it to `handle`, and delete what it
/// acknowledged and did not delete itself. A failed receive is logged and
/// retried after a pause. A receive in flight when `stop` completes is
/// not cut short: SQS may already have counted a receive of each message
/// it took, so its batch is handled (the wait is at most the long poll).
/// A batch being handled is finished first.
pub async fn receive_loop<R, RFut, H, HFut>(
    queues: &Queues,
    queue_url: &str,
    stop: impl std::future::Future<Output = ()>,
    mut receive: R,
    mut handle: H,
) -> LoopStats
where
    R: FnMut() -> RFut,
    RFut: std::future::Future<Output = Result<Vec<Message>, QueueError>>,
    H: FnMut(Vec<Message>) -> HFut,
    HFut: std::future::Future<Output = Handled>,
{
    let mut stats = LoopStats::default();
    let mut stopping = false;
    tokio::pin!(stop);
    while !stopping {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            _ = std::future::ready(()) => {}
        }
        let pending = receive();
        tokio::pin!(pending);
        let received = tokio::select! {
            biased;
            r = &mut pending => r,
            _ = &mut stop => {
                stopping = true;
                // At most the long poll and a grace: a receive that never
                // answers must not hold the stop.
                tokio::time::timeout(STOP_GRACE, pending)
                    .await
                    .unwrap_or_else(|_| Ok(Vec::new()))
            }
        };
        let messages = match received {
            Ok(m) if m.is_empty() => continue,
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "receive failed");
                if !stopping {
                    tokio::select! {
                        _ = &mut stop => break,
                        _ = tokio::time::sleep(RECEIVE_ERROR_PAUSE) => {}
                    }
                }
                continue;
            }
        };
        let count = messages.len() as u64;
        let handled = handle(messages).await;
        let not_deleted = queues.delete_batch(queue_url, &handled.to_delete).await;
        let deleted = handled.deleted + (handled.to_delete.len() - not_deleted.len()) as u64;
        stats += LoopStats {
            batches: 1,
            records: count,
            acknowledged: deleted,
            returned: count - deleted,
        };
    }
    stats
}

/// What the worker and the trigger need to know of a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    pub arn: String,
    pub visibility_timeout: Duration,
}

/// A received SQS message as the processor's [`Record`].
pub fn record(m: Message, queue_arn: &str) -> Record {
    use crate::batch::MessageAttribute;
    let attributes = m.attributes.unwrap_or_default();
    let message_attributes = m
        .message_attributes
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, a)| {
            let bytes = a.binary_value.map(|b| b.into_inner());
            MessageAttribute::from_sqs(name, a.data_type, a.string_value, bytes)
        })
        .collect();
    Record::from_sqs(
        m.message_id,
        m.receipt_handle,
        m.body,
        queue_arn.to_owned(),
        |name| {
            attributes
                .get(&MessageSystemAttributeName::from(name))
                .cloned()
        },
    )
    .with_message_attributes(message_attributes)
}

/// `arn:aws:sqs:us-east-1:123456789012:orders` → `("123456789012", "orders")`.
pub fn parse_queue_arn(arn: &str) -> Option<(&str, &str)> {
    let mut parts = arn.splitn(6, ':');
    let (arn_tag, _partition, service, _region, account, name) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    (arn_tag == "arn" && service == "sqs" && !account.is_empty() && !name.is_empty())
        .then_some((account, name))
}

/// Is this queue (URL or ARN) a FIFO queue? Their names end in `.fifo`.
pub fn is_fifo(url_or_arn: &str) -> bool {
    url_or_arn.ends_with(".fifo")
}

/// The message group of a message sent to a FIFO queue without one of its
/// own (a dead letter from a standard queue, for example).
pub const DEFAULT_GROUP: &str = "retryq";

/// A message's group on a FIFO queue: its own, else [`DEFAULT_GROUP`].
fn fifo_group(group: Option<&str>) -> &str {
    group.unwrap_or(DEFAULT_GROUP)
}

/// The answer of an SQS batch call: the ids it carried out, and the entries
/// it refused.
trait BatchAnswer {
    fn lists(self) -> (Vec<String>, Vec<BatchResultErrorEntry>);
}

impl BatchAnswer
    for aws_sdk_sqs::operation::change_message_visibility_batch::ChangeMessageVisibilityBatchOutput
{
    fn lists(self) -> (Vec<String>, Vec<BatchResultErrorEntry>) {
        (
            self.successful.into_iter().map(|s| s.id).collect(),
            self.failed,
        )
    }
}

impl BatchAnswer for aws_sdk_sqs::operation::send_message_batch::SendMessageBatchOutput {
    fn lists(self) -> (Vec<String>, Vec<BatchResultErrorEntry>) {
        (
            self.successful.into_iter().map(|s| s.id).collect(),
            self.failed,
        )
    }
}

impl BatchAnswer for aws_sdk_sqs::operation::delete_message_batch::DeleteMessageBatchOutput {
    fn lists(self) -> (Vec<String>, Vec<BatchResultErrorEntry>) {
        (
            self.successful.into_iter().map(|s| s.id).collect(),
            self.failed,
        )
    }
}

/// Each entry's result from a batch call's answer: the ids SQS lists as
/// successful and the entries it lists as failed (ids are the entries'
/// positions). A failed call fails every entry; an entry in neither list
/// is counted as failed.
fn entry_results<A: BatchAnswer, E, R>(
    operation: &'static str,
    count: usize,
    answer: Result<A, SdkError<E, R>>,
) -> Vec<Result<(), QueueError>>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let (successful, failed) = match answer {
        Ok(answer) => answer.lists(),
        Err(e) => {
            let error = QueueError::sqs(operation, e);
            return vec![Err(error); count];
        }
    };
    let mut results: Vec<Result<(), QueueError>> = (0..count)
        .map(|_| {
            Err(QueueError::Sqs {
                operation,
                detail: "the answer did not mention this entry".into(),
            })
        })
        .collect();
    for id in successful {
        if let Some(r) = id.parse::<usize>().ok().and_then(|i| results.get_mut(i)) {
            *r = Ok(());
        }
    }
    for f in failed {
        if let Some(r) = f.id.parse::<usize>().ok().and_then(|i| results.get_mut(i)) {
            let detail = format!(
                "{}: {}",
                f.code,
                f.message.as_deref().unwrap_or("no message")
            );
            *r = Err(QueueError::Sqs {
                operation,
                detail: one_line(&detail, 300),
            });
        }
    }
    results
}

/// `DeleteMessageBatch` entries for these receipt handles, numbered from 0.
fn delete_entries(handles: &[String]) -> Vec<DeleteMessageBatchRequestEntry> {
    handles
        .iter()
        .enumerate()
        .map(|(i, handle)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(handle)
                .build()
                .expect("id and receipt handle are set")
        })
        .collect()
}

/// SQS deduplication ids are at most 128 characters of a restricted
/// alphabet; SQS message ids (UUIDs) already are.
fn dedup_id(message_id: &str) -> String {
    message_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~".contains(*c))
        .take(128)
        .collect()
}

/// The `AWSTraceHeader` system attribute's value.
fn trace_attribute(trace: &str) -> MessageSystemAttributeValue {
    MessageSystemAttributeValue::builder()
        .data_type("String")
        .string_value(trace)
        .build()
        .expect("data_type is set")
}

/// An attribute's value: a String, except the Number the SQS Extended
/// Client expects for a payload's size.
/// `DelaySeconds` for a delay: whole seconds rounded up, at most SQS's
/// 900.
fn delay_seconds(delay: Duration) -> u64 {
    (delay.as_secs() + u64::from(delay.subsec_nanos() > 0)).min(900)
}

fn string(name: &str, value: &str) -> MessageAttributeValue {
    let data_type = match name {
        crate::payload::EXTENDED_PAYLOAD_SIZE | crate::payload::LEGACY_PAYLOAD_SIZE => "Number",
        _ => "String",
    };
    MessageAttributeValue::builder()
        .data_type(data_type)
        .string_value(value)
        .build()
        .expect("data_type is set")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gone_receipt_handle_is_told_from_the_twelve_hour_limit() {
        let error = |detail: &str| QueueError::Sqs {
            operation: "ChangeMessageVisibilityBatch",
            detail: detail.into(),
        };
        for gone in [
            "ReceiptHandleIsInvalid: The input receipt handle is invalid.",
            "AWS.SimpleQueueService.MessageNotInflight: Message not inflight",
            "InvalidParameterValue: Value x for parameter ReceiptHandle is invalid. Reason: Message does not exist or is not available for visibility timeout change.",
        ] {
            assert!(error(gone).receipt_gone(), "{gone}");
        }
        for held in [
            "InvalidParameterValue: Value 3600 for parameter VisibilityTimeout is invalid. Reason: Total VisibilityTimeout for the message is beyond the limit [43200 seconds]",
            "ThrottlingException: Rate exceeded",
            "AccessDenied: denied",
        ] {
            assert!(!error(held).receipt_gone(), "{held}");
        }
    }

    #[test]
    fn queue_arns_are_parsed() {
        assert_eq!(
            parse_queue_arn("arn:aws:sqs:us-east-1:123456789012:orders"),
            Some(("123456789012", "orders"))
        );
        assert_eq!(
            parse_queue_arn("arn:aws-cn:sqs:cn-north-1:123456789012:o.fifo"),
            Some(("123456789012", "o.fifo"))
        );
        for bad in [
            "",
            "orders",
            "arn:aws:sns:us-east-1:1:t",
            "arn:aws:sqs:us-east-1::q",
            "arn:aws:sqs:r:1:",
        ] {
            assert_eq!(parse_queue_arn(bad), None, "{bad}");
        }
    }

    fn copy_of<'a>(body: &'a str, dl: &'a DeadLetter) -> DeadLetterCopy<'a> {
        DeadLetterCopy {
            payload_size: None,
            trace_header: None,
            body,
            dead_letter: dl,
            source_queue_arn: "arn:aws:sqs:us-east-1:123456789012:orders",
            original_message_id: "059f36b4-87a3-44ab-83d2-661975830a7d",
            message_group_id: None,
        }
    }

    #[test]
    fn attributes_are_dropped_in_order_until_the_copy_fits() {
        use crate::policy::FailureReason;
        let dl = DeadLetter::new(FailureReason::NonRetryable, 3, Some(404), &"e".repeat(200));
        let names = |body: &str, max: usize| {
            copy_of(body, &dl)
                .attributes_within(max)
                .map(|a| a.iter().map(|(n, _)| *n).collect::<Vec<_>>())
        };
        let all = copy_of("b", &dl).attributes();
        let full = message_size("b", &all);
        assert_eq!(names("b", full).unwrap().len(), 6, "everything fits");
        let expect = [
            vec![
                "FailureReason",
                "OriginalMessageId",
                "AttemptCount",
                "LastStatusCode",
                "SourceQueueArn",
            ],
            vec![
                "FailureReason",
                "OriginalMessageId",
                "AttemptCount",
                "LastStatusCode",
            ],
            vec!["FailureReason", "OriginalMessageId", "AttemptCount"],
            vec!["FailureReason", "OriginalMessageId"],
        ];
        let mut max = full;
        for want in expect {
            // One byte less than what the attributes kept so far need.
            let kept: Vec<_> = all[..want.len() + 1].to_vec();
            max = max.min(message_size("b", &kept) - 1);
            assert_eq!(names("b", max).unwrap(), want);
        }
        assert_eq!(names("b", max.min(10)), None, "not even the two that stay");
        let smallest = smallest_copy_size("b", "059f36b4-87a3-44ab-83d2-661975830a7d");
        assert!(names("b", smallest).is_some());
    }

    #[test]
    fn dedup_ids_are_bounded() {
        assert_eq!(
            dedup_id("059f36b4-87a3-44ab-83d2-661975830a7d"),
            "059f36b4-87a3-44ab-83d2-661975830a7d"
        );
        assert_eq!(dedup_id(&"x".repeat(300)).len(), 128);
    }

    #[test]
    fn runs_respect_both_the_count_and_the_total_size() {
        assert_eq!(runs_within(&[1; 25], 1000), [10, 10, 5]);
        assert_eq!(runs_within(&[400, 400, 400, 100], 1000), [2, 2]);
        assert_eq!(runs_within(&[5000, 1, 1], 1000), [1, 2]);
        assert_eq!(runs_within(&[], 1000), Vec::<usize>::new());
    }
}
