//! The real Lambda path: the function built and run by `cargo lambda watch`
//! (the Lambda Runtime API emulator), invoked with every file in `events/`
//! by `cargo lambda invoke`, against the local SQS server and a destination
//! on 127.0.0.1:9100 (the address the sample events name).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use wiremock::matchers::path;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The sample events' destination.
const DESTINATION: &str = "127.0.0.1:9100";
/// The source queue's retention: the template's 14 days.
const RETENTION: Duration = Duration::from_secs(14 * 86_400);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn failed_ids(answer: &serde_json::Value) -> Vec<String> {
    let mut ids: Vec<String> = answer["batchItemFailures"]
        .as_array()
        .unwrap_or_else(|| panic!("no batchItemFailures in {answer}"))
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn ids_in(event: &Path, wanted: &[&str]) -> Vec<String> {
    let event: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(event).unwrap()).unwrap();
    let mut ids: Vec<String> = event["Records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            wanted
                .iter()
                .any(|w| r["body"].as_str().unwrap().contains(w))
        })
        .map(|r| r["messageId"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn the_function_under_cargo_lambda_watch_answers_each_sample_event() {
    let sqs = sqs();
    // The queues the sample events' eventSourceARN names.
    let source = named_queue(&sqs, "retryq-events").await;
    let dlq = named_queue(&sqs, "retryq-events-dlq").await;
    // 14 days' retention, as template.yaml's queue (set before the function
    // starts: it reads the queue's attributes once).
    sqs.set_queue_attributes()
        .queue_url(&source.url)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::MessageRetentionPeriod,
            RETENTION.as_secs().to_string(),
        )
        .send()
        .await
        .unwrap();
    sqs.purge_queue().queue_url(&dlq.url).send().await.unwrap();

    let listener = std::net::TcpListener::bind(DESTINATION)
        .expect("127.0.0.1:9100 is free for the sample destination");
    let dest = MockServer::builder().listener(listener).start().await;
    Mock::given(path("/ok"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&dest)
        .await;
    Mock::given(path("/unavailable"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&dest)
        .await;
    Mock::given(path("/rate-limited"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "30"))
        .mount(&dest)
        .await;
    Mock::given(path("/missing"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&dest)
        .await;

    let port = free_port();
    let log = std::env::temp_dir().join(format!("retryq-watch-{}.log", std::process::id()));
    let _watch = cargo_lambda_watch(
        port,
        &[
            ("DLQ_URL", &dlq.url),
            ("ALLOW_PRIVATE_DESTINATIONS", "true"),
            ("RUST_LOG", "info"),
        ],
        &log,
    );
    let events = root().join("events");

    // The samples' timestamps are fixed; each is sent as if just sent (as
    // `make invoke` does), so the answers hold on any later date.
    let fresh = |file: &str| event_sent_ago(&events.join(file), Duration::ZERO);
    // The first invocation builds the function: an empty batch until it
    // answers, so that no sample is handled twice.
    wait_for_cargo_lambda_watch(port, &log).await;
    let first = cargo_lambda_invoke(port, &fresh("delivered.json")).unwrap();
    assert_eq!(failed_ids(&first), Vec::<String>::new(), "delivered");

    // The 503 and 429 records are retryable: they come back. (Their sample
    // receipt handles are not real, so the visibility change fails too,
    // which also leaves them unacknowledged.) Everything else is finished.
    let expected: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("delivered.json", &[][..]),
        ("server-error-503.json", &["order-2"][..]),
        ("rate-limited-429.json", &["order-3"][..]),
        ("not-found-404.json", &[][..]),
        ("invalid-body.json", &[][..]),
        ("expired.json", &[][..]),
        ("last-attempt.json", &[][..]),
        ("mixed-batch.json", &["order-2", "order-3"][..]),
    ]);
    let mut files: Vec<String> = std::fs::read_dir(&events)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    files.sort();
    assert_eq!(
        files,
        expected.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
        "every event file is checked"
    );
    for (file, retried) in &expected {
        let event = fresh(file);
        let answer = cargo_lambda_invoke(port, &event).unwrap_or_else(|e| panic!("{file}: {e}"));
        let _ = std::fs::remove_file(&event);
        assert_eq!(
            failed_ids(&answer),
            ids_in(&events.join(file), retried),
            "{file}: {answer}"
        );
    }

    // Dead letters: 404, invalid, expired and exhausted, once from their own
    // file and once from the mixed batch.
    let dead = receive_n(&sqs, &dlq, 8, Duration::from_secs(20)).await;
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for d in &dead {
        *reasons
            .entry(attr(d, "FailureReason").unwrap())
            .or_default() += 1;
    }
    assert_eq!(
        reasons,
        BTreeMap::from([
            ("attempts-exhausted".to_owned(), 2),
            ("expired".to_owned(), 2),
            ("invalid-message".to_owned(), 2),
            ("non-retryable".to_owned(), 2),
        ])
    );
    // The same retryable samples sent 30 days ago, on a queue that keeps
    // messages 14 days: a retry would outlive the message, so each is
    // dead-lettered `expired` at once (no record comes back), and the fresh
    // copies above were not.
    for file in ["server-error-503.json", "rate-limited-429.json"] {
        let aged = event_sent_ago(&events.join(file), Duration::from_secs(30 * 86_400));
        let answer = cargo_lambda_invoke(port, &aged).unwrap_or_else(|e| panic!("{file}: {e}"));
        let _ = std::fs::remove_file(&aged);
        assert_eq!(
            failed_ids(&answer),
            Vec::<String>::new(),
            "aged {file}: {answer}"
        );
    }
    let aged_dead = receive_n(&sqs, &dlq, 2, Duration::from_secs(20)).await;
    let aged_reasons: Vec<Option<String>> =
        aged_dead.iter().map(|d| attr(d, "FailureReason")).collect();
    assert_eq!(aged_reasons, vec![Some("expired".to_owned()); 2]);

    let ok_requests = dest
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/ok")
        .count();
    assert_eq!(ok_requests, 3, "delivered twice from its file (first and checked), once from the mixed batch; never for the expired one");

    // The function wrote its metrics as EMF lines: the mixed batch's match
    // what it did (1 delivered, 2 unfinished, 4 dead letters, one per reason).
    let output = std::fs::read_to_string(&log).unwrap();
    // And one short line per record, without colour codes in a log file.
    assert!(
        !output.contains('\u{1b}'),
        "no ANSI escape codes when stdout is not a terminal"
    );
    let record_lines: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("INFO record id=") || l.contains("\"message\":\"record\""))
        .collect();
    assert!(
        record_lines
            .iter()
            .any(|l| l.contains("out=delivered") || l.contains("\"out\":\"delivered\"")),
        "{record_lines:?}"
    );
    assert!(
        record_lines
            .iter()
            .any(|l| l.contains("dlq=non-retryable") || l.contains("\"dlq\":\"non-retryable\"")),
        "{record_lines:?}"
    );
    let docs: Vec<serde_json::Value> = output
        .lines()
        .filter(|l| l.starts_with('{') && l.contains("\"_aws\""))
        .map(|l| serde_json::from_str(l).expect("an EMF line is JSON"))
        .collect();
    let mixed_at = docs
        .iter()
        .rposition(|d| d["BatchSize"] == 7)
        .expect("EMF for the mixed batch");
    let mixed = &docs[mixed_at];
    assert_eq!(mixed["_aws"]["CloudWatchMetrics"][0]["Namespace"], "retryq");
    assert_eq!(
        (
            mixed["Delivered"].as_u64(),
            mixed["Retried"].as_u64(),
            mixed["Unfinished"].as_u64()
        ),
        (Some(1), Some(0), Some(2))
    );
    assert_eq!(
        mixed["AttemptLatency"].as_array().unwrap().len(),
        5,
        "five records were attempted (not the invalid or expired ones)"
    );
    let reasons: BTreeMap<String, u64> = docs[mixed_at + 1..]
        .iter()
        .take_while(|d| d.get("Reason").is_some())
        .map(|d| {
            (
                d["Reason"].as_str().unwrap().to_owned(),
                d["DeadLettered"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(reasons.values().sum::<u64>(), 4, "{reasons:?}");
    assert_eq!(reasons.len(), 4);
    // Then the batch by destination: all of it went to one loopback host.
    let by_destination: Vec<&serde_json::Value> = docs[mixed_at + 1..]
        .iter()
        .skip_while(|d| d.get("Reason").is_some())
        .take_while(|d| d.get("Destination").is_some())
        .collect();
    assert_eq!(by_destination.len(), 1, "{by_destination:?}");
    let host = by_destination[0];
    assert_eq!(host["Destination"], "127.0.0.1");
    assert_eq!(
        host["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
        serde_json::json!([["Service", "Destination"]])
    );
    assert_eq!(host["Delivered"].as_u64(), Some(1));
    assert_eq!(
        host["AttemptLatency"].as_array().unwrap().len(),
        5,
        "the same five attempts"
    );
    let _ = std::fs::remove_file(&log);
}
