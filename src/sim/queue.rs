//! A standard SQS queue, as the simulation needs one: messages hidden for
//! a visibility timeout when received, a receive count, delays, and the
//! redrive policy's `maxReceiveCount` (a message received once more than
//! it allows goes to the redrive DLQ, without a reason).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// One Retry Message's copy in the queue.
#[derive(Debug, Clone)]
pub struct Message {
    /// The Retry Message `id` (kept across carried copies).
    pub retry_id: u64,
    /// Which destination host it is for.
    pub host: usize,
    /// SQS's `ApproximateReceiveCount`.
    pub receive_count: u32,
    /// The count a carried copy holds (`RetryqCarry.attempts`).
    pub carried: Option<u32>,
}

/// A message as received: its SQS message id and copy.
#[derive(Debug, Clone)]
pub struct Received {
    pub sqs_id: u64,
    pub message: Message,
}

#[derive(Debug, Default)]
pub struct SimQueue {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    messages: HashMap<u64, (Message, Instant)>,
    visible: BTreeSet<(Instant, u64)>,
    next_id: u64,
    /// The Retry Message ids and SQS message ids the redrive policy took.
    redriven: Vec<(u64, u64)>,
}

impl SimQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends a copy, visible after `delay`.
    pub fn send(&self, message: Message, delay: Duration) -> u64 {
        let mut state = self.lock();
        state.next_id += 1;
        let id = state.next_id;
        let at = Instant::now() + delay;
        state.messages.insert(id, (message, at));
        state.visible.insert((at, id));
        id
    }

    /// Up to `max` visible messages, hidden for `visibility`.
    pub fn receive(
        &self,
        max: usize,
        visibility: Duration,
        max_receive_count: u32,
    ) -> Vec<Received> {
        let now = Instant::now();
        let mut state = self.lock();
        let mut out = Vec::new();
        while out.len() < max {
            let Some(&(at, id)) = state.visible.first() else {
                break;
            };
            if at > now {
                break;
            }
            state.visible.remove(&(at, id));
            let Some((mut message, _)) = state.messages.remove(&id) else {
                continue;
            };
            if message.receive_count >= max_receive_count {
                state.redriven.push((message.retry_id, id));
                continue;
            }
            message.receive_count += 1;
            let hidden = now + visibility;
            state.messages.insert(id, (message.clone(), hidden));
            state.visible.insert((hidden, id));
            out.push(Received {
                sqs_id: id,
                message,
            });
        }
        out
    }

    /// `ChangeMessageVisibility`.
    pub fn hide(&self, sqs_id: u64, delay: Duration) {
        let mut state = self.lock();
        let Some((message, at)) = state.messages.remove(&sqs_id) else {
            return;
        };
        state.visible.remove(&(at, sqs_id));
        let at = Instant::now() + delay;
        state.messages.insert(sqs_id, (message, at));
        state.visible.insert((at, sqs_id));
    }

    /// `DeleteMessage`.
    pub fn delete(&self, sqs_id: u64) {
        let mut state = self.lock();
        if let Some((_, at)) = state.messages.remove(&sqs_id) {
            state.visible.remove(&(at, sqs_id));
        }
    }

    /// Messages the redrive policy moved to its DLQ.
    pub fn redriven(&self) -> Vec<(u64, u64)> {
        self.lock().redriven.clone()
    }

    /// Messages still in the queue.
    pub fn len(&self) -> usize {
        self.lock().messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
