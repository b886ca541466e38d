//! `fulva map`, `fulva migrate`, `fulva abort`, `fulva throttle`,
//! `fulva split` and `fulva drain`: look at and change a running cluster's
//! shard map through its control endpoint.

use fulva_proto::grpc::coordinator_admin_client::CoordinatorAdminClient;
use fulva_proto::grpc::shard_map_service_client::ShardMapServiceClient;
use fulva_proto::grpc::{
    AbortMoveRequest, DrainRequest, GetShardMapRequest, MigrateRequest, SetMoveRateRequest, SplitRequest,
};
use fulva_proto::{HashRange, ShardMap, ShardState, Strategy};
use std::io::{IsTerminal, Write};

/// Where the control endpoint is.
#[derive(clap::Args, Debug, Clone)]
pub struct EndpointArgs {
    /// Control endpoint of the cluster (as printed by `fulva up`).
    #[arg(long, env = "FULVA_ENDPOINT", default_value = "127.0.0.1:7000")]
    pub endpoint: String,
    #[command(flatten)]
    pub tls: crate::tls::ToolTlsArgs,
}

impl EndpointArgs {
    fn url(&self) -> String {
        if self.endpoint.contains("://") {
            self.endpoint.clone()
        } else {
            format!("http://{}", self.endpoint)
        }
    }

    /// A channel to the endpoint, showing the admin certificate when a TLS
    /// directory was given.
    async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        let fail = |e: &dyn std::fmt::Display| anyhow::anyhow!("control endpoint {}: {e}", self.endpoint);
        let endpoint = tonic::transport::Endpoint::from_shared(self.url()).map_err(|e| fail(&e))?;
        let tls = match self.tls.files(fulva_tls::Role::Admin) {
            Some(files) => Some(fulva_tls::ClientTls::new(files).map_err(|e| fail(&e))?),
            None => None,
        };
        fulva_tls::connect_channel(endpoint, tls.as_ref(), fulva_tls::Role::Coordinator)
            .await
            .map_err(|e| fail(&fulva_tls::error_chain(&e)))
    }
}

/// Migration strategy names on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StrategyArg {
    /// Source and destination serve together (the default).
    Fulva,
    /// Destination-driven with on-demand pulls.
    Rocksteady,
    /// Source serves while copying, then hands over under a lock.
    SourceDriven,
}

impl From<StrategyArg> for Strategy {
    fn from(s: StrategyArg) -> Strategy {
        match s {
            StrategyArg::Fulva => Strategy::Fulva,
            StrategyArg::Rocksteady => Strategy::Rocksteady,
            StrategyArg::SourceDriven => Strategy::SourceDriven,
        }
    }
}

/// Options of `fulva migrate`.
#[derive(clap::Args, Debug, Clone)]
pub struct MigrateArgs {
    #[command(flatten)]
    endpoint: EndpointArgs,
    /// Range to move: FIRST..=LAST or FIRST..END (hex with 0x, or decimal).
    /// Shards are split at its bounds as needed.
    #[arg(long)]
    range: HashRange,
    /// Destination node id.
    #[arg(long)]
    to: u32,
    /// How the range moves.
    #[arg(long, value_enum, default_value_t = StrategyArg::Fulva)]
    strategy: StrategyArg,
    /// Bandwidth limit of the transfer in MB/s (0 = none).
    #[arg(long, default_value_t = 0.0)]
    rate_limit_mb: f64,
    /// Fulva and rocksteady: how many of the range's hottest keys (by the
    /// source's sampled reads) are shipped before the hash-order pass, so
    /// reads of them stop going to both nodes at once (0 = none).
    #[arg(long, default_value_t = fulva_coordinator::DEFAULT_HOT_KEYS)]
    hot_keys: u32,
}

/// Options of `fulva drain`.
#[derive(clap::Args, Debug, Clone)]
pub struct DrainArgs {
    #[command(flatten)]
    endpoint: EndpointArgs,
    /// The node to empty.
    node: u32,
    /// How the ranges move.
    #[arg(long, value_enum, default_value_t = StrategyArg::Fulva)]
    strategy: StrategyArg,
    /// Bandwidth limit of each move in MB/s (0 = none).
    #[arg(long, default_value_t = 0.0)]
    rate_limit_mb: f64,
    /// Moves running at once.
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
    /// Refuse the drain if it would put more than this many bytes of keys
    /// and values on any other node (0 = no cap).
    #[arg(long, default_value_t = 0)]
    max_node_bytes: u64,
    /// A node that must receive nothing.
    #[arg(long = "exclude")]
    excluded: Vec<u32>,
}

/// Runs `fulva drain`: every range of the node moves to the others; exit
/// code 0 once it owns nothing (it may then be stopped without loss).
pub async fn drain(args: DrainArgs) -> anyhow::Result<bool> {
    let mut client = admin_client(&args.endpoint).await?;
    let request = DrainRequest {
        node: args.node,
        strategy: fulva_proto::grpc::Strategy::from(Strategy::from(args.strategy)) as i32,
        rate_limit_bytes_per_sec: (args.rate_limit_mb * 1e6) as u64,
        concurrency: args.concurrency,
        max_node_bytes: args.max_node_bytes,
        excluded: args.excluded.clone(),
    };
    let mut stream = client
        .drain(request)
        .await
        .map_err(|s| anyhow::anyhow!("cannot drain node {}: {}", args.node, s.message()))?
        .into_inner();
    eprintln!("draining node {} ({})", args.node, Strategy::from(args.strategy).name());
    loop {
        let progress = match stream.message().await {
            Ok(Some(p)) => p,
            Ok(None) => anyhow::bail!("the coordinator ended the drain without a result"),
            Err(status) if status.code() == tonic::Code::Aborted => {
                // A move failed and was rolled back: the node still holds data.
                crate::out!("drain of node {} stopped: {}", args.node, status.message());
                crate::out!("node {} still owns ranges: do not stop it", args.node);
                return Ok(false);
            }
            Err(status) => anyhow::bail!("drain of node {} failed: {}", args.node, status.message()),
        };
        if progress.finished {
            crate::out!(
                "node {} drained: {} ranges, {:.1} MB moved in {:.1} s; it owns nothing and may be stopped",
                progress.node,
                progress.moved,
                progress.bytes as f64 / 1e6,
                progress.seconds
            );
            return Ok(true);
        }
        let range = progress.last_range.and_then(|r| HashRange::try_from(Some(r)).ok());
        eprintln!(
            "  [{}/{}] moved {} to node {} ({:.1} MB so far, {:.1} s)",
            progress.moved,
            progress.total,
            range.map_or_else(|| "?".to_string(), |r| r.to_string()),
            progress.last_destination,
            progress.bytes as f64 / 1e6,
            progress.seconds
        );
    }
}

/// Options of `fulva abort`.
#[derive(clap::Args, Debug, Clone)]
pub struct AbortArgs {
    #[command(flatten)]
    endpoint: EndpointArgs,
    /// Range of the running move, exactly as given to `fulva migrate`.
    #[arg(long)]
    range: HashRange,
}

/// Options of `fulva throttle`.
#[derive(clap::Args, Debug, Clone)]
pub struct ThrottleArgs {
    #[command(flatten)]
    endpoint: EndpointArgs,
    /// Range of the running move, exactly as given to `fulva migrate`.
    #[arg(long)]
    range: HashRange,
    /// New bandwidth limit in MB/s (0 = none).
    #[arg(long)]
    rate_limit_mb: f64,
}

/// Options of `fulva split`.
#[derive(clap::Args, Debug, Clone)]
pub struct SplitArgs {
    #[command(flatten)]
    endpoint: EndpointArgs,
    /// First hash of the new upper shard (hex with 0x, or decimal).
    #[arg(long, value_parser = parse_hash)]
    at: u64,
}

fn parse_hash(text: &str) -> Result<u64, String> {
    let t = text.trim().replace('_', "");
    match t.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).map_err(|e| e.to_string()),
        None => t.parse().map_err(|e: std::num::ParseIntError| e.to_string()),
    }
}

fn print_map(map: &ShardMap) {
    crate::out!("epoch {}", map.epoch);
    for n in &map.nodes {
        crate::out!("node {}: data {} control {}", n.id, n.data_addr, n.control_addr);
    }
    crate::out!("{:<42} {:>5}  state", "range", "owner");
    for s in &map.shards {
        let state = match s.state {
            ShardState::Normal => "normal".to_string(),
            ShardState::Migrating { source, strategy } => {
                format!("migrating from {source} ({})", strategy.name())
            }
        };
        crate::out!("{:<42} {:>5}  {state}", s.range.to_string(), s.owner);
    }
}

/// Options of `fulva map`.
#[derive(clap::Args, Debug, Clone)]
pub struct MapArgs {
    #[command(flatten)]
    pub endpoint: EndpointArgs,
    /// `NAMESPACE/NAME` of the FulvaCluster, on the operator's endpoint
    /// (which serves every cluster); empty on a cluster's own endpoint.
    #[arg(long, env = "FULVA_CLUSTER", default_value = "")]
    pub cluster: String,
}

/// Runs `fulva map`.
pub async fn show_map(args: MapArgs) -> anyhow::Result<bool> {
    let mut client = ShardMapServiceClient::new(args.endpoint.channel().await?);
    let request = GetShardMapRequest { cluster: args.cluster };
    let map = ShardMap::try_from(client.get_shard_map(request).await?.into_inner())?;
    print_map(&map);
    Ok(true)
}

/// Runs `fulva split`.
pub async fn split(args: SplitArgs) -> anyhow::Result<bool> {
    let mut client = admin_client(&args.endpoint).await?;
    let map =
        client.split(SplitRequest { at: args.at }).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    print_map(&ShardMap::try_from(map.into_inner())?);
    Ok(true)
}

async fn admin_client(
    endpoint: &EndpointArgs,
) -> anyhow::Result<CoordinatorAdminClient<tonic::transport::Channel>> {
    Ok(CoordinatorAdminClient::new(endpoint.channel().await?))
}

/// Runs `fulva abort`: the move's `fulva migrate` then reports the rollback.
pub async fn abort(args: AbortArgs) -> anyhow::Result<bool> {
    let mut client = admin_client(&args.endpoint).await?;
    client
        .abort_move(AbortMoveRequest { range: Some(args.range.into()) })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    crate::out!("abort of the move of {} requested; the range goes back to its source", args.range);
    Ok(true)
}

/// Runs `fulva throttle`.
pub async fn throttle(args: ThrottleArgs) -> anyhow::Result<bool> {
    let mut client = admin_client(&args.endpoint).await?;
    client
        .set_move_rate(SetMoveRateRequest {
            range: Some(args.range.into()),
            rate_limit_bytes_per_sec: (args.rate_limit_mb * 1e6) as u64,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    if args.rate_limit_mb > 0.0 {
        crate::out!("move of {} limited to {} MB/s", args.range, args.rate_limit_mb);
    } else {
        crate::out!("move of {} unlimited", args.range);
    }
    Ok(true)
}

/// Runs `fulva migrate`, drawing a progress bar on stderr.
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<bool> {
    let mut client = admin_client(&args.endpoint).await?;
    let request = MigrateRequest {
        range: Some(args.range.into()),
        destination: args.to,
        strategy: fulva_proto::grpc::Strategy::from(Strategy::from(args.strategy)) as i32,
        rate_limit_bytes_per_sec: (args.rate_limit_mb * 1e6) as u64,
        hot_keys: Some(args.hot_keys),
    };
    let mut stream =
        client.migrate(request).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?.into_inner();
    let tty = std::io::stderr().is_terminal();
    eprintln!("moving {} to node {} ({})", args.range, args.to, Strategy::from(args.strategy).name());
    loop {
        let progress = match stream.message().await {
            Ok(Some(p)) => p,
            Ok(None) => anyhow::bail!("the coordinator ended the move without a result"),
            Err(status) => {
                if tty {
                    eprintln!();
                }
                if status.code() == tonic::Code::Aborted {
                    // Rolled back cleanly: not an error of this command.
                    crate::out!("{}", status.message());
                    return Ok(false);
                }
                anyhow::bail!("move failed: {}", status.message());
            }
        };
        let status = progress.status.unwrap_or_default();
        if progress.finished {
            if tty {
                eprintln!();
            }
            crate::out!(
                "moved {} from node {} to node {}: {} objects, {:.1} MB in {:.2} s ({:.1} MB/s); map epoch {}",
                args.range,
                progress.source,
                args.to,
                status.objects_applied,
                status.bytes_applied as f64 / 1e6,
                progress.seconds,
                status.bytes_applied as f64 / 1e6 / progress.seconds.max(1e-9),
                progress.epoch
            );
            return Ok(true);
        }
        let fraction = if status.bytes_total == 0 {
            0.0
        } else {
            status.bytes_applied as f64 / status.bytes_total as f64
        };
        let filled = (fraction.clamp(0.0, 1.0) * 30.0) as usize;
        let line = format!(
            "[{}{}] {:>5.1}%  {}/{} objects  {:.1}/{:.1} MB  ETA {:.1} s",
            "#".repeat(filled),
            ".".repeat(30 - filled),
            fraction * 100.0,
            status.objects_applied,
            status.objects_total,
            status.bytes_applied as f64 / 1e6,
            status.bytes_total as f64 / 1e6,
            status.eta_seconds
        );
        if tty {
            eprint!("\r{line}");
            let _ = std::io::stderr().flush();
        } else {
            eprintln!("{line}");
        }
    }
}
