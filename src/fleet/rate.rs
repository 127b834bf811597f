//! Fleet-wide rate limits (spec §9): one token bucket per
//! `DESTINATION_POLICIES` pattern, in the table.
//!
//! A process leases a few tokens at a time (what its waiting records
//! need, at most a fifth of a second's worth, at least one) with a
//! conditional write on the bucket's item, and hands them to its records.
//! A lease is used within a second or dropped, so no process can hoard
//! tokens for a later burst: over any span of `t` seconds the fleet sends
//! at most `burst + rps × (t + 1)` requests to the pattern's hosts.
//!
//! A rate above [`SHARD_RPS`](crate::policy::destinations::SHARD_RPS) a second is split into shards, each an item
//! holding an equal part of the rate and burst; a process leases from its
//! own shard, then from the next one. An empty bucket is read again no
//! sooner than a fifth of a second later (each process at its own phase).
//! So no item takes more than a few hundred requests a second, however
//! many processes share it (docs/state.md has the simulation's figures).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::table::{Change, Condition, Key, Returns, Update};
use super::{n, number, FleetState, StateError};
use crate::policy::destinations::{lease_size, refill, shards, Rate, Token};

/// A lease not used within this is dropped.
const LEASE_LIFE: Duration = Duration::from_secs(1);

/// Tries at one lease when other processes write the bucket meanwhile.
const LEASE_TRIES: usize = 4;

/// An empty bucket is read again no sooner than this.
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, Default)]
pub struct FleetBuckets {
    buckets: Mutex<HashMap<String, Arc<Bucket>>>,
}

#[derive(Debug, Default)]
struct Bucket {
    local: Mutex<Leased>,
    /// One lease call at a time.
    leasing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Leased {
    tokens: u32,
    until: Option<Instant>,
    /// Records of this process waiting for a token.
    waiting: u32,
}

impl Bucket {
    /// Takes a leased token, if one is left: the grant, to be spent
    /// before the lease ends.
    fn take(&self) -> Option<Token> {
        let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        let until = local.until.filter(|u| Instant::now() < *u)?;
        local.tokens = local.tokens.checked_sub(1)?;
        Some(Token::Granted {
            spend_by: Some(until),
        })
    }
}

impl FleetState {
    /// A token of `pattern`'s bucket, waiting for one at most until `until`.
    pub async fn token(
        &self,
        pattern: &str,
        rate: Rate,
        until: Instant,
    ) -> Result<Token, StateError> {
        let bucket = {
            let mut buckets = self
                .buckets
                .buckets
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            Arc::clone(buckets.entry(pattern.to_owned()).or_default())
        };
        bucket
            .local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting += 1;
        let result = self.wait_for_token(&bucket, pattern, rate, until).await;
        bucket
            .local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting -= 1;
        result
    }

    async fn wait_for_token(
        &self,
        bucket: &Bucket,
        pattern: &str,
        rate: Rate,
        until: Instant,
    ) -> Result<Token, StateError> {
        loop {
            if let Some(granted) = bucket.take() {
                return Ok(granted);
            }
            // One lease call at a time; whoever waited may find tokens the
            // last one leased.
            let leasing = bucket.leasing.lock().await;
            if let Some(granted) = bucket.take() {
                return Ok(granted);
            }
            let demand = bucket
                .local
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .waiting;
            let wait = match self.lease(pattern, rate, demand).await? {
                Ok(tokens) => {
                    let mut local = bucket.local.lock().unwrap_or_else(|p| p.into_inner());
                    local.tokens = tokens;
                    local.until = Some(Instant::now() + LEASE_LIFE);
                    continue;
                }
                Err(wait) => wait.max(POLL) + self.phase(),
            };
            drop(leasing);
            if Instant::now() + wait > until {
                // The records ahead of this one will take the next tokens.
                let ahead = bucket
                    .local
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .waiting;
                let expected = wait + Duration::from_secs_f64(f64::from(ahead) / rate.rps);
                return Ok(Token::Deferred(expected));
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Leases up to `demand` tokens from the pattern's bucket: its own
    /// shard, then the next. `Ok(n)`, or `Err(wait)` when neither holds one
    /// (`wait`: until one will).
    async fn lease(
        &self,
        pattern: &str,
        rate: Rate,
        demand: u32,
    ) -> Result<Result<u32, Duration>, StateError> {
        let k = shards(rate);
        let home = self.home_shard(k);
        let part = rate.part(k);
        let mut wait = Duration::MAX;
        for shard in [home, (home + 1) % k].into_iter().take(k.min(2) as usize) {
            let key = match k {
                1 => format!("rate#{pattern}"),
                _ => format!("rate#{pattern}#{shard}"),
            };
            match self.lease_from(&key, part, demand).await? {
                Ok(tokens) => return Ok(Ok(tokens)),
                Err(w) => wait = wait.min(w),
            }
        }
        Ok(Err(wait))
    }

    /// This process's shard of `k`: the same for every pattern.
    fn home_shard(&self, k: u32) -> u32 {
        (self.owner_hash() % u64::from(k)) as u32
    }

    /// This process's phase in [`POLL`]: processes waiting on one bucket
    /// read it at different moments.
    fn phase(&self) -> Duration {
        POLL.mul_f64((self.owner_hash() % 1000) as f64 / 2000.0)
    }

    /// A stable hash of this process's name (FNV-1a).
    fn owner_hash(&self) -> u64 {
        self.owner.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// Leases up to `demand` tokens from one item of the bucket.
    ///
    async fn lease_from(
        &self,
        key: &str,
        rate: Rate,
        demand: u32,
    ) -> Result<Result<u32, Duration>, StateError> {
        for _ in 0..LEASE_TRIES {
            let item = self.get(key, "bucket").await?;
            let (tokens, at, leases) = match &item {
                None => (f64::from(rate.burst), None, None),
                Some(item) => (
                    number::<f64>(item, "tokens").unwrap_or(0.0),
                    number::<u64>(item, "at"),
                    number::<u64>(item, "leases"),
                ),
            };
            let now = self.now_ms().max(at.unwrap_or(0));
            let elapsed = Duration::from_millis(now - at.unwrap_or(now));
            let full = refill(rate, tokens, elapsed);
            if full < 1.0 {
                return Ok(Err(Duration::from_secs_f64((1.0 - full) / rate.rps)));
            }
            let take = (full.floor() as u32)
                .min(lease_size(rate))
                .min(demand.max(1));
            let left = full - f64::from(take);
            // Each lease counts itself: the condition holds only on the
            // item as read, even when `at` did not move (a writer whose
            // clock is behind, or two in the same millisecond).
            let condition = match (item.is_some(), leases, at) {
                (false, _, _) => Condition::Missing("pk"),
                (true, Some(leases), _) => Condition::Equals("leases", n(leases)),
                (true, None, Some(at)) => Condition::All(vec![
                    Condition::Missing("leases"),
                    Condition::Equals("at", n(at)),
                ]),
                (true, None, None) => Condition::Missing("leases"),
            };
            let update = Update {
                key: Key::new(key, "bucket"),
                changes: vec![
                    Change::Set("tokens", n(format!("{left:.6}"))),
                    Change::Set("at", n(now)),
                    Change::Set("leases", n(leases.unwrap_or(0) + 1)),
                    Change::Set("ttl", self.ttl()),
                ],
                condition: Some(condition),
                returns: Returns::Nothing,
            };
            match self.update(update).await {
                Ok(_) => return Ok(Ok(take)),
                Err(e) if e.is_conditional() => {
                    // Another process leased meanwhile: read again.
                }
                Err(e) => return Err(e),
            }
        }
        // Busy: try again shortly.
        Ok(Err(Duration::from_millis(50)))
    }
}
