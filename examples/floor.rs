//! The floor of `make bench`: the least a Lambda SQS handler in Rust can do
//! to replay Retry Messages. It replays each record's request with reqwest,
//! `MAX_CONCURRENCY` (default 64) at a time, and lists every record that
//! did not get a 2xx in `batchItemFailures`. Nothing else: no validation,
//! no backoff, no dead letters, no logs, no metrics.
//!
//! It is built with the same release profile and the same crates as
//! `retryq-processor`, so `make bench` can report retryq's costs as ratios
//! to this one, measured in the same run. Not for production.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Message {
    destination_url: String,
    request: Request,
}

#[derive(Deserialize)]
struct Request {
    method: String,
    #[serde(default)]
    headers: HashMap<String, String>,
    #[serde(default)]
    body: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let concurrency: usize = std::env::var("MAX_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    lambda_runtime::run(service_fn(|event: LambdaEvent<SqsEvent>| {
        handle(client.clone(), Arc::clone(&slots), event)
    }))
    .await
}

async fn handle(
    client: reqwest::Client,
    slots: Arc<tokio::sync::Semaphore>,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, Error> {
    let mut replays = tokio::task::JoinSet::new();
    for record in event.payload.records {
        let (client, slots) = (client.clone(), Arc::clone(&slots));
        replays.spawn(async move {
            let id = record.message_id.unwrap_or_default();
            let _slot = slots.acquire_owned().await;
            let delivered = match replay(&client, record.body.as_deref().unwrap_or("")).await {
                Ok(status) => (200..300).contains(&status),
                Err(_) => false,
            };
            (id, delivered)
        });
    }
    let mut response = SqsBatchResponse::default();
    while let Some(done) = replays.join_next().await {
        match done {
            Ok((_, true)) => {}
            Ok((id, false)) => response.add_failure(id),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(response)
}

async fn replay(client: &reqwest::Client, body: &str) -> Result<u16, Error> {
    let message: Message = serde_json::from_str(body)?;
    let mut request = client.request(
        message.request.method.parse()?,
        message.destination_url.as_str(),
    );
    for (name, value) in &message.request.headers {
        request = request.header(name, value);
    }
    let response = request
        .body(message.request.body.unwrap_or_default())
        .send()
        .await?;
    Ok(response.status().as_u16())
}
