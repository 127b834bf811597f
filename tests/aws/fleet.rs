//! Fleet-wide state (spec §9) against moto's SQS and DynamoDB and real
//! HTTP destinations: the attempt ledger and its attempt numbers, the
//! breaker and the rate limit shared by two `retryq worker` processes,
//! `retryq attempts`, a redriven copy, and the fallback when the table is
//! gone or throttled.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use retryq::fleet::FleetState;
use retryq::process::Processor;

use crate::common::*;
use crate::destination::Destination;
use crate::fifo::fifo_queue;

pub fn dynamodb() -> aws_sdk_dynamodb::Client {
    dynamodb_at(&endpoint())
}

/// A DynamoDB client of the local server at `endpoint` (a proxy's, say).
pub fn dynamodb_at(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version_latest()
        .region(aws_sdk_dynamodb::config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// A state table as the template creates it, named for this test.
pub async fn state_table() -> String {
    let name = format!("retryq-state-{}-{}", std::process::id(), fastrand::u32(..));
    crate::state_table::create(&dynamodb(), &name).await;
    name
}

/// A processor with the fleet's table and these variables.
fn fleet_processor(table: &str, dlq: &TestQueue, extra: &[(&str, &str)]) -> Arc<Processor> {
    let mut vars = vec![
        ("DLQ_URL", dlq.url.as_str()),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("STATE_TABLE", table),
        ("BACKOFF_BASE_SECONDS", "1"),
        ("BACKOFF_MAX_SECONDS", "1"),
    ];
    vars.extend_from_slice(extra);
    processor(&vars)
}

/// `retryq attempts ID --json` against `table`.
pub(crate) async fn attempts(table: &str, id: &str) -> Vec<serde_json::Value> {
    let out = run_retryq(&["attempts", id, "--json", "--state-table", table], &[])
        .await
        .success();
    serde_json::from_str::<Vec<serde_json::Value>>(&out.stdout).expect("a JSON list")
}

/// Receives the one message of `q` once it is visible (at most 10 s).
async fn receive_one(sqs: &aws_sdk_sqs::Client, q: &TestQueue) -> aws_sdk_sqs::types::Message {
    let mut got = receive_n(sqs, q, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "the message came back");
    got.remove(0)
}

#[tokio::test]
async fn receives_that_made_no_request_use_up_no_attempt_and_the_ledger_shows_each_attempt() {
    let sqs = sqs();
    let table = state_table().await;
    let source = queue(&sqs, "fleet-ledger").await;
    let dlq = queue(&sqs, "fleet-ledger-dlq").await;
    let dest = Destination::start(Duration::ZERO).await;
    let p = fleet_processor(
        &table,
        &dlq,
        &[("MAX_ATTEMPTS", "3"), ("RESPONSE_SNIPPET_BYTES", "20")],
    );
    send(
        &sqs,
        &source,
        &message("ledger-1", &dest.url("/down/1"), serde_json::json!({})),
    )
    .await;

    // Attempt 1 fails (503).
    let m = receive_one(&sqs, &source).await;
    assert_eq!(failures(&invoke(&p, &sqs, &source, &[m]).await).len(), 1);
    // Two receives that make no request, as a FIFO follower released
    // behind a blocked record has.
    for _ in 0..2 {
        let m = receive_one(&sqs, &source).await;
        sqs.change_message_visibility()
            .queue_url(&source.url)
            .receipt_handle(m.receipt_handle.unwrap())
            .visibility_timeout(0)
            .send()
            .await
            .unwrap();
    }
    // The fourth receive is attempt 2 of 3, not the final one: retried,
    // not dead-lettered (by receive count it would be attempt 4).
    let m = receive_one(&sqs, &source).await;
    assert_eq!(attr_count(&m), 4);
    assert_eq!(failures(&invoke(&p, &sqs, &source, &[m]).await).len(), 1);
    assert_eq!(depth(&sqs, &dlq).await, (0, 0), "nothing dead-lettered");
    // Attempt 3 is final: dead-lettered with AttemptCount 3.
    let m = receive_one(&sqs, &source).await;
    assert!(failures(&invoke(&p, &sqs, &source, &[m]).await).is_empty());
    let letter = receive_one(&sqs, &dlq).await;
    assert_eq!(
        attr(&letter, "FailureReason").as_deref(),
        Some("attempts-exhausted")
    );
    assert_eq!(attr(&letter, "AttemptCount").as_deref(), Some("3"));

    let history = attempts(&table, "ledger-1").await;
    let numbers: Vec<u64> = history
        .iter()
        .map(|a| a["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3], "{history:#?}");
    for a in &history {
        assert_eq!(a["status"], 503);
        assert_eq!(
            a["responseSnippet"], "{\"error\":\"the servic",
            "the first 20 bytes"
        );
        assert!(a["startedAt"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(history[2]["outcome"], "retryable");
    assert!(history[2]["lastError"].as_str().unwrap().contains("503"));
}

fn attr_count(m: &aws_sdk_sqs::types::Message) -> u32 {
    m.attributes()
        .and_then(|a| {
            a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_record_refused_by_an_open_breaker_uses_up_no_attempt() {
    let sqs = sqs();
    let table = state_table().await;
    let source = queue(&sqs, "fleet-refused").await;
    let dlq = queue(&sqs, "fleet-refused-dlq").await;
    let dest = Destination::start(Duration::ZERO).await;
    // The breaker comes from the destination's policy: one failure opens
    // it for a minute.
    let p = fleet_processor(
        &table,
        &dlq,
        &[
            ("MAX_ATTEMPTS", "2"),
            (
                "DESTINATION_POLICIES",
                r#"{"127.0.0.1": {"breaker": {"threshold": 1, "cooldownSeconds": 60}}}"#,
            ),
        ],
    );
    send(
        &sqs,
        &source,
        &message("opener", &dest.url("/down/opener"), serde_json::json!({})),
    )
    .await;
    let m = receive_one(&sqs, &source).await;
    let opener = m.receipt_handle.clone().unwrap();
    invoke(&p, &sqs, &source, &[m]).await;
    assert_eq!(dest.requests(), 1, "the first failure opens the breaker");
    sqs.delete_message()
        .queue_url(&source.url)
        .receipt_handle(opener)
        .send()
        .await
        .unwrap();

    send(
        &sqs,
        &source,
        &message("refused", &dest.url("/ok/refused"), serde_json::json!({})),
    )
    .await;
    for receive in 1..=3 {
        let m = receive_one(&sqs, &source).await;
        let handle = m.receipt_handle.clone().unwrap();
        assert_eq!(failures(&invoke(&p, &sqs, &source, &[m]).await).len(), 1);
        // Deferred until the breaker's cool-down ends: hidden about a minute.
        assert!(
            receive_n(&sqs, &source, 1, Duration::from_millis(300))
                .await
                .is_empty(),
            "receive {receive}: hidden until the cool-down ends"
        );
        sqs.change_message_visibility()
            .queue_url(&source.url)
            .receipt_handle(handle)
            .visibility_timeout(0)
            .send()
            .await
            .unwrap();
    }
    assert_eq!(dest.requests(), 1, "no request while the breaker is open");
    // Three receives past MAX_ATTEMPTS=2, and nothing dead-lettered.
    assert_eq!(depth(&sqs, &dlq).await, (0, 0));
    assert!(
        attempts(&table, "refused").await.is_empty(),
        "no attempt recorded"
    );
}

#[tokio::test]
async fn delivered_attempts_cost_no_table_request_unless_ledger_is_all() {
    let sqs = sqs();
    let table = state_table().await;
    let source = queue(&sqs, "fleet-all").await;
    let dlq = queue(&sqs, "fleet-all-dlq").await;
    let dest = Destination::start(Duration::ZERO).await;
    for (ledger, id) in [("failures", "quiet-1"), ("all", "loud-1")] {
        let p = fleet_processor(
            &table,
            &dlq,
            &[("LEDGER", ledger), ("LEDGER_TTL_DAYS", "3")],
        );
        send(
            &sqs,
            &source,
            &message(id, &dest.url("/ok/1"), serde_json::json!({})),
        )
        .await;
        let m = receive_one(&sqs, &source).await;
        assert!(failures(&invoke(&p, &sqs, &source, &[m]).await).is_empty());
    }
    assert!(
        attempts(&table, "quiet-1").await.is_empty(),
        "LEDGER=failures: nothing"
    );
    let loud = attempts(&table, "loud-1").await;
    assert_eq!(loud.len(), 1);
    assert_eq!(loud[0]["outcome"], "delivered");
    assert_eq!(loud[0]["status"], 200);
    assert!(
        loud[0].get("responseSnippet").is_none(),
        "a 2xx keeps no snippet"
    );
}

#[tokio::test]
async fn a_redriven_copy_starts_afresh() {
    let sqs = sqs();
    let table = state_table().await;
    let source = queue(&sqs, "fleet-redrive").await;
    let dlq = queue(&sqs, "fleet-redrive-dlq").await;
    let dest = Destination::start(Duration::ZERO).await;
    let p = fleet_processor(&table, &dlq, &[("MAX_ATTEMPTS", "2")]);
    send(
        &sqs,
        &source,
        &message("redriven-1", &dest.url("/down/r"), serde_json::json!({})),
    )
    .await;
    for round in 0..2 {
        for _ in 0..2 {
            let m = receive_one(&sqs, &source).await;
            invoke(&p, &sqs, &source, &[m]).await;
        }
        let letter = receive_one(&sqs, &dlq).await;
        assert_eq!(
            attr(&letter, "AttemptCount").as_deref(),
            Some("2"),
            "round {round}"
        );
        // Back to the source, as `retryq dlq redrive` does (new SQS message).
        sqs.delete_message()
            .queue_url(&dlq.url)
            .receipt_handle(letter.receipt_handle.clone().unwrap())
            .send()
            .await
            .unwrap();
        if round == 0 {
            send(&sqs, &source, letter.body().unwrap()).await;
        }
    }
    let history = attempts(&table, "redriven-1").await;
    let numbers: Vec<u64> = history
        .iter()
        .map(|a| a["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 1, 2], "{history:#?}");
    let copies: std::collections::HashSet<&str> = history
        .iter()
        .map(|a| a["sqsMessageId"].as_str().unwrap())
        .collect();
    assert_eq!(copies.len(), 2, "two SQS messages, one history");
}

#[tokio::test]
async fn a_fifo_follower_released_behind_a_blocked_record_gets_all_its_attempts() {
    let sqs = sqs();
    let table = state_table().await;
    let source = fifo_queue(&sqs, "fleet-fifo").await;
    let dlq = fifo_queue(&sqs, "fleet-fifo-dlq").await;
    let dest = Destination::start(Duration::ZERO).await;
    let p = fleet_processor(&table, &dlq, &[("MAX_ATTEMPTS", "3")]);
    // The leader never succeeds; the follower succeeds on its third
    // attempt (503 twice, then 200), after being released three times.
    for (id, path) in [("leader", "/down/leader"), ("follower", "/flaky/follower")] {
        sqs.send_message()
            .queue_url(&source.url)
            .message_body(message(id, &dest.url(path), serde_json::json!({})))
            .message_group_id("g")
            .send()
            .await
            .unwrap();
    }
    let started = Instant::now();
    for _ in 0..40 {
        if depth(&sqs, &source).await == (0, 0) || started.elapsed() > Duration::from_secs(60) {
            break;
        }
        let batch = receive_n(&sqs, &source, 2, Duration::from_secs(3)).await;
        if !batch.is_empty() {
            invoke(&p, &sqs, &source, &batch).await;
        }
    }
    assert_eq!(depth(&sqs, &source).await, (0, 0), "both records finished");
    assert_eq!(
        dest.delivered().get("follower"),
        Some(&1),
        "the follower was delivered on its third attempt"
    );
    let letters = receive_n(&sqs, &dlq, 2, Duration::from_secs(3)).await;
    assert_eq!(letters.len(), 1, "only the leader is dead-lettered");
    assert!(letters[0].body().unwrap().contains("leader"));
    let follower: Vec<u64> = attempts(&table, "follower")
        .await
        .iter()
        .map(|a| a["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(follower, [1, 2], "its two failures, numbered from 1");
}

/// `n` Retry Messages with ids `<prefix>-<i>` to `/<path>/<i>` of `dest`.
fn messages_to(dest: &Destination, prefix: &str, path: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            message(
                &format!("{prefix}-{i}"),
                &dest.url(&format!("/{path}/{i}")),
                serde_json::json!({}),
            )
        })
        .collect()
}

/// A `retryq worker` on `q` with the fleet's table and `vars`.
pub(crate) fn worker(
    q: &TestQueue,
    dlq: &TestQueue,
    table: &str,
    vars: &[(&str, &str)],
    log: &std::path::Path,
) -> Running {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_retryq"));
    // One receive loop: batches of up to ten records.
    cmd.args([
        "worker",
        "--wait-seconds",
        "1",
        "--pollers",
        "1",
        "--queue-url",
        &q.url,
    ])
    .env("DLQ_URL", &dlq.url)
    .env("STATE_TABLE", table)
    .env("ALLOW_PRIVATE_DESTINATIONS", "true")
    .env("METRICS_ENABLED", "false")
    .envs(vars.iter().copied())
    .stdin(Stdio::null());
    // Logs and metrics (when a test turns them on) into one file.
    let file = std::fs::File::create(log).unwrap();
    cmd.stdout(file.try_clone().unwrap()).stderr(file);
    aws_env(&mut cmd);
    Running::spawn(cmd)
}

/// Two `retryq worker`s sharing `table`, and their logs.
fn two_workers(
    q: &TestQueue,
    dlq: &TestQueue,
    table: &str,
    vars: &[(&str, &str)],
    name: &str,
) -> ([Running; 2], [std::path::PathBuf; 2]) {
    let log = |n| std::env::temp_dir().join(format!("fleet-{name}-{n}-{}.log", std::process::id()));
    let logs = [log("a"), log("b")];
    let workers = [
        worker(q, dlq, table, vars, &logs[0]),
        worker(q, dlq, table, vars, &logs[1]),
    ];
    (workers, logs)
}

/// The most arrivals in any window of `span`.
fn most_within(arrivals: &[Instant], span: Duration) -> usize {
    (0..arrivals.len())
        .map(|i| {
            arrivals[i..]
                .iter()
                .take_while(|t| **t - arrivals[i] < span)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_one_breaker_a_down_host_sees_threshold_plus_one_per_cooldown() {
    let sqs = sqs();
    let table = state_table().await;
    let source = queue(&sqs, "fleet-breaker").await;
    let dlq = queue(&sqs, "fleet-breaker-dlq").await;
    let dest = Destination::start(Duration::from_millis(20)).await;
    let bodies = messages_to(&dest, "b", "down", 30);
    send_batch(&sqs, &source, &bodies).await;
    let vars = [
        ("BREAKER_THRESHOLD", "3"),
        ("BREAKER_COOLDOWN_SECONDS", "4"),
        ("MAX_ATTEMPTS", "50"),
        ("BACKOFF_BASE_SECONDS", "1"),
        ("BACKOFF_MAX_SECONDS", "2"),
        ("METRICS_ENABLED", "true"),
    ];
    let (workers, logs) = two_workers(&source, &dlq, &table, &vars, "breaker");
    // Wait for the event, not for a time: the threshold's requests and a
    // probe (the workers may be slow to start on a busy machine); then
    // watch three cool-downs more from the first request.
    let cooldown = Duration::from_secs(4);
    let started = Instant::now();
    while dest.arrivals().len() < 4 && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Some(first) = dest.arrivals().first() {
        tokio::time::sleep((3 * cooldown).saturating_sub(first.elapsed())).await;
    }
    drop(workers);
    let arrivals = dest.arrivals();
    assert!(
        most_within(&arrivals, cooldown) <= 3 + 1,
        "at most threshold + 1 requests per cool-down, fleet-wide: {:?}",
        arrivals
            .iter()
            .map(|t| t.duration_since(arrivals[0]))
            .collect::<Vec<_>>()
    );
    assert!(
        arrivals.len() >= 4,
        "the breaker opened after its threshold and probed: {}",
        arrivals.len()
    );
    assert_eq!(
        depth(&sqs, &dlq).await,
        (0, 0),
        "refusals dead-letter nothing"
    );
    let log =
        std::fs::read_to_string(&logs[0]).unwrap() + &std::fs::read_to_string(&logs[1]).unwrap();
    assert!(log.contains("breaker opened"), "{log}");
    // The opening is a metric of its destination (spec §11).
    let opened: u64 = log
        .lines()
        .filter(|l| l.starts_with('{') && l.contains("\"BreakerOpened\""))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|d| d["Destination"] == "127.0.0.1")
        .map(|d| d["BreakerOpened"].as_u64().unwrap())
        .sum();
    assert!(opened >= 1, "BreakerOpened for 127.0.0.1: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_one_rate_limit_and_deferrals_dead_letter_nothing() {
    let sqs = sqs();
    let table = state_table().await;
    let source = queue(&sqs, "fleet-rate").await;
    let dlq = queue(&sqs, "fleet-rate-dlq").await;
    let dest = Destination::start(Duration::from_millis(5)).await;
    let bodies = messages_to(&dest, "r", "ok", 80);
    send_batch(&sqs, &source, &bodies).await;
    let policies = r#"{"127.0.0.1": {"rps": 5}}"#;
    // One attempt each: a deferral that used one up would dead-letter.
    let vars = [("DESTINATION_POLICIES", policies), ("MAX_ATTEMPTS", "1")];
    let (workers, logs) = two_workers(&source, &dlq, &table, &vars, "rate");
    let started = Instant::now();
    while dest.delivered().len() < 80 && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(workers);
    let arrivals = dest.arrivals();
    let in_ten = most_within(&arrivals, Duration::from_secs(10));
    assert!(
        in_ten <= 60,
        "rps 5 across two workers: at most 5 × 1.2 a second over 10 s, saw {in_ten}"
    );
    assert_eq!(dest.delivered().len(), 80, "every record delivered");
    assert_eq!(
        depth(&sqs, &dlq).await,
        (0, 0),
        "nothing dead-lettered for being deferred:\n{}{}",
        dead_letters(&sqs, &dlq).await,
        warnings(&logs)
    );
}

/// The lines of the workers' logs that are not `INFO` nor metrics.
fn warnings(logs: &[std::path::PathBuf]) -> String {
    logs.iter()
        .flat_map(|l| {
            std::fs::read_to_string(l)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.starts_with("INFO ") && !l.starts_with('{'))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn without_its_table_the_batch_goes_on_per_process_and_loses_nothing() {
    let sqs = sqs();
    let table = state_table().await;
    let source = queue(&sqs, "fleet-gone").await;
    let dlq = queue(&sqs, "fleet-gone-dlq").await;
    let dest = Destination::start(Duration::ZERO).await;
    let p = fleet_processor(&table, &dlq, &[("MAX_ATTEMPTS", "2")]);
    let bodies = [
        message("gone-ok", &dest.url("/ok/g"), serde_json::json!({})),
        message("gone-down", &dest.url("/down/g"), serde_json::json!({})),
    ];
    send_batch(&sqs, &source, &bodies).await;
    let batch = receive_n(&sqs, &source, 2, Duration::from_secs(5)).await;
    assert_eq!(failures(&invoke(&p, &sqs, &source, &batch).await).len(), 1);
    // The table disappears mid-run.
    dynamodb()
        .delete_table()
        .table_name(&table)
        .send()
        .await
        .unwrap();
    // The failing record's second receive: the ledger cannot be read, so
    // it counts by receives (attempt 2 of 2) and is dead-lettered.
    let m = receive_one(&sqs, &source).await;
    let response = invoke(&p, &sqs, &source, &[m]).await;
    assert!(failures(&response).is_empty(), "finished without the table");
    let letter = receive_one(&sqs, &dlq).await;
    assert_eq!(attr(&letter, "AttemptCount").as_deref(), Some("2"));
    assert_eq!(dest.delivered().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_is_reported_once_per_batch_not_per_record() {
    let sqs = sqs();
    let source = queue(&sqs, "fleet-missing").await;
    let dlq = queue(&sqs, "fleet-missing-dlq").await;
    let dest = Destination::start(Duration::ZERO).await;
    let bodies = messages_to(&dest, "m", "down", 30);
    send_batch(&sqs, &source, &bodies).await;
    let log = std::env::temp_dir().join(format!("fleet-missing-{}.log", std::process::id()));
    // Failed records come back only after a minute: each is tried once.
    let vars = [
        ("BACKOFF_BASE_SECONDS", "60"),
        ("BACKOFF_MAX_SECONDS", "60"),
        ("RUST_LOG", "warn"),
    ];
    let mut cmd_worker = worker(&source, &dlq, "retryq-no-such-table", &vars, &log);
    let started = Instant::now();
    while dest.requests() < 30 && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    cmd_worker.terminate();
    cmd_worker.wait_for_exit(Duration::from_secs(10));
    assert_eq!(dest.requests(), 30, "every record was tried, table or not");
    assert_eq!(depth(&sqs, &dlq).await, (0, 0));
    let text = std::fs::read_to_string(&log).unwrap();
    let said = text.matches("state table unavailable").count();
    // One receive loop of up to ten records: a few batches, never a line
    // per record.
    assert!(
        (1..=10).contains(&said),
        "{said} lines for 30 records:\n{text}"
    );
}

/// While the table throttles every call, a rate token or a probe cannot
/// be had: the fleet's rate and its one probe are not given up to
/// per-process guesses (ten processes would send ten times the rate).
/// Records wait, using up no attempt, and none is lost or dead-lettered.
#[tokio::test]
async fn a_throttling_table_holds_records_that_need_it_and_loses_nothing() {
    // A DynamoDB endpoint that throttles every call.
    let throttling = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::any())
        .respond_with(
            wiremock::ResponseTemplate::new(400)
                .insert_header("content-type", "application/x-amz-json-1.0")
                .set_body_string(r#"{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"Rate of requests exceeds the allowed throughput."}"#),
        )
        .mount(&throttling)
        .await;
    let sqs = sqs();
    let source = queue(&sqs, "fleet-throttled").await;
    let dlq = queue(&sqs, "fleet-throttled-dlq").await;
    let dest = Destination::start(Duration::ZERO).await;
    let config = config(&[
        ("DLQ_URL", dlq.url.as_str()),
        ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ("STATE_TABLE", "throttled"),
        ("BREAKER_THRESHOLD", "5"),
        ("DESTINATION_POLICIES", r#"{"127.0.0.1": {"rps": 100}}"#),
    ]);
    let client = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_dynamodb::config::Region::new(REGION))
            .endpoint_url(throttling.uri())
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "test", "test", None, None, "tests",
            ))
            .build(),
    );
    let fleet = FleetState::new(config.state.clone().unwrap(), client);
    let p = Arc::new(
        Processor::new(config, sqs.clone(), None)
            .unwrap()
            .with_fleet(fleet),
    );
    let bodies: Vec<String> = (0..10)
        .map(|i| {
            let path = if i % 2 == 0 {
                format!("/ok/t{i}")
            } else {
                format!("/down/t{i}")
            };
            message(&format!("t-{i}"), &dest.url(&path), serde_json::json!({}))
        })
        .collect();
    send_batch(&sqs, &source, &bodies).await;
    let batch = receive_n(&sqs, &source, 10, Duration::from_secs(5)).await;
    assert_eq!(batch.len(), 10);
    let response = invoke_within(&p, &sqs, &source, &batch, 30).await;
    assert_eq!(failures(&response).len(), 10, "every record goes back");
    assert_eq!(dest.requests(), 0, "no request without a token");
    assert!(
        !throttling.received_requests().await.unwrap().is_empty(),
        "the table was asked"
    );
    // Back within about a second, and nothing dead-lettered.
    let again = receive_n(&sqs, &source, 10, Duration::from_secs(10)).await;
    assert_eq!(again.len(), 10, "every record is back in its queue");
    assert_eq!(depth(&sqs, &dlq).await, (0, 0));
}

/// §12.7: a process reports and releases only the probe lease it holds. A
/// holds the lease, it runs out, B takes it; A's late answer (a success, a
/// failure, or nothing) leaves B's lease in the table, so no third probe
/// can start while B's is out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_report_leaves_another_processs_probe_lease_alone() {
    use retryq::fleet::breaker::FleetAdmission;
    use retryq::policy::record::Health;
    let table = state_table().await;
    let config = config(&[("STATE_TABLE", table.as_str())]);
    let settings = retryq::policy::destinations::BreakerSettings {
        threshold: 5,
        cooldown: Duration::from_secs(30),
    };
    let until = || tokio::time::Instant::now() + Duration::from_secs(5);
    for (n, health) in [Some(Health::Answered), Some(Health::Failed), None]
        .into_iter()
        .enumerate()
    {
        let host = format!("late-{n}.example");
        let a = FleetState::new(config.state.clone().unwrap(), dynamodb());
        let b = FleetState::new(config.state.clone().unwrap(), dynamodb());
        let short = Duration::from_millis(500);
        let FleetAdmission::Go(a_ticket) = a.admit(&host, settings, short, until()).await.unwrap()
        else {
            panic!("the first probe goes");
        };
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let long = Duration::from_secs(60);
        let FleetAdmission::Go(_b_ticket) = b.admit(&host, settings, long, until()).await.unwrap()
        else {
            panic!("A's lease ran out: B takes it");
        };

        a.report(a_ticket, health).await.unwrap();

        let item = dynamodb()
            .get_item()
            .table_name(&table)
            .key(
                "pk",
                aws_sdk_dynamodb::types::AttributeValue::S(format!("breaker#{host}")),
            )
            .key(
                "sk",
                aws_sdk_dynamodb::types::AttributeValue::S("state".into()),
            )
            .consistent_read(true)
            .send()
            .await
            .unwrap();
        let item = item.item().expect("the host's item");
        assert!(
            item.contains_key("prober") && item.contains_key("probeUntil"),
            "{health:?}: B's lease stays: {item:?}"
        );
    }
}

/// Every redelivered record asks the table whether it was carried over
/// before (§12.5): those questions go in one `BatchGetItem` per hundred
/// records, not a `GetItem` each, which made a batch of redeliveries wait
/// on as many reads as it had records.
#[tokio::test]
async fn redelivered_records_ask_for_their_carry_marks_together() {
    let sqs = sqs();
    let table = state_table().await;
    let source = queue(&sqs, "fleet-carried-reads").await;
    let dlq = queue(&sqs, "fleet-carried-reads-dlq").await;
    let dest = Destination::start(Duration::ZERO).await;
    let bodies: Vec<String> = (0..30)
        .map(|i| {
            message(
                &format!("redelivered-{i}"),
                &dest.url(&format!("/ok/{i}")),
                serde_json::json!({}),
            )
        })
        .collect();
    send_batch(&sqs, &source, &bodies).await;
    // Received once and let go: the next receive is the second.
    assert_eq!(
        receive_n_hidden_for(&sqs, &source, 30, 1, Duration::from_secs(20))
            .await
            .len(),
        30
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = receive_n(&sqs, &source, 30, Duration::from_secs(20)).await;
    assert_eq!(again.len(), 30);
    assert!(again.iter().all(|m| m.attributes().is_some_and(|a| a
        .get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)
        .is_some_and(|n| n != "1"))));
    let proxy = crate::sqs_proxy::SqsProxy::start(endpoint(), None).await;
    let state =
        retryq::config::Config::from_lookup(|n| (n == "STATE_TABLE").then(|| table.clone()))
            .unwrap()
            .state
            .unwrap();
    let through_proxy = dynamodb_at(&proxy.endpoint);
    let p = Arc::new(
        Processor::new(
            config(&[
                ("DLQ_URL", dlq.url.as_str()),
                ("ALLOW_PRIVATE_DESTINATIONS", "true"),
            ]),
            sqs.clone(),
            None,
        )
        .unwrap()
        .with_fleet(FleetState::new(state, through_proxy)),
    );

    let response = invoke(&p, &sqs, &source, &again).await;

    assert!(failures(&response).is_empty(), "all delivered");
    let counts = proxy.counts();
    let (gets, batches) = (
        proxy.count("DynamoDB_20120810.GetItem"),
        proxy.count("DynamoDB_20120810.BatchGetItem"),
    );
    // The fleet breaker reads its host's state once; the carry marks
    // come in a few batch reads.
    assert!(gets <= 2, "no GetItem per record: {counts:?}");
    assert!(
        (1..=10).contains(&batches),
        "carry marks read together: {counts:?}"
    );
}
