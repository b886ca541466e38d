//! `fulva-kvnode`: runs one storage node until SIGINT or SIGTERM (then until
//! the ranges it holds are moved away, `--shutdown-wait-secs`, or a second signal).

use clap::Parser;

/// mimalloc frees memory allocated by another thread without taking that
/// thread's arena lock: dropping a moved range's copy must not stall serving.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use fulva_kvnode::NodeConfig;

/// A Fulva storage node.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    node: NodeConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let mut cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches)?;
    let explicit_id = matches.value_source("node_id") == Some(clap::parser::ValueSource::CommandLine)
        || matches.value_source("node_id") == Some(clap::parser::ValueSource::EnvVariable);
    cli.node.resolve_pod_identity(explicit_id).map_err(anyhow::Error::msg)?;
    fulva_kvnode::run(cli.node, shutdown_signal).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
