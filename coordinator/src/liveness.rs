//! Nodes that restart or vanish. Fulva keeps each object in the memory of
//! one node, so a node that restarts comes back empty, and one that stays
//! gone takes its ranges with it. Left alone, the map would keep naming the
//! node as the owner of ranges nobody holds, and every request for them would
//! hang until the client's deadline.
//!
//! The watch asks every node for its stats once an interval. A range the map
//! gives a node (Normal, no move running) is **declared lost** when
//! - the node answers with a new incarnation and does not hold it
//!   ([`LossCause::Restarted`]: a restarted process),
//! - the node answers and does not hold it ([`LossCause::NotHeld`]: for
//!   instance it restarted while no coordinator watched),
//! - or the node has not answered for [`LivenessOptions::gone_after`]
//!   ([`LossCause::Gone`]).
//!
//! A lost range is assigned again, empty: to the node itself when it answers,
//! otherwise to the answering node that owns the fewest shards. The map's
//! epoch moves on so clients follow, a gone node is fenced (told to drop the
//! range should it answer again), and the loss is recorded
//! ([`Coordinator::losses`]), logged at error level and counted in
//! `fulva_ranges_lost_total`. Moves are left to their own failure handling
//! (docs/failures.md): a range that is moving is never declared lost here.

use crate::coordinator::{Coordinator, CoordinatorError};
use crate::metrics::OperatorMetrics;
use fulva_proto::grpc::GetStatsRequest;
use fulva_proto::{Epoch, HashRange, NodeId, ShardMap, ShardState};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// A range and the node that serves it from now on.
type Given = (HashRange, NodeId);

/// Losses kept for display (the operator's condition and Events).
pub const LOSSES_KEPT: usize = 64;

/// How often nodes are checked, and how long one may stay silent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LivenessOptions {
    /// Time between two checks of every node.
    pub interval: Duration,
    /// How long a node may not answer before its ranges are given to others.
    /// A restarted node is noticed at the next check regardless.
    pub gone_after: Duration,
    /// How long one stats call may take.
    pub call_timeout: Duration,
}

impl Default for LivenessOptions {
    fn default() -> Self {
        LivenessOptions {
            interval: Duration::from_secs(1),
            gone_after: Duration::from_secs(30),
            call_timeout: Duration::from_secs(2),
        }
    }
}

/// Why a range was declared lost.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LossCause {
    /// The node answered with a new incarnation: its process restarted empty.
    Restarted,
    /// The node answered without the range (seen after a coordinator restart,
    /// or by recovery).
    NotHeld,
    /// The node did not answer for this long.
    Gone {
        /// Seconds since its last answer (or since the watch first missed it).
        silent_secs: f64,
    },
}

impl LossCause {
    /// A short label (`restarted`, `not-held`, `gone`), for metrics.
    pub fn label(self) -> &'static str {
        match self {
            LossCause::Restarted => "restarted",
            LossCause::NotHeld => "not-held",
            LossCause::Gone { .. } => "gone",
        }
    }
}

impl std::fmt::Display for LossCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LossCause::Restarted => write!(f, "the node restarted"),
            LossCause::NotHeld => write!(f, "the node does not hold it"),
            LossCause::Gone { silent_secs } => write!(f, "the node did not answer for {silent_secs:.1} s"),
        }
    }
}

/// Ranges of one node declared lost at once, and where they went.
#[derive(Clone, Debug, PartialEq)]
pub struct RangeLoss {
    /// Sequence number of this loss on this coordinator (from 1).
    pub id: u64,
    /// The node that lost them.
    pub node: NodeId,
    /// Why.
    pub cause: LossCause,
    /// The ranges (everything in them is gone), each with the node that
    /// serves it, empty, from now on.
    pub ranges: Vec<(HashRange, NodeId)>,
    /// The map epoch that re-assigned them.
    pub epoch: Epoch,
    /// When.
    pub at: SystemTime,
}

impl std::fmt::Display for RangeLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {} lost {} range(s) ({}):", self.node, self.ranges.len(), self.cause)?;
        for (range, owner) in &self.ranges {
            write!(f, " {range} -> node {owner}")?;
        }
        write!(f, " (epoch {})", self.epoch)
    }
}

/// What the watch remembers of a node between checks.
#[derive(Clone, Copy, Debug)]
struct Seen {
    incarnation: Option<u64>,
    last_answer: Instant,
}

/// The watch's memory of the nodes (one per coordinator).
#[derive(Debug, Default)]
pub struct NodeWatch {
    seen: HashMap<NodeId, Seen>,
}

/// One node's answer in a check: its incarnation and the ranges it holds.
struct Answer {
    incarnation: u64,
    held: Vec<HashRange>,
}

impl NodeWatch {
    /// The incarnation last seen of `node`, if it ever answered.
    pub fn incarnation(&self, node: NodeId) -> Option<u64> {
        self.seen.get(&node).and_then(|s| s.incarnation)
    }
}

impl Coordinator {
    /// Checks every node once (see the module documentation) and declares
    /// lost what must be. Returns the losses declared by this check.
    pub async fn check_nodes(
        &self,
        watch: &mut NodeWatch,
        options: &LivenessOptions,
    ) -> Result<Vec<RangeLoss>, CoordinatorError> {
        let map = self.map();
        let answers = self.ask_nodes(&map, options.call_timeout).await;
        let now = Instant::now();
        let mut restarted = HashSet::new();
        for node in &map.nodes {
            let seen = watch.seen.entry(node.id).or_insert(Seen { incarnation: None, last_answer: now });
            if let Some(answer) = answers.get(&node.id) {
                if seen.incarnation.is_some_and(|i| i != answer.incarnation) {
                    tracing::warn!(node = node.id, "node restarted (new incarnation)");
                    restarted.insert(node.id);
                }
                seen.incarnation = Some(answer.incarnation);
                seen.last_answer = now;
            }
        }
        watch.seen.retain(|id, _| map.node(*id).is_some());
        let moving: Vec<HashRange> = self.running.lock().keys().copied().collect();
        let mut lost: Vec<(NodeId, HashRange, LossCause)> = Vec::new();
        for shard in &map.shards {
            if shard.state != ShardState::Normal || moving.iter().any(|r| r.overlaps(&shard.range)) {
                continue;
            }
            let cause = match answers.get(&shard.owner) {
                Some(answer) if answer.held.iter().any(|r| r.overlaps(&shard.range)) => continue,
                Some(_) if restarted.contains(&shard.owner) => LossCause::Restarted,
                Some(_) => LossCause::NotHeld,
                None => {
                    let silent =
                        watch.seen.get(&shard.owner).map_or(Duration::ZERO, |s| s.last_answer.elapsed());
                    if silent < options.gone_after {
                        continue;
                    }
                    LossCause::Gone { silent_secs: silent.as_secs_f64() }
                }
            };
            lost.push((shard.owner, shard.range, cause));
        }
        if lost.is_empty() {
            return Ok(Vec::new());
        }
        let alive: Vec<NodeId> =
            map.nodes.iter().map(|n| n.id).filter(|id| answers.contains_key(id)).collect();
        self.declare_lost(&map, &lost, &alive).await
    }

    /// Stats of every node of `map` that answers within `timeout`, asked at once.
    async fn ask_nodes(&self, map: &ShardMap, timeout: Duration) -> HashMap<NodeId, Answer> {
        let calls = map.nodes.iter().map(|node| async move {
            let call = async {
                let mut client = self.node_client(node.id).await.ok()?;
                client.get_stats(GetStatsRequest {}).await.ok()
            };
            let stats = tokio::time::timeout(timeout, call).await.ok().flatten()?;
            if stats.node_id != node.id {
                tracing::warn!(
                    node = node.id,
                    answered = stats.node_id,
                    "another node answers at this address"
                );
                return None;
            }
            let held = stats.ranges.into_iter().filter_map(|r| HashRange::try_from(r.range).ok()).collect();
            Some((node.id, Answer { incarnation: stats.incarnation, held }))
        });
        futures::future::join_all(calls).await.into_iter().flatten().collect()
    }

    /// Gives each lost range to its node when that answers, else to the
    /// answering node with the fewest shards; moves the map on, fences gone
    /// nodes and records the losses. Nothing is declared when the map changed
    /// since `map` was read (the next check looks again).
    pub(crate) async fn declare_lost(
        &self,
        map: &ShardMap,
        lost: &[(NodeId, HashRange, LossCause)],
        alive: &[NodeId],
    ) -> Result<Vec<RangeLoss>, CoordinatorError> {
        let mut owned: HashMap<NodeId, usize> = alive.iter().map(|&id| (id, 0)).collect();
        for shard in &map.shards {
            if let Some(count) = owned.get_mut(&shard.owner) {
                *count += 1;
            }
        }
        let mut assignments = Vec::new();
        for &(node, range, cause) in lost {
            let new_owner = if alive.contains(&node) {
                node
            } else {
                let Some((&least, _)) = owned.iter().min_by_key(|(id, count)| (**count, **id)) else {
                    tracing::error!(node, %range, "range lost and no node answers to take it");
                    continue;
                };
                least
            };
            *owned.entry(new_owner).or_default() += 1;
            assignments.push((node, range, cause, new_owner));
        }
        if assignments.is_empty() {
            return Ok(Vec::new());
        }
        let given: Vec<(HashRange, NodeId)> = assignments.iter().map(|a| (a.1, a.3)).collect();
        let Some(next) = self.reassign_empty(map.epoch, &given).await? else {
            return Ok(Vec::new());
        };
        self.broadcast_epoch(&next).await;
        let mut by_node: Vec<(NodeId, LossCause, Vec<Given>)> = Vec::new();
        for (node, range, cause, new_owner) in assignments {
            if new_owner != node {
                self.fence(node, range, next.epoch);
            }
            match by_node.iter_mut().find(|(n, c, _)| *n == node && c.label() == cause.label()) {
                Some((_, _, ranges)) => ranges.push((range, new_owner)),
                None => by_node.push((node, cause, vec![(range, new_owner)])),
            }
        }
        let mut losses = Vec::new();
        for (node, cause, ranges) in by_node {
            let loss = self.record_loss(node, cause, ranges, next.epoch);
            tracing::error!(loss = %loss, "ranges declared lost: their objects are gone; clients are served again, empty");
            losses.push(loss);
        }
        Ok(losses)
    }
}

/// Runs [`Coordinator::check_nodes`] every `options.interval` until `stop`,
/// counting losses in `metrics` when given.
pub async fn watch_nodes(
    coordinator: Arc<Coordinator>,
    options: LivenessOptions,
    metrics: Option<Arc<OperatorMetrics>>,
    stop: CancellationToken,
) {
    let mut watch = NodeWatch::default();
    let mut counted = 0;
    let mut ticker = tokio::time::interval(options.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Err(err) = coordinator.check_nodes(&mut watch, &options).await {
            tracing::warn!(error = %err, "checking the nodes failed; trying again");
        }
        // Every loss is counted once, those recovery declared included.
        if let Some(metrics) = &metrics {
            let losses = coordinator.losses();
            for loss in losses.iter().filter(|l| l.id > counted) {
                metrics.ranges_lost.with_label_values(&[loss.cause.label()]).inc_by(loss.ranges.len() as u64);
            }
            counted = losses.last().map_or(counted, |l| l.id);
        }
    }
}
