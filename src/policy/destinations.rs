//! `DESTINATION_POLICIES`: per-destination settings (spec §9), pure.
//!
//! A JSON object from host pattern (the syntax of `ALLOWED_DESTINATIONS`)
//! to the settings that differ for the hosts it matches:
//!
//! ```
//! use retryq::policy::destinations::DestinationPolicies;
//! use retryq::policy::RetryPolicy;
//! use retryq::policy::backoff::Backoff;
//! use std::time::Duration;
//!
//! let base = RetryPolicy {
//!     max_attempts: 5,
//!     backoff: Backoff::new(Duration::from_secs(10), Duration::from_secs(900)).unwrap(),
//!     retry_after_max: Duration::from_secs(43_200),
//! };
//! let policies = DestinationPolicies::parse(r#"{
//!     "*.partner.com": {"rps": 5, "maxAttempts": 8},
//!     "slow.partner.com": {"rps": 1, "retryOn": [404]}
//! }"#, &base).unwrap();
//! let url = url::Url::parse("https://slow.partner.com/orders").unwrap();
//! let rules = policies.for_url(&url).unwrap();
//! assert_eq!(rules.pattern, "slow.partner.com"); // the most specific pattern wins
//! assert_eq!(rules.retry.max_attempts, 5);       // fields are not merged across patterns
//! assert!(rules.retry_on.contains(&404));
//! ```
//!
//! Every field is optional; an absent one keeps the processor's setting.
//! The most specific pattern that matches decides alone (an exact host
//! beats a wildcard, a longer wildcard beats a shorter one, a port beats
//! any port). The rate (`rps`, `burst`) is one token bucket per pattern:
//! every host the pattern matches shares it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::backoff::Backoff;
use super::hosts::HostPattern;
use super::RetryPolicy;

/// Largest `rps`, `burst` and `maxConcurrency`.
const MAX_RATE: f64 = 100_000.0;
/// Smallest `rps`: one request per SQS visibility limit (12 hours). A
/// slower rate would make a deferred record's wait longer than SQS can
/// hide it (and its wait overflow a `Duration`).
const MIN_RATE: f64 = 1.0 / 43_200.0;
/// Longest backoff or cool-down, in seconds: SQS's visibility limit.
const MAX_SECONDS: u64 = 43_200;

/// The parsed `DESTINATION_POLICIES`, most specific pattern first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DestinationPolicies {
    entries: Vec<(HostPattern, DestinationRules)>,
}

/// What one pattern sets, resolved against the processor's own settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationRules {
    /// The pattern as written: names the rate bucket and appears in logs.
    pub pattern: String,
    /// `MAX_ATTEMPTS` and the backoff, with this destination's overrides.
    pub retry: RetryPolicy,
    /// Statuses retried for this destination besides those of spec §3.
    pub retry_on: Vec<u16>,
    /// Requests per second across the fleet, and how many may go at once.
    pub rate: Option<Rate>,
    /// Requests in flight to one of these hosts, per process.
    pub max_concurrency: Option<usize>,
    /// The circuit breaker for these hosts (replaces `BREAKER_*`).
    pub breaker: Option<BreakerSettings>,
}

/// A token bucket: `rps` tokens a second, holding at most `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub rps: f64,
    pub burst: u32,
}

/// A circuit breaker's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive retryable failures that open it.
    pub threshold: u32,
    /// How long it stays open before one probe.
    pub cooldown: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Entry {
    rps: Option<f64>,
    burst: Option<u32>,
    max_concurrency: Option<u32>,
    max_attempts: Option<u32>,
    backoff: Option<BackoffEntry>,
    breaker: Option<BreakerEntry>,
    #[serde(default)]
    retry_on: Vec<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BackoffEntry {
    base_seconds: Option<u64>,
    max_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BreakerEntry {
    threshold: Option<u32>,
    cooldown_seconds: Option<u64>,
}

impl DestinationPolicies {
    /// No policies.
    pub const fn none() -> DestinationPolicies {
        DestinationPolicies {
            entries: Vec::new(),
        }
    }

    /// Parses the JSON object; `base` is the processor's own retry policy,
    /// which absent fields keep. An error names the pattern and the field.
    pub fn parse(json: &str, base: &RetryPolicy) -> Result<DestinationPolicies, String> {
        let raw: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(json).map_err(|e| format!("not a JSON object: {e}"))?;
        let mut entries = Vec::with_capacity(raw.len());
        for (pattern, value) in raw {
            let at = |field: &str, why: String| format!("{pattern:?}.{field}: {why}");
            let host: HostPattern = pattern.parse().map_err(|e| format!("{pattern:?}: {e}"))?;
            let entry: Entry = serde_path_to_error::deserialize(value).map_err(|e| {
                let path = e.path().to_string();
                at(&path, e.into_inner().to_string())
            })?;
            let rules = entry
                .resolve(&pattern, base)
                .map_err(|(field, why)| at(field, why))?;
            entries.push((host, rules));
        }
        entries.sort_by_key(|(host, _)| std::cmp::Reverse(host.specificity()));
        Ok(DestinationPolicies { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The rules of the most specific pattern matching `url`'s host.
    pub fn for_url(&self, url: &Url) -> Option<&DestinationRules> {
        let host = url.host_str()?;
        let port = url.port_or_known_default();
        self.entries
            .iter()
            .find(|(pattern, _)| pattern.matches(host, port))
            .map(|(_, rules)| rules)
    }

    /// Every pattern's rules.
    pub fn iter(&self) -> impl Iterator<Item = &DestinationRules> {
        self.entries.iter().map(|(_, rules)| rules)
    }
}

impl Entry {
    fn resolve(
        self,
        pattern: &str,
        base: &RetryPolicy,
    ) -> Result<DestinationRules, (&'static str, String)> {
        let mut retry = *base;
        if let Some(n) = self.max_attempts {
            if n == 0 {
                return Err(("maxAttempts", "must be at least 1".into()));
            }
            retry.max_attempts = n;
        }
        if let Some(b) = self.backoff {
            let base_s = b.base_seconds.unwrap_or(base.backoff.base().as_secs());
            let max_s = b
                .max_seconds
                .unwrap_or(base.backoff.max().as_secs().max(base_s));
            for (field, value) in [
                ("backoff.baseSeconds", base_s),
                ("backoff.maxSeconds", max_s),
            ] {
                if value == 0 || value > MAX_SECONDS {
                    return Err((field, format!("must be from 1 to {MAX_SECONDS}")));
                }
            }
            retry.backoff = Backoff::new(Duration::from_secs(base_s), Duration::from_secs(max_s))
                .map_err(|e| ("backoff", e.to_string()))?;
        }
        for &status in &self.retry_on {
            if !(300..=599).contains(&status) {
                return Err((
                    "retryOn",
                    format!("{status} is not a 3xx, 4xx or 5xx status (a 2xx is always delivered)"),
                ));
            }
        }
        let rate = match self.rps {
            None if self.burst.is_some() => return Err(("burst", "needs rps".into())),
            None => None,
            Some(rps) if !(MIN_RATE..=MAX_RATE).contains(&rps) => {
                return Err((
                    "rps",
                    format!(
                    "must be at least 1/43200 (one request per 12 hours) and at most {MAX_RATE}"
                ),
                ))
            }
            Some(rps) => {
                let burst = match self.burst {
                    Some(b) if b == 0 || f64::from(b) > MAX_RATE => {
                        return Err(("burst", format!("must be from 1 to {MAX_RATE}")))
                    }
                    Some(b) => b,
                    // One second's worth, and at least one token.
                    None => rps.ceil().max(1.0) as u32,
                };
                Some(Rate { rps, burst })
            }
        };
        let max_concurrency = match self.max_concurrency {
            Some(n) if n == 0 || f64::from(n) > MAX_RATE => {
                return Err(("maxConcurrency", format!("must be from 1 to {MAX_RATE}")))
            }
            n => n.map(|n| n as usize),
        };
        let breaker = match self.breaker {
            None => None,
            Some(b) => {
                let threshold = b.threshold.unwrap_or(5);
                let cooldown = b.cooldown_seconds.unwrap_or(30);
                if threshold == 0 {
                    return Err(("breaker.threshold", "must be at least 1".into()));
                }
                if cooldown == 0 || cooldown > MAX_SECONDS {
                    return Err((
                        "breaker.cooldownSeconds",
                        format!("must be from 1 to {MAX_SECONDS}"),
                    ));
                }
                Some(BreakerSettings {
                    threshold,
                    cooldown: Duration::from_secs(cooldown),
                })
            }
        };
        Ok(DestinationRules {
            pattern: pattern.to_owned(),
            retry,
            retry_on: self.retry_on,
            rate,
            max_concurrency,
            breaker,
        })
    }
}

/// What became of a request for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// Go ahead, sending by `spend_by` if it is given (a fleet lease's
    /// tokens are spent within its life or not at all, so that the fleet
    /// keeps to `burst + rps × (t + 1)` however long the wait after the
    /// token).
    Granted {
        spend_by: Option<tokio::time::Instant>,
    },
    /// None before the record must answer: defer it for about this long.
    Deferred(Duration),
}

/// A bucket's fill after `elapsed`, from `tokens`: `rps` a second, at most
/// `burst`.
pub fn refill(rate: Rate, tokens: f64, elapsed: Duration) -> f64 {
    (tokens + elapsed.as_secs_f64() * rate.rps).min(f64::from(rate.burst))
}

/// Tokens leased at a time for `rate`.
pub fn lease_size(rate: Rate) -> u32 {
    ((rate.rps * 0.2).ceil() as u32).clamp(1, rate.burst.max(1))
}

/// Requests a second one item of a bucket is sized for. Each lease is a
/// read and a conditional write of the item, and DynamoDB takes about
/// 1,000 writes a second on one: a rate above this is split into shards.
pub const SHARD_RPS: f64 = 100.0;

/// How many items a pattern's bucket is split into: one per [`SHARD_RPS`]
/// of its rate, never more than its burst (each shard holds a token).
pub fn shards(rate: Rate) -> u32 {
    ((rate.rps / SHARD_RPS).ceil() as u32).clamp(1, rate.burst.max(1))
}

impl Rate {
    /// One of `shards` equal parts of the rate: together they never send
    /// more than the whole (`burst + rps × t`).
    pub fn part(self, shards: u32) -> Rate {
        let shards = shards.max(1);
        Rate {
            rps: self.rps / f64::from(shards),
            burst: (self.burst / shards).max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn base() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            backoff: Backoff::new(Duration::from_secs(10), Duration::from_secs(900)).unwrap(),
            retry_after_max: Duration::from_secs(3600),
        }
    }

    fn rules<'a>(p: &'a DestinationPolicies, url: &str) -> Option<&'a DestinationRules> {
        p.for_url(&Url::parse(url).unwrap())
    }

    #[test]
    fn the_most_specific_pattern_wins_whatever_the_order() {
        let p = DestinationPolicies::parse(
            r#"{"*.example.com": {"maxAttempts": 1}, "*.eu.example.com": {"maxAttempts": 2},
                "api.eu.example.com": {"maxAttempts": 3}, "api.eu.example.com:8443": {"maxAttempts": 4}}"#,
            &base(),
        )
        .unwrap();
        let n = |url| rules(&p, url).map(|r| r.retry.max_attempts);
        assert_eq!(n("https://api.eu.example.com:8443/"), Some(4));
        assert_eq!(n("https://api.eu.example.com/"), Some(3));
        assert_eq!(n("https://web.eu.example.com/"), Some(2));
        assert_eq!(n("https://us.example.com/"), Some(1));
        assert_eq!(
            n("https://example.com/"),
            None,
            "a wildcard needs a subdomain"
        );
        assert_eq!(n("https://other.org/"), None);
    }

    #[test]
    fn absent_fields_keep_the_processors_settings() {
        let p =
            DestinationPolicies::parse(r#"{"a.com": {"backoff": {"baseSeconds": 2}}}"#, &base())
                .unwrap();
        let r = rules(&p, "https://a.com/").unwrap();
        assert_eq!(r.retry.max_attempts, 5);
        assert_eq!(r.retry.backoff.base(), Duration::from_secs(2));
        assert_eq!(r.retry.backoff.max(), Duration::from_secs(900));
        assert_eq!((r.rate, r.breaker, r.max_concurrency), (None, None, None));
    }

    #[test]
    fn burst_defaults_to_one_seconds_worth() {
        let p = DestinationPolicies::parse(
            r#"{"a.com": {"rps": 2.5}, "b.com": {"rps": 0.2}, "c.com": {"rps": 5, "burst": 1}}"#,
            &base(),
        )
        .unwrap();
        let burst = |url| rules(&p, url).unwrap().rate.unwrap().burst;
        assert_eq!(burst("https://a.com/"), 3);
        assert_eq!(burst("https://b.com/"), 1);
        assert_eq!(burst("https://c.com/"), 1);
    }

    #[test]
    fn errors_name_the_pattern_and_the_field() {
        for (json, expected) in [
            (r#"{"a.com": {"rps": 0}}"#, r#""a.com".rps"#),
            (r#"{"a.com": {"rps": 1e-300}}"#, r#""a.com".rps"#),
            (r#"{"a.com": {"rps": 0.00002}}"#, r#""a.com".rps"#),
            (r#"{"a.com": {"burst": 3}}"#, r#""a.com".burst"#),
            (r#"{"a.com": {"retryOn": [200]}}"#, r#""a.com".retryOn"#),
            (r#"{"a.com": {"retryOn": ["x"]}}"#, r#""a.com".retryOn[0]"#),
            (
                r#"{"a.com": {"backoff": {"baseSeconds": 0}}}"#,
                "backoff.baseSeconds",
            ),
            (
                r#"{"a.com": {"backoff": {"maxSeconds": 99999}}}"#,
                "backoff.maxSeconds",
            ),
            (
                r#"{"a.com": {"breaker": {"threshold": 0}}}"#,
                "breaker.threshold",
            ),
            (r#"{"a.com": {"maxConcurrency": 0}}"#, "maxConcurrency"),
            (r#"{"a.com": {"maxAttempts": 0}}"#, "maxAttempts"),
            (r#"{"a.com": {"rsp": 1}}"#, "rsp"),
            (r#"{"https://a.com/": {}}"#, "not a URL"),
            (r#"[1]"#, "not a JSON object"),
        ] {
            let err = DestinationPolicies::parse(json, &base()).unwrap_err();
            assert!(err.contains(expected), "{json}: {err}");
        }
    }

    proptest! {
        #[test]
        fn any_rate_within_bounds_parses_and_keeps_a_positive_burst(rps in (1.0 / 43_200.0)..100_000.0f64) {
            let p = DestinationPolicies::parse(&format!(r#"{{"a.com": {{"rps": {rps}}}}}"#), &base()).unwrap();
            let rate = rules(&p, "https://a.com/").unwrap().rate.unwrap();
            prop_assert!(rate.burst >= 1 && f64::from(rate.burst) >= rps.min(100_000.0).floor());
        }
    }

    proptest! {
        #[test]
        fn a_bucket_never_holds_more_than_its_burst(
            rps in 0.01f64..10_000.0, burst in 1u32..10_000, tokens in 0.0f64..10_000.0, ms in 0u64..10_000_000,
        ) {
            let rate = Rate { rps, burst };
            let full = refill(rate, tokens.min(f64::from(burst)), Duration::from_millis(ms));
            prop_assert!(full <= f64::from(burst));
            prop_assert!(full >= tokens.min(f64::from(burst)));
            let lease = lease_size(rate);
            prop_assert!(lease >= 1 && lease <= burst);
        }

        #[test]
        fn a_buckets_shards_together_never_exceed_it(rps in 0.001f64..1_000_000.0, burst in 1u32..1_000_000) {
            let rate = Rate { rps, burst };
            let k = shards(rate);
            let part = rate.part(k);
            prop_assert!(k >= 1 && k <= burst);
            prop_assert!(u64::from(part.burst) * u64::from(k) <= u64::from(burst));
            prop_assert!(part.rps * f64::from(k) <= rps * (1.0 + 1e-12));
            prop_assert!(part.rps <= SHARD_RPS || k == burst);
        }
    }
}
