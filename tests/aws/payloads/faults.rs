//! Payloads under faults: the regressions of the third adversarial review
//! of §12.1–§12.4. A dead letter cut by the deadline, a delivered message
//! the redrive policy moved to the DLQ, an object S3 will not serve, an
//! expired message held back before its body is read, a lifecycle rule
//! that archives payloads, and a probe lease outlived by a body's read.

use std::time::Duration;

use wiremock::ResponseTemplate;

use super::*;

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

/// §12.7: a probe's lease covers its request from the moment it is sent.
/// The record waits for a request slot (MAX_CONCURRENCY=1, three 4.5 s
/// requests to a proven host ahead of it) longer than its lease
/// (REQUEST_TIMEOUT 5 s + 5 s); another process takes the lease meanwhile.
/// The first record's request is then withheld, not sent beside the other
/// probe: one probe at a time reaches the unproven host.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_probe_lease_covers_the_wait_for_a_request_slot() {
    let slow = crate::destination::Destination::start(Duration::from_millis(4500)).await;
    let host = crate::destination::Destination::start(Duration::from_secs(4)).await;
    let table = crate::fleet::state_table().await;
    let b = bucket("slot-lease");
    s3().create_bucket().bucket(&b).send().await.unwrap();
    let (sqs, qs, dlqs, _) = with_dlq("payload-slot-s", &[]).await;
    let (_, qa, dlqa, _) = with_dlq("payload-slot-a", &[]).await;
    let (_, qb, dlqb, _) = with_dlq("payload-slot-b", &[]).await;
    let vars = |dlq: &TestQueue, conc: &str| {
        vec![
            ("DLQ_URL", dlq.url.clone()),
            ("ALLOW_PRIVATE_DESTINATIONS", "true".to_owned()),
            ("STATE_TABLE", table.clone()),
            ("BREAKER_THRESHOLD", "3".to_owned()),
            ("REQUEST_TIMEOUT_SECONDS", "5".to_owned()),
            ("PAYLOAD_BUCKETS", b.clone()),
            ("MAX_CONCURRENCY", conc.to_owned()),
        ]
    };
    let (va, vb) = (vars(&dlqa, "1"), vars(&dlqb, "8"));
    let ra: Vec<(&str, &str)> = va.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let rb: Vec<(&str, &str)> = vb.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let pa = processor(&ra);
    let pb = processor(&rb);
    // The slow host is proven first: its requests need no lease.
    let first = run_batch(
        &pa,
        &sqs,
        &qs,
        &dlqs,
        &[message("s0", &slow.url("/ok/s0"), serde_json::json!({}))],
    )
    .await;
    assert_eq!(first.delivered.len(), 1, "{first:?}");
    let (message_a, _) = large_message("slot-a", &host.url("/ok/a"), 300 * 1024);
    put_owned(&b, "a", &message_a).await;
    let t0 = std::time::Instant::now();
    let s_batch = {
        let (pa, sqs) = (pa.clone(), sqs.clone());
        let bodies: Vec<String> = (1..=3)
            .map(|n| {
                message(
                    &format!("s{n}"),
                    &slow.url(&format!("/ok/s{n}")),
                    serde_json::json!({}),
                )
            })
            .collect();
        tokio::spawn(async move { run_batch(&pa, &sqs, &qs, &dlqs, &bodies).await })
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let a_batch = {
        let (pa, sqs) = (pa.clone(), sqs.clone());
        let pointer = pointer_to(&b, "a");
        tokio::spawn(async move { run_batch(&pa, &sqs, &qa, &dlqa, &[pointer]).await })
    };
    // After A's (renewed) lease ran out, while A still waits for its slot.
    tokio::time::sleep(Duration::from_millis(12000).saturating_sub(t0.elapsed())).await;
    let inline = message("slot-b", &host.url("/ok/b"), serde_json::json!({}));
    let outcome_b = run_batch(&pb, &sqs, &qb, &dlqb, &[inline]).await;
    let outcome_a = a_batch.await.unwrap();
    let outcome_s = s_batch.await.unwrap();
    let arrivals: Vec<_> = host
        .arrivals()
        .iter()
        .map(|a| a.duration_since(t0))
        .collect();
    eprintln!(
        "host arrivals since t0: {arrivals:?}; a {outcome_a:?} b {outcome_b:?} s {outcome_s:?}"
    );
    assert_eq!(
        host.max_in_flight(),
        1,
        "one probe at a time to the unproven host: {}",
        host.stats_json()
    );
}

/// §12.3: a redelivery of a delivered pointer record whose marked object
/// has since moved to an archive class (a lifecycle rule for finished
/// payloads) is acknowledged as already delivered: S3 will not serve the
/// object, but its mark still says it was finished for this message (moto,
/// like some stores, will not give an archived object's tags; the mark is
/// in its metadata too).
#[tokio::test]
async fn a_delivered_record_whose_object_was_archived_is_acknowledged() {
    let dest = expecting(200, 1).await;
    let b = bucket("marked-archived");
    s3().create_bucket().bucket(&b).send().await.unwrap();
    let (sqs, q, dlq, p) = with_dlq("payload-marked-archived", &[("PAYLOAD_BUCKETS", &b)]).await;
    let (message, _) = large_message("archived-marked", &dest.uri(), 100 * 1024);
    put_owned(&b, "k", &message).await;
    send(&sqs, &q, &pointer_to(&b, "k")).await;
    let received = receive_n(&sqs, &q, 1, Duration::from_secs(10)).await;
    let failed = handle_unacknowledged(std::sync::Arc::clone(&p), &q, &received).await;
    assert!(failed.is_empty(), "{failed:?}");
    // The lifecycle rule moves the marked object to Glacier.
    s3().copy_object()
        .copy_source(format!("{b}/k"))
        .bucket(&b)
        .key("k")
        .storage_class(aws_sdk_s3::types::StorageClass::Glacier)
        .send()
        .await
        .unwrap();

    let again = handle_unacknowledged(std::sync::Arc::clone(&p), &q, &received).await;

    assert!(again.is_empty(), "{again:?}");
    assert_eq!(depth(&sqs, &dlq).await, (0, 0), "not dead-lettered");
    dest.verify().await;
}

/// §12.7: a pointer record admitted on its head while its host is proven
/// holds a ticket without a lease. Its body read takes 9 s; meanwhile
/// another process's request fails (threshold 1: the breaker opens for
/// 2 s), and after the cool-down that process's probe takes the lease. The
/// first record's request is then withheld: the host is no longer proven,
/// and one request at a time reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_proven_hosts_ticket_does_not_outlive_the_breaker_opening() {
    let host = crate::destination::Destination::start(Duration::from_secs(3)).await;
    let table = crate::fleet::state_table().await;
    let b = bucket("leaseless");
    s3().create_bucket().bucket(&b).send().await.unwrap();
    let (sqs, qa, dlqa, _) = with_dlq("payload-leaseless-a", &[]).await;
    let (_, qb, dlqb, _) = with_dlq("payload-leaseless-b", &[]).await;
    let vars = |dlq: &TestQueue| {
        vec![
            ("DLQ_URL", dlq.url.clone()),
            ("ALLOW_PRIVATE_DESTINATIONS", "true".to_owned()),
            ("STATE_TABLE", table.clone()),
            ("BREAKER_THRESHOLD", "1".to_owned()),
            ("BREAKER_COOLDOWN_SECONDS", "2".to_owned()),
            ("REQUEST_TIMEOUT_SECONDS", "5".to_owned()),
            ("PAYLOAD_BUCKETS", b.clone()),
        ]
    };
    let (va, vb) = (vars(&dlqa), vars(&dlqb));
    let ra: Vec<(&str, &str)> = va.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let rb: Vec<(&str, &str)> = vb.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let slow_s3 = slow_proxy(&endpoint(), "if-match:", Duration::from_secs(9)).await;
    let pa = processor_with_s3(&ra, &slow_s3);
    let pb = processor(&rb);
    // The host is proven.
    let first = run_batch(
        &pb,
        &sqs,
        &qb,
        &dlqb,
        &[message("p0", &host.url("/ok/p0"), serde_json::json!({}))],
    )
    .await;
    assert_eq!(first.delivered.len(), 1, "{first:?}");
    let (message_a, _) = large_message("leaseless-a", &host.url("/ok/a"), 300 * 1024);
    put_owned(&b, "a", &message_a).await;
    let t0 = std::time::Instant::now();
    let a = {
        let (pa, sqs) = (pa.clone(), sqs.clone());
        let pointer = pointer_to(&b, "a");
        tokio::spawn(async move { run_batch(&pa, &sqs, &qa, &dlqa, &[pointer]).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let down = run_batch(
        &pb,
        &sqs,
        &qb,
        &dlqb,
        &[message("q1", &host.url("/down/q1"), serde_json::json!({}))],
    )
    .await;
    eprintln!("q1 done at {:?}: {down:?}", t0.elapsed());
    tokio::time::sleep(Duration::from_millis(7000).saturating_sub(t0.elapsed())).await;
    let probe = run_batch(
        &pb,
        &sqs,
        &qb,
        &dlqb,
        &[message("q2", &host.url("/ok/q2"), serde_json::json!({}))],
    )
    .await;
    let outcome_a = a.await.unwrap();
    let arrivals: Vec<_> = host
        .arrivals()
        .iter()
        .map(|x| x.saturating_duration_since(t0))
        .collect();
    eprintln!("arrivals since t0 {arrivals:?}; a {outcome_a:?} probe {probe:?}");
    assert_eq!(host.max_in_flight(), 1, "{}", host.stats_json());
}
