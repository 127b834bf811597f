//! End to end, against the local SQS server and a destination that fails
//! in every way spec §3 lists: a few hundred messages with mixed
//! outcomes each end up either delivered or in the DLQ with the right
//! reason (none lost, none in both), and the destination never sees more
//! requests at once than MAX_CONCURRENCY. Once with `retryq worker`'s core
//! in-process, once with `retryq trigger` feeding the function under
//! `cargo lambda watch`; and a busy `retryq worker` stopped with SIGTERM.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::destination::Destination;

const MAX_CONCURRENCY: usize = 8;

/// The processor's settings in these tests: quick backoff, three attempts.
const VARS: [(&str, &str); 5] = [
    ("MAX_ATTEMPTS", "3"),
    ("BACKOFF_BASE_SECONDS", "1"),
    ("BACKOFF_MAX_SECONDS", "1"),
    ("MAX_CONCURRENCY", "8"),
    ("ALLOW_PRIVATE_DESTINATIONS", "true"),
];

/// What should become of each message id.
struct Expected {
    delivered: HashSet<String>,
    dead: BTreeMap<String, &'static str>,
}

/// Sends a mix of `n` messages per kind (invalid ones too).
async fn enqueue_mix(
    sqs: &aws_sdk_sqs::Client,
    q: &TestQueue,
    dest: &Destination,
    n: usize,
) -> Expected {
    let mut expected = Expected {
        delivered: HashSet::new(),
        dead: BTreeMap::new(),
    };
    let kinds: [(&str, Option<&'static str>); 5] = [
        ("ok", None),
        ("flaky", None),
        ("limited", None),
        ("missing", Some("non-retryable")),
        ("down", Some("attempts-exhausted")),
    ];
    let mut bodies = Vec::new();
    for i in 0..n {
        for (kind, dead) in kinds {
            let id = format!("{kind}-{i}");
            bodies.push(message(
                &id,
                &dest.url(&format!("/{kind}/{i}")),
                serde_json::json!({}),
            ));
            match dead {
                None => drop(expected.delivered.insert(id)),
                Some(reason) => drop(expected.dead.insert(id, reason)),
            }
        }
        let id = format!("invalid-{i}");
        bodies.push(serde_json::json!({"id": id, "request": {"method": "GET"}}).to_string());
        expected.dead.insert(id, "invalid-message");
    }
    send_batch(sqs, q, &bodies).await;
    expected
}

/// A source queue, its DLQ and a destination answering after `delay_ms`,
/// with `n` messages of each kind on the queue.
async fn mixed_queue(
    prefix: &str,
    delay_ms: u64,
    n: usize,
) -> (
    aws_sdk_sqs::Client,
    TestQueue,
    TestQueue,
    Destination,
    Expected,
) {
    let sqs = sqs();
    let source = queue(&sqs, prefix).await;
    let dlq = queue(&sqs, &format!("{prefix}-dlq")).await;
    let dest = Destination::start(Duration::from_millis(delay_ms)).await;
    let expected = enqueue_mix(&sqs, &source, &dest, n).await;
    (sqs, source, dlq, dest, expected)
}

/// Waits (bounded) until the source queue is empty and the DLQ holds `dead`.
async fn settle(
    sqs: &aws_sdk_sqs::Client,
    source: &TestQueue,
    dlq: &TestQueue,
    dead: usize,
    limit: Duration,
) {
    let start = Instant::now();
    // Settled in three looks in a row: the server's counts are approximate
    // (as SQS's are) for a moment while a receive is under way.
    let mut settled_looks = 0;
    loop {
        let (visible, in_flight) = depth(sqs, source).await;
        let (dead_now, _) = depth(sqs, dlq).await;
        if visible == 0 && in_flight == 0 && dead_now as usize >= dead {
            settled_looks += 1;
            if settled_looks == 3 {
                return;
            }
        } else {
            settled_looks = 0;
        }
        assert!(
            start.elapsed() < limit,
            "not settled after {limit:?}: {visible} visible, {in_flight} in flight, {dead_now}/{dead} dead"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How many processes receive from the queue at once. One receiver must
/// never handle a message twice. With several, a message may be handled
/// twice: SQS is at-least-once, and moto's ReceiveMessage is not atomic
/// across concurrent requests (two receivers can get the same message).
/// Nothing may ever be lost either way.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Receivers {
    One,
    Several,
}

/// Every dead letter's Retry Message id and FailureReason.
async fn dead_letters(
    sqs: &aws_sdk_sqs::Client,
    dlq: &TestQueue,
    n: usize,
    receivers: Receivers,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut all = receive_n(sqs, dlq, n, Duration::from_secs(30)).await;
    // Duplicates may have made `n` arrive early: take what is left too.
    loop {
        let more = receive(sqs, dlq, 300).await;
        if more.is_empty() {
            break;
        }
        all.extend(more);
    }
    for m in all {
        let body: serde_json::Value = serde_json::from_str(m.body.as_deref().unwrap()).unwrap();
        let id = body["id"].as_str().unwrap().to_owned();
        let reason = attr(&m, "FailureReason").unwrap();
        if let Some(before) = out.insert(id.clone(), reason.clone()) {
            assert!(receivers == Receivers::Several, "{id} dead-lettered twice");
            assert_eq!(
                before, reason,
                "{id} dead-lettered twice with different reasons"
            );
        }
    }
    out
}

/// Every message ended delivered or dead-lettered with the right reason,
/// within `MAX_CONCURRENCY` at the destination.
async fn check(
    sqs: &aws_sdk_sqs::Client,
    dlq: &TestQueue,
    dest: &Destination,
    expected: &Expected,
    receivers: Receivers,
) {
    let dead = dead_letters(sqs, dlq, expected.dead.len(), receivers).await;
    check_outcomes(expected, &dest.delivered(), &dead, receivers);
    assert!(
        dest.max_in_flight() <= MAX_CONCURRENCY,
        "the destination saw {} requests at once",
        dest.max_in_flight()
    );
    assert!(
        dest.max_in_flight() > 1,
        "records were processed concurrently"
    );
}

/// None lost, none with a wrong reason. With one receiver, exactly as
/// expected: each deliverable message delivered once and never dead, the
/// others dead and never delivered. With several, copies of one message
/// handled at once share its receive count, so a deliverable message may
/// run out of attempts: it is then in the DLQ as `attempts-exhausted`
/// (and may also have been delivered by another copy).
fn check_outcomes(
    expected: &Expected,
    delivered: &HashMap<String, usize>,
    dead: &BTreeMap<String, String>,
    receivers: Receivers,
) {
    for id in &expected.delivered {
        let (times, dead_as) = (delivered.get(id).copied().unwrap_or(0), dead.get(id));
        match receivers {
            Receivers::One => assert!(
                times == 1 && dead_as.is_none(),
                "{id}: delivered {times} times, dead as {dead_as:?}"
            ),
            Receivers::Several => assert!(
                (times >= 1 && dead_as.is_none())
                    || dead_as.map(String::as_str) == Some("attempts-exhausted"),
                "{id}: delivered {times} times, dead as {dead_as:?}"
            ),
        }
    }
    for (id, reason) in &expected.dead {
        assert_eq!(dead.get(id).map(String::as_str), Some(*reason), "{id}");
        assert!(!delivered.contains_key(id), "{id} can never be delivered");
    }
    for id in dead.keys() {
        assert!(
            expected.delivered.contains(id) || expected.dead.contains_key(id),
            "unknown dead letter {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_worker_settles_a_mixed_queue_without_losing_or_duplicating() {
    let (sqs, source, dlq, dest, expected) = mixed_queue("e2e-worker", 20, 50).await;

    let mut vars = VARS.to_vec();
    vars.push(("DLQ_URL", &dlq.url));
    let p = processor(&vars);
    let mut options = retryq::worker::WorkerOptions::new(&source.url, MAX_CONCURRENCY);
    options.wait = Duration::from_secs(1);
    // One receive loop, so every message is handled by exactly one receiver
    // and the exact outcome can be checked (several receivers: the test
    // below); MAX_CONCURRENCY still bounds the records of each batch.
    options.pollers = 1;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(retryq::worker::run(Arc::clone(&p), options, async move {
        let _ = stopped.await;
    }));

    settle(
        &sqs,
        &source,
        &dlq,
        expected.dead.len(),
        Duration::from_secs(120),
    )
    .await;
    stop.send(()).unwrap();
    let stats = worker.await.unwrap().unwrap();

    check(&sqs, &dlq, &dest, &expected, Receivers::One).await;
    assert_eq!(
        stats.acknowledged as usize,
        expected.delivered.len() + expected.dead.len(),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_trigger_and_cargo_lambda_watch_settle_a_mixed_queue() {
    let (sqs, source, dlq, dest, expected) = mixed_queue("e2e-trigger", 20, 50).await;

    let port = free_port();
    let mut env: Vec<(&str, &str)> = VARS.to_vec();
    env.push(("DLQ_URL", &dlq.url));
    let log = std::env::temp_dir().join(format!("retryq-e2e-watch-{}.log", std::process::id()));
    let _watch = cargo_lambda_watch(port, &env, &log);

    let mut trigger = Command::new(env!("CARGO_BIN_EXE_retryq"));
    trigger
        .args([
            "trigger",
            "--wait-seconds",
            "1",
            "--queue-url",
            &source.url,
            "--function-url",
        ])
        .arg(format!("http://127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    aws_env(&mut trigger);
    let _trigger = Running::spawn(trigger);

    // Allows for cargo lambda watch building the function on the first call.
    settle(
        &sqs,
        &source,
        &dlq,
        expected.dead.len(),
        Duration::from_secs(600),
    )
    .await;

    check(&sqs, &dlq, &dest, &expected, Receivers::One).await;
    let _ = std::fs::remove_file(log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_worker_stopped_with_sigterm_finishes_what_it_started() {
    let sqs = sqs();
    let source = queue(&sqs, "e2e-sigterm").await;
    // A short visibility so anything the worker received but did not finish
    // would be visible again quickly for the check below.
    sqs.set_queue_attributes()
        .queue_url(&source.url)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            "5",
        )
        .send()
        .await
        .unwrap();
    let dlq = queue(&sqs, "e2e-sigterm-dlq").await;
    let dest = Destination::start(Duration::from_millis(200)).await;
    let mut all = HashSet::new();
    for i in 0..100 {
        let id = format!("slow-{i}");
        send(
            &sqs,
            &source,
            &message(&id, &dest.url(&format!("/ok/{i}")), serde_json::json!({})),
        )
        .await;
        all.insert(id);
    }

    let mut worker = Command::new(env!("CARGO_BIN_EXE_retryq"));
    worker
        .args(["worker", "--wait-seconds", "1", "--queue-url", &source.url])
        .envs(VARS)
        .env("MAX_CONCURRENCY", "4")
        .env("DLQ_URL", &dlq.url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    aws_env(&mut worker);
    let mut worker = Running::spawn(worker);

    // Busy: some delivered, more in flight.
    let start = Instant::now();
    while dest.requests() < 10 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the worker never got going"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.terminate();
    let status = worker
        .wait_for_exit(Duration::from_secs(60))
        .expect("the worker stops after SIGTERM");
    assert!(status.success(), "{status:?}");
    let delivered = dest.delivered();
    assert!(delivered.len() < all.len(), "stopped while busy");

    // What is left in the queue, once anything hidden is visible again.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut left = HashSet::new();
    for m in receive_n(
        &sqs,
        &source,
        all.len() - delivered.len(),
        Duration::from_secs(30),
    )
    .await
    {
        let body: serde_json::Value = serde_json::from_str(m.body.as_deref().unwrap()).unwrap();
        left.insert(body["id"].as_str().unwrap().to_owned());
    }
    for (id, times) in &delivered {
        assert_eq!(*times, 1, "{id} delivered {times} times");
        assert!(
            !left.contains(id),
            "{id} was acknowledged but is back in the queue"
        );
    }
    let accounted: HashSet<String> = delivered
        .keys()
        .cloned()
        .chain(left.iter().cloned())
        .collect();
    assert_eq!(
        accounted, all,
        "every message is either delivered or still queued"
    );
    assert_eq!(depth(&sqs, &dlq).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_workers_on_one_queue_lose_nothing() {
    let (sqs, source, dlq, dest, expected) = mixed_queue("e2e-workers", 10, 20).await;

    let mut vars = VARS.to_vec();
    vars.push(("DLQ_URL", &dlq.url));
    let (stop, _) = tokio::sync::watch::channel(false);
    let workers: Vec<_> = (0..3)
        .map(|_| {
            // Separate processors, as separate processes would have.
            let mut options = retryq::worker::WorkerOptions::new(&source.url, MAX_CONCURRENCY);
            options.wait = Duration::from_secs(1);
            let mut stopped = stop.subscribe();
            tokio::spawn(retryq::worker::run(processor(&vars), options, async move {
                let _ = stopped.wait_for(|s| *s).await;
            }))
        })
        .collect();

    settle(
        &sqs,
        &source,
        &dlq,
        expected.dead.len(),
        Duration::from_secs(120),
    )
    .await;
    stop.send(true).unwrap();
    for w in workers {
        w.await.unwrap().unwrap();
    }
    let dead = dead_letters(&sqs, &dlq, expected.dead.len(), Receivers::Several).await;
    check_outcomes(&expected, &dest.delivered(), &dead, Receivers::Several);
}
