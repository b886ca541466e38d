//! The Fulva storage node.
//!
//! A node keeps objects in memory, serves the data path (GET/PUT/DELETE/
//! MULTI_GET frames over a [`Transport`](fulva_proto::transport::Transport)),
//! answers requests for ranges it does not serve with a redirect and its epoch,
//! applies each write at most once, and takes range assignments from the
//! coordinator over gRPC. Metrics are served on `/metrics`.
//!
//! The public surface is re-exported here: [`start`] / [`run`] a node from a
//! [`NodeConfig`], and the types a test or a local cluster looks into
//! ([`NodeHandle`], [`Handler`], [`Ownership`], [`Store`]).
//!
//! # Layout (private modules)
//! - `config`: settings (flags and `FULVA_*` environment variables).
//! - `store`: the striped, versioned object store.
//! - `ownership/`: served ranges (`RangeRole` and its read and write rules),
//!   redirects, the shard-map epoch, and the state of a move coming in
//!   (`IncomingMove`, `MovePhase`).
//! - `records`: at-most-once completion records.
//! - `handler`: executes one request against the above.
//! - `server`: the data-path loop over a transport.
//! - `control`: the `NodeControl` gRPC service (errors mapped to gRPC codes in one place).
//! - `migration/`: both ends of a live move, for all three strategies (the pull
//!   over the TCP transfer stream or gRPC, the source's batches with hot keys
//!   first, the rate limiter, on-demand fetches).
//! - `heat`: the sampled read-heat sketch that names a range's hottest keys.
//! - `metrics`, `http`: Prometheus metrics and the HTTP endpoint.
//!
//! Modules depend downwards only: `store`, `metrics` ← `ownership` ←
//! `handler` ← `migration` ← `control`, `server` (checked by
//! `tests/layering.rs`).

#![warn(missing_docs)]

mod config;
mod control;
mod handler;
mod heat;
mod http;
mod metrics;
mod migration;
mod ownership;
mod records;
mod server;
mod store;

pub use config::{
    eal_args, pci_device_env, MigrationTransfer, NodeConfig, TransportKind, DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_KEY_BYTES, DEFAULT_MAX_VALUE_BYTES,
};
pub use handler::{Handler, Limits};
pub use heat::{HeatSketch, HEAT_SLOTS, SAMPLE_EVERY};
pub use metrics::{NodeMetrics, RangeMetrics, Side as MigrationSide};
pub use migration::pull_from;
pub use ownership::{IncomingMove, MoveEvent, MovePhase, PassStart, PullError, TrapSwitches};
pub use ownership::{OwnedRange, Ownership, OwnershipError, RangeRole};
pub use store::{Object, SizeDelta, Store, WriteResult};

use fulva_proto::grpc::node_control_server::NodeControlServer;
use fulva_proto::transport::{Transport, UdpTransport};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long a stopping node waits for open gRPC and HTTP connections to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Failure to start a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A listening socket could not be bound.
    #[error("cannot bind the {what} address {addr}: {source}")]
    Bind {
        /// Which endpoint.
        what: &'static str,
        /// Address asked for.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// Settings make no sense.
    #[error("invalid settings: {0}")]
    Config(String),
}

/// A running node.
pub struct NodeHandle {
    /// Node id.
    pub node_id: u32,
    /// Bound data-path address.
    pub data_addr: SocketAddr,
    /// Bound gRPC control address.
    pub control_addr: SocketAddr,
    /// Bound HTTP (metrics) address.
    pub metrics_addr: SocketAddr,
    /// Bound transfer-stream address.
    pub transfer_addr: SocketAddr,
    /// The node's state, for in-process inspection.
    pub handler: Arc<Handler>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    /// A data path served outside the runtime (the DPDK poller), kept alive
    /// as long as the node.
    data_path: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl NodeHandle {
    /// Stops every server of the node and waits for them: up to
    /// [`SHUTDOWN_GRACE`] for open control connections to finish, then they are cut.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        drop(self.data_path.take());
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            tracing::warn!(
                node = self.node_id,
                "connections still open after the grace period; closing them"
            );
            self.tasks.shutdown().await;
        }
    }

    /// Waits until the node stops (after its token is cancelled).
    pub async fn stopped(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Binds every endpoint of a node and starts serving.
pub async fn start(config: NodeConfig) -> Result<NodeHandle, NodeError> {
    start_with_shutdown(config, CancellationToken::new()).await
}

async fn start_with_shutdown(
    config: NodeConfig,
    shutdown: CancellationToken,
) -> Result<NodeHandle, NodeError> {
    if config.workers == 0 {
        return Err(NodeError::Config("--workers must be at least 1".into()));
    }
    let bind = |what, addr| move |source| NodeError::Bind { what, addr, source };
    let first = UdpTransport::bind(config.data_addr, true).map_err(bind("data", config.data_addr))?;
    let data_addr = Transport::local_addr(&first).map_err(bind("data", config.data_addr))?;
    let mut transports = vec![first];
    for _ in 1..config.workers {
        transports.push(UdpTransport::bind(data_addr, true).map_err(bind("data", data_addr))?);
    }
    start_on(config, transports, shutdown).await
}

/// Starts a node whose data path runs on `transports` (one worker each), for
/// transports other than kernel UDP (DPDK, fault injection in tests).
pub async fn start_on<T: Transport>(
    config: NodeConfig,
    transports: Vec<T>,
    shutdown: CancellationToken,
) -> Result<NodeHandle, NodeError> {
    let bind = |what, addr| move |source| NodeError::Bind { what, addr, source };
    let data_addr = transports
        .first()
        .ok_or_else(|| NodeError::Config("a node needs at least one transport".into()))?
        .local_addr()
        .map_err(bind("data", config.data_addr))?;
    let tls = config.load_tls().map_err(NodeError::Config)?;
    let handler = Arc::new(Handler::new(&config).with_tls(tls));
    let mut tasks = JoinSet::new();
    for transport in transports {
        tasks.spawn(server::serve(transport, handler.clone(), shutdown.clone()));
    }
    start_services(config, handler, data_addr, tasks, None, shutdown).await
}

/// Starts a node whose data path runs to completion on DPDK: the transport's
/// poller thread executes every request and sends the reply itself.
#[cfg(feature = "dpdk")]
pub async fn start_dpdk(
    config: NodeConfig,
    dpdk: fulva_dpdk::DpdkConfig,
    shutdown: CancellationToken,
) -> Result<NodeHandle, NodeError> {
    let tls = config.load_tls().map_err(NodeError::Config)?;
    let handler = Arc::new(Handler::new(&config).with_tls(tls));
    let serving = handler.clone();
    let data_addr = SocketAddr::V4(dpdk.local);
    // Only the poller thread calls the handler: the lock is never contended.
    let reassembler =
        parking_lot::Mutex::new(fulva_proto::fragment::Reassembler::new(handler.reassembly_limits()));
    let transport = fulva_dpdk::DpdkTransport::start_serving(
        dpdk,
        Arc::new(move |datagram, from, out| {
            let mut reassembler = reassembler.lock();
            let answered = serving.handle_datagram(&mut reassembler, from, datagram, out);
            serving.metrics.count_reassembly(reassembler.take_stats());
            answered
        }),
    )
    .map_err(|e| NodeError::Config(format!("dpdk: {e}")))?;
    start_services(config, handler, data_addr, JoinSet::new(), Some(Box::new(transport)), shutdown).await
}

/// Starts the control and metrics endpoints of a node whose data path is set up.
async fn start_services(
    config: NodeConfig,
    handler: Arc<Handler>,
    data_addr: SocketAddr,
    mut tasks: JoinSet<()>,
    data_path: Option<Box<dyn std::any::Any + Send + Sync>>,
    shutdown: CancellationToken,
) -> Result<NodeHandle, NodeError> {
    let bind = |what, addr| move |source| NodeError::Bind { what, addr, source };
    if !config.transparent_huge_pages {
        if let Err(err) = disable_transparent_huge_pages() {
            tracing::warn!(error = %err, "could not turn transparent huge pages off for this process");
        }
    }

    let transfer = tokio::net::TcpListener::bind(config.transfer_addr)
        .await
        .map_err(bind("transfer", config.transfer_addr))?;
    let transfer_addr = transfer.local_addr().map_err(bind("transfer", config.transfer_addr))?;
    let server_tls = handler.tls.as_ref().map(|t| t.server.clone());
    if let Some(server) = &server_tls {
        let refused = handler.metrics.tls_handshakes_refused.clone();
        server.count_refusals_with(move || refused.inc());
    }
    if server_tls.is_none() {
        tracing::warn!("control service and transfer stream run without TLS (--insecure): anyone who can reach them can read, move or drop this node's data");
    }
    let transfers = fulva_tls::incoming(transfer, server_tls.clone());
    tasks.spawn(migration::serve_transfers(transfers, handler.clone(), shutdown.clone()));

    let control = tokio::net::TcpListener::bind(config.control_addr)
        .await
        .map_err(bind("control", config.control_addr))?;
    let control_addr = control.local_addr().map_err(bind("control", config.control_addr))?;
    let service = NodeControlServer::new(control::ControlService::new(handler.clone(), transfer_addr.port()))
        .max_decoding_message_size(fulva_proto::MAX_CONTROL_MESSAGE)
        .max_encoding_message_size(fulva_proto::MAX_CONTROL_MESSAGE);
    let token = shutdown.clone();
    tasks.spawn(async move {
        let incoming = fulva_tls::incoming(control, server_tls);
        if let Err(err) = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, token.cancelled_owned())
            .await
        {
            tracing::error!(error = %err, "control service failed");
        }
    });

    let metrics = tokio::net::TcpListener::bind(config.metrics_addr)
        .await
        .map_err(bind("metrics", config.metrics_addr))?;
    let metrics_addr = metrics.local_addr().map_err(bind("metrics", config.metrics_addr))?;
    let router = http::router(handler.clone());
    let token = shutdown.clone();
    tasks.spawn(async move {
        if let Err(err) = axum::serve(metrics, router).with_graceful_shutdown(token.cancelled_owned()).await {
            tracing::error!(error = %err, "metrics endpoint failed");
        }
    });

    let (h, token) = (handler.clone(), shutdown.clone());
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                _ = tick.tick() => {
                    h.metrics.client_records.set(h.records.expire() as i64);
                    let (clients, records) = h.records.take_shed();
                    h.metrics.client_records_shed.with_label_values(&["clients"]).inc_by(clients);
                    h.metrics.client_records_shed.with_label_values(&["records"]).inc_by(records);
                }
            }
        }
    });

    tracing::info!(node = config.node_id, %data_addr, %control_addr, %metrics_addr, %transfer_addr, workers = config.workers, incarnation = format!("{:016x}", handler.incarnation), "node started");
    Ok(NodeHandle {
        node_id: config.node_id,
        data_addr,
        control_addr,
        metrics_addr,
        transfer_addr,
        handler,
        shutdown,
        tasks,
        data_path,
    })
}

/// Asks the kernel not to back this process's memory with transparent huge
/// pages (`PR_SET_THP_DISABLE`; the allocator asks for them with
/// `MADV_HUGEPAGE`, and the flag overrides that for every later fault). It
/// holds for the whole process and its children, not only the node.
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes one integer argument and the unused
    // ones must be zero; it touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether transparent huge pages are off for this process (`PR_GET_THP_DISABLE`).
pub fn transparent_huge_pages_disabled() -> std::io::Result<bool> {
    // SAFETY: PR_GET_THP_DISABLE takes no argument and returns the flag.
    let rc = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc == 1)
    }
}

/// Runs a node until `signal()` resolves, then stops it when it holds
/// nothing ([`NodeHandle::stop_when_empty`], for at most
/// `config.shutdown_wait_secs`; a second `signal()` stops it at once).
pub async fn run<S, F>(config: NodeConfig, mut signal: S) -> Result<(), NodeError>
where
    S: FnMut() -> F,
    F: Future<Output = ()>,
{
    if config.tls_dir.is_none() && !config.insecure {
        return Err(NodeError::Config(
            "the control service needs TLS: give --tls-dir DIR (files as `fulva certs` writes them) or run without it with --insecure".into(),
        ));
    }
    let wait = Duration::from_secs(config.shutdown_wait_secs);
    if config.transport == config::TransportKind::Dpdk {
        let args =
            config::eal_args(config.sriov_resource.as_deref(), &config.eal_args, |v| std::env::var(v).ok())
                .map_err(NodeError::Config)?;
        return run_dpdk(config, args, wait, signal).await;
    }
    let node = start(config).await?;
    signal().await;
    node.stop_when_empty(wait, signal()).await;
    Ok(())
}

impl NodeHandle {
    /// The end of a node told to stop (SIGTERM, Ctrl-C): while it holds
    /// ranges it reports not ready and keeps serving them, and it stops once
    /// they have been moved away, after `wait`, or at `now` (a second
    /// signal), whichever comes first. What it still held is logged: it is
    /// lost with the process.
    pub async fn stop_when_empty(self, wait: Duration, now: impl Future<Output = ()>) {
        let handler = self.handler.clone();
        handler.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        let held = || handler.ownership.ranges();
        if !held().is_empty() && !wait.is_zero() {
            tracing::warn!(
                node = self.node_id,
                ranges = held().len(),
                wait_secs = wait.as_secs(),
                "told to stop while holding ranges: not ready, serving them until they are moved away \
                 (a second signal stops at once)"
            );
            let empty = async {
                while !held().is_empty() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            tokio::select! {
                () = empty => tracing::info!(node = self.node_id, "every range moved away"),
                () = tokio::time::sleep(wait) => {}
                () = now => {}
            }
        }
        let left = held();
        if left.is_empty() {
            tracing::info!(node = self.node_id, "shutting down, holding nothing");
        } else {
            let objects: i64 = {
                let mut n = 0;
                handler.ownership.for_each(|r| n += r.metrics.objects.get().max(0));
                n
            };
            let ranges: Vec<String> = left.iter().map(ToString::to_string).collect();
            tracing::error!(
                node = self.node_id,
                objects,
                ranges = %ranges.join(" "),
                "shutting down while holding ranges: their objects are lost"
            );
        }
        self.shutdown().await;
    }
}

/// Runs the node with its data path on DPDK (the control plane and bulk
/// migration stay on the kernel's TCP).
#[cfg(feature = "dpdk")]
async fn run_dpdk<S, F>(
    config: NodeConfig,
    eal_args: Vec<String>,
    wait: Duration,
    mut signal: S,
) -> Result<(), NodeError>
where
    S: FnMut() -> F,
    F: Future<Output = ()>,
{
    let port = config
        .dpdk_port
        .clone()
        .or_else(|| eal_args.windows(2).find(|w| w[0] == "-a").map(|w| w[1].clone()))
        .ok_or_else(|| NodeError::Config("dpdk: name the port (--dpdk-port) or an SR-IOV resource".into()))?;
    let SocketAddr::V4(local) = config.data_addr else {
        return Err(NodeError::Config("dpdk: the data address must be IPv4".into()));
    };
    tracing::info!(%port, %local, eal = %eal_args.join(" "), "starting the DPDK data path");
    let dpdk =
        fulva_dpdk::DpdkConfig { mtu: config.dpdk_mtu, ..fulva_dpdk::DpdkConfig::new(eal_args, port, local) };
    let node = start_dpdk(config, dpdk, CancellationToken::new()).await?;
    signal().await;
    node.stop_when_empty(wait, signal()).await;
    Ok(())
}

#[cfg(not(feature = "dpdk"))]
async fn run_dpdk<S, F>(
    _config: NodeConfig,
    eal_args: Vec<String>,
    _wait: Duration,
    _signal: S,
) -> Result<(), NodeError>
where
    S: FnMut() -> F,
    F: Future<Output = ()>,
{
    Err(NodeError::Config(format!(
        "this kvnode was built without the `dpdk` feature (cargo build -p fulva-kvnode --features dpdk); \
         EAL arguments would be: {}",
        eal_args.join(" ")
    )))
}
