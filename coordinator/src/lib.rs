//! The Fulva coordinator: the one writer of the shard map, and everything
//! that decides and drives moves without Kubernetes.
//!
//! It holds the map and its epoch, persists every change with compare-and-set
//! on the epoch ([`MapStore`]; a file with atomic replace in local mode),
//! assigns ranges to nodes over gRPC, moves and splits them live, recovers
//! the moves a previous coordinator left, and serves the `ShardMapService`
//! that clients use as their control endpoint. The rebalancer samples the
//! nodes' load and plans moves from a policy. `fulva up`, `fulva coordinator`
//! and the Kubernetes operator (`fulva-operator`) all run on this crate.
//!
//! # Layout
//! - [`map_store`]: persistence of the map ([`FileMapStore`], [`MemoryMapStore`]).
//! - [`coordinator`]: [`Coordinator`], map changes and node assignment.
//! - [`node_client`]: [`NodeClient`], the gRPC calls to a node, each failure decoded once into a [`NodeError`].
//! - [`moves`]: moving and splitting ranges live (all three strategies).
//! - [`drain`]: moving every range off a node before it stops (upgrades, maintenance).
//! - [`liveness`]: nodes that restart or vanish: their ranges declared lost and served again, empty.
//! - [`recovery`]: after a restart, finishing or undoing the moves a previous coordinator left.
//! - [`service`]: the gRPC `ShardMapService` (the control endpoint).
//! - [`admin`]: the `CoordinatorAdmin` gRPC service (moves and splits on request).
//! - [`policy`]: the rebalance policy users declare in YAML.
//! - [`load`]: per-range load sampled from the nodes, smoothed.
//! - [`planner`]: the pure planner (cluster load + policy → moves and splits).
//! - [`rebalancer`]: the loop that samples, plans and runs moves.
//! - [`request`]: what a one-shot rebalance asks for, and the [`Proposal`](request::Proposal).
//! - [`rebalance_job`]: a one-shot rebalance's proposal and the job that runs it (throttle, adaptive rate).
//! - [`probe`]: a probe client measuring the latency clients see (for the adaptive rate).
//! - [`metrics`]: the coordinator's and operator's Prometheus metrics.

pub mod admin;
pub mod coordinator;
pub mod drain;
pub mod liveness;
pub mod load;
pub mod map_store;
pub mod metrics;
pub mod moves;
pub mod node_client;
pub mod planner;
pub mod policy;
pub mod probe;
pub mod rebalance_job;
pub mod rebalancer;
pub mod recovery;
pub mod request;
pub mod service;

pub use admin::AdminService;
pub use coordinator::{AbortReason, BootstrapError, Coordinator, CoordinatorError, RecoveryError};
pub use drain::{DrainError, DrainOptions, DrainProgress, DrainReport};
pub use liveness::{LivenessOptions, LossCause, RangeLoss};
pub use map_store::{FileMapStore, MapStore, MapStoreError, MemoryMapStore};
pub use moves::{MoveOptions, MoveReport, DEFAULT_HOT_KEYS};
pub use node_client::{NodeClient, NodeError, NodeErrorKind};
pub use policy::{RebalanceMode, RebalancePolicy};
pub use rebalancer::{MoveRecord, RebalanceStatus, Rebalancer};
pub use service::{spawn_control_endpoint, ClusterDirectory, ShardMapServiceImpl};
