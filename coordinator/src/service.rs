//! The `ShardMapService` clients use as their control endpoint.

use crate::coordinator::Coordinator;
use fulva_proto::grpc::shard_map_service_server::ShardMapService;
use fulva_proto::grpc::{self, GetShardMapRequest, WatchShardMapRequest};
use futures::Stream;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// The coordinators of the clusters one endpoint serves, by `NAMESPACE/NAME`.
#[derive(Default)]
pub struct ClusterDirectory {
    clusters: parking_lot::RwLock<HashMap<String, Arc<Coordinator>>>,
    /// Under TLS, each cluster's certificate authority: a caller reads a
    /// cluster's map only with a certificate that cluster's authority signed.
    authorities: Option<Arc<fulva_tls::Authorities>>,
}

impl ClusterDirectory {
    /// A directory whose callers must come from the authority of the
    /// cluster they ask for, as `authorities` knows them by `NAMESPACE/NAME`.
    pub fn with_authorities(authorities: Arc<fulva_tls::Authorities>) -> ClusterDirectory {
        ClusterDirectory { clusters: Default::default(), authorities: Some(authorities) }
    }

    /// The authorities callers are checked against (none without TLS).
    pub fn authorities(&self) -> Option<&Arc<fulva_tls::Authorities>> {
        self.authorities.as_ref()
    }

    /// Serves `cluster`'s map from `coordinator`.
    pub fn insert(&self, cluster: String, coordinator: Arc<Coordinator>) {
        self.clusters.write().insert(cluster, coordinator);
    }

    /// Stops serving `cluster`.
    pub fn remove(&self, cluster: &str) {
        self.clusters.write().remove(cluster);
    }

    fn find(&self, cluster: &str, peer: Option<&fulva_tls::PeerInfo>) -> Result<Arc<Coordinator>, Status> {
        let (name, coordinator) = {
            let clusters = self.clusters.read();
            let found = if cluster.is_empty() && clusters.len() == 1 {
                clusters.iter().next()
            } else {
                clusters.get_key_value(cluster)
            };
            // The refusal names no other cluster: a caller learns only about the one it asked for.
            let (name, coordinator) = found.ok_or_else(|| {
                Status::not_found(format!(
                    "no cluster {cluster:?} here; set the client's cluster to its FulvaCluster's namespace/name"
                ))
            })?;
            (name.clone(), coordinator.clone())
        };
        if let (Some(authorities), Some(peer)) = (&self.authorities, peer) {
            if !peer.signed_by(authorities, &name) {
                tracing::warn!(%peer, cluster = %name, "map read refused: certificate from another authority");
                return Err(Status::permission_denied(format!(
                    "{peer} may not read cluster {name}'s map: its certificate is not from that cluster's authority"
                )));
            }
        }
        Ok(coordinator)
    }
}

#[derive(Clone)]
enum MapSource {
    Single(Arc<Coordinator>),
    Directory(Arc<ClusterDirectory>),
}

/// Serves shard maps over gRPC: one coordinator's, or every cluster's of
/// an operator (chosen by the request's `cluster`).
#[derive(Clone)]
pub struct ShardMapServiceImpl {
    source: MapSource,
    shutdown: CancellationToken,
}

impl ShardMapServiceImpl {
    /// A service over `coordinator`.
    pub fn new(coordinator: Arc<Coordinator>) -> ShardMapServiceImpl {
        ShardMapServiceImpl { source: MapSource::Single(coordinator), shutdown: CancellationToken::new() }
    }

    /// A service whose map watches end when `shutdown` is cancelled, so a
    /// graceful server shutdown does not wait for watching clients.
    pub fn with_shutdown(coordinator: Arc<Coordinator>, shutdown: CancellationToken) -> ShardMapServiceImpl {
        ShardMapServiceImpl { source: MapSource::Single(coordinator), shutdown }
    }

    /// A service over every cluster in `directory`.
    pub fn for_directory(
        directory: Arc<ClusterDirectory>,
        shutdown: CancellationToken,
    ) -> ShardMapServiceImpl {
        ShardMapServiceImpl { source: MapSource::Directory(directory), shutdown }
    }

    fn coordinator(
        &self,
        cluster: &str,
        peer: Option<&fulva_tls::PeerInfo>,
    ) -> Result<Arc<Coordinator>, Status> {
        match &self.source {
            MapSource::Single(c) => Ok(c.clone()),
            MapSource::Directory(d) => d.find(cluster, peer),
        }
    }
}

type MapStream = Pin<Box<dyn Stream<Item = Result<grpc::ShardMap, Status>> + Send>>;

/// Who may read the shard map: clients, admin tools and the coordinator.
const MAP_READERS: &[fulva_tls::Role] =
    &[fulva_tls::Role::Client, fulva_tls::Role::Admin, fulva_tls::Role::Coordinator];

#[tonic::async_trait]
impl ShardMapService for ShardMapServiceImpl {
    async fn get_shard_map(
        &self,
        request: Request<GetShardMapRequest>,
    ) -> Result<Response<grpc::ShardMap>, Status> {
        fulva_tls::authorize(&request, MAP_READERS)?;
        let peer = request.extensions().get::<fulva_tls::PeerInfo>().cloned();
        let coordinator = self.coordinator(&request.into_inner().cluster, peer.as_ref())?;
        Ok(Response::new(grpc::ShardMap::from(coordinator.map().as_ref())))
    }

    type WatchShardMapStream = MapStream;

    async fn watch_shard_map(
        &self,
        request: Request<WatchShardMapRequest>,
    ) -> Result<Response<Self::WatchShardMapStream>, Status> {
        fulva_tls::authorize(&request, MAP_READERS)?;
        let peer = request.extensions().get::<fulva_tls::PeerInfo>().cloned();
        let request = request.into_inner();
        let mut after = request.after_epoch;
        let mut updates = self.coordinator(&request.cluster, peer.as_ref())?.subscribe();
        let shutdown = self.shutdown.clone();
        let stream = async_stream(move |tx| async move {
            loop {
                let map = updates.borrow_and_update().clone();
                if map.epoch > after {
                    after = map.epoch;
                    if tx.send(Ok(grpc::ShardMap::from(map.as_ref()))).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = updates.changed() => if changed.is_err() { return },
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// A stream fed by a task that sends into a bounded channel.
fn async_stream<F, Fut>(body: F) -> MapStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<grpc::ShardMap, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(body(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Serves `coordinator`'s shard map and its admin service (moves and
/// splits on request, as `fulva migrate` asks) on `listener` until
/// `shutdown`: one cluster's own control endpoint (`fulva up`, `fulva
/// coordinator`, tests, benchmarks). The operator serves many clusters'
/// maps through a [`ClusterDirectory`] instead.
pub fn spawn_control_endpoint(
    listener: tokio::net::TcpListener,
    coordinator: Arc<Coordinator>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let service = fulva_proto::grpc::shard_map_service_server::ShardMapServiceServer::new(
        ShardMapServiceImpl::with_shutdown(coordinator.clone(), shutdown.clone()),
    );
    let coordinator_tls = coordinator.tls().cloned();
    let admin = fulva_proto::grpc::coordinator_admin_server::CoordinatorAdminServer::new(
        crate::admin::AdminService::new(coordinator),
    );
    let tls = coordinator_tls.map(|t| t.server.clone());
    tokio::spawn(async move {
        let incoming = fulva_tls::incoming(listener, tls);
        if let Err(err) = tonic::transport::Server::builder()
            .add_service(service)
            .add_service(admin)
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
        {
            tracing::error!(error = %err, "control endpoint failed");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MapStore, MemoryMapStore};
    use fulva_proto::{HashRange, NodeInfo, Shard, ShardMap, ShardState};

    async fn coordinator() -> Arc<Coordinator> {
        let store = Arc::new(MemoryMapStore::default());
        let addr = "127.0.0.1:1".parse().unwrap();
        let map = ShardMap {
            epoch: 1,
            nodes: vec![NodeInfo { id: 0, data_addr: addr, control_addr: addr }],
            shards: vec![Shard { range: HashRange::FULL, owner: 0, state: ShardState::Normal }],
        };
        store.compare_and_set(None, &map).await.unwrap();
        Arc::new(Coordinator::open(store).await.unwrap().unwrap())
    }

    #[tokio::test]
    async fn asking_for_an_unknown_cluster_reveals_no_other_clusters_name() {
        let directory = ClusterDirectory::default();
        directory.insert("payments/orders".into(), coordinator().await);
        directory.insert("team-b/sessions".into(), coordinator().await);
        assert!(directory.find("payments/orders", None).is_ok());
        let refused = directory.find("guess", None).err().unwrap();
        assert_eq!(refused.code(), tonic::Code::NotFound);
        assert!(refused.message().contains("\"guess\""), "{}", refused.message());
        assert!(
            !refused.message().contains("orders") && !refused.message().contains("sessions"),
            "{}",
            refused.message()
        );
    }
}
