//! `retryq attempts ID`: a Retry Message's attempt history from the ledger.

use super::Failure;
use crate::config::StateSettings;
use crate::fleet::ledger::RecordedAttempt;
use crate::fleet::FleetState;

pub(super) async fn run(id: &str, table: String, json: bool) -> Result<(), Failure> {
    let fleet = FleetState::from_env(StateSettings {
        table,
        ..StateSettings::default()
    });
    let attempts = fleet
        .attempts(id)
        .await
        .map_err(|e| Failure::Work(e.to_string()))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&attempts).expect("serializable")
        );
    } else if attempts.is_empty() {
        println!("no recorded attempts for {id:?}");
    } else {
        print!("{}", table_of(&attempts));
    }
    Ok(())
}

fn table_of(attempts: &[RecordedAttempt]) -> String {
    let mut out = format!(
        "{:>3}  {:<24}  {:<36}  {:<14}  {:>6}  {:>8}  {}\n",
        "#", "STARTED", "SQS MESSAGE", "OUTCOME", "STATUS", "LATENCY", "LAST ERROR"
    );
    let mut copy = None;
    for a in attempts {
        // The first attempt of each carried copy says where it came from.
        if copy != Some(&a.sqs_message_id) {
            copy = Some(&a.sqs_message_id);
            if let Some(original) = &a.carried_from {
                out.push_str(&format!(
                    "     carried over: a copy of {original}, its count continued\n"
                ));
            }
        }
        out.push_str(&format!(
            "{:>3}  {:<24}  {:<36}  {:<14}  {:>6}  {:>6}ms  {}\n",
            a.attempt,
            a.started_at,
            a.sqs_message_id,
            a.outcome,
            a.status.map_or("-".into(), |s| s.to_string()),
            a.latency_ms,
            a.last_error.as_deref().unwrap_or("-"),
        ));
        if let Some(snippet) = &a.response_snippet {
            out.push_str(&format!(
                "     answer: {}\n",
                crate::policy::one_line(snippet, 200)
            ));
        }
    }
    out
}
