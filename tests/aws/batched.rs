//! Retries and dead letters go to SQS ten per call
//! (`ChangeMessageVisibilityBatch`, `SendMessageBatch`), and a failed entry
//! of such a call leaves only its own record unfinished. Requests are
//! counted, and a dead letter refused, by a proxy in front of the real
//! local SQS server (see sqs_proxy.rs).

use std::sync::Arc;
use std::time::Duration;

use retryq::process::{Disposition, Processor};

use crate::common::*;
use crate::sqs_proxy::SqsProxy;

/// A processor whose SQS calls go through `proxy`, dead-lettering to `dlq`.
fn processor_via(proxy: &SqsProxy, dlq: &TestQueue) -> Arc<Processor> {
    let config = config(&[
        ("DLQ_URL", dlq.url.as_str()),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
    ]);
    Arc::new(Processor::new(config, proxy.client(), None).expect("processor"))
}

#[tokio::test]
async fn retries_and_dead_letters_are_sent_several_per_sqs_call() {
    let sqs = sqs();
    let (source, dlq) = (
        queue(&sqs, "batched").await,
        queue(&sqs, "batched-dlq").await,
    );
    let (busy, refusing) = (answering(503).await, answering(400).await);
    let bodies: Vec<String> = (0..30)
        .map(|i| {
            let dest = if i % 2 == 0 { &busy } else { &refusing };
            message(&format!("m-{i}"), &dest.uri(), serde_json::json!({}))
        })
        .collect();
    send_batch(&sqs, &source, &bodies).await;
    let received = receive_n(&sqs, &source, 30, Duration::from_secs(20)).await;
    assert_eq!(received.len(), 30);
    let proxy = SqsProxy::start(endpoint(), None).await;
    let p = processor_via(&proxy, &dlq);

    let response = invoke(&p, &sqs, &source, &received).await;

    assert_eq!(failures(&response).len(), 15, "the 503s come back");
    let copies = receive_n(&sqs, &dlq, 15, Duration::from_secs(20)).await;
    assert_eq!(copies.len(), 15, "every 400 is dead-lettered");
    let counts = proxy.counts();
    assert_eq!(
        proxy.count("ChangeMessageVisibility") + proxy.count("SendMessage"),
        0,
        "no single-record call: {counts:?}"
    );
    let calls = proxy.count("ChangeMessageVisibilityBatch") + proxy.count("SendMessageBatch");
    assert!(
        (4..=15).contains(&calls),
        "30 actions in at least 4 and at most 15 calls: {counts:?}"
    );
}

#[tokio::test]
async fn a_refused_dead_letter_entry_leaves_only_its_record_in_the_queue() {
    let sqs = sqs();
    let (source, dlq) = (
        queue(&sqs, "dl-entry").await,
        queue(&sqs, "dl-entry-dlq").await,
    );
    let refusing = answering(400).await;
    let bodies: Vec<String> = (0..5)
        .map(|i| {
            let id = if i == 2 {
                "refuse-me".to_owned()
            } else {
                format!("m-{i}")
            };
            message(&id, &refusing.uri(), serde_json::json!({}))
        })
        .collect();
    send_batch(&sqs, &source, &bodies).await;
    let received = receive_n(&sqs, &source, 5, Duration::from_secs(20)).await;
    assert_eq!(received.len(), 5);
    let refused_id = received
        .iter()
        .find(|m| m.body().unwrap_or_default().contains("refuse-me"))
        .and_then(|m| m.message_id.clone())
        .unwrap();
    let proxy = SqsProxy::start(endpoint(), Some("refuse-me")).await;
    let p = processor_via(&proxy, &dlq);

    let response = invoke(&p, &sqs, &source, &received).await;

    assert_eq!(failures(&response), [refused_id], "only the refused entry");
    let copies = receive_n(&sqs, &dlq, 4, Duration::from_secs(20)).await;
    assert_eq!(copies.len(), 4);
    assert!(copies
        .iter()
        .all(|m| !m.body().unwrap_or_default().contains("refuse-me")));
    assert_eq!(depth(&sqs, &source).await, (0, 1), "the refused one stays");
    assert_eq!(depth(&sqs, &dlq).await.0, 0);
}

#[tokio::test]
async fn a_refused_visibility_entry_fails_only_its_record() {
    let (sqs, source, _dlq, p) = with_dlq("vis-entry", &[]).await;
    let busy = answering(503).await;
    let bodies: Vec<String> = (0..5)
        .map(|i| message(&format!("m-{i}"), &busy.uri(), serde_json::json!({})))
        .collect();
    send_batch(&sqs, &source, &bodies).await;
    let mut received = receive_n(&sqs, &source, 5, Duration::from_secs(20)).await;
    assert_eq!(received.len(), 5);
    // SQS refuses this one entry of the batch call: its handle is stale.
    received[3].receipt_handle = Some("not-a-receipt-handle".into());
    let records = received
        .iter()
        .map(|m| retryq::queue::record(m.clone(), &source.arn))
        .collect();

    let report = p.process_batch(records, None).await;

    for (i, r) in report.records.iter().enumerate() {
        match (&r.disposition, i) {
            (Disposition::Unfinished(why), 3) => {
                assert!(why.contains("ReceiptHandleIsInvalid"), "{why}")
            }
            (Disposition::RetryLater { .. }, i) if i != 3 => {}
            (other, i) => panic!("record {i}: {other:?}"),
        }
    }
}

/// Carried copies (§12.5) go out as `SendMessageBatch` entries, gathered
/// like the other SQS actions: ten records carried over at once (a redrive
/// policy of `maxReceiveCount` 2 makes the first failure's retry a carry)
/// take far fewer calls than records, and each copy keeps its attributes.
#[tokio::test]
async fn carried_copies_are_sent_several_per_sqs_call() {
    let sqs = sqs();
    let redrive_dlq = queue(&sqs, "batched-carry-redrive").await;
    let policy = format!(
        "{{\"deadLetterTargetArn\":\"{}\",\"maxReceiveCount\":\"2\"}}",
        redrive_dlq.arn
    );
    let source = queue_with(&sqs, "batched-carry", &[("RedrivePolicy", &policy)]).await;
    let dlq = queue(&sqs, "batched-carry-dlq").await;
    let busy = answering(503).await;
    let bodies: Vec<String> = (0..10)
        .map(|i| message(&format!("c-{i}"), &busy.uri(), serde_json::json!({})))
        .collect();
    send_batch(&sqs, &source, &bodies).await;
    let received = receive_n(&sqs, &source, 10, Duration::from_secs(20)).await;
    assert_eq!(received.len(), 10);
    let proxy = SqsProxy::start(endpoint(), None).await;
    let p = processor_via(&proxy, &dlq);

    let response = invoke(&p, &sqs, &source, &received).await;

    assert!(failures(&response).is_empty(), "every record carried over");
    let counts = proxy.counts();
    assert_eq!(proxy.count("SendMessage"), 0, "no single send: {counts:?}");
    assert!(
        (1..=5).contains(&proxy.count("SendMessageBatch")),
        "10 copies in at most 5 calls: {counts:?}"
    );
    let copies = receive_n(&sqs, &source, 10, Duration::from_secs(20)).await;
    assert_eq!(copies.len(), 10, "every copy is in the queue");
    for copy in &copies {
        let carry = copy
            .message_attributes()
            .and_then(|a| a.get(retryq::policy::carry::CARRY_ATTRIBUTE))
            .and_then(|v| v.string_value())
            .expect("RetryqCarry");
        assert!(carry.contains("\"attempts\":1"), "{carry}");
    }
}

/// A batch that only delivers small records makes no SQS call at all, not
/// even for the DLQ's size: every DLQ holds their copies (SQS's smallest
/// `MaximumMessageSize` is 1 KiB). The first batch after a cold start does
/// not wait for it.
#[tokio::test]
async fn a_batch_of_small_records_that_are_delivered_asks_sqs_nothing() {
    let sqs = sqs();
    let (source, dlq) = (
        queue(&sqs, "small-delivered").await,
        queue(&sqs, "small-delivered-dlq").await,
    );
    let destination = answering(200).await;
    let bodies: Vec<String> = (0..10)
        .map(|i| {
            message(
                &format!("small-{i}"),
                &destination.uri(),
                serde_json::json!({}),
            )
        })
        .collect();
    send_batch(&sqs, &source, &bodies).await;
    let received = receive_n(&sqs, &source, 10, Duration::from_secs(20)).await;
    let proxy = SqsProxy::start(endpoint(), None).await;
    let p = processor_via(&proxy, &dlq);
    let records = received
        .into_iter()
        .map(|m| retryq::queue::record(m, &source.arn))
        .collect();
    let report = p.process_batch(records, None).await;
    assert!(report
        .records
        .iter()
        .all(|r| matches!(r.disposition, Disposition::Delivered)));
    assert_eq!(proxy.counts(), Default::default(), "no SQS call");
}

/// Every record of a batch may need its queue's URL (a retry, a count kept
/// before the attempt): it is asked of SQS once for the whole batch, and a
/// lookup that fails is not asked again by each record.
#[tokio::test]
async fn a_queue_url_is_looked_up_once_for_a_batch_even_when_the_lookup_fails() {
    let sqs = sqs();
    let source = queue(&sqs, "url-once").await;
    let missing = format!("{}-missing", source.arn);
    let proxy = SqsProxy::start(endpoint(), None).await;
    let queues = Arc::new(retryq::queue::Queues::new(proxy.client()));

    let mut lookups = tokio::task::JoinSet::new();
    for i in 0..60 {
        let (queues, arn) = (
            Arc::clone(&queues),
            if i % 2 == 0 {
                source.arn.clone()
            } else {
                missing.clone()
            },
        );
        lookups.spawn(async move { (i % 2 == 0, queues.url_of(&arn).await) });
    }
    while let Some(joined) = lookups.join_next().await {
        match joined.unwrap() {
            (true, found) => assert_eq!(found.unwrap(), source.url),
            (false, failed) => {
                let e = failed.expect_err("no such queue").to_string();
                assert!(e.contains("GetQueueUrl"), "{e}");
            }
        }
    }
    // And again, later in the batch.
    assert!(queues.url_of(&missing).await.is_err());
    assert_eq!(queues.url_of(&source.arn).await.unwrap(), source.url);
    assert_eq!(
        proxy.count("GetQueueUrl"),
        2,
        "one lookup per queue: {:?}",
        proxy.counts()
    );
}
