//! Pausing a destination (spec §13.3) against moto's SQS and DynamoDB and a
//! real HTTP destination: `retryq pause`, `paused` and `resume` as a user
//! runs them, and the processor putting a paused host's records back
//! without an attempt.

use std::time::Duration;

use crate::common::*;
use crate::destination::Destination;
use crate::fleet::{attempts, state_table};

fn processor_with(table: &str, dlq: &TestQueue) -> std::sync::Arc<retryq::process::Processor> {
    processor(&[
        ("DLQ_URL", dlq.url.as_str()),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("STATE_TABLE", table),
        ("MAX_ATTEMPTS", "2"),
    ])
}

#[tokio::test]
async fn a_paused_host_gets_no_request_and_its_records_use_up_no_attempt_until_resumed() {
    let sqs = sqs();
    let table = state_table().await;
    let source = queue(&sqs, "pause-src").await;
    let dlq = queue(&sqs, "pause-dlq").await;
    let dest = Destination::start(Duration::ZERO).await;
    let other = Destination::start(Duration::ZERO).await;
    let port = dest
        .url("/")
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches('/')
        .to_owned();
    let pattern = format!("127.0.0.1:{port}");
    run_retryq(
        &["pause", &pattern, "--for", "1h", "--state-table", &table],
        &[],
    )
    .await
    .success();
    let listed = run_retryq(&["paused", "--json", "--state-table", &table], &[])
        .await
        .success();
    let listed: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["pattern"], pattern.as_str());
    assert!(
        listed[0]["untilMs"].as_u64().is_some(),
        "--for 1h has an end"
    );

    let p = processor_with(&table, &dlq);
    send(
        &sqs,
        &source,
        &message("held", &dest.url("/ok/held"), serde_json::json!({})),
    )
    .await;
    send(
        &sqs,
        &source,
        &message("free", &other.url("/ok/free"), serde_json::json!({})),
    )
    .await;
    // Three receives past MAX_ATTEMPTS=2: put back each time, never tried.
    for receive in 1..=3 {
        let got = receive_n(&sqs, &source, 2, Duration::from_secs(10)).await;
        assert!(!got.is_empty(), "receive {receive}");
        let handles: Vec<String> = got
            .iter()
            .filter_map(|m| m.receipt_handle.clone())
            .collect();
        let failed = failures(&invoke(&p, &sqs, &source, &got).await);
        assert!(
            failed.len() <= 1,
            "only the paused record comes back: {failed:?}"
        );
        for h in handles {
            // Shown again at once, as if its wait were over.
            let _ = sqs
                .change_message_visibility()
                .queue_url(&source.url)
                .receipt_handle(h)
                .visibility_timeout(0)
                .send()
                .await;
        }
    }
    assert_eq!(dest.requests(), 0, "no request to a paused host");
    assert_eq!(other.delivered().len(), 1, "other hosts are not held");
    assert_eq!(depth(&sqs, &dlq).await, (0, 0), "nothing dead-lettered");
    assert!(
        attempts(&table, "held").await.is_empty(),
        "no attempt recorded"
    );

    let resumed = run_retryq(&["resume", &pattern, "--state-table", &table], &[])
        .await
        .success();
    assert!(resumed.stdout.contains("resumed"), "{}", resumed.stdout);
    let listed = run_retryq(&["paused", "--state-table", &table], &[])
        .await
        .success();
    assert!(listed.stdout.contains("0 pause(s)"), "{}", listed.stdout);
    // Each process reads the pauses at most once a second.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let got = receive_n(&sqs, &source, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert!(failures(&invoke(&p, &sqs, &source, &got).await).is_empty());
    assert_eq!(dest.delivered().len(), 1, "delivered after the resume");
}

#[tokio::test]
async fn a_pause_without_a_table_or_with_a_bad_pattern_or_end_is_refused_clearly() {
    let no_table = run_retryq(
        &["pause", "api.partner.com", "--for", "1h"],
        &[("STATE_TABLE", "")],
    )
    .await;
    assert_eq!(no_table.code, 2, "{no_table:?}");
    assert!(
        no_table.stderr.contains("--state-table"),
        "{}",
        no_table.stderr
    );
    let table = state_table().await;
    for (args, names) in [
        (vec!["pause", "https://api.partner.com/x"], "PATTERN"),
        (
            vec!["pause", "api.partner.com", "--for", "2 weeks"],
            "--for",
        ),
        (
            vec![
                "pause",
                "api.partner.com",
                "--until",
                "2001-01-01T00:00:00Z",
            ],
            "--until",
        ),
    ] {
        let mut args = args.clone();
        args.extend(["--state-table", &table]);
        let out = run_retryq(&args, &[]).await;
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(out.stderr.contains(names), "{args:?}: {}", out.stderr);
    }
    let listed = run_retryq(&["paused", "--state-table", &table], &[])
        .await
        .success();
    assert!(
        listed.stdout.contains("0 pause(s)"),
        "nothing was written: {}",
        listed.stdout
    );
}
