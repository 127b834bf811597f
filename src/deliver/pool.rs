//! Which requests may leave their connection open for reuse (§12.9).
//!
//! An HTTP client's pool keeps idle connections per host, with no limit on
//! the number of hosts: a producer naming a new host in every message, or
//! many hosts at full concurrency, would leave idle sockets (file
//! descriptors; Lambda allows 1,024) behind for the pool's idle timeout.
//!
//! So the sockets the pool may hold are budgeted. A host's pooled
//! connections are never more than the most requests it had in flight at
//! once through the pooled client (its *peak*), and they are all closed
//! [`FORGET_AFTER`] after its last request ended. The peaks of the hosts
//! used within that time add up to at most the budget; a request that would
//! go past it is sent through a client that keeps no idle connection, and
//! its socket closes with its answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an idle connection is kept (the client's `pool_idle_timeout`).
pub const POOL_IDLE: Duration = Duration::from_secs(30);

/// When a host's pooled connections are surely closed, counted from its
/// last request's end: the pool checks for expired connections once per
/// idle timeout, so one may outlive it by as much again.
const FORGET_AFTER: Duration = Duration::from_secs(2 * POOL_IDLE.as_secs() + 1);

/// Most idle sockets the pools may hold: half of Lambda's 1,024 file
/// descriptors, the rest left for requests in flight and the AWS clients.
pub const IDLE_SOCKETS: usize = 512;

#[derive(Debug)]
pub struct SocketBudget {
    inner: Mutex<Budget>,
}

#[derive(Debug)]
struct Budget {
    hosts: HashMap<String, Host>,
    /// The sum of the hosts' peaks.
    reserved: usize,
    limit: usize,
}

#[derive(Debug)]
struct Host {
    in_flight: usize,
    peak: usize,
    last_done: Instant,
}

/// A request that goes through the pooled client; ends when dropped.
#[derive(Debug)]
pub struct PoolLease {
    budget: Arc<SocketBudget>,
    host: String,
}

impl SocketBudget {
    /// At most `sockets` idle sockets (at least one).
    pub fn new(sockets: usize) -> Arc<SocketBudget> {
        Arc::new(SocketBudget {
            inner: Mutex::new(Budget {
                hosts: HashMap::new(),
                reserved: 0,
                limit: sockets.max(1),
            }),
        })
    }

    /// May a request to `host` go through the pooled client? `Some` while
    /// it does; `None`: send it through one that keeps no connection.
    pub fn lease(self: &Arc<Self>, host: &str) -> Option<PoolLease> {
        let now = Instant::now();
        let mut budget = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let needs = budget
            .hosts
            .get(host)
            .is_none_or(|h| h.in_flight + 1 > h.peak);
        if needs && budget.reserved >= budget.limit {
            budget.forget_closed(now);
            if budget.reserved >= budget.limit {
                return None;
            }
        }
        let h = budget.hosts.entry(host.to_owned()).or_insert(Host {
            in_flight: 0,
            peak: 0,
            last_done: now,
        });
        h.in_flight += 1;
        let grown = h.in_flight > h.peak;
        if grown {
            h.peak = h.in_flight;
            budget.reserved += 1;
        }
        Some(PoolLease {
            budget: Arc::clone(self),
            host: host.to_owned(),
        })
    }

    /// The sockets currently budgeted.
    #[cfg(test)]
    pub fn reserved(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reserved
    }
}

impl Budget {
    /// Gives back the budget of hosts whose connections are closed by now.
    fn forget_closed(&mut self, now: Instant) {
        let mut freed = 0;
        self.hosts.retain(|_, h| {
            let closed = h.in_flight == 0 && now.duration_since(h.last_done) >= FORGET_AFTER;
            if closed {
                freed += h.peak;
            }
            !closed
        });
        self.reserved -= freed;
    }
}

impl Drop for PoolLease {
    fn drop(&mut self) {
        let mut budget = self.budget.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = budget.hosts.get_mut(&self.host) {
            h.in_flight -= 1;
            h.last_done = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peaks_of_recent_hosts_stay_within_the_budget() {
        let pool = SocketBudget::new(3);
        let a1 = pool.lease("a:443").expect("room");
        let a2 = pool.lease("a:443").expect("room: a's peak is 2");
        let b = pool.lease("b:443").expect("room: b's peak is 1");
        assert_eq!(pool.reserved(), 3);
        assert!(pool.lease("c:443").is_none(), "full: c is not pooled");
        assert!(pool.lease("a:443").is_none(), "a's third at once neither");
        drop((a1, a2, b));
        // Within a's peak: pooled, and nothing more is reserved.
        let again = [pool.lease("a:443"), pool.lease("a:443")];
        assert!(again.iter().all(Option::is_some));
        assert_eq!(pool.reserved(), 3);
        assert!(pool.lease("c:443").is_none(), "a and b used just now");
    }
}
