//! The node's object store: every data-path request takes one stripe lock
//! for a get or a write, and a move reads its range with `scan_batch`; a
//! move's source picks its hot set from the read-heat sketch.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fulva_kvnode::{HeatSketch, Store};
use fulva_proto::{key_hash, HashRange};
use std::hint::black_box;

const KEYS: u64 = 100_000;

fn key(i: u64) -> Vec<u8> {
    format!("user{i:012}").into_bytes()
}

fn loaded() -> Store {
    let store = Store::new(8);
    let value = Bytes::from(vec![7u8; 100]);
    for i in 0..KEYS {
        let k = key(i);
        store.write(key_hash(&k), &k, Some(value.clone()), false);
    }
    store
}

fn get_and_put(c: &mut Criterion) {
    let store = loaded();
    let keys: Vec<(u64, Vec<u8>)> =
        (0..1024).map(|i| key(i * 97 % KEYS)).map(|k| (key_hash(&k), k)).collect();
    let value = Bytes::from(vec![9u8; 100]);
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("get (100k keys, 100 B)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            let (hash, k) = &keys[i];
            black_box(store.get(*hash, k))
        })
    });
    group.bench_function("put overwrite (100k keys, 100 B)", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            let (hash, k) = &keys[i];
            black_box(store.write(*hash, k, Some(value.clone()), false))
        })
    });
    group.finish();
}

fn scan(c: &mut Criterion) {
    let store = loaded();
    // A tenth of the hash space: about 10k objects, read in 64 kB batches.
    let range = HashRange { first: 0, last: u64::MAX / 10 };
    let mut group = c.benchmark_group("scan_batch");
    group.throughput(Throughput::Bytes(64 * 1024));
    let mut from = range.first;
    group.bench_function("64 kB batch of 100 B objects", |b| {
        b.iter(|| {
            let (objects, next, last) = store.scan_batch(range, from, 64 * 1024, 0);
            from = if last { range.first } else { next };
            black_box(objects.len())
        })
    });
    group.finish();
}

fn hot_set(c: &mut Criterion) {
    // A full sketch (every slot taken), as on a node that has served
    // zipfian reads for a while; a move asks for the default 4,096 keys.
    let sketch = HeatSketch::default();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..2_000_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        sketch.record(key_hash(&key(x % KEYS)));
    }
    let range = HashRange { first: 0, last: u64::MAX / 10 * 9 };
    let mut group = c.benchmark_group("heat");
    group.bench_function("hottest 4096 in 90% of the hash space", |b| {
        b.iter(|| black_box(sketch.hottest(range, 4096).len()))
    });
    group.finish();
}

criterion_group!(benches, get_and_put, scan, hot_set);
criterion_main!(benches);
