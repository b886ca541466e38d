//! What the client knows of the moves in progress: for each, the progress
//! its destination last reported (range, source, cursor, done) and the keys
//! the destination has shown it holds (learned keys).
//!
//! This knowledge only decides where a read goes first. An answer is taken
//! from one node alone only when that node's own reply says it may be: the
//! range is not moving there, its cursor covers the key, or it holds the key
//! (`Outcome::held`). A reply that contradicts what the client believed (the
//! move ended, was aborted, or is a new move of the same range) corrects the
//! tracker, so stale knowledge costs a round trip, never a wrong answer.

use fulva_proto::{HashRange, MigrationProgress, NodeId, ShardMap, ShardState, Strategy};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

/// Learned keys kept per move unless the client's configuration says otherwise.
pub const DEFAULT_LEARNED_KEYS_PER_MOVE: usize = 65_536;

/// A move the client knows of, from the map or from a destination's reply:
/// its progress as the destination last reported it (range, source, cursor,
/// done), and the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownMove {
    /// What the client knows of the move's progress.
    pub progress: MigrationProgress,
    /// Node the range goes to.
    pub destination: NodeId,
}

impl KnownMove {
    /// Whether a read of `hash` may need the source: the hash is in the
    /// moving range and the destination has not reported it covered.
    pub fn needs_source(&self, hash: u64) -> bool {
        self.progress.range.contains(hash) && !self.progress.covers(hash)
    }

    fn same_move(&self, progress: &MigrationProgress, destination: NodeId) -> bool {
        self.progress.range == progress.range
            && self.progress.source == progress.source
            && self.destination == destination
    }
}

/// Where the tracker sends a read of one hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveRoute {
    /// No move the client knows of holds the hash back: the map's owner.
    NotMoving,
    /// The destination has shown it holds the key: the destination alone.
    Learned(KnownMove),
    /// The destination may not hold the key yet: both ends.
    Dual(KnownMove),
}

struct TrackedMove {
    known: KnownMove,
    /// Hashes of keys the destination answered as held during this move.
    learned: HashSet<u64>,
}

/// The moves the client knows of, shared by every request.
pub struct MoveTracker {
    moves: Mutex<Vec<TrackedMove>>,
    /// Whether `moves` is non-empty: reads skip its lock when no move is known.
    has_moves: AtomicBool,
    learned_limit: usize,
}

impl MoveTracker {
    /// The moves `map` shows, keeping at most `learned_limit` learned keys per move.
    pub fn new(map: &ShardMap, learned_limit: usize) -> MoveTracker {
        let tracker =
            MoveTracker { moves: Mutex::new(Vec::new()), has_moves: AtomicBool::new(false), learned_limit };
        tracker.install(map);
        tracker
    }

    /// Where a read of `hash` goes.
    #[inline]
    pub fn route(&self, hash: u64) -> MoveRoute {
        if !self.has_moves.load(Ordering::Acquire) {
            return MoveRoute::NotMoving;
        }
        let moves = self.moves.lock();
        match moves.iter().find(|m| m.known.needs_source(hash)) {
            None => MoveRoute::NotMoving,
            Some(m) if m.learned.contains(&hash) => MoveRoute::Learned(m.known),
            Some(m) => MoveRoute::Dual(m.known),
        }
    }

    /// The move a read of `hash` must treat as in progress, if any.
    pub fn move_for(&self, hash: u64) -> Option<KnownMove> {
        match self.route(hash) {
            MoveRoute::NotMoving => None,
            MoveRoute::Learned(m) | MoveRoute::Dual(m) => Some(m),
        }
    }

    /// Follows a new map: moves it shows are kept with what replies taught
    /// of them (the same range, source and destination), moves learned from
    /// replies that it does not show settled yet stay, the rest go.
    pub fn install(&self, map: &ShardMap) {
        let mut moves = self.moves.lock();
        let mut known = std::mem::take(&mut *moves);
        for shard in &map.shards {
            // Only fulva moves are read at both ends; rocksteady destinations
            // answer alone (pulling missing keys first).
            let ShardState::Migrating { source, strategy: Strategy::Fulva } = shard.state else { continue };
            let fresh =
                MigrationProgress { range: shard.range, cursor: shard.range.first, source, done: false };
            let kept = known.iter().position(|m| m.known.same_move(&fresh, shard.owner));
            moves.push(match kept {
                Some(i) => known.swap_remove(i),
                None => TrackedMove {
                    known: KnownMove { progress: fresh, destination: shard.owner },
                    learned: HashSet::new(),
                },
            });
        }
        for m in known {
            let settled = map.shards.iter().any(|s| {
                s.range == m.known.progress.range
                    && s.state == ShardState::Normal
                    && s.owner == m.known.destination
            });
            if !settled && !moves.iter().any(|k| k.known.progress.range == m.known.progress.range) {
                moves.push(m);
            }
        }
        self.settle(&mut moves);
    }

    /// Takes in progress reported by `destination` (cursors only grow within a move).
    pub fn learn(&self, progress: MigrationProgress, destination: NodeId) {
        let mut moves = self.moves.lock();
        match moves.iter_mut().find(|m| m.known.progress.range == progress.range) {
            Some(m) if m.known.same_move(&progress, destination) => {
                m.known.progress.cursor = m.known.progress.cursor.max(progress.cursor);
                m.known.progress.done |= progress.done;
            }
            // Another move of the range than the one the client knew.
            Some(m) => {
                *m = TrackedMove { known: KnownMove { progress, destination }, learned: HashSet::new() }
            }
            None => moves
                .push(TrackedMove { known: KnownMove { progress, destination }, learned: HashSet::new() }),
        }
        self.settle(&mut moves);
    }

    /// Remembers that the destination of the move `progress` describes holds
    /// the key of `hash`, so later reads of it go there alone.
    pub fn learn_key(&self, progress: &MigrationProgress, destination: NodeId, hash: u64) {
        let mut moves = self.moves.lock();
        if let Some(m) = moves.iter_mut().find(|m| m.known.same_move(progress, destination)) {
            if m.learned.len() < self.learned_limit {
                m.learned.insert(hash);
            }
        }
    }

    /// A destination's reply contradicted what the client knew of the move
    /// covering `hash` (an earlier move's cursor or learned keys): its
    /// progress replaces what the client had, learned keys and all.
    pub fn correct(&self, progress: MigrationProgress, destination: NodeId) {
        let mut moves = self.moves.lock();
        moves.retain(|m| m.known.progress.range != progress.range);
        moves.push(TrackedMove { known: KnownMove { progress, destination }, learned: HashSet::new() });
        self.settle(&mut moves);
    }

    /// Forgets the move of `range` (trap 4: a source's "unknown range" means finished).
    pub fn forget(&self, range: HashRange) {
        let mut moves = self.moves.lock();
        moves.retain(|m| m.known.progress.range != range);
        self.settle(&mut moves);
    }

    /// Keys learned for the move of `range`, if the client tracks one.
    pub fn learned_keys(&self, range: HashRange) -> Option<usize> {
        self.moves.lock().iter().find(|m| m.known.progress.range == range).map(|m| m.learned.len())
    }

    fn settle(&self, moves: &mut Vec<TrackedMove>) {
        moves.retain(|m| !m.known.progress.done);
        self.has_moves.store(!moves.is_empty(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 4 shards over 3 nodes; shard 0 moves from `source` to `destination` with fulva.
    fn map(epoch: u64, source: NodeId, destination: NodeId) -> ShardMap {
        crate::test_maps::with_a_move(epoch, 4, 3, |_| 2, (source, destination))
    }

    fn progress(map: &ShardMap, cursor: u64, source: NodeId) -> MigrationProgress {
        MigrationProgress { range: map.shards[0].range, cursor, source, done: false }
    }

    #[test]
    fn a_learned_key_goes_to_the_destination_alone_and_others_to_both_ends() {
        let map = map(5, 0, 1);
        let tracker = MoveTracker::new(&map, 2);
        let range = map.shards[0].range;
        let (a, b, c) = (range.first + 10, range.first + 20, range.first + 30);
        assert!(
            matches!(tracker.route(a), MoveRoute::Dual(m) if m.destination == 1 && m.progress.source == 0)
        );
        tracker.learn_key(&progress(&map, range.first, 0), 1, a);
        assert!(matches!(tracker.route(a), MoveRoute::Learned(m) if m.destination == 1));
        assert!(matches!(tracker.route(b), MoveRoute::Dual(_)));
        // The set is bounded: the third key is not kept.
        tracker.learn_key(&progress(&map, range.first, 0), 1, b);
        tracker.learn_key(&progress(&map, range.first, 0), 1, c);
        assert_eq!(tracker.learned_keys(range), Some(2));
        assert!(matches!(tracker.route(c), MoveRoute::Dual(_)));
        // A key of another move (another source) is not learned for this one.
        tracker.learn_key(&progress(&map, range.first, 2), 1, c);
        assert!(matches!(tracker.route(c), MoveRoute::Dual(_)));
        // Outside the move: the owner.
        assert_eq!(tracker.route(map.shards[2].range.first), MoveRoute::NotMoving);
    }

    #[test]
    fn learned_keys_go_when_the_move_ends_aborts_or_changes() {
        let map5 = map(5, 0, 1);
        let range = map5.shards[0].range;
        let key = range.first + 10;
        let learned = |tracker: &MoveTracker| matches!(tracker.route(key), MoveRoute::Learned(_));
        let tracker = MoveTracker::new(&map5, 16);
        tracker.learn_key(&progress(&map5, range.first, 0), 1, key);
        // A newer map showing the same move keeps them.
        tracker.install(&map(6, 0, 1));
        assert!(learned(&tracker));
        // An abort carries the range back: the reverse move is another move.
        tracker.install(&map(7, 1, 0));
        assert!(!learned(&tracker));
        assert!(
            matches!(tracker.route(key), MoveRoute::Dual(m) if m.destination == 0 && m.progress.source == 1)
        );
        // A reply from another move of the range replaces what was known.
        let tracker = MoveTracker::new(&map5, 16);
        tracker.learn_key(&progress(&map5, range.first, 0), 1, key);
        tracker.learn(progress(&map5, range.first, 2), 1);
        assert!(!learned(&tracker));
        // The move ends: nothing is held back any more.
        let tracker = MoveTracker::new(&map5, 16);
        tracker.learn_key(&progress(&map5, range.first, 0), 1, key);
        tracker.learn(MigrationProgress { done: true, ..progress(&map5, range.first, 0) }, 1);
        assert_eq!(tracker.route(key), MoveRoute::NotMoving);
    }

    #[test]
    fn a_contradicting_reply_resets_the_cursor_and_the_learned_keys() {
        let map = map(5, 0, 1);
        let range = map.shards[0].range;
        let tracker = MoveTracker::new(&map, 16);
        let (key, learned) = (range.first + 100, range.first + 500);
        tracker.learn(progress(&map, range.first + 200, 0), 1);
        tracker.learn_key(&progress(&map, range.first + 200, 0), 1, learned);
        assert_eq!(tracker.route(key), MoveRoute::NotMoving, "the cursor passed the key");
        // Cursors only grow within a move: an older reply does not lower it.
        tracker.learn(progress(&map, range.first, 0), 1);
        assert_eq!(tracker.route(key), MoveRoute::NotMoving);
        // The destination says otherwise (a new move of the range that the
        // client took for the old one): its word replaces the client's.
        tracker.correct(progress(&map, range.first, 0), 1);
        assert!(matches!(tracker.route(key), MoveRoute::Dual(_)));
        assert!(matches!(tracker.route(learned), MoveRoute::Dual(_)));
    }
}
