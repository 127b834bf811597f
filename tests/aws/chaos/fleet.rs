//! The soak's workers: real `retryq worker` processes, killed (SIGKILL) and
//! frozen (SIGSTOP, then SIGCONT) at the soak's command, a killed one
//! replaced at once. Before each fault, the ports of the worker's open TCP
//! connections are read from /proc, so that the destination can tell which
//! requests that worker had in flight.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::Running;

/// One worker process.
pub struct Worker {
    process: Running,
    /// Frozen until then.
    pub frozen_until: Option<Instant>,
}

impl Worker {
    pub fn pid(&self) -> i32 {
        self.process.0.id() as i32
    }
}

/// The workers, and how to start one.
pub struct Fleet {
    pub workers: Vec<Worker>,
    start: Box<dyn Fn(PathBuf) -> Running + Send>,
    logs: PathBuf,
    started: usize,
}

impl Fleet {
    /// `n` workers from `start`, each logging to its own file under `logs`.
    pub fn new(n: usize, logs: PathBuf, start: Box<dyn Fn(PathBuf) -> Running + Send>) -> Fleet {
        let mut fleet = Fleet {
            workers: Vec::new(),
            start,
            logs,
            started: 0,
        };
        for _ in 0..n {
            let worker = fleet.spawn();
            fleet.workers.push(worker);
        }
        fleet
    }

    fn spawn(&mut self) -> Worker {
        self.started += 1;
        let log = self.logs.join(format!("worker-{}.log", self.started));
        Worker {
            process: (self.start)(log),
            frozen_until: None,
        }
    }

    /// The client ports of worker `i`'s open TCP connections.
    pub fn ports_of(&self, i: usize) -> HashSet<u16> {
        socket_ports(self.workers[i].pid())
    }

    /// SIGKILL worker `i` (thawed first if frozen) and start another.
    pub fn kill(&mut self, i: usize) {
        let pid = self.workers[i].pid();
        // SAFETY: signals to a child this test started.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::kill(pid, libc::SIGCONT);
        }
        let _ = self.workers[i].process.0.wait();
        self.workers[i] = self.spawn();
    }

    /// SIGSTOP worker `i` for `length`.
    pub fn freeze(&mut self, i: usize, length: Duration) {
        // SAFETY: a signal to a child this test started.
        unsafe { libc::kill(self.workers[i].pid(), libc::SIGSTOP) };
        self.workers[i].frozen_until = Some(Instant::now() + length);
    }

    /// SIGCONT the workers whose freeze is over (all with `all`).
    pub fn thaw(&mut self, all: bool) {
        let now = Instant::now();
        for w in &mut self.workers {
            if w.frozen_until.is_some_and(|t| all || t <= now) {
                // SAFETY: a signal to a child this test started.
                unsafe { libc::kill(w.pid(), libc::SIGCONT) };
                w.frozen_until = None;
            }
        }
    }

    /// Workers neither frozen nor gone.
    pub fn running(&self) -> Vec<usize> {
        (0..self.workers.len())
            .filter(|i| self.workers[*i].frozen_until.is_none())
            .collect()
    }

    /// SIGTERM every worker and wait (at most `limit` each); the ones that
    /// exited on their own.
    pub fn stop(mut self, limit: Duration) -> usize {
        self.thaw(true);
        let mut clean = 0;
        for w in &mut self.workers {
            w.process.terminate();
            if w.process
                .wait_for_exit(limit)
                .is_some_and(|status| status.success())
            {
                clean += 1;
            }
        }
        clean
    }

    /// Every worker log so far.
    pub fn log_files(&self) -> Vec<PathBuf> {
        (1..=self.started)
            .map(|n| self.logs.join(format!("worker-{n}.log")))
            .collect()
    }
}

/// The local ports of the TCP sockets process `pid` holds open: its fds'
/// socket inodes, looked up in /proc/net/tcp.
fn socket_ports(pid: i32) -> HashSet<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            link.strip_prefix("socket:[")
                .and_then(|l| l.strip_suffix(']'))
                .map(str::to_owned)
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, inode) = (fields.get(1)?, fields.get(9)?);
            inodes.contains(*inode).then_some(())?;
            let port = local.rsplit(':').next()?;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}
