//! The client over a network that loses, duplicates and reorders datagrams in
//! both directions: every acknowledged write is applied exactly once and
//! reads see the last acknowledged write.

use fulva_client::{Client, ClientConfig, ClientStats};
use fulva_coordinator::{Coordinator, MemoryMapStore, ShardMapServiceImpl};
use fulva_kvnode::{NodeConfig, NodeHandle};
use fulva_proto::grpc::shard_map_service_server::ShardMapServiceServer;
use fulva_proto::transport::{FaultConfig, FaultStats, FaultyTransport, UdpTransport};
use fulva_proto::{NodeInfo, Op};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const FAULTS: FaultConfig =
    FaultConfig { loss: 0.15, duplicate: 0.15, reorder: 0.15, max_delay: Duration::from_millis(8), seed: 0 };

struct Cluster {
    nodes: Vec<NodeHandle>,
    endpoint: String,
    shutdown: CancellationToken,
}

async fn faulty_cluster(nodes: u32) -> Cluster {
    let shutdown = CancellationToken::new();
    let mut handles = Vec::new();
    for id in 0..nodes {
        let udp = UdpTransport::bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let faulty = FaultyTransport::new(udp, FaultConfig { seed: 100 + u64::from(id), ..FAULTS });
        handles.push(
            fulva_kvnode::start_on(NodeConfig::loopback(id), vec![faulty], shutdown.clone()).await.unwrap(),
        );
    }
    let infos = handles
        .iter()
        .map(|n| NodeInfo { id: n.node_id, data_addr: n.data_addr, control_addr: n.control_addr })
        .collect();
    let coordinator =
        Arc::new(Coordinator::bootstrap(Arc::new(MemoryMapStore::default()), infos, 8, false).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let token = shutdown.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(ShardMapServiceServer::new(ShardMapServiceImpl::new(coordinator)))
            .serve_with_incoming_shutdown(tokio_stream_listener(listener), token.cancelled_owned())
            .await
            .unwrap();
    });
    Cluster { nodes: handles, endpoint, shutdown }
}

fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move { Some((l.accept().await.map(|(s, _)| s), l)) })
}

/// A client whose sockets inject `FAULTS`, and the counters of what they injected.
async fn faulty_client(
    endpoint: &str,
    seed: u64,
) -> (Client<FaultyTransport<UdpTransport>>, Vec<Arc<FaultStats>>) {
    let mut config = ClientConfig::new(endpoint);
    config.initial_timeout = Duration::from_millis(10);
    config.deadline = Duration::from_secs(30);
    let transports = (0..2)
        .map(|i| {
            let udp = UdpTransport::bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
            FaultyTransport::new(udp, FaultConfig { seed: seed * 10 + i, ..FAULTS })
        })
        .collect::<Vec<_>>();
    let stats = transports.iter().map(FaultyTransport::stats).collect();
    (Client::with_transports(config, transports).await.unwrap(), stats)
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
        let (client, stats) = faulty_client(&cluster.endpoint, t + 1).await;
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
    cluster.shutdown.cancel();
    for node in cluster.nodes {
        node.stopped().await;
    }
}

#[tokio::test]
async fn oversized_requests_fail_fast_with_a_typed_error() {
    let cluster = faulty_cluster(1).await;
    let (client, _) = faulty_client(&cluster.endpoint, 9).await;
    let err = client.put(vec![b'k'; 2_000], "v").await.unwrap_err();
    assert!(matches!(err, fulva_client::ClientError::TooLarge(_)), "{err}");
    let err = client.put("k", vec![0u8; 70_000]).await.unwrap_err();
    assert!(matches!(err, fulva_client::ClientError::TooLarge(_)), "{err}");
    cluster.shutdown.cancel();
}
