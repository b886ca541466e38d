//! The operator's certificates at work, with real handshakes on loopback:
//! kvnodes load their files laid out as the node Secret mounts them, the
//! operator drives them with the coordinator identity it holds in memory,
//! and its one control endpoint serves each cluster's map to that
//! cluster's clients only.

use fulva_client::{Client, ClientConfig, ClientTlsSetting};
use fulva_coordinator::service::{ClusterDirectory, ShardMapServiceImpl};
use fulva_coordinator::{Coordinator, MapStore, MemoryMapStore, MoveOptions};
use fulva_kvnode::{NodeConfig, NodeHandle};
use fulva_operator::controller::certs::{self, OperatorTls};
use fulva_operator::controller::runtime::ClusterKey;
use fulva_proto::grpc::shard_map_service_client::ShardMapServiceClient;
use fulva_proto::grpc::shard_map_service_server::ShardMapServiceServer;
use fulva_proto::grpc::GetShardMapRequest;
use fulva_proto::NodeInfo;
use fulva_tls::{Authority, ClientTls, Role, TlsFiles, AUTHORITY_VALIDITY};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

/// Writes a Secret's data as the kubelet mounts it: one file per key.
fn mount(dir: &Path, data: &BTreeMap<String, String>) {
    std::fs::create_dir_all(dir).unwrap();
    for (file, text) in data {
        std::fs::write(dir.join(file), text).unwrap();
    }
}

struct TestCluster {
    key: ClusterKey,
    nodes: Vec<NodeHandle>,
    coordinator: Arc<Coordinator>,
    /// The client Secret, mounted.
    client_dir: tempfile::TempDir,
    _node_dir: tempfile::TempDir,
}

/// A two-node cluster `default/NAME` with certificates as the operator
/// issues them, registered in `directory`.
async fn cluster(name: &str, tls: &OperatorTls, directory: &ClusterDirectory) -> TestCluster {
    let key = ClusterKey { namespace: "default".into(), name: name.into() };
    let authority = Authority::generate(&key.to_string(), AUTHORITY_VALIDITY).unwrap();
    let node_roles = [Role::Node(0), Role::Node(1)];
    let (node_data, _) =
        certs::identities(&authority, authority.cert_pem(), &node_roles, &BTreeMap::new()).unwrap();
    let (client_data, _) =
        certs::identities(&authority, &tls.bundle(&authority), &[Role::Client], &BTreeMap::new()).unwrap();
    let (node_dir, client_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    mount(node_dir.path(), &node_data);
    mount(client_dir.path(), &client_data);

    let mut nodes = Vec::new();
    for id in 0..2 {
        let config = NodeConfig { tls_dir: Some(node_dir.path().to_path_buf()), ..NodeConfig::loopback(id) };
        nodes.push(fulva_kvnode::start(config).await.unwrap());
    }
    let infos = nodes
        .iter()
        .map(|n| NodeInfo { id: n.node_id, data_addr: n.data_addr, control_addr: n.control_addr })
        .collect();
    let identity = tls.trust(&key, &authority).unwrap();
    let store: Arc<dyn MapStore> = Arc::new(MemoryMapStore::default());
    let coordinator =
        Arc::new(Coordinator::bootstrap_with_tls(store, infos, 4, false, Some(identity)).await.unwrap());
    directory.insert(key.to_string(), coordinator.clone());
    TestCluster { key, nodes, coordinator, client_dir, _node_dir: node_dir }
}

#[tokio::test]
async fn the_operators_certificates_run_a_cluster_and_keep_clusters_apart() {
    let operator_ca = Authority::generate("operator", AUTHORITY_VALIDITY).unwrap();
    let tls = OperatorTls::new(operator_ca.cert_pem().to_string());
    let directory = Arc::new(ClusterDirectory::with_authorities(tls.authorities().clone()));
    let (server, _) = tls.control_server(&operator_ca).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let service =
        ShardMapServiceServer::new(ShardMapServiceImpl::for_directory(directory.clone(), stop.clone()));
    let endpoint = tokio::spawn({
        let stop = stop.clone();
        let incoming = fulva_tls::incoming(listener, Some(server.clone()));
        async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
                .unwrap()
        }
    });

    let a = cluster("a", &tls, &directory).await;
    let b = cluster("b", &tls, &directory).await;

    // A client with cluster a's Secret reads a's map through the shared
    // endpoint and writes and reads over the data path.
    let mut config = ClientConfig::new(format!("http://{addr}"));
    config.cluster = a.key.to_string();
    config.tls = Some(ClientTlsSetting::Files(TlsFiles::in_dir(a.client_dir.path(), Role::Client)));
    let client = Client::connect(config).await.unwrap();
    for i in 0..200u32 {
        client.put(format!("k{i}").as_bytes(), format!("v{i}").as_bytes()).await.unwrap();
    }

    // The operator's in-memory identity drives a move between a's nodes,
    // which check it (control calls) and each other (the pull).
    let shard = a.coordinator.map().shards[0];
    let to = (shard.owner + 1) % 2;
    let report = a.coordinator.migrate(shard.range, to, MoveOptions::default(), |_| {}).await.unwrap();
    assert!(report.objects > 0, "{report:?}");
    for i in 0..200u32 {
        let value = client.get(format!("k{i}").as_bytes()).await.unwrap();
        assert_eq!(value.as_deref(), Some(format!("v{i}").as_bytes()));
    }

    // The same client asking for cluster b's map is refused by authority.
    let a_tls = ClientTls::new(TlsFiles::in_dir(a.client_dir.path(), Role::Client)).unwrap();
    let channel = fulva_tls::connect_channel(
        Endpoint::from_shared(format!("http://{addr}")).unwrap(),
        Some(&a_tls),
        Role::Coordinator,
    )
    .await
    .unwrap();
    let mut maps = ShardMapServiceClient::new(channel);
    let refused = maps.get_shard_map(GetShardMapRequest { cluster: b.key.to_string() }).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let own = maps.get_shard_map(GetShardMapRequest { cluster: a.key.to_string() }).await.unwrap();
    assert_eq!(own.into_inner().epoch, a.coordinator.map().epoch);

    // a's coordinator and b's nodes have different authorities: no
    // handshake between them succeeds.
    let node_b = b.nodes[0].control_addr;
    let a_coordinator = a.coordinator.tls().unwrap().client.clone();
    let crossed = fulva_tls::connect_stream(&node_b.to_string(), Some(&a_coordinator), Role::Node(0)).await;
    assert!(crossed.is_err(), "a's coordinator reached b's node");

    // A caller from no cluster's authority never gets past the handshake.
    let stranger = Authority::generate("stranger", AUTHORITY_VALIDITY).unwrap();
    let issued = stranger.issue(Role::Client, certs::CERT_VALIDITY).unwrap();
    let stranger_tls =
        ClientTls::from_pem(&format!("{}{}", stranger.cert_pem(), operator_ca.cert_pem()), &issued).unwrap();
    let refused_before = server.refused();
    let channel = fulva_tls::connect_channel(
        Endpoint::from_shared(format!("http://{addr}")).unwrap(),
        Some(&stranger_tls),
        Role::Coordinator,
    )
    .await;
    if let Ok(channel) = channel {
        let mut maps = ShardMapServiceClient::new(channel);
        assert!(maps.get_shard_map(GetShardMapRequest { cluster: a.key.to_string() }).await.is_err());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while server.refused() == refused_before && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(server.refused() > refused_before, "the stranger's handshake was not refused");

    stop.cancel();
    let _ = endpoint.await;
}
