//! `fulva-client`: the smart client of Fulva.
//!
//! The client fetches the shard map from the control endpoint and caches it,
//! sends each request straight to the node serving the key, keeps many
//! requests in flight over a few UDP sockets, retransmits on timeout with the
//! same sequence number (so a write applies at most once), follows redirects,
//! and refreshes the map when a node reports a newer epoch.
//!
//! ```no_run
//! # async fn demo() -> Result<(), fulva_client::ClientError> {
//! use fulva_client::{Client, ClientConfig};
//! let client = Client::connect(ClientConfig::new("127.0.0.1:7000")).await?;
//! client.put("user:1", "ada").await?;
//! assert_eq!(client.get("user:1").await?.as_deref(), Some(b"ada".as_slice()));
//! # Ok(()) }
//! ```
//!
//! # Layout (private modules; the surface is re-exported here)
//! - `client`: [`Client`] and its request path (routing, dual reads, retries).
//! - `config`: the [`ClientConfig`].
//! - `error`: the [`ClientError`] enum.
//! - `history`: the opt-in [`History`] recorder ([`RecordingClient`]).
//! - `moves`: [`MoveTracker`], what the client knows of moves in progress
//!   (progress, learned keys) and how a destination's reply corrects it.
//! - `routing`: [`Routes`], the cached map and known moves, and where a read goes ([`Route`]).
//! - `stats`: the [`ClientStats`] counters.
//! - `transport`: the data path [`Client::connect`] opens (kernel UDP or DPDK).

#![warn(missing_docs)]

mod client;
mod config;
mod error;
mod history;
mod moves;
mod routing;
mod rtt;
mod stats;
mod transport;

pub use client::{Client, Versioned};
pub use config::{ClientConfig, ClientTlsSetting, ClientTraps};
pub use error::ClientError;
pub use history::{Event, EventType, Function, History, RecordingClient};
pub use moves::{KnownMove, MoveRoute, MoveTracker, DEFAULT_LEARNED_KEYS_PER_MOVE};
pub use routing::{Route, Routes};
pub use stats::ClientStats;
pub use transport::{DataTransport, TransportChoice};

/// Shard maps for the crate's unit tests.
#[cfg(test)]
mod test_maps {
    use fulva_proto::{HashRange, NodeId, NodeInfo, Shard, ShardMap, ShardState, Strategy};

    /// `shards` equal shards over nodes `0..nodes` (shard i owned by
    /// `owner(i)`); shard 0 moves from `source` to `destination` with fulva.
    pub fn with_a_move(
        epoch: u64,
        shards: u64,
        nodes: u32,
        owner: impl Fn(usize) -> NodeId,
        (source, destination): (NodeId, NodeId),
    ) -> ShardMap {
        let node = |id: u32| NodeInfo {
            id,
            data_addr: format!("127.0.0.1:{}", 7100 + id).parse().unwrap(),
            control_addr: format!("127.0.0.1:{}", 7200 + id).parse().unwrap(),
        };
        let mut shards: Vec<Shard> = HashRange::FULL
            .divide(shards)
            .into_iter()
            .enumerate()
            .map(|(i, range)| Shard { range, owner: owner(i), state: ShardState::Normal })
            .collect();
        shards[0].owner = destination;
        shards[0].state = ShardState::Migrating { source, strategy: Strategy::Fulva };
        ShardMap { epoch, nodes: (0..nodes).map(node).collect(), shards }
    }
}
