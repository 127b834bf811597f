//! Dead letters: list them, and redrive them back for another run.
//!
//! Both walk the DLQ with ordinary receives. Messages already seen are kept
//! hidden while the walk goes on and released at the end, so listing
//! changes nothing. A walk longer than that hiding sees some messages
//! again: it knows them by message id, keeps one entry (the newest receipt)
//! for each, and ends when receives bring back only messages it has seen,
//! so a long pass neither loops nor grows without bound. Redrive is receive → send → delete: a
//! crash between send and delete leaves a duplicate, never a loss.
//!
//! Redrive sends the body unchanged and without the failure attributes, as
//! spec §7 asks; this is why it does not use SQS `StartMessageMoveTask`,
//! which moves messages with all their attributes and cannot filter by
//! reason.

use std::collections::HashMap;
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
    /// Not moved but deleted: messages whose payload is marked delivered
    /// or dead-lettered for that very message (§12.3), which the queue's
    /// redrive policy moved to the DLQ after their acknowledgement was
    /// lost. Sending them again would repeat a delivered request.
    pub already_finished: u64,
}

/// Lists up to `max` dead letters; the DLQ is unchanged afterwards.
pub async fn list(
    queues: &Queues,
    dlq_url: &str,
    max: usize,
) -> Result<Vec<DeadLetterSummary>, QueueError> {
    let now = SystemTime::now();
    let mut letters = Vec::new();
    read_each(queues, dlq_url, max, |batch| {
        letters.extend(batch.iter().map(|m| DeadLetterSummary::of(m, now)));
    })
    .await?;
    Ok(letters)
}

/// Reads up to `max` dead letters, handing each batch of new ones to
/// `each` as it arrives (only their summaries need be kept: a walk holds
/// no bodies); the DLQ is unchanged afterwards.
pub async fn read_each(
    queues: &Queues,
    dlq_url: &str,
    max: usize,
    mut each: impl FnMut(&[Message]),
) -> Result<(), QueueError> {
    let mut seen = Held::default();
    let mut walk = Walk::new(max);
    let result = loop {
        match walk.next_batch(queues, dlq_url, &mut seen).await {
            Ok(Some(batch)) => {
                each(&batch);
                batch.into_iter().for_each(|m| seen.keep(m));
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    seen.release(queues, dlq_url).await;
    result
}

/// Which dead letters a redrive moves: those matching every filter given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// `FailureReason`.
    pub reason: Option<String>,
    /// The destination's host (a payload pointer's is not known: it does
    /// not match).
    pub host: Option<String>,
    /// SQS message ids.
    pub message_ids: Option<std::collections::HashSet<String>>,
    /// Dead-lettered at or after this, in ms since the epoch.
    pub since_ms: Option<u64>,
}

impl Selection {
    /// Does it take every dead letter?
    pub fn is_all(&self) -> bool {
        *self == Selection::default()
    }

    pub fn matches(&self, m: &Message) -> bool {
        let id = m.message_id.as_deref().unwrap_or_default();
        self.reason
            .as_deref()
            .is_none_or(|r| reason_of(m).as_deref() == Some(r))
            && self.message_ids.as_ref().is_none_or(|ids| ids.contains(id))
            && self.since_ms.is_none_or(|since| sent_ms(m) >= since)
            && self.host.as_deref().is_none_or(|h| {
                host_of(m.body.as_deref().unwrap_or_default()).as_deref() == Some(h)
            })
    }
}

/// The destination host of a letter's body, when it is a Retry Message.
pub fn host_of(body: &str) -> Option<String> {
    head_of(body)?
        .destination_url?
        .host_str()
        .map(str::to_owned)
}

/// The two fields of a letter's body a redrive looks at, when it is a
/// Retry Message (read once, without the rest of the message).
#[derive(serde::Deserialize)]
struct Head {
    id: Option<String>,
    #[serde(rename = "destinationUrl")]
    destination_url: Option<url::Url>,
}

fn head_of(body: &str) -> Option<Head> {
    serde_json::from_str(body).ok()
}

/// When SQS took the message, in ms since the epoch (for a dead letter:
/// when it was dead-lettered).
pub fn sent_ms(m: &Message) -> u64 {
    m.attributes
        .as_ref()
        .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

/// Where redriven payload pointers are copied (§12.1): the store, and the
/// buckets whose pointers are followed (`PAYLOAD_BUCKETS`). A pointer into
/// any other bucket is not moved: its redriven message would point to an
/// object that may expire before it, and the processor would not follow it.
pub struct RedrivePayloads<'a> {
    pub store: &'a crate::payload::store::PayloadStore,
    pub buckets: &'a [String],
}

/// Moves up to `max` dead letters of `selection` to `to_url`: body
/// unchanged (a payload pointer points to a copy written now), failure
/// attributes dropped. The messages skipped are released at the end.
pub async fn redrive(
    queues: &Queues,
    payloads: &RedrivePayloads<'_>,
    dlq_url: &str,
    to_url: &str,
    max: usize,
    selection: &Selection,
) -> Result<RedriveStats, QueueError> {
    let mut stats = RedriveStats::default();
    let mut kept = Held::default();
    // Without a filter, stop receiving once `max` moved; with one, look at
    // everything (the matches may be anywhere).
    let mut walk = Walk::new(if selection.is_all() { max } else { usize::MAX });
    let mut wanted = selection.message_ids.as_ref().map(|ids| ids.len());
    // What this redrive sent, so that a letter that comes back while it
    // walks (redriven, failed at once, dead-lettered again) is not taken
    // again: its `OriginalMessageId` is one of the messages sent, or its
    // Retry Message id one already moved. Identity, not time: the clocks
    // of SQS and this machine may differ by any amount.
    let mut ours = Ours::default();
    let result = loop {
        if wanted == Some(0) {
            break Ok(());
        }
        let batch = match walk.next_batch(queues, dlq_url, &mut kept).await {
            Ok(Some(batch)) => batch,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        for m in batch {
            if ours.came_back(&m) || !selection.matches(&m) || stats.moved as usize >= max {
                stats.skipped += 1;
                kept.keep(m);
                continue;
            }
            wanted = wanted.map(|n| n.saturating_sub(1));
            match move_one(queues, payloads, dlq_url, to_url, &m).await {
                Ok(Moved::Sent(sent)) => {
                    stats.moved += 1;
                    ours.note(&m, sent);
                }
                Ok(Moved::AlreadyFinished) => stats.already_finished += 1,
                Err(e) => {
                    tracing::warn!(error = %e, "could not redrive a dead letter");
                    stats.failed += 1;
                    kept.keep(m);
                }
            }
        }
    };
    kept.release(queues, dlq_url).await;
    result?;
    Ok(stats)
}

/// Messages a walk holds hidden: the newest receipt of each message id.
#[derive(Default)]
struct Held {
    handles: HashMap<String, String>,
}

impl Held {
    fn keep(&mut self, m: Message) {
        let id = m.message_id.unwrap_or_default();
        if let Some(handle) = m.receipt_handle {
            self.handles.insert(id, handle);
        }
    }

    /// Takes the newer receipt of a message already held.
    fn refresh(&mut self, m: Message) {
        let id = m.message_id.unwrap_or_default();
        if let (Some(held), Some(handle)) = (self.handles.get_mut(&id), m.receipt_handle) {
            *held = handle;
        }
    }

    /// Makes them visible again at once.
    async fn release(&self, queues: &Queues, dlq_url: &str) {
        let handles: Vec<String> = self.handles.values().cloned().collect();
        let failed = queues
            .change_visibility_batch(dlq_url, &handles, Duration::ZERO)
            .await
            .iter()
            .filter(|r| r.is_err())
            .count();
        if failed > 0 {
            tracing::warn!(
                failed,
                "could not release some dead letters (they reappear after their visibility timeout)"
            );
        }
    }
}

fn reason_of(m: &Message) -> Option<String> {
    m.message_attributes
        .as_ref()?
        .get(attribute::FAILURE_REASON)?
        .string_value
        .clone()
}

/// What became of one dead letter that was not left in the DLQ.
enum Moved {
    /// Sent to the target (the new message's id), and deleted from the DLQ.
    Sent(String),
    /// Deleted from the DLQ without being sent: its payload says it was
    /// finished.
    AlreadyFinished,
}

async fn move_one(
    queues: &Queues,
    payloads: &RedrivePayloads<'_>,
    dlq_url: &str,
    to_url: &str,
    m: &Message,
) -> Result<Moved, String> {
    // Its group, kept: a FIFO message's order, a fair queue's tenant.
    let group = m
        .attributes
        .as_ref()
        .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
        .map(String::as_str);
    let letter = m.body.as_deref().unwrap_or_default();
    // A pointer's redriven message points to a copy written now, which
    // lives as long as the retry queue keeps it (§12.1); the letter's own
    // object goes once the letter is gone.
    let old = crate::payload::PayloadPointer::parse(letter).and_then(Result::ok);
    let message_id = m.message_id.as_deref().unwrap_or_default();
    // Whether the letter's object is its own copy (read once, with the
    // finished check), so that it can go once the letter is moved.
    let mut own_copy = false;
    if let Some(p) = &old {
        p.check_bucket(payloads.buckets)
            .map_err(|why| format!("{why}: left in the DLQ, not redriven"))?;
        // The message itself, moved here by the redrive policy after it
        // was finished (its acknowledgement lost on its last receive).
        let tags = payloads.store.tags_of(p).await?;
        if let Some(how) = crate::payload::finished_for(&tags, message_id) {
            delete_letter(queues, dlq_url, m).await?;
            tracing::info!(id = %message_id, "not redriven: its payload is marked {}", how.as_str());
            return Ok(Moved::AlreadyFinished);
        }
        own_copy = tags
            .iter()
            .any(|(k, _)| k == crate::payload::store::LETTER_TAG);
    }
    let fresh = match &old {
        Some(p) => Some(payloads.store.copy(p, None, None).await?.body()),
        None => None,
    };
    let body = fresh.as_deref().unwrap_or(letter);
    // A pointer keeps its size attribute, so the SQS Extended Client still
    // reads the redriven copy; every message keeps its trace (spec §11).
    let payload_size: Vec<(&str, String)> = m
        .message_attributes
        .as_ref()
        .and_then(|a| a.get(crate::payload::EXTENDED_PAYLOAD_SIZE))
        .and_then(|v| v.string_value.clone())
        .map(|size| (crate::payload::EXTENDED_PAYLOAD_SIZE, size))
        .into_iter()
        .collect();
    let trace = m
        .attributes
        .as_ref()
        .and_then(|a| a.get(&MessageSystemAttributeName::AwsTraceHeader))
        .map(String::as_str);
    let sent = queues
        .send(to_url, body, &payload_size, trace, group, message_id)
        .await
        .map_err(|e| e.to_string())?;
    delete_letter(queues, dlq_url, m).await.map_err(|e| {
        format!("{e}: sent to the target but not deleted from the DLQ (it will appear twice)")
    })?;
    // A letter's own copy: nothing points to it now. Any other object (the
    // producer's, moved here by the redrive policy) may still be named by a
    // duplicate, and stays. A failure leaves it to the bucket's expiry.
    if let (Some(old), true) = (&old, own_copy) {
        if let Err(e) = payloads.store.delete(old).await {
            tracing::warn!(error = %e, "could not delete a redriven letter's payload");
        }
    }
    Ok(Moved::Sent(sent))
}

/// The messages one redrive sent, and the Retry Message ids it moved.
#[derive(Default)]
struct Ours {
    sent: std::collections::HashSet<String>,
    ids: std::collections::HashSet<String>,
}

impl Ours {
    fn note(&mut self, letter: &Message, sent: String) {
        self.sent.insert(sent);
        if let Some(id) = retry_id_of(letter.body.as_deref().unwrap_or_default()) {
            self.ids.insert(id);
        }
    }

    /// Is `letter` a message this redrive sent, dead-lettered again?
    fn came_back(&self, letter: &Message) -> bool {
        let original = letter
            .message_attributes
            .as_ref()
            .and_then(|a| a.get(attribute::ORIGINAL_MESSAGE_ID))
            .and_then(|v| v.string_value.as_deref());
        original.is_some_and(|o| self.sent.contains(o))
            || retry_id_of(letter.body.as_deref().unwrap_or_default())
                .is_some_and(|id| self.ids.contains(&id))
    }
}

/// The Retry Message `id` of a letter's body, when it is one.
fn retry_id_of(body: &str) -> Option<String> {
    head_of(body)?.id
}

async fn delete_letter(queues: &Queues, dlq_url: &str, m: &Message) -> Result<(), String> {
    let handle = m.receipt_handle.clone().unwrap_or_default();
    let not_deleted = queues.delete_batch(dlq_url, &[handle]).await;
    if not_deleted.is_empty() {
        Ok(())
    } else {
        Err("DeleteMessage failed".into())
    }
}

/// A walk over the DLQ: receives until it gives no more (or `max` were
/// seen), hiding each message for the walk. Messages seen before are not
/// given again.
struct Walk {
    seen: usize,
    max: usize,
    empty: u32,
    ids: std::collections::HashSet<String>,
}

impl Walk {
    /// SQS may answer a short poll empty while messages remain (it samples
    /// a subset of its servers): this many empty answers, or answers of
    /// messages already seen, end the walk.
    const EMPTY_ANSWERS: u32 = 3;

    fn new(max: usize) -> Walk {
        Walk {
            seen: 0,
            max,
            empty: 0,
            ids: std::collections::HashSet::new(),
        }
    }

    /// The next messages not seen before; repeats only refresh their entry
    /// in `held`.
    async fn next_batch(
        &mut self,
        queues: &Queues,
        dlq_url: &str,
        held: &mut Held,
    ) -> Result<Option<Vec<Message>>, QueueError> {
        while self.seen < self.max && self.empty < Self::EMPTY_ANSWERS {
            let want = (self.max - self.seen).min(10) as i32;
            let batch = queues
                .receive(dlq_url, want, Duration::ZERO, Some(WALK_VISIBILITY))
                .await?;
            let (new, repeats): (Vec<Message>, Vec<Message>) = batch
                .into_iter()
                .partition(|m| self.ids.insert(m.message_id.clone().unwrap_or_default()));
            // A message seen again has a new receipt: the old one can no
            // longer release it.
            repeats.into_iter().for_each(|m| held.refresh(m));
            if new.is_empty() {
                self.empty += 1;
                continue;
            }
            self.seen += new.len();
            return Ok(Some(new));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(id: &str, receipt: &str) -> Message {
        Message::builder()
            .message_id(id)
            .receipt_handle(receipt)
            .build()
    }

    #[test]
    fn held_messages_are_one_per_id() {
        let mut held = Held::default();
        held.keep(received("a", "a-1"));
        held.keep(received("b", "b-1"));
        // A long pass receives "a" again: a new receipt, not a new entry.
        held.refresh(received("a", "a-2"));
        held.keep(received("b", "b-2"));
        held.refresh(received("unknown", "u-1"));
        assert_eq!(held.handles.len(), 2);
        assert_eq!(held.handles["a"], "a-2", "the newest receipt releases it");
        assert_eq!(held.handles["b"], "b-2");
    }

    #[test]
    fn a_selection_takes_what_matches_every_filter() {
        let letter = |id: &str, url: &str| {
            Message::builder()
                .message_id(id)
                .body(format!(
                    r#"{{"id":"x","destinationUrl":"{url}","request":{{"method":"GET"}}}}"#
                ))
                .build()
        };
        let a = letter("a", "https://api.partner.com/x");
        let b = letter("b", "https://other.com/x");
        assert!(Selection::default().is_all());
        let by_host = Selection {
            host: Some("api.partner.com".into()),
            ..Selection::default()
        };
        assert!(by_host.matches(&a) && !by_host.matches(&b));
        let by_id = Selection {
            message_ids: Some(["b".to_owned()].into()),
            ..Selection::default()
        };
        assert!(!by_id.matches(&a) && by_id.matches(&b));
        let by_reason = Selection {
            reason: Some("expired".into()),
            ..Selection::default()
        };
        assert!(!by_reason.matches(&a), "no FailureReason: not expired");
    }
}
