//! What the reconciler needs from the clusters' running parts (coordinator,
//! rebalancer): bring one up to date with its pods and report on it.

use super::update::DrainState;
use crate::crd::{FulvaCluster, MoveStatus};
use crate::rebalance_crd::{FulvaRebalanceSpec, Proposal};
use fulva_coordinator::probe::ProbeError;
use fulva_coordinator::rebalance_job::{JobReport, ProposalError};
use fulva_coordinator::CoordinatorError;
use std::time::SystemTime;

/// Namespace and name of a FulvaCluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why a cluster's runtime could not do what the reconciler asked.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The cluster's coordinator is not running yet.
    #[error("cluster {0} is not serving yet")]
    NotServing(ClusterKey),
    /// No load sample has been taken yet.
    #[error("no load sample yet; the proposal follows within seconds")]
    NoLoadSample,
    /// Listing the kvnode pods failed.
    #[error("list pods: {0}")]
    ListPods(#[source] kube::Error),
    /// Recovery of the moves a previous operator left failed.
    #[error("recovery: {0}")]
    Recovery(#[source] CoordinatorError),
    /// Bootstrapping the shard map failed.
    #[error("bootstrap: {0}")]
    Bootstrap(#[source] CoordinatorError),
    /// The coordinator refused or failed a step.
    #[error(transparent)]
    Coordinator(#[from] CoordinatorError),
    /// The rebalance cannot be planned or run.
    #[error(transparent)]
    Proposal(#[from] ProposalError),
    /// The latency probe of an adaptive rebalance could not start.
    #[error(transparent)]
    Probe(#[from] ProbeError),
}

/// Something worth an Event on the FulvaCluster.
#[derive(Clone, Debug, PartialEq)]
pub struct RuntimeEvent {
    /// Warning (true) or Normal.
    pub warning: bool,
    /// Short CamelCase reason (MoveStarted, MoveFinished, MoveFailed, ...).
    pub reason: String,
    /// What happened, for people.
    pub note: String,
}

/// What a cluster's runtime reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuntimeReport {
    /// Whether the shard map exists and the nodes serve it.
    pub serving: bool,
    /// Shards in the map.
    pub shards: u32,
    /// Map epoch.
    pub map_epoch: u64,
    /// Moves running.
    pub moves: Vec<MoveStatus>,
    /// Imbalance score (max / mean node ops/s).
    pub imbalance: f64,
    /// When the last rebalance plan ran.
    pub last_rebalance: Option<SystemTime>,
    /// Of the draining nodes, those that own nothing any more.
    pub drained: Vec<u32>,
    /// Events since the last report.
    pub events: Vec<RuntimeEvent>,
    /// In proposal mode: the rebalancer has a plan waiting (the reconciler
    /// turns it into a FulvaRebalance).
    pub proposal_pending: bool,
    /// The latest ranges declared lost (a node restarted empty or stayed
    /// gone), for the DataLoss condition; `None` when this runtime declared none.
    pub last_loss: Option<LossSummary>,
}

/// Ranges declared lost, as the DataLoss condition names them.
#[derive(Clone, Debug, PartialEq)]
pub struct LossSummary {
    /// When.
    pub at: SystemTime,
    /// What, for people: the node, the cause, the ranges and where they are served now.
    pub text: String,
}

/// A one-shot rebalance as its runtime reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct JobStatus {
    /// Counts, phase and rate.
    pub report: JobReport,
    /// The moves in flight, with progress and ETA.
    pub current: Vec<MoveStatus>,
    /// Bytes the moves in flight have applied so far.
    pub in_flight_bytes: u64,
}

/// The running parts of every cluster the operator drives.
#[tonic::async_trait]
pub trait Runtimes: Send + Sync + 'static {
    /// Brings the runtime of `cluster` (the resource `fc`) up to date:
    /// `replicas` kvnode pods exist (or are coming), `draining` of them must
    /// give their ranges away. `tls`: the operator's identity towards the
    /// cluster's nodes (none: an operator run with `--insecure`).
    async fn sync(
        &self,
        cluster: &ClusterKey,
        fc: &FulvaCluster,
        replicas: u32,
        draining: &[u32],
        tls: Option<fulva_tls::Tls>,
    ) -> Result<RuntimeReport, RuntimeError>;

    /// Stops the runtime of a deleted cluster (moves in flight roll back).
    async fn stop(&self, cluster: &ClusterKey);

    /// Where the drain of `node` (before its pod is replaced) stands; starts
    /// it when none runs, or again after a failure when `retry` is set.
    /// Automatic rebalancing holds while any drain runs.
    async fn drain_node(&self, cluster: &ClusterKey, node: u32, retry: bool) -> DrainState;

    /// The pod of `node` was replaced: it may receive ranges again.
    async fn release_node(&self, cluster: &ClusterKey, node: u32);

    /// Plans the one-shot rebalance `spec` of `cluster` from its current load.
    async fn propose(
        &self,
        cluster: &ClusterKey,
        spec: &FulvaRebalanceSpec,
    ) -> Result<Proposal, RuntimeError>;

    /// Starts (or, after an operator restart, resumes) the rebalance `name`
    /// running `proposal`; the cluster's automatic rebalancing holds meanwhile.
    async fn start_rebalance(
        &self,
        cluster: &ClusterKey,
        name: &str,
        spec: &FulvaRebalanceSpec,
        proposal: &Proposal,
    ) -> Result<(), RuntimeError>;

    /// The rebalance `name`, if this operator runs (or ran) it.
    async fn rebalance_status(&self, cluster: &ClusterKey, name: &str) -> Option<JobStatus>;

    /// Applies the bandwidth settings of `spec` to the rebalance `name`
    /// (moves in flight included) when they changed.
    async fn set_rebalance_rate(&self, cluster: &ClusterKey, name: &str, spec: &FulvaRebalanceSpec);

    /// Stops the rebalance `name`: moves in flight finish, no new one starts.
    async fn stop_rebalance(&self, cluster: &ClusterKey, name: &str);
}
