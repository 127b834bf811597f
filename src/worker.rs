//! Path 3.2: the long-lived poller behind `retryq worker`.
//!
//! The same core as the Lambda function, fed by our own long polls instead of
//! the event source mapping: receive (all attributes) → [`Processor::process_batch`]
//! → delete what was acknowledged. Retryable records keep the visibility the
//! processor gave them and come back after their backoff.
//!
//! * Several pollers run at once so the process can keep `MAX_CONCURRENCY`
//!   requests in flight; the processor's limit is shared by all of them.
//! * **Heartbeat** (§8.5): while a batch is in work, the visibility of each
//!   of its records still in work is extended to the queue's visibility
//!   timeout every third of it, so a request slower than the visibility
//!   timeout (but within `REQUEST_TIMEOUT_SECONDS`) is made once, not once
//!   more by the next receiver. A record stops being extended before its own
//!   action (backoff, delete) touches its visibility.
//! * A batch's deadline bounds the work, heartbeat or not: the visibility
//!   timeout (less a margin), or three request timeouts and a minute if that
//!   is longer. A record still running then is abandoned, its heartbeat
//!   stops, and it reappears when its visibility runs out.
//! * `shutdown` (SIGINT/SIGTERM in the binary) stops new receives; batches in
//!   flight finish, and what they acknowledged is deleted, before `run`
//!   returns. A receive cut short loses nothing: its messages reappear.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::process::{Batch, Heartbeat, Processor};
use crate::queue::{self, QueueError, QueueInfo};

/// How long one receive waits for messages (SQS's longest long poll).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub queue_url: String,
    /// Long-poll wait per receive.
    pub wait: Duration,
    /// Concurrent receive loops.
    pub pollers: usize,
}

impl WorkerOptions {
    /// Enough pollers of 10-message batches to fill `max_concurrency`.
    pub fn new(queue_url: impl Into<String>, max_concurrency: usize) -> WorkerOptions {
        WorkerOptions {
            queue_url: queue_url.into(),
            wait: DEFAULT_WAIT,
            pollers: max_concurrency.div_ceil(10).clamp(1, 32),
        }
    }

    /// Messages one receive asks for (1–10): no more than a poller's share
    /// of `max_concurrency`, so that every record received can start at
    /// once. A record that waits holds a receive that SQS counts; a worker
    /// killed or frozen meanwhile uses it up without a request.
    pub fn batch_size(&self, max_concurrency: usize) -> i32 {
        let size = (max_concurrency / self.pollers.max(1)).clamp(1, 10);
        i32::try_from(size).expect("at most 10")
    }
}

/// What a worker did before it stopped: batches and records received,
/// acknowledged (delivered or dead-lettered, and deleted), and returned
/// (left in the queue for their backoff, or unfinished).
pub type WorkerStats = crate::queue::LoopStats;

/// Polls `options.queue_url` until `shutdown` completes, then finishes the
/// batches in flight. Fails only if the queue cannot be described at start.
pub async fn run(
    processor: Arc<Processor>,
    options: WorkerOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<WorkerStats, QueueError> {
    let info = processor.queues().describe(&options.queue_url).await?;
    tracing::info!(queue = %info.arn, pollers = options.pollers, "worker started");
    let (stop, stopped) = watch::channel(false);
    let pollers: Vec<_> = (0..options.pollers.max(1))
        .map(|_| {
            tokio::spawn(poll(
                Arc::clone(&processor),
                options.clone(),
                info.clone(),
                stopped.clone(),
            ))
        })
        .collect();
    shutdown.await;
    tracing::info!("stopping: finishing the batches in flight");
    let _ = stop.send(true);
    let mut stats = WorkerStats::default();
    for poller in pollers {
        match poller.await {
            Ok(s) => stats += s,
            Err(e) => tracing::error!(error = %e, "a poller failed"),
        }
    }
    tracing::info!(?stats, "worker stopped");
    Ok(stats)
}

async fn poll(
    processor: Arc<Processor>,
    options: WorkerOptions,
    info: QueueInfo,
    mut stopped: watch::Receiver<bool>,
) -> WorkerStats {
    let queues = processor.queues();
    // Abandon a record before SQS would hand it to someone else.
    let margin = (info.visibility_timeout / 5).min(Duration::from_secs(5));
    let work_limit = info
        .visibility_timeout
        .saturating_sub(margin)
        .max(processor.config().request_timeout * 3 + Duration::from_secs(60));
    let stop = async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let batch_size = options.batch_size(processor.config().max_concurrency);
    // Each receive's start: the hold on what it takes counts from then.
    let received_at = std::sync::Mutex::new(Instant::now());
    let receive = || {
        *received_at.lock().expect("not poisoned") = Instant::now();
        queues.receive(&options.queue_url, batch_size, options.wait, None)
    };
    let handle = |messages: Vec<aws_sdk_sqs::types::Message>| {
        let processor = Arc::clone(&processor);
        let (queue_url, arn, visibility) = (
            options.queue_url.clone(),
            info.arn.clone(),
            info.visibility_timeout,
        );
        let received_at = *received_at.lock().expect("not poisoned");
        async move {
            let heartbeat = Arc::new(Heartbeat::new(
                queue_url,
                visibility,
                received_at,
                messages.iter().filter_map(|m| m.receipt_handle.clone()),
            ));
            let records = messages
                .into_iter()
                .map(|m| queue::record(m, &arn))
                .collect();
            let beat = tokio::spawn(Arc::clone(&heartbeat).run(Arc::clone(processor.queues())));
            let batch = Batch::with_heartbeat(Arc::clone(&heartbeat));
            let report = processor
                .process_batch_in(records, Some(Instant::now() + work_limit), batch)
                .await;
            beat.abort();
            // Finished records were deleted as each finished; what is left
            // is those whose delete failed.
            let (deleted, to_delete): (Vec<_>, Vec<_>) = report
                .records
                .into_iter()
                .filter(|r| r.disposition.acknowledged())
                .map(|r| r.receipt_handle)
                .partition(|h| heartbeat.was_deleted(h));
            queue::Handled {
                to_delete,
                deleted: deleted.len() as u64,
            }
        }
    };
    queue::receive_loop(queues, &options.queue_url, stop, receive, handle).await
}
