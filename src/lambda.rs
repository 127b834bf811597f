//! Lambda adapter: the SQS event in ([`SqsRecords`]), partial batch
//! response out.
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
//! [`deadline_margin`], the time kept to answer Lambda (more on a small
//! function, whose share of a CPU finishes slowly). A context without a
//! deadline (`Context::default()` in tests) sets none.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_lambda_events::event::sqs::SqsBatchResponse;
use lambda_runtime::{Context, Error, LambdaEvent};

use crate::batch::{BatchReport, Record};
use crate::process::Processor;

mod event;
pub use event::{SqsRecord, SqsRecords};

/// Time kept between the last record's work and Lambda's deadline, to send
/// the response, on a function of [`FULL_MARGIN_MB`] or more.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(1000);

/// From this memory size up, [`DEADLINE_MARGIN`] is enough.
pub const FULL_MARGIN_MB: u32 = 512;

/// The margin kept before the deadline on a function of `memory_mb`: on a
/// smaller share of a CPU, the work under way when the deadline comes (a
/// large offloaded body being parsed, which no timer interrupts) takes
/// longer to end. [`DEADLINE_MARGIN`] × 512 / `memory_mb` below 512 MB (2 s
/// at 256 MB, 4 s at 128 MB), [`DEADLINE_MARGIN`] otherwise or when the
/// memory size is not known.
pub fn deadline_margin(memory_mb: i32) -> Duration {
    match u32::try_from(memory_mb) {
        Ok(mb) if mb > 0 && mb < FULL_MARGIN_MB => DEADLINE_MARGIN * FULL_MARGIN_MB / mb,
        _ => DEADLINE_MARGIN,
    }
}

/// The function's handler.
pub async fn handle(
    processor: Arc<Processor>,
    event: LambdaEvent<SqsRecords>,
) -> Result<SqsBatchResponse, Error> {
    let deadline = batch_deadline(&event.context);
    tracing::debug!(records = event.payload.records.len(), "batch received");
    let records: Vec<Record> = event
        .payload
        .records
        .into_iter()
        .map(Record::from)
        .collect();
    let report = processor.process_batch(records, deadline).await;
    batch_response(&report)
}

/// The partial batch response: every record not acknowledged.
pub fn batch_response(report: &BatchReport) -> Result<SqsBatchResponse, Error> {
    let mut response = SqsBatchResponse::default();
    for failed in report.unacknowledged() {
        if failed.message_id.is_empty() {
            return Err("a record without messageId was not acknowledged; failing the whole batch so none is lost".into());
        }
        response.add_failure(failed.message_id.clone());
    }
    Ok(response)
}

/// The memory size at which Lambda gives a function one whole vCPU; it
/// gives CPU in proportion to memory.
pub const MB_PER_VCPU: u64 = 1769;

/// How many threads run the function's tasks: the whole vCPUs its memory
/// size buys (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, MB), at least one and at
/// most the cores the machine has; all the cores without a memory size.
///
/// Below 2 × [`MB_PER_VCPU`] a second thread could only share the same
/// CPU time, and each hand-over between threads (a parked worker woken
/// through a futex for every answer) costs CPU that the function's share
/// then lacks: measured in docs/performance.md.
pub fn runtime_threads(memory_mb: Option<u64>, cores: usize) -> usize {
    let cores = cores.max(1);
    match memory_mb {
        Some(mb) => ((mb / MB_PER_VCPU) as usize).clamp(1, cores),
        None => cores,
    }
}

/// The function's tokio runtime, with [`runtime_threads`] threads: one
/// thread is a current-thread runtime.
pub fn runtime(memory_mb: Option<u64>) -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match runtime_threads(memory_mb, cores) {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        threads => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build(),
    }
}

/// Deadlines before this (2001-09-09) cannot be epoch milliseconds.
const EARLIEST_EPOCH_DEADLINE_MS: u64 = 1_000_000_000_000;

/// The instant by which the batch must be finished.
///
/// Lambda sends the deadline as epoch milliseconds. `cargo lambda watch`
/// sends the function's timeout instead (`600000` for ten minutes); a value
/// that cannot be an epoch is read that way, as milliseconds from now, so
/// local runs behave like the real thing. Zero means no deadline.
pub fn batch_deadline(context: &Context) -> Option<Instant> {
    let left = match context.deadline {
        0 => return None,
        ms if ms < EARLIEST_EPOCH_DEADLINE_MS => Duration::from_millis(ms),
        _ => context
            .deadline()
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    };
    let margin = deadline_margin(context.env_config.memory);
    Some(Instant::now() + left.saturating_sub(margin))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(deadline: u64) -> Context {
        let mut c = Context::default();
        c.deadline = deadline;
        c
    }

    fn secs_left(deadline: Option<Instant>) -> u64 {
        deadline
            .unwrap()
            .saturating_duration_since(Instant::now())
            .as_secs()
    }

    #[test]
    fn an_epoch_deadline_leaves_the_time_to_it_less_the_margin() {
        let in_30s = SystemTime::now() + Duration::from_secs(30);
        let ms = in_30s
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!((27..=29).contains(&secs_left(batch_deadline(&context(ms)))));
    }

    #[test]
    fn a_past_deadline_leaves_no_time() {
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            - 5_000;
        assert_eq!(secs_left(batch_deadline(&context(ms))), 0);
    }

    #[test]
    fn a_relative_deadline_from_cargo_lambda_watch_is_read_as_a_timeout() {
        assert!((597..=599).contains(&secs_left(batch_deadline(&context(600_000)))));
    }

    #[test]
    fn a_function_gets_one_thread_per_whole_vcpu_its_memory_buys() {
        // (memory MB, cores) → threads
        for (mb, cores, threads) in [
            (Some(128), 2, 1),
            (Some(256), 2, 1),
            (Some(1769), 2, 1),
            (Some(3537), 2, 1),
            (Some(3538), 2, 2),
            (Some(10240), 6, 5),
            (Some(10240), 2, 2),
            (None, 4, 4),
            (Some(0), 0, 1),
        ] {
            assert_eq!(
                runtime_threads(mb, cores),
                threads,
                "{mb:?} MB, {cores} cores"
            );
        }
    }

    #[test]
    fn a_small_function_runs_on_a_current_thread_runtime() {
        use tokio::runtime::RuntimeFlavor;
        let small = runtime(Some(256)).unwrap();
        assert_eq!(
            small.handle().runtime_flavor(),
            RuntimeFlavor::CurrentThread
        );
        assert_eq!(small.block_on(async { 7 }), 7);
        if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
            let large = runtime(Some(2 * MB_PER_VCPU)).unwrap();
            assert_eq!(large.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        }
    }

    #[test]
    fn a_small_function_keeps_a_longer_margin_before_its_deadline() {
        assert_eq!(deadline_margin(128), Duration::from_secs(4));
        assert_eq!(deadline_margin(256), Duration::from_secs(2));
        assert_eq!(deadline_margin(512), DEADLINE_MARGIN);
        assert_eq!(deadline_margin(10240), DEADLINE_MARGIN);
        assert_eq!(deadline_margin(0), DEADLINE_MARGIN);
        assert_eq!(deadline_margin(-1), DEADLINE_MARGIN);
        let mut small = context(60_000);
        small.env_config = std::sync::Arc::new(lambda_runtime::Config {
            memory: 128,
            ..Default::default()
        });
        assert!((54..=55).contains(&secs_left(batch_deadline(&small))));
    }

    #[test]
    fn no_deadline_means_none() {
        assert_eq!(batch_deadline(&Context::default()), None);
    }
}
