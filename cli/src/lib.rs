//! The `fulva` command's library: everything the binary runs, so tests can
//! drive it.
//!
//! # Layout
//! - [`local`]: [`LocalCluster`], a whole cluster in one process.
//! - [`workload`]: YCSB mixes, zipfian keys, closed-loop runner and recorder.
//! - [`sessions`]: workload sessions for Fulva and Redis.
//! - [`stress`]: randomized moves under load, checked for linearizability.
//! - [`up`]: `fulva up`.
//! - [`kv`]: `fulva kv get|put|del|mget`.
//! - [`datapath`]: `--transport` (kernel UDP or DPDK) for commands that open a client.
//! - [`admin`]: `fulva map`, `fulva migrate`, `fulva split`.
//! - [`bench`]: `fulva bench kv`.
//! - [`check`]: `fulva check`, the linearizability checker.
//! - [`coordinator`]: `fulva coordinator`, the coordinator as its own process.

pub mod admin;
pub mod bench;
pub mod check;
pub mod coordinator;
pub mod datapath;
pub mod kv;
pub mod local;
pub mod sessions;
pub mod stress;
pub mod up;
pub mod workload;

pub use local::{LocalCluster, LocalClusterConfig};
