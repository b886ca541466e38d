//! Node settings, from flags or environment variables.

use std::net::SocketAddr;
use std::time::Duration;

/// Largest key a node accepts by default, in bytes: the most a frame's
/// 16-bit key length can say.
pub const DEFAULT_MAX_KEY_BYTES: usize = u16::MAX as usize;
/// Largest value a node accepts by default, in bytes (1 MiB; frames larger
/// than a datagram go as fragments).
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1 << 20;
/// Clients a node keeps at-most-once records of unless told otherwise.
pub const DEFAULT_MAX_CLIENTS: usize = 65_536;

/// Network stack of the data path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportKind {
    /// Kernel UDP sockets.
    Kernel,
    /// DPDK (SR-IOV virtual function in production).
    Dpdk,
}

/// The environment variable the SR-IOV device plugin sets for `resource`:
/// `intel.com/sriov_netdevice` gives `PCIDEVICE_INTEL_COM_SRIOV_NETDEVICE`.
pub fn pci_device_env(resource: &str) -> String {
    let name: String = resource
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
        .collect();
    format!("PCIDEVICE_{name}")
}

/// EAL arguments for a DPDK node: the PCI devices of the SR-IOV resource
/// (read from `env`, comma-separated addresses) as `-a ADDR` allow-list
/// entries, then `extra`.
pub fn eal_args(
    resource: Option<&str>,
    extra: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>, String> {
    let mut args = Vec::new();
    if let Some(resource) = resource.filter(|r| !r.is_empty()) {
        let var = pci_device_env(resource);
        let devices = env(&var).ok_or_else(|| {
            format!("{var} is not set: is the SR-IOV device plugin's {resource} allocated to this pod?")
        })?;
        for device in devices.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            args.push("-a".to_string());
            args.push(device.to_string());
        }
        if args.is_empty() {
            return Err(format!("{var} names no PCI device"));
        }
    }
    args.extend(extra.split_whitespace().map(str::to_string));
    Ok(args)
}

/// How a move's destination pulls the range's objects from the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MigrationTransfer {
    /// Raw records on a dedicated TCP connection to the source's transfer
    /// port, several batches in flight (docs/protocol.md).
    Tcp,
    /// Protobuf batches on a gRPC stream from the source's control service.
    Grpc,
}

/// Settings of one storage node.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct NodeConfig {
    /// Node identity within the cluster (unique per node).
    #[arg(long, env = "FULVA_NODE_ID", default_value_t = 0)]
    pub node_id: u32,
    /// UDP address of the data path (port 0 picks a free one).
    #[arg(long, env = "FULVA_DATA_ADDR", default_value = "127.0.0.1:7100")]
    pub data_addr: SocketAddr,
    /// TCP address of the gRPC control service.
    #[arg(long, env = "FULVA_CONTROL_ADDR", default_value = "127.0.0.1:7200")]
    pub control_addr: SocketAddr,
    /// TCP address of the transfer stream a move's destination pulls a range
    /// from (port 0 picks a free one; the control service names it).
    #[arg(long, env = "FULVA_TRANSFER_ADDR", default_value = "127.0.0.1:7400")]
    pub transfer_addr: SocketAddr,
    /// TCP address of the HTTP endpoint serving /metrics, /healthz and /readyz.
    #[arg(long, env = "FULVA_METRICS_ADDR", default_value = "127.0.0.1:7300")]
    pub metrics_addr: SocketAddr,
    /// Data-path workers, each with its own socket on the data address (SO_REUSEPORT).
    #[arg(long, env = "FULVA_WORKERS", default_value_t = 2)]
    pub workers: usize,
    /// Largest key accepted, in bytes (at most 65,535); larger ones get a
    /// TooLarge reply.
    #[arg(long, env = "FULVA_MAX_KEY_BYTES", default_value_t = DEFAULT_MAX_KEY_BYTES, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65_535))]
    pub max_key_bytes: usize,
    /// Largest value accepted, in bytes (at most 8 MiB); larger ones get a
    /// TooLarge reply naming the limit. Frames larger than a datagram travel
    /// as fragments; clients must allow as much (`ClientConfig::max_value_bytes`).
    #[arg(long, env = "FULVA_MAX_VALUE_BYTES", default_value_t = DEFAULT_MAX_VALUE_BYTES, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=8_388_608))]
    pub max_value_bytes: usize,
    /// log2 of the number of store stripes (lock granularity).
    #[arg(long, env = "FULVA_STRIPE_BITS", default_value_t = 12, value_parser = clap::value_parser!(u32).range(0..=16))]
    pub stripe_bits: u32,
    /// Seconds after which the at-most-once records of a silent client are dropped.
    #[arg(long, env = "FULVA_CLIENT_RECORD_TTL_SECS", default_value_t = 600)]
    pub client_record_ttl_secs: u64,
    /// Clients whose at-most-once records the node keeps; past it a new
    /// client displaces the least recently heard one (counted in
    /// fulva_kvnode_client_records_shed_total).
    #[arg(long, env = "FULVA_MAX_CLIENTS", default_value_t = DEFAULT_MAX_CLIENTS)]
    pub max_clients: usize,
    /// Target size of one batch a move's destination pulls from the source, in bytes.
    #[arg(long, env = "FULVA_MIGRATION_BATCH_BYTES", default_value_t = 64 * 1024)]
    pub migration_batch_bytes: u32,
    /// A fulva move's destination pulls a key a read missed (not pulled yet)
    /// at once, so later reads of it need only the destination. Off by
    /// default: measured on 2 cores, its priority pulls cost more client
    /// throughput than the dual reads they save (docs/benchmarks.md).
    #[arg(long, env = "FULVA_MIGRATION_FETCH_ON_MISS")]
    pub migration_fetch_on_miss: bool,
    /// How a move's destination pulls the range: `tcp` (the transfer
    /// stream) or `grpc` (protobuf batches on the control service).
    #[arg(long, env = "FULVA_MIGRATION_TRANSFER", value_enum, default_value_t = MigrationTransfer::Tcp)]
    pub migration_transfer: MigrationTransfer,
    /// Let the kernel back this process's memory with transparent huge
    /// pages. Off by default (the node asks the kernel to disable them for
    /// the process): a move grows the destination's heap fast, and each
    /// first touch of a 2 MiB huge page zeroes it inside the page fault of
    /// whichever thread touched it, data-path threads included. Measured on
    /// 2 cores, unthrottled moves with them lost 2x the operations per MB
    /// and stalled clients 3-6x longer (docs/benchmarks.md).
    #[arg(long, env = "FULVA_TRANSPARENT_HUGE_PAGES")]
    pub transparent_huge_pages: bool,
    /// Seconds a node that still holds ranges keeps serving after SIGTERM or
    /// Ctrl-C: it reports not ready (/readyz) and exits as soon as its ranges
    /// have been moved away, or when this runs out (a second signal exits at
    /// once). Its objects are lost if it exits holding them. On Kubernetes,
    /// keep it below the pod's terminationGracePeriodSeconds.
    #[arg(long, env = "FULVA_SHUTDOWN_WAIT_SECS", default_value_t = 30)]
    pub shutdown_wait_secs: u64,
    /// Directory holding this node's TLS files: `ca.crt`, `node-<ID>.crt` and
    /// `node-<ID>.key` (as `fulva certs` writes them, or the operator's
    /// Secret mounts them). The control service and the transfer stream
    /// then take only callers the CA signed: the coordinator for control,
    /// the destination a move names for pulls. Renewed files are picked up
    /// without a restart.
    #[arg(long, env = "FULVA_TLS_DIR")]
    pub tls_dir: Option<std::path::PathBuf>,
    /// Serve the control service and transfer stream without TLS: anyone who
    /// can reach those ports can read, move or drop the node's data. Needed
    /// (with a warning) when no `--tls-dir` is given.
    #[arg(long, env = "FULVA_INSECURE", conflicts_with = "tls_dir")]
    pub insecure: bool,
    /// Network stack of the data path: `kernel` (UDP sockets) or `dpdk`.
    #[arg(long, env = "FULVA_TRANSPORT", value_enum, default_value_t = TransportKind::Kernel)]
    pub transport: TransportKind,
    /// DPDK: the SR-IOV device plugin resource whose PCI devices the node
    /// uses (the plugin passes them in `PCIDEVICE_<RESOURCE>`).
    #[arg(long, env = "FULVA_SRIOV_RESOURCE")]
    pub sriov_resource: Option<String>,
    /// DPDK: the port to use (a PCI address or a vdev name like `net_memif0`);
    /// default: the first PCI device of the SR-IOV resource.
    #[arg(long, env = "FULVA_DPDK_PORT")]
    pub dpdk_port: Option<String>,
    /// DPDK: the port's MTU (1500; up to 9000 with jumbo frames). Frames
    /// larger than one packet travel as fragments.
    #[arg(long, env = "FULVA_DPDK_MTU", default_value_t = 1500, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(576..=9000))]
    pub dpdk_mtu: usize,
    /// DPDK: EAL arguments, space-separated (added after those the SR-IOV
    /// resource gives), e.g. `--no-huge --no-pci --vdev net_memif0`.
    #[arg(long, env = "FULVA_EAL_ARGS", default_value = "", allow_hyphen_values = true)]
    pub eal_args: String,
    /// Name of the pod this node runs in (a StatefulSet pod `NAME-ORDINAL`):
    /// without `--node-id`, the ordinal is the node id.
    #[arg(long, env = "FULVA_POD_NAME")]
    pub pod_name: Option<String>,
    /// Test only: re-create trap 1 (progress published before it is applied).
    #[arg(long, hide = true)]
    pub trap_cursor_before_apply: bool,
    /// Test only: re-create trap 3 (deletes leave no tombstone during a move).
    #[arg(long, hide = true)]
    pub trap_no_tombstones: bool,
    /// Test only: a batch of hot keys moves the cursor past its highest hash
    /// (the cold keys below it have not arrived).
    #[arg(long, hide = true)]
    pub trap_hot_batch_moves_cursor: bool,
    /// Test only: completion records keyed by (client, seq) alone, so a write
    /// with another key or op is answered from the record of the first.
    #[arg(long, hide = true)]
    pub trap_records_ignore_key: bool,
    /// Test only: any node the CA signed may pull any range, not only the
    /// destination the range's move names.
    #[arg(long, hide = true)]
    pub trap_any_node_may_pull: bool,
    /// Test only: a large reply's fragments carry the request's id rather
    /// than a hash of the reply, so a client can put one answer together
    /// from the fragments of two.
    #[arg(long, hide = true)]
    pub trap_fragment_id_from_request: bool,
}

impl NodeConfig {
    /// Settings for a node on loopback with every port picked by the kernel.
    pub fn loopback(node_id: u32) -> NodeConfig {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
        NodeConfig {
            node_id,
            data_addr: any,
            control_addr: any,
            metrics_addr: any,
            transfer_addr: any,
            tls_dir: None,
            insecure: false,
            workers: 2,
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            stripe_bits: 12,
            client_record_ttl_secs: 600,
            max_clients: DEFAULT_MAX_CLIENTS,
            migration_batch_bytes: 64 * 1024,
            migration_fetch_on_miss: false,
            transparent_huge_pages: false,
            shutdown_wait_secs: 30,
            migration_transfer: MigrationTransfer::Tcp,
            transport: TransportKind::Kernel,
            sriov_resource: None,
            dpdk_port: None,
            dpdk_mtu: 1500,
            eal_args: String::new(),
            pod_name: None,
            trap_cursor_before_apply: false,
            trap_no_tombstones: false,
            trap_hot_batch_moves_cursor: false,
            trap_records_ignore_key: false,
            trap_any_node_may_pull: false,
            trap_fragment_id_from_request: false,
        }
    }

    /// This node's TLS, loaded from `tls_dir` (none without one).
    pub fn load_tls(&self) -> Result<Option<fulva_tls::Tls>, String> {
        let Some(dir) = &self.tls_dir else { return Ok(None) };
        fulva_tls::Tls::from_dir(dir, fulva_tls::Role::Node(self.node_id))
            .map(Some)
            .map_err(|e| format!("--tls-dir {}: {e}", dir.display()))
    }

    /// Takes the node id from the pod name's ordinal when the id was not
    /// given (`explicit_id` false) and a pod name is set.
    pub fn resolve_pod_identity(&mut self, explicit_id: bool) -> Result<(), String> {
        let Some(pod) = self.pod_name.as_deref().filter(|_| !explicit_id) else { return Ok(()) };
        let ordinal = pod.rsplit_once('-').and_then(|(_, n)| n.parse::<u32>().ok());
        self.node_id = ordinal.ok_or_else(|| format!("pod name {pod:?} does not end in -ORDINAL"))?;
        Ok(())
    }

    /// The client-record TTL as a duration.
    pub fn client_record_ttl(&self) -> Duration {
        Duration::from_secs(self.client_record_ttl_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_plugin_variable_becomes_eal_allow_list_entries() {
        assert_eq!(pci_device_env("intel.com/sriov_netdevice"), "PCIDEVICE_INTEL_COM_SRIOV_NETDEVICE");
        let env = |name: &str| {
            (name == "PCIDEVICE_INTEL_COM_SRIOV_NETDEVICE").then(|| "0000:3b:02.0,0000:3b:02.1".to_string())
        };
        let args = eal_args(Some("intel.com/sriov_netdevice"), "--file-prefix kv0", env).unwrap();
        assert_eq!(args, ["-a", "0000:3b:02.0", "-a", "0000:3b:02.1", "--file-prefix", "kv0"]);
        let err = eal_args(Some("intel.com/other"), "", env).unwrap_err();
        assert!(err.contains("PCIDEVICE_INTEL_COM_OTHER"), "{err}");
        assert_eq!(eal_args(None, "--no-huge --no-pci", env).unwrap(), ["--no-huge", "--no-pci"]);
    }

    #[test]
    fn a_statefulset_pod_name_gives_the_node_id() {
        let mut config = NodeConfig { pod_name: Some("demo-cluster-7".into()), ..NodeConfig::loopback(0) };
        config.resolve_pod_identity(false).unwrap();
        assert_eq!(config.node_id, 7);
        let mut given = NodeConfig { pod_name: Some("demo-7".into()), ..NodeConfig::loopback(3) };
        given.resolve_pod_identity(true).unwrap();
        assert_eq!(given.node_id, 3, "an explicit id wins");
        let mut bad = NodeConfig { pod_name: Some("demo".into()), ..NodeConfig::loopback(0) };
        assert!(bad.resolve_pod_identity(false).is_err());
    }
}
