//! `retryq validate FILE` and `retryq validate --queue-url Q --dlq-url D`.

use std::path::Path;

use super::{config, read, Failure};
use crate::message::RetryMessage;
use crate::queue::Queues;
use crate::{check, wiring};

/// Checks a Retry Message file against v1.
pub(super) fn file(file: &Path) -> Result<(), Failure> {
    let text = read(file)?;
    RetryMessage::parse(&text)
        .map_err(|e| Failure::Usage(format!("{}: invalid: {e}", file.display())))?;
    println!("{}: valid Retry Message v1", file.display());
    Ok(())
}

/// Reads both queues (and the payload bucket's lifecycle), prints what it
/// read and every finding; exit 1 when there is one.
pub(super) async fn queues(
    queue_url: &str,
    dlq_url: Option<&str>,
    payload_bucket: Option<&str>,
) -> Result<(), Failure> {
    let config = config()?;
    let queues = Queues::new(wiring::sqs_client_from_env().await);
    let read = |url: String| {
        let queues = &queues;
        async move {
            queues
                .settings(&url)
                .await
                .map_err(|e| Failure::Work(format!("{url}: {e}")))
        }
    };
    let source = read(queue_url.to_owned()).await?;
    let dlq = match dlq_url {
        Some(url) => Some(read(url.to_owned()).await?),
        None => None,
    };
    for q in std::iter::once(&source).chain(dlq.as_ref()) {
        println!(
            "{}: MessageRetentionPeriod {} s, MaximumMessageSize {} bytes, VisibilityTimeout {} s",
            q.url,
            q.retention.as_secs(),
            q.max_message_size,
            q.visibility_timeout.as_secs()
        );
    }
    let mut findings = check::check_queues(&config, &source, dlq.as_ref());
    if let Some(bucket) = payload_bucket {
        let rules = crate::payload::store::PayloadStore::new()
            .lifecycle_rules(bucket)
            .await
            .map_err(Failure::Work)?;
        println!("s3://{bucket}: {} lifecycle rule(s)", rules.len());
        let queues: Vec<&check::QueueSettings> =
            std::iter::once(&source).chain(dlq.as_ref()).collect();
        findings.extend(check::check_payload_lifecycle(bucket, &rules, &queues));
    }
    for finding in &findings {
        println!("error: {finding}");
    }
    // §12.8: not an error (ALLOWED_DESTINATIONS may be narrow enough), but
    // a producer could name such a profile with any allowed URL.
    for name in config.auth.reaching_any_host() {
        println!(
            "warning: AUTH_PROFILES {name}: no hosts, so its credentials may go to any destination ALLOWED_DESTINATIONS allows"
        );
    }
    match findings.len() {
        0 => {
            println!("ok: nothing the processor would refuse or warn about");
            Ok(())
        }
        n => Err(Failure::Work(format!("{n} problem(s) with the queues"))),
    }
}
