//! The attempt ledger (spec §9): one item per recorded attempt, keyed by the
//! Retry Message `id`, and one counter per SQS message of its failed
//! attempts, from which the attempt number is counted.
//!
//! The counter is keyed by the SQS message id, not the Retry Message id: a
//! redriven copy is a new SQS message, so it starts afresh, while
//! `retryq attempts ID` still shows every attempt of every copy.

use std::time::{Duration, SystemTime};

use super::table::{Change, Key, Returns, Update};
use super::{n, number, s, string, FleetState, Item, StateError};
use crate::config::Ledger;

/// Records whose writes share one `BatchWriteItem` (two items each at
/// most; the call takes 25).
pub const WRITES_PER_CALL: usize = 12;
/// Keys in one `BatchGetItem` (its limit).
pub const READS_PER_CALL: usize = 100;

/// One attempt, as the ledger records it.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// The Retry Message `id`.
    pub id: String,
    pub sqs_message_id: String,
    /// The attempt number (§2, counted as §9 says).
    pub attempt: u32,
    pub started: SystemTime,
    /// The record's outcome label (`delivered`, `retryable`, …).
    pub outcome: &'static str,
    pub status: Option<u16>,
    pub latency: Duration,
    /// `LastError`, when it did not deliver.
    pub last_error: Option<String>,
    /// The first bytes of a non-2xx answer's body.
    pub snippet: Vec<u8>,
    /// Did it fail to deliver? Then the SQS message's counter moves on.
    pub failed: bool,
    /// The failed attempts recorded before this one.
    pub failed_before: u32,
    /// A carried copy's first SQS message id (§12.5), when the attempt was
    /// made on one.
    pub carried_from: Option<String>,
}

/// One attempt, as `retryq attempts` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedAttempt {
    pub attempt: u32,
    pub started_at: String,
    pub sqs_message_id: String,
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub latency_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_snippet: Option<String>,
    /// Made on a carried copy of the message whose first SQS message id
    /// this is (§12.5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub carried_from: Option<String>,
}

impl FleetState {
    /// Does the ledger record this attempt?
    pub fn records(&self, failed: bool) -> bool {
        failed || self.settings.ledger == Ledger::All
    }

    /// Records an attempt (with others, in one `BatchWriteItem`).
    pub async fn record(&self, a: &AttemptRecord) -> Result<(), StateError> {
        let ttl = self.ttl();
        let started = time::OffsetDateTime::from(a.started);
        let started_ms = (started.unix_timestamp_nanos() / 1_000_000).max(0);
        let mut attempt: Item = [
            ("pk", s(format!("msg#{}", a.id))),
            (
                "sk",
                s(format!("attempt#{started_ms:013}#{}", a.sqs_message_id)),
            ),
            ("attempt", n(a.attempt)),
            (
                "startedAt",
                s(started
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()),
            ),
            ("sqsMessageId", s(&a.sqs_message_id)),
            ("outcome", s(a.outcome)),
            ("latencyMs", n(a.latency.as_millis())),
            ("ttl", ttl.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if let Some(status) = a.status {
            attempt.insert("status".into(), n(status));
        }
        if let Some(e) = &a.last_error {
            attempt.insert("lastError".into(), s(e));
        }
        if let Some(original) = &a.carried_from {
            attempt.insert("carriedFrom".into(), s(original));
        }
        let snippet = &a.snippet[..a.snippet.len().min(self.settings.snippet_bytes)];
        if !snippet.is_empty() {
            attempt.insert(
                "responseSnippet".into(),
                s(String::from_utf8_lossy(snippet)),
            );
        }
        let mut items = vec![attempt];
        if a.failed {
            items.push(
                [
                    ("pk", s(format!("sqs#{}", a.sqs_message_id))),
                    ("sk", s("failures")),
                    ("failed", n(a.failed_before.saturating_add(1))),
                    ("id", s(&a.id)),
                    ("ttl", ttl),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            );
        }
        self.writes
            .submit(&self.settings.table, items, |_, entries| {
                self.write_batch(entries)
            })
            .await
    }

    /// The failed attempts recorded for an SQS message (with others, in
    /// one `BatchGetItem`).
    pub async fn recorded_failures(&self, sqs_message_id: &str) -> Result<u32, StateError> {
        self.reads
            .submit(&self.settings.table, sqs_message_id.to_owned(), |_, ids| {
                self.read_batch(ids)
            })
            .await
    }

    /// Counts an attempt before it is made (§12.6): the SQS message's
    /// failure counter set to `failed`, as if the attempt had failed. For a
    /// record that cannot hold its own count (it cannot be carried over):
    /// a write that fails after the attempt can then not leave it
    /// uncounted. A delivery after it leaves the counter one ahead, which
    /// counts more, never fewer.
    pub async fn count_first(
        &self,
        sqs_message_id: &str,
        id: &str,
        failed: u32,
    ) -> Result<(), StateError> {
        let counter: Item = [
            ("pk", s(format!("sqs#{sqs_message_id}"))),
            ("sk", s("failures")),
            ("failed", n(failed)),
            ("id", s(id)),
            ("ttl", self.ttl()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        self.writes
            .submit(&self.settings.table, vec![counter], |_, entries| {
                self.write_batch(entries)
            })
            .await
    }

    /// Marks an SQS message carried over (§12.5): its copy was sent.
    pub async fn mark_carried(&self, sqs_message_id: &str) -> Result<(), StateError> {
        let update = Update {
            key: Key::new(format!("sqs#{sqs_message_id}"), "carried"),
            changes: vec![Change::Set("ttl", self.ttl())],
            condition: None,
            returns: Returns::Nothing,
        };
        self.update(update).await.map(|_| ())
    }

    /// Was this SQS message carried over before (a copy sent, its
    /// acknowledgement lost)? Asked with other records' in one
    /// `BatchGetItem`: every redelivered record asks it before its attempt.
    pub async fn was_carried(&self, sqs_message_id: &str) -> Result<bool, StateError> {
        self.carried_reads
            .submit(&self.settings.table, sqs_message_id.to_owned(), |_, ids| {
                self.read_carried_batch(ids)
            })
            .await
    }

    /// One `BatchGetItem` of carry marks.
    async fn read_carried_batch(&self, ids: Vec<String>) -> Vec<Result<bool, StateError>> {
        self.read_per_message(&ids, "carried", |_| ())
            .await
            .into_iter()
            .map(|found| found.map(|marked| marked.is_some()))
            .collect()
    }

    /// Every recorded attempt of a Retry Message, oldest first.
    pub async fn attempts(&self, id: &str) -> Result<Vec<RecordedAttempt>, StateError> {
        let items = self
            .table
            .query(format!("msg#{id}"), "attempt#".to_owned())
            .await?;
        Ok(items.iter().map(recorded).collect())
    }

    /// One `BatchWriteItem`; items it leaves unprocessed are sent once more.
    async fn write_batch(&self, entries: Vec<Vec<Item>>) -> Vec<Result<(), StateError>> {
        let mut pending: Vec<Item> = entries.iter().flatten().cloned().collect();
        let mut result = Ok(());
        for _ in 0..2 {
            match self.table.put_batch(pending.clone()).await {
                Err(e) => {
                    result = Err(e);
                    break;
                }
                Ok(left) => {
                    pending = left;
                    if pending.is_empty() {
                        result = Ok(());
                        break;
                    }
                    result = Err(StateError {
                        operation: "BatchWriteItem",
                        detail: format!("{} items left unprocessed", pending.len()),
                    });
                }
            }
        }
        // Which entries' items are still unwritten (none if the call went
        // through; all if it failed).
        let unwritten = |entry: &Vec<Item>| match &result {
            Ok(()) => false,
            Err(_) if pending.is_empty() => true,
            Err(_) => entry
                .iter()
                .any(|item| pending.iter().any(|p| Key::of(p) == Key::of(item))),
        };
        entries
            .iter()
            .map(|entry| match (&result, unwritten(entry)) {
                (Err(e), true) => Err(e.clone()),
                _ => Ok(()),
            })
            .collect()
    }

    /// One `BatchGetItem` of failure counters.
    async fn read_batch(&self, ids: Vec<String>) -> Vec<Result<u32, StateError>> {
        self.read_per_message(&ids, "failures", |item| number(item, "failed").unwrap_or(0))
            .await
            .into_iter()
            .map(|found| found.map(Option::unwrap_or_default))
            .collect()
    }

    /// One `BatchGetItem` of the items `sqs#<id>` / `sk` of these SQS
    /// messages: for each id, in order, what `value` makes of its item
    /// (`None` without one), or the call's error.
    async fn read_per_message<T: Clone>(
        &self,
        ids: &[String],
        sk: &str,
        value: impl Fn(&Item) -> T,
    ) -> Vec<Result<Option<T>, StateError>> {
        let keys = unique(ids)
            .iter()
            .map(|id| Key::new(format!("sqs#{id}"), sk))
            .collect();
        let answer = self.table.get_batch(keys).await.map(|items| {
            items
                .iter()
                .filter_map(|item| {
                    let id = string(item, "pk")?.strip_prefix("sqs#")?.to_owned();
                    Some((id, value(item)))
                })
                .collect::<std::collections::HashMap<String, T>>()
        });
        ids.iter()
            .map(|id| match &answer {
                Ok(found) => Ok(found.get(id).cloned()),
                Err(e) => Err(e.clone()),
            })
            .collect()
    }
}

/// `ids` sorted, each once (a batch key may appear once per call).
fn unique(ids: &[String]) -> Vec<String> {
    let mut unique = ids.to_vec();
    unique.sort();
    unique.dedup();
    unique
}

fn recorded(item: &Item) -> RecordedAttempt {
    RecordedAttempt {
        attempt: number(item, "attempt").unwrap_or(0),
        started_at: string(item, "startedAt").unwrap_or_default().to_owned(),
        sqs_message_id: string(item, "sqsMessageId").unwrap_or_default().to_owned(),
        outcome: string(item, "outcome").unwrap_or_default().to_owned(),
        status: number(item, "status"),
        latency_ms: number(item, "latencyMs").unwrap_or(0),
        last_error: string(item, "lastError").map(str::to_owned),
        response_snippet: string(item, "responseSnippet").map(str::to_owned),
        carried_from: string(item, "carriedFrom").map(str::to_owned),
    }
}
