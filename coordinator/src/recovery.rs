//! Recovery after a coordinator (operator) restart: the persisted map and
//! what the nodes actually hold are compared, and every move the previous
//! coordinator left half-done is rolled forward or back, so no range stays
//! Migrating and no acknowledged write is lost.
//!
//! The rules, per map shard R owned by O:
//! - O serves R: consistent.
//! - O holds nothing of R (it restarted while no coordinator watched): R is
//!   declared lost and O serves it again, empty ([`crate::liveness`]).
//! - O holds R incoming from X (the map switched, or a reclaim started): the
//!   move is rolled forward — the map says Migrating{X}, the pull finishes,
//!   X drops its copy.
//! - O holds R frozen or copying toward D: a move that never reached the map.
//!   If D serves R (it may hold writes), the move rolls forward; otherwise O
//!   serves R again and D forgets it.
//! - R is Migrating{S} on D and D holds nothing of it (it restarted): S,
//!   still frozen, serves R again; if S holds nothing either, R is lost.
//! - R is Migrating{S} on D: the pull finishes and the move commits; a pull
//!   that failed for good is undone by moving R back to S.
//! - Any other node holding R: a copy left by a finished move (dropped) or a
//!   prepared destination that never served (dropped).
//!
//! Splits are made on the node before the map: a node finer than the map gets
//! the map split to match; a node coarser than the map is split.

use crate::coordinator::{Coordinator, CoordinatorError, RecoveryError};
use crate::liveness::LossCause;
use crate::moves::{Ends, MoveOptions};
use fulva_proto::grpc::{
    self, DropRangeRequest, GetStatsRequest, MigrationStatusRequest, SplitRangeRequest, UnfreezeRangeRequest,
};
use fulva_proto::{HashRange, NodeId, Shard, ShardState, Strategy};
use tokio_util::sync::CancellationToken;

/// What a recovery repaired.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecoveryReport {
    /// Moves finished (the range ended on the destination).
    pub rolled_forward: Vec<HashRange>,
    /// Moves undone (the range ended on its source).
    pub rolled_back: Vec<HashRange>,
    /// Leftover copies or prepared destinations dropped: (node, range).
    pub dropped: Vec<(NodeId, HashRange)>,
    /// Shards split in the map to match a node, or on a node to match the map.
    pub splits: usize,
    /// Ranges whose owner no longer held them (it restarted): declared lost
    /// and served again, empty ([`crate::liveness`]).
    pub lost: Vec<HashRange>,
}

impl RecoveryReport {
    /// Whether anything needed repair.
    pub fn is_clean(&self) -> bool {
        *self == RecoveryReport::default()
    }
}

/// One range a node holds, as it reports it.
///
/// Steps a coordinator takes on nodes carry the map's epoch + 1 before the
/// map itself moves on, so a node may have seen that epoch from a step the
/// old coordinator never recorded: repairs use it too.
#[derive(Clone, Debug)]
struct Held {
    node: NodeId,
    range: HashRange,
    role: grpc::RangeRole,
    peer: NodeId,
    active: bool,
    failed: bool,
}

/// One repair step.
enum Repair {
    SplitMap { at: u64 },
    SplitNode { node: NodeId, range: HashRange, at: u64 },
    RollForward { ends: Ends },
    Unfreeze { ends: Ends },
    MoveBack { ends: Ends },
    Drop { node: NodeId, range: HashRange, new_owner: Option<NodeId> },
    DeclareLost { node: NodeId, range: HashRange },
    ReclaimWithoutDestination { ends: Ends },
}

impl Coordinator {
    /// Brings the map and the nodes back in agreement after a restart; see
    /// the module documentation for what is rolled forward and what back.
    pub async fn recover(&self) -> Result<RecoveryReport, CoordinatorError> {
        let mut report = RecoveryReport::default();
        // Each step repairs one thing; a cluster needs few.
        for _ in 0..10_000 {
            let held = self.held_ranges().await?;
            let Some(repair) = self.next_repair(&held)? else {
                if !report.is_clean() {
                    tracing::info!(?report, "recovery finished");
                }
                return Ok(report);
            };
            self.apply_repair(repair, &mut report).await?;
        }
        Err(RecoveryError::NotConverged.into())
    }

    async fn held_ranges(&self) -> Result<Vec<Held>, CoordinatorError> {
        let map = self.map();
        let mut held = Vec::new();
        for node in &map.nodes {
            let mut client = self.node_client(node.id).await?;
            let stats = client.get_stats(GetStatsRequest {}).await?;
            for r in stats.ranges {
                let role = r.role();
                let Ok(range) = HashRange::try_from(r.range) else { continue };
                held.push(Held {
                    node: node.id,
                    range,
                    role,
                    peer: r.peer,
                    active: r.active,
                    failed: r.failure() != grpc::PullFailure::None,
                });
            }
        }
        Ok(held)
    }

    fn next_repair(&self, held: &[Held]) -> Result<Option<Repair>, CoordinatorError> {
        let map = self.map();
        // Shapes first: node and map must cut the hash space alike.
        for h in held {
            for shard in map.shards.iter().filter(|s| s.range.overlaps(&h.range)) {
                if shard.range == h.range {
                    continue;
                }
                let holder_owns = shard.owner == h.node;
                if shard.range.covers(&h.range) && holder_owns && h.role == grpc::RangeRole::Serving {
                    // The node split before the map did.
                    let at =
                        if h.range.first != shard.range.first { h.range.first } else { h.range.last + 1 };
                    return Ok(Some(Repair::SplitMap { at }));
                }
                if h.range.covers(&shard.range) && holder_owns && h.role == grpc::RangeRole::Serving {
                    let at = if shard.range.first != h.range.first {
                        shard.range.first
                    } else {
                        shard.range.last + 1
                    };
                    return Ok(Some(Repair::SplitNode { node: h.node, range: h.range, at }));
                }
            }
        }
        let find = |node: NodeId, range: HashRange| held.iter().find(|h| h.node == node && h.range == range);
        for shard in &map.shards {
            let Shard { range, owner, state } = *shard;
            match state {
                ShardState::Normal => {
                    let Some(h) = find(owner, range) else {
                        if held.iter().any(|h| h.node == owner && h.range.overlaps(&range)) {
                            continue; // a shape repair comes first
                        }
                        // The owner answers without the range: it restarted
                        // (empty) while no coordinator watched. Declared lost.
                        return Ok(Some(Repair::DeclareLost { node: owner, range }));
                    };
                    match h.role {
                        grpc::RangeRole::Serving => {}
                        grpc::RangeRole::Incoming if h.active => {
                            return Ok(Some(Repair::RollForward {
                                ends: Ends { range, source: h.peer, destination: owner },
                            }))
                        }
                        grpc::RangeRole::Incoming => {
                            // The owner reclaimed the range (an aborted move's way
                            // back) but never started pulling: the other end still
                            // serves it as that move's destination. Go back again.
                            let other = find(h.peer, range);
                            if other.is_some_and(|o| o.role == grpc::RangeRole::Incoming && o.peer == owner) {
                                return Ok(Some(Repair::MoveBack {
                                    ends: Ends { range, source: owner, destination: h.peer },
                                }));
                            }
                            return Err(
                                RecoveryError::UnstartedMove { node: owner, range, peer: h.peer }.into()
                            );
                        }
                        grpc::RangeRole::Frozen | grpc::RangeRole::Copying => {
                            let ends = Ends { range, source: owner, destination: h.peer };
                            let dest = find(h.peer, range);
                            let serving = dest.is_some_and(|d| {
                                d.role == grpc::RangeRole::Incoming && d.peer == owner && d.active
                            });
                            return Ok(Some(if serving {
                                Repair::RollForward { ends }
                            } else {
                                Repair::Unfreeze { ends }
                            }));
                        }
                    }
                }
                ShardState::Migrating { source, .. } => {
                    let ends = Ends { range, source, destination: owner };
                    let Some(d) = find(owner, range) else {
                        // The destination restarted mid-move. The source kept
                        // its copy frozen: it serves the range again (the
                        // writes the destination alone took are gone, as when
                        // a running move loses its destination).
                        if find(source, range).is_some_and(|s| s.role == grpc::RangeRole::Frozen) {
                            return Ok(Some(Repair::ReclaimWithoutDestination { ends }));
                        }
                        return Ok(Some(Repair::DeclareLost { node: owner, range }));
                    };
                    let reverse = Ends { range, source: owner, destination: source };
                    return Ok(Some(match (d.role, find(source, range)) {
                        (grpc::RangeRole::Incoming, _) if d.failed => Repair::MoveBack { ends },
                        (grpc::RangeRole::Incoming, _) => Repair::RollForward { ends },
                        // The way back of an aborted move got as far as the source serving.
                        (grpc::RangeRole::Frozen, Some(s))
                            if s.role == grpc::RangeRole::Incoming && s.active =>
                        {
                            Repair::RollForward { ends: reverse }
                        }
                        (grpc::RangeRole::Frozen, Some(s)) if s.role == grpc::RangeRole::Incoming => {
                            Repair::MoveBack { ends }
                        }
                        (grpc::RangeRole::Serving, _) => Repair::RollForward { ends },
                        _ => Repair::MoveBack { ends },
                    }));
                }
            }
        }
        // Leftovers: ranges held by a node the map does not name for them.
        for h in held {
            let Some(shard) = map.shards.iter().find(|s| s.range == h.range) else { continue };
            let named = shard.owner == h.node
                || matches!(shard.state, ShardState::Migrating { source, .. } if source == h.node);
            if named {
                continue;
            }
            let new_owner = (h.role == grpc::RangeRole::Frozen).then_some(shard.owner);
            if h.role == grpc::RangeRole::Serving {
                return Err(
                    RecoveryError::ForeignRange { node: h.node, range: h.range, owner: shard.owner }.into()
                );
            }
            return Ok(Some(Repair::Drop { node: h.node, range: h.range, new_owner }));
        }
        Ok(None)
    }

    async fn apply_repair(
        &self,
        repair: Repair,
        report: &mut RecoveryReport,
    ) -> Result<(), CoordinatorError> {
        match repair {
            Repair::SplitMap { at } => {
                tracing::info!(at = format!("{at:#x}"), "recovery: splitting the map like the node");
                let next = self
                    .update(|m| {
                        if let Some(i) =
                            m.shards.iter().position(|s| s.range.contains(at) && s.range.first != at)
                        {
                            let shard = m.shards[i];
                            if let Ok((low, high)) = shard.range.split_at(at) {
                                m.shards[i].range = low;
                                m.shards.insert(i + 1, Shard { range: high, ..shard });
                            }
                        }
                    })
                    .await?;
                self.broadcast_epoch(&next).await;
                report.splits += 1;
            }
            Repair::SplitNode { node, range, at } => {
                tracing::info!(node, %range, at = format!("{at:#x}"), "recovery: splitting a node's range like the map");
                let mut client = self.node_client(node).await?;
                client
                    .split_range(SplitRangeRequest {
                        range: Some(range.into()),
                        at,
                        epoch: self.map().epoch + 1,
                    })
                    .await?;
                report.splits += 1;
            }
            Repair::RollForward { ends } => {
                let Ends { range, source, destination } = ends;
                tracing::info!(%range, source, destination, "recovery: rolling a move forward");
                let shard = self.map().shards.iter().find(|s| s.range == range).copied();
                if shard.is_some_and(|s| s.owner != destination) {
                    let next = self
                        .update(|m| {
                            if let Some(s) = m.shards.iter_mut().find(|s| s.range == range) {
                                s.owner = destination;
                                s.state = ShardState::Migrating { source, strategy: Strategy::Fulva };
                            }
                        })
                        .await?;
                    self.broadcast_epoch(&next).await;
                }
                let mut dest = self.node_client(destination).await?;
                let incoming =
                    dest.migration_status(MigrationStatusRequest { range: Some(range.into()) }).await;
                let pass = match incoming {
                    // Finished there already: only the commit's clean-up is left.
                    Err(err) if err.is_not_found() => Ok(()),
                    Err(err) => Err(err.into()),
                    // Never started: nothing would ever finish it.
                    Ok(status) if !status.active && !status.done => {
                        Err(RecoveryError::NeverStarted { range, node: destination }.into())
                    }
                    Ok(_) => {
                        let never = CancellationToken::new();
                        self.wait_for_pass(
                            &mut dest,
                            destination,
                            source,
                            range,
                            MoveOptions::default(),
                            &never,
                            &mut |_| {},
                        )
                        .await
                        .map(|_| ())
                    }
                };
                match pass {
                    Ok(()) => {
                        self.commit(ends).await?;
                        report.rolled_forward.push(range);
                    }
                    Err(err) => {
                        tracing::warn!(%range, error = %err, "recovery: the pull failed; moving the range back");
                        self.move_back(ends, 0).await?;
                        report.rolled_back.push(range);
                    }
                }
            }
            Repair::Unfreeze { ends } => {
                let Ends { range, source, destination } = ends;
                tracing::info!(%range, source, destination, "recovery: undoing a move that never served");
                let epoch = self.map().epoch + 1;
                let mut src = self.node_client(source).await?;
                src.unfreeze_range(UnfreezeRangeRequest { range: Some(range.into()), epoch }).await?;
                report.rolled_back.push(range);
            }
            Repair::MoveBack { ends } => {
                tracing::info!(range = %ends.range, source = ends.source, destination = ends.destination, "recovery: moving a failed move back");
                self.move_back(ends, 0).await?;
                report.rolled_back.push(ends.range);
            }
            Repair::DeclareLost { node, range } => {
                let map = self.map();
                let declared = self.declare_lost(&map, &[(node, range, LossCause::NotHeld)], &[node]).await?;
                report.lost.extend(declared.iter().flat_map(|l| l.ranges.iter().map(|&(r, _)| r)));
            }
            Repair::ReclaimWithoutDestination { ends } => {
                tracing::error!(
                    range = %ends.range,
                    source = ends.source,
                    destination = ends.destination,
                    "recovery: the destination of a move restarted; the source serves the range again \
                     (the writes the destination alone took since the freeze are lost)"
                );
                self.reclaim_without_destination(ends).await?;
                report.rolled_back.push(ends.range);
            }
            Repair::Drop { node, range, new_owner } => {
                tracing::info!(node, %range, "recovery: dropping a leftover copy");
                let mut client = self.node_client(node).await?;
                let request = DropRangeRequest {
                    range: Some(range.into()),
                    epoch: self.map().epoch + 1,
                    new_owner: new_owner.unwrap_or(0),
                    has_new_owner: new_owner.is_some(),
                };
                match client.drop_range(request).await {
                    Ok(_) => {}
                    Err(err) if err.is_not_found() => {}
                    Err(err) => return Err(err.into()),
                }
                report.dropped.push((node, range));
            }
        }
        Ok(())
    }
}
