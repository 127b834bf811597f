//! `retryq worker`: path 3.2, until SIGINT/SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use super::{config, Failure};
use crate::process::Processor;
use crate::{wiring, worker};

pub(super) async fn run(
    queue_url: String,
    wait_seconds: u64,
    pollers: Option<u64>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Failure> {
    let config = config()?;
    let mut options = worker::WorkerOptions::new(queue_url, config.max_concurrency);
    options.wait = Duration::from_secs(wait_seconds);
    if let Some(n) = pollers {
        options.pollers = n as usize;
    }
    let (sqs, secrets_manager) = wiring::clients_from_env(config.auth.uses_secrets_manager()).await;
    let processor =
        Processor::new(config, sqs, secrets_manager).map_err(|e| Failure::Work(e.to_string()))?;
    let stats = worker::run(Arc::new(processor), options, shutdown)
        .await
        .map_err(|e| Failure::Work(e.to_string()))?;
    eprintln!(
        "retryq worker: {} records in {} batches, {} acknowledged, {} left for another attempt",
        stats.records, stats.batches, stats.acknowledged, stats.returned
    );
    Ok(())
}
