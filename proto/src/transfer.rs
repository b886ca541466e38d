//! The bulk transfer stream of a live move: raw records on a dedicated TCP
//! connection from a move's source to its destination.
//!
//! The destination connects to the source's transfer port (named by the
//! `TransferEndpoint` control call) and both sides speak, little-endian:
//! ```text
//! hello (destination -> source, 56 bytes):
//!  0 magic "FVXF"   4 version u8 = 1   5 flags u8 = 0   6 window u16 (batches in flight, 1..=64)
//!  8 destination u32 (RELAY for a coordinator relaying)   12 source u32 (the node it expects)
//! 16 range first u64   24 range last u64   32 from u64 (resume point)   40 min_version u64
//! 48 hot_keys u32      52 batch_bytes u32
//! reply (source -> destination):
//!  0 magic "FVXF"   4 version u8   5 status u8 (0 accepted)   6 node u32 (the source's id)
//! 10 message_len u16   12 message (why it was refused, UTF-8)
//! batch (source -> destination), then `count` records:
//!  0 payload_len u32   4 count u32   8 next_cursor u64   16 kind u8 (0 scan, 1 hot, 2 last)   17 reserved [3] = 0
//! record: hash u64, version u64, key_len u16, flags u8 (bit 0: tombstone), value_len u32, key, value
//! credit (destination -> source): u32, how many more batches it takes
//! ```
//! The source sends a batch only against a credit; the destination grants one
//! after it has applied a batch and paced it to the move's rate limit, so the
//! limit and the flow control hold on the wire. A batch is decoded and
//! checked whole before any of it is applied: every length, every key's hash,
//! the range, the hash order and the cursor. A stream that breaks any rule is
//! refused with a [`TransferError`] and changes nothing.

use crate::hash::key_hash;
use crate::range::HashRange;
use crate::shard_map::NodeId;
use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Opens the hello and its reply.
pub const MAGIC: [u8; 4] = *b"FVXF";
/// Version of the transfer stream spoken by this crate.
pub const VERSION: u8 = 1;
/// Bytes in a hello.
pub const HELLO_LEN: usize = 56;
/// Bytes in a reply before its message.
pub const REPLY_FIXED_LEN: usize = 12;
/// Bytes in a batch header.
pub const BATCH_HEADER_LEN: usize = 20;
/// Bytes in a record before its key and value.
pub const RECORD_HEADER_LEN: usize = 23;
/// Largest batch payload either side accepts.
pub const MAX_BATCH_PAYLOAD: usize = 16 << 20;
/// Largest key in a record.
pub const MAX_KEY: usize = u16::MAX as usize;
/// Largest value in a record.
pub const MAX_VALUE: usize = 8 << 20;
/// Most batches a destination lets in flight.
pub const MAX_WINDOW: u16 = 64;
/// The `destination` of a hello sent by a coordinator relaying a move.
pub const RELAY: NodeId = NodeId::MAX;

const TOMBSTONE: u8 = 1;

/// Why a transfer stream was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// The peer does not speak the transfer stream.
    #[error("not a transfer stream (magic {0:02x?})")]
    BadMagic([u8; 4]),
    /// The peer speaks another version.
    #[error("transfer stream version {0}; this node speaks {VERSION}")]
    Version(u8),
    /// A hello field is out of bounds.
    #[error("bad hello: {0}")]
    BadHello(&'static str),
    /// The source refused the transfer.
    #[error("the source refused: {0}")]
    Refused(String),
    /// The peer is not the node the move names.
    #[error("the peer is node {found}, the move's source is node {expected}")]
    WrongPeer {
        /// The node the move names.
        expected: NodeId,
        /// The node that answered.
        found: NodeId,
    },
    /// A batch header is malformed.
    #[error("bad batch header: {0}")]
    BadHeader(&'static str),
    /// A batch is larger than [`MAX_BATCH_PAYLOAD`].
    #[error("a batch of {0} bytes exceeds the limit of {MAX_BATCH_PAYLOAD}")]
    BatchTooLarge(u32),
    /// A record is malformed.
    #[error("record {record}: {what}")]
    BadRecord {
        /// Index of the record in its batch.
        record: u32,
        /// What was wrong.
        what: &'static str,
    },
    /// A record's hash lies outside the moving range, below the cursor or
    /// out of hash order.
    #[error("record {record}: hash {hash:#018x} {what}")]
    Misplaced {
        /// Index of the record in its batch.
        record: u32,
        /// Its hash.
        hash: u64,
        /// Where it should have been.
        what: &'static str,
    },
    /// Bytes follow the last record a batch announced.
    #[error("{0} bytes after the last record of a batch")]
    Trailing(usize),
    /// A batch's cursor goes back or leaves the range.
    #[error("cursor {next:#018x} does not follow {cursor:#018x} within the range")]
    BadCursor {
        /// The cursor before the batch.
        cursor: u64,
        /// The cursor the batch announced.
        next: u64,
    },
    /// A credit of zero or more than [`MAX_WINDOW`].
    #[error("a credit of {0} batches")]
    BadCredit(u32),
    /// The source's transfer port could not be reached.
    #[error("cannot reach the transfer port: {0}")]
    Unreachable(String),
    /// The connection closed mid-message.
    #[error("the stream ended mid-message")]
    Truncated,
    /// The connection failed.
    #[error("transfer connection: {0}")]
    Io(String),
}

impl TransferError {
    /// Whether the connection failed (rather than the peer breaking the
    /// protocol): worth resuming over a new connection.
    pub fn is_connection(&self) -> bool {
        matches!(self, TransferError::Truncated | TransferError::Io(_) | TransferError::Unreachable(_))
    }
}

fn io_error(err: std::io::Error) -> TransferError {
    if err.kind() == std::io::ErrorKind::UnexpectedEof {
        TransferError::Truncated
    } else {
        TransferError::Io(err.to_string())
    }
}

/// What a destination asks of a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The asking node ([`RELAY`] for a coordinator).
    pub destination: NodeId,
    /// The node expected to answer (the move's source).
    pub source: NodeId,
    /// The moving range.
    pub range: HashRange,
    /// Resume at this hash.
    pub from: u64,
    /// Only objects above this version.
    pub min_version: u64,
    /// Send up to this many of the range's hottest keys first (only when
    /// `from` is the range's start).
    pub hot_keys: u32,
    /// Target bytes of keys and values in one batch.
    pub batch_bytes: u32,
    /// Batches the source may send before the first credit.
    pub window: u16,
}

impl Hello {
    /// The hello's bytes.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        let mut b = &mut out[..];
        b.put_slice(&MAGIC);
        b.put_u8(VERSION);
        b.put_u8(0);
        b.put_u16_le(self.window);
        b.put_u32_le(self.destination);
        b.put_u32_le(self.source);
        b.put_u64_le(self.range.first);
        b.put_u64_le(self.range.last);
        b.put_u64_le(self.from);
        b.put_u64_le(self.min_version);
        b.put_u32_le(self.hot_keys);
        b.put_u32_le(self.batch_bytes);
        out
    }

    /// Parses and checks a hello.
    pub fn decode(b: &[u8; HELLO_LEN]) -> Result<Hello, TransferError> {
        let magic: [u8; 4] = b[0..4].try_into().expect("4 bytes");
        if magic != MAGIC {
            return Err(TransferError::BadMagic(magic));
        }
        if b[4] != VERSION {
            return Err(TransferError::Version(b[4]));
        }
        if b[5] != 0 {
            return Err(TransferError::BadHello("unknown flags"));
        }
        let hello = Hello {
            window: u16_at(b, 6),
            destination: u32_at(b, 8),
            source: u32_at(b, 12),
            range: HashRange { first: u64_at(b, 16), last: u64_at(b, 24) },
            from: u64_at(b, 32),
            min_version: u64_at(b, 40),
            hot_keys: u32_at(b, 48),
            batch_bytes: u32_at(b, 52),
        };
        if hello.range.first > hello.range.last {
            return Err(TransferError::BadHello("empty range"));
        }
        if hello.window == 0 || hello.window > MAX_WINDOW {
            return Err(TransferError::BadHello("window outside 1..=64"));
        }
        if hello.batch_bytes == 0 || hello.batch_bytes as usize > MAX_BATCH_PAYLOAD / 2 {
            return Err(TransferError::BadHello("batch size outside 1..=8 MiB"));
        }
        Ok(hello)
    }
}

/// The source's answer to a hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelloReply {
    /// The answering node.
    pub node: NodeId,
    /// `None`: accepted; otherwise why not.
    pub refusal: Option<String>,
}

impl HelloReply {
    /// The reply's bytes (a refusal's words are cut at 1,000 bytes).
    pub fn encode(&self) -> Vec<u8> {
        let message = self.refusal.as_deref().unwrap_or("");
        let mut cut = message.len().min(1000);
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        let message = &message.as_bytes()[..cut];
        let mut out = Vec::with_capacity(REPLY_FIXED_LEN + message.len());
        out.put_slice(&MAGIC);
        out.put_u8(VERSION);
        out.put_u8(u8::from(self.refusal.is_some()));
        out.put_u32_le(self.node);
        out.put_u16_le(message.len() as u16);
        out.put_slice(message);
        out
    }

    /// Reads a reply from `r`.
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<HelloReply, TransferError> {
        let mut fixed = [0u8; REPLY_FIXED_LEN];
        r.read_exact(&mut fixed).await.map_err(io_error)?;
        let magic: [u8; 4] = fixed[0..4].try_into().expect("4 bytes");
        if magic != MAGIC {
            return Err(TransferError::BadMagic(magic));
        }
        if fixed[4] != VERSION {
            return Err(TransferError::Version(fixed[4]));
        }
        let node = u32_at(&fixed, 6);
        let mut message = vec![0u8; usize::from(u16_at(&fixed, 10))];
        r.read_exact(&mut message).await.map_err(io_error)?;
        let refusal = match fixed[5] {
            0 => None,
            _ => Some(String::from_utf8_lossy(&message).into_owned()),
        };
        Ok(HelloReply { node, refusal })
    }
}

/// What a batch carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchKind {
    /// Part of the hash-order pass: every hash below its cursor has been sent.
    Scan = 0,
    /// Hot keys ahead of the pass, in any order: they move no cursor.
    Hot = 1,
    /// The pass's last batch: the range is complete.
    Last = 2,
}

/// One object of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferRecord {
    /// Hash of the key.
    pub hash: u64,
    /// Version.
    pub version: u64,
    /// The key.
    pub key: Bytes,
    /// The value, or `None` for a tombstone.
    pub value: Option<Bytes>,
}

/// A decoded, checked batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferBatch {
    /// What it carries.
    pub kind: BatchKind,
    /// Every hash of the range below it has been sent (scan and last batches).
    pub next_cursor: u64,
    /// Its records: in hash order unless hot.
    pub records: Vec<TransferRecord>,
    /// Bytes of keys and values.
    pub bytes: u64,
    /// Bytes the batch took on the wire, header included.
    pub wire_bytes: u64,
}

/// Encodes batches into one reusable buffer.
#[derive(Default)]
pub struct BatchEncoder {
    buf: BytesMut,
    count: u32,
}

impl BatchEncoder {
    /// An empty encoder.
    pub fn new() -> BatchEncoder {
        BatchEncoder::default()
    }

    /// Starts a batch (the previous one must have been taken).
    pub fn begin(&mut self) {
        self.buf.clear();
        self.buf.put_bytes(0, BATCH_HEADER_LEN);
        self.count = 0;
    }

    /// Adds a record (a tombstone when `value` is `None`).
    pub fn push(&mut self, hash: u64, version: u64, key: &[u8], value: Option<&[u8]>) {
        let v = value.unwrap_or(&[]);
        self.buf.reserve(RECORD_HEADER_LEN + key.len() + v.len());
        self.buf.put_u64_le(hash);
        self.buf.put_u64_le(version);
        self.buf.put_u16_le(key.len() as u16);
        self.buf.put_u8(if value.is_none() { TOMBSTONE } else { 0 });
        self.buf.put_u32_le(v.len() as u32);
        self.buf.put_slice(key);
        self.buf.put_slice(v);
        self.count += 1;
    }

    /// Bytes of the batch so far, header included.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Finishes the batch: its bytes, ready for the wire.
    pub fn finish(&mut self, kind: BatchKind, next_cursor: u64) -> &[u8] {
        let payload = (self.buf.len() - BATCH_HEADER_LEN) as u32;
        let mut header = &mut self.buf[..BATCH_HEADER_LEN];
        header.put_u32_le(payload);
        header.put_u32_le(self.count);
        header.put_u64_le(next_cursor);
        header.put_u8(kind as u8);
        &self.buf[..]
    }
}

/// What the destination knows of the stream, to check each batch against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamCheck {
    /// The moving range.
    pub range: HashRange,
    /// Every hash below it has been received (where the pull resumed, then
    /// each scan batch's cursor).
    pub cursor: u64,
    /// Records must be above this version.
    pub min_version: u64,
    /// The last batch arrived: nothing may follow.
    pub ended: bool,
}

impl StreamCheck {
    /// A check for a pull of `range` resumed at `from`.
    pub fn new(range: HashRange, from: u64, min_version: u64) -> StreamCheck {
        StreamCheck { range, cursor: from.max(range.first), min_version, ended: false }
    }

    /// Parses a batch header: payload length, count, cursor, kind.
    pub fn header(&self, h: &[u8; BATCH_HEADER_LEN]) -> Result<(usize, u32, u64, BatchKind), TransferError> {
        let len = u32_at(h, 0);
        let count = u32_at(h, 4);
        let next = u64_at(h, 8);
        let kind = match h[16] {
            0 => BatchKind::Scan,
            1 => BatchKind::Hot,
            2 => BatchKind::Last,
            _ => return Err(TransferError::BadHeader("unknown kind")),
        };
        if h[17..20] != [0, 0, 0] {
            return Err(TransferError::BadHeader("reserved bytes set"));
        }
        if len as usize > MAX_BATCH_PAYLOAD {
            return Err(TransferError::BatchTooLarge(len));
        }
        if count as usize > len as usize / RECORD_HEADER_LEN {
            return Err(TransferError::BadHeader("more records than the payload can hold"));
        }
        if self.ended {
            return Err(TransferError::BadHeader("a batch after the last"));
        }
        Ok((len as usize, count, next, kind))
    }

    /// Checks and decodes one batch's payload; on success the cursor
    /// advances. Values and keys are slices of `payload` (no copy).
    pub fn decode(
        &mut self,
        kind: BatchKind,
        count: u32,
        next_cursor: u64,
        payload: Bytes,
    ) -> Result<TransferBatch, TransferError> {
        let ordered = kind != BatchKind::Hot;
        if ordered {
            let within = next_cursor >= self.cursor && next_cursor <= self.range.last;
            if !within {
                return Err(TransferError::BadCursor { cursor: self.cursor, next: next_cursor });
            }
        }
        let mut records = Vec::with_capacity(count as usize);
        let mut at = 0usize;
        let mut previous = self.cursor;
        let mut bytes = 0u64;
        let p = &payload[..];
        for record in 0..count {
            let bad = |what| TransferError::BadRecord { record, what };
            if p.len() - at < RECORD_HEADER_LEN {
                return Err(bad("truncated header"));
            }
            let hash = u64_at(p, at);
            let version = u64_at(p, at + 8);
            let key_len = usize::from(u16_at(p, at + 16));
            let flags = p[at + 18];
            let value_len = u32_at(p, at + 19) as usize;
            at += RECORD_HEADER_LEN;
            if key_len == 0 || key_len > MAX_KEY {
                return Err(bad("key length outside 1..=4096"));
            }
            if value_len > MAX_VALUE {
                return Err(bad("value longer than 8 MiB"));
            }
            if flags & !TOMBSTONE != 0 {
                return Err(bad("unknown flags"));
            }
            let tombstone = flags & TOMBSTONE != 0;
            if tombstone && value_len != 0 {
                return Err(bad("a tombstone with a value"));
            }
            if p.len() - at < key_len + value_len {
                return Err(bad("key and value run past the batch"));
            }
            if version <= self.min_version {
                return Err(bad("version not above the pull's floor"));
            }
            let key = payload.slice(at..at + key_len);
            at += key_len;
            if key_hash(&key) != hash {
                return Err(bad("hash is not the key's hash"));
            }
            let misplaced = |what| TransferError::Misplaced { record, hash, what };
            if !self.range.contains(hash) {
                return Err(misplaced("outside the moving range"));
            }
            if ordered {
                if hash < previous {
                    return Err(misplaced("out of hash order or below the cursor"));
                }
                if kind == BatchKind::Scan && hash >= next_cursor {
                    return Err(misplaced("at or past the batch's cursor"));
                }
                previous = hash;
            }
            let value = (!tombstone).then(|| payload.slice(at..at + value_len));
            at += value_len;
            bytes += (key_len + value_len) as u64;
            records.push(TransferRecord { hash, version, key, value });
        }
        if at != p.len() {
            return Err(TransferError::Trailing(p.len() - at));
        }
        match kind {
            BatchKind::Scan => self.cursor = next_cursor,
            BatchKind::Last => {
                self.cursor = self.range.last;
                self.ended = true;
            }
            BatchKind::Hot => {}
        }
        let wire_bytes = (BATCH_HEADER_LEN + p.len()) as u64;
        Ok(TransferBatch { kind, next_cursor, records, bytes, wire_bytes })
    }

    /// Reads, checks and decodes the next batch from `r`.
    pub async fn read_batch<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<TransferBatch, TransferError> {
        let mut header = [0u8; BATCH_HEADER_LEN];
        r.read_exact(&mut header).await.map_err(io_error)?;
        let (len, count, next, kind) = self.header(&header)?;
        let mut payload = BytesMut::zeroed(len);
        r.read_exact(&mut payload).await.map_err(io_error)?;
        self.decode(kind, count, next, payload.freeze())
    }
}

/// The address of a node's transfer stream: the host of its control
/// address (`host:port`, IPv6 hosts in brackets) and `port`.
pub fn transfer_addr(control_addr: &str, port: u32) -> Option<String> {
    let (host, _) = control_addr.rsplit_once(':')?;
    Some(format!("{host}:{port}"))
}

/// How long connecting to a transfer stream (TLS handshake included) may take.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens a pull on `stream`, a connection to the transfer stream (as
/// `connect` opens it, within [`CONNECT_TIMEOUT`]): says `hello` and reads
/// the answer (within 5 s). The stream is returned only if `hello.source`
/// answered and accepted.
pub async fn open<S, E>(
    connect: impl std::future::Future<Output = Result<S, E>>,
    hello: &Hello,
) -> Result<S, TransferError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    E: std::fmt::Display,
{
    use std::time::Duration;
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| TransferError::Unreachable("no connection within 2 s".into()))?
        .map_err(|e| TransferError::Unreachable(e.to_string()))?;
    stream.write_all(&hello.encode()).await.map_err(io_error)?;
    let reply = tokio::time::timeout(Duration::from_secs(5), HelloReply::read(&mut stream))
        .await
        .map_err(|_| TransferError::Io("no answer to the hello within 5 s".into()))??;
    if let Some(why) = reply.refusal {
        return Err(TransferError::Refused(why));
    }
    if reply.node != hello.source {
        return Err(TransferError::WrongPeer { expected: hello.source, found: reply.node });
    }
    Ok(stream)
}

/// Reads the hello a destination opens with.
pub async fn read_hello<R: AsyncRead + Unpin>(r: &mut R) -> Result<Hello, TransferError> {
    let mut b = [0u8; HELLO_LEN];
    r.read_exact(&mut b).await.map_err(io_error)?;
    Hello::decode(&b)
}

/// Grants the source `batches` more batches.
pub async fn write_credit<W: AsyncWrite + Unpin>(w: &mut W, batches: u16) -> Result<(), TransferError> {
    w.write_all(&u32::from(batches).to_le_bytes()).await.map_err(io_error)
}

/// Reads one credit (1..=[`MAX_WINDOW`] batches).
pub async fn read_credit<R: AsyncRead + Unpin>(r: &mut R) -> Result<u32, TransferError> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).await.map_err(io_error)?;
    let credit = u32::from_le_bytes(b);
    if credit == 0 || credit > u32::from(MAX_WINDOW) {
        return Err(TransferError::BadCredit(credit));
    }
    Ok(credit)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANGE: HashRange = HashRange { first: 0, last: u64::MAX >> 1 };

    /// Keys of `RANGE`, sorted by hash.
    fn keys(n: usize) -> Vec<(u64, Vec<u8>)> {
        let mut keys: Vec<_> = (0..n * 3)
            .map(|i| format!("key{i}").into_bytes())
            .map(|k| (key_hash(&k), k))
            .filter(|(h, _)| RANGE.contains(*h))
            .take(n)
            .collect();
        keys.sort();
        keys
    }

    fn encode(kind: BatchKind, next: u64, records: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut e = BatchEncoder::new();
        e.begin();
        for (i, (h, k)) in records.iter().enumerate() {
            let value = format!("value{i}");
            e.push(*h, 10 + i as u64, k, (i % 5 != 4).then_some(value.as_bytes()));
        }
        e.finish(kind, next).to_vec()
    }

    fn decode(check: &mut StreamCheck, bytes: &[u8]) -> Result<TransferBatch, TransferError> {
        let header: [u8; BATCH_HEADER_LEN] = bytes[..BATCH_HEADER_LEN].try_into().unwrap();
        let (len, count, next, kind) = check.header(&header)?;
        if bytes.len() - BATCH_HEADER_LEN != len {
            return Err(TransferError::Truncated);
        }
        check.decode(kind, count, next, Bytes::copy_from_slice(&bytes[BATCH_HEADER_LEN..]))
    }

    #[test]
    fn a_hello_and_its_reply_round_trip() {
        let hello = Hello {
            destination: 3,
            source: 1,
            range: RANGE,
            from: 77,
            min_version: 9,
            hot_keys: 4096,
            batch_bytes: 65_536,
            window: 8,
        };
        assert_eq!(Hello::decode(&hello.encode()), Ok(hello));
        let mut bad = hello.encode();
        bad[0] = b'X';
        assert!(matches!(Hello::decode(&bad), Err(TransferError::BadMagic(_))));
        for window in [0, MAX_WINDOW + 1] {
            assert!(Hello::decode(&Hello { window, ..hello }.encode()).is_err(), "window {window}");
        }
        let empty = Hello { range: HashRange { first: 5, last: 4 }, ..hello };
        assert_eq!(Hello::decode(&empty.encode()), Err(TransferError::BadHello("empty range")));

        let refused = HelloReply { node: 1, refusal: Some("range not served".into()) };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let back = rt.block_on(HelloReply::read(&mut &refused.encode()[..])).unwrap();
        assert_eq!(back, refused);
        let accepted = HelloReply { node: 2, refusal: None };
        assert_eq!(rt.block_on(HelloReply::read(&mut &accepted.encode()[..])).unwrap(), accepted);
    }

    #[test]
    fn batches_round_trip_and_move_the_cursor() {
        let keys = keys(300);
        let mut check = StreamCheck::new(RANGE, 0, 0);
        let next = keys[200].0;
        let batch = decode(&mut check, &encode(BatchKind::Scan, next, &keys[..200])).unwrap();
        assert_eq!(batch.records.len(), 200);
        assert_eq!(batch.records[0].key, keys[0].1);
        assert_eq!(batch.records[4].value, None, "every fifth record is a tombstone");
        assert_eq!(batch.records[3].value.as_deref(), Some(b"value3".as_slice()));
        assert_eq!(check.cursor, next);
        // Hot keys come in any order and move no cursor.
        let mut hot = vec![keys[250].clone(), keys[10].clone()];
        hot.sort_by_key(|k| std::cmp::Reverse(k.0));
        decode(&mut check, &encode(BatchKind::Hot, 0, &hot)).unwrap();
        assert_eq!(check.cursor, next);
        decode(&mut check, &encode(BatchKind::Last, RANGE.last, &keys[200..])).unwrap();
        assert!(check.ended);
        assert_eq!(check.cursor, RANGE.last);
        let after = encode(BatchKind::Scan, RANGE.last, &[]);
        assert!(decode(&mut check, &after).is_err(), "nothing may follow the last batch");
    }

    #[test]
    fn every_malformed_batch_is_refused() {
        let keys = keys(20);
        let good = encode(BatchKind::Scan, keys[10].0, &keys[..10]);
        let fresh = || StreamCheck::new(RANGE, 0, 0);
        assert!(decode(&mut fresh(), &good).is_ok());

        let mut cases: Vec<(&str, Vec<u8>, StreamCheck)> = Vec::new();
        let mut v = good.clone();
        v[16] = 9;
        cases.push(("unknown kind", v, fresh()));
        let mut v = good.clone();
        v[18] = 1;
        cases.push(("reserved byte", v, fresh()));
        let mut v = good.clone();
        v[4..8].copy_from_slice(&11u32.to_le_bytes());
        cases.push(("count above the records", v, fresh()));
        let mut v = good.clone();
        v[4..8].copy_from_slice(&9u32.to_le_bytes());
        cases.push(("count below the records (trailing bytes)", v, fresh()));
        let mut v = good.clone();
        v[0..4].copy_from_slice(&(MAX_BATCH_PAYLOAD as u32 + 1).to_le_bytes());
        cases.push(("too large", v, fresh()));
        let r0 = BATCH_HEADER_LEN;
        let mut v = good.clone();
        v[r0 + 16..r0 + 18].copy_from_slice(&0u16.to_le_bytes());
        cases.push(("empty key", v, fresh()));
        let mut v = good.clone();
        v[r0 + 19..r0 + 23].copy_from_slice(&u32::MAX.to_le_bytes());
        cases.push(("value length past the batch", v, fresh()));
        let mut v = good.clone();
        v[r0 + 18] = 0x80;
        cases.push(("unknown record flags", v, fresh()));
        let mut v = good.clone();
        v[r0 + 18] = TOMBSTONE;
        cases.push(("a tombstone with a value", v, fresh()));
        let mut v = good.clone();
        v[r0] ^= 1;
        cases.push(("a hash that is not the key's", v, fresh()));
        let mut reversed = keys[..10].to_vec();
        reversed.swap(2, 3);
        cases.push(("out of hash order", encode(BatchKind::Scan, keys[10].0, &reversed), fresh()));
        cases.push((
            "records at or past the cursor",
            encode(BatchKind::Scan, keys[5].0, &keys[..10]),
            fresh(),
        ));
        cases.push(("below the resume point", good.clone(), StreamCheck::new(RANGE, keys[3].0, 0)));
        cases.push(("a cursor going back", good.clone(), StreamCheck::new(RANGE, keys[15].0, 0)));
        cases.push(("versions at the floor", good.clone(), StreamCheck::new(RANGE, 0, 10)));
        let narrow = HashRange { first: 0, last: keys[5].0 };
        cases.push((
            "outside the range",
            encode(BatchKind::Hot, 0, &keys[..10]),
            StreamCheck::new(narrow, 0, 0),
        ));
        cases.push(("truncated", good[..good.len() - 1].to_vec(), fresh()));
        for (what, bytes, mut check) in cases {
            let before = check;
            let result = decode(&mut check, &bytes);
            assert!(result.is_err(), "{what}: accepted");
            assert_eq!(check, before, "{what}: a refused batch moves nothing");
        }
    }

    #[test]
    fn the_transfer_port_goes_with_the_control_host() {
        assert_eq!(transfer_addr("10.0.0.7:7101", 7102).as_deref(), Some("10.0.0.7:7102"));
        assert_eq!(transfer_addr("[::1]:7200", 7400).as_deref(), Some("[::1]:7400"));
        assert_eq!(transfer_addr("kv-0.kv:7101", 9).as_deref(), Some("kv-0.kv:9"));
        assert_eq!(transfer_addr("nohost", 9), None);
    }

    #[test]
    fn credits_are_bounded() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for (credit, ok) in [(0u32, false), (1, true), (64, true), (65, false)] {
            let bytes = credit.to_le_bytes();
            assert_eq!(rt.block_on(read_credit(&mut &bytes[..])).is_ok(), ok, "credit {credit}");
        }
        let short = [1u8, 0];
        assert_eq!(rt.block_on(read_credit(&mut &short[..])), Err(TransferError::Truncated));
    }

    /// Decodes `bytes` as one batch (header and payload) of a pull of
    /// `RANGE` from its start; if it decodes, re-encodes it.
    fn decode_and_reencode(bytes: &[u8]) -> Option<Vec<u8>> {
        let header: [u8; BATCH_HEADER_LEN] = bytes.get(..BATCH_HEADER_LEN)?.try_into().ok()?;
        let mut check = StreamCheck::new(RANGE, 0, 0);
        let (len, count, next, kind) = check.header(&header).ok()?;
        let payload = &bytes[BATCH_HEADER_LEN..];
        if payload.len() != len {
            return None;
        }
        let batch = check.decode(kind, count, next, Bytes::copy_from_slice(payload)).ok()?;
        let mut e = BatchEncoder::new();
        e.begin();
        for r in &batch.records {
            e.push(r.hash, r.version, &r.key, r.value.as_deref());
        }
        Some(e.finish(kind, next).to_vec())
    }

    proptest::proptest! {
        #[test]
        fn the_decoder_never_panics_and_what_decodes_reencodes_the_same(
            n in 0usize..12,
            flips in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 0..6),
            cut in proptest::prelude::any::<usize>(),
            random in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            let _ = decode_and_reencode(&random);
            let keys = keys(12);
            let next = keys.get(n).map_or(RANGE.last, |k| k.0);
            let kind = if n == 12 { BatchKind::Last } else { BatchKind::Scan };
            let mut bytes = encode(kind, next, &keys[..n]);
            for (at, byte) in flips {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            bytes.truncate(cut % (bytes.len() + 1));
            if let Some(again) = decode_and_reencode(&bytes) {
                proptest::prop_assert_eq!(again, bytes);
            }
        }
    }
}
