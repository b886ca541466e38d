//! `fulva soak`: random live moves and splits under packet loss
//! ([`fulva_local::stress`]), checked for linearizability.

use fulva_local::stress::{run, StressConfig};
use fulva_proto::transport::FaultConfig;
use fulva_proto::Strategy;
use std::path::PathBuf;
use std::time::Duration;

/// Options of `fulva soak`.
#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// Moves to make.
    #[arg(long, default_value_t = 1_000)]
    pub moves: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 1_800)]
    pub max_seconds: u64,
    /// Storage nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Concurrent client processes.
    #[arg(long, default_value_t = 6)]
    pub clients: u32,
    /// Hot keys.
    #[arg(long, default_value_t = 8)]
    pub keys: u32,
    /// Share of client operations that are reads (the rest: writes and deletes, 7 to 3).
    #[arg(long, default_value_t = 0.5)]
    pub read_share: f64,
    /// Loss, duplication and reordering probability on every datagram.
    #[arg(long, default_value_t = 0.02)]
    pub faults: f64,
    /// Where the history is written.
    #[arg(long, default_value = "fulva-soak-history.jsonl")]
    pub history: PathBuf,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Strategies moves pick from.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "fulva,rocksteady,source-driven")]
    pub strategies: Vec<crate::admin::StrategyArg>,
    /// Share of moves aborted at a random moment (rolled back with every write kept).
    #[arg(long, default_value_t = 0.25)]
    pub abort_share: f64,
}

/// Runs `fulva soak`; returns whether the history is linearizable with no lost write.
pub async fn soak(args: SoakArgs) -> anyhow::Result<bool> {
    let mut config = StressConfig::quick(args.history.clone());
    config.moves = args.moves;
    config.max_duration = Duration::from_secs(args.max_seconds);
    config.nodes = args.nodes.max(2);
    config.clients = args.clients.max(1);
    config.keys = args.keys.max(1);
    config.read_share = args.read_share.clamp(0.0, 1.0);
    config.faults = FaultConfig {
        loss: args.faults,
        duplicate: args.faults,
        reorder: args.faults,
        seed: args.seed,
        ..config.faults
    };
    config.seed = args.seed;
    config.verbose = true;
    config.strategies = args.strategies.iter().map(|&s| Strategy::from(s)).collect();
    config.abort_share = args.abort_share.clamp(0.0, 1.0);
    eprintln!(
        "fulva soak: {} moves, {} nodes, {} clients on {} hot keys, faults {}",
        args.moves, config.nodes, config.clients, config.keys, args.faults
    );
    let report = run(config).await?;
    println!(
        "{} moves, {} aborted and rolled back ({} after the destination served), {} splits, {} operations ({} failed or unknown) in {:.0} s",
        report.moves,
        report.aborted,
        report.carried_back,
        report.splits,
        report.operations,
        report.errors,
        report.elapsed.as_secs_f64()
    );
    println!(
        "history: {} ({} operations on {} keys)",
        args.history.display(),
        report.check.operations,
        report.check.keys
    );
    println!("acknowledged writes lost: {}", report.lost_writes);
    let ok = report.check.is_linearizable() && report.lost_writes == 0;
    println!(
        "{}",
        if ok { "linearizable" } else { "NOT linearizable: run `fulva check` on the history for the window" }
    );
    Ok(ok)
}
