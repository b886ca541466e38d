//! The in-memory object store.
//!
//! Objects live in stripes, each a hash table behind its own lock. A key's
//! stripe is chosen by the top bits of its hash, so each stripe holds one
//! contiguous slice of the hash space: a range scan touches only the stripes
//! its range overlaps, in hash order. Locking a stripe is the per-key lock;
//! with many stripes, writers on different cores rarely meet.

use bytes::Bytes;
use crossbeam_utils::CachePadded;
use fulva_proto::HashRange;
use hashbrown::HashTable;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// One stored object. `value == None` is a tombstone (a versioned delete).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    /// Version; versions of one key only grow.
    pub version: u64,
    /// Value, or `None` for a tombstone.
    pub value: Option<Bytes>,
}

struct Entry {
    hash: u64,
    key: Bytes,
    object: Object,
}

impl Entry {
    fn bytes(&self) -> u64 {
        (self.key.len() + self.object.value.as_ref().map_or(0, Bytes::len)) as u64
    }
}

/// Change in a range's object and byte counts caused by one store call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SizeDelta {
    /// Objects added (negative: removed).
    pub objects: i64,
    /// Key plus value bytes added (negative: removed).
    pub bytes: i64,
}

/// Result of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteResult {
    /// Version given to the write.
    pub version: u64,
    /// Whether the key held a live value before.
    pub existed: bool,
    /// Size change.
    pub delta: SizeDelta,
}

/// The striped object store of one node.
pub struct Store {
    stripes: Box<[CachePadded<Mutex<HashTable<Entry>>>]>,
    shift: u32,
    next_version: AtomicU64,
}

/// hashbrown keys its SIMD tags on the top bits of the hash it is given; those
/// bits pick the stripe and are equal within one, so rotate fresh bits up.
#[inline]
fn table_hash(hash: u64) -> u64 {
    hash.rotate_left(32)
}

impl Store {
    /// A store with `2^stripe_bits` stripes (clamped to 0..=16).
    pub fn new(stripe_bits: u32) -> Store {
        let bits = stripe_bits.min(16);
        let stripes = (0..1usize << bits).map(|_| CachePadded::new(Mutex::new(HashTable::new()))).collect();
        Store { stripes, shift: 64 - bits, next_version: AtomicU64::new(1) }
    }

    #[inline]
    fn stripe(&self, hash: u64) -> &Mutex<HashTable<Entry>> {
        // `checked_shr` covers 0 stripe bits (a shift by 64).
        let idx = hash.checked_shr(self.shift).unwrap_or(0) as usize;
        &self.stripes[idx]
    }

    /// Raises the version counter so every later write gets a version above `floor`.
    pub fn raise_version_floor(&self, floor: u64) {
        self.next_version.fetch_max(floor.saturating_add(1), Ordering::AcqRel);
    }

    /// Highest version handed out so far (0 if none).
    pub fn version_ceiling(&self) -> u64 {
        self.next_version.load(Ordering::Acquire) - 1
    }

    /// Reads `key`. Tombstones are returned as objects with no value.
    pub fn get(&self, hash: u64, key: &[u8]) -> Option<Object> {
        let stripe = self.stripe(hash).lock();
        stripe.find(table_hash(hash), |e| e.hash == hash && e.key == key).map(|e| e.object.clone())
    }

    /// Writes `value` (or deletes, with `None`) under a fresh version above the
    /// key's current one. With `keep_tombstone` false a delete removes the key
    /// outright; true leaves a versioned tombstone.
    pub fn write(&self, hash: u64, key: &[u8], value: Option<Bytes>, keep_tombstone: bool) -> WriteResult {
        let mut stripe = self.stripe(hash).lock();
        let th = table_hash(hash);
        let same_key = |e: &Entry| e.hash == hash && e.key == key;
        if value.is_none() && !keep_tombstone {
            return match stripe.find_entry(th, same_key) {
                Ok(occupied) => {
                    let (entry, _) = occupied.remove();
                    WriteResult {
                        version: self.fresh_version(entry.object.version),
                        existed: entry.object.value.is_some(),
                        delta: SizeDelta { objects: -1, bytes: -(entry.bytes() as i64) },
                    }
                }
                Err(_) => WriteResult {
                    version: self.fresh_version(0),
                    existed: false,
                    delta: SizeDelta::default(),
                },
            };
        }
        match stripe.find_mut(th, same_key) {
            Some(entry) => {
                let version = self.fresh_version(entry.object.version);
                let existed = entry.object.value.is_some();
                let before = entry.bytes() as i64;
                entry.object = Object { version, value };
                WriteResult {
                    version,
                    existed,
                    delta: SizeDelta { objects: 0, bytes: entry.bytes() as i64 - before },
                }
            }
            None => {
                let version = self.fresh_version(0);
                let entry =
                    Entry { hash, key: Bytes::copy_from_slice(key), object: Object { version, value } };
                let bytes = entry.bytes() as i64;
                stripe.insert_unique(th, entry, |e| table_hash(e.hash));
                WriteResult { version, existed: false, delta: SizeDelta { objects: 1, bytes } }
            }
        }
    }

    fn fresh_version(&self, current: u64) -> u64 {
        let version = self.next_version.fetch_add(1, Ordering::AcqRel);
        if version > current {
            return version;
        }
        // The counter lags this key (a floor not yet raised): jump past it.
        self.next_version.fetch_max(current + 2, Ordering::AcqRel);
        current + 1
    }

    /// Stores `object` unless the key already holds an equal or newer version
    /// ("higher version wins"). Returns the size change and whether it applied.
    pub fn apply_if_newer(&self, hash: u64, key: &[u8], object: Object) -> (bool, SizeDelta) {
        self.next_version.fetch_max(object.version.saturating_add(1), Ordering::AcqRel);
        let applied = put_if_newer(&mut self.stripe(hash).lock(), hash, key, object);
        (applied.is_some(), applied.unwrap_or_default())
    }

    /// Which stripe (lock) holds `hash`.
    #[inline]
    pub fn stripe_index(&self, hash: u64) -> usize {
        hash.checked_shr(self.shift).unwrap_or(0) as usize
    }

    /// [`Store::apply_if_newer`] for records that all lie in one stripe (see
    /// [`Store::stripe_index`]), under one acquisition of its lock. Returns
    /// the size change.
    pub fn apply_stripe_if_newer(&self, records: &[fulva_proto::transfer::TransferRecord]) -> SizeDelta {
        let mut delta = SizeDelta::default();
        let Some(first) = records.first() else { return delta };
        let stripe_idx = self.stripe_index(first.hash);
        let top = records.iter().map(|r| r.version).max().unwrap_or(0);
        self.next_version.fetch_max(top.saturating_add(1), Ordering::AcqRel);
        let mut stripe = self.stripes[stripe_idx].lock();
        for r in records {
            assert_eq!(self.stripe_index(r.hash), stripe_idx, "records of one stripe");
            let object = Object { version: r.version, value: r.value.clone() };
            if let Some(d) = put_if_newer(&mut stripe, r.hash, &r.key, object) {
                delta.objects += d.objects;
                delta.bytes += d.bytes;
            }
        }
        delta
    }

    fn stripes_of(&self, range: HashRange) -> std::ops::RangeInclusive<usize> {
        self.stripe_index(range.first)..=self.stripe_index(range.last)
    }

    /// Removes every object (and tombstone) whose hash lies in `range`.
    pub fn remove_range(&self, range: HashRange) -> SizeDelta {
        let mut delta = SizeDelta::default();
        for idx in self.stripes_of(range) {
            let mut stripe = self.stripes[idx].lock();
            stripe.retain(|e| {
                let keep = !range.contains(e.hash);
                if !keep {
                    delta.objects -= 1;
                    delta.bytes -= e.bytes() as i64;
                }
                keep
            });
        }
        delta
    }

    /// Removes the tombstones in `range`; returns how many went.
    pub fn purge_tombstones(&self, range: HashRange) -> SizeDelta {
        let mut delta = SizeDelta::default();
        for idx in self.stripes_of(range) {
            self.stripes[idx].lock().retain(|e| {
                let keep = !(range.contains(e.hash) && e.object.value.is_none());
                if !keep {
                    delta.objects -= 1;
                    delta.bytes -= e.bytes() as i64;
                }
                keep
            });
        }
        delta
    }

    /// One batch of a range's objects in hash order, starting at hash `from`:
    /// whole hashes only, about `max_bytes` of keys and values. Returns the
    /// objects, the hash the next batch starts at, and whether this is the last.
    pub fn scan_batch(
        &self,
        range: HashRange,
        from: u64,
        max_bytes: usize,
        min_version: u64,
    ) -> (Vec<(u64, Bytes, Object)>, u64, bool) {
        let start = from.max(range.first);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        if start > range.last {
            return (out, range.last, true);
        }
        let part = HashRange { first: start, last: range.last };
        for idx in self.stripes_of(part) {
            let mut stripe: Vec<(u64, Bytes, Object)> = self.stripes[idx]
                .lock()
                .iter()
                .filter(|e| part.contains(e.hash) && e.object.version > min_version)
                .map(|e| (e.hash, e.key.clone(), e.object.clone()))
                .collect();
            stripe.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            for item in stripe {
                let hash = item.0;
                if bytes >= max_bytes && out.last().is_some_and(|(h, _, _): &(u64, Bytes, Object)| *h != hash)
                {
                    return (out, hash, false);
                }
                bytes += item.1.len() + item.2.value.as_ref().map_or(0, Bytes::len);
                out.push(item);
            }
        }
        (out, range.last, true)
    }

    /// Every object (tombstones too) whose hash is one of `hashes` and whose
    /// version is above `min_version`, with its hash and key, in the order of
    /// `hashes`; a stripe is locked once per hash.
    pub fn objects_of(&self, hashes: &[u64], min_version: u64) -> Vec<(u64, Bytes, Object)> {
        let mut out = Vec::with_capacity(hashes.len());
        for &hash in hashes {
            let stripe = self.stripe(hash).lock();
            for e in stripe.iter_hash(table_hash(hash)) {
                if e.hash == hash && e.object.version > min_version {
                    out.push((hash, e.key.clone(), e.object.clone()));
                }
            }
        }
        out
    }

    /// Objects and bytes stored in `range` (a scan).
    pub fn measure(&self, range: HashRange) -> SizeDelta {
        let mut size = SizeDelta::default();
        for idx in self.stripes_of(range) {
            for e in self.stripes[idx].lock().iter().filter(|e| range.contains(e.hash)) {
                size.objects += 1;
                size.bytes += e.bytes() as i64;
            }
        }
        size
    }

    /// Visits every object in `range` in hash order, a stripe at a time
    /// (each stripe is locked only while it is copied out).
    pub fn scan(&self, range: HashRange, mut visit: impl FnMut(u64, &Bytes, &Object)) {
        for idx in self.stripes_of(range) {
            let mut batch: Vec<(u64, Bytes, Object)> = self.stripes[idx]
                .lock()
                .iter()
                .filter(|e| range.contains(e.hash))
                .map(|e| (e.hash, e.key.clone(), e.object.clone()))
                .collect();
            batch.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            for (hash, key, object) in &batch {
                visit(*hash, key, object);
            }
        }
    }
}

/// Stores `object` in `stripe` unless the key holds an equal or newer
/// version; the size change if it did. A new key gets its own copy (a slice
/// of a batch would pin the whole batch).
fn put_if_newer(stripe: &mut HashTable<Entry>, hash: u64, key: &[u8], object: Object) -> Option<SizeDelta> {
    let th = table_hash(hash);
    match stripe.find_mut(th, |e| e.hash == hash && e.key == key) {
        Some(entry) if entry.object.version >= object.version => None,
        Some(entry) => {
            let before = entry.bytes() as i64;
            entry.object = object;
            Some(SizeDelta { objects: 0, bytes: entry.bytes() as i64 - before })
        }
        None => {
            let entry = Entry { hash, key: Bytes::copy_from_slice(key), object };
            let bytes = entry.bytes() as i64;
            stripe.insert_unique(th, entry, |e| table_hash(e.hash));
            Some(SizeDelta { objects: 1, bytes })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fulva_proto::key_hash;

    fn put(store: &Store, key: &str, value: &str) -> WriteResult {
        store.write(
            key_hash(key.as_bytes()),
            key.as_bytes(),
            Some(Bytes::copy_from_slice(value.as_bytes())),
            false,
        )
    }

    #[test]
    fn versions_grow_per_key_and_delete_removes() {
        let store = Store::new(4);
        let a = put(&store, "a", "1");
        let b = put(&store, "a", "22");
        assert!(b.version > a.version);
        assert_eq!(b.delta, SizeDelta { objects: 0, bytes: 1 });
        let h = key_hash(b"a");
        assert_eq!(store.get(h, b"a").unwrap().value.as_deref(), Some(b"22".as_slice()));
        let d = store.write(h, b"a", None, false);
        assert!(d.existed && d.version > b.version);
        assert_eq!(d.delta, SizeDelta { objects: -1, bytes: -3 });
        assert_eq!(store.get(h, b"a"), None);
    }

    #[test]
    fn tombstones_keep_their_version() {
        let store = Store::new(4);
        let h = key_hash(b"t");
        put(&store, "t", "x");
        let d = store.write(h, b"t", None, true);
        assert_eq!(store.get(h, b"t"), Some(Object { version: d.version, value: None }));
    }

    #[test]
    fn older_copies_never_overwrite_newer() {
        let store = Store::new(2);
        let h = key_hash(b"k");
        let w = put(&store, "k", "new");
        let old = Object { version: w.version - 1, value: Some(Bytes::from_static(b"old")) };
        assert!(!store.apply_if_newer(h, b"k", old).0);
        assert_eq!(store.get(h, b"k").unwrap().value.as_deref(), Some(b"new".as_slice()));
        let newer = Object { version: w.version + 10, value: None };
        assert!(store.apply_if_newer(h, b"k", newer.clone()).0);
        assert_eq!(store.get(h, b"k"), Some(newer));
        // Later local writes are versioned above what was applied.
        assert!(put(&store, "k", "z").version > w.version + 10);
    }

    #[test]
    fn version_floor_is_respected() {
        let store = Store::new(0);
        store.raise_version_floor(1_000);
        assert!(put(&store, "x", "y").version > 1_000);
    }

    #[test]
    fn range_scan_and_remove_touch_only_the_range() {
        let store = Store::new(6);
        for i in 0..2_000 {
            put(&store, &format!("key{i}"), "v");
        }
        let (low, high) = HashRange::FULL.split_at(0x9000_0000_0000_0000).unwrap();
        let mut hashes = Vec::new();
        store.scan(low, |h, _, _| hashes.push(h));
        assert!(hashes.windows(2).all(|w| w[0] <= w[1]), "scan must be in hash order");
        assert!(hashes.iter().all(|h| low.contains(*h)));
        let in_low = hashes.len() as i64;
        assert_eq!(store.measure(low).objects, in_low);
        let removed = store.remove_range(low);
        assert_eq!(removed.objects, -in_low);
        assert_eq!(store.measure(low).objects, 0);
        assert_eq!(store.measure(high).objects, 2_000 - in_low);
    }
}
