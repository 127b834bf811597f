//! The `retryq` command line (spec §7), run as a user would: the built
//! binary, the local SQS server, real destinations. Exit codes: 0 success,
//! 1 failure of the work, 2 bad usage or input (with a message naming what
//! is wrong).

use std::time::Duration;

use crate::common::*;

/// `retryq call` to a destination on loopback (allowed deliberately).
async fn call(queue_url: &str, destination: &str, extra: &[&str]) -> RetryqOutput {
    let mut args = vec!["call", "--queue-url", queue_url, "--url", destination];
    args.extend_from_slice(extra);
    run_retryq(&args, &[("ALLOW_PRIVATE_DESTINATIONS", "true")]).await
}

/// `retryq dlq redrive` from `dlq` to `target`.
async fn redrive(dlq: &TestQueue, target: &TestQueue, extra: &[&str]) -> RetryqOutput {
    let mut args = vec!["dlq", "redrive", "--dlq-url", &dlq.url, "--to", &target.url];
    args.extend_from_slice(extra);
    run_retryq(&args, &[]).await
}

fn assert_usage_error(out: &RetryqOutput, names: &str) {
    assert_eq!(out.code, 2, "stdout: {} stderr: {}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(names),
        "stderr does not name {names:?}: {}",
        out.stderr
    );
}

fn body_of(m: &aws_sdk_sqs::types::Message) -> serde_json::Value {
    serde_json::from_str(m.body.as_deref().unwrap()).unwrap()
}

fn fixture(path: &str) -> String {
    format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn help_lists_every_command_with_examples() {
    let out = run_retryq(&["--help"], &[]).await;
    assert_eq!(out.code, 0);
    for command in [
        "enqueue",
        "call",
        "worker",
        "trigger",
        "dlq",
        "validate",
        "event",
        "Examples:",
    ] {
        assert!(
            out.stdout.contains(command),
            "{command} missing from --help"
        );
    }
    for command in [
        &["enqueue", "--help"][..],
        &["dlq", "redrive", "--help"],
        &["trigger", "--help"],
    ] {
        let out = run_retryq(command, &[]).await;
        assert_eq!(out.code, 0);
        assert!(out.stdout.contains("Example"), "{command:?}");
    }
}

#[tokio::test]
async fn enqueue_sends_the_message_and_prints_its_id() {
    let sqs = sqs();
    let q = queue(&sqs, "cli-enqueue").await;
    let data = std::env::temp_dir().join(format!("retryq-cli-{}.json", std::process::id()));
    std::fs::write(&data, br#"{"order":42}"#).unwrap();
    let data_arg = format!("@{}", data.display());
    let out = run_retryq(
        &[
            "enqueue",
            "--queue-url",
            &q.url,
            "--url",
            "https://partner.example.com/v1/orders?x=1",
            "-H",
            "content-type: application/json",
            "-H",
            "accept: a/b",
            "-H",
            "accept: c/d",
            "--data",
            &data_arg,
            "--max-attempts",
            "4",
            "--originating-service",
            "orders-api",
        ],
        &[],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let id = out.stdout.trim();
    assert_eq!(id.len(), 36, "a UUID: {id}");

    let m = receive_n(&sqs, &q, 1, Duration::from_secs(10)).await;
    let body = body_of(&m[0]);
    assert_eq!(body["id"], id);
    assert_eq!(
        body["destinationUrl"],
        "https://partner.example.com/v1/orders?x=1"
    );
    assert_eq!(
        body["request"]["method"], "POST",
        "POST by default with --data"
    );
    assert_eq!(body["request"]["body"], r#"{"order":42}"#);
    assert_eq!(
        body["request"]["headers"]["accept"],
        serde_json::json!(["a/b", "c/d"])
    );
    assert_eq!(body["maxAttempts"], 4);
    assert_eq!(body["originatingService"], "orders-api");
    retryq::message::RetryMessage::parse(m[0].body.as_deref().unwrap())
        .expect("a valid v1 message");
    let _ = std::fs::remove_file(data);
}

#[tokio::test]
async fn enqueue_refuses_bad_input_with_exit_2() {
    let q = "http://127.0.0.1:1/123456789012/never-used";
    let cases: [(&[&str], &str); 6] = [
        (
            &[
                "enqueue",
                "--queue-url",
                q,
                "--url",
                "https://x.example.com/",
                "-H",
                "Authorization Bearer sk_live_TOPSECRET",
            ],
            "-H",
        ),
        (
            &["enqueue", "--queue-url", q, "--url", "not a url"],
            "destinationUrl",
        ),
        (
            &["enqueue", "--queue-url", q, "--url", "ftp://x.example.com/"],
            "destinationUrl",
        ),
        (
            &[
                "enqueue",
                "--queue-url",
                q,
                "--url",
                "https://x.example.com/",
                "--id",
                "has space",
            ],
            "id",
        ),
        (
            &[
                "enqueue",
                "--queue-url",
                q,
                "--url",
                "https://x.example.com/",
                "--data",
                "@/no/such/file",
            ],
            "/no/such/file",
        ),
        (
            &["enqueue", "--url", "https://x.example.com/"],
            "--queue-url",
        ),
    ];
    for (args, names) in cases {
        let out = run_retryq(args, &[]).await;
        assert_usage_error(&out, names);
        assert!(
            !out.stderr.contains("TOPSECRET"),
            "a malformed -H is not echoed: {}",
            out.stderr
        );
    }
}

#[tokio::test]
async fn enqueue_to_a_missing_queue_fails_the_work_with_exit_1() {
    let missing = format!("{}/{ACCOUNT}/no-such-queue", endpoint());
    let out = run_retryq(
        &[
            "enqueue",
            "--queue-url",
            &missing,
            "--url",
            "https://x.example.com/",
        ],
        &[],
    )
    .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("SendMessage"), "{}", out.stderr);
}

#[tokio::test]
async fn call_delivers_now_without_enqueueing() {
    let sqs = sqs();
    let q = queue(&sqs, "cli-call-ok").await;
    let dest = answering(201).await;
    let out = call(&q.url, &dest.uri(), &["--data", "{}"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("delivered"), "{}", out.stdout);
    assert_eq!(depth(&sqs, &q).await, (0, 0));
}

#[tokio::test]
async fn call_enqueues_a_retryable_failure_with_the_attempts_made_and_the_key_sent() {
    let sqs = sqs();
    let q = queue(&sqs, "cli-call-retry").await;
    let dest = answering(503).await;
    let out = call(
        &q.url,
        &dest.uri(),
        &["--sync-attempts", "2", "--sync-budget-ms", "5000"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let requests = dest.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    let key = requests[0].headers["idempotency-key"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        requests[1].headers["idempotency-key"],
        key.as_str(),
        "one key for every attempt"
    );
    let m = receive_n(&sqs, &q, 1, Duration::from_secs(10)).await;
    let body = body_of(&m[0]);
    assert_eq!(body["receivedCount"], 2);
    assert_eq!(body["id"], key);
    assert!(out.stdout.contains(&key), "{}", out.stdout);
}

#[tokio::test]
async fn call_stops_within_its_time_budget() {
    let sqs = sqs();
    let q = queue(&sqs, "cli-call-budget").await;
    let dest = answering(503).await;
    let out = call(
        &q.url,
        &dest.uri(),
        &["--sync-attempts", "50", "--sync-budget-ms", "300"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let attempts = dest.received_requests().await.unwrap().len();
    assert!(
        (1..50).contains(&attempts),
        "the budget, not the attempt count, stopped it: {attempts}"
    );
    let m = receive_n(&sqs, &q, 1, Duration::from_secs(10)).await;
    assert_eq!(body_of(&m[0])["receivedCount"], attempts);
}

#[tokio::test]
async fn call_fails_non_retryably_without_enqueueing() {
    let sqs = sqs();
    let q = queue(&sqs, "cli-call-404").await;
    let dest = answering(404).await;
    let out = call(&q.url, &dest.uri(), &[]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("404"), "{}", out.stderr);
    assert_eq!(depth(&sqs, &q).await, (0, 0), "not enqueued");
}

#[tokio::test]
async fn call_fails_when_it_cannot_enqueue() {
    let dest = answering(503).await;
    let missing = format!("{}/{ACCOUNT}/no-such-queue", endpoint());
    let out = call(&missing, &dest.uri(), &["--sync-attempts", "1"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("could not be enqueued"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn call_and_worker_name_a_malformed_variable() {
    let q = "http://127.0.0.1:1/123456789012/never-used";
    let out = run_retryq(
        &["call", "--queue-url", q, "--url", "https://x.example.com/"],
        &[("MAX_ATTEMPTS", "0")],
    )
    .await;
    assert_usage_error(&out, "MAX_ATTEMPTS");
    let out = run_retryq(
        &["worker", "--queue-url", q],
        &[("ALLOW_PRIVATE_DESTINATIONS", "maybe")],
    )
    .await;
    assert_usage_error(&out, "ALLOW_PRIVATE_DESTINATIONS");
}

#[tokio::test]
async fn worker_and_trigger_fail_on_a_missing_queue_and_a_bad_function_url() {
    let missing = format!("{}/{ACCOUNT}/no-such-queue", endpoint());
    let out = run_retryq(&["worker", "--queue-url", &missing], &[]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    let out = run_retryq(
        &[
            "trigger",
            "--queue-url",
            &missing,
            "--function-url",
            "not a url",
        ],
        &[],
    )
    .await;
    assert_usage_error(&out, "--function-url");
    let out = run_retryq(
        &[
            "trigger",
            "--queue-url",
            &missing,
            "--function-url",
            "http://127.0.0.1:9",
        ],
        &[],
    )
    .await;
    assert_eq!(out.code, 1, "{}", out.stderr);
}

#[tokio::test]
async fn validate_accepts_valid_and_names_the_field_of_invalid_messages() {
    let out = run_retryq(
        &["validate", &fixture("messages/valid/contract-example.json")],
        &[],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("valid"));
    let out = run_retryq(
        &[
            "validate",
            &fixture("messages/invalid/max-attempts-zero.json"),
        ],
        &[],
    )
    .await;
    assert_usage_error(&out, "maxAttempts");
    let out = run_retryq(
        &["validate", &fixture("messages/invalid/not-json.json")],
        &[],
    )
    .await;
    assert_usage_error(&out, "body");
    let out = run_retryq(&["validate", "/no/such/file.json"], &[]).await;
    assert_usage_error(&out, "/no/such/file.json");
}

#[tokio::test]
async fn validate_checks_a_queue_and_its_dlq_naming_the_queue_and_the_attribute() {
    let sqs = sqs();
    let good = queue_with(
        &sqs,
        "check-good",
        &[
            ("MessageRetentionPeriod", "1209600"),
            ("VisibilityTimeout", "360"),
        ],
    )
    .await;
    let good_dlq = queue_with(
        &sqs,
        "check-good-dlq",
        &[("MessageRetentionPeriod", "1209600")],
    )
    .await;
    // §12.8: a profile without hosts is reported (a warning, not an error);
    // one with hosts, and an aws-sigv4 one (AWS endpoints), are not.
    let profiles = r#"{"open": {"type": "header", "name": "x-k", "valueEnv": "K"},
        "listed": {"type": "header", "name": "x-k", "valueEnv": "K", "hosts": ["api.partner.com"]},
        "aws": {"type": "aws-sigv4", "service": "execute-api"}}"#;
    let out = run_retryq(
        &[
            "validate",
            "--queue-url",
            &good.url,
            "--dlq-url",
            &good_dlq.url,
        ],
        &[("AUTH_PROFILES", profiles), ("K", "k3y")],
    )
    .await;
    assert_eq!(out.code, 0, "stdout: {} stderr: {}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("MessageRetentionPeriod 1209600 s"),
        "{}",
        out.stdout
    );
    let warned: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("warning: AUTH_PROFILES"))
        .collect();
    assert_eq!(warned.len(), 1, "{}", out.stdout);
    assert!(warned[0].contains(" open: no hosts"), "{}", out.stdout);
    assert!(!out.stdout.contains("k3y"), "no secret in the report");

    // Four days of retention on a FIFO queue (whose records are not carried
    // over, §12.5), a 1 KiB DLQ and a 5 s visibility timeout, for 20
    // attempts and 30 s requests.
    let bad = crate::fifo::fifo_queue(&sqs, "check-bad").await;
    sqs.set_queue_attributes()
        .queue_url(&bad.url)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::MessageRetentionPeriod,
            "345600",
        )
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "5",
        )
        .send()
        .await
        .unwrap();
    let small_dlq = queue_with(&sqs, "check-bad-dlq", &[("MaximumMessageSize", "1024")]).await;
    let out = run_retryq(
        &["validate", "--queue-url", &bad.url],
        &[
            ("DLQ_URL", &small_dlq.url),
            ("MAX_ATTEMPTS", "20"),
            ("REQUEST_TIMEOUT_SECONDS", "30"),
        ],
    )
    .await;
    assert_eq!(out.code, 1, "stdout: {} stderr: {}", out.stdout, out.stderr);
    for (queue, attribute) in [
        (&small_dlq.url, "MaximumMessageSize"),
        (&bad.url, "MessageRetentionPeriod"),
        (&bad.url, "VisibilityTimeout"),
    ] {
        assert!(
            out.stdout.contains(&format!("error: {queue} {attribute}:")),
            "{queue} {attribute} not named: {}",
            out.stdout
        );
    }

    let out = run_retryq(&["validate", "--dlq-url", &good_dlq.url], &[]).await;
    assert_usage_error(&out, "--queue-url");
}

#[tokio::test]
async fn event_output_is_accepted_by_the_function() {
    let dest = answering(200).await;
    let dir = std::env::temp_dir().join(format!("retryq-event-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = dir.join("a.json");
    let b = dir.join("b.json");
    std::fs::write(&a, message("ev-a", &dest.uri(), serde_json::json!({}))).unwrap();
    std::fs::write(&b, message("ev-b", &dest.uri(), serde_json::json!({}))).unwrap();
    let out = run_retryq(&["event", a.to_str().unwrap(), b.to_str().unwrap()], &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);

    // Read as Lambda's SQS event, by aws_lambda_events, then as the handler reads it.
    let event: aws_lambda_events::event::sqs::SqsEvent = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(event.records.len(), 2);
    let event: retryq::lambda::SqsRecords = serde_json::from_str(&out.stdout).unwrap();
    let p = processor(&[("ALLOW_PRIVATE_DESTINATIONS", "true")]);
    let response = retryq::lambda::handle(p, lambda_runtime::LambdaEvent::new(event, context(30)))
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(dest.received_requests().await.unwrap().len(), 2);

    let bad = fixture("messages/invalid/missing-id.json");
    assert_usage_error(&run_retryq(&["event", &bad], &[]).await, "id");
    let out = run_retryq(&["event", "--raw", &bad], &[]).await;
    assert_eq!(out.code, 0, "--raw takes it as it is");
    let _ = std::fs::remove_dir_all(dir);
}

/// A DLQ holding three dead letters, one per reason, made by the processor.
async fn seeded_dlq() -> (aws_sdk_sqs::Client, TestQueue) {
    let (sqs, source, dlq, p) = with_dlq("cli", &[]).await;
    let sqs = &sqs;
    let gone = answering(404).await;
    send(
        sqs,
        &source,
        &message("dl-404", &gone.uri(), serde_json::json!({})),
    )
    .await;
    send(
        sqs,
        &source,
        &message(
            "dl-old",
            &gone.uri(),
            serde_json::json!({"expiresAt": "2020-01-01T00:00:00Z"}),
        ),
    )
    .await;
    send(
        sqs,
        &source,
        r#"{"id":"dl-bad","request":{"method":"GET"}}"#,
    )
    .await;
    let received = receive_n(sqs, &source, 3, Duration::from_secs(10)).await;
    let response = invoke(&p, sqs, &source, &received).await;
    assert!(response.batch_item_failures.is_empty());
    (sqs.clone(), dlq)
}

#[tokio::test]
async fn dlq_list_shows_each_dead_letter_and_leaves_them_in_place() {
    let (sqs, dlq) = seeded_dlq().await;

    let out = run_retryq(&["dlq", "list", "--dlq-url", &dlq.url], &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    for expected in [
        "dl-404",
        "non-retryable",
        "404",
        "dl-old",
        "expired",
        "invalid-message",
        "3 dead letter(s)",
    ] {
        assert!(
            out.stdout.contains(expected),
            "{expected} missing:\n{}",
            out.stdout
        );
    }

    let out = run_retryq(&["dlq", "list", "--dlq-url", &dlq.url, "--json"], &[]).await;
    assert_eq!(out.code, 0);
    let list: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        list.len(),
        3,
        "listing twice shows all again: nothing was consumed"
    );
    let not_found = list.iter().find(|l| l["id"] == "dl-404").unwrap();
    assert_eq!(not_found["failureReason"], "non-retryable");
    assert_eq!(not_found["lastStatusCode"], "404");
    assert_eq!(not_found["attemptCount"], "1");
    assert!(not_found["destination"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1:"));
    assert!(not_found["ageSeconds"].as_u64().unwrap() < 600);
    assert_eq!(depth(&sqs, &dlq).await, (3, 0));
}

#[tokio::test]
async fn dlq_redrive_moves_dead_letters_back_by_reason_without_failure_attributes() {
    let (sqs, dlq) = seeded_dlq().await;
    let target = queue(&sqs, "cli-redrive-to").await;
    // The dead letters' bodies, looked at and left visible.
    let letters = receive_n_hidden_for(&sqs, &dlq, 3, 0, Duration::from_secs(10)).await;
    let letter_404 = letters
        .iter()
        .find(|l| body_of(l)["id"] == "dl-404")
        .expect("the 404's dead letter");

    let out = redrive(&dlq, &target, &["--reason", "non-retryable"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("moved 1"), "{}", out.stdout);
    let moved = receive_n(&sqs, &target, 1, Duration::from_secs(10)).await;
    assert_eq!(
        moved[0].body, letter_404.body,
        "the body goes back byte for byte"
    );
    assert!(
        moved[0]
            .message_attributes
            .as_ref()
            .is_none_or(|a| a.is_empty()),
        "failure attributes dropped"
    );
    assert_eq!(depth(&sqs, &dlq).await, (2, 0), "the others stay, visible");

    let out = redrive(&dlq, &target, &["--max", "1"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("moved 1"), "{}", out.stdout);
    assert_eq!(depth(&sqs, &dlq).await, (1, 0));

    let out = redrive(&dlq, &target, &["--reason", "sideways"]).await;
    assert_usage_error(&out, "--reason");
}

/// §12.8 where credentials are attached: `retryq call` (which makes the
/// first attempt itself, without the processor's checks) sends a profile's
/// key only to the profile's `hosts`; elsewhere nothing is sent.
#[tokio::test]
async fn call_keeps_a_profile_credential_to_its_hosts() {
    let sqs = sqs();
    let q = queue(&sqs, "cli-call-hosts").await;
    let elsewhere = answering(200).await;
    let profiles = r#"{"partner": {"type": "header", "name": "x-api-key", "valueEnv": "K",
        "hosts": ["api.partner.example.com"]}}"#;
    let out = run_retryq(
        &[
            "call",
            "--queue-url",
            &q.url,
            "--url",
            &elsewhere.uri(),
            "--auth",
            "partner",
        ],
        &[
            ("ALLOW_PRIVATE_DESTINATIONS", "true"),
            ("AUTH_PROFILES", profiles),
            ("K", "k3y-secret"),
        ],
    )
    .await;
    assert!(
        elsewhere.received_requests().await.unwrap().is_empty(),
        "nothing sent: {} {}",
        out.stdout,
        out.stderr
    );
    assert_ne!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert!(out.stderr.contains("partner"), "{}", out.stderr);
    assert!(!out.stderr.contains("k3y-secret") && !out.stdout.contains("k3y-secret"));
}

/// Review finding: a redrive took the letters that came back while it
/// walked (redriven, failed at once, dead-lettered again) and sent them
/// again, without end. Each letter now moves once per redrive.
#[tokio::test]
async fn a_redrive_moves_each_letter_once_even_when_the_fleet_fails_it_again_at_once() {
    use aws_sdk_sqs::types::MessageAttributeValue;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let sqs = sqs();
    let dlq = queue(&sqs, "redrive-once-dlq").await;
    let target = queue(&sqs, "redrive-once-q").await;
    let seeded = 30;
    let reason = MessageAttributeValue::builder()
        .data_type("String")
        .string_value("non-retryable")
        .build()
        .unwrap();
    for i in 0..seeded {
        let body = message(
            &format!("l{i}"),
            &format!("https://api.partner.com/x/{i}"),
            serde_json::json!({}),
        );
        sqs.send_message()
            .queue_url(&dlq.url)
            .message_body(body)
            .message_attributes("FailureReason", reason.clone())
            .send()
            .await
            .unwrap();
    }
    // A fleet as fast as it gets: every redriven message fails at once
    // and is dead-lettered again.
    let requests = std::sync::Arc::new(AtomicUsize::new(0));
    let (q, d, fleet_sqs, n) = (
        target.url.clone(),
        dlq.url.clone(),
        sqs.clone(),
        requests.clone(),
    );
    let fleet = tokio::spawn(async move {
        loop {
            let got = fleet_sqs
                .receive_message()
                .queue_url(&q)
                .max_number_of_messages(10)
                .send()
                .await;
            for m in got.ok().and_then(|g| g.messages).unwrap_or_default() {
                n.fetch_add(1, Ordering::SeqCst);
                let _ = fleet_sqs
                    .send_message()
                    .queue_url(&d)
                    .message_body(m.body.clone().unwrap_or_default())
                    .message_attributes("FailureReason", reason.clone())
                    .send()
                    .await;
                let _ = fleet_sqs
                    .delete_message()
                    .queue_url(&q)
                    .receipt_handle(m.receipt_handle.unwrap_or_default())
                    .send()
                    .await;
            }
        }
    });
    let out = run_retryq(
        &[
            "dlq",
            "redrive",
            "--dlq-url",
            &dlq.url,
            "--to",
            &target.url,
            "--host",
            "api.partner.com",
        ],
        &[],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet.abort();
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(&format!("moved {seeded}")),
        "{}",
        out.stdout
    );
    assert_eq!(
        requests.load(Ordering::SeqCst),
        seeded,
        "each letter sent once"
    );
}
