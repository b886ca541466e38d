//! Where a request goes: the cached shard map and the moves the client
//! knows of (from the map, and from the progress destinations report), and
//! the decision a read makes from them ([`Routes::route`]).

use arc_swap::ArcSwap;
use fulva_proto::{HashRange, MigrationProgress, NodeId, ShardMap, ShardState, Strategy};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
    /// Whether a read of `hash` must ask both nodes: the hash is in the
    /// moving range and the destination may not hold it yet.
    pub fn needs_dual_read(&self, hash: u64) -> bool {
        self.progress.range.contains(hash) && !self.progress.covers(hash)
    }
}

/// Where a read of one key goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// To the owner the map names.
    Owner(NodeId),
    /// To both ends of a move whose cursor has not passed the key.
    Dual(KnownMove),
    /// The map names no owner (it does not cover the hash).
    Unrouted,
}

/// The client's routing state, shared by every request.
pub struct Routes {
    map: ArcSwap<ShardMap>,
    moves: Mutex<Vec<KnownMove>>,
    /// Whether `moves` is non-empty: reads skip its lock when no move is known.
    has_moves: AtomicBool,
}

impl Routes {
    /// Routes by `map` (its moves included).
    pub fn new(map: ShardMap) -> Routes {
        let moves = moves_of(&map, &[]);
        Routes {
            has_moves: AtomicBool::new(!moves.is_empty()),
            moves: Mutex::new(moves),
            map: ArcSwap::from_pointee(map),
        }
    }

    /// The cached map.
    pub fn map(&self) -> Arc<ShardMap> {
        self.map.load_full()
    }

    /// The cached map's epoch.
    pub fn epoch(&self) -> u64 {
        self.map.load().epoch
    }

    /// Where a read of `hash` goes now.
    pub fn route(&self, hash: u64) -> Route {
        if let Some(mv) = self.move_for(hash) {
            return Route::Dual(mv);
        }
        self.map.load().owner_of(hash).map_or(Route::Unrouted, Route::Owner)
    }

    /// Installs `map` if it is newer than the cached one; returns the map in force.
    pub fn install(&self, map: ShardMap) -> Arc<ShardMap> {
        let map = Arc::new(map);
        let previous =
            self.map.rcu(|cached| if map.epoch > cached.epoch { map.clone() } else { cached.clone() });
        if map.epoch > previous.epoch {
            let mut moves = self.moves.lock();
            *moves = moves_of(&map, &moves);
            self.has_moves.store(!moves.is_empty(), Ordering::Release);
            map
        } else {
            previous
        }
    }

    /// The move a read of `hash` must treat as in progress, if any.
    pub fn move_for(&self, hash: u64) -> Option<KnownMove> {
        if !self.has_moves.load(Ordering::Acquire) {
            return None;
        }
        self.moves.lock().iter().find(|m| m.needs_dual_read(hash)).copied()
    }

    /// Takes in progress reported by `destination`.
    pub fn learn(&self, progress: MigrationProgress, destination: NodeId) {
        let mut moves = self.moves.lock();
        match moves.iter_mut().find(|m| m.progress.range == progress.range) {
            Some(m) => {
                m.progress.cursor = m.progress.cursor.max(progress.cursor);
                m.progress.done |= progress.done;
            }
            None if !progress.done => moves.push(KnownMove { progress, destination }),
            None => {}
        }
        moves.retain(|m| !m.progress.done);
        self.has_moves.store(!moves.is_empty(), Ordering::Release);
    }

    /// Forgets a move the source reported over (trap 4: "unknown range" means finished).
    pub fn forget_move(&self, range: HashRange) {
        let mut moves = self.moves.lock();
        moves.retain(|m| m.progress.range != range);
        self.has_moves.store(!moves.is_empty(), Ordering::Release);
    }
}

/// The moves a new map shows, keeping what replies taught of their progress.
fn moves_of(map: &ShardMap, known: &[KnownMove]) -> Vec<KnownMove> {
    let mut moves: Vec<KnownMove> = map
        .shards
        .iter()
        .filter_map(|s| match s.state {
            // Only fulva moves are read at both ends; rocksteady destinations
            // answer alone (pulling missing keys first).
            ShardState::Migrating { source, strategy: Strategy::Fulva } => {
                let learned =
                    known.iter().find(|m| m.progress.range == s.range && m.progress.source == source);
                let progress = MigrationProgress {
                    range: s.range,
                    source,
                    cursor: learned.map_or(s.range.first, |m| m.progress.cursor),
                    done: learned.is_some_and(|m| m.progress.done),
                };
                Some(KnownMove { progress, destination: s.owner })
            }
            ShardState::Normal | ShardState::Migrating { .. } => None,
        })
        .collect();
    // Moves learned from replies that this map does not show as settled yet.
    for m in known {
        let settled = map.shards.iter().any(|s| {
            s.range == m.progress.range && s.state == ShardState::Normal && s.owner == m.destination
        });
        if !settled && !moves.iter().any(|k| k.progress.range == m.progress.range) {
            moves.push(*m);
        }
    }
    moves.retain(|m| !m.progress.done);
    moves
}

#[cfg(test)]
mod tests {
    use super::*;
    use fulva_proto::{NodeInfo, Shard};

    /// 16 shards over 2 nodes; shard 0 moves from node 0 to node 1 with fulva.
    fn map_with_a_move() -> ShardMap {
        let node = |id: u32| NodeInfo {
            id,
            data_addr: format!("127.0.0.1:{}", 7100 + id).parse().unwrap(),
            control_addr: format!("127.0.0.1:{}", 7200 + id).parse().unwrap(),
        };
        let mut shards: Vec<Shard> = HashRange::FULL
            .divide(16)
            .into_iter()
            .enumerate()
            .map(|(i, range)| Shard { range, owner: i as u32 % 2, state: ShardState::Normal })
            .collect();
        shards[0].owner = 1;
        shards[0].state = ShardState::Migrating { source: 0, strategy: Strategy::Fulva };
        ShardMap { epoch: 5, nodes: vec![node(0), node(1)], shards }
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
