//! A deterministic simulation of the fleet protocol (spec §9, §12.5–§12.7)
//! at a scale this machine cannot run for real: N processes on a virtual
//! clock (tokio's, paused), each running the real breaker, rate-bucket and
//! ledger code ([`crate::fleet::FleetState`]) against an in-memory table
//! that answers as DynamoDB does ([`table::SimTable`]). A run is seeded and
//! reproducible: `make sim SEED=…` (docs/state.md shows the figures).
//!
//! What a run checks, from outside the processes:
//! - never two probes in flight to one host;
//! - requests to the rate-limited pattern in any window of `t` seconds at
//!   most `burst + rps × (t + 1)`;
//! - no attempt uncounted: requests per Retry Message at most
//!   `MAX_ATTEMPTS`, whatever the table does;
//! - no record taken by the redrive policy (carry-over keeps the count).
//!
//! And it reports the table's load: requests per second on the hottest
//! item, and the share of conditional writes that fail.

pub mod process;
pub mod queue;
pub mod table;
pub mod world;

use std::sync::Arc;
use std::time::Duration;

use crate::config::StateSettings;
use crate::fleet::FleetState;
use crate::policy::destinations::{BreakerSettings, Rate};
use queue::Message;
use table::{Faults, SimTable, TableFigures};
use world::{Observed, World};

/// One run's setting.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: &'static str,
    pub processes: usize,
    /// Virtual seconds of traffic.
    pub seconds: u64,
    /// The pattern's fleet-wide rate.
    pub rate: Rate,
    pub breaker: BreakerSettings,
    pub max_attempts: u32,
    /// The redrive policy's `maxReceiveCount`.
    pub max_receive_count: u32,
    pub faults: Faults,
    /// Each process's clock is off by up to this, either way.
    pub skew_ms: u64,
    /// Host 1 is down this long from the start.
    pub down_for: Duration,
    /// Messages in the queue at the start.
    pub messages: usize,
    /// Share of carried copies whose `SendMessage` fails, and share whose
    /// answer is lost after SQS made the copy (not simulated by default:
    /// a failed send after a failed ledger write leaves one attempt
    /// uncounted, docs/state.md).
    pub carries_fail: f64,
    pub carries_lost: f64,
    /// Share of requests that wait, after admission, up to 12 s (a slot, a
    /// credential, a payload's body) before their gate.
    pub slow_sends: f64,
}

impl Scenario {
    /// `processes` processes against a healthy table, the pattern's rate
    /// 10 a second per process (10,000 at 1,000), one host down for half
    /// the run.
    pub fn healthy(processes: usize, seconds: u64) -> Scenario {
        let rps = 10.0 * processes as f64;
        Scenario {
            name: "healthy table",
            processes,
            seconds,
            rate: Rate {
                rps,
                burst: (rps / 5.0).ceil() as u32,
            },
            breaker: BreakerSettings {
                threshold: 3,
                cooldown: Duration::from_secs(2),
            },
            max_attempts: 5,
            max_receive_count: 5,
            faults: Faults::healthy(),
            skew_ms: 50,
            down_for: Duration::from_secs(seconds / 2),
            // A quarter of what the rate lets through: the rate binds while
            // the backlog lasts, and retries come back within the run.
            messages: (rps * seconds as f64 / 4.0) as usize,
            carries_fail: 0.0,
            carries_lost: 0.0,
            slow_sends: 0.01,
        }
    }

    /// The same against a failing table: calls throttled, ledger writes
    /// failing, answers lost after the write was made.
    pub fn failing(processes: usize, seconds: u64) -> Scenario {
        Scenario {
            name: "failing table",
            faults: Faults {
                throttled: 0.02,
                batch_writes_fail: 0.3,
                answers_lost: 0.05,
                ..Faults::healthy()
            },
            carries_fail: 0.0,
            carries_lost: 0.0,
            ..Scenario::healthy(processes, seconds)
        }
    }
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: Scenario,
    pub seed: u64,
    pub observed: Observed,
    pub table: TableFigures,
    pub redriven: u64,
    /// The window with the most requests against its bound:
    /// (`t`, requests, `burst + rps × (t + 1)`).
    pub busiest_window: (u64, usize, f64),
    pub most_requests_per_message: u32,
}

impl Report {
    /// The invariants that do not hold, each as a sentence.
    pub fn broken(&self) -> Vec<String> {
        let mut broken = Vec::new();
        if self.observed.most_probes_in_flight > 1 {
            broken.push(format!(
                "{} probes in flight to one host",
                self.observed.most_probes_in_flight
            ));
        }
        let (t, count, bound) = self.busiest_window;
        if count as f64 > bound {
            broken.push(format!(
                "{count} requests in {t} s, above burst + rps × (t + 1) = {bound}"
            ));
        }
        if self.most_requests_per_message > self.scenario.max_attempts {
            broken.push(format!(
                "a message was requested {} times, MAX_ATTEMPTS is {} (plus one per lost answer to its carry)",
                self.most_requests_per_message, self.scenario.max_attempts
            ));
        }
        if self.redriven > 0 {
            broken.push(format!(
                "{} records taken by the redrive policy",
                self.redriven
            ));
        }
        broken
    }

    /// The share of conditional writes whose condition failed.
    pub fn conditional_failed_share(&self) -> f64 {
        self.table.conditional_failed as f64 / (self.table.conditional_writes.max(1)) as f64
    }
}

/// Runs `scenario` with `seed` on a virtual clock.
pub fn run(scenario: Scenario, seed: u64) -> Report {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime builds");
    runtime.block_on(run_paused(scenario, seed))
}

async fn run_paused(scenario: Scenario, seed: u64) -> Report {
    let world = Arc::new(World::new(scenario.clone(), seed));
    let table = Arc::new(SimTable::new(scenario.faults, seed ^ 0x5eed));
    for retry_id in 0..scenario.messages as u64 {
        let host = world.pick_host();
        let message = Message {
            retry_id,
            host,
            receive_count: 0,
            carried: None,
        };
        world.queue.send(message, Duration::ZERO);
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(scenario.seconds);
    let mut processes = tokio::task::JoinSet::new();
    for i in 0..scenario.processes {
        let settings = StateSettings {
            table: "sim".into(),
            ..StateSettings::default()
        };
        let fleet = FleetState::with_table(settings, table.clone(), Arc::new(world.clock()))
            .owned_by(format!("process-{i}"));
        let process = Arc::new(process::Process::new(Arc::clone(&world), fleet));
        processes.spawn(process.run(until));
    }
    while processes.join_next().await.is_some() {}
    let observed = world.observed();
    Report {
        busiest_window: busiest_window(&observed.sends, scenario.rate),
        most_requests_per_message: most_requests_per_message(&observed),
        scenario,
        seed,
        table: table.figures(),
        redriven: unexplained_redrives(&world.queue.redriven(), &observed),
        observed,
    }
}

/// The most requests one Retry Message got, less those made on a message
/// whose carry's answer was lost, after it came back and before its copy
/// claimed the chain (docs/state.md: one chain of copies).
fn most_requests_per_message(observed: &Observed) -> u32 {
    observed
        .requests
        .iter()
        .map(|(id, n)| n.saturating_sub(observed.carries_lost.get(id).copied().unwrap_or(0)))
        .max()
        .unwrap_or(0)
}

/// Records the redrive policy took, but for those whose carry's answer was
/// lost at their last receives (SQS made the copy; the record came back
/// past its last receive): the processor cannot know a copy exists, so it
/// must not drop the record.
fn unexplained_redrives(redriven: &[(u64, u64)], observed: &Observed) -> u64 {
    redriven
        .iter()
        .filter(|(_, sqs_id)| !observed.lost_carries.contains(sqs_id))
        .count() as u64
}

/// Of windows of 1, 5 and 10 s, the one whose request count comes
/// closest to (or passes) its bound.
fn busiest_window(sends: &[Duration], rate: Rate) -> (u64, usize, f64) {
    let mut sorted = sends.to_vec();
    sorted.sort();
    [1u64, 5, 10]
        .into_iter()
        .map(|t| {
            let span = Duration::from_secs(t);
            let mut most = 0;
            let mut start = 0;
            for end in 0..sorted.len() {
                while sorted[end] - sorted[start] > span {
                    start += 1;
                }
                most = most.max(end - start + 1);
            }
            let bound = f64::from(rate.burst) + rate.rps * (t as f64 + 1.0);
            (t, most, bound)
        })
        .max_by(|a, b| (a.1 as f64 / a.2).total_cmp(&(b.1 as f64 / b.2)))
        .unwrap_or((1, 0, 0.0))
}

/// The report as a Markdown table row: N, scenario, the four figures, and
/// whether every invariant held.
pub fn row(r: &Report) -> String {
    let (t, count, bound) = r.busiest_window;
    let broken = r.broken();
    format!(
        "| {} | {} | {} | {} | {count} / {bound:.0} in {t} s | {} / {} | {} ({}) | {} ({}) | {:.1} % | {} | {} |",
        r.scenario.processes,
        r.scenario.name,
        r.seed,
        r.observed.most_probes_in_flight,
        r.most_requests_per_message,
        r.scenario.max_attempts,
        r.table.hottest_per_second,
        r.table.hottest_item,
        r.table.hottest_writes_per_second,
        r.table.hottest_written_item,
        100.0 * r.conditional_failed_share(),
        r.redriven,
        if broken.is_empty() {
            "all hold".to_owned()
        } else {
            broken.join("; ")
        },
    )
}

/// The table's header, matching [`row`].
pub const HEADER: &str = "| N | table | seed | most probes in flight | most requests in a window / bound | most requests per message / MAX_ATTEMPTS | hottest item, requests/s | hottest item, writes/s | conditional writes failed | redriven | invariants |\n|---|---|---|---|---|---|---|---|---|---|---|";
