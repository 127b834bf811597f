//! Protecting a struggling destination: a per-host circuit breaker and a
//! per-host concurrency limit.
//!
//! **Breaker** (`BREAKER_THRESHOLD`, `BREAKER_COOLDOWN_SECONDS`). After N
//! consecutive retryable failures to one host, the breaker for that host
//! opens: its records are not attempted and go back with their backoff,
//! while records to healthy hosts in the same batch are unaffected. After the
//! cool-down it half-opens: a single record goes out as a probe; success
//! closes the breaker, failure opens it for another cool-down. The state
//! lives in the process, so it survives across warm invocations.
//!
//! "At most N requests" holds even under concurrency: a host that has not
//! yet answered well (no success since its last failure, or never seen) may
//! only have as many attempts in flight as failures are still allowed
//! (`N - failures`); further records wait for those answers. A host known
//! to be healthy is not limited by the breaker at all.
//!
//! **Per-host concurrency** (`MAX_CONCURRENCY_PER_HOST`): at most that many
//! requests in flight to one `host:port`, inside the global
//! `MAX_CONCURRENCY`.

// The breakers and buckets serve the processor; without it (a producer
// build) only the request slots are used.
#![cfg_attr(not(feature = "processor"), allow(dead_code))]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::bounded::BoundedMap;
use url::Url;

pub use crate::policy::destinations::BreakerSettings;
use crate::policy::destinations::{refill, DestinationPolicies, Rate, Token};
pub use crate::policy::record::Health;

/// The key breakers and limits are kept by: `host:port`.
pub fn host_key(url: &Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or(0)
    )
}

#[derive(Debug, Default)]
struct HostState {
    consecutive_failures: u32,
    /// The last answer was a success: the breaker does not limit the host.
    known_good: bool,
    in_flight: u32,
    /// On tokio's clock, so that tests can move it.
    open_until: Option<tokio::time::Instant>,
    probing: bool,
}

impl HostState {
    /// Nothing in flight, no probe out, no cool-down running: forgetting
    /// it loses no more than a count of failures below the threshold, or
    /// (half-open, its cool-down over) the single probe it was due, which a
    /// forgotten host replaces with the threshold's allowance.
    fn is_idle(&self) -> bool {
        self.in_flight == 0
            && !self.probing
            && self
                .open_until
                .is_none_or(|until| tokio::time::Instant::now() >= until)
    }
}

/// What the breaker says about one attempt.
#[derive(Debug)]
pub enum Admission {
    /// Go ahead; report the result on the ticket.
    Go(Ticket),
    /// The breaker is open: do not attempt.
    Open,
}

/// Per-host breakers, shared by every batch of the process. Each admission
/// names the breaker's settings (`BREAKER_*`, or the destination's policy).
#[derive(Debug)]
pub struct Breakers {
    /// At most `HOST_STATE_LIMIT` hosts (§12.9).
    hosts: Mutex<BoundedMap<HostState>>,
    /// Wakes attempts waiting for an answer from an unproven host.
    answered: Notify,
}

impl Breakers {
    #[cfg(test)]
    pub fn new() -> Arc<Breakers> {
        Breakers::with_limit(crate::bounded::DEFAULT_HOST_STATE_LIMIT)
    }

    /// Keeping at most `limit` hosts (`HOST_STATE_LIMIT`).
    pub fn with_limit(limit: usize) -> Arc<Breakers> {
        Arc::new(Breakers {
            hosts: Mutex::new(BoundedMap::new(limit)),
            answered: Notify::new(),
        })
    }

    /// May an attempt to `host` go out now? Waits while the host's allowance
    /// of unproven attempts is used up.
    pub async fn admit(self: &Arc<Self>, host: &str, settings: BreakerSettings) -> Admission {
        let threshold = settings.threshold.max(1);
        loop {
            let notified = self.answered.notified();
            tokio::pin!(notified);
            {
                let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
                let Some(state) = hosts.entry(host, HostState::default, HostState::is_idle) else {
                    // HOST_STATE_LIMIT hosts busy at once: this one waits,
                    // as behind an open breaker, using up no attempt.
                    return Admission::Open;
                };
                if let Some(until) = state.open_until {
                    if tokio::time::Instant::now() < until || state.probing {
                        return Admission::Open;
                    }
                    // Half-open: this attempt is the single probe.
                    state.probing = true;
                    state.in_flight += 1;
                    tracing::info!(host, "circuit breaker half-open: sending one probe");
                    return Admission::Go(self.ticket(host, true, settings));
                }
                let proven = state.known_good && state.consecutive_failures == 0;
                if proven || state.consecutive_failures + state.in_flight < threshold {
                    state.in_flight += 1;
                    return Admission::Go(self.ticket(host, false, settings));
                }
                // Wait for an answer. Registered while the lock is held, so
                // no answer reported after this look can be missed.
                notified.as_mut().enable();
            }
            notified.await;
        }
    }

    fn ticket(self: &Arc<Self>, host: &str, probe: bool, settings: BreakerSettings) -> Ticket {
        Ticket {
            breakers: Arc::clone(self),
            host: host.to_owned(),
            probe,
            settings,
            done: false,
        }
    }

    fn finish(&self, host: &str, probe: bool, settings: BreakerSettings, health: Option<Health>) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        // A ticket's host is busy, so it is kept.
        let Some(state) = hosts.get_mut(host) else {
            return;
        };
        state.in_flight = state.in_flight.saturating_sub(1);
        if probe {
            state.probing = false;
        }
        match health {
            Some(Health::Answered) => {
                if state.open_until.is_some() {
                    crate::metrics::breaker_closed(host);
                }
                state.consecutive_failures = 0;
                state.known_good = true;
                state.open_until = None;
            }
            Some(Health::Failed) => {
                state.consecutive_failures += 1;
                state.known_good = false;
                if probe
                    || (state.open_until.is_none()
                        && state.consecutive_failures >= settings.threshold.max(1))
                {
                    state.open_until = Some(crate::clock::later_on_tokio_clock(settings.cooldown));
                    crate::metrics::breaker_opened(
                        host,
                        state.consecutive_failures,
                        settings.cooldown,
                    );
                }
            }
            // Not attempted after all (refused, cancelled): no news.
            None => {}
        }
        self.answered.notify_waiters();
    }

    /// Is the breaker for `host` open now?
    #[cfg(test)]
    fn is_open(&self, host: &str) -> bool {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.get_mut(host).is_some_and(|s| s.open_until.is_some())
    }

    /// How many hosts it keeps (at most `HOST_STATE_LIMIT`).
    pub fn hosts_kept(&self) -> usize {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// One admitted attempt. Report how it went; dropping it unreported (a
/// panic, the deadline) counts as no news.
#[derive(Debug)]
pub struct Ticket {
    breakers: Arc<Breakers>,
    host: String,
    probe: bool,
    settings: BreakerSettings,
    done: bool,
}

impl Ticket {
    pub fn report(mut self, health: Option<Health>) {
        self.done = true;
        self.breakers
            .finish(&self.host, self.probe, self.settings, health);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            self.breakers
                .finish(&self.host, self.probe, self.settings, None);
        }
    }
}

/// Request slots: at most `MAX_CONCURRENCY` requests in flight, and at most
/// `MAX_CONCURRENCY_PER_HOST` to one host. Held only for the HTTP exchange
/// itself, never while a record waits for a token or an SQS call.
#[derive(Debug)]
pub struct Slots {
    requests: Semaphore,
    /// `MAX_CONCURRENCY_PER_HOST`.
    per_host: Option<usize>,
    /// A destination policy's `maxConcurrency` replaces it for its hosts.
    policies: DestinationPolicies,
    hosts: HostLimits,
}

/// A request's slots; released when dropped.
#[derive(Debug)]
pub struct SlotPermit<'a> {
    _host: Option<OwnedSemaphorePermit>,
    _request: tokio::sync::SemaphorePermit<'a>,
}

impl Slots {
    pub fn new(max_concurrency: usize, per_host: Option<usize>) -> Slots {
        Slots {
            requests: Semaphore::new(max_concurrency.max(1)),
            per_host,
            policies: DestinationPolicies::none(),
            hosts: HostLimits::default(),
        }
    }

    /// Keeping per-host limits for at most `limit` hosts (`HOST_STATE_LIMIT`).
    pub fn with_host_limit(mut self, limit: usize) -> Slots {
        self.hosts = HostLimits {
            hosts: Mutex::new(BoundedMap::new(limit)),
        };
        self
    }

    /// How many hosts' limits it keeps.
    pub fn hosts_kept(&self) -> usize {
        self.hosts
            .hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// With the `maxConcurrency` of these destination policies.
    pub fn with_policies(mut self, policies: DestinationPolicies) -> Slots {
        self.policies = policies;
        self
    }

    /// Waits for a slot for a request to `url`'s host (the host's first, so
    /// a busy host does not hold global slots while it waits).
    pub async fn acquire(&self, url: &Url) -> SlotPermit<'_> {
        let limit = match self.policies.for_url(url) {
            Some(rules) => rules.max_concurrency.or(self.per_host),
            None => self.per_host,
        };
        let host = match limit {
            Some(limit) => Some(self.hosts.acquire(&host_key(url), limit).await),
            None => None,
        };
        SlotPermit {
            _host: host,
            _request: self.requests.acquire().await.expect("never closed"),
        }
    }
}

/// Per-host limits: a semaphore per `host:port`.
#[derive(Debug, Default)]
pub struct HostLimits {
    /// At most `HOST_STATE_LIMIT` hosts; one is idle when no request holds
    /// its semaphore.
    hosts: Mutex<BoundedMap<Arc<Semaphore>>>,
}

impl HostLimits {
    /// Waits for a slot for `host`, which has `limit` slots (a host always
    /// has the same limit: it comes from the configuration).
    pub async fn acquire(&self, host: &str, limit: usize) -> OwnedSemaphorePermit {
        let semaphore = loop {
            let kept = {
                let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
                hosts
                    .entry(
                        host,
                        || Arc::new(Semaphore::new(limit.max(1))),
                        |s| Arc::strong_count(s) == 1,
                    )
                    .map(|s| Arc::clone(s))
            };
            match kept {
                Some(semaphore) => break semaphore,
                // HOST_STATE_LIMIT hosts have requests in flight or
                // waiting: wait for one to finish.
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        semaphore.acquire_owned().await.expect("never closed")
    }
}

/// Rate limits of `DESTINATION_POLICIES` kept in this process: without a
/// state table, or for a batch whose table calls failed. One token bucket
/// per pattern.
#[derive(Debug, Default)]
pub struct LocalBuckets {
    buckets: Mutex<HashMap<String, LocalBucket>>,
}

#[derive(Debug)]
struct LocalBucket {
    tokens: f64,
    at: tokio::time::Instant,
    waiting: u32,
}

impl LocalBuckets {
    /// A token of `pattern`'s bucket, waiting for one at most until `until`.
    pub async fn token(&self, pattern: &str, rate: Rate, until: Instant) -> Token {
        let until = tokio::time::Instant::from_std(until);
        self.with(pattern, rate, |b| b.waiting += 1);
        let token = loop {
            let wait = self.with(pattern, rate, |b| {
                let now = tokio::time::Instant::now();
                b.tokens = refill(rate, b.tokens, now - b.at);
                b.at = now;
                if b.tokens >= 1.0 {
                    b.tokens -= 1.0;
                    Ok(())
                } else {
                    Err((
                        Duration::from_secs_f64((1.0 - b.tokens) / rate.rps),
                        b.waiting,
                    ))
                }
            });
            match wait {
                Ok(()) => break Token::Granted { spend_by: None },
                Err((wait, waiting)) if tokio::time::Instant::now() + wait > until => {
                    break Token::Deferred(
                        wait + Duration::from_secs_f64(f64::from(waiting) / rate.rps),
                    )
                }
                Err((wait, _)) => tokio::time::sleep(wait).await,
            }
        };
        self.with(pattern, rate, |b| b.waiting -= 1);
        token
    }

    fn with<T>(&self, pattern: &str, rate: Rate, f: impl FnOnce(&mut LocalBucket) -> T) -> T {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets
            .entry(pattern.to_owned())
            .or_insert_with(|| LocalBucket {
                tokens: f64::from(rate.burst),
                at: tokio::time::Instant::now(),
                waiting: 0,
            });
        f(bucket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_destination_policys_max_concurrency_limits_its_hosts_only() {
        let retry = crate::policy::RetryPolicy {
            max_attempts: 1,
            backoff: crate::policy::backoff::Backoff::new(
                Duration::from_secs(1),
                Duration::from_secs(1),
            )
            .unwrap(),
            retry_after_max: Duration::from_secs(1),
        };
        let policies =
            DestinationPolicies::parse(r#"{"slow.example.com": {"maxConcurrency": 2}}"#, &retry)
                .unwrap();
        let slots = Slots::new(64, Some(10)).with_policies(policies);
        let slow = Url::parse("https://slow.example.com/a").unwrap();
        let other = Url::parse("https://fast.example.com/a").unwrap();
        let held = [slots.acquire(&slow).await, slots.acquire(&slow).await];
        let third = tokio::time::timeout(Duration::from_millis(50), slots.acquire(&slow)).await;
        assert!(third.is_err(), "a third request to the slow host waits");
        let mut others = Vec::new();
        for _ in 0..10 {
            others.push(slots.acquire(&other).await);
        }
        let eleventh = tokio::time::timeout(Duration::from_millis(50), slots.acquire(&other)).await;
        assert!(
            eleventh.is_err(),
            "other hosts keep MAX_CONCURRENCY_PER_HOST"
        );
        drop(held);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), slots.acquire(&slow))
                .await
                .is_ok()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_local_bucket_grants_its_burst_then_its_rate_then_defers() {
        let buckets = LocalBuckets::default();
        let rate = Rate { rps: 2.0, burst: 2 };
        let far = Instant::now() + Duration::from_secs(60);
        let started = tokio::time::Instant::now();
        for _ in 0..6 {
            assert_eq!(
                buckets.token("p", rate, far).await,
                Token::Granted { spend_by: None }
            );
        }
        // Two at once, then one every half second.
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        match buckets.token("p", rate, Instant::now()).await {
            Token::Deferred(wait) => assert!(wait >= Duration::from_millis(500), "{wait:?}"),
            Token::Granted { .. } => panic!("no token was due"),
        }
        assert_eq!(
            buckets.token("other", rate, Instant::now()).await,
            Token::Granted { spend_by: None },
            "each pattern has its own bucket"
        );
    }

    fn go(a: Admission) -> Ticket {
        match a {
            Admission::Go(t) => t,
            Admission::Open => panic!("expected to be admitted"),
        }
    }

    #[tokio::test]
    async fn n_consecutive_failures_open_the_breaker() {
        let b = Breakers::new();
        let s = BreakerSettings {
            threshold: 3,
            cooldown: Duration::from_secs(60),
        };
        for _ in 0..3 {
            go(b.admit("h:80", s).await).report(Some(Health::Failed));
        }
        assert!(b.is_open("h:80"));
        assert!(matches!(b.admit("h:80", s).await, Admission::Open));
        assert!(
            matches!(b.admit("other:80", s).await, Admission::Go(_)),
            "other hosts are unaffected"
        );
    }

    #[tokio::test]
    async fn a_success_resets_the_count() {
        let b = Breakers::new();
        let s = BreakerSettings {
            threshold: 3,
            cooldown: Duration::from_secs(60),
        };
        for _ in 0..2 {
            go(b.admit("h:80", s).await).report(Some(Health::Failed));
        }
        go(b.admit("h:80", s).await).report(Some(Health::Answered));
        for _ in 0..2 {
            go(b.admit("h:80", s).await).report(Some(Health::Failed));
        }
        assert!(!b.is_open("h:80"));
    }

    #[tokio::test]
    async fn an_unproven_host_gets_no_more_attempts_in_flight_than_failures_allowed() {
        let b = Breakers::new();
        let s = BreakerSettings {
            threshold: 2,
            cooldown: Duration::from_secs(60),
        };
        let t1 = go(b.admit("h:80", s).await);
        let t2 = go(b.admit("h:80", s).await);
        let waiting = tokio::spawn({
            let b = Arc::clone(&b);
            async move { matches!(b.admit("h:80", s).await, Admission::Open) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the third waits for an answer");
        t1.report(Some(Health::Failed));
        t2.report(Some(Health::Failed));
        assert!(waiting.await.unwrap(), "then finds the breaker open");
    }

    #[tokio::test]
    async fn a_proven_host_is_not_limited() {
        let b = Breakers::new();
        let s = BreakerSettings {
            threshold: 1,
            cooldown: Duration::from_secs(60),
        };
        go(b.admit("h:80", s).await).report(Some(Health::Answered));
        let mut tickets = Vec::new();
        for _ in 0..20 {
            tickets.push(go(b.admit("h:80", s).await));
        }
        assert_eq!(tickets.len(), 20);
    }

    /// On a paused clock: the cool-down ends when the test moves time, not
    /// when a busy machine lets 100 ms pass between two lines.
    #[tokio::test(start_paused = true)]
    async fn after_the_cooldown_a_single_probe_goes_out() {
        let b = Breakers::new();
        let s = BreakerSettings {
            threshold: 1,
            cooldown: Duration::from_millis(100),
        };
        go(b.admit("h:80", s).await).report(Some(Health::Failed));
        assert!(matches!(b.admit("h:80", s).await, Admission::Open));
        tokio::time::sleep(Duration::from_millis(150)).await;
        let probe = go(b.admit("h:80", s).await);
        assert!(
            matches!(b.admit("h:80", s).await, Admission::Open),
            "only one probe"
        );
        probe.report(Some(Health::Failed));
        assert!(
            matches!(b.admit("h:80", s).await, Admission::Open),
            "a failed probe reopens"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        go(b.admit("h:80", s).await).report(Some(Health::Answered));
        assert!(!b.is_open("h:80"), "a successful probe closes");
        assert!(matches!(b.admit("h:80", s).await, Admission::Go(_)));
    }

    #[tokio::test]
    async fn a_huge_cooldown_keeps_the_breaker_open_without_a_panic() {
        let b = Breakers::new();
        let s = BreakerSettings {
            threshold: 1,
            cooldown: Duration::MAX,
        };
        go(b.admit("h:80", s).await).report(Some(Health::Failed));
        assert!(b.is_open("h:80"));
        assert!(matches!(b.admit("h:80", s).await, Admission::Open));
        assert!(
            matches!(b.admit("other:80", s).await, Admission::Go(_)),
            "the lock was not poisoned: other hosts still go"
        );
    }

    #[tokio::test]
    async fn a_dropped_ticket_frees_its_slot() {
        let b = Breakers::new();
        let s = BreakerSettings {
            threshold: 1,
            cooldown: Duration::from_secs(60),
        };
        drop(go(b.admit("h:80", s).await));
        go(b.admit("h:80", s).await).report(None);
        assert!(matches!(b.admit("h:80", s).await, Admission::Go(_)));
    }

    #[test]
    fn hosts_are_keyed_with_their_port() {
        assert_eq!(
            host_key(&Url::parse("https://api.example.com/x").unwrap()),
            "api.example.com:443"
        );
        assert_eq!(
            host_key(&Url::parse("http://127.0.0.1:8080/").unwrap()),
            "127.0.0.1:8080"
        );
    }
}

#[cfg(test)]
mod bounded_tests {
    //! A busy host is never forgotten to make room (§12.9, review
    //! findings): a new host waits, or is deferred, until one is idle.
    use super::*;
    use std::time::Duration;

    fn s() -> BreakerSettings {
        BreakerSettings {
            threshold: 1,
            cooldown: Duration::from_secs(30),
        }
    }

    /// Per-host concurrency 1; 2 hosts kept. a and b hold their slots: c
    /// waits for room rather than forgetting a, a second request to a
    /// still waits for a's slot, and c goes once b's request ends.
    #[tokio::test]
    async fn a_busy_host_limit_is_not_forgotten() {
        let limits = HostLimits {
            hosts: Mutex::new(BoundedMap::new(2)),
        };
        let _a1 = limits.acquire("a:443", 1).await;
        let b = limits.acquire("b:443", 1).await;
        let wait = Duration::from_millis(200);
        let c = tokio::time::timeout(wait, limits.acquire("c:443", 1)).await;
        assert!(c.is_err(), "no room: c waits");
        let second = tokio::time::timeout(wait, limits.acquire("a:443", 1)).await;
        assert!(
            second.is_err(),
            "a second concurrent request to a:443 with maxConcurrency 1"
        );
        drop(b);
        let c = tokio::time::timeout(Duration::from_secs(2), limits.acquire("c:443", 1)).await;
        assert!(c.is_ok(), "b idle: c has room");
    }

    /// A probe in flight to x; y busy; z forgets x; x admitted again.
    #[tokio::test(start_paused = true)]
    async fn a_probing_host_is_not_forgotten() {
        let b = Breakers::with_limit(2);
        let t = match b.admit("x:443", s()).await {
            Admission::Go(t) => t,
            _ => panic!(),
        };
        t.report(Some(Health::Failed));
        tokio::time::advance(Duration::from_secs(31)).await;
        let _probe = match b.admit("x:443", s()).await {
            Admission::Go(t) => t,
            _ => panic!("probe"),
        };
        let _y = match b.admit("y:443", s()).await {
            Admission::Go(t) => t,
            _ => panic!(),
        };
        let _z = b.admit("z:443", s()).await;
        let again = tokio::time::timeout(Duration::from_millis(10), b.admit("x:443", s())).await;
        assert!(
            matches!(again, Ok(Admission::Open)),
            "second attempt to x during its probe: {again:?}"
        );
    }

    /// A producer's failing hosts cannot push out an open breaker (its
    /// cool-down running): with the map full of open breakers, a new host
    /// is deferred instead.
    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_is_not_pushed_out_by_other_open_breakers() {
        let b = Breakers::with_limit(2);
        for h in ["victim:443", "p1:443"] {
            let t = match b.admit(h, s()).await {
                Admission::Go(t) => t,
                _ => panic!(),
            };
            t.report(Some(Health::Failed));
        }
        let p2 = b.admit("p2:443", s()).await;
        assert!(matches!(p2, Admission::Open), "no room: deferred");
        let again =
            tokio::time::timeout(Duration::from_millis(10), b.admit("victim:443", s())).await;
        assert!(
            matches!(again, Ok(Admission::Open)),
            "victim's open breaker forgotten: {again:?}"
        );
    }
}
