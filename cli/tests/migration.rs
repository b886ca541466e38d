//! Live moves on a local cluster while clients read and write.

use fulva_cli::{LocalCluster, LocalClusterConfig};
use fulva_operator::MoveOptions;
use fulva_proto::{HashRange, ShardState, Strategy};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_moves_with_fulva_while_clients_read_and_write() {
    move_under_load(Strategy::Fulva).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_moves_with_rocksteady_while_clients_read_and_write() {
    move_under_load(Strategy::Rocksteady).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_moves_source_driven_while_clients_read_and_write() {
    let report = move_under_load(Strategy::SourceDriven).await;
    assert!(report.lock_window.is_some(), "a source-driven move has a lock window: {report:?}");
}

async fn move_under_load(strategy: Strategy) -> fulva_operator::MoveReport {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_default())
        .with_test_writer()
        .try_init();
    let cluster =
        LocalCluster::start(LocalClusterConfig { nodes: 2, shards: 2, ..Default::default() }).await.unwrap();
    let client = cluster.client().await.unwrap();
    for i in 0..5_000u32 {
        client.put(format!("key{i}"), format!("v{i}")).await.unwrap();
    }
    let moving = cluster.coordinator.map().shards[0].range;
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4u32 {
        let (client, stop) = (client.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            // Each worker owns its keys: every read must return its own last write.
            let mut last: HashMap<String, Option<String>> = HashMap::new();
            let mut ops = 0u64;
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) && ops < 200_000 {
                let key = format!("w{w}-{}", i % 64);
                match i % 5 {
                    0..=2 => {
                        let value = format!("{w}-{i}");
                        client.put(&key, &value).await.unwrap();
                        last.insert(key, Some(value));
                    }
                    3 => {
                        client.delete(&key).await.unwrap();
                        last.insert(key, None);
                    }
                    _ => {
                        let got = client.get(&key).await.unwrap();
                        let expected = last.get(&key).cloned().flatten();
                        assert_eq!(
                            got.as_deref(),
                            expected.as_deref().map(str::as_bytes),
                            "worker {w} key {key}"
                        );
                    }
                }
                i += 1;
                ops += 1;
            }
            last
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut statuses = 0;
    let report = cluster
        .coordinator
        .migrate(
            moving,
            1,
            MoveOptions { strategy, rate_limit_bytes_per_sec: 2_000_000, ..Default::default() },
            |_| statuses += 1,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut expected = HashMap::new();
    for w in workers {
        expected.extend(w.await.unwrap());
    }

    assert_eq!((report.source, report.destination), (0, 1));
    assert!(report.objects > 1_000, "the loaded keys moved: {report:?}");
    assert!(statuses > 1, "progress was reported while the move ran");
    let map = cluster.coordinator.map();
    assert!(map.shards.iter().all(|s| s.owner == 1 && s.state == ShardState::Normal), "{map:?}");
    assert!(cluster.node(0).unwrap().handler.ownership.ranges().is_empty());
    assert_eq!(
        cluster.node(0).unwrap().handler.store.measure(HashRange::FULL).objects,
        0,
        "the source dropped its copy"
    );
    for i in 0..5_000u32 {
        assert_eq!(client.get(format!("key{i}")).await.unwrap().as_deref(), Some(format!("v{i}").as_bytes()));
    }
    for (key, value) in expected {
        assert_eq!(client.get(&key).await.unwrap().as_deref(), value.as_deref().map(str::as_bytes), "{key}");
    }
    // No tombstone outlives the move.
    let mut tombstones = 0;
    cluster
        .node(1)
        .unwrap()
        .handler
        .store
        .scan(HashRange::FULL, |_, _, o| tombstones += usize::from(o.value.is_none()));
    assert_eq!(tombstones, 0);
    cluster.shutdown().await;
    report
}
