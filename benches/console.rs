//! `make bench`'s console part, in two steps.
//!
//! 1. **Rendering at 10,000 letters**, in this process: 10,000 dead
//!    letters summarised as a read would, then the first page, a filtered
//!    page and page 100 rendered (medians of 20).
//! 2. **End to end on the local SQS server** with `RETRYQ_BENCH_LETTERS`
//!    (default 1,000) letters: `retryq console` spawned on them; spawn → the
//!    first page that lists 50 letters, spawn → the read finished, a page's
//!    latency over HTTP once read, the console's peak RSS; beside the
//!    baseline of the same run, `retryq dlq list` reading the same DLQ, and
//!    the server's own time per receive. (moto's receive takes time in
//!    proportion to the queue's length, about 7 s at 10,000 messages, so
//!    10,000 end to end measures moto, not the console.)
//!
//! Figures: stdout, and `bench/console.json`. Runs under
//! scripts/with-moto.sh.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(run());
}

fn retryq() -> std::path::PathBuf {
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    std::path::Path::new(&dir).join("release/retryq")
}

async fn sqs() -> aws_sdk_sqs::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    aws_sdk_sqs::Client::new(&config)
}

fn attr(v: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(v)
        .build()
        .unwrap()
}

const REASONS: [&str; 3] = ["attempts-exhausted", "non-retryable", "expired"];

/// Letter `i`: a Retry Message of a 2 KiB body to one of 20 partners.
fn letter_body(i: usize) -> String {
    serde_json::json!({
        "id": format!("order-{i}"),
        "destinationUrl": format!("https://partner-{}.example.com/v1/orders", i % 20),
        "request": {"method": "POST", "headers": {"content-type": "application/json",
                    "authorization": "Bearer not-shown"},
                    "body": "x".repeat(2048)},
    })
    .to_string()
}

/// 10,000 letters as a receive gives them, rendered in this process.
fn render_at_ten_thousand(figures: &mut serde_json::Map<String, serde_json::Value>) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let messages: Vec<aws_sdk_sqs::types::Message> = (0..10_000)
        .map(|i| {
            aws_sdk_sqs::types::Message::builder()
                .message_id(format!("m-{i}"))
                .body(letter_body(i))
                .attributes(
                    aws_sdk_sqs::types::MessageSystemAttributeName::SentTimestamp,
                    (now_ms - i as u128 * 1000).to_string(),
                )
                .message_attributes("FailureReason", attr(REASONS[i % 3]))
                .message_attributes("LastStatusCode", attr("503"))
                .message_attributes("AttemptCount", attr("8"))
                .message_attributes("LastError", attr("HTTP 503"))
                .build()
        })
        .collect();
    let queries = ["", "reason=expired&host=partner-3.example.com", "page=100"];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); queries.len()];
    let mut summarise = Vec::new();
    for _ in 0..20 {
        let (took, pages) = retryq::console::render_over(&messages, &queries);
        summarise.push(took.as_secs_f64() * 1000.0);
        for (i, (html, took)) in pages.into_iter().enumerate() {
            assert!(html.contains("order-"), "a page lists letters");
            times[i].push(took.as_secs_f64() * 1000.0);
        }
    }
    let summarise = median(summarise);
    println!("console: 10000 letters summarised in {summarise:.1} ms (median of 20)");
    figures.insert("renderAt10000SummariseMs".into(), summarise.into());
    for (label, t) in ["firstPage", "filtered", "page100"].iter().zip(times) {
        let m = median(t);
        println!("console: 10000 letters, {label} rendered in {m:.2} ms (median of 20)");
        figures.insert(format!("renderAt10000{label}Ms"), m.into());
    }
}

async fn seed(sqs: &aws_sdk_sqs::Client, url: &str, letters: usize) {
    for chunk in 0..letters.div_ceil(10) {
        let mut entries = Vec::new();
        for i in chunk * 10..letters.min(chunk * 10 + 10) {
            let body = letter_body(i);
            let entry = SendMessageBatchRequestEntry::builder()
                .id(format!("m{i}"))
                .message_body(body)
                .message_attributes("FailureReason", attr(REASONS[i % 3]))
                .message_attributes("LastStatusCode", attr("503"))
                .message_attributes("AttemptCount", attr("8"))
                .message_attributes("LastError", attr("HTTP 503"))
                .build()
                .unwrap();
            entries.push(entry);
        }
        sqs.send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .unwrap();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn timed_get(http: &reqwest::Client, url: &str) -> (f64, String) {
    let started = Instant::now();
    let page = http.get(url).send().await.unwrap().text().await.unwrap();
    (started.elapsed().as_secs_f64() * 1000.0, page)
}

type Figures = serde_json::Map<String, serde_json::Value>;

async fn run() {
    let letters: usize = std::env::var("RETRYQ_BENCH_LETTERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000);
    let mut figures = Figures::new();
    render_at_ten_thousand(&mut figures);
    let sqs = sqs().await;
    let name = format!("bench-console-dlq-{}", std::process::id());
    let dlq = sqs
        .create_queue()
        .queue_name(&name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let seeding = Instant::now();
    seed(&sqs, &dlq, letters).await;
    println!(
        "console: seeded {letters} dead letters in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );
    server_receive(&sqs, &dlq, &mut figures).await;
    let cli_ms = cli_list(&dlq, letters);
    let first = console_end_to_end(&dlq, letters, &mut figures).await;
    println!(
        "console: baseline `retryq dlq list --max {letters}`: {cli_ms:.0} ms; first page / list = {:.3}",
        first / cli_ms
    );
    figures.insert("letters".into(), letters.into());
    figures.insert("cliListMs".into(), cli_ms.into());
    figures.insert("firstPageOverCliList".into(), (first / cli_ms).into());
    let _ = std::fs::create_dir_all("bench");
    std::fs::write(
        "bench/console.json",
        serde_json::to_string_pretty(&serde_json::Value::Object(figures)).unwrap(),
    )
    .unwrap();
    let _ = sqs.delete_queue().queue_url(&dlq).send().await;
}

/// The server's own time per receive, at this length of queue.
async fn server_receive(sqs: &aws_sdk_sqs::Client, dlq: &str, figures: &mut Figures) {
    let mut receive_ms = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let _ = sqs
            .receive_message()
            .queue_url(dlq)
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .send()
            .await;
        receive_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let receive_ms = median(receive_ms);
    println!("console: the SQS server answers a receive of 10 in {receive_ms:.0} ms (median of 5)");
    figures.insert("serverReceiveMs".into(), receive_ms.into());
}

/// The baseline: `retryq dlq list` reading the same DLQ; its wall time, ms.
fn cli_list(dlq: &str, letters: usize) -> f64 {
    let started = Instant::now();
    let out = Command::new(retryq())
        .args([
            "dlq",
            "list",
            "--dlq-url",
            dlq,
            "--json",
            "--max",
            &letters.to_string(),
        ])
        .stderr(Stdio::null())
        .output()
        .expect("target/release/retryq (make bench builds it)");
    let listed =
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).map_or(0, |v| v.len());
    assert_eq!(listed, letters, "the CLI listed every letter");
    started.elapsed().as_secs_f64() * 1000.0
}

/// `retryq console` spawned on the DLQ: spawn → the first page of 50 (ms,
/// returned), spawn → read, pages once read, peak RSS.
async fn console_end_to_end(dlq: &str, letters: usize, figures: &mut Figures) -> f64 {
    let spawned = Instant::now();
    let mut child = Command::new(retryq())
        .args(["console", "--dlq-url", dlq])
        .env_remove("STATE_TABLE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("target/release/retryq built with --features console");
    let mut first_line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first_line)
        .unwrap();
    let url = first_line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("the console's URL")
        .to_owned();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let at = |path: &str| {
        let (base, token) = url.split_once("/?token=").unwrap();
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{base}{path}{sep}token={token}")
    };
    let (first, first_load, read_ms) = wait_for_read(&http, &at("/"), letters, spawned).await;
    for (label, path) in [
        ("firstPage", "/"),
        ("filtered", "/?reason=expired&host=partner-3.example.com"),
        ("page100", "/?page=100"),
    ] {
        let mut times = Vec::new();
        for _ in 0..20 {
            times.push(timed_get(&http, &at(path)).await.0);
        }
        let worst = times.iter().copied().fold(0.0, f64::max);
        let m = median(times);
        println!("console: {label} page once read: median {m:.1} ms, worst {worst:.1} ms");
        figures.insert(
            label.into(),
            serde_json::json!({"medianMs": m, "worstMs": worst}),
        );
    }
    let rss = peak_rss_mib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "console: {letters} letters: spawn → first page of 50: {first:.0} ms (that page itself {first_load:.1} ms); spawn → read finished: {read_ms:.0} ms; peak RSS {rss:.1} MiB"
    );
    figures.insert("spawnToFirstPageMs".into(), first.into());
    figures.insert("spawnToReadMs".into(), read_ms.into());
    figures.insert("peakRssMiB".into(), rss.into());
    first
}

/// Polls the first page until the read ends: spawn → a page of 50 (and
/// that page's own time), spawn → the read finished, in ms.
async fn wait_for_read(
    http: &reqwest::Client,
    url: &str,
    letters: usize,
    spawned: Instant,
) -> (f64, f64, f64) {
    let mut first = None;
    loop {
        let (ms, page) = timed_get(http, url).await;
        if first.is_none() && page.matches("name=\"id\"").count() >= 50 {
            first = Some((spawned.elapsed().as_secs_f64() * 1000.0, ms));
        }
        if page.contains(&format!("read {letters} at")) {
            let (at, load) = first.unwrap_or((f64::NAN, f64::NAN));
            return (at, load, spawned.elapsed().as_secs_f64() * 1000.0);
        }
        assert!(
            spawned.elapsed() < Duration::from_secs(600),
            "the console did not finish reading"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    kib as f64 / 1024.0
}
