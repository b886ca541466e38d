//! The coordinator: holds the shard map, changes it with compare-and-set on
//! the epoch, and pushes ownership to the nodes.

use crate::liveness::{LossCause, RangeLoss, LOSSES_KEPT};
use crate::map_store::{MapStore, MapStoreError};
use crate::node_client::{NodeClient, NodeError};
use fulva_proto::grpc::{AssignRangeRequest, PullFailure, SetEpochRequest};
use fulva_proto::{Epoch, HashRange, NodeId, NodeInfo, Shard, ShardMap, ShardMapError, ShardState};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{watch, Mutex};

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
    /// A call to a node failed (which node, which call, what kind of failure).
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The map names no such node.
    #[error("unknown node {node}")]
    UnknownNode {
        /// The node asked for.
        node: NodeId,
    },
    /// A move names a destination the map does not know.
    #[error("unknown destination node {node}")]
    UnknownDestination {
        /// The node asked for.
        node: NodeId,
    },
    /// No shard of the map holds this hash (the map does not cover the space).
    #[error("no shard holds {hash:#x}")]
    NoShard {
        /// The hash.
        hash: u64,
    },
    /// A split point is not inside the shard (or is its first hash).
    #[error("cannot split {range} at {at:#x}")]
    BadSplit {
        /// The shard.
        range: HashRange,
        /// The split point.
        at: u64,
    },
    /// The range (or the shard around it) is moving, so it cannot be split or moved.
    #[error("range {range} is already moving")]
    Moving {
        /// The range.
        range: HashRange,
    },
    /// After splitting at its ends the range is still not exactly one shard.
    #[error("range {range} is not a shard after splitting")]
    NotAShard {
        /// The range.
        range: HashRange,
    },
    /// A move to the node that already owns the range.
    #[error("range {range} is already on node {node}")]
    AlreadyThere {
        /// The range.
        range: HashRange,
        /// Its owner.
        node: NodeId,
    },
    /// No move of the range runs on this coordinator.
    #[error("no move of {range} is running")]
    NoSuchMove {
        /// The range.
        range: HashRange,
    },
    /// A node cannot leave the map while it holds ranges.
    #[error("node {node} still holds ranges; drain it first")]
    NodeBusy {
        /// The node.
        node: NodeId,
    },
    /// The destination's pull from the source failed for good.
    #[error("move of {range} failed at the destination: {detail}")]
    PullFailed {
        /// The range.
        range: HashRange,
        /// Why, as the destination reports it.
        reason: PullFailure,
        /// The destination's words.
        detail: String,
    },
    /// A pull relayed through the coordinator ended before its last batch.
    #[error("the relayed pull of {range} ended before its last batch")]
    RelayTruncated {
        /// The range.
        range: HashRange,
    },
    /// The move was asked to stop (an internal step of [`Coordinator::migrate`]'s roll-back).
    #[error("aborted")]
    AbortRequested,
    /// A roll-back was asked of a move that had already committed.
    #[error("the move of {range} had already committed")]
    AlreadyCommitted {
        /// The range.
        range: HashRange,
    },
    /// A move was aborted (on request or after a failure) and rolled back:
    /// the range is served by its source again, with every write kept.
    #[error("move of {range} aborted ({reason}); the range is back on node {back_on}")]
    Aborted {
        /// The range.
        range: HashRange,
        /// Node serving it again (the move's source).
        back_on: NodeId,
        /// Why.
        reason: AbortReason,
        /// Whether the destination had served the range (its writes were carried back).
        carried_back: bool,
    },
    /// A move stopped and its roll-back failed too.
    #[error("move of {range} stopped ({reason}) and could not be rolled back: {rollback}")]
    RollbackFailed {
        /// The range.
        range: HashRange,
        /// Why it stopped.
        reason: AbortReason,
        /// Why the roll-back failed.
        rollback: Box<CoordinatorError>,
    },
    /// Bootstrap was asked for something impossible.
    #[error("cannot bootstrap: {0}")]
    Bootstrap(BootstrapError),
    /// Recovery found the nodes in a state it will not guess about.
    #[error("recovery: {0}")]
    Recovery(#[from] RecoveryError),
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

/// Why a move was aborted.
#[derive(Debug, thiserror::Error)]
pub enum AbortReason {
    /// [`Coordinator::abort_move`] asked for it.
    #[error("on request")]
    OnRequest,
    /// The destination was lost after it served: the writes it alone took since the freeze are lost.
    #[error("destination node {node} lost: the writes it took since the freeze are lost with it")]
    DestinationLost {
        /// The destination.
        node: NodeId,
    },
    /// A step of the move failed.
    #[error(transparent)]
    Failed(Box<CoordinatorError>),
}

/// Why a bootstrap was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BootstrapError {
    /// No nodes were given.
    #[error("no nodes")]
    NoNodes,
    /// Zero shards were asked for.
    #[error("the shard count must be at least 1")]
    NoShards,
    /// The store already holds a map (and replacing was not asked for).
    #[error("a shard map is already stored; open it instead")]
    AlreadyStored,
}

/// What recovery refuses to repair by guessing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryError {
    /// Repairs kept finding more to do.
    #[error("recovery did not converge")]
    NotConverged,
    /// The owner holds the range as a move that never started, and its peer does not serve it.
    #[error(
        "node {node} holds {range} as a move from node {peer} that never started, \
         and that node does not serve it: refusing to guess"
    )]
    UnstartedMove {
        /// The owner.
        node: NodeId,
        /// The range.
        range: HashRange,
        /// The move's other end.
        peer: NodeId,
    },
    /// A node serves a range the map gives to another node.
    #[error("node {node} serves {range} which the map gives to node {owner}")]
    ForeignRange {
        /// The node serving it.
        node: NodeId,
        /// The range.
        range: HashRange,
        /// The map's owner.
        owner: NodeId,
    },
    /// A move to roll forward had not started at its destination.
    #[error("the move of {range} into node {node} never started")]
    NeverStarted {
        /// The range.
        range: HashRange,
        /// The destination.
        node: NodeId,
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
    clients: Mutex<HashMap<NodeId, NodeClient>>,
    pub(crate) running: parking_lot::Mutex<HashMap<HashRange, RunningMove>>,
    losses: parking_lot::Mutex<std::collections::VecDeque<RangeLoss>>,
    loss_seq: std::sync::atomic::AtomicU64,
    tls: Option<fulva_tls::Tls>,
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
        Coordinator::bootstrap_with_tls(store, nodes, shard_count, replace, None).await
    }

    /// [`Coordinator::bootstrap`], calling the nodes with `tls` (the
    /// coordinator's certificate; none: plain TCP).
    pub async fn bootstrap_with_tls(
        store: Arc<dyn MapStore>,
        nodes: Vec<NodeInfo>,
        shard_count: u32,
        replace: bool,
        tls: Option<fulva_tls::Tls>,
    ) -> Result<Coordinator, CoordinatorError> {
        if nodes.is_empty() {
            return Err(CoordinatorError::Bootstrap(BootstrapError::NoNodes));
        }
        if shard_count == 0 {
            return Err(CoordinatorError::Bootstrap(BootstrapError::NoShards));
        }
        let previous = store.load().await?;
        if previous.is_some() && !replace {
            return Err(CoordinatorError::Bootstrap(BootstrapError::AlreadyStored));
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
        let coordinator = Coordinator::with_map(store, map.clone(), tls);
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
        Coordinator::open_with_tls(store, None).await
    }

    /// [`Coordinator::open`], calling the nodes with `tls`.
    pub async fn open_with_tls(
        store: Arc<dyn MapStore>,
        tls: Option<fulva_tls::Tls>,
    ) -> Result<Option<Coordinator>, CoordinatorError> {
        Ok(store.load().await?.map(|map| Coordinator::with_map(store, map, tls)))
    }

    /// The coordinator's TLS (none: it runs without).
    pub fn tls(&self) -> Option<&fulva_tls::Tls> {
        self.tls.as_ref()
    }

    pub(crate) fn client_tls(&self) -> Option<&Arc<fulva_tls::ClientTls>> {
        self.tls.as_ref().map(|t| &t.client)
    }

    fn with_map(store: Arc<dyn MapStore>, map: ShardMap, tls: Option<fulva_tls::Tls>) -> Coordinator {
        let (published, _) = watch::channel(Arc::new(map.clone()));
        Coordinator {
            store,
            current: Mutex::new(map),
            published,
            clients: Mutex::new(HashMap::new()),
            running: parking_lot::Mutex::new(HashMap::new()),
            losses: parking_lot::Mutex::new(std::collections::VecDeque::new()),
            loss_seq: std::sync::atomic::AtomicU64::new(0),
            tls,
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

    async fn client(&self, node: NodeId) -> Result<NodeClient, CoordinatorError> {
        let mut clients = self.clients.lock().await;
        if let Some(client) = clients.get(&node) {
            return Ok(client.clone());
        }
        let map = self.map();
        let info = map.node(node).ok_or(CoordinatorError::UnknownNode { node })?;
        // Bounded: a node that is gone must not hold a move (or the map) for minutes.
        let client = NodeClient::connect(
            node,
            info.control_addr.to_string(),
            NODE_CONNECT_TIMEOUT,
            NODE_CALL_TIMEOUT,
            self.client_tls(),
        )
        .await?;
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
        client.assign_range(AssignRangeRequest { range: Some(range.into()), epoch, version_floor }).await?;
        Ok(())
    }

    /// Tells every node the map's epoch; unreachable nodes are logged and skipped.
    pub async fn broadcast_epoch(&self, map: &ShardMap) {
        for node in &map.nodes {
            let result = match self.client(node.id).await {
                Ok(mut c) => {
                    c.set_epoch(SetEpochRequest { epoch: map.epoch }).await.map(|_| ()).map_err(Into::into)
                }
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
            return Err(CoordinatorError::NodeBusy { node });
        }
        self.clients.lock().await.remove(&node);
        self.update(|m| m.nodes.retain(|n| n.id != node)).await
    }

    /// Serves each `(range, node)` of `given` from `node`, empty, and gives
    /// it to that node in the map (Normal), if the map is still at
    /// `expected`; `None` when it moved on (nothing was changed then). The
    /// map is held meanwhile, so no other change slips between the nodes'
    /// assignment and the map's.
    pub(crate) async fn reassign_empty(
        &self,
        expected: Epoch,
        given: &[(HashRange, NodeId)],
    ) -> Result<Option<Arc<ShardMap>>, CoordinatorError> {
        let mut current = self.current.lock().await;
        if current.epoch != expected {
            return Ok(None);
        }
        for &(range, node) in given {
            self.assign(node, range, expected + 1, 0).await?;
        }
        let next = self
            .apply(&mut current, |m| {
                for &(range, node) in given {
                    if let Some(s) = m.shards.iter_mut().find(|s| s.range == range) {
                        s.owner = node;
                        s.state = ShardState::Normal;
                    }
                }
            })
            .await?;
        Ok(Some(next))
    }

    /// Records ranges of `node` declared lost (kept for display, newest last).
    pub(crate) fn record_loss(
        &self,
        node: NodeId,
        cause: LossCause,
        ranges: Vec<(HashRange, NodeId)>,
        epoch: Epoch,
    ) -> RangeLoss {
        let id = self.loss_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let loss = RangeLoss { id, node, cause, ranges, epoch, at: std::time::SystemTime::now() };
        let mut losses = self.losses.lock();
        if losses.len() == LOSSES_KEPT {
            losses.pop_front();
        }
        losses.push_back(loss.clone());
        loss
    }

    /// Ranges declared lost on this coordinator, oldest first (the last
    /// [`LOSSES_KEPT`]); see [`crate::liveness`].
    pub fn losses(&self) -> Vec<RangeLoss> {
        self.losses.lock().iter().cloned().collect()
    }

    /// The control client of `node` (connections are cached per node).
    pub async fn node_client(&self, node: NodeId) -> Result<NodeClient, CoordinatorError> {
        self.client(node).await
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
