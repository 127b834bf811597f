//! The soak (`make chaos`; docs/reliability.md): N messages, several real
//! `retryq worker` processes on one queue, a destination that fails at
//! random, SQS behind a proxy that throttles and refuses stale receipt
//! handles as SQS does, and workers killed (SIGKILL every 2–6 s) and frozen
//! (SIGSTOP longer than the visibility timeout, every 5–12 s). Then an
//! exact account: every message delivered or dead-lettered with a reason,
//! none lost, none both, no request past `MAX_ATTEMPTS`, and the requests
//! repeated no more than what the killed and frozen workers had in flight.
//!
//! `make test` runs one short seed; `make chaos SEED=… N=… SECONDS=…` a
//! longer one. `RETRYQ_CHAOS_BIN` runs another build's `retryq` (to
//! measure an older one; with `RETRYQ_CHAOS_ASSERT=false` it only reports).

#[path = "chaos/destination.rs"]
mod destination;
#[path = "chaos/fleet.rs"]
mod fleet;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use destination::{Destination, Fault, Seen};
use fleet::Fleet;

use crate::common::*;
use crate::sqs_proxy::{Faults, SqsProxy};

/// The contract's default.
const MAX_ATTEMPTS: usize = 5;
/// The queue's visibility timeout; a freeze lasts longer.
const VISIBILITY: Duration = Duration::from_secs(4);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The run's size, from the environment (`make chaos` sets them).
#[derive(Debug, Clone)]
struct Params {
    seed: u64,
    messages: usize,
    /// How long faults go on at most (the run then settles without them).
    seconds: u64,
    workers: usize,
    assert: bool,
    binary: PathBuf,
    /// With the fleet's state table (through the proxy, throttled too)
    /// and a fleet rate limit on the destination.
    table: bool,
}

/// The fleet rate limit of a run with the table: at most
/// `RATE + BURST` requests start in any one second.
const RATE: u32 = 20;
const BURST: u32 = 10;

impl Params {
    fn from_env() -> Params {
        let var = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .map(|v| {
                    v.parse()
                        .unwrap_or_else(|_| panic!("{name} is not a number"))
                })
                .unwrap_or(default)
        };
        Params {
            seed: var("RETRYQ_CHAOS_SEED", 1),
            messages: var("RETRYQ_CHAOS_N", 60) as usize,
            seconds: var("RETRYQ_CHAOS_SECONDS", 30),
            workers: var("RETRYQ_CHAOS_WORKERS", 3) as usize,
            assert: std::env::var("RETRYQ_CHAOS_ASSERT").as_deref() != Ok("false"),
            table: std::env::var("RETRYQ_CHAOS_TABLE").as_deref() == Ok("true"),
            binary: std::env::var_os("RETRYQ_CHAOS_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_retryq"))),
        }
    }
}

/// Each message's script: most deliver after up to two failures (some
/// slowly), a tenth are refused (404), a tenth never succeed.
fn scripts(rng: &mut fastrand::Rng, n: usize) -> Vec<Vec<Fault>> {
    let failure = |rng: &mut fastrand::Rng| match rng.u32(..6) {
        0 => Fault::Status(500),
        1 => Fault::Status(503),
        2 => Fault::Status(429),
        3 => Fault::Status(408),
        4 => Fault::Hang,
        _ => Fault::Reset,
    };
    (0..n)
        .map(|_| match rng.u32(..10) {
            0 => vec![Fault::Status(404)],
            1 => (0..MAX_ATTEMPTS + 2).map(|_| failure(rng)).collect(),
            _ => {
                let mut script: Vec<Fault> = (0..rng.usize(..3)).map(|_| failure(rng)).collect();
                script.push(match rng.u32(..4) {
                    0 => Fault::Slow(Duration::from_millis(rng.u64(300..1500))),
                    _ => Fault::Ok,
                });
                script
            }
        })
        .collect()
}

/// What the workers had in flight when they were faulted.
#[derive(Debug, Default)]
struct Faulted {
    kills: usize,
    freezes: usize,
    /// Requests sent by the faulted worker and not yet answered.
    open_at_kills: usize,
    open_at_freezes: usize,
    /// Requests of the faulted worker answered finally (2xx, 404) whose
    /// message it had not deleted yet.
    answered_at_faults: usize,
}

impl Faulted {
    /// Everything the faulted workers had in flight.
    fn in_flight(&self) -> usize {
        self.open_at_kills + self.open_at_freezes + self.answered_at_faults
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soak_with_killed_and_frozen_workers_loses_nothing_and_repeats_only_what_was_in_flight() {
    let params = Params::from_env();
    let mut rng = fastrand::Rng::with_seed(params.seed);
    let sqs = sqs();
    let (source, dlq, safety) = chaos_queues(&sqs).await;
    let scripts = scripts(&mut rng, params.messages);
    let destination = Destination::start(scripts, REQUEST_TIMEOUT * 2).await;
    let bodies: Vec<String> = (0..params.messages)
        .map(|i| {
            let url = format!("http://127.0.0.1:{}/m/{i}", destination.port);
            message(&format!("chaos-{i}"), &url, serde_json::json!({}))
        })
        .collect();
    send_batch(&sqs, &source, &bodies).await;
    let proxy = SqsProxy::start_with(
        endpoint(),
        Faults {
            stale_handles: true,
            throttle_per_mille: 20,
            seed: params.seed,
            ..Faults::default()
        },
    )
    .await;
    let table = match params.table {
        true => Some(crate::fleet::state_table().await),
        false => None,
    };
    let logs = std::env::temp_dir().join(format!(
        "retryq-chaos-{}-{}",
        params.seed,
        std::process::id()
    ));
    std::fs::create_dir_all(&logs).unwrap();
    let mut fleet = Fleet::new(
        params.workers,
        logs.clone(),
        worker_command(&params, (&source, &dlq), &proxy, table),
    );
    let started = Instant::now();
    let faulted = unleash(
        &params,
        &mut rng,
        &mut fleet,
        (&destination, &proxy),
        &sqs,
        &source,
    )
    .await;
    let settled = settle(&sqs, &source, Duration::from_secs(120)).await;
    let log_files = fleet.log_files();
    fleet.stop(Duration::from_secs(20));
    let letters = drain(&sqs, &dlq).await;
    let safety_net = drain(&sqs, &safety).await.len();
    let account = Account::of(&destination.seen(), &destination.delivered(), &letters);
    if std::env::var_os("RETRYQ_CHAOS_DEBUG").is_some() {
        explain_repeated_letters(&letters, &destination.seen(), started);
    }
    let panics = log_files
        .iter()
        .filter(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .contains("panicked")
        })
        .count();
    let calls = (proxy.count("throttled"), proxy.count("DeleteMessageBatch"));
    let report = account.report(&params, &faulted, started.elapsed(), calls);
    println!("{report}");
    if let Ok(path) = std::env::var("RETRYQ_CHAOS_REPORT") {
        std::fs::write(path, &report).unwrap();
    }
    if params.assert {
        assert!(
            settled,
            "the source queue emptied within two minutes of the faults' end\n{report}"
        );
        assert_eq!(safety_net, 0, "nothing reached the redrive policy's DLQ");
        assert_eq!(panics, 0, "no worker panicked (logs in {})", logs.display());
        account.check(&params, &faulted, &report);
    }
    if std::env::var_os("RETRYQ_CHAOS_DEBUG").is_none() {
        let _ = std::fs::remove_dir_all(&logs);
    }
}

/// For a run that is being looked into (`RETRYQ_CHAOS_DEBUG`): each
/// message with more than one letter, its letters and its requests.
fn explain_repeated_letters(letters: &[aws_sdk_sqs::types::Message], seen: &[Seen], t0: Instant) {
    let id_of = |m: &aws_sdk_sqs::types::Message| {
        let body: serde_json::Value =
            serde_json::from_str(m.body.as_deref().unwrap_or_default()).unwrap_or_default();
        body["id"].as_str().unwrap_or_default().to_owned()
    };
    let mut by_id: BTreeMap<String, Vec<&aws_sdk_sqs::types::Message>> = BTreeMap::new();
    for l in letters {
        by_id.entry(id_of(l)).or_default().push(l);
    }
    for (id, copies) in by_id.iter().filter(|(_, c)| c.len() > 1) {
        eprintln!("{id}:");
        for c in copies {
            eprintln!(
                "  letter {:?} n={:?} {:?}",
                attr(c, "FailureReason"),
                attr(c, "AttemptCount"),
                attr(c, "LastError")
            );
        }
        for s in seen.iter().filter(|s| format!("chaos-{}", s.id) == *id) {
            eprintln!(
                "  request at {:?} port {} answer {:?} ended {:?}",
                s.started.duration_since(t0),
                s.peer_port,
                s.answer,
                s.ended.map(|e| e.duration_since(t0))
            );
        }
    }
}

/// The source queue (visibility timeout [`VISIBILITY`], a redrive policy
/// at 50 receives), the processor's DLQ, and the redrive policy's DLQ.
async fn chaos_queues(sqs: &aws_sdk_sqs::Client) -> (TestQueue, TestQueue, TestQueue) {
    let dlq = queue(sqs, "chaos-dlq").await;
    let safety = queue(sqs, "chaos-safety").await;
    let policy = format!(
        r#"{{"deadLetterTargetArn":"{}","maxReceiveCount":"50"}}"#,
        safety.arn
    );
    let visibility = VISIBILITY.as_secs().to_string();
    let source = queue_with(
        sqs,
        "chaos",
        &[
            ("VisibilityTimeout", &visibility),
            ("RedrivePolicy", &policy),
        ],
    )
    .await;
    (source, dlq, safety)
}

/// The workers' command: `retryq worker` through the SQS proxy.
fn worker_command(
    params: &Params,
    (source, dlq): (&TestQueue, &TestQueue),
    proxy: &SqsProxy,
    table: Option<String>,
) -> Box<dyn Fn(PathBuf) -> Running + Send> {
    let (binary, queue, dlq, sqs) = (
        params.binary.clone(),
        source.url.clone(),
        dlq.url.clone(),
        proxy.endpoint.clone(),
    );
    let (attempts, timeout) = (
        MAX_ATTEMPTS.to_string(),
        REQUEST_TIMEOUT.as_secs().to_string(),
    );
    Box::new(move |log| {
        let mut command = std::process::Command::new(&binary);
        aws_env(&mut command)
            .args(["worker", "--queue-url", &queue, "--wait-seconds", "1"])
            .env("AWS_ENDPOINT_URL_SQS", &sqs)
            .env("DLQ_URL", &dlq)
            .env("ALLOW_PRIVATE_DESTINATIONS", "true")
            .env("MAX_ATTEMPTS", &attempts)
            .env("REQUEST_TIMEOUT_SECONDS", &timeout)
            .env("BACKOFF_BASE_SECONDS", "1")
            .env("BACKOFF_MAX_SECONDS", "2")
            .env("MAX_CONCURRENCY", "8")
            .env("RUST_LOG", "info")
            .envs(table.iter().flat_map(|table| {
                [
                    ("STATE_TABLE", table.clone()),
                    ("AWS_ENDPOINT_URL_DYNAMODB", sqs.clone()),
                    (
                        "DESTINATION_POLICIES",
                        format!(r#"{{"127.0.0.1": {{"rps": {RATE}, "burst": {BURST}}}}}"#),
                    ),
                ]
            }))
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap());
        Running::spawn(command)
    })
}

/// Kills and freezes workers at random until the queue is empty or
/// `params.seconds` have passed; a freeze outlasts the visibility timeout.
async fn unleash(
    params: &Params,
    rng: &mut fastrand::Rng,
    fleet: &mut Fleet,
    (destination, proxy): (&Destination, &SqsProxy),
    sqs: &aws_sdk_sqs::Client,
    source: &TestQueue,
) -> Faulted {
    let mut faulted = Faulted::default();
    let end = Instant::now() + Duration::from_secs(params.seconds);
    let mut next_kill = Instant::now() + Duration::from_millis(rng.u64(2000..6000));
    let mut next_freeze = Instant::now() + Duration::from_millis(rng.u64(5000..12000));
    let mut next_look = Instant::now();
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        fleet.thaw(false);
        let now = Instant::now();
        if now >= next_look {
            next_look = now + Duration::from_secs(2);
            if depth(sqs, source).await == (0, 0) {
                break;
            }
        }
        let running = fleet.running();
        if running.is_empty() {
            continue;
        }
        let i = running[rng.usize(..running.len())];
        let in_flight = || {
            let deleted = proxy.deleted_ids();
            destination.in_flight_from(&fleet.ports_of(i), |id| {
                deleted.contains(&format!("chaos-{id}"))
            })
        };
        if now >= next_kill {
            let (open, answered) = in_flight();
            faulted.kills += 1;
            faulted.open_at_kills += open;
            faulted.answered_at_faults += answered;
            fleet.kill(i);
            next_kill = now + Duration::from_millis(rng.u64(2000..6000));
        } else if now >= next_freeze {
            let (open, answered) = in_flight();
            faulted.freezes += 1;
            faulted.open_at_freezes += open;
            faulted.answered_at_faults += answered;
            fleet.freeze(i, VISIBILITY + Duration::from_millis(rng.u64(1000..3000)));
            next_freeze = now + Duration::from_millis(rng.u64(5000..12000));
        }
    }
    fleet.thaw(true);
    faulted
}

/// Waits (at most `limit`) until the source queue holds nothing.
async fn settle(sqs: &aws_sdk_sqs::Client, source: &TestQueue, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if depth(sqs, source).await == (0, 0) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// What became of every message.
#[derive(Debug, Default)]
struct Account {
    messages: usize,
    delivered: usize,
    dead_lettered: usize,
    lost: Vec<usize>,
    both: Vec<usize>,
    /// Ids with more than one DLQ copy, and a copy without a reason.
    letters_repeated: usize,
    letters_without_reason: usize,
    requests: usize,
    /// Requests beyond `MAX_ATTEMPTS`, summed over messages.
    past_max: usize,
    /// The most requests that started within one second.
    busiest_second: usize,
    /// Requests for a message after it had a final answer (2xx or 404).
    repeated: usize,
    /// Messages dead-lettered `attempts-exhausted` after fewer than
    /// `MAX_ATTEMPTS` requests (receives that made none used them up).
    exhausted_short: usize,
    reasons: BTreeMap<String, usize>,
}

impl Account {
    fn of(seen: &[Seen], delivered: &[bool], letters: &[aws_sdk_sqs::types::Message]) -> Account {
        let n = delivered.len();
        let mut copies = vec![0usize; n];
        let mut exhausted = vec![false; n];
        let mut account = Account {
            messages: n,
            requests: seen.len(),
            ..Account::default()
        };
        for letter in letters {
            let body: serde_json::Value =
                serde_json::from_str(letter.body.as_deref().unwrap_or_default())
                    .unwrap_or_default();
            let id = body["id"]
                .as_str()
                .and_then(|i| i.strip_prefix("chaos-")?.parse::<usize>().ok());
            let Some(id) = id.filter(|i| *i < n) else {
                continue;
            };
            copies[id] += 1;
            if attr(letter, "FailureReason").as_deref() == Some("attempts-exhausted") {
                exhausted[id] = true;
            }
            match attr(letter, "FailureReason") {
                Some(reason) => *account.reasons.entry(reason).or_default() += 1,
                None => account.letters_without_reason += 1,
            }
        }
        let mut requests = vec![0usize; n];
        let mut finished = vec![false; n];
        let mut by_start: Vec<&Seen> = seen.iter().collect();
        by_start.sort_by_key(|s| s.started);
        let mut first = 0;
        for (i, s) in by_start.iter().enumerate() {
            while s.started.duration_since(by_start[first].started) >= Duration::from_secs(1) {
                first += 1;
            }
            account.busiest_second = account.busiest_second.max(i + 1 - first);
        }
        for s in by_start {
            requests[s.id] += 1;
            if finished[s.id] {
                account.repeated += 1;
            }
            // Later requests count as repeats only once this one's answer
            // was out before they started.
            finished[s.id] |= s.is_final();
        }
        for id in 0..n {
            account.past_max += requests[id].saturating_sub(MAX_ATTEMPTS);
            account.letters_repeated += copies[id].saturating_sub(1);
            if exhausted[id] && requests[id] < MAX_ATTEMPTS {
                account.exhausted_short += 1;
            }
            match (delivered[id], copies[id] > 0) {
                (true, true) => account.both.push(id),
                (false, false) => account.lost.push(id),
                _ => {}
            }
        }
        account.delivered = delivered.iter().filter(|d| **d).count();
        account.dead_lettered = copies.iter().filter(|c| **c > 0).count();
        account
    }

    fn report(&self, p: &Params, f: &Faulted, took: Duration, calls: (usize, usize)) -> String {
        let (throttled, deletes) = calls;
        format!(
            "| {seed} | {n} | {w} | {kills} / {freezes} | {took} s | {delivered} | {dead} | {lost} | {both} | {requests} | {past} | {repeated} | {open_k} / {open_f} / {answered} | {letters} | {short} | {busiest} | {throttled} | {deletes} |\n\
             reasons: {reasons:?}; lost ids {lost_ids:?}; both {both_ids:?}",
            seed = p.seed,
            n = self.messages,
            w = p.workers,
            kills = f.kills,
            freezes = f.freezes,
            took = took.as_secs(),
            delivered = self.delivered,
            dead = self.dead_lettered,
            lost = self.lost.len(),
            both = self.both.len(),
            requests = self.requests,
            past = self.past_max,
            repeated = self.repeated,
            open_k = f.open_at_kills,
            open_f = f.open_at_freezes,
            answered = f.answered_at_faults,
            letters = self.letters_repeated,
            short = self.exhausted_short,
            busiest = self.busiest_second,
            reasons = self.reasons,
            lost_ids = self.lost,
            both_ids = self.both,
        )
    }

    fn check(&self, p: &Params, f: &Faulted, report: &str) {
        assert!(self.lost.is_empty(), "nothing lost\n{report}");
        assert!(
            self.both.is_empty(),
            "nothing both delivered and dead-lettered\n{report}"
        );
        assert_eq!(
            self.letters_without_reason, 0,
            "every DLQ copy has its reason\n{report}"
        );
        // A request in flight at a kill or a freeze may be counted by
        // nothing (docs/reliability.md, "Counts that survive a crash"): at
        // most one more request per such request.
        assert!(
            self.past_max <= f.in_flight(),
            "requests past MAX_ATTEMPTS\n{report}"
        );
        // A letter is sent twice only when a fault falls between it and
        // its delete (milliseconds).
        assert!(
            self.letters_repeated <= f.kills + f.freezes,
            "dead letters repeated\n{report}"
        );
        if p.table {
            let bound = (RATE + BURST) as usize;
            assert!(
                self.busiest_second <= bound,
                "at most {bound} requests a second\n{report}"
            );
        }
        assert!(
            self.repeated <= f.in_flight(),
            "requests repeated only for what was in flight at a kill or a freeze\n{report}"
        );
    }
}
