//! `fulva bench migration`: the paper's experiment on one machine. Keys are
//! loaded on one node, closed-loop clients run, and after a steady period most
//! of the node's hash range moves to a second node; every strategy runs in
//! turn on a fresh cluster with the same data and workload. Latency and
//! throughput are binned over time and split into keys of the moving range
//! and the rest.

use crate::local::{LocalCluster, LocalClusterConfig};
use crate::sessions::FulvaSession;
use crate::workload::{key_into, KeyChooser, Mix, WorkloadSpec};
use fulva_client::{Client, ClientConfig};
use fulva_kvnode::NodeConfig;
use fulva_operator::rebalance_job::{AdaptiveRate, AdaptiveSettings, LatencySignal};
use fulva_operator::MoveOptions;
use fulva_proto::{key_hash, HashRange, Strategy};
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `fulva bench migration`.
#[derive(clap::Args, Debug, Clone)]
pub struct MigrationBenchArgs {
    /// Keys (loaded on the first node), values, clients and skew.
    #[command(flatten)]
    pub load: super::LoadArgs,
    /// Workload mix.
    #[arg(long, value_enum, default_value_t = Mix::B)]
    pub mix: Mix,
    /// Strategies to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "fulva,rocksteady,source-driven")]
    pub strategies: Vec<crate::admin::StrategyArg>,
    /// Seconds of steady load before the move.
    #[arg(long, default_value_t = 3)]
    pub before: u64,
    /// Seconds of load after the move ends.
    #[arg(long, default_value_t = 2)]
    pub after: u64,
    /// Fraction of the hash space (from 0) that moves.
    #[arg(long, default_value_t = 0.9)]
    pub fraction: f64,
    /// Bandwidth limit of the move in MB/s (0 = none).
    #[arg(long, default_value_t = 0.0)]
    pub rate_limit_mb: f64,
    /// Also run each strategy with the adaptive rate (after the fixed-limit
    /// run, on a fresh cluster): hold the clients' p99 (µs) under this target,
    /// raising the rate while it holds and halving it when it does not (one
    /// step a second, the operator's control law).
    #[arg(long)]
    pub adaptive_p99_us: Option<u64>,
    /// Adaptive rate: lowest rate, MB/s.
    #[arg(long, default_value_t = 1.0)]
    pub adaptive_min_mb: f64,
    /// Adaptive rate: highest rate, MB/s.
    #[arg(long, default_value_t = 200.0)]
    pub adaptive_max_mb: f64,
    /// Width of a time bin in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub bin_ms: u64,
    /// Data-path workers per node.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Also reshard a Redis Cluster (two redis-server processes) under the same workload.
    #[arg(long)]
    pub vs_redis: bool,
    /// The redis-server binary (redis-cli comes from the PATH).
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    /// Write the results (with every bin) as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw throughput and p99.9 over time per strategy into this PNG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// Latency and throughput of one class of keys in one time bin.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BinStats {
    /// Operations completed in the bin.
    pub ops: u64,
    /// Median latency, µs.
    pub p50_us: u32,
    /// 99th percentile, µs.
    pub p99_us: u32,
    /// 99.9th percentile, µs.
    pub p999_us: u32,
}

/// One time bin.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Bin {
    /// Start of the bin, ms since the load began.
    pub t_ms: u64,
    /// Keys in the moving range.
    pub moving: BinStats,
    /// All other keys.
    pub other: BinStats,
}

/// Summary of a period (steady, during the move).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Period {
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Median latency, µs.
    pub p50_us: u32,
    /// 99th percentile, µs.
    pub p99_us: u32,
    /// 99.9th percentile, µs.
    pub p999_us: u32,
    /// Longest stretch without a completed operation, ms.
    pub longest_stall_ms: f64,
    /// Loopback bytes (both directions) per operation.
    pub wire_bytes_per_op: f64,
}

/// Everything measured for one strategy.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StrategyResult {
    /// Strategy name.
    pub strategy: String,
    /// Move start and end, ms since the load began.
    pub move_start_ms: u64,
    /// End of the move.
    pub move_end_ms: u64,
    /// Bytes moved (keys and values).
    pub moved_bytes: u64,
    /// Migration speed, MB/s.
    pub migrated_mb_per_sec: f64,
    /// Source-driven lock window, ms.
    pub lock_window_ms: Option<f64>,
    /// Before the move, all keys.
    pub steady: Period,
    /// During the move, all keys.
    pub during: Period,
    /// During the move, keys of the moving range only.
    pub during_moving: Period,
    /// Operations that failed.
    pub errors: u64,
    /// With `--adaptive-p99-us`: what the control loop saw and did.
    pub adaptive: Option<AdaptiveTrace>,
    /// Time bins.
    pub bins: Vec<Bin>,
}

/// The adaptive rate's steps during a move.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct AdaptiveTrace {
    /// Client p99 target, µs.
    pub target_p99_us: u64,
    /// One entry a second: ms since the load began, client p99 (µs) of the
    /// second before, the rate set (MB/s).
    pub steps: Vec<(u64, u64, f64)>,
    /// Seconds of the move whose client p99 stayed within the target, of all.
    pub seconds_within: u32,
    /// Seconds the move lasted (steps taken).
    pub seconds: u32,
}

/// Client latencies since the control loop last looked.
#[derive(Default)]
struct RecentLatency(Mutex<Vec<u64>>);

impl fulva_operator::rebalance_job::LatencySignal for RecentLatency {
    fn take_p99(&self) -> Option<Duration> {
        fulva_operator::probe::p99_of(std::mem::take(&mut *self.0.lock()))
    }
}

/// One completed operation.
#[derive(Clone, Copy)]
pub(crate) struct Sample {
    /// Completion time, µs since the load began.
    pub done_us: u64,
    /// Latency, µs.
    pub latency_us: u32,
    /// Whether its key is in the moving range.
    pub moving: bool,
}

/// Bytes through the loopback interface so far, both directions.
pub(crate) fn lo_bytes() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/net/dev") else { return 0 };
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix("lo:").map(str::to_string))
        .and_then(|rest| {
            let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            Some(f.first()? + f.get(8)?)
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn stats(latencies: &mut [u32]) -> BinStats {
    latencies.sort_unstable();
    BinStats {
        ops: latencies.len() as u64,
        p50_us: percentile(latencies, 0.5),
        p99_us: percentile(latencies, 0.99),
        p999_us: percentile(latencies, 0.999),
    }
}

fn period(samples: &[Sample], from_us: u64, to_us: u64, only_moving: bool, wire_bytes: u64) -> Period {
    let mut lat: Vec<u32> = Vec::new();
    let mut times: Vec<u64> = Vec::new();
    for s in
        samples.iter().filter(|s| s.done_us >= from_us && s.done_us < to_us && (!only_moving || s.moving))
    {
        lat.push(s.latency_us);
        times.push(s.done_us);
    }
    times.sort_unstable();
    let mut stall = 0u64;
    let mut previous = from_us;
    for &t in times.iter().chain(std::iter::once(&to_us)) {
        stall = stall.max(t.saturating_sub(previous));
        previous = t;
    }
    let st = stats(&mut lat);
    let secs = (to_us.saturating_sub(from_us)) as f64 / 1e6;
    Period {
        ops_per_sec: st.ops as f64 / secs.max(1e-9),
        p50_us: st.p50_us,
        p99_us: st.p99_us,
        p999_us: st.p999_us,
        longest_stall_ms: stall as f64 / 1e3,
        wire_bytes_per_op: wire_bytes as f64 / (st.ops.max(1)) as f64,
    }
}

async fn run_strategy(args: &MigrationBenchArgs, strategy: Strategy) -> anyhow::Result<StrategyResult> {
    let cluster = LocalCluster::start(LocalClusterConfig {
        nodes: 2,
        shards: 1,
        node: NodeConfig { workers: args.workers.max(1), ..NodeConfig::loopback(0) },
        ..LocalClusterConfig::default()
    })
    .await?;
    let client = Client::connect(ClientConfig::new(cluster.control_endpoint())).await?;
    crate::workload::load(
        vec![FulvaSession { client: client.clone() }; 64],
        args.load.keys,
        args.load.value_size,
        Some("keys"),
    )
    .await?;
    let last = ((u64::MAX as f64) * args.fraction.clamp(0.01, 1.0)) as u64;
    let moving = HashRange::new(0, last.max(1))?;
    let spec = WorkloadSpec::new(args.mix, args.load.zipf, args.load.keys, args.load.value_size);
    let chooser = Arc::new(KeyChooser::new(&spec));
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let recent = Arc::new(RecentLatency::default());
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.load.clients {
        let (client, chooser, stop, samples, errors, recent) =
            (client.clone(), chooser.clone(), stop.clone(), samples.clone(), errors.clone(), recent.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(i as u64 + 99);
            let mut key = Vec::with_capacity(32);
            let mut value = vec![0u8; spec.value_size];
            let mut mine = Vec::with_capacity(1 << 16);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 50_000_000 {
                key_into(chooser.next(&mut rng), &mut key);
                let started = Instant::now();
                let ok = if rng.random_bool(spec.read_fraction) {
                    client.get(&key).await.is_ok()
                } else {
                    rng.fill(&mut value[..]);
                    client.put(&key, &value).await.is_ok()
                };
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                let done = t0.elapsed();
                mine.push(Sample {
                    done_us: done.as_micros() as u64,
                    latency_us: started.elapsed().as_micros().min(u32::MAX as u128) as u32,
                    moving: moving.contains(key_hash(&key)),
                });
                n += 1;
                if n.is_multiple_of(32) {
                    let tail = &mine[mine.len() - 32..];
                    recent.0.lock().extend(tail.iter().map(|s| u64::from(s.latency_us)));
                }
            }
            samples.lock().extend(mine);
        }));
    }
    let lo_start = lo_bytes();
    tokio::time::sleep(Duration::from_secs(args.before)).await;
    let move_start = t0.elapsed();
    let lo_move_start = lo_bytes();
    let adaptive = args.adaptive_p99_us.map(|target| AdaptiveSettings {
        target_p99: Duration::from_micros(target),
        min_bytes_per_sec: (args.adaptive_min_mb * 1e6).max(1.0) as u64,
        max_bytes_per_sec: (args.adaptive_max_mb.max(args.adaptive_min_mb) * 1e6).max(1.0) as u64,
    });
    let options = MoveOptions {
        strategy,
        rate_limit_bytes_per_sec: match adaptive {
            Some(settings) => AdaptiveRate::new(settings).rate(),
            None => (args.rate_limit_mb * 1e6) as u64,
        },
        ..MoveOptions::default()
    };
    // The adaptive loop: once a second, the clients' p99 of that second sets the rate.
    let moved = Arc::new(AtomicBool::new(false));
    let controller = adaptive.map(|settings| {
        let (coordinator, recent, moved) = (cluster.coordinator.clone(), recent.clone(), moved.clone());
        tokio::spawn(async move {
            let mut law = AdaptiveRate::new(settings);
            let mut trace = AdaptiveTrace {
                target_p99_us: settings.target_p99.as_micros() as u64,
                ..AdaptiveTrace::default()
            };
            recent.take_p99();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                if moved.load(Ordering::Acquire) {
                    break;
                }
                let p99 = recent.take_p99();
                let rate = law.step(p99);
                let _ = coordinator.set_move_rate(moving, rate).await;
                let p99_us = p99.map_or(0, |p| p.as_micros() as u64);
                trace.seconds += 1;
                if p99_us <= trace.target_p99_us {
                    trace.seconds_within += 1;
                }
                trace.steps.push((t0.elapsed().as_millis() as u64, p99_us, rate as f64 / 1e6));
            }
            trace
        })
    });
    let report = cluster.coordinator.migrate(moving, 1, options, |_| {}).await?;
    moved.store(true, Ordering::Release);
    let adaptive_trace = match controller {
        Some(task) => Some(task.await?),
        None => None,
    };
    let move_end = t0.elapsed();
    let lo_move_end = lo_bytes();
    tokio::time::sleep(Duration::from_secs(args.after)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let end = t0.elapsed();
    drop(client);
    cluster.shutdown().await;

    let samples = std::mem::take(&mut *samples.lock());
    let mut result = summarize(
        &format!("{strategy:?}").to_lowercase().replace("sourcedriven", "source-driven"),
        args,
        samples,
        (move_start, move_end, end),
        (lo_move_start - lo_start, lo_move_end - lo_move_start),
        report.bytes,
        report.duration,
        report.lock_window,
        errors.load(Ordering::Relaxed),
    );
    result.adaptive = adaptive_trace;
    Ok(result)
}

/// Bins and summarizes the samples of one run. `times` are the move's start,
/// its end and the end of the load; `wire` the loopback bytes before and
/// during the move.
#[allow(clippy::too_many_arguments)]
pub(crate) fn summarize(
    name: &str,
    args: &MigrationBenchArgs,
    samples: Vec<Sample>,
    times: (Duration, Duration, Duration),
    wire: (u64, u64),
    moved_bytes: u64,
    move_duration: Duration,
    lock_window: Option<Duration>,
    errors: u64,
) -> StrategyResult {
    let (move_start, move_end, end) = times;
    let (ms, me, end_us) =
        (move_start.as_micros() as u64, move_end.as_micros() as u64, end.as_micros() as u64);
    // The first third of the warm-up is skipped; steady state is the rest before the move.
    let steady_from = (ms / 3).min(1_000_000);
    let before = samples.iter().filter(|s| s.done_us < ms).count() as u64;
    let steady = samples.iter().filter(|s| s.done_us >= steady_from && s.done_us < ms).count() as u64;
    let steady_wire = wire.0 * steady / before.max(1);
    let bin_us = args.bin_ms.max(1) * 1000;
    let mut bins = Vec::new();
    let mut start = 0;
    while start < end_us {
        let mut moving_lat = Vec::new();
        let mut other_lat = Vec::new();
        for s in samples.iter().filter(|s| s.done_us >= start && s.done_us < start + bin_us) {
            if s.moving {
                moving_lat.push(s.latency_us)
            } else {
                other_lat.push(s.latency_us)
            }
        }
        bins.push(Bin { t_ms: start / 1000, moving: stats(&mut moving_lat), other: stats(&mut other_lat) });
        start += bin_us;
    }
    StrategyResult {
        strategy: name.to_string(),
        move_start_ms: ms / 1000,
        move_end_ms: me / 1000,
        moved_bytes,
        migrated_mb_per_sec: moved_bytes as f64 / 1e6 / move_duration.as_secs_f64().max(1e-9),
        lock_window_ms: lock_window.map(|d| d.as_secs_f64() * 1e3),
        steady: period(&samples, steady_from, ms, false, steady_wire),
        during: period(&samples, ms, me, false, wire.1),
        during_moving: period(&samples, ms, me, true, wire.1),
        errors,
        adaptive: None,
        bins,
    }
}

/// Runs `fulva bench migration`.
pub async fn run(args: MigrationBenchArgs) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for &strategy in &args.strategies {
        let strategy = Strategy::from(strategy);
        eprintln!(
            "fulva bench migration: {strategy:?}: {} keys, {} clients, {}",
            args.load.keys,
            args.load.clients,
            args.mix.name()
        );
        if args.adaptive_p99_us.is_some() {
            // Side by side: the fixed limit first, then the adaptive rate.
            let fixed = MigrationBenchArgs { adaptive_p99_us: None, ..args.clone() };
            results.push(run_strategy(&fixed, strategy).await?);
            eprintln!("fulva bench migration: {strategy:?} with the adaptive rate");
        }
        let mut result = run_strategy(&args, strategy).await?;
        if result.adaptive.is_some() {
            result.strategy.push_str("+adaptive");
        }
        results.push(result);
    }
    if args.vs_redis {
        eprintln!(
            "fulva bench migration: redis cluster resharding: {} keys, {} clients",
            args.load.keys, args.load.clients
        );
        results.push(super::redis_cluster::run(&args, &args.redis_server).await?);
    }
    println!(
        "\n{:<14} {:>10} {:>10} {:>8} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9}",
        "strategy",
        "steady/s",
        "during/s",
        "ratio",
        "p99.9 st",
        "p99.9 mv",
        "ratio",
        "stall ms",
        "stall mv",
        "MB/s",
        "B/op mv"
    );
    for r in &results {
        println!(
            "{:<14} {:>10.0} {:>10.0} {:>8.2} {:>9} {:>9} {:>9.2} {:>10.1} {:>10.1} {:>9.0} {:>9.0}",
            r.strategy,
            r.steady.ops_per_sec,
            r.during.ops_per_sec,
            r.during.ops_per_sec / r.steady.ops_per_sec.max(1e-9),
            r.steady.p999_us,
            r.during.p999_us,
            f64::from(r.during.p999_us) / f64::from(r.steady.p999_us.max(1)),
            r.during.longest_stall_ms,
            r.during_moving.longest_stall_ms,
            r.migrated_mb_per_sec,
            r.during.wire_bytes_per_op,
        );
    }
    println!("(ratio = during the move / steady before it; stall = longest stretch with no completed operation, all keys / moving keys)");
    for r in &results {
        let Some(a) = &r.adaptive else { continue };
        let rates: Vec<f64> = a.steps.iter().map(|s| s.2).collect();
        println!(
            "{}: adaptive rate, target p99 {} us: p99 during the move {} us ({:.2}x the target), steady {} us; \
             {} of {} one-second windows within the target; rate {:.1} -> {:.1} MB/s (max {:.1})",
            r.strategy,
            a.target_p99_us,
            r.during.p99_us,
            f64::from(r.during.p99_us) / a.target_p99_us.max(1) as f64,
            r.steady.p99_us,
            a.seconds_within,
            a.seconds,
            rates.first().copied().unwrap_or_default(),
            rates.last().copied().unwrap_or_default(),
            rates.iter().copied().fold(0.0, f64::max),
        );
    }
    for r in results.iter().filter(|r| r.lock_window_ms.is_some()) {
        println!("{}: lock window {:.1} ms", r.strategy, r.lock_window_ms.unwrap_or_default());
    }
    if let Some(path) = &args.plot {
        super::plot::draw(&results, args.bin_ms, path)?;
        eprintln!("plot written to {}", path.display());
    }
    if let Some(path) = &args.json {
        let doc = serde_json::json!({ "benchmark": "migration", "keys": args.load.keys, "value_size": args.load.value_size,
            "clients": args.load.clients, "mix": args.mix, "zipf": args.load.zipf, "fraction": args.fraction, "results": results });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}
