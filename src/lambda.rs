//! Lambda adapter: `SqsEvent` in, partial batch response out.
//!
//! The handler turns Lambda's records into [`Record`]s, runs the shared
//! batch path, and lists every record that was not acknowledged in
//! `batchItemFailures` (the event source mapping must have
//! `FunctionResponseTypes: [ReportBatchItemFailures]`). It returns `Err`
//! only in the one case where a partial answer cannot be given: a record
//! without a `messageId` that was not acknowledged. Failing the whole batch
//! then makes Lambda retry all of it, which loses nothing.
//!
//! The batch deadline is the invocation's deadline less
//! [`DEADLINE_MARGIN`], the time kept to answer Lambda. A context without a
//! deadline (`Context::default()` in tests) sets none.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use lambda_runtime::{Context, Error, LambdaEvent};

use crate::process::{Processor, Record};

/// Time kept between the last record's work and Lambda's deadline, to send
/// the response.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(1000);

/// The function's handler.
pub async fn handle(
    processor: Arc<Processor>,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, Error> {
    let deadline = batch_deadline(&event.context);
    let records: Vec<Record> = event.payload.records.into_iter().map(record).collect();
    let report = processor.process_batch(records, deadline).await;
    let mut response = SqsBatchResponse::default();
    for failed in report.unacknowledged() {
        if failed.message_id.is_empty() {
            return Err("a record without messageId was not acknowledged; failing the whole batch so none is lost".into());
        }
        response.add_failure(failed.message_id.clone());
    }
    Ok(response)
}

/// Converts a Lambda SQS record. Missing fields become empty values, which
/// the processor treats as invalid (body) or as failed SQS calls (receipt
/// handle, ARN), never as success.
pub fn record(m: SqsMessage) -> Record {
    let receive_count = m
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|c| c.parse().ok())
        .unwrap_or(1);
    let message_group_id = m.attributes.get("MessageGroupId").cloned();
    Record {
        message_id: m.message_id.unwrap_or_default(),
        receipt_handle: m.receipt_handle.unwrap_or_default(),
        body: m.body.unwrap_or_default(),
        receive_count,
        source_queue_arn: m.event_source_arn.unwrap_or_default(),
        message_group_id,
    }
}

fn batch_deadline(context: &Context) -> Option<Instant> {
    if context.deadline == 0 {
        return None;
    }
    let left = context
        .deadline()
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Some(Instant::now() + left.saturating_sub(DEADLINE_MARGIN))
}
