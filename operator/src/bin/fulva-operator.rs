//! `fulva-operator`: the Kubernetes operator (runs in the cluster, or
//! outside it with a kubeconfig).

use clap::Parser;
use fulva_operator::app::{self, OperatorConfig};
use tokio_util::sync::CancellationToken;

/// Watches FulvaCluster resources, runs their nodes and rebalances them.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: OperatorConfig,
    /// Log as JSON lines (structured) instead of text.
    #[arg(long, env = "FULVA_LOG_JSON")]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if cli.log_json {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let client = kube::Client::try_default().await?;
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        signal.cancel();
    });
    app::run(cli.config, client, shutdown).await?;
    Ok(())
}
