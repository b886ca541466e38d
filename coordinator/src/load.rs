//! Load collection: samples every node's per-range counters over gRPC
//! (`GetStats`) and turns them into smoothed rates for the planner.

use crate::coordinator::{Coordinator, CoordinatorError};
use crate::planner::{ClusterLoad, NodeLoad, RangeLoad};
use fulva_proto::grpc::GetStatsRequest;
use fulva_proto::{HashRange, NodeId, ShardState};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
struct Counters {
    at: Instant,
    ops: u64,
    buckets: Vec<u64>,
    bytes: u64,
}

#[derive(Clone, Debug)]
struct Rate {
    ops: f64,
    buckets: Vec<f64>,
}

/// Turns counter samples into rates smoothed over a window (an exponential
/// moving average whose time constant is the window).
#[derive(Debug)]
pub struct LoadCollector {
    window: Duration,
    last: HashMap<(NodeId, HashRange), Counters>,
    rates: HashMap<(NodeId, HashRange), Rate>,
}

/// One sample of the cluster's load.
#[derive(Clone, Debug)]
pub struct LoadSample {
    /// Load per node and range (moves in flight and the cooldown are the caller's).
    pub load: ClusterLoad,
    /// Whether every range that is not moving has a rate yet (ranges that
    /// were just split or moved need two samples).
    pub complete: bool,
}

impl LoadCollector {
    /// A collector smoothing over `window`.
    pub fn new(window: Duration) -> LoadCollector {
        LoadCollector {
            window: window.max(Duration::from_millis(1)),
            last: HashMap::new(),
            rates: HashMap::new(),
        }
    }

    /// Changes the smoothing window.
    pub fn set_window(&mut self, window: Duration) {
        self.window = window.max(Duration::from_millis(1));
    }

    /// Feeds one node's counters for `range` observed at `at`.
    pub fn observe(
        &mut self,
        node: NodeId,
        range: HashRange,
        at: Instant,
        ops: u64,
        buckets: Vec<u64>,
        bytes: u64,
    ) {
        let key = (node, range);
        let now = Counters { at, ops, buckets, bytes };
        let Some(prev) = self.last.insert(key, now.clone()) else { return };
        let dt = now.at.saturating_duration_since(prev.at).as_secs_f64();
        if dt <= 0.0 || now.ops < prev.ops || now.buckets.len() != prev.buckets.len() {
            // A counter went back: the node re-created the range. Start over.
            self.rates.remove(&key);
            return;
        }
        let ops_rate = (now.ops - prev.ops) as f64 / dt;
        let bucket_rates: Vec<f64> =
            now.buckets.iter().zip(&prev.buckets).map(|(n, p)| n.saturating_sub(*p) as f64 / dt).collect();
        let alpha = (dt / self.window.as_secs_f64()).min(1.0);
        match self.rates.get_mut(&key) {
            Some(rate) => {
                rate.ops += alpha * (ops_rate - rate.ops);
                for (r, b) in rate.buckets.iter_mut().zip(&bucket_rates) {
                    *r += alpha * (b - *r);
                }
            }
            None => {
                self.rates.insert(key, Rate { ops: ops_rate, buckets: bucket_rates });
            }
        }
    }

    /// The load of the ranges of the map in force, from what was observed.
    pub fn load(&mut self, coordinator: &Coordinator, draining: &HashSet<NodeId>) -> LoadSample {
        let map = coordinator.map();
        let mut complete = true;
        let mut load = ClusterLoad {
            nodes: map
                .nodes
                .iter()
                .map(|n| NodeLoad { id: n.id, draining: draining.contains(&n.id) })
                .collect(),
            ..ClusterLoad::default()
        };
        let live: HashSet<(NodeId, HashRange)> = map.shards.iter().map(|s| (s.owner, s.range)).collect();
        self.last.retain(|k, _| live.contains(k));
        self.rates.retain(|k, _| live.contains(k));
        for shard in &map.shards {
            let key = (shard.owner, shard.range);
            let moving = matches!(shard.state, ShardState::Migrating { .. });
            if let ShardState::Migrating { source, .. } = shard.state {
                load.in_flight.push((shard.range, source, shard.owner));
            }
            let rate = self.rates.get(&key);
            if rate.is_none() && !moving {
                complete = false;
            }
            load.ranges.push(RangeLoad {
                range: shard.range,
                owner: shard.owner,
                ops_per_sec: rate.map_or(0.0, |r| r.ops),
                bytes: self.last.get(&key).map_or(0, |c| c.bytes),
                moving,
                buckets: rate.map(|r| r.buckets.clone()).unwrap_or_default(),
            });
        }
        LoadSample { load, complete }
    }

    /// Samples every node of the map once and returns the cluster's load.
    pub async fn sample(
        &mut self,
        coordinator: &Coordinator,
        draining: &HashSet<NodeId>,
    ) -> Result<LoadSample, CoordinatorError> {
        let map = coordinator.map();
        for node in &map.nodes {
            let mut client = coordinator.node_client(node.id).await?;
            let stats = client.get_stats(GetStatsRequest {}).await?;
            let at = Instant::now();
            for r in stats.ranges {
                let Ok(range) = HashRange::try_from(r.range) else { continue };
                self.observe(node.id, range, at, r.reads + r.writes, r.bucket_ops, r.bytes);
            }
        }
        Ok(self.load(coordinator, draining))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_smoothed_and_reset_with_their_counters() {
        let mut c = LoadCollector::new(Duration::from_secs(2));
        let range = HashRange::FULL;
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        c.observe(1, range, t0, 0, vec![0, 0], 10);
        assert!(!c.rates.contains_key(&(1, range)), "one sample is no rate");
        c.observe(1, range, t0 + s, 1_000, vec![1_000, 0], 10);
        assert_eq!(c.rates[&(1, range)].ops, 1_000.0);
        // Half-way towards 3000 ops/s with a window twice the interval.
        c.observe(1, range, t0 + 2 * s, 4_000, vec![1_000, 3_000], 10);
        let rate = &c.rates[&(1, range)];
        assert_eq!(rate.ops, 2_000.0);
        assert_eq!(rate.buckets, vec![500.0, 1_500.0]);
        // The node re-created the range: its counters start over.
        c.observe(1, range, t0 + 3 * s, 10, vec![10, 0], 10);
        assert!(!c.rates.contains_key(&(1, range)));
    }
}
