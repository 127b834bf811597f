//! The `retryq` command line (spec §7): arguments and what each command
//! does. The binary only parses and calls [`run`].
//!
//! Exit codes: 0 success, 1 the work failed, 2 bad usage or input (clap's
//! own usage errors exit 2 as well).

mod attempts;
mod dlq;
mod enqueue;
mod event;
mod pause;
mod trigger;
mod validate;
mod worker;

pub use event::event;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::message::RetryMessage;
use crate::producer::{MessageBuilder, SyncRetry};

const EXAMPLES: &str = "\
Examples:
  retryq enqueue --queue-url $Q --url https://partner.example.com/v1/orders \\
      --method POST -H 'content-type: application/json' --data '{\"order\":42}'
  retryq call --queue-url $Q --url https://partner.example.com/v1/orders --data @order.json \\
      --sync-attempts 3 --sync-budget-ms 2000
  retryq worker --queue-url $Q
  retryq trigger --queue-url $Q --function-url http://127.0.0.1:9000
  retryq dlq list --dlq-url $DLQ
  retryq dlq redrive --dlq-url $DLQ --to $Q --reason attempts-exhausted --max 100
  retryq attempts order-42 --state-table retryq-state
  retryq pause api.partner.com --for 2h --state-table retryq-state
  retryq validate message.json
  retryq event message.json other.json > event.json

Exit codes: 0 success, 1 the work failed, 2 bad usage or input.
The AWS SDK's usual environment applies (AWS_REGION, AWS_ENDPOINT_URL, credentials);
`worker` and `call` also read the processor's variables (MAX_ATTEMPTS, ALLOWED_DESTINATIONS, ...).";

#[derive(Debug, Parser)]
#[command(name = "retryq", version, about = "Retry failed HTTP calls through SQS: enqueue, process, inspect dead letters.", after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build one Retry Message and send it to the retry queue; prints its id.
    #[command(
        after_help = "Example:\n  retryq enqueue --queue-url $Q --url https://api.example.com/hooks --data @event.json -H 'content-type: application/json'"
    )]
    Enqueue {
        #[arg(long)]
        queue_url: String,
        #[command(flatten)]
        request: RequestArgs,
    },
    /// Try the request now with bounded retries; enqueue it if it still fails retryably.
    #[command(
        after_help = "Exit 0 when delivered or enqueued, 1 when it failed non-retryably (not enqueued) or could not be enqueued.\n\nExample:\n  retryq call --queue-url $Q --url https://api.example.com/hooks --data '{}' --sync-attempts 2 --sync-budget-ms 500"
    )]
    Call {
        #[arg(long)]
        queue_url: String,
        #[command(flatten)]
        request: RequestArgs,
        /// Attempts made now, before enqueueing.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
        sync_attempts: u32,
        /// Time for all of them, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        sync_budget_ms: u64,
    },
    /// Poll the queue and process it with the same core as the Lambda function, until SIGINT/SIGTERM.
    #[command(
        after_help = "Example:\n  DLQ_URL=$DLQ MAX_CONCURRENCY=64 retryq worker --queue-url $Q"
    )]
    Worker {
        #[arg(long)]
        queue_url: String,
        /// Long-poll wait per receive (0-20 s).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=20))]
        wait_seconds: u64,
        /// Concurrent receive loops (default: enough for MAX_CONCURRENCY).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=64))]
        pollers: Option<u64>,
    },
    /// Emulate the Lambda SQS trigger: feed batches from the queue to a function (e.g. under cargo lambda watch).
    #[command(
        after_help = "Example:\n  retryq trigger --queue-url $Q --function-url http://127.0.0.1:9000\n\nA function URL without a path gets /2015-03-31/functions/retryq-processor/invocations."
    )]
    Trigger {
        #[arg(long)]
        queue_url: String,
        #[arg(long)]
        function_url: String,
        /// Records per invocation.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10000))]
        batch_size: u64,
        /// Long-poll wait for the first record of a batch (0-20 s).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=20))]
        wait_seconds: u64,
    },
    /// Inspect and redrive dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Show a Retry Message's recorded attempts (needs the fleet's state table).
    #[command(
        after_help = "Each attempt the ledger holds for this id, oldest first: number, start, SQS message, outcome, status, latency, LastError and the start of the answer's body. Copies of one message (a redrive) appear together; each counts its attempts afresh.\n\nExample:\n  retryq attempts order-42 --state-table retryq-state --json"
    )]
    Attempts {
        /// The Retry Message id.
        id: String,
        /// The DynamoDB table (default: STATE_TABLE).
        #[arg(long, env = "STATE_TABLE")]
        state_table: String,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop deliveries to the hosts PATTERN matches, fleet-wide, within a few seconds (needs the state table).
    #[command(
        after_help = "Records for those hosts are put back without an attempt while the pause lasts (carried over when needed), and tried again after it ends or is resumed: records put back during the pause come back within 5 minutes of a resume. PATTERN is written as in ALLOWED_DESTINATIONS: api.partner.com (any port), *.partner.com (any subdomain), host:8443 (that port).\n\nExamples:\n  retryq pause api.partner.com --for 2h --state-table retryq-state\n  retryq pause '*.partner.com' --until 2027-01-01T09:00:00Z"
    )]
    Pause {
        pattern: String,
        /// When the pause ends (RFC 3339); default: until resumed.
        #[arg(long, conflicts_with = "for_")]
        until: Option<String>,
        /// How long it lasts: 30s, 15m, 2h, 1d.
        #[arg(long = "for")]
        for_: Option<String>,
        /// The DynamoDB table (default: STATE_TABLE).
        #[arg(long, env = "STATE_TABLE")]
        state_table: Option<String>,
    },
    /// End a pause now: deliveries to its hosts start again within a few seconds.
    #[command(after_help = "Example:\n  retryq resume api.partner.com --state-table retryq-state")]
    Resume {
        pattern: String,
        /// The DynamoDB table (default: STATE_TABLE).
        #[arg(long, env = "STATE_TABLE")]
        state_table: Option<String>,
    },
    /// List the pauses in force.
    #[command(after_help = "Example:\n  retryq paused --state-table retryq-state --json")]
    Paused {
        /// The DynamoDB table (default: STATE_TABLE).
        #[arg(long, env = "STATE_TABLE")]
        state_table: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Serve the operator console on 127.0.0.1: dead letters, attempt histories, destinations, redrive and pause.
    #[command(
        after_help = "Prints a URL with a random token once: open it in a browser on this machine. Reads AWS with your own credentials. Stop it with Ctrl-C. Needs a retryq built with the console feature (cargo install retryq --features console).\n\nExample:\n  retryq console --dlq-url $DLQ --queue-url $Q --state-table retryq-state"
    )]
    Console {
        #[arg(long)]
        dlq_url: String,
        /// Where redrives go (without it, the console does not redrive).
        #[arg(long)]
        queue_url: Option<String>,
        /// The fleet's table: attempt histories, breakers and pauses (default: STATE_TABLE).
        #[arg(long, env = "STATE_TABLE")]
        state_table: Option<String>,
        /// The port on 127.0.0.1 (default: any free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// Check a Retry Message file against v1, or a retry queue and its DLQ against the configuration.
    #[command(
        after_help = "With --queue-url, reads the queues' MessageRetentionPeriod, MaximumMessageSize and VisibilityTimeout and reports what the processor would refuse or warn about at run time: a DLQ smaller than its source, a retention shorter than the worst-case retry horizon of MAX_ATTEMPTS and the delays, a visibility timeout shorter than REQUEST_TIMEOUT_SECONDS, and each AUTH_PROFILES profile whose credentials could go to any host (no hosts, and ALLOWED_DESTINATIONS empty), by name only. With --payload-bucket, also reads the bucket's lifecycle rules and reports one that could expire a payload while a message in the queues still points to it. Exit 1 when something is wrong.\n\nExamples:\n  retryq validate message.json\n  MAX_ATTEMPTS=8 retryq validate --queue-url $Q --dlq-url $DLQ\n  retryq validate --queue-url $Q --dlq-url $DLQ --payload-bucket $BUCKET"
    )]
    Validate {
        #[arg(required_unless_present = "queue_url")]
        file: Option<PathBuf>,
        /// The retry queue to check.
        #[arg(long, conflicts_with = "file")]
        queue_url: Option<String>,
        /// Its DLQ (default: DLQ_URL).
        #[arg(long, requires = "queue_url", env = "DLQ_URL", hide_env_values = true)]
        dlq_url: Option<String>,
        /// A payload bucket: report a lifecycle rule that could expire a
        /// payload while a message in the queues still points to it.
        #[arg(long, requires = "queue_url")]
        payload_bucket: Option<String>,
    },
    /// Print an SQS event JSON holding these messages, for `cargo lambda invoke --data-file`.
    #[command(
        after_help = "Example:\n  retryq event a.json b.json > event.json && cargo lambda invoke retryq-processor --data-file event.json"
    )]
    Event {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The eventSourceARN of the records.
        #[arg(
            long,
            default_value = "arn:aws:sqs:us-east-1:123456789012:retryq-events"
        )]
        queue_arn: String,
        /// The ApproximateReceiveCount of the records.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        receive_count: u32,
        /// Take the files as they are, without validating them (to build events with invalid bodies).
        #[arg(long)]
        raw: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Show each dead letter: id, destination, FailureReason, LastStatusCode, AttemptCount, age.
    #[command(after_help = "Example:\n  retryq dlq list --dlq-url $DLQ --json")]
    List {
        #[arg(long)]
        dlq_url: String,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Most dead letters to show.
        #[arg(long, default_value_t = 1000)]
        max: usize,
    },
    /// Move dead letters back to a queue (body unchanged, failure attributes dropped).
    #[command(
        after_help = "Filters combine: a dead letter moves when it matches every one given.\n\nExamples:\n  retryq dlq redrive --dlq-url $DLQ --to $Q --reason non-retryable --max 10\n  retryq dlq redrive --dlq-url $DLQ --to $Q --host api.partner.com\n  retryq dlq redrive --dlq-url $DLQ --to $Q --message-id 5fb1c2d4-… --message-id 0a7e…"
    )]
    Redrive {
        #[arg(long)]
        dlq_url: String,
        #[arg(long)]
        to: String,
        /// Most dead letters to move.
        #[arg(long, default_value_t = usize::MAX, hide_default_value = true)]
        max: usize,
        /// Only those with this FailureReason.
        #[arg(long, value_parser = ["non-retryable", "attempts-exhausted", "expired", "invalid-message", "destination-not-allowed"])]
        reason: Option<String>,
        /// Only those to this destination host (not known for an offloaded body).
        #[arg(long)]
        host: Option<String>,
        /// Only this SQS message id (as `dlq list --json` shows it); repeat for more.
        #[arg(long = "message-id")]
        message_ids: Vec<String>,
    },
}

/// The request flags shared by `enqueue` and `call`.
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// The destination URL.
    #[arg(long)]
    pub url: String,
    /// HTTP method (default: POST with --data, else GET).
    #[arg(long, short = 'X')]
    pub method: Option<String>,
    /// A header, 'name: value'; repeat for more.
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// The body, or @FILE to read it from a file.
    #[arg(long, short = 'd')]
    pub data: Option<String>,
    /// An auth profile configured in the processor.
    #[arg(long)]
    pub auth: Option<String>,
    /// The message id (default: a new UUID).
    #[arg(long)]
    pub id: Option<String>,
    /// Lowers MAX_ATTEMPTS for this message.
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// No attempt after this many seconds from now.
    #[arg(long)]
    pub expires_in: Option<u64>,
    /// Recorded as originatingService.
    #[arg(long)]
    pub originating_service: Option<String>,
    /// The message's MessageGroupId: its tenant on a standard (fair) queue,
    /// its order on a FIFO queue (default: the destination's host, unless
    /// FAIR_QUEUE_KEY=none on a standard queue).
    #[arg(long)]
    pub group: Option<String>,
}

/// A failed command: its message and exit code.
#[derive(Debug)]
pub enum Failure {
    /// Exit 2.
    Usage(String),
    /// Exit 1.
    Work(String),
}

impl Failure {
    pub fn exit(self) -> ExitCode {
        let (message, code) = match self {
            Failure::Usage(m) => (m, 2),
            Failure::Work(m) => (m, 1),
        };
        eprintln!("retryq: {message}");
        ExitCode::from(code)
    }
}

impl RequestArgs {
    /// The Retry Message these flags describe.
    /// The Retry Message; its body may be up to `body_limit` bytes (larger
    /// when it will be offloaded to `PAYLOAD_BUCKET`).
    pub fn message(&self, body_limit: usize) -> Result<RetryMessage, Failure> {
        let mut b = MessageBuilder::new(&self.url);
        b = b.method(
            self.method
                .clone()
                .unwrap_or_else(|| if self.data.is_some() { "POST" } else { "GET" }.to_owned()),
        );
        for (i, h) in self.headers.iter().enumerate() {
            // Never echoed: a malformed `-H` may well hold a credential.
            let (name, value) = h.split_once(':').ok_or_else(|| {
                Failure::Usage(format!("-H (the {}. given): expected 'name: value'", i + 1))
            })?;
            b = b.header(name.trim(), value.trim());
        }
        if let Some(data) = &self.data {
            b = match data.strip_prefix('@') {
                Some(path) => {
                    let bytes = std::fs::read(path)
                        .map_err(|e| Failure::Usage(format!("--data @{path}: {e}")))?;
                    b.body_bytes(&bytes)
                }
                None => b.body(data.clone()),
            };
        }
        if let Some(p) = &self.auth {
            b = b.auth(p.clone());
        }
        if let Some(id) = &self.id {
            b = b.id(id.clone());
        }
        if let Some(n) = self.max_attempts {
            b = b.max_attempts(n);
        }
        if let Some(secs) = self.expires_in {
            let secs = i64::try_from(secs)
                .map_err(|_| Failure::Usage("--expires-in is too large".into()))?;
            b = b.expires_at(time::OffsetDateTime::now_utc() + time::Duration::seconds(secs));
        }
        if let Some(s) = &self.originating_service {
            b = b.originating_service(s.clone());
        }
        if let Some(g) = &self.group {
            b = b.group(g.clone());
        }
        b.build_with_body_limit(body_limit)
            .map_err(|e| Failure::Usage(format!("invalid message: {e}")))
    }
}

/// Runs one command: a dispatcher to the command's own file.
pub async fn run(
    cli: Cli,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Failure> {
    match cli.command {
        Command::Enqueue { queue_url, request } => enqueue::enqueue(queue_url, request).await,
        Command::Call {
            queue_url,
            request,
            sync_attempts,
            sync_budget_ms,
        } => {
            let sync = SyncRetry {
                attempts: sync_attempts,
                budget: Duration::from_millis(sync_budget_ms),
            };
            enqueue::call(queue_url, request, sync).await
        }
        Command::Worker {
            queue_url,
            wait_seconds,
            pollers,
        } => worker::run(queue_url, wait_seconds, pollers, shutdown).await,
        Command::Trigger {
            queue_url,
            function_url,
            batch_size,
            wait_seconds,
        } => trigger::run(queue_url, function_url, batch_size, wait_seconds, shutdown).await,
        Command::Dlq(DlqCommand::List { dlq_url, json, max }) => {
            dlq::list(&dlq_url, json, max).await
        }
        Command::Dlq(DlqCommand::Redrive {
            dlq_url,
            to,
            max,
            reason,
            host,
            message_ids,
        }) => {
            let selection = crate::dlq::Selection {
                reason,
                host: host.map(|h| h.to_ascii_lowercase()),
                message_ids: (!message_ids.is_empty()).then(|| message_ids.into_iter().collect()),
                since_ms: None,
            };
            dlq::redrive(&dlq_url, &to, max, &selection).await
        }
        Command::Attempts {
            id,
            state_table,
            json,
        } => attempts::run(&id, state_table, json).await,
        Command::Pause {
            pattern,
            until,
            for_,
            state_table,
        } => {
            let end = pause::end_of(until.as_deref(), for_.as_deref())?;
            pause::pause(&pattern, end, state_table).await
        }
        Command::Resume {
            pattern,
            state_table,
        } => pause::resume(&pattern, state_table).await,
        Command::Paused { state_table, json } => pause::list(state_table, json).await,
        Command::Console {
            dlq_url,
            queue_url,
            state_table,
            port,
        } => console(dlq_url, queue_url, state_table, port, shutdown).await,
        Command::Validate {
            queue_url: Some(queue_url),
            dlq_url,
            payload_bucket,
            ..
        } => validate::queues(&queue_url, dlq_url.as_deref(), payload_bucket.as_deref()).await,
        Command::Validate { file, .. } => {
            validate::file(&file.expect("clap requires FILE without --queue-url"))
        }
        Command::Event {
            files,
            queue_arn,
            receive_count,
            raw,
        } => event::run(&files, &queue_arn, receive_count, raw),
    }
}

#[cfg(feature = "console")]
async fn console(
    dlq_url: String,
    queue_url: Option<String>,
    state_table: Option<String>,
    port: u16,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Failure> {
    let options = crate::console::Options {
        dlq_url,
        queue_url,
        state_table,
        port,
    };
    crate::console::serve(options, shutdown)
        .await
        .map_err(Failure::Work)
}

#[cfg(not(feature = "console"))]
async fn console(
    _: String,
    _: Option<String>,
    _: Option<String>,
    _: u16,
    _: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Failure> {
    Err(Failure::Usage(
        "this retryq was built without the console: cargo install retryq --features console".into(),
    ))
}

fn config() -> Result<Config, Failure> {
    Config::from_env().map_err(|e| Failure::Usage(format!("configuration error: {e}")))
}

fn read(file: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(file).map_err(|e| Failure::Usage(format!("{}: {e}", file.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_has_an_example_in_its_help() {
        let mut cli = Cli::command();
        cli.build();
        for sub in cli.get_subcommands().filter(|c| c.get_name() != "help") {
            let leaves: Vec<&clap::Command> = if sub.has_subcommands() {
                sub.get_subcommands().collect()
            } else {
                vec![sub]
            };
            for leaf in leaves.into_iter().filter(|c| c.get_name() != "help") {
                let help = leaf
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                assert!(
                    help.contains("Example"),
                    "{} has no example",
                    leaf.get_name()
                );
            }
        }
    }
}
