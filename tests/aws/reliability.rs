//! Nothing lost, nothing looping (spec §8), each rule against real
//! parts: the SQS and Secrets Manager APIs of the local moto server, real
//! HTTP destinations and token endpoints on loopback, and the worker's own
//! receive loop. Each test is one way a review lost or looped a message.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use base64::Engine as _;
use retryq::process::Disposition;
use wiremock::matchers::{any, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The handler, then the event source mapping's deletes; what it did not
/// acknowledge.
async fn invoke_failed(
    p: &Arc<retryq::process::Processor>,
    sqs: &aws_sdk_sqs::Client,
    q: &TestQueue,
    messages: &[aws_sdk_sqs::types::Message],
    secs: u64,
) -> Vec<String> {
    failures(&invoke_within(p, sqs, q, messages, secs).await)
}

/// The records of received messages, as the processor sees them.
fn records(
    q: &TestQueue,
    messages: &[aws_sdk_sqs::types::Message],
) -> Vec<retryq::process::Record> {
    lambda_records(messages, &q.arn)
}

/// A Retry Message of exactly `len` bytes (padded in `metadata`).
fn message_of_len(id: &str, url: &str, len: usize) -> String {
    let bare = message(id, url, serde_json::json!({"metadata": {"pad": ""}}));
    let pad = "p".repeat(len.checked_sub(bare.len()).expect("room for the message"));
    let body = message(id, url, serde_json::json!({"metadata": {"pad": pad}}));
    assert_eq!(body.len(), len);
    body
}

// 8.1 ------------------------------------------------------------------------

/// §12.5: retention is not a horizon. With a 60 s retention (margin 40 s:
/// no try may come more than 20 s after a copy was sent), a message whose
/// destination is down for 70 s is carried over into fresh copies (each
/// with `RetryqCarry` naming the first copy and the attempts so far) and
/// delivered once the destination is back: nothing dead-lettered, nothing
/// deleted by the retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_keeps_retrying_across_more_than_one_retention_period() {
    let sqs = sqs();
    let source = queue_with(&sqs, "retention", &[("MessageRetentionPeriod", "60")]).await;
    let dlq = queue(&sqs, "retention-dlq").await;
    let p = processor(&[
        ("DLQ_URL", &dlq.url),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("MAX_ATTEMPTS", "100"),
        ("RETENTION_MARGIN_SECONDS", "40"),
    ]);
    let dest = serving(ResponseTemplate::new(503).insert_header("retry-after", "2")).await;
    let sent = Instant::now();
    let id = send(
        &sqs,
        &source,
        &message("keep-me", &dest.uri(), serde_json::json!({})),
    )
    .await;

    let (mut carries, mut delivered, mut healed) = (Vec::new(), false, false);
    while !delivered && sent.elapsed() < Duration::from_secs(110) {
        if !healed && sent.elapsed() > Duration::from_secs(70) {
            dest.reset().await;
            Mock::given(any())
                .respond_with(ResponseTemplate::new(200))
                .mount(&dest)
                .await;
            healed = true;
        }
        let received = receive_n_hidden_for(&sqs, &source, 1, 1, Duration::from_secs(5)).await;
        if let Some(m) = received.first() {
            carries.extend(attr(m, "RetryqCarry"));
            let failed = invoke_failed(&p, &sqs, &source, &received, 30).await;
            delivered = healed && failed.is_empty();
        }
    }

    assert!(
        delivered,
        "delivered after the outage ({} carries)",
        carries.len()
    );
    assert!(!carries.is_empty(), "carried over at least once");
    let last: serde_json::Value = serde_json::from_str(carries.last().unwrap()).unwrap();
    assert_eq!(last["originalMessageId"], id.as_str());
    assert!(last["attempts"].as_u64().unwrap() >= 2, "{last}");
    assert_eq!(depth(&sqs, &dlq).await, (0, 0), "nothing dead-lettered");
    assert_eq!(depth(&sqs, &source).await, (0, 0));
}

/// §8.1 where carrying over cannot help (a FIFO queue: a copy would join
/// the end of its group): a retry that would outlive the retention is
/// dead-lettered `expired` while the message still exists.
#[tokio::test]
async fn on_a_fifo_queue_a_retry_that_would_outlive_the_retention_is_dead_lettered_not_lost() {
    // Retention 60 s, margin 40 s: no retry may end more than 20 s after the
    // message was sent. The destination asks for 2 s every time.
    let sqs = sqs();
    let source = crate::fifo::fifo_queue(&sqs, "retention").await;
    sqs.set_queue_attributes()
        .queue_url(&source.url)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::MessageRetentionPeriod,
            "60",
        )
        .send()
        .await
        .unwrap();
    let dlq = queue(&sqs, "retention-dlq").await;
    let p = processor(&[
        ("DLQ_URL", &dlq.url),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("MAX_ATTEMPTS", "50"),
        ("RETENTION_MARGIN_SECONDS", "40"),
    ]);
    let dest = serving(ResponseTemplate::new(503).insert_header("retry-after", "2")).await;
    let sent = Instant::now();
    let id = sqs
        .send_message()
        .queue_url(&source.url)
        .message_body(message("keep-me", &dest.uri(), serde_json::json!({})))
        .message_group_id("g")
        .send()
        .await
        .unwrap()
        .message_id
        .unwrap();

    let mut attempts = 0;
    let mut dead = Vec::new();
    while dead.is_empty() && attempts < 20 && sent.elapsed() < Duration::from_secs(40) {
        let received = receive_n_hidden_for(&sqs, &source, 1, 1, Duration::from_secs(5)).await;
        if !received.is_empty() {
            attempts += 1;
            invoke_failed(&p, &sqs, &source, &received, 30).await;
        }
        dead = receive(&sqs, &dlq, 60).await;
    }

    assert_eq!(
        dead.len(),
        1,
        "dead-lettered within the retention, not deleted by it"
    );
    let dead = &dead[0];
    assert_eq!(attr(dead, "OriginalMessageId"), Some(id));
    assert_eq!(attr(dead, "FailureReason").as_deref(), Some("expired"));
    let last_error = attr(dead, "LastError").unwrap();
    assert!(last_error.starts_with("retention"), "{last_error}");
    assert!(
        attempts >= 2,
        "retried while the retention allowed: {attempts} attempts"
    );
    assert_eq!(depth(&sqs, &source).await, (0, 0), "and acknowledged");
}

// 8.2 ------------------------------------------------------------------------

#[tokio::test]
async fn a_dlq_copy_drops_attributes_until_it_fits() {
    let sqs = sqs();
    let source = queue(&sqs, "fit").await;
    let dlq = queue_with(&sqs, "fit-dlq", &[("MaximumMessageSize", "1024")]).await;
    let p = processor(&[
        ("DLQ_URL", &dlq.url),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
    ]);
    let dest = answering(404).await;
    // Fits with FailureReason, OriginalMessageId and AttemptCount, not with
    // all six attributes.
    let body = message_of_len("near-limit", &dest.uri(), 880);
    let (id, received) = send_one(&sqs, &source, &body).await;

    let failed = invoke_failed(&p, &sqs, &source, &received, 30).await;

    assert!(
        failed.is_empty(),
        "acknowledged once its copy was in the DLQ"
    );
    let dead = receive_n(&sqs, &dlq, 1, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].body.as_deref(),
        Some(body.as_str()),
        "body byte for byte"
    );
    assert_eq!(
        attr(&dead[0], "FailureReason").as_deref(),
        Some("non-retryable")
    );
    assert_eq!(attr(&dead[0], "OriginalMessageId"), Some(id));
    assert_eq!(attr(&dead[0], "LastError"), None, "dropped first");
    assert_eq!(attr(&dead[0], "SourceQueueArn"), None, "dropped second");
    let kept: usize = dead[0].message_attributes.as_ref().map_or(0, |a| a.len());
    let size = body.len()
        + dead[0]
            .message_attributes
            .iter()
            .flatten()
            .map(|(k, v)| {
                k.len() + v.data_type.len() + v.string_value.as_deref().unwrap_or("").len()
            })
            .sum::<usize>();
    assert!(size <= 1024, "{size} bytes with {kept} attributes");
    assert_eq!(dest.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_record_too_large_for_the_dlq_is_left_in_its_queue_unattempted() {
    let sqs = sqs();
    let source = queue(&sqs, "too-big").await;
    let dlq = queue_with(&sqs, "too-big-dlq", &[("MaximumMessageSize", "1024")]).await;
    let p = processor(&[
        ("DLQ_URL", &dlq.url),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
    ]);
    let dest = never_called().await;
    let body = message_of_len("too-big", &dest.uri(), 1100);
    let id = send(&sqs, &source, &body).await;

    // Two receives: neither makes the (non-retryable) request.
    for _ in 0..2 {
        let received = receive_n_hidden_for(&sqs, &source, 1, 1, Duration::from_secs(10)).await;
        assert_eq!(received.len(), 1, "still in its source queue");
        let failed = invoke_failed(&p, &sqs, &source, &received, 30).await;
        assert_eq!(failed, std::slice::from_ref(&id), "not acknowledged");
    }
    assert!(receive(&sqs, &dlq, 1).await.is_empty());
    dest.verify().await;
}

#[tokio::test]
async fn a_non_retryable_request_is_not_sent_again_because_its_dead_letter_failed() {
    let sqs = sqs();
    let source = queue(&sqs, "dlq-down").await;
    let missing_dlq = format!(
        "{}/{ACCOUNT}/no-such-dlq-{}",
        endpoint(),
        std::process::id()
    );
    let p = processor(&[
        ("DLQ_URL", &missing_dlq),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
    ]);
    let dest = answering(404).await;
    let id = send(
        &sqs,
        &source,
        &message("once", &dest.uri(), serde_json::json!({})),
    )
    .await;

    for _ in 0..3 {
        let received = receive_n_hidden_for(&sqs, &source, 1, 1, Duration::from_secs(10)).await;
        assert_eq!(received.len(), 1, "never lost");
        let failed = invoke_failed(&p, &sqs, &source, &received, 30).await;
        assert_eq!(
            failed,
            std::slice::from_ref(&id),
            "left for another try at the dead letter"
        );
    }
    assert_eq!(
        dest.received_requests().await.unwrap().len(),
        1,
        "the 404 request was made once, not on every receive"
    );
}

// 8.3 ------------------------------------------------------------------------

/// A processor with one `header` profile "p" whose `x-api-key` is the
/// Secrets Manager secret `arn`, dead-lettering to `dlq`, and `extra`.
fn key_profile_processor(
    dlq: &TestQueue,
    arn: &str,
    extra: &[(&str, &str)],
) -> Arc<retryq::process::Processor> {
    let profiles =
        serde_json::json!({"p": {"type": "header", "name": "x-api-key", "valueArn": arn}})
            .to_string();
    let mut vars = vec![
        ("DLQ_URL", dlq.url.as_str()),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("AUTH_PROFILES", profiles.as_str()),
    ];
    vars.extend_from_slice(extra);
    processor(&vars)
}

/// The API key rotation, refused with `status`: read again at once and the
/// request tried again within the same attempt.
async fn rotated_api_key_refused_with(status: u16) {
    let sqs = sqs();
    let source = queue(&sqs, "rotate-key").await;
    let dlq = queue(&sqs, "rotate-key-dlq").await;
    let arn = create_secret("rotate-key", "key-one").await;
    let dest = MockServer::start().await;
    Mock::given(header("x-api-key", "key-one"))
        .respond_with(ResponseTemplate::new(200))
        .up_to_n_times(1)
        .mount(&dest)
        .await;
    Mock::given(header("x-api-key", "key-two"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&dest)
        .await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(status))
        .mount(&dest)
        .await;
    let p = key_profile_processor(&dlq, &arn, &[]);
    let auth = serde_json::json!({"auth": "p"});

    let first = [message("k-1", &dest.uri(), auth.clone())];
    run_batch(&p, &sqs, &source, &dlq, &first)
        .await
        .assert_all_delivered(&["k-1"]);
    rotate_secret(&arn, "key-two").await;
    let second = [message("k-2", &dest.uri(), auth)];
    // Delivered with the rotated key, within the same attempt.
    run_batch(&p, &sqs, &source, &dlq, &second)
        .await
        .assert_all_delivered(&["k-2"]);
    dest.verify().await;
}

#[tokio::test]
async fn a_rotated_api_key_is_re_read_after_a_401_and_the_request_tried_again() {
    rotated_api_key_refused_with(401).await;
}

#[tokio::test]
async fn a_rotated_api_key_is_re_read_after_a_403_and_the_request_tried_again() {
    rotated_api_key_refused_with(403).await;
}

/// `SECRET_TTL_SECONDS`: a value is kept no longer, even when nothing
/// refuses it. The old key still works here, so only the TTL can make the
/// processor send the new one.
#[tokio::test]
async fn a_secret_is_read_again_once_its_ttl_has_passed() {
    let sqs = sqs();
    let source = queue(&sqs, "secret-ttl").await;
    let dlq = queue(&sqs, "secret-ttl-dlq").await;
    let arn = create_secret("secret-ttl", "key-one").await;
    let dest = MockServer::start().await;
    for key in ["key-one", "key-two"] {
        Mock::given(header("x-api-key", key))
            .respond_with(ResponseTemplate::new(200))
            .expect(1)
            .mount(&dest)
            .await;
    }
    let p = key_profile_processor(&dlq, &arn, &[("SECRET_TTL_SECONDS", "1")]);
    let auth = serde_json::json!({"auth": "p"});
    run_batch(
        &p,
        &sqs,
        &source,
        &dlq,
        &[message("t-1", &dest.uri(), auth.clone())],
    )
    .await
    .assert_all_delivered(&["t-1"]);
    rotate_secret(&arn, "key-two").await;
    // Past the TTL (a wait for an expiry is a wait for the event itself).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    run_batch(
        &p,
        &sqs,
        &source,
        &dlq,
        &[message("t-2", &dest.uri(), auth)],
    )
    .await
    .assert_all_delivered(&["t-2"]);
    dest.verify().await;
}

#[tokio::test]
async fn a_rotated_client_secret_is_re_read_when_the_token_endpoint_refuses_it() {
    let sqs = sqs();
    let source = queue(&sqs, "rotate-secret").await;
    let dlq = queue(&sqs, "rotate-secret-dlq").await;
    let arn = create_secret("rotate-secret", "secret-one").await;
    let basic = |secret: &str| {
        let pair = format!("retryq:{secret}");
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    };
    let tokens = MockServer::start().await;
    // The first token lives one second, so the next record needs another.
    Mock::given(header("authorization", basic("secret-one").as_str()))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"access_token": "token-one", "expires_in": 1})),
        )
        .up_to_n_times(1)
        .mount(&tokens)
        .await;
    Mock::given(header("authorization", basic("secret-two").as_str()))
        .respond_with(token_answer("token-two"))
        .mount(&tokens)
        .await;
    Mock::given(any())
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(serde_json::json!({"error": "invalid_client"})),
        )
        .mount(&tokens)
        .await;
    let dest = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .expect(2)
        .mount(&dest)
        .await;
    let profiles = serde_json::json!({"p": {
        "type": "oauth2-client-credentials", "tokenUrl": format!("{}/token", tokens.uri()),
        "clientId": "retryq", "clientSecretArn": arn}});
    let p = processor(&[
        ("DLQ_URL", &dlq.url),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("AUTH_PROFILES", &profiles.to_string()),
    ]);
    let auth = serde_json::json!({"auth": "p"});

    let (_, first) = send_one(&sqs, &source, &message("s-1", &dest.uri(), auth.clone())).await;
    assert!(invoke_failed(&p, &sqs, &source, &first, 30)
        .await
        .is_empty());
    rotate_secret(&arn, "secret-two").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, second) = send_one(&sqs, &source, &message("s-2", &dest.uri(), auth)).await;
    let failed = invoke_failed(&p, &sqs, &source, &second, 30).await;

    assert!(
        failed.is_empty(),
        "delivered with a token from the rotated secret"
    );
    assert!(
        receive(&sqs, &dlq, 1).await.is_empty(),
        "nothing dead-lettered"
    );
    dest.verify().await;
}

// 8.4 ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_token_endpoint_holds_no_request_slot_and_is_asked_once() {
    let sqs = sqs();
    let source = queue(&sqs, "hang").await;
    let dlq = queue(&sqs, "hang-dlq").await;
    let tokens = MockServer::start().await;
    Mock::given(any())
        .respond_with(token_answer("late").set_delay(Duration::from_secs(60)))
        .mount(&tokens)
        .await;
    let healthy = MockServer::start().await;
    Mock::given(path("/healthy"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&healthy)
        .await;
    let never = never_called().await;
    let profiles = serde_json::json!({"slow": {
        "type": "oauth2-client-credentials", "tokenUrl": format!("{}/token", tokens.uri()),
        "clientId": "retryq", "clientSecretEnv": "SLOW_SECRET"}});
    let p = processor(&[
        ("DLQ_URL", &dlq.url),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("AUTH_PROFILES", &profiles.to_string()),
        ("SLOW_SECRET", "s"),
        ("MAX_CONCURRENCY", "4"),
        ("REQUEST_TIMEOUT_SECONDS", "2"),
    ]);
    // Eight records of the hanging profile first, the healthy one last.
    let mut bodies: Vec<String> = (0..8)
        .map(|i| {
            message(
                &format!("slow-{i}"),
                &never.uri(),
                serde_json::json!({"auth": "slow"}),
            )
        })
        .collect();
    bodies.push(message(
        "healthy",
        &format!("{}/healthy", healthy.uri()),
        serde_json::json!({}),
    ));
    send_batch(&sqs, &source, &bodies).await;
    let received = receive_n(&sqs, &source, 9, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 9);
    let healthy_id = received
        .iter()
        .find(|m| m.body.as_deref().unwrap().contains("\"healthy\""))
        .and_then(|m| m.message_id.clone())
        .unwrap();

    // Eight seconds: time for the one token fetch to time out, not for
    // eight fetches in a row.
    let failed = invoke_failed(&p, &sqs, &source, &received, 8).await;

    assert!(
        !failed.contains(&healthy_id),
        "the healthy record was delivered"
    );
    assert_eq!(
        failed.len(),
        8,
        "the others wait for their backoff, retryable"
    );
    assert_eq!(
        tokens.received_requests().await.unwrap().len(),
        1,
        "the eight records shared one token fetch and its failure"
    );
    assert!(
        receive(&sqs, &dlq, 1).await.is_empty(),
        "a hanging endpoint is not a reason to dead-letter"
    );
    healthy.verify().await;
    never.verify().await;
}

// 8.5 ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_keeps_a_slow_request_hidden_so_it_is_made_once() {
    let sqs = sqs();
    // A visibility timeout of 6 s leaves the heartbeat room on a busy
    // machine (3 s did not always).
    let source = queue_with(&sqs, "slow", &[("VisibilityTimeout", "6")]).await;
    let dlq = queue(&sqs, "slow-dlq").await;
    // Fourteen seconds per answer: two visibility timeouts and more, within
    // the request timeout.
    let dest = crate::destination::Destination::start(Duration::from_secs(14)).await;
    // Beside it in the same batch, a record delivered at once: it must stay
    // hidden until the batch ends and deletes it.
    let quick = crate::destination::Destination::start(Duration::ZERO).await;
    let p = processor(&[
        ("DLQ_URL", &dlq.url),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("REQUEST_TIMEOUT_SECONDS", "20"),
    ]);
    send_batch(
        &sqs,
        &source,
        &[
            message("slow-1", &dest.url("/ok/slow-1"), serde_json::json!({})),
            message("quick-1", &quick.url("/ok/quick-1"), serde_json::json!({})),
        ],
    )
    .await;

    let mut options = retryq::worker::WorkerOptions::new(&source.url, 4);
    options.wait = Duration::from_secs(1);
    options.pollers = 2;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(retryq::worker::run(Arc::clone(&p), options, async move {
        let _ = stopped.await;
    }));
    let start = Instant::now();
    while dest.delivered().is_empty() && start.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Two more visibility timeouts for a second copy to show up, if any.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let _ = stop.send(());
    let stats = tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .expect("the worker stops")
        .unwrap()
        .expect("the worker ran");

    assert_eq!(
        dest.requests(),
        1,
        "one request, not one per visibility timeout"
    );
    assert_eq!(
        quick.requests(),
        1,
        "a delivered record stays hidden while its batch goes on"
    );
    assert_eq!(stats.acknowledged, 2);
    assert_eq!(depth(&sqs, &source).await, (0, 0), "delivered and deleted");
}

// 8.6 ------------------------------------------------------------------------

#[tokio::test]
async fn huge_durations_from_a_destination_or_a_token_endpoint_are_clamped() {
    let sqs = sqs();
    let source = queue(&sqs, "huge").await;
    let dlq = queue(&sqs, "huge-dlq").await;
    let tokens = MockServer::start().await;
    Mock::given(any())
        .respond_with(
            ResponseTemplate::new(200).set_body_json(
                serde_json::json!({"access_token": "forever", "expires_in": u64::MAX}),
            ),
        )
        .expect(1)
        .mount(&tokens)
        .await;
    let dest = MockServer::start().await;
    Mock::given(path("/ok"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&dest)
        .await;
    Mock::given(path("/later"))
        .respond_with(
            ResponseTemplate::new(503).insert_header("retry-after", "99999999999999999999999999"),
        )
        .mount(&dest)
        .await;
    let profiles = serde_json::json!({"p": {
        "type": "oauth2-client-credentials", "tokenUrl": tokens.uri(),
        "clientId": "retryq", "clientSecretEnv": "P_SECRET"}});
    let p = processor(&[
        ("DLQ_URL", &dlq.url),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("AUTH_PROFILES", &profiles.to_string()),
        ("P_SECRET", "s"),
        ("RETRY_AFTER_MAX_SECONDS", "120"),
    ]);
    let ok = format!("{}/ok", dest.uri());
    let bodies = [
        message("t-1", &ok, serde_json::json!({"auth": "p"})),
        message("t-2", &ok, serde_json::json!({"auth": "p"})),
        message(
            "ra",
            &format!("{}/later", dest.uri()),
            serde_json::json!({}),
        ),
    ];
    send_batch(&sqs, &source, &bodies).await;
    let received = receive_n(&sqs, &source, 3, Duration::from_secs(10)).await;

    let report = p.process_batch(records(&source, &received), None).await;

    let by_body = |needle: &str| {
        let i = received
            .iter()
            .position(|m| m.body.as_deref().unwrap().contains(needle))
            .unwrap();
        report.records[i].disposition.clone()
    };
    assert_eq!(by_body("t-1"), Disposition::Delivered);
    assert_eq!(
        by_body("t-2"),
        Disposition::Delivered,
        "the token was kept, not a panic"
    );
    assert_eq!(
        by_body("\"ra\""),
        Disposition::RetryLater {
            delay: Duration::from_secs(120)
        },
        "capped at RETRY_AFTER_MAX_SECONDS"
    );
    tokens.verify().await;
}

// 8.8 ------------------------------------------------------------------------

#[tokio::test]
async fn the_batching_window_is_kept_in_hand_below_the_twelve_hour_limit() {
    let sqs = sqs();
    let source = queue(&sqs, "window").await;
    let dlq = queue(&sqs, "window-dlq").await;
    let p = processor(&[
        ("DLQ_URL", &dlq.url),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("BATCHING_WINDOW_SECONDS", "300"),
    ]);
    let dest = serving(ResponseTemplate::new(429).insert_header("retry-after", "43200")).await;
    let (_, received) = send_one(
        &sqs,
        &source,
        &message("w", &dest.uri(), serde_json::json!({})),
    )
    .await;

    let report = p.process_batch(records(&source, &received), None).await;

    let Disposition::RetryLater { delay } = report.records[0].disposition else {
        panic!("expected a retry, got {:?}", report.records[0].disposition)
    };
    assert!(
        delay <= Duration::from_secs(43_200 - 300 - 60),
        "{delay:?} leaves the batching window and the receive slack"
    );
    assert!(
        delay >= Duration::from_secs(43_200 - 300 - 60 - 5),
        "{delay:?}"
    );
}

// 9 --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_records_released_behind_a_blocked_one_respect_the_deadline() {
    // An SQS endpoint that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hanging = format!("http://{}", listener.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let client = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_sqs::config::Region::new(REGION))
            .endpoint_url(&hanging)
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "t", "t", None, None, "t",
            ))
            .build(),
    );
    // Released records are not attempted: a destination on loopback that
    // fails the test if called.
    let dest = never_called().await;
    // No DLQ_URL: the invalid first record ends without an SQS call and
    // blocks its group; the two behind it must be released through SQS.
    let p =
        Arc::new(retryq::process::Processor::new(config(&[]), client, None).expect("processor"));
    let arn = format!("arn:aws:sqs:{REGION}:{ACCOUNT}:hanging.fifo");
    let records = (0..3)
        .map(|i| retryq::process::Record {
            message_id: format!("m-{i}"),
            receipt_handle: format!("r-{i}"),
            body: if i == 0 {
                "not json".into()
            } else {
                message("x", &dest.uri(), serde_json::json!({}))
            },
            receive_count: 1,
            source_queue_arn: arn.clone(),
            message_group_id: Some("g".into()),
            sent_at: None,
            trace_header: None,
            first_received_at: None,
            message_attributes: Vec::new(),
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(2);
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        p.process_batch(records, Some(deadline)),
    )
    .await
    .expect("the batch answers by its deadline, not when SQS does");

    assert_eq!(
        report.unacknowledged().count(),
        3,
        "nothing acknowledged, nothing lost"
    );
    held.abort();
    dest.verify().await;
}

#[test]
fn the_template_keeps_messages_fourteen_days_and_leaves_room_for_the_batching_window() {
    let template =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/template.yaml")).unwrap();
    let retry_queue = &template
        [template.find("  RetryQueue:").unwrap()..template.find("  DeadLetterQueue:").unwrap()];
    assert!(
        retry_queue.contains("MessageRetentionPeriod: 1209600"),
        "{retry_queue}"
    );
    assert!(template.contains(
        "BATCHING_WINDOW_SECONDS: !If [IsFifo, \"0\", !Ref MaximumBatchingWindowInSeconds]"
    ));
    assert!(template.contains("RETENTION_MARGIN_SECONDS: !Ref RetentionMarginSeconds"));
    assert!(template.contains("SECRET_TTL_SECONDS: !Ref SecretTtlSeconds"));
    // Every (FunctionTimeout, window) pair of the mapping: ≥ 6 × timeout + window.
    let mapping = &template
        [template.find("  VisibilityForTimeout:").unwrap()..template.find("Conditions:").unwrap()];
    let mut pairs = 0;
    for line in mapping.lines().filter(|l| l.trim_start().starts_with('"')) {
        let (timeout, entries) = line.trim().split_once(": {").unwrap();
        let timeout: u64 = timeout.trim_matches('"').parse().unwrap();
        for entry in entries.trim_end_matches('}').split(',') {
            let (window, seconds) = entry.split_once(':').unwrap();
            let window: u64 = window.trim().trim_matches('"').parse().unwrap();
            let seconds: u64 = seconds.trim().parse().unwrap();
            assert!(
                seconds >= 6 * timeout + window,
                "timeout {timeout}, window {window}: {seconds}"
            );
            pairs += 1;
        }
    }
    assert_eq!(pairs, 6 * 8, "every timeout and every allowed window");
}

/// A destination slower than the invocation, through the handler: the
/// answer comes before Lambda's deadline, the slow record is listed to come
/// back (not dead-lettered, not acknowledged), and the quick one beside it
/// is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_slower_than_the_invocation_leaves_its_record_for_the_next_receive() {
    let (sqs, source, dlq, p) = with_dlq(
        "outlasted",
        &[
            ("ALLOW_PRIVATE_DESTINATIONS", "true"),
            // Longer than the invocation: the deadline, not the request
            // timeout, has to end the attempt.
            ("REQUEST_TIMEOUT_SECONDS", "120"),
        ],
    )
    .await;
    let slow = serving(ResponseTemplate::new(200).set_delay(Duration::from_secs(60))).await;
    let quick = answering(200).await;
    send_batch(
        &sqs,
        &source,
        &[
            message("slow", &slow.uri(), serde_json::json!({})),
            message("quick", &quick.uri(), serde_json::json!({})),
        ],
    )
    .await;
    let received = receive_n(&sqs, &source, 2, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 2);

    let outcomes = tokio::time::timeout(
        Duration::from_secs(40),
        outcomes_of(&p, &sqs, &source, &dlq, &received, 6),
    )
    .await
    .expect("the handler answers by the invocation's deadline, not the destination's");

    assert_eq!(outcomes.retried, ["slow".to_owned()].into(), "{outcomes:?}");
    assert_eq!(
        outcomes.delivered,
        ["quick".to_owned()].into(),
        "{outcomes:?}"
    );
    assert!(outcomes.dead.is_empty(), "{outcomes:?}");
}

// Counts without a state table -------------------------------------------------

/// A receive that made no request (here a rate-limit deferral on the final
/// receive) is not taken for one whose answer was lost: the final attempt's
/// request is still made before the record is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_attempt_deferred_by_the_rate_limit_still_gets_its_request() {
    let (sqs, source, dlq, _) = with_dlq("deferred-final", &[]).await;
    let dest = answering(503).await;
    let p = processor(&[
        ("DLQ_URL", &dlq.url),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("MAX_ATTEMPTS", "2"),
        ("BACKOFF_BASE_SECONDS", "1"),
        ("BACKOFF_MAX_SECONDS", "1"),
        (
            "DESTINATION_POLICIES",
            r#"{"127.0.0.1": {"rps": 0.001, "burst": 1}}"#,
        ),
    ]);
    send(
        &sqs,
        &source,
        &message("deferred-final-1", &dest.uri(), serde_json::json!({})),
    )
    .await;
    // Receive 1: the request (503). Receive 2, the final one: no token, so
    // deferred without a request. Receive 3: whatever it decides, the
    // final request has not been made yet.
    for round in 1..=3 {
        let got = receive_n(&sqs, &source, 1, Duration::from_secs(10)).await;
        assert_eq!(got.len(), 1, "round {round}");
        let response = invoke(&p, &sqs, &source, &got).await;
        if !failures(&response).is_empty() {
            // Back at once (a deferral would hide it for a long while).
            sqs.change_message_visibility()
                .queue_url(&source.url)
                .receipt_handle(got[0].receipt_handle().unwrap())
                .visibility_timeout(0)
                .send()
                .await
                .expect("change_message_visibility");
        }
    }
    let letters = drain(&sqs, &dlq).await;
    let requests = dest.received_requests().await.unwrap().len();
    assert!(
        letters.is_empty() || requests >= 2,
        "dead-lettered after {requests} request(s) with MAX_ATTEMPTS=2"
    );
}
