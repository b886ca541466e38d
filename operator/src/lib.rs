//! The Fulva coordinator: the one writer of the shard map.
//!
//! It holds the map and its epoch, persists every change with compare-and-set
//! on the epoch ([`MapStore`]; a file with atomic replace in local mode),
//! assigns ranges to nodes over gRPC, and serves the `ShardMapService` that
//! clients use as their control endpoint. The Kubernetes operator reuses it.
//!
//! # Layout
//! - [`map_store`]: persistence of the map ([`FileMapStore`], [`MemoryMapStore`]).
//! - [`coordinator`]: [`Coordinator`], map changes and node assignment.
//! - [`moves`]: moving and splitting ranges live.
//! - [`controller`]: the FulvaCluster reconciler (objects, scaling, status, Events, finalizer).
//! - [`crd`]: the FulvaCluster custom resource (spec, status, validation).
//! - [`k8s_store`]: the shard map in a ConfigMap (compare-and-set on resourceVersion).
//! - [`leader`]: leader election with a Lease.
//! - [`policy`]: the rebalance policy users declare in YAML.
//! - [`planner`]: the pure planner (cluster load + policy → moves and splits).
//! - [`load`]: per-range load sampled from the nodes, smoothed.
//! - [`rebalancer`]: the loop that samples, plans and runs moves (local mode and operator).
//! - [`rebalance_crd`]: the FulvaRebalance custom resource (one-shot rebalance, proposal, approval).
//! - [`probe`]: a probe client measuring the latency clients see (for the adaptive rate).
//! - [`rebalance_job`]: a one-shot rebalance's proposal and the job that runs it (throttle, adaptive rate).
//! - [`recovery`]: after a restart, finishing or undoing the moves a previous coordinator left.
//! - [`metrics`]: the operator's Prometheus metrics.
//! - [`app`]: the operator process (leader election, controller, control endpoint, health).
//! - [`admin`]: the `CoordinatorAdmin` gRPC service (moves and splits on request).
//! - [`service`]: the gRPC `ShardMapService`.

pub mod admin;
pub mod app;
pub mod controller;
pub mod coordinator;
pub mod crd;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod k8s;
pub mod k8s_store;
pub mod leader;
pub mod load;
pub mod map_store;
pub mod metrics;
pub mod moves;
pub mod planner;
pub mod policy;
pub mod probe;
pub mod rebalance_crd;
pub mod rebalance_job;
pub mod rebalancer;
pub mod recovery;
pub mod service;

pub use admin::AdminService;
pub use coordinator::{Coordinator, CoordinatorError};
pub use map_store::{FileMapStore, MapStore, MapStoreError, MemoryMapStore};
pub use moves::{MoveOptions, MoveReport};
pub use policy::{RebalanceMode, RebalancePolicy};
pub use rebalancer::{MoveRecord, RebalanceStatus, Rebalancer};
pub use service::{spawn_control_endpoint, ClusterDirectory, ShardMapServiceImpl};
