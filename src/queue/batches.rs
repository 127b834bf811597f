//! Many records' SQS actions, sent ten at a time.
//!
//! A retry costs a `ChangeMessageVisibility` and a dead letter a
//! `SendMessage`. Records of one batch finish close together, so their
//! actions are gathered per queue and sent as `ChangeMessageVisibilityBatch`
//! and `SendMessageBatch` calls of up to ten entries: a batch of 10 000
//! records that are half `503`s makes about 500 SQS requests instead of
//! 5 000.
//!
//! Each record still gets its own answer. A call that fails fails only the
//! entries it carried; an entry SQS lists as failed fails only its record.
//! The record that fills ten entries sends them at once; otherwise the
//! first record to wait sends whatever has gathered after [`LINGER`]. A
//! record abandoned while its entry waits (the batch's deadline) takes the
//! entry back, so nothing is sent for a record already reported unfinished.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

use super::QueueError;

/// Most entries in one SQS batch call.
pub const MAX_ENTRIES: usize = 10;

/// How long a lone entry waits for others before it is sent anyway. At
/// `MAX_CONCURRENCY` 64 and 50 ms per request, a batch that is half
/// failures finishes about ten failed records every 15 ms: long enough to
/// fill most calls, and nothing beside a retry's own delay.
pub const LINGER: Duration = Duration::from_millis(25);

/// One entry waiting to be sent, and where its answer goes.
pub struct Job<E> {
    id: u64,
    pub entry: E,
    answer: oneshot::Sender<Result<(), QueueError>>,
}

/// Entries of type `E` waiting per queue URL.
pub struct Gather<E> {
    pending: Mutex<HashMap<String, Vec<Job<E>>>>,
    next_id: AtomicU64,
    operation: &'static str,
}

impl<E> std::fmt::Debug for Gather<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gather")
            .field("operation", &self.operation)
            .finish_non_exhaustive()
    }
}

impl<E: Send> Gather<E> {
    /// Gathers entries for `operation` (named in errors).
    pub fn new(operation: &'static str) -> Gather<E> {
        Gather {
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            operation,
        }
    }

    /// Sends `entry` to `queue_url` with others, and returns its own
    /// result. `send` makes one call for up to [`MAX_ENTRIES`] entries and
    /// returns one result per entry, in their order.
    pub async fn submit<F, Fut>(&self, queue_url: &str, entry: E, send: F) -> Result<(), QueueError>
    where
        F: Fn(String, Vec<E>) -> Fut,
        Fut: Future<Output = Vec<Result<(), QueueError>>>,
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
            (jobs.len() >= MAX_ENTRIES).then(|| std::mem::take(jobs))
        };
        let jobs = match full {
            Some(jobs) => jobs,
            None => {
                tokio::time::sleep(LINGER).await;
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
            Err(QueueError::Sqs {
                operation: self.operation,
                detail: "the batch call carrying this entry was abandoned".into(),
            })
        })
    }

    async fn flush<F, Fut>(&self, queue_url: &str, jobs: Vec<Job<E>>, send: &F)
    where
        F: Fn(String, Vec<E>) -> Fut,
        Fut: Future<Output = Vec<Result<(), QueueError>>>,
    {
        let (entries, answers): (Vec<E>, Vec<_>) =
            jobs.into_iter().map(|j| (j.entry, j.answer)).unzip();
        let count = entries.len();
        let mut results = send(queue_url.to_owned(), entries).await.into_iter();
        for answer in answers {
            let result = results.next().unwrap_or_else(|| {
                Err(QueueError::Sqs {
                    operation: self.operation,
                    detail: format!("no result for this entry among {count}"),
                })
            });
            let _ = answer.send(result);
        }
    }

    fn take_if_waiting(&self, queue_url: &str, id: u64) -> Vec<Job<E>> {
        let mut pending = self.lock();
        match pending.get(queue_url) {
            Some(jobs) if jobs.iter().any(|j| j.id == id) => {
                pending.remove(queue_url).unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Job<E>>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes a job still waiting when its record's work is dropped.
struct TakeBack<'a, E> {
    gather: &'a Gather<E>,
    queue_url: &'a str,
    id: u64,
}

impl<E> Drop for TakeBack<'_, E> {
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

/// Splits `sizes` (in order) into runs of at most [`MAX_ENTRIES`] whose
/// total stays within `max_total`; an entry larger than `max_total` is a
/// run of its own. Returns each run's length.
pub fn runs_within(sizes: &[usize], max_total: usize) -> Vec<usize> {
    let mut runs = Vec::new();
    let (mut len, mut total) = (0usize, 0usize);
    for &size in sizes {
        if len > 0 && (len == MAX_ENTRIES || total + size > max_total) {
            runs.push(len);
            (len, total) = (0, 0);
        }
        len += 1;
        total += size;
    }
    if len > 0 {
        runs.push(len);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_are_sent_ten_per_call_and_answered_one_by_one() {
        let gather = Arc::new(Gather::<u32>::new("Test"));
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
        assert!((3..=6).contains(&calls), "{calls} calls for 25 entries");
    }

    #[tokio::test(start_paused = true)]
    async fn entries_arriving_one_by_one_still_fill_their_calls() {
        // One entry a millisecond for 100 ms: calls of ten, not one per
        // entry whose linger ran out.
        let gather = Arc::new(Gather::<u32>::new("Test"));
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
        let gather = Gather::<u32>::new("Test");
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
        let gather = Arc::new(Gather::<u32>::new("Test"));
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

    #[test]
    fn runs_respect_both_the_count_and_the_total_size() {
        assert_eq!(runs_within(&[1; 25], 1000), [10, 10, 5]);
        assert_eq!(runs_within(&[400, 400, 400, 100], 1000), [2, 2]);
        assert_eq!(runs_within(&[5000, 1, 1], 1000), [1, 2]);
        assert_eq!(runs_within(&[], 1000), Vec::<usize>::new());
    }
}
