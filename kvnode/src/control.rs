//! The node's gRPC control service (called by the coordinator/operator).

use crate::handler::Handler;
use crate::ownership::OwnershipError;
use fulva_proto::grpc::node_control_server::NodeControl;
use fulva_proto::grpc::{
    AssignRangeRequest, AssignRangeResponse, DropRangeRequest, DropRangeResponse, GetStatsRequest, NodeStats,
    RangeStats, SetEpochRequest, SetEpochResponse,
};
use fulva_proto::{HashRange, Op, ShardMapError};
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
}

impl From<ControlError> for Status {
    fn from(err: ControlError) -> Status {
        match &err {
            ControlError::Ownership(OwnershipError::Overlap { .. }) => {
                Status::already_exists(err.to_string())
            }
            ControlError::Ownership(OwnershipError::NotServed(_)) => Status::not_found(err.to_string()),
            ControlError::Ownership(OwnershipError::StaleEpoch { .. }) => {
                Status::failed_precondition(err.to_string())
            }
            ControlError::Invalid(_) => Status::invalid_argument(err.to_string()),
        }
    }
}

/// Implements `fulva.v1.NodeControl` over a node's [`Handler`].
#[derive(Clone)]
pub struct ControlService {
    handler: Arc<Handler>,
}

impl ControlService {
    /// A service acting on `handler`.
    pub fn new(handler: Arc<Handler>) -> ControlService {
        ControlService { handler }
    }
}

#[tonic::async_trait]
impl NodeControl for ControlService {
    #[tracing::instrument(skip_all, fields(node = self.handler.node_id))]
    async fn assign_range(
        &self,
        request: Request<AssignRangeRequest>,
    ) -> Result<Response<AssignRangeResponse>, Status> {
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
    async fn drop_range(
        &self,
        request: Request<DropRangeRequest>,
    ) -> Result<Response<DropRangeResponse>, Status> {
        let req = request.into_inner();
        let range = HashRange::try_from(req.range).map_err(ControlError::from)?;
        let h = &self.handler;
        let new_owner = req.has_new_owner.then_some(req.new_owner);
        h.ownership.drop_range(range, req.epoch, new_owner, &h.metrics).map_err(ControlError::from)?;
        let removed = h.store.remove_range(range);
        h.metrics.epoch.set(h.ownership.epoch() as i64);
        tracing::info!(%range, epoch = req.epoch, objects = -removed.objects, "range dropped");
        Ok(Response::new(DropRangeResponse {
            epoch: h.ownership.epoch(),
            objects_dropped: (-removed.objects) as u64,
        }))
    }

    async fn set_epoch(
        &self,
        request: Request<SetEpochRequest>,
    ) -> Result<Response<SetEpochResponse>, Status> {
        let epoch = self.handler.ownership.observe_epoch(request.into_inner().epoch);
        self.handler.metrics.epoch.set(epoch as i64);
        Ok(Response::new(SetEpochResponse { epoch }))
    }

    async fn get_stats(&self, _request: Request<GetStatsRequest>) -> Result<Response<NodeStats>, Status> {
        let h = &self.handler;
        let mut stats = NodeStats {
            node_id: h.node_id,
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
            stats.ranges.push(RangeStats {
                range: Some(owned.range.into()),
                reads: m.ops(Op::Get) + m.ops(Op::MultiGet),
                writes: m.ops(Op::Put) + m.ops(Op::Delete),
                objects,
                bytes,
            });
        });
        Ok(Response::new(stats))
    }
}
