//! Dead letters: list them, and redrive them back for another run.
//!
//! Both walk the DLQ with ordinary receives. Messages already seen are kept
//! hidden while the walk goes on (so each is seen once) and released at the
//! end, so listing changes nothing. Redrive is receive → send → delete: a
//! crash between send and delete leaves a duplicate, never a loss.
//!
//! Redrive sends the body unchanged and without the failure attributes, as
//! the contract asks; this is why it does not use SQS `StartMessageMoveTask`,
//! which moves messages with all their attributes and cannot filter by
//! reason.

use std::time::{Duration, SystemTime};

use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use serde::Serialize;

use crate::message::RetryMessage;
use crate::queue::{attribute, QueueError, Queues};

/// How long a message stays hidden while a walk is going on.
const WALK_VISIBILITY: Duration = Duration::from_secs(300);

/// One dead letter, as `retryq dlq list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterSummary {
    /// The Retry Message id, when the body is one.
    pub id: Option<String>,
    pub destination: Option<String>,
    pub failure_reason: Option<String>,
    pub last_status_code: Option<String>,
    pub attempt_count: Option<String>,
    pub last_error: Option<String>,
    /// Seconds since it was dead-lettered.
    pub age_seconds: u64,
    pub sqs_message_id: String,
}

impl DeadLetterSummary {
    pub fn of(m: &Message, now: SystemTime) -> DeadLetterSummary {
        let attr = |name: &str| {
            m.message_attributes
                .as_ref()
                .and_then(|a| a.get(name))
                .and_then(|v| v.string_value.clone())
        };
        let msg = m.body.as_deref().and_then(|b| RetryMessage::parse(b).ok());
        let sent_ms: u64 = m
            .attributes
            .as_ref()
            .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let sent = SystemTime::UNIX_EPOCH + Duration::from_millis(sent_ms);
        DeadLetterSummary {
            id: msg.as_ref().map(|m| m.id.clone()),
            destination: msg.as_ref().map(|m| m.destination_url.to_string()),
            failure_reason: attr(attribute::FAILURE_REASON),
            last_status_code: attr(attribute::LAST_STATUS_CODE),
            attempt_count: attr(attribute::ATTEMPT_COUNT),
            last_error: attr(attribute::LAST_ERROR),
            age_seconds: now.duration_since(sent).unwrap_or_default().as_secs(),
            sqs_message_id: m.message_id.clone().unwrap_or_default(),
        }
    }
}

/// What a redrive did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RedriveStats {
    pub moved: u64,
    /// Left in the DLQ by the `reason` filter.
    pub skipped: u64,
    /// Could not be moved (send or delete failed); still in the DLQ.
    pub failed: u64,
}

/// Lists up to `max` dead letters; the DLQ is unchanged afterwards.
pub async fn list(
    queues: &Queues,
    dlq_url: &str,
    max: usize,
) -> Result<Vec<DeadLetterSummary>, QueueError> {
    let mut seen: Vec<Message> = Vec::new();
    let mut walk = Walk::new(max);
    let result = loop {
        match walk.next_batch(queues, dlq_url).await {
            Ok(Some(batch)) => seen.extend(batch),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    release(queues, dlq_url, &seen).await;
    result?;
    let now = SystemTime::now();
    Ok(seen.iter().map(|m| DeadLetterSummary::of(m, now)).collect())
}

/// Moves up to `max` dead letters (only those with `FailureReason` =
/// `reason`, when given) to `to_url`: body unchanged, failure attributes
/// dropped. The messages skipped are released at the end.
pub async fn redrive(
    queues: &Queues,
    dlq_url: &str,
    to_url: &str,
    max: usize,
    reason: Option<&str>,
) -> Result<RedriveStats, QueueError> {
    let mut stats = RedriveStats::default();
    let mut kept: Vec<Message> = Vec::new();
    // Without a filter, stop receiving once `max` moved; with one, look at
    // everything (the matches may be anywhere).
    let mut walk = Walk::new(if reason.is_none() { max } else { usize::MAX });
    let result = loop {
        let batch = match walk.next_batch(queues, dlq_url).await {
            Ok(Some(batch)) => batch,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        for m in batch {
            let matches = reason.is_none_or(|r| reason_of(&m).as_deref() == Some(r));
            if !matches || stats.moved as usize >= max {
                stats.skipped += 1;
                kept.push(m);
                continue;
            }
            match move_one(queues, dlq_url, to_url, &m).await {
                Ok(()) => stats.moved += 1,
                Err(e) => {
                    tracing::warn!(error = %e, "could not redrive a dead letter");
                    stats.failed += 1;
                    kept.push(m);
                }
            }
        }
    };
    release(queues, dlq_url, &kept).await;
    result?;
    Ok(stats)
}

fn reason_of(m: &Message) -> Option<String> {
    m.message_attributes
        .as_ref()?
        .get(attribute::FAILURE_REASON)?
        .string_value
        .clone()
}

async fn move_one(
    queues: &Queues,
    dlq_url: &str,
    to_url: &str,
    m: &Message,
) -> Result<(), QueueError> {
    let mut send = queues
        .client()
        .send_message()
        .queue_url(to_url)
        .message_body(m.body.clone().unwrap_or_default());
    if to_url.ends_with(".fifo") {
        let group = m
            .attributes
            .as_ref()
            .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
            .cloned()
            .unwrap_or_else(|| "retryq".into());
        send = send
            .message_group_id(group)
            .message_deduplication_id(m.message_id.clone().unwrap_or_default());
    }
    send.send()
        .await
        .map_err(|e| QueueError::sqs("SendMessage", e))?;
    let handle = m.receipt_handle.clone().unwrap_or_default();
    let not_deleted = queues.delete_batch(dlq_url, &[handle]).await;
    if not_deleted.is_empty() {
        Ok(())
    } else {
        Err(QueueError::Sqs {
            operation: "DeleteMessage",
            detail: "sent to the target but not deleted from the DLQ (it will appear twice)".into(),
        })
    }
}

/// A walk over the DLQ: receives until it gives no more (or `max` were
/// seen), hiding each message for the walk.
struct Walk {
    seen: usize,
    max: usize,
    empty: u32,
}

impl Walk {
    /// SQS may answer a short poll empty while messages remain (it samples
    /// a subset of its servers): this many empty answers end the walk.
    const EMPTY_ANSWERS: u32 = 3;

    fn new(max: usize) -> Walk {
        Walk {
            seen: 0,
            max,
            empty: 0,
        }
    }

    async fn next_batch(
        &mut self,
        queues: &Queues,
        dlq_url: &str,
    ) -> Result<Option<Vec<Message>>, QueueError> {
        while self.seen < self.max && self.empty < Self::EMPTY_ANSWERS {
            let want = (self.max - self.seen).min(10) as i32;
            let batch = queues
                .receive(dlq_url, want, Duration::ZERO, Some(WALK_VISIBILITY))
                .await?;
            if batch.is_empty() {
                self.empty += 1;
                continue;
            }
            self.seen += batch.len();
            return Ok(Some(batch));
        }
        Ok(None)
    }
}

/// Makes the messages visible again at once.
async fn release(queues: &Queues, dlq_url: &str, messages: &[Message]) {
    for m in messages {
        if let Some(handle) = &m.receipt_handle {
            if let Err(e) = queues
                .change_visibility(dlq_url, handle, Duration::ZERO)
                .await
            {
                tracing::warn!(error = %e, "could not release a dead letter (it reappears after its visibility timeout)");
            }
        }
    }
}
