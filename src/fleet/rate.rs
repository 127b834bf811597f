//! Fleet-wide rate limits (spec §9): one token bucket per
//! `DESTINATION_POLICIES` pattern, in the table.
//!
//! A process leases a few tokens at a time (a fifth of a second's worth,
//! at least one, at most the burst) with a conditional write on the
//! bucket's item, and hands them to its records. A lease is used within a
//! second or dropped, so no process can hoard tokens for a later burst:
//! over any span of `t` seconds the fleet sends at most
//! `burst + rps × (t + 1)` requests to the pattern's hosts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::table::{Change, Condition, Key, Returns, Update};
use super::{n, number, FleetState, StateError};
use crate::policy::destinations::{lease_size, refill, Rate, Token};

/// A lease not used within this is dropped.
const LEASE_LIFE: Duration = Duration::from_secs(1);

/// Tries at one lease when other processes write the bucket meanwhile.
const LEASE_TRIES: usize = 4;

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
    /// Takes a leased token, if one is left.
    fn take(&self) -> bool {
        self.local.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Leased {
    fn take(&mut self) -> bool {
        if self.tokens > 0 && self.until.is_some_and(|u| Instant::now() < u) {
            self.tokens -= 1;
            true
        } else {
            false
        }
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
            if bucket.take() {
                return Ok(Token::Granted);
            }
            // One lease call at a time; whoever waited may find tokens the
            // last one leased.
            let leasing = bucket.leasing.lock().await;
            if bucket.take() {
                return Ok(Token::Granted);
            }
            let wait = match self.lease(pattern, rate).await? {
                Ok(tokens) => {
                    let mut local = bucket.local.lock().unwrap_or_else(|p| p.into_inner());
                    local.tokens = tokens;
                    local.until = Some(Instant::now() + LEASE_LIFE);
                    continue;
                }
                Err(wait) => wait,
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

    /// Leases tokens from the bucket: `Ok(n)`, or `Err(wait)` when fewer
    /// than one is there (`wait`: until one will be).
    ///
    /// The bucket's time `at` only moves forward: a process whose clock is
    /// behind the last writer's refills nothing until its clock catches up,
    /// so clocks that differ by `s` add at most `rps × s` tokens once, not
    /// at every change of writer.
    async fn lease(&self, pattern: &str, rate: Rate) -> Result<Result<u32, Duration>, StateError> {
        let key = format!("rate#{pattern}");
        for _ in 0..LEASE_TRIES {
            let item = self.get(&key, "bucket").await?;
            let (tokens, at) = match &item {
                None => (f64::from(rate.burst), None),
                Some(item) => (
                    number::<f64>(item, "tokens").unwrap_or(0.0),
                    number::<u64>(item, "at"),
                ),
            };
            let now = self.now_ms().max(at.unwrap_or(0));
            let elapsed = Duration::from_millis(now - at.unwrap_or(now));
            let full = refill(rate, tokens, elapsed);
            if full < 1.0 {
                return Ok(Err(Duration::from_secs_f64((1.0 - full) / rate.rps)));
            }
            let take = (full.floor() as u32).min(lease_size(rate));
            let left = full - f64::from(take);
            let condition = match at {
                None => Condition::Missing("pk"),
                Some(at) => Condition::Equals("at", n(at)),
            };
            let update = Update {
                key: Key::new(&key, "bucket"),
                changes: vec![
                    Change::Set("tokens", n(format!("{left:.6}"))),
                    Change::Set("at", n(now)),
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
