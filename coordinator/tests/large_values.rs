//! Values up to 1 MiB (and keys up to 64 KiB) on the kernel UDP data path:
//! frames larger than a datagram travel as fragments, under loss,
//! duplication and reordering, through moves, with linearizable histories;
//! what is too large is refused naming the limit, and a broken fragment set
//! is refused and freed.

use fulva_client::{ClientConfig, ClientError};
use fulva_coordinator::MoveOptions;
use fulva_kvnode::NodeConfig;
use fulva_local::cluster::{LocalCluster, LocalClusterConfig};
use fulva_local::stress::{self, StressConfig};
use fulva_proto::fragment::{fragments, FRAGMENT_HEADER_LEN};
use fulva_proto::transport::FaultConfig;
use fulva_proto::Strategy;
use std::time::Duration;

/// A value of `len` bytes that says which it is all along.
fn value(tag: u32, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).wrapping_add(tag).to_le_bytes()[1]).collect()
}

fn faults(seed: u64) -> FaultConfig {
    FaultConfig { loss: 0.05, duplicate: 0.05, reorder: 0.05, max_delay: Duration::from_millis(2), seed }
}

fn fragmented(cluster: &LocalCluster, outcome: &str) -> u64 {
    cluster
        .nodes
        .iter()
        .map(|n| n.handler.metrics.fragmented_frames.with_label_values(&[outcome]).get())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_up_to_a_mib_survive_loss_duplication_and_reordering() {
    let cluster =
        LocalCluster::start(LocalClusterConfig { faults: Some(faults(11)), ..LocalClusterConfig::default() })
            .await
            .unwrap();
    let client = cluster.faulty_client(12).await.unwrap();
    let sizes = [1 << 20, 256 << 10, 65_508, 100_000, 1_000, 0];
    for (i, &len) in sizes.iter().enumerate() {
        let key = format!("big{i}");
        client.put(&key, value(i as u32, len)).await.unwrap_or_else(|e| panic!("put {len}: {e}"));
    }
    // The largest key with the largest value.
    let long_key = vec![b'k'; 65_535];
    client.put(&long_key, value(99, 1 << 20)).await.unwrap();
    for (i, &len) in sizes.iter().enumerate() {
        let got = client.get(format!("big{i}")).await.unwrap().unwrap();
        assert!(
            got.len() == len && got[..] == value(i as u32, len)[..],
            "value {i} of {len} bytes came back wrong"
        );
    }
    assert_eq!(client.get(&long_key).await.unwrap().as_deref(), Some(&value(99, 1 << 20)[..]));
    // A multi-get whose values add up past one frame is answered key by key.
    let keys = ["big0", "big1", "big4", "absent"];
    let got = client.multi_get(&keys).await.unwrap();
    assert_eq!(got[0].as_deref(), Some(&value(0, 1 << 20)[..]));
    assert_eq!(got[1].as_deref(), Some(&value(1, 256 << 10)[..]));
    assert_eq!(got[2].as_deref(), Some(&value(4, 1_000)[..]));
    assert_eq!(got[3], None);
    // Overwrite with a smaller value, then delete.
    client.put("big0", b"small").await.unwrap();
    assert_eq!(client.get("big0").await.unwrap().as_deref(), Some(&b"small"[..]));
    assert!(client.delete("big1").await.unwrap());
    assert_eq!(client.get("big1").await.unwrap(), None);
    assert!(fragmented(&cluster, "completed") >= 4, "requests came as fragments");
    assert!(
        client.stats().retransmits.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the faults were felt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_over_the_limit_is_refused_naming_the_limit_and_nothing_is_stored() {
    let node = NodeConfig { max_value_bytes: 300_000, ..NodeConfig::loopback(0) };
    let cluster =
        LocalCluster::start(LocalClusterConfig { node, ..LocalClusterConfig::default() }).await.unwrap();
    // The client's own limit (1 MiB by default).
    let client = cluster.client().await.unwrap();
    let err = client.put("k", value(1, (1 << 20) + 1)).await.unwrap_err();
    assert!(matches!(err, ClientError::TooLarge(_)), "{err}");
    assert!(err.to_string().contains("limit is 1048576"), "{err}");
    // A client allowed 8 MiB against a node allowed 300,000 bytes: the node
    // refuses, naming its limit.
    let mut config: ClientConfig = cluster.client_config();
    config.max_value_bytes = 8 << 20;
    let generous = fulva_client::Client::connect(config).await.unwrap();
    for len in [300_001, 2 << 20] {
        let err = generous.put("k", value(2, len)).await.unwrap_err();
        assert!(err.to_string().contains("its limit: 300000"), "{len}: {err}");
    }
    assert_eq!(generous.get("k").await.unwrap(), None, "nothing stored");
    generous.put("k", value(3, 300_000)).await.unwrap();
    assert_eq!(generous.get("k").await.unwrap().map(|v| v.len()), Some(300_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_fragment_set_is_refused_and_its_memory_freed() {
    let cluster = LocalCluster::start(LocalClusterConfig::default()).await.unwrap();
    let node = &cluster.nodes[0];
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // A message claiming more than any node takes (8 MiB and headers).
    let huge = vec![0u8; 9 << 20];
    let first = fragments(&huge, 65_507).next().unwrap();
    let mut datagram = Vec::new();
    first.write_to(&mut datagram);
    socket.send_to(&datagram, node.data_addr).await.unwrap();
    // A message whose second fragment says another total length.
    let message = vec![7u8; 200_000];
    let parts: Vec<Vec<u8>> = fragments(&message, 65_507)
        .map(|f| {
            let mut d = Vec::new();
            f.write_to(&mut d);
            d
        })
        .collect();
    socket.send_to(&parts[0], node.data_addr).await.unwrap();
    let mut lying = parts[1].clone();
    lying[16..20].copy_from_slice(&300_000u32.to_le_bytes());
    socket.send_to(&lying, node.data_addr).await.unwrap();
    // A fragment cut short of its header.
    socket.send_to(&parts[2][..FRAGMENT_HEADER_LEN - 4], node.data_addr).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while fragmented(&cluster, "refused") < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fragmented(&cluster, "refused"), 3);
    assert_eq!(fragmented(&cluster, "completed"), 0, "nothing was put together");
    // The node answers as ever.
    let client = cluster.client().await.unwrap();
    client.put("after", value(5, 200_000)).await.unwrap();
    assert_eq!(client.get("after").await.unwrap().map(|v| v.len()), Some(200_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_carry_objects_larger_than_a_batch_on_both_transfers() {
    for transfer in [fulva_kvnode::MigrationTransfer::Tcp, fulva_kvnode::MigrationTransfer::Grpc] {
        let node =
            NodeConfig { migration_transfer: transfer, max_value_bytes: 8 << 20, ..NodeConfig::loopback(0) };
        let cluster = LocalCluster::start(LocalClusterConfig {
            nodes: 2,
            shards: 2,
            node,
            ..LocalClusterConfig::default()
        })
        .await
        .unwrap();
        let client = cluster.client().await.unwrap();
        // 8 MiB objects (a gRPC message is 4 MB unless told more) among small ones.
        let mut config = cluster.client_config();
        config.max_value_bytes = 8 << 20;
        let big = fulva_client::Client::connect(config).await.unwrap();
        let node_limit = 8 << 20;
        for i in 0..40u32 {
            let len = if i % 10 == 0 { node_limit } else { 3_000 };
            big.put(format!("o{i}"), value(i, len)).await.unwrap();
        }
        for shard in cluster.coordinator.map().shards.clone() {
            for strategy in [Strategy::Fulva, Strategy::Rocksteady] {
                let to = 1 - cluster
                    .coordinator
                    .map()
                    .shards
                    .iter()
                    .find(|s| s.range == shard.range)
                    .unwrap()
                    .owner;
                let options = MoveOptions { strategy, ..MoveOptions::default() };
                cluster
                    .coordinator
                    .migrate(shard.range, to, options, |_| {})
                    .await
                    .unwrap_or_else(|e| panic!("{transfer:?} {strategy:?}: {e}"));
            }
        }
        for i in 0..40u32 {
            let len = if i % 10 == 0 { node_limit } else { 3_000 };
            let got = client.get(format!("o{i}")).await.unwrap().unwrap();
            assert!(got[..] == value(i, len)[..], "{transfer:?}: o{i}");
        }
    }
}

/// A stress run with 256 KiB values on every write (the history records
/// them by digest), fulva moves only.
fn large_value_stress(dir: &std::path::Path, seed: u64) -> StressConfig {
    let mut config = StressConfig::quick(dir.join("history.jsonl"));
    config.value_bytes = 256 << 10;
    config.filler_keys = 60;
    config.clients = 4;
    config.keys = 4;
    config.moves = 12;
    config.max_duration = Duration::from_secs(25);
    config.move_rate_limit = 20_000_000;
    config.abort_share = 0.0;
    config.strategies = vec![Strategy::Fulva];
    config.read_share = 0.7;
    config.faults.loss = 0.1;
    config.seed = seed;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_of_large_values_under_load_stay_linearizable() {
    // The same runs that catch the trap below, with it off.
    for seed in 1..=3 {
        let dir = tempfile::tempdir().unwrap();
        let report = stress::run(large_value_stress(dir.path(), seed)).await.unwrap();
        assert!(report.moves >= 3, "{report:?}");
        assert!(report.operations > 100, "{report:?}");
        assert!(report.check.violations.is_empty(), "seed {seed}: {:?}", report.check);
        assert_eq!(report.lost_writes, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_fragments_numbered_by_request() {
    // With the trap, a retransmitted read can come back made of two answers
    // (a write in between): a value nobody wrote.
    let mut caught = false;
    for seed in 1..=3 {
        let dir = tempfile::tempdir().unwrap();
        let mut config = large_value_stress(dir.path(), seed);
        config.node.trap_fragment_id_from_request = true;
        if !stress::run(config).await.unwrap().check.violations.is_empty() {
            caught = true;
            break;
        }
    }
    assert!(caught, "fragments numbered by request went unnoticed in three runs");
}
