//! The fleet simulation (src/sim) with a few seeds: every invariant holds
//! at 10, 100 and 1,000 processes, against a healthy table and a failing
//! one, and a seed replays the same run. `make sim` prints the figures.

use retryq::sim::{self, Report, Scenario};

#[path = "sim/protocol.rs"]
mod protocol;

fn assert_holds(report: &Report) {
    let broken = report.broken();
    assert!(
        broken.is_empty(),
        "N={} {} seed {}: {}\n{}",
        report.scenario.processes,
        report.scenario.name,
        report.seed,
        broken.join("; "),
        sim::row(report)
    );
    // The run did its work: messages were delivered, the always-failing
    // host's messages were retried (to their limit, or near it within 20 s
    // of backoffs, deferrals and carries), and the host that was down got
    // its probes.
    assert!(report.observed.delivered > 0, "nothing delivered");
    assert!(
        report.most_requests_per_message >= 3,
        "counts were put to the test: at most {} requests",
        report.most_requests_per_message
    );
    assert!(
        report.observed.most_probes_in_flight == 1,
        "a probe went out"
    );
}

#[test]
fn ten_and_a_hundred_processes_keep_every_invariant_with_three_seeds() {
    for seed in [1, 2, 3] {
        for n in [10, 100] {
            assert_holds(&sim::run(Scenario::healthy(n, 20), seed));
            assert_holds(&sim::run(Scenario::failing(n, 20), seed));
        }
    }
}

#[test]
fn a_thousand_processes_keep_every_invariant() {
    assert_holds(&sim::run(Scenario::healthy(1000, 20), 7));
    assert_holds(&sim::run(Scenario::failing(1000, 20), 7));
}

#[test]
fn a_seed_replays_the_same_run() {
    let figures = |r: &Report| {
        (
            r.observed.sends.clone(),
            r.observed.delivered,
            r.observed.carried,
            r.table.calls,
            r.table.conditional_failed,
        )
    };
    let a = sim::run(Scenario::failing(50, 10), 11);
    let b = sim::run(Scenario::failing(50, 10), 11);
    assert_eq!(figures(&a), figures(&b));
    let c = sim::run(Scenario::failing(50, 10), 12);
    assert_ne!(figures(&a).0, figures(&c).0, "another seed, another run");
}
