//! The coordinator is killed in the middle of moves (and of their rollbacks)
//! while clients keep working; a new one recovers from the stored map. No
//! range stays Migrating, nodes and map agree, the history is linearizable
//! and no acknowledged write is lost.

use fulva_client::{History, RecordingClient};
use fulva_coordinator::MoveOptions;
use fulva_kvnode::NodeConfig;
use fulva_local::check;
use fulva_local::stress::lost_writes;
use fulva_local::{LocalCluster, LocalClusterConfig};
use fulva_proto::{ShardState, Strategy};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_mid_move_is_recovered_by_the_next() {
    fulva_local::telemetry::init_for_tests();
    let mut cluster = LocalCluster::start(LocalClusterConfig {
        nodes: 3,
        shards: 6,
        node: NodeConfig { migration_batch_bytes: 2048, ..NodeConfig::loopback(0) },
        ..LocalClusterConfig::default()
    })
    .await
    .unwrap();
    let loader = cluster.client().await.unwrap();
    for i in 0..3_000 {
        loader.put(format!("filler{i}"), [b'f'; 100]).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    let history = History::create(&path).unwrap();
    let hot: Vec<String> = (0..8).map(|k| format!("hot{k}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for p in 0..4u64 {
        let mut recorder = RecordingClient::new(cluster.client().await.unwrap(), history.clone());
        let (stop, hot) = (stop.clone(), hot.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(p);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 1_000_000 {
                let key = hot[rng.random_range(0..hot.len())].as_bytes();
                match rng.random_range(0..10) {
                    0..=4 => drop(recorder.get(key).await),
                    5..=8 => drop(recorder.put(key, format!("{p}-{n}").as_bytes()).await),
                    _ => drop(recorder.delete(key).await),
                }
                n += 1;
            }
        }));
    }

    let mut rng = SmallRng::seed_from_u64(11);
    let (mut forward, mut back, mut dropped) = (0, 0, 0);
    for round in 0..24 {
        let map = cluster.coordinator.map();
        let shard = map.shards[rng.random_range(0..map.shards.len())];
        let destination = (shard.owner + rng.random_range(1..3)) % 3;
        let strategy = [Strategy::Fulva, Strategy::Rocksteady, Strategy::SourceDriven][round % 3];
        // Slow enough that the kill lands in the middle.
        let options = MoveOptions { strategy, rate_limit_bytes_per_sec: 300_000, ..MoveOptions::default() };
        let coordinator = cluster.coordinator.clone();
        let task =
            tokio::spawn(async move { coordinator.migrate(shard.range, destination, options, |_| {}).await });
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..120))).await;
        if rng.random_bool(0.3) {
            // Kill it while it rolls back.
            let _ = cluster.coordinator.abort_move(shard.range);
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..30))).await;
        }
        task.abort();
        let _ = task.await;

        let report = cluster.restart_coordinator().await.unwrap();
        forward += report.rolled_forward.len();
        back += report.rolled_back.len();
        dropped += report.dropped.len();
        let map = cluster.coordinator.map();
        assert!(map.shards.iter().all(|s| s.state == ShardState::Normal), "round {round}: {map:?}");
        for node in &cluster.nodes {
            let expected: Vec<_> =
                map.shards.iter().filter(|s| s.owner == node.node_id).map(|s| s.range).collect();
            assert_eq!(
                node.handler.ownership.ranges(),
                expected,
                "round {round}: node {} vs {map:?}",
                node.node_id
            );
            node.handler.ownership.for_each(|r| {
                assert!(
                    matches!(r.role, fulva_kvnode::RangeRole::Serving),
                    "round {round}: node {} left {} in a move",
                    node.node_id,
                    r.range
                );
            });
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let mut reader = RecordingClient::new(cluster.client().await.unwrap(), history.clone());
    for key in &hot {
        reader.get(key.as_bytes()).await.unwrap();
    }
    history.flush().unwrap();
    for i in (0..3_000).step_by(97) {
        assert_eq!(loader.get(format!("filler{i}")).await.unwrap().as_deref(), Some(&[b'f'; 100][..]));
    }
    cluster.shutdown().await;

    println!("recovery: {forward} moves rolled forward, {back} rolled back, {dropped} leftovers dropped");
    assert!(forward + back >= 6, "too few kills landed mid-move: {forward} forward, {back} back");
    let events = check::read_history(&path).unwrap();
    let report = check::check_events(&events).unwrap();
    assert!(report.is_linearizable(), "{report:?}");
    assert_eq!(lost_writes(&check::operations_by_key(&events).unwrap()), 0);
}
