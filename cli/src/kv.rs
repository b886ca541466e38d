//! `fulva kv`: one-off reads and writes against a running cluster.

use crate::datapath::{DpdkClientArgs, TransportName};
use fulva_client::{Client, ClientConfig};

/// Options of `fulva kv`.
#[derive(clap::Args, Debug, Clone)]
pub struct KvArgs {
    /// Control endpoint of the cluster (as printed by `fulva up`).
    #[arg(long, env = "FULVA_ENDPOINT", default_value = "127.0.0.1:7000")]
    pub endpoint: String,
    /// `NAMESPACE/NAME` of the FulvaCluster, on the operator's endpoint
    /// (which serves every cluster); empty on a cluster's own endpoint.
    #[arg(long, env = "FULVA_CLUSTER", default_value = "")]
    pub cluster: String,
    /// Data path: `kernel` (UDP) or `dpdk`.
    #[arg(long, env = "FULVA_TRANSPORT", value_enum, default_value_t = TransportName::Kernel)]
    pub transport: TransportName,
    #[command(flatten)]
    pub dpdk: DpdkClientArgs,
    #[command(flatten)]
    pub tls: crate::tls::ToolTlsArgs,
    /// The operation.
    #[command(subcommand)]
    pub command: KvCommand,
}

/// One key-value operation.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum KvCommand {
    /// Print the value of KEY (exit code 1 if absent).
    Get {
        /// Key.
        key: String,
        /// Also print the object version.
        #[arg(long)]
        version: bool,
    },
    /// Store VALUE under KEY.
    Put {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// Delete KEY (exit code 1 if it did not exist).
    Del {
        /// Key.
        key: String,
    },
    /// Print the values of several keys.
    Mget {
        /// Keys.
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

/// Runs `fulva kv`; returns whether the key was found (for the exit code).
pub async fn run(args: KvArgs) -> anyhow::Result<bool> {
    let mut config = ClientConfig::new(args.endpoint.clone());
    config.sockets = 1;
    config.watch_map = false;
    config.tls = args.tls.files(fulva_tls::Role::Client).map(Into::into);
    config.cluster = args.cluster.clone();
    args.dpdk.apply(args.transport, &mut config)?;
    let client = Client::connect(config).await?;
    match args.command {
        KvCommand::Get { key, version } => {
            let read = client.get_versioned(&key).await?;
            match read.value {
                Some(value) if version => {
                    crate::out!("{} (version {})", String::from_utf8_lossy(&value), read.version)
                }
                Some(value) => crate::out!("{}", String::from_utf8_lossy(&value)),
                None => {
                    eprintln!("{key}: not found");
                    return Ok(false);
                }
            }
        }
        KvCommand::Put { key, value } => {
            let version = client.put(&key, &value).await?;
            crate::out!("OK (version {version})");
        }
        KvCommand::Del { key } => {
            if !client.delete(&key).await? {
                eprintln!("{key}: not found");
                return Ok(false);
            }
            crate::out!("deleted");
        }
        KvCommand::Mget { keys } => {
            for (key, value) in keys.iter().zip(client.multi_get(&keys).await?) {
                match value {
                    Some(v) => crate::out!("{key}\t{}", String::from_utf8_lossy(&v)),
                    None => crate::out!("{key}\t(not found)"),
                }
            }
        }
    }
    Ok(true)
}
