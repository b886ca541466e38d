//! `fulva bench`: whole-system benchmarks with readable (and JSON) output.
//!
//! - [`kv`]: `fulva bench kv` (closed-loop YCSB against one node, optionally Redis).
//! - [`migration`]: `fulva bench migration` (the paper's experiment, every strategy).
//! - [`redis_cluster`]: its Redis Cluster resharding baseline.
//! - [`report`]: what the migration benchmark measures and reports (samples, bins, results).
//! - [`plot`]: throughput and p99.9 over time, as PNG.
//! - [`redis`]: a redis-server process.

pub mod kv;

/// The data and load every benchmark shares.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Keys loaded before the runs.
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Concurrent closed-loop client tasks (the same for every system).
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Zipfian skew of key choice (0 = uniform).
    #[arg(long, default_value_t = 0.99)]
    pub zipf: f64,
}
pub mod migration;
pub mod plot;
pub mod redis;
pub mod redis_cluster;
pub mod report;
