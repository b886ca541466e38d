//! Replacing kvnode pods without losing an object: rolling updates (the pod
//! template changed; the StatefulSet uses `OnDelete`, so only the operator
//! deletes pods), node maintenance (the pod's Node is cordoned or carries a
//! maintenance taint) and pods someone else deleted while they held ranges.
//!
//! One step per reconcile, from the pods, their Nodes, the previous status
//! and where each node's drain stands:
//! 1. A pod in progress whose drain is done is deleted (with its uid as a
//!    precondition); one whose drain failed or was refused pauses the
//!    update with the reason, and is tried again a minute later. Nothing
//!    deletes a pod that still holds ranges.
//! 2. A pod in progress is done when a pod of its name with another uid runs
//!    (and, for an update, has the new revision): its node may receive
//!    ranges again and the rebalancer moves load back.
//! 3. While fewer than `maxUnavailable` pods are in progress and nothing is
//!    paused, the next pod starts draining: terminating pods first (they
//!    are going anyway, and count against no limit), then pods on Nodes
//!    under maintenance, then outdated pods, highest ordinal first.
//!
//! The state lives in the FulvaCluster's status (`status.update`), so an
//! operator that restarts resumes where the previous one was: a drain it
//! did not start is started again (a drained node drains at once).

use crate::crd::{PodInProgress, UpdateSpec, UpdateStatus, UNSCHEDULABLE_TAINT};

/// A kvnode pod as the update sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PodView {
    /// Pod name.
    pub name: String,
    /// StatefulSet ordinal (= node id).
    pub ordinal: u32,
    /// Pod uid.
    pub uid: String,
    /// `controller-revision-hash` label.
    pub revision: Option<String>,
    /// The Kubernetes Node it runs on.
    pub node_name: Option<String>,
    /// Running with an address and not terminating.
    pub running: bool,
    /// Has a deletion timestamp.
    pub terminating: bool,
}

/// A Kubernetes Node as the update sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// Cordoned.
    pub unschedulable: bool,
    /// Keys of its taints.
    pub taints: Vec<String>,
}

/// Where the drain of a node stands, as the runtime reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum DrainState {
    /// Moves run: so many of so many ranges moved.
    Running {
        /// Ranges moved off.
        moved: usize,
        /// Ranges to move.
        total: usize,
    },
    /// The node owns nothing.
    Done,
    /// A move failed and was rolled back; the node still holds ranges.
    Failed(String),
    /// The drain was refused before anything moved (no room, no receiver).
    Refused(String),
}

/// Why a pod is replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// Deleted by someone else while it may hold ranges.
    Terminating,
    /// Its Node is cordoned or tainted for maintenance.
    Maintenance,
    /// Its template revision is not the StatefulSet's update revision.
    Outdated,
}

impl Reason {
    /// As written in the status.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Terminating => "Terminating",
            Reason::Maintenance => "Maintenance",
            Reason::Outdated => "Outdated",
        }
    }
}

/// Pods to replace, with why, most urgent first.
pub fn wanted(
    pods: &[PodView],
    nodes: &[NodeView],
    update_revision: Option<&str>,
    replicas: u32,
    spec: &UpdateSpec,
) -> Vec<(PodView, Reason)> {
    let under_maintenance = |pod: &PodView| {
        let Some(node) = pod.node_name.as_ref().and_then(|n| nodes.iter().find(|k| &k.name == n)) else {
            return false;
        };
        node.unschedulable
            || node.taints.iter().any(|t| spec.maintenance_taints.contains(t) || t == UNSCHEDULABLE_TAINT)
    };
    let mut out: Vec<(PodView, Reason)> = pods
        .iter()
        .filter(|p| p.ordinal < replicas)
        .filter_map(|p| {
            let reason = if p.terminating {
                Reason::Terminating
            } else if under_maintenance(p) {
                Reason::Maintenance
            } else if update_revision.is_some_and(|r| p.revision.as_deref() != Some(r)) {
                Reason::Outdated
            } else {
                return None;
            };
            Some((p.clone(), reason))
        })
        .collect();
    out.sort_by_key(|(p, reason)| (*reason, std::cmp::Reverse(p.ordinal)));
    out
}

/// What one step decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Step {
    /// The status to write (`None`: no update runs or ran).
    pub status: Option<UpdateStatus>,
    /// Pods to delete now: (name, uid).
    pub delete: Vec<(String, String)>,
    /// Nodes whose pods were replaced: they may receive ranges again.
    pub released: Vec<u32>,
    /// Events: (warning, reason, note).
    pub events: Vec<(bool, &'static str, String)>,
}

/// The runtime's side of a step: starts or follows the drain of a node.
#[tonic::async_trait]
pub trait Drains: Send + Sync {
    /// Where the drain of `node` stands; starts it when none runs (again,
    /// after a failure, when `retry` is set).
    async fn drain(&self, node: u32, retry: bool) -> DrainState;
}

/// Pauses last this long before the update tries again.
pub const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// What one step of the update starts from.
pub struct Observed<'a> {
    /// The update as the status last recorded it.
    pub previous: Option<&'a UpdateStatus>,
    /// The kvnode pods.
    pub pods: &'a [PodView],
    /// Pods to replace, most urgent first ([`wanted`]).
    pub wanted: &'a [(PodView, Reason)],
    /// The StatefulSet's update revision.
    pub revision: Option<&'a str>,
    /// The spec's update settings.
    pub spec: &'a UpdateSpec,
    /// How long ago the update paused, if it did.
    pub paused_for: Option<std::time::Duration>,
    /// Now (RFC 3339), recorded when the update pauses.
    pub now: &'a str,
}

/// One step of the update (see the module documentation).
pub async fn step(observed: Observed<'_>, drains: &dyn Drains) -> Step {
    let Observed { previous, pods, wanted, revision, spec, paused_for, now } = observed;
    let mut out = Step::default();
    let mut status = previous.cloned().unwrap_or_default();
    let target = revision.unwrap_or_default().to_string();
    if status.revision != target && !target.is_empty() {
        // A new revision: counts start again, pods in progress stay.
        if status.in_progress.is_empty() && !wanted.is_empty() {
            status.pods_done = 0;
        }
        status.revision = target.clone();
    }
    let retry = paused_for.is_some_and(|p| p >= RETRY_AFTER);
    let mut paused = None;
    let mut kept = Vec::new();
    for mut p in std::mem::take(&mut status.in_progress) {
        let current = pods.iter().find(|q| q.name == p.pod);
        match current {
            Some(q) if q.uid == p.uid => {
                if p.step == "Deleted" {
                    kept.push(p);
                    continue;
                }
                match drains.drain(p.node, retry).await {
                    DrainState::Done => {
                        if !q.terminating {
                            out.delete.push((p.pod.clone(), p.uid.clone()));
                            out.events.push((
                                false,
                                "PodDrained",
                                format!("{} (node {}) holds nothing: deleting it", p.pod, p.node),
                            ));
                        }
                        p.step = "Deleted".to_string();
                    }
                    DrainState::Running { moved, total } => {
                        p.step = "Draining".to_string();
                        if total > 0 && moved < total {
                            tracing::debug!(pod = %p.pod, moved, total, "draining");
                        }
                    }
                    DrainState::Failed(why) | DrainState::Refused(why) => {
                        if p.step != "Paused" {
                            out.events.push((
                                true,
                                "UpdatePaused",
                                format!("{} (node {}) keeps its data: {why}", p.pod, p.node),
                            ));
                        }
                        p.step = "Paused".to_string();
                        paused.get_or_insert(why);
                    }
                }
                kept.push(p);
            }
            // A new pod of that name: done once it runs (with the new revision
            // when the old one was outdated).
            Some(q)
                if q.running
                    && (p.reason != "Outdated"
                        || revision.is_none()
                        || q.revision.as_deref() == revision) =>
            {
                status.pods_done += 1;
                out.released.push(p.node);
                out.events.push((
                    false,
                    "PodReplaced",
                    format!("{} (node {}) replaced ({})", p.pod, p.node, p.reason),
                ));
            }
            _ => {
                p.step = "Deleted".to_string();
                kept.push(p);
            }
        }
    }
    status.in_progress = kept;
    if paused.is_none() && status.in_progress.iter().all(|p| p.step != "Paused") {
        for (pod, reason) in wanted {
            if status.in_progress.iter().any(|p| p.pod == pod.name) {
                continue;
            }
            let counted = status.in_progress.iter().filter(|p| p.reason != "Terminating").count() as u32;
            if *reason != Reason::Terminating && counted >= spec.max_unavailable {
                break;
            }
            let state = drains.drain(pod.ordinal, true).await;
            if let DrainState::Refused(why) = state {
                out.events.push((
                    true,
                    "UpdatePaused",
                    format!("cannot drain {} (node {}): {why}", pod.name, pod.ordinal),
                ));
                paused = Some(why);
                break;
            }
            out.events.push((
                false,
                "PodDraining",
                format!("moving every range off {} (node {}): {}", pod.name, pod.ordinal, reason.name()),
            ));
            status.in_progress.push(PodInProgress {
                pod: pod.name.clone(),
                node: pod.ordinal,
                uid: pod.uid.clone(),
                reason: reason.name().to_string(),
                step: "Draining".to_string(),
            });
        }
    }
    let waiting = wanted.iter().filter(|(p, _)| !status.in_progress.iter().any(|q| q.pod == p.name)).count();
    status.pods_total = status.pods_done + (status.in_progress.len() + waiting) as u32;
    if status.pods_total == 0 && previous.is_none() {
        return out;
    }
    let (phase, message, paused_at) = match &paused {
        Some(why) => (
            "Paused",
            Some(why.clone()),
            Some(
                previous
                    .and_then(|s| s.paused_at.clone())
                    .filter(|_| !retry)
                    .unwrap_or_else(|| now.to_string()),
            ),
        ),
        None if status.in_progress.is_empty() && waiting == 0 => ("Done", None, None),
        None if status.in_progress.iter().all(|p| p.step == "Deleted") => ("WaitingForPod", None, None),
        None => ("Draining", None, None),
    };
    if phase == "Done" && previous.is_some_and(|s| s.phase != "Done") {
        out.events.push((false, "UpdateFinished", format!("{} pods replaced", status.pods_done)));
    }
    status.phase = phase.to_string();
    status.message = message;
    status.paused_at = paused_at;
    out.status = Some(status);
    out
}

/// The runtime's drains of one cluster, as the update step asks for them.
pub struct ClusterDrains<'a> {
    /// The runtimes.
    pub runtimes: &'a dyn super::Runtimes,
    /// The cluster.
    pub cluster: &'a super::ClusterKey,
}

#[tonic::async_trait]
impl Drains for ClusterDrains<'_> {
    async fn drain(&self, node: u32, retry: bool) -> DrainState {
        self.runtimes.drain_node(self.cluster, node, retry).await
    }
}

/// The cluster's kvnode pods (by their labels).
pub async fn list_pods(
    client: &kube::Client,
    namespace: &str,
    fc: &crate::crd::FulvaCluster,
) -> Result<Vec<PodView>, kube::Error> {
    use k8s_openapi::api::core::v1::Pod;
    use kube::ResourceExt;
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), namespace);
    let selector = format!("app.kubernetes.io/instance={},app.kubernetes.io/component=kvnode", fc.name_any());
    let pods = api.list(&kube::api::ListParams::default().labels(&selector)).await?;
    let prefix = format!("{}-", super::resources::statefulset_name(fc));
    let mut out = Vec::new();
    for pod in pods {
        let name = pod.name_any();
        let Some(ordinal) = name.strip_prefix(&prefix).and_then(|o| o.parse::<u32>().ok()) else { continue };
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let status = pod.status.clone().unwrap_or_default();
        let running = status.phase.as_deref() == Some("Running") && status.pod_ip.is_some() && !terminating;
        out.push(PodView {
            ordinal,
            uid: pod.uid().unwrap_or_default(),
            revision: pod.labels().get("controller-revision-hash").cloned(),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            running,
            terminating,
            name,
        });
    }
    out.sort_by_key(|p| p.ordinal);
    Ok(out)
}

/// The Kubernetes Nodes the pods run on (none asked for when no pod is scheduled).
pub async fn list_nodes(client: &kube::Client, pods: &[PodView]) -> Result<Vec<NodeView>, kube::Error> {
    use k8s_openapi::api::core::v1::Node;
    use kube::ResourceExt;
    if pods.iter().all(|p| p.node_name.is_none()) {
        return Ok(Vec::new());
    }
    let api: kube::Api<Node> = kube::Api::all(client.clone());
    let nodes = api.list(&kube::api::ListParams::default()).await?;
    Ok(nodes
        .into_iter()
        .filter(|n| pods.iter().any(|p| p.node_name.as_deref() == Some(n.name_any().as_str())))
        .map(|n| {
            let spec = n.spec.clone().unwrap_or_default();
            NodeView {
                name: n.name_any(),
                unschedulable: spec.unschedulable.unwrap_or(false),
                taints: spec.taints.unwrap_or_default().into_iter().map(|t| t.key).collect(),
            }
        })
        .collect())
}

/// Deletes pod `name` if it is still the one with `uid` (a replacement of
/// the same name is never deleted by mistake).
pub async fn delete_pod(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    uid: &str,
) -> Result<(), kube::Error> {
    use k8s_openapi::api::core::v1::Pod;
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), namespace);
    let params = kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions { uid: Some(uid.to_string()), resource_version: None }),
        ..kube::api::DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
        Err(err) => Err(err),
    }
}

/// The Updating condition: True while pods are being replaced (or the
/// replacement paused), with the pod in progress, the count and the revision.
pub fn condition_text(update: Option<&UpdateStatus>) -> (bool, String, String) {
    match update {
        Some(u) if u.phase != "Done" => {
            let pods: Vec<String> =
                u.in_progress.iter().map(|p| format!("{} ({}, {})", p.pod, p.reason, p.step)).collect();
            let mut text = format!(
                "{} of {} pods replaced, revision {}; in progress: {}",
                u.pods_done,
                u.pods_total,
                if u.revision.is_empty() { "-" } else { &u.revision },
                if pods.is_empty() { "none".to_string() } else { pods.join(", ") }
            );
            if let Some(why) = &u.message {
                text.push_str(&format!("; paused: {why}"));
            }
            (true, u.phase.clone(), text)
        }
        Some(u) => {
            (false, "UpToDate".into(), format!("{} pods replaced at revision {}", u.pods_done, u.revision))
        }
        None => (false, "UpToDate".into(), "every pod runs the current template".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use std::collections::HashMap;

    #[derive(Default)]
    struct FakeDrains {
        states: Mutex<HashMap<u32, DrainState>>,
        asked: Mutex<Vec<(u32, bool)>>,
    }

    #[tonic::async_trait]
    impl Drains for FakeDrains {
        async fn drain(&self, node: u32, retry: bool) -> DrainState {
            self.asked.lock().push((node, retry));
            self.states.lock().get(&node).cloned().unwrap_or(DrainState::Running { moved: 0, total: 2 })
        }
    }

    fn pod(ordinal: u32, uid: &str, revision: &str) -> PodView {
        PodView {
            name: format!("demo-{ordinal}"),
            ordinal,
            uid: uid.to_string(),
            revision: Some(revision.to_string()),
            node_name: Some(format!("k{ordinal}")),
            running: true,
            terminating: false,
        }
    }

    fn node(name: &str) -> NodeView {
        NodeView { name: name.to_string(), unschedulable: false, taints: Vec::new() }
    }

    #[test]
    fn pods_to_replace_come_most_urgent_first_highest_ordinal_first() {
        let spec = UpdateSpec::default();
        let mut pods = vec![pod(0, "a", "old"), pod(1, "b", "old"), pod(2, "c", "new"), pod(3, "d", "new")];
        pods[2].node_name = Some("cordoned".into());
        let mut deleted = pod(3, "d", "new");
        deleted.terminating = true;
        pods[3] = deleted;
        let nodes = vec![
            node("k0"),
            node("k1"),
            NodeView { name: "cordoned".into(), unschedulable: true, taints: vec![] },
        ];
        let order: Vec<(u32, Reason)> =
            wanted(&pods, &nodes, Some("new"), 4, &spec).into_iter().map(|(p, r)| (p.ordinal, r)).collect();
        assert_eq!(
            order,
            vec![
                (3, Reason::Terminating),
                (2, Reason::Maintenance),
                (1, Reason::Outdated),
                (0, Reason::Outdated)
            ]
        );
        // A maintenance taint counts like a cordon; an unknown taint does not.
        let tainted = vec![NodeView {
            name: "k0".into(),
            unschedulable: false,
            taints: vec!["fulva.io/maintenance".into()],
        }];
        let other = vec![NodeView { name: "k0".into(), unschedulable: false, taints: vec!["gpu".into()] }];
        let current = [pod(0, "a", "new")];
        assert_eq!(wanted(&current, &tainted, Some("new"), 1, &spec).len(), 1);
        assert!(wanted(&current, &other, Some("new"), 1, &spec).is_empty());
        // Pods above the StatefulSet's size are scale-in's business.
        assert!(wanted(&[pod(5, "z", "old")], &[], Some("new"), 3, &spec).is_empty());
    }

    async fn run(
        previous: Option<&UpdateStatus>,
        pods: &[PodView],
        drains: &FakeDrains,
        paused_for: Option<u64>,
    ) -> Step {
        let spec = UpdateSpec::default();
        let wanted = wanted(pods, &[], Some("new"), 3, &spec);
        let observed = Observed {
            previous,
            pods,
            wanted: &wanted,
            revision: Some("new"),
            spec: &spec,
            paused_for: paused_for.map(std::time::Duration::from_secs),
            now: "T",
        };
        step(observed, drains).await
    }

    #[tokio::test]
    async fn a_template_change_drains_deletes_waits_then_moves_to_the_next_pod() {
        let drains = FakeDrains::default();
        let pods = vec![pod(0, "a", "old"), pod(1, "b", "old"), pod(2, "c", "old")];
        // Start: one pod at a time, the highest ordinal first.
        let s1 = run(None, &pods, &drains, None).await;
        let st = s1.status.clone().unwrap();
        assert_eq!((st.phase.as_str(), st.pods_done, st.pods_total), ("Draining", 0, 3));
        assert_eq!(st.in_progress.len(), 1);
        assert_eq!((st.in_progress[0].pod.as_str(), st.in_progress[0].uid.as_str()), ("demo-2", "c"));
        assert!(s1.delete.is_empty(), "nothing is deleted while it holds ranges");
        assert_eq!(s1.events[0].1, "PodDraining");

        // Still draining: nothing else starts, nothing is deleted.
        let s2 = run(Some(&st), &pods, &drains, None).await;
        assert!(s2.delete.is_empty());
        assert_eq!(s2.status.clone().unwrap().in_progress.len(), 1);

        // Drained: deleted by uid.
        drains.states.lock().insert(2, DrainState::Done);
        let s3 = run(Some(&s2.status.unwrap()), &pods, &drains, None).await;
        assert_eq!(s3.delete, vec![("demo-2".to_string(), "c".to_string())]);
        let st3 = s3.status.unwrap();
        assert_eq!(st3.phase, "WaitingForPod");

        // Gone, then back with a new uid but not running yet: still waiting.
        let mut without = pods[..2].to_vec();
        let s4 = run(Some(&st3), &without, &drains, None).await;
        assert_eq!(s4.status.clone().unwrap().phase, "WaitingForPod");
        let mut fresh = pod(2, "c2", "new");
        fresh.running = false;
        without.push(fresh.clone());
        let s5 = run(Some(&s4.status.unwrap()), &without, &drains, None).await;
        assert_eq!(s5.status.clone().unwrap().phase, "WaitingForPod");

        // Running with the new revision: done; the next pod starts.
        fresh.running = true;
        without[2] = fresh;
        let s6 = run(Some(&s5.status.unwrap()), &without, &drains, None).await;
        let st6 = s6.status.unwrap();
        assert_eq!(s6.released, vec![2], "the new node may receive ranges again");
        assert_eq!((st6.pods_done, st6.pods_total), (1, 3));
        assert_eq!(st6.in_progress[0].pod, "demo-1");
        assert!(s6.events.iter().any(|e| e.1 == "PodReplaced"));
    }

    #[tokio::test]
    async fn a_failed_drain_pauses_the_update_and_deletes_nothing_until_a_retry_succeeds() {
        let drains = FakeDrains::default();
        let pods = vec![pod(0, "a", "old"), pod(1, "b", "new"), pod(2, "c", "new")];
        let s1 = run(None, &pods, &drains, None).await;
        drains.states.lock().insert(0, DrainState::Failed("moving 0x0..=0xff off node 0 failed".into()));
        let s2 = run(Some(&s1.status.unwrap()), &pods, &drains, None).await;
        let st2 = s2.status.unwrap();
        assert_eq!(st2.phase, "Paused");
        assert!(st2.message.as_deref().unwrap().contains("failed"), "{st2:?}");
        assert_eq!(st2.paused_at.as_deref(), Some("T"));
        assert!(s2.delete.is_empty());
        assert!(s2.events.iter().any(|e| e.0 && e.1 == "UpdatePaused"));
        // Before the pause is over, the drain is not retried.
        let s3 = run(Some(&st2), &pods, &drains, Some(10)).await;
        assert!(s3.delete.is_empty());
        assert_eq!(drains.asked.lock().last(), Some(&(0, false)));
        assert!(s3.events.is_empty(), "the pause is reported once");
        // After it, it is; this time it works.
        drains.states.lock().insert(0, DrainState::Done);
        let s4 = run(Some(&s3.status.unwrap()), &pods, &drains, Some(61)).await;
        assert_eq!(drains.asked.lock().last(), Some(&(0, true)));
        assert_eq!(s4.delete, vec![("demo-0".to_string(), "a".to_string())]);
    }

    #[tokio::test]
    async fn a_refused_drain_pauses_before_anything_moves() {
        let drains = FakeDrains::default();
        drains
            .states
            .lock()
            .insert(2, DrainState::Refused("the other nodes cannot hold node 2's 9 bytes".into()));
        let pods = vec![pod(0, "a", "old"), pod(1, "b", "old"), pod(2, "c", "old")];
        let s = run(None, &pods, &drains, None).await;
        let st = s.status.unwrap();
        assert_eq!(st.phase, "Paused");
        assert!(st.in_progress.is_empty());
        assert!(st.message.unwrap().contains("cannot hold"));
        assert!(s.delete.is_empty());
    }

    #[tokio::test]
    async fn an_operator_restart_resumes_from_the_status() {
        // The previous operator had pod 2 draining; this one has no drain running.
        let previous = UpdateStatus {
            revision: "new".into(),
            phase: "Draining".into(),
            pods_done: 0,
            pods_total: 3,
            in_progress: vec![PodInProgress {
                pod: "demo-2".into(),
                node: 2,
                uid: "c".into(),
                reason: "Outdated".into(),
                step: "Draining".into(),
            }],
            ..UpdateStatus::default()
        };
        let drains = FakeDrains::default();
        drains.states.lock().insert(2, DrainState::Done);
        let pods = vec![pod(0, "a", "old"), pod(1, "b", "old"), pod(2, "c", "old")];
        let s = run(Some(&previous), &pods, &drains, None).await;
        assert_eq!(drains.asked.lock()[0].0, 2, "the drain of the pod in progress is asked for first");
        assert_eq!(s.delete, vec![("demo-2".to_string(), "c".to_string())]);
    }

    #[tokio::test]
    async fn nothing_to_replace_writes_no_update_status() {
        let drains = FakeDrains::default();
        let pods = vec![pod(0, "a", "new")];
        assert_eq!(run(None, &pods, &drains, None).await, Step::default());
        assert!(drains.asked.lock().is_empty());
    }
}
