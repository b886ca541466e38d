//! FulvaRebalance reconcile scenarios against a mocked API server: the
//! proposal, approval, stop, refresh and throttle workflow, and a cluster in
//! proposal mode creating a FulvaRebalance.

use super::rebalance::reconcile as reconcile_rebalance;
use super::tests::{
    cluster, condition_of, context, expect_pods, expect_services, serving, statefulset, stored, FakeRuntimes,
    CLUSTERS, EVENTS, NS, STS,
};
use super::*;
use crate::fixtures::MockApi;
use crate::rebalance_crd::{Proposal, ProposedMove};
use fulva_coordinator::rebalance_job::{JobPhase, JobReport};
use serde_json::{json, Value};
use std::time::SystemTime;

const REBALANCES: &str = "/apis/fulva.io/v1alpha1/namespaces/default/fulvarebalances";
const REBALANCE: &str = "/apis/fulva.io/v1alpha1/namespaces/default/fulvarebalances/spread";

fn proposal(moves: u32) -> Proposal {
    Proposal {
        moves: (0..moves)
            .map(|i| ProposedMove {
                range: format!("{:#x}..={:#x}", u64::from(i) << 60, (u64::from(i) << 60) + 0xff),
                from: 0,
                to: 2,
                bytes: 4_000_000,
                reason: "balance".into(),
            })
            .collect(),
        bytes_to_move: u64::from(moves) * 4_000_000,
        imbalance_before: 1.8,
        imbalance_after: 1.05,
        dimension: "ops".into(),
        estimated_seconds: 2.5,
        map_epoch: 9,
        computed_at: "2026-11-24T10:00:00Z".into(),
        ..Proposal::default()
    }
}

/// A FulvaRebalance `spread` of cluster `demo` with `annotations` and,
/// when given, a status as an earlier reconcile wrote it (generation 1).
fn rebalance(spec: Value, annotations: Value, status: Option<Value>) -> Arc<FulvaRebalance> {
    let mut object = json!({
        "apiVersion": "fulva.io/v1alpha1", "kind": "FulvaRebalance",
        "metadata": {"name": "spread", "namespace": NS, "uid": "e4b2", "generation": 1,
                     "resourceVersion": "7", "annotations": annotations},
        "spec": spec,
    });
    if let Some(status) = status {
        object["status"] = status;
    }
    Arc::new(serde_json::from_value(object).unwrap())
}

/// What the server answers a patch with (the object).
fn stored_rebalance() -> Value {
    serde_json::to_value(&*rebalance(json!({"cluster": "demo"}), json!({}), None)).unwrap()
}

fn proposal_ready(moves: u32) -> Value {
    json!({"observedGeneration": 1, "phase": "ProposalReady", "proposal": proposal(moves)})
}

fn job(phase: JobPhase, done: u32, total: u32, in_flight: u32) -> JobStatus {
    let range =
        |i: u32| fulva_proto::HashRange::new(u64::from(i) << 60, (u64::from(i) << 60) + 0xff).unwrap();
    JobStatus {
        report: JobReport {
            phase,
            done,
            failed: 0,
            total,
            bytes_moved: u64::from(done) * 4_000_000,
            bytes_total: u64::from(total) * 4_000_000,
            in_flight: (done..done + in_flight).map(|i| (range(i), 0, 2)).collect(),
            rate_bytes_per_sec: 20_000_000,
            errors: Vec::new(),
            started: SystemTime::now() - Duration::from_secs(4),
            finished: (phase != JobPhase::Running).then(SystemTime::now),
        },
        current: Vec::new(),
        in_flight_bytes: u64::from(in_flight) * 2_000_000,
    }
}

fn the_cluster() -> Value {
    serde_json::to_value(cluster(json!({"nodes": 3}), true, false)).unwrap()
}

/// The status patch a reconcile ends with: the status written.
async fn expect_status(api: &mut MockApi) -> Value {
    api.expect("PATCH", &format!("{REBALANCE}/status"), 200, stored_rebalance()).await.body["status"].clone()
}

/// An Event the reconcile publishes.
async fn expect_event(api: &mut MockApi) -> crate::fixtures::Seen {
    api.expect("POST", EVENTS, 201, Value::Null).await
}

fn holds(status: &Value, type_: &str) -> bool {
    condition_of(status, type_)["status"] == "True"
}

#[tokio::test]
async fn a_new_rebalance_gets_a_proposal_and_waits_for_approval() {
    let runtimes = Arc::new(FakeRuntimes::default());
    *runtimes.proposal.lock() = Some(proposal(3));
    let (ctx, mut api) = context(runtimes.clone());
    let server = tokio::spawn(async move {
        api.expect("GET", CLUSTERS, 200, the_cluster()).await;
        let event = expect_event(&mut api).await;
        assert_eq!(event.body["reason"], "ProposalReady");
        assert!(event.body["note"].as_str().unwrap().contains("3 moves, 12.0 MB"), "{}", event.body);
        let status = expect_status(&mut api).await;
        assert_eq!(status["phase"], "ProposalReady");
        assert!(holds(&status, "ProposalReady"));
        assert!(!holds(&status, "Rebalancing") && !holds(&status, "Ready") && !holds(&status, "NotReady"));
        assert!(condition_of(&status, "Rebalancing")["message"].is_string());
        assert_eq!(status["proposal"]["moves"].as_array().unwrap().len(), 3);
        assert_eq!(status["proposal"]["bytesToMove"], 12_000_000);
        assert_eq!(status["proposal"]["imbalanceAfter"], 1.05);
        assert_eq!(status["movesSummary"], "0/3");
        api.expect_silence().await;
    });
    let action =
        reconcile_rebalance(rebalance(json!({"cluster": "demo"}), json!({}), None), ctx).await.unwrap();
    server.await.unwrap();
    assert!(runtimes.started.lock().is_empty(), "nothing runs before approval");
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
}

#[tokio::test]
async fn approval_starts_the_proposed_moves_without_replanning() {
    let runtimes = Arc::new(FakeRuntimes::default());
    let (ctx, mut api) = context(runtimes.clone());
    let server = tokio::spawn(async move {
        api.expect("GET", CLUSTERS, 200, the_cluster()).await;
        let event = expect_event(&mut api).await;
        assert_eq!(event.body["reason"], "RebalanceStarted");
        let status = expect_status(&mut api).await;
        assert_eq!(status["phase"], "Rebalancing");
        assert!(holds(&status, "Rebalancing") && holds(&status, "ProposalReady"));
        assert!(status["startedAt"].is_string());
        api.expect_silence().await;
    });
    let fr =
        rebalance(json!({"cluster": "demo"}), json!({"fulva.io/approve": "true"}), Some(proposal_ready(2)));
    reconcile_rebalance(fr, ctx).await.unwrap();
    server.await.unwrap();
    assert_eq!(*runtimes.proposals.lock(), 0, "the approved proposal runs as it was shown");
    let started = runtimes.started.lock();
    assert_eq!(started.len(), 1);
    assert_eq!((started[0].0.as_str(), &started[0].1), ("spread", &proposal(2)));
}

#[tokio::test]
async fn auto_approve_runs_right_after_the_proposal() {
    let runtimes = Arc::new(FakeRuntimes::default());
    *runtimes.proposal.lock() = Some(proposal(1));
    let (ctx, mut api) = context(runtimes.clone());
    let server = tokio::spawn(async move {
        api.expect("GET", CLUSTERS, 200, the_cluster()).await;
        assert_eq!(expect_event(&mut api).await.body["reason"], "ProposalReady");
        assert_eq!(expect_event(&mut api).await.body["reason"], "RebalanceStarted");
        let status = expect_status(&mut api).await;
        assert_eq!(status["phase"], "Rebalancing");
    });
    reconcile_rebalance(rebalance(json!({"cluster": "demo", "autoApprove": true}), json!({}), None), ctx)
        .await
        .unwrap();
    server.await.unwrap();
    assert_eq!(runtimes.started.lock().len(), 1);
}

#[tokio::test]
async fn progress_and_eta_come_from_the_running_job_and_throttle_changes_reach_it() {
    let runtimes = Arc::new(FakeRuntimes::default());
    *runtimes.job.lock() = Some(job(JobPhase::Running, 1, 4, 1));
    let (ctx, mut api) = context(runtimes.clone());
    let server = tokio::spawn(async move {
        api.expect("GET", CLUSTERS, 200, the_cluster()).await;
        let status = expect_status(&mut api).await;
        assert_eq!(status["phase"], "Rebalancing");
        assert_eq!((status["movesDone"].as_u64(), status["movesTotal"].as_u64()), (Some(1), Some(4)));
        assert_eq!(status["movesSummary"], "1/4");
        // 4 MB done + 2 MB of the move in flight, of 16 MB.
        assert_eq!(status["progressPercent"], 37.5);
        let eta = status["etaSeconds"].as_f64().unwrap();
        assert!(eta > 5.0 && eta < 8.0, "10 MB left at about 1.5 MB/s: {eta}");
        assert_eq!(status["rateMbPerSec"], 20.0);
        assert!(condition_of(&status, "Rebalancing")["message"]
            .as_str()
            .unwrap()
            .contains("1 of 4 moves done"));
        api.expect_silence().await;
    });
    let running = json!({"observedGeneration": 1, "phase": "Rebalancing", "proposal": proposal(4)});
    let fr = rebalance(json!({"cluster": "demo", "bandwidthLimitMbPerSec": 5.0}), json!({}), Some(running));
    let action = reconcile_rebalance(fr, ctx).await.unwrap();
    server.await.unwrap();
    assert_eq!(*runtimes.rates.lock(), vec![(Some(5.0), None)], "the spec's limit reaches the job");
    assert_eq!(action, Action::requeue(Duration::from_secs(2)), "progress is refreshed while moves run");
}

#[tokio::test]
async fn stop_lets_the_moves_in_flight_finish_and_then_reports_stopped() {
    let runtimes = Arc::new(FakeRuntimes::default());
    *runtimes.job.lock() = Some(job(JobPhase::Running, 1, 4, 1));
    let (ctx, mut api) = context(runtimes.clone());
    let running = json!({"observedGeneration": 1, "phase": "Rebalancing", "proposal": proposal(4)});
    let annotations = json!({"fulva.io/approve": "true", "fulva.io/stop": "true"});
    let server = tokio::spawn(async move {
        api.expect("GET", CLUSTERS, 200, the_cluster()).await;
        assert_eq!(expect_event(&mut api).await.body["reason"], "RebalanceStopping");
        let status = expect_status(&mut api).await;
        assert_eq!(status["phase"], "Rebalancing", "the move in flight still runs");
        assert_eq!(condition_of(&status, "Rebalancing")["reason"], "Stopping");
        api
    });
    reconcile_rebalance(
        rebalance(json!({"cluster": "demo"}), annotations.clone(), Some(running.clone())),
        ctx.clone(),
    )
    .await
    .unwrap();
    let mut api = server.await.unwrap();
    assert_eq!(*runtimes.stops.lock(), vec!["spread".to_string()]);

    // The move in flight finished; the job ended without starting the rest.
    *runtimes.job.lock() = Some(job(JobPhase::Stopped, 2, 4, 0));
    let server = tokio::spawn(async move {
        api.expect("GET", CLUSTERS, 200, the_cluster()).await;
        assert_eq!(expect_event(&mut api).await.body["reason"], "StoppedOnRequest");
        let status = expect_status(&mut api).await;
        assert_eq!(status["phase"], "Stopped");
        assert!(holds(&status, "Stopped") && !holds(&status, "Rebalancing") && !holds(&status, "Ready"));
        assert_eq!(status["movesSummary"], "2/4");
        assert!(status["finishedAt"].is_string());
        api.expect_silence().await;
    });
    let action = reconcile_rebalance(rebalance(json!({"cluster": "demo"}), annotations, Some(running)), ctx)
        .await
        .unwrap();
    server.await.unwrap();
    assert_eq!(action, Action::await_change());
    assert_eq!(runtimes.stops.lock().len(), 1, "an ended job is not stopped again");
}

#[tokio::test]
async fn stop_before_approval_ends_it_without_a_move() {
    let runtimes = Arc::new(FakeRuntimes::default());
    let (ctx, mut api) = context(runtimes.clone());
    let server = tokio::spawn(async move {
        api.expect("GET", CLUSTERS, 200, the_cluster()).await;
        assert_eq!(expect_event(&mut api).await.body["reason"], "StoppedOnRequest");
        let status = expect_status(&mut api).await;
        assert_eq!(status["phase"], "Stopped");
    });
    let fr = rebalance(json!({"cluster": "demo"}), json!({"fulva.io/stop": "true"}), Some(proposal_ready(2)));
    reconcile_rebalance(fr, ctx).await.unwrap();
    server.await.unwrap();
    assert!(runtimes.started.lock().is_empty());
}

#[tokio::test]
async fn refresh_recomputes_the_proposal_and_removes_its_annotation() {
    let runtimes = Arc::new(FakeRuntimes::default());
    *runtimes.proposal.lock() = Some(proposal(5));
    let (ctx, mut api) = context(runtimes.clone());
    let server = tokio::spawn(async move {
        api.expect("GET", CLUSTERS, 200, the_cluster()).await;
        assert_eq!(expect_event(&mut api).await.body["reason"], "ProposalReady");
        let patched = api.expect("PATCH", REBALANCE, 200, stored_rebalance()).await;
        assert_eq!(patched.body["metadata"]["annotations"]["fulva.io/refresh"], Value::Null);
        assert!(patched.body["metadata"]["annotations"]
            .as_object()
            .unwrap()
            .contains_key("fulva.io/refresh"));
        let status = expect_status(&mut api).await;
        assert_eq!(
            status["proposal"]["moves"].as_array().unwrap().len(),
            5,
            "the new proposal replaces the old"
        );
        assert_eq!(status["phase"], "ProposalReady");
        api.expect_silence().await;
    });
    let fr =
        rebalance(json!({"cluster": "demo"}), json!({"fulva.io/refresh": "true"}), Some(proposal_ready(2)));
    reconcile_rebalance(fr, ctx).await.unwrap();
    server.await.unwrap();
    assert_eq!(*runtimes.proposals.lock(), 1);
    assert!(runtimes.started.lock().is_empty());
}

#[tokio::test]
async fn a_finished_job_is_ready_and_failed_moves_make_it_not_ready() {
    for (failed, phase, reason) in [(0, "Ready", "Done"), (1, "NotReady", "MovesFailed")] {
        let runtimes = Arc::new(FakeRuntimes::default());
        let mut done = job(JobPhase::Done, 4 - failed, 4, 0);
        done.report.failed = failed;
        done.report.errors = vec!["0x0..=0xff: the destination did not answer".into()];
        *runtimes.job.lock() = Some(done);
        let (ctx, mut api) = context(runtimes.clone());
        let server = tokio::spawn(async move {
            api.expect("GET", CLUSTERS, 200, the_cluster()).await;
            let event = expect_event(&mut api).await;
            assert_eq!(event.body["reason"], reason);
            assert_eq!(event.body["type"], if failed == 0 { "Normal" } else { "Warning" });
            let status = expect_status(&mut api).await;
            assert_eq!(status["phase"], phase);
            assert!(holds(&status, phase));
            assert_eq!(status["etaSeconds"], 0.0);
        });
        let running = json!({"observedGeneration": 1, "phase": "Rebalancing", "proposal": proposal(4)});
        let action =
            reconcile_rebalance(rebalance(json!({"cluster": "demo"}), json!({}), Some(running)), ctx)
                .await
                .unwrap();
        server.await.unwrap();
        assert_eq!(action, Action::await_change());
    }
}

#[tokio::test]
async fn a_rebalance_found_running_without_its_job_resumes_after_an_operator_restart() {
    let runtimes = Arc::new(FakeRuntimes::default());
    let (ctx, mut api) = context(runtimes.clone());
    let server = tokio::spawn(async move {
        api.expect("GET", CLUSTERS, 200, the_cluster()).await;
        assert_eq!(expect_event(&mut api).await.body["reason"], "RebalanceResumed");
        expect_status(&mut api).await;
    });
    let running = json!({"observedGeneration": 1, "phase": "Rebalancing", "proposal": proposal(3)});
    reconcile_rebalance(rebalance(json!({"cluster": "demo"}), json!({}), Some(running)), ctx).await.unwrap();
    server.await.unwrap();
    assert_eq!(
        runtimes.started.lock().len(),
        1,
        "the proposal is resumed (done moves are skipped by the job)"
    );
}

#[tokio::test]
async fn a_missing_cluster_or_a_bad_spec_is_not_ready_and_nothing_runs() {
    let runtimes = Arc::new(FakeRuntimes::default());
    let (ctx, mut api) = context(runtimes.clone());
    let server = tokio::spawn(async move {
        api.refuse("GET", CLUSTERS, 404, "NotFound").await;
        let event = expect_event(&mut api).await;
        assert_eq!(
            (event.body["reason"].as_str(), event.body["type"].as_str()),
            (Some("ClusterNotFound"), Some("Warning"))
        );
        let status = expect_status(&mut api).await;
        assert_eq!(status["phase"], "NotReady");
        assert_eq!(condition_of(&status, "NotReady")["reason"], "ClusterNotFound");
        // A bad spec is refused without asking for the cluster.
        let event = expect_event(&mut api).await;
        assert_eq!(event.body["reason"], "InvalidSpec");
        let status = expect_status(&mut api).await;
        assert!(condition_of(&status, "NotReady")["message"].as_str().unwrap().contains("spec.nodes"));
    });
    let approved = json!({"fulva.io/approve": "true"});
    reconcile_rebalance(rebalance(json!({"cluster": "demo"}), approved.clone(), None), ctx.clone())
        .await
        .unwrap();
    let action =
        reconcile_rebalance(rebalance(json!({"cluster": "demo", "goal": "add-nodes"}), approved, None), ctx)
            .await
            .unwrap();
    server.await.unwrap();
    assert_eq!(action, Action::await_change());
    assert!(runtimes.started.lock().is_empty() && *runtimes.proposals.lock() == 0);
}

#[tokio::test]
async fn a_cluster_in_proposal_mode_creates_one_open_rebalance_for_its_plan() {
    let runtimes = Arc::new(FakeRuntimes::default());
    *runtimes.report.lock() = RuntimeReport { proposal_pending: true, ..serving(16) };
    let (ctx, mut api) = context(runtimes.clone());
    let fc = cluster(json!({"nodes": 3, "rebalance": {"mode": "proposal"}}), true, false);
    let server = tokio::spawn(async move {
        expect_services(&mut api).await;
        api.expect("GET", STS, 200, statefulset(3, 3)).await;
        api.expect("PATCH", STS, 200, statefulset(3, 3)).await;
        expect_pods(&mut api, json!([])).await;
        api.expect("PATCH", &format!("{CLUSTERS}/status"), 200, stored()).await;
        let list = api.expect("GET", REBALANCES, 200, json!({"apiVersion": "fulva.io/v1alpha1", "kind": "FulvaRebalanceList", "metadata": {}, "items": []})).await;
        assert!(
            list.query.contains("labelSelector=fulva.io%2Fcluster%3Ddemo%2Cfulva.io%2Forigin%3Dpolicy"),
            "{}",
            list.query
        );
        let created = api.expect("POST", REBALANCES, 201, Value::Null).await;
        assert_eq!(created.body["metadata"]["name"], "demo-proposal-5");
        assert_eq!(created.body["spec"]["cluster"], "demo");
        assert_eq!(created.body["spec"]["goal"], "full");
        assert_eq!(created.body["spec"]["autoApprove"], false, "a user approves it");
        assert_eq!(created.body["metadata"]["ownerReferences"][0]["uid"], "7c1e");
        assert_eq!(expect_event(&mut api).await.body["reason"], "ProposalCreated");

        // Next round: an open proposal exists, so no second one.
        expect_services(&mut api).await;
        api.expect("GET", STS, 200, statefulset(3, 3)).await;
        api.expect("PATCH", STS, 200, statefulset(3, 3)).await;
        expect_pods(&mut api, json!([])).await;
        api.expect("PATCH", &format!("{CLUSTERS}/status"), 200, stored()).await;
        let open = json!({"apiVersion": "fulva.io/v1alpha1", "kind": "FulvaRebalanceList", "metadata": {},
            "items": [{"apiVersion": "fulva.io/v1alpha1", "kind": "FulvaRebalance",
                       "metadata": {"name": "demo-proposal-5", "namespace": NS},
                       "spec": {"cluster": "demo"}, "status": {"phase": "ProposalReady"}}]});
        api.expect("GET", REBALANCES, 200, open).await;
        api.expect_silence().await;
    });
    reconcile(Arc::new(fc.clone()), ctx.clone()).await.unwrap();
    reconcile(Arc::new(fc), ctx).await.unwrap();
    server.await.unwrap();
}
