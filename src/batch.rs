//! The records of a batch and what became of them: plain data shared by
//! the entry points (Lambda, worker), the processor and the SQS adapter.

use std::time::{Duration, SystemTime};

use crate::policy::FailureReason;

/// One SQS message to process, whichever way it was received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub message_id: String,
    pub receipt_handle: String,
    /// The body exactly as received.
    pub body: String,
    /// SQS `ApproximateReceiveCount` (1 on the first receive).
    pub receive_count: u32,
    /// The ARN of the queue it came from.
    pub source_queue_arn: String,
    /// `MessageGroupId`, on FIFO queues.
    pub message_group_id: Option<String>,
    /// SQS `SentTimestamp`: when the message entered its queue, from which
    /// the queue's retention counts.
    pub sent_at: Option<SystemTime>,
    /// The `AWSTraceHeader` system attribute: the X-Ray trace the message
    /// belongs to (spec §11).
    pub trace_header: Option<String>,
    /// SQS `ApproximateFirstReceiveTimestamp`: when this copy was first
    /// received.
    pub first_received_at: Option<SystemTime>,
    /// The message attributes, as sent: a copy retryq sends back to the
    /// queue keeps them (§12.5), and `RetryqCarry` is one of them.
    pub message_attributes: Vec<MessageAttribute>,
}

/// One message attribute, as SQS gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageAttribute {
    pub name: String,
    /// `String`, `Number`, `Binary`, or one of those with a custom suffix.
    pub data_type: String,
    pub value: AttributeValue,
}

impl MessageAttribute {
    /// An attribute as SQS gives it (Lambda's event or a receive): text, or
    /// else bytes; `None` for one with neither value.
    pub fn from_sqs(
        name: String,
        data_type: String,
        text: Option<String>,
        bytes: Option<Vec<u8>>,
    ) -> Option<MessageAttribute> {
        let value = match (text, bytes) {
            (Some(text), _) => AttributeValue::Text(text),
            (None, Some(bytes)) => AttributeValue::Bytes(bytes),
            (None, None) => return None,
        };
        Some(MessageAttribute {
            name,
            data_type,
            value,
        })
    }
}

/// A message attribute's value: text for `String` and `Number` types, bytes
/// for `Binary` ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeValue {
    Text(String),
    Bytes(Vec<u8>),
}

impl Record {
    /// A record from what SQS says of a message, whichever way it came
    /// (Lambda's event, our own receive). `attribute` reads its system
    /// attributes by the names SQS gives them. Missing fields become empty
    /// values, which the processor treats as invalid (body) or as failed
    /// SQS calls (receipt handle, ARN), never as success.
    pub fn from_sqs(
        message_id: Option<String>,
        receipt_handle: Option<String>,
        body: Option<String>,
        source_queue_arn: String,
        mut attribute: impl FnMut(&str) -> Option<String>,
    ) -> Record {
        Record {
            receive_count: attribute("ApproximateReceiveCount")
                .and_then(|c| c.parse().ok())
                .unwrap_or(1),
            message_group_id: attribute("MessageGroupId"),
            sent_at: attribute("SentTimestamp").as_deref().and_then(epoch_millis),
            first_received_at: attribute("ApproximateFirstReceiveTimestamp")
                .as_deref()
                .and_then(epoch_millis),
            trace_header: attribute("AWSTraceHeader").filter(|t| !t.trim().is_empty()),
            message_id: message_id.unwrap_or_default(),
            receipt_handle: receipt_handle.unwrap_or_default(),
            body: body.unwrap_or_default(),
            source_queue_arn,
            message_attributes: Vec::new(),
        }
    }

    /// With these message attributes.
    pub fn with_message_attributes(mut self, attributes: Vec<MessageAttribute>) -> Record {
        self.message_attributes = attributes;
        self
    }

    /// The `RetryqCarry` attribute of a carried copy (§12.5), read: `None`
    /// on a copy that was never carried.
    pub fn carry(&self) -> Option<Result<crate::policy::carry::Carry, String>> {
        let attribute = self
            .message_attributes
            .iter()
            .find(|a| a.name == crate::policy::carry::CARRY_ATTRIBUTE)?;
        Some(match &attribute.value {
            AttributeValue::Text(text) => crate::policy::carry::Carry::parse(text),
            AttributeValue::Bytes(_) => Err(format!(
                "{}: must be a String attribute",
                crate::policy::carry::CARRY_ATTRIBUTE
            )),
        })
    }
}

/// An SQS timestamp attribute (epoch milliseconds) as a time.
fn epoch_millis(text: &str) -> Option<SystemTime> {
    let ms = text.trim().parse::<u64>().ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

/// How a record ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Delivered: acknowledged.
    Delivered,
    /// Retryable: hidden for `delay`, then SQS delivers it again.
    RetryLater { delay: Duration },
    /// Copied to the DLQ, then acknowledged.
    DeadLettered(FailureReason),
    /// Retryable, and carried over (§12.5): a copy of it is back in its
    /// queue for `delay`, so this one is acknowledged.
    Carried { delay: Duration },
    /// Not finished (an SQS call failed, `DLQ_URL` unset, a panic, the
    /// deadline): left for SQS to deliver again.
    Unfinished(String),
}

impl Disposition {
    /// May the record be deleted from its queue?
    pub fn acknowledged(&self) -> bool {
        matches!(
            self,
            Disposition::Delivered | Disposition::DeadLettered(_) | Disposition::Carried { .. }
        )
    }
}

/// What one record's work produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    pub disposition: Disposition,
    /// How long the attempt took, when one was made.
    pub attempt_latency: Option<Duration>,
    /// The destination's host, when the message could be read.
    pub destination: Option<String>,
}

impl From<Disposition> for Processed {
    fn from(disposition: Disposition) -> Processed {
        Processed {
            disposition,
            attempt_latency: None,
            destination: None,
        }
    }
}

/// What happened to one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordReport {
    pub message_id: String,
    pub receipt_handle: String,
    pub disposition: Disposition,
    pub attempt_latency: Option<Duration>,
    /// The destination's host (the metrics' `Destination` dimension).
    pub destination: Option<String>,
}

/// What happened to a batch, in the order of its records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub records: Vec<RecordReport>,
}

impl BatchReport {
    /// The records that were not acknowledged: Lambda's `batchItemFailures`.
    pub fn unacknowledged(&self) -> impl Iterator<Item = &RecordReport> {
        self.records
            .iter()
            .filter(|r| !r.disposition.acknowledged())
    }
}
