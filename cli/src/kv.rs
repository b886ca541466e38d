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
    /// Largest value sent or read, in bytes (1 MiB; up to 8 MiB, as the
    /// nodes' --max-value-bytes).
    #[arg(long, env = "FULVA_MAX_VALUE_BYTES", default_value_t = 1 << 20, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=8_388_608))]
    pub max_value_bytes: usize,
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
        /// Write the value, byte for byte, to this file (`-`: standard
        /// output) instead of printing it as text.
        #[arg(long, short = 'o', conflicts_with = "version")]
        output: Option<std::path::PathBuf>,
    },
    /// Store VALUE (or the contents of --file) under KEY.
    Put {
        /// Key.
        key: String,
        /// Value, as text.
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        value: Option<String>,
        /// Read the value, byte for byte, from this file (`-`: standard input).
        #[arg(long, short = 'f')]
        file: Option<std::path::PathBuf>,
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

/// The bytes of `path` (`-`: standard input).
fn read_value(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut bytes)?;
    } else {
        bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    }
    Ok(bytes)
}

/// Writes `value` to `path` (`-`: standard output), whole.
fn write_value(path: &std::path::Path, value: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    if path.as_os_str() == "-" {
        let mut out = std::io::stdout().lock();
        // A closed pipe (`| head -c 10`) is the reader's choice, not an error.
        match out.write_all(value).and_then(|()| out.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => Ok(other?),
        }
    } else {
        std::fs::write(path, value).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
    }
}

/// Runs `fulva kv`; returns whether the key was found (for the exit code).
pub async fn run(args: KvArgs) -> anyhow::Result<bool> {
    let mut config = ClientConfig::new(args.endpoint.clone());
    config.sockets = 1;
    config.watch_map = false;
    config.tls = args.tls.files(fulva_tls::Role::Client).map(Into::into);
    config.cluster = args.cluster.clone();
    config.max_value_bytes = args.max_value_bytes;
    args.dpdk.apply(args.transport, &mut config)?;
    let client = Client::connect(config).await?;
    match args.command {
        KvCommand::Get { key, version, output } => {
            let read = client.get_versioned(&key).await?;
            match read.value {
                Some(value) if output.is_some() => {
                    let path = output.expect("checked");
                    write_value(&path, &value)?;
                    if path.as_os_str() != "-" {
                        eprintln!("{key}: {} bytes written to {}", value.len(), path.display());
                    }
                }
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
        KvCommand::Put { key, value, file } => {
            let value = match (value, file) {
                (Some(text), _) => text.into_bytes(),
                (None, Some(path)) => read_value(&path)?,
                (None, None) => unreachable!("clap requires one"),
            };
            let version = client.put(&key, &value).await?;
            crate::out!("OK (version {version}, {} bytes)", value.len());
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
