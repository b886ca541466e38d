//! Where a request goes: the cached shard map and the moves the client
//! knows of ([`MoveTracker`]), and the decision a read makes from them
//! ([`Routes::route`]).

use crate::moves::{KnownMove, MoveRoute, MoveTracker, DEFAULT_LEARNED_KEYS_PER_MOVE};
use arc_swap::ArcSwap;
use fulva_proto::{HashRange, MigrationProgress, NodeId, ShardMap};
use std::sync::Arc;

/// Where a read of one key goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// To the owner the map names.
    Owner(NodeId),
    /// To a move's destination alone: it has shown it holds the key.
    Learned(KnownMove),
    /// To both ends of a move whose destination may not hold the key yet.
    Dual(KnownMove),
    /// The map names no owner (it does not cover the hash).
    Unrouted,
}

/// The client's routing state, shared by every request.
pub struct Routes {
    map: ArcSwap<ShardMap>,
    moves: MoveTracker,
}

impl Routes {
    /// Routes by `map` (its moves included).
    pub fn new(map: ShardMap) -> Routes {
        Routes::with_learned_limit(map, DEFAULT_LEARNED_KEYS_PER_MOVE)
    }

    /// Routes by `map`, keeping at most `learned_limit` learned keys per move.
    pub fn with_learned_limit(map: ShardMap, learned_limit: usize) -> Routes {
        Routes { moves: MoveTracker::new(&map, learned_limit), map: ArcSwap::from_pointee(map) }
    }

    /// The cached map.
    pub fn map(&self) -> Arc<ShardMap> {
        self.map.load_full()
    }

    /// The cached map's epoch.
    pub fn epoch(&self) -> u64 {
        self.map.load().epoch
    }

    /// What the client knows of moves in progress.
    pub fn moves(&self) -> &MoveTracker {
        &self.moves
    }

    /// Where a read of `hash` goes now.
    #[inline]
    pub fn route(&self, hash: u64) -> Route {
        match self.moves.route(hash) {
            MoveRoute::Dual(mv) => Route::Dual(mv),
            MoveRoute::Learned(mv) => Route::Learned(mv),
            MoveRoute::NotMoving => self.map.load().owner_of(hash).map_or(Route::Unrouted, Route::Owner),
        }
    }

    /// Installs `map` if it is newer than the cached one; returns the map in force.
    pub fn install(&self, map: ShardMap) -> Arc<ShardMap> {
        let map = Arc::new(map);
        let previous =
            self.map.rcu(|cached| if map.epoch > cached.epoch { map.clone() } else { cached.clone() });
        if map.epoch > previous.epoch {
            self.moves.install(&map);
            map
        } else {
            previous
        }
    }

    /// The move a read of `hash` must treat as in progress, if any.
    pub fn move_for(&self, hash: u64) -> Option<KnownMove> {
        self.moves.move_for(hash)
    }

    /// Takes in progress reported by `destination`.
    pub fn learn(&self, progress: MigrationProgress, destination: NodeId) {
        self.moves.learn(progress, destination);
    }

    /// Forgets a move the source reported over (trap 4: "unknown range" means finished).
    pub fn forget_move(&self, range: HashRange) {
        self.moves.forget(range);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fulva_proto::{ShardState, Strategy};

    /// 16 shards over 2 nodes; shard 0 moves from node 0 to node 1 with fulva.
    fn map_with_a_move() -> ShardMap {
        crate::test_maps::with_a_move(5, 16, 2, |i| i as u32 % 2, (0, 1))
    }

    #[test]
    fn reads_go_to_both_ends_until_the_cursor_passes_then_to_the_owner() {
        let map = map_with_a_move();
        let moving = map.shards[0].range;
        let routes = Routes::new(map.clone());
        let key = moving.first + 1000;
        assert!(matches!(routes.route(key), Route::Dual(m) if m.progress.source == 0 && m.destination == 1));
        // Elsewhere: the owner alone.
        assert_eq!(routes.route(map.shards[3].range.first), Route::Owner(1));
        // The destination reports a cursor past the key: the destination alone.
        routes.learn(MigrationProgress { range: moving, cursor: key + 1, source: 0, done: false }, 1);
        assert_eq!(routes.route(key), Route::Owner(1));
        assert!(matches!(routes.route(key + 1), Route::Dual(_)), "at the cursor itself it has not arrived");
        // A newer map that still shows the move keeps what replies taught.
        routes.install(ShardMap { epoch: 6, ..map.clone() });
        assert_eq!(routes.route(key), Route::Owner(1));
        // The move ends: nothing is read at both ends any more.
        routes.learn(MigrationProgress { range: moving, cursor: moving.last, source: 0, done: true }, 1);
        assert_eq!(routes.route(key + 1), Route::Owner(1));
    }

    #[test]
    fn only_fulva_moves_are_read_at_both_ends() {
        let mut map = map_with_a_move();
        map.shards[0].state = ShardState::Migrating { source: 0, strategy: Strategy::Rocksteady };
        let routes = Routes::new(map.clone());
        assert_eq!(routes.route(map.shards[0].range.first), Route::Owner(1));
    }
}
