//! `retryq-sim [--seed S] [--seconds T] [N ...]`: the fleet simulation
//! (src/sim) at N processes (default 10, 100 and 1,000), against a healthy
//! table and a failing one. Prints a Markdown table; exits 1 if an
//! invariant broke.

use std::process::ExitCode;
use std::time::Instant;

use retryq::sim::{self, Scenario};

fn main() -> ExitCode {
    let mut seed = 1;
    let mut seconds = 40;
    let mut sizes = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> u64 {
            let text = args.next().unwrap_or_default();
            text.parse()
                .unwrap_or_else(|_| panic!("{name}: expected a whole number, got {text:?}"))
        };
        match arg.as_str() {
            "--seed" => seed = value("--seed"),
            "--seconds" => seconds = value("--seconds"),
            n => sizes.push(
                n.parse::<usize>()
                    .unwrap_or_else(|_| panic!("N: expected a number of processes, got {n:?}")),
            ),
        }
    }
    if sizes.is_empty() {
        sizes = vec![10, 100, 1000];
    }
    println!("{}", sim::HEADER);
    let mut held = true;
    for n in sizes {
        for scenario in [Scenario::healthy(n, seconds), Scenario::failing(n, seconds)] {
            let began = Instant::now();
            let report = sim::run(scenario, seed);
            held &= report.broken().is_empty();
            println!("{}", sim::row(&report));
            eprintln!(
                "  N={n} {}: {} requests, {} delivered, {} dead-lettered, {} carried, {} carried before, {} deferred, {} withheld, {} table calls ({} failed to answer); {:.1} s of real time",
                report.scenario.name,
                report.observed.sends.len(),
                report.observed.delivered,
                report.observed.dead_lettered,
                report.observed.carried,
                report.observed.carried_before,
                report.observed.deferred,
                report.observed.withheld,
                report.table.calls,
                report.observed.table_failures,
                began.elapsed().as_secs_f64(),
            );
        }
    }
    if held {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
