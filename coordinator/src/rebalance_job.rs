//! One-shot rebalances (the FulvaRebalance resource's runtime side): the
//! proposal, computed from the cluster's load by the planner, and the job
//! that runs it with a changeable, optionally adaptive, bandwidth limit.

use crate::coordinator::{Coordinator, CoordinatorError};
use crate::moves::MoveOptions;
use crate::planner::{self, Action, ClusterLoad, Dimension};
use crate::policy::RebalancePolicy;
use crate::request::{Proposal, ProposedMove, RebalanceGoal, RebalanceRequest};
use fulva_proto::grpc::MigrationStatusRequest;
use fulva_proto::{HashRange, NodeId, ShardMap, Strategy};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Transfer rate assumed for the estimate when no bandwidth limit is set
/// (bytes/s; about what one move reaches on a small machine).
pub const ESTIMATE_BYTES_PER_SEC: f64 = 50e6;
/// Fixed cost per move in the estimate (freeze, map updates, commit).
pub const ESTIMATE_SECONDS_PER_MOVE: f64 = 0.5;

/// Why a rebalance cannot be planned (or a proposal cannot run).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposalError {
    /// A node the request names is not in the cluster's map (is its pod running?).
    #[error("node {node} is not in the cluster's map (is its pod running?)")]
    UnknownNode {
        /// The node.
        node: NodeId,
    },
    /// remove-nodes names every node.
    #[error("removing every node leaves nowhere for the data")]
    RemovesEveryNode,
    /// A range does not parse.
    #[error("{text:?}: {problem}")]
    BadRange {
        /// The range as written.
        text: String,
        /// What is wrong with it.
        problem: String,
    },
    /// No shard holds the start of a requested range.
    #[error("no shard holds {range}")]
    NoShard {
        /// The range.
        range: HashRange,
    },
    /// A requested range spans more than one shard.
    #[error("{range} spans more than one shard (shard {shard} ends inside it)")]
    SpansShards {
        /// The range.
        range: HashRange,
        /// The shard that ends inside it.
        shard: HashRange,
    },
    /// A requested move to the node that already owns the range.
    #[error("{range} is already on node {node}")]
    AlreadyThere {
        /// The range.
        range: HashRange,
        /// Its owner.
        node: NodeId,
    },
}

fn parse_range(text: &str) -> Result<HashRange, ProposalError> {
    text.parse().map_err(|e: fulva_proto::RangeError| ProposalError::BadRange {
        text: text.to_string(),
        problem: e.to_string(),
    })
}

/// Plans a rebalance of a cluster whose load is `load` and map `map`, under
/// the cluster's `policy`. Unlike the automatic rebalancer it plans the whole
/// job at once: no per-round move limit and no cooldown.
pub fn propose(
    load: &ClusterLoad,
    map: &ShardMap,
    policy: &RebalancePolicy,
    spec: &RebalanceRequest,
    rate_bytes_per_sec: u64,
) -> Result<Proposal, ProposalError> {
    let mut load = load.clone();
    load.recently_moved.clear();
    let mut policy = policy.clone();
    policy.max_concurrent_moves = u32::MAX / 2;
    policy.max_moves_per_node = u32::MAX / 2;
    let known = |n: &u32| map.node(*n).is_some();
    let (actions, dimension, before, after) = match spec.goal {
        RebalanceGoal::Moves => return propose_moves(&load, map, spec, rate_bytes_per_sec),
        RebalanceGoal::Full => {
            let dimension = planner::triggered(&load, &policy).unwrap_or(Dimension::Ops);
            let plan = planner::plan(&load, &policy, Some(dimension));
            (plan.actions, plan.dimension, plan.before, plan.after)
        }
        RebalanceGoal::AddNodes => {
            if let Some(n) = spec.nodes.iter().find(|n| !known(n)) {
                return Err(ProposalError::UnknownNode { node: *n });
            }
            // Only the new nodes receive; stored bytes when there are any, else ops.
            policy.excluded_nodes =
                map.nodes.iter().map(|n| n.id).filter(|n| !spec.nodes.contains(n)).collect();
            let dimension =
                if load.ranges.iter().any(|r| r.bytes > 0) { Dimension::Memory } else { Dimension::Ops };
            let plan = planner::plan(&load, &policy, Some(dimension));
            (plan.actions, plan.dimension, plan.before, plan.after)
        }
        RebalanceGoal::RemoveNodes => {
            if let Some(n) = spec.nodes.iter().find(|n| !known(n)) {
                return Err(ProposalError::UnknownNode { node: *n });
            }
            if map.nodes.iter().all(|n| spec.nodes.contains(&n.id)) {
                return Err(ProposalError::RemovesEveryNode);
            }
            for node in &mut load.nodes {
                node.draining = spec.nodes.contains(&node.id);
            }
            let plan = planner::plan(&load, &policy, None);
            (plan.actions, plan.dimension, plan.before, plan.after)
        }
    };
    let mut proposal = Proposal {
        imbalance_before: before,
        imbalance_after: after,
        dimension: dimension.name().to_string(),
        map_epoch: map.epoch,
        computed_at: now_rfc3339(),
        ..Proposal::default()
    };
    for action in actions {
        match action {
            Action::Split { range, at } => proposal.splits.push(format!("{range}@{at:#x}")),
            Action::Move { range, from, to, reason, .. } => proposal.moves.push(ProposedMove {
                range: range.to_string(),
                from,
                to,
                bytes: bytes_of(&load, range),
                reason: reason.name().to_string(),
            }),
        }
    }
    finish(&mut proposal, spec, rate_bytes_per_sec);
    Ok(proposal)
}

fn propose_moves(
    load: &ClusterLoad,
    map: &ShardMap,
    spec: &RebalanceRequest,
    rate_bytes_per_sec: u64,
) -> Result<Proposal, ProposalError> {
    let mut ops: Vec<(NodeId, f64)> = load.nodes.iter().map(|n| (n.id, 0.0)).collect();
    for r in &load.ranges {
        if let Some(n) = ops.iter_mut().find(|(id, _)| *id == r.owner) {
            n.1 += r.ops_per_sec;
        }
    }
    let before = planner::imbalance_score(&ops.iter().map(|n| n.1).collect::<Vec<_>>());
    let mut proposal = Proposal {
        imbalance_before: before,
        dimension: Dimension::Ops.name().to_string(),
        map_epoch: map.epoch,
        computed_at: now_rfc3339(),
        ..Proposal::default()
    };
    for requested in &spec.moves {
        let range = parse_range(&requested.range)?;
        let shard = map.shard_of(range.first).ok_or(ProposalError::NoShard { range })?;
        if !shard.range.contains(range.last) {
            return Err(ProposalError::SpansShards { range, shard: shard.range });
        }
        if map.node(requested.to).is_none() {
            return Err(ProposalError::UnknownNode { node: requested.to });
        }
        if shard.owner == requested.to {
            return Err(ProposalError::AlreadyThere { range, node: requested.to });
        }
        let share = width(range) / width(shard.range);
        if let Some(r) = load.ranges.iter().find(|r| r.range == shard.range) {
            let moved = r.ops_per_sec * share;
            for (id, value) in &mut ops {
                if *id == shard.owner {
                    *value -= moved;
                } else if *id == requested.to {
                    *value += moved;
                }
            }
        }
        proposal.moves.push(ProposedMove {
            range: range.to_string(),
            from: shard.owner,
            to: requested.to,
            bytes: (bytes_of(load, shard.range) as f64 * share) as u64,
            reason: "requested".into(),
        });
    }
    proposal.imbalance_after = planner::imbalance_score(&ops.iter().map(|n| n.1).collect::<Vec<_>>());
    finish(&mut proposal, spec, rate_bytes_per_sec);
    Ok(proposal)
}

fn width(range: HashRange) -> f64 {
    range.last as f64 - range.first as f64 + 1.0
}

fn bytes_of(load: &ClusterLoad, range: HashRange) -> u64 {
    load.ranges
        .iter()
        .filter(|r| r.range.first <= range.last && range.first <= r.range.last)
        .map(|r| {
            let overlap = r.range.last.min(range.last) as f64 - r.range.first.max(range.first) as f64 + 1.0;
            (r.bytes as f64 * overlap / width(r.range)) as u64
        })
        .sum()
}

/// Fills in the totals and the duration estimate.
fn finish(proposal: &mut Proposal, spec: &RebalanceRequest, rate_bytes_per_sec: u64) {
    proposal.bytes_to_move = proposal.moves.iter().map(|m| m.bytes).sum();
    let rate = if rate_bytes_per_sec > 0 { rate_bytes_per_sec as f64 } else { ESTIMATE_BYTES_PER_SEC };
    let parallel =
        f64::from(spec.max_concurrent_moves.unwrap_or(1).max(1)).min(proposal.moves.len().max(1) as f64);
    proposal.estimated_seconds = proposal.bytes_to_move as f64 / rate / parallel
        + ESTIMATE_SECONDS_PER_MOVE * proposal.moves.len() as f64 / parallel;
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobPhase {
    /// Moves are running or waiting.
    Running,
    /// Stopped on request; moves in flight finished.
    Stopped,
    /// Every move ran; `failed` of the report say how many did not finish.
    Done,
}

/// What a job reports.
#[derive(Clone, Debug, PartialEq)]
pub struct JobReport {
    /// Where it is.
    pub phase: JobPhase,
    /// Moves finished (or found already done).
    pub done: u32,
    /// Moves that failed or were rolled back.
    pub failed: u32,
    /// Moves in the job.
    pub total: u32,
    /// Bytes the finished moves carried.
    pub bytes_moved: u64,
    /// Bytes the proposal moves.
    pub bytes_total: u64,
    /// Moves running: range, source, destination.
    pub in_flight: Vec<(HashRange, NodeId, NodeId)>,
    /// Bandwidth limit in force, bytes/s (0 = none).
    pub rate_bytes_per_sec: u64,
    /// Why moves failed, newest last.
    pub errors: Vec<String>,
    /// When the job started and ended.
    pub started: SystemTime,
    /// When it ended.
    pub finished: Option<SystemTime>,
}

/// How a job sets its bandwidth.
#[derive(Clone, Debug, PartialEq)]
pub enum RateControl {
    /// A fixed limit in bytes/s (0 = none).
    Fixed(u64),
    /// Adapted to client latency.
    Adaptive(AdaptiveSettings),
}

/// Settings of the adaptive rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdaptiveSettings {
    /// Client p99 to hold.
    pub target_p99: Duration,
    /// Lowest rate, bytes/s.
    pub min_bytes_per_sec: u64,
    /// Highest rate, bytes/s.
    pub max_bytes_per_sec: u64,
    /// Which control law sets the rate.
    pub law: AdaptiveLaw,
}

/// The control law of an adaptive rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AdaptiveLaw {
    /// [`AdaptiveRate`]: the rate itself follows the clients' p99.
    #[default]
    P99,
    /// [`CpuBudgetRate`]: a CPU budget follows the clients' p99 and the
    /// rate is the budget over the move's measured CPU cost per byte.
    CpuBudget,
}

/// What the moves of a job have cost so far, summed over their
/// destinations: CPU seconds their pulls used and bytes they applied.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MoveTotals {
    /// CPU seconds.
    pub cpu_seconds: f64,
    /// Bytes applied.
    pub bytes: u64,
}

/// The CPU-budget law (after elastic CPU limiters such as CockroachDB's):
/// the move may use a share of a core at the destination; the share rises
/// by a step while the clients' p99 stays under 80% of the target, halves
/// when it goes over, and holds in between. The rate is the share over the
/// move's CPU cost per byte, measured each step from the destinations'
/// meters (smoothed), so a cheaper byte moves faster at the same budget and
/// the law acts on what the move takes from the clients, the CPU, rather
/// than on bytes.
#[derive(Clone, Debug)]
pub struct CpuBudgetRate {
    settings: AdaptiveSettings,
    share: f64,
    cost: f64,
    measured: bool,
    last: Option<MoveTotals>,
    rate: u64,
}

impl CpuBudgetRate {
    /// The first budget, in cores.
    pub const START_SHARE: f64 = 0.05;
    /// Added to the budget per step while latency holds, in cores.
    pub const STEP: f64 = 0.05;
    /// Smallest budget, in cores.
    pub const MIN_SHARE: f64 = 0.005;
    /// Largest budget, in cores.
    pub const MAX_SHARE: f64 = 1.0;
    /// CPU seconds per byte assumed before the first measurement (10 ms/MB).
    pub const START_COST: f64 = 10e-9;
    /// Bytes a step must move for its cost to count.
    const MEASURED_BYTES: u64 = 64 * 1024;

    /// The law at its first budget.
    pub fn new(settings: AdaptiveSettings) -> CpuBudgetRate {
        let mut law = CpuBudgetRate {
            settings,
            share: Self::START_SHARE,
            cost: Self::START_COST,
            measured: false,
            last: None,
            rate: 0,
        };
        law.rate = law.rate_for_budget();
        law
    }

    fn rate_for_budget(&self) -> u64 {
        let s = self.settings;
        ((self.share / self.cost).round() as u64).clamp(s.min_bytes_per_sec, s.max_bytes_per_sec)
    }

    /// The rate in force, bytes/s.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// The budget in force, in cores.
    pub fn share(&self) -> f64 {
        self.share
    }

    /// The cost per byte in use, CPU seconds.
    pub fn cost_per_byte(&self) -> f64 {
        self.cost
    }

    /// Takes the p99 since the last step and the moves' totals now, and
    /// returns the new rate.
    pub fn step(&mut self, p99: Option<Duration>, totals: Option<MoveTotals>) -> u64 {
        if let Some(now) = totals {
            match self.last {
                // Totals that went down: a move ended or another began; start over from here.
                Some(before) if now.bytes >= before.bytes && now.cpu_seconds >= before.cpu_seconds => {
                    let bytes = now.bytes - before.bytes;
                    let cpu = now.cpu_seconds - before.cpu_seconds;
                    if bytes >= Self::MEASURED_BYTES && cpu > 0.0 {
                        let observed = cpu / bytes as f64;
                        self.cost = if self.measured { 0.5 * self.cost + 0.5 * observed } else { observed };
                        self.measured = true;
                    }
                }
                _ => {}
            }
            self.last = Some(now);
        }
        let target = self.settings.target_p99;
        self.share = match p99 {
            Some(p) if p > target => (self.share / 2.0).max(Self::MIN_SHARE),
            Some(p) if p * 5 > target * 4 => self.share,
            _ => (self.share + Self::STEP).min(Self::MAX_SHARE),
        };
        self.rate = self.rate_for_budget();
        self.rate
    }
}

/// The adaptive rate's control law: raise by an eighth while client p99
/// stays under 80% of the target, halve when it goes over, hold in between
/// (a gentle rise and a sharp fall, so the rate settles just under what the
/// clients tolerate). One step per observation (one a second).
#[derive(Clone, Debug)]
pub struct AdaptiveRate {
    settings: AdaptiveSettings,
    rate: u64,
}

impl AdaptiveRate {
    /// Starts a sixteenth of the way from the minimum to the maximum (low, so
    /// the first seconds of a move do not overshoot the target).
    pub fn new(settings: AdaptiveSettings) -> AdaptiveRate {
        let start =
            settings.min_bytes_per_sec + (settings.max_bytes_per_sec - settings.min_bytes_per_sec) / 16;
        AdaptiveRate { settings, rate: start }
    }

    /// The rate in force, bytes/s.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Takes the p99 seen since the last step (None: no client traffic) and
    /// returns the new rate.
    pub fn step(&mut self, p99: Option<Duration>) -> u64 {
        let s = self.settings;
        let step = (self.rate / 8).max((s.max_bytes_per_sec - s.min_bytes_per_sec) / 256).max(1);
        self.rate = match p99 {
            Some(p) if p > s.target_p99 => (self.rate / 2).max(s.min_bytes_per_sec),
            Some(p) if p * 5 > s.target_p99 * 4 => self.rate,
            _ => (self.rate + step).min(s.max_bytes_per_sec),
        };
        self.rate
    }
}

/// The rate control a rebalance's spec asks for: adaptive, its own fixed
/// limit, or the cluster policy's limit.
pub fn rate_control(spec: &RebalanceRequest, policy: &RebalancePolicy) -> RateControl {
    let bytes = |mb: f64| (mb * 1e6) as u64;
    match &spec.adaptive {
        Some(a) => RateControl::Adaptive(AdaptiveSettings {
            target_p99: Duration::from_micros(a.target_p99_micros),
            min_bytes_per_sec: bytes(a.min_mb_per_sec).max(1),
            max_bytes_per_sec: bytes(a.max_mb_per_sec).max(bytes(a.min_mb_per_sec).max(1)),
            law: match a.law {
                crate::request::AdaptiveLawSpec::P99 => AdaptiveLaw::P99,
                crate::request::AdaptiveLawSpec::CpuBudget => AdaptiveLaw::CpuBudget,
            },
        }),
        None => RateControl::Fixed(
            spec.bandwidth_limit_mb_per_sec.map_or(policy.rate_limit_bytes_per_sec(), bytes),
        ),
    }
}

/// Client latency as the adaptive rate sees it.
pub trait LatencySignal: Send + Sync + 'static {
    /// The p99 of client requests since the last call (None: none completed).
    fn take_p99(&self) -> Option<Duration>;
}

struct Shared {
    coordinator: Arc<Coordinator>,
    stop: CancellationToken,
    rate: AtomicU64,
    control: Mutex<RateControl>,
    report: Mutex<JobReport>,
}

/// A running (or ended) one-shot rebalance.
pub struct RebalanceJob {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl RebalanceJob {
    /// Starts the proposal's moves, `concurrency` at a time. A move whose
    /// range is already on its destination counts as done (a job resumed
    /// after an operator restart).
    pub fn start(
        coordinator: Arc<Coordinator>,
        proposal: &Proposal,
        strategy: Strategy,
        concurrency: u32,
        rate: RateControl,
        latency: Option<Arc<dyn LatencySignal>>,
    ) -> Result<RebalanceJob, ProposalError> {
        let mut moves = Vec::new();
        for m in &proposal.moves {
            let range = parse_range(&m.range)?;
            moves.push((range, m.from, m.to, m.bytes));
        }
        let initial = match &rate {
            RateControl::Fixed(limit) => *limit,
            RateControl::Adaptive(settings) => AdaptiveRate::new(*settings).rate(),
        };
        let shared = Arc::new(Shared {
            coordinator,
            stop: CancellationToken::new(),
            rate: AtomicU64::new(initial),
            control: Mutex::new(rate),
            report: Mutex::new(JobReport {
                phase: JobPhase::Running,
                done: 0,
                failed: 0,
                total: moves.len() as u32,
                bytes_moved: 0,
                bytes_total: proposal.bytes_to_move,
                in_flight: Vec::new(),
                rate_bytes_per_sec: initial,
                errors: Vec::new(),
                started: SystemTime::now(),
                finished: None,
            }),
        });
        let finished = CancellationToken::new();
        let mut tasks = vec![tokio::spawn(run(
            shared.clone(),
            moves,
            strategy,
            concurrency.max(1) as usize,
            finished.clone(),
        ))];
        if let Some(signal) = latency {
            tasks.push(tokio::spawn(adapt(shared.clone(), signal, finished)));
        }
        Ok(RebalanceJob { shared, tasks: Mutex::new(tasks) })
    }

    /// What it did so far.
    pub fn report(&self) -> JobReport {
        self.shared.report.lock().clone()
    }

    /// Starts no new move; the moves in flight finish.
    pub fn stop(&self) {
        self.shared.stop.cancel();
    }

    /// Changes how the bandwidth is set. A fixed limit (bytes/s, 0 = none)
    /// applies at once to the moves in flight and to those still to start;
    /// adaptive settings take over from the next step (within a second).
    pub async fn set_control(&self, control: RateControl) {
        let fixed = match &control {
            RateControl::Fixed(limit) => Some(*limit),
            RateControl::Adaptive(_) => None,
        };
        *self.shared.control.lock() = control;
        if let Some(limit) = fixed {
            apply_rate(&self.shared, limit).await;
        }
    }

    /// How the bandwidth is set now.
    pub fn control(&self) -> RateControl {
        self.shared.control.lock().clone()
    }

    /// Progress of the moves in flight: (range, source, destination, bytes
    /// applied, bytes total, ETA seconds), from their destinations.
    pub async fn in_flight_progress(&self) -> Vec<(HashRange, NodeId, NodeId, u64, u64, f64)> {
        let moves = self.shared.report.lock().in_flight.clone();
        let mut out = Vec::new();
        for (range, from, to) in moves {
            let mut row = (range, from, to, 0, 0, 0.0);
            if let Ok(mut client) = self.shared.coordinator.node_client(to).await {
                if let Ok(s) =
                    client.migration_status(MigrationStatusRequest { range: Some(range.into()) }).await
                {
                    row = (range, from, to, s.bytes_applied, s.bytes_total, s.eta_seconds);
                }
            }
            out.push(row);
        }
        out
    }

    /// Waits for the job to end (used by tests and the local CLI).
    pub async fn wait(&self) -> JobReport {
        loop {
            let report = self.report();
            if report.phase != JobPhase::Running {
                return report;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RebalanceJob {
    /// A job dropped (its cluster's runtime stops) starts no new move and
    /// aborts those in flight; they roll back in the background, so no
    /// range is left half-moved.
    fn drop(&mut self) {
        self.shared.stop.cancel();
        for (range, _, _) in self.shared.report.lock().in_flight.clone() {
            let _ = self.shared.coordinator.abort_move(range);
        }
        self.tasks.lock().clear();
    }
}

/// One step of the adaptive rate: the clients' p99 it read and the rate it chose.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdaptiveStep {
    /// The p99 of client requests in the second before (None: none completed).
    pub p99: Option<Duration>,
    /// The rate the law chose, bytes/s.
    pub rate: u64,
}

/// The adaptive control loop, one step a second: the operator's rebalance
/// jobs and `fulva bench migration --adaptive-p99-us` both run it.
pub struct AdaptiveLoop {
    law: Option<(AdaptiveSettings, Law)>,
    tick: tokio::time::Interval,
}

enum Law {
    P99(AdaptiveRate),
    CpuBudget(CpuBudgetRate),
}

impl AdaptiveLoop {
    /// Starts the clock; what `signal` saw before now is not the move's doing.
    pub async fn start(signal: &dyn LatencySignal) -> AdaptiveLoop {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        signal.take_p99();
        AdaptiveLoop { law: None, tick }
    }

    /// Waits for the next second, reads the clients' p99 from `signal` and
    /// steps the law with the settings `settings()` returns then (None: the
    /// rate is not adaptive now; changed settings restart the law); the
    /// CPU-budget law also awaits `totals`, the moves' CPU and bytes so far.
    /// Returns None once `finished` is cancelled, else the step, if one was
    /// taken; the caller sets the rate on its moves.
    pub async fn next<T>(
        &mut self,
        signal: &dyn LatencySignal,
        finished: &CancellationToken,
        settings: impl FnOnce() -> Option<AdaptiveSettings>,
        totals: impl FnOnce() -> T,
    ) -> Option<Option<AdaptiveStep>>
    where
        T: std::future::Future<Output = Option<MoveTotals>>,
    {
        tokio::select! {
            () = finished.cancelled() => return None,
            _ = self.tick.tick() => {}
        }
        let p99 = signal.take_p99();
        let Some(settings) = settings() else {
            self.law = None;
            return Some(None);
        };
        let law = match &mut self.law {
            Some((s, law)) if *s == settings => law,
            _ => {
                let law = match settings.law {
                    AdaptiveLaw::P99 => Law::P99(AdaptiveRate::new(settings)),
                    AdaptiveLaw::CpuBudget => Law::CpuBudget(CpuBudgetRate::new(settings)),
                };
                &mut self.law.insert((settings, law)).1
            }
        };
        let rate = match law {
            Law::P99(law) => law.step(p99),
            Law::CpuBudget(law) => law.step(p99, totals().await),
        };
        Some(Some(AdaptiveStep { p99, rate }))
    }
}

/// The first rate of an adaptive move under `settings`.
pub fn first_rate(settings: AdaptiveSettings) -> u64 {
    match settings.law {
        AdaptiveLaw::P99 => AdaptiveRate::new(settings).rate(),
        AdaptiveLaw::CpuBudget => CpuBudgetRate::new(settings).rate(),
    }
}

/// Steps the adaptive rate once a second while the control is adaptive.
async fn adapt(shared: Arc<Shared>, signal: Arc<dyn LatencySignal>, finished: CancellationToken) {
    let mut control = AdaptiveLoop::start(&*signal).await;
    let settings = || match &*shared.control.lock() {
        RateControl::Adaptive(settings) => Some(*settings),
        RateControl::Fixed(_) => None,
    };
    let totals = || async {
        let moves = shared.report.lock().in_flight.clone();
        let mut totals = MoveTotals::default();
        for (range, _, to) in moves {
            let Ok(mut client) = shared.coordinator.node_client(to).await else { return None };
            let status =
                client.migration_status(MigrationStatusRequest { range: Some(range.into()) }).await.ok()?;
            totals.cpu_seconds += status.cpu_seconds;
            totals.bytes += status.bytes_applied;
        }
        Some(totals)
    };
    while let Some(step) = control.next(&*signal, &finished, settings, totals).await {
        let Some(step) = step else { continue };
        if step.rate != shared.rate.load(Ordering::Acquire) {
            tracing::debug!(p99 = ?step.p99, rate = step.rate, "adaptive migration rate");
            apply_rate(&shared, step.rate).await;
        }
    }
}

async fn apply_rate(shared: &Shared, bytes_per_sec: u64) {
    shared.rate.store(bytes_per_sec, Ordering::Release);
    let in_flight = {
        let mut report = shared.report.lock();
        report.rate_bytes_per_sec = bytes_per_sec;
        report.in_flight.clone()
    };
    for (range, _, _) in in_flight {
        if let Err(err) = shared.coordinator.set_move_rate(range, bytes_per_sec).await {
            // The move may have just ended.
            tracing::debug!(%range, error = %err, "could not change a move's rate");
        }
    }
}

type Ended = (HashRange, Result<crate::moves::MoveReport, CoordinatorError>);

async fn run(
    shared: Arc<Shared>,
    moves: Vec<(HashRange, NodeId, NodeId, u64)>,
    strategy: Strategy,
    concurrency: usize,
    finished: CancellationToken,
) {
    let mut queue = moves.into_iter();
    let mut running: JoinSet<Ended> = JoinSet::new();
    loop {
        while running.len() < concurrency && !shared.stop.is_cancelled() {
            let Some((range, from, to, _bytes)) = queue.next() else { break };
            let map = shared.coordinator.map();
            if map.shard_of(range.first).is_some_and(|s| s.owner == to && s.range.contains(range.last)) {
                shared.report.lock().done += 1;
                continue;
            }
            shared.report.lock().in_flight.push((range, from, to));
            let coordinator = shared.coordinator.clone();
            let options = MoveOptions {
                strategy,
                rate_limit_bytes_per_sec: shared.rate.load(Ordering::Acquire),
                ..MoveOptions::default()
            };
            tracing::info!(%range, from, to, "rebalance: move starts");
            running.spawn(async move { (range, coordinator.migrate(range, to, options, |_| {}).await) });
        }
        if running.is_empty() {
            break;
        }
        let Some(Ok((range, result))) = running.join_next().await else { continue };
        let mut report = shared.report.lock();
        report.in_flight.retain(|m| m.0 != range);
        match result {
            Ok(moved) => {
                report.done += 1;
                report.bytes_moved += moved.bytes;
            }
            Err(err) => {
                report.failed += 1;
                report.errors.push(format!("{range}: {err}"));
            }
        }
    }
    let mut report = shared.report.lock();
    let started_all = report.done + report.failed >= report.total;
    report.phase =
        if !started_all && shared.stop.is_cancelled() { JobPhase::Stopped } else { JobPhase::Done };
    report.finished = Some(SystemTime::now());
    finished.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AdaptiveSettings {
        AdaptiveSettings {
            target_p99: Duration::from_millis(2),
            min_bytes_per_sec: 1_000_000,
            max_bytes_per_sec: 17_000_000,
            law: AdaptiveLaw::P99,
        }
    }

    #[test]
    fn the_cpu_budget_grows_while_latency_holds_and_the_rate_follows_the_cost() {
        let settings = AdaptiveSettings {
            law: AdaptiveLaw::CpuBudget,
            min_bytes_per_sec: 100_000,
            max_bytes_per_sec: 1_000_000_000,
            ..settings()
        };
        let mut law = CpuBudgetRate::new(settings);
        // 5% of a core at the assumed 10 ms/MB: 5 MB/s.
        assert_eq!(law.rate(), 5_000_000);
        let low = Some(Duration::from_micros(500));
        // First totals set the baseline; the budget rises by a step.
        law.step(low, Some(MoveTotals { cpu_seconds: 1.0, bytes: 100_000_000 }));
        assert!((law.share() - 0.10).abs() < 1e-9);
        assert_eq!(law.rate(), 10_000_000);
        // The move measured 20 ms/MB over the step (0.1 s for 5 MB): the
        // first measurement replaces the guess; 15% of a core buys 7.5 MB/s.
        let rate = law.step(low, Some(MoveTotals { cpu_seconds: 1.1, bytes: 105_000_000 }));
        assert!((law.cost_per_byte() - 20e-9).abs() < 1e-12, "{}", law.cost_per_byte());
        assert_eq!(rate, 7_500_000);
        // A cheaper byte (5 ms/MB) moves faster at the same budget once
        // smoothed in: (20 + 5) / 2 = 12.5 ms/MB, 20% of a core -> 16 MB/s.
        let rate = law.step(low, Some(MoveTotals { cpu_seconds: 1.11, bytes: 107_000_000 }));
        assert_eq!(rate, 16_000_000);
        // Over target: the budget halves; the cost stays (nothing moved).
        let rate = law
            .step(Some(Duration::from_millis(3)), Some(MoveTotals { cpu_seconds: 1.11, bytes: 107_000_000 }));
        assert!((law.share() - 0.10).abs() < 1e-9);
        assert_eq!(rate, 8_000_000);
        // Between 80% and 100% of the target: hold.
        assert_eq!(law.step(Some(Duration::from_micros(1_900)), None), 8_000_000);
        // Totals that go down (a move ended) restart the baseline, no bogus cost.
        law.step(low, Some(MoveTotals { cpu_seconds: 0.01, bytes: 1_000 }));
        assert!((law.cost_per_byte() - 12.5e-9).abs() < 1e-12);
        // The budget and the rate stay in their bounds.
        for _ in 0..100 {
            law.step(low, None);
        }
        assert!((law.share() - CpuBudgetRate::MAX_SHARE).abs() < 1e-9);
        assert_eq!(law.rate(), 80_000_000);
        for _ in 0..100 {
            law.step(Some(Duration::from_secs(1)), None);
        }
        assert!((law.share() - CpuBudgetRate::MIN_SHARE).abs() < 1e-9);
        assert_eq!(law.rate(), 400_000, "the smallest budget at 12.5 ms/MB");
        let costly = AdaptiveSettings { min_bytes_per_sec: 1_000_000, ..settings };
        let mut law = CpuBudgetRate::new(costly);
        for _ in 0..100 {
            law.step(Some(Duration::from_secs(1)), None);
        }
        assert_eq!(law.rate(), 1_000_000, "floored at the minimum rate");
    }

    #[test]
    fn the_rate_climbs_while_latency_is_low_and_halves_when_it_is_high() {
        let mut law = AdaptiveRate::new(settings());
        let start = law.rate();
        assert_eq!(start, 2_000_000);
        // Well under target: up by an eighth a step, up to the maximum.
        assert_eq!(law.step(Some(Duration::from_micros(500))), 2_250_000);
        assert_eq!(law.step(Some(Duration::from_micros(500))), 2_531_250);
        for _ in 0..40 {
            law.step(None);
        }
        assert_eq!(law.rate(), 17_000_000, "capped at the maximum");
        // Over target: halve, down to the minimum.
        assert_eq!(law.step(Some(Duration::from_millis(3))), 8_500_000);
        assert_eq!(law.step(Some(Duration::from_millis(3))), 4_250_000);
        for _ in 0..10 {
            law.step(Some(Duration::from_millis(9)));
        }
        assert_eq!(law.rate(), 1_000_000, "floored at the minimum");
        // Between 80% and 100% of the target: hold; below it the rate rises
        // from the floor by at least 1/256 of the range.
        assert_eq!(law.step(Some(Duration::from_micros(1_900))), 1_000_000);
        assert_eq!(law.step(Some(Duration::from_micros(1_500))), 1_125_000);
    }
}
