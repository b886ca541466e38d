//! `fulva up`: a local cluster under load, shown live.

use fulva_coordinator::metrics::OperatorMetrics;
use fulva_coordinator::policy::DEFAULT_POLICY_YAML;
use fulva_coordinator::{RebalancePolicy, RebalanceStatus};
use fulva_kvnode::NodeConfig;
use fulva_local::cluster::{LocalCluster, LocalClusterConfig};
use fulva_local::sessions::FulvaSession;
use fulva_local::workload::{self, Hotspot, Mix, Recorder, Summary, WorkloadSpec};
use fulva_proto::ShardState;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Options of `fulva up`.
#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Storage nodes to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub nodes: u32,
    /// Shards the hash space starts with, spread round-robin over the nodes.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub shards: u32,
    /// Address of the control endpoint (`fulva kv --endpoint` connects here).
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub control_addr: SocketAddr,
    /// Directory for the coordinator's shard-map file.
    #[arg(long, default_value = "fulva-data")]
    pub data_dir: PathBuf,
    /// Data-path workers per node.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Workload mix of the built-in load generator.
    #[arg(long, value_enum, default_value_t = Mix::B)]
    pub mix: Mix,
    /// Keys the workload uses (loaded before it starts).
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Concurrent closed-loop client tasks.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Zipfian skew of key choice (0 = uniform).
    #[arg(long, default_value_t = 0.99)]
    pub zipf: f64,
    /// Stop after this many seconds (0 = run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub duration: u64,
    /// Start the cluster without the load generator.
    #[arg(long)]
    pub no_workload: bool,
    /// Share of operations aimed at the keys of the first shard (a hot spot
    /// the rebalancer spreads out); 0 = no hot spot.
    #[arg(long, default_value_t = 0.8)]
    pub hotspot: f64,
    /// Rebalance policy (YAML, see docs/rebalancing.md); default: the embedded one.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Directory for the cluster's CA and certificates (default:
    /// `DATA_DIR/tls`). The nodes, the coordinator and every tool talk
    /// mutual TLS; `fulva kv`, `fulva map`, `fulva migrate` ... take
    /// `--tls-dir` with this directory.
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
    /// Run the control plane without TLS (a warning says so).
    #[arg(long, conflicts_with = "tls_dir")]
    pub insecure: bool,
    /// Address of the rebalancer's (operator) metrics, served on /metrics.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub operator_metrics_addr: SocketAddr,
}

/// Runs `fulva up`.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let tls_dir = (!args.insecure).then(|| args.tls_dir.clone().unwrap_or_else(|| args.data_dir.join("tls")));
    let config = LocalClusterConfig {
        nodes: args.nodes,
        shards: args.shards,
        node: NodeConfig {
            workers: args.workers.max(1),
            tls_dir: tls_dir.clone(),
            ..NodeConfig::loopback(0)
        },
        control_addr: args.control_addr,
        map_file: Some(args.data_dir.join("shard-map.json")),
        faults: None,
    };
    let policy = match &args.policy {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read the policy {}: {e}", path.display()))?;
            RebalancePolicy::from_yaml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => RebalancePolicy::from_yaml(DEFAULT_POLICY_YAML)?,
    };
    policy.check_nodes(&(0..args.nodes).collect::<Vec<_>>())?;
    anyhow::ensure!((0.0..=1.0).contains(&args.hotspot), "--hotspot is a share between 0 and 1");
    let cluster = LocalCluster::start(config).await?;
    eprintln!(
        "fulva: {} nodes, {} shards, control endpoint {} (epoch {})",
        cluster.nodes.len(),
        cluster.coordinator.map().shards.len(),
        cluster.control_addr,
        cluster.coordinator.map().epoch
    );
    match &tls_dir {
        Some(dir) => eprintln!(
            "  mutual TLS: CA and certificates in {0} (tools: --tls-dir {0}, or FULVA_TLS_DIR)",
            dir.display()
        ),
        None => {
            eprintln!("  WARNING: no TLS (--insecure): anyone who can reach the ports can change the cluster")
        }
    }
    for node in &cluster.nodes {
        eprintln!(
            "  node {}: data {} control {} metrics http://{}/metrics",
            node.node_id, node.data_addr, node.control_addr, node.metrics_addr
        );
    }
    let stop = CancellationToken::new();
    let ctrl_c = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        ctrl_c.cancel();
    });
    if args.duration > 0 {
        let deadline = stop.clone();
        let duration = Duration::from_secs(args.duration);
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            deadline.cancel();
        });
    }

    let recorder = Recorder::new(args.nodes as usize);
    let mut load = None;
    if !args.no_workload {
        let client = fulva_client::Client::connect(cluster.client_config()).await?;
        let session = FulvaSession { client };
        eprintln!("fulva: loading {} keys of {} bytes", args.keys, args.value_size);
        let loaders = vec![session.clone(); args.clients.clamp(1, 64)];
        tokio::select! {
            loaded = workload::load(loaders, args.keys, args.value_size, Some("workload keys")) => {
                let took = loaded?;
                eprintln!("fulva: loaded in {:.1}s; running {} with {} clients (Ctrl-C stops)", took.as_secs_f64(), args.mix.name(), args.clients);
            }
            () = stop.cancelled() => {}
        }
        let mut spec = WorkloadSpec::new(args.mix, args.zipf, args.keys, args.value_size);
        if args.hotspot > 0.0 {
            let range = cluster.coordinator.map().shards[0].range;
            spec = spec.with_hotspot(Hotspot { range, share: args.hotspot });
            eprintln!(
                "fulva: hot spot: {:.0}% of operations on the keys of {range} (node {})",
                args.hotspot * 100.0,
                cluster.coordinator.map().shards[0].owner
            );
        }
        let sessions = vec![session; args.clients.max(1)];
        load = Some(tokio::spawn(workload::run_closed_loop(
            sessions,
            spec,
            recorder.clone(),
            stop.clone(),
            u64::MAX,
            42,
        )));
    }

    let rebalancing = CancellationToken::new();
    let metrics = Arc::new(OperatorMetrics::new());
    let metrics_listener = tokio::net::TcpListener::bind(args.operator_metrics_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind {}: {e}", args.operator_metrics_addr))?;
    eprintln!("  operator metrics: http://{}/metrics", metrics_listener.local_addr()?);
    tokio::spawn(fulva_coordinator::metrics::serve(metrics_listener, metrics.clone(), stop.clone()));
    let (rebalancer, rebalancer_task) =
        cluster.start_rebalancer_with(policy.clone(), metrics, rebalancing.clone());
    eprintln!(
        "fulva: rebalance policy: mode {:?}, trigger {:.0}% over the mean for {} s, cooldown {} s, strategy {:?}",
        policy.mode,
        policy.triggers.ops_imbalance * 100.0,
        policy.triggers.sustained_seconds,
        policy.cooldown_seconds,
        policy.strategy
    );
    let mut display = Display::new(&cluster);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut totals: Vec<u64> = vec![0; args.nodes as usize];
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        let (latency, errors) = recorder.drain();
        display.frame(&cluster, &rebalancer.status(), &latency, errors, &mut totals);
    }
    // Moves in flight are rolled back before the nodes stop.
    rebalancing.cancel();
    let _ = rebalancer_task.await;
    if let Some(load) = load {
        let _ = load.await;
    }
    let status = rebalancer.status();
    eprintln!(
        "fulva: rebalancer: {} moves finished, {} aborted, {} failed, {} splits; imbalance {:.2}",
        status.finished, status.aborted, status.failed, status.splits, status.imbalance
    );
    eprintln!("fulva: stopping; client operations per node: {totals:?}");
    cluster.shutdown().await;
    Ok(())
}

struct Display {
    tty: bool,
    last: Vec<u64>,
    last_at: Instant,
    started: Instant,
}

impl Display {
    fn new(cluster: &LocalCluster) -> Display {
        Display {
            tty: std::io::stdout().is_terminal(),
            last: cluster.served_ops(),
            last_at: Instant::now(),
            started: Instant::now(),
        }
    }

    fn frame(
        &mut self,
        cluster: &LocalCluster,
        rebalance: &RebalanceStatus,
        latency: &[hdrhistogram::Histogram<u64>],
        errors: u64,
        totals: &mut [u64],
    ) {
        let now = Instant::now();
        let secs = now.duration_since(self.last_at).as_secs_f64().max(1e-3);
        let ops = cluster.served_ops();
        let map = cluster.coordinator.map();
        let mut out = String::new();
        if self.tty {
            out.push_str("\x1b[2J\x1b[H");
        }
        out.push_str(&format!(
            "fulva up  t={:>4}s  epoch {}  control {}  errors {errors}\n",
            now.duration_since(self.started).as_secs(),
            map.epoch,
            cluster.control_addr
        ));
        out.push_str("node  ranges     objects     served ops/s   client p50 us   p99 us   p99.9 us\n");
        let mut total_rate = 0.0;
        for (i, node) in cluster.nodes.iter().enumerate() {
            let rate = ops[i].saturating_sub(self.last[i]) as f64 / secs;
            total_rate += rate;
            let mut objects = 0;
            node.handler.ownership.for_each(|r| objects += r.metrics.objects.get());
            let s = latency.get(i).map(|h| Summary::of(h, 0)).unwrap_or_default();
            if let Some(t) = totals.get_mut(i) {
                *t += s.ops;
            }
            out.push_str(&format!(
                "{:>4}  {:>6}  {:>10}  {:>17.0}  {:>14.0}  {:>7.0}  {:>9.0}\n",
                node.node_id,
                node.handler.ownership.ranges().len(),
                objects,
                rate,
                s.p50_us,
                s.p99_us,
                s.p999_us
            ));
        }
        out.push_str(&format!("total {total_rate:>37.0} ops/s\n"));
        let trigger = match rebalance.imbalanced_since {
            Some(since) => format!("imbalanced for {:.0} s", since.elapsed().as_secs_f64()),
            None => "within policy".to_string(),
        };
        out.push_str(&format!(
            "imbalance (max/mean node ops/s) {:.2}  memory {:.2}  {trigger}  moves: {} done, {} aborted, {} failed, {} splits\n",
            rebalance.imbalance,
            rebalance.memory_imbalance,
            rebalance.finished,
            rebalance.aborted,
            rebalance.failed,
            rebalance.splits
        ));
        for shard in &map.shards {
            let ShardState::Migrating { source, strategy } = shard.state else { continue };
            let status = cluster
                .node(shard.owner)
                .and_then(|n| n.handler.ownership.incoming(shard.range))
                .map(|m| m.status());
            let Some(status) = status else { continue };
            let fraction = if status.bytes_total == 0 {
                0.0
            } else {
                status.bytes_applied as f64 / status.bytes_total as f64
            };
            let filled = (fraction.clamp(0.0, 1.0) * 20.0) as usize;
            out.push_str(&format!(
                "move {} {source} -> {} ({}) [{}{}] {:>5.1}% ETA {:.1} s\n",
                shard.range,
                shard.owner,
                strategy.name(),
                "#".repeat(filled),
                ".".repeat(20 - filled),
                fraction * 100.0,
                status.eta_seconds
            ));
        }
        for (at, event) in rebalance.events.iter().rev().take(6).collect::<Vec<_>>().into_iter().rev() {
            out.push_str(&format!("  {:>5.0}s ago  {event}\n", at.elapsed().as_secs_f64()));
        }
        if self.tty {
            print!("{out}");
        } else {
            println!("{out}");
        }
        self.last = ops;
        self.last_at = now;
    }
}
