//! The FulvaRebalance custom resource (`fulva.io/v1alpha1`): a one-shot
//! rebalance of a FulvaCluster. The operator first writes a proposal into
//! its status; the moves run once the user approves (annotation
//! `fulva.io/approve`) or the spec says `autoApprove`. Annotations also stop
//! it (`fulva.io/stop`: moves in flight finish, no new one starts) and
//! recompute the proposal (`fulva.io/refresh`, removed once done).

use crate::crd::MoveStatus;
pub use fulva_coordinator::request::{
    AdaptiveRateSpec, Proposal, ProposedMove, RebalanceGoal, RebalanceRequest, RequestedMove,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Annotation that approves the proposal (any value but "false").
pub const APPROVE_ANNOTATION: &str = "fulva.io/approve";
/// Annotation that stops the rebalance (any value but "false").
pub const STOP_ANNOTATION: &str = "fulva.io/stop";
/// Annotation that asks for a new proposal; the operator removes it.
pub const REFRESH_ANNOTATION: &str = "fulva.io/refresh";
/// Label naming the FulvaCluster a rebalance belongs to.
pub const CLUSTER_LABEL: &str = "fulva.io/cluster";
/// Label on rebalances the operator created from a cluster in proposal mode.
pub const ORIGIN_LABEL: &str = "fulva.io/origin";

/// A one-shot rebalance of a FulvaCluster.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "fulva.io",
    version = "v1alpha1",
    kind = "FulvaRebalance",
    namespaced,
    status = "FulvaRebalanceStatus",
    shortname = "frb",
    category = "fulva",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.cluster"}"#,
    printcolumn = r#"{"name":"Goal","type":"string","jsonPath":".spec.goal"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Moves","type":"string","jsonPath":".status.movesSummary"}"#,
    printcolumn = r#"{"name":"Progress","type":"number","jsonPath":".status.progressPercent"}"#,
    printcolumn = r#"{"name":"ETA","type":"number","jsonPath":".status.etaSeconds"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct FulvaRebalanceSpec {
    /// Name of the FulvaCluster (same namespace).
    pub cluster: String,
    /// What to achieve.
    #[serde(default)]
    pub goal: RebalanceGoal,
    /// add-nodes: the nodes to fill (nothing moves elsewhere); remove-nodes:
    /// the nodes to empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<u32>,
    /// moves: the moves to make, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moves: Vec<RequestedMove>,
    /// Run the proposal without waiting for the approve annotation.
    #[serde(default)]
    pub auto_approve: bool,
    /// Bandwidth limit of each move in MB/s (0 = none; absent: the
    /// cluster policy's). A change applies to the moves in flight within a second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub bandwidth_limit_mb_per_sec: Option<f64>,
    /// Adapt the bandwidth to client latency instead of a fixed limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveRateSpec>,
    /// Moves at once (absent: the cluster policy's maxConcurrentMoves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub max_concurrent_moves: Option<u32>,
}

/// Where a rebalance is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RebalancePhase {
    /// Nothing computed yet.
    #[default]
    Pending,
    /// The proposal is in the status, waiting for approval.
    ProposalReady,
    /// Moves are running.
    Rebalancing,
    /// Stopped on request: the moves in flight finished, the rest did not start.
    Stopped,
    /// Every move is done.
    Ready,
    /// It cannot go on (see the NotReady condition).
    NotReady,
}

impl RebalancePhase {
    /// Whether nothing more will happen.
    pub fn is_final(self) -> bool {
        matches!(self, RebalancePhase::Stopped | RebalancePhase::Ready | RebalancePhase::NotReady)
    }
}

/// What the operator reports about a rebalance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FulvaRebalanceStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where it is.
    #[serde(default)]
    pub phase: RebalancePhase,
    /// ProposalReady, Rebalancing, Stopped, Ready, NotReady.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposal: Option<Proposal>,
    /// Moves finished.
    #[serde(default)]
    pub moves_done: u32,
    /// Moves that failed or were rolled back.
    #[serde(default)]
    pub moves_failed: u32,
    /// Moves in the proposal.
    #[serde(default)]
    pub moves_total: u32,
    /// "done/total", for the printer column.
    #[serde(default)]
    pub moves_summary: String,
    /// Bytes moved so far.
    #[serde(default)]
    pub bytes_moved: u64,
    /// Percent of the proposal's bytes moved.
    #[serde(default)]
    pub progress_percent: f64,
    /// Seconds left, estimated.
    #[serde(default)]
    pub eta_seconds: f64,
    /// Bandwidth limit in force, MB/s (0 = none).
    #[serde(default)]
    pub rate_mb_per_sec: f64,
    /// The moves running now.
    #[serde(default)]
    pub current: Vec<MoveStatus>,
    /// When the moves started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// Why a rebalance spec is refused.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("spec.{field}: {problem}")]
pub struct RebalanceSpecError {
    /// The field path under spec.
    pub field: &'static str,
    /// What is wrong.
    pub problem: String,
}

fn invalid(field: &'static str, problem: impl Into<String>) -> RebalanceSpecError {
    RebalanceSpecError { field, problem: problem.into() }
}

impl FulvaRebalanceSpec {
    /// Checks what the schema cannot.
    pub fn validate(&self) -> Result<(), RebalanceSpecError> {
        if self.cluster.trim().is_empty() {
            return Err(invalid("cluster", "must name a FulvaCluster"));
        }
        match self.goal {
            RebalanceGoal::AddNodes | RebalanceGoal::RemoveNodes if self.nodes.is_empty() => {
                return Err(invalid("nodes", format!("{} needs at least one node", self.goal.name())));
            }
            RebalanceGoal::Moves if self.moves.is_empty() => {
                return Err(invalid("moves", "the moves goal needs at least one move"));
            }
            _ => {}
        }
        for m in &self.moves {
            m.range
                .parse::<fulva_proto::HashRange>()
                .map_err(|e| invalid("moves", format!("{:?}: {e}", m.range)))?;
        }
        if let Some(limit) = self.bandwidth_limit_mb_per_sec {
            if !(limit >= 0.0 && limit.is_finite()) {
                return Err(invalid("bandwidthLimitMbPerSec", "must be 0 (none) or more"));
            }
        }
        if let Some(a) = &self.adaptive {
            if a.target_p99_micros == 0 {
                return Err(invalid("adaptive.targetP99Micros", "must be above 0"));
            }
            if !(a.min_mb_per_sec > 0.0
                && a.min_mb_per_sec <= a.max_mb_per_sec
                && a.max_mb_per_sec.is_finite())
            {
                return Err(invalid("adaptive", "needs 0 < minMbPerSec <= maxMbPerSec"));
            }
        }
        if self.max_concurrent_moves == Some(0) {
            return Err(invalid("maxConcurrentMoves", "must be at least 1"));
        }
        Ok(())
    }
}

impl FulvaRebalanceSpec {
    /// What the coordinator's planner and job read of this spec.
    pub fn request(&self) -> RebalanceRequest {
        RebalanceRequest {
            goal: self.goal,
            nodes: self.nodes.clone(),
            moves: self.moves.clone(),
            bandwidth_limit_mb_per_sec: self.bandwidth_limit_mb_per_sec,
            adaptive: self.adaptive.clone(),
            max_concurrent_moves: self.max_concurrent_moves,
        }
    }
}

/// Whether annotation `name` is set to anything but "false".
pub fn annotated(rebalance: &FulvaRebalance, name: &str) -> bool {
    rebalance
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(name))
        .is_some_and(|v| !v.eq_ignore_ascii_case("false"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> FulvaRebalanceSpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn a_minimal_spec_is_a_full_rebalance_waiting_for_approval() {
        let s = spec("cluster: demo");
        assert_eq!(
            (s.goal, s.auto_approve, s.bandwidth_limit_mb_per_sec),
            (RebalanceGoal::Full, false, None)
        );
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn bad_specs_name_their_field() {
        let cases = [
            ("cluster: ''", "spec.cluster"),
            ("cluster: demo\ngoal: add-nodes", "spec.nodes"),
            ("cluster: demo\ngoal: remove-nodes", "spec.nodes"),
            ("cluster: demo\ngoal: moves", "spec.moves"),
            ("cluster: demo\ngoal: moves\nmoves: [{range: 'nonsense', to: 1}]", "spec.moves"),
            ("cluster: demo\nbandwidthLimitMbPerSec: -1", "bandwidthLimitMbPerSec"),
            ("cluster: demo\nadaptive: {targetP99Micros: 0}", "targetP99Micros"),
            (
                "cluster: demo\nadaptive: {targetP99Micros: 900, minMbPerSec: 9, maxMbPerSec: 2}",
                "spec.adaptive",
            ),
            ("cluster: demo\nmaxConcurrentMoves: 0", "maxConcurrentMoves"),
        ];
        for (yaml, field) in cases {
            let err = spec(yaml).validate().unwrap_err();
            assert!(err.to_string().contains(field), "{yaml}: {err}");
        }
    }

    #[test]
    fn annotations_count_unless_false() {
        let mut r = FulvaRebalance::new("r", spec("cluster: demo"));
        assert!(!annotated(&r, APPROVE_ANNOTATION));
        r.metadata.annotations = Some([(APPROVE_ANNOTATION.to_string(), "true".to_string())].into());
        assert!(annotated(&r, APPROVE_ANNOTATION));
        r.metadata.annotations = Some([(APPROVE_ANNOTATION.to_string(), "False".to_string())].into());
        assert!(!annotated(&r, APPROVE_ANNOTATION));
    }
}
