//! Fulva on one machine: a whole cluster in one process, the load that
//! drives it, and the checks that judge what it did. `fulva up`, `fulva
//! bench`, `fulva soak` and every crate's multi-node tests run on this, so
//! the tests exercise the same code a user runs.
//!
//! # Layout
//! - [`cluster`]: [`LocalCluster`] (nodes, coordinator, control endpoint in
//!   one process) and [`ControlPlane`] (the coordinator alone, for nodes
//!   that run elsewhere).
//! - [`workload`]: YCSB mixes, zipfian keys, the closed-loop runner
//!   ([`workload::run_closed_loop`], with a per-sample hook) and the latency recorder.
//! - [`sessions`]: one client's view of the store under load, for Fulva and Redis.
//! - [`hiccup`]: a thread that notes when the machine itself did not run it (for telling
//!   a system's stalls from the machine's).
//! - [`check`]: the linearizability checker over a recorded history.
//! - [`stress`]: randomized live moves under load, checked for linearizability.
//! - [`process`]: child processes killed by PID on drop, a node in its own
//!   process, a process's CPU time.
//! - [`telemetry`]: logging set-up for binaries and tests.

pub mod check;
pub mod cluster;
pub mod hiccup;
pub mod process;
pub mod sessions;
pub mod stress;
pub mod telemetry;
pub mod workload;

pub use cluster::{ControlPlane, LocalCluster, LocalClusterConfig};
pub use process::{ChildGuard, NodeProcess};
