//! `retryq validate --queue-url Q --dlq-url D`: what the processor would
//! refuse or warn about at run time (spec §8), found before it runs.
//!
//! [`check_queues`] is pure: it compares the queues' settings with the
//! configuration and names the queue and the attribute of each problem.

use std::time::Duration;

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
    // A standard queue's records are carried over before its retention
    // ends them (§12.5): the retention is a horizon on FIFO queues only.
    if usable < horizon && crate::queue::is_fifo(&source.url) {
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

pub use crate::payload::LifecycleRule;

/// The rules of `bucket` that could expire a payload while a message in
/// `queues` still points to it: a payload may be needed for as long as the
/// longest retention among them (the producer's object in the retry queue;
/// a letter's copy, written with the letter, in the DLQ).
pub fn check_payload_lifecycle(
    bucket: &str,
    rules: &[LifecycleRule],
    queues: &[&QueueSettings],
) -> Vec<Finding> {
    let needed = queues.iter().map(|q| q.retention).max().unwrap_or_default();
    // A finished payload is still read by a redelivery of its message,
    // up to SQS's 12-hour visibility limit after its mark.
    let finished_needed = Duration::from_secs(43_200);
    rules
        .iter()
        .filter(|r| r.enabled)
        .flat_map(|rule| match rule.only_finished {
            false => [expiry_problem(rule, needed), archive_problem(rule, needed)],
            true => [None, archive_problem(rule, finished_needed)],
        })
        .flatten()
        .map(|problem| Finding {
            queue: format!("s3://{bucket}"),
            attribute: "LifecycleConfiguration",
            problem,
        })
        .collect()
}

/// A rule that expires payloads before a message may stop naming them.
fn expiry_problem(rule: &LifecycleRule, needed: Duration) -> Option<String> {
    if let Some(date) = &rule.expiration_date {
        return Some(format!(
            "rule {:?} expires every payload it matches on {date}, whatever a message still needs",
            rule.id
        ));
    }
    rule.expiration_days
        .filter(|days| u64::from(*days) * 86_400 < needed.as_secs())
        .map(|days| {
            format!(
                "rule {:?} expires payloads after {days} day(s), before the {} s a message may point to one: it would be dead-lettered invalid-message",
                rule.id,
                needed.as_secs()
            )
        })
}

/// A rule that archives payloads (S3 then serves them only once restored)
/// before a message may stop naming them.
fn archive_problem(rule: &LifecycleRule, needed: Duration) -> Option<String> {
    let archive = rule.archive.as_ref()?;
    let when = match (&archive.date, archive.days) {
        (Some(date), _) => format!("on {date}"),
        (None, Some(days)) if u64::from(days) * 86_400 < needed.as_secs() => {
            format!("after {days} day(s)")
        }
        _ => return None,
    };
    Some(format!(
        "rule {:?} moves payloads to {} {when}, before the {} s a message may point to one: S3 will not serve them, and they would be dead-lettered invalid-message",
        rule.id,
        archive.storage_class,
        needed.as_secs()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Config {
        Config::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
        .unwrap()
    }

    #[test]
    fn lifecycle_rules_that_expire_payloads_before_their_messages_are_found() {
        let rule =
            |id: &str, days: Option<u32>, date: Option<&str>, only_finished: bool| LifecycleRule {
                id: id.into(),
                enabled: true,
                expiration_days: days,
                expiration_date: date.map(str::to_owned),
                only_finished,
                archive: None,
            };
        let source = queue("q", 14 * 86_400, 262_144, 60);
        let dlq = queue("d", 14 * 86_400, 262_144, 60);
        let ok = [
            rule("general", Some(15), None, false),
            rule("exactly-enough", Some(14), None, false),
            rule("finished", Some(1), None, true),
        ];
        assert_eq!(check_payload_lifecycle("b", &ok, &[&source, &dlq]), []);
        let mut off = rule("short-but-off", Some(1), None, false);
        off.enabled = false;
        assert_eq!(check_payload_lifecycle("b", &[off], &[&source]), []);

        let bad = [
            rule("week", Some(7), None, false),
            rule("fixed", None, Some("2030-01-01"), false),
        ];
        let found = check_payload_lifecycle("b", &bad, &[&source, &dlq]);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found
            .iter()
            .all(|f| f.queue == "s3://b" && f.attribute == "LifecycleConfiguration"));
        assert!(found[0].problem.contains("\"week\"") && found[0].problem.contains("1209600"));
        assert!(found[1].problem.contains("2030-01-01"));
        let archived = |days: Option<u32>, date: Option<&str>, only_finished: bool| LifecycleRule {
            archive: Some(crate::payload::Archive {
                storage_class: "GLACIER".into(),
                days,
                date: date.map(str::to_owned),
            }),
            ..rule("archive", None, None, only_finished)
        };
        let found = check_payload_lifecycle("b", &[archived(Some(1), None, false)], &[&dlq]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].problem.contains("GLACIER after 1 day(s)"),
            "{found:?}"
        );
        assert_eq!(
            check_payload_lifecycle("b", &[archived(None, Some("2030-01-01"), false)], &[&dlq])
                .len(),
            1
        );
        for fine in [
            archived(Some(30), None, false),
            archived(Some(1), None, true),
        ] {
            assert_eq!(check_payload_lifecycle("b", &[fine], &[&source, &dlq]), []);
        }
        // Only the longest retention counts: a short source with a long DLQ.
        let short = queue("q", 4 * 86_400, 262_144, 60);
        assert_eq!(
            check_payload_lifecycle("b", &[rule("w", Some(7), None, false)], &[&short, &dlq]).len(),
            1
        );
    }

    fn queue(url: &str, retention: u64, size: usize, visibility: u64) -> QueueSettings {
        QueueSettings {
            url: url.into(),
            retention: Duration::from_secs(retention),
            max_message_size: size,
            visibility_timeout: Duration::from_secs(visibility),
            max_receive_count: None,
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
        let source = queue("q.fifo", 60, 262_144, 5);
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
                ("q.fifo", "MessageRetentionPeriod"),
                ("q.fifo", "VisibilityTimeout"),
            ]
        );
        assert!(findings[2]
            .to_string()
            .starts_with("q.fifo MessageRetentionPeriod: 60 s"));
    }

    #[test]
    fn many_attempts_outgrow_fourteen_days_on_a_fifo_queue_only() {
        let standard = queue("q", DAYS_14, 262_144, 5_400);
        assert_eq!(
            check_queues(&config(&[("MAX_ATTEMPTS", "1000")]), &standard, None),
            [],
            "carried over"
        );
        let source = queue("q.fifo", DAYS_14, 262_144, 5_400);
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
