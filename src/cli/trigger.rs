//! `retryq trigger`: the Lambda SQS event source, emulated locally.

use std::time::Duration;

use super::Failure;
use crate::queue::Queues;
use crate::{trigger, wiring};

pub(super) async fn run(
    queue_url: String,
    function_url: String,
    batch_size: u64,
    wait_seconds: u64,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Failure> {
    let function_url = trigger::invoke_url(&function_url)
        .map_err(|e| Failure::Usage(format!("--function-url {function_url:?}: {e}")))?;
    let sqs = wiring::sqs_client_from_env().await;
    let region = sqs
        .config()
        .region()
        .map(|r| r.to_string())
        .unwrap_or_else(|| "us-east-1".into());
    let options = trigger::TriggerOptions {
        queue_url,
        function_url,
        batch_size: batch_size as usize,
        wait: Duration::from_secs(wait_seconds),
    };
    let stats = trigger::run(&Queues::new(sqs), &region, &options, shutdown)
        .await
        .map_err(|e| Failure::Work(e.to_string()))?;
    eprintln!(
        "retryq trigger: {} invocations, {} acknowledged, {} returned, {} invocations acknowledged nothing",
        stats.invocations, stats.acknowledged, stats.returned, stats.failed_invocations
    );
    Ok(())
}
