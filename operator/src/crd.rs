//! The FulvaCluster custom resource (`fulva.io/v1alpha1`): what a user
//! declares, and the status the operator writes back. The CRD YAML in crds/
//! is generated from these types by the `crdgen` binary.

use fulva_coordinator::policy::{PolicyError, RebalancePolicy};
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The kvnode image used when the spec names none.
pub const DEFAULT_IMAGE: &str = "ghcr.io/fulva/kvnode:0.1.0";

/// A Fulva cluster: storage nodes, their data path, and how they rebalance.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "fulva.io",
    version = "v1alpha1",
    kind = "FulvaCluster",
    namespaced,
    status = "FulvaClusterStatus",
    shortname = "fc",
    category = "fulva",
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".spec.nodes"}"#,
    printcolumn = r#"{"name":"Shards","type":"integer","jsonPath":".status.shards"}"#,
    printcolumn = r#"{"name":"Moving","type":"integer","jsonPath":".status.movesInFlight"}"#,
    printcolumn = r#"{"name":"Imbalance","type":"number","jsonPath":".status.imbalance"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct FulvaClusterSpec {
    /// Storage nodes (kvnode pods of the StatefulSet).
    #[schemars(range(min = 1, max = 256))]
    pub nodes: u32,
    /// kvnode container image.
    #[serde(default = "default_image")]
    pub image: String,
    /// Image pull policy (Always, IfNotPresent, Never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// CPU and memory of each kvnode container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Data-path workers per node.
    #[serde(default = "default_workers")]
    #[schemars(range(min = 1, max = 64))]
    pub workers: u32,
    /// Shards the hash space starts with, spread over the nodes.
    #[serde(default = "default_shards")]
    #[schemars(range(min = 1, max = 65536))]
    pub initial_shards: u32,
    /// Which network stack carries client traffic.
    #[serde(default)]
    pub data_path: DataPath,
    /// When and how the cluster rebalances itself.
    #[serde(default)]
    pub rebalance: RebalancePolicy,
    /// Seconds a kvnode may not answer before its ranges are declared lost
    /// and given to the other nodes, empty (a pod that restarted is noticed
    /// within a second, whatever this says).
    #[serde(default = "default_node_gone_after")]
    #[schemars(range(min = 5, max = 86400))]
    pub node_gone_after_seconds: u32,
    /// How kvnode pods are replaced (rolling updates, node maintenance).
    #[serde(default)]
    pub update: UpdateSpec,
    /// Who may reach the kvnodes' ports.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
}

/// The NetworkPolicy the operator gives the kvnodes (`NAME-kvnodes`): the
/// data port from client namespaces, the control port from the operator
/// only, the transfer port from the cluster's kvnodes and the operator (its
/// relay), the metrics and health port from anywhere.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct NetworkPolicySpec {
    /// Apply the policy (turning it off later leaves an applied one in place).
    pub enabled: bool,
    /// Namespaces (by label) whose pods may use the data port, besides the
    /// cluster's own namespace. Unset: the cluster's namespace only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_namespace_selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        NetworkPolicySpec { enabled: true, client_namespace_selector: None }
    }
}

/// How the operator replaces kvnode pods: every pod whose template is out of
/// date, or whose Kubernetes Node is cordoned or carries a maintenance taint,
/// is emptied by live moves first and deleted only when it holds nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct UpdateSpec {
    /// Pods drained and replaced at once.
    #[schemars(range(min = 1, max = 256))]
    pub max_unavailable: u32,
    /// The kvnode pods' terminationGracePeriodSeconds: how long a pod told to
    /// stop while it still holds ranges keeps serving them while the
    /// operator moves them away. Size it for a drain: a node's bytes over the
    /// policy's bandwidth limit (docs/operations.md).
    #[schemars(range(min = 10, max = 86400))]
    pub termination_grace_period_seconds: u32,
    /// Node taints (by key) that mark a Node for maintenance: kvnode pods on
    /// it are drained and moved off. A cordoned Node (spec.unschedulable)
    /// always counts.
    pub maintenance_taints: Vec<String>,
}

/// The taint `kubectl cordon` and `kubectl drain` put on a Node.
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";
/// The taint an administrator sets to have Fulva move off a Node.
pub const MAINTENANCE_TAINT: &str = "fulva.io/maintenance";

impl Default for UpdateSpec {
    fn default() -> Self {
        UpdateSpec {
            max_unavailable: 1,
            termination_grace_period_seconds: 300,
            maintenance_taints: vec![UNSCHEDULABLE_TAINT.to_string(), MAINTENANCE_TAINT.to_string()],
        }
    }
}

fn default_node_gone_after() -> u32 {
    30
}

fn default_image() -> String {
    DEFAULT_IMAGE.to_string()
}

fn default_workers() -> u32 {
    1
}

fn default_shards() -> u32 {
    16
}

/// The data path's network stack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DataPathMode {
    /// Kernel UDP sockets (the default).
    #[default]
    Kernel,
    /// DPDK on an SR-IOV virtual function.
    Dpdk,
}

/// Data-path settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataPath {
    /// kernel or dpdk.
    #[serde(default)]
    pub mode: DataPathMode,
    /// DPDK: the SR-IOV device plugin's resource, e.g. intel.com/sriov_netdevice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sriov_resource_name: Option<String>,
    /// DPDK: the Multus network attachment (k8s.v1.cni.cncf.io/networks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_attachment: Option<String>,
    /// DPDK: hugepages-2Mi to request per pod, e.g. 1Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugepages: Option<String>,
}

/// What the operator reports about a cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FulvaClusterStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Rebalancing, Degraded (and SpecValid).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// kvnode pods ready.
    #[serde(default)]
    pub ready_nodes: u32,
    /// Shards in the map.
    #[serde(default)]
    pub shards: u32,
    /// Shard-map epoch.
    #[serde(default)]
    pub map_epoch: u64,
    /// Moves running now.
    #[serde(default)]
    pub moves_in_flight: u32,
    /// The moves running now, with progress.
    #[serde(default)]
    pub moves: Vec<MoveStatus>,
    /// Imbalance score (max / mean node ops/s; 1 = even).
    #[serde(default)]
    pub imbalance: f64,
    /// When the last rebalance plan ran (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rebalance: Option<String>,
    /// Nodes being drained before the StatefulSet shrinks.
    #[serde(default)]
    pub draining: Vec<u32>,
    /// Where clients fetch the shard map (host:port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_endpoint: Option<String>,
    /// The rolling replacement of kvnode pods (template changes, node
    /// maintenance), while one runs or after it paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateStatus>,
}

/// A rolling replacement of kvnode pods as it stands.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStatus {
    /// The StatefulSet revision pods are brought to.
    pub revision: String,
    /// Draining, WaitingForPod, Paused or Done.
    pub phase: String,
    /// Pods replaced in this update.
    pub pods_done: u32,
    /// Pods this update replaces in all (done + in progress + waiting).
    pub pods_total: u32,
    /// The pods being replaced now.
    #[serde(default)]
    pub in_progress: Vec<PodInProgress>,
    /// Why the update paused (a failed move, no room on the other nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When it paused (RFC 3339); it tries again a minute later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at: Option<String>,
}

/// One pod being replaced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodInProgress {
    /// Pod name.
    pub pod: String,
    /// Its node id (the StatefulSet ordinal).
    pub node: u32,
    /// The uid of the pod being replaced (a new pod of the same name has another).
    pub uid: String,
    /// Why: Outdated (template changed), Maintenance (its Node is cordoned or
    /// tainted) or Terminating (deleted by someone else while holding ranges).
    pub reason: String,
    /// Draining, Deleted (waiting for the new pod) or Paused.
    pub step: String,
}

/// One move in flight.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MoveStatus {
    /// Hash range, FIRST..=LAST.
    pub range: String,
    /// Source node.
    pub from: u32,
    /// Destination node.
    pub to: u32,
    /// Percent of the range's bytes moved.
    pub progress_percent: f64,
    /// Seconds left, estimated.
    pub eta_seconds: f64,
}

/// Why a spec is refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    /// A field is out of range or missing.
    #[error("spec.{field}: {problem}")]
    Invalid {
        /// The field path under spec.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The rebalance policy is invalid.
    #[error("spec.rebalance: {0}")]
    Policy(#[from] PolicyError),
}

fn invalid(field: &'static str, problem: impl Into<String>) -> SpecError {
    SpecError::Invalid { field, problem: problem.into() }
}

impl FulvaClusterSpec {
    /// How the operator's coordinator watches the kvnodes.
    pub fn liveness(&self) -> fulva_coordinator::LivenessOptions {
        fulva_coordinator::LivenessOptions {
            gone_after: std::time::Duration::from_secs(self.node_gone_after_seconds.into()),
            ..fulva_coordinator::LivenessOptions::default()
        }
    }

    /// Checks what the schema cannot; a bad spec changes nothing.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.nodes == 0 || self.nodes > 256 {
            return Err(invalid("nodes", "must be between 1 and 256"));
        }
        if self.image.trim().is_empty() {
            return Err(invalid("image", "must name a container image"));
        }
        if let Some(policy) = &self.image_pull_policy {
            if !["Always", "IfNotPresent", "Never"].contains(&policy.as_str()) {
                return Err(invalid(
                    "imagePullPolicy",
                    format!("{policy:?} is not Always, IfNotPresent or Never"),
                ));
            }
        }
        if !(1..=64).contains(&self.workers) {
            return Err(invalid("workers", "must be between 1 and 64"));
        }
        if !(1..=65536).contains(&self.initial_shards) {
            return Err(invalid("initialShards", "must be between 1 and 65536"));
        }
        if self.data_path.mode == DataPathMode::Dpdk {
            if self.data_path.sriov_resource_name.as_deref().is_none_or(str::is_empty) {
                return Err(invalid("dataPath.sriovResourceName", "is required in dpdk mode"));
            }
            if self.data_path.hugepages.as_deref().is_none_or(str::is_empty) {
                return Err(invalid("dataPath.hugepages", "is required in dpdk mode (e.g. 1Gi)"));
            }
        }
        if !(1..=256).contains(&self.update.max_unavailable) {
            return Err(invalid("update.maxUnavailable", "must be between 1 and 256"));
        }
        if !(10..=86400).contains(&self.update.termination_grace_period_seconds) {
            return Err(invalid("update.terminationGracePeriodSeconds", "must be between 10 and 86400"));
        }
        if !(5..=86400).contains(&self.node_gone_after_seconds) {
            return Err(invalid("nodeGoneAfterSeconds", "must be between 5 and 86400"));
        }
        self.rebalance.validate()?;
        // Node ids are the StatefulSet's ordinals: checked again whenever spec.nodes changes.
        self.rebalance.check_nodes(&(0..self.nodes).collect::<Vec<_>>())?;
        if self.rebalance.excluded_nodes.iter().filter(|&&n| n < self.nodes).count() as u32 >= self.nodes {
            return Err(invalid("rebalance.excludedNodes", "excludes every node"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> FulvaClusterSpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults_fill_a_minimal_spec() {
        let s = spec("nodes: 3");
        assert_eq!((s.image.as_str(), s.initial_shards, s.workers), (DEFAULT_IMAGE, 16, 1));
        assert_eq!(s.data_path.mode, DataPathMode::Kernel);
        assert_eq!(s.rebalance, RebalancePolicy::default());
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn bad_specs_name_their_field() {
        let cases = [
            ("nodes: 0", "spec.nodes"),
            ("nodes: 3\nimage: ''", "spec.image"),
            ("nodes: 3\ndataPath: {mode: dpdk, hugepages: 1Gi}", "sriovResourceName"),
            ("nodes: 3\ndataPath: {mode: dpdk, sriovResourceName: intel.com/sriov}", "hugepages"),
            ("nodes: 2\nrebalance: {excludedNodes: [0, 1]}", "excludedNodes"),
            ("nodes: 2\nrebalance: {maxConcurrentMoves: 0}", "maxConcurrentMoves"),
            ("nodes: 2\nimagePullPolicy: Sometimes", "imagePullPolicy"),
            ("nodes: 2\nrebalance: {pinnedRanges: [{range: '0x0..=0xff', node: 2}]}", "not in the cluster"),
            ("nodes: 3\nupdate: {maxUnavailable: 0}", "update.maxUnavailable"),
            ("nodes: 3\nupdate: {terminationGracePeriodSeconds: 5}", "terminationGracePeriodSeconds"),
            ("nodes: 3\nnodeGoneAfterSeconds: 1", "nodeGoneAfterSeconds"),
        ];
        for (yaml, field) in cases {
            let err = spec(yaml).validate().unwrap_err();
            assert!(err.to_string().contains(field), "{yaml}: {err}");
        }
        // The same pin is fine once the node exists (scaling out re-validates).
        assert_eq!(
            spec("nodes: 3\nrebalance: {pinnedRanges: [{range: '0x0..=0xff', node: 2}]}").validate(),
            Ok(())
        );
    }
}
