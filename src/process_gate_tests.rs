//! The send gate on the simulated table (second review, finding 4): a
//! probe whose lease renewal fails with an error, not a failed condition,
//! is withheld, since another process may hold the lease and probe.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config::StateSettings;
use crate::fleet::table::{Call, Item, Key, Table, Update};
use crate::process::unreachable_sqs;
use crate::sim::table::{Faults, SimTable};
use crate::sim::world::SimClock;

/// The shared table, whose updates fail (throttled) once `failing` is set.
#[derive(Debug)]
struct Flaky {
    inner: Arc<SimTable>,
    failing: AtomicBool,
}

impl Table for Flaky {
    fn get(&self, key: Key) -> Call<'_, Option<Item>> {
        self.inner.get(key)
    }
    fn update(&self, update: Update) -> Call<'_, Option<Item>> {
        if self.failing.load(Ordering::SeqCst) {
            return Box::pin(async {
                Err(StateError {
                    operation: "UpdateItem",
                    detail: "ThrottlingException: slow down (test)".into(),
                })
            });
        }
        self.inner.update(update)
    }
    fn put_batch(&self, items: Vec<Item>) -> Call<'_, Vec<Item>> {
        self.inner.put_batch(items)
    }
    fn get_batch(&self, keys: Vec<Key>) -> Call<'_, Vec<Item>> {
        self.inner.get_batch(keys)
    }
    fn query(&self, pk: String, prefix: String) -> Call<'_, Vec<Item>> {
        self.inner.query(pk, prefix)
    }
}

#[tokio::test(start_paused = true)]
async fn a_probe_whose_renewal_fails_is_withheld() {
    let shared = Arc::new(SimTable::new(Faults::healthy(), 1));
    let flaky = Arc::new(Flaky {
        inner: Arc::clone(&shared),
        failing: AtomicBool::new(false),
    });
    let settings = StateSettings {
        table: "gate".into(),
        ..StateSettings::default()
    };
    let clock = || Arc::new(SimClock::starting_now(0));
    let p_fleet =
        FleetState::with_table(settings.clone(), flaky.clone(), clock()).owned_by("P".into());
    let q_fleet = FleetState::with_table(settings, shared, clock()).owned_by("Q".into());
    let config = Config::from_lookup(|name| {
        [
            ("STATE_TABLE", "gate"),
            ("DLQ_URL", "http://127.0.0.1:9/1/dlq"),
        ]
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_owned())
    })
    .expect("config");
    let p = Processor::new(config, unreachable_sqs(), None)
        .expect("processor")
        .with_fleet(p_fleet);
    let breaker = BreakerSettings {
        threshold: 3,
        cooldown: Duration::from_secs(2),
    };
    let lease_for = p.config.request_timeout + PROBE_LEASE_SLACK;
    let until = || tokio::time::Instant::now() + Duration::from_secs(2);
    let host = "down.example:443";
    let fleet = p.fleet.as_ref().expect("a fleet");
    let Ok(FleetAdmission::Go(p_ticket)) = fleet.admit(host, breaker, lease_for, until()).await
    else {
        panic!("P probes first");
    };
    assert!(p_ticket.is_probe());
    // P waits (a slot, a credential) past its lease; Q takes the lease.
    tokio::time::sleep(lease_for + Duration::from_secs(1)).await;
    let Ok(FleetAdmission::Go(q_ticket)) = q_fleet.admit(host, breaker, lease_for, until()).await
    else {
        panic!("Q takes the lease that ran out");
    };
    assert!(q_ticket.is_probe());
    // P's renewal fails with an error, not a failed condition.
    flaky.failing.store(true, Ordering::SeqCst);
    let batch = Batch::starting_now();
    let gate = LeaseGate {
        processor: &p,
        batch: &batch,
        ticket: Some(&p_ticket),
        spend_by: None,
        hold: None,
    };
    use crate::deliver::SendGate;
    assert!(!gate.open().await, "P's probe would go out beside Q's");
}
