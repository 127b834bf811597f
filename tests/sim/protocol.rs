//! The fleet breaker's protocol on the simulated table and tokio's paused
//! clock: the review findings it had, as regressions.

use std::sync::Arc;
use std::time::Duration;

use retryq::config::StateSettings;
use retryq::fleet::breaker::FleetAdmission;
use retryq::fleet::FleetState;
use retryq::policy::destinations::BreakerSettings;
use retryq::policy::record::Health;
use retryq::sim::table::{Faults, SimTable};
use retryq::sim::world::SimClock;

const LEASE: Duration = Duration::from_secs(10);

fn fleet(table: &Arc<SimTable>, name: &str) -> FleetState {
    let settings = StateSettings {
        table: "protocol".into(),
        ..StateSettings::default()
    };
    FleetState::with_table(settings, table.clone(), Arc::new(SimClock::starting_now(0)))
        .owned_by(name.into())
}

fn until() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(2)
}

/// A proven host that fails `threshold` times in a row is opened by the
/// process that saw it; after the cool-down exactly one probe goes out,
/// and its failure opens the breaker again (second review, finding 5: it
/// took `threshold` probes in a row).
#[tokio::test(start_paused = true)]
async fn after_a_proven_host_opens_one_probe_goes_out_per_cooldown() {
    let table = Arc::new(SimTable::new(Faults::healthy(), 1));
    let p = fleet(&table, "P");
    let host = "h.example:443";
    let s = BreakerSettings {
        threshold: 3,
        cooldown: Duration::from_secs(5),
    };
    let Ok(FleetAdmission::Go(t)) = p.admit(host, s, LEASE, until()).await else {
        panic!("the first request is admitted");
    };
    p.report(t, Some(Health::Answered)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..3 {
        let Ok(FleetAdmission::Go(t)) = p.admit(host, s, LEASE, until()).await else {
            panic!("a proven host is admitted");
        };
        assert!(!t.is_probe());
        p.report(t, Some(Health::Failed)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(matches!(
        p.admit(host, s, LEASE, until()).await.unwrap(),
        FleetAdmission::Open { .. }
    ));
    tokio::time::sleep(s.cooldown + Duration::from_secs(1)).await;
    let mut probes = 0;
    while let FleetAdmission::Go(t) = p.admit(host, s, LEASE, until()).await.unwrap() {
        probes += 1;
        p.report(t, Some(Health::Failed)).await.unwrap();
        if probes > 10 {
            break;
        }
    }
    assert_eq!(probes, 1, "requests to the down host after one cool-down");
}
