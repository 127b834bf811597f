//! The table under the fleet's state, as small as the fleet uses it: a
//! consistent read, a conditional update, batched puts and reads, and a
//! query by key prefix. Conditions and updates are values, not expression
//! strings, so the same breaker, bucket and ledger code runs against
//! DynamoDB ([`super::dynamodb`]) and against the deterministic simulation
//! (`retryq::sim`), which applies them as DynamoDB does.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::AttributeValue;

use super::StateError;

/// A DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// An item's key: partition key `pk`, sort key `sk`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub pk: String,
    pub sk: String,
}

impl Key {
    pub fn new(pk: impl Into<String>, sk: impl Into<String>) -> Key {
        Key {
            pk: pk.into(),
            sk: sk.into(),
        }
    }

    /// The key of `item`, if it has one.
    pub fn of(item: &Item) -> Option<Key> {
        let part = |name: &str| item.get(name)?.as_s().ok().cloned();
        Some(Key {
            pk: part("pk")?,
            sk: part("sk")?,
        })
    }
}

/// A condition on an item, as DynamoDB evaluates a `ConditionExpression`
/// (a missing attribute compares as false).
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Exists(&'static str),
    Missing(&'static str),
    Equals(&'static str, AttributeValue),
    /// The attribute is a number below the value.
    Below(&'static str, AttributeValue),
    /// The attribute is a number at most the value.
    AtMost(&'static str, AttributeValue),
    All(Vec<Condition>),
    Any(Vec<Condition>),
}

/// One change of an `UpdateItem`.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Set(&'static str, AttributeValue),
    /// Adds a number (an absent attribute counts as 0).
    Add(&'static str, AttributeValue),
    Remove(&'static str),
}

/// What an update returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returns {
    Nothing,
    /// The item before the update (`ALL_OLD`).
    Old,
    /// The item after it (`ALL_NEW`).
    New,
}

/// One `UpdateItem`: it creates the item when absent, as DynamoDB does.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub key: Key,
    pub changes: Vec<Change>,
    pub condition: Option<Condition>,
    pub returns: Returns,
}

/// An answer of the table, later.
pub type Call<'a, T> = Pin<Box<dyn Future<Output = Result<T, StateError>> + Send + 'a>>;

/// The operations the fleet makes. Each is one call, bounded in time by
/// the implementation; a condition that does not hold is a [`StateError`]
/// for which [`StateError::is_conditional`] is true.
pub trait Table: Send + Sync + std::fmt::Debug {
    /// Reads one item, strongly consistent.
    fn get(&self, key: Key) -> Call<'_, Option<Item>>;
    fn update(&self, update: Update) -> Call<'_, Option<Item>>;
    /// Puts items (one `BatchWriteItem`): the ones left unprocessed.
    fn put_batch(&self, items: Vec<Item>) -> Call<'_, Vec<Item>>;
    /// Reads items (one `BatchGetItem`, strongly consistent); keys left
    /// unprocessed are an error.
    fn get_batch(&self, keys: Vec<Key>) -> Call<'_, Vec<Item>>;
    /// Every item of partition `pk` whose sort key begins with `prefix`,
    /// in sort-key order.
    fn query(&self, pk: String, prefix: String) -> Call<'_, Vec<Item>>;
}

/// The wall clock the fleet's items are written with (lease ends, bucket
/// times, TTLs), in milliseconds since the epoch. Processes' clocks differ
/// a little; the simulation gives each its own.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> u64;
}

/// The system's clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64
    }
}
