//! Rolling replacement of kvnode pods through the reconciler, against a
//! mocked API server: template change → drain → delete → wait → next; a
//! cordoned Node; a refused or failed drain; the DataLoss condition of a
//! pod that came back empty.

use super::tests::{
    cluster, condition_of, context, expect_pods, expect_services, serving, stored, FakeRuntimes, CLUSTERS,
    EVENTS, NS, PODS, STS,
};
use super::update::DrainState;
use super::*;
use serde_json::{json, Value};

fn statefulset_at(revision: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "demo", "namespace": NS},
        "spec": {"replicas": 3, "serviceName": "demo-nodes", "selector": {}, "template": {}},
        "status": {"replicas": 3, "readyReplicas": 3, "updateRevision": revision, "updatedReplicas": 0}
    })
}

fn pod(ordinal: u32, uid: &str, revision: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("demo-{ordinal}"), "namespace": NS, "uid": uid,
                     "labels": {"controller-revision-hash": revision}},
        "spec": {"nodeName": node, "containers": []},
        "status": {"phase": "Running", "podIP": format!("10.0.0.{ordinal}")}
    })
}

/// Pods demo-0..2 (uids u0..u2) at `revision`, on Nodes k0..k2.
fn three_pods(revision: &str) -> Value {
    json!([pod(0, "u0", revision, "k0"), pod(1, "u1", revision, "k1"), pod(2, "u2", revision, "k2")])
}

/// The next request is an Event of this type and reason; returns its note.
async fn expect_event(api: &mut crate::fixtures::MockApi, warning: bool, reason: &str) -> String {
    let event = api.expect("POST", EVENTS, 201, Value::Null).await;
    let type_ = if warning { "Warning" } else { "Normal" };
    assert_eq!((event.body["type"].as_str(), event.body["reason"].as_str()), (Some(type_), Some(reason)));
    event.body["note"].as_str().unwrap_or_default().to_string()
}

/// The next request is the status patch; returns the status written.
async fn expect_status(api: &mut crate::fixtures::MockApi) -> Value {
    api.expect("PATCH", &format!("{CLUSTERS}/status"), 200, stored()).await.body["status"].clone()
}

fn kube_nodes(cordoned: &[&str]) -> Value {
    let items: Vec<Value> = ["k0", "k1", "k2"]
        .iter()
        .map(|n| {
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n},
                        "spec": {"unschedulable": cordoned.contains(n)}})
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": items})
}

/// One reconcile's conversation up to the pod list, with `pods` and the Nodes.
async fn expect_until_nodes(api: &mut crate::fixtures::MockApi, sts: Value, pods: Value, cordoned: &[&str]) {
    expect_services(api).await;
    api.expect("GET", STS, 200, sts.clone()).await;
    api.expect("PATCH", STS, 200, sts).await;
    expect_pods(api, pods).await;
    api.expect("GET", "/api/v1/nodes", 200, kube_nodes(cordoned)).await;
}

fn with_status(update: Value) -> FulvaCluster {
    let mut fc = cluster(json!({"nodes": 3}), true, false);
    fc.status = Some(serde_json::from_value(json!({"update": update})).unwrap());
    fc
}

#[tokio::test]
async fn a_template_change_drains_one_pod_then_deletes_it_by_uid() {
    let runtimes = Arc::new(FakeRuntimes::default());
    *runtimes.report.lock() = serving(16);
    let (ctx, mut api) = context(runtimes.clone());
    let fc = cluster(json!({"nodes": 3}), true, false);
    let pods = three_pods("old");
    let server = tokio::spawn(async move {
        expect_until_nodes(&mut api, statefulset_at("new"), pods, &[]).await;
        let note = expect_event(&mut api, false, "PodDraining").await;
        assert!(note.contains("demo-2"), "{note}");
        let status = expect_status(&mut api).await;
        assert_eq!(status["update"]["phase"], "Draining");
        assert_eq!(status["update"]["podsTotal"], 3);
        assert_eq!(status["update"]["inProgress"][0]["pod"], "demo-2");
        assert_eq!(status["update"]["inProgress"][0]["uid"], "u2");
        let updating = condition_of(&status, "Updating");
        assert_eq!(updating["status"], "True");
        assert!(updating["message"].as_str().unwrap().contains("0 of 3 pods replaced, revision new"));
        api.expect_silence().await;
    });
    let action = reconcile(Arc::new(fc), ctx).await.unwrap();
    server.await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(5)), "an update in progress is looked at soon");
    assert_eq!(*runtimes.drains_asked.lock(), vec![(2, true)]);

    // Drained: the pod is deleted, with its uid as a precondition.
    runtimes.drain_states.lock().insert(2, DrainState::Done);
    let (ctx, mut api) = context(runtimes.clone());
    let fc = with_status(json!({"revision": "new", "phase": "Draining", "podsDone": 0, "podsTotal": 3,
        "inProgress": [{"pod": "demo-2", "node": 2, "uid": "u2", "reason": "Outdated", "step": "Draining"}]}));
    let pods = three_pods("old");
    let server = tokio::spawn(async move {
        expect_until_nodes(&mut api, statefulset_at("new"), pods, &[]).await;
        let deleted = api
            .expect(
                "DELETE",
                &format!("{PODS}/demo-2"),
                200,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            )
            .await;
        assert_eq!(deleted.body["preconditions"]["uid"], "u2");
        expect_event(&mut api, false, "PodDrained").await;
        let status = expect_status(&mut api).await;
        assert_eq!(status["update"]["phase"], "WaitingForPod");
    });
    reconcile(Arc::new(fc), ctx).await.unwrap();
    server.await.unwrap();

    // The new pod runs at the new revision: released, and the next pod starts.
    let (ctx, mut api) = context(runtimes.clone());
    let fc = with_status(json!({"revision": "new", "phase": "WaitingForPod", "podsDone": 0, "podsTotal": 3,
        "inProgress": [{"pod": "demo-2", "node": 2, "uid": "u2", "reason": "Outdated", "step": "Deleted"}]}));
    let pods = json!([pod(0, "u0", "old", "k0"), pod(1, "u1", "old", "k1"), pod(2, "u2b", "new", "k2")]);
    let server = tokio::spawn(async move {
        expect_until_nodes(&mut api, statefulset_at("new"), pods, &[]).await;
        expect_event(&mut api, false, "PodReplaced").await;
        expect_event(&mut api, false, "PodDraining").await;
        let status = expect_status(&mut api).await;
        assert_eq!(status["update"]["podsDone"], 1);
        assert_eq!(status["update"]["inProgress"][0]["pod"], "demo-1");
    });
    reconcile(Arc::new(fc), ctx).await.unwrap();
    server.await.unwrap();
    assert_eq!(*runtimes.released.lock(), vec![2]);
}

#[tokio::test]
async fn a_cordoned_node_has_its_kvnode_drained_even_without_a_template_change() {
    let runtimes = Arc::new(FakeRuntimes::default());
    *runtimes.report.lock() = serving(16);
    let (ctx, mut api) = context(runtimes.clone());
    let fc = cluster(json!({"nodes": 3}), true, false);
    let pods = three_pods("r");
    let server = tokio::spawn(async move {
        expect_until_nodes(&mut api, statefulset_at("r"), pods, &["k0"]).await;
        let note = expect_event(&mut api, false, "PodDraining").await;
        assert!(note.contains("demo-0 (node 0): Maintenance"), "{note}");
        let status = expect_status(&mut api).await;
        assert_eq!(status["update"]["inProgress"][0]["reason"], "Maintenance");
    });
    reconcile(Arc::new(fc), ctx).await.unwrap();
    server.await.unwrap();
    assert_eq!(*runtimes.drains_asked.lock(), vec![(0, true)]);
}

#[tokio::test]
async fn a_drain_without_room_pauses_the_update_with_the_reason_and_deletes_nothing() {
    let runtimes = Arc::new(FakeRuntimes::default());
    *runtimes.report.lock() = serving(16);
    runtimes.drain_states.lock().insert(
        2,
        DrainState::Refused("the other nodes cannot hold node 2's 900 bytes: 100 bytes free".into()),
    );
    let (ctx, mut api) = context(runtimes.clone());
    let fc = cluster(json!({"nodes": 3}), true, false);
    let pods = three_pods("old");
    let server = tokio::spawn(async move {
        expect_until_nodes(&mut api, statefulset_at("new"), pods, &[]).await;
        expect_event(&mut api, true, "UpdatePaused").await;
        let status = expect_status(&mut api).await;
        let updating = condition_of(&status, "Updating");
        assert_eq!(updating["reason"], "Paused");
        assert!(updating["message"].as_str().unwrap().contains("cannot hold"), "{updating}");
        // No DELETE: nothing else is asked of the server.
        api.expect_silence().await;
    });
    reconcile(Arc::new(fc), ctx).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn ranges_declared_lost_raise_the_data_loss_condition_and_a_warning() {
    let runtimes = Arc::new(FakeRuntimes::default());
    *runtimes.report.lock() = RuntimeReport {
        events: vec![RuntimeEvent {
            warning: true,
            reason: "RangesLost".into(),
            note: "node 1 lost 2 range(s) (the node restarted): 0x0..=0xff -> node 1".into(),
        }],
        last_loss: Some(LossSummary {
            at: std::time::UNIX_EPOCH + Duration::from_secs(1_796_000_000),
            text: "node 1 lost 2 range(s) (the node restarted): 0x0..=0xff -> node 1".into(),
        }),
        ..serving(16)
    };
    let (ctx, mut api) = context(runtimes.clone());
    let fc = cluster(json!({"nodes": 3}), true, false);
    let pods = three_pods("r");
    let server = tokio::spawn(async move {
        expect_until_nodes(&mut api, statefulset_at("r"), pods, &[]).await;
        expect_event(&mut api, true, "RangesLost").await;
        let status = expect_status(&mut api).await;
        let loss = condition_of(&status, "DataLoss");
        assert_eq!((loss["status"].as_str(), loss["reason"].as_str()), (Some("True"), Some("RangesLost")));
        let message = loss["message"].as_str().unwrap();
        assert!(message.contains("node 1 lost 2 range(s)") && message.contains("2026-"), "{message}");
        assert_eq!(condition_of(&status, "Updating")["status"], "False");
    });
    reconcile(Arc::new(fc), ctx).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn a_namespace_scoped_operator_reads_no_nodes() {
    let runtimes = Arc::new(FakeRuntimes::default());
    *runtimes.report.lock() = serving(16);
    let (ctx, mut api) = context(runtimes.clone());
    let ctx = Arc::new(Arc::into_inner(ctx).unwrap().watching(Some(NS.to_string())));
    let fc = cluster(json!({"nodes": 3}), true, false);
    let pods = three_pods("r");
    let server = tokio::spawn(async move {
        expect_services(&mut api).await;
        api.expect("GET", STS, 200, statefulset_at("r")).await;
        api.expect("PATCH", STS, 200, statefulset_at("r")).await;
        expect_pods(&mut api, pods).await;
        // No GET /api/v1/nodes: a Role grants no Nodes.
        let status = expect_status(&mut api).await;
        assert_eq!(condition_of(&status, "Updating")["status"], "False");
        api.expect_silence().await;
    });
    reconcile(Arc::new(fc), ctx).await.unwrap();
    server.await.unwrap();
    assert!(runtimes.drains_asked.lock().is_empty());
}
