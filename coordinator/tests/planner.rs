//! Properties of the rebalance planner over random clusters and policies.

use fulva_coordinator::planner::{
    imbalance_score, node_loads, plan, Action, ClusterLoad, Dimension, MoveReason, NodeLoad, RangeLoad,
};
use fulva_coordinator::policy::{PinnedRange, RebalancePolicy};
use fulva_proto::{HashRange, NodeId};
use proptest::prelude::*;
use std::collections::HashSet;

#[derive(Clone, Debug)]
struct Case {
    load: ClusterLoad,
    policy: RebalancePolicy,
}

fn case() -> impl Strategy<Value = Case> {
    (2usize..6, 1u64..24, any::<u64>())
        .prop_flat_map(|(nodes, parts, seed)| {
            let ranges = HashRange::FULL.divide(parts);
            let n = ranges.len();
            (
                Just(nodes),
                Just(ranges),
                prop::collection::vec(0..nodes as u32, n),
                prop::collection::vec(prop_oneof![3 => 0.0..5_000.0f64, 1 => 0.0..200_000.0f64], n),
                prop::collection::vec(0u64..1 << 30, n),
                prop::collection::vec(prop::bool::weighted(0.1), n),
                prop::collection::vec(prop::bool::weighted(0.2), n),
                prop::collection::vec(prop::option::weighted(0.5, prop::collection::vec(0.0..1.0f64, 16)), n),
                (
                    prop::collection::vec(prop::bool::weighted(0.2), nodes),
                    prop::collection::vec(prop::bool::weighted(0.15), nodes),
                ),
                (
                    1u32..4,
                    1u32..3,
                    any::<bool>(),
                    prop::collection::vec(prop::option::of(0..nodes as u32 + 1), 0..3),
                ),
                Just(seed),
            )
        })
        .prop_map(
            |(
                nodes,
                ranges,
                owners,
                ops,
                bytes,
                moving,
                recent,
                buckets,
                (excluded, draining),
                (cluster, per_node, split, pins),
                _seed,
            )| {
                let node_loads: Vec<NodeLoad> =
                    (0..nodes as u32).map(|id| NodeLoad { id, draining: draining[id as usize] }).collect();
                let mut load = ClusterLoad { nodes: node_loads, ..Default::default() };
                for (i, range) in ranges.iter().enumerate() {
                    load.ranges.push(RangeLoad {
                        range: *range,
                        owner: owners[i],
                        ops_per_sec: ops[i],
                        bytes: bytes[i],
                        moving: moving[i],
                        buckets: buckets[i].clone().unwrap_or_default(),
                    });
                    if moving[i] {
                        load.in_flight.push((*range, (owners[i] + 1) % nodes as u32, owners[i]));
                    }
                    if recent[i] {
                        load.recently_moved.push(*range);
                    }
                }
                let excluded_nodes: Vec<NodeId> =
                    (0..nodes as u32).filter(|&i| excluded[i as usize]).collect();
                let pinned_ranges = pins
                    .iter()
                    .enumerate()
                    .map(|(k, node)| PinnedRange {
                        range: ranges[k * 7 % ranges.len()].to_string(),
                        node: node.filter(|n| *n < nodes as u32 && !excluded_nodes.contains(n)),
                    })
                    .collect();
                let policy = RebalancePolicy {
                    max_concurrent_moves: cluster,
                    max_moves_per_node: per_node,
                    split_hot_ranges: split,
                    excluded_nodes,
                    pinned_ranges,
                    min_range_bits: 40,
                    ..RebalancePolicy::default()
                };
                Case { load, policy }
            },
        )
}

fn sum_of_squares(loads: &[f64]) -> f64 {
    let mean = loads.iter().sum::<f64>() / loads.len() as f64;
    loads.iter().map(|l| (l - mean).powi(2)).sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn plans_respect_the_policy(c in case()) {
        let Case { load, policy } = c;
        let p = plan(&load, &policy, Some(Dimension::Ops));
        let existing: HashSet<HashRange> = load.ranges.iter().map(|r| r.range).collect();
        let mut created: HashSet<HashRange> = HashSet::new();
        let mut split_away: HashSet<HashRange> = HashSet::new();
        let mut moved: HashSet<HashRange> = HashSet::new();
        let mut per_node = vec![0u32; load.nodes.len()];
        for (_, from, to) in &load.in_flight {
            per_node[*from as usize] += 1;
            per_node[*to as usize] += 1;
        }
        let min_width = 1u128 << policy.min_range_bits;
        for action in &p.actions {
            match action {
                Action::Split { range, at } => {
                    prop_assert!(existing.contains(range) || created.contains(range), "split of an unknown range");
                    prop_assert!(!moved.contains(range));
                    let (low, high) = range.split_at(*at).expect("split point inside the range");
                    prop_assert!(low.width() >= min_width && high.width() >= min_width);
                    split_away.insert(*range);
                    created.insert(low);
                    created.insert(high);
                }
                Action::Move { range, from, to, reason, .. } => {
                    prop_assert!(!policy.excluded_nodes.contains(to), "move onto excluded node {to}");
                    prop_assert!(!load.nodes[*to as usize].draining, "move onto a draining node");
                    prop_assert!(from != to);
                    prop_assert!(moved.insert(*range), "{range} moved twice in one plan");
                    prop_assert!(
                        (existing.contains(range) && !split_away.contains(range)) || created.contains(range),
                        "{range} is no shard"
                    );
                    prop_assert!(
                        !load.recently_moved.iter().any(|r| r.overlaps(range)),
                        "{range} moved within its cooldown"
                    );
                    prop_assert!(
                        !load.ranges.iter().any(|r| r.moving && r.range.overlaps(range)),
                        "{range} is already moving"
                    );
                    let pinned = policy.pins().iter().any(|(p, _)| p.overlaps(range));
                    prop_assert!(!pinned || *reason != MoveReason::Balance, "pinned {range} moved to balance");
                    if let Some(owner) = load.ranges.iter().find(|r| r.range.covers(range)).map(|r| r.owner) {
                        prop_assert_eq!(owner, *from);
                    }
                    per_node[*from as usize] += 1;
                    per_node[*to as usize] += 1;
                    prop_assert!(per_node[*from as usize] <= policy.max_moves_per_node);
                    prop_assert!(per_node[*to as usize] <= policy.max_moves_per_node);
                }
            }
        }
        if p.moves() > 0 {
            prop_assert!(load.in_flight.len() + p.moves() <= policy.max_concurrent_moves as usize);
        }
    }

    #[test]
    fn balancing_lowers_the_imbalance(c in case()) {
        let Case { mut load, mut policy } = c;
        // Drains and pins move load for other reasons; balance alone here.
        for n in &mut load.nodes {
            n.draining = false;
        }
        policy.pinned_ranges.clear();
        let before = node_loads(&load, Dimension::Ops);
        let p = plan(&load, &policy, Some(Dimension::Ops));
        let mut after = before.clone();
        for action in &p.actions {
            if let Action::Move { from, to, load: l, .. } = action {
                after[*from as usize] -= l;
                after[*to as usize] += l;
            }
        }
        if p.moves() > 0 {
            prop_assert!(sum_of_squares(&after) < sum_of_squares(&before), "{before:?} -> {after:?}");
            prop_assert!(imbalance_score(&after) <= imbalance_score(&before) + 1e-9, "{before:?} -> {after:?}");
        }
        prop_assert!((p.before - imbalance_score(&before)).abs() < 1e-9);
        prop_assert!((p.after - imbalance_score(&after)).abs() < 1e-6);
    }
}

#[test]
fn a_hotspot_in_one_range_is_split_and_part_of_it_moves() {
    let parts = HashRange::FULL.divide(3);
    let mut buckets = vec![10.0; 16];
    buckets[3] = 30_000.0;
    buckets[12] = 30_000.0;
    let load = ClusterLoad {
        nodes: (0..3).map(|id| NodeLoad { id, draining: false }).collect(),
        ranges: parts
            .iter()
            .enumerate()
            .map(|(i, &range)| RangeLoad {
                range,
                owner: i as u32,
                ops_per_sec: if i == 0 { 60_160.0 } else { 5_000.0 },
                bytes: 1 << 20,
                moving: false,
                buckets: if i == 0 { buckets.clone() } else { Vec::new() },
            })
            .collect(),
        ..Default::default()
    };
    let policy = RebalancePolicy::default();
    let p = plan(&load, &policy, None);
    assert_eq!(p.dimension, Dimension::Ops);
    assert!(matches!(p.actions[0], Action::Split { range, .. } if range == parts[0]), "{p:?}");
    assert!(p.moves() >= 1, "{p:?}");
    assert!(p.after < p.before, "{p:?}");
    // Below the trigger nothing is planned.
    let mut calm = load.clone();
    calm.ranges[0].ops_per_sec = 5_100.0;
    calm.ranges[0].buckets.clear();
    assert!(plan(&calm, &policy, None).actions.is_empty());
}

#[test]
fn a_draining_node_is_emptied_onto_the_others() {
    let parts = HashRange::FULL.divide(6);
    let load = ClusterLoad {
        nodes: (0..3).map(|id| NodeLoad { id, draining: id == 2 }).collect(),
        ranges: parts
            .iter()
            .enumerate()
            .map(|(i, &range)| RangeLoad {
                range,
                owner: i as u32 % 3,
                ops_per_sec: 100.0,
                bytes: 0,
                moving: false,
                buckets: Vec::new(),
            })
            .collect(),
        ..Default::default()
    };
    let policy = RebalancePolicy { max_concurrent_moves: 4, max_moves_per_node: 4, ..Default::default() };
    let p = plan(&load, &policy, None);
    let drained: Vec<_> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Move { from: 2, to, reason: MoveReason::Drain, .. } => Some(*to),
            _ => None,
        })
        .collect();
    assert_eq!(drained.len(), 2, "{p:?}");
    assert!(drained.iter().all(|&to| to != 2));
}
