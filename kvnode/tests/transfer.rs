//! The TCP transfer stream between a move's source and destination: real
//! nodes on loopback, a counting proxy between them, and sources that break
//! the protocol.

use bytes::Bytes;
use fulva_kvnode::{pull_from, IncomingMove, NodeConfig, NodeHandle, PassStart, PullError};
use fulva_proto::transfer::{self, BatchEncoder, BatchKind, Hello, HelloReply};
use fulva_proto::{key_hash, HashRange, Strategy};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SOURCE: u32 = 0;
const DESTINATION: u32 = 1;

fn low_half() -> HashRange {
    HashRange::FULL.split_at(1 << 63).unwrap().0
}

/// A node serving `range` with `count` objects of `value_len` bytes in it.
async fn source_with(range: HashRange, count: usize, value_len: usize) -> NodeHandle {
    let node = fulva_kvnode::start(NodeConfig::loopback(SOURCE)).await.unwrap();
    fill(&node, range, count, value_len);
    node
}

/// Gives `node` `range` with `count` objects of `value_len` bytes and a tombstone.
fn fill(node: &NodeHandle, range: HashRange, count: usize, value_len: usize) {
    let h = &node.handler;
    h.ownership.assign(range, 1, &h.metrics).unwrap();
    let value = Bytes::from(vec![b'v'; value_len]);
    let mut stored = 0;
    for i in 0.. {
        let key = format!("key{i}");
        let hash = key_hash(key.as_bytes());
        if range.contains(hash) {
            h.store.write(hash, key.as_bytes(), Some(value.clone()), false);
            stored += 1;
            if stored == count {
                break;
            }
        }
    }
    // A tombstone rides along too.
    let gone = (0..).map(|i| format!("gone{i}")).find(|k| range.contains(key_hash(k.as_bytes()))).unwrap();
    h.store.write(key_hash(gone.as_bytes()), gone.as_bytes(), None, true);
}

/// A destination with a fulva move of `range` from node `SOURCE` prepared and serving.
async fn destination_of(
    range: HashRange,
    config: NodeConfig,
    pass: PassStart,
) -> (NodeHandle, Arc<IncomingMove>) {
    let node = fulva_kvnode::start(config).await.unwrap();
    let h = &node.handler;
    let mv = Arc::new(IncomingMove::new(range, SOURCE, "127.0.0.1:1".into(), Strategy::Fulva));
    h.ownership.prepare_incoming(mv.clone(), 2, &h.metrics).unwrap();
    assert!(mv.begin_pass(PassStart { serve: true, ..pass }));
    (node, mv)
}

type Snapshot = Vec<(u64, Vec<u8>, u64, Option<Vec<u8>>)>;

fn snapshot(node: &NodeHandle, range: HashRange) -> Snapshot {
    let mut all = Vec::new();
    node.handler
        .store
        .scan(range, |h, k, o| all.push((h, k.to_vec(), o.version, o.value.as_ref().map(|v| v.to_vec()))));
    all
}

/// A TCP proxy to `target` that counts the bytes coming back from it and,
/// with `cut_after`, closes both ends once that many have passed.
struct Proxy {
    addr: String,
    from_target: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
}

async fn proxy(target: std::net::SocketAddr, cut_after: Option<u64>) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let from_target = Arc::new(AtomicU64::new(0));
    let cut = Arc::new(AtomicBool::new(false));
    let (counted, cut_flag) = (from_target.clone(), cut.clone());
    tokio::spawn(async move {
        let Ok((client, _)) = listener.accept().await else { return };
        let server = TcpStream::connect(target).await.unwrap();
        let (mut client_rd, mut client_wr) = client.into_split();
        let (mut server_rd, mut server_wr) = server.into_split();
        let up = tokio::spawn(async move { tokio::io::copy(&mut client_rd, &mut server_wr).await });
        let mut buf = vec![0u8; 4096];
        loop {
            let n = match server_rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let total = counted.fetch_add(n as u64, Ordering::AcqRel) + n as u64;
            if cut_after.is_some_and(|limit| total >= limit) {
                cut_flag.store(true, Ordering::Release);
                break;
            }
            if client_wr.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        if cut_flag.load(Ordering::Acquire) {
            up.abort();
            return;
        }
        // Pass the source's close on and let the destination close its side
        // (closing with its credits unread would reset the connection).
        let _ = client_wr.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), up).await;
    });
    Proxy { addr, from_target, cut }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_over_the_transfer_stream_copies_the_range_exactly() {
    let range = low_half();
    let source = source_with(range, 3_000, 100).await;
    let (destination, mv) =
        destination_of(range, NodeConfig::loopback(DESTINATION), PassStart::default()).await;
    pull_from(&destination.handler, &mv, &source.transfer_addr.to_string()).await.unwrap();
    assert!(mv.is_done() && mv.covers(range.last));
    let moved = snapshot(&destination, range);
    assert_eq!(moved.len(), 3_001);
    assert_eq!(moved, snapshot(&source, range), "every object, version and tombstone");
    assert_eq!(mv.status().objects_applied, 3_001);
    assert!(mv.status().cpu_seconds > 0.0, "the pull's CPU is metered");
    let sent = source.handler.metrics.migration_cpu(fulva_kvnode::MigrationSide::Source).get();
    assert!(sent > 0.0, "the sending's CPU is metered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_holds_on_the_wire() {
    let range = low_half();
    let source = source_with(range, 20_000, 100).await;
    let limit = 200_000u64;
    let batch = 8 * 1024;
    let config = NodeConfig { migration_batch_bytes: batch, ..NodeConfig::loopback(DESTINATION) };
    let (destination, mv) =
        destination_of(range, config, PassStart { rate_limit: limit, ..PassStart::default() }).await;
    let wire = proxy(source.transfer_addr, None).await;
    let started = Instant::now();
    let addr = wire.addr.clone();
    let pulling = tokio::spawn(async move { pull_from(&destination.handler, &mv, &addr).await });
    let mut samples = 0;
    while started.elapsed() < Duration::from_millis(1_500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let sent = wire.from_target.load(Ordering::Acquire);
        // What the pacer lets through by now, plus the batches a limited
        // pull lets in flight (two, and one being applied), each at most
        // the target size plus one record and the framing.
        let allowed = limit as f64 * started.elapsed().as_secs_f64() + 3.0 * (f64::from(batch) * 1.5 + 200.0);
        assert!((sent as f64) <= allowed, "{sent} bytes on the wire after {:?}", started.elapsed());
        samples += 1;
    }
    assert!(samples >= 10);
    assert!(wire.from_target.load(Ordering::Acquire) > limit / 2, "the move made progress");
    pulling.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_resumes_from_the_cursor() {
    let range = low_half();
    let source = source_with(range, 20_000, 100).await;
    let config = NodeConfig { migration_batch_bytes: 16 * 1024, ..NodeConfig::loopback(DESTINATION) };
    let (destination, mv) = destination_of(range, config, PassStart::default()).await;

    let cut = proxy(source.transfer_addr, Some(600_000)).await;
    let err = pull_from(&destination.handler, &mv, &cut.addr).await.unwrap_err();
    assert!(cut.cut.load(Ordering::Acquire));
    assert!(matches!(err, PullError::Truncated | PullError::StreamBroken(_)), "{err}");
    let cursor = mv.progress().cursor;
    assert!(cursor > range.first && !mv.is_done(), "part of the range arrived");

    let rest = proxy(source.transfer_addr, None).await;
    pull_from(&destination.handler, &mv, &rest.addr).await.unwrap();
    assert!(mv.is_done());
    assert_eq!(snapshot(&destination, range), snapshot(&source, range));
    let resumed = rest.from_target.load(Ordering::Acquire);
    let full = proxy(source.transfer_addr, None).await;
    let (again, mv2) =
        destination_of(range, NodeConfig::loopback(DESTINATION + 1), PassStart::default()).await;
    pull_from(&again.handler, &mv2, &full.addr).await.unwrap();
    let whole = full.from_target.load(Ordering::Acquire);
    // 600 kB had crossed when the link was cut; at most the batches in flight
    // (8 of about 16 kB) had not been applied.
    assert!(resumed + 300_000 < whole, "resumed at the cursor: {resumed} bytes, the whole range {whole}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_refuses_a_pull_it_cannot_serve_and_says_why() {
    let range = low_half();
    let source = source_with(range, 10, 10).await;
    let hello = Hello {
        destination: DESTINATION,
        source: SOURCE,
        range,
        from: range.first,
        min_version: 0,
        hot_keys: 0,
        batch_bytes: 4096,
        window: 1,
    };
    let ask = |bytes: Vec<u8>| {
        let addr = source.transfer_addr;
        async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(&bytes).await.unwrap();
            HelloReply::read(&mut stream).await.unwrap()
        }
    };
    let other = ask(Hello { source: 5, ..hello }.encode().to_vec()).await;
    assert!(other.refusal.as_deref().unwrap().contains("not node 5"), "{other:?}");
    assert_eq!(other.node, SOURCE);
    let high = HashRange::FULL.split_at(1 << 63).unwrap().1;
    let unserved = ask(Hello { range: high, ..hello }.encode().to_vec()).await;
    assert!(unserved.refusal.as_deref().unwrap().contains("not served"), "{unserved:?}");
    let mut garbage = hello.encode().to_vec();
    garbage[..4].copy_from_slice(b"GET ");
    let refused = ask(garbage).await;
    assert!(refused.refusal.as_deref().unwrap().contains("not a transfer stream"), "{refused:?}");
    assert_eq!(ask(hello.encode().to_vec()).await.refusal, None, "the right hello is accepted");

    // A credit of zero ends the stream: the source closes instead of sending.
    let mut stream = TcpStream::connect(source.transfer_addr).await.unwrap();
    stream.write_all(&Hello { batch_bytes: 1024, ..hello }.encode()).await.unwrap();
    assert_eq!(HelloReply::read(&mut stream).await.unwrap().refusal, None);
    let mut check = transfer::StreamCheck::new(range, range.first, 0);
    check.read_batch(&mut stream).await.unwrap();
    stream.write_all(&0u32.to_le_bytes()).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the source closed the stream");
}

/// A fake source at a local port: answers the hello as node `node` and then
/// writes `batches` (raw bytes), then closes.
async fn fake_source(node: u32, batches: Vec<Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        transfer::read_hello(&mut stream).await.unwrap();
        stream.write_all(&HelloReply { node, refusal: None }.encode()).await.unwrap();
        for batch in batches {
            if stream.write_all(&batch).await.is_err() {
                return;
            }
        }
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut sink)).await;
    });
    addr
}

/// Keys of `range`, in hash order.
fn keys_in(range: HashRange, n: usize) -> Vec<(u64, String)> {
    let mut keys: Vec<_> = (0..)
        .map(|i| format!("k{i}"))
        .map(|k| (key_hash(k.as_bytes()), k))
        .filter(|(h, _)| range.contains(*h))
        .take(n)
        .collect();
    keys.sort();
    keys
}

fn batch(kind: BatchKind, next: u64, keys: &[(u64, String)], tamper: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut e = BatchEncoder::new();
    e.begin();
    for (h, k) in keys {
        e.push(*h, 7, k.as_bytes(), Some(b"value"));
    }
    let mut bytes = e.finish(kind, next).to_vec();
    tamper(&mut bytes);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_breaks_the_protocol_is_refused_and_changes_nothing() {
    let range = low_half();
    let keys = keys_in(range, 40);
    let first = batch(BatchKind::Scan, keys[20].0, &keys[..20], |_| {});
    let header = transfer::BATCH_HEADER_LEN;
    let cases: Vec<(&str, u32, Vec<Vec<u8>>, &str)> = vec![
        ("another node answers", 7, vec![first.clone()], "node 7"),
        (
            "a hash that is not the key's",
            SOURCE,
            vec![batch(BatchKind::Scan, keys[20].0, &keys[..20], |b| b[header] ^= 0xff)],
            "not the key's hash",
        ),
        (
            "a key length past the batch",
            SOURCE,
            vec![first.clone(), batch(BatchKind::Last, range.last, &keys[20..], |b| b[header + 16] = 0xff)],
            "record 0",
        ),
        (
            "a truncated batch",
            SOURCE,
            vec![first.clone(), batch(BatchKind::Last, range.last, &keys[20..], |b| b.truncate(b.len() - 3))],
            "ended before",
        ),
    ];
    for (what, node, batches, says) in cases {
        let (destination, mv) =
            destination_of(range, NodeConfig::loopback(DESTINATION), PassStart::default()).await;
        let addr = fake_source(node, batches.clone()).await;
        let err = pull_from(&destination.handler, &mv, &addr).await.unwrap_err();
        assert!(err.to_string().contains(says), "{what}: {err}");
        assert!(!mv.is_done(), "{what}");
        // Only the good first batch (when it went through) was applied.
        let applied = snapshot(&destination, range);
        let good_first = node == SOURCE && batches.len() > 1;
        let expected = if good_first { 20 } else { 0 };
        assert_eq!(applied.len(), expected, "{what}: {applied:?}");
        let cursor = mv.progress().cursor;
        assert_eq!(cursor, if good_first { keys[20].0 } else { range.first }, "{what}");
        destination.shutdown().await;
    }
}

/// Pulls `mv` from `source` into `destination`; says how fast, and the CPU
/// per MB of each side's move meter.
async fn timed_pull(source: &NodeHandle, destination: &NodeHandle, mv: &Arc<IncomingMove>) -> String {
    let started = Instant::now();
    pull_from(&destination.handler, mv, &source.transfer_addr.to_string()).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    let mb = mv.status().bytes_applied as f64 / 1e6;
    let pulled = mv.status().cpu_seconds * 1e3 / mb;
    let sent = source.handler.metrics.migration_cpu(fulva_kvnode::MigrationSide::Source).get() * 1e3 / mb;
    format!(
        "{mb:.1} MB in {secs:.3} s: {:.1} MB/s; CPU per MB: pull {pulled:.2} ms, send {sent:.2} ms",
        mb / secs
    )
}

/// The transfer alone, no client load: `cargo test --release -p fulva-kvnode
/// --test transfer -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn transfer_speed_alone() {
    let range = low_half();
    let source = source_with(range, 500_000, 100).await;
    for config in [
        NodeConfig::loopback(DESTINATION),
        NodeConfig { migration_batch_bytes: 256 * 1024, ..NodeConfig::loopback(DESTINATION) },
    ] {
        let batch = config.migration_batch_bytes;
        let (destination, mv) = destination_of(range, config, PassStart::default()).await;
        println!("batch {batch}: {} (send: cumulative)", timed_pull(&source, &destination, &mv).await);
        destination.shutdown().await;
    }
}

/// What mutual TLS costs a move: the same pull with and without it, twice
/// each in alternating order, both nodes in this process, no client load.
/// `cargo test --release -p fulva-kvnode --test transfer -- --ignored
/// --nocapture tls`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn transfer_speed_with_and_without_tls() {
    let range = low_half();
    let dir = tempfile::tempdir().unwrap();
    let roles = [fulva_tls::Role::Node(SOURCE), fulva_tls::Role::Node(DESTINATION)];
    fulva_tls::generate_dir(dir.path(), "bench", &roles, fulva_tls::DEFAULT_VALIDITY).unwrap();
    for (round, tls) in [false, true, true, false].into_iter().enumerate() {
        let tls_dir = tls.then(|| dir.path().to_path_buf());
        let source =
            fulva_kvnode::start(NodeConfig { tls_dir: tls_dir.clone(), ..NodeConfig::loopback(SOURCE) })
                .await
                .unwrap();
        fill(&source, range, 500_000, 100);
        let h = &source.handler;
        h.ownership.begin_copy(range, DESTINATION, 2, || h.store.version_ceiling()).unwrap();
        let config = NodeConfig { tls_dir, ..NodeConfig::loopback(DESTINATION) };
        let (destination, mv) = destination_of(range, config, PassStart::default()).await;
        println!("round {round} tls {tls}: {}", timed_pull(&source, &destination, &mv).await);
        destination.shutdown().await;
        source.shutdown().await;
    }
}
