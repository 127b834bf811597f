//! `retryq-processor`: the Lambda function (`bootstrap` in the SAM build).
//!
//! Wiring only: logging, configuration (a malformed variable stops the
//! function before it asks for the first event), clients built once, then
//! the runtime loop.

use std::process::ExitCode;
use std::sync::Arc;

use lambda_runtime::service_fn;
use retryq::config::Config;
use retryq::process::Processor;
use retryq::{lambda, wiring};

#[tokio::main]
async fn main() -> ExitCode {
    retryq::logging::init(retryq::logging::Stream::Stdout, "info");
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("retryq-processor: configuration error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (sqs, secrets_manager) = wiring::clients_from_env(config.auth.uses_secrets_manager()).await;
    let processor = match Processor::new(config, sqs, secrets_manager) {
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
