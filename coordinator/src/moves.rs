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

use crate::coordinator::{AbortReason, Coordinator, CoordinatorError, RunningMove};
use crate::node_client::{NodeCall, NodeClient};
use fulva_proto::grpc::{
    BeginCopyRequest, DropRangeRequest, FinishMigrationRequest, FreezeRangeRequest, MigrationStatusRequest,
    MigrationStatusResponse, PrepareMigrationRequest, PullFailure, PullRangeRequest, PushBatchRequest,
    SetMigrationRateRequest, SplitRangeRequest, StartMigrationRequest, UnfreezeRangeRequest,
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
}

impl Default for MoveOptions {
    fn default() -> Self {
        MoveOptions {
            strategy: Strategy::Fulva,
            rate_limit_bytes_per_sec: 0,
            poll_interval: Duration::from_millis(10),
            node_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(60),
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

    /// The destination of a move was lost after it served the range: the
    /// source, which kept its copy (frozen at the freeze), serves it again.
    /// The destination is told to drop the range if it ever answers again.
    async fn reclaim_without_destination(&self, ends: Ends) -> Result<Arc<ShardMap>, CoordinatorError> {
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
    async fn finish_without_source(&self, ends: Ends) -> Result<Arc<ShardMap>, CoordinatorError> {
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

    /// Names `owner` and `state` for the shard `range` in a new map epoch.
    async fn set_shard(
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

    /// Keeps telling a lost node, for a while, to drop `range` (a node that
    /// was only cut off must not serve it again with an old map).
    fn fence(&self, node: NodeId, range: HashRange, epoch: u64) {
        let Some(info) = self.map().node(node).cloned() else { return };
        tokio::spawn(async move {
            for _ in 0..300 {
                let addr = info.control_addr.to_string();
                let connected =
                    NodeClient::connect(node, addr, Duration::from_secs(1), Duration::from_secs(2)).await;
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
    async fn relay(
        &self,
        range: HashRange,
        from: NodeId,
        to: NodeId,
        min_version: u64,
    ) -> Result<(), CoordinatorError> {
        let mut source = self.node_client(from).await?;
        let mut destination = self.node_client(to).await?;
        let request =
            PullRangeRequest { range: Some(range.into()), from_hash: 0, batch_bytes: 64 * 1024, min_version };
        let mut stream = source.pull_range(request).await?;
        let mut batches = 0u64;
        loop {
            let Some(batch) = source.next_batch(&mut stream).await? else {
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

    /// Whether `node` answers a stats call within `timeout` (tried once a
    /// second).
    async fn answers(&self, node: NodeId, timeout: Duration) -> bool {
        let started = Instant::now();
        loop {
            if let Ok(mut client) = self.node_client(node).await {
                let call = client.get_stats(fulva_proto::grpc::GetStatsRequest {});
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), call).await {
                    return true;
                }
            }
            if started.elapsed() >= timeout {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
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

        let mut lock_window = None;
        let status = if options.strategy == Strategy::SourceDriven {
            // Copy while the source serves (deletes keep tombstones there) ...
            *stage = Stage::SourceHeld;
            let copy = src.begin_copy(BeginCopyRequest { range: r, destination, epoch }).await?;
            dest.start_migration(StartMigrationRequest {
                range: r,
                objects_total: copy.objects,
                bytes_total: copy.bytes,
                epoch,
                rate_limit_bytes_per_sec: options.rate_limit_bytes_per_sec,
                serve: false,
                ..Default::default()
            })
            .await?;
            self.wait_for_pass(&mut dest, destination, source, range, options, abort, progress).await?;
            // ... then lock the range (downtime: every request gets Retry),
            // ship what changed since the copy began, and hand over.
            let locked = Instant::now();
            let frozen =
                src.freeze_range(FreezeRangeRequest { range: r, destination, epoch, lock: true }).await?;
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
            .await?;
            let status =
                self.wait_for_pass(&mut dest, destination, source, range, options, abort, progress).await?;
            lock_window = Some(locked);
            status
        } else {
            *stage = Stage::SourceHeld;
            let frozen =
                src.freeze_range(FreezeRangeRequest { range: r, destination, epoch, lock: false }).await?;
            check_abort()?;
            // From here on the destination may take writes: undoing the move
            // means carrying them back.
            *stage = Stage::DestinationServing { copied_up_to: frozen.max_version };
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
            .await?;
            let migrating = self
                .set_shard(range, destination, ShardState::Migrating { source, strategy: options.strategy })
                .await?;
            self.broadcast_epoch(&migrating).await;
            tracing::info!(%range, source, destination, epoch = migrating.epoch, strategy = options.strategy.name(), "move started");
            self.wait_for_pass(&mut dest, destination, source, range, options, abort, progress).await?
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
        let mut src = self.node_client(source).await?;
        match src
            .drop_range(DropRangeRequest {
                range: r,
                epoch: finished.epoch,
                new_owner: destination,
                has_new_owner: true,
            })
            .await
        {
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
        let mut dest = self.node_client(destination).await?;
        dest.finish_migration(FinishMigrationRequest {
            range: r,
            epoch: finished.epoch,
            abandon_source: false,
        })
        .await?;
        self.broadcast_epoch(&finished).await;
        Ok(finished)
    }

    /// Undoes a stopped move according to how far it got.
    async fn roll_back(&self, ends: Ends, stage: Stage) -> Result<(), CoordinatorError> {
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
            range: r,
            version_floor: frozen.max_version,
            records: frozen.records,
            acks: frozen.acks,
            epoch,
            serve: true,
            min_version: copied_up_to,
            ..Default::default()
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

    /// Polls the destination until the pass is done. A destination silent
    /// for `options.node_timeout` is lost; when the pull fails or nothing is
    /// applied for `options.stall_timeout`, a source silent for the node
    /// timeout is lost, else the move failed (or stalled) and rolls back.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn wait_for_pass(
        &self,
        dest: &mut NodeClient,
        destination: NodeId,
        source: NodeId,
        range: HashRange,
        options: MoveOptions,
        abort: &CancellationToken,
        progress: &mut impl FnMut(&MigrationStatusResponse),
    ) -> Result<MigrationStatusResponse, CoordinatorError> {
        let mut silent_since: Option<Instant> = None;
        let mut last_progress = ((0u64, 0u64), Instant::now());
        loop {
            if abort.is_cancelled() {
                return Err(CoordinatorError::AbortRequested);
            }
            let call = dest.migration_status(MigrationStatusRequest { range: Some(range.into()) });
            let status = match tokio::time::timeout(options.node_timeout, call).await {
                Ok(Ok(status)) => status,
                Ok(Err(err)) if err.is_not_found() => return Err(err.into()),
                failed => {
                    let since = *silent_since.get_or_insert_with(Instant::now);
                    tracing::debug!(destination, ?failed, "no status from the destination");
                    if since.elapsed() >= options.node_timeout {
                        return Err(CoordinatorError::NodeLost {
                            node: destination,
                            seconds: since.elapsed().as_secs_f64(),
                        });
                    }
                    tokio::time::sleep(options.poll_interval.max(Duration::from_millis(100))).await;
                    continue;
                }
            };
            silent_since = None;
            progress(&status);
            if status.done {
                return Ok(status);
            }
            let moved = (status.cursor, status.bytes_applied);
            if moved != last_progress.0 {
                last_progress = (moved, Instant::now());
            }
            let stalled = last_progress.1.elapsed() >= options.stall_timeout;
            let failure = status.failure();
            if failure != PullFailure::None || stalled {
                // Whose fault? A source that does not answer is lost.
                if !self.answers(source, options.node_timeout).await {
                    return Err(CoordinatorError::NodeLost {
                        node: source,
                        seconds: options.node_timeout.as_secs_f64(),
                    });
                }
                if failure != PullFailure::None {
                    return Err(CoordinatorError::PullFailed {
                        range,
                        reason: failure,
                        detail: status.error,
                    });
                }
                return Err(CoordinatorError::Stalled {
                    range,
                    seconds: last_progress.1.elapsed().as_secs_f64(),
                });
            }
            tokio::select! {
                () = abort.cancelled() => {}
                () = tokio::time::sleep(options.poll_interval) => {}
            }
        }
    }
}
