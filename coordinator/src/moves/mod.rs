//! Moving and splitting ranges: the coordinator's side of the migration
//! protocol, for all three strategies (fulva, rocksteady, source-driven).
//!
//! A move of range R from S to D with strategy fulva (rocksteady takes the
//! same steps, its destination also pulling missing keys on demand;
//! source-driven copies while S serves, then locks R for a final pass and
//! hands it over):
//! 1. D prepares R (requests for R there get Retry).
//! 2. S freezes R: writes are redirected to D by name, in-flight writes
//!    drain, and S hands over R's highest version and its completion records.
//! 3. D raises its version floor above that, installs the records, takes
//!    writes for R and starts pulling R from S.
//! 4. The map moves R to D in state Migrating{S} (epoch + 1).
//! 5. When D has applied everything, the map marks R Normal (epoch + 1), S
//!    drops its copy, and D drops its tombstones and serves R alone.
//!
//! # Layout
//! - this file: the options, the report, [`Coordinator::migrate`] (prepare,
//!   one strategy's pass, commit; what a failure leads to) and splits.
//! - `destination_serves`: the pass of fulva and rocksteady (the destination
//!   serves from the freeze on).
//! - `source_driven`: the copy, the lock and the final pass.
//! - `poll`: following the destination's progress; lost and stalled nodes.
//! - `rollback`: undoing a move by how far it got, the way back, the relay
//!   through the coordinator, fencing a lost node.

mod destination_serves;
mod poll;
mod rollback;
mod source_driven;

use crate::coordinator::{AbortReason, Coordinator, CoordinatorError, RunningMove};
use crate::NodeError;
use fulva_proto::grpc::{
    DropRangeRequest, FinishMigrationRequest, MigrationStatusResponse, PrepareMigrationRequest,
    SetMigrationRateRequest, SplitRangeRequest,
};
use fulva_proto::{HashRange, NodeId, Shard, ShardMap, ShardState, Strategy};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The two ends of a move.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ends {
    pub(crate) range: HashRange,
    pub(crate) source: NodeId,
    pub(crate) destination: NodeId,
}

/// How far a move got, which decides how it is undone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// No node was told anything.
    Untouched,
    /// The destination may hold the range as prepared (it answers Retry).
    Prepared,
    /// The source may be copying, frozen or locked; the destination has taken no write.
    SourceHeld,
    /// The destination may have taken writes; objects up to this version came from the source.
    DestinationServing { copied_up_to: u64 },
    /// The map names the destination as the owner, Normal.
    Committed,
}

/// Forgets a move in the coordinator's table when its `migrate` returns.
struct Unregister<'a> {
    coordinator: &'a Coordinator,
    range: HashRange,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.coordinator.running.lock().remove(&self.range);
    }
}

/// How a move runs.
#[derive(Clone, Copy, Debug)]
pub struct MoveOptions {
    /// Migration strategy.
    pub strategy: Strategy,
    /// Bandwidth limit of the bulk transfer in bytes/s (0 = none).
    pub rate_limit_bytes_per_sec: u64,
    /// How often the destination's progress is polled.
    pub poll_interval: Duration,
    /// A node of the move silent for this long counts as lost (see
    /// [`Coordinator::migrate`] for what follows).
    pub node_timeout: Duration,
    /// A move whose destination applies nothing for this long, while both
    /// nodes answer, is aborted (longer than one batch at the rate limit).
    pub stall_timeout: Duration,
    /// Fulva and rocksteady: the source ships up to this many of the range's
    /// hottest keys (by sampled reads) before the hash-order pass, unpaced,
    /// so dual reads (fulva) and on-demand pulls (rocksteady) end for most
    /// traffic at once. 0: hash order only.
    pub hot_keys: u32,
}

/// Hottest keys a move ships first unless told otherwise (about 0.5 MB of
/// 100-byte values).
pub const DEFAULT_HOT_KEYS: u32 = 4096;

impl Default for MoveOptions {
    fn default() -> Self {
        MoveOptions {
            strategy: Strategy::Fulva,
            rate_limit_bytes_per_sec: 0,
            poll_interval: Duration::from_millis(10),
            node_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(60),
            hot_keys: DEFAULT_HOT_KEYS,
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
    /// The source was lost mid-move and the destination serves what it had
    /// pulled (objects not yet pulled were lost with the source).
    pub source_lost: bool,
}

/// The start of a pass that takes over from a frozen end: the destination's
/// version floor, completion records and ack floors come from the freeze.
fn handover(
    range: Option<fulva_proto::grpc::HashRange>,
    frozen: fulva_proto::grpc::FreezeRangeResponse,
    epoch: u64,
) -> fulva_proto::grpc::StartMigrationRequest {
    fulva_proto::grpc::StartMigrationRequest {
        range,
        version_floor: frozen.max_version,
        records: frozen.records,
        acks: frozen.acks,
        epoch,
        ..Default::default()
    }
}

/// One move's fixed facts, as each strategy's pass reads them.
#[derive(Clone, Copy)]
struct Pass<'a> {
    ends: Ends,
    /// The epoch every step of the move carries (the map's + 1).
    epoch: u64,
    options: MoveOptions,
    abort: &'a CancellationToken,
}

impl Coordinator {
    /// Splits the shard containing `at` so that a shard starts at `at`. A
    /// no-op when one already does.
    pub async fn split(&self, at: u64) -> Result<Arc<ShardMap>, CoordinatorError> {
        let map = self.map();
        let shard = *map.shard_of(at).ok_or(CoordinatorError::NoShard { hash: at })?;
        if shard.range.first == at {
            return Ok(map);
        }
        if shard.state != ShardState::Normal {
            return Err(CoordinatorError::Moving { range: shard.range });
        }
        let (low, high) =
            shard.range.split_at(at).map_err(|_| CoordinatorError::BadSplit { range: shard.range, at })?;
        let mut client = self.node_client(shard.owner).await?;
        client
            .split_range(SplitRangeRequest { range: Some(shard.range.into()), at, epoch: map.epoch + 1 })
            .await?;
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
    ///
    /// A move that fails, or that [`Coordinator::abort_move`] stops, is rolled
    /// back: the range returns to its source with every write the destination
    /// took carried back, and the result is [`CoordinatorError::Aborted`].
    /// A node silent for `options.node_timeout` after the destination served
    /// is lost: without the destination the source serves its copy again
    /// (`Aborted`, nothing carried back); without the source the destination
    /// keeps what it pulled (`Ok`, [`MoveReport::source_lost`]). See
    /// docs/failures.md.
    pub async fn migrate(
        &self,
        range: HashRange,
        destination: NodeId,
        options: MoveOptions,
        mut progress: impl FnMut(&MigrationStatusResponse),
    ) -> Result<MoveReport, CoordinatorError> {
        let started = Instant::now();
        // Refusals come before the splits: a move that cannot happen leaves
        // the map (and its epoch) as it was.
        {
            let map = self.map();
            if map.node(destination).is_none() {
                return Err(CoordinatorError::UnknownDestination { node: destination });
            }
            let around = map.shard_of(range.first).ok_or(CoordinatorError::NoShard { hash: range.first })?;
            if !around.range.covers(&range) {
                return Err(CoordinatorError::NotAShard { range });
            }
            if around.state != ShardState::Normal {
                return Err(CoordinatorError::Moving { range: around.range });
            }
            if around.owner == destination {
                return Err(CoordinatorError::AlreadyThere { range, node: destination });
            }
        }
        self.split(range.first).await?;
        if let Some(next) = range.last.checked_add(1) {
            self.split(next).await?;
        }
        let map = self.map();
        let shard =
            *map.shards.iter().find(|s| s.range == range).ok_or(CoordinatorError::NotAShard { range })?;
        if shard.state != ShardState::Normal {
            return Err(CoordinatorError::Moving { range });
        }
        let source = shard.owner;
        if source == destination {
            return Err(CoordinatorError::AlreadyThere { range, node: destination });
        }
        if map.node(source).is_none() {
            return Err(CoordinatorError::UnknownNode { node: source });
        }
        if map.node(destination).is_none() {
            return Err(CoordinatorError::UnknownDestination { node: destination });
        }
        let abort = CancellationToken::new();
        {
            let mut running = self.running.lock();
            if running.contains_key(&range) {
                return Err(CoordinatorError::Moving { range });
            }
            running.insert(range, RunningMove { destination, abort: abort.clone() });
        }
        let _registered = Unregister { coordinator: self, range };
        let ends = Ends { range, source, destination };
        let mut stage = Stage::Untouched;
        let result = self.run_move(ends, options, &abort, &mut stage, &mut progress).await;
        let error = match result {
            Ok(mut report) => {
                report.duration = started.elapsed();
                return Ok(report);
            }
            Err(error) => error,
        };
        // A lost node decides the outcome once the destination has served.
        if let (CoordinatorError::NodeLost { node, .. }, Stage::DestinationServing { .. }) = (&error, stage) {
            let lost = *node;
            if lost == destination {
                tracing::warn!(%range, source, destination, "destination lost mid-move; the source takes the range back");
                self.reclaim_without_destination(ends).await?;
                return Err(CoordinatorError::Aborted {
                    range,
                    back_on: source,
                    reason: AbortReason::DestinationLost { node: destination },
                    carried_back: false,
                });
            }
            if lost == source {
                tracing::warn!(%range, source, destination, "source lost mid-move; the destination keeps what it pulled");
                let finished = self.finish_without_source(ends).await?;
                return Ok(MoveReport {
                    range,
                    source,
                    destination,
                    objects: 0,
                    bytes: 0,
                    duration: started.elapsed(),
                    epoch: finished.epoch,
                    lock_window: None,
                    source_lost: true,
                });
            }
        }
        let reason = if abort.is_cancelled() {
            tracing::info!(%range, source, destination, ?stage, "move aborted on request; rolling back");
            AbortReason::OnRequest
        } else {
            tracing::warn!(%range, source, destination, ?stage, %error, "move failed; rolling back");
            AbortReason::Failed(Box::new(error))
        };
        match self.roll_back(ends, stage).await {
            Ok(()) => {
                tracing::info!(%range, source, "move rolled back");
                Err(CoordinatorError::Aborted {
                    range,
                    back_on: source,
                    reason,
                    carried_back: matches!(stage, Stage::DestinationServing { .. }),
                })
            }
            Err(rollback) => {
                Err(CoordinatorError::RollbackFailed { range, reason, rollback: Box::new(rollback) })
            }
        }
    }

    /// Stops the move of `range` running on this coordinator; its
    /// [`Coordinator::migrate`] rolls it back and returns
    /// [`CoordinatorError::Aborted`].
    pub fn abort_move(&self, range: HashRange) -> Result<(), CoordinatorError> {
        let running = self.running.lock();
        let mv = running.get(&range).ok_or(CoordinatorError::NoSuchMove { range })?;
        mv.abort.cancel();
        Ok(())
    }

    /// Names `owner` and `state` for the shard `range` in a new map epoch.
    pub(super) async fn set_shard(
        &self,
        range: HashRange,
        owner: NodeId,
        state: ShardState,
    ) -> Result<Arc<ShardMap>, CoordinatorError> {
        self.update(|m| {
            if let Some(s) = m.shards.iter_mut().find(|s| s.range == range) {
                s.owner = owner;
                s.state = state;
            }
        })
        .await
    }

    /// Changes the bandwidth limit (bytes/s, 0 = none) of the move of `range`.
    pub async fn set_move_rate(&self, range: HashRange, bytes_per_sec: u64) -> Result<(), CoordinatorError> {
        let destination = self
            .running
            .lock()
            .get(&range)
            .map(|m| m.destination)
            .ok_or(CoordinatorError::NoSuchMove { range })?;
        let mut dest = self.node_client(destination).await?;
        dest.set_migration_rate(SetMigrationRateRequest {
            range: Some(range.into()),
            rate_limit_bytes_per_sec: bytes_per_sec,
        })
        .await?;
        Ok(())
    }

    /// The moves running on this coordinator: range and destination.
    pub fn running_moves(&self) -> Vec<(HashRange, NodeId)> {
        self.running.lock().iter().map(|(r, m)| (*r, m.destination)).collect()
    }

    async fn run_move(
        &self,
        ends: Ends,
        options: MoveOptions,
        abort: &CancellationToken,
        stage: &mut Stage,
        progress: &mut impl FnMut(&MigrationStatusResponse),
    ) -> Result<MoveReport, CoordinatorError> {
        let Ends { range, source, destination } = ends;
        let map = self.map();
        let source_info = map.node(source).cloned().ok_or(CoordinatorError::UnknownNode { node: source })?;
        let epoch = map.epoch + 1;
        let mut dest = self.node_client(destination).await?;
        let mut src = self.node_client(source).await?;
        let r = Some(range.into());
        let check_abort =
            || if abort.is_cancelled() { Err(CoordinatorError::AbortRequested) } else { Ok(()) };

        *stage = Stage::Prepared;
        dest.prepare_migration(PrepareMigrationRequest {
            range: r,
            source,
            source_control_addr: source_info.control_addr.to_string(),
            strategy: fulva_proto::grpc::Strategy::from(options.strategy) as i32,
            epoch,
            reclaim: false,
        })
        .await?;
        check_abort()?;

        let pass = Pass { ends, epoch, options, abort };
        let (status, lock_window) = match options.strategy {
            Strategy::Fulva | Strategy::Rocksteady => {
                (self.destination_serves(&pass, &mut src, &mut dest, stage, progress).await?, None)
            }
            Strategy::SourceDriven => {
                let (status, locked) =
                    self.source_driven(&pass, &mut src, &mut dest, stage, progress).await?;
                (status, Some(locked))
            }
        };
        let finished = self.commit(ends).await?;
        *stage = Stage::Committed;
        let lock_window = lock_window.map(|locked: Instant| locked.elapsed());
        tracing::info!(%range, source, destination, objects = status.objects_applied, "move finished");
        Ok(MoveReport {
            range,
            source,
            destination,
            objects: status.objects_applied,
            bytes: status.bytes_applied,
            duration: Duration::ZERO,
            epoch: finished.epoch,
            lock_window,
            source_lost: false,
        })
    }

    /// Ends a move whose destination has applied everything: the map marks
    /// the range Normal there, the source drops its copy, the destination
    /// serves the range alone.
    pub(crate) async fn commit(&self, ends: Ends) -> Result<Arc<ShardMap>, CoordinatorError> {
        let Ends { range, source, destination } = ends;
        let r = Some(range.into());
        let finished = self.set_shard(range, destination, ShardState::Normal).await?;
        // The source drops its copy before the destination drops its
        // tombstones: a dual read must never see an old copy beside a purged delete.
        // Moves running at once raise the nodes' epochs: each call goes as
        // of the newest map (it contains this change), again if a newer one
        // overtook it on the way.
        let src = self.node_client(source).await?;
        let dropped = self
            .as_of_newest_map(finished.epoch, |epoch| {
                let mut src = src.clone();
                let drop = DropRangeRequest { range: r, epoch, new_owner: destination, has_new_owner: true };
                async move { src.drop_range(drop).await }
            })
            .await;
        match dropped {
            // Already dropped (a recovering coordinator finishing a commit).
            Ok(_) => {}
            Err(err) if err.is_not_found() => {}
            // The destination has everything; a source that is gone is told
            // to drop its copy if it answers again.
            Err(err) if err.is_unreachable() => {
                tracing::warn!(%range, source, error = %err, "the source does not answer; committing without it");
                self.fence(source, range, finished.epoch);
            }
            Err(err) => return Err(err.into()),
        }
        let dest = self.node_client(destination).await?;
        self.as_of_newest_map(finished.epoch, |epoch| {
            let mut dest = dest.clone();
            async move {
                dest.finish_migration(FinishMigrationRequest { range: r, epoch, abandon_source: false }).await
            }
        })
        .await?;
        self.broadcast_epoch(&finished).await;
        Ok(finished)
    }

    /// Makes `call` as of the newest map epoch (at least `floor`), again with
    /// a newer one if the node has seen a newer map meanwhile (a few times).
    async fn as_of_newest_map<T, F, Fut>(&self, floor: u64, mut call: F) -> Result<T, NodeError>
    where
        F: FnMut(u64) -> Fut,
        Fut: std::future::Future<Output = Result<T, NodeError>>,
    {
        let mut attempts = 0;
        loop {
            match call(self.map().epoch.max(floor)).await {
                Err(err) if err.is_stale_epoch() && attempts < 5 => attempts += 1,
                result => return result,
            }
        }
    }
}
