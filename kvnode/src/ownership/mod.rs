//! Which hash ranges this node serves, and where the ones it gave away went;
//! the read and write rules of each role; and the state of a move coming in
//! (`incoming`, with its `phase`). Below the data path (`crate::handler`) and
//! the migration engine (`crate::migration`): it depends on neither.

pub mod incoming;
mod phase;

pub use incoming::{IncomingMove, MoveEvent, MovePhase, PassStart, PullError, TrapSwitches};

use crate::metrics::{NodeMetrics, RangeMetrics};
use fulva_proto::{Epoch, HashRange, NodeId};
use parking_lot::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What this node does with a range it holds.
#[derive(Clone)]
pub enum RangeRole {
    /// Serves reads and writes.
    Serving,
    /// Source of a source-driven move while the destination copies: serves as
    /// usual, but deletes leave tombstones so the final pass ships them.
    Copying {
        /// Node the range moves to.
        destination: NodeId,
    },
    /// Source of a move after the freeze: writes are redirected to the
    /// destination; reads are answered only to clients reading both nodes.
    /// When `locked` (source-driven hand-over), every request gets Retry.
    Frozen {
        /// Node the range moves to.
        destination: NodeId,
        /// The lock window of a source-driven move.
        locked: bool,
    },
    /// Destination of a move.
    Incoming(Arc<IncomingMove>),
}

/// What a range's role lets a read do on this node.
pub enum ReadRule<'a> {
    /// Answer from the store.
    Answer,
    /// A fulva destination: answer from the store; the reply carries the
    /// move's progress and marks objects that arrived during the move held.
    AnswerForMove(&'a Arc<IncomingMove>),
    /// A rocksteady destination: answer if the key is here (pulled, shipped
    /// hot or written here); otherwise pull it from the source first.
    AnswerOrPullFirst(&'a Arc<IncomingMove>),
    /// Not now: the client retries.
    Retry,
    /// Send the client to the node named, or to its map when `None`.
    Redirect(Option<NodeId>),
}

/// What a range's role lets a write do on this node.
pub enum WriteRule<'a> {
    /// Apply it. Deletes leave a tombstone when `keep_tombstone`; `incoming`
    /// is the move the range is coming in by, if any.
    Apply {
        /// Whether a delete leaves a versioned tombstone.
        keep_tombstone: bool,
        /// The move bringing the range in.
        incoming: Option<&'a Arc<IncomingMove>>,
    },
    /// A retry of a write applied here is answered from its record; any
    /// other write retries.
    ReplayOrRetry,
    /// A retry of a write applied here is answered from its record; any
    /// other write goes to the node named.
    ReplayOrRedirect(NodeId),
    /// Not now: the client retries.
    Retry,
}

impl RangeRole {
    /// The rule for a read of a key in the range. `dual` is the destination
    /// a dual read names (it reads both ends of that move).
    pub fn read_rule(&self, dual: Option<NodeId>) -> ReadRule<'_> {
        use fulva_proto::Strategy;
        match (self, dual) {
            (RangeRole::Serving | RangeRole::Copying { .. }, None) => ReadRule::Answer,
            // The lock window of a source-driven move: downtime.
            (RangeRole::Frozen { locked: true, .. }, _) => ReadRule::Retry,
            // A frozen source answers only a client reading both ends of
            // this very move; others learn of the move from the redirect.
            (RangeRole::Frozen { destination, .. }, Some(to)) if *destination == to => ReadRule::Answer,
            (RangeRole::Frozen { destination, .. }, _) => ReadRule::Redirect(Some(*destination)),
            // A dual read sent here believes in a move this node is not the
            // frozen source of: no answer from here is one it wants.
            (_, Some(_)) => ReadRule::Redirect(None),
            (RangeRole::Incoming(mv), None) if !mv.is_active() => ReadRule::Retry,
            (RangeRole::Incoming(mv), None) => match mv.strategy {
                Strategy::Fulva => ReadRule::AnswerForMove(mv),
                Strategy::Rocksteady => ReadRule::AnswerOrPullFirst(mv),
                Strategy::SourceDriven => ReadRule::Answer,
            },
        }
    }

    /// The rule for a write of a key in the range.
    pub fn write_rule(&self) -> WriteRule<'_> {
        match self {
            RangeRole::Serving => WriteRule::Apply { keep_tombstone: false, incoming: None },
            // The final pass of a source-driven move must ship deletes too.
            RangeRole::Copying { .. } => WriteRule::Apply { keep_tombstone: true, incoming: None },
            RangeRole::Frozen { locked: true, .. } => WriteRule::ReplayOrRetry,
            RangeRole::Frozen { destination, .. } => WriteRule::ReplayOrRedirect(*destination),
            RangeRole::Incoming(mv) if !mv.is_active() => WriteRule::Retry,
            // Until the move completes, a delete must outrank the old copy
            // still on its way from the source (trap 3).
            RangeRole::Incoming(mv) => WriteRule::Apply { keep_tombstone: true, incoming: Some(mv) },
        }
    }
}

/// A range this node holds, with its role and metric handles.
pub struct OwnedRange {
    /// Hashes covered.
    pub range: HashRange,
    /// Per-range counters and gauges.
    pub metrics: RangeMetrics,
    /// Serving, frozen source or incoming destination.
    pub role: RangeRole,
}

impl OwnedRange {
    fn new(range: HashRange, metrics: &NodeMetrics, role: RangeRole) -> OwnedRange {
        OwnedRange { range, metrics: metrics.range(range), role }
    }
}

/// What a source hands over when a move switches its range's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handover {
    /// A version no object of the range exceeds, read while no write could run.
    pub version_ceiling: u64,
    /// Objects in the range (from its gauges).
    pub objects: u64,
    /// Key and value bytes in the range (from its gauges).
    pub bytes: u64,
}

impl Handover {
    fn of(owned: &OwnedRange, version_ceiling: u64) -> Handover {
        Handover {
            version_ceiling,
            objects: owned.metrics.objects.get().max(0) as u64,
            bytes: owned.metrics.stored_bytes.get().max(0) as u64,
        }
    }
}

/// Why a range could not be assigned or dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OwnershipError {
    /// The range overlaps one already served without being equal to it.
    #[error("range {new} overlaps served range {existing}")]
    Overlap {
        /// Range asked for.
        new: HashRange,
        /// Range already served.
        existing: HashRange,
    },
    /// The range to drop is not served here.
    #[error("range {0} is not served by this node")]
    NotServed(HashRange),
    /// The range is not in the state the operation needs.
    #[error("range {range} cannot {operation}: {state}")]
    WrongState {
        /// The range.
        range: HashRange,
        /// What was asked.
        operation: &'static str,
        /// Its state.
        state: &'static str,
    },
    /// The request carries an epoch older than the node's.
    #[error("epoch {given} is older than the node's epoch {current}")]
    StaleEpoch {
        /// Epoch in the request.
        given: Epoch,
        /// Node's epoch.
        current: Epoch,
    },
}

/// Where a hash goes on this node.
pub enum Placement<'a> {
    /// Served here.
    Served(&'a OwnedRange),
    /// Not served here; `redirect` is the new owner when this node gave the range away.
    Elsewhere {
        /// New owner, when known.
        redirect: Option<NodeId>,
    },
}

/// The node's ownership table and shard-map epoch.
#[derive(Default)]
pub struct Ownership {
    served: RwLock<Vec<OwnedRange>>,
    moved: RwLock<Vec<(HashRange, NodeId)>>,
    epoch: AtomicU64,
}

impl Ownership {
    /// The node's shard-map epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch.load(Ordering::Acquire)
    }

    /// Raises the epoch (never lowers it); returns the epoch now in force.
    pub fn observe_epoch(&self, epoch: Epoch) -> Epoch {
        self.epoch.fetch_max(epoch, Ordering::AcqRel).max(epoch)
    }

    fn check_epoch(&self, epoch: Epoch) -> Result<(), OwnershipError> {
        let current = self.epoch();
        if epoch < current {
            return Err(OwnershipError::StaleEpoch { given: epoch, current });
        }
        Ok(())
    }

    /// Runs `f` on the served range equal to `range` under the table's write
    /// lock (which waits for requests in flight), once `epoch` is checked.
    fn change_range<R>(
        &self,
        range: HashRange,
        epoch: Epoch,
        f: impl FnOnce(&mut OwnedRange) -> Result<R, OwnershipError>,
    ) -> Result<R, OwnershipError> {
        self.check_epoch(epoch)?;
        let mut served = self.served.write();
        let owned = served.iter_mut().find(|r| r.range == range).ok_or(OwnershipError::NotServed(range))?;
        f(owned)
    }

    /// Runs `f` with the placement of `hash`, holding the table's read lock so
    /// a concurrent drop waits for requests already inside the range.
    #[inline]
    pub fn with_placement<R>(&self, hash: u64, f: impl FnOnce(Placement<'_>) -> R) -> R {
        let served = self.served.read();
        let idx = served.partition_point(|r| r.range.first <= hash);
        if let Some(owned) = idx.checked_sub(1).map(|i| &served[i]).filter(|r| r.range.contains(hash)) {
            return f(Placement::Served(owned));
        }
        drop(served);
        let redirect = self.moved.read().iter().rev().find(|(r, _)| r.contains(hash)).map(|(_, n)| *n);
        f(Placement::Elsewhere { redirect })
    }

    /// Starts serving `range` as of `epoch`. Assigning a range already served is a no-op.
    pub fn assign(
        &self,
        range: HashRange,
        epoch: Epoch,
        metrics: &NodeMetrics,
    ) -> Result<(), OwnershipError> {
        self.check_epoch(epoch)?;
        let mut served = self.served.write();
        if let Some(existing) = served.iter().find(|r| r.range.overlaps(&range)) {
            if existing.range == range {
                return Ok(());
            }
            return Err(OwnershipError::Overlap { new: range, existing: existing.range });
        }
        let idx = served.partition_point(|r| r.range.first < range.first);
        served.insert(idx, OwnedRange::new(range, metrics, RangeRole::Serving));
        self.moved.write().retain(|(r, _)| !r.overlaps(&range));
        self.observe_epoch(epoch);
        Ok(())
    }

    /// Takes `range` as the destination of a move (requests get Retry until
    /// the move is activated).
    pub fn prepare_incoming(
        &self,
        incoming: Arc<IncomingMove>,
        epoch: Epoch,
        metrics: &NodeMetrics,
    ) -> Result<(), OwnershipError> {
        self.check_epoch(epoch)?;
        let range = incoming.range;
        let mut served = self.served.write();
        if let Some(existing) = served.iter().find(|r| r.range.overlaps(&range)) {
            return Err(OwnershipError::Overlap { new: range, existing: existing.range });
        }
        let idx = served.partition_point(|r| r.range.first < range.first);
        served.insert(idx, OwnedRange::new(range, metrics, RangeRole::Incoming(incoming)));
        self.moved.write().retain(|(r, _)| !r.overlaps(&range));
        Ok(())
    }

    /// Freezes a served range as the source of a move to `destination`. Taking
    /// the table's write lock waits for every request in flight, so when this
    /// returns no write is running in the range. `version_ceiling` is read
    /// under that lock (the store's highest version given on this node).
    pub fn freeze(
        &self,
        range: HashRange,
        destination: NodeId,
        epoch: Epoch,
        locked: bool,
        version_ceiling: impl FnOnce() -> u64,
    ) -> Result<Handover, OwnershipError> {
        self.change_range(range, epoch, |owned| {
            match owned.role {
                RangeRole::Serving => owned.role = RangeRole::Frozen { destination, locked },
                RangeRole::Copying { destination: d } if d == destination => {
                    owned.role = RangeRole::Frozen { destination, locked }
                }
                RangeRole::Copying { .. } => {
                    return Err(OwnershipError::WrongState {
                        range,
                        operation: "freeze",
                        state: "copying to another node",
                    })
                }
                RangeRole::Frozen { destination: d, .. } if d == destination => {}
                RangeRole::Frozen { .. } => {
                    return Err(OwnershipError::WrongState {
                        range,
                        operation: "freeze",
                        state: "frozen for another move",
                    })
                }
                // An aborted move: the destination gives the range back to its
                // source. The pull stops; its late batches are no longer applied.
                RangeRole::Incoming(ref mv) if mv.source == destination => {
                    mv.cancel();
                    owned.role = RangeRole::Frozen { destination, locked };
                }
                RangeRole::Incoming(_) => {
                    return Err(OwnershipError::WrongState {
                        range,
                        operation: "freeze",
                        state: "still moving in",
                    })
                }
            }
            Ok(Handover::of(owned, version_ceiling()))
        })
    }

    /// Takes back a range this node holds frozen toward `incoming.source`
    /// (the move was aborted): the node keeps its copy and becomes the
    /// destination of the reverse move (requests get Retry until activated).
    pub fn reclaim(&self, incoming: Arc<IncomingMove>, epoch: Epoch) -> Result<(), OwnershipError> {
        self.check_epoch(epoch)?;
        let range = incoming.range;
        let mut served = self.served.write();
        let owned = served.iter_mut().find(|r| r.range == range).ok_or(OwnershipError::NotServed(range))?;
        match &owned.role {
            RangeRole::Frozen { destination, .. } if *destination == incoming.source => {
                owned.role = RangeRole::Incoming(incoming);
                Ok(())
            }
            RangeRole::Incoming(mv) if mv.source == incoming.source => Ok(()),
            _ => Err(OwnershipError::WrongState {
                range,
                operation: "be reclaimed",
                state: "not frozen toward that node",
            }),
        }
    }

    /// Serves a copying or frozen range again, as before its move began (the
    /// move was cancelled before the destination took any write).
    pub fn unfreeze(&self, range: HashRange, epoch: Epoch) -> Result<(), OwnershipError> {
        self.change_range(range, epoch, |owned| {
            match owned.role {
                RangeRole::Serving => {}
                RangeRole::Copying { .. } | RangeRole::Frozen { .. } => owned.role = RangeRole::Serving,
                RangeRole::Incoming(_) => {
                    return Err(OwnershipError::WrongState {
                        range,
                        operation: "unfreeze",
                        state: "moving in",
                    })
                }
            }
            Ok(())
        })
    }

    /// Starts a source-driven copy of a served range: it stays served, but
    /// deletes keep tombstones. `version_ceiling` is read under the table's
    /// write lock, so every write after the switch gets a version above it.
    pub fn begin_copy(
        &self,
        range: HashRange,
        destination: NodeId,
        epoch: Epoch,
        version_ceiling: impl FnOnce() -> u64,
    ) -> Result<Handover, OwnershipError> {
        self.change_range(range, epoch, |owned| {
            match owned.role {
                RangeRole::Serving => owned.role = RangeRole::Copying { destination },
                RangeRole::Copying { destination: d } if d == destination => {}
                _ => {
                    return Err(OwnershipError::WrongState {
                        range,
                        operation: "copy",
                        state: "already moving",
                    })
                }
            }
            Ok(Handover::of(owned, version_ceiling()))
        })
    }

    /// Turns a finished incoming range into a plainly served one.
    pub fn finish_incoming(&self, range: HashRange, epoch: Epoch) -> Result<(), OwnershipError> {
        self.finish_incoming_with(range, epoch, false)
    }

    /// Ends a move into this node whose source is gone: the pull stops and
    /// the range is served with what arrived.
    pub fn abandon_source(&self, range: HashRange, epoch: Epoch) -> Result<(), OwnershipError> {
        self.finish_incoming_with(range, epoch, true)
    }

    fn finish_incoming_with(
        &self,
        range: HashRange,
        epoch: Epoch,
        abandon: bool,
    ) -> Result<(), OwnershipError> {
        self.change_range(range, epoch, |owned| {
            match &owned.role {
                RangeRole::Incoming(mv) if abandon => {
                    mv.cancel();
                    owned.role = RangeRole::Serving
                }
                RangeRole::Incoming(mv) if mv.is_done() => owned.role = RangeRole::Serving,
                RangeRole::Incoming(_) => {
                    return Err(OwnershipError::WrongState {
                        range,
                        operation: "finish",
                        state: "not fully moved in",
                    })
                }
                RangeRole::Serving => {}
                RangeRole::Frozen { .. } | RangeRole::Copying { .. } => {
                    return Err(OwnershipError::WrongState {
                        range,
                        operation: "finish",
                        state: "moving out",
                    })
                }
            }
            self.observe_epoch(epoch);
            Ok(())
        })
    }

    /// The incoming move of `range`, if the node is its destination.
    pub fn incoming(&self, range: HashRange) -> Option<Arc<IncomingMove>> {
        self.served.read().iter().find(|r| r.range == range).and_then(|r| match &r.role {
            RangeRole::Incoming(mv) => Some(mv.clone()),
            _ => None,
        })
    }

    /// Splits a served range at `at` (the first hash of the upper part).
    pub fn split(
        &self,
        range: HashRange,
        at: u64,
        epoch: Epoch,
        metrics: &NodeMetrics,
    ) -> Result<(), OwnershipError> {
        self.check_epoch(epoch)?;
        let (low, high) = range.split_at(at).map_err(|_| OwnershipError::WrongState {
            range,
            operation: "split",
            state: "bad split point",
        })?;
        let mut served = self.served.write();
        let idx = served.iter().position(|r| r.range == range).ok_or(OwnershipError::NotServed(range))?;
        if !matches!(served[idx].role, RangeRole::Serving) {
            return Err(OwnershipError::WrongState { range, operation: "split", state: "moving" });
        }
        let old = served.remove(idx);
        metrics.forget_range(&old.metrics);
        let (objects, bytes) = (old.metrics.objects.get(), old.metrics.stored_bytes.get());
        let lower = OwnedRange::new(low, metrics, RangeRole::Serving);
        let upper = OwnedRange::new(high, metrics, RangeRole::Serving);
        // Gauges are re-measured by the caller; keep totals meanwhile.
        lower.metrics.objects.set(objects);
        lower.metrics.stored_bytes.set(bytes);
        served.insert(idx, upper);
        served.insert(idx, lower);
        self.observe_epoch(epoch);
        Ok(())
    }

    /// Stops serving `range` as of `epoch`; `new_owner` is named in later redirects.
    /// Waits for requests already executing in the range.
    pub fn drop_range(
        &self,
        range: HashRange,
        epoch: Epoch,
        new_owner: Option<NodeId>,
        metrics: &NodeMetrics,
    ) -> Result<(), OwnershipError> {
        self.check_epoch(epoch)?;
        let mut served = self.served.write();
        let idx = served.iter().position(|r| r.range == range).ok_or(OwnershipError::NotServed(range))?;
        let owned = served.remove(idx);
        if let RangeRole::Incoming(mv) = &owned.role {
            mv.cancel();
        }
        metrics.forget_range(&owned.metrics);
        if let Some(node) = new_owner {
            let mut moved = self.moved.write();
            moved.retain(|(r, _)| !range.covers(r));
            moved.push((range, node));
        }
        self.observe_epoch(epoch);
        Ok(())
    }

    /// Runs `f` over every served range.
    pub fn for_each(&self, mut f: impl FnMut(&OwnedRange)) {
        for owned in self.served.read().iter() {
            f(owned);
        }
    }

    /// The node a move of `range` out of here names as its destination:
    /// set while a served range covering it is frozen or copying.
    pub fn destination_of(&self, range: &HashRange) -> Option<NodeId> {
        self.served.read().iter().filter(|owned| owned.range.covers(range)).find_map(|owned| {
            match owned.role {
                RangeRole::Copying { destination } | RangeRole::Frozen { destination, .. } => {
                    Some(destination)
                }
                _ => None,
            }
        })
    }

    /// The served ranges.
    pub fn ranges(&self) -> Vec<HashRange> {
        self.served.read().iter().map(|r| r.range).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming(strategy: fulva_proto::Strategy, active: bool) -> RangeRole {
        let mv = Arc::new(IncomingMove::new(HashRange::FULL, 0, "127.0.0.1:1".into(), strategy));
        if active {
            assert!(mv.begin_pass(crate::ownership::PassStart { serve: true, ..Default::default() }));
        }
        RangeRole::Incoming(mv)
    }

    /// A read rule as a word, for tables.
    fn read(role: &RangeRole, dual: Option<NodeId>) -> String {
        match role.read_rule(dual) {
            ReadRule::Answer => "answer".into(),
            ReadRule::AnswerForMove(_) => "answer+progress".into(),
            ReadRule::AnswerOrPullFirst(_) => "answer-or-pull".into(),
            ReadRule::Retry => "retry".into(),
            ReadRule::Redirect(to) => format!("redirect {to:?}"),
        }
    }

    fn write(role: &RangeRole) -> String {
        match role.write_rule() {
            WriteRule::Apply { keep_tombstone, incoming } => {
                format!("apply tombstone={keep_tombstone} incoming={}", incoming.is_some())
            }
            WriteRule::ReplayOrRetry => "replay-or-retry".into(),
            WriteRule::ReplayOrRedirect(to) => format!("replay-or-redirect {to}"),
            WriteRule::Retry => "retry".into(),
        }
    }

    #[test]
    fn each_role_reads_and_writes_by_its_rule() {
        use fulva_proto::Strategy::*;
        let frozen = RangeRole::Frozen { destination: 4, locked: false };
        let locked = RangeRole::Frozen { destination: 4, locked: true };
        let cases: Vec<(&str, RangeRole, [&str; 3], &str)> = vec![
            // role, reads (plain, dual naming node 4, dual naming node 5), write
            (
                "serving",
                RangeRole::Serving,
                ["answer", "redirect None", "redirect None"],
                "apply tombstone=false incoming=false",
            ),
            (
                "copying",
                RangeRole::Copying { destination: 4 },
                ["answer", "redirect None", "redirect None"],
                "apply tombstone=true incoming=false",
            ),
            ("frozen", frozen, ["redirect Some(4)", "answer", "redirect Some(4)"], "replay-or-redirect 4"),
            ("locked", locked, ["retry", "retry", "retry"], "replay-or-retry"),
            (
                "incoming, not active",
                incoming(Fulva, false),
                ["retry", "redirect None", "redirect None"],
                "retry",
            ),
            (
                "fulva destination",
                incoming(Fulva, true),
                ["answer+progress", "redirect None", "redirect None"],
                "apply tombstone=true incoming=true",
            ),
            (
                "rocksteady destination",
                incoming(Rocksteady, true),
                ["answer-or-pull", "redirect None", "redirect None"],
                "apply tombstone=true incoming=true",
            ),
        ];
        for (name, role, reads, writes) in cases {
            assert_eq!(read(&role, None), reads[0], "{name}, plain read");
            assert_eq!(read(&role, Some(4)), reads[1], "{name}, dual read of the move to 4");
            assert_eq!(read(&role, Some(5)), reads[2], "{name}, dual read of another move");
            assert_eq!(write(&role), writes, "{name}, write");
        }
    }

    fn placed(o: &Ownership, hash: u64) -> Result<HashRange, Option<NodeId>> {
        o.with_placement(hash, |p| match p {
            Placement::Served(r) => Ok(r.range),
            Placement::Elsewhere { redirect } => Err(redirect),
        })
    }

    #[test]
    fn assign_drop_and_redirect() {
        let metrics = NodeMetrics::new();
        let o = Ownership::default();
        let parts = HashRange::FULL.divide(4);
        o.assign(parts[1], 3, &metrics).unwrap();
        o.assign(parts[3], 3, &metrics).unwrap();
        assert_eq!(o.assign(parts[1], 3, &metrics), Ok(()));
        assert_eq!(placed(&o, parts[1].first), Ok(parts[1]));
        assert_eq!(placed(&o, parts[0].last), Err(None));
        o.drop_range(parts[1], 4, Some(7), &metrics).unwrap();
        assert_eq!(placed(&o, parts[1].first + 5), Err(Some(7)));
        assert_eq!(o.epoch(), 4);
        assert!(matches!(o.assign(parts[2], 2, &metrics), Err(OwnershipError::StaleEpoch { .. })));
        let wide = HashRange::new(parts[3].first - 10, parts[3].first + 10).unwrap();
        assert!(matches!(o.assign(wide, 5, &metrics), Err(OwnershipError::Overlap { .. })));
        assert_eq!(o.drop_range(parts[0], 5, None, &metrics), Err(OwnershipError::NotServed(parts[0])));
    }

    fn role(o: &Ownership, range: HashRange) -> &'static str {
        let mut name = "absent";
        o.for_each(|r| {
            if r.range == range {
                name = match r.role {
                    RangeRole::Serving => "serving",
                    RangeRole::Copying { .. } => "copying",
                    RangeRole::Frozen { .. } => "frozen",
                    RangeRole::Incoming(_) => "incoming",
                };
            }
        });
        name
    }

    #[test]
    fn an_aborted_move_hands_the_range_back() {
        let metrics = NodeMetrics::new();
        let (source, dest) = (Ownership::default(), Ownership::default());
        let range = HashRange::FULL.divide(2)[0];
        source.assign(range, 1, &metrics).unwrap();
        let incoming =
            |from: NodeId| Arc::new(IncomingMove::new(range, from, String::new(), Default::default()));
        dest.prepare_incoming(incoming(0), 2, &metrics).unwrap();
        source.freeze(range, 1, 2, false, || 10).unwrap();
        // Only the move's own destination may take the range back, and only
        // the move's source may freeze an incoming range toward itself.
        assert!(matches!(source.reclaim(incoming(2), 3), Err(OwnershipError::WrongState { .. })));
        assert!(matches!(dest.freeze(range, 2, 3, false, || 0), Err(OwnershipError::WrongState { .. })));
        source.reclaim(incoming(1), 3).unwrap();
        assert_eq!(role(&source, range), "incoming");
        dest.freeze(range, 0, 3, false, || 20).unwrap();
        assert_eq!(role(&dest, range), "frozen");
        assert!(matches!(source.unfreeze(range, 3), Err(OwnershipError::WrongState { .. })));
        // A source-driven copy cancelled before the hand-over serves again.
        let other = HashRange::FULL.divide(2)[1];
        source.assign(other, 3, &metrics).unwrap();
        source.begin_copy(other, 1, 3, || 0).unwrap();
        source.unfreeze(other, 3).unwrap();
        assert_eq!(role(&source, other), "serving");
    }
}
