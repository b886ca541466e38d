//! `fulva coordinator`: the coordinator as its own process, over storage
//! nodes started elsewhere (`fulva node`), without Kubernetes. It keeps the
//! shard map in a file; started again on the same file it recovers the moves
//! a previous run left half-done (`Coordinator::recover`). It checks its
//! nodes every second: the ranges of a node that restarted (empty) or stayed
//! gone are declared lost and served again, empty (`fulva_coordinator::liveness`).

use fulva_coordinator::liveness::watch_nodes;
use fulva_coordinator::{spawn_control_endpoint, Coordinator, FileMapStore, LivenessOptions, MapStore};
use fulva_proto::NodeInfo;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Options of `fulva coordinator`.
#[derive(clap::Args, Debug, Clone)]
pub struct CoordinatorArgs {
    /// Address of the control endpoint (shard map for clients, admin for `fulva migrate`).
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,
    /// The shard-map file (created on first start).
    #[arg(long)]
    pub map_file: PathBuf,
    /// A storage node: `ID=DATA_ADDR,CONTROL_ADDR` (repeat for each node).
    #[arg(long = "node", value_parser = parse_node, required = true)]
    pub nodes: Vec<NodeInfo>,
    /// Shards of a new map, spread over the nodes.
    #[arg(long, default_value_t = 16)]
    pub shards: u32,
    /// Milliseconds between two checks of every node (a restarted node's
    /// ranges are declared lost and served again, empty, at the next check).
    #[arg(long, default_value_t = 1000)]
    pub node_check_interval_ms: u64,
    /// Seconds a node may not answer before its ranges are declared lost and
    /// given to the other nodes, empty.
    #[arg(long, default_value_t = 30)]
    pub node_gone_after_secs: u64,
    /// Directory with the coordinator's TLS files (`ca.crt`,
    /// `coordinator.crt`, `coordinator.key`, as `fulva certs` writes them):
    /// it then calls the nodes and serves the control endpoint on mutual TLS.
    #[arg(long, env = "FULVA_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Call the nodes and serve the control endpoint without TLS (anyone who
    /// can reach the endpoint can change the map). Needed, with a warning,
    /// when no `--tls-dir` is given.
    #[arg(long, env = "FULVA_INSECURE", conflicts_with = "tls_dir")]
    pub insecure: bool,
}

impl CoordinatorArgs {
    /// How the coordinator watches its nodes.
    pub fn liveness(&self) -> LivenessOptions {
        LivenessOptions {
            interval: Duration::from_millis(self.node_check_interval_ms.max(10)),
            gone_after: Duration::from_secs(self.node_gone_after_secs),
            ..LivenessOptions::default()
        }
    }
}

fn parse_node(text: &str) -> Result<NodeInfo, String> {
    let (id, addrs) = text.split_once('=').ok_or("expected ID=DATA_ADDR,CONTROL_ADDR")?;
    let (data, control) = addrs.split_once(',').ok_or("expected ID=DATA_ADDR,CONTROL_ADDR")?;
    Ok(NodeInfo {
        id: id.trim().parse().map_err(|e| format!("node id {id:?}: {e}"))?,
        data_addr: data.trim().parse().map_err(|e| format!("data address {data:?}: {e}"))?,
        control_addr: control.trim().parse().map_err(|e| format!("control address {control:?}: {e}"))?,
    })
}

/// Runs `fulva coordinator` until `shutdown` resolves.
pub async fn run(
    args: CoordinatorArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let tls = match (&args.tls_dir, args.insecure) {
        (Some(dir), _) => Some(fulva_tls::Tls::from_dir(dir, fulva_tls::Role::Coordinator)?),
        (None, true) => {
            tracing::warn!("running without TLS (--insecure): anyone who can reach the control endpoint can change the map");
            None
        }
        (None, false) => anyhow::bail!(
            "the control endpoint needs TLS: give --tls-dir DIR (files as `fulva certs` writes them) or run without it with --insecure"
        ),
    };
    let store: Arc<dyn MapStore> = Arc::new(FileMapStore::new(args.map_file.clone()));
    let coordinator = match Coordinator::open_with_tls(store.clone(), tls.clone()).await? {
        Some(coordinator) => {
            coordinator.upsert_nodes(args.nodes.clone()).await?;
            let report = coordinator.recover().await?;
            eprintln!(
                "fulva coordinator: map epoch {} from {}; recovery: {report:?}",
                coordinator.map().epoch,
                args.map_file.display()
            );
            coordinator
        }
        None => {
            let coordinator =
                Coordinator::bootstrap_with_tls(store, args.nodes.clone(), args.shards, false, tls).await?;
            eprintln!("fulva coordinator: new map of {} shards over {} nodes", args.shards, args.nodes.len());
            coordinator
        }
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind the control endpoint {}: {e}", args.listen))?;
    let stop = CancellationToken::new();
    let coordinator = Arc::new(coordinator);
    let watch = tokio::spawn(watch_nodes(coordinator.clone(), args.liveness(), None, stop.clone()));
    let task = spawn_control_endpoint(listener, coordinator, stop.clone());
    println!("READY {}", args.listen);
    shutdown.await;
    stop.cancel();
    let _ = task.await;
    let _ = watch.await;
    Ok(())
}
