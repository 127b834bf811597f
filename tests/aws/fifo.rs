//! FIFO source queues (spec §4) against the SQS API (moto): records of
//! one `MessageGroupId` in order, groups independent, a group stopped at its
//! first unacknowledged record and resumed in order after redelivery, and
//! dead letters in a FIFO DLQ with their group.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::*;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use wiremock::matchers::{any, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A FIFO queue (content-based deduplication) whose name no other test uses.
pub(crate) async fn fifo_queue(sqs: &aws_sdk_sqs::Client, prefix: &str) -> TestQueue {
    fifo_queue_with(sqs, prefix, true).await
}

/// A FIFO queue; without `content_based` deduplication, every message sent
/// to it must carry its own `MessageDeduplicationId`.
async fn fifo_queue_with(
    sqs: &aws_sdk_sqs::Client,
    prefix: &str,
    content_based: bool,
) -> TestQueue {
    let name = format!("{prefix}-{}-{}.fifo", std::process::id(), fastrand::u32(..));
    let url = sqs
        .create_queue()
        .queue_name(&name)
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(
            QueueAttributeName::ContentBasedDeduplication,
            content_based.to_string(),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    TestQueue {
        arn: format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"),
        url,
    }
}

async fn send_in_group(sqs: &aws_sdk_sqs::Client, q: &TestQueue, group: &str, body: &str) {
    sqs.send_message()
        .queue_url(&q.url)
        .message_body(body)
        .message_group_id(group)
        .send()
        .await
        .unwrap();
}

/// The paths the destination saw, per group letter, in arrival order.
async fn arrivals(dest: &MockServer) -> BTreeMap<char, Vec<String>> {
    let mut out: BTreeMap<char, Vec<String>> = BTreeMap::new();
    for r in dest.received_requests().await.unwrap() {
        let p = r.url.path().trim_start_matches('/').to_owned();
        out.entry(p.chars().next().unwrap()).or_default().push(p);
    }
    out
}

#[tokio::test]
async fn groups_run_in_order_stop_at_a_failure_and_resume_in_order() {
    let sqs = sqs();
    let source = fifo_queue(&sqs, "fifo-src").await;
    let dlq = fifo_queue(&sqs, "fifo-dlq").await;
    let dest = MockServer::start().await;
    // a2 fails once (retryable), c1 is gone (non-retryable); the rest succeed.
    Mock::given(path("/a2"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&dest)
        .await;
    Mock::given(path("/c1"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&dest)
        .await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(20)))
        .mount(&dest)
        .await;
    let groups = [
        ("A", ["a1", "a2", "a3"].as_slice()),
        ("B", &["b1", "b2", "b3"]),
        ("C", &["c1", "c2"]),
    ];
    for (group, members) in groups {
        for m in members {
            send_in_group(
                &sqs,
                &source,
                group,
                &message(m, &format!("{}/{m}", dest.uri()), serde_json::json!({})),
            )
            .await;
        }
    }
    let p = processor(&[
        ("DLQ_URL", &dlq.url),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("BACKOFF_BASE_SECONDS", "1"),
        ("BACKOFF_MAX_SECONDS", "1"),
    ]);

    let first = receive_n(&sqs, &source, 8, Duration::from_secs(10)).await;
    assert_eq!(first.len(), 8);
    let response = invoke(&p, &sqs, &source, &first).await;

    let failed: Vec<String> = failures(&response);
    let id_of = |m: &aws_sdk_sqs::types::Message| {
        serde_json::from_str::<serde_json::Value>(m.body.as_deref().unwrap()).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let mut failed_ids: Vec<String> = first
        .iter()
        .filter(|m| failed.contains(m.message_id.as_ref().unwrap()))
        .map(id_of)
        .collect();
    failed_ids.sort();
    assert_eq!(failed_ids, ["a2", "a3"], "a3 not attempted after a2 failed");
    let seen = arrivals(&dest).await;
    assert_eq!(seen[&'a'], ["a1", "a2"]);
    assert_eq!(
        seen[&'b'],
        ["b1", "b2", "b3"],
        "other groups progress, in order"
    );
    assert_eq!(
        seen[&'c'],
        ["c1", "c2"],
        "a dead letter is acknowledged, so its group goes on"
    );

    // Redelivered after the backoff: a2 then a3, in order.
    let again = receive_n(&sqs, &source, 2, Duration::from_secs(20)).await;
    assert_eq!(again.iter().map(id_of).collect::<Vec<_>>(), ["a2", "a3"]);
    let response = invoke(&p, &sqs, &source, &again).await;
    assert!(failures(&response).is_empty());
    assert_eq!(arrivals(&dest).await[&'a'], ["a1", "a2", "a2", "a3"]);
    assert_eq!(depth(&sqs, &source).await, (0, 0));

    // c1's dead letter is in the FIFO DLQ, in its group.
    let dead = sqs
        .receive_message()
        .queue_url(&dlq.url)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .message_attribute_names("All")
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default();
    assert_eq!(dead.len(), 1);
    assert_eq!(id_of(&dead[0]), "c1");
    assert_eq!(
        attr(&dead[0], "FailureReason").as_deref(),
        Some("non-retryable")
    );
    let group = dead[0]
        .attributes
        .as_ref()
        .unwrap()
        .get(&MessageSystemAttributeName::MessageGroupId)
        .cloned();
    assert_eq!(group.as_deref(), Some("C"));
}

/// A FIFO DLQ without content-based deduplication: each copy carries a
/// `MessageDeduplicationId` of its own (else SQS refuses it and nothing is
/// dead-lettered), taken from its original message, so that two records
/// with the same body both get their copy, and the same record dead-lettered
/// again (its acknowledgement lost) gets none.
#[tokio::test]
async fn fifo_dead_letters_are_deduplicated_on_the_original_message_id() {
    let sqs = sqs();
    let source = fifo_queue_with(&sqs, "fifo-dedup-src", false).await;
    let dlq = fifo_queue_with(&sqs, "fifo-dedup-dlq", false).await;
    let dest = serving(ResponseTemplate::new(404)).await;
    let body = message("same", &dest.uri(), serde_json::json!({}));
    // Two groups, so that the first copy, left in flight, holds back no
    // other.
    for (group, dedup) in [("G", "first"), ("H", "second")] {
        sqs.send_message()
            .queue_url(&source.url)
            .message_body(&body)
            .message_group_id(group)
            .message_deduplication_id(dedup)
            .send()
            .await
            .unwrap();
    }
    let received = receive_n(&sqs, &source, 2, Duration::from_secs(20)).await;
    assert_eq!(received.len(), 2, "two messages, one body");
    let vars = [
        ("DLQ_URL", dlq.url.as_str()),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
    ];

    // The first record's dead letter is sent twice, by two processors (as
    // after a lost acknowledgement): the second is a duplicate of the first.
    for _ in 0..2 {
        let failed = handle_unacknowledged(processor(&vars), &source, &received[..1]).await;
        assert!(failed.is_empty(), "dead-lettered: {failed:?}");
    }
    let copies = receive_n(&sqs, &dlq, 2, Duration::from_secs(3)).await;
    assert_eq!(copies.len(), 1, "one copy of the first record: {copies:?}");
    assert_eq!(
        attr(&copies[0], "OriginalMessageId"),
        received[0].message_id
    );
    // That copy stays in the DLQ (in flight): the local server, unlike SQS,
    // forgets a deduplication id once its message is deleted.

    // The second record, with the same body, gets its own copy.
    let outcomes = outcomes_of(&processor(&vars), &sqs, &source, &dlq, &received[1..], 60).await;
    assert_eq!(
        outcomes.reasons(),
        [("same".to_owned(), "non-retryable".to_owned())].into(),
        "{outcomes:?}"
    );
}
