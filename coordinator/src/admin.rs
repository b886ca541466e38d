//! The `CoordinatorAdmin` gRPC service: moves, splits and drains on request
//! (`fulva migrate`, `fulva split`, `fulva drain`), next to the shard-map service.

use crate::coordinator::{Coordinator, CoordinatorError};
use crate::drain::{DrainError, DrainOptions, DrainProgress};
use crate::moves::MoveOptions;
use fulva_proto::grpc::coordinator_admin_server::CoordinatorAdmin;
use fulva_proto::grpc::{
    self, AbortMoveRequest, AbortMoveResponse, MigrateProgress, MigrateRequest, SetMoveRateRequest,
    SetMoveRateResponse, SplitRequest,
};
use fulva_proto::HashRange;
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};

/// Serves moves and splits of a coordinator.
#[derive(Clone)]
pub struct AdminService {
    coordinator: Arc<Coordinator>,
}

impl AdminService {
    /// A service over `coordinator`.
    pub fn new(coordinator: Arc<Coordinator>) -> AdminService {
        AdminService { coordinator }
    }
}

impl From<CoordinatorError> for Status {
    fn from(err: CoordinatorError) -> Status {
        use CoordinatorError as E;
        match &err {
            E::Aborted { .. } | E::EpochConflict { .. } => Status::aborted(err.to_string()),
            E::InvalidMap(_)
            | E::NoSuchMove { .. }
            | E::UnknownNode { .. }
            | E::UnknownDestination { .. }
            | E::NoShard { .. }
            | E::BadSplit { .. }
            | E::Moving { .. }
            | E::NotAShard { .. }
            | E::AlreadyThere { .. }
            | E::NodeBusy { .. }
            | E::PullFailed { .. }
            | E::RelayTruncated { .. }
            | E::AbortRequested
            | E::AlreadyCommitted { .. }
            | E::RollbackFailed { .. }
            | E::Recovery(_) => Status::failed_precondition(err.to_string()),
            E::Node(_) | E::NodeLost { .. } => Status::unavailable(err.to_string()),
            E::Stalled { .. } => Status::deadline_exceeded(err.to_string()),
            E::Store(_) | E::Bootstrap(_) => Status::internal(err.to_string()),
        }
    }
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<MigrateProgress, Status>> + Send>>;
type DrainStream = Pin<Box<dyn Stream<Item = Result<grpc::DrainProgress, Status>> + Send>>;

impl From<DrainError> for Status {
    fn from(err: DrainError) -> Status {
        match err {
            DrainError::Coordinator(err) => Status::from(err),
            DrainError::UnknownNode { .. } => Status::not_found(err.to_string()),
            DrainError::MoveFailed { .. } => Status::aborted(err.to_string()),
            DrainError::NoReceiver { .. }
            | DrainError::NoCapacity { .. }
            | DrainError::NotConverging { .. } => Status::failed_precondition(err.to_string()),
        }
    }
}

fn drain_progress(p: &DrainProgress, started: Instant) -> grpc::DrainProgress {
    grpc::DrainProgress {
        node: p.node,
        moved: p.moved as u32,
        total: p.total as u32,
        bytes: p.bytes,
        last_range: p.last.map(|(r, _)| r.into()),
        last_destination: p.last.map_or(0, |(_, to)| to),
        finished: false,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Who may change the map: admin tools only.
const ADMINS: &[fulva_tls::Role] = &[fulva_tls::Role::Admin];

#[tonic::async_trait]
impl CoordinatorAdmin for AdminService {
    type MigrateStream = ProgressStream;
    type DrainStream = DrainStream;

    async fn drain(
        &self,
        request: Request<grpc::DrainRequest>,
    ) -> Result<Response<Self::DrainStream>, Status> {
        fulva_tls::authorize(&request, ADMINS)?;
        let req = request.into_inner();
        let strategy = grpc::Strategy::try_from(req.strategy)
            .map_err(|_| Status::invalid_argument("unknown strategy"))?;
        let options = DrainOptions {
            moves: MoveOptions {
                strategy: strategy.into(),
                rate_limit_bytes_per_sec: req.rate_limit_bytes_per_sec,
                ..MoveOptions::default()
            },
            concurrency: req.concurrency.max(1) as usize,
            max_node_bytes: req.max_node_bytes,
            excluded: req.excluded,
        };
        // Refused up front (unknown node, no room) as the call's own error.
        self.coordinator.check_drain_capacity(req.node, &options).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let coordinator = self.coordinator.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let progress_tx = tx.clone();
            let result = coordinator
                .drain(req.node, &options, |p| {
                    let _ = progress_tx.try_send(Ok(drain_progress(p, started)));
                })
                .await;
            let last = result.map_err(Status::from).map(|report| grpc::DrainProgress {
                node: report.node,
                moved: report.moves.len() as u32,
                total: report.moves.len() as u32,
                bytes: report.bytes,
                finished: true,
                seconds: report.duration.as_secs_f64(),
                ..Default::default()
            });
            let _ = tx.send(last).await;
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn migrate(
        &self,
        request: Request<MigrateRequest>,
    ) -> Result<Response<Self::MigrateStream>, Status> {
        fulva_tls::authorize(&request, ADMINS)?;
        let req = request.into_inner();
        let range = HashRange::try_from(req.range).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let strategy = grpc::Strategy::try_from(req.strategy)
            .map_err(|_| Status::invalid_argument("unknown strategy"))?;
        let options = MoveOptions {
            strategy: strategy.into(),
            rate_limit_bytes_per_sec: req.rate_limit_bytes_per_sec,
            hot_keys: req.hot_keys.unwrap_or(crate::DEFAULT_HOT_KEYS),
            ..MoveOptions::default()
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let coordinator = self.coordinator.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut last_sent = Instant::now() - std::time::Duration::from_secs(1);
            let progress_tx = tx.clone();
            let result = coordinator
                .migrate(range, req.destination, options, |status| {
                    // About ten updates a second is plenty for a progress bar.
                    if last_sent.elapsed().as_millis() >= 100 {
                        last_sent = Instant::now();
                        let _ = progress_tx.try_send(Ok(MigrateProgress {
                            status: Some(status.clone()),
                            finished: false,
                            source: 0,
                            epoch: 0,
                            seconds: started.elapsed().as_secs_f64(),
                        }));
                    }
                })
                .await;
            let last = match result {
                Ok(report) => Ok(MigrateProgress {
                    status: Some(grpc::MigrationStatusResponse {
                        done: true,
                        objects_applied: report.objects,
                        bytes_applied: report.bytes,
                        objects_total: report.objects,
                        bytes_total: report.bytes,
                        elapsed_seconds: report.duration.as_secs_f64(),
                        ..Default::default()
                    }),
                    finished: true,
                    source: report.source,
                    epoch: report.epoch,
                    seconds: report.duration.as_secs_f64(),
                }),
                Err(err) => Err(Status::from(err)),
            };
            let _ = tx.send(last).await;
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn abort_move(
        &self,
        request: Request<AbortMoveRequest>,
    ) -> Result<Response<AbortMoveResponse>, Status> {
        fulva_tls::authorize(&request, ADMINS)?;
        let range = HashRange::try_from(request.into_inner().range)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.coordinator.abort_move(range)?;
        Ok(Response::new(AbortMoveResponse {}))
    }

    async fn set_move_rate(
        &self,
        request: Request<SetMoveRateRequest>,
    ) -> Result<Response<SetMoveRateResponse>, Status> {
        fulva_tls::authorize(&request, ADMINS)?;
        let req = request.into_inner();
        let range = HashRange::try_from(req.range).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.coordinator.set_move_rate(range, req.rate_limit_bytes_per_sec).await?;
        Ok(Response::new(SetMoveRateResponse {}))
    }

    async fn split(&self, request: Request<SplitRequest>) -> Result<Response<grpc::ShardMap>, Status> {
        fulva_tls::authorize(&request, ADMINS)?;
        let map = self.coordinator.split(request.into_inner().at).await?;
        Ok(Response::new(grpc::ShardMap::from(map.as_ref())))
    }
}
