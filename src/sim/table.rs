//! An in-memory table that answers as DynamoDB does, for the simulation:
//! conditional updates (a condition that does not hold changes nothing and
//! fails with `ConditionalCheckFailedException`), batched puts that leave
//! throttled items unprocessed, per-item throughput limits, latency, and
//! injected faults: throttled calls, failed batch writes, and answers lost
//! after the write was made. Time is tokio's (paused in the simulation).

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use tokio::time::Instant;

use crate::fleet::table::{Call, Change, Condition, Item, Key, Returns, Table, Update};
use crate::fleet::StateError;

/// What the table does besides answering.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    /// Each call takes between these, in milliseconds.
    pub latency_ms: (u64, u64),
    /// Writes an item takes in one second before it is throttled
    /// (DynamoDB's partition limit: about 1,000).
    pub writes_per_item: u32,
    /// Reads an item takes in one second (about 3,000 strongly consistent).
    pub reads_per_item: u32,
    /// Share of calls throttled whatever the load.
    pub throttled: f64,
    /// Share of `BatchWriteItem` calls that fail (the ledger's writes).
    pub batch_writes_fail: f64,
    /// Share of writes made whose answer is lost (the caller sees a
    /// timeout).
    pub answers_lost: f64,
}

impl Faults {
    /// A healthy table: latency, and DynamoDB's per-item limits.
    pub fn healthy() -> Faults {
        Faults {
            latency_ms: (2, 12),
            writes_per_item: 1_000,
            reads_per_item: 3_000,
            throttled: 0.0,
            batch_writes_fail: 0.0,
            answers_lost: 0.0,
        }
    }
}

/// The table's figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableFigures {
    /// Requests (reads and writes) on the busiest item in its busiest
    /// second, and that item's key.
    pub hottest_per_second: u32,
    pub hottest_item: String,
    /// Writes on the busiest-written item in its busiest second (the
    /// partition limit is about 1,000), and that item's key.
    pub hottest_writes_per_second: u32,
    pub hottest_written_item: String,
    pub conditional_writes: u64,
    pub conditional_failed: u64,
    pub throttled: u64,
    pub calls: u64,
}

#[derive(Debug)]
pub struct SimTable {
    faults: Faults,
    started: Instant,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    items: BTreeMap<Key, Item>,
    /// Requests per item in the current second: (second, reads, writes).
    load: HashMap<Key, (u64, u32, u32)>,
    rng: fastrand::Rng,
    figures: TableFigures,
}

/// Why one item's request was refused.
enum Refusal {
    Throttled,
}

impl SimTable {
    pub fn new(faults: Faults, seed: u64) -> SimTable {
        SimTable {
            faults,
            started: Instant::now(),
            state: Mutex::new(State {
                items: BTreeMap::new(),
                load: HashMap::new(),
                rng: fastrand::Rng::with_seed(seed),
                figures: TableFigures::default(),
            }),
        }
    }

    pub fn figures(&self) -> TableFigures {
        self.lock().figures.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Half a call's latency: the time before it is applied, and after.
    fn half_latency(&self) -> Duration {
        let (low, high) = self.faults.latency_ms;
        let ms = self.lock().rng.u64(low..=high.max(low));
        Duration::from_micros(ms * 500)
    }

    /// Runs `apply` on the table half a latency after the call, and
    /// answers half a latency later: throttled first if the call is.
    async fn call<T>(
        &self,
        operation: &'static str,
        apply: impl FnOnce(&mut State, &Faults, u64) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        tokio::time::sleep(self.half_latency()).await;
        let answer = {
            let second = self.started.elapsed().as_secs();
            let mut state = self.lock();
            state.figures.calls += 1;
            if state.rng.f64() < self.faults.throttled {
                state.figures.throttled += 1;
                Err(throttled(operation))
            } else {
                apply(&mut state, &self.faults, second)
            }
        };
        tokio::time::sleep(self.half_latency()).await;
        answer
    }
}

fn throttled(operation: &'static str) -> StateError {
    StateError {
        operation,
        detail: "ProvisionedThroughputExceededException: the item's throughput is exceeded".into(),
    }
}

fn lost(operation: &'static str) -> StateError {
    StateError::timeout(operation)
}

impl State {
    /// Counts a request on `key` this second: refused past the item's
    /// limit.
    fn touch(
        &mut self,
        key: &Key,
        write: bool,
        faults: &Faults,
        second: u64,
    ) -> Result<(), Refusal> {
        let load = self.load.entry(key.clone()).or_insert((second, 0, 0));
        if load.0 != second {
            *load = (second, 0, 0);
        }
        let (limit, count) = if write {
            (faults.writes_per_item, &mut load.2)
        } else {
            (faults.reads_per_item, &mut load.1)
        };
        if *count >= limit {
            self.figures.throttled += 1;
            return Err(Refusal::Throttled);
        }
        *count += 1;
        let (total, writes) = (load.1 + load.2, load.2);
        if writes > self.figures.hottest_writes_per_second {
            self.figures.hottest_writes_per_second = writes;
            self.figures.hottest_written_item = format!("{}/{}", key.pk, key.sk);
        }
        if total > self.figures.hottest_per_second {
            self.figures.hottest_per_second = total;
            self.figures.hottest_item = format!("{}/{}", key.pk, key.sk);
        }
        Ok(())
    }

    fn update(
        &mut self,
        u: &Update,
        faults: &Faults,
        second: u64,
    ) -> Result<Option<Item>, StateError> {
        if self.touch(&u.key, true, faults, second).is_err() {
            return Err(throttled("UpdateItem"));
        }
        let old = self.items.get(&u.key).cloned();
        if let Some(condition) = &u.condition {
            self.figures.conditional_writes += 1;
            if !holds(condition, old.as_ref()) {
                self.figures.conditional_failed += 1;
                return Err(StateError {
                    operation: "UpdateItem",
                    detail: "ConditionalCheckFailedException: The conditional request failed"
                        .into(),
                });
            }
        }
        let mut new = old.clone().unwrap_or_else(|| {
            HashMap::from([
                ("pk".to_owned(), AttributeValue::S(u.key.pk.clone())),
                ("sk".to_owned(), AttributeValue::S(u.key.sk.clone())),
            ])
        });
        for change in &u.changes {
            match change {
                Change::Set(a, v) => {
                    new.insert((*a).to_owned(), v.clone());
                }
                Change::Add(a, v) => {
                    let sum = number(new.get(*a)).unwrap_or(0.0) + number(Some(v)).unwrap_or(0.0);
                    new.insert((*a).to_owned(), AttributeValue::N(format!("{sum}")));
                }
                Change::Remove(a) => {
                    new.remove(*a);
                }
            }
        }
        self.items.insert(u.key.clone(), new.clone());
        if self.rng.f64() < faults.answers_lost {
            return Err(lost("UpdateItem"));
        }
        Ok(match u.returns {
            Returns::Nothing => None,
            Returns::Old => old,
            Returns::New => Some(new),
        })
    }
}

fn number(value: Option<&AttributeValue>) -> Option<f64> {
    value?.as_n().ok()?.parse().ok()
}

/// `attribute` compared with `value` as DynamoDB compares: numbers by
/// value, strings by bytes; `None` when absent or of another type.
fn compare(item: Option<&Item>, attribute: &str, value: &AttributeValue) -> Option<Ordering> {
    let have = item?.get(attribute)?;
    match (have, value) {
        (AttributeValue::N(_), AttributeValue::N(_)) => {
            number(Some(have))?.partial_cmp(&number(Some(value))?)
        }
        (AttributeValue::S(a), AttributeValue::S(b)) => Some(a.cmp(b)),
        (a, b) if a == b => Some(Ordering::Equal),
        _ => None,
    }
}

/// Does `condition` hold on `item` (`None`: no such item)?
pub(crate) fn holds(condition: &Condition, item: Option<&Item>) -> bool {
    let has = |a: &str| item.is_some_and(|i| i.contains_key(a));
    match condition {
        Condition::Exists(a) => has(a),
        Condition::Missing(a) => !has(a),
        Condition::Equals(a, v) => compare(item, a, v) == Some(Ordering::Equal),
        Condition::Below(a, v) => compare(item, a, v) == Some(Ordering::Less),
        Condition::AtMost(a, v) => {
            matches!(compare(item, a, v), Some(Ordering::Less | Ordering::Equal))
        }
        Condition::All(parts) => parts.iter().all(|p| holds(p, item)),
        Condition::Any(parts) => parts.iter().any(|p| holds(p, item)),
    }
}

impl Table for SimTable {
    fn get(&self, key: Key) -> Call<'_, Option<Item>> {
        Box::pin(self.call("GetItem", move |state, faults, second| {
            if state.touch(&key, false, faults, second).is_err() {
                return Err(throttled("GetItem"));
            }
            Ok(state.items.get(&key).cloned())
        }))
    }

    fn update(&self, update: Update) -> Call<'_, Option<Item>> {
        Box::pin(self.call("UpdateItem", move |state, faults, second| {
            state.update(&update, faults, second)
        }))
    }

    fn put_batch(&self, items: Vec<Item>) -> Call<'_, Vec<Item>> {
        Box::pin(self.call("BatchWriteItem", move |state, faults, second| {
            if items.len() > 25 {
                return Err(StateError {
                    operation: "BatchWriteItem",
                    detail: "ValidationException: more than 25 requests".into(),
                });
            }
            if state.rng.f64() < faults.batch_writes_fail {
                state.figures.throttled += 1;
                return Err(throttled("BatchWriteItem"));
            }
            let mut unprocessed = Vec::new();
            for item in items {
                let Some(key) = Key::of(&item) else { continue };
                match state.touch(&key, true, faults, second) {
                    Ok(()) => {
                        state.items.insert(key, item);
                    }
                    Err(Refusal::Throttled) => unprocessed.push(item),
                }
            }
            if state.rng.f64() < faults.answers_lost {
                return Err(lost("BatchWriteItem"));
            }
            Ok(unprocessed)
        }))
    }

    fn get_batch(&self, keys: Vec<Key>) -> Call<'_, Vec<Item>> {
        Box::pin(self.call("BatchGetItem", move |state, faults, second| {
            let mut found = Vec::new();
            for key in keys {
                if state.touch(&key, false, faults, second).is_err() {
                    return Err(StateError {
                        operation: "BatchGetItem",
                        detail: "keys left unprocessed".into(),
                    });
                }
                found.extend(state.items.get(&key).cloned());
            }
            Ok(found)
        }))
    }

    fn query(&self, pk: String, prefix: String) -> Call<'_, Vec<Item>> {
        Box::pin(self.call("Query", move |state, _, _| {
            Ok(state
                .items
                .range(Key::new(pk.clone(), prefix.clone())..)
                .take_while(|(k, _)| k.pk == pk && k.sk.starts_with(&prefix))
                .map(|(_, item)| item.clone())
                .collect())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(v: u64) -> AttributeValue {
        AttributeValue::N(v.to_string())
    }

    #[test]
    fn conditions_compare_as_dynamodb_does() {
        let item: Item = HashMap::from([
            ("probeUntil".to_owned(), n(10)),
            ("prober".to_owned(), AttributeValue::S("me".into())),
        ]);
        let below = |v| Condition::Below("probeUntil", n(v));
        assert!(holds(&below(11), Some(&item)));
        assert!(!holds(&below(10), Some(&item)));
        assert!(holds(&Condition::AtMost("probeUntil", n(10)), Some(&item)));
        assert!(!holds(&Condition::Below("openUntil", n(10)), Some(&item)));
        assert!(holds(&Condition::Missing("openUntil"), None));
        assert!(!holds(
            &Condition::Equals("prober", AttributeValue::S("you".into())),
            Some(&item)
        ));
        // 9 < 10 as numbers, not as strings.
        assert!(holds(&Condition::Below("probeUntil", n(100)), Some(&item)));
    }
}
