//! Moving and splitting ranges: the coordinator's side of the migration
//! protocol (strategy `fulva`).
//!
//! A move of range R from S to D:
//! 1. D prepares R (requests for R there get Retry).
//! 2. S freezes R: writes are redirected to D by name, in-flight writes
//!    drain, and S hands over R's highest version and its completion records.
//! 3. D raises its version floor above that, installs the records, takes
//!    writes for R and starts pulling R from S.
//! 4. The map moves R to D in state Migrating{S} (epoch + 1).
//! 5. When D has applied everything, the map marks R Normal (epoch + 1), S
//!    drops its copy, and D drops its tombstones and serves R alone.

use crate::coordinator::{Coordinator, CoordinatorError};
use fulva_proto::grpc::{
    BeginCopyRequest, DropRangeRequest, FinishMigrationRequest, FreezeRangeRequest, MigrationStatusRequest,
    MigrationStatusResponse, PrepareMigrationRequest, SplitRangeRequest, StartMigrationRequest,
};
use fulva_proto::{HashRange, NodeId, Shard, ShardMap, ShardState, Strategy};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a move runs.
#[derive(Clone, Copy, Debug)]
pub struct MoveOptions {
    /// Migration strategy.
    pub strategy: Strategy,
    /// Bandwidth limit of the bulk transfer in bytes/s (0 = none).
    pub rate_limit_bytes_per_sec: u64,
    /// How often the destination's progress is polled.
    pub poll_interval: Duration,
}

impl Default for MoveOptions {
    fn default() -> Self {
        MoveOptions {
            strategy: Strategy::Fulva,
            rate_limit_bytes_per_sec: 0,
            poll_interval: Duration::from_millis(10),
        }
    }
}

/// What a finished move did.
#[derive(Clone, Debug, PartialEq)]
pub struct MoveReport {
    /// Range moved.
    pub range: HashRange,
    /// Node it left.
    pub source: NodeId,
    /// Node it went to.
    pub destination: NodeId,
    /// Objects applied at the destination.
    pub objects: u64,
    /// Key and value bytes applied.
    pub bytes: u64,
    /// From prepare to finish.
    pub duration: Duration,
    /// Map epoch after the move.
    pub epoch: u64,
    /// Source-driven: how long the range was locked (downtime for its keys).
    pub lock_window: Option<Duration>,
}

fn grpc_err(node: NodeId, what: &str) -> impl Fn(tonic::Status) -> CoordinatorError + '_ {
    move |s| CoordinatorError::Node {
        node,
        addr: what.to_string(),
        message: format!("{}: {}", s.code(), s.message()),
    }
}

fn move_error(message: String) -> CoordinatorError {
    CoordinatorError::Move(message)
}

impl Coordinator {
    /// Splits the shard containing `at` so that a shard starts at `at`. A
    /// no-op when one already does.
    pub async fn split(&self, at: u64) -> Result<Arc<ShardMap>, CoordinatorError> {
        let map = self.map();
        let shard = *map.shard_of(at).ok_or_else(|| move_error(format!("no shard holds {at:#x}")))?;
        if shard.range.first == at {
            return Ok(map);
        }
        if shard.state != ShardState::Normal {
            return Err(move_error(format!("cannot split {}: it is moving", shard.range)));
        }
        let (low, high) = shard.range.split_at(at).map_err(|e| move_error(e.to_string()))?;
        let mut client = self.node_client(shard.owner).await?;
        client
            .split_range(SplitRangeRequest { range: Some(shard.range.into()), at, epoch: map.epoch + 1 })
            .await
            .map_err(grpc_err(shard.owner, "split"))?;
        let next = self
            .update(|m| {
                if let Some(i) = m.shards.iter().position(|s| s.range == shard.range) {
                    m.shards[i].range = low;
                    m.shards.insert(i + 1, Shard { range: high, ..shard });
                }
            })
            .await?;
        self.broadcast_epoch(&next).await;
        Ok(next)
    }

    /// Moves `range` to `destination` while clients keep using it. Splits
    /// shards first so that `range` is exactly one shard. `progress` sees the
    /// destination's status while the move runs.
    pub async fn migrate(
        &self,
        range: HashRange,
        destination: NodeId,
        options: MoveOptions,
        mut progress: impl FnMut(&MigrationStatusResponse),
    ) -> Result<MoveReport, CoordinatorError> {
        let started = Instant::now();
        self.split(range.first).await?;
        if let Some(next) = range.last.checked_add(1) {
            self.split(next).await?;
        }
        let map = self.map();
        let shard = *map
            .shards
            .iter()
            .find(|s| s.range == range)
            .ok_or_else(|| move_error(format!("range {range} is not a shard after splitting")))?;
        if shard.state != ShardState::Normal {
            return Err(move_error(format!("range {range} is already moving")));
        }
        let source = shard.owner;
        if source == destination {
            return Err(move_error(format!("range {range} is already on node {destination}")));
        }
        let source_info =
            map.node(source).cloned().ok_or_else(|| move_error(format!("unknown node {source}")))?;
        if map.node(destination).is_none() {
            return Err(move_error(format!("unknown destination node {destination}")));
        }
        let epoch = map.epoch + 1;
        let mut dest = self.node_client(destination).await?;
        let mut src = self.node_client(source).await?;
        let r = Some(range.into());

        dest.prepare_migration(PrepareMigrationRequest {
            range: r,
            source,
            source_control_addr: source_info.control_addr.to_string(),
            strategy: fulva_proto::grpc::Strategy::from(options.strategy) as i32,
            epoch,
        })
        .await
        .map_err(grpc_err(destination, "prepare"))?;

        let mut lock_window = None;
        let status = if options.strategy == Strategy::SourceDriven {
            // Copy while the source serves (deletes keep tombstones there) ...
            let copy = src
                .begin_copy(BeginCopyRequest { range: r, destination, epoch })
                .await
                .map_err(grpc_err(source, "copy"))?
                .into_inner();
            dest.start_migration(StartMigrationRequest {
                range: r,
                objects_total: copy.objects,
                bytes_total: copy.bytes,
                epoch,
                rate_limit_bytes_per_sec: options.rate_limit_bytes_per_sec,
                serve: false,
                ..Default::default()
            })
            .await
            .map_err(grpc_err(destination, "start"))?;
            self.wait_for_pass(&mut dest, destination, range, options, &mut progress).await?;
            // ... then lock the range (downtime: every request gets Retry),
            // ship what changed since the copy began, and hand over.
            let locked = Instant::now();
            let frozen = src
                .freeze_range(FreezeRangeRequest { range: r, destination, epoch, lock: true })
                .await
                .map_err(grpc_err(source, "lock"))?
                .into_inner();
            dest.start_migration(StartMigrationRequest {
                range: r,
                version_floor: frozen.max_version,
                records: frozen.records,
                acks: frozen.acks,
                epoch,
                serve: false,
                final_pass: true,
                min_version: copy.copy_from_version,
                ..Default::default()
            })
            .await
            .map_err(grpc_err(destination, "final pass"))?;
            let status = self.wait_for_pass(&mut dest, destination, range, options, &mut progress).await?;
            lock_window = Some(locked);
            status
        } else {
            let frozen = src
                .freeze_range(FreezeRangeRequest { range: r, destination, epoch, lock: false })
                .await
                .map_err(grpc_err(source, "freeze"))?
                .into_inner();
            dest.start_migration(StartMigrationRequest {
                range: r,
                version_floor: frozen.max_version,
                records: frozen.records,
                acks: frozen.acks,
                objects_total: frozen.objects,
                bytes_total: frozen.bytes,
                epoch,
                rate_limit_bytes_per_sec: options.rate_limit_bytes_per_sec,
                serve: true,
                ..Default::default()
            })
            .await
            .map_err(grpc_err(destination, "start"))?;
            let migrating = self
                .update(|m| {
                    if let Some(s) = m.shards.iter_mut().find(|s| s.range == range) {
                        s.owner = destination;
                        s.state = ShardState::Migrating { source, strategy: options.strategy };
                    }
                })
                .await?;
            self.broadcast_epoch(&migrating).await;
            tracing::info!(%range, source, destination, epoch = migrating.epoch, strategy = ?options.strategy, "move started");
            self.wait_for_pass(&mut dest, destination, range, options, &mut progress).await?
        };

        let finished = self
            .update(|m| {
                if let Some(s) = m.shards.iter_mut().find(|s| s.range == range) {
                    s.owner = destination;
                    s.state = ShardState::Normal;
                }
            })
            .await?;
        // The source drops its copy before the destination drops its
        // tombstones: a dual read must never see an old copy beside a purged delete.
        src.drop_range(DropRangeRequest {
            range: r,
            epoch: finished.epoch,
            new_owner: destination,
            has_new_owner: true,
        })
        .await
        .map_err(grpc_err(source, "drop"))?;
        dest.finish_migration(FinishMigrationRequest { range: r, epoch: finished.epoch })
            .await
            .map_err(grpc_err(destination, "finish"))?;
        let lock_window = lock_window.map(|locked: Instant| locked.elapsed());
        self.broadcast_epoch(&finished).await;
        tracing::info!(%range, source, destination, objects = status.objects_applied, "move finished");
        Ok(MoveReport {
            range,
            source,
            destination,
            objects: status.objects_applied,
            bytes: status.bytes_applied,
            duration: started.elapsed(),
            epoch: finished.epoch,
            lock_window,
        })
    }

    async fn wait_for_pass(
        &self,
        dest: &mut fulva_proto::grpc::node_control_client::NodeControlClient<tonic::transport::Channel>,
        destination: NodeId,
        range: HashRange,
        options: MoveOptions,
        progress: &mut impl FnMut(&MigrationStatusResponse),
    ) -> Result<MigrationStatusResponse, CoordinatorError> {
        loop {
            let status = dest
                .migration_status(MigrationStatusRequest { range: Some(range.into()) })
                .await
                .map_err(grpc_err(destination, "status"))?
                .into_inner();
            progress(&status);
            if status.done {
                return Ok(status);
            }
            if !status.error.is_empty() {
                return Err(move_error(format!(
                    "move of {range} failed at the destination: {}",
                    status.error
                )));
            }
            tokio::time::sleep(options.poll_interval).await;
        }
    }
}
