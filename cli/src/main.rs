//! `fulva`: run a local cluster, read and write keys, benchmark.

use clap::{Parser, Subcommand};

/// mimalloc frees memory allocated by another thread without taking that
/// thread's arena lock: dropping a moved range's copy (millions of objects)
/// must not stall the data path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use fulva_cli::{bench, kv, up};

/// Fulva: an in-memory key-value store whose shards move live.
#[derive(Parser, Debug)]
#[command(name = "fulva", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a local cluster (nodes, coordinator, load generator) and show it live.
    Up(up::UpArgs),
    /// Print a running cluster's shard map.
    Map(fulva_cli::admin::EndpointArgs),
    /// Move a hash range to another node while clients keep using it.
    Migrate(fulva_cli::admin::MigrateArgs),
    /// Abort a running move: the range goes back to its source with every write kept.
    Abort(fulva_cli::admin::AbortArgs),
    /// Change the bandwidth limit of a running move.
    Throttle(fulva_cli::admin::ThrottleArgs),
    /// Split the shard holding a hash so that a shard starts there.
    Split(fulva_cli::admin::SplitArgs),
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
    Soak(fulva_cli::stress::SoakArgs),
    /// Run the coordinator alone over nodes started with `fulva node` (map in a
    /// file; a restart recovers half-done moves).
    Coordinator(fulva_cli::coordinator::CoordinatorArgs),
    /// Run one storage node (same as `fulva-kvnode`).
    Node {
        #[command(flatten)]
        node: fulva_kvnode::NodeConfig,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Closed-loop key-value load (YCSB mixes), optionally against Redis too.
    Kv(bench::kv::KvBenchArgs),
    /// The paper's experiment: move most of a loaded node's range under load, every strategy.
    Migration(bench::migration::MigrationBenchArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    fulva_local::telemetry::init("warn");
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(args) => up::run(args).await.map(|()| true),
        Command::Kv(args) => kv::run(args).await,
        Command::Map(args) => fulva_cli::admin::show_map(args).await,
        Command::Migrate(args) => fulva_cli::admin::migrate(args).await,
        Command::Abort(args) => fulva_cli::admin::abort(args).await,
        Command::Throttle(args) => fulva_cli::admin::throttle(args).await,
        Command::Split(args) => fulva_cli::admin::split(args).await,
        Command::Bench { which: BenchCommand::Kv(args) } => bench::kv::run(args).await.map(|()| true),
        Command::Bench { which: BenchCommand::Migration(args) } => {
            bench::migration::run(args).await.map(|()| true)
        }
        Command::Check { history } => fulva_cli::check::run(&history),
        Command::Soak(args) => fulva_cli::stress::soak(args).await,
        Command::Coordinator(args) => fulva_cli::coordinator::run(args, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map(|()| true),
        Command::Node { node } => fulva_kvnode::run(node, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map(|()| true)
        .map_err(anyhow::Error::from),
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(err) => {
            eprintln!("fulva: error: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}
