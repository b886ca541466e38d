//! The FulvaCluster controller: reconciles each cluster's Services and
//! StatefulSet, drives its runtime (coordinator and rebalancer) through
//! [`Runtimes`], and writes status, conditions and Events.
//!
//! Reconcile, in order:
//! 1. The finalizer `fulva.io/cleanup` is added first; on deletion the
//!    runtime stops (moves in flight roll back) before it is removed.
//! 2. A spec that fails validation changes nothing: Ready=False with reason
//!    InvalidSpec, a Warning Event, and no requeue until the spec changes.
//! 3. The headless Service, the control Service and the StatefulSet are
//!    applied (server-side apply, field manager `fulva-operator`).
//! 4. Scale in: while `spec.nodes` is below the StatefulSet's replicas, the
//!    nodes above it are drained by moves; the StatefulSet shrinks only when
//!    they own nothing. Scale out grows it at once; the rebalancer then moves
//!    ranges onto the new nodes.
//! 5. Status: observedGeneration, conditions (Ready, Rebalancing, Degraded),
//!    shards, epoch, moves in flight with progress and ETA, imbalance.

pub mod certs;
pub mod kube_runtimes;
pub mod rebalance;
pub mod resources;
pub mod runtime;
pub mod update;

use crate::crd::{FulvaCluster, FulvaClusterStatus};
use crate::k8s;
use crate::rebalance_crd::{FulvaRebalance, FulvaRebalanceSpec, RebalanceGoal, CLUSTER_LABEL, ORIGIN_LABEL};
use fulva_coordinator::metrics::OperatorMetrics;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
pub use runtime::{ClusterKey, JobStatus, LossSummary, RuntimeError, RuntimeEvent, RuntimeReport, Runtimes};
use std::sync::Arc;
use std::time::Duration;

/// Finalizer that holds deletion until the runtime has stopped.
pub const FINALIZER: &str = "fulva.io/cleanup";
/// Field manager of every object the operator applies.
pub const FIELD_MANAGER: &str = "fulva-operator";

/// Failures of a reconcile (retried with backoff by the controller).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing the finalizer, or the work it guards, failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The object has no namespace (FulvaCluster and FulvaRebalance are namespaced).
    #[error("{0} has no namespace")]
    NoNamespace(String),
    /// A cluster's certificates could not be made or read.
    #[error("certificates: {0}")]
    Certificates(String),
    /// The cluster's runtime refused (a rebalance could not start).
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
}

/// What every reconcile shares.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Publishes Events.
    pub recorder: Recorder,
    /// The operator's metrics.
    pub metrics: Arc<OperatorMetrics>,
    /// The clusters' running parts.
    pub runtimes: Arc<dyn Runtimes>,
    /// DNS name of the operator's Service, which serves every cluster's
    /// control endpoint (each cluster's `-control` Service aliases it).
    pub operator_service_host: String,
    /// Port of that control endpoint.
    pub control_port: u16,
    /// Namespace of the operator's pods: the second label of
    /// `operator_service_host` (`NAME.NAMESPACE.svc`), "default" without one.
    pub operator_namespace: String,
    /// The one namespace watched (a namespace-scoped install); none: all.
    pub watch_namespace: Option<String>,
    /// The clusters' certificates (none: the operator runs with
    /// `--insecure`, and so do the kvnodes it makes).
    pub tls: Option<Arc<certs::OperatorTls>>,
}

impl Context {
    /// A context publishing Events as `fulva-operator`.
    pub fn new(
        client: Client,
        metrics: Arc<OperatorMetrics>,
        runtimes: Arc<dyn Runtimes>,
        operator_service_host: String,
        control_port: u16,
    ) -> Context {
        let reporter =
            Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            runtimes,
            operator_namespace: operator_service_host.split('.').nth(1).unwrap_or("default").to_string(),
            operator_service_host,
            control_port,
            watch_namespace: None,
            tls: None,
        }
    }

    /// The same context issuing certificates for every cluster.
    pub fn with_tls(mut self, tls: Arc<certs::OperatorTls>) -> Context {
        self.tls = Some(tls);
        self
    }

    /// The same context watching `namespace` only (none: every namespace).
    pub fn watching(mut self, namespace: Option<String>) -> Context {
        self.watch_namespace = namespace;
        self
    }

    /// An API of `K` objects in the watched namespace, or in all of them.
    fn watched<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        match &self.watch_namespace {
            Some(namespace) => Api::namespaced(self.client.clone(), namespace),
            None => Api::all(self.client.clone()),
        }
    }
}

/// Runs the controllers over every FulvaCluster and FulvaRebalance until
/// `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let stop = tokio_util::sync::CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });
    let clusters = ctx.watched::<FulvaCluster>();
    let statefulsets = ctx.watched::<StatefulSet>();
    let rebalances = ctx.watched::<FulvaRebalance>();
    let pods = ctx.watched::<Pod>();
    let follow_nodes = ctx.watch_namespace.is_none();
    let kvnodes = watcher::Config::default().labels("app.kubernetes.io/component=kvnode").any_semantic();
    let controller = Controller::new(clusters, watcher::Config::default().any_semantic())
        .owns(statefulsets, watcher::Config::default().any_semantic())
        // A kvnode pod that starts, stops or is deleted moves a replacement on.
        .watches(pods, kvnodes, |pod: Pod| {
            let cluster = pod.labels().get("app.kubernetes.io/instance").cloned();
            cluster.map(|name| ObjectRef::new(&name).within(&pod.namespace().unwrap_or_default()))
        })
        .graceful_shutdown_on(stop.clone().cancelled_owned());
    // A Node cordoned or (un)tainted: every cluster looks at its pods.
    let controller = if follow_nodes {
        controller.reconcile_all_on(node_maintenance_changes(ctx.client.clone()))
    } else {
        controller
    };
    let cluster_controller =
        controller.run(reconcile, error_policy, ctx.clone()).for_each(|result| async move {
            if let Err(err) = result {
                tracing::warn!(error = %err, "reconcile failed");
            }
        });
    let rebalance_controller = Controller::new(rebalances, watcher::Config::default().any_semantic())
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(rebalance::reconcile, rebalance::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::warn!(error = %err, "rebalance reconcile failed");
            }
        });
    futures::join!(cluster_controller, rebalance_controller);
}

/// Fires when a Node's cordon or taints change (not on its status heartbeats).
fn node_maintenance_changes(client: Client) -> impl futures::Stream<Item = ()> + Send + 'static {
    let nodes = Api::<Node>::all(client);
    let mut seen: std::collections::HashMap<String, (bool, Vec<String>)> = std::collections::HashMap::new();
    watcher(nodes, watcher::Config::default().any_semantic()).applied_objects().filter_map(move |node| {
        let changed = node.ok().is_some_and(|node| {
            let spec = node.spec.clone().unwrap_or_default();
            let mut taints: Vec<String> =
                spec.taints.unwrap_or_default().into_iter().map(|t| t.key).collect();
            taints.sort();
            let now = (spec.unschedulable.unwrap_or(false), taints);
            seen.insert(node.name_any(), now.clone()).is_some_and(|before| before != now)
        });
        futures::future::ready(changed.then_some(()))
    })
}

/// Retries a failed reconcile after a short pause.
pub fn error_policy(_cluster: Arc<FulvaCluster>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "reconcile failed; retrying");
    ctx.metrics.reconciles.with_label_values(&["error"]).inc();
    Action::requeue(Duration::from_secs(5))
}

/// Reconciles one FulvaCluster (see the module documentation).
#[tracing::instrument(skip_all, fields(cluster = %fc.name_any()))]
pub async fn reconcile(fc: Arc<FulvaCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = fc.namespace().ok_or_else(|| Error::NoNamespace(fc.name_any()))?;
    let api: Api<FulvaCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, fc, |event| async {
        match event {
            Finalizer::Apply(fc) => apply(&fc, &ctx, &namespace).await,
            Finalizer::Cleanup(fc) => cleanup(&fc, &ctx, &namespace).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_ok() {
        ctx.metrics.reconciles.with_label_values(&["ok"]).inc();
    }
    result
}

pub(crate) fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
    }
}

/// Keeps a condition's transition time when its status did not change.
pub(crate) fn carry_transitions(previous: &[Condition], next: &mut [Condition]) {
    for c in next.iter_mut() {
        if let Some(old) = previous.iter().find(|o| o.type_ == c.type_ && o.status == c.status) {
            c.last_transition_time = old.last_transition_time.clone();
        }
    }
}

async fn publish(ctx: &Context, fc: &FulvaCluster, warning: bool, reason: &str, note: String, action: &str) {
    let event = Event {
        type_: if warning { EventType::Warning } else { EventType::Normal },
        reason: reason.to_string(),
        note: Some(note),
        action: action.to_string(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, &fc.object_ref(&())).await {
        tracing::warn!(error = %err, reason, "could not publish an event");
    }
}

async fn patch_status(api: &Api<FulvaCluster>, name: &str, status: &FulvaClusterStatus) -> Result<(), Error> {
    let patch = serde_json::json!({
        "apiVersion": "fulva.io/v1alpha1",
        "kind": "FulvaCluster",
        "status": status,
    });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

async fn apply(fc: &FulvaCluster, ctx: &Context, namespace: &str) -> Result<Action, Error> {
    let name = fc.name_any();
    let generation = fc.metadata.generation;
    let clusters: Api<FulvaCluster> = Api::namespaced(ctx.client.clone(), namespace);
    let previous = fc.status.clone().unwrap_or_default();

    if let Err(err) = fc.spec.validate() {
        tracing::warn!(error = %err, "invalid spec; nothing changes");
        publish(ctx, fc, true, "InvalidSpec", err.to_string(), "Validate").await;
        let mut status = FulvaClusterStatus {
            observed_generation: generation,
            conditions: vec![
                condition("Ready", false, "InvalidSpec", err.to_string(), generation),
                condition("Degraded", true, "InvalidSpec", err.to_string(), generation),
            ],
            ..previous.clone()
        };
        carry_transitions(&previous.conditions, &mut status.conditions);
        patch_status(&clusters, &name, &status).await?;
        return Ok(Action::await_change());
    }

    let services: Api<Service> = Api::namespaced(ctx.client.clone(), namespace);
    let nodes_service = resources::nodes_service(fc);
    k8s::apply(&services, &resources::nodes_service_name(fc), FIELD_MANAGER, &nodes_service).await?;
    let control_service = resources::control_service(fc, &ctx.operator_service_host);
    k8s::apply(&services, &resources::control_service_name(fc), FIELD_MANAGER, &control_service).await?;
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), namespace);
    let budget = resources::disruption_budget(fc);
    k8s::apply(&budgets, &resources::disruption_budget_name(fc), FIELD_MANAGER, &budget).await?;
    if fc.spec.network_policy.enabled {
        let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), namespace);
        let policy = resources::network_policy(fc, &ctx.operator_namespace);
        k8s::apply(&policies, &resources::network_policy_name(fc), FIELD_MANAGER, &policy).await?;
    }

    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
    let existing = crate::k8s::get_if_exists(&statefulsets, &resources::statefulset_name(fc)).await?;
    let current =
        existing.as_ref().and_then(|s| s.spec.as_ref()).and_then(|s| s.replicas).unwrap_or(0).max(0) as u32;
    let desired = fc.spec.nodes;
    let draining: Vec<u32> = (desired..current).collect();
    let key = ClusterKey { namespace: namespace.to_string(), name: name.clone() };
    // Certificates first: a new pod mounts its own at start.
    let coordinator_tls = match &ctx.tls {
        Some(tls) => Some(tls.ensure(&ctx.client, fc, &key, current.max(desired)).await?),
        None => None,
    };
    let runtime = ctx.runtimes.sync(&key, fc, current.max(desired), &draining, coordinator_tls).await;
    let (report, runtime_error) = match runtime {
        Ok(report) => (report, None),
        // The reconciler publishes it (Event, condition message) as text.
        Err(err) => (RuntimeReport::default(), Some(err.to_string())),
    };
    let drained = draining.iter().all(|n| report.drained.contains(n));
    let replicas = if drained { desired } else { current };
    if !draining.is_empty() {
        if drained {
            publish(
                ctx,
                fc,
                false,
                "ScaledIn",
                format!("nodes {draining:?} own no range any more; the StatefulSet shrinks to {desired}"),
                "Scale",
            )
            .await;
        } else if previous.draining != draining {
            publish(
                ctx,
                fc,
                false,
                "Draining",
                format!("moving every range off nodes {draining:?}"),
                "Scale",
            )
            .await;
        }
    } else if desired > current && existing.is_some() {
        publish(ctx, fc, false, "ScaledOut", format!("{current} -> {desired} nodes"), "Scale").await;
    }
    let statefulset = resources::statefulset(fc, replicas, ctx.tls.is_some());
    let applied =
        k8s::apply(&statefulsets, &resources::statefulset_name(fc), FIELD_MANAGER, &statefulset).await?;
    let ready_nodes = applied
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .or_else(|| existing.and_then(|s| s.status?.ready_replicas));
    let ready_nodes = ready_nodes.unwrap_or(0).max(0) as u32;

    // Pods to replace (template changed, Node under maintenance, deleted
    // while holding ranges): one step of the rolling replacement.
    let revision = applied.status.as_ref().and_then(|s| s.update_revision.clone());
    let pods = update::list_pods(&ctx.client, namespace, fc).await?;
    // A namespace-scoped operator may not read Nodes: no maintenance then.
    let kube_nodes = match ctx.watch_namespace {
        None => update::list_nodes(&ctx.client, &pods).await?,
        Some(_) => Vec::new(),
    };
    let wanted = update::wanted(&pods, &kube_nodes, revision.as_deref(), replicas, &fc.spec.update);
    let now = k8s_openapi::jiff::Timestamp::now();
    let paused_for = previous
        .update
        .as_ref()
        .and_then(|u| u.paused_at.as_deref())
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .and_then(|t| Duration::try_from(now.duration_since(t)).ok());
    let drains = update::ClusterDrains { runtimes: ctx.runtimes.as_ref(), cluster: &key };
    let now = now.to_string();
    let observed = update::Observed {
        previous: previous.update.as_ref(),
        pods: &pods,
        wanted: &wanted,
        revision: revision.as_deref(),
        spec: &fc.spec.update,
        paused_for,
        now: &now,
    };
    let step = update::step(observed, &drains).await;
    for (pod, uid) in &step.delete {
        update::delete_pod(&ctx.client, namespace, pod, uid).await?;
    }
    for node in &step.released {
        ctx.runtimes.release_node(&key, *node).await;
    }
    for (warning, reason, note) in &step.events {
        publish(ctx, fc, *warning, reason, note.clone(), "Update").await;
    }
    let (updating, updating_reason, updating_message) = update::condition_text(step.status.as_ref());

    for event in &report.events {
        publish(ctx, fc, event.warning, &event.reason, event.note.clone(), "Rebalance").await;
    }
    if let Some(err) = &runtime_error {
        publish(ctx, fc, true, "RuntimeError", err.clone(), "Coordinate").await;
    }

    let all_ready = ready_nodes >= desired;
    let ready = all_ready && report.serving && runtime_error.is_none();
    let (ready_reason, ready_message) = if !all_ready {
        ("NodesNotReady", format!("{ready_nodes} of {desired} nodes ready"))
    } else if let Some(err) = &runtime_error {
        ("RuntimeError", err.clone())
    } else if !report.serving {
        ("Bootstrapping", "the shard map is being set up".to_string())
    } else {
        ("Serving", format!("{desired} nodes serve {} shards", report.shards))
    };
    let moving = !report.moves.is_empty();
    let rebalancing = moving || !drained;
    let rebalancing_message = if !drained {
        format!("draining nodes {draining:?}")
    } else if moving {
        format!("{} moves in flight", report.moves.len())
    } else {
        "no move in flight".to_string()
    };
    let degraded = runtime_error.is_some() || (existing_was_ready(&previous) && !all_ready);
    let data_loss = data_loss_condition(&previous, report.last_loss.as_ref(), generation);
    let mut status = FulvaClusterStatus {
        observed_generation: generation,
        conditions: vec![
            condition("Ready", ready, ready_reason, ready_message, generation),
            condition(
                "Rebalancing",
                rebalancing,
                if rebalancing { "Moving" } else { "Idle" },
                rebalancing_message,
                generation,
            ),
            condition(
                "Degraded",
                degraded,
                if degraded { "Unavailable" } else { "AsExpected" },
                runtime_error.clone().unwrap_or_else(|| format!("{ready_nodes} of {desired} nodes ready")),
                generation,
            ),
            data_loss,
            condition("Updating", updating, &updating_reason, updating_message, generation),
        ],
        ready_nodes,
        shards: report.shards,
        map_epoch: report.map_epoch,
        moves_in_flight: report.moves.len() as u32,
        moves: report.moves.clone(),
        imbalance: report.imbalance,
        last_rebalance: report
            .last_rebalance
            .and_then(|t| k8s_openapi::jiff::Timestamp::try_from(t).ok())
            .map(|t| t.to_string())
            .or(previous.last_rebalance.clone()),
        draining: draining.iter().copied().filter(|n| !report.drained.contains(n)).collect(),
        control_endpoint: Some(format!(
            "{}.{namespace}.svc:{}",
            resources::control_service_name(fc),
            ctx.control_port
        )),
        update: step.status.clone(),
    };
    carry_transitions(&previous.conditions, &mut status.conditions);
    patch_status(&clusters, &name, &status).await?;
    if report.proposal_pending {
        ensure_proposal(ctx, fc, namespace, report.map_epoch).await?;
    }
    Ok(if rebalancing || !ready || updating {
        Action::requeue(Duration::from_secs(5))
    } else {
        Action::requeue(Duration::from_secs(30))
    })
}

/// The DataLoss condition: True from the first time ranges were declared
/// lost (a kvnode restarted empty or stayed gone), naming the latest loss and
/// when it happened; kept across operator restarts from the previous status.
fn data_loss_condition(
    previous: &FulvaClusterStatus,
    loss: Option<&LossSummary>,
    generation: Option<i64>,
) -> Condition {
    if let Some(loss) = loss {
        let at = k8s_openapi::jiff::Timestamp::try_from(loss.at).map(|t| t.to_string()).unwrap_or_default();
        return condition("DataLoss", true, "RangesLost", format!("{} at {at}", loss.text), generation);
    }
    match previous.conditions.iter().find(|c| c.type_ == "DataLoss" && c.status == "True") {
        Some(kept) => Condition { observed_generation: generation, ..kept.clone() },
        None => condition("DataLoss", false, "NoneLost", "no range was ever declared lost", generation),
    }
}

/// In proposal mode: makes sure an open FulvaRebalance carries the
/// rebalancer's plan (one at a time; a user approves, stops or deletes it).
async fn ensure_proposal(ctx: &Context, fc: &FulvaCluster, namespace: &str, epoch: u64) -> Result<(), Error> {
    let api: Api<FulvaRebalance> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = format!("{CLUSTER_LABEL}={},{ORIGIN_LABEL}=policy", fc.name_any());
    let existing = api.list(&ListParams::default().labels(&selector)).await?;
    if existing.items.iter().any(|r| !r.status.as_ref().is_some_and(|s| s.phase.is_final())) {
        return Ok(());
    }
    let name = format!("{}-proposal-{epoch}", fc.name_any());
    let mut rebalance = FulvaRebalance::new(
        &name,
        FulvaRebalanceSpec {
            cluster: fc.name_any(),
            goal: RebalanceGoal::Full,
            nodes: Vec::new(),
            moves: Vec::new(),
            auto_approve: false,
            bandwidth_limit_mb_per_sec: None,
            adaptive: None,
            max_concurrent_moves: None,
        },
    );
    rebalance.metadata.namespace = Some(namespace.to_string());
    rebalance.metadata.labels = Some(
        [(CLUSTER_LABEL.to_string(), fc.name_any()), (ORIGIN_LABEL.to_string(), "policy".to_string())].into(),
    );
    rebalance.metadata.owner_references = fc.controller_owner_ref(&()).map(|r| vec![r]);
    match api.create(&PostParams::default(), &rebalance).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    publish(
        ctx,
        fc,
        false,
        "ProposalCreated",
        format!("the cluster is imbalanced; see FulvaRebalance {name} and approve it to run the moves"),
        "Rebalance",
    )
    .await;
    Ok(())
}

fn existing_was_ready(previous: &FulvaClusterStatus) -> bool {
    previous.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
}

async fn cleanup(fc: &FulvaCluster, ctx: &Context, namespace: &str) -> Result<Action, Error> {
    let key = ClusterKey { namespace: namespace.to_string(), name: fc.name_any() };
    ctx.runtimes.stop(&key).await;
    if let Some(tls) = &ctx.tls {
        tls.forget(&key);
    }
    publish(
        ctx,
        fc,
        false,
        "Deleted",
        "runtime stopped; owned objects are garbage-collected".into(),
        "Delete",
    )
    .await;
    Ok(Action::await_change())
}

#[cfg(test)]
mod certs_tests;
#[cfg(test)]
mod rebalance_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod update_tests;
