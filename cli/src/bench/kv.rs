//! `fulva bench kv`: closed-loop key-value load against Fulva, and optionally
//! against a real Redis server with the same workload, in one run.

use super::redis::RedisServer;
use crate::local::{LocalCluster, LocalClusterConfig};
use crate::sessions::{FulvaSession, RedisSession};
use crate::workload::{self, Mix, Recorder, Session, Summary, WorkloadSpec};
use fulva_client::{Client, ClientConfig};
use fulva_kvnode::NodeConfig;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Options of `fulva bench kv`.
#[derive(clap::Args, Debug, Clone)]
pub struct KvBenchArgs {
    /// Control endpoint of a running cluster; without it, one local node is started.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Workload mixes to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "ycsb-b,ycsb-c")]
    pub mix: Vec<Mix>,
    #[command(flatten)]
    pub load: super::LoadArgs,
    /// Measured seconds per mix and system.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Unmeasured warm-up seconds before each measurement.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Upper bound on operations per measurement (the duration usually ends it first).
    #[arg(long, default_value_t = 200_000_000)]
    pub max_ops: u64,
    /// Data-path workers of the local node.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// UDP sockets of the client.
    #[arg(long, default_value_t = 2)]
    pub client_sockets: usize,
    /// Also run the same workload against a redis-server started for the run.
    #[arg(long)]
    pub vs_redis: bool,
    /// The redis-server binary.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One measured run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunResult {
    /// "fulva" or "redis".
    pub system: &'static str,
    /// Workload mix.
    pub mix: Mix,
    /// Completed operations per second.
    pub ops_per_sec: f64,
    /// Latency summary.
    pub latency: Summary,
}

/// Warms up, then measures one mix; `sessions` makes a fresh set of client
/// sessions for each phase (Redis sessions are connections and cannot be shared).
async fn measure<S, F, Fut>(
    system: &'static str,
    mut sessions: F,
    args: &KvBenchArgs,
    mix: Mix,
) -> anyhow::Result<RunResult>
where
    S: Session,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Vec<S>>>,
{
    let spec = WorkloadSpec::new(mix, args.load.zipf, args.load.keys, args.load.value_size);
    eprintln!("  {system} {}: warming up {} s, measuring {} s", mix.name(), args.warmup, args.duration);
    let mut result = None;
    for secs in [args.warmup, args.duration] {
        let recorder = Recorder::new(1);
        let stop = CancellationToken::new();
        let timer = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            timer.cancel();
        });
        let set = sessions().await?;
        let started = Instant::now();
        workload::run_closed_loop(set, spec, recorder.clone(), stop, args.max_ops, 7).await;
        let elapsed = started.elapsed().as_secs_f64();
        let (latency, errors) = recorder.drain();
        let latency = Summary::of(&latency[0], errors);
        result =
            Some(RunResult { system, mix, ops_per_sec: latency.ops as f64 / elapsed.max(1e-9), latency });
    }
    Ok(result.expect("the measurement ran"))
}

/// Sessions whose buckets are all 0 (one histogram per system).
#[derive(Clone)]
struct SingleBucket(FulvaSession);

impl Session for SingleBucket {
    async fn get(&mut self, key: &[u8]) -> anyhow::Result<()> {
        self.0.get(key).await
    }
    async fn put(&mut self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        self.0.put(key, value).await
    }
    fn bucket(&self, _key: &[u8]) -> usize {
        0
    }
}

/// Runs `fulva bench kv`.
pub async fn run(args: KvBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.load.clients > 0, "--clients must be at least 1");
    anyhow::ensure!(args.load.keys > 0, "--keys must be at least 1");
    let mut results = Vec::new();

    // Fulva first, then Redis: never both at once, they share the two cores.
    let local = match &args.endpoint {
        Some(_) => None,
        None => Some(
            LocalCluster::start(LocalClusterConfig {
                nodes: 1,
                shards: 1,
                node: NodeConfig { workers: args.workers.max(1), ..NodeConfig::loopback(0) },
                ..LocalClusterConfig::default()
            })
            .await?,
        ),
    };
    let endpoint = args
        .endpoint
        .clone()
        .or_else(|| local.as_ref().map(LocalCluster::control_endpoint))
        .expect("one is set");
    let mut config = ClientConfig::new(endpoint.clone());
    config.sockets = args.client_sockets.max(1);
    let client = Client::connect(config).await?;
    eprintln!(
        "fulva bench kv: {} keys of {} bytes, {} clients, zipf {}",
        args.load.keys, args.load.value_size, args.load.clients, args.load.zipf
    );
    let took = workload::load(
        vec![FulvaSession { client: client.clone() }; 64],
        args.load.keys,
        args.load.value_size,
        Some("fulva"),
    )
    .await?;
    eprintln!(
        "  fulva: loaded in {:.1} s ({:.0} puts/s)",
        took.as_secs_f64(),
        args.load.keys as f64 / took.as_secs_f64()
    );
    for &mix in &args.mix {
        let make =
            || async { Ok(vec![SingleBucket(FulvaSession { client: client.clone() }); args.load.clients]) };
        results.push(measure("fulva", make, &args, mix).await?);
    }
    drop(client);
    if let Some(cluster) = local {
        cluster.shutdown().await;
    }

    if args.vs_redis {
        let redis = RedisServer::start(&args.redis_server).await?;
        eprintln!("  redis: started pid {:?} on {}", redis.pid(), redis.addr);
        let started = Instant::now();
        let loaders = 4u64;
        let per = args.load.keys.div_ceil(loaders);
        let value = vec![b'x'; args.load.value_size];
        let mut loads = Vec::new();
        for i in 0..loaders {
            let (addr, value) = (redis.addr, value.clone());
            let range = (i * per).min(args.load.keys)..((i + 1) * per).min(args.load.keys);
            loads.push(tokio::spawn(async move {
                RedisSession::connect(addr).await?.set_pipelined(range, &value, 512).await
            }));
        }
        for load in loads {
            load.await??;
        }
        eprintln!("  redis: loaded in {:.1} s", started.elapsed().as_secs_f64());
        for &mix in &args.mix {
            let addr = redis.addr;
            let make = || async move {
                let mut sessions = Vec::new();
                for _ in 0..args.load.clients {
                    sessions.push(RedisSession::connect(addr).await?);
                }
                Ok(sessions)
            };
            results.push(measure("redis", make, &args, mix).await?);
        }
        redis.stop().await;
    }

    print_results(&results);
    if let Some(path) = &args.json {
        let doc = serde_json::json!({ "benchmark": "kv", "keys": args.load.keys, "value_size": args.load.value_size,
            "clients": args.load.clients, "zipf": args.load.zipf, "duration_s": args.duration, "results": results });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}

fn print_results(results: &[RunResult]) {
    println!(
        "\n{:<8} {:<8} {:>12} {:>10} {:>10} {:>10} {:>8}",
        "system", "mix", "ops/s", "p50 us", "p99 us", "p99.9 us", "errors"
    );
    for r in results {
        println!(
            "{:<8} {:<8} {:>12.0} {:>10.1} {:>10.1} {:>10.1} {:>8}",
            r.system,
            r.mix.name(),
            r.ops_per_sec,
            r.latency.p50_us,
            r.latency.p99_us,
            r.latency.p999_us,
            r.latency.errors
        );
    }
    for f in results.iter().filter(|r| r.system == "fulva") {
        if let Some(r) = results.iter().find(|r| r.system == "redis" && r.mix == f.mix) {
            println!(
                "{}: fulva/redis ops/s {:.2}x, p50 {:.2}x, p99 {:.2}x, p99.9 {:.2}x (latency ratios below 1 favour fulva)",
                f.mix.name(),
                f.ops_per_sec / r.ops_per_sec.max(1e-9),
                f.latency.p50_us / r.latency.p50_us.max(1e-9),
                f.latency.p99_us / r.latency.p99_us.max(1e-9),
                f.latency.p999_us / r.latency.p999_us.max(1e-9)
            );
        }
    }
}
