//! A destination for the sample events in `events/`, on 127.0.0.1:9100:
//!
//! | path            | answer                      |
//! |-----------------|-----------------------------|
//! | `/ok`           | 200                         |
//! | `/unavailable`  | 503                         |
//! | `/rate-limited` | 429 with `Retry-After: 30`  |
//! | `/missing`      | 404                         |
//!
//! `cargo run --example demo_destination` (or `make destination`), then
//! `make watch` and `make invoke EVENT=events/mixed-batch.json`. Stops on
//! Ctrl-C.

use wiremock::matchers::path;
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::main]
async fn main() {
    let addr = std::env::var("DEMO_DESTINATION").unwrap_or_else(|_| "127.0.0.1:9100".into());
    let listener = std::net::TcpListener::bind(&addr)
        .unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"));
    let server = MockServer::builder().listener(listener).start().await;
    for (route, response) in [
        ("/ok", ResponseTemplate::new(200)),
        ("/unavailable", ResponseTemplate::new(503)),
        (
            "/rate-limited",
            ResponseTemplate::new(429).insert_header("retry-after", "30"),
        ),
        ("/missing", ResponseTemplate::new(404)),
    ] {
        Mock::given(path(route))
            .respond_with(response)
            .mount(&server)
            .await;
    }
    println!("demo destination on {} (Ctrl-C to stop)", server.uri());
    tokio::signal::ctrl_c().await.expect("Ctrl-C handler");
    for r in server.received_requests().await.unwrap_or_default() {
        println!("{} {}", r.method, r.url.path());
    }
}
