//! A cluster on mutual TLS: every part is who its certificate says, and a
//! caller without the right certificate changes nothing. Real handshakes
//! on loopback.

use fulva_coordinator::MoveOptions;
use fulva_kvnode::{MigrationTransfer, NodeConfig};
use fulva_local::cluster::{LocalCluster, LocalClusterConfig};
use fulva_proto::grpc::coordinator_admin_client::CoordinatorAdminClient;
use fulva_proto::grpc::node_control_client::NodeControlClient;
use fulva_proto::grpc::{GetStatsRequest, PullRangeRequest, SetEpochRequest, SplitRequest};
use fulva_proto::transfer::{self, Hello, TransferError};
use fulva_proto::Strategy;
use fulva_tls::{ClientTls, Role, TlsFiles};
use std::net::SocketAddr;
use std::path::Path;
use tonic::transport::{Channel, Endpoint};

async fn tls_cluster(dir: &Path) -> LocalCluster {
    cluster_with(dir, NodeConfig::loopback(0)).await
}

async fn cluster_with(dir: &Path, node: NodeConfig) -> LocalCluster {
    let node = NodeConfig { tls_dir: Some(dir.to_path_buf()), ..node };
    LocalCluster::start(LocalClusterConfig { nodes: 3, shards: 3, node, ..LocalClusterConfig::default() })
        .await
        .unwrap()
}

/// A channel to `addr` (a server certified as `server`) showing `role`'s certificate.
async fn channel_as(dir: &Path, role: Role, addr: SocketAddr, server: Role) -> Channel {
    let tls = ClientTls::new(TlsFiles::in_dir(dir, role)).unwrap();
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap();
    fulva_tls::connect_channel(endpoint, Some(&tls), server).await.unwrap()
}

async fn epoch_of(dir: &Path, cluster: &LocalCluster, node: usize) -> u64 {
    let addr = cluster.nodes[node].control_addr;
    let mut control =
        NodeControlClient::new(channel_as(dir, Role::Coordinator, addr, Role::Node(node as u32)).await);
    control.get_stats(GetStatsRequest {}).await.unwrap().into_inner().epoch
}

#[tokio::test]
async fn clients_and_moves_work_over_mutual_tls() {
    // Every strategy, on the transfer stream and on gRPC pulls: each
    // destination pulls with its own certificate, which the source checks
    // against the move at every stage where the strategy pulls.
    for transfer in [MigrationTransfer::Tcp, MigrationTransfer::Grpc] {
        let dir = tempfile::tempdir().unwrap();
        let cluster =
            cluster_with(dir.path(), NodeConfig { migration_transfer: transfer, ..NodeConfig::loopback(0) })
                .await;
        let client = cluster.client().await.unwrap();
        for i in 0..300u32 {
            client.put(format!("k{i}").as_bytes(), format!("v{i}").as_bytes()).await.unwrap();
        }
        let shards = cluster.coordinator.map().shards.clone();
        for (shard, strategy) in
            shards.iter().zip([Strategy::Fulva, Strategy::Rocksteady, Strategy::SourceDriven])
        {
            let to = (shard.owner + 1) % 3;
            let options = MoveOptions { strategy, ..MoveOptions::default() };
            let report = cluster.coordinator.migrate(shard.range, to, options, |_| {}).await;
            let report = report.unwrap_or_else(|e| panic!("{transfer:?} {strategy:?}: {e}"));
            assert!(report.objects > 0, "{transfer:?} {strategy:?}: {report:?}");
            let owner =
                cluster.coordinator.map().shards.iter().find(|s| s.range == shard.range).unwrap().owner;
            assert_eq!(owner, to, "{transfer:?} {strategy:?}");
        }
        for i in 0..300u32 {
            let value = client.get(format!("k{i}").as_bytes()).await.unwrap();
            assert_eq!(value.as_deref(), Some(format!("v{i}").as_bytes()), "{transfer:?}");
        }
    }
}

#[tokio::test]
async fn a_node_takes_control_calls_from_the_coordinator_only() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = tls_cluster(dir.path()).await;
    let before = epoch_of(dir.path(), &cluster, 0).await;
    let addr = cluster.nodes[0].control_addr;

    // No TLS at all: the call never reaches the service.
    let plain = NodeControlClient::connect(format!("http://{addr}")).await;
    if let Ok(mut plain) = plain {
        assert!(plain.set_epoch(SetEpochRequest { epoch: u64::MAX }).await.is_err());
    }
    // ... and the node counts the refused handshake.
    let refused = &cluster.nodes[0].handler.metrics.tls_handshakes_refused;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while refused.get() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(refused.get() >= 1, "the refused handshake was not counted");

    // A certificate of the cluster's CA, but a client's: refused by name.
    for role in [Role::Client, Role::Admin, Role::Node(1)] {
        let mut control = NodeControlClient::new(channel_as(dir.path(), role, addr, Role::Node(0)).await);
        let refused = control.set_epoch(SetEpochRequest { epoch: u64::MAX }).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{role}: {refused:?}");
        assert!(refused.message().contains(&role.dns_name()), "{}", refused.message());
    }
    assert_eq!(epoch_of(dir.path(), &cluster, 0).await, before, "a refused SetEpoch changed the epoch");
}

#[tokio::test]
async fn only_the_destination_a_move_names_may_pull() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = tls_cluster(dir.path()).await;
    let stolen = pull_as_another_node(dir.path(), &cluster).await;
    assert!(stolen.is_none(), "node 2 pulled a range no move gives it");

    // The trap that skips the check: the same pull reads node 0's data,
    // so the assertion above is what stands between them.
    let dir = tempfile::tempdir().unwrap();
    let trapped =
        cluster_with(dir.path(), NodeConfig { trap_any_node_may_pull: true, ..NodeConfig::loopback(0) })
            .await;
    assert!(pull_as_another_node(dir.path(), &trapped).await.is_some(), "the trap did not let node 2 pull");
}

/// Node 2 tries to pull one of node 0's ranges (no move under way) over
/// gRPC and over the transfer stream; returns why it was let in, if it was.
async fn pull_as_another_node(dir: &Path, cluster: &LocalCluster) -> Option<&'static str> {
    let shard = *cluster.coordinator.map().shards.iter().find(|s| s.owner == 0).unwrap();
    let addr = cluster.nodes[0].control_addr;

    // gRPC pull of a range no move takes anywhere, by another node.
    let mut control = NodeControlClient::new(channel_as(dir, Role::Node(2), addr, Role::Node(0)).await);
    let pull = PullRangeRequest { range: Some(shard.range.into()), batch_bytes: 4096, ..Default::default() };
    match control.pull_range(pull).await {
        Ok(_) => return Some("gRPC"),
        Err(refused) => assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}"),
    }

    // The transfer stream, by another node claiming to be a destination.
    let tls = ClientTls::new(TlsFiles::in_dir(dir, Role::Node(2))).unwrap();
    let transfer_addr = cluster.nodes[0].transfer_addr.to_string();
    let hello = Hello {
        destination: 2,
        source: 0,
        range: shard.range,
        from: shard.range.first,
        min_version: 0,
        hot_keys: 0,
        batch_bytes: 4096,
        window: 1,
    };
    let connect = fulva_tls::connect_stream(&transfer_addr, Some(&tls), Role::Node(0));
    match transfer::open(connect, &hello).await {
        Err(TransferError::Refused(why)) => assert!(why.contains("may not pull"), "{why}"),
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => return Some("transfer stream"),
    }
    None
}

#[tokio::test]
async fn only_an_admin_changes_the_map() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = tls_cluster(dir.path()).await;
    let epoch = cluster.coordinator.map().epoch;
    let at = cluster.coordinator.map().shards[0].range.first + 1000;

    let mut as_client = CoordinatorAdminClient::new(
        channel_as(dir.path(), Role::Client, cluster.control_addr, Role::Coordinator).await,
    );
    let refused = as_client.split(SplitRequest { at }).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert_eq!(cluster.coordinator.map().epoch, epoch, "a refused split changed the map");

    let mut as_admin = CoordinatorAdminClient::new(
        channel_as(dir.path(), Role::Admin, cluster.control_addr, Role::Coordinator).await,
    );
    as_admin.split(SplitRequest { at }).await.unwrap();
    assert!(cluster.coordinator.map().epoch > epoch);
}
