//! Service A's side of retryq, as a library: call the partner now with a
//! short bounded retry, and hand what still fails retryably to the retry
//! queue.
//!
//! ```sh
//! cargo run --example producer -- QUEUE_URL DESTINATION_URL
//! ```
//!
//! Uses the standard AWS environment (`AWS_REGION`, `AWS_ENDPOINT_URL`,
//! credentials) and the processor's variables for the destination policy
//! (`ALLOW_PRIVATE_DESTINATIONS=true` to call a server on localhost).
//! `make demo` shows the processor's side.

use std::time::Duration;

use retryq::config::Config;
use retryq::producer::{call_then_enqueue, CallOutcome, Enqueuer, MessageBuilder, SyncRetry};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(queue_url), Some(destination)) = (args.next(), args.next()) else {
        eprintln!("usage: producer QUEUE_URL DESTINATION_URL");
        std::process::exit(2);
    };

    // Built once per process, like any SDK or HTTP client.
    let config = Config::from_env()?;
    let deliverer = retryq::wiring::deliverer(&config, 8, None)?;
    let enqueuer = Enqueuer::new(retryq::wiring::sqs_client_from_env().await, queue_url);

    // One call of service A, as a Retry Message.
    let order = MessageBuilder::new(destination)
        .method("POST")
        .header("content-type", "application/json")
        .body(r#"{"order":42,"amount":"19.99"}"#)
        .originating_service("orders-api")
        .metadata("correlationId", "example-123")
        .max_attempts(8)
        .build()?;

    // Two attempts now, within 800 ms; anything longer is retryq's job.
    let sync = SyncRetry {
        attempts: 2,
        budget: Duration::from_millis(800),
    };
    match call_then_enqueue(&deliverer, &enqueuer, order, sync).await? {
        CallOutcome::Delivered { status, attempts } => {
            println!("delivered now: HTTP {status} after {attempts} attempt(s)")
        }
        CallOutcome::Enqueued {
            id,
            attempts,
            last_error,
            ..
        } => {
            println!("{last_error} after {attempts} attempt(s): enqueued as {id} for retryq")
        }
        CallOutcome::Rejected { error, .. } => {
            eprintln!("the partner refused it, retrying will not help: {error}");
            std::process::exit(1);
        }
    }
    Ok(())
}
