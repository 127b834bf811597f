//! The dead letters the console shows: read from the DLQ in the
//! background, a batch of ten at a time, into summaries (a bounded body
//! preview, masked headers), so a page never waits for the whole queue and
//! 10,000 letters take a few MiB, not their bodies' size.
//!
//! A read is `retryq dlq list`'s walk: each letter is hidden while the
//! walk goes on and released at its end, so reading changes nothing. One
//! walk at a time goes over the DLQ (a read or a redrive): two would hide
//! letters from each other.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::types::Message;
use serde_json::Value;

use super::mask;
use crate::dlq;
use crate::queue::{attribute, Queues};

/// Most letters a read keeps (the rest are counted, not shown).
pub const MOST_LETTERS: usize = 100_000;
/// Most bytes the kept letters take, about (the rest are counted).
pub const MOST_BYTES: usize = 256 * 1024 * 1024;
/// How much of a body a letter keeps.
const PREVIEW_BYTES: usize = 1024;
/// Most headers a letter keeps.
const MOST_HEADERS: usize = 50;

/// One dead letter, as the console shows it.
#[derive(Debug, Clone, Default)]
pub struct Letter {
    pub sqs_message_id: String,
    /// The Retry Message `id`, when the body is one.
    pub id: Option<String>,
    pub reason: Option<String>,
    pub status: Option<String>,
    pub attempts: Option<String>,
    pub last_error: Option<String>,
    /// When it was dead-lettered (its `SentTimestamp` in the DLQ).
    pub dead_lettered_ms: u64,
    pub method: Option<String>,
    /// The destination, its credential-bearing query values masked.
    pub url: Option<String>,
    pub host: Option<String>,
    /// Headers, credential-bearing values masked.
    pub headers: Vec<(String, String)>,
    /// The start of the body (or of the letter, when it is not a Retry
    /// Message).
    pub preview: String,
    /// Where an offloaded body is (`s3://bucket/key`).
    pub offloaded: Option<String>,
}

impl Letter {
    pub fn of(m: &Message) -> Letter {
        let attr = |name: &str| {
            m.message_attributes
                .as_ref()
                .and_then(|a| a.get(name))
                .and_then(|v| v.string_value.clone())
        };
        let body = m.body.as_deref().unwrap_or_default();
        let mut letter = Letter {
            sqs_message_id: m.message_id.clone().unwrap_or_default(),
            reason: attr(attribute::FAILURE_REASON),
            status: attr(attribute::LAST_STATUS_CODE),
            attempts: attr(attribute::ATTEMPT_COUNT),
            last_error: attr(attribute::LAST_ERROR),
            dead_lettered_ms: dlq::sent_ms(m),
            ..Letter::default()
        };
        if let Some(Ok(p)) = crate::payload::PayloadPointer::parse(body) {
            letter.offloaded = Some(format!("s3://{}/{}", p.bucket, p.key));
            letter.preview = "(the message is in S3; the console does not read it)".into();
            return letter.bounded();
        }
        match serde_json::from_str::<Value>(body) {
            Ok(v) if v.get("destinationUrl").is_some() => letter.read_message(&v),
            // Not a Retry Message (an `invalid-message` letter): its JSON
            // with credential keys masked; text that mentions a credential
            // is not shown at all.
            Ok(mut v) => {
                mask::masked_json(&mut v);
                letter.preview = preview(&v.to_string());
            }
            Err(_) if mask::mentions_credentials(body) => {
                letter.preview = format!(
                    "(not JSON, {} bytes: not shown, as it mentions a credential)",
                    body.len()
                );
            }
            Err(_) => letter.preview = preview(body),
        }
        letter.bounded()
    }

    /// About how many bytes it takes.
    fn size(&self) -> usize {
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        std::mem::size_of::<Letter>()
            + self.sqs_message_id.len()
            + text(&self.id)
            + text(&self.reason)
            + text(&self.status)
            + text(&self.attempts)
            + text(&self.last_error)
            + text(&self.method)
            + text(&self.url)
            + text(&self.host)
            + text(&self.offloaded)
            + self.preview.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len() + 48)
                .sum::<usize>()
    }

    /// Every field cut to its bound, so a letter's summary is small
    /// whatever the letter holds.
    fn bounded(mut self) -> Letter {
        let cut = |s: &mut Option<String>, most: usize| {
            if let Some(text) = s {
                *text = cut_to(text, most);
            }
        };
        cut(&mut self.id, 256);
        cut(&mut self.reason, 64);
        cut(&mut self.status, 64);
        cut(&mut self.attempts, 64);
        cut(&mut self.last_error, 1024);
        cut(&mut self.method, 32);
        cut(&mut self.url, 2048);
        cut(&mut self.host, 256);
        cut(&mut self.offloaded, 2048);
        if self.headers.len() > MOST_HEADERS {
            let more = self.headers.len() - MOST_HEADERS;
            self.headers.truncate(MOST_HEADERS);
            self.headers
                .push(("…".into(), format!("{more} more headers not kept")));
        }
        for (name, value) in &mut self.headers {
            *name = cut_to(name, 128);
            *value = cut_to(value, 512);
        }
        self.sqs_message_id = cut_to(&self.sqs_message_id, 128);
        self
    }

    fn read_message(&mut self, v: &Value) {
        let text = |v: &Value| v.as_str().map(str::to_owned);
        self.id = v.get("id").and_then(text);
        if let Some(url) = v.get("destinationUrl").and_then(Value::as_str) {
            match url::Url::parse(url) {
                Ok(u) => {
                    self.host = u.host_str().map(str::to_owned);
                    self.url = Some(mask::masked_url(&u));
                }
                Err(_) => self.url = Some("(not a URL)".into()),
            }
        }
        let request = v.get("request");
        self.method = request.and_then(|r| r.get("method")).and_then(text);
        if let Some(Value::Object(headers)) = request.and_then(|r| r.get("headers")) {
            for (name, value) in headers {
                let values: Vec<String> = match value {
                    Value::Array(list) => list.iter().filter_map(text).collect(),
                    other => text(other).into_iter().collect(),
                };
                for value in values {
                    self.headers.push((name.clone(), mask::shown(name, &value)));
                }
            }
        }
        let body = request.and_then(|r| r.get("body")).and_then(Value::as_str);
        let base64 = request
            .and_then(|r| r.get("bodyEncoding"))
            .and_then(Value::as_str)
            == Some("base64");
        self.preview = match (body, base64) {
            (None, _) => String::new(),
            (Some(b), true) => format!("(base64) {}", preview(b)),
            (Some(b), false) => preview(b),
        };
    }

    /// Its age at `now_ms`, as people say it.
    pub fn age(&self, now_ms: u64) -> String {
        let secs = now_ms.saturating_sub(self.dead_lettered_ms) / 1000;
        match secs {
            s if s < 120 => format!("{s}s ago"),
            s if s < 7200 => format!("{}m ago", s / 60),
            s if s < 172_800 => format!("{}h ago", s / 3600),
            s => format!("{}d ago", s / 86_400),
        }
    }
}

fn preview(text: &str) -> String {
    cut_to(text, PREVIEW_BYTES)
}

/// `text`, cut at a character within `most` bytes, saying so.
fn cut_to(text: &str, most: usize) -> String {
    if text.len() <= most {
        return text.to_owned();
    }
    let mut end = most;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..end], text.len())
}

/// What the filter form asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub reason: Option<String>,
    pub host: Option<String>,
    /// Dead-lettered within this long before now.
    pub within: Option<Duration>,
}

impl Filter {
    pub fn since_ms(&self, now_ms: u64) -> Option<u64> {
        self.within
            .map(|w| now_ms.saturating_sub(w.as_millis() as u64))
    }

    pub fn matches(&self, l: &Letter, now_ms: u64) -> bool {
        self.reason
            .as_ref()
            .is_none_or(|r| l.reason.as_ref() == Some(r))
            && self
                .host
                .as_ref()
                .is_none_or(|h| l.host.as_ref() == Some(h))
            && self
                .since_ms(now_ms)
                .is_none_or(|s| l.dead_lettered_ms >= s)
    }

    /// The same filter as a redrive's selection.
    pub fn selection(&self, now_ms: u64) -> dlq::Selection {
        dlq::Selection {
            reason: self.reason.clone(),
            host: self.host.clone(),
            message_ids: None,
            since_ms: self.since_ms(now_ms),
        }
    }
}

/// The letters read so far, and how the read went.
#[derive(Debug, Default)]
pub struct Read {
    /// Newest first once the read is done; in arrival order while it runs.
    pub letters: Vec<Letter>,
    /// Letters seen beyond [`MOST_LETTERS`] or [`MOST_BYTES`].
    pub not_kept: usize,
    /// About how much the kept letters take.
    pub kept_bytes: usize,
    pub reading: bool,
    pub finished_at: Option<SystemTime>,
    pub error: Option<String>,
}

impl Read {
    /// Count per value of `key`, largest first.
    pub fn counts(
        letters: &[&Letter],
        key: impl Fn(&Letter) -> Option<String>,
    ) -> Vec<(String, usize)> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for l in letters {
            *counts
                .entry(key(l).unwrap_or_else(|| "(none)".into()))
                .or_default() += 1;
        }
        let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        counts
    }
}

/// The console's copy of the DLQ.
#[derive(Debug, Default)]
pub struct Letters {
    read: RwLock<Read>,
    /// A read is asked for and has not begun: asking again adds none.
    pending: std::sync::atomic::AtomicBool,
}

impl Letters {
    /// Runs `f` on what has been read.
    pub fn with<T>(&self, f: impl FnOnce(&Read) -> T) -> T {
        f(&self.read.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn change(&self, f: impl FnOnce(&mut Read)) {
        f(&mut self.read.write().unwrap_or_else(|e| e.into_inner()))
    }

    /// Fills the copy with `messages` at once, as a finished read would
    /// (for `make bench`).
    pub fn fill(&self, messages: &[Message]) {
        self.change(|r| *r = Read::default());
        self.keep(messages);
        self.finish(Ok(()));
    }

    fn keep(&self, batch: &[Message]) {
        self.change(|r| {
            for m in batch {
                let letter = Letter::of(m);
                let size = letter.size();
                if r.letters.len() < MOST_LETTERS && r.kept_bytes + size <= MOST_BYTES {
                    r.kept_bytes += size;
                    r.letters.push(letter);
                } else {
                    r.not_kept += 1;
                }
            }
        })
    }

    fn finish(&self, result: Result<(), crate::queue::QueueError>) {
        self.change(|r| {
            r.letters
                .sort_by_key(|l| std::cmp::Reverse(l.dead_lettered_ms));
            r.reading = false;
            r.finished_at = Some(SystemTime::now());
            r.error = result.err().map(|e| e.to_string());
        });
    }

    /// Reads the DLQ again from the start (the caller holds the walk).
    pub async fn read(&self, queues: &Queues, dlq_url: &str) {
        self.change(|r| {
            *r = Read {
                reading: true,
                ..Read::default()
            }
        });
        let result = dlq::read_each(queues, dlq_url, usize::MAX, |batch| self.keep(batch)).await;
        self.finish(result);
    }
}

/// Now, in ms since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Reads `letters` again in the background, after any walk in progress;
/// a read already waiting to begin serves this call too.
pub fn read_again(console: Arc<super::Console>) {
    use std::sync::atomic::Ordering;
    if console.letters.pending.swap(true, Ordering::AcqRel) {
        return;
    }
    tokio::spawn(async move {
        let _walk = console.walk.lock().await;
        console.letters.pending.store(false, Ordering::Release);
        console
            .letters
            .read(&console.queues, &console.dlq_url)
            .await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_letter_shows_its_request_with_credentials_masked() {
        let body = serde_json::json!({
            "id": "order-42",
            "destinationUrl": "https://api.partner.com/v1/orders?token=s3cr3t",
            "request": {
                "method": "POST",
                "headers": {"Authorization": "Bearer s3cr3t", "content-type": "application/json",
                            "x-api-key": ["s3cr3t", "s3cr3t2"]},
                "body": "{\"order\":42}"
            }
        });
        let m = Message::builder()
            .message_id("sqs-1")
            .body(body.to_string())
            .build();
        let l = Letter::of(&m);
        assert_eq!(l.id.as_deref(), Some("order-42"));
        assert_eq!(l.host.as_deref(), Some("api.partner.com"));
        assert_eq!(l.method.as_deref(), Some("POST"));
        assert_eq!(l.preview, "{\"order\":42}");
        let shown = format!("{:?}", l);
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert_eq!(l.headers.len(), 4);
    }

    #[test]
    fn a_letter_is_small_whatever_it_holds() {
        let headers: serde_json::Map<String, Value> = (0..5000)
            .map(|i| (format!("x-h{i}"), Value::String("v".repeat(1000))))
            .collect();
        let body = serde_json::json!({
            "id": "i".repeat(100_000),
            "destinationUrl": format!("https://a.com/{}", "p".repeat(900_000)),
            "request": {"method": "POST", "headers": headers, "body": "b".repeat(900_000)},
        });
        let m = Message::builder()
            .message_id("sqs-1")
            .body(body.to_string())
            .build();
        let l = Letter::of(&m);
        let kept: usize = l
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum::<usize>()
            + l.id.as_ref().map_or(0, String::len)
            + l.url.as_ref().map_or(0, String::len)
            + l.preview.len();
        assert!(kept < 40_000, "{kept} bytes kept");
        assert_eq!(l.headers.len(), MOST_HEADERS + 1);
    }

    #[test]
    fn a_letter_that_is_not_a_retry_message_shows_no_credential() {
        let typo = serde_json::json!({"destinationURL": "https://a.com",
            "request": {"headers": {"Authorization": "Bearer s3cr3t"}}});
        let m = Message::builder()
            .message_id("1")
            .body(typo.to_string())
            .build();
        assert!(!Letter::of(&m).preview.contains("s3cr3t"));
        let text = "Authorization: Bearer s3cr3t and not JSON";
        let m = Message::builder().message_id("2").body(text).build();
        assert!(!Letter::of(&m).preview.contains("s3cr3t"));
        let plain = Message::builder().message_id("3").body("just text").build();
        assert_eq!(Letter::of(&plain).preview, "just text");
    }

    #[test]
    fn a_long_body_is_cut_at_a_character() {
        let long = "é".repeat(2000);
        let p = preview(&long);
        assert!(
            p.len() < 1100 && p.ends_with("(4000 bytes in all)"),
            "{}",
            p.len()
        );
    }
}
