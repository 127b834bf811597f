//! Large payloads (spec §11) against the Amazon SQS Extended Client from
//! PyPI (`tests/interop/extended_client.py`), with moto's SQS and S3: a
//! message the Extended Client offloaded is resolved and delivered, its
//! object deleted; a dead-lettered one stays a pointer the Extended Client
//! reads back; pointers that cannot be resolved are `invalid-message`,
//! naming the bucket and key.

use std::time::Duration;

use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::*;

/// Runs `extended_client.py args…` with `stdin`; its JSON answer.
fn extended_client(args: &[&str], stdin: &str) -> serde_json::Value {
    let out = run_python("extended_client.py", args, stdin);
    assert!(
        out.status.success(),
        "extended_client.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("extended_client.py prints JSON")
}

fn s3() -> aws_sdk_s3::Client {
    s3_at(&endpoint())
}

fn s3_at(url: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(REGION))
        .endpoint_url(url)
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

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

fn bucket(name: &str) -> String {
    format!("retryq-{name}-{}-{}", std::process::id(), fastrand::u32(..))
}

/// A Retry Message whose body is `size` bytes of JSON text.
fn large_message(id: &str, url: &str, size: usize) -> (String, String) {
    let body = format!("{{\"blob\":\"{}\"}}", "x".repeat(size - 11));
    let message = serde_json::json!({
        "id": id,
        "destinationUrl": url,
        "request": {"method": "PUT", "headers": {"content-type": "application/json"}, "body": body}
    });
    (message.to_string(), body)
}

#[tokio::test]
async fn a_message_the_extended_client_offloaded_is_delivered_and_its_object_marked_delivered() {
    let dest = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&dest)
        .await;
    let b = bucket("ok");
    let (sqs, q, dlq, p) = with_dlq("payload-ok", &[("PAYLOAD_BUCKETS", &b)]).await;
    // Above SQS's 256 KiB and retryq's 512 KiB inline limit.
    let (message, body) = large_message("big-1", &dest.uri(), 900 * 1024);
    let received = offloaded(&sqs, &q, &b, &message).await;
    let pointer = received[0].body.clone().unwrap();
    let key = pointer_key(&pointer);
    let written = last_modified(&b, &key).await;
    // The mark starts the object's last day: a later second than its write.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let failed = failures(&invoke(&p, &sqs, &q, &received).await);

    assert!(
        pointer.contains("software.amazon.payloadoffloading.PayloadS3Pointer"),
        "{pointer}"
    );
    assert_eq!(
        attr(&received[0], "ExtendedPayloadSize"),
        Some(message.len().to_string())
    );
    assert!(failed.is_empty(), "delivered");
    assert_eq!(depth(&sqs, &dlq).await, (0, 0));
    let requests = dest.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].body, body.as_bytes(), "the whole body, once");
    assert!(
        last_modified(&b, &key).await > written,
        "marked by a copy: the lifecycle rule's day starts at delivery"
    );
    assert_eq!(
        tags(&b, &key).await,
        [
            ("retryq-finished".to_owned(), "delivered".to_owned()),
            (
                "retryq-message".to_owned(),
                received[0].message_id.clone().unwrap()
            )
        ],
        "the delivered payload is marked for its message, for the lifecycle rule to remove"
    );
}

/// A message offloaded by the Extended Client and received, with the
/// processor that follows pointers into its bucket.
struct Offloaded {
    sqs: aws_sdk_sqs::Client,
    q: TestQueue,
    dlq: TestQueue,
    p: std::sync::Arc<retryq::process::Processor>,
    b: String,
    message: String,
    received: Vec<aws_sdk_sqs::types::Message>,
}

/// A Retry Message `id` to `url` with a body of `size` bytes, offloaded to a
/// new bucket (`name`) by the SQS Extended Client and received.
async fn offloaded_to(url: &str, name: &str, id: &str, size: usize) -> Offloaded {
    let b = bucket(name);
    let (sqs, q, dlq, p) = with_dlq(&format!("payload-{name}"), &[("PAYLOAD_BUCKETS", &b)]).await;
    let (message, _) = large_message(id, url, size);
    let received = offloaded(&sqs, &q, &b, &message).await;
    Offloaded {
        sqs,
        q,
        dlq,
        p,
        b,
        message,
        received,
    }
}

/// Sends `message` through the SQS Extended Client (offloaded to bucket
/// `b`) and receives it, as the event source mapping would.
async fn offloaded(
    sqs: &aws_sdk_sqs::Client,
    q: &TestQueue,
    b: &str,
    message: &str,
) -> Vec<aws_sdk_sqs::types::Message> {
    extended_client(&["send", &q.url, b], message);
    let received = receive_n(sqs, q, 1, Duration::from_secs(20)).await;
    assert_eq!(received.len(), 1, "the offloaded message was received");
    received
}

/// The `s3Key` of a pointer body.
fn pointer_key(pointer: &str) -> String {
    retryq::payload::PayloadPointer::parse(pointer)
        .expect("a pointer")
        .expect("a valid pointer")
        .key
}

/// When an object was last written (a copy onto itself writes it).
async fn last_modified(bucket: &str, key: &str) -> aws_sdk_s3::primitives::DateTime {
    s3().head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap()
        .last_modified()
        .copied()
        .unwrap()
}

/// The tags of an object.
async fn tags(bucket: &str, key: &str) -> Vec<(String, String)> {
    s3().get_object_tagging()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap()
        .tag_set()
        .iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect()
}

/// §12.3: a delivered pointer record received again (its acknowledgement
/// lost, or a standard-queue duplicate) finds its object, marked delivered,
/// and is acknowledged without a second request, neither dead-lettered nor
/// retried.
#[tokio::test]
async fn a_redelivered_pointer_record_that_was_delivered_is_acknowledged_without_a_request() {
    let dest = expecting(200, 1).await;
    let Offloaded {
        sqs,
        q,
        dlq,
        p,
        received,
        ..
    } = offloaded_to(&dest.uri(), "again", "again-1", 300 * 1024).await;

    // Delivered, but its acknowledgement is lost: the same message is
    // handled again (the handler directly, nothing deleted in between).
    for _ in 0..2 {
        let failed = handle_unacknowledged(std::sync::Arc::clone(&p), &q, &received).await;
        assert!(failed.is_empty(), "{failed:?}");
    }

    assert_eq!(depth(&sqs, &dlq).await, (0, 0), "not dead-lettered");
    dest.verify().await;
}

#[tokio::test]
async fn a_dead_lettered_pointer_points_to_a_fresh_copy_that_outlives_the_original() {
    let dest = MockServer::start().await;
    // A 400 first (dead-lettered), then 200 for a message naming the
    // letter's copy and for the redriven copy.
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(400))
        .up_to_n_times(1)
        .mount(&dest)
        .await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(200))
        .expect(2)
        .mount(&dest)
        .await;
    let Offloaded {
        sqs,
        q,
        dlq,
        p,
        b,
        message,
        received,
    } = offloaded_to(&dest.uri(), "dead", "big-2", 300 * 1024).await;
    let original = pointer_key(received[0].body.as_deref().unwrap());
    let failed = failures(&invoke(&p, &sqs, &q, &received).await);
    // Seen raw (and left visible), then through the Extended Client.
    let raw = receive_n_hidden_for(&sqs, &dlq, 1, 0, Duration::from_secs(10)).await;
    let read_back = extended_client(&["read", &dlq.url, &b], "");

    assert!(failed.is_empty(), "dead-lettered and acknowledged");
    assert_eq!(
        read_back["body"], message,
        "the Extended Client resolves the DLQ copy"
    );
    assert_eq!(read_back["attributes"]["FailureReason"], "non-retryable");
    // The Extended Client hides its own attribute; SQS shows it.
    assert_eq!(
        attr(&raw[0], "ExtendedPayloadSize"),
        Some(message.len().to_string())
    );
    let fresh = pointer_key(raw[0].body.as_deref().unwrap());
    assert_ne!(fresh, original, "the letter points to a copy written now");
    assert_eq!(
        tags(&b, &fresh).await,
        [(
            "retryq-letter".to_owned(),
            received[0].message_id.clone().unwrap()
        )],
        "the copy is the letter's, not marked finished"
    );

    // A message that names the letter's copy (its key guessed or leaked)
    // is handled, but cannot get the letter's object marked and expired.
    send(&sqs, &q, &pointer_to(&b, &fresh)).await;
    let named = receive_n(&sqs, &q, 1, Duration::from_secs(10)).await;
    assert!(failures(&invoke(&p, &sqs, &q, &named).await).is_empty());
    assert!(
        !tags(&b, &fresh)
            .await
            .iter()
            .any(|(k, _)| k == "retryq-finished"),
        "a letter's copy is never marked"
    );
    assert_eq!(
        tags(&b, &original).await,
        [
            ("retryq-finished".to_owned(), "dead-lettered".to_owned()),
            (
                "retryq-message".to_owned(),
                received[0].message_id.clone().unwrap()
            )
        ],
        "the original is marked for its message, for the lifecycle rule to remove"
    );

    // The lifecycle rule removes the original; the letter is redriven: its
    // new message points to a copy written now, the letter's object goes
    // with the letter, and the message is delivered.
    s3().delete_object()
        .bucket(&b)
        .key(&original)
        .send()
        .await
        .unwrap();
    run_retryq(
        &["dlq", "redrive", "--dlq-url", &dlq.url, "--to", &q.url],
        &[("PAYLOAD_BUCKETS", &b)],
    )
    .await
    .success();
    let redriven = receive_n(&sqs, &q, 1, Duration::from_secs(10)).await;
    assert_eq!(redriven.len(), 1);
    let moved = pointer_key(redriven[0].body.as_deref().unwrap());
    assert!(
        moved != fresh && moved != original,
        "a copy written by the redrive"
    );
    let left = s3().list_objects_v2().bucket(&b).send().await.unwrap();
    let keys: Vec<&str> = left.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(
        keys,
        [moved.as_str()],
        "the letter's object went with the letter"
    );
    let outcomes = outcomes_of(&p, &sqs, &q, &dlq, &redriven, 60).await;
    assert_eq!(outcomes.delivered.len(), 1, "{outcomes:?}");
    dest.verify().await;
}

/// A dead-lettered pointer record received again (its acknowledgement
/// lost) finds its original marked dead-lettered: acknowledged without a
/// new attempt and without a second letter.
#[tokio::test]
async fn a_redelivered_dead_lettered_pointer_record_makes_no_second_letter() {
    let dest = expecting(404, 1).await;
    let Offloaded {
        sqs,
        q,
        dlq,
        p,
        received,
        ..
    } = offloaded_to(&dest.uri(), "dead-again", "dead-again-1", 300 * 1024).await;
    for _ in 0..2 {
        // A new processor each time: no memory of the first in-process.
        let p = std::sync::Arc::new(
            retryq::process::Processor::new(p.config().clone(), sqs.clone(), None).unwrap(),
        );
        let failed = handle_unacknowledged(p, &q, &received).await;
        assert!(failed.is_empty(), "{failed:?}");
    }
    let letters = receive_n(&sqs, &dlq, 2, Duration::from_secs(3)).await;
    assert_eq!(letters.len(), 1, "one letter");
    dest.verify().await;
}

#[tokio::test]
async fn pointers_that_cannot_be_resolved_are_invalid_messages_naming_the_object() {
    let dest = never_called().await;
    let b = bucket("bad");
    let (sqs, q, dlq, p) = with_dlq(
        "payload-bad",
        &[
            ("MAX_OFFLOADED_BODY_BYTES", "1000"),
            ("PAYLOAD_BUCKETS", &b),
        ],
    )
    .await;
    s3().create_bucket().bucket(&b).send().await.unwrap();
    let (too_big, _) = large_message("big-3", &dest.uri(), 5000);
    s3().put_object()
        .bucket(&b)
        .key("too-big")
        .body(too_big.into_bytes().into())
        .send()
        .await
        .unwrap();
    let pointer = |key: &str| pointer_to(&b, key);
    send(&sqs, &q, &pointer("missing-key")).await;
    send(&sqs, &q, &pointer("too-big")).await;
    send(
        &sqs,
        &q,
        r#"["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName": "b"}]"#,
    )
    .await;

    let received = receive_n(&sqs, &q, 3, Duration::from_secs(20)).await;
    let failed = failures(&invoke(&p, &sqs, &q, &received).await);
    let dead = receive_n(&sqs, &dlq, 3, Duration::from_secs(20)).await;

    assert!(failed.is_empty());
    let mut errors: Vec<String> = dead.iter().map(|m| attr(m, "LastError").unwrap()).collect();
    errors.sort();
    for m in &dead {
        assert_eq!(attr(m, "FailureReason").as_deref(), Some("invalid-message"));
    }
    assert!(
        errors
            .iter()
            .any(|e| e.contains(&format!("s3://{b}/missing-key")) && e.contains("does not exist")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("request.body") && e.contains("1000")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("s3Key")), "{errors:?}");
    assert_eq!(dest.received_requests().await.unwrap().len(), 0);
}

#[tokio::test]
async fn retryq_enqueue_offloads_a_large_message_that_the_extended_client_and_the_processor_read() {
    let dest = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&dest)
        .await;
    let b = bucket("enqueue");
    // PAYLOAD_BUCKET alone: the bucket the producer writes to is the one
    // pointers are followed into.
    let (sqs, q, _dlq, p) = with_dlq("payload-enqueue", &[("PAYLOAD_BUCKET", &b)]).await;
    s3().create_bucket().bucket(&b).send().await.unwrap();
    let data = std::env::temp_dir().join(format!("retryq-large-{}.json", std::process::id()));
    // Larger than a 1 MiB queue takes: offloaded whatever the queue's size.
    let body = format!("{{\"blob\":\"{}\"}}", "y".repeat(1100 * 1024));
    std::fs::write(&data, &body).unwrap();
    let data_arg = format!("@{}", data.display());
    let s3_endpoint = endpoint();
    let enqueue = |id: &'static str, bucket: Option<&str>| {
        let mut env = vec![("AWS_ENDPOINT_URL_S3", s3_endpoint.clone())];
        env.extend(bucket.map(|b| ("PAYLOAD_BUCKET", b.to_owned())));
        let args = [
            "enqueue".to_owned(),
            "--queue-url".to_owned(),
            q.url.clone(),
            "--url".to_owned(),
            dest.uri(),
            "--id".to_owned(),
            id.to_owned(),
            "-d".to_owned(),
            data_arg.clone(),
        ];
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            run_retryq(&args, &env).await
        }
    };

    let without = enqueue("big-0", None).await;
    let with = enqueue("big-1", Some(&b)).await;
    let through_extended_client = extended_client(&["read", &q.url, &b], "");
    let message: serde_json::Value =
        serde_json::from_str(through_extended_client["body"].as_str().unwrap()).unwrap();
    // The Extended Client left it visible again; the processor delivers it.
    let received = receive_n(&sqs, &q, 1, Duration::from_secs(20)).await;
    let failed = failures(&invoke(&p, &sqs, &q, &received).await);
    let _ = std::fs::remove_file(&data);

    assert_eq!(without.code, 2, "too large to go inline");
    assert!(without.stderr.contains("request.body"), "names the field");
    assert_eq!(with.code, 0, "{}", with.stderr);
    assert_eq!(
        message["request"]["body"], body,
        "the Extended Client reads it"
    );
    assert!(received[0]
        .body
        .as_deref()
        .unwrap()
        .contains("PayloadS3Pointer"));
    assert!(failed.is_empty(), "the processor delivers it");
    let r = dest.received_requests().await.unwrap();
    assert_eq!(r.last().unwrap().body, body.as_bytes());
}

#[tokio::test]
async fn a_pointer_is_retried_while_s3_is_unavailable_and_nothing_is_dead_lettered() {
    let dest = never_called().await;
    let (sqs, q, dlq, _) = with_dlq("payload-s3-down", &[]).await;
    // S3 behind a closed port: every call fails to connect.
    let down = format!("http://127.0.0.1:{}", free_port());
    let p = std::sync::Arc::new(
        retryq::process::Processor::new(
            config(&[
                ("DLQ_URL", &dlq.url),
                ("ALLOW_PRIVATE_DESTINATIONS", "true"),
                ("PAYLOAD_BUCKETS", "b"),
            ]),
            sqs.clone(),
            None,
        )
        .unwrap()
        .with_payload_store(retryq::payload::store::PayloadStore::with_client(s3_at(
            &down,
        ))),
    );
    let pointer = r#"["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName": "b", "s3Key": "k"}]"#;
    send(&sqs, &q, pointer).await;

    let received = receive_n(&sqs, &q, 1, Duration::from_secs(20)).await;
    let failed = failures(&invoke(&p, &sqs, &q, &received).await);

    assert_eq!(failed.len(), 1, "left in the queue for another receive");
    assert_eq!(depth(&sqs, &dlq).await, (0, 0), "not dead-lettered");
    assert_eq!(dest.received_requests().await.unwrap().len(), 0);
}

/// §12.2: a pointer is followed only into `PAYLOAD_BUCKETS`. One into
/// another bucket is `invalid-message` naming the bucket, its object is not
/// deleted, and not even read: the processor's S3 is behind a closed port,
/// so a read would have made the record retryable instead. Without any
/// bucket configured, no pointer is followed.
#[tokio::test]
async fn a_pointer_into_a_bucket_not_listed_is_invalid_and_its_object_untouched() {
    let dest = never_called().await;
    let (sqs, q, dlq, _) = with_dlq("payload-foreign", &[]).await;
    let foreign = bucket("foreign");
    s3().create_bucket().bucket(&foreign).send().await.unwrap();
    let (message, _) = large_message("foreign-1", &dest.uri(), 1000);
    s3().put_object()
        .bucket(&foreign)
        .key("k")
        .body(message.into_bytes().into())
        .send()
        .await
        .unwrap();
    let pointer = pointer_to(&foreign, "k");
    let unreachable_s3 = format!("http://127.0.0.1:{}", free_port());
    for (listed, says) in [
        (Some("retryq-own-payloads"), "not in PAYLOAD_BUCKETS"),
        (None, "neither PAYLOAD_BUCKETS nor PAYLOAD_BUCKET is set"),
    ] {
        let mut vars = vec![
            ("DLQ_URL", dlq.url.as_str()),
            ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ];
        vars.extend(listed.map(|b| ("PAYLOAD_BUCKETS", b)));
        let p = processor_with_s3(&vars, &unreachable_s3);
        let outcomes = run_batch(&p, &sqs, &q, &dlq, std::slice::from_ref(&pointer)).await;
        let (_, copy) = outcomes
            .dead
            .iter()
            .next()
            .unwrap_or_else(|| panic!("{outcomes:?}"));
        assert_eq!(
            attr(copy, "FailureReason").as_deref(),
            Some("invalid-message")
        );
        let last_error = attr(copy, "LastError").unwrap();
        assert!(
            last_error.contains(&format!("bucket {foreign} is not allowed"))
                && last_error.contains(says),
            "{last_error}"
        );
        assert_eq!(
            copy.body.as_deref(),
            Some(pointer.as_str()),
            "the pointer, as it was"
        );
    }
    let left = s3()
        .list_objects_v2()
        .bucket(&foreign)
        .send()
        .await
        .unwrap();
    assert_eq!(left.key_count(), Some(1), "the object is not deleted");
    dest.verify().await;
}

/// §12.3 on the Lambda path: the same delivered pointer record, invoked
/// twice through `cargo lambda watch` (the function's answer lost the first
/// time), makes one request; the second invocation acknowledges it as
/// `already-delivered`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_cargo_lambda_watch_a_delivered_pointer_invoked_twice_makes_one_request() {
    let dest = expecting(200, 1).await;
    let sqs = sqs();
    let q = queue(&sqs, "payload-watch").await;
    let dlq = queue(&sqs, "payload-watch-dlq").await;
    let b = bucket("watch");
    let (message, _) = large_message("watch-1", &dest.uri(), 300 * 1024);
    let received = offloaded(&sqs, &q, &b, &message).await;
    let event = retryq::trigger::sqs_event(&received, &q.arn, REGION);
    let dir = std::env::temp_dir().join(format!("retryq-payload-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let event_file = dir.join("event.json");
    std::fs::write(&event_file, serde_json::to_vec(&event).unwrap()).unwrap();
    let log = dir.join("watch.log");
    let port = free_port();
    let s3_endpoint = endpoint();
    let _watch = cargo_lambda_watch(
        port,
        &[
            ("DLQ_URL", &dlq.url),
            ("ALLOW_PRIVATE_DESTINATIONS", "true"),
            ("PAYLOAD_BUCKETS", &b),
            ("AWS_ENDPOINT_URL_S3", &s3_endpoint),
            ("RUST_LOG", "info"),
        ],
        &log,
    );

    wait_for_cargo_lambda_watch(port, &log).await;
    let first = cargo_lambda_invoke(port, &event_file).unwrap();
    let second = cargo_lambda_invoke(port, &event_file).unwrap();

    for answer in [&first, &second] {
        assert_eq!(
            answer["batchItemFailures"],
            serde_json::json!([]),
            "{answer}"
        );
    }
    assert_eq!(depth(&sqs, &dlq).await, (0, 0), "not dead-lettered");
    let output = std::fs::read_to_string(&log).unwrap();
    assert!(
        output.contains("out=already-delivered")
            || output.contains("\"out\":\"already-delivered\""),
        "{output}"
    );
    dest.verify().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Sets the bucket's lifecycle rules: `(id, days, only the finished tag)`.
async fn set_lifecycle(bucket: &str, rules: &[(&str, i32, bool)]) {
    use aws_sdk_s3::types::{
        BucketLifecycleConfiguration, ExpirationStatus, LifecycleExpiration, LifecycleRule,
        LifecycleRuleFilter, Tag,
    };
    let rules = rules.iter().map(|(id, days, finished)| {
        let filter = match finished {
            true => LifecycleRuleFilter::builder()
                .tag(
                    Tag::builder()
                        .key("retryq-finished")
                        .value("delivered")
                        .build()
                        .unwrap(),
                )
                .build(),
            false => LifecycleRuleFilter::builder().prefix("").build(),
        };
        LifecycleRule::builder()
            .id(*id)
            .status(ExpirationStatus::Enabled)
            .filter(filter)
            .expiration(LifecycleExpiration::builder().days(*days).build())
            .build()
            .unwrap()
    });
    let config = BucketLifecycleConfiguration::builder()
        .set_rules(Some(rules.collect()))
        .build()
        .unwrap();
    s3().put_bucket_lifecycle_configuration()
        .bucket(bucket)
        .lifecycle_configuration(config)
        .send()
        .await
        .unwrap();
}

/// §12.1: `retryq validate --payload-bucket` reads the bucket's lifecycle
/// and reports a rule that could expire a payload while a message in the
/// queues (14 days) still points to it; exit 1. A rule for finished
/// payloads only, and one longer than the retention, pass.
#[tokio::test]
async fn validate_reports_a_lifecycle_rule_that_would_expire_payloads_before_their_messages() {
    let sqs = sqs();
    let fortnight = [("MessageRetentionPeriod", "1209600")];
    let q = queue_with(&sqs, "lifecycle-q", &fortnight).await;
    let dlq = queue_with(&sqs, "lifecycle-dlq", &fortnight).await;
    let b = bucket("lifecycle");
    s3().create_bucket().bucket(&b).send().await.unwrap();
    let validate = || {
        let args = [
            "validate",
            "--queue-url",
            &q.url,
            "--dlq-url",
            &dlq.url,
            "--payload-bucket",
            &b,
        ];
        async move { run_retryq(&args, &[("MAX_ATTEMPTS", "3")]).await }
    };

    // No lifecycle at all: nothing expires.
    let none = validate().await;
    assert_eq!(none.code, 0, "{} {}", none.stdout, none.stderr);

    set_lifecycle(&b, &[("general", 15, false), ("finished", 1, true)]).await;
    let good = validate().await;
    assert_eq!(good.code, 0, "{} {}", good.stdout, good.stderr);
    assert!(
        good.stdout.contains("2 lifecycle rule(s)"),
        "{}",
        good.stdout
    );

    set_lifecycle(&b, &[("week", 7, false), ("finished", 1, true)]).await;
    let bad = validate().await;
    assert_eq!(bad.code, 1, "{} {}", bad.stdout, bad.stderr);
    assert!(
        bad.stdout
            .contains(&format!("s3://{b} LifecycleConfiguration"))
            && bad.stdout.contains("\"week\"")
            && !bad.stdout.contains("\"finished\""),
        "{}",
        bad.stdout
    );
}

/// §12.4: at most `PAYLOAD_MEMORY_BYTES` of fetched bodies at once. With
/// 1 MiB, three pointers to 600 KiB bodies go one at a time (the slow
/// destination sees one request in flight, where it would see three), and
/// a 1.5 MiB body, larger than the budget, still goes, alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_payload_bodies_stay_within_the_memory_budget() {
    // Slow enough that, without the budget, the requests overlap.
    let dest = crate::destination::Destination::start(Duration::from_secs(2)).await;
    let b = bucket("budget");
    let (sqs, q, dlq, p) = with_dlq(
        "payload-budget",
        &[("PAYLOAD_BUCKETS", &b), ("PAYLOAD_MEMORY_BYTES", "1048576")],
    )
    .await;
    s3().create_bucket().bucket(&b).send().await.unwrap();
    let mut pointers = Vec::new();
    for (i, size) in [600 * 1024, 600 * 1024, 600 * 1024, 1536 * 1024]
        .iter()
        .enumerate()
    {
        let id = format!("budget-{i}");
        let (message, _) = large_message(&id, &dest.url(&format!("/ok/{id}")), *size);
        s3().put_object()
            .bucket(&b)
            .key(&id)
            .body(message.into_bytes().into())
            .send()
            .await
            .unwrap();
        pointers.push(pointer_to(&b, &id));
    }

    let outcomes = run_batch(&p, &sqs, &q, &dlq, &pointers).await;

    assert_eq!(outcomes.delivered.len(), 4, "{outcomes:?}");
    assert_eq!(dest.delivered().len(), 4);
    assert_eq!(
        dest.max_in_flight(),
        1,
        "one body at a time within 1 MiB, the large one alone"
    );
}

// Regressions of the adversarial review of the payload lifetimes ----------

/// A pointer body to `key` in `bucket`.
fn pointer_to(bucket: &str, key: &str) -> String {
    retryq::payload::PayloadPointer {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
    }
    .body()
}

/// Stores `text` under `key`, with a content type, user metadata and a tag
/// of its owner's.
async fn put_owned(bucket: &str, key: &str, text: &str) {
    s3().put_object()
        .bucket(bucket)
        .key(key)
        .content_type("application/json")
        .metadata("owner", "billing")
        .tagging("keep=forever")
        .body(text.as_bytes().to_vec().into())
        .send()
        .await
        .unwrap();
}

/// A TCP proxy to `upstream` that holds back, for `delay`, what a client
/// sends when it contains `needle` (lower case): a slow S3 for one kind of
/// call. Its URL; it stops with the test's runtime.
async fn slow_proxy(upstream: &str, needle: &'static str, delay: Duration) -> String {
    proxy(upstream, move |chunk| {
        if chunk.contains(needle) {
            delay
        } else {
            Duration::ZERO
        }
    })
    .await
}

/// A TCP proxy to `upstream` that shows `inspect` (lower case) each chunk a
/// client sends, and holds it back as long as `inspect` says. Its URL; it
/// stops with the test's runtime.
async fn proxy(
    upstream: &str,
    inspect: impl Fn(&str) -> Duration + Clone + Send + Sync + 'static,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = upstream.trim_start_matches("http://").to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let inspect = inspect.clone();
            tokio::spawn(async move {
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                let up = async move {
                    let mut buf = vec![0u8; 1 << 16];
                    while let Ok(n @ 1..) = from_client.read(&mut buf).await {
                        let chunk = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                        tokio::time::sleep(inspect(&chunk)).await;
                        if to_server.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let down = async move {
                    let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                };
                tokio::join!(up, down);
            });
        }
    });
    url
}

/// The reads of objects' bytes that went through an S3 proxy: of a head
/// (a ranged GetObject) and of a whole object.
#[derive(Debug, Default)]
struct Reads {
    heads: std::sync::atomic::AtomicUsize,
    whole: std::sync::atomic::AtomicUsize,
}

/// An S3 endpoint counting the object reads made through it.
async fn counting_s3() -> (String, std::sync::Arc<Reads>) {
    use std::sync::atomic::Ordering::SeqCst;
    let reads = std::sync::Arc::new(Reads::default());
    let counted = std::sync::Arc::clone(&reads);
    let url = proxy(&endpoint(), move |chunk| {
        let line = chunk.lines().next().unwrap_or_default();
        if line.starts_with("get /") && !line.contains("tagging") && !line.contains("lifecycle") {
            if chunk.contains("\r\nrange: bytes=0-") {
                counted.heads.fetch_add(1, SeqCst);
            } else {
                counted.whole.fetch_add(1, SeqCst);
            }
        }
        Duration::ZERO
    })
    .await;
    (url, reads)
}

/// §12.4: a record the breaker does not admit holds no body. Its object is
/// read only as far as its head (where the destination is); only the
/// admitted record's body is read whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_breaker_holds_back_reads_only_its_payloads_head() {
    use std::sync::atomic::Ordering::SeqCst;
    let dest = serving(ResponseTemplate::new(503)).await;
    let b = bucket("held-back");
    let (s3_url, reads) = counting_s3().await;
    let (sqs, q, dlq, _) = with_dlq("payload-held-back", &[]).await;
    let vars = [
        ("DLQ_URL", dlq.url.as_str()),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("PAYLOAD_BUCKETS", b.as_str()),
        ("BREAKER_THRESHOLD", "1"),
        ("BREAKER_COOLDOWN_SECONDS", "43200"),
    ];
    let p = processor_with_s3(&vars, &s3_url);
    s3().create_bucket().bucket(&b).send().await.unwrap();
    // 300 KiB each: larger than a head.
    let mut pointers = Vec::new();
    for i in 0..4 {
        let key = format!("held-{i}");
        let (message, _) = large_message(&key, &dest.uri(), 300 * 1024);
        put_owned(&b, &key, &message).await;
        pointers.push(pointer_to(&b, &key));
    }
    // The first opens the breaker (one failure); the others are held back.
    let first = run_batch(&p, &sqs, &q, &dlq, &pointers[..1]).await;
    assert_eq!(first.retried.len(), 1, "{first:?}");
    let rest = run_batch(&p, &sqs, &q, &dlq, &pointers[1..]).await;

    assert_eq!(rest.retried.len(), 3, "{rest:?}");
    assert_eq!(dest.received_requests().await.unwrap().len(), 1);
    assert_eq!(reads.heads.load(SeqCst), 4, "every object's head, once");
    assert_eq!(
        reads.whole.load(SeqCst),
        1,
        "only the admitted record's body is read whole"
    );
}

/// A finished mark that S3 is slow to make does not outlast the batch:
/// the record is still reported delivered (or dead-lettered, with one
/// letter) and not listed for another receive, which would repeat it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_finished_mark_never_makes_a_finished_record_come_back() {
    for (status, dead) in [(200, 0), (400, 1)] {
        let dest = serving(ResponseTemplate::new(status)).await;
        let b = bucket("slow-mark");
        s3().create_bucket().bucket(&b).send().await.unwrap();
        let (sqs, q, dlq, _) = with_dlq("payload-slow-mark", &[]).await;
        let vars = [
            ("DLQ_URL", dlq.url.as_str()),
            ("ALLOW_PRIVATE_DESTINATIONS", "true"),
            ("PAYLOAD_BUCKETS", b.as_str()),
        ];
        // Only the mark replaces the metadata (a copy onto itself): held
        // back 8 s.
        let slow_s3 = slow_proxy(
            &endpoint(),
            "x-amz-metadata-directive:",
            Duration::from_secs(8),
        )
        .await;
        let p = processor_with_s3(&vars, &slow_s3);
        let (message, _) = large_message("slow-mark-1", &dest.uri(), 1000);
        put_owned(&b, "k", &message).await;
        send(&sqs, &q, &pointer_to(&b, "k")).await;
        let received = receive_n(&sqs, &q, 1, Duration::from_secs(10)).await;

        // The invocation ends 3 s from now: the mark cannot be made in it.
        let failed = failures(&invoke_within(&p, &sqs, &q, &received, 3).await);

        assert!(
            failed.is_empty(),
            "HTTP {status}: finished, not left: {failed:?}"
        );
        assert_eq!(dest.received_requests().await.unwrap().len(), 1);
        let letters = receive_n(&sqs, &dlq, 2, Duration::from_secs(2)).await;
        assert_eq!(letters.len(), dead, "HTTP {status}");
    }
}

/// A finished mark belongs to the message it was made for: a new message
/// whose object was copied from a marked one (tags and all, as S3's copy
/// does by default) is delivered, not taken as done.
#[tokio::test]
async fn a_mark_made_for_another_message_is_not_taken_as_done() {
    let dest = expecting(200, 2).await;
    let b = bucket("copied-mark");
    s3().create_bucket().bucket(&b).send().await.unwrap();
    let (sqs, q, dlq, p) = with_dlq("payload-copied-mark", &[("PAYLOAD_BUCKETS", &b)]).await;
    let (message, _) = large_message("copied-1", &dest.uri(), 1000);
    put_owned(&b, "first", &message).await;
    run_batch(&p, &sqs, &q, &dlq, &[pointer_to(&b, "first")]).await;
    s3().copy_object()
        .copy_source(format!("{b}/first"))
        .bucket(&b)
        .key("second")
        .send()
        .await
        .unwrap();
    assert!(
        tags(&b, "second")
            .await
            .iter()
            .any(|(k, _)| k == "retryq-finished"),
        "the copy carries the first message's mark"
    );

    let outcomes = run_batch(&p, &sqs, &q, &dlq, &[pointer_to(&b, "second")]).await;

    assert_eq!(outcomes.delivered.len(), 1, "{outcomes:?}");
    dest.verify().await;
}

/// Marking keeps what the object's owner gave it (content type, metadata,
/// other tags); an invalid message's object, which may not be a payload at
/// all, is not marked (nor stripped); and an object that exists but cannot
/// be a message (too large) still gets a copy for its letter.
#[tokio::test]
async fn marks_keep_the_objects_attributes_and_spare_what_is_not_a_payload() {
    let dest = serving(ResponseTemplate::new(200)).await;
    let b = bucket("owned");
    s3().create_bucket().bucket(&b).send().await.unwrap();
    let (sqs, q, dlq, p) = with_dlq(
        "payload-owned",
        &[
            ("PAYLOAD_BUCKETS", &b),
            ("MAX_OFFLOADED_BODY_BYTES", "2000"),
        ],
    )
    .await;
    let (message, _) = large_message("owned-1", &dest.uri(), 1000);
    put_owned(&b, "delivered", &message).await;
    put_owned(&b, "not-a-message", r#"{"invoice": 42}"#).await;
    let (huge, _) = large_message("owned-2", &dest.uri(), 9000);
    put_owned(&b, "too-large", &huge).await;
    // Bytes that are not text: the object exists but cannot be a message.
    s3().put_object()
        .bucket(&b)
        .key("binary")
        .body(vec![0xff, 0xfe, 0x00, 0x80].into())
        .send()
        .await
        .unwrap();

    let outcomes = run_batch(
        &p,
        &sqs,
        &q,
        &dlq,
        &[
            pointer_to(&b, "delivered"),
            pointer_to(&b, "not-a-message"),
            pointer_to(&b, "too-large"),
            pointer_to(&b, "binary"),
        ],
    )
    .await;

    assert_eq!(outcomes.delivered.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes.dead.len(), 3, "{outcomes:?}");
    let head = s3()
        .head_object()
        .bucket(&b)
        .key("delivered")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("application/json"));
    assert_eq!(head.metadata().unwrap()["owner"], "billing");
    let delivered_tags = tags(&b, "delivered").await;
    assert!(
        delivered_tags.contains(&("keep".into(), "forever".into())),
        "{delivered_tags:?}"
    );
    assert!(
        delivered_tags.contains(&("retryq-finished".into(), "delivered".into())),
        "{delivered_tags:?}"
    );
    assert_eq!(
        tags(&b, "not-a-message").await,
        [("keep".to_owned(), "forever".to_owned())]
    );
    let head = s3()
        .head_object()
        .bucket(&b)
        .key("not-a-message")
        .send()
        .await
        .unwrap();
    assert_eq!(head.metadata().unwrap()["owner"], "billing");
    let letter_keys: Vec<String> = outcomes
        .dead
        .values()
        .map(|l| pointer_key(l.body.as_deref().unwrap()))
        .collect();
    assert!(
        !letter_keys.contains(&"too-large".to_owned())
            && !letter_keys.contains(&"binary".to_owned()),
        "the letters of objects that cannot be messages point to copies: {letter_keys:?}"
    );
    assert_eq!(
        tags(&b, "too-large").await,
        [("keep".to_owned(), "forever".to_owned())]
    );
    // Each letter says its object's size, as the Extended Client needs to
    // read it back: also the one whose object could not be read as text.
    let letter_of = |what: &str| {
        outcomes
            .dead
            .values()
            .find(|l| attr(l, "LastError").is_some_and(|e| e.contains(what)))
            .unwrap_or_else(|| panic!("a letter whose LastError says {what}"))
    };
    assert_eq!(
        attr(letter_of("request.body"), "ExtendedPayloadSize"),
        Some(huge.len().to_string())
    );
    assert_eq!(
        attr(letter_of("not UTF-8"), "ExtendedPayloadSize"),
        Some("4".to_owned())
    );
}

/// A redrive deletes only a letter's own copy: a DLQ message that names the
/// producer's object (as the redrive policy moves one there) is moved with
/// a fresh copy, and the producer's object, which a duplicate may still
/// name, stays.
#[tokio::test]
async fn a_redrive_deletes_only_a_letters_own_copy() {
    let sqs = sqs();
    let q = queue(&sqs, "payload-redrive-own").await;
    let dlq = queue(&sqs, "payload-redrive-own-dlq").await;
    let b = bucket("redrive-own");
    s3().create_bucket().bucket(&b).send().await.unwrap();
    let (message, _) = large_message("own-1", "http://127.0.0.1:9/", 1000);
    put_owned(&b, "producers", &message).await;
    send(&sqs, &dlq, &pointer_to(&b, "producers")).await;

    run_retryq(
        &["dlq", "redrive", "--dlq-url", &dlq.url, "--to", &q.url],
        &[("PAYLOAD_BUCKETS", &b)],
    )
    .await
    .success();

    let moved = receive_n(&sqs, &q, 1, Duration::from_secs(10)).await;
    assert_eq!(moved.len(), 1);
    assert_ne!(pointer_key(moved[0].body.as_deref().unwrap()), "producers");
    let left = s3().list_objects_v2().bucket(&b).send().await.unwrap();
    let keys: Vec<&str> = left.contents().iter().filter_map(|o| o.key()).collect();
    assert!(
        keys.contains(&"producers"),
        "the producer's object stays: {keys:?}"
    );
    assert_eq!(keys.len(), 2, "and the moved message's copy: {keys:?}");
}

/// A pointer letter into a bucket `PAYLOAD_BUCKETS` does not list (here:
/// none is set) is not redriven: its moved message would name an object
/// written when it was dead-lettered, which may expire before the retry
/// queue lets the message go (§12.1). It stays in the DLQ, and the command
/// says why and fails; an inline letter beside it is moved.
#[tokio::test]
async fn a_pointer_letter_is_not_redriven_without_its_bucket() {
    let sqs = sqs();
    let q = queue(&sqs, "payload-redrive-nobucket").await;
    let dlq = queue(&sqs, "payload-redrive-nobucket-dlq").await;
    let b = bucket("redrive-nobucket");
    s3().create_bucket().bucket(&b).send().await.unwrap();
    let (message, _) = large_message("nobucket-1", "http://127.0.0.1:9/", 1000);
    put_owned(&b, "letter", &message).await;
    send(&sqs, &dlq, &pointer_to(&b, "letter")).await;
    send(&sqs, &dlq, &message).await;

    let out = run_retryq(
        &["dlq", "redrive", "--dlq-url", &dlq.url, "--to", &q.url],
        &[],
    )
    .await;

    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("moved 1, skipped 0, failed 1"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains(&format!("bucket {b} is not allowed")),
        "{}",
        out.stderr
    );
    let moved = receive_n(&sqs, &q, 2, Duration::from_secs(3)).await;
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].body.as_deref(), Some(message.as_str()));
    let left = receive_n(&sqs, &dlq, 2, Duration::from_secs(3)).await;
    assert_eq!(left.len(), 1, "the pointer letter stays");
    assert_eq!(
        left[0].body.as_deref(),
        Some(pointer_to(&b, "letter").as_str())
    );
}

/// Two messages that name one object (a producer that sent its pointer
/// twice): each is delivered, and a redelivery of the first, after the
/// second's mark, is still acknowledged without a request; the mark names
/// both messages.
#[tokio::test]
async fn a_shared_object_remembers_every_message_it_was_finished_for() {
    let dest = expecting(200, 2).await;
    let b = bucket("shared");
    let (sqs, q, dlq, p) = with_dlq("payload-shared", &[("PAYLOAD_BUCKETS", &b)]).await;
    s3().create_bucket().bucket(&b).send().await.unwrap();
    let (message, _) = large_message("shared-1", &dest.uri(), 1000);
    put_owned(&b, "shared", &message).await;
    send(&sqs, &q, &pointer_to(&b, "shared")).await;
    send(&sqs, &q, &pointer_to(&b, "shared")).await;
    let received = receive_n(&sqs, &q, 2, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 2);

    for m in [&received[0], &received[1], &received[0]] {
        let failed =
            handle_unacknowledged(std::sync::Arc::clone(&p), &q, std::slice::from_ref(m)).await;
        assert!(failed.is_empty(), "{failed:?}");
    }

    assert_eq!(depth(&sqs, &dlq).await, (0, 0), "not dead-lettered");
    dest.verify().await;
    let marked = tags(&b, "shared").await;
    let ids = marked
        .iter()
        .find(|(k, _)| k == "retryq-message")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    for m in &received {
        assert!(ids.contains(m.message_id.as_deref().unwrap()), "{ids}");
    }
    assert!(marked.contains(&("keep".to_owned(), "forever".to_owned())));
}

mod faults;

/// Without `PAYLOAD_OFFLOAD_BYTES`, `retryq enqueue` offloads only what its
/// queue cannot take (§13.2): a 400 KiB message goes inline to a 1 MiB
/// queue, and through S3 to a 256 KiB one.
#[tokio::test]
async fn the_offload_threshold_follows_the_queues_maximum_message_size() {
    let sqs = sqs();
    let b = bucket("threshold");
    s3().create_bucket().bucket(&b).send().await.unwrap();
    let large_queue =
        queue_with(&sqs, "threshold-1mib", &[("MaximumMessageSize", "1048576")]).await;
    let small_queue = queue_with(&sqs, "threshold-256k", &[("MaximumMessageSize", "262144")]).await;
    let data = std::env::temp_dir().join(format!("retryq-threshold-{}.json", std::process::id()));
    std::fs::write(
        &data,
        format!("{{\"blob\":\"{}\"}}", "z".repeat(400 * 1024)),
    )
    .unwrap();
    let data_arg = format!("@{}", data.display());
    let s3_endpoint = endpoint();
    let env = [
        ("AWS_ENDPOINT_URL_S3", s3_endpoint.as_str()),
        ("PAYLOAD_BUCKET", b.as_str()),
    ];
    for q in [&large_queue, &small_queue] {
        let out = run_retryq(
            &[
                "enqueue",
                "--queue-url",
                &q.url,
                "--url",
                "https://partner.example.com/x",
                "-d",
                &data_arg,
            ],
            &env,
        )
        .await;
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    let _ = std::fs::remove_file(&data);

    let inline = receive_n(&sqs, &large_queue, 1, Duration::from_secs(10)).await;
    let offloaded = receive_n(&sqs, &small_queue, 1, Duration::from_secs(10)).await;
    let text = |m: &aws_sdk_sqs::types::Message| m.body.clone().unwrap_or_default();
    assert!(
        text(&inline[0]).len() > 400 * 1024 && !text(&inline[0]).contains("PayloadS3Pointer"),
        "inline in the 1 MiB queue"
    );
    assert!(
        text(&offloaded[0]).contains("PayloadS3Pointer"),
        "offloaded for the 256 KiB queue: {}",
        text(&offloaded[0])
    );
}
