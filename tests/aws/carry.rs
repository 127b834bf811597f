//! Carry-over (spec §12.5) against moto's SQS: receives are not attempts all
//! the way to the redrive, a carried copy continues its count and its age,
//! and one received before its next try only hides again.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wiremock::matchers::any;
use wiremock::{Mock, ResponseTemplate};

use crate::common::*;

/// Sends `body` with these String message attributes; the message's id.
async fn send_with(
    sqs: &aws_sdk_sqs::Client,
    q: &TestQueue,
    body: &str,
    attributes: &[(&str, String)],
) -> String {
    let mut send = sqs.send_message().queue_url(&q.url).message_body(body);
    for (name, value) in attributes {
        let value = aws_sdk_sqs::types::MessageAttributeValue::builder()
            .data_type("String")
            .string_value(value)
            .build()
            .unwrap();
        send = send.message_attributes(*name, value);
    }
    send.send().await.unwrap().message_id.unwrap()
}

/// Sends `body` with a `RetryqCarry` attribute; the message's id.
async fn send_carried(
    sqs: &aws_sdk_sqs::Client,
    q: &TestQueue,
    body: &str,
    carry: &serde_json::Value,
) -> String {
    send_with(sqs, q, body, &[("RetryqCarry", carry.to_string())]).await
}

fn epoch_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Handles the one message in `q`, which must be dead-lettered: its letter.
async fn the_letter(
    p: &std::sync::Arc<retryq::process::Processor>,
    sqs: &aws_sdk_sqs::Client,
    q: &TestQueue,
    dlq: &TestQueue,
) -> aws_sdk_sqs::types::Message {
    let received = receive_n(sqs, q, 1, Duration::from_secs(5)).await;
    let failed = failures(&invoke_within(p, sqs, q, &received, 30).await);
    assert!(failed.is_empty(), "dead-lettered, not retried: {failed:?}");
    let mut letters = drain(sqs, dlq).await;
    assert_eq!(letters.len(), 1, "one letter");
    letters.remove(0)
}

/// An outage longer than `maxReceiveCount` receives: with the redrive
/// policy's `maxReceiveCount` at 3 and `MAX_ATTEMPTS` 10, a destination that
/// fails five times is carried over before SQS would move the message to
/// its DLQ, and delivered on the sixth attempt. The redrive DLQ stays
/// empty; each copy names the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_max_receive_count_ends_delivered_and_the_redrive_dlq_empty() {
    let sqs = sqs();
    let redrive_dlq = queue(&sqs, "carry-redrive-dlq").await;
    let policy = format!(
        "{{\"deadLetterTargetArn\":\"{}\",\"maxReceiveCount\":\"3\"}}",
        redrive_dlq.arn
    );
    let q = queue_with(&sqs, "carry-redrive", &[("RedrivePolicy", &policy)]).await;
    let dlq = queue(&sqs, "carry-dlq").await;
    let p = processor(&[
        ("DLQ_URL", &dlq.url),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("MAX_ATTEMPTS", "10"),
        ("BACKOFF_BASE_SECONDS", "1"),
        ("BACKOFF_MAX_SECONDS", "1"),
    ]);
    let dest = wiremock::MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(5)
        .mount(&dest)
        .await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&dest)
        .await;
    let id = send(
        &sqs,
        &q,
        &message("outage-1", &dest.uri(), serde_json::json!({})),
    )
    .await;

    let started = Instant::now();
    let (mut carries, mut delivered) = (Vec::new(), false);
    while !delivered && started.elapsed() < Duration::from_secs(60) {
        let received = receive_n_hidden_for(&sqs, &q, 1, 1, Duration::from_secs(5)).await;
        if let Some(m) = received.first() {
            carries.extend(attr(m, "RetryqCarry"));
            let failed = failures(&invoke_within(&p, &sqs, &q, &received, 30).await);
            let requests = dest.received_requests().await.unwrap();
            delivered = failed.is_empty() && requests.len() == 6;
        }
    }

    assert!(
        delivered,
        "delivered on the sixth attempt: carries {carries:?}"
    );
    assert_eq!(dest.received_requests().await.unwrap().len(), 6);
    assert!(carries.len() >= 2, "carried more than once: {carries:?}");
    let last: serde_json::Value = serde_json::from_str(carries.last().unwrap()).unwrap();
    assert_eq!(last["originalMessageId"], id.as_str());
    assert_eq!(depth(&sqs, &redrive_dlq).await, (0, 0), "SQS moved nothing");
    assert_eq!(depth(&sqs, &dlq).await, (0, 0));
}

/// A carried copy continues its count: with 4 attempts carried and
/// `MAX_ATTEMPTS` 5, one more failure is the last, and its letter says
/// attempt 5 and names the first copy.
#[tokio::test]
async fn a_carried_copy_continues_its_attempt_count() {
    let dest = expecting(503, 1).await;
    let (sqs, q, dlq, p) = with_dlq("carry-count", &[("MAX_ATTEMPTS", "5")]).await;
    let now = epoch_ms(SystemTime::now());
    let carry = serde_json::json!({"attempts": 4, "firstSent": now - 60_000, "notBefore": now - 1_000, "originalMessageId": "first-copy"});
    send_carried(
        &sqs,
        &q,
        &message("count-1", &dest.uri(), serde_json::json!({})),
        &carry,
    )
    .await;

    let letter = &the_letter(&p, &sqs, &q, &dlq).await;
    assert_eq!(
        attr(letter, "FailureReason").as_deref(),
        Some("attempts-exhausted")
    );
    assert_eq!(attr(letter, "AttemptCount").as_deref(), Some("5"));
    assert_eq!(
        attr(letter, "OriginalMessageId").as_deref(),
        Some("first-copy")
    );
    dest.verify().await;
}

/// A carried copy continues its age: first sent two days ago, with
/// `MAX_AGE_SECONDS` one day, it is dead-lettered `expired` without an
/// attempt.
#[tokio::test]
async fn a_carried_copy_older_than_max_age_is_expired() {
    let dest = never_called().await;
    let (sqs, q, dlq, p) = with_dlq("carry-age", &[("MAX_AGE_SECONDS", "86400")]).await;
    let now = epoch_ms(SystemTime::now());
    let carry = serde_json::json!({"attempts": 1, "firstSent": now - 2 * 86_400_000, "notBefore": now - 1_000, "originalMessageId": "old"});
    send_carried(
        &sqs,
        &q,
        &message("age-1", &dest.uri(), serde_json::json!({})),
        &carry,
    )
    .await;

    let letter = &the_letter(&p, &sqs, &q, &dlq).await;
    assert_eq!(attr(letter, "FailureReason").as_deref(), Some("expired"));
    assert!(attr(letter, "LastError")
        .unwrap()
        .contains("MAX_AGE_SECONDS"));
    dest.verify().await;
}

/// A carried copy received before its `notBefore` (SQS delays it at most
/// 900 s) is hidden again until then: no request, no attempt used.
#[tokio::test]
async fn a_copy_received_before_its_next_try_only_hides_again() {
    let dest = never_called().await;
    let (sqs, q, dlq, p) = with_dlq("carry-early", &[]).await;
    let now = epoch_ms(SystemTime::now());
    let carry = serde_json::json!({"attempts": 2, "firstSent": now, "notBefore": now + 60_000, "originalMessageId": "early"});
    send_carried(
        &sqs,
        &q,
        &message("early-1", &dest.uri(), serde_json::json!({})),
        &carry,
    )
    .await;

    let received = receive_n(&sqs, &q, 1, Duration::from_secs(5)).await;
    let outcomes = outcomes_of(&p, &sqs, &q, &dlq, &received, 30).await;

    assert_eq!(outcomes.retried.len(), 1, "{outcomes:?}");
    assert!(
        receive(&sqs, &q, 1).await.is_empty(),
        "hidden until its next try"
    );
    dest.verify().await;
}

/// Refuses the first `refusals` calls of one DynamoDB operation (the
/// ledger's `BatchWriteItem` or `BatchGetItem`), or every other one, and
/// lets the rest through.
#[derive(Debug)]
struct RefuseLedger {
    operation: &'static str,
    refusals: std::sync::atomic::AtomicU32,
    every_other: Option<std::sync::atomic::AtomicU32>,
}

impl RefuseLedger {
    fn refusing(operation: &'static str, refusals: u32) -> RefuseLedger {
        RefuseLedger {
            operation,
            refusals: refusals.into(),
            every_other: None,
        }
    }

    /// Lets the first call through, refuses the second, and so on.
    fn refusing_every_other(operation: &'static str) -> RefuseLedger {
        RefuseLedger {
            every_other: Some(0.into()),
            ..RefuseLedger::refusing(operation, 0)
        }
    }
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for RefuseLedger {
    fn name(&self) -> &'static str {
        "RefuseLedger"
    }

    fn read_before_transmit(
        &self,
        context: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _components: &aws_sdk_dynamodb::config::RuntimeComponents,
        _cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        use std::sync::atomic::Ordering;
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or_default();
        let alternate =
            |calls: &std::sync::atomic::AtomicU32| calls.fetch_add(1, Ordering::SeqCst) % 2 == 1;
        let refuse = target.ends_with(self.operation)
            && match &self.every_other {
                Some(calls) => alternate(calls),
                None => self
                    .refusals
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok(),
            };
        if refuse {
            return Err(format!("the ledger refuses {} (test)", self.operation).into());
        }
        Ok(())
    }
}

/// A queue, its DLQ, and a processor with `MAX_ATTEMPTS=3` and a state
/// table whose client `refuse` intercepts; the table's name.
async fn with_refusing_ledger(
    name: &str,
    refuse: RefuseLedger,
    fifo: bool,
) -> (
    aws_sdk_sqs::Client,
    TestQueue,
    TestQueue,
    std::sync::Arc<retryq::process::Processor>,
    String,
) {
    let table = crate::fleet::state_table().await;
    let (sqs, mut q, dlq, _) = with_dlq(name, &[]).await;
    if fifo {
        q = crate::fifo::fifo_queue(&sqs, name).await;
    }
    let config = config(&[
        ("DLQ_URL", dlq.url.as_str()),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("STATE_TABLE", table.as_str()),
        ("MAX_ATTEMPTS", "3"),
        ("BACKOFF_BASE_SECONDS", "1"),
        ("BACKOFF_MAX_SECONDS", "1"),
    ]);
    let dynamodb = aws_sdk_dynamodb::Client::from_conf(
        crate::fleet::dynamodb()
            .config()
            .to_builder()
            .interceptor(refuse)
            .build(),
    );
    let fleet = retryq::fleet::FleetState::new(config.state.clone().unwrap(), dynamodb);
    let p = std::sync::Arc::new(
        retryq::process::Processor::new(config, sqs.clone(), None)
            .unwrap()
            .with_fleet(fleet),
    );
    (sqs, q, dlq, p, table)
}

/// Receives and handles the one message of `q` (hidden a second at each
/// receive, and `adjust`ed to what SQS would report) until the DLQ holds
/// its letter, `limit` passes, or the destination got more than `most`
/// requests: the letters.
async fn until_a_letter(
    (sqs, q, dlq): (&aws_sdk_sqs::Client, &TestQueue, &TestQueue),
    p: &std::sync::Arc<retryq::process::Processor>,
    dest: &wiremock::MockServer,
    (limit, most): (Duration, usize),
    adjust: impl Fn(&mut Vec<aws_sdk_sqs::types::Message>),
) -> Vec<aws_sdk_sqs::types::Message> {
    let started = Instant::now();
    let mut letters = Vec::new();
    while letters.is_empty()
        && started.elapsed() < limit
        && dest.received_requests().await.unwrap().len() <= most
    {
        let mut received = receive_n_hidden_for(sqs, q, 1, 1, Duration::from_secs(3)).await;
        adjust(&mut received);
        if !received.is_empty() {
            invoke_within(p, sqs, q, &received, 30).await;
        }
        letters = drain(sqs, dlq).await;
    }
    letters
}

/// With `MAX_ATTEMPTS=3`, a destination that always fails and a table
/// whose client `refuse` intercepts: the requests the destination got, and
/// the DLQ's letters, and the table.
async fn attempts_with_a_refusing_ledger(
    name: &str,
    refuse: RefuseLedger,
) -> (usize, Vec<aws_sdk_sqs::types::Message>, String) {
    let (sqs, q, dlq, p, table) = with_refusing_ledger(name, refuse, false).await;
    let dest = serving(ResponseTemplate::new(503)).await;
    send(&sqs, &q, &message(name, &dest.uri(), serde_json::json!({}))).await;

    let limits = (Duration::from_secs(60), 6);
    let letters = until_a_letter((&sqs, &q, &dlq), &p, &dest, limits, |_| {}).await;
    (
        dest.received_requests().await.unwrap().len(),
        letters,
        table,
    )
}

fn assert_exhausted_after_three(requests: usize, letters: &[aws_sdk_sqs::types::Message]) {
    assert_eq!(requests, 3);
    assert_eq!(letters.len(), 1, "dead-lettered");
    assert_eq!(
        attr(&letters[0], "FailureReason").as_deref(),
        Some("attempts-exhausted")
    );
    assert_eq!(attr(&letters[0], "AttemptCount").as_deref(), Some("3"));
}

/// §12.6: an attempt counts even when its ledger write fails. A table that
/// refuses every write: each failed write carries the record over with its
/// count, so the destination gets 3 requests and the message is
/// dead-lettered `attempts-exhausted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_counts_when_its_ledger_write_fails() {
    let refuse = RefuseLedger::refusing("BatchWriteItem", u32::MAX);
    let (requests, letters, _) = attempts_with_a_refusing_ledger("carry-ledger", refuse).await;
    assert_exhausted_after_three(requests, &letters);
}

/// §12.6, found by the fleet simulation: an attempt made while the ledger
/// could not be read (counted by receives) still counts once the table
/// answers again. One `BatchGetItem` refused (the second receive's):
/// without an entry for that attempt, the third receive would count from
/// the one failure recorded before and the destination would get a 4th
/// request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_counts_when_its_ledger_read_fails() {
    let refuse = RefuseLedger::refusing("BatchGetItem", 1);
    let (requests, letters, table) = attempts_with_a_refusing_ledger("carry-unread", refuse).await;
    assert_exhausted_after_three(requests, &letters);
    // The unread attempt's record was carried over: `retryq attempts` shows
    // the last attempt made on the carried copy, naming the first.
    let rows = crate::fleet::attempts(&table, "carry-unread").await;
    let last = rows.last().expect("attempts recorded");
    let first_id = rows[0]["sqsMessageId"].as_str().unwrap();
    assert_eq!(last["carriedFrom"].as_str(), Some(first_id), "{rows:#?}");
    assert_eq!(last["attempt"], 3, "{rows:#?}");
}

/// A `RetryqCarry` whose `notBefore` lies past the message's age (a broken
/// or hostile attribute) does not hide it for ever: past `MAX_AGE_SECONDS`
/// from its first copy it is dead-lettered `expired`.
#[tokio::test]
async fn a_next_try_beyond_the_age_limit_does_not_hide_a_message_for_ever() {
    let dest = never_called().await;
    let (sqs, q, dlq, p) = with_dlq("carry-far", &[("MAX_AGE_SECONDS", "86400")]).await;
    let now = epoch_ms(SystemTime::now());
    let far = now + 10 * 365 * 86_400_000;
    let carry = serde_json::json!({"attempts": 1, "firstSent": now - 2 * 86_400_000, "notBefore": far, "originalMessageId": "far"});
    send_carried(
        &sqs,
        &q,
        &message("far-1", &dest.uri(), serde_json::json!({})),
        &carry,
    )
    .await;

    let letters = [the_letter(&p, &sqs, &q, &dlq).await];
    assert_eq!(
        attr(&letters[0], "FailureReason").as_deref(),
        Some("expired")
    );
    dest.verify().await;
}

mod faults;
