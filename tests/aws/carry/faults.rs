//! Carry-over under faults (spec §12.5): the regressions of its adversarial
//! review. A far `notBefore`, a late first receive, deferrals before a carry,
//! and a copy the carry attribute would make too large.

use std::time::{Duration, Instant, SystemTime};

use aws_sdk_sqs::types::MessageSystemAttributeName;
use wiremock::ResponseTemplate;

use super::*;

/// A copy whose `notBefore` lies far ahead (a processor whose clock jumped
/// forward, or a hostile producer) is not hidden for ever: first sent two
/// days ago with `MAX_AGE_SECONDS` one day, and `expiresAt` passed, it is
/// dead-lettered `expired` (review finding F1, a loop).
#[tokio::test]
async fn a_far_next_try_does_not_outlive_max_age_or_expires_at() {
    let dest = never_called().await;
    let (sqs, q, dlq, p) = with_dlq("carry-far-next", &[("MAX_AGE_SECONDS", "86400")]).await;
    let now = epoch_ms(SystemTime::now());
    let carry = serde_json::json!({"attempts": 1, "firstSent": now - 2 * 86_400_000,
        "notBefore": now + 10 * 365 * 86_400_000u64, "originalMessageId": "old"});
    send_with(
        &sqs,
        &q,
        &message(
            "loop-1",
            &dest.uri(),
            serde_json::json!({"expiresAt": "2020-01-01T00:00:00Z"}),
        ),
        &[("RetryqCarry", carry.to_string())],
    )
    .await;
    let letters = [the_letter(&p, &sqs, &q, &dlq).await];
    assert_eq!(
        attr(&letters[0], "FailureReason").as_deref(),
        Some("expired")
    );
    assert_eq!(
        attr(&letters[0], "OriginalMessageId").as_deref(),
        Some("old")
    );
    dest.verify().await;
}

/// Every receive of a copy counts unless it came before its `notBefore`
/// (known from `ApproximateFirstReceiveTimestamp`): a copy delayed past
/// 900 s whose first receive is already late still counts it. Sent 1000 s
/// ago, `notBefore` 50 s ago, 1 attempt carried, `MAX_ATTEMPTS` 3: at most
/// 2 more requests (review finding F2, a repeat).
#[tokio::test]
async fn a_copy_received_late_counts_every_receive() {
    let dest = serving(ResponseTemplate::new(503)).await;
    let (sqs, q, dlq, p) = with_dlq(
        "carry-early",
        &[
            ("MAX_ATTEMPTS", "3"),
            ("BACKOFF_BASE_SECONDS", "1"),
            ("BACKOFF_MAX_SECONDS", "1"),
        ],
    )
    .await;
    let now = SystemTime::now();
    let sent = now - Duration::from_secs(1000);
    let carry = serde_json::json!({"attempts": 1, "firstSent": epoch_ms(sent),
        "notBefore": epoch_ms(now) - 50_000, "originalMessageId": "first"});
    send_with(
        &sqs,
        &q,
        &message("late-1", &dest.uri(), serde_json::json!({})),
        &[("RetryqCarry", carry.to_string())],
    )
    .await;
    let started = Instant::now();
    let mut letters = Vec::new();
    while letters.is_empty()
        && started.elapsed() < Duration::from_secs(40)
        && dest.received_requests().await.unwrap().len() <= 6
    {
        let mut received = receive_n_hidden_for(&sqs, &q, 1, 1, Duration::from_secs(3)).await;
        for m in &mut received {
            // As SQS reports it for a copy sent 1000 s ago.
            m.attributes.as_mut().unwrap().insert(
                MessageSystemAttributeName::SentTimestamp,
                epoch_ms(sent).to_string(),
            );
        }
        if !received.is_empty() {
            invoke_within(&p, &sqs, &q, &received, 30).await;
        }
        letters = drain(&sqs, &dlq).await;
    }
    let n = dest.received_requests().await.unwrap().len();
    eprintln!(
        "requests to the copy: {n}; letter AttemptCount {:?}",
        letters.first().and_then(|l| attr(l, "AttemptCount"))
    );
    assert_eq!(
        n, 2,
        "1 attempt before + this copy's requests must stay within MAX_ATTEMPTS=3"
    );
}

/// With a ledger, receives refused by an open breaker use up no attempt
/// (§9), also when such a record is carried: its `attempts` come from the
/// ledger, not from its receive count (review finding F5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_receives_do_not_become_attempts_when_carried() {
    let sqs = sqs();
    let table = crate::fleet::state_table().await;
    let redrive_dlq = queue(&sqs, "carry-defer-redrive").await;
    let policy = format!(
        "{{\"deadLetterTargetArn\":\"{}\",\"maxReceiveCount\":\"4\"}}",
        redrive_dlq.arn
    );
    let q = queue_with(&sqs, "carry-defer", &[("RedrivePolicy", &policy)]).await;
    let dlq = queue(&sqs, "carry-defer-dlq").await;
    let dest = crate::destination::Destination::start(Duration::ZERO).await;
    let p = processor(&[
        ("DLQ_URL", dlq.url.as_str()),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("STATE_TABLE", table.as_str()),
        ("BACKOFF_BASE_SECONDS", "1"),
        ("BACKOFF_MAX_SECONDS", "1"),
        ("MAX_ATTEMPTS", "3"),
        (
            "DESTINATION_POLICIES",
            r#"{"127.0.0.1": {"breaker": {"threshold": 1, "cooldownSeconds": 15}}}"#,
        ),
    ]);
    send(
        &sqs,
        &q,
        &message("opener", &dest.url("/down/opener"), serde_json::json!({})),
    )
    .await;
    let m = receive_n(&sqs, &q, 1, Duration::from_secs(10)).await;
    let opener = m[0].receipt_handle.clone().unwrap();
    invoke(&p, &sqs, &q, &m).await;
    sqs.delete_message()
        .queue_url(&q.url)
        .receipt_handle(opener)
        .send()
        .await
        .unwrap();
    assert_eq!(dest.requests(), 1);

    send(
        &sqs,
        &q,
        &message("victim", &dest.url("/down/victim"), serde_json::json!({})),
    )
    .await;
    for receive in 1..=3 {
        let m = receive_n(&sqs, &q, 1, Duration::from_secs(10)).await;
        assert_eq!(m.len(), 1);
        let handle = m[0].receipt_handle.clone().unwrap();
        let failed = failures(&invoke(&p, &sqs, &q, &m).await);
        eprintln!("receive {receive}: unacknowledged {}", failed.len());
        if !failed.is_empty() {
            sqs.change_message_visibility()
                .queue_url(&q.url)
                .receipt_handle(handle)
                .visibility_timeout(0)
                .send()
                .await
                .unwrap();
        }
    }
    assert_eq!(dest.requests(), 1, "no request to the victim yet");
    // The carried copy (delayed until the cool-down ends).
    let copy = receive_n(&sqs, &q, 1, Duration::from_secs(30)).await;
    assert_eq!(copy.len(), 1, "a carried copy");
    let carry: serde_json::Value =
        serde_json::from_str(&attr(&copy[0], "RetryqCarry").expect("RetryqCarry")).unwrap();
    eprintln!("carry: {carry}");
    assert_eq!(
        carry["attempts"], 0,
        "no request was made to the victim: {carry}"
    );
}

/// Real SQS counts message attributes (name, type, value) in a message's
/// size; moto counts the body only. This interceptor applies SQS's rule to
/// SendMessage for queues whose URL contains "carry-size" (MaximumMessageSize
/// 1024 there).
#[derive(Debug)]
struct SqsSizeRule;
static REJECTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl aws_smithy_runtime_api::client::interceptors::Intercept for SqsSizeRule {
    fn name(&self) -> &'static str {
        "SqsSizeRule"
    }
    fn read_before_transmit(
        &self,
        context: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _components: &aws_sdk_sqs::config::RuntimeComponents,
        _cfg: &mut aws_sdk_sqs::config::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or_default();
        if !target.ends_with(".SendMessage") {
            return Ok(());
        }
        let Some(bytes) = context.request().body().bytes() else {
            return Ok(());
        };
        let v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
        if !v["QueueUrl"]
            .as_str()
            .unwrap_or_default()
            .contains("carry-size")
        {
            return Ok(());
        }
        let mut size = v["MessageBody"].as_str().unwrap_or_default().len();
        if let Some(attrs) = v["MessageAttributes"].as_object() {
            for (name, a) in attrs {
                size += name.len() + a["DataType"].as_str().unwrap_or_default().len();
                size += a["StringValue"].as_str().map_or(0, str::len);
                size += a["BinaryValue"].as_str().map_or(0, |b| b.len() * 3 / 4);
            }
        }
        if size > 1024 {
            REJECTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(format!(
                "InvalidParameterValue: message of {size} bytes > 1024 (attributes included)"
            )
            .into());
        }
        Ok(())
    }
}

/// A message that fits its queue (1000 bytes of a 1024-byte
/// `MaximumMessageSize`) but not with `RetryqCarry` added is not carried:
/// §8.1 stands for it, and it is dead-lettered before its retention would
/// delete it (review finding F6, a loss).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_too_large_for_its_carry_keeps_the_retention_rule() {
    let sqs = sqs();
    let source = queue_with(
        &sqs,
        "carry-size",
        &[
            ("MessageRetentionPeriod", "60"),
            ("MaximumMessageSize", "1024"),
        ],
    )
    .await;
    let dlq = queue(&sqs, "carry-sizedlq").await;
    let strict = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_sqs::config::Region::new(REGION))
            .endpoint_url(endpoint())
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "test", "test", None, None, "tests",
            ))
            .interceptor(SqsSizeRule)
            .build(),
    );
    let p = std::sync::Arc::new(
        retryq::process::Processor::new(
            config(&[
                ("DLQ_URL", &dlq.url),
                ("ALLOW_PRIVATE_DESTINATIONS", "true"),
                ("MAX_ATTEMPTS", "100"),
                ("RETENTION_MARGIN_SECONDS", "40"),
            ]),
            strict,
            None,
        )
        .unwrap(),
    );
    let dest = serving(ResponseTemplate::new(503).insert_header("retry-after", "2")).await;
    let base = message(
        "big-1",
        &dest.uri(),
        serde_json::json!({"metadata": {"pad": ""}}),
    );
    let pad = "x".repeat(1000 - base.len());
    let body = message(
        "big-1",
        &dest.uri(),
        serde_json::json!({"metadata": {"pad": pad}}),
    );
    assert_eq!(body.len(), 1000);
    send(&sqs, &source, &body).await;
    let sent = Instant::now();
    let mut letters = Vec::new();
    let mut receives = 0;
    let mut last = Instant::now();
    while letters.is_empty() && sent.elapsed() < Duration::from_secs(80) {
        let received = receive_n_hidden_for(&sqs, &source, 1, 1, Duration::from_secs(3)).await;
        if !received.is_empty() {
            receives += 1;
            last = Instant::now();
            invoke_within(&p, &sqs, &source, &received, 30).await;
        }
        letters.extend(drain(&sqs, &dlq).await);
    }
    let quiet = last.elapsed();
    eprintln!(
        "receives {receives}, requests {}, carries refused for size {}, letters {}, nothing received for the last {quiet:?} (retention 60 s)",
        dest.received_requests().await.unwrap().len(),
        REJECTED.load(std::sync::atomic::Ordering::Relaxed),
        letters.len()
    );
    assert!(
        !letters.is_empty() || quiet < Duration::from_secs(10),
        "the message is gone: no DLQ copy, no carried copy"
    );
}

/// A carried record whose acknowledgement is lost comes again (review
/// finding F4). Its copy was marked in the table when sent, so the second
/// handling acknowledges it without a second copy: one chain of copies,
/// not two that would each spend the remaining attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_acknowledgement_after_a_carry_sends_no_second_copy() {
    // Every ledger write refused: each failed attempt is carried over.
    let refuse = RefuseLedger::refusing("BatchWriteItem", u32::MAX);
    let (sqs, q, _dlq, p, _) = with_refusing_ledger("carry-lost-ack", refuse, false).await;
    let dest = serving(ResponseTemplate::new(503)).await;
    send(
        &sqs,
        &q,
        &message("lost-ack", &dest.uri(), serde_json::json!({})),
    )
    .await;
    let first = receive_n_hidden_for(&sqs, &q, 1, 1, Duration::from_secs(5)).await;
    assert_eq!(first.len(), 1);
    handle_unacknowledged(p.clone(), &q, &first).await;
    // The original comes back (its answer was lost), beside its copy.
    let both = receive_n_hidden_for(&sqs, &q, 2, 60, Duration::from_secs(10)).await;
    assert_eq!(both.len(), 2, "the original and its copy");
    let original: Vec<_> = both
        .into_iter()
        .filter(|m| m.message_id == first[0].message_id)
        .collect();
    assert_eq!(original.len(), 1, "the original came again");
    let requests = dest.received_requests().await.unwrap().len();
    invoke(&p, &sqs, &q, &original).await;
    // Its copy was sent: the record comes again only to be acknowledged,
    // without another request (second review, R3).
    assert_eq!(dest.received_requests().await.unwrap().len(), requests);
    // The first copy is hidden: anything received now (a copy is delayed
    // by its backoff, 1 s) would be a second one.
    let again = receive_n_hidden_for(&sqs, &q, 1, 60, Duration::from_secs(4)).await;
    assert!(again.is_empty(), "a second copy: {again:?}");
}

/// §12.6 for a record that cannot be carried over (review finding F3): on
/// a FIFO queue a failed ledger write cannot hand the count to a copy, so
/// the attempt is counted in the ledger before it is made. Every other
/// `BatchWriteItem` refused (each attempt's entry after it): with
/// `MAX_ATTEMPTS=3` the destination still gets 3 requests, and the
/// message is dead-lettered `attempts-exhausted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_attempt_counts_when_its_ledger_write_fails_after_it() {
    let refuse = RefuseLedger::refusing_every_other("BatchWriteItem");
    let (sqs, q, dlq, p, _) = with_refusing_ledger("carry-fifo-count", refuse, true).await;
    let dest = serving(ResponseTemplate::new(503)).await;
    sqs.send_message()
        .queue_url(&q.url)
        .message_body(message("fifo-count", &dest.uri(), serde_json::json!({})))
        .message_group_id("g")
        .send()
        .await
        .unwrap();

    let limits = (Duration::from_secs(60), 6);
    let letters = until_a_letter((&sqs, &q, &dlq), &p, &dest, limits, |_| {}).await;
    assert_exhausted_after_three(dest.received_requests().await.unwrap().len(), &letters);
}

/// A copy received a little before its `notBefore` (SQS and the
/// processor's clocks differ) but attempted after it: every receive that
/// made a request counts (second review, finding 3). One attempt carried,
/// `MAX_ATTEMPTS=3`: the copy gets 2 requests, and the letter says 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_attempted_on_an_early_receive_counts_every_receive() {
    let dest = serving(ResponseTemplate::new(503)).await;
    let (sqs, q, dlq, p) = with_dlq(
        "carry-early-attempt",
        &[
            ("MAX_ATTEMPTS", "3"),
            ("BACKOFF_BASE_SECONDS", "1"),
            ("BACKOFF_MAX_SECONDS", "1"),
        ],
    )
    .await;
    let now = epoch_ms(SystemTime::now());
    let carry = serde_json::json!({"attempts": 1, "firstSent": now - 60_000, "notBefore": now + 1_500, "originalMessageId": "first"});
    let body = message("early-attempt", &dest.uri(), serde_json::json!({}));
    send_carried(&sqs, &q, &body, &carry).await;
    // Received before `notBefore`, handled after it.
    let first = receive_n_hidden_for(&sqs, &q, 1, 5, Duration::from_secs(3)).await;
    assert_eq!(first.len(), 1);
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    invoke_within(&p, &sqs, &q, &first, 30).await;
    assert_eq!(dest.received_requests().await.unwrap().len(), 1);

    let limits = (Duration::from_secs(30), 4);
    let letters = until_a_letter((&sqs, &q, &dlq), &p, &dest, limits, |_| {}).await;
    assert_eq!(dest.received_requests().await.unwrap().len(), 2);
    assert_eq!(letters.len(), 1, "dead-lettered");
    assert_eq!(attr(&letters[0], "AttemptCount").as_deref(), Some("3"));
}

/// The early-receive rule allows for clocks that differ (second review,
/// R4): a copy carried with a 900 s wait, attempted on its first receive
/// by a processor 3 s ahead of SQS, counts that receive. One attempt
/// carried, `MAX_ATTEMPTS=3`: the copy gets 2 requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_receive_that_was_attempted_counts_with_a_clock_ahead() {
    let dest = serving(ResponseTemplate::new(503)).await;
    let (sqs, q, dlq, p) = with_dlq(
        "carry-clock-ahead",
        &[
            ("MAX_ATTEMPTS", "3"),
            ("BACKOFF_BASE_SECONDS", "1"),
            ("BACKOFF_MAX_SECONDS", "1"),
        ],
    )
    .await;
    let not_before = SystemTime::now() + Duration::from_millis(1_500);
    // SQS's clock 3 s behind: it sent the copy 903 s before `notBefore`.
    let sent = not_before - Duration::from_secs(903);
    let carry = serde_json::json!({"attempts": 1, "firstSent": epoch_ms(sent), "notBefore": epoch_ms(not_before), "originalMessageId": "first"});
    send_carried(
        &sqs,
        &q,
        &message("clock-ahead", &dest.uri(), serde_json::json!({})),
        &carry,
    )
    .await;
    let as_sent = |ms: &mut Vec<aws_sdk_sqs::types::Message>| {
        for m in ms.iter_mut() {
            m.attributes.as_mut().unwrap().insert(
                MessageSystemAttributeName::SentTimestamp,
                epoch_ms(sent).to_string(),
            );
        }
    };
    let mut first = receive_n_hidden_for(&sqs, &q, 1, 5, Duration::from_secs(3)).await;
    as_sent(&mut first);
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    invoke_within(&p, &sqs, &q, &first, 30).await;
    assert_eq!(
        dest.received_requests().await.unwrap().len(),
        1,
        "attempted on its first receive"
    );

    let limits = (Duration::from_secs(30), 4);
    let letters = until_a_letter((&sqs, &q, &dlq), &p, &dest, limits, as_sent).await;
    assert_eq!(dest.received_requests().await.unwrap().len(), 2);
    assert_eq!(attr(&letters[0], "AttemptCount").as_deref(), Some("3"));
}
