//! The demo destination for `make demo` (and for the sample events): a
//! small HTTP server on 127.0.0.1:9100 (or `DEMO_DESTINATION`) that fails in
//! every way the outcome table lists, by path:
//!
//! | path                | answers                                      |
//! |---------------------|----------------------------------------------|
//! | `/ok/<k>`, `/ok`    | 200                                          |
//! | `/flaky/<k>`        | 503 twice, then 200                          |
//! | `/limited/<k>`      | 429 with `Retry-After: 2` once, then 200     |
//! | `/missing/<k>`      | 404                                          |
//! | `/down/<k>`, `/unavailable` | 503 always                           |
//! | `/rate-limited`     | 429 with `Retry-After: 30` always            |
//! | `/stats`            | what it saw, as JSON                         |
//!
//! (`/ok`, `/unavailable`, `/rate-limited` and `/missing` are the paths of
//! the sample events in `events/`.) Stops on Ctrl-C or SIGTERM.

// The tests' destination; the demo uses only part of it.
#[path = "../tests/aws/destination.rs"]
#[allow(dead_code)]
mod destination;

use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr = std::env::var("DEMO_DESTINATION").unwrap_or_else(|_| "127.0.0.1:9100".into());
    // The benchmarks use it too, with a fixed latency.
    let latency = std::env::var("DEMO_LATENCY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let server = destination::Destination::start_on(&addr, Duration::from_millis(latency)).await;
    println!("demo destination on {} (Ctrl-C to stop)", server.url(""));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("{}", server.stats_json());
}
