//! The shard map: which node serves which hash range, stamped with an epoch.

use crate::grpc;
use crate::range::HashRange;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// A shard-map epoch. It grows by one on every change of the map.
pub type Epoch = u64;
/// A node's identity within a cluster.
pub type NodeId = u32;

/// Migration strategy of a moving range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Source and destination serve together; writes go to the destination (the default).
    #[default]
    Fulva,
    /// Everything at the destination with on-demand pulls from the source.
    Rocksteady,
    /// The source serves while copying, then locks the range and hands it over.
    SourceDriven,
}

impl Strategy {
    /// The name users write (`--strategy`, policies, metric labels, reports).
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Fulva => "fulva",
            Strategy::Rocksteady => "rocksteady",
            Strategy::SourceDriven => "source-driven",
        }
    }
}

/// State of one shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum ShardState {
    /// Served by its owner alone.
    Normal,
    /// Moving from `source` to the owner (the destination).
    Migrating {
        /// Node the range is leaving.
        source: NodeId,
        /// How it moves.
        strategy: Strategy,
    },
}

/// One contiguous hash range and the node that serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// Hashes the shard covers.
    pub range: HashRange,
    /// Serving node (the destination while migrating).
    pub owner: NodeId,
    /// Normal or migrating.
    #[serde(flatten)]
    pub state: ShardState,
}

/// Addresses of one storage node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node identity.
    pub id: NodeId,
    /// Data-path (UDP) address.
    pub data_addr: SocketAddr,
    /// gRPC control address.
    pub control_addr: SocketAddr,
}

/// Errors from validating or converting a shard map.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShardMapError {
    /// Shards leave a gap, overlap or are out of order.
    #[error("shards do not tile the hash space: {0}")]
    NotTiled(String),
    /// A shard names a node the map does not list.
    #[error("shard {range} names unknown node {node}")]
    UnknownNode {
        /// The shard's range.
        range: HashRange,
        /// The missing node.
        node: NodeId,
    },
    /// A protobuf field is missing or malformed.
    #[error("invalid shard map message: {0}")]
    Invalid(String),
}

/// Every shard of the keyspace with its owner, stamped with an epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    /// Grows by one on every change.
    pub epoch: Epoch,
    /// Nodes of the cluster.
    pub nodes: Vec<NodeInfo>,
    /// Shards sorted by `range.first`, tiling `0..=u64::MAX`.
    pub shards: Vec<Shard>,
}

impl ShardMap {
    /// The shard whose range contains `hash` (binary search; the map tiles the space).
    pub fn shard_of(&self, hash: u64) -> Option<&Shard> {
        let idx = self.shards.partition_point(|s| s.range.first <= hash);
        let shard = self.shards.get(idx.checked_sub(1)?)?;
        shard.range.contains(hash).then_some(shard)
    }

    /// The node that serves `hash`.
    pub fn owner_of(&self, hash: u64) -> Option<NodeId> {
        self.shard_of(hash).map(|s| s.owner)
    }

    /// Addresses of `node`.
    pub fn node(&self, node: NodeId) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.id == node)
    }

    /// Checks that shards are sorted, tile the whole hash space and name known nodes.
    pub fn validate(&self) -> Result<(), ShardMapError> {
        let mut expect: Option<u64> = Some(0);
        for shard in &self.shards {
            let Some(first) = expect else {
                return Err(ShardMapError::NotTiled(format!("{} lies past the end", shard.range)));
            };
            if shard.range.first != first || shard.range.first > shard.range.last {
                return Err(ShardMapError::NotTiled(format!(
                    "expected a shard at {first:#x}, found {}",
                    shard.range
                )));
            }
            for node in [Some(shard.owner), migrating_source(shard)].into_iter().flatten() {
                if self.node(node).is_none() {
                    return Err(ShardMapError::UnknownNode { range: shard.range, node });
                }
            }
            expect = shard.range.last.checked_add(1);
        }
        match expect {
            None => Ok(()),
            Some(first) => Err(ShardMapError::NotTiled(format!("nothing covers {first:#x}"))),
        }
    }
}

fn migrating_source(shard: &Shard) -> Option<NodeId> {
    match shard.state {
        ShardState::Normal => None,
        ShardState::Migrating { source, .. } => Some(source),
    }
}

impl From<HashRange> for grpc::HashRange {
    fn from(r: HashRange) -> Self {
        grpc::HashRange { first: r.first, last: r.last }
    }
}

impl TryFrom<Option<grpc::HashRange>> for HashRange {
    type Error = ShardMapError;
    fn try_from(r: Option<grpc::HashRange>) -> Result<Self, Self::Error> {
        let r = r.ok_or_else(|| ShardMapError::Invalid("missing range".into()))?;
        HashRange::new(r.first, r.last).map_err(|e| ShardMapError::Invalid(e.to_string()))
    }
}

impl From<Strategy> for grpc::Strategy {
    fn from(s: Strategy) -> Self {
        match s {
            Strategy::Fulva => grpc::Strategy::Fulva,
            Strategy::Rocksteady => grpc::Strategy::Rocksteady,
            Strategy::SourceDriven => grpc::Strategy::SourceDriven,
        }
    }
}

impl From<grpc::Strategy> for Strategy {
    fn from(s: grpc::Strategy) -> Self {
        match s {
            grpc::Strategy::Fulva => Strategy::Fulva,
            grpc::Strategy::Rocksteady => Strategy::Rocksteady,
            grpc::Strategy::SourceDriven => Strategy::SourceDriven,
        }
    }
}

impl From<&ShardMap> for grpc::ShardMap {
    fn from(map: &ShardMap) -> Self {
        grpc::ShardMap {
            epoch: map.epoch,
            nodes: map
                .nodes
                .iter()
                .map(|n| grpc::NodeInfo {
                    id: n.id,
                    data_addr: n.data_addr.to_string(),
                    control_addr: n.control_addr.to_string(),
                })
                .collect(),
            shards: map
                .shards
                .iter()
                .map(|s| {
                    let (state, source, strategy) = match s.state {
                        ShardState::Normal => (grpc::ShardStateKind::ShardStateNormal, 0, Strategy::Fulva),
                        ShardState::Migrating { source, strategy } => {
                            (grpc::ShardStateKind::ShardStateMigrating, source, strategy)
                        }
                    };
                    grpc::Shard {
                        range: Some(s.range.into()),
                        owner: s.owner,
                        state: state as i32,
                        source,
                        strategy: grpc::Strategy::from(strategy) as i32,
                    }
                })
                .collect(),
        }
    }
}

impl TryFrom<grpc::ShardMap> for ShardMap {
    type Error = ShardMapError;
    fn try_from(msg: grpc::ShardMap) -> Result<Self, Self::Error> {
        let addr = |text: &str| {
            text.parse::<SocketAddr>()
                .map_err(|e| ShardMapError::Invalid(format!("bad address {text:?}: {e}")))
        };
        let nodes = msg
            .nodes
            .iter()
            .map(|n| {
                Ok(NodeInfo {
                    id: n.id,
                    data_addr: addr(&n.data_addr)?,
                    control_addr: addr(&n.control_addr)?,
                })
            })
            .collect::<Result<Vec<_>, ShardMapError>>()?;
        let shards = msg
            .shards
            .into_iter()
            .map(|s| {
                let state = match grpc::ShardStateKind::try_from(s.state) {
                    Ok(grpc::ShardStateKind::ShardStateNormal) => ShardState::Normal,
                    Ok(grpc::ShardStateKind::ShardStateMigrating) => ShardState::Migrating {
                        source: s.source,
                        strategy: grpc::Strategy::try_from(s.strategy)
                            .map_err(|_| ShardMapError::Invalid(format!("unknown strategy {}", s.strategy)))?
                            .into(),
                    },
                    Err(_) => return Err(ShardMapError::Invalid(format!("unknown shard state {}", s.state))),
                };
                Ok(Shard { range: HashRange::try_from(s.range)?, owner: s.owner, state })
            })
            .collect::<Result<Vec<_>, ShardMapError>>()?;
        let map = ShardMap { epoch: msg.epoch, nodes, shards };
        map.validate()?;
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(parts: u64, nodes: u32) -> ShardMap {
        let infos = (0..nodes)
            .map(|id| NodeInfo {
                id,
                data_addr: format!("127.0.0.1:{}", 7000 + id).parse().unwrap(),
                control_addr: format!("127.0.0.1:{}", 8000 + id).parse().unwrap(),
            })
            .collect();
        let shards = HashRange::FULL
            .divide(parts)
            .into_iter()
            .enumerate()
            .map(|(i, range)| Shard { range, owner: i as u32 % nodes, state: ShardState::Normal })
            .collect();
        ShardMap { epoch: 7, nodes: infos, shards }
    }

    #[test]
    fn owner_lookup_matches_linear_scan() {
        let m = map(13, 3);
        for hash in [0, 1, u64::MAX, u64::MAX / 2, 0x1234_5678_9abc_def0] {
            let linear = m.shards.iter().find(|s| s.range.contains(hash)).map(|s| s.owner);
            assert_eq!(m.owner_of(hash), linear);
        }
    }

    #[test]
    fn grpc_round_trip_keeps_the_map() {
        let mut m = map(6, 3);
        m.shards[2].state = ShardState::Migrating { source: 1, strategy: Strategy::Rocksteady };
        let back = ShardMap::try_from(grpc::ShardMap::from(&m)).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn validate_rejects_gaps_and_unknown_nodes() {
        let mut m = map(4, 2);
        assert_eq!(m.validate(), Ok(()));
        m.shards.remove(1);
        assert!(matches!(m.validate(), Err(ShardMapError::NotTiled(_))));
        let mut m = map(4, 2);
        m.shards[0].owner = 9;
        assert!(matches!(m.validate(), Err(ShardMapError::UnknownNode { node: 9, .. })));
        let mut m = map(4, 2);
        m.shards.pop();
        assert!(matches!(m.validate(), Err(ShardMapError::NotTiled(_))));
    }

    #[test]
    fn json_round_trip() {
        let mut m = map(3, 2);
        m.shards[0].state = ShardState::Migrating { source: 1, strategy: Strategy::SourceDriven };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<ShardMap>(&text).unwrap(), m);
    }
}
