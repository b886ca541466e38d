//! Which hash ranges this node serves, and where the ones it gave away went.

use crate::metrics::{NodeMetrics, RangeMetrics};
use fulva_proto::{Epoch, HashRange, NodeId};
use parking_lot::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// A range this node serves, with its metric handles.
pub struct OwnedRange {
    /// Hashes served.
    pub range: HashRange,
    /// Per-range counters and gauges.
    pub metrics: RangeMetrics,
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
        served.insert(idx, OwnedRange { range, metrics: metrics.range(range) });
        self.moved.write().retain(|(r, _)| !r.overlaps(&range));
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

    /// The served ranges.
    pub fn ranges(&self) -> Vec<HashRange> {
        self.served.read().iter().map(|r| r.range).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
