//! The data path's codec: every request and reply crosses it once per hop.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fulva_proto::frame::RequestHeader;
use fulva_proto::{HashRange, MigrationProgress, Outcome, Reply, Request, RequestBody, Status};
use std::hint::black_box;

fn header() -> RequestHeader {
    RequestHeader { op: 0, flags: 0, request_id: 7, client_id: 42, seq: 9, ack: 8, epoch: 3 }
}

fn requests(c: &mut Criterion) {
    let key = b"user000000012345".to_vec();
    let value = vec![0xabu8; 100];
    let put = Request { header: header(), body: RequestBody::Put { key: &key, value: &value } };
    let get = Request { header: header(), body: RequestBody::Get { key: &key } };
    let mut group = c.benchmark_group("request");
    group.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(256);
    group.bench_function("encode put 100 B", |b| {
        b.iter(|| {
            out.clear();
            black_box(&put).encode(&mut out);
            black_box(out.len())
        })
    });
    let mut put_frame = Vec::new();
    put.encode(&mut put_frame);
    let mut get_frame = Vec::new();
    get.encode(&mut get_frame);
    group.bench_function("decode put 100 B", |b| b.iter(|| Request::decode(black_box(&put_frame)).unwrap()));
    group.bench_function("decode get", |b| b.iter(|| Request::decode(black_box(&get_frame)).unwrap()));
    group.finish();
}

fn replies(c: &mut Criterion) {
    let value = Bytes::from(vec![0xcdu8; 100]);
    let reply = Reply {
        op: 1,
        status: Status::Ok,
        request_id: 7,
        epoch: 3,
        outcomes: vec![Outcome::read(11, Some(value), false)],
        progress: Some(MigrationProgress {
            range: HashRange { first: 0, last: u64::MAX / 2 },
            cursor: 1 << 40,
            source: 0,
            done: false,
        }),
    };
    let mut group = c.benchmark_group("reply");
    group.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(256);
    group.bench_function("encode get 100 B with progress", |b| {
        b.iter(|| {
            out.clear();
            black_box(&reply).encode(&mut out);
            black_box(out.len())
        })
    });
    let mut frame = Vec::new();
    reply.encode(&mut frame);
    let frame = Bytes::from(frame);
    group.bench_function("decode get 100 B with progress", |b| {
        b.iter_batched(|| frame.clone(), |f| Reply::decode(&f).unwrap(), BatchSize::SmallInput)
    });
    group.finish();
}

criterion_group!(benches, requests, replies);
criterion_main!(benches);
