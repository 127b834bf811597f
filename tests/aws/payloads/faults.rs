//! Payloads under faults: the regressions of the third adversarial review
//! of §12.1–§12.4. A dead letter cut by the deadline, a delivered message
//! the redrive policy moved to the DLQ, an object S3 will not serve, an
//! expired message held back before its body is read, a lifecycle rule
//! that archives payloads, and a probe lease outlived by a body's read.

use std::time::Duration;

use wiremock::ResponseTemplate;

use super::*;

/// A processor whose S3 is at `s3_url` (a proxy in front of moto).
fn processor_with_s3(
    vars: &[(&str, &str)],
    s3_url: &str,
) -> std::sync::Arc<retryq::process::Processor> {
    std::sync::Arc::new(
        retryq::process::Processor::new(config(vars), sqs(), None)
            .unwrap()
            .with_payload_store(retryq::payload::store::PayloadStore::with_client(s3_at(
                s3_url,
            ))),
    )
}

/// A pointer record whose dead letter is cut by the invocation's deadline
/// (the letter's S3 copy takes 6 s of the 3 s left) sends its letter on
/// its next receive in the same process, without its request again: a
/// non-retryable request (400), and the last attempt of `MAX_ATTEMPTS=1`
/// (503), are each made once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_cut_by_the_deadline_is_sent_next_time_without_a_second_request() {
    for (status, max_attempts, reason) in [
        (400, "3", "non-retryable"),
        (503, "1", "attempts-exhausted"),
    ] {
        let dest = serving(ResponseTemplate::new(status)).await;
        let b = bucket("cut-letter");
        s3().create_bucket().bucket(&b).send().await.unwrap();
        let (sqs, q, dlq, _) = with_dlq("payload-cut-letter", &[]).await;
        let slow_s3 = slow_proxy(&endpoint(), "x-amz-copy-source:", Duration::from_secs(6)).await;
        let vars = [
            ("DLQ_URL", dlq.url.as_str()),
            ("ALLOW_PRIVATE_DESTINATIONS", "true"),
            ("PAYLOAD_BUCKETS", b.as_str()),
            ("MAX_ATTEMPTS", max_attempts),
        ];
        let p = processor_with_s3(&vars, &slow_s3);
        let (message, _) = large_message("cut-1", &dest.uri(), 1000);
        put_owned(&b, "k", &message).await;
        send(&sqs, &q, &pointer_to(&b, "k")).await;
        let received = receive_n(&sqs, &q, 1, Duration::from_secs(10)).await;

        let first = failures(&invoke_within(&p, &sqs, &q, &received, 3).await);
        assert_eq!(first.len(), 1, "HTTP {status}: cut, not finished");
        let second = handle_unacknowledged(std::sync::Arc::clone(&p), &q, &received).await;
        assert!(second.is_empty(), "HTTP {status}: {second:?}");

        let requests = dest.received_requests().await.unwrap().len();
        assert_eq!(requests, 1, "HTTP {status}: the request is not made again");
        let letters = receive_n(&sqs, &dlq, 2, Duration::from_secs(3)).await;
        assert_eq!(letters.len(), 1, "HTTP {status}");
        assert_eq!(attr(&letters[0], "FailureReason").as_deref(), Some(reason));
    }
}

/// A delivered pointer message whose acknowledgement was lost on its last
/// receive is moved to the DLQ by the queue's redrive policy (same message
/// id). `retryq dlq redrive` finds its object marked delivered for that
/// very message and deletes it instead of sending it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_message_the_redrive_policy_moved_is_not_redriven() {
    let dest = expecting(200, 1).await;
    let b = bucket("policy-moved");
    s3().create_bucket().bucket(&b).send().await.unwrap();
    let sqs = sqs();
    let dlq = queue(&sqs, "payload-policy-moved-dlq").await;
    let policy = format!(
        "{{\"deadLetterTargetArn\":\"{}\",\"maxReceiveCount\":\"1\"}}",
        dlq.arn
    );
    let q = queue_with(&sqs, "payload-policy-moved", &[("RedrivePolicy", &policy)]).await;
    let vars = [
        ("DLQ_URL", dlq.url.as_str()),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("PAYLOAD_BUCKETS", b.as_str()),
    ];
    let p = processor(&vars);
    let (message, _) = large_message("moved-1", &dest.uri(), 1000);
    put_owned(&b, "k", &message).await;
    send(&sqs, &q, &pointer_to(&b, "k")).await;
    let received = receive_n(&sqs, &q, 1, Duration::from_secs(10)).await;
    let failed = handle_unacknowledged(std::sync::Arc::clone(&p), &q, &received).await;
    assert!(failed.is_empty(), "{failed:?}");
    sqs.change_message_visibility()
        .queue_url(&q.url)
        .receipt_handle(received[0].receipt_handle.as_deref().unwrap())
        .visibility_timeout(0)
        .send()
        .await
        .unwrap();
    // Its next receive passes maxReceiveCount: SQS moves it to the DLQ.
    let _ = receive(&sqs, &q, 1).await;
    let in_dlq = receive_n_hidden_for(&sqs, &dlq, 1, 0, Duration::from_secs(10)).await;
    assert_eq!(in_dlq.len(), 1, "moved by the redrive policy");

    let out = run_retryq(
        &["dlq", "redrive", "--dlq-url", &dlq.url, "--to", &q.url],
        &[("PAYLOAD_BUCKETS", &b)],
    )
    .await
    .success();

    assert!(
        out.stdout
            .contains("moved 0, skipped 0, failed 0, already finished 1"),
        "{out:?}"
    );
    assert_eq!(depth(&sqs, &q).await, (0, 0), "nothing sent again");
    assert_eq!(depth(&sqs, &dlq).await, (0, 0), "and the letter is gone");
    dest.verify().await;
}

/// An object S3 will not serve as it is (archived to Glacier) makes its
/// message `invalid-message`, naming why, instead of bringing it back on
/// every receive; its letter keeps the original pointer (a copy of an
/// archived object fails too).
#[tokio::test]
async fn a_pointer_to_an_archived_object_is_an_invalid_message() {
    let dest = never_called().await;
    let b = bucket("archived");
    s3().create_bucket().bucket(&b).send().await.unwrap();
    let (message, _) = large_message("archived-1", &dest.uri(), 1000);
    s3().put_object()
        .bucket(&b)
        .key("archived")
        .storage_class(aws_sdk_s3::types::StorageClass::Glacier)
        .body(message.into_bytes().into())
        .send()
        .await
        .unwrap();
    let (sqs, q, dlq, p) = with_dlq("payload-archived", &[("PAYLOAD_BUCKETS", &b)]).await;
    let pointer = pointer_to(&b, "archived");

    let outcomes = run_batch(&p, &sqs, &q, &dlq, std::slice::from_ref(&pointer)).await;

    assert!(outcomes.retried.is_empty(), "{outcomes:?}");
    let letter = outcomes.dead.values().next().expect("dead-lettered");
    assert_eq!(
        attr(letter, "FailureReason").as_deref(),
        Some("invalid-message")
    );
    let last_error = attr(letter, "LastError").unwrap();
    assert!(last_error.contains("InvalidObjectState"), "{last_error}");
    assert_eq!(letter.body.as_deref(), Some(pointer.as_str()));
    dest.verify().await;
}

/// An expired message is dead-lettered `expired` when the breaker holds it
/// back, offloaded (its `expiresAt` read from its object's head, before
/// the body) as inline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_pointer_held_back_by_the_breaker_is_dead_lettered_expired() {
    let dest = serving(ResponseTemplate::new(503)).await;
    let b = bucket("expired-held");
    s3().create_bucket().bucket(&b).send().await.unwrap();
    let (sqs, q, dlq, p) = with_dlq(
        "payload-expired-held",
        &[
            ("PAYLOAD_BUCKETS", &b),
            ("BREAKER_THRESHOLD", "1"),
            ("BREAKER_COOLDOWN_SECONDS", "43200"),
        ],
    )
    .await;
    let opener = message("opener", &dest.uri(), serde_json::json!({}));
    let first = run_batch(&p, &sqs, &q, &dlq, &[opener]).await;
    assert_eq!(first.retried.len(), 1, "{first:?}");
    let expired = serde_json::json!({"expiresAt": "2020-01-01T00:00:00Z"});
    let inline = message("expired-inline", &dest.uri(), expired.clone());
    // As retryq's producer writes it: the request last, 300 KiB.
    let big: retryq::message::RetryMessage = serde_json::from_str(&message(
        "expired-offloaded",
        &dest.uri(),
        serde_json::json!({"expiresAt": "2020-01-01T00:00:00Z", "request": {"method": "POST", "body": "x".repeat(300 * 1024)}}),
    ))
    .unwrap();
    put_owned(&b, "expired", &serde_json::to_string(&big).unwrap()).await;

    let outcomes = run_batch(&p, &sqs, &q, &dlq, &[inline, pointer_to(&b, "expired")]).await;

    let reasons = outcomes.reasons();
    assert_eq!(
        reasons.values().filter(|r| *r == "expired").count(),
        2,
        "{reasons:?}, retried {:?}",
        outcomes.retried
    );
    assert_eq!(
        dest.received_requests().await.unwrap().len(),
        1,
        "the opener only"
    );
}

/// `retryq validate --payload-bucket` reports a rule that moves payloads
/// to Glacier before their messages are gone (S3 would not serve them),
/// and exits 1; a rule for finished payloads only is fine.
#[tokio::test]
async fn validate_reports_a_rule_that_archives_payloads() {
    use aws_sdk_s3::types::{
        BucketLifecycleConfiguration, ExpirationStatus, LifecycleRule, LifecycleRuleFilter,
        Transition, TransitionStorageClass,
    };
    let sqs = sqs();
    let fortnight = [("MessageRetentionPeriod", "1209600")];
    let q = queue_with(&sqs, "payload-archive-q", &fortnight).await;
    let dlq = queue_with(&sqs, "payload-archive-dlq", &fortnight).await;
    let b = bucket("archive-rule");
    s3().create_bucket().bucket(&b).send().await.unwrap();
    let rule = LifecycleRule::builder()
        .id("archive-after-a-day")
        .status(ExpirationStatus::Enabled)
        .filter(LifecycleRuleFilter::builder().prefix("").build())
        .transitions(
            Transition::builder()
                .days(1)
                .storage_class(TransitionStorageClass::Glacier)
                .build(),
        )
        .build()
        .unwrap();
    s3().put_bucket_lifecycle_configuration()
        .bucket(&b)
        .lifecycle_configuration(
            BucketLifecycleConfiguration::builder()
                .rules(rule)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    let out = run_retryq(
        &[
            "validate",
            "--queue-url",
            &q.url,
            "--dlq-url",
            &dlq.url,
            "--payload-bucket",
            &b,
        ],
        &[("MAX_ATTEMPTS", "3")],
    )
    .await;

    assert_eq!(out.code, 1, "{out:?}");
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(
        said.contains("archive-after-a-day") && said.contains("GLACIER after 1 day(s)"),
        "{said}"
    );
}

/// With a state table, a pointer record admitted on its head holds the
/// fleet's probe lease while its body is read. When the read outlasts the
/// lease (9 s against REQUEST_TIMEOUT + 5 s = 8 s) and another process
/// takes it, the record asks the breaker again before sending: one probe
/// at a time reaches the unproven host.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_probe_lease_outlived_by_a_body_read_is_not_used() {
    let dest = crate::destination::Destination::start(Duration::from_secs(2)).await;
    let table = crate::fleet::state_table().await;
    let b = bucket("probe-lease");
    s3().create_bucket().bucket(&b).send().await.unwrap();
    let (sqs, qa, dlqa, _) = with_dlq("payload-probe-a", &[]).await;
    let (_, qb, dlqb, _) = with_dlq("payload-probe-b", &[]).await;
    let vars = |dlq: &TestQueue| {
        [
            ("DLQ_URL", dlq.url.clone()),
            ("ALLOW_PRIVATE_DESTINATIONS", "true".to_owned()),
            ("STATE_TABLE", table.clone()),
            ("BREAKER_THRESHOLD", "3".to_owned()),
            ("REQUEST_TIMEOUT_SECONDS", "3".to_owned()),
            ("PAYLOAD_BUCKETS", b.clone()),
        ]
    };
    let (va, vb) = (vars(&dlqa), vars(&dlqb));
    let ra: Vec<(&str, &str)> = va.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let rb: Vec<(&str, &str)> = vb.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Only the whole read (GetObject with If-Match) is slow.
    let slow_s3 = slow_proxy(&endpoint(), "if-match:", Duration::from_secs(9)).await;
    let pa = processor_with_s3(&ra, &slow_s3);
    let pb = processor(&rb);
    let (message_a, _) = large_message("probe-a", &dest.url("/ok/a"), 300 * 1024);
    put_owned(&b, "a", &message_a).await;

    let a = {
        let (pa, sqs) = (pa.clone(), sqs.clone());
        let pointer = pointer_to(&b, "a");
        tokio::spawn(async move { run_batch(&pa, &sqs, &qa, &dlqa, &[pointer]).await })
    };
    // B comes once A's lease has run out, while A still reads its body.
    tokio::time::sleep(Duration::from_millis(8500)).await;
    let inline = message("probe-b", &dest.url("/ok/b"), serde_json::json!({}));
    let outcome_b = run_batch(&pb, &sqs, &qb, &dlqb, &[inline]).await;
    let outcome_a = a.await.unwrap();

    assert_eq!(
        dest.max_in_flight(),
        1,
        "one probe at a time: a {outcome_a:?} b {outcome_b:?} {}",
        dest.stats_json()
    );
    assert_eq!(outcome_b.delivered.len(), 1, "{outcome_b:?}");
}
