//! `retryq trigger`: Lambda's SQS event source mapping, emulated for local
//! runs.
//!
//! Receives batches from a queue, builds the event exactly as Lambda does
//! ([`sqs_event`]), invokes the function over the Lambda
//! invoke API (e.g. `cargo lambda watch`), and deletes the records the answer
//! does not list in `batchItemFailures`. As with Lambda, a function error,
//! an answer that is not a batch response, or one naming a record that was
//! not in the batch acknowledges nothing: the whole batch comes back.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsBatchResponse;
use url::Url;

use crate::queue::{self, QueueError, Queues};
use aws_lambda_events::encodings::Base64Data;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage, SqsMessageAttribute};

/// The invoke path of the function `retryq-processor`, used when the
/// function URL has no path of its own (`http://127.0.0.1:9000`).
pub const DEFAULT_INVOKE_PATH: &str = "/2015-03-31/functions/retryq-processor/invocations";

/// Lambda's longest invocation.
const INVOKE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone)]
pub struct TriggerOptions {
    pub queue_url: String,
    pub function_url: Url,
    /// Records per invocation (1 to 10000), as the mapping's `BatchSize`.
    pub batch_size: usize,
    /// Long-poll wait for the first record of a batch.
    pub wait: Duration,
}

/// What the trigger did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TriggerStats {
    pub invocations: u64,
    pub acknowledged: u64,
    pub returned: u64,
    /// Invocations whose answer acknowledged nothing (errors, bad answers).
    pub failed_invocations: u64,
}

/// Why an invocation acknowledged nothing.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("the function could not be invoked: {0}")]
    Unreachable(String),
    #[error("the function failed: HTTP {status} {body}")]
    FunctionError { status: u16, body: String },
    #[error("the answer is not a batch response: {0}")]
    NotABatchResponse(String),
    #[error("the answer names a record that is not in the batch: {0:?}")]
    UnknownRecord(String),
}

/// The function URL with the default invoke path when it has none.
pub fn invoke_url(function_url: &str) -> Result<Url, url::ParseError> {
    let mut url = Url::parse(function_url)?;
    if url.path() == "/" || url.path().is_empty() {
        url.set_path(DEFAULT_INVOKE_PATH);
    }
    Ok(url)
}

/// Feeds the function until `shutdown` completes; an invocation in flight
/// finishes (and its acknowledgements are deleted) first.
pub async fn run(
    queues: &Queues,
    region: &str,
    options: &TriggerOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<TriggerStats, QueueError> {
    let info = queues.describe(&options.queue_url).await?;
    let http = reqwest::Client::builder()
        .timeout(INVOKE_TIMEOUT)
        .no_proxy()
        .build()
        .map_err(|e| QueueError::Sqs {
            operation: "invoke",
            detail: e.to_string(),
        })?;
    let failed_invocations = std::cell::Cell::new(0u64);
    let receive = || receive_batch(queues, options);
    let handle = |messages: Vec<aws_sdk_sqs::types::Message>| {
        let (http, arn, failed_invocations) = (&http, &info.arn, &failed_invocations);
        async move {
            let event = sqs_event(&messages, arn, region);
            let to_delete = match invoke(http, &options.function_url, &event).await {
                Ok(failed) => messages
                    .iter()
                    .filter(|m| !failed.contains(m.message_id.as_deref().unwrap_or_default()))
                    .filter_map(|m| m.receipt_handle.clone())
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e, records = messages.len(), "invocation acknowledged nothing");
                    failed_invocations.set(failed_invocations.get() + 1);
                    Vec::new()
                }
            };
            queue::Handled {
                to_delete,
                deleted: 0,
            }
        }
    };
    let stats = queue::receive_loop(queues, &options.queue_url, shutdown, receive, handle).await;
    Ok(TriggerStats {
        invocations: stats.batches,
        acknowledged: stats.acknowledged,
        returned: stats.returned,
        failed_invocations: failed_invocations.get(),
    })
}

/// Up to `batch_size` messages: a long poll for the first, then whatever is
/// ready at once (Lambda's batching window of 0).
async fn receive_batch(
    queues: &Queues,
    options: &TriggerOptions,
) -> Result<Vec<aws_sdk_sqs::types::Message>, QueueError> {
    let mut batch = queues
        .receive(
            &options.queue_url,
            want(options.batch_size, 0),
            options.wait,
            None,
        )
        .await?;
    while batch.len() < options.batch_size {
        let asked = want(options.batch_size, batch.len());
        let more = queues
            .receive(&options.queue_url, asked, Duration::ZERO, None)
            .await?;
        let got = more.len();
        batch.extend(more);
        if got < asked as usize {
            break;
        }
    }
    Ok(batch)
}

fn want(batch_size: usize, have: usize) -> i32 {
    batch_size.saturating_sub(have).min(10) as i32
}

/// Invokes the function; returns the message ids it did not acknowledge.
pub async fn invoke(
    http: &reqwest::Client,
    url: &Url,
    event: &aws_lambda_events::event::sqs::SqsEvent,
) -> Result<HashSet<String>, InvokeError> {
    let response = http
        .post(url.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(event).expect("an SqsEvent always serializes"))
        .send()
        .await
        .map_err(|e| InvokeError::Unreachable(e.to_string()))?;
    let status = response.status();
    let function_error = response.headers().contains_key("x-amz-function-error");
    let body = response
        .text()
        .await
        .map_err(|e| InvokeError::Unreachable(e.to_string()))?;
    if !status.is_success() || function_error {
        return Err(InvokeError::FunctionError {
            status: status.as_u16(),
            body: crate::policy::one_line(&body, 300),
        });
    }
    let answer: SqsBatchResponse = serde_json::from_str(&body)
        .map_err(|_| InvokeError::NotABatchResponse(crate::policy::one_line(&body, 300)))?;
    let in_batch: HashSet<&str> = event
        .records
        .iter()
        .filter_map(|r| r.message_id.as_deref())
        .collect();
    let mut failed = HashSet::new();
    for f in answer.batch_item_failures {
        if !in_batch.contains(f.item_identifier.as_str()) {
            return Err(InvokeError::UnknownRecord(f.item_identifier));
        }
        failed.insert(f.item_identifier);
    }
    Ok(failed)
}

/// Builds the event Lambda's SQS event source mapping would send for these
/// received messages (what `retryq trigger` and the tests feed the function).
pub fn sqs_event(
    messages: &[aws_sdk_sqs::types::Message],
    queue_arn: &str,
    region: &str,
) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = messages
        .iter()
        .map(|m| {
            let mut record = SqsMessage::default();
            record.message_id = m.message_id.clone();
            record.receipt_handle = m.receipt_handle.clone();
            record.body = m.body.clone();
            record.md5_of_body = m.md5_of_body.clone();
            record.md5_of_message_attributes = m.md5_of_message_attributes.clone();
            record.attributes = m
                .attributes
                .iter()
                .flatten()
                .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                .collect();
            record.message_attributes = m
                .message_attributes
                .iter()
                .flatten()
                .map(|(k, v)| {
                    let mut a = SqsMessageAttribute::default();
                    a.string_value = v.string_value.clone();
                    a.binary_value = v.binary_value.as_ref().map(|b| base64_data(b.as_ref()));
                    a.string_list_values = v.string_list_values.clone().unwrap_or_default();
                    a.binary_list_values = v
                        .binary_list_values
                        .iter()
                        .flatten()
                        .map(|b| base64_data(b.as_ref()))
                        .collect();
                    a.data_type = Some(v.data_type.clone());
                    (k.clone(), a)
                })
                .collect();
            record.event_source = Some("aws:sqs".into());
            record.event_source_arn = Some(queue_arn.to_owned());
            record.aws_region = Some(region.to_owned());
            record
        })
        .collect();
    event
}

fn base64_data(bytes: &[u8]) -> Base64Data {
    let mut data = Base64Data::default();
    data.extend_from_slice(bytes);
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_function_url_gets_the_invoke_path() {
        assert_eq!(
            invoke_url("http://127.0.0.1:9000").unwrap().as_str(),
            "http://127.0.0.1:9000/2015-03-31/functions/retryq-processor/invocations"
        );
        assert_eq!(
            invoke_url("http://127.0.0.1:9000/2015-03-31/functions/other/invocations")
                .unwrap()
                .path(),
            "/2015-03-31/functions/other/invocations"
        );
        assert!(invoke_url("not a url").is_err());
    }

    #[test]
    fn batches_are_received_ten_at_a_time() {
        assert_eq!(want(10, 0), 10);
        assert_eq!(want(25, 20), 5);
        assert_eq!(want(3, 0), 3);
        assert_eq!(want(100, 0), 10);
    }
}
