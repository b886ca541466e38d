//! The runtimes of clusters on Kubernetes: per FulvaCluster a coordinator
//! (shard map in a ConfigMap), its rebalancer, and an entry in the
//! operator's control endpoint. Nodes are the ready kvnode pods, addressed
//! by pod IP; a node's id is its StatefulSet ordinal.

use super::resources::{self, DATA_PORT, NODE_CONTROL_PORT};
use super::runtime::{
    ClusterKey, JobStatus, LossSummary, RuntimeError, RuntimeEvent, RuntimeReport, Runtimes,
};
use super::update::DrainState;
use crate::crd::{FulvaCluster, MoveStatus};
use crate::k8s_store::ConfigMapMapStore;
use crate::rebalance_crd::{FulvaRebalanceSpec, Proposal};
use fulva_coordinator::coordinator::Coordinator;
use fulva_coordinator::drain::DrainOptions;
use fulva_coordinator::liveness::watch_nodes;
use fulva_coordinator::metrics::OperatorMetrics;
use fulva_coordinator::probe::ProbeLatency;
use fulva_coordinator::rebalance_job::{
    self, rate_control, JobPhase, LatencySignal, RateControl, RebalanceJob,
};
use fulva_coordinator::rebalancer::Rebalancer;
use fulva_coordinator::service::ClusterDirectory;
use fulva_proto::grpc::MigrationStatusRequest;
use fulva_proto::NodeInfo;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::ListParams;
use kube::{Api, Client, Resource, ResourceExt};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct ClusterRuntime {
    coordinator: Arc<Coordinator>,
    rebalancer: Arc<Rebalancer>,
    policy: fulva_coordinator::policy::RebalancePolicy,
    /// One-shot rebalances (FulvaRebalance) by name.
    jobs: HashMap<String, RebalanceJob>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    /// Move records already turned into Events: (range, started, ended?).
    reported: HashSet<(String, Instant, bool)>,
    /// The node watch (restarted or gone nodes: their ranges declared lost).
    watch: JoinHandle<()>,
    /// The last loss already turned into an Event.
    reported_loss: u64,
    /// Drains of nodes whose pods are being replaced.
    drains: HashMap<u32, NodeDrain>,
}

/// A drain running (or ended) in a cluster's runtime.
struct NodeDrain {
    state: Arc<parking_lot::Mutex<DrainState>>,
    task: JoinHandle<()>,
}

/// Coordinators and rebalancers of every cluster this operator drives.
pub struct KubeRuntimes {
    client: Client,
    metrics: Arc<OperatorMetrics>,
    directory: Arc<ClusterDirectory>,
    /// The operator's own control endpoint (the adaptive rate's probe reads through it).
    control_endpoint: String,
    clusters: Mutex<HashMap<ClusterKey, ClusterRuntime>>,
}

impl KubeRuntimes {
    /// Runtimes whose shard maps `directory` serves to clients on the
    /// operator's control endpoint at `control_endpoint`.
    pub fn new(
        client: Client,
        metrics: Arc<OperatorMetrics>,
        directory: Arc<ClusterDirectory>,
        control_endpoint: String,
    ) -> KubeRuntimes {
        KubeRuntimes { client, metrics, directory, control_endpoint, clusters: Mutex::new(HashMap::new()) }
    }

    /// Running kvnode pods as nodes (id = ordinal, addressed by pod IP).
    async fn ready_nodes(
        &self,
        cluster: &ClusterKey,
        fc: &FulvaCluster,
    ) -> Result<Vec<NodeInfo>, RuntimeError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &cluster.namespace);
        let selector = format!("app.kubernetes.io/instance={},app.kubernetes.io/name=fulva", fc.name_any());
        let list =
            pods.list(&ListParams::default().labels(&selector)).await.map_err(RuntimeError::ListPods)?;
        let prefix = format!("{}-", resources::statefulset_name(fc));
        let mut nodes = Vec::new();
        for pod in list.items {
            let Some(ordinal) = pod.name_any().strip_prefix(&prefix).and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            // Running with an address is enough: a kvnode reports ready only
            // once it serves a range, which the operator gives it.
            let terminating = pod.metadata.deletion_timestamp.is_some();
            let status = pod.status.unwrap_or_default();
            let running = status.phase.as_deref() == Some("Running");
            let Some(ip) = status.pod_ip.and_then(|ip| ip.parse::<IpAddr>().ok()) else { continue };
            if running && !terminating {
                nodes.push(NodeInfo {
                    id: ordinal,
                    data_addr: SocketAddr::new(ip, DATA_PORT as u16),
                    control_addr: SocketAddr::new(ip, NODE_CONTROL_PORT as u16),
                });
            }
        }
        nodes.sort_by_key(|n| n.id);
        Ok(nodes)
    }

    async fn start(
        &self,
        cluster: &ClusterKey,
        fc: &FulvaCluster,
        nodes: Vec<NodeInfo>,
        tls: Option<fulva_tls::Tls>,
    ) -> Result<ClusterRuntime, RuntimeError> {
        let configmaps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &cluster.namespace);
        let store = Arc::new(ConfigMapMapStore::new(
            configmaps,
            resources::shard_map_name(fc),
            fc.controller_owner_ref(&()),
        ));
        let coordinator = match Coordinator::open_with_tls(store.clone(), tls.clone()).await? {
            Some(coordinator) => {
                // A restarted operator: pods may have new addresses; finish or
                // undo what the previous one left half-done.
                coordinator.upsert_nodes(nodes).await?;
                let report = coordinator.recover().await.map_err(RuntimeError::Recovery)?;
                if !report.is_clean() {
                    tracing::info!(%cluster, ?report, "recovered moves left by a previous operator");
                }
                coordinator
            }
            None => Coordinator::bootstrap_with_tls(store, nodes, fc.spec.initial_shards, false, tls)
                .await
                .map_err(RuntimeError::Bootstrap)?,
        };
        let coordinator = Arc::new(coordinator);
        let rebalancer =
            Rebalancer::new(coordinator.clone(), fc.spec.rebalance.clone(), self.metrics.clone());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(rebalancer.clone().run(shutdown.clone()));
        let watch = tokio::spawn(watch_nodes(
            coordinator.clone(),
            fc.spec.liveness(),
            Some(self.metrics.clone()),
            shutdown.clone(),
        ));
        self.directory.insert(cluster.to_string(), coordinator.clone());
        tracing::info!(%cluster, epoch = coordinator.map().epoch, "cluster runtime started");
        Ok(ClusterRuntime {
            coordinator,
            rebalancer,
            policy: fc.spec.rebalance.clone(),
            jobs: HashMap::new(),
            shutdown,
            task,
            reported: HashSet::new(),
            watch,
            reported_loss: 0,
            drains: HashMap::new(),
        })
    }
}

#[tonic::async_trait]
impl Runtimes for KubeRuntimes {
    async fn sync(
        &self,
        cluster: &ClusterKey,
        fc: &FulvaCluster,
        replicas: u32,
        draining: &[u32],
        tls: Option<fulva_tls::Tls>,
    ) -> Result<RuntimeReport, RuntimeError> {
        let nodes = self.ready_nodes(cluster, fc).await?;
        let mut clusters = self.clusters.lock().await;
        if !clusters.contains_key(cluster) {
            // The first map needs every initial node.
            if (nodes.len() as u32) < fc.spec.nodes.min(replicas) {
                return Ok(RuntimeReport::default());
            }
            let runtime = self.start(cluster, fc, nodes.clone(), tls).await?;
            clusters.insert(cluster.clone(), runtime);
        }
        let runtime = clusters.get_mut(cluster).expect("inserted above");
        let coordinator = &runtime.coordinator;
        // New pods join the map (and get ranges from the rebalancer).
        let joining: Vec<NodeInfo> = nodes.iter().filter(|n| n.id < replicas).cloned().collect();
        coordinator.upsert_nodes(joining).await?;
        if runtime.rebalancer.policy() != fc.spec.rebalance {
            runtime.rebalancer.set_policy(fc.spec.rebalance.clone());
        }
        runtime.policy = fc.spec.rebalance.clone();
        // Automatic rebalancing waits while a one-shot rebalance runs.
        // So does it while pods are being replaced (the drains move ranges
        // themselves). A node gone from the StatefulSet is replaced by nobody.
        runtime.drains.retain(|&node, drain| {
            let kept = node < replicas;
            if !kept {
                drain.task.abort();
            }
            kept
        });
        runtime.rebalancer.set_held(
            runtime.jobs.values().any(|j| j.report().phase == JobPhase::Running)
                || !runtime.drains.is_empty(),
        );
        // Nodes above the StatefulSet's size are leaving too: nothing may move onto them.
        let leaving =
            coordinator.map().nodes.iter().map(|n| n.id).filter(|&id| id >= replicas).collect::<Vec<_>>();
        runtime.rebalancer.set_draining(draining.iter().copied().chain(leaving).collect());
        let drained: Vec<u32> =
            draining.iter().copied().filter(|&n| runtime.rebalancer.is_empty(n)).collect();
        // Nodes gone from the StatefulSet leave the map once they own nothing.
        let map = coordinator.map();
        for node in map.nodes.iter().filter(|n| n.id >= replicas) {
            if runtime.rebalancer.is_empty(node.id) {
                coordinator.remove_node(node.id).await?;
            }
        }

        let map = coordinator.map();
        let status = runtime.rebalancer.status();
        let mut moves = Vec::new();
        for (range, from, to, _) in &status.in_flight {
            let mut progress =
                MoveStatus { range: range.to_string(), from: *from, to: *to, ..MoveStatus::default() };
            if let Ok(mut client) = coordinator.node_client(*to).await {
                if let Ok(s) =
                    client.migration_status(MigrationStatusRequest { range: Some((*range).into()) }).await
                {
                    progress.progress_percent = if s.bytes_total == 0 {
                        0.0
                    } else {
                        (s.bytes_applied as f64 * 100.0 / s.bytes_total as f64).min(100.0)
                    };
                    progress.eta_seconds = s.eta_seconds;
                }
            }
            moves.push(progress);
        }
        let mut events = Vec::new();
        for record in &status.history {
            let started = (record.range.to_string(), record.started, false);
            if runtime.reported.insert(started) {
                events.push(RuntimeEvent {
                    warning: false,
                    reason: "MoveStarted".into(),
                    note: format!("moving {} from node {} to node {}", record.range, record.from, record.to),
                });
            }
            if let Some((_, finished)) = record.ended {
                if runtime.reported.insert((record.range.to_string(), record.started, true)) {
                    events.push(RuntimeEvent {
                        warning: !finished,
                        reason: if finished { "MoveFinished" } else { "MoveFailed" }.into(),
                        note: format!(
                            "{} {} from node {} to node {}",
                            if finished { "moved" } else { "failed or rolled back: move of" },
                            record.range,
                            record.from,
                            record.to
                        ),
                    });
                }
            }
        }
        let losses = coordinator.losses();
        let reported = runtime.reported_loss;
        for loss in losses.iter().filter(|l| l.id > reported) {
            events.push(RuntimeEvent { warning: true, reason: "RangesLost".into(), note: loss.to_string() });
        }
        runtime.reported_loss = losses.last().map_or(reported, |l| l.id);
        let last_loss = losses.last().map(|loss| LossSummary { at: loss.at, text: loss.to_string() });
        let last_rebalance = status.last_rebalance.map(|at| SystemTime::now() - at.elapsed());
        Ok(RuntimeReport {
            serving: true,
            shards: map.shards.len() as u32,
            map_epoch: map.epoch,
            moves,
            imbalance: status.imbalance,
            last_rebalance,
            drained,
            events,
            proposal_pending: runtime.policy.mode == fulva_coordinator::policy::RebalanceMode::Proposal
                && status.last_plan.as_ref().is_some_and(|p| p.moves() > 0),
            last_loss,
        })
    }

    async fn propose(
        &self,
        cluster: &ClusterKey,
        spec: &FulvaRebalanceSpec,
    ) -> Result<Proposal, RuntimeError> {
        let clusters = self.clusters.lock().await;
        let runtime = clusters.get(cluster).ok_or_else(|| RuntimeError::NotServing(cluster.clone()))?;
        let load = runtime.rebalancer.status().last_load.ok_or(RuntimeError::NoLoadSample)?;
        let request = spec.request();
        let rate = match rate_control(&request, &runtime.policy) {
            RateControl::Fixed(limit) => limit,
            RateControl::Adaptive(a) => a.max_bytes_per_sec,
        };
        Ok(rebalance_job::propose(&load, &runtime.coordinator.map(), &runtime.policy, &request, rate)?)
    }

    async fn start_rebalance(
        &self,
        cluster: &ClusterKey,
        name: &str,
        spec: &FulvaRebalanceSpec,
        proposal: &Proposal,
    ) -> Result<(), RuntimeError> {
        let mut clusters = self.clusters.lock().await;
        let runtime = clusters.get_mut(cluster).ok_or_else(|| RuntimeError::NotServing(cluster.clone()))?;
        if runtime.jobs.get(name).is_some_and(|j| j.report().phase == JobPhase::Running) {
            return Ok(());
        }
        let control = rate_control(&spec.request(), &runtime.policy);
        let probe: Option<Arc<dyn LatencySignal>> = match control {
            RateControl::Adaptive(_) => {
                let tls = runtime.coordinator.tls().map(|t| t.client.clone());
                Some(Arc::new(ProbeLatency::start(&self.control_endpoint, &cluster.to_string(), tls).await?))
            }
            RateControl::Fixed(_) => None,
        };
        let concurrency = spec.max_concurrent_moves.unwrap_or(runtime.policy.max_concurrent_moves);
        let strategy = runtime.policy.strategy.into();
        let job = RebalanceJob::start(
            runtime.coordinator.clone(),
            proposal,
            strategy,
            concurrency,
            control,
            probe,
        )?;
        runtime.rebalancer.set_held(true);
        runtime.jobs.insert(name.to_string(), job);
        Ok(())
    }

    async fn rebalance_status(&self, cluster: &ClusterKey, name: &str) -> Option<JobStatus> {
        let clusters = self.clusters.lock().await;
        let job = clusters.get(cluster)?.jobs.get(name)?;
        let report = job.report();
        let mut current = Vec::new();
        let mut in_flight_bytes = 0;
        for (range, from, to, applied, total, eta) in job.in_flight_progress().await {
            in_flight_bytes += applied;
            current.push(MoveStatus {
                range: range.to_string(),
                from,
                to,
                progress_percent: if total == 0 {
                    0.0
                } else {
                    (applied as f64 * 100.0 / total as f64).min(100.0)
                },
                eta_seconds: eta,
            });
        }
        Some(JobStatus { report, current, in_flight_bytes })
    }

    async fn set_rebalance_rate(&self, cluster: &ClusterKey, name: &str, spec: &FulvaRebalanceSpec) {
        let clusters = self.clusters.lock().await;
        let Some(runtime) = clusters.get(cluster) else { return };
        let Some(job) = runtime.jobs.get(name) else { return };
        let control = rate_control(&spec.request(), &runtime.policy);
        if job.control() != control {
            tracing::info!(%cluster, rebalance = name, ?control, "bandwidth settings changed");
            job.set_control(control).await;
        }
    }

    async fn stop_rebalance(&self, cluster: &ClusterKey, name: &str) {
        let clusters = self.clusters.lock().await;
        if let Some(job) = clusters.get(cluster).and_then(|r| r.jobs.get(name)) {
            job.stop();
        }
    }

    async fn drain_node(&self, cluster: &ClusterKey, node: u32, retry: bool) -> DrainState {
        let mut clusters = self.clusters.lock().await;
        let Some(runtime) = clusters.get_mut(cluster) else {
            return DrainState::Refused("the cluster's coordinator is not running yet".into());
        };
        if let Some(drain) = runtime.drains.get(&node) {
            let state = drain.state.lock().clone();
            let again = retry && matches!(state, DrainState::Failed(_) | DrainState::Refused(_));
            if !again {
                return state;
            }
        }
        let mut options = DrainOptions::from_policy(&runtime.policy);
        options.excluded.extend(runtime.drains.keys().copied().filter(|&n| n != node));
        if let Err(err) = runtime.coordinator.check_drain_capacity(node, &options).await {
            return DrainState::Refused(err.to_string());
        }
        runtime.rebalancer.set_held(true);
        let state = Arc::new(parking_lot::Mutex::new(DrainState::Running { moved: 0, total: 0 }));
        let (coordinator, shared) = (runtime.coordinator.clone(), state.clone());
        let task = tokio::spawn(async move {
            let result = coordinator
                .drain(node, &options, |p| {
                    *shared.lock() = DrainState::Running { moved: p.moved, total: p.total };
                })
                .await;
            *shared.lock() = match result {
                Ok(_) => DrainState::Done,
                Err(err) => DrainState::Failed(err.to_string()),
            };
        });
        if let Some(old) = runtime.drains.insert(node, NodeDrain { state, task }) {
            old.task.abort();
        }
        tracing::info!(%cluster, node, "draining a node before its pod is replaced");
        DrainState::Running { moved: 0, total: 0 }
    }

    async fn release_node(&self, cluster: &ClusterKey, node: u32) {
        let mut clusters = self.clusters.lock().await;
        if let Some(drain) = clusters.get_mut(cluster).and_then(|r| r.drains.remove(&node)) {
            drain.task.abort();
        }
    }

    async fn stop(&self, cluster: &ClusterKey) {
        let Some(runtime) = self.clusters.lock().await.remove(cluster) else { return };
        for drain in runtime.drains.values() {
            drain.task.abort();
        }
        self.directory.remove(&cluster.to_string());
        runtime.shutdown.cancel();
        let _ = runtime.task.await;
        let _ = runtime.watch.await;
        tracing::info!(%cluster, "cluster runtime stopped");
    }
}
