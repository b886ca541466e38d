//! Nodes that restart (empty) or stay gone: their ranges are declared lost,
//! served again, empty, the map moves on, and every other key keeps its value.
//! In-process nodes; `cli/tests/node_restart.rs` does the same with processes.

use fulva_client::{Client, ClientConfig};
use fulva_coordinator::liveness::NodeWatch;
use fulva_coordinator::{spawn_control_endpoint, Coordinator, LivenessOptions, LossCause, MemoryMapStore};
use fulva_kvnode::{NodeConfig, NodeHandle};
use fulva_proto::{key_hash, HashRange, NodeId, NodeInfo, ShardState};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const KEYS: usize = 300;

/// Starts node `id`, on `at` (data, control) when given.
async fn start_node(id: NodeId, at: Option<(SocketAddr, SocketAddr)>) -> NodeHandle {
    let mut config = NodeConfig::loopback(id);
    if let Some((data_addr, control_addr)) = at {
        config.data_addr = data_addr;
        config.control_addr = control_addr;
    }
    fulva_kvnode::start(config).await.unwrap()
}

fn info(node: &NodeHandle) -> NodeInfo {
    NodeInfo { id: node.node_id, data_addr: node.data_addr, control_addr: node.control_addr }
}

struct Cluster {
    nodes: Vec<Option<NodeHandle>>,
    coordinator: Arc<Coordinator>,
    store: Arc<MemoryMapStore>,
    client: Client,
    _stop: tokio_util::sync::DropGuard,
}

async fn cluster() -> Cluster {
    let mut nodes = Vec::new();
    for id in 0..3 {
        nodes.push(Some(start_node(id, None).await));
    }
    let store = Arc::new(MemoryMapStore::default());
    let infos = nodes.iter().flatten().map(info).collect();
    let coordinator = Arc::new(Coordinator::bootstrap(store.clone(), infos, 6, false).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    spawn_control_endpoint(listener, coordinator.clone(), stop.clone());
    let mut config = ClientConfig::new(endpoint);
    config.deadline = Duration::from_secs(3);
    let client = Client::connect(config).await.unwrap();
    for i in 0..KEYS {
        client.put(format!("key{i}"), format!("value{i}")).await.unwrap();
    }
    Cluster { nodes, coordinator, store, client, _stop: stop.drop_guard() }
}

impl Cluster {
    fn ranges_of(&self, node: NodeId) -> Vec<HashRange> {
        self.coordinator.map().shards.iter().filter(|s| s.owner == node).map(|s| s.range).collect()
    }

    /// Stops node `id` and starts a new process-like node with the same id on
    /// the same addresses (as a pod restarted in place): it holds nothing.
    async fn restart(&mut self, id: NodeId) {
        let old = self.nodes[id as usize].take().unwrap();
        let at = (old.data_addr, old.control_addr);
        old.shutdown().await;
        self.nodes[id as usize] = Some(start_node(id, Some(at)).await);
    }

    /// Every key reads back: its value, or nothing when it lies in `lost`.
    async fn check_keys(&self, lost: &[HashRange]) {
        for i in 0..KEYS {
            let key = format!("key{i}");
            let read = self.client.get(&key).await.unwrap();
            if lost.iter().any(|r| r.contains(key_hash(key.as_bytes()))) {
                assert_eq!(read, None, "{key} lay in a lost range");
            } else {
                assert_eq!(read.as_deref(), Some(format!("value{i}").as_bytes()), "{key} kept its value");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_serves_its_ranges_again_empty_and_every_other_key_keeps_its_value() {
    let mut c = cluster().await;
    let options = LivenessOptions::default();
    let mut watch = NodeWatch::default();
    assert!(c.coordinator.check_nodes(&mut watch, &options).await.unwrap().is_empty());
    let before = c.coordinator.map();
    let held = c.ranges_of(1);
    assert_eq!(held.len(), 2);
    let incarnation = watch.incarnation(1).unwrap();

    c.restart(1).await;
    let losses = c.coordinator.check_nodes(&mut watch, &options).await.unwrap();
    assert_eq!(losses.len(), 1, "{losses:?}");
    let loss = &losses[0];
    assert_eq!((loss.node, loss.cause), (1, LossCause::Restarted));
    let lost: Vec<HashRange> = loss.ranges.iter().map(|&(r, _)| r).collect();
    assert_eq!(lost, held, "exactly the ranges the node held");
    assert!(loss.ranges.iter().all(|&(_, owner)| owner == 1), "a node that answers gets its ranges back");
    assert_ne!(watch.incarnation(1), Some(incarnation));
    let after = c.coordinator.map();
    assert_eq!(after.epoch, before.epoch + 1);
    assert_eq!(loss.epoch, after.epoch);
    assert_eq!(c.nodes[1].as_ref().unwrap().handler.ownership.ranges(), held);
    assert_eq!(c.coordinator.losses(), losses);

    c.check_keys(&lost).await;
    // The lost ranges take writes again.
    let key =
        (0..KEYS).map(|i| format!("key{i}")).find(|k| lost[0].contains(key_hash(k.as_bytes()))).unwrap();
    c.client.put(&key, "again").await.unwrap();
    assert_eq!(c.client.get(&key).await.unwrap().as_deref(), Some(&b"again"[..]));
    // Nothing more is lost at the next check.
    assert!(c.coordinator.check_nodes(&mut watch, &options).await.unwrap().is_empty());
    assert_eq!(c.coordinator.map().epoch, after.epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_gone_longer_than_the_timeout_has_its_ranges_spread_over_the_others() {
    let mut c = cluster().await;
    let options = LivenessOptions { gone_after: Duration::from_millis(600), ..LivenessOptions::default() };
    let mut watch = NodeWatch::default();
    assert!(c.coordinator.check_nodes(&mut watch, &options).await.unwrap().is_empty());
    let held = c.ranges_of(2);
    c.nodes[2].take().unwrap().shutdown().await;
    // Silent, but not for long enough yet.
    assert!(c.coordinator.check_nodes(&mut watch, &options).await.unwrap().is_empty());
    assert!(c.coordinator.map().shards.iter().any(|s| s.owner == 2));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let losses = c.coordinator.check_nodes(&mut watch, &options).await.unwrap();
    assert_eq!(losses.len(), 1, "{losses:?}");
    assert_eq!(losses[0].node, 2);
    assert!(matches!(losses[0].cause, LossCause::Gone { silent_secs } if silent_secs >= 0.6));
    let lost: Vec<HashRange> = losses[0].ranges.iter().map(|&(r, _)| r).collect();
    assert_eq!(lost, held);
    let map = c.coordinator.map();
    assert!(map.shards.iter().all(|s| s.owner != 2 && s.state == ShardState::Normal), "{map:?}");
    // Spread: each of the two others now owns three of the six shards.
    assert_eq!(c.ranges_of(0).len(), 3);
    assert_eq!(c.ranges_of(1).len(), 3);
    for &(range, owner) in &losses[0].ranges {
        assert!(c.nodes[owner as usize].as_ref().unwrap().handler.ownership.ranges().contains(&range));
    }
    c.check_keys(&lost).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_declares_lost_the_ranges_of_a_node_that_restarted_while_no_coordinator_watched() {
    let mut c = cluster().await;
    let held = c.ranges_of(0);
    c.restart(0).await;
    // A new coordinator on the same map (an operator restart).
    let next = Coordinator::open(c.store.clone()).await.unwrap().unwrap();
    let report = next.recover().await.unwrap();
    assert_eq!(report.lost, held);
    let losses = next.losses();
    assert_eq!(losses.iter().map(|l| l.cause).collect::<Vec<_>>(), vec![LossCause::NotHeld; held.len()]);
    assert_eq!(c.nodes[0].as_ref().unwrap().handler.ownership.ranges(), held);
    assert_eq!(next.map().epoch, c.coordinator.map().epoch + held.len() as u64);
    // A second recovery finds nothing to repair.
    assert!(next.recover().await.unwrap().is_clean());
}
