//! Many records' calls, sent together.
//!
//! A retry costs a `ChangeMessageVisibility`, a dead letter a `SendMessage`
//! and a failed attempt a ledger write. Records of one batch finish close
//! together, so their calls are gathered per target (a queue URL, a table)
//! and sent as one batch call of up to `max_entries` entries
//! (ten for SQS, 25 for `BatchWriteItem`, 100 for `BatchGetItem`): a batch
//! of 10 000 records that are half `503`s makes about 500 SQS requests
//! instead of 5 000.
//!
//! Each record still gets its own answer. A call that fails fails only the
//! entries it carried; an entry the service lists as failed fails only its
//! record. The record that fills the call sends it at once; otherwise the
//! first record to wait sends whatever has gathered after [`LINGER`]. A
//! record abandoned while its entry waits (the batch's deadline) takes the
//! entry back, so nothing is sent for a record already reported unfinished.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

/// How long a lone entry waits for others before it is sent anyway. At
/// `MAX_CONCURRENCY` 64 and 50 ms per request, a batch that is half
/// failures finishes about ten failed records every 15 ms: long enough to
/// fill most calls, and nothing beside a retry's own delay.
pub const LINGER: Duration = Duration::from_millis(25);

/// The error a gathered call answers with when its entry got no answer.
pub trait Unanswered {
    fn unanswered(operation: &'static str, detail: String) -> Self;
}

/// One entry waiting to be sent, and where its answer goes.
pub struct Job<E, R, X> {
    id: u64,
    pub entry: E,
    answer: oneshot::Sender<Result<R, X>>,
}

/// The jobs waiting, per target.
type Waiting<E, R, X> = HashMap<String, Vec<Job<E, R, X>>>;

/// Entries of type `E` waiting per target, each answered with a
/// `Result<R, X>`.
pub struct Gather<E, R, X> {
    pending: Mutex<Waiting<E, R, X>>,
    next_id: AtomicU64,
    operation: &'static str,
    max_entries: usize,
    /// How long a lone entry waits for others ([`LINGER`] unless set).
    linger: Duration,
}

impl<E, R, X> std::fmt::Debug for Gather<E, R, X> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gather")
            .field("operation", &self.operation)
            .finish_non_exhaustive()
    }
}

impl<E: Send, R, X: Unanswered> Gather<E, R, X> {
    /// Gathers entries for `operation` (named in errors), at most
    /// `max_entries` per call.
    pub fn new(operation: &'static str, max_entries: usize) -> Gather<E, R, X> {
        Gather {
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            operation,
            max_entries: max_entries.max(1),
            linger: LINGER,
        }
    }

    /// The same, with a lone entry waiting `linger` for others.
    pub fn with_linger(mut self, linger: Duration) -> Gather<E, R, X> {
        self.linger = linger;
        self
    }

    /// Sends `entry` to `queue_url` (the target) with others, and returns
    /// its own result. `send` makes one call for up to
    /// `max_entries` entries and returns one result
    /// per entry, in their order.
    pub async fn submit<F, Fut>(&self, queue_url: &str, entry: E, send: F) -> Result<R, X>
    where
        F: Fn(String, Vec<E>) -> Fut,
        Fut: Future<Output = Vec<Result<R, X>>>,
    {
        let (answer, answered) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let job = Job { id, entry, answer };
        let _take_back = TakeBack {
            gather: self,
            queue_url,
            id,
        };
        let full = {
            let mut pending = self.lock();
            let jobs = pending.entry(queue_url.to_owned()).or_default();
            jobs.push(job);
            (jobs.len() >= self.max_entries).then(|| std::mem::take(jobs))
        };
        let jobs = match full {
            Some(jobs) => jobs,
            None => {
                tokio::time::sleep(self.linger).await;
                // Only if its own entry still waits: otherwise another
                // record sent it, and what gathered since has its own
                // first entry, whose linger is still running.
                self.take_if_waiting(queue_url, id)
            }
        };
        if !jobs.is_empty() {
            self.flush(queue_url, jobs, &send).await;
        }
        answered.await.unwrap_or_else(|_| {
            Err(X::unanswered(
                self.operation,
                "the batch call carrying this entry was abandoned".into(),
            ))
        })
    }

    async fn flush<F, Fut>(&self, queue_url: &str, jobs: Vec<Job<E, R, X>>, send: &F)
    where
        F: Fn(String, Vec<E>) -> Fut,
        Fut: Future<Output = Vec<Result<R, X>>>,
    {
        let (entries, answers): (Vec<E>, Vec<_>) =
            jobs.into_iter().map(|j| (j.entry, j.answer)).unzip();
        let count = entries.len();
        let mut results = send(queue_url.to_owned(), entries).await.into_iter();
        for answer in answers {
            let result = results.next().unwrap_or_else(|| {
                Err(X::unanswered(
                    self.operation,
                    format!("no result for this entry among {count}"),
                ))
            });
            let _ = answer.send(result);
        }
    }

    fn take_if_waiting(&self, queue_url: &str, id: u64) -> Vec<Job<E, R, X>> {
        let mut pending = self.lock();
        match pending.get(queue_url) {
            Some(jobs) if jobs.iter().any(|j| j.id == id) => {
                pending.remove(queue_url).unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting<E, R, X>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes a job still waiting when its record's work is dropped.
struct TakeBack<'a, E, R, X> {
    gather: &'a Gather<E, R, X>,
    queue_url: &'a str,
    id: u64,
}

impl<E, R, X> Drop for TakeBack<'_, E, R, X> {
    fn drop(&mut self) {
        let mut pending = self
            .gather
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(jobs) = pending.get_mut(self.queue_url) {
            jobs.retain(|j| j.id != self.id);
            if jobs.is_empty() {
                pending.remove(self.queue_url);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::QueueError;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    const MAX_ENTRIES: usize = 10;

    fn failing_odd(entries: &[u32]) -> Vec<Result<(), QueueError>> {
        entries
            .iter()
            .map(|e| {
                if e % 2 == 1 {
                    Err(QueueError::Sqs {
                        operation: "Test",
                        detail: format!("entry {e} refused"),
                    })
                } else {
                    Ok(())
                }
            })
            .collect()
    }

    /// On a paused clock, so the linger cannot run out while a busy machine
    /// is still spawning the 25 tasks: exactly three calls.
    #[tokio::test(start_paused = true)]
    async fn entries_are_sent_ten_per_call_and_answered_one_by_one() {
        let gather = Arc::new(Gather::<u32, (), QueueError>::new("Test", MAX_ENTRIES));
        let calls = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..25u32)
            .map(|n| {
                let (gather, calls) = (Arc::clone(&gather), Arc::clone(&calls));
                tokio::spawn(async move {
                    gather
                        .submit("q", n, |_, entries: Vec<u32>| {
                            calls.fetch_add(1, Ordering::SeqCst);
                            assert!(entries.len() <= MAX_ENTRIES);
                            async move { failing_odd(&entries) }
                        })
                        .await
                })
            })
            .collect();
        for (n, task) in tasks.into_iter().enumerate() {
            let result = task.await.unwrap();
            assert_eq!(result.is_ok(), n % 2 == 0, "entry {n}: {result:?}");
        }
        let calls = calls.load(Ordering::SeqCst);
        assert_eq!(calls, 3, "calls for 25 entries");
    }

    #[tokio::test(start_paused = true)]
    async fn entries_arriving_one_by_one_still_fill_their_calls() {
        // One entry a millisecond for 100 ms: calls of ten, not one per
        // entry whose linger ran out.
        let gather = Arc::new(Gather::<u32, (), QueueError>::new("Test", MAX_ENTRIES));
        let calls = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..100u32)
            .map(|n| {
                let (gather, calls) = (Arc::clone(&gather), Arc::clone(&calls));
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(n.into())).await;
                    gather
                        .submit("q", n, |_, entries: Vec<u32>| {
                            calls.fetch_add(1, Ordering::SeqCst);
                            async move { entries.iter().map(|_| Ok(())).collect() }
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), Ok(()));
        }
        let calls = calls.load(Ordering::SeqCst);
        assert!(calls <= 11, "{calls} calls for 100 entries");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_entry_is_sent_after_the_linger() {
        let gather = Gather::<u32, (), QueueError>::new("Test", MAX_ENTRIES);
        let result = gather
            .submit("q", 2, |url, entries| async move {
                assert_eq!((url.as_str(), entries.as_slice()), ("q", &[2][..]));
                vec![Ok(())]
            })
            .await;
        assert_eq!(result, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_entry_is_never_sent() {
        let gather = Arc::new(Gather::<u32, (), QueueError>::new("Test", MAX_ENTRIES));
        let sent = Arc::new(AtomicUsize::new(0));
        let (g, s) = (Arc::clone(&gather), Arc::clone(&sent));
        let abandoned = tokio::spawn(async move {
            g.submit("q", 1, |_, entries: Vec<u32>| {
                s.fetch_add(entries.len(), Ordering::SeqCst);
                async move { entries.iter().map(|_| Ok(())).collect() }
            })
            .await
        });
        tokio::task::yield_now().await;
        assert_eq!(
            gather.lock().get("q").map(Vec::len),
            Some(1),
            "the entry waits for others"
        );
        abandoned.abort();
        let _ = abandoned.await;
        assert!(gather.lock().get("q").is_none(), "the entry was taken back");
        // The next record's call carries only its own entry.
        let result = gather
            .submit("q", 2, |_, entries: Vec<u32>| async move {
                assert_eq!(entries, [2]);
                vec![Ok(())]
            })
            .await;
        assert_eq!(result, Ok(()));
        assert_eq!(sent.load(Ordering::SeqCst), 0);
    }
}
