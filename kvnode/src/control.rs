//! The node's gRPC control service (called by the coordinator/operator).

use crate::handler::Handler;
use crate::ownership::IncomingMove;
use crate::ownership::{OwnershipError, RangeRole};
use crate::records::{Completion, MovedRecord};
use fulva_proto::grpc::node_control_server::NodeControl;
use fulva_proto::grpc::{
    self, AssignRangeRequest, AssignRangeResponse, BeginCopyRequest, BeginCopyResponse, ClientAck,
    CompletionRecord, DropRangeRequest, DropRangeResponse, FinishMigrationRequest, FinishMigrationResponse,
    FreezeRangeRequest, FreezeRangeResponse, GetStatsRequest, MigrationStatusRequest,
    MigrationStatusResponse, NodeStats, PrepareMigrationRequest, PrepareMigrationResponse, PullKeysRequest,
    PullKeysResponse, PullRangeRequest, PushBatchRequest, PushBatchResponse, RangeBatch, RangeStats,
    SetEpochRequest, SetEpochResponse, SetMigrationRateRequest, SetMigrationRateResponse, SplitRangeRequest,
    SplitRangeResponse, StartMigrationRequest, StartMigrationResponse, TransferEndpointRequest,
    TransferEndpointResponse, UnfreezeRangeRequest, UnfreezeRangeResponse,
};
use fulva_proto::transfer::{self, Hello};
use fulva_proto::{HashRange, Op, ShardMapError, Status as FrameStatus};
use fulva_tls::Role;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Errors of the control service, mapped to gRPC codes in one place.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Ownership table refused the change.
    #[error(transparent)]
    Ownership(#[from] OwnershipError),
    /// A message field is missing or invalid.
    #[error(transparent)]
    Invalid(#[from] ShardMapError),
    /// No move of this range is coming in here.
    #[error("no move of range {0} is coming into this node")]
    NoMove(HashRange),
}

fn moved_records(records: &[CompletionRecord]) -> Vec<MovedRecord> {
    records
        .iter()
        .map(|r| MovedRecord {
            client: r.client_id,
            seq: r.seq,
            completion: Completion {
                status: FrameStatus::from_code(r.status as u8).unwrap_or(FrameStatus::Ok),
                version: r.version,
            },
            hash: r.hash,
            delete: r.delete,
        })
        .collect()
}

/// Runs a whole-range store scan on a blocking thread, so the data-path
/// workers sharing the runtime keep serving meanwhile.
async fn off_data_path<R: Send + 'static>(
    handler: &Arc<Handler>,
    scan: impl FnOnce(&Handler) -> R + Send + 'static,
) -> R {
    let handler = handler.clone();
    tokio::task::spawn_blocking(move || scan(&handler)).await.expect("store scans do not panic")
}

type BatchStream = Pin<Box<dyn futures_core::Stream<Item = Result<RangeBatch, Status>> + Send>>;
type FreezeStream = Pin<Box<dyn futures_core::Stream<Item = Result<FreezeRangeResponse, Status>> + Send>>;

impl From<ControlError> for Status {
    fn from(err: ControlError) -> Status {
        match &err {
            ControlError::Ownership(OwnershipError::Overlap { .. }) => {
                Status::already_exists(err.to_string())
            }
            ControlError::Ownership(OwnershipError::NotServed(_)) => Status::not_found(err.to_string()),
            ControlError::Ownership(
                OwnershipError::StaleEpoch { .. } | OwnershipError::WrongState { .. },
            ) => Status::failed_precondition(err.to_string()),
            ControlError::NoMove(_) => Status::not_found(err.to_string()),
            ControlError::Invalid(_) => Status::invalid_argument(err.to_string()),
        }
    }
}

/// Implements `fulva.v1.NodeControl` over a node's [`Handler`].
#[derive(Clone)]
pub struct ControlService {
    handler: Arc<Handler>,
    transfer_port: u16,
}

impl ControlService {
    /// A service acting on `handler`, naming `transfer_port` as the node's
    /// transfer stream.
    pub fn new(handler: Arc<Handler>, transfer_port: u16) -> ControlService {
        ControlService { handler, transfer_port }
    }

    /// Lets the coordinator through, nobody else (without TLS, everybody).
    #[allow(clippy::result_large_err)]
    fn allow<T>(&self, request: &Request<T>) -> Result<(), Status> {
        fulva_tls::authorize(request, &[Role::Coordinator])
    }

    /// Lets through the coordinator and the destination the move of
    /// `range` names.
    #[allow(clippy::result_large_err)]
    fn allow_pull<T>(&self, request: &Request<T>, range: &HashRange) -> Result<(), Status> {
        let Some(peer) = request.extensions().get::<fulva_tls::PeerInfo>() else { return Ok(()) };
        match crate::migration::unauthorized(&self.handler, peer, range) {
            None => Ok(()),
            Some(why) => Err(Status::permission_denied(why)),
        }
    }
}

#[tonic::async_trait]
impl NodeControl for ControlService {
    #[tracing::instrument(skip_all, fields(node = self.handler.node_id))]
    async fn assign_range(
        &self,
        request: Request<AssignRangeRequest>,
    ) -> Result<Response<AssignRangeResponse>, Status> {
        self.allow(&request)?;
        let req = request.into_inner();
        let range = HashRange::try_from(req.range).map_err(ControlError::from)?;
        let h = &self.handler;
        h.store.raise_version_floor(req.version_floor);
        h.ownership.assign(range, req.epoch, &h.metrics).map_err(ControlError::from)?;
        h.metrics.epoch.set(h.ownership.epoch() as i64);
        tracing::info!(%range, epoch = req.epoch, "range assigned");
        Ok(Response::new(AssignRangeResponse { epoch: h.ownership.epoch() }))
    }

    #[tracing::instrument(skip_all, fields(node = self.handler.node_id))]
    async fn push_batch(
        &self,
        request: Request<PushBatchRequest>,
    ) -> Result<Response<PushBatchResponse>, Status> {
        self.allow(&request)?;
        let req = request.into_inner();
        let range = HashRange::try_from(req.range).map_err(ControlError::from)?;
        let h = &self.handler;
        let mv = h.ownership.incoming(range).ok_or(ControlError::NoMove(range))?;
        let batch = req.batch.ok_or_else(|| Status::invalid_argument("push without a batch"))?;
        crate::migration::apply_batch(h, &mv, &batch).await;
        if batch.last {
            tracing::info!(%range, "range moved in through the coordinator");
        }
        Ok(Response::new(PushBatchResponse { cursor: crate::migration::cursor_of(&mv) }))
    }

    #[tracing::instrument(skip_all, fields(node = self.handler.node_id))]
    async fn drop_range(
        &self,
        request: Request<DropRangeRequest>,
    ) -> Result<Response<DropRangeResponse>, Status> {
        self.allow(&request)?;
        let req = request.into_inner();
        let range = HashRange::try_from(req.range).map_err(ControlError::from)?;
        let h = &self.handler;
        let new_owner = req.has_new_owner.then_some(req.new_owner);
        h.ownership.drop_range(range, req.epoch, new_owner, &h.metrics).map_err(ControlError::from)?;
        let removed = off_data_path(h, move |h| h.store.remove_range(range)).await;
        h.metrics.epoch.set(h.ownership.epoch() as i64);
        tracing::info!(%range, epoch = req.epoch, objects = -removed.objects, "range dropped");
        Ok(Response::new(DropRangeResponse {
            epoch: h.ownership.epoch(),
            objects_dropped: (-removed.objects) as u64,
        }))
    }

    #[tracing::instrument(skip_all, fields(node = self.handler.node_id))]
    async fn split_range(
        &self,
        request: Request<SplitRangeRequest>,
    ) -> Result<Response<SplitRangeResponse>, Status> {
        self.allow(&request)?;
        let req = request.into_inner();
        let range = HashRange::try_from(req.range).map_err(ControlError::from)?;
        let h = &self.handler;
        h.ownership.split(range, req.at, req.epoch, &h.metrics).map_err(ControlError::from)?;
        let (low, high) = range.split_at(req.at).map_err(|e| Status::invalid_argument(e.to_string()))?;
        off_data_path(h, move |h| {
            h.refresh_range_gauges_of(low);
            h.refresh_range_gauges_of(high);
        })
        .await;
        tracing::info!(%range, at = req.at, "range split");
        Ok(Response::new(SplitRangeResponse {}))
    }

    #[tracing::instrument(skip_all, fields(node = self.handler.node_id))]
    async fn prepare_migration(
        &self,
        request: Request<PrepareMigrationRequest>,
    ) -> Result<Response<PrepareMigrationResponse>, Status> {
        self.allow(&request)?;
        let req = request.into_inner();
        let range = HashRange::try_from(req.range).map_err(ControlError::from)?;
        let strategy = grpc::Strategy::try_from(req.strategy).unwrap_or(grpc::Strategy::Fulva).into();
        let mv = Arc::new(IncomingMove::new(range, req.source, req.source_control_addr, strategy));
        let h = &self.handler;
        if req.reclaim {
            h.ownership.reclaim(mv, req.epoch).map_err(ControlError::from)?;
        } else if h.ownership.incoming(range).is_none() {
            h.ownership.prepare_incoming(mv, req.epoch, &h.metrics).map_err(ControlError::from)?;
        }
        tracing::info!(%range, source = req.source, reclaim = req.reclaim, "move prepared");
        Ok(Response::new(PrepareMigrationResponse {}))
    }

    type FreezeRangeStream = FreezeStream;

    #[tracing::instrument(skip_all, fields(node = self.handler.node_id))]
    async fn freeze_range(
        &self,
        request: Request<FreezeRangeRequest>,
    ) -> Result<Response<FreezeStream>, Status> {
        self.allow(&request)?;
        let req = request.into_inner();
        let range = HashRange::try_from(req.range).map_err(ControlError::from)?;
        let h = &self.handler;
        // Returns once no write is in flight in the range. Trap 2 avoided: the
        // floor is the node's version counter, above every version it gave or
        // applied (overwrites and deletes included), read while no write runs.
        let handover = h
            .ownership
            .freeze(range, req.destination, req.epoch, req.lock, || h.store.version_ceiling())
            .map_err(ControlError::from)?;
        let (records, acks) = h.records.export(range);
        tracing::info!(%range, destination = req.destination, floor = handover.version_ceiling, records = records.len(), acks = acks.len(), "range frozen");
        let frozen = FreezeRangeResponse {
            max_version: handover.version_ceiling,
            records: records
                .iter()
                .map(|r| CompletionRecord {
                    client_id: r.client,
                    seq: r.seq,
                    status: r.completion.status as u32,
                    version: r.completion.version,
                    hash: r.hash,
                    delete: r.delete,
                })
                .collect(),
            acks: acks.into_iter().map(|(client_id, ack)| ClientAck { client_id, ack }).collect(),
            objects: handover.objects,
            bytes: handover.bytes,
        };
        let messages = fulva_proto::handover::split(frozen);
        Ok(Response::new(Box::pin(tokio_stream::iter(messages.into_iter().map(Ok)))))
    }

    #[tracing::instrument(skip_all, fields(node = self.handler.node_id))]
    async fn start_migration(
        &self,
        request: Request<tonic::Streaming<StartMigrationRequest>>,
    ) -> Result<Response<StartMigrationResponse>, Status> {
        self.allow(&request)?;
        let mut messages = request.into_inner();
        let mut parts = Vec::new();
        while let Some(part) = messages.message().await? {
            parts.push(part);
        }
        let req = fulva_proto::handover::join(parts)
            .ok_or_else(|| Status::invalid_argument("StartMigration: the stream carried no message"))?;
        let range = HashRange::try_from(req.range).map_err(ControlError::from)?;
        let h = &self.handler;
        let mv = h.ownership.incoming(range).ok_or(ControlError::NoMove(range))?;
        // Records and the floor come before serving, so no write here can
        // repeat one the source applied or get a version below the source's.
        h.records.import(
            &moved_records(&req.records),
            &req.acks.iter().map(|a| (a.client_id, a.ack)).collect::<Vec<_>>(),
        );
        h.store.raise_version_floor(req.version_floor);
        h.ownership.observe_epoch(req.epoch);
        if mv.begin_pass(crate::ownership::PassStart {
            objects_total: req.objects_total,
            bytes_total: req.bytes_total,
            rate_limit: req.rate_limit_bytes_per_sec,
            serve: req.serve,
            final_pass: req.final_pass,
            min_version: req.min_version,
            hot_keys: req.hot_keys,
        }) {
            if mv.strategy != fulva_proto::Strategy::SourceDriven && req.serve {
                tokio::spawn(crate::migration::serve_fetches(h.clone(), mv.clone()));
            }
            tokio::spawn(crate::migration::pull(h.clone(), mv));
            tracing::info!(%range, floor = req.version_floor, serve = req.serve, min_version = req.min_version, "move pass started");
        }
        Ok(Response::new(StartMigrationResponse {}))
    }

    #[tracing::instrument(skip_all, fields(node = self.handler.node_id))]
    async fn begin_copy(
        &self,
        request: Request<BeginCopyRequest>,
    ) -> Result<Response<BeginCopyResponse>, Status> {
        self.allow(&request)?;
        let req = request.into_inner();
        let range = HashRange::try_from(req.range).map_err(ControlError::from)?;
        let h = &self.handler;
        // Read under the ownership lock: every write after the switch gets a
        // version above it, so the final pass cannot miss one.
        let handover = h
            .ownership
            .begin_copy(range, req.destination, req.epoch, || h.store.version_ceiling())
            .map_err(ControlError::from)?;
        tracing::info!(%range, destination = req.destination, "copy begun");
        Ok(Response::new(BeginCopyResponse {
            copy_from_version: handover.version_ceiling,
            objects: handover.objects,
            bytes: handover.bytes,
        }))
    }

    #[tracing::instrument(skip_all, fields(node = self.handler.node_id))]
    async fn unfreeze_range(
        &self,
        request: Request<UnfreezeRangeRequest>,
    ) -> Result<Response<UnfreezeRangeResponse>, Status> {
        self.allow(&request)?;
        let req = request.into_inner();
        let range = HashRange::try_from(req.range).map_err(ControlError::from)?;
        let h = &self.handler;
        h.ownership.unfreeze(range, req.epoch).map_err(ControlError::from)?;
        // A source-driven copy kept tombstones for its final pass; nothing needs them now.
        let purged = off_data_path(h, move |h| {
            let purged = h.store.purge_tombstones(range);
            h.refresh_range_gauges_of(range);
            purged
        })
        .await;
        tracing::info!(%range, tombstones = -purged.objects, "move cancelled; range served again");
        Ok(Response::new(UnfreezeRangeResponse { tombstones_purged: (-purged.objects) as u64 }))
    }

    async fn pull_keys(
        &self,
        request: Request<PullKeysRequest>,
    ) -> Result<Response<PullKeysResponse>, Status> {
        let range = HashRange::try_from(request.get_ref().range).map_err(ControlError::from)?;
        self.allow_pull(&request, &range)?;
        let req = request.into_inner();
        let store = &self.handler.store;
        let objects = req
            .keys
            .iter()
            .filter_map(|key| {
                let hash = fulva_proto::key_hash(key);
                let object = range.contains(hash).then(|| store.get(hash, key)).flatten()?;
                Some(crate::migration::migrated_object((hash, bytes::Bytes::copy_from_slice(key), object)))
            })
            .collect();
        Ok(Response::new(PullKeysResponse { objects }))
    }

    async fn migration_status(
        &self,
        request: Request<MigrationStatusRequest>,
    ) -> Result<Response<MigrationStatusResponse>, Status> {
        self.allow(&request)?;
        let range = HashRange::try_from(request.into_inner().range).map_err(ControlError::from)?;
        let mv = self.handler.ownership.incoming(range).ok_or(ControlError::NoMove(range))?;
        Ok(Response::new(mv.status()))
    }

    async fn set_migration_rate(
        &self,
        request: Request<SetMigrationRateRequest>,
    ) -> Result<Response<SetMigrationRateResponse>, Status> {
        self.allow(&request)?;
        let req = request.into_inner();
        let range = HashRange::try_from(req.range).map_err(ControlError::from)?;
        let mv = self.handler.ownership.incoming(range).ok_or(ControlError::NoMove(range))?;
        mv.set_rate_limit(req.rate_limit_bytes_per_sec);
        Ok(Response::new(SetMigrationRateResponse {}))
    }

    #[tracing::instrument(skip_all, fields(node = self.handler.node_id))]
    async fn finish_migration(
        &self,
        request: Request<FinishMigrationRequest>,
    ) -> Result<Response<FinishMigrationResponse>, Status> {
        self.allow(&request)?;
        let req = request.into_inner();
        let range = HashRange::try_from(req.range).map_err(ControlError::from)?;
        let h = &self.handler;
        if req.abandon_source {
            tracing::warn!(%range, "the move's source is gone: serving what arrived");
            h.ownership.abandon_source(range, req.epoch).map_err(ControlError::from)?;
        } else {
            h.ownership.finish_incoming(range, req.epoch).map_err(ControlError::from)?;
        }
        // The source has dropped its copy: no old version can arrive any more.
        let purged = off_data_path(h, move |h| {
            let purged = h.store.purge_tombstones(range);
            h.refresh_range_gauges_of(range);
            purged
        })
        .await;
        tracing::info!(%range, tombstones = -purged.objects, "move finished");
        Ok(Response::new(FinishMigrationResponse { tombstones_purged: (-purged.objects) as u64 }))
    }

    type PullRangeStream = BatchStream;

    async fn pull_range(
        &self,
        request: Request<PullRangeRequest>,
    ) -> Result<Response<Self::PullRangeStream>, Status> {
        let range = HashRange::try_from(request.get_ref().range).map_err(ControlError::from)?;
        self.allow_pull(&request, &range)?;
        let req = request.into_inner();
        let handler = self.handler.clone();
        if !handler.ownership.ranges().iter().any(|r| r.covers(&range)) {
            return Err(ControlError::Ownership(OwnershipError::NotServed(range)).into());
        }
        let pull = Hello {
            destination: transfer::RELAY,
            source: handler.node_id,
            range,
            from: req.from_hash,
            min_version: req.min_version,
            hot_keys: req.hot_keys,
            batch_bytes: req.batch_bytes,
            window: 1,
        };
        let batches = crate::migration::range_batches(handler, &pull);
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(batches))))
    }

    async fn transfer_endpoint(
        &self,
        _request: Request<TransferEndpointRequest>,
    ) -> Result<Response<TransferEndpointResponse>, Status> {
        // Any part the CA signed may learn the port; the stream checks who pulls.
        Ok(Response::new(TransferEndpointResponse { port: u32::from(self.transfer_port) }))
    }

    async fn set_epoch(
        &self,
        request: Request<SetEpochRequest>,
    ) -> Result<Response<SetEpochResponse>, Status> {
        self.allow(&request)?;
        let epoch = self.handler.ownership.observe_epoch(request.into_inner().epoch);
        self.handler.metrics.epoch.set(epoch as i64);
        Ok(Response::new(SetEpochResponse { epoch }))
    }

    async fn get_stats(&self, request: Request<GetStatsRequest>) -> Result<Response<NodeStats>, Status> {
        self.allow(&request)?;
        let h = &self.handler;
        let mut stats = NodeStats {
            node_id: h.node_id,
            incarnation: h.incarnation,
            epoch: h.ownership.epoch(),
            dropped_frames: h.metrics.dropped_total(),
            ..NodeStats::default()
        };
        h.ownership.for_each(|owned| {
            let m = &owned.metrics;
            let objects = m.objects.get().max(0) as u64;
            let bytes = m.stored_bytes.get().max(0) as u64;
            stats.objects += objects;
            stats.bytes += bytes;
            let mut range = RangeStats {
                range: Some(owned.range.into()),
                reads: m.ops(Op::Get) + m.ops(Op::MultiGet),
                writes: m.ops(Op::Put) + m.ops(Op::Delete),
                objects,
                bytes,
                bucket_ops: m.bucket_ops(),
                ..RangeStats::default()
            };
            match &owned.role {
                RangeRole::Serving => range.set_role(grpc::RangeRole::Serving),
                RangeRole::Copying { destination } => {
                    range.set_role(grpc::RangeRole::Copying);
                    range.peer = *destination;
                }
                RangeRole::Frozen { destination, locked } => {
                    range.set_role(grpc::RangeRole::Frozen);
                    range.peer = *destination;
                    range.locked = *locked;
                }
                RangeRole::Incoming(mv) => {
                    range.set_role(grpc::RangeRole::Incoming);
                    range.peer = mv.source;
                    let status = mv.status();
                    range.active = status.active;
                    range.done = status.done;
                    range.error = status.error;
                    range.failure = status.failure;
                }
            }
            stats.ranges.push(range);
        });
        Ok(Response::new(stats))
    }
}
