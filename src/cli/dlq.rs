//! `retryq dlq list` and `retryq dlq redrive`.

use super::Failure;
use crate::dlq::{self, DeadLetterSummary};
use crate::queue::Queues;
use crate::wiring;

pub(super) async fn list(dlq_url: &str, json: bool, max: usize) -> Result<(), Failure> {
    let queues = Queues::new(wiring::sqs_client_from_env().await);
    let letters = dlq::list(&queues, dlq_url, max)
        .await
        .map_err(|e| Failure::Work(e.to_string()))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&letters).expect("serializable")
        );
    } else {
        print!("{}", table(&letters));
    }
    Ok(())
}

pub(super) async fn redrive(
    dlq_url: &str,
    to: &str,
    max: usize,
    selection: &dlq::Selection,
) -> Result<(), Failure> {
    let queues = Queues::new(wiring::sqs_client_from_env().await);
    let store = crate::payload::store::PayloadStore::new();
    let payloads = dlq::RedrivePayloads {
        store: &store,
        buckets: &super::config()?.payload_buckets,
    };
    let stats = dlq::redrive(&queues, &payloads, dlq_url, to, max, selection)
        .await
        .map_err(|e| Failure::Work(e.to_string()))?;
    let finished = match stats.already_finished {
        0 => String::new(),
        n => format!(", already finished {n} (deleted: their payload says they were delivered or dead-lettered)"),
    };
    println!(
        "moved {}, skipped {}, failed {}{finished}",
        stats.moved, stats.skipped, stats.failed
    );
    if stats.failed > 0 {
        return Err(Failure::Work(format!(
            "{} dead letters could not be moved",
            stats.failed
        )));
    }
    Ok(())
}

fn table(letters: &[DeadLetterSummary]) -> String {
    let dash = || "-".to_owned();
    let mut out = format!(
        "{:<38} {:<22} {:>6} {:>8} {:>9}  {}\n",
        "ID", "FAILURE REASON", "STATUS", "ATTEMPTS", "AGE", "DESTINATION"
    );
    for l in letters {
        out.push_str(&format!(
            "{:<38} {:<22} {:>6} {:>8} {:>9}  {}\n",
            l.id.clone()
                .unwrap_or_else(|| format!("({})", l.sqs_message_id)),
            l.failure_reason.clone().unwrap_or_else(dash),
            l.last_status_code.clone().unwrap_or_else(dash),
            l.attempt_count.clone().unwrap_or_else(dash),
            age(l.age_seconds),
            l.destination.clone().unwrap_or_else(dash),
        ));
    }
    out.push_str(&format!("{} dead letter(s)\n", letters.len()));
    out
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(36_000), "10h");
        assert_eq!(age(864_000), "10d");
    }
}
