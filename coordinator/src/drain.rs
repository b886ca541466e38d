//! Draining a node: every range it owns moves to the other nodes with live
//! moves, so the node can be stopped (an upgrade, maintenance of its machine)
//! without losing an object or failing a request. `fulva drain` and
//! `fulva roll` run it through the admin service; the operator runs it
//! before it deletes a kvnode pod.
//!
//! First a capacity check: when the policy caps a node's bytes
//! (`maxNodeBytes`), the other nodes must have room for the drained node's
//! bytes, or nothing moves. Then each range (largest first) goes to the
//! receiving node with the fewest bytes so far, up to `concurrency` moves at
//! once, each under the policy's bandwidth limit. A move that fails is rolled
//! back by [`Coordinator::migrate`] (its range stays on the node) and the
//! drain stops with that error: the caller must not stop the node then.

use crate::coordinator::{Coordinator, CoordinatorError};
use crate::moves::{MoveOptions, MoveReport};
use crate::policy::RebalancePolicy;
use fulva_proto::grpc::GetStatsRequest;
use fulva_proto::{HashRange, NodeId, ShardState, Strategy};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How a drain runs.
#[derive(Clone, Debug)]
pub struct DrainOptions {
    /// Strategy, bandwidth limit and timeouts of each move.
    pub moves: MoveOptions,
    /// Moves running at once.
    pub concurrency: usize,
    /// Most bytes a node may hold (0: no cap): receivers are filled up to it
    /// and no further, and a drain that would need more is refused up front.
    pub max_node_bytes: u64,
    /// Nodes that receive nothing (the policy's excluded nodes, other nodes
    /// being drained).
    pub excluded: Vec<NodeId>,
}

impl Default for DrainOptions {
    fn default() -> Self {
        DrainOptions {
            moves: MoveOptions::default(),
            concurrency: 1,
            max_node_bytes: 0,
            excluded: Vec::new(),
        }
    }
}

impl DrainOptions {
    /// The limits of `policy`: its strategy, bandwidth, moves per node, node
    /// byte cap and excluded nodes.
    pub fn from_policy(policy: &RebalancePolicy) -> DrainOptions {
        DrainOptions {
            moves: MoveOptions {
                strategy: Strategy::from(policy.strategy),
                rate_limit_bytes_per_sec: policy.rate_limit_bytes_per_sec(),
                ..MoveOptions::default()
            },
            concurrency: policy.max_moves_per_node.clamp(1, policy.max_concurrent_moves.max(1)) as usize,
            max_node_bytes: policy.max_node_bytes,
            excluded: policy.excluded_nodes.clone(),
        }
    }
}

/// Why a drain did not (or could not) finish.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// The map names no such node.
    #[error("node {node} is not in the map")]
    UnknownNode {
        /// The node.
        node: NodeId,
    },
    /// No other node may receive a range (all excluded, draining or silent).
    #[error("no other node can take node {node}'s ranges (every other node is excluded, draining or not answering)")]
    NoReceiver {
        /// The node.
        node: NodeId,
    },
    /// The other nodes cannot hold the drained node's bytes under the cap.
    #[error(
        "the other nodes cannot hold node {node}'s {needed} bytes: {free} bytes free under the \
         policy's maxNodeBytes of {cap} per node"
    )]
    NoCapacity {
        /// The node.
        node: NodeId,
        /// Bytes it holds.
        needed: u64,
        /// Room left on the receivers.
        free: u64,
        /// The cap per node.
        cap: u64,
    },
    /// A move failed (and was rolled back: the range is still on the node).
    #[error("moving {range} off node {node} to node {to} failed: {source}")]
    MoveFailed {
        /// The node being drained.
        node: NodeId,
        /// The range.
        range: HashRange,
        /// Where it was going.
        to: NodeId,
        /// What went wrong.
        source: CoordinatorError,
    },
    /// The node kept receiving ranges (something else moves ranges onto it).
    #[error(
        "node {node} still owns {left} ranges after {rounds} rounds; is something moving ranges onto it?"
    )]
    NotConverging {
        /// The node.
        node: NodeId,
        /// Ranges it still owns.
        left: usize,
        /// Rounds tried.
        rounds: usize,
    },
    /// Reading the cluster failed.
    #[error(transparent)]
    Coordinator(#[from] CoordinatorError),
}

/// Where a drain stands (given to the progress callback after each move).
#[derive(Clone, Debug, PartialEq)]
pub struct DrainProgress {
    /// The node being drained.
    pub node: NodeId,
    /// Ranges moved off so far.
    pub moved: usize,
    /// Ranges to move in all.
    pub total: usize,
    /// Key and value bytes moved so far.
    pub bytes: u64,
    /// The move that just ended.
    pub last: Option<(HashRange, NodeId)>,
}

/// What a finished drain did.
#[derive(Clone, Debug, PartialEq)]
pub struct DrainReport {
    /// The node drained (it owns nothing now).
    pub node: NodeId,
    /// Each move.
    pub moves: Vec<MoveReport>,
    /// Key and value bytes moved.
    pub bytes: u64,
    /// From the first move to the last.
    pub duration: Duration,
}

/// Bytes each answering node holds, and per range for the drained node.
struct Holdings {
    node_bytes: HashMap<NodeId, u64>,
    range_bytes: HashMap<HashRange, u64>,
}

impl Coordinator {
    async fn holdings(&self, node: NodeId) -> Result<Holdings, CoordinatorError> {
        let map = self.map();
        let mut node_bytes = HashMap::new();
        let mut range_bytes = HashMap::new();
        for info in &map.nodes {
            // The drained node must answer (its bytes decide the plan); a
            // silent other node simply receives nothing.
            let stats = match self.node_client(info.id).await {
                Ok(mut client) => client.get_stats(GetStatsRequest {}).await.map_err(CoordinatorError::from),
                Err(err) => Err(err),
            };
            let stats = match stats {
                Ok(stats) => stats,
                Err(err) if info.id == node => return Err(err),
                Err(_) => continue,
            };
            node_bytes.insert(info.id, stats.bytes);
            if info.id == node {
                for r in stats.ranges {
                    if let Ok(range) = HashRange::try_from(r.range) {
                        range_bytes.insert(range, r.bytes);
                    }
                }
            }
        }
        Ok(Holdings { node_bytes, range_bytes })
    }

    /// Refuses a drain of `node` the other nodes cannot take (no receiver,
    /// or not enough room under `options.max_node_bytes`). Returns the bytes
    /// the node holds.
    pub async fn check_drain_capacity(
        &self,
        node: NodeId,
        options: &DrainOptions,
    ) -> Result<u64, DrainError> {
        if self.map().node(node).is_none() {
            return Err(DrainError::UnknownNode { node });
        }
        let holdings = self.holdings(node).await?;
        let needed = holdings.node_bytes.get(&node).copied().unwrap_or(0);
        let receivers: Vec<NodeId> = holdings
            .node_bytes
            .keys()
            .copied()
            .filter(|&n| n != node && !options.excluded.contains(&n))
            .collect();
        let owns_any = self.map().shards.iter().any(|s| s.owner == node);
        if receivers.is_empty() && owns_any {
            return Err(DrainError::NoReceiver { node });
        }
        if options.max_node_bytes > 0 {
            let free: u64 =
                receivers.iter().map(|n| options.max_node_bytes.saturating_sub(holdings.node_bytes[n])).sum();
            if free < needed {
                return Err(DrainError::NoCapacity { node, needed, free, cap: options.max_node_bytes });
            }
        }
        Ok(needed)
    }

    /// Moves every range `node` owns to the other nodes (see the module
    /// documentation); `progress` hears of each move that ends. On success
    /// the node owns nothing and may be stopped.
    pub async fn drain(
        &self,
        node: NodeId,
        options: &DrainOptions,
        mut progress: impl FnMut(&DrainProgress),
    ) -> Result<DrainReport, DrainError> {
        let started = Instant::now();
        self.check_drain_capacity(node, options).await?;
        let mut report = DrainReport { node, moves: Vec::new(), bytes: 0, duration: Duration::ZERO };
        const ROUNDS: usize = 5;
        for _ in 0..ROUNDS {
            let owned = self.ranges_owned_or_moving(node).await;
            if owned.is_empty() {
                report.duration = started.elapsed();
                tracing::info!(node, moves = report.moves.len(), bytes = report.bytes, "node drained");
                return Ok(report);
            }
            self.drain_round(node, options, owned, &mut report, &mut progress).await?;
        }
        let left = self.ranges_owned_or_moving(node).await.len();
        if left == 0 {
            report.duration = started.elapsed();
            return Ok(report);
        }
        Err(DrainError::NotConverging { node, left, rounds: ROUNDS })
    }

    /// The Normal ranges `node` owns; first waits for moves it is part of.
    async fn ranges_owned_or_moving(&self, node: NodeId) -> Vec<HashRange> {
        loop {
            let map = self.map();
            let moving = map.shards.iter().any(|s| match s.state {
                ShardState::Migrating { source, .. } => source == node || s.owner == node,
                ShardState::Normal => false,
            });
            if !moving {
                return map.shards.iter().filter(|s| s.owner == node).map(|s| s.range).collect();
            }
            let mut changed = self.subscribe();
            let _ = tokio::time::timeout(Duration::from_millis(200), changed.changed()).await;
        }
    }

    async fn drain_round(
        &self,
        node: NodeId,
        options: &DrainOptions,
        owned: Vec<HashRange>,
        report: &mut DrainReport,
        progress: &mut impl FnMut(&DrainProgress),
    ) -> Result<(), DrainError> {
        let holdings = self.holdings(node).await?;
        let mut load: HashMap<NodeId, u64> = holdings
            .node_bytes
            .iter()
            .filter(|(&n, _)| n != node && !options.excluded.contains(&n))
            .map(|(&n, &b)| (n, b))
            .collect();
        if load.is_empty() {
            return Err(DrainError::NoReceiver { node });
        }
        // Largest first, each to the receiver holding the fewest bytes so far.
        let mut ranges: Vec<(HashRange, u64)> =
            owned.iter().map(|r| (*r, holdings.range_bytes.get(r).copied().unwrap_or(0))).collect();
        ranges.sort_by_key(|&(r, bytes)| (std::cmp::Reverse(bytes), r.first));
        // Ties (empty ranges) go round: the fewest ranges given so far, then the lowest id.
        let mut given: HashMap<NodeId, usize> = HashMap::new();
        let mut plan = Vec::new();
        for (range, bytes) in ranges {
            let to = *load
                .keys()
                .min_by_key(|&&n| (load[&n], given.get(&n).copied().unwrap_or(0), n))
                .expect("receivers exist");
            *load.get_mut(&to).expect("a receiver") += bytes;
            *given.entry(to).or_default() += 1;
            plan.push((range, to));
        }
        let total = report.moves.len() + plan.len();
        let mut pending = plan.into_iter();
        let mut running = FuturesUnordered::new();
        let mut failure = None;
        loop {
            while failure.is_none() && running.len() < options.concurrency.max(1) {
                let Some((range, to)) = pending.next() else { break };
                tracing::info!(node, %range, to, "drain: moving a range off");
                let moves = options.moves;
                running.push(async move { (range, to, self.migrate(range, to, moves, |_| {}).await) });
            }
            let Some((range, to, result)) = running.next().await else { break };
            match result {
                Ok(moved) => {
                    report.bytes += moved.bytes;
                    report.moves.push(moved);
                    progress(&DrainProgress {
                        node,
                        moved: report.moves.len(),
                        total,
                        bytes: report.bytes,
                        last: Some((range, to)),
                    });
                }
                Err(source) => {
                    tracing::warn!(node, %range, to, error = %source, "drain: a move failed; stopping the drain");
                    failure.get_or_insert(DrainError::MoveFailed { node, range, to, source });
                }
            }
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}
