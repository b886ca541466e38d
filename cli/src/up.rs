//! `fulva up`: a local cluster under load, shown live.

use crate::local::{LocalCluster, LocalClusterConfig};
use crate::sessions::FulvaSession;
use crate::workload::{self, Mix, Recorder, Summary, WorkloadSpec};
use fulva_client::ClientConfig;
use fulva_kvnode::NodeConfig;
use fulva_proto::{Op, ShardState};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
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
}

/// Runs `fulva up`.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let config = LocalClusterConfig {
        nodes: args.nodes,
        shards: args.shards,
        node: NodeConfig { workers: args.workers.max(1), ..NodeConfig::loopback(0) },
        control_addr: args.control_addr,
        map_file: Some(args.data_dir.join("shard-map.json")),
        faults: None,
    };
    let cluster = LocalCluster::start(config).await?;
    eprintln!(
        "fulva: {} nodes, {} shards, control endpoint {} (epoch {})",
        cluster.nodes.len(),
        cluster.coordinator.map().shards.len(),
        cluster.control_addr,
        cluster.coordinator.map().epoch
    );
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
        let client = fulva_client::Client::connect(ClientConfig::new(cluster.control_endpoint())).await?;
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
        let spec = WorkloadSpec::new(args.mix, args.zipf, args.keys, args.value_size);
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
        display.frame(&cluster, &latency, errors, &mut totals);
    }
    if let Some(load) = load {
        let _ = load.await;
    }
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
            last: served_ops(cluster),
            last_at: Instant::now(),
            started: Instant::now(),
        }
    }

    fn frame(
        &mut self,
        cluster: &LocalCluster,
        latency: &[hdrhistogram::Histogram<u64>],
        errors: u64,
        totals: &mut [u64],
    ) {
        let now = Instant::now();
        let secs = now.duration_since(self.last_at).as_secs_f64().max(1e-3);
        let ops = served_ops(cluster);
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
                "move {} {source} -> {} ({strategy:?}) [{}{}] {:>5.1}% ETA {:.1} s\n",
                shard.range,
                shard.owner,
                "#".repeat(filled),
                ".".repeat(20 - filled),
                fraction * 100.0,
                status.eta_seconds
            ));
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

/// Requests served so far by each node (all ops, all ranges it serves now).
fn served_ops(cluster: &LocalCluster) -> Vec<u64> {
    cluster
        .nodes
        .iter()
        .map(|node| {
            let mut total = 0;
            node.handler.ownership.for_each(|r| {
                total += [Op::Get, Op::Put, Op::Delete, Op::MultiGet]
                    .iter()
                    .map(|op| r.metrics.ops(*op))
                    .sum::<u64>();
            });
            total
        })
        .collect()
}
