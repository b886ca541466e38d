//! 200,000 short-lived clients (each a fresh client id with one write) cost a
//! node bounded memory, and a move of the range they wrote still succeeds
//! (before the bound, the freeze's handover of every client's ack floor grew
//! past gRPC's 4 MB message limit and every move off the node failed).

use fulva_coordinator::MoveOptions;
use fulva_local::{LocalCluster, LocalClusterConfig};
use fulva_proto::frame::RequestHeader;
use fulva_proto::{Reply, Request, RequestBody, Status};
use std::time::Duration;
use tokio::net::UdpSocket;

/// A key whose hash falls in `range`.
fn key_in(range: fulva_proto::HashRange) -> String {
    (0..).map(|i| format!("key{i}")).find(|k| range.contains(fulva_proto::key_hash(k.as_bytes()))).unwrap()
}

/// Writes `key` once from each of `clients` fresh client ids (from `first`),
/// 64 in flight at a time, as raw frames to `node`; returns how many were
/// answered Ok.
async fn one_write_per_client(
    node: std::net::SocketAddr,
    key: &str,
    value: &[u8],
    epoch: u64,
    first: u64,
    clients: u64,
) -> u64 {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = vec![0u8; 70_000];
    let (mut sent, mut ok) = (0u64, 0u64);
    while sent < clients {
        let burst = 64.min(clients - sent);
        for i in 0..burst {
            let client = first + sent + i;
            let body = RequestBody::Put { key: key.as_bytes(), value };
            let header = RequestHeader {
                op: body.op() as u8,
                flags: 0,
                request_id: client,
                client_id: client,
                seq: 1,
                ack: 1,
                epoch,
            };
            let mut frame = Vec::new();
            Request { header, body }.encode(&mut frame);
            socket.send_to(&frame, node).await.unwrap();
        }
        for _ in 0..burst {
            let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf)).await
            else {
                break;
            };
            if Reply::decode(&bytes::Bytes::copy_from_slice(&buf[..n])).unwrap().status == Status::Ok {
                ok += 1;
            }
        }
        sent += burst;
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_thousand_client_ids_cost_bounded_memory_and_a_move_still_succeeds() {
    let cluster =
        LocalCluster::start(LocalClusterConfig { nodes: 2, shards: 2, ..LocalClusterConfig::default() })
            .await
            .unwrap();
    let map = cluster.coordinator.map();
    let shard = map.shards[0];
    let node = &cluster.nodes[shard.owner as usize];
    let key = key_in(shard.range);
    const CLIENTS: u64 = 200_000;
    let ok = one_write_per_client(node.data_addr, &key, b"v", map.epoch, 1_000_000, CLIENTS).await;
    assert!(ok > CLIENTS * 9 / 10, "the node took the writes ({ok} of {CLIENTS})");
    let kept = node.handler.records.expire();
    assert!(kept <= fulva_kvnode::DEFAULT_MAX_CLIENTS, "{kept} clients' records kept");
    // Dropped clients are counted (the node moves the count to its metric every 10 s).
    let shed = node.handler.records.take_shed().0
        + node.handler.metrics.client_records_shed.with_label_values(&["clients"]).get();
    assert!(shed >= ok - kept as u64, "{shed} clients dropped, counted ({kept} kept, {ok} written)");
    // The move of the range they wrote hands over bounded records and succeeds.
    let to = map.shards[1].owner;
    let report = cluster.coordinator.migrate(shard.range, to, MoveOptions::default(), |_| {}).await.unwrap();
    assert_eq!(report.destination, to);
    let client = cluster.client().await.unwrap();
    assert_eq!(client.get(&key).await.unwrap().as_deref(), Some(&b"v"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_of_many_clients_streams_in_chunks_and_arrives_whole() {
    // Room for every client: the freeze hands over 150,000 records and ack
    // floors (about 9 MB, past gRPC's usual 4 MB message), in chunks.
    let node = fulva_kvnode::NodeConfig { max_clients: 200_000, ..fulva_kvnode::NodeConfig::loopback(0) };
    let cluster = LocalCluster::start(LocalClusterConfig {
        nodes: 2,
        shards: 2,
        node,
        ..LocalClusterConfig::default()
    })
    .await
    .unwrap();
    let map = cluster.coordinator.map();
    let shard = map.shards[0];
    let source = &cluster.nodes[shard.owner as usize];
    let key = key_in(shard.range);
    one_write_per_client(source.data_addr, &key, b"w", map.epoch, 5_000_000, 150_000).await;
    let held = source.handler.records.expire();
    assert!(held > 140_000, "the source holds the clients' records: {held}");
    let to = map.shards[1].owner;
    cluster.coordinator.migrate(shard.range, to, MoveOptions::default(), |_| {}).await.unwrap();
    let destination = &cluster.nodes[to as usize];
    let imported = destination.handler.records.expire();
    assert!(imported >= held, "the destination took every client's records: {imported} of {held}");
}
