//! Metrics in CloudWatch Embedded Metric Format (EMF), written to stdout.
//!
//! Lambda sends stdout to CloudWatch Logs, which turns EMF lines into
//! metrics with no API call and no extra latency. One batch gives:
//!
//! * `Delivered`, `Retried`, `Unfinished`, `BatchSize` (Count), dimension
//!   `Service`;
//! * `DeadLettered` (Count), dimensions `Service` and `Reason`, one line per
//!   reason seen;
//! * `AttemptLatency` (Milliseconds), one value per attempt (EMF takes at
//!   most 100 values a line, so long batches take several lines).
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
use std::time::SystemTime;

use serde_json::{json, Value};

use crate::batch::{BatchReport, Disposition};

/// EMF's limit on values per metric per line.
const MAX_VALUES: usize = 100;

/// Where and whether metrics are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    pub enabled: bool,
    pub namespace: String,
    /// The `Service` dimension.
    pub service: String,
}

impl Default for MetricsSettings {
    fn default() -> MetricsSettings {
        MetricsSettings {
            enabled: true,
            namespace: "retryq".into(),
            service: "retryq-worker".into(),
        }
    }
}

/// The EMF documents for one batch, one JSON object each.
pub fn documents(settings: &MetricsSettings, report: &BatchReport, now: SystemTime) -> Vec<Value> {
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
        .map(|d| (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0)
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
                    {"Name": "AttemptLatency", "Unit": "Milliseconds"},
                ]),
            ),
            "Service": settings.service,
            "Delivered": count(|d| matches!(d, Disposition::Delivered)),
            "Retried": count(|d| matches!(d, Disposition::RetryLater { .. })),
            "Unfinished": count(|d| matches!(d, Disposition::Unfinished(_))),
            "BatchSize": report.records.len(),
        });
        if let Some(first) = chunks.next() {
            doc["AttemptLatency"] = json!(first);
        }
        doc
    }];
    for chunk in chunks {
        docs.push(json!({
            "_aws": directive(json!([["Service"]]), json!([{"Name": "AttemptLatency", "Unit": "Milliseconds"}])),
            "Service": settings.service,
            "AttemptLatency": chunk,
        }));
    }
    for (reason, n) in reasons {
        docs.push(json!({
            "_aws": directive(json!([["Service", "Reason"]]), json!([{"Name": "DeadLettered", "Unit": "Count"}])),
            "Service": settings.service,
            "Reason": reason,
            "DeadLettered": n,
        }));
    }
    docs
}

/// Writes the batch's EMF lines to `out` (stdout in the binaries).
pub fn emit(settings: &MetricsSettings, report: &BatchReport, out: &mut impl Write) {
    if !settings.enabled || report.records.is_empty() {
        return;
    }
    let mut text = String::new();
    for doc in documents(settings, report, SystemTime::now()) {
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
        let docs = documents(&MetricsSettings::default(), &report, SystemTime::now());
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
            SystemTime::now(),
        );
        assert!(docs
            .iter()
            .all(|d| d["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "shop/retries"));
    }
}
