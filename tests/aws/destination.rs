//! A destination for end-to-end tests: a small HTTP/1.1 server on loopback
//! that fails in the ways spec §3 lists, by path, and measures what a
//! user would: requests per idempotency key, 2xx answers, and the most
//! requests it ever had in flight at once.
//!
//! | path                | answers                                      |
//! |---------------------|----------------------------------------------|
//! | `/ok/<k>`           | 200                                          |
//! | `/flaky/<k>`        | 503 twice, then 200                          |
//! | `/limited/<k>`      | 429 with `Retry-After: 2` once, then 200     |
//! | `/missing/<k>`      | 404                                          |
//! | `/down/<k>`, `/unavailable` | 503 always                           |
//! | `/rate-limited`     | 429 with `Retry-After: 30` always            |
//! | `/stats`            | what it saw, as JSON (not counted)           |
//!
//! `examples/demo_destination.rs` serves the same for `make demo`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Debug, Default)]
struct State {
    in_flight: usize,
    max_in_flight: usize,
    /// Requests per path.
    per_path: HashMap<String, usize>,
    /// Idempotency keys answered 2xx, with how often.
    delivered: HashMap<String, usize>,
    requests: usize,
    /// 2xx answers to a path that had been tried before.
    delivered_after_retry: usize,
    /// When each request arrived.
    arrivals: Vec<std::time::Instant>,
}

#[derive(Clone)]
pub struct Destination {
    pub port: u16,
    state: Arc<Mutex<State>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Destination {
    /// Starts on 127.0.0.1, answering each request after `delay`.
    pub async fn start(delay: Duration) -> Destination {
        Destination::start_on("127.0.0.1:0", delay).await
    }

    /// Starts on `addr`.
    pub async fn start_on(addr: &str, delay: Duration) -> Destination {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"));
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let s = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, Arc::clone(&s), delay));
            }
        });
        Destination {
            port,
            state,
            task: Arc::new(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn max_in_flight(&self) -> usize {
        self.state.lock().unwrap().max_in_flight
    }

    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }

    /// When each request arrived, in order.
    #[allow(dead_code)] // for examples/demo_destination.rs, which shares this file
    pub fn arrivals(&self) -> Vec<std::time::Instant> {
        self.state.lock().unwrap().arrivals.clone()
    }

    /// Idempotency keys answered 2xx, and how many times each.
    pub fn delivered(&self) -> HashMap<String, usize> {
        self.state.lock().unwrap().delivered.clone()
    }

    /// What `/stats` answers.
    #[allow(dead_code)] // for examples/demo_destination.rs, which shares this file
    pub fn stats_json(&self) -> String {
        stats_json(&self.state.lock().unwrap())
    }
}

fn stats_json(s: &State) -> String {
    serde_json::json!({
        "requests": s.requests,
        "maxInFlight": s.max_in_flight,
        "delivered": s.delivered.len(),
        "deliveredAfterRetry": s.delivered_after_retry,
    })
    .to_string()
}

impl Drop for Destination {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

fn answer(path: &str, seen_before: usize) -> (u16, Option<&'static str>) {
    let kind = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match kind {
        "ok" => (200, None),
        "flaky" if seen_before < 2 => (503, None),
        "flaky" => (200, None),
        "limited" if seen_before < 1 => (429, Some("2")),
        "limited" => (200, None),
        "missing" => (404, None),
        "down" | "unavailable" => (503, None),
        "rate-limited" => (429, Some("30")),
        _ => (400, None),
    }
}

async fn serve(stream: tokio::net::TcpStream, state: Arc<Mutex<State>>, delay: Duration) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        // Request line and headers.
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let (mut length, mut key) = (0usize, String::new());
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await.unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "idempotency-key" => key = value.trim().to_owned(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        if path == "/stats" {
            let body = stats_json(&state.lock().unwrap());
            let response = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            if write.write_all(response.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let seen_before = {
            let mut s = state.lock().unwrap();
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
            s.requests += 1;
            s.arrivals.push(std::time::Instant::now());
            let n = s.per_path.entry(path.clone()).or_default();
            *n += 1;
            *n - 1
        };
        tokio::time::sleep(delay).await;
        let (status, retry_after) = answer(&path, seen_before);
        {
            let mut s = state.lock().unwrap();
            s.in_flight -= 1;
            if (200..300).contains(&status) {
                *s.delivered.entry(key).or_default() += 1;
                if seen_before > 0 {
                    s.delivered_after_retry += 1;
                }
            }
        }
        let extra = retry_after
            .map(|r| format!("retry-after: {r}\r\n"))
            .unwrap_or_default();
        // A failure says why, as destinations do.
        let body = if status >= 500 {
            "{\"error\":\"the service is down for maintenance\"}"
        } else {
            ""
        };
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n{extra}\r\n{body}",
            body.len()
        );
        if write.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}
