//! Fleet-wide state in one DynamoDB table (spec §9): the attempt ledger,
//! the circuit breaker every process shares, and the rate-limit buckets of
//! `DESTINATION_POLICIES`.
//!
//! One table, keys `pk` and `sk` (strings), TTL attribute `ttl` (epoch
//! seconds). The item shapes (docs/state.md has the full table):
//!
//! | item | `pk` | `sk` |
//! |---|---|---|
//! | one attempt ([`ledger`]) | `msg#<Retry Message id>` | `attempt#<start, ms>#<SQS message id>` |
//! | failed attempts of one SQS message | `sqs#<SQS message id>` | `failures` |
//! | a host's breaker ([`breaker`]) | `breaker#<host:port>` | `state` |
//! | a pattern's token bucket ([`rate`]) | `rate#<pattern>` | `bucket` |
//!
//! **Cost.** A batch that only delivers makes no request (with
//! `LEDGER=failures`). Ledger writes are gathered into `BatchWriteItem`
//! calls and reads into `BatchGetItem` calls, and a read is made only for a
//! record received before. A breaker's state is read at most once a second
//! per host and process; rate-limit tokens are leased a fifth of a second's
//! worth at a time.
//!
//! **Failure.** Every call is bounded in time. A call that fails returns a
//! [`StateError`]; the processor then goes on without the table for the
//! rest of that batch (per-process breaker and rate limits, attempts counted
//! by receives) and says so once in the log.

pub mod breaker;
pub mod ledger;
pub mod rate;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

use crate::config::StateSettings;
use crate::gather::{Gather, Unanswered};

/// Longest a DynamoDB call may take, retries included.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// A DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// A failed DynamoDB call, as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DynamoDB {operation} failed: {detail}")]
pub struct StateError {
    pub operation: &'static str,
    pub detail: String,
}

impl Unanswered for StateError {
    fn unanswered(operation: &'static str, detail: String) -> StateError {
        StateError { operation, detail }
    }
}

impl StateError {
    fn from_sdk<E, R>(operation: &'static str, e: &SdkError<E, R>) -> StateError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let detail = match e.code() {
            Some(code) => format!("{code}: {}", e.message().unwrap_or("no message")),
            None => DisplayErrorContext(e).to_string(),
        };
        StateError {
            operation,
            detail: crate::policy::one_line(&detail, 300),
        }
    }

    /// A conditional write whose condition did not hold.
    pub fn is_conditional(&self) -> bool {
        self.detail.starts_with("ConditionalCheckFailed")
    }

    fn timeout(operation: &'static str) -> StateError {
        StateError {
            operation,
            detail: format!("no answer within {} s", CALL_TIMEOUT.as_secs()),
        }
    }
}

/// The fleet's table, shared by every batch of the process.
#[derive(Debug)]
pub struct FleetState {
    settings: StateSettings,
    client: tokio::sync::OnceCell<Client>,
    /// Names this process in a probe lease.
    owner: String,
    writes: Gather<Vec<Item>, (), StateError>,
    reads: Gather<String, u32, StateError>,
    hosts: breaker::FleetBreakers,
    buckets: rate::FleetBuckets,
}

impl FleetState {
    /// The table `settings` names, its client built from the standard AWS
    /// environment on the first call.
    pub fn from_env(settings: StateSettings) -> FleetState {
        FleetState::with_client(settings, tokio::sync::OnceCell::new())
    }

    /// The table with this client.
    pub fn new(settings: StateSettings, client: Client) -> FleetState {
        FleetState::with_client(settings, tokio::sync::OnceCell::new_with(Some(client)))
    }

    fn with_client(settings: StateSettings, client: tokio::sync::OnceCell<Client>) -> FleetState {
        FleetState {
            settings,
            client,
            owner: uuid::Uuid::new_v4().to_string(),
            // A failed attempt writes two items: 12 of them fill a call.
            writes: Gather::new("BatchWriteItem", ledger::WRITES_PER_CALL),
            reads: Gather::new("BatchGetItem", ledger::READS_PER_CALL),
            hosts: breaker::FleetBreakers::default(),
            buckets: rate::FleetBuckets::default(),
        }
    }

    pub fn settings(&self) -> &StateSettings {
        &self.settings
    }

    fn table(&self) -> &str {
        &self.settings.table
    }

    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                let sdk = crate::wiring::sdk_config_from_env().await;
                client_for(&sdk)
            })
            .await
    }

    /// Reads one item (strongly consistent).
    async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, StateError> {
        let call = self
            .client()
            .await
            .get_item()
            .table_name(self.table())
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send();
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Err(_) => Err(StateError::timeout("GetItem")),
            Ok(Err(e)) => Err(StateError::from_sdk("GetItem", &e)),
            Ok(Ok(out)) => Ok(out.item),
        }
    }

    /// The TTL attribute for an item written now.
    fn ttl(&self) -> AttributeValue {
        let until = SystemTime::now() + self.settings.ttl;
        n(until
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs())
    }
}

/// A DynamoDB client for the fleet's table: calls bounded in time, and one
/// retry at most (a throttled table is not waited for: the batch goes on
/// without it).
pub fn client_for(sdk: &aws_config::SdkConfig) -> Client {
    let config = aws_sdk_dynamodb::config::Builder::from(sdk)
        .timeout_config(
            aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
                .operation_timeout(CALL_TIMEOUT)
                .operation_attempt_timeout(CALL_TIMEOUT / 2)
                .build(),
        )
        .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::standard().with_max_attempts(2))
        .build();
    Client::from_conf(config)
}

/// A string attribute.
fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

/// A number attribute.
fn n(value: impl std::fmt::Display) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// A number attribute of `item`, if it holds one.
fn number<T: std::str::FromStr>(item: &Item, name: &str) -> Option<T> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

/// A string attribute of `item`, if it holds one.
fn string<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)?.as_s().ok().map(String::as_str)
}

/// Milliseconds since the epoch, now.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}
