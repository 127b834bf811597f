//! One simulated process: it receives batches from the queue and takes
//! each record through the steps of `Processor::decide` and `settle`, with
//! the real fleet code (`FleetState`: ledger, rate bucket, breaker) and the
//! real per-process fallbacks, on the simulated table. Only the request
//! (a simulated destination) and SQS (the simulated queue) are stand-ins.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::queue::{Message, Received};
use super::world::{CarrySend, World};
use crate::fleet::breaker::{FleetAdmission, FleetTicket};
use crate::fleet::ledger::AttemptRecord;
use crate::fleet::FleetState;
use crate::policy::carry::Horizon;
use crate::policy::destinations::Token;
use crate::policy::record::{table_retry, Health};
use crate::policy::Attempt;

/// How long a record may wait for a token or a probe.
const WAIT: Duration = Duration::from_secs(2);
/// The request timeout plus the processor's slack: a probe lease's length.
const LEASE_FOR: Duration = Duration::from_secs(10);
/// The queue's visibility timeout.
const VISIBILITY: Duration = Duration::from_secs(60);
/// The pattern every destination matches.
pub const PATTERN: &str = "*.example";

pub struct Process {
    world: Arc<World>,
    fleet: FleetState,
}

/// One batch's fallback: after a table call fails, the batch goes on
/// without the table.
#[derive(Default)]
struct Batch {
    without_table: AtomicBool,
}

/// The breaker's word: the fleet's ticket, or (the table failing) a host
/// this process last saw proven.
enum Pass {
    Fleet(FleetTicket),
    Proven,
    /// The host has no breaker.
    Unlimited,
}

impl Process {
    pub fn new(world: Arc<World>, fleet: FleetState) -> Process {
        Process { world, fleet }
    }

    /// Receives and processes batches until `until`.
    pub async fn run(self: Arc<Self>, until: Instant) {
        let s = &self.world.scenario;
        while Instant::now() < until {
            let batch = self
                .world
                .queue
                .receive(10, VISIBILITY, s.max_receive_count);
            if batch.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let shared = Arc::new(Batch::default());
            let mut tasks = tokio::task::JoinSet::new();
            for record in batch {
                let (me, shared) = (Arc::clone(&self), Arc::clone(&shared));
                tasks.spawn(async move { me.record(record, &shared).await });
            }
            while tasks.join_next().await.is_some() {}
        }
    }

    fn table(&self, batch: &Batch) -> Option<&FleetState> {
        (!batch.without_table.load(Ordering::Relaxed)).then_some(&self.fleet)
    }

    fn without_table<T>(&self, batch: &Batch) -> Option<T> {
        batch.without_table.store(true, Ordering::Relaxed);
        self.world.observe(|o| o.table_failures += 1);
        None
    }

    /// One record, as `decide` and `settle` take it.
    async fn record(&self, r: Received, batch: &Batch) {
        let m = &r.message;
        if self.carried_before(&r, batch).await {
            self.world.queue.delete(r.sqs_id);
            return self.world.observe(|o| o.carried_before += 1);
        }
        let before = Attempt::before(0, m.carried);
        let recorded = self.ledger_read(&r, batch).await;
        let number = Attempt::counted(before, recorded, m.receive_count);
        let until = Instant::now() + WAIT;
        let spend_by = match self.token(batch, until, m.receive_count).await {
            Token::Granted { spend_by } => spend_by,
            Token::Deferred(wait) => return self.defer(&r, batch, before, number, wait).await,
        };
        let pass = match self.admit(batch, m.host, until, m.receive_count).await {
            Ok(pass) => pass,
            Err(wait) => return self.defer(&r, batch, before, number, wait).await,
        };
        let probe = matches!(&pass, Pass::Fleet(t) if t.is_probe());
        self.world.before_send().await;
        if !self.gate(batch, &pass, spend_by).await {
            if let Pass::Fleet(ticket) = pass {
                let _ = self.fleet.report(ticket, None).await;
            }
            let wait = Duration::from_secs(1);
            return self.defer(&r, batch, before, number, wait).await;
        }
        self.world.observe(|o| {
            if o.lost_carries.contains(&r.sqs_id) {
                *o.carries_lost.entry(m.retry_id).or_default() += 1;
            }
        });
        let answered = self.world.request(m.retry_id, m.host, probe).await;
        let health = if answered {
            Health::Answered
        } else {
            Health::Failed
        };
        self.report(batch, pass, health).await;
        if answered {
            self.world.queue.delete(r.sqs_id);
            return self.world.observe(|o| o.delivered += 1);
        }
        if number >= self.world.scenario.max_attempts {
            self.world.queue.delete(r.sqs_id);
            return self.world.observe(|o| o.dead_lettered += 1);
        }
        self.retry(&r, batch, recorded, number).await;
    }

    /// The failed attempts recorded for a record received before.
    async fn ledger_read(&self, r: &Received, batch: &Batch) -> Option<u32> {
        if r.message.receive_count <= 1 {
            return Some(0);
        }
        let fleet = self.table(batch)?;
        match fleet.recorded_failures(&r.sqs_id.to_string()).await {
            Ok(failed) => Some(failed),
            Err(_) => self.without_table(batch),
        }
    }

    /// A token of the fleet's bucket; without the table, none (§9: the
    /// rate is the fleet's, and one process cannot know its share).
    async fn token(&self, batch: &Batch, until: Instant, receive_count: u32) -> Token {
        let rate = self.world.scenario.rate;
        let unanswered = Token::Deferred(table_retry(receive_count));
        let Some(fleet) = self.table(batch) else {
            return unanswered;
        };
        match fleet.token(PATTERN, rate, until).await {
            Ok(token) => token,
            Err(_) => self.without_table(batch).unwrap_or(unanswered),
        }
    }

    /// The breaker's pass, or how long to defer.
    async fn admit(
        &self,
        batch: &Batch,
        host: usize,
        until: Instant,
        receive_count: u32,
    ) -> Result<Pass, Duration> {
        let settings = self.world.scenario.breaker;
        let name = super::world::host_name(host);
        if host == super::world::FAILING {
            return Ok(Pass::Unlimited);
        }
        if let Some(fleet) = self.table(batch) {
            match fleet.admit(&name, settings, LEASE_FOR, until).await {
                Ok(FleetAdmission::Go(ticket)) => return Ok(Pass::Fleet(ticket)),
                Ok(FleetAdmission::Open { wait }) => return Err(wait),
                Err(_) => self.without_table::<()>(batch),
            };
        }
        // Without the table: a host last seen proven needs no probe; any
        // other waits for the table, so that no second probe goes out.
        match self.fleet.last_known_proven(&name) {
            true => Ok(Pass::Proven),
            false => Err(table_retry(receive_count)),
        }
    }

    /// Right before the request: the token still live, the probe's lease
    /// renewed, a proven host still proven (§12.7).
    async fn gate(&self, batch: &Batch, pass: &Pass, spend_by: Option<Instant>) -> bool {
        if spend_by.is_some_and(|by| Instant::now() >= by) {
            self.world.observe(|o| o.withheld += 1);
            return false;
        }
        let (Pass::Fleet(ticket), Some(fleet)) = (pass, self.table(batch)) else {
            return true;
        };
        match fleet.still_admits(ticket, LEASE_FOR).await {
            Ok(held) => {
                if !held {
                    self.world.observe(|o| o.withheld += 1);
                }
                held
            }
            Err(_) => {
                self.without_table::<()>(batch);
                !ticket.is_probe()
            }
        }
    }

    async fn report(&self, batch: &Batch, pass: Pass, health: Health) {
        match pass {
            Pass::Proven | Pass::Unlimited => {}
            Pass::Fleet(ticket) => {
                if self.fleet.report(ticket, Some(health)).await.is_err() {
                    self.without_table::<()>(batch);
                }
            }
        }
    }

    /// A failed attempt that has attempts left: its ledger entry first
    /// (§12.6), carried over if that fails or its queue would end it.
    async fn retry(&self, r: &Received, batch: &Batch, recorded: Option<u32>, number: u32) {
        let delay = self.world.backoff(number);
        let mut carry = self.carry_due(r, delay);
        if !carry {
            // Written, or the count goes with a carried copy (§12.6).
            carry = match self.table(batch) {
                None => true,
                Some(fleet) => {
                    let entry = attempt_record(r, number, recorded);
                    let written = fleet.record(&entry).await;
                    written
                        .map_err(|_| self.without_table::<()>(batch))
                        .is_err()
                }
            };
        }
        if carry {
            return self.carry_over(r, number, delay).await;
        }
        self.world.queue.hide(r.sqs_id, delay);
        self.world.observe(|o| o.retried += 1);
    }

    /// Put back without an attempt: carried over with the attempts made so
    /// far when its queue would end it.
    async fn defer(&self, r: &Received, batch: &Batch, before: u32, number: u32, wait: Duration) {
        self.world.observe(|o| o.deferred += 1);
        if !self.carry_due(r, wait) {
            return self.world.queue.hide(r.sqs_id, wait);
        }
        let made = match self.table(batch) {
            Some(fleet) => match fleet.recorded_failures(&r.sqs_id.to_string()).await {
                Ok(failed) => before.saturating_add(failed),
                Err(_) => number.saturating_sub(1),
            },
            None => number.saturating_sub(1),
        };
        self.carry_over(r, made, wait).await;
    }

    fn carry_due(&self, r: &Received, wait: Duration) -> bool {
        Horizon {
            receive_count: r.message.receive_count,
            max_receive_count: Some(self.world.scenario.max_receive_count),
            retained_until: None,
            fifo: false,
        }
        .carry_due(SystemTime::now() + wait)
    }

    /// A record whose copy was sent before (its acknowledgement lost), by
    /// its own mark.
    async fn carried_before(&self, r: &Received, batch: &Batch) -> bool {
        let Some(fleet) = self.table(batch).filter(|_| r.message.receive_count > 1) else {
            return false;
        };
        match fleet.was_carried(&r.sqs_id.to_string()).await {
            Ok(carried) => carried,
            Err(_) => self.without_table(batch).unwrap_or(false),
        }
    }

    /// A copy holding the count, then the acknowledgement (§12.5); none if
    /// the record was carried before (its acknowledgement lost). A failed
    /// or unanswered send leaves the record unfinished: back in 2 s.
    async fn carry_over(&self, r: &Received, attempts: u32, delay: Duration) {
        let id = r.sqs_id.to_string();
        if let Ok(true) = self.fleet.was_carried(&id).await {
            self.world.queue.delete(r.sqs_id);
            return;
        }
        let copy = Message {
            receive_count: 0,
            carried: Some(attempts),
            ..r.message.clone()
        };
        match self.world.carry_send() {
            CarrySend::Failed => self.world.queue.hide(r.sqs_id, Duration::from_secs(2)),
            CarrySend::Lost => {
                self.world.queue.send(copy, delay);
                self.world.queue.hide(r.sqs_id, Duration::from_secs(2));
                let lost = r.sqs_id;
                self.world.observe(|o| o.lost_carries.insert(lost));
            }
            CarrySend::Sent => {
                self.world.queue.send(copy, delay);
                let _ = self.fleet.mark_carried(&id).await;
                self.world.queue.delete(r.sqs_id);
                self.world.observe(|o| o.carried += 1);
            }
        }
    }
}

/// The ledger entry of failed attempt `number` (`recorded`: the failures
/// read before it; by receives when the read failed).
fn attempt_record(r: &Received, number: u32, recorded: Option<u32>) -> AttemptRecord {
    let before = Attempt::before(0, r.message.carried);
    AttemptRecord {
        id: r.message.retry_id.to_string(),
        sqs_message_id: r.sqs_id.to_string(),
        attempt: number,
        started: SystemTime::now(),
        outcome: "retryable",
        status: Some(503),
        latency: Duration::ZERO,
        last_error: None,
        snippet: Vec::new(),
        failed: true,
        failed_before: recorded.unwrap_or_else(|| number.saturating_sub(before + 1)),
        carried_from: None,
    }
}
