//! The routing decision every read makes: which node(s) a key's hash goes
//! to, with no move known and with a move in progress.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fulva_client::Routes;
use fulva_proto::{HashRange, MigrationProgress, NodeInfo, Shard, ShardMap, ShardState, Strategy};
use std::hint::black_box;

fn map(shards: u64, moving: bool) -> ShardMap {
    let node = |id: u32| NodeInfo {
        id,
        data_addr: format!("127.0.0.1:{}", 7100 + id).parse().unwrap(),
        control_addr: format!("127.0.0.1:{}", 7200 + id).parse().unwrap(),
    };
    let mut shards: Vec<Shard> = HashRange::FULL
        .divide(shards)
        .into_iter()
        .enumerate()
        .map(|(i, range)| Shard { range, owner: i as u32 % 3, state: ShardState::Normal })
        .collect();
    if moving {
        shards[0].owner = 1;
        shards[0].state = ShardState::Migrating { source: 0, strategy: Strategy::Fulva };
    }
    ShardMap { epoch: 9, nodes: (0..3).map(node).collect(), shards }
}

fn route(c: &mut Criterion) {
    let hashes: Vec<u64> = (0..1024u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(1));
    for (name, routes) in [
        ("no move, 64 shards", Routes::new(map(64, false))),
        ("one move half done, 64 shards", {
            let m = map(64, true);
            let range = m.shards[0].range;
            let routes = Routes::new(m);
            let cursor = range.first + (range.last - range.first) / 2;
            routes.learn(MigrationProgress { range, cursor, source: 0, done: false }, 1);
            routes
        }),
    ] {
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % hashes.len();
                black_box(routes.route(black_box(hashes[i])))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, route);
criterion_main!(benches);
