//! The coordinator: holds the shard map, changes it with compare-and-set on
//! the epoch, and pushes ownership to the nodes.

use crate::map_store::{MapStore, MapStoreError};
use fulva_proto::grpc::node_control_client::NodeControlClient;
use fulva_proto::grpc::{AssignRangeRequest, SetEpochRequest};
use fulva_proto::{Epoch, HashRange, NodeId, NodeInfo, Shard, ShardMap, ShardMapError, ShardState};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{watch, Mutex};
use tonic::transport::Channel;

/// Failures of the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// Persisting or loading the map failed.
    #[error(transparent)]
    Store(#[from] MapStoreError),
    /// A proposed map is invalid.
    #[error(transparent)]
    InvalidMap(#[from] ShardMapError),
    /// The map changed since the caller read it.
    #[error("the shard map moved on: expected epoch {expected}, current {current}")]
    EpochConflict {
        /// Epoch the change was based on.
        expected: Epoch,
        /// Epoch in force.
        current: Epoch,
    },
    /// A node could not be reached or refused a call.
    #[error("node {node} at {addr}: {message}")]
    Node {
        /// Node id.
        node: NodeId,
        /// Its control address.
        addr: String,
        /// What went wrong.
        message: String,
    },
    /// A move or split cannot be done.
    #[error("{0}")]
    Move(String),
    /// A move was aborted (on request or after a failure) and rolled back:
    /// the range is served by its source again, with every write kept.
    #[error("move of {range} aborted ({reason}); the range is back on node {back_on}")]
    Aborted {
        /// The range.
        range: HashRange,
        /// Node serving it again (the move's source).
        back_on: NodeId,
        /// Why.
        reason: String,
        /// Whether the destination had served the range (its writes were carried back).
        carried_back: bool,
    },
    /// Bootstrap was asked for something impossible.
    #[error("cannot bootstrap: {0}")]
    Bootstrap(String),
    /// A node of a move did not answer for longer than the move's node timeout.
    #[error("node {node} did not answer for {seconds:.1} s")]
    NodeLost {
        /// The node.
        node: NodeId,
        /// How long it was silent.
        seconds: f64,
    },
    /// A move made no progress for longer than its stall timeout.
    #[error("move of {range} made no progress for {seconds:.1} s")]
    Stalled {
        /// The range.
        range: HashRange,
        /// How long nothing moved.
        seconds: f64,
    },
}

/// How long the coordinator waits to connect to a node.
pub const NODE_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long one control call to a node may take.
pub const NODE_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The one writer of the shard map.
pub struct Coordinator {
    store: Arc<dyn MapStore>,
    current: Mutex<ShardMap>,
    published: watch::Sender<Arc<ShardMap>>,
    clients: Mutex<HashMap<NodeId, NodeControlClient<Channel>>>,
    pub(crate) running: parking_lot::Mutex<HashMap<HashRange, RunningMove>>,
}

/// A move in progress, as the coordinator tracks it.
#[derive(Clone, Debug)]
pub(crate) struct RunningMove {
    pub(crate) destination: NodeId,
    pub(crate) abort: tokio_util::sync::CancellationToken,
}

impl Coordinator {
    /// Builds a fresh map that spreads `shard_count` equal ranges over `nodes`
    /// round-robin, stores it (replacing nothing: the store must be empty
    /// unless `replace` is set) and assigns every range to its node.
    pub async fn bootstrap(
        store: Arc<dyn MapStore>,
        nodes: Vec<NodeInfo>,
        shard_count: u32,
        replace: bool,
    ) -> Result<Coordinator, CoordinatorError> {
        if nodes.is_empty() {
            return Err(CoordinatorError::Bootstrap("no nodes".into()));
        }
        if shard_count == 0 {
            return Err(CoordinatorError::Bootstrap("the shard count must be at least 1".into()));
        }
        let previous = store.load().await?;
        if previous.is_some() && !replace {
            return Err(CoordinatorError::Bootstrap("a shard map is already stored; open it instead".into()));
        }
        let shards = HashRange::FULL
            .divide(u64::from(shard_count))
            .into_iter()
            .enumerate()
            .map(|(i, range)| Shard { range, owner: nodes[i % nodes.len()].id, state: ShardState::Normal })
            .collect();
        let epoch = previous.as_ref().map_or(0, |m| m.epoch) + 1;
        let map = ShardMap { epoch, nodes, shards };
        map.validate()?;
        store.compare_and_set(previous.map(|m| m.epoch), &map).await?;
        let coordinator = Coordinator::with_map(store, map.clone());
        for shard in &map.shards {
            coordinator.assign(shard.owner, shard.range, map.epoch, 0).await?;
        }
        coordinator.broadcast_epoch(&map).await;
        tracing::info!(
            epoch = map.epoch,
            nodes = map.nodes.len(),
            shards = map.shards.len(),
            "shard map bootstrapped"
        );
        Ok(coordinator)
    }

    /// Opens the map already in `store` (after a coordinator restart).
    pub async fn open(store: Arc<dyn MapStore>) -> Result<Option<Coordinator>, CoordinatorError> {
        Ok(store.load().await?.map(|map| Coordinator::with_map(store, map)))
    }

    fn with_map(store: Arc<dyn MapStore>, map: ShardMap) -> Coordinator {
        let (published, _) = watch::channel(Arc::new(map.clone()));
        Coordinator {
            store,
            current: Mutex::new(map),
            published,
            clients: Mutex::new(HashMap::new()),
            running: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// The map in force.
    pub fn map(&self) -> Arc<ShardMap> {
        self.published.borrow().clone()
    }

    /// Follows map changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ShardMap>> {
        self.published.subscribe()
    }

    /// Replaces the map with `change(map)` if its epoch is still `expected`.
    /// The new map gets epoch `expected + 1`, is validated, persisted, then published.
    pub async fn compare_and_set(
        &self,
        expected: Epoch,
        change: impl FnOnce(&mut ShardMap),
    ) -> Result<Arc<ShardMap>, CoordinatorError> {
        let mut current = self.current.lock().await;
        if current.epoch != expected {
            return Err(CoordinatorError::EpochConflict { expected, current: current.epoch });
        }
        self.apply(&mut current, change).await
    }

    async fn apply(
        &self,
        current: &mut ShardMap,
        change: impl FnOnce(&mut ShardMap),
    ) -> Result<Arc<ShardMap>, CoordinatorError> {
        let expected = current.epoch;
        let mut next = current.clone();
        change(&mut next);
        next.epoch = expected + 1;
        next.validate()?;
        self.store.compare_and_set(Some(expected), &next).await?;
        *current = next.clone();
        let next = Arc::new(next);
        self.published.send_replace(next.clone());
        Ok(next)
    }

    /// Applies `change` to the map in force (the coordinator is the one
    /// writer, so this is a compare-and-set on the current epoch).
    pub async fn update(
        &self,
        change: impl FnOnce(&mut ShardMap),
    ) -> Result<Arc<ShardMap>, CoordinatorError> {
        let mut current = self.current.lock().await;
        self.apply(&mut current, change).await
    }

    async fn client(&self, node: NodeId) -> Result<NodeControlClient<Channel>, CoordinatorError> {
        let mut clients = self.clients.lock().await;
        if let Some(client) = clients.get(&node) {
            return Ok(client.clone());
        }
        let map = self.map();
        let info = map.node(node).ok_or_else(|| CoordinatorError::Node {
            node,
            addr: "?".into(),
            message: "not in the shard map".into(),
        })?;
        let addr = info.control_addr.to_string();
        // Bounded: a node that is gone must not hold a move (or the map) for minutes.
        let channel = Channel::from_shared(format!("http://{addr}"))
            .map_err(|e| CoordinatorError::Node { node, addr: addr.clone(), message: e.to_string() })?
            .connect_timeout(NODE_CONNECT_TIMEOUT)
            .timeout(NODE_CALL_TIMEOUT)
            .connect()
            .await
            .map_err(|e| CoordinatorError::Node { node, addr: addr.clone(), message: e.to_string() })?;
        let client = NodeControlClient::new(channel);
        clients.insert(node, client.clone());
        Ok(client)
    }

    /// Tells `node` to serve `range` as of `epoch`.
    pub async fn assign(
        &self,
        node: NodeId,
        range: HashRange,
        epoch: Epoch,
        version_floor: u64,
    ) -> Result<(), CoordinatorError> {
        let mut client = self.client(node).await?;
        client
            .assign_range(AssignRangeRequest { range: Some(range.into()), epoch, version_floor })
            .await
            .map_err(|s| self.node_error(node, s))?;
        Ok(())
    }

    /// Tells every node the map's epoch; unreachable nodes are logged and skipped.
    pub async fn broadcast_epoch(&self, map: &ShardMap) {
        for node in &map.nodes {
            let result = match self.client(node.id).await {
                Ok(mut c) => c
                    .set_epoch(SetEpochRequest { epoch: map.epoch })
                    .await
                    .map(|_| ())
                    .map_err(|s| self.node_error(node.id, s)),
                Err(e) => Err(e),
            };
            if let Err(err) = result {
                tracing::warn!(node = node.id, error = %err, "could not tell a node the new epoch");
            }
        }
    }

    /// Makes the map list `nodes` (new ids are added, known ids get their
    /// addresses updated); the new map is published and every node told.
    /// New nodes own nothing until ranges move to them.
    pub async fn upsert_nodes(&self, nodes: Vec<NodeInfo>) -> Result<Arc<ShardMap>, CoordinatorError> {
        let map = self.map();
        let changed = nodes.iter().any(|n| map.node(n.id) != Some(n));
        if !changed {
            return Ok(map);
        }
        // Cached connections may point at old addresses.
        {
            let mut clients = self.clients.lock().await;
            for n in &nodes {
                if map.node(n.id).is_some_and(|old| old != n) {
                    clients.remove(&n.id);
                }
            }
        }
        let next = self
            .update(|m| {
                for n in nodes {
                    match m.nodes.iter_mut().find(|o| o.id == n.id) {
                        Some(old) => *old = n,
                        None => m.nodes.push(n),
                    }
                }
                m.nodes.sort_by_key(|n| n.id);
            })
            .await?;
        self.broadcast_epoch(&next).await;
        Ok(next)
    }

    /// Removes `node` from the map; refused while it owns or sends a range.
    pub async fn remove_node(&self, node: NodeId) -> Result<Arc<ShardMap>, CoordinatorError> {
        let map = self.map();
        if map.node(node).is_none() {
            return Ok(map);
        }
        let busy = map.shards.iter().any(|s| {
            s.owner == node || matches!(s.state, ShardState::Migrating { source, .. } if source == node)
        });
        if busy {
            return Err(CoordinatorError::Move(format!("node {node} still holds ranges; drain it first")));
        }
        self.clients.lock().await.remove(&node);
        self.update(|m| m.nodes.retain(|n| n.id != node)).await
    }

    /// A gRPC client for `node`'s control service.
    pub async fn node_client(&self, node: NodeId) -> Result<NodeControlClient<Channel>, CoordinatorError> {
        self.client(node).await
    }

    fn node_error(&self, node: NodeId, status: tonic::Status) -> CoordinatorError {
        let addr = self.map().node(node).map_or_else(|| "?".into(), |n| n.control_addr.to_string());
        CoordinatorError::Node { node, addr, message: format!("{}: {}", status.code(), status.message()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryMapStore;
    use fulva_kvnode::NodeConfig;

    #[tokio::test]
    async fn bootstrap_assigns_every_range_to_its_node() {
        let mut nodes = Vec::new();
        let mut infos = Vec::new();
        for id in 0..3 {
            let node = fulva_kvnode::start(NodeConfig::loopback(id)).await.unwrap();
            infos.push(NodeInfo { id, data_addr: node.data_addr, control_addr: node.control_addr });
            nodes.push(node);
        }
        let store = Arc::new(MemoryMapStore::default());
        let c = Coordinator::bootstrap(store.clone(), infos, 6, false).await.unwrap();
        let map = c.map();
        assert_eq!(map.epoch, 1);
        for node in &nodes {
            let served = node.handler.ownership.ranges();
            let expected: Vec<_> =
                map.shards.iter().filter(|s| s.owner == node.node_id).map(|s| s.range).collect();
            assert_eq!(served, expected);
            assert_eq!(node.handler.ownership.epoch(), 1);
        }
        // A second bootstrap onto a used store is refused unless asked to replace.
        assert!(Coordinator::bootstrap(store.clone(), map.nodes.clone(), 3, false).await.is_err());
        // Compare-and-set: a change based on a stale epoch is refused.
        let next = c.compare_and_set(1, |m| m.shards[0].owner = 1).await.unwrap();
        assert_eq!(next.epoch, 2);
        assert!(matches!(
            c.compare_and_set(1, |_| {}).await,
            Err(CoordinatorError::EpochConflict { current: 2, .. })
        ));
        assert!(matches!(
            c.compare_and_set(2, |m| m.shards[0].owner = 99).await,
            Err(CoordinatorError::InvalidMap(_))
        ));
        assert_eq!(store.load().await.unwrap().unwrap().epoch, 2);
        for node in nodes {
            node.shutdown().await;
        }
    }
}
