//! Black-box tests of a node's data path over real loopback UDP.

use fulva_kvnode::{NodeConfig, NodeHandle};
use fulva_proto::frame::{RequestHeader, MAGIC};
use fulva_proto::{key_hash, HashRange, Op, Reply, Request, RequestBody, Status};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;
use tokio::net::UdpSocket;

struct Peer {
    socket: UdpSocket,
    node: std::net::SocketAddr,
    next_id: u64,
}

impl Peer {
    async fn new(node: &NodeHandle) -> Peer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        Peer { socket, node: node.data_addr, next_id: 1 }
    }

    fn frame(&mut self, seq: u64, ack: u64, body: RequestBody<'_>) -> Vec<u8> {
        self.next_id += 1;
        let header = RequestHeader {
            op: body.op() as u8,
            flags: 0,
            request_id: self.next_id,
            client_id: 99,
            seq,
            ack,
            epoch: 1,
        };
        let mut out = Vec::new();
        Request { header, body }.encode(&mut out);
        out
    }

    async fn send_raw(&self, frame: &[u8]) {
        self.socket.send_to(frame, self.node).await.unwrap();
    }

    /// Sends a frame and waits for its reply (loopback does not lose datagrams at this rate).
    async fn exchange(&self, frame: &[u8]) -> Reply {
        self.send_raw(frame).await;
        self.recv().await.expect("a reply")
    }

    async fn recv(&self) -> Option<Reply> {
        let mut buf = vec![0u8; 70_000];
        let (n, _) =
            tokio::time::timeout(Duration::from_secs(2), self.socket.recv_from(&mut buf)).await.ok()?.ok()?;
        Some(Reply::decode(&bytes::Bytes::copy_from_slice(&buf[..n])).expect("node replies decode"))
    }

    async fn put(&mut self, key: &[u8], value: &[u8], seq: u64) -> Reply {
        let frame = self.frame(seq, seq, RequestBody::Put { key, value });
        self.exchange(&frame).await
    }

    async fn get(&mut self, key: &[u8]) -> Reply {
        let frame = self.frame(0, 0, RequestBody::Get { key });
        self.exchange(&frame).await
    }
}

async fn node_serving(ranges: &[HashRange], config: NodeConfig) -> NodeHandle {
    let node = fulva_kvnode::start(config).await.unwrap();
    for range in ranges {
        node.handler.ownership.assign(*range, 1, &node.handler.metrics).unwrap();
    }
    node
}

/// One stored object: hash, key, version, value.
type StoredObject = (u64, Vec<u8>, u64, Option<Vec<u8>>);

/// Every object in the store.
fn snapshot(node: &NodeHandle) -> Vec<StoredObject> {
    let mut all = Vec::new();
    node.handler.store.scan(HashRange::FULL, |h, k, o| {
        all.push((h, k.to_vec(), o.version, o.value.as_ref().map(|v| v.to_vec())))
    });
    all
}

#[tokio::test]
async fn request_for_a_range_not_served_gets_a_redirect_never_data() {
    let (low, high) = HashRange::FULL.split_at(1 << 63).unwrap();
    let node = node_serving(&[low, high], NodeConfig::loopback(0)).await;
    let mut peer = Peer::new(&node).await;
    let key = (0..).map(|i| format!("k{i}")).find(|k| high.contains(key_hash(k.as_bytes()))).unwrap();
    assert_eq!(peer.put(key.as_bytes(), b"secret", 1).await.status, Status::Ok);

    // Stop serving `high` but leave its objects in the store, as in the
    // moment between an ownership change and the clean-up.
    node.handler.ownership.drop_range(high, 2, Some(7), &node.handler.metrics).unwrap();
    assert_eq!(snapshot(&node).len(), 1, "the object is still stored");
    let reply = peer.get(key.as_bytes()).await;
    assert_eq!(reply.status, Status::Redirect);
    assert_eq!(reply.epoch, 2);
    assert_eq!(reply.outcomes[0].redirect, Some(7));
    assert_eq!(reply.outcomes[0].value, None);

    // Multi-get answers per key: redirect for the moved key, data for the other.
    let other = (0..).map(|i| format!("o{i}")).find(|k| low.contains(key_hash(k.as_bytes()))).unwrap();
    peer.put(other.as_bytes(), b"mine", 2).await;
    let frame = peer.frame(0, 0, RequestBody::MultiGet { keys: vec![key.as_bytes(), other.as_bytes()] });
    let reply = peer.exchange(&frame).await;
    assert_eq!(reply.outcomes[0].status, Status::Redirect);
    assert_eq!(reply.outcomes[0].value, None);
    assert_eq!(reply.outcomes[1].value.as_deref(), Some(b"mine".as_slice()));

    // A write to the moved range is redirected too and changes nothing.
    let before = snapshot(&node);
    assert_eq!(peer.put(key.as_bytes(), b"new", 3).await.status, Status::Redirect);
    assert_eq!(snapshot(&node), before);
    node.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_an_error_or_a_counted_drop_and_never_changes_the_store() {
    let config = NodeConfig { max_key_bytes: 64, max_value_bytes: 256, ..NodeConfig::loopback(0) };
    let node = node_serving(&[HashRange::FULL], config).await;
    let mut peer = Peer::new(&node).await;
    for i in 0..50u64 {
        assert_eq!(peer.put(format!("key{i}").as_bytes(), b"value", i + 1).await.status, Status::Ok);
    }
    let before = snapshot(&node);
    let mut rng = SmallRng::seed_from_u64(11);
    let mut expected_replies = 0;
    let mut expected_drops = 0;

    // Random garbage, with and without a valid header in front.
    for i in 0..600 {
        let mut frame: Vec<u8> = (0..rng.random_range(0..200)).map(|_| rng.random()).collect();
        if i % 2 == 0 && frame.len() >= 48 {
            frame[..2].copy_from_slice(&MAGIC.to_le_bytes());
            frame[2] = 1;
            frame[3] = rng.random_range(1..=4);
        }
        match Request::decode(&frame) {
            Ok(_) => continue, // a well-formed request by chance: not bad input
            Err(e) if e.reply_to().is_some() => expected_replies += 1,
            Err(_) => expected_drops += 1,
        }
        peer.send_raw(&frame).await;
    }
    // Every strict prefix of a valid PUT.
    let put = peer.frame(1_000, 1_000, RequestBody::Put { key: b"key0", value: b"overwritten" });
    for cut in 0..put.len() {
        let prefix = &put[..cut];
        match Request::decode(prefix) {
            Ok(_) => panic!("a truncated frame decoded"),
            Err(e) if e.reply_to().is_some() => expected_replies += 1,
            Err(_) => expected_drops += 1,
        }
        peer.send_raw(prefix).await;
    }
    let mut received = Vec::new();
    while received.len() < expected_replies {
        match peer.recv().await {
            Some(reply) => received.push(reply.status),
            None => break,
        }
    }
    assert_eq!(received.len(), expected_replies, "every answerable frame is answered");
    assert!(received
        .iter()
        .all(|s| matches!(s, Status::Malformed | Status::UnknownOp | Status::UnsupportedVersion)));

    // Unknown op code with a valid header.
    let mut unknown = peer.frame(0, 0, RequestBody::Get { key: b"key1" });
    unknown[3] = 0x42;
    assert_eq!(peer.exchange(&unknown).await.status, Status::UnknownOp);
    // Oversized key and value: TooLarge, nothing stored.
    let big_key = vec![b'k'; 65];
    assert_eq!(peer.put(&big_key, b"v", 2_000).await.status, Status::TooLarge);
    assert_eq!(peer.put(b"key2", &[7u8; 257], 2_001).await.status, Status::TooLarge);
    assert_eq!(peer.get(&big_key).await.status, Status::TooLarge);

    assert_eq!(snapshot(&node), before, "bad input changed the store");
    assert_eq!(node.handler.metrics.dropped_total(), expected_drops as u64);
    // The node still serves.
    assert_eq!(peer.get(b"key3").await.outcomes[0].value.as_deref(), Some(b"value".as_slice()));
    node.shutdown().await;
}

#[tokio::test]
async fn a_duplicated_old_put_cannot_overwrite_a_newer_one() {
    let node = node_serving(&[HashRange::FULL], NodeConfig::loopback(0)).await;
    let mut peer = Peer::new(&node).await;
    let old = peer.frame(1, 1, RequestBody::Put { key: b"k", value: b"old" });
    let first = peer.exchange(&old).await;
    assert_eq!(first.status, Status::Ok);

    // Case 1: the newer write still lists seq 1 as unacknowledged (ack = 1):
    // the duplicate is answered from the completion record, not applied.
    let newer = peer.frame(2, 1, RequestBody::Put { key: b"k", value: b"new" });
    let second = peer.exchange(&newer).await;
    assert!(second.outcomes[0].version > first.outcomes[0].version);
    let replay = peer.exchange(&old).await;
    assert_eq!(replay.status, Status::Ok);
    assert_eq!(replay.outcomes[0].version, first.outcomes[0].version);
    assert_eq!(peer.get(b"k").await.outcomes[0].value.as_deref(), Some(b"new".as_slice()));

    // Case 2: the client has acknowledged seq 1 and 2 (ack = 3): the record is
    // gone and a late copy is refused as stale.
    let third = peer.frame(3, 3, RequestBody::Put { key: b"other", value: b"x" });
    assert_eq!(peer.exchange(&third).await.status, Status::Ok);
    assert_eq!(peer.exchange(&old).await.status, Status::Stale);
    assert_eq!(peer.get(b"k").await.outcomes[0].value.as_deref(), Some(b"new".as_slice()));
    let applied: u64 = {
        let mut n = 0;
        node.handler.ownership.for_each(|r| n += r.metrics.ops(Op::Put));
        n
    };
    assert_eq!(applied, 3, "three distinct writes, each applied once");
    node.shutdown().await;
}

#[tokio::test]
async fn a_retry_after_the_range_left_is_answered_from_its_record() {
    let node = node_serving(&[HashRange::FULL], NodeConfig::loopback(0)).await;
    let mut peer = Peer::new(&node).await;
    let write = peer.frame(5, 5, RequestBody::Put { key: b"k", value: b"v" });
    let applied = peer.exchange(&write).await;
    assert_eq!(applied.status, Status::Ok);
    node.handler.ownership.drop_range(HashRange::FULL, 2, Some(3), &node.handler.metrics).unwrap();
    // The retry of an applied write gets its original outcome ...
    let retry = peer.exchange(&write).await;
    assert_eq!((retry.status, retry.outcomes[0].version), (Status::Ok, applied.outcomes[0].version));
    // ... while a write never applied here is redirected to the new owner.
    let fresh = peer.frame(6, 5, RequestBody::Put { key: b"k", value: b"w" });
    let reply = peer.exchange(&fresh).await;
    assert_eq!((reply.status, reply.outcomes[0].redirect), (Status::Redirect, Some(3)));
    node.shutdown().await;
}

#[tokio::test]
async fn metrics_endpoint_serves_per_range_series() {
    let node = node_serving(&HashRange::FULL.divide(2), NodeConfig::loopback(0)).await;
    let mut peer = Peer::new(&node).await;
    peer.put(b"a", b"1", 1).await;
    peer.get(b"a").await;
    let body = http_get(node.metrics_addr, "/metrics").await;
    assert!(body.contains("fulva_kvnode_range_ops_total{op=\"put\",range="), "{body}");
    assert!(body.contains("fulva_kvnode_request_duration_seconds_bucket"), "{body}");
    assert!(body.contains("fulva_kvnode_replies_total{status=\"ok\"} 2"), "{body}");
    assert!(http_get(node.metrics_addr, "/readyz").await.contains("ready"));
    node.shutdown().await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

#[tokio::test]
async fn a_late_copy_from_an_old_move_is_never_applied() {
    use fulva_kvnode::IncomingMove;
    use fulva_kvnode::Object;
    use std::sync::Arc;
    let node = fulva_kvnode::start(NodeConfig::loopback(0)).await.unwrap();
    let h = &node.handler;
    let hash = key_hash(b"k");
    let old = || Object { version: 5, value: Some(bytes::Bytes::from_static(b"old")) };
    let first = Arc::new(IncomingMove::new(
        HashRange::FULL,
        9,
        "127.0.0.1:1".into(),
        fulva_proto::Strategy::Rocksteady,
    ));
    h.ownership.prepare_incoming(first.clone(), 1, &h.metrics).unwrap();
    assert!(h.apply_migrated(&first, hash, b"k", old()), "a copy for the move in progress applies");
    // The move is abandoned and the range comes in again by another move:
    // a copy still in flight for the first move must not land.
    h.ownership.drop_range(HashRange::FULL, 2, None, &h.metrics).unwrap();
    h.store.remove_range(HashRange::FULL);
    let second =
        Arc::new(IncomingMove::new(HashRange::FULL, 8, "127.0.0.1:1".into(), fulva_proto::Strategy::Fulva));
    h.ownership.prepare_incoming(second.clone(), 3, &h.metrics).unwrap();
    assert!(!h.apply_migrated(&first, hash, b"k", old()));
    assert_eq!(h.store.get(hash, b"k"), None);
    node.shutdown().await;
}

#[tokio::test]
async fn a_fulva_destination_says_which_keys_it_holds_for_the_move() {
    use fulva_kvnode::{IncomingMove, Object, PassStart};
    use std::sync::Arc;
    let node = fulva_kvnode::start(NodeConfig::loopback(0)).await.unwrap();
    let h = &node.handler;
    let header = |op: Op, seq: u64| RequestHeader {
        op: op as u8,
        flags: 0,
        request_id: seq + 1,
        client_id: 7,
        seq,
        ack: seq,
        epoch: 9,
    };
    let read = |key: &'static [u8]| {
        let reply =
            h.execute(&Request { header: header(Op::Get, 0), body: RequestBody::Get { key } }).unwrap();
        let outcome = reply.outcomes.into_iter().next().unwrap();
        (outcome.status, outcome.version, outcome.held)
    };
    let object = |version: u64| Object { version, value: Some(bytes::Bytes::from_static(b"v")) };
    let (low, high) = HashRange::FULL.split_at(1 << 63).unwrap();
    let in_low = |key: &[u8]| low.contains(key_hash(key));
    let keys: Vec<&'static [u8]> =
        [b"a".as_slice(), b"b", b"c", b"d", b"e", b"f", b"g", b"h", b"i", b"j"].into_iter().collect();
    let low_keys: Vec<&'static [u8]> = keys.iter().copied().filter(|k| in_low(k)).collect();
    let high_keys: Vec<&'static [u8]> = keys.iter().copied().filter(|k| !in_low(k)).collect();
    assert!(low_keys.len() >= 3 && high_keys.len() >= 2, "keys on both halves");

    // A move out of a frozen source: every object here is at least the source's.
    let mv = Arc::new(IncomingMove::new(low, 3, "127.0.0.1:1".into(), fulva_proto::Strategy::Fulva));
    h.ownership.prepare_incoming(mv.clone(), 9, &h.metrics).unwrap();
    assert!(mv.begin_pass(PassStart { serve: true, ..PassStart::default() }));
    let (pulled, written, absent) = (low_keys[0], low_keys[1], low_keys[2]);
    assert!(h.apply_migrated(&mv, key_hash(pulled), pulled, object(5)));
    let delete = RequestBody::Delete { key: written };
    h.execute(&Request { header: header(Op::Delete, 1), body: delete }).unwrap();
    assert_eq!(read(pulled), (Status::Ok, 5, true));
    let (status, version, held) = read(written);
    assert_eq!((status, held), (Status::NotFound, true), "a tombstone written here is held");
    assert!(version > 0);
    assert_eq!(read(absent), (Status::NotFound, 0, false), "absent here may be at the source");

    // Taking back a range this node kept a copy of: its old objects (at or
    // below the original move's version ceiling) may be older than the
    // writes on their way back, so only newer ones are held.
    h.ownership.assign(high, 9, &h.metrics).unwrap();
    let (old, new) = (high_keys[0], high_keys[1]);
    h.store.apply_if_newer(key_hash(old), old, object(40));
    h.ownership.freeze(high, 4, 9, false, || 50).unwrap();
    let back = Arc::new(IncomingMove::new(high, 4, "127.0.0.1:1".into(), fulva_proto::Strategy::Fulva));
    h.ownership.reclaim(back.clone(), 10).unwrap();
    assert!(back.begin_pass(PassStart { serve: true, min_version: 50, ..PassStart::default() }));
    assert!(h.apply_migrated(&back, key_hash(new), new, object(60)));
    assert_eq!(read(old), (Status::Ok, 40, false));
    assert_eq!(read(new), (Status::Ok, 60, true));

    // Once the range is served outside any move, replies say nothing of it.
    h.ownership.abandon_source(low, 11).unwrap();
    assert_eq!(read(pulled), (Status::Ok, 5, false));
    node.shutdown().await;
}

#[tokio::test]
async fn a_rocksteady_destination_answers_a_held_key_without_a_priority_pull() {
    use fulva_kvnode::{IncomingMove, Object, PassStart};
    use std::sync::Arc;
    let node = fulva_kvnode::start(NodeConfig::loopback(0)).await.unwrap();
    let h = &node.handler;
    let read = |key: &'static [u8]| {
        let header = RequestHeader {
            op: Op::Get as u8,
            flags: 0,
            request_id: 1,
            client_id: 7,
            seq: 0,
            ack: 0,
            epoch: 9,
        };
        h.execute(&Request { header, body: RequestBody::Get { key } }).unwrap().status
    };
    let mv = Arc::new(IncomingMove::new(
        HashRange::FULL,
        3,
        "127.0.0.1:1".into(),
        fulva_proto::Strategy::Rocksteady,
    ));
    h.ownership.prepare_incoming(mv.clone(), 9, &h.metrics).unwrap();
    assert!(mv.begin_pass(PassStart { serve: true, ..PassStart::default() }));
    // Shipped ahead of the hash order (a hot key): answered at once.
    let object = Object { version: 5, value: Some(bytes::Bytes::from_static(b"v")) };
    assert!(h.apply_migrated(&mv, key_hash(b"hot"), b"hot", object));
    assert_eq!(read(b"hot"), Status::Ok);
    // Not here yet: pulled from the source first, the client asks again.
    assert_eq!(read(b"cold"), Status::Retry);
    node.shutdown().await;
}

/// A spoofed datagram with the victim's (client id, seq) for another key
/// arrives first; the victim's own write then arrives. Returns the victim's
/// reply and what the victim's key reads afterwards.
async fn forged_write_first(config: NodeConfig) -> (Reply, Option<Vec<u8>>) {
    let node = node_serving(&[HashRange::FULL], config).await;
    let mut attacker = Peer::new(&node).await;
    let forged = attacker.frame(7, 7, RequestBody::Put { key: b"k2", value: b"forged" });
    assert_eq!(attacker.exchange(&forged).await.status, Status::Ok);
    let mut victim = Peer::new(&node).await;
    let own = victim.frame(7, 7, RequestBody::Put { key: b"k1", value: b"mine" });
    let reply = victim.exchange(&own).await;
    let read = victim.get(b"k1").await.outcomes[0].value.as_ref().map(|v| v.to_vec());
    node.shutdown().await;
    (reply, read)
}

#[tokio::test]
async fn a_spoofed_write_with_the_victims_seq_cannot_erase_the_victims_write() {
    let (reply, read) = forged_write_first(NodeConfig::loopback(0)).await;
    assert_eq!(reply.status, Status::Ok);
    assert_eq!(read.as_deref(), Some(b"mine".as_slice()), "the victim's write landed");

    // The trap re-creates the bug: records keyed by (client, seq) alone answer
    // the victim from the forged write's record, and k1 was never written.
    let trapped = NodeConfig { trap_records_ignore_key: true, ..NodeConfig::loopback(0) };
    let (reply, read) = forged_write_first(trapped).await;
    assert_eq!(reply.status, Status::Ok, "acknowledged ...");
    assert_eq!(read, None, "... and lost: this test catches the trap");
}

#[tokio::test]
async fn an_ack_above_the_frames_own_seq_is_refused_and_moves_no_floor() {
    let node = node_serving(&[HashRange::FULL], NodeConfig::loopback(0)).await;
    let mut attacker = Peer::new(&node).await;
    let forged = attacker.frame(3, 1 << 62, RequestBody::Put { key: b"k", value: b"x" });
    assert_eq!(attacker.exchange(&forged).await.status, Status::Malformed);
    // The client's next write (same client id in this test) is not stale.
    let mut victim = Peer::new(&node).await;
    assert_eq!(victim.put(b"k", b"v", 8).await.status, Status::Ok);
    assert_eq!(victim.get(b"k").await.outcomes[0].value.as_deref(), Some(b"v".as_slice()));
    node.shutdown().await;
}

#[tokio::test]
async fn a_multi_get_reply_larger_than_a_datagram_is_refused_not_dropped() {
    let node = node_serving(&[HashRange::FULL], NodeConfig::loopback(0)).await;
    let mut peer = Peer::new(&node).await;
    assert_eq!(peer.put(b"k", &vec![7u8; 40_000], 1).await.status, Status::Ok);
    // One 40 kB value asked for 512 times: a 20 MB reply.
    let keys: Vec<&[u8]> = vec![b"k"; 512];
    let frame = peer.frame(0, 0, RequestBody::MultiGet { keys });
    let reply = peer.exchange(&frame).await;
    assert_eq!(reply.status, Status::TooLarge, "a clear refusal");
    assert!(reply.outcomes.is_empty());
    let metrics = http_get(node.metrics_addr, "/metrics").await;
    assert!(
        metrics.lines().any(|l| l.starts_with("fulva_kvnode_replies_total")
            && l.contains("too_large")
            && l.ends_with(" 1")),
        "the refusal is counted as what was sent:\n{metrics}"
    );
    // One of them fits.
    let frame = peer.frame(0, 0, RequestBody::MultiGet { keys: vec![b"k"; 1] });
    assert_eq!(peer.exchange(&frame).await.status, Status::Ok);
    node.shutdown().await;
}
