//! A one-shot rebalance on real nodes (in this process): an add-nodes
//! proposal planned from sampled load, its job throttled, re-throttled while
//! a move runs (the destination reports the new limit as soon as the change
//! returns), stopped (the move in flight finishes, no new one starts), and
//! resumed (the done move is skipped); every key keeps its value.

use fulva_client::{Client, ClientConfig};
use fulva_coordinator::load::LoadCollector;
use fulva_coordinator::rebalance_job::{self, JobPhase, RateControl, RebalanceJob};
use fulva_coordinator::request::{RebalanceGoal, RebalanceRequest};
use fulva_coordinator::RebalancePolicy;
use fulva_kvnode::NodeConfig;
use fulva_local::ControlPlane;
use fulva_proto::grpc::MigrationStatusRequest;
use fulva_proto::{NodeInfo, ShardState, Strategy};
use std::collections::HashSet;
use std::time::{Duration, Instant};

const KEYS: usize = 3000;

fn value(i: usize) -> Vec<u8> {
    format!("{i:08}").repeat(128).into_bytes()
}

async fn wait_for<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_nodes_rebalance_runs_throttled_stops_and_resumes() {
    fulva_local::telemetry::init_for_tests();
    let mut nodes = Vec::new();
    for id in 0..3 {
        nodes.push(fulva_kvnode::start(NodeConfig::loopback(id)).await.unwrap());
    }
    let info = |n: &fulva_kvnode::NodeHandle| NodeInfo {
        id: n.node_id,
        data_addr: n.data_addr,
        control_addr: n.control_addr,
    };
    let control = ControlPlane::start(vec![info(&nodes[0]), info(&nodes[1])], 12).await.unwrap();
    let coordinator = control.coordinator.clone();
    // Node 2 joins empty.
    coordinator.upsert_nodes(vec![info(&nodes[2])]).await.unwrap();
    let endpoint = control.endpoint.clone();
    let client = Client::connect(ClientConfig::new(endpoint)).await.unwrap();
    for i in 0..KEYS {
        client.put(format!("key{i}"), value(i)).await.unwrap();
    }

    let mut collector = LoadCollector::new(Duration::from_secs(1));
    collector.sample(&coordinator, &HashSet::new()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let load = collector.sample(&coordinator, &HashSet::new()).await.unwrap().load;
    let spec =
        RebalanceRequest { goal: RebalanceGoal::AddNodes, nodes: vec![2], ..RebalanceRequest::default() };
    let proposal =
        rebalance_job::propose(&load, &coordinator.map(), &RebalancePolicy::default(), &spec, 20_000)
            .unwrap();
    // 12 equal shards on two nodes: a third of them go to the new node.
    assert_eq!(proposal.moves.len(), 4, "{proposal:?}");
    assert!(proposal.moves.iter().all(|m| m.to == 2 && m.bytes > 0), "{proposal:?}");
    assert_eq!(proposal.dimension, "memory");
    assert!(proposal.imbalance_after < proposal.imbalance_before, "{proposal:?}");
    let total: u64 = proposal.moves.iter().map(|m| m.bytes).sum();
    assert_eq!(proposal.bytes_to_move, total);
    assert!(proposal.estimated_seconds > total as f64 / 20_000.0 * 0.99, "{proposal:?}");

    // One move at a time at 20 kB/s: the first move takes many seconds.
    let job = RebalanceJob::start(
        coordinator.clone(),
        &proposal,
        Strategy::Fulva,
        1,
        RateControl::Fixed(20_000),
        None,
    )
    .unwrap();
    let (range, to) =
        wait_for("the first move", async || job.report().in_flight.first().map(|m| (m.0, m.2))).await;
    let mut dest = coordinator.node_client(to).await.unwrap();
    let status = async |dest: &mut fulva_coordinator::NodeClient| {
        dest.migration_status(MigrationStatusRequest { range: Some(range.into()) }).await.unwrap()
    };
    let before = wait_for("the pull to start", async || {
        let s = status(&mut dest).await;
        s.active.then_some(s)
    })
    .await;
    assert_eq!(before.rate_limit_bytes_per_sec, 20_000);
    // A new limit reaches the running move before set_control returns.
    job.set_control(RateControl::Fixed(400_000)).await;
    assert_eq!(status(&mut dest).await.rate_limit_bytes_per_sec, 400_000);
    assert_eq!(job.report().rate_bytes_per_sec, 400_000);

    // Stop: the move in flight finishes, the other three never start.
    job.stop();
    let stopped = job.wait().await;
    assert_eq!(stopped.phase, JobPhase::Stopped, "{stopped:?}");
    assert_eq!((stopped.done, stopped.failed, stopped.total), (1, 0, 4), "{stopped:?}");
    let map = coordinator.map();
    assert!(map.shards.iter().all(|s| s.state == ShardState::Normal));
    assert_eq!(map.shards.iter().filter(|s| s.owner == 2).count(), 1);

    // Resumed (as after an operator restart): the done move is skipped.
    let resumed =
        RebalanceJob::start(coordinator.clone(), &proposal, Strategy::Fulva, 2, RateControl::Fixed(0), None)
            .unwrap();
    let done = resumed.wait().await;
    assert_eq!((done.phase, done.done, done.failed), (JobPhase::Done, 4, 0), "{done:?}");
    let map = coordinator.map();
    assert_eq!(map.shards.iter().filter(|s| s.owner == 2).count(), 4);
    assert!(map.shards.iter().all(|s| s.state == ShardState::Normal));
    for i in 0..KEYS {
        assert_eq!(
            client.get(format!("key{i}")).await.unwrap().as_deref(),
            Some(value(i).as_slice()),
            "key{i}"
        );
    }
    drop(control);
    for node in nodes {
        node.shutdown().await;
    }
}
