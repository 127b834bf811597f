//! `retryq enqueue` and `retryq call`.

use super::{config, Failure, RequestArgs};
use crate::producer::{call_then_enqueue, CallOutcome, Enqueuer, SyncRetry};
use crate::wiring;

/// Builds one Retry Message, sends it (through `PAYLOAD_BUCKET` when it is
/// large), prints its id.
pub(super) async fn enqueue(queue_url: String, request: RequestArgs) -> Result<(), Failure> {
    let config = config()?;
    let msg = request.message(body_limit(&config))?;
    let enqueuer = enqueuer(&config, wiring::sqs_client_from_env().await, queue_url);
    enqueuer
        .enqueue(&msg)
        .await
        .map_err(|e| Failure::Work(e.to_string()))?;
    println!("{}", msg.id);
    Ok(())
}

/// Tries the request now; enqueues it when it still fails retryably.
pub(super) async fn call(
    queue_url: String,
    request: RequestArgs,
    sync: SyncRetry,
) -> Result<(), Failure> {
    let config = config()?;
    let msg = request.message(body_limit(&config))?;
    let (sqs, secrets_manager) = wiring::clients_from_env(config.auth.uses_secrets_manager()).await;
    let deliverer =
        wiring::deliverer(&config, 4, secrets_manager).map_err(|e| Failure::Work(e.to_string()))?;
    let enqueuer = enqueuer(&config, sqs, queue_url);
    match call_then_enqueue(&deliverer, &enqueuer, msg, sync).await {
        Ok(CallOutcome::Delivered { status, attempts }) => {
            println!("delivered: HTTP {status} after {attempts} attempt(s)");
            Ok(())
        }
        Ok(CallOutcome::Enqueued {
            id,
            attempts,
            last_error,
            ..
        }) => {
            println!("enqueued {id} after {attempts} attempt(s): {last_error}");
            Ok(())
        }
        Ok(CallOutcome::Rejected {
            error, attempts, ..
        }) => Err(Failure::Work(format!(
            "failed non-retryably after {attempts} attempt(s), not enqueued: {error}"
        ))),
        Err(e) => Err(Failure::Work(format!(
            "still failing and could not be enqueued: {e}"
        ))),
    }
}

/// With `PAYLOAD_BUCKET`, a body may be as large as an offloaded one.
fn body_limit(config: &crate::config::Config) -> usize {
    match config.payload_bucket {
        Some(_) => config.max_offloaded_body,
        None => crate::message::limits::BODY_BYTES,
    }
}

/// The enqueuer, offloading to `PAYLOAD_BUCKET` when it is set.
fn enqueuer(
    config: &crate::config::Config,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
) -> Enqueuer {
    let enqueuer = Enqueuer::new(sqs, queue_url).with_fair_queue_key(config.fair_queue_key);
    match (&config.payload_bucket, config.payload_offload_bytes) {
        (Some(bucket), Some(threshold)) => enqueuer.with_payload_bucket(bucket, threshold),
        (Some(bucket), None) => enqueuer.with_payload_bucket_for_queue(bucket),
        (None, _) => enqueuer,
    }
}
