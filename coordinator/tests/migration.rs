//! Live moves on a local cluster while clients read and write.

use fulva_coordinator::{CoordinatorError, MoveOptions};
use fulva_kvnode::{MigrationTransfer, NodeConfig};
use fulva_local::{LocalCluster, LocalClusterConfig};
use fulva_proto::{HashRange, ShardState, Strategy};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_moves_with_fulva_while_clients_read_and_write() {
    move_under_load(Strategy::Fulva, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_moves_with_fulva_over_the_grpc_transfer_too() {
    move_under_load_over(Strategy::Fulva, None, MigrationTransfer::Grpc).await.0.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_moves_with_rocksteady_while_clients_read_and_write() {
    move_under_load(Strategy::Rocksteady, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_moves_source_driven_while_clients_read_and_write() {
    let report = move_under_load(Strategy::SourceDriven, None).await.unwrap();
    assert!(report.lock_window.is_some(), "a source-driven move has a lock window: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_fulva_move_carries_the_destinations_writes_back() {
    // Aborted mid-pull, after the destination has taken writes and deletes.
    let (result, states) = move_under_load_seen(Strategy::Fulva, Some(Duration::from_millis(300))).await;
    let err = result.unwrap_err();
    assert!(matches!(err, CoordinatorError::Aborted { back_on: 0, carried_back: true, .. }), "{err}");
    // The destination served (and took writes) before the range went back by a reverse move.
    let forward = ShardState::Migrating { source: 0, strategy: Strategy::Fulva };
    let back = ShardState::Migrating { source: 1, strategy: Strategy::Fulva };
    assert!(states.windows(2).any(|w| w == [(1, forward), (0, back)]), "{states:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_source_driven_move_unlocks_the_source() {
    let (result, states) =
        move_under_load_seen(Strategy::SourceDriven, Some(Duration::from_millis(300))).await;
    let err = result.unwrap_err();
    assert!(matches!(err, CoordinatorError::Aborted { back_on: 0, carried_back: false, .. }), "{err}");
    // The map never left node 0.
    assert!(states.iter().all(|&(owner, state)| owner == 0 && state == ShardState::Normal), "{states:?}");
}

async fn move_under_load(
    strategy: Strategy,
    abort_after: Option<Duration>,
) -> Result<fulva_coordinator::MoveReport, CoordinatorError> {
    move_under_load_seen(strategy, abort_after).await.0
}

/// Moves shard 0 from node 0 to node 1 under load; with `abort_after`, aborts
/// the move then and checks it was undone with every write kept. Also
/// returns every (owner, state) the map gave the moving range.
async fn move_under_load_seen(
    strategy: Strategy,
    abort_after: Option<Duration>,
) -> (Result<fulva_coordinator::MoveReport, CoordinatorError>, Vec<(u32, ShardState)>) {
    move_under_load_over(strategy, abort_after, MigrationTransfer::Tcp).await
}

/// [`move_under_load_seen`] with the destination pulling over `transfer`.
async fn move_under_load_over(
    strategy: Strategy,
    abort_after: Option<Duration>,
    transfer: MigrationTransfer,
) -> (Result<fulva_coordinator::MoveReport, CoordinatorError>, Vec<(u32, ShardState)>) {
    fulva_local::telemetry::init_for_tests();
    let cluster = LocalCluster::start(LocalClusterConfig {
        nodes: 2,
        shards: 2,
        // Several batches per move, so the bandwidth limit paces it.
        node: NodeConfig {
            migration_batch_bytes: 2048,
            migration_transfer: transfer,
            ..NodeConfig::loopback(0)
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let client = cluster.client().await.unwrap();
    for i in 0..5_000u32 {
        client.put(format!("key{i}"), format!("v{i}")).await.unwrap();
    }
    let moving = cluster.coordinator.map().shards[0].range;
    let mut maps = cluster.coordinator.subscribe();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let watcher = tokio::spawn({
        let seen = seen.clone();
        async move {
            loop {
                let map = maps.borrow_and_update().clone();
                if let Some(s) = map.shards.iter().find(|s| s.range == moving) {
                    seen.lock().unwrap().push((s.owner, s.state));
                }
                if maps.changed().await.is_err() {
                    return;
                }
            }
        }
    });
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
    // Slow enough that an abort lands mid-pull.
    let rate = if abort_after.is_some() { 50_000 } else { 2_000_000 };
    let migrate = cluster.coordinator.migrate(
        moving,
        1,
        MoveOptions { strategy, rate_limit_bytes_per_sec: rate, ..Default::default() },
        |_| statuses += 1,
    );
    let result = match abort_after {
        None => migrate.await,
        Some(delay) => {
            let abort = async {
                tokio::time::sleep(delay).await;
                cluster.coordinator.abort_move(moving).unwrap();
            };
            tokio::join!(migrate, abort).0
        }
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut expected = HashMap::new();
    for w in workers {
        expected.extend(w.await.unwrap());
    }

    assert!(statuses > 1, "progress was reported while the move ran");
    let map = cluster.coordinator.map();
    let (from, to) = match &result {
        Ok(report) => {
            assert_eq!((report.source, report.destination), (0, 1));
            assert!(report.objects > 1_000, "the loaded keys moved: {report:?}");
            assert!(map.shards.iter().all(|s| s.owner == 1 && s.state == ShardState::Normal), "{map:?}");
            (0, 1)
        }
        Err(_) => {
            assert!(cluster.coordinator.running_moves().is_empty());
            assert_eq!(map.shards[0].range, moving);
            assert_eq!((map.shards[0].owner, map.shards[0].state), (0, ShardState::Normal), "{map:?}");
            (1, 0)
        }
    };
    assert!(!cluster.node(from).unwrap().handler.ownership.ranges().contains(&moving));
    assert!(cluster.node(to).unwrap().handler.ownership.ranges().contains(&moving));
    assert_eq!(
        cluster.node(from).unwrap().handler.store.measure(moving).objects,
        0,
        "the node the range left dropped its copy"
    );
    for i in 0..5_000u32 {
        assert_eq!(client.get(format!("key{i}")).await.unwrap().as_deref(), Some(format!("v{i}").as_bytes()));
    }
    for (key, value) in expected {
        assert_eq!(client.get(&key).await.unwrap().as_deref(), value.as_deref().map(str::as_bytes), "{key}");
    }
    // No tombstone outlives the move.
    let mut tombstones = 0;
    for node in [0, 1] {
        cluster
            .node(node)
            .unwrap()
            .handler
            .store
            .scan(HashRange::FULL, |_, _, o| tombstones += usize::from(o.value.is_none()));
    }
    assert_eq!(tombstones, 0);
    cluster.shutdown().await;
    watcher.abort();
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    (result, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fulva_move_ships_the_hottest_keys_first_and_reads_of_them_need_only_the_destination() {
    let cluster =
        LocalCluster::start(LocalClusterConfig { nodes: 2, shards: 1, ..LocalClusterConfig::default() })
            .await
            .unwrap();
    let client = cluster.client().await.unwrap();
    let keys: Vec<String> = (0..3_000).map(|i| format!("key{i}")).collect();
    for key in &keys {
        client.put(key, [b'v'; 100]).await.unwrap();
    }
    // Five keys draw every read, so the source's sampled heat names them.
    let hot = &keys[..5];
    for _ in 0..100 {
        for key in hot {
            client.get(key).await.unwrap();
        }
    }
    let range = HashRange::FULL;
    // Slow enough that the hash-order pass takes seconds.
    let options = MoveOptions { rate_limit_bytes_per_sec: 40_000, hot_keys: 16, ..MoveOptions::default() };
    let coordinator = cluster.coordinator.clone();
    let mover = tokio::spawn(async move { coordinator.migrate(range, 1, options, |_| {}).await });
    let destination = &cluster.nodes[1].handler;
    let arrived =
        |key: &String| destination.store.get(fulva_proto::key_hash(key.as_bytes()), key.as_bytes()).is_some();
    let started = std::time::Instant::now();
    while !hot.iter().all(arrived) {
        assert!(started.elapsed() < Duration::from_secs(5), "the hot keys did not arrive first");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cold_arrived = keys[5..].iter().filter(|k| arrived(k)).count();
    assert!(cold_arrived < keys.len() / 4, "{cold_arrived} cold keys arrived with the hot ones");
    // The client learns the move from the map and reads the hot keys: the
    // destination holds them, so no read waits for the source, and later
    // reads go to the destination alone.
    client.refresh_map(cluster.coordinator.map().epoch).await.unwrap();
    let dual_before = client.stats().dual_reads.load(Ordering::Relaxed);
    for _ in 0..3 {
        for key in hot {
            assert_eq!(client.get(key).await.unwrap().as_deref(), Some([b'v'; 100].as_slice()));
        }
    }
    let dual = client.stats().dual_reads.load(Ordering::Relaxed) - dual_before;
    assert!(dual <= hot.len() as u64, "{dual} dual reads for {} hot keys read 3 times", hot.len());
    // Keys the cursor has not passed were answered as held, every time.
    let incoming = destination.ownership.incoming(range).expect("the move runs");
    let uncovered =
        hot.iter().filter(|k| !incoming.covers(fulva_proto::key_hash(k.as_bytes()))).count() as u64;
    assert!(uncovered > 0, "the cursor passed every hot key");
    assert!(client.stats().held_reads.load(Ordering::Relaxed) >= 3 * uncovered);
    cluster.coordinator.abort_move(range).unwrap();
    let _ = mover.await.unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_move_leaves_the_map_and_its_epoch_unchanged() {
    let cluster =
        LocalCluster::start(LocalClusterConfig { nodes: 2, shards: 2, ..LocalClusterConfig::default() })
            .await
            .unwrap();
    let coordinator = cluster.coordinator.clone();
    let before = coordinator.map();
    let shard = before.shards[0];
    // A piece of a shard, which a real move would split out first.
    let piece = HashRange { first: shard.range.first + 16, last: shard.range.first + 1023 };
    let options = MoveOptions::default();
    let to_owner = coordinator.migrate(piece, shard.owner, options, |_| {}).await;
    assert!(matches!(to_owner, Err(CoordinatorError::AlreadyThere { .. })), "{to_owner:?}");
    let to_nobody = coordinator.migrate(piece, 9, options, |_| {}).await;
    assert!(matches!(to_nobody, Err(CoordinatorError::UnknownDestination { node: 9 })), "{to_nobody:?}");
    let across = HashRange { first: shard.range.last - 10, last: shard.range.last + 10 };
    let other = before.shards[1].owner;
    let spanning = coordinator.migrate(across, other, options, |_| {}).await;
    assert!(matches!(spanning, Err(CoordinatorError::NotAShard { .. })), "{spanning:?}");
    assert_eq!(*coordinator.map(), *before, "no split, no new epoch");
}
