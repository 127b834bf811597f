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
//! | a pause ([`pause`], §13.3) | `pause` | `pattern#<pattern>` |
//!
//! **Cost.** A batch that only delivers makes one request at most: the
//! pauses' `Query`, at most once a second per process (with
//! `LEDGER=failures`). Ledger writes are gathered into `BatchWriteItem`
//! calls and reads into `BatchGetItem` calls, and a read is made only for a
//! record received before. A breaker's state is read at most once a second
//! per host and process; rate-limit tokens are leased a fifth of a
//! second's worth at a time.
//!
//! **Failure.** Every call is bounded in time. A call that fails returns a
//! [`StateError`]; the processor then goes on without the table for the
//! rest of that batch and says so once in the log: records that need a
//! rate token or a probe wait (using up no attempt), a failed attempt is
//! carried over with its count, and attempts are counted by receives.
//!
//! The table is a small trait ([`table::Table`]): DynamoDB in production,
//! an in-memory table in the fleet simulation (`make sim`).

pub mod breaker;
pub mod dynamodb;
pub mod ledger;
pub mod pause;
pub mod rate;
pub mod table;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;

use crate::config::StateSettings;
use crate::gather::{Gather, Unanswered};
pub use dynamodb::client_for;
pub use table::Item;
use table::{Clock, Key, SystemClock, Table, Update};

/// Longest a DynamoDB call may take, retries included.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

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
    /// A conditional write whose condition did not hold.
    pub fn is_conditional(&self) -> bool {
        self.detail.starts_with("ConditionalCheckFailed")
    }

    pub(crate) fn timeout(operation: &'static str) -> StateError {
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
    table: Arc<dyn Table>,
    clock: Arc<dyn Clock>,
    /// Names this process in a probe lease.
    owner: String,
    writes: Gather<Vec<Item>, (), StateError>,
    reads: Gather<String, u32, StateError>,
    /// Carry marks (§12.5) of redelivered messages, read with others.
    carried_reads: Gather<String, bool, StateError>,
    hosts: breaker::FleetBreakers,
    buckets: rate::FleetBuckets,
    pauses: pause::FleetPauses,
}

impl FleetState {
    /// The table `settings` names, its client built from the standard AWS
    /// environment on the first call.
    pub fn from_env(settings: StateSettings) -> FleetState {
        let table = dynamodb::DynamoTable::from_env(settings.table.clone());
        FleetState::with_table(settings, Arc::new(table), Arc::new(SystemClock))
    }

    /// The table with this client.
    pub fn new(settings: StateSettings, client: aws_sdk_dynamodb::Client) -> FleetState {
        let table = dynamodb::DynamoTable::new(settings.table.clone(), client);
        FleetState::with_table(settings, Arc::new(table), Arc::new(SystemClock))
    }

    /// The fleet's state in `table`, its items timed by `clock`.
    pub fn with_table(
        settings: StateSettings,
        table: Arc<dyn Table>,
        clock: Arc<dyn Clock>,
    ) -> FleetState {
        FleetState {
            settings,
            table,
            clock,
            owner: uuid::Uuid::new_v4().to_string(),
            // A failed attempt writes two items: 12 of them fill a call.
            writes: Gather::new("BatchWriteItem", ledger::WRITES_PER_CALL),
            reads: Gather::new("BatchGetItem", ledger::READS_PER_CALL),
            carried_reads: Gather::new("BatchGetItem", ledger::READS_PER_CALL),
            hosts: breaker::FleetBreakers::default(),
            buckets: rate::FleetBuckets::default(),
            pauses: pause::FleetPauses::default(),
        }
    }

    /// Keeping what it knows of at most `limit` hosts (`HOST_STATE_LIMIT`).
    pub fn with_host_limit(mut self, limit: usize) -> FleetState {
        self.hosts = breaker::FleetBreakers::with_limit(limit);
        self
    }

    /// How many hosts' breakers it keeps.
    pub fn hosts_kept(&self) -> usize {
        self.hosts.hosts_kept()
    }

    /// The same, naming this process `owner` in probe leases.
    pub fn owned_by(mut self, owner: String) -> FleetState {
        self.owner = owner;
        self
    }

    pub fn settings(&self) -> &StateSettings {
        &self.settings
    }

    /// Reads one item (strongly consistent).
    async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, StateError> {
        self.table.get(Key::new(pk, sk)).await
    }

    async fn update(&self, update: Update) -> Result<Option<Item>, StateError> {
        self.table.update(update).await
    }

    /// The TTL attribute for an item written now.
    fn ttl(&self) -> AttributeValue {
        n((self.clock.now_ms() / 1000).saturating_add(self.settings.ttl.as_secs()))
    }

    /// This process's wall clock, in milliseconds since the epoch.
    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
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
