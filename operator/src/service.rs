//! The `ShardMapService` clients use as their control endpoint.

use crate::coordinator::Coordinator;
use fulva_proto::grpc::shard_map_service_server::ShardMapService;
use fulva_proto::grpc::{self, GetShardMapRequest, WatchShardMapRequest};
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// Serves the coordinator's shard map over gRPC.
#[derive(Clone)]
pub struct ShardMapServiceImpl {
    coordinator: Arc<Coordinator>,
    shutdown: CancellationToken,
}

impl ShardMapServiceImpl {
    /// A service over `coordinator`.
    pub fn new(coordinator: Arc<Coordinator>) -> ShardMapServiceImpl {
        ShardMapServiceImpl { coordinator, shutdown: CancellationToken::new() }
    }

    /// A service whose map watches end when `shutdown` is cancelled, so a
    /// graceful server shutdown does not wait for watching clients.
    pub fn with_shutdown(coordinator: Arc<Coordinator>, shutdown: CancellationToken) -> ShardMapServiceImpl {
        ShardMapServiceImpl { coordinator, shutdown }
    }
}

type MapStream = Pin<Box<dyn Stream<Item = Result<grpc::ShardMap, Status>> + Send>>;

#[tonic::async_trait]
impl ShardMapService for ShardMapServiceImpl {
    async fn get_shard_map(
        &self,
        _request: Request<GetShardMapRequest>,
    ) -> Result<Response<grpc::ShardMap>, Status> {
        Ok(Response::new(grpc::ShardMap::from(self.coordinator.map().as_ref())))
    }

    type WatchShardMapStream = MapStream;

    async fn watch_shard_map(
        &self,
        request: Request<WatchShardMapRequest>,
    ) -> Result<Response<Self::WatchShardMapStream>, Status> {
        let mut after = request.into_inner().after_epoch;
        let mut updates = self.coordinator.subscribe();
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
