//! Which keys clients read most: a small fixed-size sketch of read heat by
//! key hash, so a move can ship a range's hottest keys before its hash-order
//! pass (dual reads then end for most traffic at once).
//!
//! One read in [`SAMPLE_EVERY`] is counted (chosen by the request id's low
//! bits, so sampling needs no shared counter). A hash maps to one slot; a
//! sample of the slot's own hash raises its count, a sample of another hash
//! lowers it and takes the slot over when it reaches zero. Keys read often
//! hold their slots; rare ones wash out (the idea of HeavyKeeper, without its
//! random decay). Slots are plain atomics: a race between two samples loses
//! one count, which an estimate can afford, and a read never waits or
//! allocates.

use fulva_proto::HashRange;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// One read in this many is sampled.
pub const SAMPLE_EVERY: u64 = 16;
/// Slots in a node's sketch (16 bytes each).
pub const HEAT_SLOTS: usize = 1 << 15;

struct Slot {
    hash: AtomicU64,
    count: AtomicU32,
}

/// Sampled read heat per key hash.
pub struct HeatSketch {
    slots: Box<[Slot]>,
}

impl Default for HeatSketch {
    fn default() -> Self {
        HeatSketch::new(HEAT_SLOTS)
    }
}

impl HeatSketch {
    /// A sketch of `slots` slots (rounded up to a power of two).
    pub fn new(slots: usize) -> HeatSketch {
        let n = slots.max(1).next_power_of_two();
        HeatSketch {
            slots: (0..n).map(|_| Slot { hash: AtomicU64::new(0), count: AtomicU32::new(0) }).collect(),
        }
    }

    /// Whether the read with `request_id` is one of the sampled ones.
    #[inline]
    pub fn samples(request_id: u64) -> bool {
        request_id.is_multiple_of(SAMPLE_EVERY)
    }

    /// Counts one sampled read of `hash`.
    #[inline]
    pub fn record(&self, hash: u64) {
        // The low bits: the store's stripes use the high ones, so a range's
        // keys spread over every slot.
        let slot = &self.slots[(hash as usize) & (self.slots.len() - 1)];
        if slot.hash.load(Ordering::Relaxed) == hash {
            let _ = slot.count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_add(1));
            return;
        }
        match slot.count.load(Ordering::Relaxed) {
            0 | 1 => {
                slot.hash.store(hash, Ordering::Relaxed);
                slot.count.store(1, Ordering::Relaxed);
            }
            _ => {
                slot.count.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Up to `n` of the hottest hashes in `range`, hottest first.
    pub fn hottest(&self, range: HashRange, n: usize) -> Vec<u64> {
        let mut hot: Vec<(u32, u64)> = self
            .slots
            .iter()
            .filter_map(|s| {
                let (hash, count) = (s.hash.load(Ordering::Relaxed), s.count.load(Ordering::Relaxed));
                (count > 0 && range.contains(hash)).then_some((count, hash))
            })
            .collect();
        if n == 0 {
            return Vec::new();
        }
        // Selecting the top n first sorts n entries, not every slot's: a
        // move asks for thousands out of tens of thousands, at its start.
        if hot.len() > n {
            hot.select_nth_unstable_by(n - 1, |a, b| b.cmp(a));
            hot.truncate(n);
        }
        hot.sort_unstable_by(|a, b| b.cmp(a));
        hot.into_iter().map(|(_, hash)| hash).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn frequent_hashes_are_found_among_many_rare_ones() {
        let sketch = HeatSketch::new(1024);
        let mut rng = SmallRng::seed_from_u64(3);
        let hot: Vec<u64> = (0..20).map(|_| rng.random()).collect();
        for _ in 0..200_000 {
            // Half the samples go to 20 hot hashes, half to a million cold ones.
            let hash = if rng.random_bool(0.5) { hot[rng.random_range(0..hot.len())] } else { rng.random() };
            sketch.record(hash);
        }
        let found = sketch.hottest(HashRange::FULL, 20);
        let hits = found.iter().filter(|h| hot.contains(h)).count();
        assert!(hits >= 18, "found {hits} of the 20 hot hashes");
        // Only the range asked for.
        let (low, _) = HashRange::FULL.split_at(1 << 63).unwrap();
        assert!(sketch.hottest(low, 100).iter().all(|h| low.contains(*h)));
        assert_eq!(sketch.hottest(low, 3).len(), 3);
    }

    #[test]
    fn hottest_returns_the_n_highest_counts_hottest_first() {
        let sketch = HeatSketch::new(1024);
        // Hash i (in its own slot) read i times.
        for i in 1..=300u64 {
            for _ in 0..i {
                sketch.record(i);
            }
        }
        assert_eq!(sketch.hottest(HashRange::FULL, 5), vec![300, 299, 298, 297, 296]);
        assert_eq!(sketch.hottest(HashRange::FULL, 1000).len(), 300, "fewer than asked: all of them");
        assert!(sketch.hottest(HashRange::FULL, 0).is_empty());
        let low = HashRange { first: 0, last: 100 };
        assert_eq!(sketch.hottest(low, 2), vec![100, 99]);
    }

    #[test]
    fn one_read_in_sample_every_is_sampled() {
        assert_eq!((0..1600u64).filter(|&id| HeatSketch::samples(id)).count(), 100);
    }
}
