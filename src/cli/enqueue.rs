//! `retryq enqueue` and `retryq call`.

use super::{config, Failure, RequestArgs};
use crate::producer::{call_then_enqueue, CallOutcome, Enqueuer, SyncRetry};
use crate::wiring;

/// Builds one Retry Message, sends it, prints its id.
pub(super) async fn enqueue(queue_url: String, request: RequestArgs) -> Result<(), Failure> {
    let msg = request.message()?;
    let enqueuer = Enqueuer::new(wiring::sqs_client_from_env().await, queue_url);
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
    let msg = request.message()?;
    let config = config()?;
    let (sqs, secrets_manager) = wiring::clients_from_env(config.auth.uses_secrets_manager()).await;
    let deliverer =
        wiring::deliverer(&config, 4, secrets_manager).map_err(|e| Failure::Work(e.to_string()))?;
    let enqueuer = Enqueuer::new(sqs, queue_url);
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
