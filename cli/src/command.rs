//! The `fulva` command line: every subcommand and its flags (clap), so the
//! binary, the flag tables in the docs and their test share one definition.

use crate::{bench, kv, up};
use clap::{Parser, Subcommand};

/// Fulva: an in-memory key-value store whose shards move live.
#[derive(Parser, Debug)]
#[command(name = "fulva", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start a local cluster (nodes, coordinator, load generator) and show it live.
    Up(up::UpArgs),
    /// Print a running cluster's shard map.
    Map(crate::admin::MapArgs),
    /// Move a hash range to another node while clients keep using it.
    Migrate(crate::admin::MigrateArgs),
    /// Abort a running move: the range goes back to its source with every write kept.
    Abort(crate::admin::AbortArgs),
    /// Change the bandwidth limit of a running move.
    Throttle(crate::admin::ThrottleArgs),
    /// Split the shard holding a hash so that a shard starts there.
    Split(crate::admin::SplitArgs),
    /// Move every range off a node with live moves, so it can be stopped
    /// (an upgrade, maintenance) without losing anything.
    Drain(crate::admin::DrainArgs),
    /// Read and write keys of a running cluster.
    Kv(kv::KvArgs),
    /// Run a benchmark.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
    /// Check a recorded history (JSON lines) for linearizability; exit code 1 if it is not.
    Check {
        /// History file written by the client's recorder.
        history: std::path::PathBuf,
    },
    /// Randomized soak: many live moves and splits under faults while clients
    /// hammer hot keys; the recorded history is checked for linearizability.
    Soak(crate::stress::SoakArgs),
    /// Run the coordinator alone over nodes started with `fulva node` (map in a
    /// file; a restart recovers half-done moves).
    Coordinator(crate::coordinator::CoordinatorArgs),
    /// Make a cluster's certificate authority and the certificates of its
    /// parts (coordinator, admin, client, nodes) for mutual TLS.
    Certs(crate::tls::CertsArgs),
    /// Run one storage node (same as `fulva-kvnode`).
    Node {
        #[command(flatten)]
        node: fulva_kvnode::NodeConfig,
    },
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Closed-loop key-value load (YCSB mixes), optionally against Redis too.
    Kv(bench::kv::KvBenchArgs),
    /// The paper's experiment: move most of a loaded node's range under load, every strategy.
    Migration(bench::migration::MigrationBenchArgs),
}
