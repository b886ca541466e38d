//! Undoing a move: by how far it got ([`Stage`]), the way back with the
//! fulva protocol, the relay through the coordinator for two nodes that
//! cannot reach each other, and fencing a node that was lost.

use super::{handover, Ends, MoveOptions, Stage};
use crate::coordinator::{Coordinator, CoordinatorError};
use crate::node_client::{NodeCall, NodeClient};
use fulva_proto::grpc::{
    DropRangeRequest, FinishMigrationRequest, FreezeRangeRequest, PrepareMigrationRequest, PushBatchRequest,
    StartMigrationRequest, UnfreezeRangeRequest,
};
use fulva_proto::{HashRange, NodeId, ShardMap, ShardState, Strategy};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

impl Coordinator {
    /// The destination of a move was lost after it served the range: the
    /// source, which kept its copy (frozen at the freeze), serves it again.
    /// The destination is told to drop the range if it ever answers again.
    pub(crate) async fn reclaim_without_destination(
        &self,
        ends: Ends,
    ) -> Result<Arc<ShardMap>, CoordinatorError> {
        let Ends { range, source, destination } = ends;
        let epoch = self.map().epoch + 1;
        let mut src = self.node_client(source).await?;
        src.unfreeze_range(UnfreezeRangeRequest { range: Some(range.into()), epoch }).await?;
        let back = self.set_shard(range, source, ShardState::Normal).await?;
        self.broadcast_epoch(&back).await;
        self.fence(destination, range, back.epoch);
        Ok(back)
    }

    /// The source of a move was lost after the destination served the range:
    /// the destination stops pulling and serves what it has.
    pub(super) async fn finish_without_source(&self, ends: Ends) -> Result<Arc<ShardMap>, CoordinatorError> {
        let Ends { range, source, destination } = ends;
        let finished = self.set_shard(range, destination, ShardState::Normal).await?;
        let mut dest = self.node_client(destination).await?;
        dest.finish_migration(FinishMigrationRequest {
            range: Some(range.into()),
            epoch: finished.epoch,
            abandon_source: true,
        })
        .await?;
        self.broadcast_epoch(&finished).await;
        self.fence(source, range, finished.epoch);
        Ok(finished)
    }

    /// Keeps telling a lost node, for a while, to drop `range` (a node that
    /// was only cut off must not serve it again with an old map).
    pub(crate) fn fence(&self, node: NodeId, range: HashRange, epoch: u64) {
        let Some(info) = self.map().node(node).cloned() else { return };
        let tls = self.client_tls().cloned();
        tokio::spawn(async move {
            for _ in 0..300 {
                let addr = info.control_addr.to_string();
                let connected = NodeClient::connect(
                    node,
                    addr,
                    Duration::from_secs(1),
                    Duration::from_secs(2),
                    tls.as_ref(),
                )
                .await;
                if let Ok(mut client) = connected {
                    let drop = DropRangeRequest {
                        range: Some(range.into()),
                        epoch,
                        new_owner: 0,
                        has_new_owner: false,
                    };
                    match client.drop_range(drop).await {
                        Ok(_) => {
                            tracing::info!(node, %range, "a lost node answered again and dropped the range");
                            return;
                        }
                        Err(err) if err.is_not_found() => return,
                        Err(_) => {}
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Carries the objects of `range` above `min_version` from node `from`
    /// (frozen toward `to`) to node `to` (which takes the range in) through
    /// the coordinator, for two nodes that cannot reach each other.
    pub(super) async fn relay(
        &self,
        range: HashRange,
        from: NodeId,
        to: NodeId,
        min_version: u64,
    ) -> Result<(), CoordinatorError> {
        let mut source = self.node_client(from).await?;
        let mut destination = self.node_client(to).await?;
        let mut pull = source.open_transfer(range, min_version).await?;
        let mut batches = 0u64;
        loop {
            let Some(batch) = pull.next_batch().await? else {
                return Err(CoordinatorError::RelayTruncated { range });
            };
            let last = batch.last;
            destination
                .push_batch(PushBatchRequest { range: Some(range.into()), batch: Some(batch) })
                .await?;
            batches += 1;
            if last {
                tracing::info!(%range, from, to, batches, "relayed through the coordinator");
                return Ok(());
            }
        }
    }

    /// Undoes a stopped move according to how far it got.
    pub(super) async fn roll_back(&self, ends: Ends, stage: Stage) -> Result<(), CoordinatorError> {
        let Ends { range, source, destination } = ends;
        let epoch = self.map().epoch + 1;
        let r = Some(range.into());
        match stage {
            Stage::Untouched => Ok(()),
            Stage::Committed => Err(CoordinatorError::AlreadyCommitted { range }),
            Stage::Prepared | Stage::SourceHeld => {
                // The destination never took a write: the source serves the
                // range again and the destination forgets it.
                if stage == Stage::SourceHeld {
                    let mut src = self.node_client(source).await?;
                    src.unfreeze_range(UnfreezeRangeRequest { range: r, epoch }).await?;
                }
                let dropped = match self.node_client(destination).await {
                    Ok(mut dest) => dest
                        .drop_range(DropRangeRequest { range: r, epoch, new_owner: 0, has_new_owner: false })
                        .await
                        .map(|_| ())
                        .map_err(CoordinatorError::Node),
                    Err(err) => Err(err),
                };
                let gone = |err: &CoordinatorError| match err {
                    CoordinatorError::Node(e) => e.is_unreachable() || e.call == NodeCall::Connect,
                    CoordinatorError::UnknownNode { .. } => true,
                    _ => false,
                };
                match dropped {
                    Ok(()) => Ok(()),
                    Err(CoordinatorError::Node(err)) if err.is_not_found() => Ok(()),
                    // A destination that is gone never served the range; it
                    // is told to forget it if it answers again.
                    Err(err) if gone(&err) => {
                        tracing::warn!(%range, destination, error = %err, "the destination does not answer; it will be told to drop the range");
                        self.fence(destination, range, epoch);
                        Ok(())
                    }
                    Err(err) => Err(err),
                }
            }
            Stage::DestinationServing { copied_up_to } => {
                self.move_back(ends, copied_up_to).await.map(|_| ())
            }
        }
    }

    /// Aborts a move whose destination may have taken writes by moving the
    /// range back with the fulva protocol: the source, which still holds its
    /// copy, becomes the destination and pulls only objects above
    /// `copied_up_to` (the writes and deletes the destination took).
    pub(crate) async fn move_back(
        &self,
        ends: Ends,
        copied_up_to: u64,
    ) -> Result<Arc<ShardMap>, CoordinatorError> {
        let Ends { range, source, destination } = ends;
        let map = self.map();
        let dest_info =
            map.node(destination).cloned().ok_or(CoordinatorError::UnknownNode { node: destination })?;
        let epoch = map.epoch + 1;
        let r = Some(range.into());
        let mut src = self.node_client(source).await?;
        let mut dest = self.node_client(destination).await?;
        src.prepare_migration(PrepareMigrationRequest {
            range: r,
            source: destination,
            source_control_addr: dest_info.control_addr.to_string(),
            strategy: fulva_proto::grpc::Strategy::Fulva as i32,
            epoch,
            reclaim: true,
        })
        .await?;
        let frozen = dest
            .freeze_range(FreezeRangeRequest { range: r, destination: source, epoch, lock: false })
            .await?;
        src.start_migration(StartMigrationRequest {
            serve: true,
            min_version: copied_up_to,
            ..handover(r, frozen, epoch)
        })
        .await?;
        let back = self
            .set_shard(
                range,
                source,
                ShardState::Migrating { source: destination, strategy: Strategy::Fulva },
            )
            .await?;
        self.broadcast_epoch(&back).await;
        let never = CancellationToken::new();
        let options = MoveOptions::default();
        let back = Ends { range, source: destination, destination: source };
        match self.wait_for_pass(&mut src, source, destination, range, options, &never, &mut |_| {}).await {
            Ok(_) => self.commit(back).await,
            // The node being left was lost on the way back: keep what arrived.
            Err(CoordinatorError::NodeLost { node, .. }) if node == destination => {
                tracing::warn!(%range, lost = destination, "lost on the way back; keeping what arrived");
                self.finish_without_source(back).await
            }
            // The pull failed or stalled while both nodes answer: they cannot
            // reach each other. The coordinator reaches both, so it carries
            // the writes across itself.
            Err(err @ (CoordinatorError::PullFailed { .. } | CoordinatorError::Stalled { .. })) => {
                tracing::warn!(%range, from = destination, to = source, error = %err, "the way back cannot pull; relaying through the coordinator");
                self.relay(range, destination, source, copied_up_to).await?;
                self.wait_for_pass(&mut src, source, destination, range, options, &never, &mut |_| {})
                    .await?;
                self.commit(back).await
            }
            Err(err) => Err(err),
        }
    }
}
