//! The client over a network that loses, duplicates and reorders datagrams in
//! both directions: every acknowledged write is applied exactly once and
//! reads see the last acknowledged write.

use fulva_client::ClientStats;
use fulva_kvnode::NodeHandle;
use fulva_local::{LocalCluster, LocalClusterConfig};
use fulva_proto::transport::{FaultConfig, FaultStats};
use fulva_proto::Op;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const FAULTS: FaultConfig =
    FaultConfig { loss: 0.15, duplicate: 0.15, reorder: 0.15, max_delay: Duration::from_millis(8), seed: 0 };

async fn faulty_cluster(nodes: u32) -> LocalCluster {
    let faults = FaultConfig { seed: 100, ..FAULTS };
    LocalCluster::start(LocalClusterConfig { nodes, shards: 8, faults: Some(faults), ..Default::default() })
        .await
        .unwrap()
}

fn applied_writes(nodes: &[NodeHandle]) -> u64 {
    let mut total = 0;
    for node in nodes {
        node.handler.ownership.for_each(|r| total += r.metrics.ops(Op::Put) + r.metrics.ops(Op::Delete));
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_applies_exactly_once_under_loss_duplication_and_reordering() {
    let cluster = faulty_cluster(3).await;
    let tasks = 8u64;
    let writes_per_task = 150u64;
    let mut joins = Vec::new();
    let mut clients = Vec::new();
    let mut injected = Vec::new();
    for t in 0..tasks {
        let (client, stats) = cluster.faulty_client_with_stats(t + 1, Default::default()).await.unwrap();
        injected.extend(stats);
        clients.push(client.clone());
        joins.push(tokio::spawn(async move {
            let mut acked = 0u64;
            let mut last = std::collections::HashMap::new();
            let mut last_version = std::collections::HashMap::new();
            for i in 0..writes_per_task {
                // Each task owns its keys, so the last acknowledged write is the expected value.
                let key = format!("t{t}-k{}", i % 10);
                if i % 7 == 6 {
                    client.delete(&key).await.expect("delete succeeds despite faults");
                    last.insert(key.clone(), None);
                } else {
                    let value = format!("v{i}");
                    let version = client.put(&key, &value).await.expect("put succeeds despite faults");
                    let previous = last_version.insert(key.clone(), version);
                    assert!(previous.is_none_or(|p| version > p), "versions of a key only grow");
                    last.insert(key.clone(), Some(value));
                }
                acked += 1;
            }
            for (key, expected) in &last {
                let got = client.get(key).await.unwrap();
                assert_eq!(got.as_deref(), expected.as_deref().map(str::as_bytes), "key {key}");
            }
            let keys: Vec<&String> = last.keys().collect();
            let values = client.multi_get(&keys).await.unwrap();
            for (key, value) in keys.iter().zip(values) {
                assert_eq!(value.as_deref(), last[*key].as_deref().map(str::as_bytes));
            }
            acked
        }));
    }
    let mut acked = 0;
    for j in joins {
        acked += j.await.unwrap();
    }
    assert_eq!(acked, tasks * writes_per_task);
    assert_eq!(applied_writes(&cluster.nodes), acked, "a write was applied twice or lost");

    let retransmits: u64 = clients.iter().map(|c| ClientStats::get(&c.stats().retransmits)).sum();
    assert!(retransmits > 0, "the faults must actually bite");
    let count =
        |f: fn(&FaultStats) -> &AtomicU64| injected.iter().map(|s| f(s).load(Ordering::Relaxed)).sum::<u64>();
    assert!(count(|s| &s.lost) > 0 && count(|s| &s.duplicated) > 0 && count(|s| &s.reordered) > 0);
    let replays: u64 = cluster.nodes.iter().map(|n| n.handler.metrics.write_replays.get()).sum();
    assert!(replays > 0, "duplicated writes must have reached the nodes and been answered from records");
    cluster.shutdown().await;
}

#[tokio::test]
async fn oversized_requests_fail_fast_with_a_typed_error() {
    let cluster = faulty_cluster(1).await;
    let client = cluster.faulty_client(9).await.unwrap();
    // Past the limits (65,535-byte keys, 1 MiB values): refused before
    // anything is sent, naming the limit.
    let err = client.put(vec![b'k'; 65_536], "v").await.unwrap_err();
    assert!(matches!(err, fulva_client::ClientError::TooLarge(_)), "{err}");
    assert!(err.to_string().contains("limit is 65535"), "{err}");
    let err = client.put("k", vec![0u8; (1 << 20) + 1]).await.unwrap_err();
    assert!(matches!(err, fulva_client::ClientError::TooLarge(_)), "{err}");
    assert!(err.to_string().contains("limit is 1048576"), "{err}");
    cluster.shutdown().await;
}
