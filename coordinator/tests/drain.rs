//! Draining a node with live moves: it ends owning nothing, the ranges are
//! spread over the others, every key keeps its value; a drain the others
//! have no room for is refused before anything moves.

use fulva_coordinator::{DrainError, DrainOptions};
use fulva_kvnode::NodeConfig;
use fulva_local::{LocalCluster, LocalClusterConfig};

async fn cluster() -> LocalCluster {
    let cluster = LocalCluster::start(LocalClusterConfig {
        nodes: 3,
        shards: 6,
        node: NodeConfig::loopback(0),
        ..LocalClusterConfig::default()
    })
    .await
    .unwrap();
    let client = cluster.client().await.unwrap();
    for i in 0..2_000 {
        client.put(format!("key{i}"), [b'v'; 100]).await.unwrap();
    }
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_owns_nothing_and_every_key_keeps_its_value() {
    let cluster = cluster().await;
    let coordinator = cluster.coordinator.clone();
    let before = coordinator.map().shards.iter().filter(|s| s.owner == 1).count();
    assert_eq!(before, 2);
    let mut seen = Vec::new();
    let report = coordinator.drain(1, &DrainOptions::default(), |p| seen.push(p.clone())).await.unwrap();
    assert_eq!(report.moves.len(), 2);
    assert!(report.bytes > 0);
    assert_eq!(seen.iter().map(|p| (p.moved, p.total)).collect::<Vec<_>>(), vec![(1, 2), (2, 2)]);
    let map = coordinator.map();
    assert!(map.shards.iter().all(|s| s.owner != 1), "{map:?}");
    // Spread: one range each to the two others (they held the same bytes).
    assert_eq!(map.shards.iter().filter(|s| s.owner == 0).count(), 3);
    assert_eq!(map.shards.iter().filter(|s| s.owner == 2).count(), 3);
    let client = cluster.client().await.unwrap();
    for i in 0..2_000 {
        assert_eq!(client.get(format!("key{i}")).await.unwrap().as_deref(), Some(&[b'v'; 100][..]));
    }
    // Draining an empty node is done at once.
    assert!(coordinator.drain(1, &DrainOptions::default(), |_| {}).await.unwrap().moves.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_without_room_is_refused_before_anything_moves() {
    let cluster = cluster().await;
    let coordinator = cluster.coordinator.clone();
    let epoch = coordinator.map().epoch;
    // Each node holds about a third of 2,000 x ~106 bytes; a cap just above
    // what each holds leaves too little room for a third node's bytes.
    let options = DrainOptions { max_node_bytes: 80_000, ..DrainOptions::default() };
    let err = coordinator.drain(0, &options, |_| {}).await.unwrap_err();
    assert!(matches!(err, DrainError::NoCapacity { node: 0, .. }), "{err}");
    assert!(err.to_string().contains("maxNodeBytes"), "{err}");
    assert_eq!(coordinator.map().epoch, epoch, "nothing moved");
    // Every other node excluded: no receiver.
    let options = DrainOptions { excluded: vec![1, 2], ..DrainOptions::default() };
    assert!(matches!(coordinator.drain(0, &options, |_| {}).await, Err(DrainError::NoReceiver { node: 0 })));
    assert!(matches!(
        coordinator.drain(9, &DrainOptions::default(), |_| {}).await,
        Err(DrainError::UnknownNode { node: 9 })
    ));
}
