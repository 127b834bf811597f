//! What the simulated processes share: the queue, the destinations, each
//! process's clock, and what an observer outside them all sees.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::queue::SimQueue;
use super::Scenario;
use crate::fleet::table::Clock;

/// The destination hosts: 0 answers well (mostly), 1 is down for the
/// scenario's `down_for`, then answers as 0 does, and 2 always fails and
/// has no breaker: each of its messages is tried until `MAX_ATTEMPTS`, so
/// that every count is put to the test.
pub const HOSTS: usize = 3;

/// The host without a breaker, that always fails.
pub const FAILING: usize = 2;

pub fn host_name(host: usize) -> String {
    format!("h{host}.example:443")
}

pub struct World {
    pub scenario: Scenario,
    pub queue: SimQueue,
    started: Instant,
    rng: Mutex<fastrand::Rng>,
    observed: Mutex<Observed>,
}

/// What happened, seen from outside the processes.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    /// When each request went out, from the start.
    pub sends: Vec<Duration>,
    /// Requests per Retry Message.
    pub requests: HashMap<u64, u32>,
    /// Probe requests in flight to each host now, and the most ever.
    pub probes_in_flight: [u32; HOSTS],
    pub most_probes_in_flight: u32,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub retried: u64,
    pub deferred: u64,
    pub carried: u64,
    pub withheld: u64,
    /// Table calls that failed (the batch went on without the table).
    pub table_failures: u64,
    /// Per Retry Message, the requests made on an SQS message after the
    /// answer to its carry was lost (it came back, and its copy had not yet
    /// claimed the chain).
    pub carries_lost: HashMap<u64, u32>,
    /// The SQS messages whose carry's answer was lost.
    pub lost_carries: std::collections::HashSet<u64>,
    /// Records acknowledged because their copy was sent before (their
    /// acknowledgement lost).
    pub carried_before: u64,
}

/// What became of a carried copy's `SendMessage`.
pub enum CarrySend {
    Sent,
    Failed,
    /// SQS made the copy; the answer was lost.
    Lost,
}

impl World {
    pub fn new(scenario: Scenario, seed: u64) -> World {
        World {
            scenario,
            queue: SimQueue::default(),
            started: Instant::now(),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            observed: Mutex::new(Observed::default()),
        }
    }

    pub fn observe<T>(&self, f: impl FnOnce(&mut Observed) -> T) -> T {
        f(&mut self.observed.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn observed(&self) -> Observed {
        self.observe(|o| o.clone())
    }

    fn random<T>(&self, f: impl FnOnce(&mut fastrand::Rng) -> T) -> T {
        f(&mut self.rng.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A request of Retry Message `retry_id` to `host`: did it deliver?
    pub async fn request(&self, retry_id: u64, host: usize, probe: bool) -> bool {
        let since = self.started.elapsed();
        self.observe(|o| {
            o.sends.push(since);
            *o.requests.entry(retry_id).or_default() += 1;
            if probe {
                o.probes_in_flight[host] += 1;
                o.most_probes_in_flight = o.most_probes_in_flight.max(o.probes_in_flight[host]);
            }
        });
        let down = (host == 1 && since < self.scenario.down_for) || host == FAILING;
        let (ms, answered) = self.random(|r| {
            if down {
                // A host that is down answers 503 after a while.
                (r.u64(200..=800), false)
            } else {
                (r.u64(20..=120), r.f64() >= 0.05)
            }
        });
        tokio::time::sleep(Duration::from_millis(ms)).await;
        if probe {
            self.observe(|o| o.probes_in_flight[host] -= 1);
        }
        answered
    }

    /// The backoff after failed attempt `number`: 1 s doubling, at most
    /// 8 s, with jitter.
    pub fn backoff(&self, number: u32) -> Duration {
        let full = Duration::from_secs(1 << number.saturating_sub(1).min(3));
        full.mul_f64(self.random(|r| 0.5 + r.f64() / 2.0))
    }

    /// The outcome of a carry's `SendMessage`.
    pub fn carry_send(&self) -> CarrySend {
        let (fail, lost) = (self.scenario.carries_fail, self.scenario.carries_lost);
        let roll = self.random(|r| r.f64());
        match roll {
            r if r < fail => CarrySend::Failed,
            r if r < fail + lost => CarrySend::Lost,
            _ => CarrySend::Sent,
        }
    }

    /// The wait after admission before the request's gate: mostly a few
    /// milliseconds, for some requests (the scenario's `slow_sends`) up to
    /// 12 s, longer than a probe's lease.
    pub async fn before_send(&self) {
        let ms = self.random(|r| match r.f64() < self.scenario.slow_sends {
            true => r.u64(0..=12_000),
            false => r.u64(0..=20),
        });
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// A new message's destination host.
    pub fn pick_host(&self) -> usize {
        self.random(|r| r.usize(..HOSTS))
    }

    /// A clock off by up to the scenario's skew either way.
    pub fn clock(&self) -> SimClock {
        let skew = self.scenario.skew_ms as i64;
        SimClock {
            started: self.started,
            skew_ms: self.random(|r| r.i64(-skew..=skew)),
        }
    }
}

/// A process's wall clock: the virtual time since the run began, from a
/// fixed epoch, off by `skew_ms`.
#[derive(Debug)]
pub struct SimClock {
    started: Instant,
    skew_ms: i64,
}

impl SimClock {
    /// A clock on tokio's (paused) time from now, off by `skew_ms`.
    pub fn starting_now(skew_ms: i64) -> SimClock {
        SimClock {
            started: Instant::now(),
            skew_ms,
        }
    }
}

/// The run's epoch: any fixed instant (the simulation reads no real date).
const EPOCH_MS: i64 = 1_700_000_000_000;

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        let elapsed = self.started.elapsed().as_millis() as i64;
        (EPOCH_MS + elapsed + self.skew_ms) as u64
    }
}
