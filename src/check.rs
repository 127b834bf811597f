//! `retryq validate --queue-url Q --dlq-url D`: what the processor would
//! refuse or warn about at run time (spec §8), found before it runs.
//!
//! [`check_queues`] is pure: it compares the queues' settings with the
//! configuration and names the queue and the attribute of each problem.

use crate::config::Config;
pub use crate::queue::QueueSettings;

/// One problem: the queue, its attribute, and what goes wrong at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub queue: String,
    pub attribute: &'static str,
    pub problem: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.queue, self.attribute, self.problem)
    }
}

/// Everything wrong with `source` (and its `dlq`) for `config`.
pub fn check_queues(
    config: &Config,
    source: &QueueSettings,
    dlq: Option<&QueueSettings>,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut found = |queue: &QueueSettings, attribute, problem: String| {
        findings.push(Finding {
            queue: queue.url.clone(),
            attribute,
            problem,
        })
    };
    if let Some(dlq) = dlq {
        if dlq.max_message_size < source.max_message_size {
            found(
                dlq,
                "MaximumMessageSize",
                format!(
                    "{} bytes is smaller than the source queue's {} bytes: a record too large for the DLQ stays in the source queue unattempted",
                    dlq.max_message_size, source.max_message_size
                ),
            );
        }
        if dlq.retention < source.retention {
            found(
                dlq,
                "MessageRetentionPeriod",
                format!(
                    "{} s is shorter than the source queue's {} s: a message moved by the redrive policy keeps its first enqueue time and can be deleted from the DLQ early",
                    dlq.retention.as_secs(), source.retention.as_secs()
                ),
            );
        }
    }
    let horizon = config
        .retry
        .worst_case_horizon(config.request_timeout)
        .saturating_add(
            config
                .batching_window
                .saturating_mul(config.retry.max_attempts),
        );
    let usable = source.retention.saturating_sub(config.retention_margin);
    if usable < horizon {
        found(
            source,
            "MessageRetentionPeriod",
            format!(
                "{} s, less RETENTION_MARGIN_SECONDS ({} s), is shorter than the worst-case retry horizon of {} s for MAX_ATTEMPTS={} (RETRY_AFTER_MAX_SECONDS={}, BACKOFF_MAX_SECONDS={}): the last retries of a slow message would be dead-lettered as expired",
                source.retention.as_secs(),
                config.retention_margin.as_secs(),
                horizon.as_secs(),
                config.retry.max_attempts,
                config.retry.retry_after_max.as_secs(),
                config.retry.backoff.nominal(u32::MAX).as_secs(),
            ),
        );
    }
    if source.visibility_timeout < config.request_timeout {
        found(
            source,
            "VisibilityTimeout",
            format!(
                "{} s is shorter than REQUEST_TIMEOUT_SECONDS ({} s): under Lambda a slow request can be made again by another invocation while it runs (retryq worker extends it)",
                source.visibility_timeout.as_secs(),
                config.request_timeout.as_secs()
            ),
        );
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(vars: &[(&str, &str)]) -> Config {
        Config::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
        .unwrap()
    }

    fn queue(url: &str, retention: u64, size: usize, visibility: u64) -> QueueSettings {
        QueueSettings {
            url: url.into(),
            retention: Duration::from_secs(retention),
            max_message_size: size,
            visibility_timeout: Duration::from_secs(visibility),
        }
    }

    const DAYS_14: u64 = 14 * 86_400;

    #[test]
    fn the_template_defaults_pass() {
        let source = queue("q", DAYS_14, 262_144, 5_400);
        let dlq = queue("d", DAYS_14, 262_144, 30);
        assert_eq!(check_queues(&config(&[]), &source, Some(&dlq)), []);
    }

    #[test]
    fn each_problem_names_the_queue_and_the_attribute() {
        let source = queue("q", 60, 262_144, 5);
        let dlq = queue("d", 30, 1_024, 30);
        let findings = check_queues(&config(&[]), &source, Some(&dlq));
        let named: Vec<(&str, &str)> = findings
            .iter()
            .map(|f| (f.queue.as_str(), f.attribute))
            .collect();
        assert_eq!(
            named,
            [
                ("d", "MaximumMessageSize"),
                ("d", "MessageRetentionPeriod"),
                ("q", "MessageRetentionPeriod"),
                ("q", "VisibilityTimeout"),
            ]
        );
        assert!(findings[2]
            .to_string()
            .starts_with("q MessageRetentionPeriod: 60 s"));
    }

    #[test]
    fn many_attempts_outgrow_fourteen_days() {
        let source = queue("q", DAYS_14, 262_144, 5_400);
        assert_eq!(
            check_queues(&config(&[("MAX_ATTEMPTS", "20")]), &source, None),
            []
        );
        let findings = check_queues(&config(&[("MAX_ATTEMPTS", "1000")]), &source, None);
        assert_eq!(findings.len(), 1);
        assert!(
            findings[0].problem.contains("MAX_ATTEMPTS=1000"),
            "{}",
            findings[0]
        );
    }
}
