//! Metrics in CloudWatch Embedded Metric Format (EMF), written to stdout.
//!
//! Lambda sends stdout to CloudWatch Logs, which turns EMF lines into
//! metrics with no API call and no extra latency. One batch gives:
//!
//! * `Delivered`, `Retried`, `Unfinished`, `BatchSize` and `BreakerOpened`
//!   (Count), dimension `Service` (the alarm on breakers watches this one);
//! * `DeadLettered` (Count), dimensions `Service` and `Reason`, one line per
//!   reason seen;
//! * `AttemptLatency` (Milliseconds), one value per attempt (EMF takes at
//!   most 100 values a line, so long batches take several lines).
//!
//! * per destination host, dimensions `Service` and `Destination`:
//!   `Delivered`, `Retried`, `DeadLettered` (Count), `AttemptLatency`
//!   (Milliseconds), and `BreakerOpened` (Count) for each circuit breaker
//!   that opened since the last batch. At most `HOST_METRICS_LIMIT` hosts
//!   (the busiest) are named per batch; the others count as `other`, so a
//!   batch of many hosts cannot make many metrics.
//!
//! A breaker opening or closing also writes one log line, `breaker opened`
//! (host, failures, cool-down) or `breaker closed` (host).
//!
//! `METRICS_NAMESPACE` (default `retryq`) names the namespace;
//! `METRICS_ENABLED=false` turns it off. `Service` is the function's name
//! (`AWS_LAMBDA_FUNCTION_NAME`), or `retryq-worker`.
//!
//! A small writer rather than a metrics crate: the format is a few keys of
//! JSON, and the values come straight from the batch report.

// Emitted by the processor; a producer build reads only the settings.
#![cfg_attr(not(feature = "processor"), allow(dead_code))]

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::batch::{BatchReport, Disposition};

/// EMF's limit on values per metric per line.
const MAX_VALUES: usize = 100;

/// The `Destination` of the hosts past `HOST_METRICS_LIMIT`.
pub const OTHER_DESTINATIONS: &str = "other";

/// Where and whether metrics are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    pub enabled: bool,
    pub namespace: String,
    /// The `Service` dimension.
    pub service: String,
    /// `HOST_METRICS_LIMIT`: most `Destination` values per batch.
    pub host_limit: usize,
}

impl Default for MetricsSettings {
    fn default() -> MetricsSettings {
        MetricsSettings {
            enabled: true,
            namespace: "retryq".into(),
            service: "retryq-worker".into(),
            host_limit: 20,
        }
    }
}

/// Breakers opened since the last batch's metrics, by host.
static BREAKERS_OPENED: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// A circuit breaker opened (this process's, or the fleet's by this
/// process's write): one log line, and `BreakerOpened` in the next batch's
/// metrics.
pub(crate) fn breaker_opened(host: &str, failures: u32, cooldown: Duration) {
    tracing::warn!(
        host,
        failures,
        cooldown_s = cooldown.as_secs(),
        "breaker opened"
    );
    let mut opened = BREAKERS_OPENED.lock().unwrap_or_else(|p| p.into_inner());
    let mut name = destination_of(host);
    // Taken by every batch's metrics, but kept when metrics are off: never
    // more hosts than `HOST_STATE_LIMIT` (§12.9).
    if !opened.contains_key(name) && opened.len() >= OPENED_LIMIT.load(Ordering::Relaxed) {
        name = OTHER_DESTINATIONS;
    }
    *opened.entry(name.to_owned()).or_default() += 1;
}

/// Most hosts [`BREAKERS_OPENED`] names: `HOST_STATE_LIMIT`.
static OPENED_LIMIT: AtomicUsize = AtomicUsize::new(crate::bounded::DEFAULT_HOST_STATE_LIMIT);

/// Sets the most hosts the opened-breaker counts name (`HOST_STATE_LIMIT`).
pub(crate) fn set_host_state_limit(limit: usize) {
    OPENED_LIMIT.store(limit.max(1), Ordering::Relaxed);
}

/// The `Destination` under which records refused by the destination policy
/// are counted (§12.9), whatever host they named.
pub(crate) const REFUSED: &str = "refused";

/// The `Destination` of a breaker's `host:port` key: its host, as the
/// records' own destinations are counted.
fn destination_of(breaker_host: &str) -> &str {
    match breaker_host.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (host.ends_with(']') || !host.contains(':')) =>
        {
            host
        }
        _ => breaker_host,
    }
}

/// A circuit breaker closed: its probe was answered.
pub(crate) fn breaker_closed(host: &str) {
    tracing::info!(host, "breaker closed");
}

fn take_breakers_opened() -> BTreeMap<String, u64> {
    std::mem::take(&mut *BREAKERS_OPENED.lock().unwrap_or_else(|p| p.into_inner()))
}

/// One destination's figures in a batch.
#[derive(Default)]
struct PerHost {
    records: usize,
    delivered: usize,
    retried: usize,
    dead_lettered: usize,
    latencies: Vec<f64>,
    breakers_opened: u64,
}

/// The batch's figures by `Destination`: the `limit` busiest hosts by
/// name, the rest as [`OTHER_DESTINATIONS`].
fn per_destination(
    report: &BatchReport,
    opened: &BTreeMap<String, u64>,
    limit: usize,
) -> BTreeMap<String, PerHost> {
    let mut hosts: BTreeMap<&str, PerHost> = BTreeMap::new();
    for r in &report.records {
        let Some(host) = r.destination.as_deref() else {
            continue;
        };
        let h = hosts.entry(host).or_default();
        h.records += 1;
        match r.disposition {
            Disposition::Delivered => h.delivered += 1,
            Disposition::RetryLater { .. } | Disposition::Carried { .. } => h.retried += 1,
            Disposition::DeadLettered(_) => h.dead_lettered += 1,
            Disposition::Unfinished(_) => {}
        }
        h.latencies.extend(r.attempt_latency.map(millis));
    }
    for (host, n) in opened {
        hosts.entry(host).or_default().breakers_opened += n;
    }
    let mut ranked: Vec<(&str, PerHost)> = hosts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.records.cmp(&a.1.records).then(a.0.cmp(b.0)));
    let mut out: BTreeMap<String, PerHost> = BTreeMap::new();
    for (i, (host, figures)) in ranked.into_iter().enumerate() {
        let name = if i < limit { host } else { OTHER_DESTINATIONS };
        let h = out.entry(name.to_owned()).or_default();
        h.records += figures.records;
        h.delivered += figures.delivered;
        h.retried += figures.retried;
        h.dead_lettered += figures.dead_lettered;
        h.latencies.extend(figures.latencies);
        h.breakers_opened += figures.breakers_opened;
    }
    out
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

/// The EMF documents for one batch, one JSON object each, with the
/// breakers `opened` since the last batch.
pub fn documents(
    settings: &MetricsSettings,
    report: &BatchReport,
    opened: &BTreeMap<String, u64>,
    now: SystemTime,
) -> Vec<Value> {
    let timestamp = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let count =
        |f: fn(&Disposition) -> bool| report.records.iter().filter(|r| f(&r.disposition)).count();
    let latencies: Vec<f64> = report
        .records
        .iter()
        .filter_map(|r| r.attempt_latency)
        .map(millis)
        .collect();
    let mut reasons: BTreeMap<&'static str, usize> = BTreeMap::new();
    for r in &report.records {
        if let Disposition::DeadLettered(reason) = r.disposition {
            *reasons.entry(reason.as_str()).or_default() += 1;
        }
    }
    let directive = |dimensions: Value, metrics: Value| {
        json!({
            "Timestamp": timestamp,
            "CloudWatchMetrics": [{
                "Namespace": settings.namespace,
                "Dimensions": dimensions,
                "Metrics": metrics,
            }]
        })
    };
    let mut chunks = latencies.chunks(MAX_VALUES);
    let mut docs = vec![{
        let mut doc = json!({
            "_aws": directive(
                json!([["Service"]]),
                json!([
                    {"Name": "Delivered", "Unit": "Count"},
                    {"Name": "Retried", "Unit": "Count"},
                    {"Name": "Unfinished", "Unit": "Count"},
                    {"Name": "BatchSize", "Unit": "Count"},
                    {"Name": "BreakerOpened", "Unit": "Count"},
                    {"Name": "AttemptLatency", "Unit": "Milliseconds"},
                ]),
            ),
            "Service": settings.service,
            "BreakerOpened": opened.values().sum::<u64>(),
            "Delivered": count(|d| matches!(d, Disposition::Delivered)),
            "Retried": count(|d| {
                matches!(d, Disposition::RetryLater { .. } | Disposition::Carried { .. })
            }),
            "Unfinished": count(|d| matches!(d, Disposition::Unfinished(_))),
            "BatchSize": report.records.len(),
        });
        if let Some(first) = chunks.next() {
            doc["AttemptLatency"] = json!(first);
        }
        doc
    }];
    // Latencies past a line's first 100 values: lines of their own.
    let more_latencies = |chunks: std::slice::Chunks<'_, f64>,
                          dimension: Option<(&str, &str)>|
     -> Vec<Value> {
        chunks.map(|chunk| {
            let names: Vec<&str> = std::iter::once("Service").chain(dimension.map(|d| d.0)).collect();
            let mut doc = json!({
                "_aws": directive(json!([names]), json!([{"Name": "AttemptLatency", "Unit": "Milliseconds"}])),
                "Service": settings.service,
                "AttemptLatency": chunk,
            });
            if let Some((name, value)) = dimension {
                doc[name] = json!(value);
            }
            doc
        })
        .collect()
    };
    docs.extend(more_latencies(chunks, None));
    for (reason, n) in reasons {
        docs.push(json!({
            "_aws": directive(json!([["Service", "Reason"]]), json!([{"Name": "DeadLettered", "Unit": "Count"}])),
            "Service": settings.service,
            "Reason": reason,
            "DeadLettered": n,
        }));
    }
    for (host, h) in per_destination(report, opened, settings.host_limit) {
        let mut chunks = h.latencies.chunks(MAX_VALUES);
        let mut doc = json!({
            "_aws": directive(
                json!([["Service", "Destination"]]),
                json!([
                    {"Name": "Delivered", "Unit": "Count"},
                    {"Name": "Retried", "Unit": "Count"},
                    {"Name": "DeadLettered", "Unit": "Count"},
                    {"Name": "BreakerOpened", "Unit": "Count"},
                    {"Name": "AttemptLatency", "Unit": "Milliseconds"},
                ]),
            ),
            "Service": settings.service,
            "Destination": host,
            "Delivered": h.delivered,
            "Retried": h.retried,
            "DeadLettered": h.dead_lettered,
            "BreakerOpened": h.breakers_opened,
        });
        if let Some(first) = chunks.next() {
            doc["AttemptLatency"] = json!(first);
        }
        docs.push(doc);
        docs.extend(more_latencies(chunks, Some(("Destination", host.as_str()))));
    }
    docs
}

/// Writes the batch's EMF lines to `out` (stdout in the binaries).
pub fn emit(settings: &MetricsSettings, report: &BatchReport, out: &mut impl Write) {
    if !settings.enabled || report.records.is_empty() {
        return;
    }
    let mut text = String::new();
    let opened = take_breakers_opened();
    for doc in documents(settings, report, &opened, SystemTime::now()) {
        text.push_str(&doc.to_string());
        text.push('\n');
    }
    // One write, so the lines are not interleaved with log output.
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        tracing::warn!(error = %e, "could not write metrics");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::RecordReport;
    use crate::policy::FailureReason;
    use std::time::Duration;

    fn record(disposition: Disposition, latency_ms: Option<u64>) -> RecordReport {
        RecordReport {
            message_id: "m".into(),
            receipt_handle: "r".into(),
            disposition,
            attempt_latency: latency_ms.map(Duration::from_millis),
            destination: None,
        }
    }

    fn report() -> BatchReport {
        BatchReport {
            records: vec![
                record(Disposition::Delivered, Some(12)),
                record(Disposition::Delivered, Some(30)),
                record(
                    Disposition::RetryLater {
                        delay: Duration::from_secs(10),
                    },
                    Some(5),
                ),
                record(
                    Disposition::DeadLettered(FailureReason::NonRetryable),
                    Some(7),
                ),
                record(
                    Disposition::DeadLettered(FailureReason::InvalidMessage),
                    None,
                ),
                record(
                    Disposition::DeadLettered(FailureReason::InvalidMessage),
                    None,
                ),
                record(Disposition::Unfinished("x".into()), None),
            ],
        }
    }

    #[test]
    fn a_batch_becomes_emf_documents_with_its_counts() {
        let settings = MetricsSettings {
            service: "retryq-processor".into(),
            ..Default::default()
        };
        let mut out = Vec::new();
        emit(&settings, &report(), &mut out);
        let docs: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        // (Breakers opened by other tests would add lines by destination.)
        let docs: Vec<Value> = docs
            .into_iter()
            .filter(|d| d.get("Destination").is_none())
            .collect();
        assert_eq!(docs.len(), 3, "batch metrics, then one line per reason");
        let main = &docs[0];
        let cw = &main["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Namespace"], "retryq");
        assert!(main["_aws"]["Timestamp"].as_u64().unwrap() > 1_700_000_000_000);
        let names: Vec<&str> = cw["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "Delivered",
                "Retried",
                "Unfinished",
                "BatchSize",
                "BreakerOpened",
                "AttemptLatency"
            ]
        );
        for name in names {
            assert!(main.get(name).is_some(), "{name} has a value");
        }
        assert_eq!(main["Service"], "retryq-processor");
        assert_eq!(main["Delivered"], 2);
        assert_eq!(main["Retried"], 1);
        assert_eq!(main["Unfinished"], 1);
        assert_eq!(main["BatchSize"], 7);
        assert_eq!(main["AttemptLatency"], json!([12.0, 30.0, 5.0, 7.0]));
        let by_reason: BTreeMap<String, u64> = docs[1..]
            .iter()
            .map(|d| {
                assert_eq!(
                    d["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
                    json!([["Service", "Reason"]])
                );
                (
                    d["Reason"].as_str().unwrap().to_owned(),
                    d["DeadLettered"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            by_reason,
            BTreeMap::from([("invalid-message".into(), 2), ("non-retryable".into(), 1)])
        );
    }

    #[test]
    fn long_batches_split_latencies_into_lines_of_at_most_100_values() {
        let report = BatchReport {
            records: (0..250)
                .map(|i| record(Disposition::Delivered, Some(i)))
                .collect(),
        };
        let docs = default_documents(&report);
        let lengths: Vec<usize> = docs
            .iter()
            .map(|d| d["AttemptLatency"].as_array().unwrap().len())
            .collect();
        assert_eq!(lengths, [100, 100, 50]);
    }

    #[test]
    fn the_off_switch_and_the_namespace_are_honoured() {
        let mut out = Vec::new();
        emit(
            &MetricsSettings {
                enabled: false,
                ..Default::default()
            },
            &report(),
            &mut out,
        );
        assert!(out.is_empty());
        let docs = documents(
            &MetricsSettings {
                namespace: "shop/retries".into(),
                ..Default::default()
            },
            &report(),
            &BTreeMap::new(),
            SystemTime::now(),
        );
        assert!(docs
            .iter()
            .all(|d| d["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "shop/retries"));
    }

    /// The EMF documents of `report` with the default settings and no
    /// breaker openings.
    fn default_documents(report: &BatchReport) -> Vec<Value> {
        documents(
            &MetricsSettings::default(),
            report,
            &BTreeMap::new(),
            SystemTime::now(),
        )
    }

    fn to(host: &str, disposition: Disposition, latency_ms: Option<u64>) -> RecordReport {
        RecordReport {
            destination: Some(host.into()),
            ..record(disposition, latency_ms)
        }
    }

    #[test]
    fn a_busy_destination_splits_its_latencies_too() {
        let report = BatchReport {
            records: (0..150)
                .map(|i| to("busy.example.com", Disposition::Delivered, Some(i)))
                .collect(),
        };
        let docs = default_documents(&report);
        let by_host: Vec<(usize, &Value)> = docs
            .iter()
            .filter(|d| d["Destination"] == "busy.example.com")
            .map(|d| {
                (
                    d["AttemptLatency"].as_array().unwrap().len(),
                    &d["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
                )
            })
            .collect();
        assert_eq!(by_host.len(), 2);
        assert_eq!((by_host[0].0, by_host[1].0), (100, 50));
        assert_eq!(by_host[1].1, &json!([["Service", "Destination"]]));
    }

    #[test]
    fn a_breakers_host_and_port_count_under_its_host() {
        assert_eq!(destination_of("127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(destination_of("[::1]:8443"), "[::1]");
        assert_eq!(destination_of("api.example.com"), "api.example.com");
        assert_eq!(destination_of("::1"), "::1");
    }

    #[test]
    fn destinations_get_their_own_figures_and_the_hosts_past_the_limit_count_as_other() {
        let retry = || Disposition::RetryLater {
            delay: Duration::from_secs(1),
        };
        let mut records = vec![
            to("a.example.com", Disposition::Delivered, Some(10)),
            to("a.example.com", Disposition::Delivered, Some(20)),
            to("a.example.com", retry(), Some(30)),
            to("b.example.com", retry(), Some(40)),
            to(
                "b.example.com",
                Disposition::DeadLettered(FailureReason::NonRetryable),
                Some(5),
            ),
            to("c.example.com", Disposition::Delivered, Some(1)),
            to("d.example.com", retry(), Some(2)),
            record(
                Disposition::DeadLettered(FailureReason::InvalidMessage),
                None,
            ),
        ];
        records.reverse();
        let opened = BTreeMap::from([
            ("b.example.com".to_owned(), 1),
            ("z.example.com".to_owned(), 2),
        ]);
        let settings = MetricsSettings {
            host_limit: 2,
            ..Default::default()
        };
        let docs = documents(
            &settings,
            &BatchReport { records },
            &opened,
            SystemTime::now(),
        );
        let by_destination: BTreeMap<String, &Value> = docs
            .iter()
            .filter_map(|d| Some((d.get("Destination")?.as_str()?.to_owned(), d)))
            .collect();

        assert_eq!(
            by_destination.keys().collect::<Vec<_>>(),
            ["a.example.com", "b.example.com", "other"],
            "the two busiest hosts, then the rest"
        );
        let a = by_destination["a.example.com"];
        assert_eq!(
            (a["Delivered"].as_u64(), a["Retried"].as_u64()),
            (Some(2), Some(1))
        );
        assert_eq!(a["AttemptLatency"].as_array().unwrap().len(), 3);
        let b = by_destination["b.example.com"];
        assert_eq!(
            (b["DeadLettered"].as_u64(), b["BreakerOpened"].as_u64()),
            (Some(1), Some(1))
        );
        let other = by_destination["other"];
        assert_eq!(
            (
                other["Delivered"].as_u64(),
                other["Retried"].as_u64(),
                other["BreakerOpened"].as_u64()
            ),
            (Some(1), Some(1), Some(2)),
            "c, d and the breaker of z"
        );
        assert_eq!(
            a["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Service", "Destination"]])
        );
    }
}
