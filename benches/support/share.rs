//! Batches under Lambda's share of a CPU.
//!
//! Lambda gives a function CPU in proportion to its memory: 1 769 MB is one
//! vCPU, 256 MB about 0.145. On a small function, per-record CPU rather
//! than the destination can set how long a batch takes, which is what
//! Lambda bills. Here each function process runs in a CPU cgroup of its
//! own whose quota is that share of one CPU (`cpu.cfs_quota_us` over a
//! 100 ms `cpu.cfs_period_us` in the cgroup v1 `cpu` controller, or
//! `cpu.max` in cgroup v2), and handles back-to-back batches of the
//! template's default size; retryq and the floor take turns, each for a
//! whole run of batches, so neither rests while the other works.
//!
//! Creating a cgroup needs root and a mounted CPU controller. Where either
//! is missing the bench stops and says which.

use std::path::PathBuf;

use super::*;

/// The memory sizes measured, MB.
pub const MEMORY_SIZES_MB: [u32; 5] = [128, 256, 512, 1024, 1769];
/// The memory size at which Lambda gives a whole vCPU.
const FULL_VCPU_MB: f64 = 1769.0;
const PERIOD_US: u64 = 100_000;
/// The template's default `BatchSize`.
pub const BATCH: usize = 100;
/// Batches per handler and round.
const BATCHES: usize = 15;
/// Rounds, the handlers in turn (in the other order each round): a busy
/// moment of the machine, or a drift, then falls on both.
const ROUNDS: usize = 4;

/// A CPU cgroup whose quota is a `memory_mb` function's share of a CPU;
/// removed when dropped (after the processes in it have ended).
pub struct CpuShare {
    dir: PathBuf,
}

impl CpuShare {
    pub fn new(name: &str, memory_mb: u32) -> CpuShare {
        let quota = (PERIOD_US as f64 * f64::from(memory_mb) / FULL_VCPU_MB).round() as u64;
        let leaf = format!("retryq-bench-{}-{name}-{memory_mb}", std::process::id());
        let v1 = PathBuf::from("/sys/fs/cgroup/cpu");
        let v2 = PathBuf::from("/sys/fs/cgroup");
        let (dir, files): (PathBuf, Vec<(&str, String)>) = if v1.join("cpu.cfs_quota_us").exists() {
            (
                v1.join(leaf),
                vec![
                    ("cpu.cfs_period_us", PERIOD_US.to_string()),
                    ("cpu.cfs_quota_us", quota.to_string()),
                ],
            )
        } else if std::fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"))
        {
            (
                v2.join(leaf),
                vec![("cpu.max", format!("{quota} {PERIOD_US}"))],
            )
        } else {
            panic!(
                "the CPU-share bench needs a CPU cgroup controller: neither /sys/fs/cgroup/cpu/cpu.cfs_quota_us \
                 (cgroup v1) nor \"cpu\" in /sys/fs/cgroup/cgroup.controllers (cgroup v2) is there; \
                 set RETRYQ_BENCH_SHARE=skip to leave this part out"
            )
        };
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!(
                "the CPU-share bench cannot create the cgroup {} ({e}): it needs root; \
                 set RETRYQ_BENCH_SHARE=skip to leave this part out",
                dir.display()
            );
        }
        for (file, value) in files {
            std::fs::write(dir.join(file), &value)
                .unwrap_or_else(|e| panic!("writing {value} to {}: {e}", dir.join(file).display()));
        }
        CpuShare { dir }
    }

    /// Moves the process `pid` (all its threads) into the cgroup.
    pub fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.dir.display()));
    }
}

impl Drop for CpuShare {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One handler at one memory size and destination latency.
#[derive(Default)]
struct Run {
    walls_ms: Vec<f64>,
    cpu_us: f64,
    records: usize,
}

impl Run {
    fn row(&self, handler: &str, memory_mb: u32, latency_ms: u64) -> Value {
        let wall: f64 = self.walls_ms.iter().sum();
        // Lambda bills each invocation's duration rounded up to the ms.
        let billed: f64 = self.walls_ms.iter().map(|w| w.ceil()).sum();
        json!({"handler": handler, "memoryMb": memory_mb, "latencyMs": latency_ms, "batch": BATCH,
            "records": self.records, "recordsPerSecond": self.records as f64 / (wall / 1000.0),
            "billedMsPer1000": billed / self.records as f64 * 1000.0,
            "cpuUsPerRecord": self.cpu_us / self.records as f64})
    }
}

/// Records per second and billed duration per 1 000 records, retryq and
/// the floor, at each of `sizes_mb` and each destination latency.
pub fn under_cpu_share(
    rt: &tokio::runtime::Runtime,
    latencies_ms: &[u64],
    sizes_mb: &[u32],
) -> Vec<Value> {
    let mut rows = Vec::new();
    for &latency in latencies_ms {
        let port = free_port();
        let _destination = Destination::start(port, latency);
        let event = Arc::new(serde_json::to_vec(&event(BATCH, port, 1024)).unwrap());
        for &memory in sizes_mb {
            for (name, run) in &measure(rt, &event, memory) {
                let row = run.row(name, memory, latency);
                eprintln!(
                    "{name:>7} {memory:>4} MB, destination {latency:>2} ms: {:>7.0} records/s, {:>6.1} billed ms per 1 000 records, {:.1} µs CPU/record",
                    row["recordsPerSecond"].as_f64().unwrap(),
                    row["billedMsPer1000"].as_f64().unwrap(),
                    row["cpuUsPerRecord"].as_f64().unwrap()
                );
                rows.push(row);
            }
        }
    }
    rows
}

/// The memory sizes of `RETRYQ_BENCH_SHARE_MB` (comma-separated, for a
/// run of this part alone), else all of [`MEMORY_SIZES_MB`].
pub fn sizes_mb() -> Vec<u32> {
    match std::env::var("RETRYQ_BENCH_SHARE_MB") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|mb| {
                mb.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("RETRYQ_BENCH_SHARE_MB: {mb:?} is not a size in MB"))
            })
            .collect(),
        _ => MEMORY_SIZES_MB.to_vec(),
    }
}

/// retryq's and the floor's runs at one memory size: [`ROUNDS`] rounds of
/// [`BATCHES`] batches each, the two handlers taking turns.
fn measure(
    rt: &tokio::runtime::Runtime,
    event: &Arc<Vec<u8>>,
    memory: u32,
) -> BTreeMap<&'static str, Run> {
    let mut runs: BTreeMap<&str, Run> = BTreeMap::new();
    let mut functions: Vec<(&str, Function, CpuShare)> = [Handler::Retryq, Handler::Floor]
        .into_iter()
        .map(|h| {
            let share = CpuShare::new(h.name(), memory);
            let memory_env = [("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", memory.to_string())];
            let f = Function::spawn(rt, h, &memory_env);
            share.add(f.child.id());
            (h.name(), f, share)
        })
        .collect();
    for round in 0..ROUNDS {
        for k in 0..functions.len() {
            // Each round in the other order.
            let (name, f, _) = &mut functions[(k + round) % 2];
            f.invoke(rt, event); // a warm start, not counted
            let run = runs.entry(*name).or_default();
            for _ in 0..BATCHES {
                let inv = f.invoke(rt, event);
                assert_eq!(
                    failures_in(&inv.response),
                    0,
                    "{name}: every record delivered"
                );
                run.walls_ms.push(inv.wall.as_secs_f64() * 1000.0);
                run.cpu_us += inv.cpu.as_secs_f64() * 1e6;
                run.records += BATCH;
            }
        }
    }
    // The functions end before their cgroups are removed.
    for (_, f, share) in functions {
        drop(f);
        drop(share);
    }
    runs
}

/// The row of `handler` at `memory_mb` and `latency_ms`.
fn find<'a>(rows: &'a [Value], handler: &str, memory_mb: u32, latency_ms: u64) -> &'a Value {
    rows.iter()
        .find(|r| {
            r["handler"] == handler && r["memoryMb"] == memory_mb && r["latencyMs"] == latency_ms
        })
        .unwrap_or_else(|| panic!("no row for {handler} at {memory_mb} MB, {latency_ms} ms"))
}

/// (records per second, billed ms per 1 000 records) of retryq and of the
/// floor at `memory_mb` and `latency_ms`.
pub fn pair(rows: &[Value], memory_mb: u32, latency_ms: u64) -> [(f64, f64); 2] {
    ["recordsPerSecond", "billedMsPer1000"].map(|key| {
        (
            find(rows, "retryq", memory_mb, latency_ms)[key]
                .as_f64()
                .unwrap(),
            find(rows, "floor", memory_mb, latency_ms)[key]
                .as_f64()
                .unwrap(),
        )
    })
}

/// What Lambda charges per million deliveries at each memory size (compute
/// and requests; the logs and SQS requests do not depend on the memory
/// size), from retryq's billed duration at each destination latency, and
/// the size that costs least summed over those latencies.
pub fn memory_choice(
    rows: &[Value],
    latencies_ms: &[u64],
    gb_s_price: f64,
    request_price_million: f64,
) -> Value {
    let per_million = |memory: u32, latency: u64| {
        let billed_s = find(rows, "retryq", memory, latency)["billedMsPer1000"]
            .as_f64()
            .unwrap();
        // Billed ms per 1 000 records is billed seconds per million.
        billed_s * f64::from(memory) / 1024.0 * gb_s_price + request_price_million / BATCH as f64
    };
    let sizes: Vec<Value> = MEMORY_SIZES_MB
        .iter()
        .map(|&m| {
            let usd: BTreeMap<String, f64> = latencies_ms
                .iter()
                .map(|&l| (format!("{l}ms"), per_million(m, l)))
                .collect();
            json!({"memoryMb": m, "usdPerMillion": usd, "sum": usd.values().sum::<f64>()})
        })
        .collect();
    let cheapest = sizes
        .iter()
        .min_by(|a, b| {
            a["sum"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["sum"].as_f64().unwrap())
        })
        .map(|s| s["memoryMb"].clone())
        .unwrap();
    json!({"batch": BATCH, "sizes": sizes, "cheapestMemoryMb": cheapest})
}
