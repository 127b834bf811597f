//! Each action of spec §4 against the real SQS API (the local moto
//! server) and a real HTTP destination (wiremock): the handler runs exactly
//! as under Lambda, and the event source mapping's part (deleting what was
//! acknowledged) is emulated by `common::invoke`.

use std::time::Duration;

use crate::common::*;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test]
async fn a_delivered_message_is_acknowledged_and_gone_from_the_queue() {
    let (sqs, source, dlq, p) = with_dlq("src", &[]).await;
    let dest = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path("/orders/42"))
        .and(header("idempotency-key", "order-42"))
        .and(header("x-tenant", "t1"))
        .and(header(
            "user-agent",
            concat!("retryq/", env!("CARGO_PKG_VERSION")),
        ))
        .respond_with(ResponseTemplate::new(201))
        .expect(1)
        .mount(&dest)
        .await;
    let body = serde_json::json!({
        "id": "order-42",
        "destinationUrl": format!("{}/orders/42", dest.uri()),
        "request": { "method": "PUT", "headers": { "x-tenant": "t1" }, "body": "{}" }
    })
    .to_string();
    let (_, received) = send_one(&sqs, &source, &body).await;

    let response = invoke(&p, &sqs, &source, &received).await;

    assert!(failures(&response).is_empty());
    assert_eq!(depth(&sqs, &source).await, (0, 0), "the message is gone");
    assert_eq!(depth(&sqs, &dlq).await, (0, 0), "and not dead-lettered");
    dest.verify().await;
}

#[tokio::test]
async fn a_retryable_failure_changes_the_visibility_and_is_reported() {
    let (sqs, source, dlq, p) = with_dlq("src", &[]).await;
    let dest = serving(ResponseTemplate::new(503).insert_header("retry-after", "600")).await;
    let id = send(
        &sqs,
        &source,
        &message("m-1", &dest.uri(), serde_json::json!({})),
    )
    .await;
    // Received with a 1-second visibility: without the processor's change
    // it would be visible again at once.
    let received = receive_n_hidden_for(&sqs, &source, 1, 1, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 1);

    let response = invoke(&p, &sqs, &source, &received).await;

    assert_eq!(failures(&response), [id]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        receive(&sqs, &source, 1).await.is_empty(),
        "hidden for the Retry-After, not the 1s of the receive"
    );
    assert_eq!(
        depth(&sqs, &source).await,
        (0, 1),
        "still in the queue, in flight"
    );
    assert_eq!(depth(&sqs, &dlq).await, (0, 0));
}

#[tokio::test]
async fn a_short_backoff_brings_the_message_back_with_a_higher_receive_count() {
    let (sqs, source, _dlq, p) = with_dlq("src", &[]).await;
    let dest = serving(ResponseTemplate::new(429).insert_header("retry-after", "1")).await;
    send(
        &sqs,
        &source,
        &message("m-2", &dest.uri(), serde_json::json!({})),
    )
    .await;
    let first = receive_n(&sqs, &source, 1, Duration::from_secs(10)).await;
    let response = invoke(&p, &sqs, &source, &first).await;
    assert_eq!(failures(&response).len(), 1);

    let again = receive_n(&sqs, &source, 1, Duration::from_secs(15)).await;
    assert_eq!(again.len(), 1, "visible again after the 1s Retry-After");
    let count = again[0]
        .attributes
        .as_ref()
        .unwrap()
        .get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)
        .cloned();
    assert_eq!(count.as_deref(), Some("2"));
}

#[tokio::test]
async fn a_non_retryable_answer_is_dead_lettered_with_the_exact_attributes_and_body() {
    let (sqs, source, dlq, p) = with_dlq("src", &[]).await;
    let dest = answering(404).await;
    // Odd spacing, key order and non-ASCII: the copy must be byte-identical.
    let body = format!(
        "{{ \"request\":{{\"method\":\"DELETE\"}},\n  \"id\" : \"été-1\" , \"destinationUrl\":\"{}/gone\", \"metadata\": {{\"note\": \"ünïcode ✓\"}} }}",
        dest.uri()
    )
    .replace("été-1", "ete-1");
    let (original_id, received) = send_one(&sqs, &source, &body).await;

    let response = invoke(&p, &sqs, &source, &received).await;

    assert!(
        failures(&response).is_empty(),
        "acknowledged once the DLQ copy exists"
    );
    assert_eq!(depth(&sqs, &source).await, (0, 0));
    let dead = receive_n(&sqs, &dlq, 1, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.body.as_deref(), Some(body.as_str()));
    assert_eq!(attr(d, "FailureReason").as_deref(), Some("non-retryable"));
    assert_eq!(attr(d, "AttemptCount").as_deref(), Some("1"));
    assert_eq!(attr(d, "LastStatusCode").as_deref(), Some("404"));
    assert_eq!(attr(d, "LastError").as_deref(), Some("HTTP 404 Not Found"));
    assert_eq!(
        attr(d, "SourceQueueArn").as_deref(),
        Some(source.arn.as_str())
    );
    assert_eq!(
        attr(d, "OriginalMessageId").as_deref(),
        Some(original_id.as_str())
    );
    assert_eq!(d.message_attributes.as_ref().unwrap().len(), 6);
    for a in d.message_attributes.as_ref().unwrap().values() {
        assert_eq!(a.data_type, "String");
    }
}

/// Sends `body`, runs it through the handler, checks it was acknowledged
/// and returns its one dead letter.
async fn dead_letter_of(body: &str, extra: &[(&str, &str)]) -> aws_sdk_sqs::types::Message {
    let (sqs, source, dlq, p) = with_dlq("src", extra).await;
    let (_, received) = send_one(&sqs, &source, body).await;
    let response = invoke(&p, &sqs, &source, &received).await;
    assert!(
        failures(&response).is_empty(),
        "acknowledged once the DLQ copy exists"
    );
    assert_eq!(depth(&sqs, &source).await, (0, 0));
    let mut dead = receive_n(&sqs, &dlq, 1, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].body.as_deref(),
        Some(body),
        "the body byte-for-byte"
    );
    dead.remove(0)
}

#[tokio::test]
async fn an_invalid_body_is_dead_lettered_without_a_status() {
    let d = dead_letter_of(r#"{"id":"x","request":{"method":"GET"}}"#, &[]).await;
    assert_eq!(
        attr(&d, "FailureReason").as_deref(),
        Some("invalid-message")
    );
    assert_eq!(attr(&d, "LastStatusCode"), None);
    assert_eq!(
        attr(&d, "LastError").as_deref(),
        Some("destinationUrl: is required")
    );
}

#[tokio::test]
async fn an_expired_message_is_dead_lettered_without_an_attempt() {
    let dest = never_called().await;
    let body = message(
        "old",
        &dest.uri(),
        serde_json::json!({"expiresAt": "2020-01-01T00:00:00Z"}),
    );
    let d = dead_letter_of(&body, &[]).await;
    assert_eq!(attr(&d, "FailureReason").as_deref(), Some("expired"));
    dest.verify().await;
}

#[tokio::test]
async fn a_retryable_failure_with_no_time_left_before_expiry_is_expired() {
    let dest = answering(503).await;
    // The next attempt would be 30 to 60 s away: past an expiry 20 s away
    // (room enough for a slow machine to get to the first attempt).
    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(20);
    let expires = soon
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let d = dead_letter_of(
        &message(
            "soon",
            &dest.uri(),
            serde_json::json!({"expiresAt": expires}),
        ),
        &[("BACKOFF_BASE_SECONDS", "60")],
    )
    .await;
    assert_eq!(attr(&d, "FailureReason").as_deref(), Some("expired"));
    assert_eq!(
        attr(&d, "LastStatusCode").as_deref(),
        Some("503"),
        "attempted, then out of time"
    );
}

#[tokio::test]
async fn a_retryable_failure_on_the_final_attempt_is_exhausted() {
    let dest = answering(502).await;
    // Four attempts were made before it was enqueued: this receive is the fifth.
    let body = message(
        "tired",
        &dest.uri(),
        serde_json::json!({"receivedCount": 4}),
    );
    let d = dead_letter_of(&body, &[("MAX_ATTEMPTS", "5")]).await;
    assert_eq!(
        attr(&d, "FailureReason").as_deref(),
        Some("attempts-exhausted")
    );
    assert_eq!(attr(&d, "AttemptCount").as_deref(), Some("5"));
    assert_eq!(attr(&d, "LastStatusCode").as_deref(), Some("502"));
}

#[tokio::test]
async fn the_message_max_attempts_lowers_the_limit() {
    let dest = answering(500).await;
    let d = dead_letter_of(
        &message("once", &dest.uri(), serde_json::json!({"maxAttempts": 1})),
        &[],
    )
    .await;
    assert_eq!(
        attr(&d, "FailureReason").as_deref(),
        Some("attempts-exhausted")
    );
    assert_eq!(attr(&d, "AttemptCount").as_deref(), Some("1"));
}

#[tokio::test]
async fn a_record_that_cannot_be_dead_lettered_stays_unacknowledged() {
    let sqs = sqs();
    let missing_dlq = format!(
        "{}/{ACCOUNT}/no-such-queue-{}",
        endpoint(),
        std::process::id()
    );
    // A DLQ send that fails, and no DLQ_URL at all.
    for dlq_url in [Some(missing_dlq.as_str()), None] {
        let source = queue(&sqs, "src").await;
        let mut vars = vec![("ALLOW_PRIVATE_DESTINATIONS", "true")];
        vars.extend(dlq_url.map(|url| ("DLQ_URL", url)));
        let p = processor(&vars);
        let dest = answering(404).await;
        let body = message("stuck", &dest.uri(), serde_json::json!({}));
        let (id, received) = send_one(&sqs, &source, &body).await;

        let response = invoke(&p, &sqs, &source, &received).await;

        assert_eq!(failures(&response), [id], "DLQ_URL={dlq_url:?}");
        assert_eq!(
            depth(&sqs, &source).await,
            (0, 1),
            "still in the queue for another try"
        );
    }
}

#[tokio::test]
async fn a_failed_visibility_change_is_still_reported_as_a_failure() {
    let (sqs, source, _dlq, p) = with_dlq("src", &[]).await;
    let dest = answering(503).await;
    let (id, mut received) = send_one(
        &sqs,
        &source,
        &message("vis", &dest.uri(), serde_json::json!({})),
    )
    .await;
    received[0].receipt_handle = Some("not-a-real-receipt-handle".into());
    let event = lambda_event(&received, &source.arn);
    let response = retryq::lambda::handle(p, lambda_runtime::LambdaEvent::new(event, context(60)))
        .await
        .unwrap();
    assert_eq!(failures(&response), [id]);
}

#[tokio::test]
async fn a_refused_destination_is_dead_lettered_without_a_connection() {
    let sqs = sqs();
    let source = queue(&sqs, "src").await;
    let dlq = queue(&sqs, "dlq").await;
    // Default policy: loopback is refused.
    let p = processor(&[("DLQ_URL", &dlq.url)]);
    let dest = never_called().await;
    let by_name = dest.uri().replace("127.0.0.1", "localhost");
    send(
        &sqs,
        &source,
        &message("ssrf-1", &dest.uri(), serde_json::json!({})),
    )
    .await;
    send(
        &sqs,
        &source,
        &message("ssrf-2", &by_name, serde_json::json!({})),
    )
    .await;
    let received = receive_n(&sqs, &source, 2, Duration::from_secs(10)).await;

    let response = invoke(&p, &sqs, &source, &received).await;

    assert!(failures(&response).is_empty());
    let dead = receive_n(&sqs, &dlq, 2, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 2);
    for d in &dead {
        assert_eq!(
            attr(d, "FailureReason").as_deref(),
            Some("destination-not-allowed")
        );
    }
    dest.verify().await;
}

#[tokio::test]
async fn a_mixed_batch_acknowledges_exactly_the_finished_records() {
    let (sqs, source, dlq, p) = with_dlq("src", &[]).await;
    let dest = MockServer::start().await;
    Mock::given(path("/ok"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&dest)
        .await;
    Mock::given(path("/busy"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&dest)
        .await;
    Mock::given(path("/gone"))
        .respond_with(ResponseTemplate::new(410))
        .mount(&dest)
        .await;
    let bodies = [
        message("a", &format!("{}/ok", dest.uri()), serde_json::json!({})),
        message("b", &format!("{}/busy", dest.uri()), serde_json::json!({})),
        message("c", &format!("{}/gone", dest.uri()), serde_json::json!({})),
        "not json at all".to_owned(),
    ];

    let outcomes = run_batch(&p, &sqs, &source, &dlq, &bodies).await;

    assert_eq!(outcomes.delivered, ["a".to_owned()].into(), "{outcomes:?}");
    assert_eq!(outcomes.retried, ["b".to_owned()].into(), "{outcomes:?}");
    assert_eq!(depth(&sqs, &source).await, (0, 1), "only b is left, hidden");
    let mut reasons: Vec<String> = outcomes.reasons().into_values().collect();
    reasons.sort();
    assert_eq!(reasons, ["invalid-message", "non-retryable"]);
    assert_eq!(
        attr(&outcomes.dead["c"], "FailureReason").as_deref(),
        Some("non-retryable")
    );
    dest.verify().await;
}

#[tokio::test]
async fn a_batch_where_one_record_panics_still_answers_listing_only_that_record() {
    let (sqs, source, dlq, p) = with_dlq("src", &[]).await;
    let dest = answering(200).await;
    let a = send(
        &sqs,
        &source,
        &message("a", &dest.uri(), serde_json::json!({})),
    )
    .await;
    let boom = send(
        &sqs,
        &source,
        &message("boom", &dest.uri(), serde_json::json!({})),
    )
    .await;
    let c = send(
        &sqs,
        &source,
        &message(
            "c",
            &format!("{}/x", dest.uri()),
            serde_json::json!({"expiresAt": "2020-01-01T00:00:00Z"}),
        ),
    )
    .await;
    let received = receive_n(&sqs, &source, 3, Duration::from_secs(10)).await;
    let records = lambda_records(&received, &source.arn);

    let batch = retryq::process::Batch::starting_now();
    let report = p
        .process_batch_with(records, None, move |this, record| {
            let batch = batch.clone();
            async move {
                if record.body.contains("\"boom\"") {
                    panic!("injected fault while processing a record");
                }
                this.process_record(record, &batch).await
            }
        })
        .await;
    let response = retryq::lambda::batch_response(&report).expect("an answer, not an error");

    assert_eq!(failures(&response), [boom]);
    assert_eq!(
        dest.received_requests().await.unwrap().len(),
        1,
        "record a was still delivered"
    );
    let dead = receive_n(&sqs, &dlq, 1, Duration::from_secs(10)).await;
    assert_eq!(
        attr(&dead[0], "OriginalMessageId"),
        Some(c),
        "record c was still dead-lettered"
    );
    let _ = a;
}
