//! The rebalance policy a user declares in YAML: when the cluster counts as
//! imbalanced, and how moves may run. The same type is the `rebalance` field
//! of the FulvaCluster resource and the `--policy` file of `fulva up`.

use fulva_proto::{HashRange, NodeId, Strategy};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The policy `fulva up` runs with when given none.
pub const DEFAULT_POLICY_YAML: &str = include_str!("default-policy.yaml");

/// What the rebalancer does when the cluster is imbalanced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RebalanceMode {
    /// Plan moves and run them.
    #[default]
    Auto,
    /// Plan moves and publish them as a proposal; run nothing.
    Proposal,
    /// Neither plan nor move.
    Off,
}

/// Migration strategy of the moves a policy makes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyName {
    /// Source and destination serve together (the default).
    #[default]
    Fulva,
    /// Destination-driven with on-demand pulls.
    Rocksteady,
    /// Source serves while copying, then hands over under a lock.
    SourceDriven,
}

impl From<StrategyName> for Strategy {
    fn from(s: StrategyName) -> Strategy {
        match s {
            StrategyName::Fulva => Strategy::Fulva,
            StrategyName::Rocksteady => Strategy::Rocksteady,
            StrategyName::SourceDriven => Strategy::SourceDriven,
        }
    }
}

/// When the cluster counts as imbalanced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Triggers {
    /// A node's ops/s above the mean by more than this fraction (0.1 = 10%).
    pub ops_imbalance: f64,
    /// ... and by at least this many ops/s (ignores noise on an idle cluster).
    pub min_ops_per_sec: f64,
    /// A node's stored bytes above the mean by more than this fraction.
    pub memory_imbalance: f64,
    /// ... and by at least this many bytes.
    pub min_memory_bytes: u64,
    /// The imbalance must last this long before anything moves.
    pub sustained_seconds: u64,
}

impl Default for Triggers {
    fn default() -> Triggers {
        Triggers {
            ops_imbalance: 0.10,
            min_ops_per_sec: 1_000.0,
            memory_imbalance: 0.25,
            min_memory_bytes: 64 << 20,
            sustained_seconds: 10,
        }
    }
}

/// A range that must stay where it is, or live on a given node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PinnedRange {
    /// Hash range, `FIRST..=LAST` or `FIRST..END` (hex with 0x, or decimal).
    pub range: String,
    /// Node it must live on; absent: wherever it is now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
}

/// How a cluster rebalances itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct RebalancePolicy {
    /// auto (plan and move), proposal (plan only) or off.
    pub mode: RebalanceMode,
    /// When the cluster counts as imbalanced.
    pub triggers: Triggers,
    /// A range that moved is not moved again for this long.
    pub cooldown_seconds: u64,
    /// Moves running at once in the whole cluster.
    pub max_concurrent_moves: u32,
    /// Moves running at once that involve one node (as source or destination).
    pub max_moves_per_node: u32,
    /// Bandwidth limit of each move in MB/s (0 = none).
    pub bandwidth_limit_mb_per_sec: f64,
    /// Migration strategy of the moves.
    pub strategy: StrategyName,
    /// Most bytes of keys and values a node may hold (0 = no cap). A drain
    /// (upgrade, node maintenance) fills the other nodes up to it and no
    /// further, and is refused up front when they have no room.
    pub max_node_bytes: u64,
    /// Nodes that never receive a range.
    pub excluded_nodes: Vec<NodeId>,
    /// Ranges that never move (or must live on a given node).
    pub pinned_ranges: Vec<PinnedRange>,
    /// Split a range too hot to move whole, so part of it can move alone.
    pub split_hot_ranges: bool,
    /// Smallest range (in hashes, as a power of two) splitting may create.
    pub min_range_bits: u32,
    /// How often load is sampled, in milliseconds.
    pub sample_interval_ms: u64,
}

impl Default for RebalancePolicy {
    fn default() -> RebalancePolicy {
        RebalancePolicy {
            mode: RebalanceMode::Auto,
            triggers: Triggers::default(),
            cooldown_seconds: 30,
            max_concurrent_moves: 2,
            max_moves_per_node: 1,
            bandwidth_limit_mb_per_sec: 0.0,
            strategy: StrategyName::Fulva,
            max_node_bytes: 0,
            excluded_nodes: Vec::new(),
            pinned_ranges: Vec::new(),
            split_hot_ranges: true,
            min_range_bits: 32,
            sample_interval_ms: 1_000,
        }
    }
}

/// Why a policy is refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PolicyError {
    /// The YAML does not parse into a policy.
    #[error("rebalance policy: {0}")]
    Parse(String),
    /// A field is out of range.
    #[error("rebalance policy: {field}: {problem}")]
    Invalid {
        /// The field, as written in YAML.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

fn invalid(field: &'static str, problem: impl Into<String>) -> PolicyError {
    PolicyError::Invalid { field, problem: problem.into() }
}

impl RebalancePolicy {
    /// Parses and validates a policy from YAML; absent fields take defaults.
    pub fn from_yaml(text: &str) -> Result<RebalancePolicy, PolicyError> {
        let policy: RebalancePolicy =
            serde_yaml_ng::from_str(text).map_err(|e| PolicyError::Parse(e.to_string()))?;
        policy.validate()?;
        Ok(policy)
    }

    /// Checks that every node the policy names for a pinned range is one of
    /// `nodes` (a pin to a node that does not exist could never be honoured).
    pub fn check_nodes(&self, nodes: &[NodeId]) -> Result<(), PolicyError> {
        for pin in &self.pinned_ranges {
            if let Some(node) = pin.node.filter(|n| !nodes.contains(n)) {
                return Err(invalid(
                    "pinnedRanges",
                    format!(
                        "{} is pinned to node {node}, which is not in the cluster (nodes {nodes:?})",
                        pin.range
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks every field; a policy that fails changes nothing.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let t = &self.triggers;
        if !(t.ops_imbalance.is_finite() && t.ops_imbalance > 0.0) {
            return Err(invalid("triggers.opsImbalance", "must be a fraction above 0 (0.1 = 10%)"));
        }
        if !(t.memory_imbalance.is_finite() && t.memory_imbalance > 0.0) {
            return Err(invalid("triggers.memoryImbalance", "must be a fraction above 0 (0.25 = 25%)"));
        }
        if !(t.min_ops_per_sec.is_finite() && t.min_ops_per_sec >= 0.0) {
            return Err(invalid("triggers.minOpsPerSec", "must be 0 or more"));
        }
        if self.max_concurrent_moves == 0 {
            return Err(invalid("maxConcurrentMoves", "must be at least 1 (use mode: off to stop moves)"));
        }
        if self.max_moves_per_node == 0 {
            return Err(invalid("maxMovesPerNode", "must be at least 1"));
        }
        if !(self.bandwidth_limit_mb_per_sec.is_finite() && self.bandwidth_limit_mb_per_sec >= 0.0) {
            return Err(invalid("bandwidthLimitMbPerSec", "must be 0 (no limit) or more"));
        }
        if !(1..=63).contains(&self.min_range_bits) {
            return Err(invalid("minRangeBits", "must be between 1 and 63"));
        }
        if self.sample_interval_ms < 50 {
            return Err(invalid("sampleIntervalMs", "must be at least 50"));
        }
        for pin in &self.pinned_ranges {
            pin.range
                .parse::<HashRange>()
                .map_err(|e| invalid("pinnedRanges[].range", format!("{:?}: {e}", pin.range)))?;
            if let Some(node) = pin.node {
                if self.excluded_nodes.contains(&node) {
                    return Err(invalid(
                        "pinnedRanges[].node",
                        format!("{} is pinned to node {node}, which is excluded", pin.range),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The pinned ranges, parsed (validated ones always parse).
    pub fn pins(&self) -> Vec<(HashRange, Option<NodeId>)> {
        self.pinned_ranges.iter().filter_map(|p| Some((p.range.parse().ok()?, p.node))).collect()
    }

    /// How long an imbalance must last.
    pub fn sustained(&self) -> Duration {
        Duration::from_secs(self.triggers.sustained_seconds)
    }

    /// How long a moved range stays put.
    pub fn cooldown(&self) -> Duration {
        Duration::from_secs(self.cooldown_seconds)
    }

    /// Bandwidth limit of a move in bytes/s (0 = none).
    pub fn rate_limit_bytes_per_sec(&self) -> u64 {
        (self.bandwidth_limit_mb_per_sec * 1e6) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_parses_to_the_defaults_with_a_short_window() {
        let policy = RebalancePolicy::from_yaml(DEFAULT_POLICY_YAML).unwrap();
        assert_eq!(policy.mode, RebalanceMode::Auto);
        assert!(policy.triggers.sustained_seconds <= 5, "the local demo reacts within seconds");
    }

    #[test]
    fn absent_fields_take_defaults_and_bad_ones_are_named() {
        let policy = RebalancePolicy::from_yaml("mode: proposal\ntriggers:\n  opsImbalance: 0.2\n").unwrap();
        assert_eq!(policy.mode, RebalanceMode::Proposal);
        assert_eq!(policy.triggers.ops_imbalance, 0.2);
        assert_eq!(policy.triggers.sustained_seconds, Triggers::default().sustained_seconds);
        assert_eq!(policy.cooldown_seconds, 30);

        let err = RebalancePolicy::from_yaml("maxConcurrentMoves: 0").unwrap_err();
        assert!(err.to_string().contains("maxConcurrentMoves"), "{err}");
        let err = RebalancePolicy::from_yaml("pinnedRanges: [{range: nonsense}]").unwrap_err();
        assert!(err.to_string().contains("pinnedRanges"), "{err}");
        let err = RebalancePolicy::from_yaml("excludedNodes: [2]\npinnedRanges: [{range: '0..=5', node: 2}]")
            .unwrap_err();
        assert!(err.to_string().contains("excluded"), "{err}");
        // A typo is an error, not a silently ignored field.
        assert!(matches!(RebalancePolicy::from_yaml("cooldownSecs: 5"), Err(PolicyError::Parse(_))));
        assert!(matches!(RebalancePolicy::from_yaml("mode: sometimes"), Err(PolicyError::Parse(_))));
    }
}
