//! The rebalancer: samples load, waits for an imbalance to last, plans with
//! the [`planner`](crate::planner) and runs the plan through the
//! coordinator. The same loop runs in `fulva up` (no Kubernetes) and inside
//! the operator.

use crate::coordinator::{Coordinator, CoordinatorError};
use crate::load::LoadCollector;
use crate::metrics::OperatorMetrics;
use crate::moves::{MoveOptions, MoveReport};
use crate::planner::{self, Action, Dimension, Plan};
use crate::policy::{RebalanceMode, RebalancePolicy};
use fulva_proto::{HashRange, NodeId, Strategy};
use parking_lot::{Mutex, RwLock};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Decisions and outcomes kept for display.
const EVENTS_KEPT: usize = 32;

/// What the rebalancer sees and did, for status displays.
#[derive(Clone, Debug, Default)]
pub struct RebalanceStatus {
    /// Imbalance score of client operations (max / mean node ops/s).
    pub imbalance: f64,
    /// Imbalance score of stored bytes.
    pub memory_imbalance: f64,
    /// Smoothed ops/s per node.
    pub node_ops: Vec<(NodeId, f64)>,
    /// Since when the policy's trigger has held, if it does.
    pub imbalanced_since: Option<Instant>,
    /// The last plan (in proposal mode: the proposal waiting for approval).
    pub last_plan: Option<Plan>,
    /// Moves running now: range, source, destination, started.
    pub in_flight: Vec<(HashRange, NodeId, NodeId, Instant)>,
    /// Moves started.
    pub started: u64,
    /// Moves that finished.
    pub finished: u64,
    /// Moves that were aborted and rolled back.
    pub aborted: u64,
    /// Moves that failed and could not be rolled back.
    pub failed: u64,
    /// Splits done.
    pub splits: u64,
    /// When the last plan ran.
    pub last_rebalance: Option<Instant>,
    /// Recent decisions and outcomes, oldest first.
    pub events: VecDeque<(Instant, String)>,
    /// The last moves started, oldest first.
    pub history: VecDeque<MoveRecord>,
    /// The last complete load sample (one-shot rebalances plan from it).
    pub last_load: Option<crate::planner::ClusterLoad>,
}

/// One move the rebalancer made.
#[derive(Clone, Debug, PartialEq)]
pub struct MoveRecord {
    /// What moved.
    pub range: HashRange,
    /// Source.
    pub from: NodeId,
    /// Destination.
    pub to: NodeId,
    /// When it started.
    pub started: Instant,
    /// When it ended, and whether it finished (false: aborted or failed).
    pub ended: Option<(Instant, bool)>,
}

impl RebalanceStatus {
    fn event(&mut self, text: String) {
        tracing::info!(event = %text, "rebalancer");
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back((Instant::now(), text));
    }
}

/// A move that ended: range, source, destination, strategy and outcome.
type Ended = (HashRange, NodeId, NodeId, Strategy, Result<MoveReport, CoordinatorError>);

/// Drives rebalancing of one cluster.
pub struct Rebalancer {
    coordinator: Arc<Coordinator>,
    policy: RwLock<RebalancePolicy>,
    status: Mutex<RebalanceStatus>,
    draining: Mutex<HashSet<NodeId>>,
    /// While set, load is sampled but nothing is planned (a one-shot rebalance runs).
    held: std::sync::atomic::AtomicBool,
    metrics: Arc<OperatorMetrics>,
}

impl Rebalancer {
    /// A rebalancer for `coordinator`'s cluster under `policy`.
    pub fn new(
        coordinator: Arc<Coordinator>,
        policy: RebalancePolicy,
        metrics: Arc<OperatorMetrics>,
    ) -> Arc<Self> {
        Arc::new(Rebalancer {
            coordinator,
            policy: RwLock::new(policy),
            status: Mutex::new(RebalanceStatus::default()),
            draining: Mutex::new(HashSet::new()),
            held: std::sync::atomic::AtomicBool::new(false),
            metrics,
        })
    }

    /// What it sees and did.
    pub fn status(&self) -> RebalanceStatus {
        self.status.lock().clone()
    }

    /// The policy in force.
    pub fn policy(&self) -> RebalancePolicy {
        self.policy.read().clone()
    }

    /// Replaces the policy (validated by the caller); applies from the next sample.
    pub fn set_policy(&self, policy: RebalancePolicy) {
        *self.policy.write() = policy;
    }

    /// Marks `nodes` for removal: their ranges move away, nothing moves onto them.
    pub fn set_draining(&self, nodes: HashSet<NodeId>) {
        *self.draining.lock() = nodes;
    }

    /// Holds (or releases) automatic rebalancing: load is still sampled,
    /// but nothing is planned while a one-shot rebalance runs.
    pub fn set_held(&self, held: bool) {
        self.held.store(held, std::sync::atomic::Ordering::Release);
    }

    /// Whether `node` owns no range (a drained node can be removed).
    pub fn is_empty(&self, node: NodeId) -> bool {
        !self.coordinator.map().shards.iter().any(|s| {
            s.owner == node
                || matches!(s.state, fulva_proto::ShardState::Migrating { source, .. } if source == node)
        })
    }

    /// Runs until `shutdown`; then aborts the moves it started and waits for
    /// their rollback, so no range stays Migrating.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut collector = LoadCollector::new(Duration::from_secs(1));
        let mut cooling: Vec<(HashRange, Instant)> = Vec::new();
        let mut moves: JoinSet<Ended> = JoinSet::new();
        loop {
            let policy = self.policy();
            let interval = Duration::from_millis(policy.sample_interval_ms);
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(ended) = moves.join_next(), if !moves.is_empty() => {
                    if let Ok(ended) = ended {
                        self.move_ended(ended, &mut cooling);
                    }
                    continue;
                }
                () = tokio::time::sleep(interval) => {}
            }
            self.step(&policy, &mut collector, &mut cooling, &mut moves).await;
        }
        let running: Vec<HashRange> = self.status.lock().in_flight.iter().map(|m| m.0).collect();
        for range in running {
            let _ = self.coordinator.abort_move(range);
        }
        while let Some(ended) = moves.join_next().await {
            if let Ok(ended) = ended {
                self.move_ended(ended, &mut cooling);
            }
        }
    }

    async fn step(
        &self,
        policy: &RebalancePolicy,
        collector: &mut LoadCollector,
        cooling: &mut Vec<(HashRange, Instant)>,
        moves: &mut JoinSet<Ended>,
    ) {
        collector.set_window(policy.sustained().max(Duration::from_millis(policy.sample_interval_ms)));
        let draining = self.draining.lock().clone();
        let sample = match collector.sample(&self.coordinator, &draining).await {
            Ok(sample) => sample,
            Err(err) => {
                tracing::warn!(error = %err, "could not sample load");
                return;
            }
        };
        let mut load = sample.load;
        cooling.retain(|(_, at)| at.elapsed() < policy.cooldown());
        load.recently_moved = cooling.iter().map(|(r, _)| *r).collect();
        let ops = planner::node_loads(&load, Dimension::Ops);
        let bytes = planner::node_loads(&load, Dimension::Memory);
        let trigger = planner::triggered(&load, policy);
        // Ranges just split or moved have no rate yet: their load would read as zero.
        if !sample.complete {
            return;
        }
        {
            let mut status = self.status.lock();
            status.imbalance = planner::imbalance_score(&ops);
            status.memory_imbalance = planner::imbalance_score(&bytes);
            status.node_ops = load.nodes.iter().map(|n| n.id).zip(ops.iter().copied()).collect();
            match trigger {
                Some(_) => {
                    status.imbalanced_since.get_or_insert_with(Instant::now);
                }
                None => status.imbalanced_since = None,
            }
            self.metrics
                .imbalance_trigger
                .with_label_values(&["ops"])
                .set(1.0 + policy.triggers.ops_imbalance);
            self.metrics
                .imbalance_trigger
                .with_label_values(&["memory"])
                .set(1.0 + policy.triggers.memory_imbalance);
            self.metrics.imbalance.with_label_values(&["ops"]).set(status.imbalance);
            self.metrics.imbalance.with_label_values(&["memory"]).set(status.memory_imbalance);
            for (node, rate) in &status.node_ops {
                self.metrics.node_ops.with_label_values(&[&node.to_string()]).set(*rate);
            }
        }
        self.status.lock().last_load = Some(load.clone());
        if policy.mode == RebalanceMode::Off || self.held.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let draining_left = draining.iter().any(|n| !self.is_empty(*n));
        let sustained =
            self.status.lock().imbalanced_since.is_some_and(|t| t.elapsed() >= policy.sustained());
        if !sustained && !draining_left {
            return;
        }
        let plan = planner::plan(&load, policy, trigger);
        if plan.actions.is_empty() {
            return;
        }
        if policy.mode == RebalanceMode::Proposal {
            self.metrics.decisions.with_label_values(&["proposal"]).inc();
            let mut status = self.status.lock();
            if status.last_plan.as_ref().map(|p| &p.actions) != Some(&plan.actions) {
                status.event(format!(
                    "proposal: {} moves, imbalance {:.2} -> {:.2} (mode: proposal, nothing runs)",
                    plan.moves(),
                    plan.before,
                    plan.after
                ));
            }
            status.last_plan = Some(plan);
            return;
        }
        self.execute(plan, policy, cooling, moves).await;
    }

    async fn execute(
        &self,
        plan: Plan,
        policy: &RebalancePolicy,
        cooling: &mut Vec<(HashRange, Instant)>,
        moves: &mut JoinSet<Ended>,
    ) {
        {
            let mut status = self.status.lock();
            status.event(format!(
                "{} imbalance {:.2}: planned {} moves, expected {:.2}",
                plan.dimension.name(),
                plan.before,
                plan.moves(),
                plan.after
            ));
            status.last_rebalance = Some(Instant::now());
            // The next round waits for the imbalance to last again, on fresh load.
            status.imbalanced_since = None;
            status.last_plan = Some(plan.clone());
        }
        let strategy = Strategy::from(policy.strategy);
        for action in plan.actions {
            match action {
                Action::Split { range, at } => {
                    self.metrics.decisions.with_label_values(&["split"]).inc();
                    if self.coordinator.map().shard_of(at).map(|s| s.range) != Some(range) {
                        continue;
                    }
                    if let Err(err) = self.coordinator.split(at).await {
                        self.status.lock().event(format!("split of {range} at {at:#x} failed: {err}"));
                        return;
                    }
                    self.status.lock().splits += 1;
                }
                Action::Move { range, from, to, load, reason } => {
                    self.metrics.decisions.with_label_values(&["move"]).inc();
                    cooling.push((range, Instant::now()));
                    let options = MoveOptions {
                        strategy,
                        rate_limit_bytes_per_sec: policy.rate_limit_bytes_per_sec(),
                        ..MoveOptions::default()
                    };
                    {
                        let mut status = self.status.lock();
                        status.started += 1;
                        status.in_flight.push((range, from, to, Instant::now()));
                        if status.history.len() == EVENTS_KEPT * 8 {
                            status.history.pop_front();
                        }
                        status.history.push_back(MoveRecord {
                            range,
                            from,
                            to,
                            started: Instant::now(),
                            ended: None,
                        });
                        let unit = if plan.dimension == Dimension::Ops { "ops/s" } else { "bytes" };
                        status.event(format!(
                            "move {range} {from} -> {to} ({}, {load:.0} {unit})",
                            reason.name()
                        ));
                        self.metrics.moves_in_flight.set(status.in_flight.len() as i64);
                    }
                    let coordinator = self.coordinator.clone();
                    moves.spawn(async move {
                        let result = coordinator.migrate(range, to, options, |_| {}).await;
                        (range, from, to, strategy, result)
                    });
                }
            }
        }
    }

    fn move_ended(
        &self,
        (range, from, to, strategy, result): Ended,
        cooling: &mut Vec<(HashRange, Instant)>,
    ) {
        // The cooldown runs from the end of a move too.
        cooling.retain(|(r, _)| *r != range);
        cooling.push((range, Instant::now()));
        let strategy_name = strategy.name();
        let mut status = self.status.lock();
        status.in_flight.retain(|m| m.0 != range);
        let finished = result.is_ok();
        if let Some(record) = status.history.iter_mut().rev().find(|m| m.range == range && m.ended.is_none())
        {
            record.ended = Some((Instant::now(), finished));
        }
        self.metrics.moves_in_flight.set(status.in_flight.len() as i64);
        match result {
            Ok(report) => {
                status.finished += 1;
                self.metrics.moves.with_label_values(&["finished", strategy_name]).inc();
                self.metrics.moved_bytes.inc_by(report.bytes);
                status.event(format!(
                    "moved {range} {from} -> {to}: {} objects in {:.2} s",
                    report.objects,
                    report.duration.as_secs_f64()
                ));
            }
            Err(CoordinatorError::Aborted { reason, .. }) => {
                status.aborted += 1;
                self.metrics.moves.with_label_values(&["aborted", strategy_name]).inc();
                status.event(format!("move {range} {from} -> {to} aborted ({reason}); back on {from}"));
            }
            Err(err) => {
                status.failed += 1;
                self.metrics.moves.with_label_values(&["failed", strategy_name]).inc();
                status.event(format!("move {range} {from} -> {to} failed: {err}"));
            }
        }
    }
}
