//! The circuit breaker the whole fleet shares (spec §9).
//!
//! One item per host holds its consecutive failures, whether its last
//! answer was good (`proven`), until when it is open, and the probe lease.
//! A proven host is not limited: its attempts cost no DynamoDB request. A
//! host that is not proven (never answered well, or failed since) is tried
//! by one request at a time across the fleet: each takes the probe lease
//! with a conditional write. So a down host sees its `threshold` failures,
//! then the breaker opens, and after each cool-down exactly one probe goes
//! out, fleet-wide.
//!
//! Each process keeps the item it last read, and reads it again at most
//! once a second per host.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use tokio::time::Instant;

use super::table::{Change, Condition, Key, Returns, Update};
use super::{n, number, s, FleetState, Item, StateError};
use crate::config::BreakerSettings;
use crate::policy::record::Health;

/// How long a process trusts what it last read of a host.
const FRESH: Duration = Duration::from_secs(1);

/// What this process knows of every host's fleet breaker.
#[derive(Debug, Default)]
pub struct FleetBreakers {
    /// At most `HOST_STATE_LIMIT` hosts (§12.9). A host is idle when no
    /// ticket or waiting record holds it: forgetting it only means reading
    /// its item again.
    hosts: Mutex<crate::bounded::BoundedMap<Arc<Host>>>,
}

#[derive(Debug, Default)]
struct Host {
    view: Mutex<View>,
    /// One read of the item at a time.
    reading: tokio::sync::Mutex<()>,
    /// Wakes records waiting while a local probe is out.
    answered: tokio::sync::Notify,
    /// Failures in a row this process saw of the host while it was proven.
    failed_here: std::sync::atomic::AtomicU32,
}

#[derive(Debug, Default, Clone, Copy)]
struct View {
    failures: u32,
    proven: bool,
    open_until_ms: u64,
    probe_until_ms: u64,
    read_at: Option<Instant>,
    /// A record of this process holds the probe lease.
    probing_here: bool,
}

impl View {
    fn of(item: Option<&Item>) -> View {
        let Some(item) = item else {
            return View {
                read_at: Some(Instant::now()),
                ..View::default()
            };
        };
        View {
            failures: number(item, "failures").unwrap_or(0),
            proven: matches!(item.get("proven").map(|v| v.as_bool()), Some(Ok(true))),
            open_until_ms: number(item, "openUntil").unwrap_or(0),
            probe_until_ms: number(item, "probeUntil").unwrap_or(0),
            read_at: Some(Instant::now()),
            probing_here: false,
        }
    }
}

/// What the fleet's breaker says about one attempt.
#[derive(Debug)]
pub enum FleetAdmission {
    /// Go ahead, and report how it went.
    Go(FleetTicket),
    /// Open, or another process holds the probe: defer for about `wait`.
    Open { wait: Duration },
}

/// One admitted attempt.
#[derive(Debug)]
pub struct FleetTicket {
    host: Arc<Host>,
    key: String,
    /// Holds the probe lease.
    lease: bool,
    /// The host's failures when the lease was taken (the lease holder is
    /// the only one trying the host, so it knows the count).
    failures: u32,
    /// The host was proven when admitted.
    proven: bool,
    settings: BreakerSettings,
    /// When it was admitted.
    admitted_at: Instant,
}

impl FleetTicket {
    /// Does the ticket hold the fleet's probe lease (the host is not proven,
    /// and this is the one request trying it)?
    pub fn is_probe(&self) -> bool {
        self.lease
    }
}

impl Drop for FleetTicket {
    fn drop(&mut self) {
        if self.lease {
            // Unreported (a panic, the deadline): the lease runs out by
            // itself; this process may try again.
            lock(&self.host.view).probing_here = false;
            self.host.answered.notify_waiters();
        }
    }
}

/// What became of a try at the probe lease.
enum Probe {
    /// This process holds it: the host's failures so far.
    Taken(u32),
    /// The breaker opened meanwhile: decide again.
    LookAgain,
    /// Another process probes: wait for news.
    Wait,
}

/// Claims the right to try the probe lease for this process's records:
/// `false` when another record of this process is trying or holds it.
fn claim(state: &Host) -> bool {
    !std::mem::replace(&mut lock(&state.view).probing_here, true)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FleetState {
    /// May an attempt to `host` go out? Waits, at most until `until`, while
    /// another record holds the probe.
    pub async fn admit(
        &self,
        host: &str,
        settings: BreakerSettings,
        lease_for: Duration,
        until: Instant,
    ) -> Result<FleetAdmission, StateError> {
        let state = self.hosts.host(host);
        let key = format!("breaker#{host}");
        loop {
            let view = self.fresh_view(&state, &key).await?;
            let now = self.now_ms();
            if view.open_until_ms > now {
                return Ok(FleetAdmission::Open {
                    wait: Duration::from_millis(view.open_until_ms - now),
                });
            }
            if view.proven && view.failures == 0 {
                return Ok(FleetAdmission::Go(self.ticket(state, key, settings, None)));
            }
            let watched = Arc::clone(&state);
            let notified = watched.answered.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Only a lease free when last read is tried, and by one record
            // of this process at a time: a lease held elsewhere is not
            // contended with a write per waiting record.
            if view.probe_until_ms < now && claim(&state) {
                match self.try_probe(&state, &key, settings, lease_for).await? {
                    Probe::Taken(failures) => {
                        let ticket = self.ticket(state, key, settings, Some(failures));
                        return Ok(FleetAdmission::Go(ticket));
                    }
                    Probe::LookAgain => continue,
                    Probe::Wait => {}
                }
            }
            // Someone probes: wait for news (here, or a second), within
            // the time this record has.
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let v = *lock(&state.view);
                let wait = Duration::from_millis(v.probe_until_ms.saturating_sub(self.now_ms()));
                return Ok(FleetAdmission::Open {
                    wait: wait.max(Duration::from_secs(1)),
                });
            }
            let _ = tokio::time::timeout(left.min(FRESH), notified).await;
        }
    }

    fn ticket(
        &self,
        host: Arc<Host>,
        key: String,
        settings: BreakerSettings,
        probe: Option<u32>,
    ) -> FleetTicket {
        FleetTicket {
            host,
            key,
            lease: probe.is_some(),
            failures: probe.unwrap_or(0),
            proven: probe.is_none(),
            settings,
            admitted_at: Instant::now(),
        }
    }

    /// Tries to take the probe lease this process has claimed: taken (the
    /// host's failures so far), or what to do instead.
    async fn try_probe(
        &self,
        state: &Host,
        key: &str,
        settings: BreakerSettings,
        lease_for: Duration,
    ) -> Result<Probe, StateError> {
        let taken = self.take_probe(key, settings, lease_for).await;
        let failures = match taken {
            Ok(Some(failures)) => return Ok(Probe::Taken(failures)),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        // Taken elsewhere, just opened, or the table failed: look again.
        let item = match failures {
            Some(e) => Err(e),
            None => self.get(key, "state").await,
        };
        {
            let mut v = lock(&state.view);
            v.probing_here = false;
            if let Ok(item) = &item {
                *v = View::of(item.as_ref());
            }
        }
        if item.is_err() {
            state.answered.notify_waiters();
        }
        item?;
        let v = *lock(&state.view);
        let now = self.now_ms();
        if v.open_until_ms > now {
            return Ok(Probe::LookAgain);
        }
        if v.failures >= settings.threshold && v.open_until_ms == 0 && v.probe_until_ms < now {
            // At its threshold but never opened (the process that should
            // have opened it stopped): open it.
            self.open(key, settings, false).await?;
            return Ok(Probe::LookAgain);
        }
        Ok(Probe::Wait)
    }

    /// Did this process last see `host` proven, with no failure since? No
    /// I/O: what a process may go on with while the table fails (a proven
    /// host needs no probe, so no probe goes out without the table).
    pub fn last_known_proven(&self, host: &str) -> bool {
        let v = *lock(&self.hosts.host(host).view);
        v.proven && v.failures == 0
    }

    /// Does the ticket still admit its request, now that it is about to be
    /// sent (§12.7)? A probe's lease is extended to `lease_for` from now,
    /// so it covers the request however long the wait before was (a
    /// payload's body, a request slot, a credential); `false` when the lease
    /// is no longer this process's (it ran out, and another took it or the
    /// breaker moved on). A ticket without a lease, taken while the host
    /// was proven, is checked against a view at most a second old once it
    /// is older than that: `false` when the host failed or opened since.
    pub async fn still_admits(
        &self,
        ticket: &FleetTicket,
        lease_for: Duration,
    ) -> Result<bool, StateError> {
        if !ticket.lease {
            if ticket.admitted_at.elapsed() < FRESH {
                return Ok(true);
            }
            let view = self.fresh_view(&ticket.host, &ticket.key).await?;
            return Ok(view.proven && view.failures == 0 && view.open_until_ms <= self.now_ms());
        }
        let until = self.now_ms().saturating_add(lease_for.as_millis() as u64);
        let renewed = self
            .update(Update {
                condition: Some(self.held_by_me()),
                ..state_update(&ticket.key, vec![Change::Set("probeUntil", n(until))])
            })
            .await;
        match renewed {
            Ok(_) => Ok(true),
            Err(e) if e.is_conditional() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reports how an admitted attempt went.
    pub async fn report(
        &self,
        ticket: FleetTicket,
        health: Option<Health>,
    ) -> Result<(), StateError> {
        let result = self.write_report(&ticket, health).await;
        if ticket.lease {
            lock(&ticket.host.view).probing_here = false;
        }
        ticket.host.answered.notify_waiters();
        // The Drop above has nothing left to do.
        let mut ticket = ticket;
        ticket.lease = false;
        result
    }

    async fn write_report(
        &self,
        ticket: &FleetTicket,
        health: Option<Health>,
    ) -> Result<(), StateError> {
        let item = match (health, ticket.lease) {
            (Some(Health::Answered), false) if ticket.proven => {
                ticket.host.failed_here.store(0, Ordering::Relaxed);
                return Ok(());
            }
            (Some(Health::Failed), false) if ticket.proven => {
                return self.report_failed_proven(ticket).await
            }
            (Some(Health::Answered), _) => return self.report_answered(ticket).await,
            (Some(Health::Failed), true) => self.report_failed_probe(ticket).await?,
            (Some(Health::Failed), false) => self.report_failed(ticket).await?,
            (None, true) => return self.release_lease(&ticket.key).await,
            (None, false) => return Ok(()),
        };
        let mut v = lock(&ticket.host.view);
        let probing_here = v.probing_here;
        *v = View::of(item.as_ref());
        v.probing_here = probing_here;
        Ok(())
    }

    /// The host answered: it is proven, and the breaker closes. The probe
    /// lease is removed only if it is still this process's (§12.7).
    async fn report_answered(&self, ticket: &FleetTicket) -> Result<(), StateError> {
        let changes = vec![
            Change::Set("failures", n(0)),
            Change::Set("proven", AttributeValue::Bool(true)),
            Change::Set("ttl", self.ttl()),
            Change::Remove("openUntil"),
        ];
        let old = self.as_prober(ticket, changes, Returns::Old).await?;
        if old
            .as_ref()
            .and_then(|o| number::<u64>(o, "openUntil"))
            .is_some()
        {
            crate::metrics::breaker_closed(ticket.key.trim_start_matches("breaker#"));
        }
        let mut v = lock(&ticket.host.view);
        *v = View {
            proven: true,
            read_at: Some(Instant::now()),
            probing_here: v.probing_here,
            ..View::default()
        };
        Ok(())
    }

    /// The probe failed. The lease holder alone tries the host, so it knows
    /// whether this failure reaches the threshold, and opens the breaker in
    /// the same write. A lease lost meanwhile (another process holds one
    /// now) is left alone, and the failure counts as any other.
    async fn report_failed_probe(&self, ticket: &FleetTicket) -> Result<Option<Item>, StateError> {
        let (failures, settings) = (ticket.failures, ticket.settings);
        if failures + 1 < settings.threshold {
            return self.as_prober(ticket, self.failure(), Returns::New).await;
        }
        let until = self
            .now_ms()
            .saturating_add(settings.cooldown.as_millis() as u64);
        let mut changes = self.failure();
        changes.extend([
            Change::Set("openUntil", n(until)),
            Change::Remove("probeUntil"),
            Change::Remove("prober"),
        ]);
        let opened_here = self
            .update(Update {
                condition: Some(self.held_by_me()),
                returns: Returns::New,
                ..state_update(&ticket.key, changes)
            })
            .await;
        match opened_here {
            Ok(item) => {
                opened(
                    ticket.key.trim_start_matches("breaker#"),
                    failures + 1,
                    &settings,
                );
                Ok(item)
            }
            Err(e) if e.is_conditional() => self.report_failed(ticket).await,
            Err(e) => Err(e),
        }
    }

    /// A proven host failed. Each process counts the failures it sees in a
    /// row, and the one that reaches the threshold opens the breaker for
    /// the fleet: a proven host costs no write per failure (thousands a
    /// second at scale, on one item), and its requests are not held one at
    /// a time by one failure among many answers. The others learn of the
    /// opening within a second (their next read).
    async fn report_failed_proven(&self, ticket: &FleetTicket) -> Result<(), StateError> {
        let seen = ticket.host.failed_here.fetch_add(1, Ordering::Relaxed) + 1;
        if seen < ticket.settings.threshold {
            return Ok(());
        }
        ticket.host.failed_here.store(0, Ordering::Relaxed);
        self.open(&ticket.key, ticket.settings, true).await?;
        lock(&ticket.host.view).read_at = None;
        Ok(())
    }

    /// One more failure: the count, and the host no longer proven.
    fn failure(&self) -> Vec<Change> {
        vec![
            Change::Add("failures", n(1)),
            Change::Set("proven", AttributeValue::Bool(false)),
            Change::Set("ttl", self.ttl()),
        ]
    }

    /// A host failed outside a probe (a proven host, or a lost lease):
    /// others may be failing at once, so the count decides whether to open.
    async fn report_failed(&self, ticket: &FleetTicket) -> Result<Option<Item>, StateError> {
        let item = self
            .update(Update {
                returns: Returns::New,
                ..state_update(&ticket.key, self.failure())
            })
            .await?;
        let count: u32 = item
            .as_ref()
            .and_then(|i| number(i, "failures"))
            .unwrap_or(1);
        if count >= ticket.settings.threshold {
            self.open(&ticket.key, ticket.settings, true).await?;
        }
        Ok(item)
    }

    /// Gives up this process's probe lease, if it still holds it.
    async fn release_lease(&self, key: &str) -> Result<(), StateError> {
        let release = vec![Change::Remove("probeUntil"), Change::Remove("prober")];
        self.update(Update {
            condition: Some(self.held_by_me()),
            ..state_update(key, release)
        })
        .await
        .map(|_| ())
        .or_else(|e| if e.is_conditional() { Ok(()) } else { Err(e) })
    }

    /// The probe lease is this process's.
    fn held_by_me(&self) -> Condition {
        Condition::Equals("prober", s(&self.owner))
    }

    /// `changes` on the ticket's item, with the lease's removal when the
    /// ticket holds the probe lease and the item says it is still this
    /// process's; without it otherwise. A process never removes another's
    /// lease.
    async fn as_prober(
        &self,
        ticket: &FleetTicket,
        changes: Vec<Change>,
        returns: Returns,
    ) -> Result<Option<Item>, StateError> {
        if ticket.lease {
            let mut releasing = changes.clone();
            releasing.extend([Change::Remove("probeUntil"), Change::Remove("prober")]);
            let held = self
                .update(Update {
                    condition: Some(self.held_by_me()),
                    returns,
                    ..state_update(&ticket.key, releasing)
                })
                .await;
            match held {
                Err(e) if e.is_conditional() => {}
                other => return other,
            }
        }
        self.update(Update {
            returns,
            ..state_update(&ticket.key, changes)
        })
        .await
    }

    /// Opens the breaker unless it is open already (one process does, and
    /// says so). The host is then at its threshold, not proven: after the
    /// cool-down one probe goes out, and its failure opens it again.
    async fn open(
        &self,
        key: &str,
        settings: BreakerSettings,
        log: bool,
    ) -> Result<(), StateError> {
        let now = self.now_ms();
        let until = now.saturating_add(settings.cooldown.as_millis() as u64);
        let result = self
            .update(Update {
                condition: Some(Condition::Any(vec![
                    Condition::Missing("openUntil"),
                    Condition::AtMost("openUntil", n(now)),
                ])),
                returns: Returns::New,
                ..state_update(
                    key,
                    vec![
                        Change::Set("openUntil", n(until)),
                        Change::Set("proven", AttributeValue::Bool(false)),
                        Change::Set("failures", n(settings.threshold)),
                    ],
                )
            })
            .await;
        match result {
            Ok(item) => {
                let failures = item
                    .as_ref()
                    .and_then(|i| number(i, "failures"))
                    .unwrap_or(0);
                if log {
                    opened(key.trim_start_matches("breaker#"), failures, &settings);
                }
                Ok(())
            }
            Err(e) if e.is_conditional() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The host's view, read again if older than a second.
    async fn fresh_view(&self, state: &Host, key: &str) -> Result<View, StateError> {
        let is_fresh = |v: &View| v.read_at.is_some_and(|at| at.elapsed() < FRESH);
        let v = *lock(&state.view);
        if is_fresh(&v) {
            return Ok(v);
        }
        let _reading = state.reading.lock().await;
        let v = *lock(&state.view);
        if is_fresh(&v) {
            return Ok(v);
        }
        let item = self.get(key, "state").await?;
        let mut v = lock(&state.view);
        let probing_here = v.probing_here;
        *v = View::of(item.as_ref());
        v.probing_here = probing_here;
        Ok(*v)
    }

    /// Takes the fleet's probe lease for `lease_for`: the host's failures
    /// so far, or `None` when another process holds it, the breaker is
    /// open, or it is about to open (at its threshold).
    async fn take_probe(
        &self,
        key: &str,
        settings: BreakerSettings,
        lease_for: Duration,
    ) -> Result<Option<u32>, StateError> {
        let now = self.now_ms();
        let lease = now.saturating_add(lease_for.as_millis() as u64);
        let changes = vec![
            Change::Set("probeUntil", n(lease)),
            Change::Set("prober", s(&self.owner)),
            Change::Set("ttl", self.ttl()),
        ];
        let free = Condition::All(vec![
            Condition::Any(vec![
                Condition::Missing("probeUntil"),
                Condition::Below("probeUntil", n(now)),
            ]),
            Condition::Any(vec![
                Condition::Missing("openUntil"),
                Condition::AtMost("openUntil", n(now)),
            ]),
            Condition::Any(vec![
                Condition::Missing("failures"),
                Condition::Below("failures", n(settings.threshold)),
                Condition::Exists("openUntil"),
            ]),
        ]);
        let result = self
            .update(Update {
                condition: Some(free),
                returns: Returns::New,
                ..state_update(key, changes)
            })
            .await;
        match result {
            Ok(item) => Ok(Some(
                item.as_ref()
                    .and_then(|i| number(i, "failures"))
                    .unwrap_or(0),
            )),
            Err(e) if e.is_conditional() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// `changes` on a host's `state` item, unconditional, returning nothing.
fn state_update(key: &str, changes: Vec<Change>) -> Update {
    Update {
        key: Key::new(key, "state"),
        changes,
        condition: None,
        returns: Returns::Nothing,
    }
}

fn opened(host: &str, failures: u32, settings: &BreakerSettings) {
    crate::metrics::breaker_opened(host, failures, settings.cooldown);
}

impl FleetBreakers {
    /// Keeping at most `limit` hosts (`HOST_STATE_LIMIT`).
    pub fn with_limit(limit: usize) -> FleetBreakers {
        FleetBreakers {
            hosts: Mutex::new(crate::bounded::BoundedMap::new(limit)),
        }
    }

    /// What this process knows of `host`. When `HOST_STATE_LIMIT` hosts
    /// are in use at once, a view kept only by its users: the table, read
    /// as for any host not seen lately, still keeps the fleet's promises.
    fn host(&self, host: &str) -> Arc<Host> {
        lock(&self.hosts)
            .entry(host, Arc::default, |h| Arc::strong_count(h) == 1)
            .map_or_else(Arc::default, |h| Arc::clone(h))
    }

    /// How many hosts it keeps.
    pub fn hosts_kept(&self) -> usize {
        lock(&self.hosts).len()
    }
}
