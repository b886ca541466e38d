//! Client settings.

use crate::transport::TransportChoice;
use std::net::SocketAddr;
use std::time::Duration;

/// Where a client's TLS identity comes from.
#[derive(Clone, Debug)]
pub enum ClientTlsSetting {
    /// Files (`ca.crt`, `client.crt`, `client.key`), read again when they change.
    Files(fulva_tls::TlsFiles),
    /// An identity already loaded, e.g. one held in memory by the operator.
    Loaded(std::sync::Arc<fulva_tls::ClientTls>),
}

impl From<fulva_tls::TlsFiles> for ClientTlsSetting {
    fn from(files: fulva_tls::TlsFiles) -> Self {
        ClientTlsSetting::Files(files)
    }
}

/// Settings of a [`Client`](crate::Client).
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// gRPC address of the control endpoint serving the shard map, e.g. `http://127.0.0.1:7000`.
    pub control_endpoint: String,
    /// Local address of the data-path sockets.
    pub bind_addr: SocketAddr,
    /// Data-path sockets, each with its own receive task (spreads load over node workers).
    pub sockets: usize,
    /// First retransmission timeout; doubles on every retransmission.
    pub initial_timeout: Duration,
    /// Largest retransmission timeout.
    pub max_timeout: Duration,
    /// Time the first resend by the round trips measured (smoothed round
    /// trip plus four times its variation, within `initial_timeout` and
    /// `max_timeout`); false: always `initial_timeout`.
    pub adaptive_timeout: bool,
    /// Deadline of one call, all retransmissions and redirects included.
    pub deadline: Duration,
    /// Largest key the client sends, in bytes (at most 65,535).
    pub max_key_bytes: usize,
    /// Largest value the client sends, in bytes: 1 MiB by default, up to
    /// 8 MiB, as the nodes' `--max-value-bytes` (it reads values of any size
    /// a node holds). Frames larger than a datagram travel as fragments.
    pub max_value_bytes: usize,
    /// Follow map changes with a WatchShardMap stream (besides refreshing on redirects).
    pub watch_map: bool,
    /// `NAMESPACE/NAME` of the FulvaCluster when the endpoint (the operator's)
    /// serves several; empty for a cluster's own endpoint.
    pub cluster: String,
    /// The client's TLS for the control endpoint (the CA and a `client` or
    /// `admin` certificate it signed); none: plain TCP.
    pub tls: Option<ClientTlsSetting>,
    /// The data path: kernel UDP (default) or DPDK (`dpdk` feature).
    pub transport: TransportChoice,
    /// Keys remembered per move as held by its destination (reads of them
    /// then go to the destination alone); about 16 bytes each. 0 turns
    /// learned keys off: every read the cursor does not cover waits for both
    /// ends, as the protocol did before them.
    pub learned_keys_per_move: usize,
    /// Switches that re-create ways to get the client's side of a move
    /// wrong, for proving that the tests catch them. Never set outside tests.
    pub traps: ClientTraps,
}

/// Client behaviours that break linearizability during moves, each the
/// mistake its name says; the stress test must catch every one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientTraps {
    /// Take a move destination's answer as final even when it does not hold
    /// the key ("absent" there may only mean "not pulled yet").
    pub destination_absent_is_final: bool,
    /// The paper's client: keys learned as arrived are kept after their move
    /// ended or was aborted, and a read of one takes the answer of the node
    /// the map names as final, whatever that node holds.
    pub learned_keys_outlive_moves: bool,
}

impl ClientConfig {
    /// Defaults for a control endpoint at `endpoint` (`host:port` or a URL).
    pub fn new(endpoint: impl Into<String>) -> ClientConfig {
        let endpoint = endpoint.into();
        let control_endpoint = if endpoint.contains("://") { endpoint } else { format!("http://{endpoint}") };
        ClientConfig {
            control_endpoint,
            // Every local address: the kernel picks the source per route, so
            // loopback nodes and nodes on other hosts both work.
            bind_addr: "0.0.0.0:0".parse().expect("valid address"),
            sockets: 2,
            initial_timeout: Duration::from_millis(20),
            max_timeout: Duration::from_millis(500),
            adaptive_timeout: true,
            deadline: Duration::from_secs(10),
            max_key_bytes: u16::MAX as usize,
            max_value_bytes: 1 << 20,
            watch_map: true,
            cluster: String::new(),
            tls: None,
            transport: TransportChoice::Kernel,
            learned_keys_per_move: crate::moves::DEFAULT_LEARNED_KEYS_PER_MOVE,
            traps: ClientTraps::default(),
        }
    }
}
