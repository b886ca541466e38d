//! Reconcile scenarios against a mocked API server: each test states the
//! requests a reconcile must make, in order, and what the server answers.

use super::*;
use crate::fixtures::{mock_client, MockApi};
use parking_lot::Mutex;
use serde_json::{json, Value};

pub(super) const NS: &str = "default";
pub(super) const CLUSTERS: &str = "/apis/fulva.io/v1alpha1/namespaces/default/fulvaclusters/demo";
pub(super) const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
pub(super) const STS: &str = "/apis/apps/v1/namespaces/default/statefulsets/demo";
pub(super) const PDB: &str = "/apis/policy/v1/namespaces/default/poddisruptionbudgets/demo-kvnodes";
pub(super) const PODS: &str = "/api/v1/namespaces/default/pods";

/// A runtime that reports what the test tells it to and records calls.
#[derive(Default)]
pub(super) struct FakeRuntimes {
    pub(super) report: Mutex<RuntimeReport>,
    pub(super) syncs: Mutex<Vec<(u32, Vec<u32>)>>,
    pub(super) stopped: Mutex<Vec<ClusterKey>>,
    /// What `propose` answers (None: an error).
    pub(super) proposal: Mutex<Option<crate::rebalance_crd::Proposal>>,
    pub(super) proposals: Mutex<u32>,
    /// Rebalances started: name and proposal.
    pub(super) started: Mutex<Vec<(String, crate::rebalance_crd::Proposal)>>,
    /// What `rebalance_status` answers.
    pub(super) job: Mutex<Option<JobStatus>>,
    /// Bandwidth settings passed on: (limit MB/s, adaptive target µs).
    pub(super) rates: Mutex<Vec<(Option<f64>, Option<u64>)>>,
    /// Rebalances stopped.
    pub(super) stops: Mutex<Vec<String>>,
    /// What `drain_node` answers per node (absent: running).
    pub(super) drain_states: Mutex<std::collections::HashMap<u32, update::DrainState>>,
    /// Drains asked for: (node, retry).
    pub(super) drains_asked: Mutex<Vec<(u32, bool)>>,
    /// Nodes released after their pods were replaced.
    pub(super) released: Mutex<Vec<u32>>,
    /// The identity the last sync was given.
    pub(super) tls: Mutex<Option<fulva_tls::Tls>>,
}

#[tonic::async_trait]
impl Runtimes for FakeRuntimes {
    async fn sync(
        &self,
        _cluster: &ClusterKey,
        _fc: &FulvaCluster,
        replicas: u32,
        draining: &[u32],
        tls: Option<fulva_tls::Tls>,
    ) -> Result<RuntimeReport, RuntimeError> {
        self.syncs.lock().push((replicas, draining.to_vec()));
        *self.tls.lock() = tls;
        Ok(self.report.lock().clone())
    }

    async fn stop(&self, cluster: &ClusterKey) {
        self.stopped.lock().push(cluster.clone());
    }

    async fn drain_node(&self, _cluster: &ClusterKey, node: u32, retry: bool) -> update::DrainState {
        self.drains_asked.lock().push((node, retry));
        self.drain_states
            .lock()
            .get(&node)
            .cloned()
            .unwrap_or(update::DrainState::Running { moved: 0, total: 1 })
    }

    async fn release_node(&self, _cluster: &ClusterKey, node: u32) {
        self.released.lock().push(node);
    }

    async fn propose(
        &self,
        _cluster: &ClusterKey,
        _spec: &crate::rebalance_crd::FulvaRebalanceSpec,
    ) -> Result<crate::rebalance_crd::Proposal, RuntimeError> {
        *self.proposals.lock() += 1;
        self.proposal.lock().clone().ok_or(RuntimeError::NoLoadSample)
    }

    async fn start_rebalance(
        &self,
        _cluster: &ClusterKey,
        name: &str,
        _spec: &crate::rebalance_crd::FulvaRebalanceSpec,
        proposal: &crate::rebalance_crd::Proposal,
    ) -> Result<(), RuntimeError> {
        self.started.lock().push((name.to_string(), proposal.clone()));
        Ok(())
    }

    async fn rebalance_status(&self, _cluster: &ClusterKey, _name: &str) -> Option<JobStatus> {
        self.job.lock().clone()
    }

    async fn set_rebalance_rate(
        &self,
        _cluster: &ClusterKey,
        _name: &str,
        spec: &crate::rebalance_crd::FulvaRebalanceSpec,
    ) {
        self.rates
            .lock()
            .push((spec.bandwidth_limit_mb_per_sec, spec.adaptive.as_ref().map(|a| a.target_p99_micros)));
    }

    async fn stop_rebalance(&self, _cluster: &ClusterKey, name: &str) {
        self.stops.lock().push(name.to_string());
    }
}

pub(super) fn context(runtimes: Arc<FakeRuntimes>) -> (Arc<Context>, MockApi) {
    let (client, api) = mock_client();
    let ctx = Context::new(
        client,
        Arc::new(OperatorMetrics::new()),
        runtimes,
        "fulva-operator.fulva-system.svc".into(),
        7000,
    );
    (Arc::new(ctx), api)
}

pub(super) fn cluster(spec: Value, finalizer: bool, deleting: bool) -> FulvaCluster {
    let mut metadata =
        json!({"name": "demo", "namespace": NS, "uid": "7c1e", "generation": 2, "resourceVersion": "41"});
    if finalizer {
        metadata["finalizers"] = json!([FINALIZER]);
    }
    if deleting {
        metadata["deletionTimestamp"] = json!("2026-11-24T08:00:00Z");
    }
    serde_json::from_value(json!({"apiVersion": "fulva.io/v1alpha1", "kind": "FulvaCluster", "metadata": metadata, "spec": spec}))
        .unwrap()
}

/// What the server answers a status patch with (the object).
pub(super) fn stored() -> Value {
    serde_json::to_value(cluster(json!({"nodes": 3}), true, false)).unwrap()
}

pub(super) fn statefulset(replicas: i32, ready: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "demo", "namespace": NS},
        "spec": {"replicas": replicas, "serviceName": "demo-nodes", "selector": {}, "template": {}},
        "status": {"replicas": replicas, "readyReplicas": ready}
    })
}

pub(super) fn serving(shards: u32) -> RuntimeReport {
    RuntimeReport { serving: true, shards, map_epoch: 5, imbalance: 1.02, ..RuntimeReport::default() }
}

pub(super) fn condition_of<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

/// The services every apply reconcile makes, in order.
pub(super) async fn expect_services(api: &mut MockApi) {
    let nodes = api.expect("PATCH", "/api/v1/namespaces/default/services/demo-nodes", 200, Value::Null).await;
    assert!(nodes.query.contains("fieldManager=fulva-operator"), "{}", nodes.query);
    assert_eq!(nodes.body["spec"]["clusterIP"], "None");
    assert_eq!(nodes.body["metadata"]["ownerReferences"][0]["uid"], "7c1e");
    let control =
        api.expect("PATCH", "/api/v1/namespaces/default/services/demo-control", 200, Value::Null).await;
    assert_eq!(control.body["spec"]["type"], "ExternalName");
    assert_eq!(control.body["spec"]["externalName"], "fulva-operator.fulva-system.svc");
    let budget = api.expect("PATCH", PDB, 200, Value::Null).await;
    assert_eq!(budget.body["spec"]["maxUnavailable"], 0, "no kvnode pod may be evicted");
    let policy = api
        .expect(
            "PATCH",
            "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/demo-kvnodes",
            200,
            Value::Null,
        )
        .await;
    let control = &policy.body["spec"]["ingress"][1]["from"][0];
    assert_eq!(
        control["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], "fulva-system",
        "control calls from the operator's namespace only"
    );
}

/// The kvnode pods listed by their labels (and, when any is scheduled, the Nodes).
pub(super) async fn expect_pods(api: &mut MockApi, pods: Value) {
    let list = api
        .expect(
            "GET",
            PODS,
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": pods}),
        )
        .await;
    assert!(list.query.contains("labelSelector=app.kubernetes.io%2Finstance%3Ddemo"), "{}", list.query);
}

#[tokio::test]
async fn the_finalizer_is_added_before_anything_else() {
    let runtimes = Arc::new(FakeRuntimes::default());
    let (ctx, mut api) = context(runtimes.clone());
    let fc = cluster(json!({"nodes": 3}), false, false);
    let server = tokio::spawn(async move {
        let patched = api
            .expect(
                "PATCH",
                CLUSTERS,
                200,
                serde_json::to_value(cluster(json!({"nodes": 3}), true, false)).unwrap(),
            )
            .await;
        assert!(patched.body.to_string().contains(FINALIZER), "{}", patched.body);
        api.expect_silence().await;
    });
    reconcile(Arc::new(fc), ctx).await.unwrap();
    server.await.unwrap();
    assert!(runtimes.syncs.lock().is_empty(), "nothing else happens before the finalizer is in place");
}

#[tokio::test]
async fn a_new_cluster_gets_its_services_statefulset_and_status() {
    let runtimes = Arc::new(FakeRuntimes::default());
    *runtimes.report.lock() = serving(16);
    let (ctx, mut api) = context(runtimes.clone());
    let fc = cluster(json!({"nodes": 3, "initialShards": 16}), true, false);
    let server = tokio::spawn(async move {
        expect_services(&mut api).await;
        api.refuse("GET", STS, 404, "NotFound").await;
        let sts = api.expect("PATCH", STS, 200, statefulset(3, 3)).await;
        expect_pods(&mut api, json!([])).await;
        assert_eq!(sts.body["spec"]["replicas"], 3);
        assert_eq!(sts.body["spec"]["serviceName"], "demo-nodes");
        let container = &sts.body["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            container["securityContext"]["readOnlyRootFilesystem"], true,
            "kernel mode runs locked down"
        );
        let status =
            api.expect("PATCH", &format!("{CLUSTERS}/status"), 200, stored()).await.body["status"].clone();
        assert_eq!(status["observedGeneration"], 2);
        assert_eq!(status["readyNodes"], 3);
        assert_eq!(status["shards"], 16);
        assert_eq!(status["controlEndpoint"], "demo-control.default.svc:7000");
        assert_eq!(condition_of(&status, "Ready")["status"], "True");
        assert_eq!(condition_of(&status, "Rebalancing")["status"], "False");
        assert_eq!(condition_of(&status, "Degraded")["status"], "False");
        api.expect_silence().await;
    });
    let action = reconcile(Arc::new(fc), ctx).await.unwrap();
    server.await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    assert_eq!(*runtimes.syncs.lock(), vec![(3, vec![])]);
}

#[tokio::test]
async fn a_bad_spec_gets_a_condition_and_an_event_and_changes_nothing() {
    let runtimes = Arc::new(FakeRuntimes::default());
    let (ctx, mut api) = context(runtimes.clone());
    let fc = cluster(json!({"nodes": 3, "dataPath": {"mode": "dpdk"}}), true, false);
    let server = tokio::spawn(async move {
        let event = api.expect("POST", EVENTS, 201, Value::Null).await;
        assert_eq!(event.body["type"], "Warning");
        assert_eq!(event.body["reason"], "InvalidSpec");
        assert!(event.body["note"].as_str().unwrap().contains("sriovResourceName"), "{}", event.body);
        let status =
            api.expect("PATCH", &format!("{CLUSTERS}/status"), 200, stored()).await.body["status"].clone();
        let ready = condition_of(&status, "Ready");
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("False"), Some("InvalidSpec"))
        );
        // No Service, no StatefulSet: nothing else is touched.
        api.expect_silence().await;
    });
    let action = reconcile(Arc::new(fc), ctx).await.unwrap();
    server.await.unwrap();
    assert_eq!(action, Action::await_change());
    assert!(runtimes.syncs.lock().is_empty());
}

#[tokio::test]
async fn scaling_out_grows_the_statefulset_at_once() {
    let runtimes = Arc::new(FakeRuntimes::default());
    *runtimes.report.lock() = serving(16);
    let (ctx, mut api) = context(runtimes.clone());
    let fc = cluster(json!({"nodes": 5}), true, false);
    let server = tokio::spawn(async move {
        expect_services(&mut api).await;
        api.expect("GET", STS, 200, statefulset(3, 3)).await;
        let event = api.expect("POST", EVENTS, 201, Value::Null).await;
        assert_eq!(event.body["reason"], "ScaledOut");
        let sts = api.expect("PATCH", STS, 200, statefulset(5, 3)).await;
        expect_pods(&mut api, json!([])).await;
        assert_eq!(sts.body["spec"]["replicas"], 5);
        let status =
            api.expect("PATCH", &format!("{CLUSTERS}/status"), 200, stored()).await.body["status"].clone();
        let ready = condition_of(&status, "Ready");
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("False"), Some("NodesNotReady"))
        );
    });
    let action = reconcile(Arc::new(fc), ctx).await.unwrap();
    server.await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(5)), "not ready yet: look again soon");
    assert_eq!(*runtimes.syncs.lock(), vec![(5, vec![])]);
}

#[tokio::test]
async fn scaling_in_drains_the_nodes_before_the_statefulset_shrinks() {
    let runtimes = Arc::new(FakeRuntimes::default());
    *runtimes.report.lock() = RuntimeReport {
        moves: vec![crate::crd::MoveStatus {
            range: "0x0..=0xff".into(),
            from: 2,
            to: 0,
            progress_percent: 40.0,
            eta_seconds: 1.5,
        }],
        ..serving(16)
    };
    let (ctx, mut api) = context(runtimes.clone());
    let fc = cluster(json!({"nodes": 2}), true, false);
    let server = tokio::spawn(async move {
        expect_services(&mut api).await;
        api.expect("GET", STS, 200, statefulset(3, 3)).await;
        let event = api.expect("POST", EVENTS, 201, Value::Null).await;
        assert_eq!(event.body["reason"], "Draining");
        let sts = api.expect("PATCH", STS, 200, statefulset(3, 3)).await;
        expect_pods(&mut api, json!([])).await;
        assert_eq!(sts.body["spec"]["replicas"], 3, "node 2 still owns ranges: no shrink yet");
        let status =
            api.expect("PATCH", &format!("{CLUSTERS}/status"), 200, stored()).await.body["status"].clone();
        assert_eq!(status["draining"], json!([2]));
        assert_eq!(status["movesInFlight"], 1);
        assert_eq!(status["moves"][0]["progressPercent"], 40.0);
        assert_eq!(condition_of(&status, "Rebalancing")["status"], "True");
        api.expect_silence().await;
    });
    reconcile(Arc::new(fc), ctx.clone()).await.unwrap();
    server.await.unwrap();
    assert_eq!(*runtimes.syncs.lock(), vec![(3, vec![2])]);

    // Drained: now it shrinks.
    *runtimes.report.lock() = RuntimeReport { drained: vec![2], ..serving(16) };
    let (ctx, mut api) = context(runtimes.clone());
    let fc = cluster(json!({"nodes": 2}), true, false);
    let server = tokio::spawn(async move {
        expect_services(&mut api).await;
        api.expect("GET", STS, 200, statefulset(3, 3)).await;
        let event = api.expect("POST", EVENTS, 201, Value::Null).await;
        assert_eq!(event.body["reason"], "ScaledIn");
        let sts = api.expect("PATCH", STS, 200, statefulset(2, 2)).await;
        expect_pods(&mut api, json!([])).await;
        assert_eq!(sts.body["spec"]["replicas"], 2);
        let status =
            api.expect("PATCH", &format!("{CLUSTERS}/status"), 200, stored()).await.body["status"].clone();
        assert_eq!(status["draining"], json!([]));
        assert_eq!(condition_of(&status, "Ready")["status"], "True");
    });
    reconcile(Arc::new(fc), ctx).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn moves_become_events() {
    let runtimes = Arc::new(FakeRuntimes::default());
    *runtimes.report.lock() = RuntimeReport {
        events: vec![
            RuntimeEvent {
                warning: false,
                reason: "MoveFinished".into(),
                note: "moved 0x0..=0xff 0 -> 1".into(),
            },
            RuntimeEvent { warning: true, reason: "MoveFailed".into(), note: "node 2 unreachable".into() },
        ],
        ..serving(16)
    };
    let (ctx, mut api) = context(runtimes.clone());
    let fc = cluster(json!({"nodes": 3}), true, false);
    let server = tokio::spawn(async move {
        expect_services(&mut api).await;
        api.expect("GET", STS, 200, statefulset(3, 3)).await;
        api.expect("PATCH", STS, 200, statefulset(3, 3)).await;
        expect_pods(&mut api, json!([])).await;
        let finished = api.expect("POST", EVENTS, 201, Value::Null).await;
        assert_eq!(
            (finished.body["type"].as_str(), finished.body["reason"].as_str()),
            (Some("Normal"), Some("MoveFinished"))
        );
        let failed = api.expect("POST", EVENTS, 201, Value::Null).await;
        assert_eq!(
            (failed.body["type"].as_str(), failed.body["reason"].as_str()),
            (Some("Warning"), Some("MoveFailed"))
        );
        api.expect("PATCH", &format!("{CLUSTERS}/status"), 200, stored()).await;
    });
    reconcile(Arc::new(fc), ctx).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn deletion_stops_the_runtime_then_releases_the_finalizer() {
    let runtimes = Arc::new(FakeRuntimes::default());
    let (ctx, mut api) = context(runtimes.clone());
    let fc = cluster(json!({"nodes": 3}), true, true);
    let server = tokio::spawn(async move {
        let event = api.expect("POST", EVENTS, 201, Value::Null).await;
        assert_eq!(event.body["reason"], "Deleted");
        let patched = api
            .expect(
                "PATCH",
                CLUSTERS,
                200,
                serde_json::to_value(cluster(json!({"nodes": 3}), false, true)).unwrap(),
            )
            .await;
        assert!(patched.body.to_string().contains("remove"), "the finalizer comes off: {}", patched.body);
        api.expect_silence().await;
    });
    reconcile(Arc::new(fc), ctx).await.unwrap();
    server.await.unwrap();
    assert_eq!(*runtimes.stopped.lock(), vec![ClusterKey { namespace: NS.into(), name: "demo".into() }]);
    assert!(runtimes.syncs.lock().is_empty());
}
