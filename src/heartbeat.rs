//! `retryq worker`'s hold on the messages of a batch (§8.5,
//! docs/reliability.md "The worker's hold").
//!
//! A received message is hidden from other receivers until its visibility
//! runs out. The worker keeps, for each record in work, the latest moment
//! it knows the message is still hidden for it: the receive call's start
//! plus the visibility, moved on by every extension SQS accepted. With it:
//!
//! * **Heartbeat.** Every third of the visibility timeout, every record in
//!   work is extended, so a request slower than the visibility timeout is
//!   made once. A record leaves before its own action (a backoff) sets its
//!   visibility, never while an extension is in flight.
//! * **No stale work.** Right before a record's request is sent, and before
//!   its DLQ copy or carried copy is sent, [`Heartbeat::confirm`] checks the
//!   hold. A hold that may have lapsed (the process was frozen, an
//!   extension failed) is extended first; if that fails and the hold has
//!   (next to) no time left, the record is dropped: nothing sent, nothing
//!   acted on, and the message reappears for whoever holds it now. An
//!   extension SQS refuses because the receipt handle is gone
//!   (`ReceiptHandleIsInvalid`: a later receive, or a delete) marks the
//!   record lost at once.
//! * **Finished at once.** A record acknowledged (delivered, or its DLQ copy
//!   sent) is deleted as soon as it is finished, gathered with other
//!   records' deletes, not when its batch ends: a worker killed mid-batch
//!   repeats only the requests it had in flight.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::queue::{QueueError, Queues};

/// The least a hold whose extension failed must have left to be relied on
/// (the request or copy leaves within it).
const MIN_LEFT: Duration = Duration::from_millis(250);

/// What the worker knows of its hold on one message.
#[derive(Debug, Clone, Copy)]
struct Hold {
    /// Hidden for this worker until at least then, as far as it knows, by
    /// the monotonic clock and by the wall clock: the hold is trusted only
    /// while both say so (the monotonic clock may stand still while the
    /// machine is suspended; the wall clock may jump).
    until: Instant,
    until_wall: SystemTime,
    /// SQS said the receipt handle no longer holds the message, or an
    /// extension needed before an action failed with the hold all but run
    /// out: nothing more is done.
    lost: bool,
}

impl Hold {
    /// How long the hold has left at `now` (monotonic, wall).
    fn left(&self, (now, wall): (Instant, SystemTime)) -> Duration {
        let by_wall = self.until_wall.duration_since(wall).unwrap_or_default();
        self.until.saturating_duration_since(now).min(by_wall)
    }

    /// An extension sent at `at` was accepted.
    fn extended(&mut self, (at, wall): (Instant, SystemTime), by: Duration) {
        self.until = self.until.max(at + by);
        self.until_wall = self.until_wall.max(wall + by);
    }
}

/// The holds of one batch's records, kept and extended (see the module).
#[derive(Debug)]
pub struct Heartbeat {
    queue_url: String,
    /// The visibility each extension sets (the queue's visibility timeout).
    extend_to: Duration,
    /// The records in work, by receipt handle; never locked across a call.
    in_work: Mutex<HashMap<String, Hold>>,
    /// Held for a whole beat's call (at most [`Heartbeat::call_limit`]):
    /// a record leaves only between beats, so the heartbeat cannot undo a
    /// backoff. Checking or confirming a hold never waits for it.
    beating: tokio::sync::Mutex<()>,
    /// Records already deleted (their batch need not delete them).
    deleted: Mutex<HashSet<String>>,
}

impl Heartbeat {
    /// The holds of `receipt_handles` of `queue_url`, received by a call
    /// that started at `received_at` and hides them for `visibility`. The
    /// call's start, not its answer: SQS hid them no earlier, so the hold is
    /// never thought longer than it is.
    pub fn new(
        queue_url: impl Into<String>,
        visibility: Duration,
        received_at: Instant,
        receipt_handles: impl IntoIterator<Item = String>,
    ) -> Heartbeat {
        let wall = SystemTime::now() - received_at.elapsed();
        let hold = Hold {
            until: received_at + visibility,
            until_wall: wall + visibility,
            lost: false,
        };
        Heartbeat {
            queue_url: queue_url.into(),
            extend_to: visibility,
            in_work: Mutex::new(receipt_handles.into_iter().map(|h| (h, hold)).collect()),
            beating: tokio::sync::Mutex::new(()),
            deleted: Mutex::new(HashSet::new()),
        }
    }

    /// How often to beat: well within the visibility timeout.
    pub fn interval(&self) -> Duration {
        (self.extend_to / 3).max(Duration::from_millis(500))
    }

    /// A hold with less than this left is extended before it is relied on:
    /// room for the request to leave, and for a receive answered late.
    fn margin(&self) -> Duration {
        (self.extend_to / 5).clamp(Duration::from_secs(1), Duration::from_secs(5))
    }

    /// Beats until dropped (run it beside the batch and abort it after).
    pub async fn run(self: std::sync::Arc<Self>, queues: std::sync::Arc<Queues>) {
        let mut ticks = tokio::time::interval(self.interval());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            self.beat(&queues).await;
        }
    }

    /// How long one of the hold's SQS calls may take: one that never
    /// answers (the SDK sets no timeout of its own) must not stall the
    /// batch. Its extension is then taken as failed.
    fn call_limit(&self) -> Duration {
        self.interval()
    }

    /// Extends every record in work that is not lost.
    async fn beat(&self, queues: &Queues) {
        let _beating = self.beating.lock().await;
        let handles: Vec<String> = self
            .holds()
            .iter()
            .filter(|(_, hold)| !hold.lost)
            .map(|(handle, _)| handle.clone())
            .collect();
        if handles.is_empty() {
            return;
        }
        let started = (Instant::now(), SystemTime::now());
        let results = self.extend(queues, &handles).await;
        let mut in_work = self.holds();
        let mut failed = 0;
        for (handle, result) in handles.iter().zip(results) {
            let Some(hold) = in_work.get_mut(handle) else {
                continue;
            };
            match result {
                Ok(()) => hold.extended(started, self.extend_to),
                Err(e) => {
                    failed += 1;
                    hold.lost |= e.receipt_gone();
                    tracing::warn!(error = %e, lost = hold.lost, "heartbeat: visibility not extended");
                }
            }
        }
        tracing::debug!(
            records = handles.len(),
            failed,
            "heartbeat: visibility extended"
        );
    }

    /// Extends `handles` to the visibility timeout: one result each, every
    /// one failed if SQS does not answer within [`call_limit`](Self::call_limit).
    async fn extend(&self, queues: &Queues, handles: &[String]) -> Vec<Result<(), QueueError>> {
        let call = queues.change_visibility_batch(&self.queue_url, handles, self.extend_to);
        match tokio::time::timeout(self.call_limit(), call).await {
            Ok(results) => results,
            Err(_) => handles
                .iter()
                .map(|_| {
                    Err(QueueError::Sqs {
                        operation: "ChangeMessageVisibilityBatch",
                        detail: "not answered in time".into(),
                    })
                })
                .collect(),
        }
    }

    fn holds(&self) -> std::sync::MutexGuard<'_, HashMap<String, Hold>> {
        self.in_work.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Does this worker still hold the message, so that it may send its
    /// request or its copy? A hold close to its end is extended first; if
    /// that fails, the record is lost (and `false`). A record that is not
    /// in work here (it left already) is not this heartbeat's to judge.
    pub async fn confirm(&self, queues: &Queues, receipt_handle: &str) -> bool {
        let Some(hold) = self.holds().get(receipt_handle).copied() else {
            return true;
        };
        if hold.lost {
            return false;
        }
        let now = (Instant::now(), SystemTime::now());
        if hold.left(now) > self.margin() {
            return true;
        }
        let handles = [receipt_handle.to_owned()];
        let result = self
            .extend(queues, &handles)
            .await
            .pop()
            .unwrap_or_else(|| {
                Err(QueueError::Sqs {
                    operation: "ChangeMessageVisibilityBatch",
                    detail: "the answer did not mention this entry".into(),
                })
            });
        let mut in_work = self.holds();
        let Some(hold) = in_work.get_mut(receipt_handle) else {
            return true;
        };
        match result {
            Ok(()) => {
                hold.extended(now, self.extend_to);
                !hold.lost
            }
            // Not extended (throttled, denied): the hold stands while it
            // has time left, by both clocks.
            Err(e)
                if !e.receipt_gone()
                    && hold.left((Instant::now(), SystemTime::now())) > MIN_LEFT =>
            {
                tracing::warn!(error = %e, "the hold on a message could not be extended; it still has time left");
                !hold.lost
            }
            Err(e) => {
                hold.lost = true;
                tracing::warn!(error = %e, "the hold on a message may have lapsed and could not be renewed: it is dropped");
                false
            }
        }
    }

    /// Has this record lost its hold (nothing more may be done for it)?
    pub fn is_lost(&self, receipt_handle: &str) -> bool {
        self.holds()
            .get(receipt_handle)
            .is_some_and(|hold| hold.lost)
    }

    /// The record's own action (a backoff) sets its visibility from now
    /// on, or it is left for another receive: it is no longer extended.
    pub async fn leave(&self, receipt_handle: &str) {
        let _between_beats = self.beating.lock().await;
        self.holds().remove(receipt_handle);
    }

    /// An acknowledged record: deleted now, gathered with other records'
    /// deletes. It is extended until the delete succeeds; one that fails
    /// is left for its batch to delete again.
    pub async fn finish(&self, queues: &Queues, receipt_handle: &str) {
        match queues.delete(&self.queue_url, receipt_handle).await {
            Ok(()) => {
                self.deleted
                    .lock()
                    .expect("not poisoned")
                    .insert(receipt_handle.to_owned());
                self.leave(receipt_handle).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "a finished record was not deleted: its batch tries again");
            }
        }
    }

    /// Was this record deleted already?
    pub fn was_deleted(&self, receipt_handle: &str) -> bool {
        self.deleted
            .lock()
            .expect("not poisoned")
            .contains(receipt_handle)
    }
}
