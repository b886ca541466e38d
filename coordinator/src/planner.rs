//! The rebalance planner: a pure function from the cluster's load and the
//! policy to the moves (and splits) that lower the imbalance.
//!
//! Load is one number per range along the dimension that triggered: ops/s,
//! or stored bytes when only memory is imbalanced. A node's load is the sum
//! of its ranges'. The planner repeatedly takes the most loaded node that may
//! still start a move and the least loaded node that may receive one, and
//! moves the range whose load comes closest to half their gap: any range
//! lighter than the gap lowers the sum of squared deviations, so every move
//! planned lowers the imbalance. When every range on the hot node is too hot
//! to move whole, the hottest one is split so that a piece carrying about the
//! needed load moves alone; per-range load histograms (equal sub-ranges)
//! place the split. If the load sits in one sub-range, the planner splits
//! around it and waits for finer statistics, narrowing a hot spot down round
//! by round.

use crate::policy::RebalancePolicy;
use fulva_proto::{HashRange, NodeId};
use std::collections::HashSet;

/// Load of one node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeLoad {
    /// The node.
    pub id: NodeId,
    /// Being drained (scale-in): every range leaves it, nothing arrives.
    pub draining: bool,
}

/// Load of one range.
#[derive(Clone, Debug, PartialEq)]
pub struct RangeLoad {
    /// The range (a shard).
    pub range: HashRange,
    /// Node serving it (the destination while it moves).
    pub owner: NodeId,
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Stored key and value bytes.
    pub bytes: u64,
    /// Whether it is moving now.
    pub moving: bool,
    /// Operations per second in equal sub-ranges, lowest first (may be empty).
    pub buckets: Vec<f64>,
}

/// Everything the planner looks at.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterLoad {
    /// Every node, including ones with no range yet.
    pub nodes: Vec<NodeLoad>,
    /// Every range.
    pub ranges: Vec<RangeLoad>,
    /// Moves running now: (range, source, destination).
    pub in_flight: Vec<(HashRange, NodeId, NodeId)>,
    /// Ranges that moved within the cooldown.
    pub recently_moved: Vec<HashRange>,
}

/// Which load a plan balances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dimension {
    /// Operations per second.
    Ops,
    /// Stored bytes.
    Memory,
}

impl Dimension {
    /// Lower-case name, for logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Dimension::Ops => "ops",
            Dimension::Memory => "memory",
        }
    }

    fn of(self, r: &RangeLoad) -> f64 {
        match self {
            Dimension::Ops => r.ops_per_sec,
            Dimension::Memory => r.bytes as f64,
        }
    }
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Split the shard `range` so that a shard starts at `at`.
    Split {
        /// Shard to split.
        range: HashRange,
        /// First hash of the upper part.
        at: u64,
    },
    /// Move `range` (a shard, or a piece a split of this plan creates).
    Move {
        /// What moves.
        range: HashRange,
        /// Its node now.
        from: NodeId,
        /// Where it goes.
        to: NodeId,
        /// Its estimated load along the plan's dimension.
        load: f64,
        /// Why: balancing, draining a node or honouring a pin.
        reason: MoveReason,
    },
}

/// Why a move was planned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveReason {
    /// Lowers the imbalance.
    Balance,
    /// Empties a node that is being removed.
    Drain,
    /// Puts a pinned range on its node.
    Pin,
}

impl MoveReason {
    /// Lower-case name, for logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            MoveReason::Balance => "balance",
            MoveReason::Drain => "drain",
            MoveReason::Pin => "pin",
        }
    }
}

/// What the planner decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Steps, in order (a split comes before the move of its piece).
    pub actions: Vec<Action>,
    /// The load balanced.
    pub dimension: Dimension,
    /// Imbalance score (max / mean node load) before the plan.
    pub before: f64,
    /// Imbalance score the plan is expected to leave.
    pub after: f64,
}

impl Plan {
    /// Moves in the plan.
    pub fn moves(&self) -> usize {
        self.actions.iter().filter(|a| matches!(a, Action::Move { .. })).count()
    }
}

/// Max over mean of `loads` (1.0 when perfectly even or all zero).
pub fn imbalance_score(loads: &[f64]) -> f64 {
    let mean = loads.iter().sum::<f64>() / loads.len().max(1) as f64;
    let max = loads.iter().copied().fold(0.0, f64::max);
    if mean <= 0.0 {
        1.0
    } else {
        max / mean
    }
}

/// Node loads along `dimension`, in the order of `load.nodes`.
pub fn node_loads(load: &ClusterLoad, dimension: Dimension) -> Vec<f64> {
    load.nodes
        .iter()
        .map(|n| load.ranges.iter().filter(|r| r.owner == n.id).map(|r| dimension.of(r)).sum())
        .collect()
}

/// The dimension whose imbalance crosses the policy's triggers (ops first).
pub fn triggered(load: &ClusterLoad, policy: &RebalancePolicy) -> Option<Dimension> {
    let t = &policy.triggers;
    let over = |dimension: Dimension, relative: f64, absolute: f64| {
        let loads = node_loads(load, dimension);
        let mean = loads.iter().sum::<f64>() / loads.len().max(1) as f64;
        let max = loads.iter().copied().fold(0.0, f64::max);
        max - mean > relative * mean && max - mean >= absolute && mean > 0.0
    };
    if over(Dimension::Ops, t.ops_imbalance, t.min_ops_per_sec) {
        Some(Dimension::Ops)
    } else if over(Dimension::Memory, t.memory_imbalance, t.min_memory_bytes as f64) {
        Some(Dimension::Memory)
    } else {
        None
    }
}

/// Working state of one planning pass.
struct Planning<'a> {
    load: &'a ClusterLoad,
    policy: &'a RebalancePolicy,
    dimension: Dimension,
    node_load: Vec<f64>,
    busy: Vec<u32>,
    cluster_slots: u32,
    touched: HashSet<HashRange>,
    actions: Vec<Action>,
}

impl Planning<'_> {
    fn index(&self, node: NodeId) -> Option<usize> {
        self.load.nodes.iter().position(|n| n.id == node)
    }

    fn may_receive(&self, i: usize) -> bool {
        let n = &self.load.nodes[i];
        !n.draining && !self.policy.excluded_nodes.contains(&n.id)
    }

    fn has_slot(&self, i: usize) -> bool {
        self.cluster_slots > 0 && self.busy[i] < self.policy.max_moves_per_node
    }

    fn pinned(&self, range: &HashRange) -> bool {
        self.policy.pins().iter().any(|(p, _)| p.overlaps(range))
    }

    fn cooling(&self, range: &HashRange) -> bool {
        self.load.recently_moved.iter().any(|r| r.overlaps(range))
    }

    fn movable(&self, r: &RangeLoad) -> bool {
        !r.moving && !self.touched.contains(&r.range) && !self.pinned(&r.range) && !self.cooling(&r.range)
    }

    fn plan_move(&mut self, range: HashRange, from: usize, to: usize, load: f64, reason: MoveReason) {
        self.actions.push(Action::Move {
            range,
            from: self.load.nodes[from].id,
            to: self.load.nodes[to].id,
            load,
            reason,
        });
        self.node_load[from] -= load;
        self.node_load[to] += load;
        self.busy[from] += 1;
        self.busy[to] += 1;
        self.cluster_slots -= 1;
        self.touched.insert(range);
    }

    /// The least loaded node that may receive a range now, other than `not`.
    fn coolest_receiver(&self, not: usize) -> Option<usize> {
        (0..self.load.nodes.len())
            .filter(|&i| i != not && self.may_receive(i) && self.has_slot(i))
            .min_by(|&a, &b| self.node_load[a].total_cmp(&self.node_load[b]))
    }

    /// Every range of a draining node goes to the least loaded receiver.
    fn drain(&mut self) {
        let ranges: Vec<&RangeLoad> = self.load.ranges.iter().collect();
        for r in ranges {
            let Some(from) = self.index(r.owner) else { continue };
            if !self.load.nodes[from].draining
                || r.moving
                || self.touched.contains(&r.range)
                || self.cooling(&r.range)
            {
                continue;
            }
            if !self.has_slot(from) {
                continue;
            }
            let Some(to) = self.coolest_receiver(from) else { continue };
            self.plan_move(r.range, from, to, self.dimension.of(r), MoveReason::Drain);
        }
    }

    /// Pinned ranges away from their node go there.
    fn honour_pins(&mut self) {
        for (pin, node) in self.policy.pins() {
            let Some(node) = node else { continue };
            let Some(to) = self.index(node) else { continue };
            let ranges: Vec<&RangeLoad> =
                self.load.ranges.iter().filter(|r| pin.covers(&r.range) && r.owner != node).collect();
            for r in ranges {
                let Some(from) = self.index(r.owner) else { continue };
                if r.moving
                    || self.touched.contains(&r.range)
                    || self.cooling(&r.range)
                    || !self.has_slot(from)
                    || !self.has_slot(to)
                {
                    continue;
                }
                if self.load.nodes[to].draining {
                    continue;
                }
                self.plan_move(r.range, from, to, self.dimension.of(r), MoveReason::Pin);
            }
        }
    }

    /// Greedy balancing; see the module comment.
    fn balance(&mut self) {
        let mean = self.node_load.iter().sum::<f64>() / self.node_load.len().max(1) as f64;
        loop {
            let mut sources: Vec<usize> = (0..self.load.nodes.len())
                .filter(|&i| self.has_slot(i) && self.node_load[i] > mean)
                .collect();
            sources.sort_by(|&a, &b| self.node_load[b].total_cmp(&self.node_load[a]));
            let mut progressed = false;
            for from in sources {
                let Some(to) = self.coolest_receiver(from) else { continue };
                let gap = self.node_load[from] - self.node_load[to];
                if gap <= 0.0 {
                    continue;
                }
                // Enough to bring one of the two to the mean without overshooting.
                let want = (self.node_load[from] - mean).min(mean - self.node_load[to]).clamp(0.0, gap / 2.0);
                if want <= 0.0 {
                    continue;
                }
                let best = self
                    .load
                    .ranges
                    .iter()
                    .filter(|r| self.index(r.owner) == Some(from) && self.movable(r))
                    .map(|r| (r, self.dimension.of(r)))
                    .filter(|(_, v)| *v > 0.0 && *v < gap)
                    .min_by(|a, b| (a.1 - want).abs().total_cmp(&(b.1 - want).abs()));
                // A whole range that carries at least half of what is needed is worth moving.
                if let Some((r, v)) = best {
                    if v >= want / 2.0 || !self.policy.split_hot_ranges {
                        self.plan_move(r.range, from, to, v, MoveReason::Balance);
                        progressed = true;
                        break;
                    }
                }
                if self.policy.split_hot_ranges
                    && self.dimension == Dimension::Ops
                    && self.split_piece(from, to, want)
                {
                    progressed = true;
                    break;
                }
                if let Some((r, v)) = best {
                    self.plan_move(r.range, from, to, v, MoveReason::Balance);
                    progressed = true;
                    break;
                }
            }
            if !progressed || self.cluster_slots == 0 {
                return;
            }
        }
    }

    /// Splits the hottest movable range of `from` so that a piece carrying
    /// about `want` moves to `to`. Returns whether anything was planned.
    fn split_piece(&mut self, from: usize, to: usize, want: f64) -> bool {
        let min_width = 1u128 << self.policy.min_range_bits;
        let Some(hot) = self
            .load
            .ranges
            .iter()
            .filter(|r| {
                self.index(r.owner) == Some(from) && self.movable(r) && r.range.width() >= 2 * min_width
            })
            .max_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec))
        else {
            return false;
        };
        let gap = self.node_load[from] - self.node_load[to];
        let buckets: Vec<f64> = if hot.buckets.is_empty() {
            vec![hot.ops_per_sec / 16.0; 16]
        } else {
            let total: f64 = hot.buckets.iter().sum();
            let scale = if total > 0.0 { hot.ops_per_sec / total } else { 0.0 };
            hot.buckets.iter().map(|b| b * scale).collect()
        };
        let k = buckets.len() as u128;
        let boundary =
            |i: usize| -> u64 { (hot.range.first as u128 + hot.range.width() * i as u128 / k) as u64 };
        // Prefix [0, i) or suffix [i, k): the piece whose load is closest to `want`.
        let mut best: Option<(usize, bool, f64)> = None;
        let mut prefix = 0.0;
        for i in 1..buckets.len() {
            prefix += buckets[i - 1];
            let suffix = hot.ops_per_sec - prefix;
            for (lower, v) in [(true, prefix), (false, suffix)] {
                if v > 0.0 && v < gap && best.is_none_or(|(_, _, b)| (v - want).abs() < (b - want).abs()) {
                    best = Some((i, lower, v));
                }
            }
        }
        if let Some((i, lower, v)) =
            best.filter(|(i, _, v)| splits_well(hot.range, boundary(*i), min_width) && *v >= want / 4.0)
        {
            let at = boundary(i);
            let Ok((low, high)) = hot.range.split_at(at) else { return false };
            let range = hot.range;
            self.actions.push(Action::Split { range, at });
            self.touched.insert(range);
            let piece = if lower { low } else { high };
            self.plan_move(piece, from, to, v, MoveReason::Balance);
            return true;
        }
        // The load sits in too few sub-ranges to split well: cut around the
        // hottest one and wait for finer statistics of the pieces.
        let (j, _) = buckets.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).expect("16 buckets");
        let mut current = hot.range;
        let mut planned = false;
        for i in [j, j + 1] {
            if i == 0 || i >= buckets.len() {
                continue;
            }
            let at = boundary(i);
            if !splits_well(current, at, min_width) {
                continue;
            }
            let Ok((_, high)) = current.split_at(at) else { continue };
            self.actions.push(Action::Split { range: current, at });
            self.touched.insert(current);
            current = high;
            planned = true;
        }
        planned
    }
}

/// Whether splitting `range` at `at` leaves two parts of at least `min_width` hashes.
fn splits_well(range: HashRange, at: u64, min_width: u128) -> bool {
    at > range.first
        && at <= range.last
        && (at as u128 - range.first as u128) >= min_width
        && (range.last as u128 + 1 - at as u128) >= min_width
}

/// Plans moves for `load` under `policy`: drains first, then pins, then
/// balancing along the triggered dimension (or `dimension` when given).
/// Respects the concurrency limits (counting moves in flight), the cooldown,
/// excluded nodes and pinned ranges.
pub fn plan(load: &ClusterLoad, policy: &RebalancePolicy, dimension: Option<Dimension>) -> Plan {
    let dimension = dimension.or_else(|| triggered(load, policy));
    let balance = dimension.is_some();
    let dimension = dimension.unwrap_or(Dimension::Ops);
    let node_load = node_loads(load, dimension);
    let mut busy = vec![0u32; load.nodes.len()];
    for (_, from, to) in &load.in_flight {
        for node in [from, to] {
            if let Some(i) = load.nodes.iter().position(|n| n.id == *node) {
                busy[i] += 1;
            }
        }
    }
    let cluster_slots = policy.max_concurrent_moves.saturating_sub(load.in_flight.len() as u32);
    let before = imbalance_score(&node_load);
    let mut p = Planning {
        load,
        policy,
        dimension,
        node_load,
        busy,
        cluster_slots,
        touched: load.ranges.iter().filter(|r| r.moving).map(|r| r.range).collect(),
        actions: Vec::new(),
    };
    p.drain();
    p.honour_pins();
    if balance {
        p.balance();
    }
    Plan { after: imbalance_score(&p.node_load), actions: p.actions, dimension, before }
}
