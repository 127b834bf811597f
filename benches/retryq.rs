//! `make bench`: what retryq costs beyond the destination's own latency.
//!
//! 1. The decision core per record (criterion): parse + validate, classify,
//!    decide, and all of them with the request headers as one record's plan.
//! 2. Batch efficiency: the real Lambda handler, in this process, against
//!    the demo destination in another process with a fixed latency L: wall
//!    time against the ideal ⌈N / MAX_CONCURRENCY⌉ × L, and this process's
//!    CPU time per record.
//! 3. Cold start: the release `retryq-processor` started against a minimal
//!    Lambda Runtime API (below), until its first `/next`; median of runs.
//!    And the stripped binary's size.
//! 4. Peak memory (VmHWM) of that binary handling one 10 000 × 1 KiB batch.
//!
//! Writes the table to stdout, `bench/results.json` and `bench/chart.svg`.
//! Needs `cargo build --release --bin retryq-processor --example
//! demo_destination` first (the Makefile does it).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use criterion::Criterion;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const LATENCY_MS: u64 = 50;

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

fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
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

fn event(n: usize, dest_port: u16, size: usize) -> Value {
    let records: Vec<Value> = (0..n)
        .map(|i| {
            json!({"messageId": format!("00000000-0000-4000-8000-{i:012}"), "receiptHandle": format!("rh-{i}"),
                "body": body(i, &format!("http://127.0.0.1:{dest_port}/ok/{i}"), size),
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1795867200000"},
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
    let settings = Settings {
        retry: &policy,
        has_profile: &|_| false,
    };
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

// ------------------------------------------------------ 2. batch efficiency

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

fn batch_efficiency() -> Vec<Value> {
    let port = free_port();
    let _dest = Destination::start(port, LATENCY_MS);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for concurrency in [64usize, 256] {
        let vars = [
            ("ALLOW_PRIVATE_DESTINATIONS", "true".to_owned()),
            ("MAX_CONCURRENCY", concurrency.to_string()),
            ("AWS_LAMBDA_FUNCTION_NAME", "bench".to_owned()),
        ];
        let config = retryq::config::Config::from_lookup(|k| {
            vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        })
        .unwrap();
        let sqs_config = aws_sdk_sqs::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:1")
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "x", "x", None, None, "bench",
            ))
            .build();
        // EMF lines would go to this bench's stdout; the release-binary run
        // below keeps them on.
        let mut config = config;
        config.metrics.enabled = false;
        let processor = Arc::new(
            retryq::process::Processor::new(
                config,
                aws_sdk_sqs::Client::from_conf(sqs_config),
                None,
            )
            .unwrap(),
        );
        for n in [10usize, 1000, 10_000] {
            let runs = if n == 10 {
                21
            } else if n == 1000 {
                3
            } else {
                1
            };
            // Warm the connection pool as a warm Lambda would be.
            let warm: aws_lambda_events::event::sqs::SqsEvent =
                serde_json::from_value(event(concurrency, port, 1024)).unwrap();
            rt.block_on(retryq::lambda::handle(
                Arc::clone(&processor),
                lambda_runtime::LambdaEvent::new(warm, Default::default()),
            ))
            .unwrap();
            let (mut walls, mut cpus) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                let ev: aws_lambda_events::event::sqs::SqsEvent =
                    serde_json::from_value(event(n, port, 1024)).unwrap();
                let (cpu0, t0) = (cpu_time(), Instant::now());
                let answer = rt
                    .block_on(retryq::lambda::handle(
                        Arc::clone(&processor),
                        lambda_runtime::LambdaEvent::new(ev, Default::default()),
                    ))
                    .unwrap();
                let (wall, cpu) = (t0.elapsed(), cpu_time() - cpu0);
                assert!(
                    answer.batch_item_failures.is_empty(),
                    "every record delivered"
                );
                walls.push(wall.as_secs_f64() * 1000.0);
                cpus.push(cpu.as_secs_f64() * 1e6 / n as f64);
            }
            let ideal = n.div_ceil(concurrency) as f64 * LATENCY_MS as f64;
            let wall = median(walls);
            rows.push(json!({"records": n, "maxConcurrency": concurrency, "latencyMs": LATENCY_MS,
                "wallMs": wall, "idealMs": ideal, "ratio": wall / ideal, "cpuUsPerRecord": median(cpus), "runs": runs}));
            eprintln!("batch {n:>5} @ {concurrency:>3}: {wall:8.1} ms (ideal {ideal:.0} ms)");
        }
    }
    rows
}

// ------------------------------------------- 3 & 4. a minimal Runtime API

/// Serves `/next` once with `event` (if any), records when the first
/// `/next` arrived and when the response came back.
async fn runtime_api(
    listener: tokio::net::TcpListener,
    event: Option<Arc<Vec<u8>>>,
    first_next: tokio::sync::mpsc::Sender<(Instant, &'static str)>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let event = event.clone();
        let tx = first_next.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut reader = BufReader::new(read);
            let mut served = false;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let mut length = 0usize;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; length];
                let _ = reader.read_exact(&mut body).await;
                if line.contains("/invocation/next") {
                    let _ = tx.send((Instant::now(), "next")).await;
                    let Some(event) = event.as_ref().filter(|_| !served) else {
                        // No (more) events: hold the request, as Lambda does.
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    };
                    served = true;
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
                    let _ = write.write_all(head.as_bytes()).await;
                    let _ = write.write_all(event).await;
                } else {
                    if line.contains("/response") {
                        let _ = tx.send((Instant::now(), "response")).await;
                    }
                    let _ = write
                        .write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
                        .await;
                }
            }
        });
    }
}

fn spawn_function(api_port: u16) -> Child {
    Command::new(release("retryq-processor"))
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", format!("127.0.0.1:{api_port}"))
        .env("AWS_LAMBDA_FUNCTION_NAME", "bench")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "x")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
        .env("ALLOW_PRIVATE_DESTINATIONS", "true")
        .env("MAX_CONCURRENCY", "256")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn cold_start(rt: &tokio::runtime::Runtime) -> (f64, Vec<f64>) {
    let mut times = Vec::new();
    for _ in 0..25 {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let server = rt.spawn(runtime_api(listener, None, tx));
        let start = Instant::now();
        let mut child = spawn_function(port);
        let (at, _) = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), rx.recv()).await })
            .unwrap()
            .unwrap();
        times.push((at - start).as_secs_f64() * 1000.0);
        let _ = child.kill();
        let _ = child.wait();
        server.abort();
    }
    (median(times.clone()), times)
}

fn peak_rss(rt: &tokio::runtime::Runtime) -> (f64, f64) {
    let dest_port = free_port();
    let _dest = Destination::start(dest_port, 1);
    let event = Arc::new(serde_json::to_vec(&event(10_000, dest_port, 1024)).unwrap());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let server = rt.spawn(runtime_api(listener, Some(event), tx));
    let mut child = spawn_function(port);
    let (served_at, responded_at) = rt.block_on(async {
        let mut served = None;
        loop {
            let (at, what) = tokio::time::timeout(Duration::from_secs(120), rx.recv())
                .await
                .unwrap()
                .unwrap();
            match what {
                "next" if served.is_none() => served = Some(at),
                "response" => return (served.unwrap(), at),
                _ => {}
            }
        }
    });
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let hwm_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    server.abort();
    (
        hwm_kb / 1024.0,
        (responded_at - served_at).as_secs_f64() * 1000.0,
    )
}

// --------------------------------------------------------------- output

fn chart(rows: &[Value]) -> String {
    let (w, h, left, bottom) = (760.0, 360.0, 70.0, 60.0);
    let bar_w = 22.0;
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
         <text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">Batch wall time vs the ideal ⌈N/concurrency⌉ × {LATENCY_MS} ms (log scale)</text>\n",
        w / 2.0
    );
    for (i, r) in rows.iter().enumerate() {
        let x = left + i as f64 * ((w - left - 20.0) / rows.len() as f64);
        for (j, (key, color)) in [("idealMs", "#9bb7d4"), ("wallMs", "#1f5f99")]
            .iter()
            .enumerate()
        {
            let v = r[key].as_f64().unwrap();
            let bh = scale(v);
            svg.push_str(&format!(
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{bar_w}\" height=\"{bh:.1}\" fill=\"{color}\"><title>{key}: {v:.1} ms</title></rect>\n",
                x + j as f64 * bar_w,
                h - bottom - bh
            ));
        }
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text><text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">c={} ×{:.2}</text>\n",
            x + bar_w,
            h - bottom + 16.0,
            r["records"],
            x + bar_w,
            h - bottom + 32.0,
            r["maxConcurrency"],
            r["ratio"].as_f64().unwrap()
        ));
    }
    svg.push_str(&format!(
        "<rect x=\"{left}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"#9bb7d4\"/><text x=\"{}\" y=\"{}\">ideal</text>\
         <rect x=\"{}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"#1f5f99\"/><text x=\"{}\" y=\"{}\">measured</text>\n</svg>\n",
        h - 18.0, left + 16.0, h - 8.0, left + 70.0, h - 18.0, left + 86.0, h - 8.0
    ));
    svg
}

fn main() {
    let mut criterion = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let core = core(&mut criterion);

    // Logging as in Lambda (JSON formatting included), to nowhere.
    lambda_runtime::tracing::init_default_subscriber_with_writer(std::io::sink);
    let batches = batch_efficiency();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (cold_median, cold_all) = cold_start(&rt);
    let (rss_mib, big_batch_ms) = peak_rss(&rt);
    let binary = release("retryq-processor");
    let size_mib = std::fs::metadata(&binary).unwrap().len() as f64 / 1024.0 / 1024.0;

    let row = |n: u64, c: u64| {
        batches
            .iter()
            .find(|r| r["records"] == n && r["maxConcurrency"] == c)
            .unwrap()
            .clone()
    };
    let targets = json!([
        {"metric": "cold start to first /next (median)", "value": cold_median, "unit": "ms", "target": 10.0},
        {"metric": "CPU per record, 1 000-record batch (c=64)", "value": row(1000, 64)["cpuUsPerRecord"], "unit": "µs", "target": 80.0},
        {"metric": "wall / ideal, 10 000 records (c=64)", "value": row(10_000, 64)["ratio"], "unit": "×", "target": 1.15},
        {"metric": "wall / ideal, 1 000 records (c=64)", "value": row(1000, 64)["ratio"], "unit": "×", "target": 1.25},
        {"metric": "batch of 10 at 50 ms (median)", "value": row(10, 64)["wallMs"], "unit": "ms", "target": 53.0},
        {"metric": "peak RSS, 10 000 × 1 KiB batch", "value": rss_mib, "unit": "MiB", "target": 64.0},
        {"metric": "stripped bootstrap size", "value": size_mib, "unit": "MiB", "target": 8.0},
    ]);
    let results = json!({
        "machine": {"cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "coreMicrosPerCall": core,
        "batches": batches,
        "coldStartMs": {"median": cold_median, "runs": cold_all},
        "peakRssMiB": rss_mib,
        "tenThousandBatchMs": big_batch_ms,
        "binaryMiB": size_mib,
        "targets": targets,
    });
    let dir = root().join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&results).unwrap() + "\n",
    )
    .unwrap();
    std::fs::write(dir.join("chart.svg"), chart(&batches)).unwrap();

    let mut out = std::io::stdout().lock();
    writeln!(out, "\n| metric | measured | target | |\n|---|---|---|---|").unwrap();
    for t in targets.as_array().unwrap() {
        let (v, target) = (t["value"].as_f64().unwrap(), t["target"].as_f64().unwrap());
        writeln!(
            out,
            "| {} | {v:.2} {} | ≤ {target} {} | {} |",
            t["metric"].as_str().unwrap(),
            t["unit"].as_str().unwrap(),
            t["unit"].as_str().unwrap(),
            if v <= target { "met" } else { "missed" }
        )
        .unwrap();
    }
    writeln!(out, "\n| records | MAX_CONCURRENCY | wall ms | ideal ms | ratio | CPU µs/record |\n|---|---|---|---|---|---|").unwrap();
    for r in &batches {
        writeln!(
            out,
            "| {} | {} | {:.1} | {:.0} | {:.3} | {:.1} |",
            r["records"],
            r["maxConcurrency"],
            r["wallMs"].as_f64().unwrap(),
            r["idealMs"].as_f64().unwrap(),
            r["ratio"].as_f64().unwrap(),
            r["cpuUsPerRecord"].as_f64().unwrap()
        )
        .unwrap();
    }
    writeln!(
        out,
        "\ndecision core (median µs per call): {}",
        serde_json::to_string(&results["coreMicrosPerCall"]).unwrap()
    )
    .unwrap();
    writeln!(out, "10 000 × 1 KiB batch in the release binary: {big_batch_ms:.0} ms, peak RSS {rss_mib:.1} MiB").unwrap();
    writeln!(out, "wrote bench/results.json and bench/chart.svg").unwrap();
}
