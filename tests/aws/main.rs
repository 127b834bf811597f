//! Tests against real AWS-compatible parts: the SQS and Secrets Manager
//! APIs of a local moto server, `cargo lambda watch`, the built binaries and
//! real HTTP destinations. `make test` starts what they need and runs them
//! (`cargo test --features aws-tests`); a test that cannot find its server
//! fails, none skips.

mod common;
mod destination;

mod auth;
mod auth_trace;
mod batched;
mod browser;
mod carry;
mod chaos;
mod cli;
mod console;
mod end_to_end;
mod fair;
mod fifo;
mod fleet;
mod hold;
mod interop;
mod lambda_watch;
mod pause;
mod payloads;
mod protection;
mod reliability;
mod sqs_actions;
mod sqs_proxy;
mod ssrf;
mod state_table;
mod template;
mod traces;
mod trigger;
