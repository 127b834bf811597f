//! Which hosts' connections the shared HTTP client keeps for reuse (§12.9).
//!
//! The client's pool keeps idle connections per host, and has no limit on
//! the number of hosts: a producer naming a new host in every message would
//! leave an idle socket (a file descriptor; Lambda allows 1,024) per host
//! for the pool's idle timeout. So connections are kept only for the hosts
//! used within [`POOL_IDLE`], at most a configured number of them; a
//! request to any other host goes through a client that keeps no idle
//! connection, and its socket closes with its answer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long an idle connection is kept (the client's `pool_idle_timeout`).
pub const POOL_IDLE: Duration = Duration::from_secs(30);

/// Most hosts whose connections are kept: the file descriptors a process
/// may spend on idle connections stay well within Lambda's 1,024.
pub const POOLED_HOSTS: usize = 256;

#[derive(Debug)]
pub struct PooledHosts {
    /// Host → when a request to it last went out on the pooled client.
    hosts: Mutex<HashMap<String, Instant>>,
    limit: usize,
}

impl PooledHosts {
    pub fn new(limit: usize) -> PooledHosts {
        PooledHosts {
            hosts: Mutex::new(HashMap::new()),
            limit: limit.max(1),
        }
    }

    /// May a request to `host` use the pooled client? Yes for a host used
    /// within [`POOL_IDLE`], or when there is room for one more.
    pub fn keep(&self, host: &str) -> bool {
        let now = Instant::now();
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = hosts.get_mut(host) {
            *at = now;
            return true;
        }
        if hosts.len() >= self.limit {
            // Hosts whose connections the pool has dropped by now.
            hosts.retain(|_, at| now.duration_since(*at) < POOL_IDLE);
        }
        if hosts.len() >= self.limit {
            return false;
        }
        hosts.insert(host.to_owned(), now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_past_the_limit_are_not_pooled_and_known_ones_are() {
        let pool = PooledHosts::new(2);
        assert!(pool.keep("a:443"));
        assert!(pool.keep("b:443"));
        assert!(!pool.keep("c:443"), "full: c's connection is not kept");
        assert!(pool.keep("a:443"), "a known host still is");
        assert!(!pool.keep("c:443"));
    }
}
