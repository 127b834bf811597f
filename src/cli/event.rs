//! `retryq event FILE…`: an SQS event for `cargo lambda invoke`.

use std::path::PathBuf;
use std::time::SystemTime;

use super::{read, Failure};
use crate::message::RetryMessage;

pub(super) fn run(
    files: &[PathBuf],
    queue_arn: &str,
    receive_count: u32,
    raw: bool,
) -> Result<(), Failure> {
    let mut bodies = Vec::new();
    for file in files {
        let text = read(file)?;
        if !raw {
            RetryMessage::parse(&text).map_err(|e| {
                Failure::Usage(format!(
                    "{}: invalid: {e} (use --raw to include it anyway)",
                    file.display()
                ))
            })?;
        }
        bodies.push(text);
    }
    let event = event(&bodies, queue_arn, receive_count);
    println!(
        "{}",
        serde_json::to_string_pretty(&event).expect("serializable")
    );
    Ok(())
}

/// An SQS event as Lambda would send it for these bodies.
pub fn event(
    bodies: &[String],
    queue_arn: &str,
    receive_count: u32,
) -> aws_lambda_events::event::sqs::SqsEvent {
    let region = queue_arn.split(':').nth(3).unwrap_or("us-east-1");
    let sent = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        .to_string();
    let messages: Vec<aws_sdk_sqs::types::Message> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            use aws_sdk_sqs::types::MessageSystemAttributeName as A;
            aws_sdk_sqs::types::Message::builder()
                .message_id(uuid::Uuid::new_v4().to_string())
                .receipt_handle(format!("retryq-event-receipt-handle-{i}"))
                .body(body)
                .attributes(A::ApproximateReceiveCount, receive_count.to_string())
                .attributes(A::SentTimestamp, sent.clone())
                .attributes(A::ApproximateFirstReceiveTimestamp, sent.clone())
                .attributes(A::SenderId, "retryq-event")
                .build()
        })
        .collect();
    crate::trigger::sqs_event(&messages, queue_arn, region)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_hold_the_bodies_with_lambda_attributes() {
        let e = event(&["{}".into()], "arn:aws:sqs:eu-west-1:1:q", 3);
        assert_eq!(e.records[0].body.as_deref(), Some("{}"));
        assert_eq!(e.records[0].attributes["ApproximateReceiveCount"], "3");
        assert_eq!(e.records[0].aws_region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            e.records[0].event_source_arn.as_deref(),
            Some("arn:aws:sqs:eu-west-1:1:q")
        );
    }
}
