//! Fair queues (§13.1) against moto's SQS. moto keeps a standard queue's
//! `MessageGroupId` and gives it back on receive, as SQS does, but does not
//! model fairness itself (which tenant's messages a receive returns first):
//! these tests check the group a message is sent with, and that everything
//! retryq sends on its behalf keeps it.

use std::time::Duration;

use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use wiremock::matchers::any;
use wiremock::{Mock, ResponseTemplate};

use crate::common::*;

fn group_of(m: &Message) -> Option<String> {
    m.attributes
        .as_ref()?
        .get(&MessageSystemAttributeName::MessageGroupId)
        .cloned()
}

/// `retryq enqueue` to `q` with these extra flags and variables: the one
/// message received.
async fn enqueued(q: &TestQueue, flags: &[&str], env: &[(&str, &str)]) -> Message {
    let mut args = vec![
        "enqueue",
        "--queue-url",
        &q.url,
        "--url",
        "https://partner.example.com:8443/v1/orders",
    ];
    args.extend_from_slice(flags);
    let out = run_retryq(&args, env).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut got = receive_n(&sqs(), q, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    got.remove(0)
}

#[tokio::test]
async fn enqueue_groups_by_host_by_group_or_not_at_all() {
    let sqs = sqs();
    let by_host = enqueued(&queue(&sqs, "fair-host").await, &[], &[]).await;
    assert_eq!(
        group_of(&by_host).as_deref(),
        Some("partner.example.com"),
        "the host, without the port"
    );
    let by_flag = enqueued(
        &queue(&sqs, "fair-flag").await,
        &["--group", "tenant-7"],
        &[],
    )
    .await;
    assert_eq!(group_of(&by_flag).as_deref(), Some("tenant-7"));
    let none = enqueued(
        &queue(&sqs, "fair-none").await,
        &[],
        &[("FAIR_QUEUE_KEY", "none")],
    )
    .await;
    assert_eq!(group_of(&none), None);
    let flag_wins = enqueued(
        &queue(&sqs, "fair-none-flag").await,
        &["--group", "tenant-8"],
        &[("FAIR_QUEUE_KEY", "none")],
    )
    .await;
    assert_eq!(group_of(&flag_wins).as_deref(), Some("tenant-8"));
}

#[tokio::test]
async fn a_bad_group_or_fair_queue_key_is_refused_by_name() {
    let q = "http://127.0.0.1:1/123456789012/never-used";
    let base = [
        "enqueue",
        "--queue-url",
        q,
        "--url",
        "https://x.example.com/",
    ];
    let mut with_space = base.to_vec();
    with_space.extend_from_slice(&["--group", "tenant 7"]);
    let out = run_retryq(&with_space, &[]).await;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("group"), "{}", out.stderr);
    let out = run_retryq(&base, &[("FAIR_QUEUE_KEY", "tenant")]).await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("FAIR_QUEUE_KEY"), "{}", out.stderr);
}

/// A message of tenant `group` in `q` for `url`.
async fn send_grouped(sqs: &aws_sdk_sqs::Client, q: &TestQueue, id: &str, url: &str, group: &str) {
    sqs.send_message()
        .queue_url(&q.url)
        .message_body(message(id, url, serde_json::json!({})))
        .message_group_id(group)
        .send()
        .await
        .expect("moto takes a group on a standard queue");
}

/// Its dead letter keeps a message's group, and so does its redrive.
#[tokio::test]
async fn a_dead_letter_and_its_redrive_keep_the_group() {
    let sqs = sqs();
    let (q, dlq) = (
        queue(&sqs, "fair-letter").await,
        queue(&sqs, "fair-letter-dlq").await,
    );
    let refusing = answering(400).await;
    send_grouped(&sqs, &q, "fair-letter-1", &refusing.uri(), "tenant-a").await;
    let p = processor(&[
        ("DLQ_URL", &dlq.url),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
    ]);
    let received = receive_n(&sqs, &q, 1, Duration::from_secs(10)).await;
    assert_eq!(group_of(&received[0]).as_deref(), Some("tenant-a"));
    assert!(failures(&invoke(&p, &sqs, &q, &received).await).is_empty());

    let letters = receive_n_hidden_for(&sqs, &dlq, 1, 1, Duration::from_secs(10)).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(group_of(&letters[0]).as_deref(), Some("tenant-a"));

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let target = queue(&sqs, "fair-letter-target").await;
    let out = run_retryq(
        &["dlq", "redrive", "--dlq-url", &dlq.url, "--to", &target.url],
        &[],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let redriven = receive_n(&sqs, &target, 1, Duration::from_secs(10)).await;
    assert_eq!(redriven.len(), 1);
    assert_eq!(group_of(&redriven[0]).as_deref(), Some("tenant-a"));
}

/// A record carried over into a fresh copy (§12.5) keeps its group.
#[tokio::test]
async fn a_carried_copy_keeps_the_group() {
    let sqs = sqs();
    let redrive_dlq = queue(&sqs, "fair-carry-redrive").await;
    let policy = format!(
        "{{\"deadLetterTargetArn\":\"{}\",\"maxReceiveCount\":\"2\"}}",
        redrive_dlq.arn
    );
    let q = queue_with(&sqs, "fair-carry", &[("RedrivePolicy", &policy)]).await;
    let dlq = queue(&sqs, "fair-carry-dlq").await;
    let dest = wiremock::MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(503))
        .mount(&dest)
        .await;
    send_grouped(&sqs, &q, "fair-carry-1", &dest.uri(), "tenant-b").await;
    let p = processor(&[
        ("DLQ_URL", &dlq.url),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("MAX_ATTEMPTS", "10"),
        ("BACKOFF_BASE_SECONDS", "1"),
        ("BACKOFF_MAX_SECONDS", "1"),
    ]);
    // The first receive is maxReceiveCount - 1: the record is carried over.
    let received = receive_n(&sqs, &q, 1, Duration::from_secs(10)).await;
    assert!(
        failures(&invoke(&p, &sqs, &q, &received).await).is_empty(),
        "acknowledged once carried"
    );

    let copies = receive_n(&sqs, &q, 1, Duration::from_secs(10)).await;
    assert_eq!(copies.len(), 1, "the carried copy");
    assert!(attr(&copies[0], "RetryqCarry").is_some(), "a carried copy");
    assert_eq!(group_of(&copies[0]).as_deref(), Some("tenant-b"));
}
