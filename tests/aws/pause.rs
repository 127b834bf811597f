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
        let failed = one_round(&p, &sqs, &source, 2).await;
        assert!(
            failed <= 1,
            "receive {receive}: only the paused record comes back"
        );
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

/// A processor whose table calls go through a proxy with `faults`.
async fn processor_through(
    table: &str,
    dlq: &TestQueue,
    faults: crate::sqs_proxy::Faults,
    extra: &[(&str, &str)],
) -> (
    std::sync::Arc<retryq::process::Processor>,
    crate::sqs_proxy::SqsProxy,
) {
    let proxy = crate::sqs_proxy::SqsProxy::start_with(endpoint(), faults).await;
    let name = table.to_owned();
    let state = retryq::config::Config::from_lookup(|n| (n == "STATE_TABLE").then(|| name.clone()))
        .unwrap()
        .state
        .unwrap();
    let client = crate::fleet::dynamodb_at(&proxy.endpoint);
    let mut vars = vec![
        ("DLQ_URL", dlq.url.as_str()),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("STATE_TABLE", table),
    ];
    vars.extend_from_slice(extra);
    let p = retryq::process::Processor::new(config(&vars), sqs(), None)
        .unwrap()
        .with_fleet(retryq::fleet::FleetState::new(state, client));
    (std::sync::Arc::new(p), proxy)
}

/// Receives what is there (up to `n`), invokes `p` on it and shows it
/// again at once; how many were not acknowledged.
async fn one_round(
    p: &std::sync::Arc<retryq::process::Processor>,
    sqs: &aws_sdk_sqs::Client,
    source: &TestQueue,
    n: i32,
) -> usize {
    let got = receive_n(sqs, source, n as usize, Duration::from_secs(5)).await;
    let handles: Vec<String> = got
        .iter()
        .filter_map(|m| m.receipt_handle.clone())
        .collect();
    let failed = failures(&invoke(p, sqs, source, &got).await).len();
    for h in handles {
        let _ = sqs
            .change_message_visibility()
            .queue_url(&source.url)
            .receipt_handle(h)
            .visibility_timeout(0)
            .send()
            .await;
    }
    failed
}

/// Review finding: once another table call of the batch failed (a
/// throttled `BatchGetItem`), the batch went on without the table and
/// skipped the pauses: the paused host got its request.
#[tokio::test]
async fn a_pause_holds_when_another_table_call_of_the_batch_fails() {
    let sqs = sqs();
    let table = state_table().await;
    let source = queue(&sqs, "pause-throttled-src").await;
    let dlq = queue(&sqs, "pause-throttled-dlq").await;
    let dest = Destination::start(Duration::ZERO).await;
    let port = dest
        .url("/")
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches('/')
        .to_owned();
    run_retryq(
        &[
            "pause",
            &format!("127.0.0.1:{port}"),
            "--state-table",
            &table,
        ],
        &[],
    )
    .await
    .success();
    let faults = crate::sqs_proxy::Faults {
        fail_op: Some((
            "DynamoDB_20120810.BatchGetItem",
            "ProvisionedThroughputExceededException",
        )),
        ..Default::default()
    };
    let (p, _proxy) = processor_through(&table, &dlq, faults, &[]).await;
    send(
        &sqs,
        &source,
        &message("held", &dest.url("/ok/held"), serde_json::json!({})),
    )
    .await;
    // The second receive reads the ledger (BatchGetItem), which fails.
    for receive in 1..=3 {
        assert_eq!(
            one_round(&p, &sqs, &source, 1).await,
            1,
            "receive {receive}: put back"
        );
    }
    assert_eq!(dest.requests(), 0, "no request to a paused host");
}

/// Review finding: a failed read of the pauses (a role without the
/// `dynamodb:Query` they need) took every batch off the table, so a host
/// with a fleet rate limit got nothing, though nothing was paused.
#[tokio::test]
async fn a_pause_read_that_fails_takes_nothing_else_off_the_table() {
    let sqs = sqs();
    let table = state_table().await;
    let source = queue(&sqs, "pause-denied-src").await;
    let dlq = queue(&sqs, "pause-denied-dlq").await;
    let dest = Destination::start(Duration::ZERO).await;
    let faults = crate::sqs_proxy::Faults {
        fail_op: Some(("DynamoDB_20120810.Query", "AccessDeniedException")),
        ..Default::default()
    };
    let policies = [(
        "DESTINATION_POLICIES",
        r#"{"127.0.0.1": {"rps": 50, "burst": 50}}"#,
    )];
    let (p, _proxy) = processor_through(&table, &dlq, faults, &policies).await;
    for i in 0..3 {
        let body = message(
            &format!("r{i}"),
            &dest.url(&format!("/ok/r{i}")),
            serde_json::json!({}),
        );
        send(&sqs, &source, &body).await;
    }
    let mut left = 3;
    for _ in 0..3 {
        if left == 0 {
            break;
        }
        left = one_round(&p, &sqs, &source, 3).await;
    }
    assert_eq!(
        dest.delivered().len(),
        3,
        "every record delivered within its rate"
    );
    assert_eq!(left, 0);
}
