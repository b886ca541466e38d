//! `fulva`: run a local cluster, read and write keys, benchmark.

use clap::Parser;

/// mimalloc frees memory allocated by another thread without taking that
/// thread's arena lock: dropping a moved range's copy (millions of objects)
/// must not stall the data path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use fulva_cli::command::{BenchCommand, Cli, Command};
use fulva_cli::{bench, kv, up};

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
        Command::Drain(args) => fulva_cli::admin::drain(args).await,
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
        Command::Certs(args) => fulva_cli::tls::certs(args),
        Command::Node { node } => {
            fulva_kvnode::run(node, shutdown_signal).await.map(|()| true).map_err(anyhow::Error::from)
        }
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

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
