//! `fulva bench kv`: closed-loop key-value load against Fulva over each data
//! path asked for (kernel UDP, DPDK), and optionally against a real Redis
//! server, with the same workload in one run. Each server is its own process,
//! so the CPU time it used gives ops/s per server core.

use super::redis::RedisServer;
use crate::datapath::{DpdkClientArgs, TransportName};
use fulva_client::{Client, ClientConfig};
use fulva_local::process::{cpu_seconds, NodeProcess};
use fulva_local::sessions::{FulvaSession, RedisSession};
use fulva_local::workload::{self, Mix, Recorder, Session, Summary, WorkloadSpec};
use fulva_local::ControlPlane;
use fulva_proto::NodeInfo;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Options of `fulva bench kv`.
#[derive(clap::Args, Debug, Clone)]
pub struct KvBenchArgs {
    /// Control endpoint of a running cluster (measured over kernel UDP); without
    /// it, a node process is started for each `--transport`.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Data paths to measure, in order, each with its own node process:
    /// `kernel` (UDP on loopback) and/or `dpdk` (a `net_memif` link between
    /// the node and this process, EAL `--no-huge --no-pci`; needs a build
    /// with `--features dpdk`).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "kernel")]
    pub transport: Vec<TransportName>,
    /// Workload mixes to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "ycsb-b,ycsb-c")]
    pub mix: Vec<Mix>,
    /// Keys loaded before the runs (fewer for large values: see --max-data-bytes).
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: u64,
    /// Bytes per value; several (`1024,16384,262144,1048576`) run one after
    /// another against the same servers (each size's load overwrites the
    /// keys). Values above a datagram travel as fragments.
    #[arg(long, value_delimiter = ',', default_value = "100")]
    pub value_size: Vec<usize>,
    /// Most bytes of values loaded per server: at a value size where --keys
    /// would exceed it, fewer keys are loaded.
    #[arg(long, default_value_t = 2 << 30)]
    pub max_data_bytes: u64,
    /// Concurrent closed-loop client tasks (the same for every system).
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Zipfian skew of key choice (0 = uniform).
    #[arg(long, default_value_t = 0.99)]
    pub zipf: f64,
    /// Measured seconds per mix and system.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Unmeasured warm-up seconds before each measurement.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Upper bound on operations per measurement (the duration usually ends it first).
    #[arg(long, default_value_t = 200_000_000)]
    pub max_ops: u64,
    /// MTU of the DPDK link (1500; up to 9000, jumbo frames: memif's buffers
    /// grow to match). Frames above MTU - 28 bytes go as fragments.
    #[arg(long, default_value_t = 1500, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(576..=9000))]
    pub dpdk_mtu: usize,
    /// Data-path workers of the kernel-UDP node (a DPDK node has one poller).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// UDP sockets of the client.
    #[arg(long, default_value_t = 2)]
    pub client_sockets: usize,
    /// The program run as `PROGRAM node ...` for the node processes (default: this one).
    #[arg(long)]
    pub node_binary: Option<PathBuf>,
    /// Also run the same workload against a redis-server started for the run.
    #[arg(long)]
    pub vs_redis: bool,
    /// Also measure the kernel path with the client's fixed retransmission
    /// timeout (`ClientConfig::adaptive_timeout` off, the path `kernel+fixed-rto`),
    /// to show what timing resends by measured round trips is worth.
    #[arg(long)]
    pub fixed_timeout_too: bool,
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
    /// Data path: "kernel" or "dpdk" for Fulva, "tcp" for Redis.
    pub transport: &'static str,
    /// Workload mix.
    pub mix: Mix,
    /// Bytes per value.
    pub value_size: usize,
    /// Keys loaded.
    pub keys: u64,
    /// Completed operations per second.
    pub ops_per_sec: f64,
    /// Value bytes carried per second (every read and write moves one
    /// value), in MB/s.
    pub mb_per_sec: f64,
    /// `mb_per_sec / server_cores`.
    pub mb_per_server_core: Option<f64>,
    /// CPU the server process used during the measurement, in cores (CPU
    /// seconds per second); unknown for a cluster not started by the run.
    pub server_cores: Option<f64>,
    /// `ops_per_sec / server_cores`.
    pub ops_per_server_core: Option<f64>,
    /// Latency summary.
    pub latency: Summary,
    /// Requests the client sent again after a timeout, warm-up included
    /// (Fulva only: Redis runs on TCP).
    pub retransmits: Option<u64>,
}

/// What is measured: a system over a data path, served by process `pid`,
/// with `keys` values of `value_size` bytes.
#[derive(Clone, Copy)]
struct Target {
    system: &'static str,
    transport: &'static str,
    pid: Option<u32>,
    value_size: usize,
    keys: u64,
}

/// Warms up, then measures one mix; `sessions` makes a fresh set of client
/// sessions for each phase (Redis sessions are connections and cannot be shared).
async fn measure<S, F, Fut>(
    target: Target,
    mut sessions: F,
    args: &KvBenchArgs,
    mix: Mix,
) -> anyhow::Result<RunResult>
where
    S: Session,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Vec<S>>>,
{
    let Target { system, transport, pid, value_size, keys } = target;
    let spec = WorkloadSpec::new(mix, args.zipf, keys, value_size);
    eprintln!(
        "  {system} ({transport}) {} {value_size} B: warming up {} s, measuring {} s",
        mix.name(),
        args.warmup,
        args.duration
    );
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
        let cpu_before = pid.and_then(cpu_seconds);
        let started = Instant::now();
        workload::run_closed_loop(set, spec, recorder.clone(), stop, args.max_ops, 7).await;
        let elapsed = started.elapsed().as_secs_f64().max(1e-9);
        let server_cores = match (cpu_before, pid.and_then(cpu_seconds)) {
            (Some(before), Some(after)) => Some((after - before) / elapsed),
            _ => None,
        };
        let (latency, errors) = recorder.drain();
        let latency = Summary::of(&latency[0], errors);
        let ops_per_sec = latency.ops as f64 / elapsed;
        let mb_per_sec = ops_per_sec * value_size as f64 / 1e6;
        let cores = server_cores.filter(|c| *c > 0.0);
        result = Some(RunResult {
            system,
            transport,
            mix,
            value_size,
            keys,
            ops_per_sec,
            mb_per_sec,
            mb_per_server_core: cores.map(|c| mb_per_sec / c),
            server_cores,
            ops_per_server_core: cores.map(|c| ops_per_sec / c),
            latency,
            retransmits: None,
        });
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

/// The DPDK network of a benchmark: the node at 10.9.0.1 and this process at
/// 10.9.0.100, joined by one `net_memif` link whose socket is in `dir`.
struct MemifLink {
    socket: PathBuf,
    /// The link's MTU; above 1500, memif's buffers grow to match.
    mtu: usize,
}

impl MemifLink {
    const NODE: &'static str = "10.9.0.1:7100";
    const CLIENT: &'static str = "10.9.0.100:7200";

    fn eal(&self, who: &str, role: &str) -> String {
        format!(
            "--no-huge --no-pci --no-telemetry -m 512 --log-level=*:warning --file-prefix=fulva-bench-{who}-{} \
             --vdev=net_memif0,role={role},socket={},id=0{}",
            std::process::id(),
            self.socket.display(),
            // A packet fits one memif buffer (a power of two).
            if self.mtu > 1500 { format!(",bsize={}", (self.mtu + 64).next_power_of_two()) } else { String::new() }
        )
    }

    fn node_args(&self) -> Vec<String> {
        vec![
            "--transport=dpdk".into(),
            "--dpdk-port=net_memif0".into(),
            format!("--eal-args={}", self.eal("node", "server")),
            format!("--dpdk-mtu={}", self.mtu),
        ]
    }

    fn client(&self) -> DpdkClientArgs {
        DpdkClientArgs {
            dpdk_port: Some("net_memif0".into()),
            eal_args: self.eal("client", "client"),
            dpdk_addr: MemifLink::CLIENT.parse().expect("valid address"),
            dpdk_mtu: self.mtu,
        }
    }
}

/// Starts a node process for `transport`, serves its shard map from this
/// process, and measures every mix against it.
async fn run_fulva_local(
    args: &KvBenchArgs,
    transport: TransportName,
    results: &mut Vec<RunResult>,
) -> anyhow::Result<()> {
    // One node (and, on DPDK, one EAL and link: it starts once per process)
    // for every value size; each size's load overwrites the last one's.
    let largest = args.value_size.iter().copied().max().unwrap_or(0);
    let dir = tempfile::tempdir()?;
    let binary = match &args.node_binary {
        Some(path) => path.clone(),
        None => std::env::current_exe()?,
    };
    let log = dir.path().join("node.log");
    let link = MemifLink { socket: dir.path().join("memif.sock"), mtu: args.dpdk_mtu };
    let (mut node_args, data_addr): (Vec<String>, SocketAddr) = match transport {
        TransportName::Kernel => {
            let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
            (vec![format!("--workers={}", args.workers.max(1))], port)
        }
        TransportName::Dpdk => {
            // Fail before starting anything when this build cannot speak DPDK.
            link.client().apply(transport, &mut ClientConfig::new("unused"))?;
            (link.node_args(), MemifLink::NODE.parse()?)
        }
    };
    node_args.push(format!("--max-value-bytes={}", largest.max(fulva_kvnode::DEFAULT_MAX_VALUE_BYTES)));
    let node = NodeProcess::start(&binary, 0, &node_args, data_addr, log).await?;
    eprintln!("  fulva ({}): node pid {:?}, data path on {}", transport.name(), node.pid(), node.data_addr);
    let infos = vec![NodeInfo { id: 0, data_addr: node.data_addr, control_addr: node.control_addr }];
    let control = ControlPlane::start(infos, 1).await?;
    let endpoint = control.endpoint.clone();
    let mut config = ClientConfig::new(endpoint);
    config.sockets = args.client_sockets.max(1);
    link.client().apply(transport, &mut config)?;
    config.max_value_bytes = config.max_value_bytes.max(largest);
    let mut outcome = run_fulva(args, config.clone(), transport.name(), node.pid(), results).await;
    if outcome.is_ok() && args.fixed_timeout_too && transport == TransportName::Kernel {
        config.adaptive_timeout = false;
        outcome = run_fulva(args, config, "kernel+fixed-rto", node.pid(), results).await;
    }
    drop(control);
    if outcome.is_err() {
        eprintln!("  node log:\n{}", node.log_tail());
    }
    node.stop().await;
    outcome
}

/// Loads the keys through a client made from `config`, then measures every mix.
async fn run_fulva(
    args: &KvBenchArgs,
    config: ClientConfig,
    transport: &'static str,
    pid: Option<u32>,
    results: &mut Vec<RunResult>,
) -> anyhow::Result<()> {
    let client = Client::connect(config).await?;
    for &value_size in &args.value_size {
        run_fulva_size(args, &client, transport, pid, value_size, results).await?;
    }
    Ok(())
}

/// Loads `value_size`-byte values through `client`, then measures every mix.
async fn run_fulva_size(
    args: &KvBenchArgs,
    client: &Client,
    transport: &'static str,
    pid: Option<u32>,
    value_size: usize,
    results: &mut Vec<RunResult>,
) -> anyhow::Result<()> {
    let keys = args.keys_for(value_size);
    let took =
        workload::load(vec![FulvaSession { client: client.clone() }; 64], keys, value_size, Some("fulva"))
            .await?;
    eprintln!(
        "  fulva ({transport}): loaded {keys} keys of {value_size} B in {:.1} s ({:.0} puts/s)",
        took.as_secs_f64(),
        keys as f64 / took.as_secs_f64()
    );
    let target = Target { system: "fulva", transport, pid, value_size, keys };
    for &mix in &args.mix {
        let make = || async { Ok(vec![SingleBucket(FulvaSession { client: client.clone() }); args.clients]) };
        let resent = || client.stats().retransmits.load(std::sync::atomic::Ordering::Relaxed);
        let before = resent();
        let mut result = measure(target, make, args, mix).await?;
        result.retransmits = Some(resent() - before);
        results.push(result);
    }
    Ok(())
}

impl KvBenchArgs {
    /// Keys loaded at `value_size`: --keys, or fewer to stay within
    /// --max-data-bytes.
    fn keys_for(&self, value_size: usize) -> u64 {
        self.keys.min(self.max_data_bytes / value_size.max(1) as u64).max(1)
    }
}

/// Loads and measures every value size and mix against a redis-server
/// started for the run.
async fn run_redis(args: &KvBenchArgs, results: &mut Vec<RunResult>) -> anyhow::Result<()> {
    let redis = RedisServer::start(&args.redis_server).await?;
    eprintln!("  redis: started pid {:?} on {}", redis.pid(), redis.addr);
    for &value_size in &args.value_size {
        run_redis_size(args, &redis, value_size, results).await?;
    }
    redis.stop().await;
    Ok(())
}

/// Loads `value_size`-byte values into `redis`, then measures every mix.
async fn run_redis_size(
    args: &KvBenchArgs,
    redis: &RedisServer,
    value_size: usize,
    results: &mut Vec<RunResult>,
) -> anyhow::Result<()> {
    let keys = args.keys_for(value_size);
    let started = Instant::now();
    let loaders = 4u64;
    let per = keys.div_ceil(loaders);
    let value = vec![b'x'; value_size];
    // About 4 MiB in flight per loader, whatever the value size.
    let depth = ((4usize << 20) / value_size.max(1)).clamp(1, 512);
    let mut loads = Vec::new();
    for i in 0..loaders {
        let (addr, value) = (redis.addr, value.clone());
        let range = (i * per).min(keys)..((i + 1) * per).min(keys);
        loads.push(tokio::spawn(async move {
            RedisSession::connect(addr).await?.set_pipelined(range, &value, depth).await
        }));
    }
    for load in loads {
        load.await??;
    }
    eprintln!("  redis: loaded {keys} keys of {value_size} B in {:.1} s", started.elapsed().as_secs_f64());
    let target = Target { system: "redis", transport: "tcp", pid: redis.pid(), value_size, keys };
    for &mix in &args.mix {
        let addr = redis.addr;
        let make = || async move {
            let mut sessions = Vec::new();
            for _ in 0..args.clients {
                sessions.push(RedisSession::connect(addr).await?);
            }
            Ok(sessions)
        };
        results.push(measure(target, make, args, mix).await?);
    }
    Ok(())
}

/// Runs `fulva bench kv`.
pub async fn run(args: KvBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.clients > 0, "--clients must be at least 1");
    anyhow::ensure!(args.keys > 0, "--keys must be at least 1");
    anyhow::ensure!(!args.transport.is_empty(), "--transport names no data path");
    anyhow::ensure!(!args.value_size.is_empty(), "--value-size names no size");
    if let Some(&size) = args.value_size.iter().find(|&&s| s > 8 << 20) {
        anyhow::bail!("--value-size {size}: values are at most 8 MiB (8388608 bytes)");
    }
    let mut results = Vec::new();
    eprintln!(
        "fulva bench kv: {} keys (at most {} bytes of values) of {:?} bytes, {} clients, zipf {}",
        args.keys, args.max_data_bytes, args.value_size, args.clients, args.zipf
    );

    // One system at a time: they share the machine's cores.
    match &args.endpoint {
        Some(endpoint) => {
            anyhow::ensure!(
                args.transport == [TransportName::Kernel],
                "with --endpoint the run measures that cluster over kernel UDP; leave out --transport"
            );
            let mut config = ClientConfig::new(endpoint.clone());
            config.sockets = args.client_sockets.max(1);
            config.max_value_bytes =
                config.max_value_bytes.max(args.value_size.iter().copied().max().unwrap_or(0));
            run_fulva(&args, config, "kernel", None, &mut results).await?;
        }
        None => {
            for &transport in &args.transport {
                run_fulva_local(&args, transport, &mut results).await?;
            }
        }
    }
    if args.vs_redis {
        run_redis(&args, &mut results).await?;
    }

    // By value size, each size's systems together.
    results.sort_by_key(|r| r.value_size);
    print_results(&results);
    if let Some(path) = &args.json {
        let doc = serde_json::json!({ "benchmark": "kv", "keys": args.keys, "value_sizes": args.value_size,
            "clients": args.clients, "zipf": args.zipf, "duration_s": args.duration, "results": results });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}

fn print_results(results: &[RunResult]) {
    println!(
        "\n{:<6} {:<7} {:<8} {:>8} {:>10} {:>8} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7}",
        "system",
        "path",
        "mix",
        "value B",
        "ops/s",
        "MB/s",
        "cores",
        "ops/s/core",
        "MB/s/core",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "errors",
        "resent"
    );
    let opt = |v: Option<f64>, precision: usize| v.map_or("-".to_string(), |v| format!("{v:.precision$}"));
    for r in results {
        println!(
            "{:<6} {:<7} {:<8} {:>8} {:>10.0} {:>8.1} {:>7} {:>10} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>7} {:>7}",
            r.system,
            r.transport,
            r.mix.name(),
            r.value_size,
            r.ops_per_sec,
            r.mb_per_sec,
            opt(r.server_cores, 2),
            opt(r.ops_per_server_core, 0),
            opt(r.mb_per_server_core, 1),
            r.latency.p50_us,
            r.latency.p99_us,
            r.latency.p999_us,
            r.latency.errors,
            r.retransmits.map_or("-".to_string(), |n| n.to_string())
        );
    }
    let find = |system: &str, transport: &str, mix: Mix, size: usize| {
        results
            .iter()
            .find(|r| r.system == system && r.transport == transport && r.mix == mix && r.value_size == size)
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".to_string(),
    };
    for f in results.iter().filter(|r| r.system == "fulva") {
        let mut pairs = Vec::new();
        if f.transport == "dpdk" {
            if let Some(k) = find("fulva", "kernel", f.mix, f.value_size) {
                pairs.push(("kernel", k));
            }
        }
        if let Some(r) = find("redis", "tcp", f.mix, f.value_size) {
            pairs.push(("redis", r));
        }
        for (name, other) in pairs {
            println!(
                "{} {} B {}: fulva {}/{name} ops/s {:.2}x, MB/s per server core {}, p50 {:.2}x, p99 {:.2}x, p99.9 {:.2}x (latency ratios below 1 favour fulva {})",
                f.mix.name(),
                f.value_size,
                f.transport,
                f.transport,
                f.ops_per_sec / other.ops_per_sec.max(1e-9),
                ratio(f.mb_per_server_core, other.mb_per_server_core),
                f.latency.p50_us / other.latency.p50_us.max(1e-9),
                f.latency.p99_us / other.latency.p99_us.max(1e-9),
                f.latency.p999_us / other.latency.p999_us.max(1e-9),
                f.transport,
            );
        }
    }
}
