//! Configuration (spec §5), parsed and validated once at start-up.
//!
//! [`Config::from_env`] reads every variable, and the first one that is
//! malformed stops start-up with an error that names it, so a typo in a SAM
//! parameter fails the deployment's first invocation loudly instead of
//! quietly changing behaviour. A variable that is unset *or empty* takes its
//! default (SAM passes empty strings for blank parameters).
//!
//! ```
//! use retryq::config::Config;
//!
//! let config = Config::from_lookup(|name| match name {
//!     "MAX_ATTEMPTS" => Some("8".into()),
//!     _ => None,
//! }).unwrap();
//! assert_eq!(config.retry.max_attempts, 8);
//!
//! let err = Config::from_lookup(|name| (name == "MAX_ATTEMPTS").then(|| "0".into())).unwrap_err();
//! assert_eq!(err.variable, "MAX_ATTEMPTS");
//! ```

use std::time::Duration;

use crate::auth::AuthProfiles;
use crate::deliver::destination::{DestinationPolicy, HostPattern};
use crate::metrics::MetricsSettings;
use crate::policy::backoff::{Backoff, InvalidBackoff};
use crate::policy::destinations::DestinationPolicies;
use crate::policy::RetryPolicy;

/// Everything the processor reads from its environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DLQ_URL`: where dead letters go. Without it nothing can be
    /// dead-lettered, so such records are left for the redrive policy.
    pub dlq_url: Option<String>,
    /// `MAX_ATTEMPTS`, `BACKOFF_BASE_SECONDS`, `BACKOFF_MAX_SECONDS`,
    /// `RETRY_AFTER_MAX_SECONDS`.
    pub retry: RetryPolicy,
    /// `REQUEST_TIMEOUT_SECONDS`: one attempt's timeout, connect to last byte.
    pub request_timeout: Duration,
    /// `MAX_CONCURRENCY`: requests in flight per invocation or process.
    pub max_concurrency: usize,
    /// `ALLOWED_DESTINATIONS` and `ALLOW_PRIVATE_DESTINATIONS`.
    pub destinations: DestinationPolicy,
    /// `AUTH_PROFILES`, with the secrets its `…Env` fields name.
    pub auth: AuthProfiles,
    /// `MAX_CONCURRENCY_PER_HOST`: unset means only `MAX_CONCURRENCY` applies.
    pub max_concurrency_per_host: Option<usize>,
    /// `HOST_STATE_LIMIT`: most entries of each per-host map (§12.9).
    pub host_state_limit: usize,
    /// `BREAKER_THRESHOLD` and `BREAKER_COOLDOWN_SECONDS`: unset threshold
    /// means no circuit breaker.
    pub breaker: Option<BreakerSettings>,
    /// `METRICS_ENABLED`, `METRICS_NAMESPACE` (and the function's name).
    pub metrics: MetricsSettings,
    /// `RETENTION_MARGIN_SECONDS`: no retry is scheduled to end later than
    /// this before the queue's retention would delete the message.
    pub retention_margin: Duration,
    /// `MAX_AGE_SECONDS`: how long a message is retried, counted from its
    /// first copy's `SentTimestamp`, across carried copies (§12.5).
    pub max_age: Duration,
    /// `SECRET_TTL_SECONDS`: longest a Secrets Manager value is cached.
    pub secret_ttl: Duration,
    /// `BATCHING_WINDOW_SECONDS`: the event source mapping's batching window,
    /// the longest a record may wait between its receive and the invocation.
    pub batching_window: Duration,
    /// `LOG_DELIVERED`: which delivered records get their log line.
    pub log_delivered: LogDelivered,
    /// `FAIR_QUEUE_KEY`: the `MessageGroupId` `retryq enqueue`/`call` give a
    /// message without `--group` on a standard queue (§13.1).
    pub fair_queue_key: crate::fair::FairQueueKey,
    /// `DESTINATION_POLICIES`: per-destination rate, concurrency, attempts,
    /// backoff, breaker and extra retried statuses.
    pub destination_policies: DestinationPolicies,
    /// `STATE_TABLE` and the ledger's settings: fleet-wide state (spec §9).
    pub state: Option<StateSettings>,
    /// `CA_BUNDLE`: roots trusted besides the public ones, for destinations
    /// and token endpoints behind a private CA.
    pub ca_bundle: Option<crate::tls::CaBundle>,
    /// `MAX_OFFLOADED_BODY_BYTES`: the largest request body of a Retry
    /// Message offloaded to S3 (spec §11).
    pub max_offloaded_body: usize,
    /// `PAYLOAD_BUCKET`: where `retryq enqueue` / `call` offload messages
    /// larger than `PAYLOAD_OFFLOAD_BYTES`.
    pub payload_bucket: Option<String>,
    /// `PAYLOAD_BUCKETS` (default: `PAYLOAD_BUCKET`): the only buckets a
    /// payload pointer is followed into. Empty: no pointer is followed.
    pub payload_buckets: Vec<String>,
    /// `PAYLOAD_MEMORY_BYTES`: the bytes of fetched payload bodies held at
    /// once (default: a quarter of `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, else
    /// 256 MiB).
    pub payload_memory_bytes: usize,
    /// `PAYLOAD_OFFLOAD_BYTES`: a message larger than this is offloaded by
    /// `retryq enqueue`/`call`. Unset: the target queue's
    /// `MaximumMessageSize` less room for attributes, read from the queue
    /// (§13.2; see [`crate::producer::Enqueuer::with_payload_bucket_for_queue`]).
    pub payload_offload_bytes: Option<usize>,
}

/// The fleet-wide state table and its attempt ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSettings {
    /// `STATE_TABLE`: the DynamoDB table's name.
    pub table: String,
    /// `LEDGER`: which attempts are recorded.
    pub ledger: Ledger,
    /// `LEDGER_TTL_DAYS`: how long an attempt stays recorded.
    pub ttl: Duration,
    /// `RESPONSE_SNIPPET_BYTES`: how much of a non-2xx answer is recorded.
    pub snippet_bytes: usize,
}

impl Default for StateSettings {
    /// The defaults of spec §9, without a table name.
    fn default() -> StateSettings {
        StateSettings {
            table: String::new(),
            ledger: Ledger::Failures,
            ttl: Duration::from_secs(14 * 86_400),
            snippet_bytes: 512,
        }
    }
}

/// `LEDGER`: which attempts the ledger records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ledger {
    /// Attempts that did not deliver (`failures`, the default): a batch
    /// that only delivers costs no ledger request (the pauses are read
    /// at most once a second per process).
    #[default]
    Failures,
    /// Every attempt (`all`).
    All,
}

/// `LOG_DELIVERED`: a record that was not delivered is always logged; a
/// delivered one as this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogDelivered {
    /// Every delivered record (`all`, the default).
    #[default]
    All,
    /// About one delivered record in [`LogDelivered::SAMPLE`] (`sampled`).
    Sampled,
    /// None (`none`); the EMF metrics still count them.
    None,
}

impl LogDelivered {
    /// One delivered record in this many is logged when `sampled`.
    pub const SAMPLE: u32 = 100;

    /// Whether a delivered record gets its line; `roll` gives a number
    /// uniform in `0..SAMPLE`, asked only when sampling.
    pub fn logs(self, roll: impl FnOnce() -> u32) -> bool {
        match self {
            LogDelivered::All => true,
            LogDelivered::Sampled => roll() == 0,
            LogDelivered::None => false,
        }
    }
}

/// Longest duration any variable may hold: SQS's 12-hour visibility limit.
pub const MAX_CONFIG_SECONDS: u64 = 43_200;

/// Lambda's longest batching window for an SQS event source.
pub const MAX_BATCHING_WINDOW_SECONDS: u64 = 300;

pub use crate::policy::destinations::BreakerSettings;

/// A malformed variable. Displays as `VARIABLE: what is wrong`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {reason}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub reason: String,
}

impl ConfigError {
    fn new(variable: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            variable,
            reason: reason.into(),
        }
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }

    /// Reads variables through `get`, for tests and embedding.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let vars = Vars(&get);
        let retry = vars.retry_policy()?;
        Ok(Config {
            dlq_url: vars.text("DLQ_URL").map(|v| v.trim().to_owned()),
            request_timeout: vars.whole_seconds(
                "REQUEST_TIMEOUT_SECONDS",
                10,
                1,
                MAX_REQUEST_TIMEOUT_SECONDS,
            )?,
            max_concurrency: vars.number("MAX_CONCURRENCY", 64, 1, MAX_CONCURRENCY)? as usize,
            destinations: DestinationPolicy {
                allowed: vars.list("ALLOWED_DESTINATIONS")?,
                allow_private: vars.flag("ALLOW_PRIVATE_DESTINATIONS", false)?,
            },
            auth: vars.auth_profiles(&get)?,
            max_concurrency_per_host: vars
                .optional("MAX_CONCURRENCY_PER_HOST", MAX_CONCURRENCY)?
                .map(|n| n as usize),
            host_state_limit: vars.number(
                "HOST_STATE_LIMIT",
                DEFAULT_HOST_STATE_LIMIT,
                1,
                MAX_HOST_STATE_LIMIT,
            )? as usize,
            breaker: vars.breaker()?,
            metrics: vars.metrics()?,
            retention_margin: vars.whole_seconds(
                "RETENTION_MARGIN_SECONDS",
                900,
                0,
                MAX_CONFIG_SECONDS,
            )?,
            max_age: vars.whole_seconds("MAX_AGE_SECONDS", 1_209_600, 60, 31_622_400)?,
            secret_ttl: vars.seconds("SECRET_TTL_SECONDS", 300)?,
            batching_window: vars.whole_seconds(
                "BATCHING_WINDOW_SECONDS",
                0,
                0,
                MAX_BATCHING_WINDOW_SECONDS,
            )?,
            log_delivered: vars.log_delivered()?,
            fair_queue_key: vars.fair_queue_key()?,
            destination_policies: vars.destination_policies(&retry)?,
            retry,
            state: vars.state()?,
            max_offloaded_body: vars.number(
                "MAX_OFFLOADED_BODY_BYTES",
                DEFAULT_OFFLOADED_BODY_BYTES,
                1,
                MAX_OFFLOADED_BODY_BYTES,
            )? as usize,
            payload_bucket: vars.text("PAYLOAD_BUCKET").map(|b| b.trim().to_owned()),
            payload_buckets: vars.payload_buckets(),
            payload_memory_bytes: vars.payload_memory_bytes()?,
            payload_offload_bytes: match vars.text("PAYLOAD_OFFLOAD_BYTES") {
                None => None,
                Some(_) => Some(
                    vars.number("PAYLOAD_OFFLOAD_BYTES", 1, 1, MAX_SQS_MESSAGE_BYTES)? as usize,
                ),
            },
            ca_bundle: vars.ca_bundle()?,
        })
    }
}

/// `HOST_STATE_LIMIT`: 10,000 hosts by default, at most ten million.
const DEFAULT_HOST_STATE_LIMIT: u64 = crate::bounded::DEFAULT_HOST_STATE_LIMIT as u64;
const MAX_HOST_STATE_LIMIT: u64 = 10_000_000;
/// Longest request timeout: Lambda's longest invocation.
const MAX_REQUEST_TIMEOUT_SECONDS: u64 = 900;
/// Longest `LEDGER_TTL_DAYS`: about ten years.
const MAX_LEDGER_TTL_DAYS: u64 = 3650;
/// Largest `RESPONSE_SNIPPET_BYTES`: a DynamoDB item holds at most 400 KB.
const MAX_SNIPPET_BYTES: u64 = 16_384;
/// Most requests in flight (`MAX_CONCURRENCY`, `MAX_CONCURRENCY_PER_HOST`).
const MAX_CONCURRENCY: u64 = 100_000;
/// `HOST_METRICS_LIMIT`: each named host is a CloudWatch metric of its own.
const MAX_HOST_METRICS: u64 = 1000;
/// `MAX_OFFLOADED_BODY_BYTES`: 16 MiB by default, at most 1 GiB (a batch
/// holds its records' bodies in memory).
const DEFAULT_OFFLOADED_BODY_BYTES: u64 = 16 * 1024 * 1024;
const MAX_OFFLOADED_BODY_BYTES: u64 = 1024 * 1024 * 1024;
/// `PAYLOAD_OFFLOAD_BYTES`: at most SQS's largest message.
const MAX_SQS_MESSAGE_BYTES: u64 = 1024 * 1024;
/// `PAYLOAD_MEMORY_BYTES`: 256 MiB without a Lambda memory size, at most
/// 1 TiB.
const DEFAULT_PAYLOAD_MEMORY_BYTES: u64 = 256 * 1024 * 1024;
const MAX_PAYLOAD_MEMORY_BYTES: u64 = 1 << 40;

/// A typed reader of variables. A variable that is unset or empty takes its
/// default; every error names the variable.
struct Vars<'a, F>(&'a F);

impl<F: Fn(&str) -> Option<String>> Vars<'_, F> {
    /// A duration in whole seconds in `min..=max`, or `default` when unset.
    fn whole_seconds(
        &self,
        name: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<Duration, ConfigError> {
        self.number(name, default, min, max)
            .map(Duration::from_secs)
    }

    /// `AUTH_PROFILES`, with the secrets its `…Env` fields name.
    fn auth_profiles(
        &self,
        get: &impl Fn(&str) -> Option<String>,
    ) -> Result<AuthProfiles, ConfigError> {
        match self.text("AUTH_PROFILES") {
            None => Ok(AuthProfiles::default()),
            Some(json) => {
                AuthProfiles::parse(&json, get).map_err(|e| ConfigError::new("AUTH_PROFILES", e))
            }
        }
    }

    /// `DESTINATION_POLICIES`, whose retry settings default to `retry`'s.
    fn destination_policies(
        &self,
        retry: &RetryPolicy,
    ) -> Result<DestinationPolicies, ConfigError> {
        match self.text("DESTINATION_POLICIES") {
            None => Ok(DestinationPolicies::default()),
            Some(json) => DestinationPolicies::parse(&json, retry)
                .map_err(|e| ConfigError::new("DESTINATION_POLICIES", e)),
        }
    }

    /// The value, unless unset or blank.
    fn text(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|v| !v.trim().is_empty())
    }

    /// A whole number in `min..=max`, or `default` when unset.
    fn number(
        &self,
        name: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        let Some(v) = self.text(name) else {
            return Ok(default);
        };
        match v.trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            Ok(n) if n > max => Err(ConfigError::new(name, format!("must be at most {max}"))),
            _ if min == 0 => Err(ConfigError::new(
                name,
                format!("must be a whole number from 0 to {max}, got {v:?}"),
            )),
            _ => Err(ConfigError::new(
                name,
                format!("must be a positive integer, got {v:?}"),
            )),
        }
    }

    /// A positive number up to `max`, or `None` when unset.
    fn optional(&self, name: &'static str, max: u64) -> Result<Option<u64>, ConfigError> {
        match self.text(name) {
            None => Ok(None),
            Some(_) => self.number(name, 0, 1, max).map(Some),
        }
    }

    /// A duration in whole seconds, positive and at most 12 hours (spec §8).
    fn seconds(&self, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
        self.number(name, default, 1, MAX_CONFIG_SECONDS)
            .map(Duration::from_secs)
    }

    /// `true` or `false`.
    fn flag(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.text(name).as_deref().map(str::trim) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(other) => Err(ConfigError::new(
                name,
                format!("must be true or false, got {other:?}"),
            )),
        }
    }

    /// `MAX_ATTEMPTS`, the backoff and `RETRY_AFTER_MAX_SECONDS`.
    fn retry_policy(&self) -> Result<RetryPolicy, ConfigError> {
        let backoff = Backoff::new(
            self.seconds("BACKOFF_BASE_SECONDS", 10)?,
            self.seconds("BACKOFF_MAX_SECONDS", 900)?,
        )
        .map_err(|e| match e {
            InvalidBackoff::ZeroBase => ConfigError::new("BACKOFF_BASE_SECONDS", e.to_string()),
            InvalidBackoff::BaseAboveMax { .. } | InvalidBackoff::AboveVisibilityLimit => {
                ConfigError::new("BACKOFF_MAX_SECONDS", e.to_string())
            }
        })?;
        Ok(RetryPolicy {
            max_attempts: self.number("MAX_ATTEMPTS", 5, 1, u32::MAX.into())? as u32,
            backoff,
            retry_after_max: self.seconds("RETRY_AFTER_MAX_SECONDS", MAX_CONFIG_SECONDS)?,
        })
    }

    /// `BREAKER_THRESHOLD` (none: no breaker) and its cool-down.
    fn breaker(&self) -> Result<Option<BreakerSettings>, ConfigError> {
        let cooldown = self.seconds("BREAKER_COOLDOWN_SECONDS", 30)?;
        Ok(self
            .optional("BREAKER_THRESHOLD", u32::MAX.into())?
            .map(|threshold| BreakerSettings {
                threshold: threshold as u32,
                cooldown,
            }))
    }

    /// The EMF metrics' variables.
    fn metrics(&self) -> Result<MetricsSettings, ConfigError> {
        Ok(MetricsSettings {
            enabled: self.flag("METRICS_ENABLED", true)?,
            namespace: self.namespace("METRICS_NAMESPACE")?,
            service: self
                .text("AWS_LAMBDA_FUNCTION_NAME")
                .unwrap_or_else(|| "retryq-worker".into()),
            host_limit: self.number("HOST_METRICS_LIMIT", 20, 1, MAX_HOST_METRICS)? as usize,
        })
    }

    /// `LOG_DELIVERED`.
    fn log_delivered(&self) -> Result<LogDelivered, ConfigError> {
        match self.text("LOG_DELIVERED").as_deref().map(str::trim) {
            None | Some("all") => Ok(LogDelivered::All),
            Some("sampled") => Ok(LogDelivered::Sampled),
            Some("none") => Ok(LogDelivered::None),
            Some(other) => Err(ConfigError::new(
                "LOG_DELIVERED",
                format!("must be all, sampled or none, got {other:?}"),
            )),
        }
    }

    /// `FAIR_QUEUE_KEY`: `host` (the default) or `none`.
    fn fair_queue_key(&self) -> Result<crate::fair::FairQueueKey, ConfigError> {
        self.text("FAIR_QUEUE_KEY")
            .map_or(Ok(Default::default()), |v| v.parse())
            .map_err(|why| ConfigError::new("FAIR_QUEUE_KEY", why))
    }

    /// `CA_BUNDLE`, read now so that a bad file stops the start.
    fn ca_bundle(&self) -> Result<Option<crate::tls::CaBundle>, ConfigError> {
        self.text("CA_BUNDLE")
            .map(|path| {
                crate::tls::CaBundle::read(std::path::Path::new(path.trim()))
                    .map_err(|e| ConfigError::new("CA_BUNDLE", e))
            })
            .transpose()
    }

    /// `PAYLOAD_MEMORY_BYTES`; by default a quarter of the function's
    /// memory (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, in MB), else 256 MiB.
    fn payload_memory_bytes(&self) -> Result<usize, ConfigError> {
        let function_mb = self
            .text("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
            .and_then(|mb| mb.trim().parse::<u64>().ok());
        let default = function_mb.map_or(DEFAULT_PAYLOAD_MEMORY_BYTES, |mb| mb * 1024 * 1024 / 4);
        Ok(self.number(
            "PAYLOAD_MEMORY_BYTES",
            default.max(1),
            1,
            MAX_PAYLOAD_MEMORY_BYTES,
        )? as usize)
    }

    /// `PAYLOAD_BUCKETS`, a comma list, else `PAYLOAD_BUCKET` alone, else
    /// none.
    fn payload_buckets(&self) -> Vec<String> {
        self.text("PAYLOAD_BUCKETS")
            .or_else(|| self.text("PAYLOAD_BUCKET"))
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|b| !b.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `STATE_TABLE` and the ledger's variables (read, and checked, even
    /// without a table, so a typo shows before the table is turned on).
    fn state(&self) -> Result<Option<StateSettings>, ConfigError> {
        let ledger = match self.text("LEDGER").as_deref().map(str::trim) {
            None | Some("failures") => Ledger::Failures,
            Some("all") => Ledger::All,
            Some(other) => {
                return Err(ConfigError::new(
                    "LEDGER",
                    format!("must be failures or all, got {other:?}"),
                ))
            }
        };
        let ttl_days = self.number("LEDGER_TTL_DAYS", 14, 1, MAX_LEDGER_TTL_DAYS)?;
        let snippet_bytes =
            self.number("RESPONSE_SNIPPET_BYTES", 512, 0, MAX_SNIPPET_BYTES)? as usize;
        Ok(self.text("STATE_TABLE").map(|table| StateSettings {
            table: table.trim().to_owned(),
            ledger,
            ttl: Duration::from_secs(ttl_days * 86_400),
            snippet_bytes,
        }))
    }

    /// A comma list of host patterns.
    fn list(&self, name: &'static str) -> Result<Vec<HostPattern>, ConfigError> {
        let Some(list) = self.text(name) else {
            return Ok(Vec::new());
        };
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<HostPattern>()
                    .map_err(|e| ConfigError::new(name, format!("{s:?}: {e}")))
            })
            .collect()
    }

    /// A CloudWatch namespace (not AWS's own).
    fn namespace(&self, name: &'static str) -> Result<String, ConfigError> {
        match self.text(name) {
            None => Ok("retryq".into()),
            Some(ns) if ns.len() <= 255 && !ns.starts_with("AWS/") => Ok(ns.trim().to_owned()),
            Some(_) => Err(ConfigError::new(
                name,
                "must be at most 255 characters and not start with AWS/",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(move |name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = with(&[]).unwrap();
        assert_eq!(c.dlq_url, None);
        assert_eq!(c.retry.max_attempts, 5);
        assert_eq!(c.retry.backoff.nominal(1), Duration::from_secs(10));
        assert_eq!(c.retry.backoff.nominal(20), Duration::from_secs(900));
        assert_eq!(c.retry.retry_after_max, Duration::from_secs(43_200));
        assert_eq!(c.request_timeout, Duration::from_secs(10));
        assert_eq!(c.max_concurrency, 64);
        assert!(c.destinations.allowed.is_empty());
        assert!(!c.destinations.allow_private);
        assert_eq!(c.max_concurrency_per_host, None);
        assert_eq!(c.breaker, None);
        assert_eq!(c.retention_margin, Duration::from_secs(900));
        assert_eq!(c.secret_ttl, Duration::from_secs(300));
        assert_eq!(c.batching_window, Duration::ZERO);
        assert_eq!(c.log_delivered, LogDelivered::All);
    }

    #[test]
    fn fair_queue_key_is_host_by_default_and_names_itself_when_wrong() {
        use crate::fair::FairQueueKey;
        assert_eq!(with(&[]).unwrap().fair_queue_key, FairQueueKey::Host);
        let none = with(&[("FAIR_QUEUE_KEY", "none")]).unwrap();
        assert_eq!(none.fair_queue_key, FairQueueKey::None);
        let e = with(&[("FAIR_QUEUE_KEY", "tenant")]).unwrap_err();
        assert_eq!(e.variable, "FAIR_QUEUE_KEY");
        assert!(e.to_string().contains("host or none"), "{e}");
    }

    #[test]
    fn log_delivered_takes_three_values_and_names_itself_otherwise() {
        for (v, want) in [
            ("all", LogDelivered::All),
            ("sampled", LogDelivered::Sampled),
            ("none", LogDelivered::None),
        ] {
            assert_eq!(with(&[("LOG_DELIVERED", v)]).unwrap().log_delivered, want);
        }
        let e = with(&[("LOG_DELIVERED", "some")]).unwrap_err();
        assert_eq!(e.variable, "LOG_DELIVERED");
        assert!(LogDelivered::Sampled.logs(|| 0) && !LogDelivered::Sampled.logs(|| 1));
        assert!(!LogDelivered::None.logs(|| 0) && LogDelivered::All.logs(|| 7));
    }

    #[test]
    fn every_duration_is_bounded_by_twelve_hours() {
        let c = with(&[
            ("BREAKER_THRESHOLD", "1"),
            ("BREAKER_COOLDOWN_SECONDS", "43200"),
            ("RETENTION_MARGIN_SECONDS", "0"),
            ("SECRET_TTL_SECONDS", "43200"),
            ("BATCHING_WINDOW_SECONDS", "300"),
        ])
        .unwrap();
        assert_eq!(c.breaker.unwrap().cooldown, Duration::from_secs(43_200));
        assert_eq!(c.retention_margin, Duration::ZERO);
        assert_eq!(c.secret_ttl, Duration::from_secs(43_200));
        assert_eq!(c.batching_window, Duration::from_secs(300));
        let err = with(&[("BREAKER_COOLDOWN_SECONDS", "99999999999999")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "BREAKER_COOLDOWN_SECONDS: must be at most 43200"
        );
    }

    #[test]
    fn destination_protection_is_read() {
        let c = with(&[
            ("MAX_CONCURRENCY_PER_HOST", "4"),
            ("BREAKER_THRESHOLD", "5"),
            ("BREAKER_COOLDOWN_SECONDS", "60"),
        ])
        .unwrap();
        assert_eq!(c.max_concurrency_per_host, Some(4));
        assert_eq!(
            c.breaker,
            Some(BreakerSettings {
                threshold: 5,
                cooldown: Duration::from_secs(60)
            })
        );
        let c = with(&[("BREAKER_THRESHOLD", "5")]).unwrap();
        assert_eq!(c.breaker.unwrap().cooldown, Duration::from_secs(30));
    }

    #[test]
    fn the_state_table_and_destination_policies_are_read() {
        let c = with(&[]).unwrap();
        assert_eq!(c.state, None);
        assert!(c.destination_policies.is_empty());
        let c = with(&[
            ("STATE_TABLE", "retryq-state"),
            ("LEDGER", "all"),
            ("LEDGER_TTL_DAYS", "3"),
            ("RESPONSE_SNIPPET_BYTES", "0"),
            ("MAX_ATTEMPTS", "4"),
            ("DESTINATION_POLICIES", r#"{"api.partner.com": {"rps": 5}}"#),
        ])
        .unwrap();
        assert_eq!(
            c.state,
            Some(StateSettings {
                table: "retryq-state".into(),
                ledger: Ledger::All,
                ttl: Duration::from_secs(3 * 86_400),
                snippet_bytes: 0,
            })
        );
        let url = url::Url::parse("https://api.partner.com/x").unwrap();
        let rules = c.destination_policies.for_url(&url).unwrap();
        assert_eq!(rules.retry.max_attempts, 4, "resolved against MAX_ATTEMPTS");
        for (name, value) in [
            ("LEDGER", "some"),
            ("LEDGER_TTL_DAYS", "0"),
            ("RESPONSE_SNIPPET_BYTES", "1000000"),
            ("DESTINATION_POLICIES", r#"{"a.com": {"rps": -1}}"#),
        ] {
            assert_eq!(with(&[(name, value)]).unwrap_err().variable, name);
        }
    }

    #[test]
    fn empty_values_take_the_default() {
        let c = with(&[("MAX_ATTEMPTS", ""), ("DLQ_URL", " ")]).unwrap();
        assert_eq!(c.retry.max_attempts, 5);
        assert_eq!(c.dlq_url, None);
    }

    #[test]
    fn every_setting_is_read() {
        let c = with(&[
            ("DLQ_URL", "http://127.0.0.1:5000/123456789012/dlq"),
            ("MAX_ATTEMPTS", "3"),
            ("BACKOFF_BASE_SECONDS", "2"),
            ("BACKOFF_MAX_SECONDS", "60"),
            ("RETRY_AFTER_MAX_SECONDS", "120"),
            ("REQUEST_TIMEOUT_SECONDS", "4"),
            ("MAX_CONCURRENCY", "8"),
            (
                "ALLOWED_DESTINATIONS",
                "api.partner.com, *.example.com,127.0.0.1:8080",
            ),
            ("ALLOW_PRIVATE_DESTINATIONS", "true"),
        ])
        .unwrap();
        assert_eq!(
            c.dlq_url.as_deref(),
            Some("http://127.0.0.1:5000/123456789012/dlq")
        );
        assert_eq!(c.retry.max_attempts, 3);
        assert_eq!(c.retry.backoff.nominal(1), Duration::from_secs(2));
        assert_eq!(c.retry.backoff.nominal(10), Duration::from_secs(60));
        assert_eq!(c.retry.retry_after_max, Duration::from_secs(120));
        assert_eq!(c.request_timeout, Duration::from_secs(4));
        assert_eq!(c.max_concurrency, 8);
        assert_eq!(c.destinations.allowed.len(), 3);
        assert!(c.destinations.allow_private);
    }

    #[test]
    fn each_malformed_variable_is_named() {
        let cases = [
            ("MAX_ATTEMPTS", "0"),
            ("MAX_ATTEMPTS", "five"),
            ("MAX_ATTEMPTS", "-1"),
            ("MAX_ATTEMPTS", "99999999999"),
            ("BACKOFF_BASE_SECONDS", "0"),
            ("BACKOFF_BASE_SECONDS", "1.5"),
            ("BACKOFF_MAX_SECONDS", "5"),
            ("BACKOFF_MAX_SECONDS", "50000"),
            ("RETRY_AFTER_MAX_SECONDS", "43201"),
            ("REQUEST_TIMEOUT_SECONDS", "0"),
            ("REQUEST_TIMEOUT_SECONDS", "901"),
            ("MAX_CONCURRENCY", "0"),
            ("MAX_CONCURRENCY", "many"),
            ("ALLOWED_DESTINATIONS", "http://x.example.com"),
            ("ALLOWED_DESTINATIONS", "host:notaport"),
            ("ALLOW_PRIVATE_DESTINATIONS", "yes"),
            ("AUTH_PROFILES", "{not json"),
            ("MAX_CONCURRENCY_PER_HOST", "0"),
            ("HOST_STATE_LIMIT", "0"),
            ("HOST_STATE_LIMIT", "ten"),
            ("BREAKER_THRESHOLD", "-3"),
            ("BREAKER_COOLDOWN_SECONDS", "soon"),
            ("METRICS_ENABLED", "off"),
            ("BREAKER_COOLDOWN_SECONDS", "43201"),
            ("BREAKER_COOLDOWN_SECONDS", "18446744073709551616"),
            ("SECRET_TTL_SECONDS", "0"),
            ("SECRET_TTL_SECONDS", "86400"),
            ("RETENTION_MARGIN_SECONDS", "43201"),
            ("RETENTION_MARGIN_SECONDS", "-1"),
            ("BATCHING_WINDOW_SECONDS", "301"),
            ("METRICS_NAMESPACE", "AWS/Lambda"),
            ("CA_BUNDLE", "/nonexistent/retryq-ca.pem"),
            ("MAX_OFFLOADED_BODY_BYTES", "0"),
            ("PAYLOAD_OFFLOAD_BYTES", "1048577"),
            ("HOST_METRICS_LIMIT", "0"),
            ("MAX_OFFLOADED_BODY_BYTES", "2147483648"),
            ("CA_BUNDLE", "Cargo.toml"),
            (
                "AUTH_PROFILES",
                r#"{"p": {"type": "header", "name": "x-key", "valueEnv": "UNSET_VARIABLE"}}"#,
            ),
        ];
        for (name, value) in cases {
            let err = with(&[(name, value)]).unwrap_err();
            assert_eq!(err.variable, name, "{name}={value}: {err}");
            assert!(err.to_string().starts_with(name));
        }
    }
}
