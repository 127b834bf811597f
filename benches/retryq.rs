//! `make bench`: what retryq costs beside the floor, measured in the same run.
//!
//! The floor is `examples/floor.rs`: a minimal Lambda handler (replay each
//! record with reqwest, return `batchItemFailures`, nothing else), built
//! with the same crates and release profile. Both binaries run as separate
//! processes under a minimal Lambda Runtime API of this file, against the
//! demo destination in a third process with a fixed latency L, and every
//! figure is reported beside the floor's, as a ratio or a difference.
//!
//! 1. The decision core per record (criterion): parse + validate, classify,
//!    and one record's whole plan.
//! 2. Cold start: spawn → first `/next`, both binaries alternately; median.
//! 3. Batches of 10, 100, 1 000 and 10 000 records at `MAX_CONCURRENCY` 64:
//!    wall time against the ideal ⌈N / 64⌉ × L, and the function process's
//!    CPU time per record (all its threads, from `/proc/<pid>/task/*/schedstat`),
//!    runs alternating between the two binaries.
//! 4. Peak memory (VmHWM) of a fresh process handling one batch of ten
//!    16 MiB bodies offloaded to S3 (moto), and of one handling one 10 000 × 1 KiB
//!    batch; retryq's log bytes per record, and any ANSI escape in them.
//! 5. Failure-heavy: 10 000 records, half `503`s, with the local SQS server
//!    behind a counting proxy: SQS requests per retried record, and the
//!    wall time beside the same batch all delivered.
//! 6. The first invocation after a cold start: spawn → its end, and its CPU.
//! 7. Under Lambda's CPU share (`support/share.rs`): batches of 100 back to back in
//!    a CPU cgroup sized as 128 MB … 1 769 MB, at destinations answering in
//!    10 ms and 50 ms: records per second and billed duration per 1 000
//!    records, and the memory size that costs least.
//! 8. The cost per million deliveries at the template's defaults, from the
//!    quantities above and public prices (logs at their tiered price).
//!
//! Writes the table to stdout, `bench/results.json` and `bench/chart.svg`.
//! `make bench` builds the binaries and starts the local SQS server first.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::Criterion;
use serde_json::{json, Value};
use tokio::io::{AsyncWriteExt, BufReader};

const LATENCY_MS: u64 = 50;
/// The destinations' latencies in the CPU-share runs.
const SHARE_LATENCIES_MS: [u64; 2] = [10, 50];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn release(name: &str) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target"));
    let path = target.join("release").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `make bench`",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// A Retry Message of about `size` bytes for `url`.
fn body(id: usize, url: &str, size: usize) -> String {
    let base = json!({"id": format!("bench-{id}"), "destinationUrl": url, "request": {"method": "POST",
        "headers": {"content-type": "application/json"}, "body": ""}});
    let pad = size.saturating_sub(base.to_string().len() + 16);
    json!({"id": format!("bench-{id}"), "originatingService": "bench", "destinationUrl": url,
        "request": {"method": "POST", "headers": {"content-type": "application/json"},
        "body": format!("{{\"pad\":\"{}\"}}", "x".repeat(pad))}})
    .to_string()
}

/// `SentTimestamp` for a record sent now: a fixed one would, some days after
/// it was written, make the retention rule dead-letter every retry `expired`.
fn sent_now() -> String {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string()
}

fn event(n: usize, dest_port: u16, size: usize) -> Value {
    event_with(n, dest_port, size, &[])
}

/// As [`event`], the records naming `profiles` in turn (none when empty).
fn event_with(n: usize, dest_port: u16, size: usize, profiles: &[&str]) -> Value {
    let records: Vec<Value> = (0..n)
        .map(|i| {
            let mut body = body(i, &format!("http://127.0.0.1:{dest_port}/ok/{i}"), size);
            if !profiles.is_empty() {
                let mut message: Value = serde_json::from_str(&body).unwrap();
                message["auth"] = json!(profiles[i % profiles.len()]);
                body = message.to_string();
            }
            json!({"messageId": format!("00000000-0000-4000-8000-{i:012}"), "receiptHandle": format!("rh-{i}"),
                "body": body,
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": sent_now()},
                "messageAttributes": {}, "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:bench", "awsRegion": "us-east-1"})
        })
        .collect();
    json!({ "Records": records })
}

// ---------------------------------------------------------------- 1. core

fn core(c: &mut Criterion) -> BTreeMap<String, f64> {
    use retryq::message::RetryMessage;
    use retryq::policy::backoff::Backoff;
    use retryq::policy::classify::{classify, Answer};
    use retryq::policy::record::{conclude, plan, AttemptResult, Plan, Received, Settings};
    use retryq::policy::RetryPolicy;
    let text = body(1, "https://api.partner.example.com/v1/orders", 1024);
    let policy = RetryPolicy {
        max_attempts: 5,
        backoff: Backoff::new(Duration::from_secs(10), Duration::from_secs(900)).unwrap(),
        retry_after_max: Duration::from_secs(43_200),
    };
    let destinations = retryq::deliver::destination::DestinationPolicy::default();
    let mut headers = http::HeaderMap::new();
    headers.insert("retry-after", "120".parse().unwrap());
    let now = SystemTime::now();
    let settings = Settings::new(&policy, &|_, _| None);
    // The processor's own decision, less its I/O: plan, the destination
    // check and request headers, then conclude on a 503.
    let plan = |text: &str| {
        let Plan::Attempt { message, attempt } = plan(&Received::new(text, 2), &settings, now)
        else {
            panic!("the bench message is attempted")
        };
        destinations.check(&message.destination_url).unwrap();
        let h = retryq::deliver::request_headers(&message).unwrap();
        let result = AttemptResult::Answer(Answer::Status {
            status: 503,
            headers: &headers,
        });
        let decision = conclude(
            &settings,
            &attempt,
            result,
            now,
            std::time::Duration::from_secs(43_200),
            &mut fastrand::Rng::with_seed(1),
        );
        (h, decision)
    };
    let mut g = c.benchmark_group("core");
    g.bench_function("parse_validate_1KiB", |b| {
        b.iter(|| RetryMessage::parse(std::hint::black_box(&text)).unwrap())
    });
    g.bench_function("classify", |b| {
        b.iter(|| {
            classify(
                &Answer::Status {
                    status: std::hint::black_box(503),
                    headers: &headers,
                },
                now,
            )
        })
    });
    g.bench_function("record_plan", |b| {
        b.iter(|| plan(std::hint::black_box(&text)))
    });
    g.finish();
    let mut out = BTreeMap::new();
    for name in ["parse_validate_1KiB", "classify", "record_plan"] {
        let file = root().join(format!("target/criterion/core/{name}/new/estimates.json"));
        let est: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        out.insert(
            name.to_owned(),
            est["median"]["point_estimate"].as_f64().unwrap() / 1000.0,
        );
    }
    out
}

// ------------------------------------------- 2. a function under a Runtime API

struct Destination(Child);

impl Destination {
    fn start(port: u16, latency_ms: u64) -> Destination {
        let destination = Destination(
            Command::new(release("examples/demo_destination"))
                .env("DEMO_DESTINATION", format!("127.0.0.1:{port}"))
                .env("DEMO_LATENCY_MS", latency_ms.to_string())
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return destination;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the bench destination did not start");
    }
}

impl Drop for Destination {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The two handlers compared in every figure.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Handler {
    Retryq,
    Floor,
    /// Another build of retryq (`RETRYQ_BENCH_BASELINE=path`), for example
    /// an earlier commit's, measured in the same run.
    Baseline,
}

impl Handler {
    fn binary(self) -> PathBuf {
        match self {
            // The bootstrap as `make build` makes it, which `make bench`
            // copies: `cargo bench` builds the binaries again with the
            // dev-dependencies' features (rcgen's crypto among them), which
            // is not what is deployed and starts measurably slower.
            Handler::Retryq => release("retryq-processor.deployed"),
            Handler::Floor => release("examples/floor"),
            Handler::Baseline => PathBuf::from(
                std::env::var("RETRYQ_BENCH_BASELINE")
                    .expect("RETRYQ_BENCH_BASELINE names a bootstrap"),
            ),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Handler::Retryq => "retryq",
            Handler::Floor => "floor",
            Handler::Baseline => "baseline",
        }
    }
}

/// On-CPU time of every thread of `pid` (ns resolution, from schedstat).
fn cpu_of(pid: u32) -> Duration {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) {
                ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Duration::from_nanos(ns)
}

/// One invocation as the Runtime API saw it.
struct Invocation {
    wall: Duration,
    cpu: Duration,
    response: Vec<u8>,
}

#[derive(Default)]
struct ApiState {
    pid: u32,
    first_next: Option<Instant>,
    served: Option<(Instant, Duration)>,
}

/// A handler binary under a minimal Lambda Runtime API of our own: events
/// are handed out one per `/next`, and each invocation's wall and CPU time
/// (of the function's process) measured from handing out the event to
/// receiving the response. Its stdout is counted, not kept.
struct Function {
    child: Child,
    state: Arc<std::sync::Mutex<ApiState>>,
    events: tokio::sync::mpsc::Sender<Arc<Vec<u8>>>,
    invocations: tokio::sync::mpsc::Receiver<Invocation>,
    first_next: tokio::sync::watch::Receiver<bool>,
    server: tokio::task::JoinHandle<()>,
    stdout: Arc<StdoutCount>,
}

#[derive(Default)]
struct StdoutCount {
    bytes: std::sync::atomic::AtomicU64,
    lines: std::sync::atomic::AtomicU64,
    escapes: std::sync::atomic::AtomicU64,
}

impl Function {
    fn spawn(rt: &tokio::runtime::Runtime, handler: Handler, env: &[(&str, String)]) -> Function {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(std::sync::Mutex::new(ApiState::default()));
        let (events, events_rx) = tokio::sync::mpsc::channel(1);
        let (inv_tx, invocations) = tokio::sync::mpsc::channel(4);
        let (first_tx, first_next) = tokio::sync::watch::channel(false);
        let server = rt.spawn(runtime_api(
            listener,
            Arc::clone(&state),
            Arc::new(tokio::sync::Mutex::new(events_rx)),
            inv_tx,
            Arc::new(first_tx),
        ));
        // `RETRYQ_BENCH_WRAP="heaptrack -o /tmp/ht-{name}"` runs each function under
        // a profiler (its CPU figures then include the profiler's).
        let mut command = match std::env::var("RETRYQ_BENCH_WRAP") {
            Ok(wrap) if !wrap.trim().is_empty() => {
                let words: Vec<String> = wrap
                    .split_whitespace()
                    .map(|w| w.replace("{name}", handler.name()))
                    .collect();
                let mut c = Command::new(&words[0]);
                c.args(&words[1..]).arg(handler.binary());
                c
            }
            _ => Command::new(handler.binary()),
        };
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{port}"))
            .env("AWS_LAMBDA_FUNCTION_NAME", "bench")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "x")
            .env("AWS_SECRET_ACCESS_KEY", "x")
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
            .env("ALLOW_PRIVATE_DESTINATIONS", "true")
            .env("MAX_CONCURRENCY", "64")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            command.env(k, v);
        }
        // `RETRYQ_BENCH_ENV="K=V;K=V"`: more settings for retryq, to measure
        // what a feature costs by switching it off.
        if handler == Handler::Retryq {
            for kv in std::env::var("RETRYQ_BENCH_ENV")
                .unwrap_or_default()
                .split(';')
            {
                if let Some((k, v)) = kv.split_once('=') {
                    command.env(k.trim(), v.trim());
                }
            }
        }
        let mut child = command.spawn().unwrap();
        state.lock().unwrap().pid = child.id();
        let stdout = Arc::new(StdoutCount::default());
        let (mut out, count) = (child.stdout.take().unwrap(), Arc::clone(&stdout));
        std::thread::spawn(move || {
            use std::io::Read;
            use std::sync::atomic::Ordering::Relaxed;
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let chunk = &buf[..n];
                count.bytes.fetch_add(n as u64, Relaxed);
                count.lines.fetch_add(
                    chunk.iter().filter(|b| **b == b'\n').count() as u64,
                    Relaxed,
                );
                count
                    .escapes
                    .fetch_add(chunk.iter().filter(|b| **b == 0x1b).count() as u64, Relaxed);
            }
        });
        Function {
            child,
            state,
            events,
            invocations,
            first_next,
            server,
            stdout,
        }
    }

    /// Time from `since` to the first `/next`.
    fn wait_first_next(&mut self, rt: &tokio::runtime::Runtime, since: Instant) -> Duration {
        rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(20),
                self.first_next.wait_for(|seen| *seen),
            )
            .await
            .expect("the function asked for its first event")
            .unwrap();
        });
        self.state.lock().unwrap().first_next.unwrap() - since
    }

    fn invoke(&mut self, rt: &tokio::runtime::Runtime, event: &Arc<Vec<u8>>) -> Invocation {
        rt.block_on(async {
            self.events.send(Arc::clone(event)).await.unwrap();
            tokio::time::timeout(Duration::from_secs(300), self.invocations.recv())
                .await
                .expect("the function answered")
                .unwrap()
        })
    }

    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap()
            / 1024.0
    }

    fn stdout_bytes(&self) -> u64 {
        self.stdout.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        // SIGTERM first, so a profiler wrapping it (`RETRYQ_BENCH_WRAP`)
        // writes its report; then SIGKILL.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.server.abort();
    }
}

async fn runtime_api(
    listener: tokio::net::TcpListener,
    state: Arc<std::sync::Mutex<ApiState>>,
    events: Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Arc<Vec<u8>>>>>,
    invocations: tokio::sync::mpsc::Sender<Invocation>,
    first_next: Arc<tokio::sync::watch::Sender<bool>>,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let (state, events, invocations, first_next) = (
            Arc::clone(&state),
            Arc::clone(&events),
            invocations.clone(),
            Arc::clone(&first_next),
        );
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut reader = BufReader::new(read);
            while let Some(sqs_proxy::Request { path, body, .. }) =
                sqs_proxy::read_request(&mut reader).await
            {
                if path.contains("/invocation/next") {
                    {
                        let mut s = state.lock().unwrap();
                        s.first_next.get_or_insert_with(Instant::now);
                    }
                    first_next.send_replace(true);
                    // Held until the bench hands out an event, as Lambda does.
                    let Some(event) = events.lock().await.recv().await else {
                        return;
                    };
                    {
                        let mut s = state.lock().unwrap();
                        let pid = s.pid;
                        s.served = Some((Instant::now(), cpu_of(pid)));
                    }
                    let deadline = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap()
                        .as_millis()
                        + 900_000;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nlambda-runtime-aws-request-id: bench-1\r\n\
                         lambda-runtime-deadline-ms: {deadline}\r\nlambda-runtime-invoked-function-arn: arn:aws:lambda:us-east-1:123456789012:function:bench\r\n\
                         lambda-runtime-trace-id: Root=1-00000000-000000000000000000000000\r\ncontent-length: {}\r\n\r\n",
                        event.len()
                    );
                    // One write: a second one would wait for the client's
                    // delayed ACK (Nagle), adding ~40 ms to every invocation.
                    let mut answer = head.into_bytes();
                    answer.extend_from_slice(&event);
                    let _ = write.write_all(&answer).await;
                } else {
                    if path.contains("/response") || path.contains("/error") {
                        let (at, pid, served) = {
                            let s = state.lock().unwrap();
                            (Instant::now(), s.pid, s.served)
                        };
                        let (t0, cpu0) = served.expect("a response follows an event");
                        let _ = invocations
                            .send(Invocation {
                                wall: at - t0,
                                cpu: cpu_of(pid).saturating_sub(cpu0),
                                response: body,
                            })
                            .await;
                    }
                    let _ = write
                        .write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
                        .await;
                }
            }
        });
    }
}

fn failures_in(response: &[u8]) -> usize {
    serde_json::from_slice::<Value>(response)
        .ok()
        .and_then(|v| v["batchItemFailures"].as_array().map(Vec::len))
        .unwrap_or(usize::MAX)
}

// ------------------------------------------------------------ 3. cold start

/// Spawn → first `/next`, the handlers alternately (with the baseline
/// build when `RETRYQ_BENCH_BASELINE` names one); medians.
fn cold_start(rt: &tokio::runtime::Runtime) -> BTreeMap<&'static str, f64> {
    let mut handlers = vec![Handler::Retryq, Handler::Floor];
    if std::env::var_os("RETRYQ_BENCH_BASELINE").is_some() {
        handlers.push(Handler::Baseline);
    }
    let mut times: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for _ in 0..25 {
        for &handler in &handlers {
            let start = Instant::now();
            let mut f = Function::spawn(rt, handler, &[]);
            let took = f.wait_first_next(rt, start);
            times
                .entry(handler.name())
                .or_default()
                .push(took.as_secs_f64() * 1000.0);
        }
    }
    times.into_iter().map(|(k, v)| (k, median(v))).collect()
}

/// Spawn → end of the first invocation (a batch of 10 small records to a
/// destination answering in `LATENCY_MS`), and that invocation's CPU, with
/// `DLQ_URL` set as in every deployment; medians of alternate runs.
fn cold_first_invocation(
    rt: &tokio::runtime::Runtime,
    dest_port: u16,
    dlq_url: &str,
) -> BTreeMap<&'static str, (f64, f64)> {
    let event = Arc::new(serde_json::to_vec(&event(10, dest_port, 512)).unwrap());
    let env = [("DLQ_URL", dlq_url.to_owned())];
    let mut runs: BTreeMap<&'static str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for _ in 0..15 {
        for handler in [Handler::Retryq, Handler::Floor] {
            let start = Instant::now();
            let mut f = Function::spawn(rt, handler, &env);
            let invocation = f.invoke(rt, &event);
            let run = runs.entry(handler.name()).or_default();
            run.0.push(start.elapsed().as_secs_f64() * 1000.0);
            run.1.push(invocation.cpu.as_secs_f64() * 1000.0);
        }
    }
    runs.into_iter()
        .map(|(k, (wall, cpu))| (k, (median(wall), median(cpu))))
        .collect()
}

// --------------------------------------------------- 4. batches side by side

const CONCURRENCY: usize = 64;

/// Both handlers, same destination, same events, alternating runs. With
/// `table` (a state table and the counting proxy in front of the local
/// server), also retryq with `STATE_TABLE` set.
fn batches(
    rt: &tokio::runtime::Runtime,
    dest_port: u16,
    table: Option<(&str, &sqs_proxy::SqsProxy)>,
) -> Vec<Value> {
    // retryq, the floor, and retryq without the delivered records' log
    // lines (the cost of that line, in the same run).
    let quiet = [("LOG_DELIVERED", "none".to_owned())];
    let two_threads = [("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "3538".to_owned())];
    let mut functions: Vec<(&str, Function)> = vec![
        ("retryq", Function::spawn(rt, Handler::Retryq, &[])),
        ("floor", Function::spawn(rt, Handler::Floor, &[])),
        (
            "retryq-no-log",
            Function::spawn(rt, Handler::Retryq, &quiet),
        ),
        // As a function of 2 vCPUs: two runtime threads, as before the
        // runtime was sized to the function's CPU (and as the floor runs).
        (
            "retryq-2-threads",
            Function::spawn(rt, Handler::Retryq, &two_threads),
        ),
    ];
    if std::env::var_os("RETRYQ_BENCH_BASELINE").is_some() {
        functions.push(("baseline", Function::spawn(rt, Handler::Baseline, &[])));
    }
    if let Some((table, proxy)) = table {
        let env = [
            ("STATE_TABLE", table.to_owned()),
            ("AWS_ENDPOINT_URL", proxy.endpoint.clone()),
        ];
        functions.push(("retryq-table", Function::spawn(rt, Handler::Retryq, &env)));
    }
    let warm = Arc::new(serde_json::to_vec(&event(CONCURRENCY, dest_port, 1024)).unwrap());
    for (_, f) in &mut functions {
        f.invoke(rt, &warm);
    }
    let mut rows = Vec::new();
    for (n, runs) in [(10usize, 21), (100, 11), (1000, 5), (10_000, 2)] {
        let ev = Arc::new(serde_json::to_vec(&event(n, dest_port, 1024)).unwrap());
        let mut per: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
        for _ in 0..runs {
            for (h, f) in &mut functions {
                let inv = f.invoke(rt, &ev);
                assert_eq!(failures_in(&inv.response), 0, "{h}: every record delivered");
                let e = per.entry(*h).or_default();
                e.0.push(inv.wall.as_secs_f64() * 1000.0);
                e.1.push(inv.cpu.as_secs_f64() * 1e6 / n as f64);
            }
        }
        let ideal = n.div_ceil(CONCURRENCY) as f64 * LATENCY_MS as f64;
        for (name, (walls, cpus)) in per {
            let wall = median(walls);
            rows.push(json!({"handler": name, "records": n, "maxConcurrency": CONCURRENCY, "latencyMs": LATENCY_MS,
                "wallMs": wall, "idealMs": ideal, "ratio": wall / ideal, "cpuUsPerRecord": median(cpus), "runs": runs}));
            eprintln!(
                "{name:>13} batch {n:>5}: {wall:8.1} ms (ideal {ideal:.0} ms), {:.1} µs CPU/record",
                rows.last().unwrap()["cpuUsPerRecord"].as_f64().unwrap()
            );
        }
    }
    rows
}

/// CPU per record of 1 000-record batches to a destination answering in
/// 1 ms (so CPU, not waiting, dominates), retryq and the floor in turn;
/// medians of 9 runs each.
fn cpu_only(rt: &tokio::runtime::Runtime) {
    let dest_port = free_port();
    let _dest = Destination::start(dest_port, 1);
    let ev = Arc::new(serde_json::to_vec(&event(1000, dest_port, 1024)).unwrap());
    let mut functions = [Handler::Retryq, Handler::Floor].map(|h| (h, Function::spawn(rt, h, &[])));
    let mut cpu: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for run in 0..10 {
        for (h, f) in &mut functions {
            let inv = f.invoke(rt, &ev);
            assert_eq!(failures_in(&inv.response), 0);
            if run > 0 {
                cpu.entry(h.name())
                    .or_default()
                    .push(inv.cpu.as_secs_f64() * 1e3);
            }
        }
    }
    let (r, f) = (
        median(cpu.remove("retryq").unwrap()),
        median(cpu.remove("floor").unwrap()),
    );
    println!(
        "CPU per record, 1 000 records at 1 ms: retryq {r:.1} µs, floor {f:.1} µs ({:.3} ×)",
        r / f
    );
}

/// Peak RSS of a fresh process handling one 10 000 × 1 KiB batch, and
/// retryq's log bytes per record (JSON lines, as the template configures).
fn peak_rss(rt: &tokio::runtime::Runtime) -> (BTreeMap<&'static str, f64>, (f64, f64), u64) {
    let dest_port = free_port();
    let _dest = Destination::start(dest_port, 1);
    let ev = Arc::new(serde_json::to_vec(&event(10_000, dest_port, 1024)).unwrap());
    let mut rss = BTreeMap::new();
    let (mut log_bytes, mut escapes) = ((0.0, 0.0), 0);
    for handler in [Handler::Retryq, Handler::Floor] {
        let mut f = Function::spawn(rt, handler, &[]);
        let inv = f.invoke(rt, &ev);
        assert_eq!(failures_in(&inv.response), 0);
        rss.insert(handler.name(), f.peak_rss_mib());
        if handler == Handler::Retryq {
            // The stdout reader may lag the response by a moment.
            std::thread::sleep(Duration::from_millis(300));
            let lines = f.stdout.lines.load(std::sync::atomic::Ordering::Relaxed);
            log_bytes = (f.stdout_bytes() as f64 / 10_000.0, lines as f64 / 10_000.0);
            escapes = f.stdout.escapes.load(std::sync::atomic::Ordering::Relaxed);
        }
    }
    (rss, log_bytes, escapes)
}

/// Peak memory (VmHWM) of a fresh retryq process handling one batch of
/// `LARGE_RECORDS` payload pointers, each to a Retry Message with a
/// `LARGE_BODY_MIB` body in S3 on the local server (spec §11, §12.4), with
/// `PAYLOAD_MEMORY_BYTES` as a 256 MB function's default (a quarter); and,
/// in the same run, of a fresh process handling `LARGE_RECORDS` inline
/// records of 1 KiB, the baseline. The bodies must be held within the
/// budget, and each once.
const LARGE_RECORDS: usize = 100;
const LARGE_BODY_MIB: usize = 16;
const LARGE_MEMORY_BYTES: usize = 64 << 20;

fn large_payloads(rt: &tokio::runtime::Runtime, endpoint: &str) -> LargeRss {
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "x", "x", None, None, "bench",
            ))
            .build(),
    );
    let bucket = format!("bench-payloads-{}", std::process::id());
    let dest_port = free_port();
    let _dest = Destination::start(dest_port, 1);
    let records: Vec<Value> = rt.block_on(async {
        s3.create_bucket().bucket(&bucket).send().await.unwrap();
        let mut records = Vec::new();
        for i in 0..LARGE_RECORDS {
            let message = json!({
                "id": format!("large-{i}"),
                "destinationUrl": format!("http://127.0.0.1:{dest_port}/ok/large-{i}"),
                "request": {"method": "POST", "body": "x".repeat(LARGE_BODY_MIB << 20)}
            })
            .to_string();
            let key = format!("large-{i}");
            s3.put_object()
                .bucket(&bucket)
                .key(&key)
                .body(message.into_bytes().into())
                .send()
                .await
                .unwrap();
            let pointer = json!([retryq::payload::POINTER_CLASS, {"s3BucketName": bucket, "s3Key": key}]);
            records.push(json!({"messageId": format!("00000000-0000-4000-8000-{i:012}"), "receiptHandle": format!("rh-{i}"),
                "body": pointer.to_string(),
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": sent_now()},
                "messageAttributes": {}, "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:bench", "awsRegion": "us-east-1"}));
        }
        records
    });
    let ev = Arc::new(serde_json::to_vec(&json!({ "Records": records })).unwrap());
    let env = [
        ("AWS_ENDPOINT_URL_S3", endpoint.to_owned()),
        ("PAYLOAD_BUCKETS", bucket.clone()),
        ("PAYLOAD_MEMORY_BYTES", LARGE_MEMORY_BYTES.to_string()),
    ];
    let mut f = Function::spawn(rt, Handler::Retryq, &env);
    let inv = f.invoke(rt, &ev);
    assert_eq!(failures_in(&inv.response), 0, "all delivered");
    let large = f.peak_rss_mib();
    let small = Arc::new(serde_json::to_vec(&event(LARGE_RECORDS, dest_port, 1024)).unwrap());
    let mut f = Function::spawn(rt, Handler::Retryq, &[]);
    let inv = f.invoke(rt, &small);
    assert_eq!(failures_in(&inv.response), 0, "all delivered");
    LargeRss {
        large,
        small: f.peak_rss_mib(),
    }
}

/// Peak RSS, MiB: the batch of large offloaded bodies, and the same number
/// of 1 KiB inline records.
#[derive(Debug, Clone, Copy)]
struct LargeRss {
    large: f64,
    small: f64,
}

impl std::fmt::Display for LargeRss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "peak RSS, {LARGE_RECORDS} × {LARGE_BODY_MIB} MiB offloaded bodies within PAYLOAD_MEMORY_BYTES {} MiB: \
             {:.1} MiB, beside {:.1} MiB for {LARGE_RECORDS} × 1 KiB inline (+{:.1} MiB; the bodies total {} MiB)",
            LARGE_MEMORY_BYTES >> 20,
            self.large,
            self.small,
            self.large - self.small,
            LARGE_RECORDS * LARGE_BODY_MIB,
        )
    }
}

// ------------------------------------------- 5. failure-heavy, against SQS

#[path = "support/share.rs"]
mod share;

#[path = "../tests/aws/sqs_proxy.rs"]
#[allow(dead_code)]
mod sqs_proxy;

#[path = "../tests/aws/state_table.rs"]
mod state_table;

/// A state table on the local server, as the template creates it.
fn state_table(rt: &tokio::runtime::Runtime, endpoint: &str) -> String {
    let ddb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "x", "x", None, None, "bench",
            ))
            .build(),
    );
    let name = format!("bench-state-{}-{}", std::process::id(), fastrand::u32(..));
    rt.block_on(state_table::create(&ddb, &name));
    // The events' source queue (`eventSourceARN`), as in a deployment: with
    // a table, a record whose queue's limits cannot be read is counted in
    // the ledger before its attempt.
    let sqs = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "x", "x", None, None, "bench",
            ))
            .build(),
    );
    rt.block_on(sqs.create_queue().queue_name("bench").send())
        .expect("the bench's source queue");
    name
}

/// DynamoDB requests the proxy has seen.
fn dynamodb_requests(proxy: &sqs_proxy::SqsProxy) -> usize {
    proxy
        .counts()
        .iter()
        .filter(|(op, _)| op.starts_with("DynamoDB"))
        .map(|(_, n)| n)
        .sum()
}

/// DynamoDB requests of the ledger the proxy has seen: every operation
/// but `Query`, which only the pause list makes.
fn ledger_requests(proxy: &sqs_proxy::SqsProxy) -> usize {
    dynamodb_requests(proxy) - pause_reads(proxy)
}

/// The pause list's reads (`Query`) the proxy has seen.
fn pause_reads(proxy: &sqs_proxy::SqsProxy) -> usize {
    proxy
        .counts()
        .iter()
        .filter(|(op, _)| op.starts_with("DynamoDB") && op.ends_with(".Query"))
        .map(|(_, n)| n)
        .sum()
}

/// The two events of [`failure_heavy`]: 10 000 records, half `503`s on
/// their second receive, and 10 000 all delivered; and how many fail.
struct FailureHeavy {
    mixed: Arc<Vec<u8>>,
    all_ok: Arc<Vec<u8>>,
    failing: usize,
}

impl FailureHeavy {
    fn new(dest_port: u16, arn: &str) -> FailureHeavy {
        // The failing half carry receipt handles the server does not know:
        // it refuses each entry (ReceiptHandleIsInvalid) at the cost of one
        // request per ten, exactly as it would accept real ones, without
        // spending minutes on 5 000 real messages (the local server's receive
        // is slow at that depth). The records stay unacknowledged either way.
        let failing = 5000usize;
        let mut records: Vec<Value> = Vec::new();
        let down = event(failing, dest_port, 1024);
        for (i, mut r) in down["Records"]
            .as_array()
            .unwrap()
            .iter()
            .cloned()
            .enumerate()
        {
            let url = format!("http://127.0.0.1:{dest_port}/down/{i}");
            r["body"] = json!(body(i, &url, 1024));
            r["eventSourceARN"] = json!(arn);
            r["attributes"]["ApproximateReceiveCount"] = json!("2");
            records.push(r);
            let mut ok = event(1, dest_port, 1024)["Records"][0].clone();
            ok["messageId"] = json!(format!("10000000-0000-4000-8000-{i:012}"));
            ok["eventSourceARN"] = json!(arn);
            records.push(ok);
        }
        let mut all_ok = event(2 * failing, dest_port, 1024);
        for r in all_ok["Records"].as_array_mut().unwrap() {
            r["eventSourceARN"] = json!(arn);
        }
        FailureHeavy {
            mixed: Arc::new(serde_json::to_vec(&json!({"Records": records})).unwrap()),
            all_ok: Arc::new(serde_json::to_vec(&all_ok).unwrap()),
            failing,
        }
    }
}

/// A standard queue and its DLQ on the local server, made directly (only
/// the function's calls go through the counting proxy): (their name, the
/// DLQ's URL).
fn bench_queues(rt: &tokio::runtime::Runtime, upstream: &str) -> (String, String) {
    let sqs = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .endpoint_url(upstream)
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "x", "x", None, None, "bench",
            ))
            .build(),
    );
    let name = format!("bench-{}", std::process::id());
    let dlq_url = rt.block_on(async {
        for n in [name.clone(), format!("{name}-dlq")] {
            let made = sqs.create_queue().queue_name(n).send().await.unwrap();
            if made.queue_url().is_some_and(|u| u.ends_with("-dlq")) {
                return made.queue_url.unwrap();
            }
        }
        unreachable!("the DLQ was made last")
    });
    (name, dlq_url)
}

/// 10 000 records, half of them `503`s, against the local SQS server
/// through a counting proxy: SQS requests per retried record, and the wall
/// time beside the same batch all delivered. Then the same with
/// `STATE_TABLE` ([`failure_heavy_with_table`]).
fn failure_heavy(rt: &tokio::runtime::Runtime, table: &str) -> Value {
    let Ok(upstream) = std::env::var("RETRYQ_TEST_SQS_ENDPOINT") else {
        panic!("RETRYQ_TEST_SQS_ENDPOINT is not set: run `make bench`, which starts the local SQS server");
    };
    let dest_port = free_port();
    let _dest = Destination::start(dest_port, LATENCY_MS);
    let proxy = rt.block_on(sqs_proxy::SqsProxy::start(upstream.clone(), None));
    let (name, dlq_url) = bench_queues(rt, &upstream);
    let events = FailureHeavy::new(
        dest_port,
        &format!("arn:aws:sqs:us-east-1:123456789012:{name}"),
    );
    let env = [
        ("AWS_ENDPOINT_URL", proxy.endpoint.clone()),
        ("DLQ_URL", dlq_url),
        // Retries stay hidden past the second run, as in production.
        ("BACKOFF_BASE_SECONDS", "600".to_owned()),
    ];
    let mut f = Function::spawn(rt, Handler::Retryq, &env);
    f.invoke(
        rt,
        &Arc::new(serde_json::to_vec(&event(CONCURRENCY, dest_port, 1024)).unwrap()),
    );
    let (mut ok_walls, mut mixed_walls, mut requests) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..2 {
        ok_walls.push(f.invoke(rt, &events.all_ok).wall.as_secs_f64() * 1000.0);
        let before: usize = proxy.counts().values().sum();
        let inv = f.invoke(rt, &events.mixed);
        assert_eq!(
            failures_in(&inv.response),
            events.failing,
            "the 503s come back"
        );
        mixed_walls.push(inv.wall.as_secs_f64() * 1000.0);
        let after: usize = proxy.counts().values().sum();
        requests.push((after - before) as f64 / events.failing as f64);
    }
    let (ok_wall, mixed_wall) = (median(ok_walls), median(mixed_walls));
    let per_record = requests.iter().cloned().fold(0.0, f64::max);
    let sqs_counts = proxy.counts();
    eprintln!("failure-heavy: {mixed_wall:.0} ms vs all-delivered {ok_wall:.0} ms; SQS requests per retried record {per_record:.3} ({sqs_counts:?})");
    drop(f);
    let mut env = env.to_vec();
    env.push(("STATE_TABLE", table.to_owned()));
    let mut with_table = failure_heavy_with_table(rt, &proxy, &env, &events);
    let table_wall = with_table["halfFailingWallMs"].as_f64().unwrap();
    with_table["wallRatioToWithout"] = json!(table_wall / mixed_wall);
    json!({"records": 2 * events.failing, "retried": events.failing, "allDeliveredWallMs": ok_wall, "halfFailingWallMs": mixed_wall,
        "wallRatio": mixed_wall / ok_wall, "sqsRequestsPerRetriedRecord": per_record, "sqsRequestsByOperation": sqs_counts,
        "sqsRequestsPerRetriedRecordUnbatched": 1.0, "stateTable": with_table})
}

/// [`failure_heavy`]'s two batches with the fleet's table: DynamoDB
/// requests per failed record (the failing half are on their second
/// receive, so their ledger is read too); for the all-delivered batch, the
/// ledger's requests (none) and the pause list's reads (the first, then
/// at most one a second).
fn failure_heavy_with_table(
    rt: &tokio::runtime::Runtime,
    proxy: &sqs_proxy::SqsProxy,
    env: &[(&str, String)],
    events: &FailureHeavy,
) -> Value {
    let mut f = Function::spawn(rt, Handler::Retryq, env);
    let (mut walls, mut per_failed, mut ledger_when_delivered, mut pause_reads_per_s) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..2 {
        let (ledger, reads) = (ledger_requests(proxy), pause_reads(proxy));
        let ok = f.invoke(rt, &events.all_ok);
        ledger_when_delivered.push((ledger_requests(proxy) - ledger) as f64);
        let reads = (pause_reads(proxy) - reads) as f64;
        pause_reads_per_s.push((reads - 1.0).max(0.0) / ok.wall.as_secs_f64());
        let between = dynamodb_requests(proxy);
        let inv = f.invoke(rt, &events.mixed);
        assert_eq!(
            failures_in(&inv.response),
            events.failing,
            "the 503s come back"
        );
        walls.push(inv.wall.as_secs_f64() * 1000.0);
        per_failed.push((dynamodb_requests(proxy) - between) as f64 / events.failing as f64);
    }
    let max = |v: Vec<f64>| v.into_iter().fold(0.0, f64::max);
    let (per_failed, ledger, reads) = (
        max(per_failed),
        max(ledger_when_delivered),
        max(pause_reads_per_s),
    );
    let wall = median(walls);
    eprintln!("failure-heavy with STATE_TABLE: {wall:.0} ms; DynamoDB requests per failed record {per_failed:.3}; for an all-delivered batch, ledger requests {ledger}, pause reads per second after the first {reads:.2}");
    let ddb_counts: BTreeMap<String, usize> = proxy
        .counts()
        .into_iter()
        .filter(|(op, _)| op.starts_with("DynamoDB"))
        .collect();
    json!({"halfFailingWallMs": wall, "dynamodbRequestsPerFailedRecord": per_failed,
        "ledgerRequestsAllDeliveredBatch": ledger, "pauseReadsPerSecondAllDeliveredBatch": reads,
        "dynamodbRequestsByOperation": ddb_counts})
}

// --------------------------------------------------------------- output

fn chart(rows: &[Value]) -> String {
    let (w, h, left, bottom) = (760.0, 360.0, 70.0, 60.0);
    let bar_w = 20.0;
    let sizes: Vec<u64> = {
        let mut v: Vec<u64> = rows
            .iter()
            .map(|r| r["records"].as_u64().unwrap())
            .collect();
        v.dedup();
        v
    };
    let wall = |n: u64, h: &str| {
        rows.iter()
            .find(|r| r["records"] == n && r["handler"] == h)
            .map(|r| {
                (
                    r["wallMs"].as_f64().unwrap(),
                    r["idealMs"].as_f64().unwrap(),
                )
            })
            .unwrap()
    };
    let max = rows
        .iter()
        .map(|r| {
            r["wallMs"]
                .as_f64()
                .unwrap()
                .max(r["idealMs"].as_f64().unwrap())
        })
        .fold(0.0, f64::max);
    let scale = |v: f64| ((v.max(1.0)).log10() / max.log10()) * (h - bottom - 30.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">Batch wall time: ideal ⌈N/{CONCURRENCY}⌉ × {LATENCY_MS} ms, the floor handler, retryq (same run, log scale)</text>\n",
        w / 2.0
    );
    let colors = [
        ("ideal", "#c9d6e3"),
        ("floor", "#9bb7d4"),
        ("retryq", "#1f5f99"),
    ];
    for (i, n) in sizes.iter().enumerate() {
        let x = left + i as f64 * ((w - left - 20.0) / sizes.len() as f64);
        let (floor, ideal) = wall(*n, "floor");
        let (retryq, _) = wall(*n, "retryq");
        for (j, ((key, color), v)) in colors.iter().zip([ideal, floor, retryq]).enumerate() {
            let bh = scale(v);
            svg.push_str(&format!(
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{bar_w}\" height=\"{bh:.1}\" fill=\"{color}\"><title>{key}: {v:.1} ms</title></rect>\n",
                x + j as f64 * bar_w,
                h - bottom - bh
            ));
        }
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{n} records</text><text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">retryq/floor ×{:.2}</text>\n",
            x + 1.5 * bar_w,
            h - bottom + 16.0,
            x + 1.5 * bar_w,
            h - bottom + 32.0,
            retryq / floor
        ));
    }
    for (k, (key, color)) in colors.iter().enumerate() {
        let x = left + k as f64 * 90.0;
        svg.push_str(&format!(
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{key}</text>\n",
            h - 18.0,
            x + 16.0,
            h - 8.0
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

/// The cost model's prices (USD, us-east-1, arm64), as published.
/// Lambda's logs in CloudWatch Logs (Standard class) are vended logs,
/// priced by the account's monthly volume: up to each bound (TB), the
/// price per GB.
const LOG_TIERS: [(f64, f64); 4] = [
    (10.0, 0.50),
    (30.0, 0.25),
    (50.0, 0.10),
    (f64::INFINITY, 0.05),
];
/// Monthly delivery volumes at which the log price is shown.
const MONTHLY_DELIVERIES: [f64; 3] = [1e8, 1e10, 1e12];
const PRICE_SQS_MILLION: f64 = 0.40;
const PRICE_LAMBDA_GB_S: f64 = 0.000_013_333_4;
const PRICE_LAMBDA_MILLION: f64 = 0.20;
/// CloudWatch Logs counts 26 bytes per log event on top of its text.
const LOG_EVENT_OVERHEAD: f64 = 26.0;
/// Lambda's own START, END and REPORT lines per invocation, bytes.
const PLATFORM_LOG_BYTES: f64 = 3.0 * (120.0 + LOG_EVENT_OVERHEAD);

/// S3 Standard, per million requests: `PutObject`, `GetObject`.
const PRICE_S3_PUT_MILLION: f64 = 5.0;
const PRICE_S3_GET_MILLION: f64 = 0.40;
/// SQS bills each 64 KiB chunk of a request's payload as one request.
const SQS_CHUNK: f64 = 64.0 * 1024.0;
/// Message sizes of the inline-or-offloaded comparison, KiB.
const MESSAGE_KIB: [f64; 6] = [1.0, 64.0, 256.0, 512.0, 768.0, 1016.0];

/// SQS (and S3) cost per million messages of each size, sent inline or
/// offloaded to S3 behind a pointer: one `SendMessage` and the receive
/// (each billed per 64 KiB chunk), and the delete, whose per-record share
/// `sqs_per_record` measured (receive and delete of a batch); an offloaded
/// message adds an S3 `PutObject` and `GetObject`.
fn chunk_billing(sqs_per_record: f64) -> Vec<Value> {
    let chunks = |bytes: f64| (bytes / SQS_CHUNK).ceil().max(1.0);
    MESSAGE_KIB
        .iter()
        .map(|&kib| {
            let bytes = kib * 1024.0;
            // Sent alone; received with others, its share of their chunks.
            let inline = chunks(bytes) + (bytes / SQS_CHUNK).max(sqs_per_record / 2.0) + sqs_per_record / 2.0;
            let pointer = 1.0 + sqs_per_record;
            json!({"messageKiB": kib, "sqsRequestsInline": inline, "sqsRequestsOffloaded": pointer,
                "usdPerMillionInline": inline * PRICE_SQS_MILLION,
                "usdPerMillionOffloaded": pointer * PRICE_SQS_MILLION + PRICE_S3_PUT_MILLION + PRICE_S3_GET_MILLION})
        })
        .collect()
}

/// The month's log bill for `gb` GB of Lambda logs (1 TB = 1 000 GB).
fn log_bill(gb: f64) -> f64 {
    let (mut left, mut from, mut usd) = (gb, 0.0, 0.0);
    for (upto_tb, price) in LOG_TIERS {
        let in_tier = left.min(upto_tb * 1000.0 - from);
        usd += in_tier * price;
        left -= in_tier;
        from = upto_tb * 1000.0;
        if left <= 0.0 {
            break;
        }
    }
    usd
}

/// The template's default `MemorySize`, MB.
fn template_memory_mb() -> u32 {
    let template = std::fs::read_to_string(root().join("template.yaml")).unwrap();
    let after = &template[template
        .find("\n  MemorySize:")
        .expect("a MemorySize parameter")..];
    after
        .lines()
        .find_map(|l| l.trim().strip_prefix("Default:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("MemorySize has a numeric Default")
}

/// Whether a target of the table holds.
fn met(t: &Value) -> bool {
    let (m, target) = (
        t["measure"].as_f64().unwrap(),
        t["target"].as_f64().unwrap(),
    );
    if t["kind"] == "least" {
        m >= target
    } else {
        m <= target
    }
}

/// The targets under a 256 MB function's CPU share, at each destination
/// latency: records per second at least 0.9 × the floor's, billed duration
/// per 1 000 records at most 1.1 × the floor's.
fn share_targets(targets: &mut Vec<Value>, rows: &[Value]) {
    if rows.is_empty() {
        return;
    }
    for latency in SHARE_LATENCIES_MS {
        let [(r, f), (rb, fb)] = share::pair(rows, 256, latency);
        targets.push(json!({"metric": format!("records per second, 256 MB CPU share, batches of {}, destination {latency} ms", share::BATCH),
            "retryq": r, "floor": f, "unit": "records/s", "measure": r / f, "target": 0.9, "kind": "least"}));
        targets.push(json!({"metric": format!("billed duration per 1 000 records, 256 MB CPU share, destination {latency} ms"),
            "retryq": rb, "floor": fb, "unit": "ms", "measure": rb / fb, "target": 1.1, "kind": "ratio"}));
    }
}

/// The cost per million deliveries at the template's defaults (batch 100,
/// window 1 s, its memory size, JSON logs): compute from the billed
/// duration under that memory size's CPU share at `LATENCY_MS` (without
/// the share runs, from the unthrottled batch's wall time), logs at the
/// first tier's price and at each monthly volume, SQS and Lambda requests.
fn cost_model(
    batch_row: &Value,
    share_rows: &[Value],
    log_bytes: (f64, f64),
    failures: &Value,
) -> Value {
    let batch = share::BATCH as f64;
    let memory = template_memory_mb();
    let gb = f64::from(memory) / 1024.0;
    let billed_ms_per_record = share_rows
        .iter()
        .find(|r| {
            r["handler"] == "retryq" && r["memoryMb"] == memory && r["latencyMs"] == LATENCY_MS
        })
        .map_or(batch_row["wallMs"].as_f64().unwrap() / batch, |r| {
            r["billedMsPer1000"].as_f64().unwrap() / 1000.0
        });
    let gb_s = billed_ms_per_record / 1000.0 * gb;
    // Everything the function wrote (record lines and EMF), plus
    // CloudWatch's per-event overhead and Lambda's own lines.
    let (written, log_events) = log_bytes;
    let log_per_record = written + log_events * LOG_EVENT_OVERHEAD + PLATFORM_LOG_BYTES / batch;
    let logs_at: BTreeMap<String, f64> = MONTHLY_DELIVERIES
        .iter()
        .map(|&n| {
            let gb = n * log_per_record / 1e9;
            (format!("{n:e} deliveries a month"), log_bill(gb) / n * 1e6)
        })
        .collect();
    let sqs_per_record = 2.0 / batch;
    let usd = json!({
        "logs": log_per_record * 1e6 / 1e9 * LOG_TIERS[0].1,
        "sqs": sqs_per_record * PRICE_SQS_MILLION,
        "lambdaCompute": gb_s * 1e6 * PRICE_LAMBDA_GB_S,
        "lambdaRequests": PRICE_LAMBDA_MILLION / batch,
    });
    let total: f64 = usd
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .sum();
    let choice = (!share_rows.is_empty()).then(|| {
        share::memory_choice(
            share_rows,
            &SHARE_LATENCIES_MS,
            PRICE_LAMBDA_GB_S,
            PRICE_LAMBDA_MILLION,
        )
    });
    json!({
        "batchSize": batch, "memoryMb": memory, "destinationLatencyMs": LATENCY_MS,
        "logBytesPerRecord": log_per_record, "functionOutputBytesPerRecord": written, "logEventsPerRecord": log_events,
        "sqsRequestsPerRecord": sqs_per_record, "invocationsPerRecord": 1.0 / batch, "gbSecondsPerRecord": gb_s,
        "usdPerMillion": usd, "usdPerMillionTotal": total, "logsUsdPerMillionAtMonthlyVolume": logs_at,
        "memoryChoice": choice,
        "sqsChunkBilling": chunk_billing(sqs_per_record),
        "retriesUsdPerMillion": {
            "batched": failures["sqsRequestsPerRetriedRecord"].as_f64().unwrap() * PRICE_SQS_MILLION,
            "unbatched": PRICE_SQS_MILLION,
        },
    })
}

/// Records under auth profiles (an API key and a Standard Webhooks
/// signature, in turn): retryq, whose profiles list their `hosts` and
/// which signs each request once it has its slot, beside another build
/// (`RETRYQ_BENCH_BASELINE`, profiles without `hosts`: an earlier build
/// refuses the field) in the same run. CPU per record, medians.
fn auth_batches(rt: &tokio::runtime::Runtime, dest_port: u16) {
    let profiles = |hosts: bool| {
        let mut p = json!({
            "key": {"type": "header", "name": "x-api-key", "valueEnv": "BENCH_KEY"},
            "hooks": {"type": "standard-webhooks", "secretEnv": "BENCH_HOOK"}});
        if hosts {
            p["key"]["hosts"] = json!(["127.0.0.1"]);
            p["hooks"]["hosts"] = json!(["127.0.0.1"]);
        }
        [
            ("AUTH_PROFILES", p.to_string()),
            ("BENCH_KEY", "k".repeat(32)),
            (
                "BENCH_HOOK",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned(),
            ),
        ]
    };
    let mut functions = vec![
        (
            "retryq",
            Function::spawn(rt, Handler::Retryq, &profiles(true)),
        ),
        (
            "baseline",
            Function::spawn(rt, Handler::Baseline, &profiles(false)),
        ),
    ];
    for (n, runs) in [(100usize, 11), (1000, 7)] {
        let ev = Arc::new(
            serde_json::to_vec(&event_with(n, dest_port, 1024, &["key", "hooks"])).unwrap(),
        );
        let mut cpus: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for _ in 0..runs {
            for (h, f) in &mut functions {
                let inv = f.invoke(rt, &ev);
                assert_eq!(failures_in(&inv.response), 0, "{h}: every record delivered");
                cpus.entry(*h)
                    .or_default()
                    .push(inv.cpu.as_secs_f64() * 1e6 / n as f64);
            }
        }
        let retryq = median(cpus.remove("retryq").unwrap());
        let baseline = median(cpus.remove("baseline").unwrap());
        println!(
            "auth batch {n:>5}: retryq {retryq:.1} µs CPU/record, baseline {baseline:.1} ({:.3} ×)",
            retryq / baseline
        );
    }
}

fn main() {
    // `RETRYQ_BENCH_ONLY=auth` (with `RETRYQ_BENCH_BASELINE`): records under
    // auth profiles, beside the other build.
    if std::env::var("RETRYQ_BENCH_ONLY").as_deref() == Ok("auth") {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dest_port = free_port();
        let _dest = Destination::start(dest_port, LATENCY_MS);
        auth_batches(&rt, dest_port);
        return;
    }
    // `RETRYQ_BENCH_ONLY=rss`: only the 10 000-record batch of each binary,
    // for a profiler to watch (`perf record -a -g -- cargo bench …`).
    // `RETRYQ_BENCH_ONLY=batches`: only the side-by-side batches.
    // `RETRYQ_BENCH_ONLY=cold`: only the cold starts.
    // `RETRYQ_BENCH_ONLY=large`: only the batch of large offloaded bodies.
    if std::env::var("RETRYQ_BENCH_ONLY").as_deref() == Ok("large") {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let upstream = std::env::var("RETRYQ_TEST_SQS_ENDPOINT")
            .expect("RETRYQ_TEST_SQS_ENDPOINT: run under scripts/with-moto.sh");
        println!("{}", large_payloads(&rt, &upstream));
        return;
    }
    // `RETRYQ_BENCH_BASELINE=path`: one more column, another bootstrap.
    if std::env::var("RETRYQ_BENCH_ONLY").as_deref() == Ok("cold") {
        let rt = tokio::runtime::Runtime::new().unwrap();
        println!("cold start, median ms: {:?}", cold_start(&rt));
        let dest_port = free_port();
        let _dest = Destination::start(dest_port, LATENCY_MS);
        let dlq = "http://127.0.0.1:9/123456789012/bench-dlq";
        for (name, (wall, cpu)) in cold_first_invocation(&rt, dest_port, dlq) {
            println!("{name}: spawn → end of first invocation {wall:.1} ms, its CPU {cpu:.1} ms (medians)");
        }
        return;
    }
    // `RETRYQ_BENCH_ONLY=cpu`: CPU per record only, 1 000 records to a
    // destination answering at once, retryq and the floor in turn.
    if std::env::var("RETRYQ_BENCH_ONLY").as_deref() == Ok("cpu") {
        let rt = tokio::runtime::Runtime::new().unwrap();
        cpu_only(&rt);
        return;
    }
    // `RETRYQ_BENCH_ONLY=table`: batches of 100 with `STATE_TABLE`, on one
    // runtime thread and on two, in turn.
    if std::env::var("RETRYQ_BENCH_ONLY").as_deref() == Ok("table") {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let upstream = std::env::var("RETRYQ_TEST_SQS_ENDPOINT")
            .expect("RETRYQ_TEST_SQS_ENDPOINT: run under scripts/with-moto.sh");
        let table = state_table(&rt, &upstream);
        let proxy = rt.block_on(sqs_proxy::SqsProxy::start(upstream, None));
        let port = free_port();
        let _dest = Destination::start(port, LATENCY_MS);
        let ev = Arc::new(serde_json::to_vec(&event(100, port, 1024)).unwrap());
        for memory in ["256", "3538", "256", "3538"] {
            let env = [
                ("STATE_TABLE", table.clone()),
                ("AWS_ENDPOINT_URL", proxy.endpoint.clone()),
                ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", memory.to_owned()),
            ];
            let mut f = Function::spawn(&rt, Handler::Retryq, &env);
            let (mut walls, mut cpus) = (Vec::new(), Vec::new());
            for _ in 0..8 {
                let inv = f.invoke(&rt, &ev);
                walls.push(inv.wall.as_secs_f64() * 1000.0);
                cpus.push(inv.cpu.as_secs_f64() * 1e4);
            }
            println!("STATE_TABLE, {memory} MB: walls {walls:.0?} ms, CPU µs/record {cpus:.0?}, DynamoDB requests so far {}", dynamodb_requests(&proxy));
        }
        return;
    }
    // `RETRYQ_BENCH_ONLY=share`: only the batches under Lambda's CPU share.
    if std::env::var("RETRYQ_BENCH_ONLY").as_deref() == Ok("share") {
        let rt = tokio::runtime::Runtime::new().unwrap();
        share::under_cpu_share(&rt, &SHARE_LATENCIES_MS, &share::sizes_mb());
        return;
    }
    if std::env::var("RETRYQ_BENCH_ONLY").as_deref() == Ok("batches") {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dest_port = free_port();
        let _dest = Destination::start(dest_port, LATENCY_MS);
        batches(&rt, dest_port, None);
        return;
    }
    if std::env::var("RETRYQ_BENCH_ONLY").as_deref() == Ok("rss") {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (rss, log, escapes) = peak_rss(&rt);
        println!("peak RSS {rss:?}, log bytes and lines per record {log:?}, escapes {escapes}");
        return;
    }
    let mut criterion = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let core = core(&mut criterion);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let cold = cold_start(&rt);
    let Ok(upstream) = std::env::var("RETRYQ_TEST_SQS_ENDPOINT") else {
        panic!("RETRYQ_TEST_SQS_ENDPOINT is not set: run `make bench`, which starts the local SQS and DynamoDB server");
    };
    let table = state_table(&rt, &upstream);
    let proxy = rt.block_on(sqs_proxy::SqsProxy::start(upstream.clone(), None));
    let dest_port = free_port();
    let rows = {
        let _dest = Destination::start(dest_port, LATENCY_MS);
        batches(&rt, dest_port, Some((&table, &proxy)))
    };
    let table_requests_delivered = ledger_requests(&proxy);
    let (rss, log_bytes, escapes) = peak_rss(&rt);
    let large_rss = large_payloads(&rt, &upstream);
    println!("{large_rss}");
    let failures = failure_heavy(&rt, &table);
    let first = {
        let port = free_port();
        let _dest = Destination::start(port, LATENCY_MS);
        cold_first_invocation(&rt, port, "http://127.0.0.1:9/123456789012/bench-dlq")
    };
    // `RETRYQ_BENCH_SHARE=skip` where no CPU cgroup can be made (the bench
    // otherwise stops and says why).
    let share_rows = if std::env::var("RETRYQ_BENCH_SHARE").as_deref() == Ok("skip") {
        eprintln!("RETRYQ_BENCH_SHARE=skip: the runs under Lambda's CPU share are left out");
        Vec::new()
    } else {
        share::under_cpu_share(&rt, &SHARE_LATENCIES_MS, &share::MEMORY_SIZES_MB)
    };
    // The size of a stripped copy (the release profile keeps symbols).
    let size_mib = |h: Handler| {
        let copy =
            std::env::temp_dir().join(format!("retryq-bench-{}-{}", h.name(), std::process::id()));
        let binary = h.binary();
        let status = Command::new("strip")
            .arg("-o")
            .arg(&copy)
            .arg(binary)
            .status()
            .expect("strip (binutils) is installed");
        assert!(status.success());
        let size = std::fs::metadata(&copy).unwrap().len() as f64 / 1024.0 / 1024.0;
        let _ = std::fs::remove_file(&copy);
        size
    };

    let row = |h: &str, n: u64| {
        rows.iter()
            .find(|r| r["records"] == n && r["handler"] == h)
            .unwrap()
            .clone()
    };
    let pair = |n: u64, key: &str| {
        (
            row("retryq", n)[key].as_f64().unwrap(),
            row("floor", n)[key].as_f64().unwrap(),
        )
    };
    // (metric, retryq, floor, unit, limit, how the limit applies)
    let mut targets = Vec::new();
    let mut ratio = |metric: &str, (r, f): (f64, f64), unit: &str, limit: f64| {
        targets.push(json!({"metric": metric, "retryq": r, "floor": f, "unit": unit, "measure": r / f, "target": limit, "kind": "ratio"}))
    };
    ratio(
        "cold start, spawn → first /next (median)",
        (cold["retryq"], cold["floor"]),
        "ms",
        1.5,
    );
    ratio(
        "CPU of the first invocation after a cold start (median)",
        (first["retryq"].1, first["floor"].1),
        "ms",
        1.5,
    );
    ratio(
        "CPU per record, 1 000-record batch",
        pair(1000, "cpuUsPerRecord"),
        "µs",
        1.15,
    );
    ratio(
        "CPU per record, 10 000-record batch",
        pair(10_000, "cpuUsPerRecord"),
        "µs",
        1.15,
    );
    ratio(
        "peak RSS, 10 000 × 1 KiB batch",
        (rss["retryq"], rss["floor"]),
        "MiB",
        1.15,
    );
    // STATE_TABLE against retryq without it (the baseline of this ratio).
    let with_table = |n: u64| {
        (
            row("retryq-table", n)["cpuUsPerRecord"].as_f64().unwrap(),
            row("retryq", n)["cpuUsPerRecord"].as_f64().unwrap(),
        )
    };
    ratio(
        "CPU per record with STATE_TABLE, 1 000 delivered (floor = retryq without)",
        with_table(1000),
        "µs",
        1.05,
    );
    ratio(
        "CPU per record with STATE_TABLE, 10 000 delivered (floor = retryq without)",
        with_table(10_000),
        "µs",
        1.05,
    );
    let mut plus = |metric: &str, (r, f): (f64, f64), unit: &str, limit: f64| {
        targets.push(json!({"metric": metric, "retryq": r, "floor": f, "unit": unit, "measure": r - f, "target": limit, "kind": "difference"}))
    };
    plus(
        "wall / ideal, 1 000 records",
        pair(1000, "ratio"),
        "×",
        0.03,
    );
    plus(
        "wall / ideal, 10 000 records",
        pair(10_000, "ratio"),
        "×",
        0.03,
    );
    plus(
        "batch of 10 at 50 ms (median)",
        pair(10, "wallMs"),
        "ms",
        1.0,
    );
    plus(
        "spawn → end of first invocation, batch of 10 at 50 ms, DLQ_URL set (median)",
        (first["retryq"].0, first["floor"].0),
        "ms",
        2.0,
    );
    share_targets(&mut targets, &share_rows);
    let mut absolute = |metric: &str, v: f64, unit: &str, limit: f64| {
        targets.push(json!({"metric": metric, "retryq": v, "floor": null, "unit": unit, "measure": v, "target": limit, "kind": "absolute"}))
    };
    absolute(
        "stripped bootstrap size",
        size_mib(Handler::Retryq),
        "MiB",
        12.0,
    );
    absolute(
        "SQS requests per retried record (10 000, half 503)",
        failures["sqsRequestsPerRetriedRecord"].as_f64().unwrap(),
        "requests",
        0.12,
    );
    absolute(
        "DynamoDB requests per failed record (STATE_TABLE, 10 000, half 503)",
        failures["stateTable"]["dynamodbRequestsPerFailedRecord"]
            .as_f64()
            .unwrap(),
        "requests",
        0.3,
    );
    // The ledger only: a process with a table also reads the pause list,
    // whenever its copy is more than a second old.
    absolute(
        "DynamoDB ledger requests, all-delivered batches (LEDGER=failures)",
        table_requests_delivered as f64
            + failures["stateTable"]["ledgerRequestsAllDeliveredBatch"]
                .as_f64()
                .unwrap(),
        "requests",
        0.0,
    );
    absolute(
        "pause-list reads per second after the first, all-delivered batch of 10 000 (STATE_TABLE)",
        failures["stateTable"]["pauseReadsPerSecondAllDeliveredBatch"]
            .as_f64()
            .unwrap(),
        "reads/s",
        1.0,
    );
    absolute(
        "failure-heavy wall / all-delivered wall",
        failures["wallRatio"].as_f64().unwrap(),
        "×",
        1.1,
    );
    absolute(
        "ANSI escape bytes in the function's output",
        escapes as f64,
        "bytes",
        0.0,
    );

    let cost = cost_model(&row("retryq", 100), &share_rows, log_bytes, &failures);
    let total = cost["usdPerMillionTotal"].as_f64().unwrap();
    let memory_choice = cost["memoryChoice"].clone();
    let (log_per_record, sqs_per_record, gb_s, batch) = (
        cost["logBytesPerRecord"].as_f64().unwrap(),
        cost["sqsRequestsPerRecord"].as_f64().unwrap(),
        cost["gbSecondsPerRecord"].as_f64().unwrap(),
        cost["batchSize"].as_f64().unwrap(),
    );
    let log_bytes = cost["functionOutputBytesPerRecord"].as_f64().unwrap();

    let results = json!({
        "machine": {"cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "coreMicrosPerCall": core,
        "batches": rows,
        "coldStartMs": cold,
        "peakRssMiB": rss,
        "largePayloads": {"records": LARGE_RECORDS, "bodyMiB": LARGE_BODY_MIB, "memoryBudgetMiB": LARGE_MEMORY_BYTES >> 20, "peakRssMiB": large_rss.large, "inline1KiBPeakRssMiB": large_rss.small},
        "binaryMiB": {"retryq": size_mib(Handler::Retryq), "floor": size_mib(Handler::Floor)},
        "failureHeavy": failures,
        "costPerMillion": cost,
        "costPerMillionTotal": total,
        "cpuShare": share_rows,
        "memoryChoice": memory_choice,
        "firstInvocation": first.iter().map(|(k, (wall, cpu))| (k.to_string(), json!({"wallMs": wall, "cpuMs": cpu}))).collect::<BTreeMap<_, _>>(),
        "targets": targets,
    });
    let dir = root().join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&results).unwrap() + "\n",
    )
    .unwrap();
    std::fs::write(dir.join("chart.svg"), chart(&rows)).unwrap();

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "\n| metric | retryq | floor (same run) | measured | target | |\n|---|---|---|---|---|---|"
    )
    .unwrap();
    for t in &targets {
        let (m, target) = (
            t["measure"].as_f64().unwrap(),
            t["target"].as_f64().unwrap(),
        );
        let unit = t["unit"].as_str().unwrap();
        let floor = t["floor"]
            .as_f64()
            .map_or("—".into(), |f| format!("{f:.2} {unit}"));
        let (measured, wanted) = match t["kind"].as_str().unwrap() {
            "ratio" => (format!("{m:.2} × floor"), format!("≤ {target} × floor")),
            "least" => (format!("{m:.2} × floor"), format!("≥ {target} × floor")),
            "difference" => (
                format!("floor + {m:.2} {unit}"),
                format!("≤ floor + {target} {unit}"),
            ),
            _ => (format!("{m:.3} {unit}"), format!("≤ {target} {unit}")),
        };
        writeln!(
            out,
            "| {} | {:.2} {unit} | {floor} | {measured} | {wanted} | {} |",
            t["metric"].as_str().unwrap(),
            t["retryq"].as_f64().unwrap(),
            if met(t) { "met" } else { "missed" }
        )
        .unwrap();
    }
    writeln!(out, "\n| records | handler | wall ms | ideal ms | wall/ideal | CPU µs/record |\n|---|---|---|---|---|---|").unwrap();
    for r in &rows {
        writeln!(
            out,
            "| {} | {} | {:.1} | {:.0} | {:.3} | {:.1} |",
            r["records"],
            r["handler"].as_str().unwrap(),
            r["wallMs"].as_f64().unwrap(),
            r["idealMs"].as_f64().unwrap(),
            r["ratio"].as_f64().unwrap(),
            r["cpuUsPerRecord"].as_f64().unwrap()
        )
        .unwrap();
    }
    if !share_rows.is_empty() {
        writeln!(out, "\n| memory MB | destination ms | handler | records/s | billed ms per 1 000 records | CPU µs/record |\n|---|---|---|---|---|---|").unwrap();
        for r in &share_rows {
            writeln!(
                out,
                "| {} | {} | {} | {:.0} | {:.1} | {:.1} |",
                r["memoryMb"],
                r["latencyMs"],
                r["handler"].as_str().unwrap(),
                r["recordsPerSecond"].as_f64().unwrap(),
                r["billedMsPer1000"].as_f64().unwrap(),
                r["cpuUsPerRecord"].as_f64().unwrap()
            )
            .unwrap();
        }
    }
    writeln!(
        out,
        "\ncost per million deliveries at the template's defaults: {total:.4} USD {}",
        serde_json::to_string(&cost["usdPerMillion"]).unwrap()
    )
    .unwrap();
    writeln!(
        out,
        "logs per million deliveries by monthly volume (tiered price): {}",
        serde_json::to_string(&cost["logsUsdPerMillionAtMonthlyVolume"]).unwrap()
    )
    .unwrap();
    writeln!(
        out,
        "SQS and S3 per million messages by size, inline or offloaded (64 KiB chunks): {}",
        serde_json::to_string(&cost["sqsChunkBilling"]).unwrap()
    )
    .unwrap();
    if !memory_choice.is_null() {
        writeln!(
            out,
            "Lambda compute + requests per million deliveries by memory size: {}\ncheapest: {} MB; the template's default: {} MB",
            serde_json::to_string(&memory_choice["sizes"]).unwrap(),
            memory_choice["cheapestMemoryMb"],
            cost["memoryMb"]
        )
        .unwrap();
    }
    writeln!(out, "per record: {:.1} bytes of log ({log_bytes:.1} written by the function), {:.3} SQS requests, {:.3} invocations, {:.2e} GB-s",
        log_per_record, sqs_per_record, 1.0 / batch, gb_s).unwrap();
    writeln!(
        out,
        "retried records: {:.3} SQS requests each (1 without batching)",
        failures["sqsRequestsPerRetriedRecord"].as_f64().unwrap()
    )
    .unwrap();
    writeln!(
        out,
        "\ndecision core (median µs per call): {}",
        serde_json::to_string(&results["coreMicrosPerCall"]).unwrap()
    )
    .unwrap();
    writeln!(out, "wrote bench/results.json and bench/chart.svg").unwrap();
}
