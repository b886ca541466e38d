//! The Fulva Kubernetes operator: it watches FulvaCluster and FulvaRebalance
//! resources and runs a [`fulva_coordinator::Coordinator`] per cluster, with
//! the shard map kept in a ConfigMap and one active replica chosen by a Lease.
//! Everything that decides and drives moves lives in `fulva-coordinator`;
//! this crate is the Kubernetes side only.
//!
//! # Layout
//! - [`crd`]: the FulvaCluster custom resource (spec, status, validation).
//! - [`rebalance_crd`]: the FulvaRebalance custom resource (one-shot rebalance, proposal, approval).
//! - [`controller`]: the reconcilers (objects, scaling, status, Events, finalizer), behind the
//!   [`controller::Runtimes`] seam; `controller::kube_runtimes` is its adapter to the coordinator.
//! - [`k8s_store`]: the shard map in a ConfigMap (compare-and-set on resourceVersion).
//! - [`leader`]: leader election with a Lease.
//! - [`k8s`]: small helpers over the Kubernetes API.
//! - [`app`]: the operator process (leader election, controller, control endpoint, health).
//! - binaries: `fulva-operator` (the operator), `crdgen` (writes `crds/`).

pub mod app;
pub mod controller;
pub mod crd;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod k8s;
pub mod k8s_store;
pub mod leader;
pub mod rebalance_crd;
