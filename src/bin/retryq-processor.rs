//! `retryq-processor`: the Lambda function (`bootstrap` in the SAM build).
//!
//! Wiring only: the tokio runtime sized to the function's CPU, logging,
//! configuration (a malformed variable stops the function before it asks
//! for the first event), clients built once, then the runtime loop.

use std::process::ExitCode;
use std::sync::Arc;

use lambda_runtime::service_fn;
use retryq::config::Config;
use retryq::process::Processor;
use retryq::queue::Queues;
use retryq::{lambda, wiring};

fn main() -> ExitCode {
    // One thread per whole vCPU the memory size buys: on a small function
    // a second thread only adds hand-overs.
    let memory_mb = std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        .ok()
        .and_then(|mb| mb.trim().parse().ok());
    match lambda::runtime(memory_mb) {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("retryq-processor: cannot start the tokio runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    retryq::logging::init(retryq::logging::Stream::Stdout, "info");
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("retryq-processor: configuration error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The SQS client is built on the first SQS call (a delivered-only batch
    // makes none); Secrets Manager's only when a profile reads it.
    let secrets_manager =
        wiring::secrets_manager_from_env(config.auth.uses_secrets_manager()).await;
    let processor = match Processor::with_queues(config, Queues::from_env(), secrets_manager) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            eprintln!("retryq-processor: cannot build the HTTP client: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handler = service_fn(|event| lambda::handle(Arc::clone(&processor), event));
    match lambda_runtime::run(handler).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("retryq-processor: {e}");
            ExitCode::FAILURE
        }
    }
}
