//! A whole Fulva cluster in one process: nodes, the coordinator and its
//! control endpoint. `fulva up`, `fulva bench` and the multi-node tests all
//! run on this. [`ControlPlane`] is the coordinator alone, for nodes that
//! run elsewhere (other processes, network namespaces, DPDK ports).

use fulva_client::{Client, ClientConfig, ClientTraps};
use fulva_coordinator::metrics::OperatorMetrics;
use fulva_coordinator::recovery::RecoveryReport;
use fulva_coordinator::{spawn_control_endpoint, RebalancePolicy, Rebalancer};
use fulva_coordinator::{Coordinator, FileMapStore, MapStore, MemoryMapStore};
use fulva_kvnode::{NodeConfig, NodeHandle};
use fulva_proto::transport::{FaultConfig, FaultStats, FaultyTransport, UdpTransport};
use fulva_proto::{HashRange, NodeInfo, Op};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Shape of a local cluster.
#[derive(Clone, Debug)]
pub struct LocalClusterConfig {
    /// Storage nodes to start.
    pub nodes: u32,
    /// Shards the hash space starts with (spread round-robin).
    pub shards: u32,
    /// Settings every node starts from (id and ports are filled in per node).
    /// With `node.tls_dir` set, the whole cluster runs on mutual TLS: the
    /// directory gets a CA (kept if there is one) and fresh certificates for
    /// every node, the coordinator, an admin and a client.
    pub node: NodeConfig,
    /// Address of the control endpoint (shard-map service).
    pub control_addr: SocketAddr,
    /// Where the coordinator keeps the map (`None`: in memory).
    pub map_file: Option<PathBuf>,
    /// Loss, duplication and reordering injected on the nodes' data-path
    /// sockets and on those of clients made by [`LocalCluster::faulty_client`].
    pub faults: Option<FaultConfig>,
}

impl Default for LocalClusterConfig {
    fn default() -> Self {
        LocalClusterConfig {
            nodes: 3,
            shards: 12,
            node: NodeConfig::loopback(0),
            control_addr: "127.0.0.1:0".parse().expect("valid address"),
            map_file: None,
            faults: None,
        }
    }
}

/// A running local cluster.
pub struct LocalCluster {
    /// The storage nodes.
    pub nodes: Vec<NodeHandle>,
    /// The coordinator.
    pub coordinator: Arc<Coordinator>,
    /// Bound address of the control endpoint.
    pub control_addr: SocketAddr,
    shutdown: CancellationToken,
    control_task: JoinHandle<()>,
    faults: Option<FaultConfig>,
    store: Arc<dyn MapStore>,
    tls_dir: Option<PathBuf>,
}

impl LocalCluster {
    /// Starts the nodes, bootstraps the shard map and serves the control endpoint.
    pub async fn start(config: LocalClusterConfig) -> anyhow::Result<LocalCluster> {
        anyhow::ensure!(config.nodes >= 1, "a cluster needs at least one node");
        let tls = match &config.node.tls_dir {
            Some(dir) => {
                let mut roles =
                    vec![fulva_tls::Role::Coordinator, fulva_tls::Role::Admin, fulva_tls::Role::Client];
                roles.extend((0..config.nodes).map(fulva_tls::Role::Node));
                fulva_tls::generate_dir(dir, "local", &roles, fulva_tls::DEFAULT_VALIDITY)?;
                Some(fulva_tls::Tls::from_dir(dir, fulva_tls::Role::Coordinator)?)
            }
            None => None,
        };
        let mut nodes = Vec::new();
        for id in 0..config.nodes {
            let node_config = NodeConfig {
                node_id: id,
                data_addr: with_port(config.node.data_addr, 0),
                control_addr: with_port(config.node.control_addr, 0),
                metrics_addr: with_port(config.node.metrics_addr, 0),
                transfer_addr: with_port(config.node.transfer_addr, 0),
                ..config.node.clone()
            };
            let node = match config.faults {
                None => fulva_kvnode::start(node_config).await?,
                Some(faults) => {
                    let udp = UdpTransport::bind(node_config.data_addr, false)?;
                    let faulty = FaultyTransport::new(
                        udp,
                        FaultConfig { seed: faults.seed ^ u64::from(id), ..faults },
                    );
                    fulva_kvnode::start_on(node_config, vec![faulty], CancellationToken::new()).await?
                }
            };
            nodes.push(node);
        }
        let infos = nodes
            .iter()
            .map(|n| NodeInfo { id: n.node_id, data_addr: n.data_addr, control_addr: n.control_addr })
            .collect();
        let store: Arc<dyn MapStore> = match &config.map_file {
            Some(path) => Arc::new(FileMapStore::new(path.clone())),
            None => Arc::new(MemoryMapStore::default()),
        };
        // Nodes of a local cluster are new processes' memory: an old map names
        // old addresses, so a fresh map replaces it.
        let coordinator =
            Arc::new(Coordinator::bootstrap_with_tls(store.clone(), infos, config.shards, true, tls).await?);
        let listener = tokio::net::TcpListener::bind(config.control_addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind the control endpoint {}: {e}", config.control_addr))?;
        let control_addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let control_task = spawn_control_endpoint(listener, coordinator.clone(), shutdown.clone());
        Ok(LocalCluster {
            nodes,
            coordinator,
            control_addr,
            shutdown,
            control_task,
            faults: config.faults,
            store,
            tls_dir: config.node.tls_dir.clone(),
        })
    }

    /// Kills the coordinator and its control endpoint (no clean-up: moves
    /// in flight stop wherever they are), starts a new one from the stored
    /// map on the same address, and lets it recover.
    pub async fn restart_coordinator(&mut self) -> anyhow::Result<RecoveryReport> {
        self.shutdown.cancel();
        self.control_task.abort();
        let _ = (&mut self.control_task).await;
        let coordinator = Arc::new(
            Coordinator::open_with_tls(self.store.clone(), self.coordinator.tls().cloned())
                .await?
                .ok_or_else(|| anyhow::anyhow!("no shard map is stored"))?,
        );
        let listener = tokio::net::TcpListener::bind(self.control_addr).await?;
        self.shutdown = CancellationToken::new();
        self.control_task = spawn_control_endpoint(listener, coordinator.clone(), self.shutdown.clone());
        self.coordinator = coordinator;
        Ok(self.coordinator.recover().await?)
    }

    /// The control endpoint as a client connects to it.
    pub fn control_endpoint(&self) -> String {
        format!("http://{}", self.control_addr)
    }

    /// A client of this cluster with default settings.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(self.client_config()).await?)
    }

    /// Default settings of a client of this cluster (with the client
    /// certificate when the cluster runs on TLS).
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new(self.control_endpoint());
        config.tls = self
            .tls_dir
            .as_deref()
            .map(|dir| fulva_tls::TlsFiles::in_dir(dir, fulva_tls::Role::Client).into());
        config
    }

    /// The directory of the cluster's TLS files, when it runs on TLS.
    pub fn tls_dir(&self) -> Option<&std::path::Path> {
        self.tls_dir.as_deref()
    }

    /// A client whose sockets suffer the cluster's injected faults (seeded by `seed`).
    pub async fn faulty_client(&self, seed: u64) -> anyhow::Result<Client<FaultyTransport<UdpTransport>>> {
        Ok(self.faulty_client_with_stats(seed, ClientTraps::default()).await?.0)
    }

    /// [`faulty_client`](Self::faulty_client) with `traps` switched on, and
    /// the counters of what its sockets injected.
    pub async fn faulty_client_with_stats(
        &self,
        seed: u64,
        traps: ClientTraps,
    ) -> anyhow::Result<(Client<FaultyTransport<UdpTransport>>, Vec<Arc<FaultStats>>)> {
        let faults = self.faults.unwrap_or_default();
        let mut config = self.client_config();
        config.traps = traps;
        config.initial_timeout = std::time::Duration::from_millis(10);
        config.deadline = std::time::Duration::from_secs(20);
        let transports = (0..2)
            .map(|i| {
                let udp = UdpTransport::bind(config.bind_addr, false)?;
                Ok(FaultyTransport::new(
                    udp,
                    FaultConfig { seed: faults.seed.wrapping_mul(31).wrapping_add(seed * 2 + i), ..faults },
                ))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let stats = transports.iter().map(FaultyTransport::stats).collect();
        Ok((Client::with_transports(config, transports).await?, stats))
    }

    /// Starts the rebalancer (the operator's planner and executor) on this
    /// cluster under `policy`; it stops, rolling back its moves in flight,
    /// when `shutdown` is cancelled and the returned task is awaited.
    pub fn start_rebalancer(
        &self,
        policy: RebalancePolicy,
        shutdown: CancellationToken,
    ) -> (Arc<Rebalancer>, JoinHandle<()>) {
        self.start_rebalancer_with(policy, Arc::new(OperatorMetrics::new()), shutdown)
    }

    /// [`start_rebalancer`](Self::start_rebalancer) exporting into `metrics`.
    pub fn start_rebalancer_with(
        &self,
        policy: RebalancePolicy,
        metrics: Arc<OperatorMetrics>,
        shutdown: CancellationToken,
    ) -> (Arc<Rebalancer>, JoinHandle<()>) {
        let rebalancer = Rebalancer::new(self.coordinator.clone(), policy, metrics);
        let task = tokio::spawn(rebalancer.clone().run(shutdown));
        (rebalancer, task)
    }

    /// Client requests served so far by each node (every range it serves now).
    pub fn served_ops(&self) -> Vec<u64> {
        let by_range = self.served_ops_by_range();
        self.nodes
            .iter()
            .map(|n| by_range.iter().filter(|(k, _)| k.0 == n.node_id).map(|(_, v)| v).sum())
            .collect()
    }

    /// Client requests served so far per (node, range it serves now). A
    /// range's counters start when the node takes it.
    pub fn served_ops_by_range(&self) -> std::collections::HashMap<(u32, HashRange), u64> {
        let mut out = std::collections::HashMap::new();
        for node in &self.nodes {
            node.handler.ownership.for_each(|r| {
                let total =
                    [Op::Get, Op::Put, Op::Delete, Op::MultiGet].iter().map(|op| r.metrics.ops(*op)).sum();
                out.insert((node.node_id, r.range), total);
            });
        }
        out
    }

    /// The node with id `id`.
    pub fn node(&self, id: u32) -> Option<&NodeHandle> {
        self.nodes.iter().find(|n| n.node_id == id)
    }

    /// Stops the control endpoint and every node.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        // Clients' map watches keep connections open; cut them after a grace period.
        let mut control_task = self.control_task;
        if tokio::time::timeout(fulva_kvnode::SHUTDOWN_GRACE, &mut control_task).await.is_err() {
            control_task.abort();
        }
        for node in self.nodes {
            node.shutdown().await;
        }
    }
}

fn with_port(addr: SocketAddr, port: u16) -> SocketAddr {
    SocketAddr::new(addr.ip(), port)
}

/// A coordinator with its control endpoint on loopback, over nodes that run
/// elsewhere; the endpoint stops when this is dropped.
pub struct ControlPlane {
    /// The coordinator.
    pub coordinator: Arc<Coordinator>,
    /// The control endpoint as a client connects to it (`http://ADDR`).
    pub endpoint: String,
    stop: CancellationToken,
}

impl ControlPlane {
    /// Bootstraps a map of `shards` shards over `nodes` (kept in memory) and
    /// serves it on a free loopback port.
    pub async fn start(nodes: Vec<NodeInfo>, shards: u32) -> anyhow::Result<ControlPlane> {
        let store = Arc::new(MemoryMapStore::default());
        let coordinator = Arc::new(Coordinator::bootstrap(store, nodes, shards, false).await?);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let stop = CancellationToken::new();
        spawn_control_endpoint(listener, coordinator.clone(), stop.clone());
        Ok(ControlPlane { coordinator, endpoint, stop })
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
