//! `retryq`: the command line (see `retryq --help`). Wiring only.

use std::process::ExitCode;

use clap::Parser;
use retryq::cli::{self, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    retryq::logging::init(retryq::logging::Stream::Stderr, "warn,retryq=info");
    let cli = Cli::parse();
    match cli::run(cli, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.exit(),
    }
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler can be installed");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
