//! Service A's side: build Retry Messages, enqueue them, or try the call
//! first and enqueue only what still fails retryably.
//!
//! ```no_run
//! # async fn example(sqs: aws_sdk_sqs::Client, deliverer: retryq::deliver::Deliverer) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use retryq::producer::{call_then_enqueue, CallOutcome, Enqueuer, MessageBuilder, SyncRetry};
//!
//! let msg = MessageBuilder::new("https://partner.example.com/v1/orders")
//!     .method("POST")
//!     .header("content-type", "application/json")
//!     .body(r#"{"order":42}"#)
//!     .originating_service("orders-api")
//!     .build()?;
//! let enqueuer = Enqueuer::new(sqs, "https://sqs.eu-west-1.amazonaws.com/123456789012/retry");
//! // Try now, twice within 500 ms; hand the rest to retryq.
//! match call_then_enqueue(&deliverer, &enqueuer, msg, SyncRetry { attempts: 2, budget: Duration::from_millis(500) }).await? {
//!     CallOutcome::Delivered { status, .. } => println!("delivered ({status})"),
//!     CallOutcome::Enqueued { id, .. } => println!("will be retried as {id}"),
//!     CallOutcome::Rejected { error, .. } => eprintln!("will not succeed: {error}"),
//! }
//! # Ok(()) }
//! ```
//!
//! The synchronous retry is bounded twice, by attempts and by a total time
//! budget, because service A is usually answering a request of its own. The
//! message it enqueues carries `receivedCount` = the attempts already made
//! (so the processor's attempt limit counts them) and, as `id`, the
//! `Idempotency-Key` the destination already saw, so a late success of an
//! earlier attempt and a retry from the queue are recognisably the same call.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use time::OffsetDateTime;
use url::Url;

use crate::deliver::Deliverer;
use crate::fair::validate_group;
pub use crate::fair::FairQueueKey;
use crate::message::{BodyEncoding, HeaderValues, InvalidMessage, Request, RetryMessage};
use crate::policy::classify::Outcome;
use crate::queue::{QueueError, Queues, DEFAULT_GROUP};

/// Builds a valid [`RetryMessage`]. Errors surface at [`build`](Self::build),
/// naming the field.
#[derive(Debug, Clone)]
pub struct MessageBuilder {
    url: String,
    id: Option<String>,
    method: String,
    headers: Vec<(String, String)>,
    body: Option<(String, BodyEncoding)>,
    auth: Option<String>,
    max_attempts: Option<u32>,
    expires_at: Option<OffsetDateTime>,
    received_count: u32,
    originating_service: Option<String>,
    metadata: serde_json::Map<String, serde_json::Value>,
    group: Option<String>,
}

impl MessageBuilder {
    /// A `GET` of `destination_url`, with a fresh UUID as id.
    pub fn new(destination_url: impl Into<String>) -> MessageBuilder {
        MessageBuilder {
            url: destination_url.into(),
            id: None,
            method: "GET".into(),
            headers: Vec::new(),
            body: None,
            auth: None,
            max_attempts: None,
            expires_at: None,
            received_count: 0,
            originating_service: None,
            metadata: serde_json::Map::new(),
            group: None,
        }
    }

    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = method.into();
        self
    }

    /// Adds a header; adding a name twice makes a repeated header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// A text body (sent as UTF-8).
    pub fn body(mut self, text: impl Into<String>) -> Self {
        self.body = Some((text.into(), BodyEncoding::Utf8));
        self
    }

    /// A binary body: UTF-8 text is kept readable, anything else is base64.
    pub fn body_bytes(mut self, bytes: &[u8]) -> Self {
        self.body = Some(match std::str::from_utf8(bytes) {
            Ok(text) => (text.to_owned(), BodyEncoding::Utf8),
            Err(_) => (
                base64::engine::general_purpose::STANDARD.encode(bytes),
                BodyEncoding::Base64,
            ),
        });
        self
    }

    pub fn auth(mut self, profile: impl Into<String>) -> Self {
        self.auth = Some(profile.into());
        self
    }

    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    pub fn expires_at(mut self, at: OffsetDateTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    pub fn received_count(mut self, n: u32) -> Self {
        self.received_count = n;
        self
    }

    pub fn originating_service(mut self, name: impl Into<String>) -> Self {
        self.originating_service = Some(name.into());
        self
    }

    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The message's `MessageGroupId` (§13.1): on a standard queue its
    /// tenant for SQS fair queues, on a FIFO queue its order. Without it,
    /// the [`Enqueuer`] uses the destination's host (see [`FairQueueKey`]).
    /// At most 128 characters: letters, digits and ASCII punctuation.
    pub fn group(mut self, key: impl Into<String>) -> Self {
        self.group = Some(key.into());
        self
    }

    /// Validates and builds the message (`createdAt` = now).
    pub fn build(self) -> Result<RetryMessage, InvalidMessage> {
        self.build_with_body_limit(crate::message::limits::BODY_BYTES)
    }

    /// As [`build`](Self::build), for a message that will be offloaded to
    /// S3 ([`Enqueuer::with_payload_bucket`]): its body may be up to
    /// `body_limit` bytes (`MAX_OFFLOADED_BODY_BYTES`).
    pub fn build_with_body_limit(self, body_limit: usize) -> Result<RetryMessage, InvalidMessage> {
        let destination_url = Url::parse(&self.url).map_err(|e| {
            InvalidMessage::new("destinationUrl", format!("not an absolute URL ({e})"))
        })?;
        let mut headers = std::collections::BTreeMap::<String, HeaderValues>::new();
        for (name, value) in self.headers {
            let merged = match headers.remove(&name) {
                None => HeaderValues::One(value),
                Some(HeaderValues::One(first)) => HeaderValues::Many(vec![first, value]),
                Some(HeaderValues::Many(mut all)) => {
                    all.push(value);
                    HeaderValues::Many(all)
                }
            };
            headers.insert(name, merged);
        }
        let (body, body_encoding) = match self.body {
            Some((text, encoding)) => (Some(text), encoding),
            None => (None, BodyEncoding::Utf8),
        };
        let msg = RetryMessage {
            id: self.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            originating_service: self.originating_service,
            created_at: OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .ok(),
            destination_url,
            request: Request {
                method: self.method,
                headers,
                body,
                body_encoding,
            },
            auth: self.auth,
            max_attempts: self.max_attempts,
            expires_at: self.expires_at,
            received_count: self.received_count,
            metadata: (!self.metadata.is_empty()).then_some(self.metadata),
            group: self.group,
        };
        if let Some(group) = &msg.group {
            validate_group(group)?;
        }
        msg.validate_with_body_limit(body_limit)?;
        Ok(msg)
    }
}

/// Room kept below a queue's `MaximumMessageSize` for the attributes a
/// message may gain on its way (a DLQ copy's, a carried copy's): a message
/// larger than the rest is offloaded.
pub const OFFLOAD_ROOM: usize = 8 * 1024;

/// The offload threshold when the queue's `MaximumMessageSize` cannot be
/// read: SQS's former largest message (256 KiB) less [`OFFLOAD_ROOM`].
pub const FALLBACK_OFFLOAD_BYTES: usize = 262_144 - OFFLOAD_ROOM;

/// Sends Retry Messages to one queue.
#[derive(Debug, Clone)]
pub struct Enqueuer {
    queues: Arc<Queues>,
    queue_url: String,
    fair_queue_key: FairQueueKey,
    /// Where messages larger than the threshold go (claim check, §11).
    #[cfg(feature = "s3-payloads")]
    offload: Option<Offload>,
}

#[cfg(feature = "s3-payloads")]
#[derive(Debug, Clone)]
struct Offload {
    bucket: String,
    /// `None`: the queue's `MaximumMessageSize` less [`OFFLOAD_ROOM`].
    threshold: Option<usize>,
    store: Arc<crate::payload::store::PayloadStore>,
}

impl Enqueuer {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Enqueuer {
        Enqueuer {
            queues: Arc::new(Queues::new(client)),
            queue_url: queue_url.into(),
            fair_queue_key: FairQueueKey::default(),
            #[cfg(feature = "s3-payloads")]
            offload: None,
        }
    }

    /// Offloads a message larger than `threshold` bytes (`PAYLOAD_OFFLOAD_BYTES`)
    /// to `bucket` (`PAYLOAD_BUCKET`) and sends a pointer to it, as the SQS
    /// Extended Client does: the processor and the Extended Client both
    /// read it.
    #[cfg(feature = "s3-payloads")]
    pub fn with_payload_bucket(self, bucket: impl Into<String>, threshold: usize) -> Enqueuer {
        self.offloading(bucket.into(), Some(threshold))
    }

    /// As [`with_payload_bucket`](Self::with_payload_bucket), offloading a
    /// message that would not fit the queue: larger than its
    /// `MaximumMessageSize` (read once, with `GetQueueAttributes`) less
    /// [`OFFLOAD_ROOM`]; [`FALLBACK_OFFLOAD_BYTES`] when it cannot be read
    /// (§13.2). A 1 MiB queue takes messages up to 1 016 KiB inline.
    #[cfg(feature = "s3-payloads")]
    pub fn with_payload_bucket_for_queue(self, bucket: impl Into<String>) -> Enqueuer {
        self.offloading(bucket.into(), None)
    }

    #[cfg(feature = "s3-payloads")]
    fn offloading(mut self, bucket: String, threshold: Option<usize>) -> Enqueuer {
        self.offload = Some(Offload {
            bucket,
            threshold,
            store: Arc::new(crate::payload::store::PayloadStore::new()),
        });
        self
    }

    /// The size above which a message is offloaded, from the queue's own
    /// `MaximumMessageSize` unless given.
    #[cfg(feature = "s3-payloads")]
    async fn offload_threshold(&self, offload: &Offload) -> usize {
        match offload.threshold {
            Some(threshold) => threshold,
            None => self
                .queues
                .limits_of(&self.queue_url)
                .await
                .map_or(FALLBACK_OFFLOAD_BYTES, |l| {
                    l.max_message_size.saturating_sub(OFFLOAD_ROOM)
                }),
        }
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// With this key for messages without a group of their own (default:
    /// [`FairQueueKey::Host`]); it applies to standard queues only.
    pub fn with_fair_queue_key(mut self, key: FairQueueKey) -> Enqueuer {
        self.fair_queue_key = key;
        self
    }

    /// The `MessageGroupId` `msg` is sent with: its own group; else, on a
    /// FIFO queue, the destination's host (calls to one host stay in
    /// order); else, on a standard queue, its fair-queue key (§13.1).
    ///
    /// A host SQS would not take as a group (longer than 128 characters)
    /// is not used: no group on a standard queue, [`DEFAULT_GROUP`] on a
    /// FIFO queue.
    pub fn group_of<'m>(&self, msg: &'m RetryMessage) -> Option<&'m str> {
        let host = || {
            msg.destination_url
                .host_str()
                .filter(|h| validate_group(h).is_ok())
        };
        match (&msg.group, crate::queue::is_fifo(&self.queue_url)) {
            (Some(group), _) => Some(group),
            (None, true) => Some(host().unwrap_or(DEFAULT_GROUP)),
            (None, false) => match self.fair_queue_key {
                FairQueueKey::Host => host(),
                FairQueueKey::None => None,
            },
        }
    }

    /// Sends the message; returns the SQS message id. Its group is
    /// [`group_of`](Self::group_of); on a FIFO queue the deduplication id
    /// is the message id.
    pub async fn enqueue(&self, msg: &RetryMessage) -> Result<String, QueueError> {
        let body = serde_json::to_string(msg).expect("a RetryMessage always serializes");
        let group = self.group_of(msg);
        #[cfg(feature = "s3-payloads")]
        if let Some(o) = self.offload.as_ref() {
            if body.len() > self.offload_threshold(o).await {
                return self.enqueue_offloaded(o, msg, body, group).await;
            }
        }
        self.queues
            .send(&self.queue_url, &body, &[], None, group, &msg.id)
            .await
    }

    /// Puts `body` in the bucket and sends a pointer to it.
    #[cfg(feature = "s3-payloads")]
    async fn enqueue_offloaded(
        &self,
        o: &Offload,
        msg: &RetryMessage,
        body: String,
        group: Option<&str>,
    ) -> Result<String, QueueError> {
        let size = body.len();
        let pointer = o
            .store
            .put(&o.bucket, body)
            .await
            .map_err(QueueError::Payload)?;
        let attributes = [(crate::payload::EXTENDED_PAYLOAD_SIZE, size.to_string())];
        self.queues
            .send(
                &self.queue_url,
                &pointer.body(),
                &attributes,
                None,
                group,
                &msg.id,
            )
            .await
    }
}

/// Bounds of the synchronous retry in [`call_then_enqueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncRetry {
    /// Attempts made now, at least 1.
    pub attempts: u32,
    /// Total time for all of them, waits included.
    pub budget: Duration,
}

/// What [`call_then_enqueue`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// The destination answered 2xx.
    Delivered { status: u16, attempts: u32 },
    /// Still failing retryably: enqueued for retryq.
    Enqueued {
        /// The Retry Message id (the `Idempotency-Key` sent).
        id: String,
        /// The SQS message id.
        sqs_message_id: String,
        attempts: u32,
        last_error: String,
    },
    /// Will not succeed (non-retryable answer, invalid message, refused
    /// destination): not enqueued.
    Rejected {
        status: Option<u16>,
        error: String,
        attempts: u32,
    },
}

/// First wait between synchronous attempts; doubled each time.
const SYNC_FIRST_WAIT: Duration = Duration::from_millis(100);

/// Tries the request now, up to `sync.attempts` times within `sync.budget`,
/// and enqueues it when it still fails retryably. An `Err` means the
/// enqueue itself failed (the caller still holds the message).
pub async fn call_then_enqueue(
    deliverer: &Deliverer,
    enqueuer: &Enqueuer,
    mut msg: RetryMessage,
    sync: SyncRetry,
) -> Result<CallOutcome, QueueError> {
    let started = Instant::now();
    let mut attempts = 0;
    let mut wait = SYNC_FIRST_WAIT;
    let last_error = loop {
        let left = sync.budget.saturating_sub(started.elapsed());
        attempts += 1;
        let delivery = deliverer.deliver_within(&msg, left).await;
        let outcome = match crate::policy::record::outcome(delivery.result(), SystemTime::now()) {
            Ok(outcome) => outcome,
            Err(error) => {
                return Ok(CallOutcome::Rejected {
                    status: None,
                    error,
                    attempts,
                })
            }
        };
        let (retry_after, error) = match outcome {
            Outcome::Delivered { status } => {
                return Ok(CallOutcome::Delivered { status, attempts })
            }
            Outcome::NonRetryable { status, error } => {
                return Ok(CallOutcome::Rejected {
                    status,
                    error,
                    attempts,
                })
            }
            Outcome::Retryable {
                retry_after, error, ..
            } => (retry_after, error),
        };
        let pause = retry_after.unwrap_or(wait);
        wait *= 2;
        if attempts >= sync.attempts || started.elapsed() + pause >= sync.budget {
            break error;
        }
        tokio::time::sleep(pause).await;
    };
    // The key the destination saw is the one the queue must keep.
    if let Some(key) = sent_idempotency_key(&msg) {
        msg.id = key;
    }
    msg.received_count = msg.received_count.saturating_add(attempts);
    let sqs_message_id = enqueuer.enqueue(&msg).await?;
    Ok(CallOutcome::Enqueued {
        id: msg.id,
        sqs_message_id,
        attempts,
        last_error,
    })
}

/// The message's own `Idempotency-Key` header, when it is usable as an id.
fn sent_idempotency_key(msg: &RetryMessage) -> Option<String> {
    let (_, values) = msg
        .request
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("idempotency-key"))?;
    let key = values.iter().next()?;
    crate::message::validate_id(key).ok()?;
    Some(key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable_sqs() -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::Config::builder()
                .behavior_version_latest()
                .region(aws_sdk_sqs::config::Region::new("us-east-1"))
                .endpoint_url("http://127.0.0.1:9")
                .build(),
        )
    }

    /// Every group a message is sent with is one SQS takes: a host longer
    /// than 128 characters (DNS allows 253) is not used as one.
    #[test]
    fn a_group_is_always_one_sqs_takes() {
        let long = format!(
            "{}.{}.{}.example.com",
            "a".repeat(60),
            "b".repeat(60),
            "c".repeat(20)
        );
        let standard = Enqueuer::new(unreachable_sqs(), "https://sqs.x/1/retry");
        let fifo = Enqueuer::new(unreachable_sqs(), "https://sqs.x/1/retry.fifo");
        let long_host = MessageBuilder::new(format!("https://{long}:8443/hook"))
            .build()
            .unwrap();
        assert_eq!(standard.group_of(&long_host), None);
        assert_eq!(fifo.group_of(&long_host), Some(DEFAULT_GROUP));
        let short = MessageBuilder::new("https://partner.example.com:8443/x")
            .build()
            .unwrap();
        assert_eq!(standard.group_of(&short), Some("partner.example.com"));
        assert_eq!(fifo.group_of(&short), Some("partner.example.com"));
        let none = standard.clone().with_fair_queue_key(FairQueueKey::None);
        assert_eq!(none.group_of(&short), None);
        let own = MessageBuilder::new("https://partner.example.com/x")
            .group("t-1")
            .build()
            .unwrap();
        assert_eq!(none.group_of(&own), Some("t-1"));
        for msg in [&long_host, &short, &own] {
            for e in [&standard, &fifo, &none] {
                if let Some(g) = e.group_of(msg) {
                    assert!(validate_group(g).is_ok(), "{g}");
                }
            }
        }
    }

    #[test]
    fn the_builder_makes_a_valid_message_with_a_fresh_id() {
        let a = MessageBuilder::new("https://api.example.com/x")
            .build()
            .unwrap();
        let b = MessageBuilder::new("https://api.example.com/x")
            .build()
            .unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(a.request.method, "GET");
        assert!(a.created_at.is_some());
        assert_eq!(
            RetryMessage::parse(&serde_json::to_string(&a).unwrap()).unwrap(),
            a
        );
    }

    #[test]
    fn repeated_headers_become_a_list() {
        let m = MessageBuilder::new("https://api.example.com/")
            .header("accept", "a/b")
            .header("accept", "c/d")
            .header("accept", "e/f")
            .build()
            .unwrap();
        assert_eq!(
            m.request.headers["accept"].iter().collect::<Vec<_>>(),
            ["a/b", "c/d", "e/f"]
        );
    }

    #[test]
    fn binary_bodies_are_base64_and_text_stays_text() {
        let m = MessageBuilder::new("https://x.example.com/")
            .body_bytes(&[0, 159, 146, 150])
            .build()
            .unwrap();
        assert_eq!(m.request.body_encoding, BodyEncoding::Base64);
        assert_eq!(*m.body_bytes().unwrap(), [0, 159, 146, 150]);
        let m = MessageBuilder::new("https://x.example.com/")
            .body_bytes(b"{}")
            .build()
            .unwrap();
        assert_eq!(m.request.body_encoding, BodyEncoding::Utf8);
    }

    #[test]
    fn build_names_the_bad_field() {
        let cases = [
            (MessageBuilder::new("not a url"), "destinationUrl"),
            (
                MessageBuilder::new("ftp://x.example.com/"),
                "destinationUrl",
            ),
            (
                MessageBuilder::new("https://x.example.com/").method("BAD METHOD"),
                "request.method",
            ),
            (
                MessageBuilder::new("https://x.example.com/").id("has space"),
                "id",
            ),
            (
                MessageBuilder::new("https://x.example.com/").header("x", "a\nb"),
                "request.headers.x",
            ),
            (
                MessageBuilder::new("https://x.example.com/").max_attempts(0),
                "maxAttempts",
            ),
        ];
        for (builder, field) in cases {
            assert_eq!(builder.build().unwrap_err().field, field);
        }
    }

    #[test]
    fn an_own_idempotency_key_becomes_the_id_when_usable() {
        let m = MessageBuilder::new("https://x.example.com/")
            .header("Idempotency-Key", "key-1")
            .build()
            .unwrap();
        assert_eq!(sent_idempotency_key(&m).as_deref(), Some("key-1"));
        let m = MessageBuilder::new("https://x.example.com/")
            .header("Idempotency-Key", "has space")
            .build()
            .unwrap();
        assert_eq!(sent_idempotency_key(&m), None);
    }
}
