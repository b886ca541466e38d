//! `fulva bench migration`: the paper's experiment on one machine. Keys are
//! loaded on one node, closed-loop clients run, and after a steady period most
//! of the node's hash range moves to a second node; every strategy runs in
//! turn on a fresh cluster with the same data and workload. Latency and
//! throughput are binned over time and split into keys of the moving range
//! and the rest.

use super::report::{
    follow_dual_reads, lo_bytes, samples_of, summarize, AdaptiveTrace, Experiment, RecentLatency, RunRecord,
    Sampler, StrategyResult,
};
use fulva_client::{Client, ClientConfig, ClientStats};
use fulva_coordinator::rebalance_job::{first_rate, AdaptiveLaw, AdaptiveLoop, AdaptiveSettings, MoveTotals};
use fulva_coordinator::MoveOptions;
use fulva_kvnode::MigrationTransfer;
use fulva_local::process::{cpu_seconds, scrape_sum, NodeProcess};
use fulva_local::sessions::FulvaSession;
use fulva_local::workload::{run_closed_loop_with, Mix, WorkloadSpec};
use fulva_local::ControlPlane;
use fulva_proto::grpc::MigrationStatusRequest;
use fulva_proto::{key_hash, HashRange, NodeInfo, Strategy};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

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
    /// Adaptive rate: the control law, `p99` (the rate follows the
    /// clients' p99), `cpu-budget` (a CPU budget follows it; the rate is the
    /// budget over the move's measured CPU per byte) or `both`, side by side.
    #[arg(long, value_enum, default_value_t = LawArg::P99)]
    pub adaptive_law: LawArg,
    /// Adaptive rate: lowest rate, MB/s.
    #[arg(long, default_value_t = 1.0)]
    pub adaptive_min_mb: f64,
    /// Adaptive rate: highest rate, MB/s.
    #[arg(long, default_value_t = 200.0)]
    pub adaptive_max_mb: f64,
    /// Fulva and rocksteady: the hottest keys of the range the source ships
    /// before the hash-order pass (0 = hash order only).
    #[arg(long, default_value_t = fulva_coordinator::DEFAULT_HOT_KEYS)]
    pub hot_keys: u32,
    /// Keys each client remembers per move as held by the destination
    /// (0 = learned keys off: every read the cursor does not cover waits for
    /// both ends).
    #[arg(long, default_value_t = fulva_client::DEFAULT_LEARNED_KEYS_PER_MOVE)]
    pub learned_keys: usize,
    /// Fulva: the destination pulls a key a read missed at once (off by
    /// default: on 2 cores its priority pulls cost more than they save).
    #[arg(long)]
    pub fetch_on_miss: bool,
    /// Target bytes of keys and values in one batch of the move (the nodes'
    /// `--migration-batch-bytes`).
    #[arg(long, default_value_t = 64 * 1024)]
    pub batch_bytes: u32,
    /// How the destination pulls: `tcp` (the transfer stream) or `grpc`.
    #[arg(long, value_enum, default_value_t = MigrationTransfer::Tcp)]
    pub migration_transfer: MigrationTransfer,
    /// Let the nodes' memory use transparent huge pages (the nodes turn them
    /// off by default; Redis does the same).
    #[arg(long)]
    pub transparent_huge_pages: bool,
    /// Measure what each lever of the fulva engine is worth: every fulva run
    /// is followed by the same run over the gRPC transfer (`fulva+grpc`),
    /// with fetches on a miss (`fulva+fetch`), without hot keys first
    /// (`fulva-hot`), without hot keys and learned keys
    /// (`fulva-hot-learned`), and with transparent huge pages (`fulva+thp`).
    #[arg(long)]
    pub levers: bool,
    /// Width of a time bin in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub bin_ms: u64,
    /// Data-path workers per node.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Also reshard a Redis Cluster (two redis-server processes) under the same
    /// workload, first, and then run Fulva again at the MB/s Redis reached
    /// (the `fulva@redis-rate` row: the comparison at equal migration rate).
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

/// The adaptive rate's control law(s) a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LawArg {
    /// The rate follows the clients' p99.
    P99,
    /// A CPU budget follows the clients' p99.
    CpuBudget,
    /// Both, one after the other.
    Both,
}

impl LawArg {
    fn laws(self) -> Vec<AdaptiveLaw> {
        match self {
            LawArg::P99 => vec![AdaptiveLaw::P99],
            LawArg::CpuBudget => vec![AdaptiveLaw::CpuBudget],
            LawArg::Both => vec![AdaptiveLaw::P99, AdaptiveLaw::CpuBudget],
        }
    }
}

impl MigrationBenchArgs {
    /// The data, load and timeline every system of the run gets.
    pub fn experiment(&self) -> Experiment {
        Experiment {
            load: self.load.clone(),
            mix: self.mix,
            before_secs: self.before,
            after_secs: self.after,
            fraction: self.fraction,
            bin_ms: self.bin_ms,
        }
    }
}

async fn run_strategy(args: &MigrationBenchArgs, strategy: Strategy) -> anyhow::Result<StrategyResult> {
    // Each node is its own process (this binary's `fulva node`), so its CPU
    // is its own and a stall of the load generator is not a stall of a node.
    let dir = tempfile::tempdir()?;
    let binary = std::env::current_exe()?;
    let mut node_args = vec![
        format!("--workers={}", args.workers.max(1)),
        format!("--migration-batch-bytes={}", args.batch_bytes),
    ];
    if args.fetch_on_miss {
        node_args.push("--migration-fetch-on-miss".into());
    }
    if args.migration_transfer == MigrationTransfer::Grpc {
        node_args.push("--migration-transfer=grpc".into());
    }
    if args.transparent_huge_pages {
        node_args.push("--transparent-huge-pages".into());
    }
    let mut nodes = Vec::new();
    for id in 0..2u32 {
        let data_addr = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
        let log = dir.path().join(format!("node{id}.log"));
        nodes.push(NodeProcess::start(&binary, id, &node_args, data_addr, log).await?);
    }
    let infos = nodes
        .iter()
        .zip(0u32..)
        .map(|(n, id)| NodeInfo { id, data_addr: n.data_addr, control_addr: n.control_addr })
        .collect();
    // One shard: every key starts on node 0.
    let control = ControlPlane::start(infos, 1).await?;
    let node_cpu = || nodes.iter().filter_map(|n| n.pid().and_then(cpu_seconds)).sum::<f64>();
    let mut client_config = ClientConfig::new(control.endpoint.clone());
    client_config.learned_keys_per_move = args.learned_keys;
    let client = Client::connect(client_config).await?;
    fulva_local::workload::load(
        vec![FulvaSession { client: client.clone() }; 64],
        args.load.keys,
        args.load.value_size,
        Some("keys"),
    )
    .await?;
    let last = ((u64::MAX as f64) * args.fraction.clamp(0.01, 1.0)) as u64;
    let moving = HashRange::new(0, last.max(1))?;
    let spec = WorkloadSpec::new(args.mix, args.load.zipf, args.load.keys, args.load.value_size);
    let errors = Arc::new(AtomicU64::new(0));
    let recent = Arc::new(RecentLatency::default());
    let t0 = Instant::now();
    let hiccups = fulva_local::hiccup::HiccupMeter::start(t0);
    let stop = CancellationToken::new();
    let sessions = vec![FulvaSession { client: client.clone() }; args.load.clients];
    let samplers = (0..args.load.clients)
        .map(|_| {
            let tag = move |key: &[u8]| u32::from(moving.contains(key_hash(key)));
            // Only an adaptive run's control loop reads recent latencies.
            let recent = args.adaptive_p99_us.is_some().then(|| recent.clone());
            Sampler::new(t0, tag, errors.clone(), recent)
        })
        .collect();
    let clients = args.load.clients as u64;
    let load =
        tokio::spawn(run_closed_loop_with(sessions, spec, samplers, stop.clone(), clients * 50_000_000, 99));
    let dual_reads = tokio::spawn({
        let client = client.clone();
        let every = Duration::from_millis(args.bin_ms.max(1));
        follow_dual_reads(move || ClientStats::get(&client.stats().dual_reads), t0, every, stop.clone())
    });
    let lo_start = lo_bytes();
    tokio::time::sleep(Duration::from_secs(args.before)).await;
    let move_start = t0.elapsed();
    let lo_move_start = lo_bytes();
    let adaptive = args.adaptive_p99_us.map(|target| AdaptiveSettings {
        target_p99: Duration::from_micros(target),
        min_bytes_per_sec: (args.adaptive_min_mb * 1e6).max(1.0) as u64,
        max_bytes_per_sec: (args.adaptive_max_mb.max(args.adaptive_min_mb) * 1e6).max(1.0) as u64,
        law: args.adaptive_law.laws()[0],
    });
    let options = MoveOptions {
        strategy,
        hot_keys: args.hot_keys,
        rate_limit_bytes_per_sec: match adaptive {
            Some(settings) => first_rate(settings),
            None => (args.rate_limit_mb * 1e6) as u64,
        },
        ..MoveOptions::default()
    };
    // The operator's adaptive loop: once a second, the clients' p99 of that second sets the rate.
    let moved = CancellationToken::new();
    let controller = adaptive.map(|settings| {
        let (coordinator, recent, moved) = (control.coordinator.clone(), recent.clone(), moved.clone());
        tokio::spawn(async move {
            let mut trace = AdaptiveTrace {
                target_p99_us: settings.target_p99.as_micros() as u64,
                ..AdaptiveTrace::default()
            };
            let mut control = AdaptiveLoop::start(&*recent).await;
            // The CPU-budget law's input: the destination's pull CPU and bytes so far.
            let totals = || async {
                let mut node = coordinator.node_client(1).await.ok()?;
                let status = node
                    .migration_status(MigrationStatusRequest { range: Some(moving.into()) })
                    .await
                    .ok()?;
                Some(MoveTotals { cpu_seconds: status.cpu_seconds, bytes: status.bytes_applied })
            };
            while let Some(step) = control.next(&*recent, &moved, || Some(settings), totals).await {
                let Some(step) = step else { continue };
                let _ = coordinator.set_move_rate(moving, step.rate).await;
                let p99_us = step.p99.map_or(0, |p| p.as_micros() as u64);
                trace.seconds += 1;
                if p99_us <= trace.target_p99_us {
                    trace.seconds_within += 1;
                }
                trace.steps.push((t0.elapsed().as_millis() as u64, p99_us, step.rate as f64 / 1e6));
            }
            trace
        })
    });
    let move_cpu = || async {
        let mut total = 0.0;
        for node in &nodes {
            total += scrape_sum(node.metrics_addr, "fulva_kvnode_migration_cpu_seconds_total").await;
        }
        total
    };
    let move_cpu_start = move_cpu().await;
    let cpu_start = node_cpu();
    let report = control.coordinator.migrate(moving, 1, options, |_| {}).await?;
    let cpu_during_move = node_cpu() - cpu_start;
    let move_cpu_used = move_cpu().await - move_cpu_start;
    moved.cancel();
    let adaptive_trace = match controller {
        Some(task) => Some(task.await?),
        None => None,
    };
    let move_end = t0.elapsed();
    let lo_move_end = lo_bytes();
    tokio::time::sleep(Duration::from_secs(args.after)).await;
    stop.cancel();
    let samplers = load.await?;
    let end = t0.elapsed();
    let hiccups = hiccups.finish();
    drop(client);
    for node in nodes {
        node.stop().await;
    }

    let samples = samples_of(samplers, |tag| tag == 1);
    let run = RunRecord {
        samples,
        move_start,
        move_end,
        end,
        wire: (lo_move_start - lo_start, lo_move_end - lo_move_start),
        moved_bytes: report.bytes,
        move_duration: report.duration,
        lock_window: report.lock_window,
        errors: errors.load(Ordering::Relaxed),
        dual_reads: dual_reads.await?,
        server_cpu_during_move: Some(cpu_during_move),
        move_cpu: Some(move_cpu_used),
        hiccups,
    };
    let mut result = summarize(strategy.name(), args.bin_ms, run);
    result.adaptive = adaptive_trace;
    Ok(result)
}

/// Name of the Fulva run at the rate Redis reached.
const MATCHED: &str = "fulva@redis-rate";

fn print_table<'a>(results: impl Iterator<Item = &'a StrategyResult>) {
    println!(
        "\n{:<17} {:>10} {:>10} {:>7} {:>9} {:>9} {:>7} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8} {:>9} {:>10} {:>8} {:>6}",
        "strategy",
        "steady/s",
        "during/s",
        "ratio",
        "p99.9 st",
        "p99.9 mv",
        "ratio",
        "stall st",
        "stall ms",
        "stall mv",
        "hiccup",
        "MB/s",
        "lost/MB",
        "CPU ms/MB",
        "move ms/MB",
        "B/op mv",
        "dual"
    );
    for r in results {
        let dual = r.dual_read_share_after_200ms.map_or("-".to_string(), |d| format!("{:.0}%", d * 100.0));
        let cpu = r.server_cpu_ms_per_mb.map_or("-".to_string(), |c| format!("{c:.1}"));
        let move_cpu = r.move_cpu_ms_per_mb.map_or("-".to_string(), |c| format!("{c:.1}"));
        println!(
            "{:<17} {:>10.0} {:>10.0} {:>7.2} {:>9} {:>9} {:>7.2} {:>8.1} {:>8.1} {:>8.1} {:>7.1} {:>8.1} {:>8.0} {:>9} {:>10} {:>8.0} {:>6}",
            r.strategy,
            r.steady.ops_per_sec,
            r.during.ops_per_sec,
            r.during.ops_per_sec / r.steady.ops_per_sec.max(1e-9),
            r.steady.p999_us,
            r.during.p999_us,
            f64::from(r.during.p999_us) / f64::from(r.steady.p999_us.max(1)),
            r.steady.longest_stall_ms,
            r.during.longest_stall_ms,
            r.during_moving.longest_stall_ms,
            r.during.hiccup_in_stall_ms,
            r.migrated_mb_per_sec,
            r.ops_lost_per_mb,
            cpu,
            move_cpu,
            r.during.wire_bytes_per_op,
            dual,
        );
    }
}

/// Runs `fulva bench migration`.
pub async fn run(args: MigrationBenchArgs) -> anyhow::Result<()> {
    let mut results = Vec::new();
    // Redis first: the rate it reaches is the rate Fulva is compared at.
    let redis = if args.vs_redis {
        eprintln!(
            "fulva bench migration: redis cluster resharding: {} keys, {} clients",
            args.load.keys, args.load.clients
        );
        Some(super::redis_cluster::run(&args.experiment(), &args.redis_server).await?)
    } else {
        None
    };
    for &strategy in &args.strategies {
        let strategy = Strategy::from(strategy);
        eprintln!(
            "fulva bench migration: {}: {} keys, {} clients, {}",
            strategy.name(),
            args.load.keys,
            args.load.clients,
            args.mix.name()
        );
        if args.adaptive_p99_us.is_some() {
            // Side by side: the fixed limit first, then the adaptive rate.
            let fixed = MigrationBenchArgs { adaptive_p99_us: None, ..args.clone() };
            results.push(run_strategy(&fixed, strategy).await?);
            eprintln!("fulva bench migration: {} with the adaptive rate", strategy.name());
        }
        if args.adaptive_p99_us.is_some() {
            for law in args.adaptive_law.laws() {
                let one = MigrationBenchArgs {
                    adaptive_law: if law == AdaptiveLaw::P99 { LawArg::P99 } else { LawArg::CpuBudget },
                    ..args.clone()
                };
                let mut result = run_strategy(&one, strategy).await?;
                result.strategy.push_str(if law == AdaptiveLaw::P99 { "+adaptive" } else { "+cpu-budget" });
                results.push(result);
            }
        } else {
            results.push(run_strategy(&args, strategy).await?);
        }
        if args.levers && strategy == Strategy::Fulva {
            let one = MigrationBenchArgs { adaptive_p99_us: None, ..args.clone() };
            let variants = [
                (
                    "fulva+grpc",
                    MigrationBenchArgs { migration_transfer: MigrationTransfer::Grpc, ..one.clone() },
                ),
                ("fulva+fetch", MigrationBenchArgs { fetch_on_miss: true, ..one.clone() }),
                ("fulva-hot", MigrationBenchArgs { hot_keys: 0, ..one.clone() }),
                ("fulva-hot-learned", MigrationBenchArgs { hot_keys: 0, learned_keys: 0, ..one.clone() }),
                ("fulva+thp", MigrationBenchArgs { transparent_huge_pages: true, ..one.clone() }),
            ];
            for (name, without) in variants {
                eprintln!("fulva bench migration: {name} (one lever changed)");
                let mut result = run_strategy(&without, strategy).await?;
                result.strategy = name.to_string();
                results.push(result);
            }
        }
    }
    if let Some(redis) = redis {
        let rate = redis.migrated_mb_per_sec;
        // Both MB/s columns count keys and values; Fulva's limit holds on
        // the wire, where each record also carries its header.
        let limit = wire_rate(rate, fulva_local::workload::key(0).len(), args.load.value_size);
        eprintln!(
            "fulva bench migration: fulva at the rate Redis reached ({rate:.2} MB/s of keys and values, \
             {limit:.2} MB/s on the wire)"
        );
        let matched = MigrationBenchArgs { rate_limit_mb: limit, adaptive_p99_us: None, ..args.clone() };
        let mut result = run_strategy(&matched, Strategy::Fulva).await?;
        result.strategy = MATCHED.to_string();
        results.push(redis);
        results.push(result);
    }
    print_table(results.iter());
    println!(
        "(ratio = during the move / steady before it; stall = longest stretch with no completed operation: \
         steady, during the move for all keys and for moving keys; hiccup = how long, within the longest stall \
         during the move, a bench thread that asks to wake every millisecond was held off the CPU (the \
         machine's share of that stall); lost/MB = (steady - during ops/s) x move seconds / MB moved; \
         CPU ms/MB = CPU of the server processes during the move (fulva: both nodes, each its own process; \
         redis: both redis-servers and redis-cli) per MB moved, client traffic included; \
         move ms/MB = CPU the move's own tasks used on both nodes (metered around each poll) per MB moved; \
         dual = share of reads sent to both nodes from 200 ms after the start)"
    );
    if results.iter().any(|r| r.strategy == MATCHED) {
        println!("\nAt the same migration rate (Fulva limited to the MB/s Redis reached in this run):");
        print_table(results.iter().filter(|r| r.strategy == MATCHED || r.strategy == "redis-cluster"));
    }
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

/// The wire rate limit (MB/s) at which a Fulva move carries `payload_mb`
/// MB/s of keys and values, for records of `key_len`-byte keys and
/// `value_size`-byte values (each record also carries its header).
fn wire_rate(payload_mb: f64, key_len: usize, value_size: usize) -> f64 {
    let payload = (key_len + value_size) as f64;
    payload_mb * (payload + fulva_proto::transfer::RECORD_HEADER_LEN as f64) / payload.max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matched_rate_adds_the_record_header_to_keys_and_values() {
        // 16-byte keys, 100-byte values: 116 bytes of payload, 139 on the wire.
        assert!((wire_rate(1.0, 16, 100) - 139.0 / 116.0).abs() < 1e-9);
        assert_eq!(wire_rate(0.0, 16, 100), 0.0);
    }
}
