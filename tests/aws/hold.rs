//! The worker's hold on its messages (docs/spec.md, "The worker's hold"):
//! no request and no copy from a worker that may no longer hold the
//! message, and each record deleted as soon as it is finished. SQS goes
//! through the test proxy, which refuses stale receipt handles as SQS does
//! (the local server accepts them).

use std::sync::Arc;
use std::time::{Duration, Instant};

use retryq::process::{Batch, Disposition, Heartbeat, Processor};

use crate::common::*;
use crate::sqs_proxy::{Faults, SqsProxy};

/// A source queue with this visibility timeout, its DLQ, the proxy (with
/// `faults`), and a processor whose SQS calls go through the proxy.
async fn through_proxy(
    prefix: &str,
    visibility: u64,
    faults: Faults,
    max_attempts: &str,
) -> (TestQueue, TestQueue, SqsProxy, Arc<Processor>) {
    let sqs = sqs();
    let visibility = visibility.to_string();
    let source = queue_with(&sqs, prefix, &[("VisibilityTimeout", &visibility)]).await;
    let dlq = queue(&sqs, &format!("{prefix}-dlq")).await;
    let proxy = SqsProxy::start_with(endpoint(), faults).await;
    let config = config(&[
        ("DLQ_URL", &dlq.url),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("MAX_ATTEMPTS", max_attempts),
    ]);
    let p = Arc::new(Processor::new(config, proxy.client(), None).expect("processor"));
    (source, dlq, proxy, p)
}

/// A worker on `source` (`MAX_CONCURRENCY` 4, one-second polls) until
/// the sender is used or dropped.
fn worker_on(
    p: &Arc<Processor>,
    source: &TestQueue,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<retryq::worker::WorkerStats, retryq::queue::QueueError>>,
) {
    let mut options = retryq::worker::WorkerOptions::new(&source.url, 4);
    options.wait = Duration::from_secs(1);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(retryq::worker::run(Arc::clone(p), options, async move {
        let _ = stopped.await;
    }));
    (stop, worker)
}

/// The heartbeat of a worker's batch of `messages`, received by a call
/// that started at `received_at`, hidden for `visibility`.
fn held(
    source: &TestQueue,
    visibility: Duration,
    received_at: Instant,
    messages: &[aws_sdk_sqs::types::Message],
) -> Arc<Heartbeat> {
    Arc::new(Heartbeat::new(
        &source.url,
        visibility,
        received_at,
        messages.iter().filter_map(|m| m.receipt_handle.clone()),
    ))
}

/// The records of received messages, as the processor sees them.
fn records_of(
    source: &TestQueue,
    messages: Vec<aws_sdk_sqs::types::Message>,
) -> Vec<retryq::process::Record> {
    messages
        .into_iter()
        .map(|m| retryq::queue::record(m, &source.arn))
        .collect()
}

/// After 300 ms, SQS hands `message_id` to another receiver: the
/// handles received so far go stale.
async fn taken_by_another(proxy: &SqsProxy, message_id: &str) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.supersede(message_id);
}

/// The proxy refusing stale receipt handles, as SQS does.
fn stale_handles() -> Faults {
    Faults {
        stale_handles: true,
        ..Faults::default()
    }
}

/// Receives through `client` with every attribute (one call).
async fn receive_via(
    client: &aws_sdk_sqs::Client,
    q: &TestQueue,
) -> Vec<aws_sdk_sqs::types::Message> {
    client
        .receive_message()
        .queue_url(&q.url)
        .max_number_of_messages(10)
        .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
        .send()
        .await
        .expect("receive_message")
        .messages
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frozen_past_its_hold_does_not_send_what_another_now_holds() {
    let (source, _dlq, proxy, p) = through_proxy("frozen", 1, stale_handles(), "1").await;
    let destination = never_called().await;
    send(
        &sqs(),
        &source,
        &message("frozen-1", &destination.uri(), serde_json::json!({})),
    )
    .await;
    let received_at = Instant::now();
    let mine = receive_via(&proxy.client(), &source).await;
    assert_eq!(mine.len(), 1);
    // Frozen past the visibility timeout: another receiver has it now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receive_via(&proxy.client(), &source).await.len(), 1);

    let heartbeat = held(&source, Duration::from_secs(1), received_at, &mine);
    let records = records_of(&source, mine);
    let report = p
        .process_batch_in(records, None, Batch::with_heartbeat(heartbeat))
        .await;
    assert!(
        matches!(&report.records[0].disposition, Disposition::Unfinished(why) if why.contains("no longer holds")),
        "{:?}",
        report.records[0].disposition
    );
    // `never_called` fails on drop if the request went out.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_comes_after_the_hold_was_refused_is_not_acted_on() {
    let (source, dlq, proxy, p) = through_proxy("refused-hold", 3, stale_handles(), "1").await;
    // A 404 (a dead letter), answered after two seconds.
    let destination =
        serving(wiremock::ResponseTemplate::new(404).set_delay(Duration::from_secs(2))).await;
    send(
        &sqs(),
        &source,
        &message("refused-1", &destination.uri(), serde_json::json!({})),
    )
    .await;
    let received_at = Instant::now();
    let mine = receive_via(&proxy.client(), &source).await;
    let message_id = mine[0].message_id.clone().unwrap();
    let heartbeat = held(&source, Duration::from_secs(3), received_at, &mine);
    let beat = tokio::spawn(Arc::clone(&heartbeat).run(Arc::clone(p.queues())));
    // While the request is in flight, SQS hands the message to another
    // receiver (as after a late heartbeat): the next beat is refused.
    let stolen = taken_by_another(&proxy, &message_id);
    let records = records_of(&source, mine);
    let (report, ()) = tokio::join!(
        p.process_batch_in(records, None, Batch::with_heartbeat(heartbeat)),
        stolen
    );
    beat.abort();
    assert_eq!(destination.received_requests().await.unwrap().len(), 1);
    assert!(
        matches!(&report.records[0].disposition, Disposition::Unfinished(why) if why.contains("no longer holds")),
        "{:?}",
        report.records[0].disposition
    );
    assert!(
        drain(&sqs(), &dlq).await.is_empty(),
        "no DLQ copy from a worker that lost the message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_deletes_each_record_as_it_finishes_not_with_its_batch() {
    let sqs = sqs();
    let source = queue_with(&sqs, "early-delete", &[("VisibilityTimeout", "10")]).await;
    let dlq = queue(&sqs, "early-delete-dlq").await;
    let slow =
        serving(wiremock::ResponseTemplate::new(200).set_delay(Duration::from_secs(4))).await;
    let quick = answering(200).await;
    send_batch(
        &sqs,
        &source,
        &[
            message("slow-1", &slow.uri(), serde_json::json!({})),
            message("quick-1", &quick.uri(), serde_json::json!({})),
        ],
    )
    .await;
    let p = processor(&[
        ("DLQ_URL", &dlq.url),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
    ]);
    let (stop, worker) = worker_on(&p, &source);
    // While the slow request is in flight, the quick one is gone from the
    // queue already: a kill now would repeat only the slow one.
    let start = Instant::now();
    while quick.received_requests().await.unwrap().is_empty()
        && start.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(slow.received_requests().await.unwrap().len() == 1);
    assert_eq!(
        depth(&sqs, &source).await,
        (0, 1),
        "only the record in flight is left"
    );
    let _ = stop.send(());
    let stats = tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .expect("the worker stops")
        .unwrap()
        .expect("the worker ran");
    assert_eq!(stats.acknowledged, 2);
    assert_eq!(depth(&sqs, &source).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_extension_while_the_hold_has_time_left_does_not_repeat_a_refused_request() {
    let sqs = sqs();
    // The extension before the DLQ copy is refused (not a stale handle).
    let denied = Faults {
        fail_op: Some(("ChangeMessageVisibilityBatch", "AccessDenied")),
        ..Faults::default()
    };
    let (source, dlq, _proxy, p) = through_proxy("denied-extension", 3, denied, "3").await;
    // A 404 that arrives with 0.7 s of the hold left, within its margin.
    let destination =
        serving(wiremock::ResponseTemplate::new(404).set_delay(Duration::from_millis(2300))).await;
    send(
        &sqs,
        &source,
        &message("denied-1", &destination.uri(), serde_json::json!({})),
    )
    .await;
    let (stop, worker) = worker_on(&p, &source);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) && depth(&sqs, &source).await != (0, 0) {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), worker).await;
    let letters = drain(&sqs, &dlq).await;
    assert_eq!(
        destination.received_requests().await.unwrap().len(),
        1,
        "a refused request is made once"
    );
    assert_eq!(letters.len(), 1);
    assert_eq!(
        attr(&letters[0], "FailureReason").as_deref(),
        Some("non-retryable")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_does_not_wait_forever_for_a_receive_that_is_never_answered() {
    let source = queue(&sqs(), "unanswered-receive").await;
    let proxy = SqsProxy::start_with(
        endpoint(),
        Faults {
            hang_op: Some("ReceiveMessage"),
            ..Faults::default()
        },
    )
    .await;
    let config = config(&[("ALLOW_PRIVATE_DESTINATIONS", "true")]);
    let p = Arc::new(Processor::new(config, proxy.client(), None).expect("processor"));
    let mut options = retryq::worker::WorkerOptions::new(&source.url, 4);
    options.wait = Duration::from_secs(1);
    let worker = tokio::spawn(retryq::worker::run(p, options, async {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }));
    let stopped = tokio::time::timeout(Duration::from_secs(60), worker).await;
    assert!(
        stopped.is_ok(),
        "the worker stops within a minute of its stop"
    );
}

/// An extension SQS never answers (a stalled connection; the SDK sets no
/// timeout) does not keep a delivered record from being deleted: it is not
/// made again when its visibility runs out (found by the second review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_that_is_never_answered_does_not_hold_up_a_delivered_record() {
    let sqs = sqs();
    let source = queue_with(&sqs, "hang-beat", &[("VisibilityTimeout", "3")]).await;
    let destination =
        serving(wiremock::ResponseTemplate::new(200).set_delay(Duration::from_millis(1500))).await;
    let proxy = SqsProxy::start_with(
        endpoint(),
        Faults {
            hang_op: Some("ChangeMessageVisibilityBatch"),
            ..Faults::default()
        },
    )
    .await;
    let config = config(&[
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("REQUEST_TIMEOUT_SECONDS", "2"),
    ]);
    let p = Arc::new(Processor::new(config, proxy.client(), None).expect("processor"));
    send(
        &sqs,
        &source,
        &message("hang-1", &destination.uri(), serde_json::json!({})),
    )
    .await;
    let mut options = retryq::worker::WorkerOptions::new(&source.url, 4);
    options.wait = Duration::from_secs(1);
    options.pollers = 4;
    let worker = tokio::spawn(retryq::worker::run(Arc::clone(&p), options, async move {
        std::future::pending::<()>().await;
    }));
    tokio::time::sleep(Duration::from_secs(12)).await;
    let n = destination.received_requests().await.unwrap().len();
    let d = depth(&sqs, &source).await;
    worker.abort();
    assert_eq!(
        n, 1,
        "a request answered 200 in 1.5 s (visibility 3 s) is made once"
    );
    assert_eq!(d, (0, 0), "and its message deleted");
}

/// A letter withheld because the hold was lost is not remembered: another
/// worker may deliver the message meanwhile (and be killed before its
/// delete), and the next receive here must not dead-letter it without a
/// request (found by the second review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_withheld_for_a_lost_hold_is_not_sent_after_another_worker_delivered() {
    use wiremock::{matchers::any, Mock, MockServer, ResponseTemplate};
    let sqs = sqs();
    let source = queue_with(&sqs, "pending-lost", &[("VisibilityTimeout", "3")]).await;
    let dlq = queue(&sqs, "pending-lost-dlq").await;
    let proxy = SqsProxy::start_with(
        endpoint(),
        Faults {
            stale_handles: true,
            ..Faults::default()
        },
    )
    .await;
    let destination = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(404).set_delay(Duration::from_millis(2500)))
        .up_to_n_times(1)
        .mount(&destination)
        .await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&destination)
        .await;
    let vars = [
        ("DLQ_URL", dlq.url.as_str()),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("MAX_ATTEMPTS", "5"),
    ];
    let p = Arc::new(Processor::new(config(&vars), proxy.client(), None).expect("processor"));
    let p2 = Arc::new(Processor::new(config(&vars), proxy.client(), None).expect("processor"));
    send(
        &sqs,
        &source,
        &message("pending-1", &destination.uri(), serde_json::json!({})),
    )
    .await;
    // Worker A (process 1): its 404 comes back after its hold was taken
    // (a duplicate receive; or a lapsed hold whose beats were throttled).
    let received_at = Instant::now();
    let mine = receive_via(&proxy.client(), &source).await;
    let message_id = mine[0].message_id.clone().unwrap();
    let heartbeat = held(&source, Duration::from_secs(3), received_at, &mine);
    let records = records_of(&source, mine);
    let stolen = taken_by_another(&proxy, &message_id);
    let (report, ()) = tokio::join!(
        p.process_batch_in(records, None, Batch::with_heartbeat(heartbeat)),
        stolen
    );
    assert!(matches!(
        report.records[0].disposition,
        Disposition::Unfinished(_)
    ));
    // Worker B (process 2) receives it, delivers it (200), and is killed
    // before its delete.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let theirs = receive_via(&proxy.client(), &source).await;
    assert_eq!(theirs.len(), 1, "B receives it");
    let records = records_of(&source, theirs);
    let report = p2.process_batch(records, None).await;
    assert!(matches!(
        report.records[0].disposition,
        Disposition::Delivered
    ));
    // Back, to process 1.
    tokio::time::sleep(Duration::from_millis(3300)).await;
    let again = receive_via(&proxy.client(), &source).await;
    assert_eq!(again.len(), 1, "A's process receives it again");
    let heartbeat = held(&source, Duration::from_secs(3), Instant::now(), &again);
    let records = records_of(&source, again);
    let report = p
        .process_batch_in(records, None, Batch::with_heartbeat(heartbeat))
        .await;
    assert!(
        !matches!(report.records[0].disposition, Disposition::DeadLettered(_)),
        "{:?}",
        report.records[0].disposition
    );
    let requests = destination.received_requests().await.unwrap().len();
    let letters = drain(&sqs, &dlq).await;
    assert!(
        letters.is_empty(),
        "a message delivered (200) is not dead-lettered; requests={requests}"
    );
}
