//! What a one-shot rebalance asks for ([`RebalanceRequest`]) and what the
//! coordinator proposes to do about it ([`Proposal`]). Plain types: the
//! operator's FulvaRebalance resource embeds them in its spec and status, and
//! [`rebalance_job`](crate::rebalance_job) plans and runs them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The part of a rebalance's spec the planner and the job read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RebalanceRequest {
    /// What to achieve.
    pub goal: RebalanceGoal,
    /// add-nodes: the nodes to fill; remove-nodes: the nodes to empty.
    pub nodes: Vec<u32>,
    /// moves: the moves to make, in order.
    pub moves: Vec<RequestedMove>,
    /// Bandwidth limit of each move in MB/s (0 = none; `None`: the cluster policy's).
    pub bandwidth_limit_mb_per_sec: Option<f64>,
    /// Adapt the bandwidth to client latency instead of a fixed limit.
    pub adaptive: Option<AdaptiveRateSpec>,
    /// Moves at once (`None`: the cluster policy's maxConcurrentMoves).
    pub max_concurrent_moves: Option<u32>,
}

/// What a rebalance achieves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RebalanceGoal {
    /// Even out load over every node, as the cluster's policy would.
    #[default]
    Full,
    /// Move ranges onto `nodes` (new ones) until they carry their share.
    AddNodes,
    /// Move every range off `nodes`.
    RemoveNodes,
    /// Make exactly the `moves` listed.
    Moves,
}

impl RebalanceGoal {
    /// The name used in the spec.
    pub fn name(self) -> &'static str {
        match self {
            RebalanceGoal::Full => "full",
            RebalanceGoal::AddNodes => "add-nodes",
            RebalanceGoal::RemoveNodes => "remove-nodes",
            RebalanceGoal::Moves => "moves",
        }
    }
}

/// One move a user asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestedMove {
    /// Hash range, `FIRST..=LAST` or `FIRST..END` (hex with 0x, or decimal);
    /// shards are split at its ends first.
    pub range: String,
    /// Destination node.
    pub to: u32,
}

/// The adaptive migration rate: raised while the clients' p99 latency stays
/// under the target, lowered when it does not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdaptiveRateSpec {
    /// Client p99 latency to hold, in microseconds.
    #[schemars(range(min = 1))]
    pub target_p99_micros: u64,
    /// Lowest rate, MB/s.
    #[serde(default = "default_min_rate")]
    #[schemars(range(min = 0.01))]
    pub min_mb_per_sec: f64,
    /// Highest rate, MB/s.
    #[serde(default = "default_max_rate")]
    #[schemars(range(min = 0.01))]
    pub max_mb_per_sec: f64,
    /// The control law: `p99` moves the rate itself with the clients' p99;
    /// `cpuBudget` moves a CPU budget with it and sets the rate to the
    /// budget over the move's measured CPU cost per byte.
    #[serde(default)]
    pub law: AdaptiveLawSpec,
}

/// The control law of an adaptive rate, as a request names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AdaptiveLawSpec {
    /// The rate follows the clients' p99.
    #[default]
    P99,
    /// A CPU budget follows the clients' p99; the rate is budget / cost per byte.
    CpuBudget,
}

fn default_min_rate() -> f64 {
    1.0
}

fn default_max_rate() -> f64 {
    1000.0
}

/// One move of a proposal.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProposedMove {
    /// Hash range, FIRST..=LAST.
    pub range: String,
    /// Its node now.
    pub from: u32,
    /// Where it goes.
    pub to: u32,
    /// Its stored bytes.
    pub bytes: u64,
    /// Why: balance, drain, pin or requested.
    pub reason: String,
}

/// What the operator plans to do.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Proposal {
    /// Splits to make first (FIRST..=LAST of the shard @ the split hash).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub splits: Vec<String>,
    /// Moves, in order.
    pub moves: Vec<ProposedMove>,
    /// Bytes to move.
    pub bytes_to_move: u64,
    /// Imbalance score (max / mean node load) now.
    pub imbalance_before: f64,
    /// Imbalance score expected after the moves.
    pub imbalance_after: f64,
    /// Load the scores measure: ops or memory.
    pub dimension: String,
    /// Estimated duration in seconds.
    pub estimated_seconds: f64,
    /// Shard-map epoch the proposal was computed at.
    pub map_epoch: u64,
    /// When it was computed (RFC 3339).
    pub computed_at: String,
}
