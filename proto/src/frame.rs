//! The data-path frame format.
//!
//! Every datagram carries one frame, little-endian throughout.
//!
//! Request (48-byte header, then the body):
//! ```text
//!  0 magic u16 = 0xF17A   2 version u8 = 1   3 op u8   4 flags u32 (bit 0: dual read)
//!  8 request_id u64      16 client_id u64  24 seq u64 (0 = read, no record)
//! 32 ack u64 (every seq below it is acknowledged)   40 epoch u64 (client's map)
//! 48 body: GET/DELETE: key_len u16, key
//!          PUT:        key_len u16, value_len u32, key, value
//!          MULTI_GET:  count u16, then count x (key_len u16, key)
//! ```
//! Reply (24-byte header, then outcomes, then optional progress):
//! ```text
//!  0 magic u16   2 version u8   3 kind u8 = 0x80 | op   4 status u8   5 flags u8
//!  6 count u16 (outcomes)   8 request_id u64   16 epoch u64 (node's epoch)
//! 24 outcome*: status u8, flags u8 (bit 0: held), version u64, redirect u32 (u32::MAX = none),
//!    value_len u32 (u32::MAX = none), value
//!    progress (flags & 1): range first u64, last u64, cursor u64, source u32, done u8
//! ```
//! Decoding checks every length before it reads, so it never panics and never
//! reads past the datagram. The first 16 bytes (magic, version, op, flags,
//! request id) keep their layout in every protocol version, so a node can
//! answer a frame of an unknown version with `UnsupportedVersion`.

use crate::range::HashRange;
use crate::shard_map::NodeId;
use bytes::{BufMut, Bytes};

/// Magic number that opens every frame.
pub const MAGIC: u16 = 0xF17A;
/// Protocol version spoken by this crate.
pub const PROTOCOL_VERSION: u8 = 2;
/// Largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;
/// Bytes in a request header.
pub const REQUEST_HEADER_LEN: usize = 48;
/// Bytes in a reply header.
pub const REPLY_HEADER_LEN: usize = 24;
/// Bytes in one encoded outcome before its value.
pub const OUTCOME_FIXED_LEN: usize = 18;
/// Bytes in an encoded migration progress section.
pub const PROGRESS_LEN: usize = 29;
/// Most keys in one multi-get.
pub const MAX_MULTI_GET: usize = 512;
/// Redirect field value meaning "no redirect target".
const NO_NODE: u32 = u32::MAX;
/// Value-length field meaning "no value" (as opposed to an empty one).
const NO_VALUE: u32 = u32::MAX;
const FLAG_PROGRESS: u8 = 1;
/// Outcome flag: see [`Outcome::held`].
const OUTCOME_HELD: u8 = 1;

/// Request operation codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    /// Read one key.
    Get = 1,
    /// Write one key.
    Put = 2,
    /// Delete one key.
    Delete = 3,
    /// Read several keys at once.
    MultiGet = 4,
}

impl Op {
    /// The op for a wire code.
    pub fn from_code(code: u8) -> Option<Op> {
        match code {
            1 => Some(Op::Get),
            2 => Some(Op::Put),
            3 => Some(Op::Delete),
            4 => Some(Op::MultiGet),
            _ => None,
        }
    }

    /// Lowercase name, used as a metric label.
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Delete => "delete",
            Op::MultiGet => "multi_get",
        }
    }
}

/// Result code of a reply or of one outcome in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// Done; for a read the value follows.
    Ok = 0,
    /// The key does not exist (or its newest version is a tombstone).
    NotFound = 1,
    /// This node does not serve the key; the reply's epoch is the node's and the
    /// redirect field names the new owner when the node knows it.
    Redirect = 2,
    /// Key or value larger than the node's configured limit.
    TooLarge = 3,
    /// The frame's body could not be parsed.
    Malformed = 4,
    /// The op code is unknown.
    UnknownOp = 5,
    /// A retry of a request the client has already acknowledged; nothing applied.
    Stale = 6,
    /// Try again shortly (the range is briefly frozen).
    Retry = 7,
    /// The frame's protocol version is not spoken by this node.
    UnsupportedVersion = 8,
    /// The node failed internally.
    Internal = 9,
}

impl Status {
    /// The status for a wire code.
    pub fn from_code(code: u8) -> Option<Status> {
        use Status::*;
        [Ok, NotFound, Redirect, TooLarge, Malformed, UnknownOp, Stale, Retry, UnsupportedVersion, Internal]
            .get(usize::from(code))
            .copied()
    }

    /// Lowercase name, used as a metric label.
    pub fn name(self) -> &'static str {
        use Status::*;
        match self {
            Ok => "ok",
            NotFound => "not_found",
            Redirect => "redirect",
            TooLarge => "too_large",
            Malformed => "malformed",
            UnknownOp => "unknown_op",
            Stale => "stale",
            Retry => "retry",
            UnsupportedVersion => "unsupported_version",
            Internal => "internal",
        }
    }
}

/// Request flag: a read sent to the source of a move while the client also
/// reads the destination. Bits 8..32 hold the move's destination node id + 1:
/// a frozen source answers only when that is the node it is moving to.
pub const FLAG_DUAL_READ: u32 = 1;

/// Flags of a dual read sent to the source of a move to `destination`
/// (node ids up to 2^24 - 2).
pub fn dual_read_flags(destination: NodeId) -> u32 {
    FLAG_DUAL_READ | (destination.wrapping_add(1) << 8)
}

/// The move destination named by a dual read's flags.
pub fn dual_read_destination(flags: u32) -> Option<NodeId> {
    (flags & FLAG_DUAL_READ != 0).then(|| (flags >> 8).wrapping_sub(1))
}

/// Fields of a request header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    /// Raw op code (may be unknown).
    pub op: u8,
    /// Request flags ([`FLAG_DUAL_READ`], see [`dual_read_flags`]); unknown bits are ignored.
    pub flags: u32,
    /// Matches a reply to its request; unique per client among requests in flight.
    pub request_id: u64,
    /// Client identity for at-most-once records.
    pub client_id: u64,
    /// Per-client sequence number of a write; 0 for reads.
    pub seq: u64,
    /// Every seq of this client below `ack` has been acknowledged to the caller.
    pub ack: u64,
    /// Shard-map epoch the client routed by.
    pub epoch: u64,
}

/// Body of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestBody<'a> {
    /// Read `key`.
    Get {
        /// Key bytes.
        key: &'a [u8],
    },
    /// Write `value` under `key`.
    Put {
        /// Key bytes.
        key: &'a [u8],
        /// Value bytes.
        value: &'a [u8],
    },
    /// Delete `key`.
    Delete {
        /// Key bytes.
        key: &'a [u8],
    },
    /// Read every key in `keys`.
    MultiGet {
        /// Keys, in order; the reply's outcomes follow the same order.
        keys: Vec<&'a [u8]>,
    },
}

impl RequestBody<'_> {
    /// The op of this body.
    pub fn op(&self) -> Op {
        match self {
            RequestBody::Get { .. } => Op::Get,
            RequestBody::Put { .. } => Op::Put,
            RequestBody::Delete { .. } => Op::Delete,
            RequestBody::MultiGet { .. } => Op::MultiGet,
        }
    }
}

/// A decoded request, borrowing keys and values from the datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// Header fields.
    pub header: RequestHeader,
    /// Operation and its arguments.
    pub body: RequestBody<'a>,
}

/// Why a frame could not be decoded.
///
/// Errors that carry a header can be answered with an error reply; the others
/// (too short, wrong magic) are dropped and counted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than a header.
    #[error("frame of {len} bytes is shorter than a header")]
    TooShort {
        /// Bytes received.
        len: usize,
    },
    /// Does not start with [`MAGIC`].
    #[error("bad magic {0:#06x}")]
    BadMagic(u16),
    /// Version other than [`PROTOCOL_VERSION`].
    #[error("unsupported protocol version {version}")]
    UnsupportedVersion {
        /// Version in the frame.
        version: u8,
        /// Request id (from the version-independent prefix).
        request_id: u64,
        /// Raw op.
        op: u8,
    },
    /// Unknown op code.
    #[error("unknown op code {}", .0.op)]
    UnknownOp(RequestHeader),
    /// Header fine, body not.
    #[error("malformed {what}")]
    Malformed {
        /// The request's header.
        header: RequestHeader,
        /// What was wrong.
        what: &'static str,
    },
    /// A reply frame could not be parsed (client side).
    #[error("malformed reply: {0}")]
    BadReply(&'static str),
}

impl FrameError {
    /// The status to answer with, and the request id and op to answer, if the
    /// frame can be answered at all.
    pub fn reply_to(&self) -> Option<(Status, u64, u8)> {
        match self {
            FrameError::TooShort { .. } | FrameError::BadMagic(_) | FrameError::BadReply(_) => None,
            FrameError::UnsupportedVersion { request_id, op, .. } => {
                Some((Status::UnsupportedVersion, *request_id, *op))
            }
            FrameError::UnknownOp(h) => Some((Status::UnknownOp, h.request_id, h.op)),
            FrameError::Malformed { header, .. } => Some((Status::Malformed, header.request_id, header.op)),
        }
    }
}

/// A bounds-checked little-endian reader over a byte slice.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes)
    }
    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    fn remaining(&self) -> usize {
        self.buf.len()
    }
}

impl<'a> Request<'a> {
    /// Checks then parses one request frame.
    pub fn decode(frame: &'a [u8]) -> Result<Request<'a>, FrameError> {
        if frame.len() < 16 {
            return Err(FrameError::TooShort { len: frame.len() });
        }
        let mut r = Reader { buf: frame };
        let magic = r.u16().unwrap_or_default();
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let version = r.u8().unwrap_or_default();
        let op = r.u8().unwrap_or_default();
        let flags = r.u32().unwrap_or_default();
        let request_id = r.u64().unwrap_or_default();
        if version != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion { version, request_id, op });
        }
        if frame.len() < REQUEST_HEADER_LEN {
            return Err(FrameError::TooShort { len: frame.len() });
        }
        let header = RequestHeader {
            op,
            flags,
            request_id,
            client_id: r.u64().unwrap_or_default(),
            seq: r.u64().unwrap_or_default(),
            ack: r.u64().unwrap_or_default(),
            epoch: r.u64().unwrap_or_default(),
        };
        let Some(known) = Op::from_code(op) else {
            return Err(FrameError::UnknownOp(header));
        };
        let malformed = |what| FrameError::Malformed { header, what };
        let body = match known {
            Op::Get | Op::Delete => {
                let len = r.u16().ok_or_else(|| malformed("key length"))?;
                let key = r.take(usize::from(len)).ok_or_else(|| malformed("key"))?;
                if known == Op::Get {
                    RequestBody::Get { key }
                } else {
                    RequestBody::Delete { key }
                }
            }
            Op::Put => {
                let key_len = r.u16().ok_or_else(|| malformed("key length"))?;
                let value_len = r.u32().ok_or_else(|| malformed("value length"))?;
                if value_len as usize > r.remaining() {
                    return Err(malformed("value length"));
                }
                let key = r.take(usize::from(key_len)).ok_or_else(|| malformed("key"))?;
                let value = r.take(value_len as usize).ok_or_else(|| malformed("value"))?;
                RequestBody::Put { key, value }
            }
            Op::MultiGet => {
                let count = usize::from(r.u16().ok_or_else(|| malformed("key count"))?);
                if count > MAX_MULTI_GET || count * 2 > r.remaining() {
                    return Err(malformed("key count"));
                }
                let mut keys = Vec::with_capacity(count);
                for _ in 0..count {
                    let len = r.u16().ok_or_else(|| malformed("key length"))?;
                    keys.push(r.take(usize::from(len)).ok_or_else(|| malformed("key"))?);
                }
                RequestBody::MultiGet { keys }
            }
        };
        if !r.is_empty() {
            return Err(malformed("trailing bytes"));
        }
        Ok(Request { header, body })
    }

    /// Appends the encoded frame to `out`.
    ///
    /// Keys longer than `u16::MAX` bytes cannot be encoded; callers check
    /// [`Request::encoded_len`] and key lengths first (the client does).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let h = &self.header;
        out.reserve(self.encoded_len());
        out.put_u16_le(MAGIC);
        out.put_u8(PROTOCOL_VERSION);
        out.put_u8(self.body.op() as u8);
        out.put_u32_le(h.flags);
        out.put_u64_le(h.request_id);
        out.put_u64_le(h.client_id);
        out.put_u64_le(h.seq);
        out.put_u64_le(h.ack);
        out.put_u64_le(h.epoch);
        match &self.body {
            RequestBody::Get { key } | RequestBody::Delete { key } => {
                out.put_u16_le(key.len() as u16);
                out.put_slice(key);
            }
            RequestBody::Put { key, value } => {
                out.put_u16_le(key.len() as u16);
                out.put_u32_le(value.len() as u32);
                out.put_slice(key);
                out.put_slice(value);
            }
            RequestBody::MultiGet { keys } => {
                out.put_u16_le(keys.len() as u16);
                for key in keys {
                    out.put_u16_le(key.len() as u16);
                    out.put_slice(key);
                }
            }
        }
    }

    /// Size of the encoded frame in bytes.
    pub fn encoded_len(&self) -> usize {
        REQUEST_HEADER_LEN
            + match &self.body {
                RequestBody::Get { key } | RequestBody::Delete { key } => 2 + key.len(),
                RequestBody::Put { key, value } => 6 + key.len() + value.len(),
                RequestBody::MultiGet { keys } => 2 + keys.iter().map(|k| 2 + k.len()).sum::<usize>(),
            }
    }
}

/// Result for one key in a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Result code.
    pub status: Status,
    /// Object version read or written (0 = absent).
    pub version: u64,
    /// New owner of the key when `status` is `Redirect` and the node knows it.
    pub redirect: Option<NodeId>,
    /// Value read (GET/MULTI_GET with `Ok`).
    pub value: Option<Bytes>,
    /// Set by the destination of a fulva move on a read of a key it holds an
    /// object for (a value or a tombstone) that it pulled or took during this
    /// move: the source is frozen, so this answer is the key's newest and the
    /// client needs nothing from the source (docs/migration.md, learned keys).
    pub held: bool,
}

impl Outcome {
    /// An outcome with only a status.
    pub fn status(status: Status) -> Outcome {
        Outcome { status, version: 0, redirect: None, value: None, held: false }
    }

    /// A `TooLarge` outcome naming the node's limits: the version field
    /// carries them (it has nothing else to say here), the key limit in the
    /// high 32 bits and the value limit in the low ones.
    pub fn too_large(max_key_bytes: usize, max_value_bytes: usize) -> Outcome {
        let version = ((max_key_bytes.min(u32::MAX as usize) as u64) << 32)
            | max_value_bytes.min(u32::MAX as usize) as u64;
        Outcome { version, ..Outcome::status(Status::TooLarge) }
    }

    /// The node's (key, value) limits a `TooLarge` outcome names, if any.
    pub fn limits(&self) -> Option<(usize, usize)> {
        (self.status == Status::TooLarge && self.version != 0)
            .then(|| ((self.version >> 32) as usize, (self.version & u64::from(u32::MAX)) as usize))
    }

    /// The outcome of a read that found `version` (0: absent) and `value`
    /// (`None` with a version: a tombstone).
    pub fn read(version: u64, value: Option<Bytes>, held: bool) -> Outcome {
        let status = if value.is_some() { Status::Ok } else { Status::NotFound };
        Outcome { status, version, redirect: None, value, held }
    }

    /// The outcome of a write (or of its replay) with `status` and `version`.
    pub fn written(status: Status, version: u64) -> Outcome {
        Outcome { status, version, redirect: None, value: None, held: false }
    }
}

/// Migration progress of the range a key belongs to, carried by replies of a
/// node that is the destination of a move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigrationProgress {
    /// The moving range.
    pub range: HashRange,
    /// Every hash in `range.first..cursor` has been applied at the destination.
    pub cursor: u64,
    /// Node the range is leaving.
    pub source: NodeId,
    /// The move is over: the destination alone serves the range.
    pub done: bool,
}

impl MigrationProgress {
    /// Whether the destination holds everything of `hash` the source had:
    /// the move is over, or the cursor has passed the hash. A hash outside
    /// the range is not this move's to answer for.
    #[inline]
    pub fn covers(&self, hash: u64) -> bool {
        self.range.contains(hash) && (self.done || hash < self.cursor)
    }
}

/// A reply frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Raw op code of the request answered.
    pub op: u8,
    /// Overall status (per-key statuses are in `outcomes`).
    pub status: Status,
    /// Request id of the request answered.
    pub request_id: u64,
    /// Node's shard-map epoch.
    pub epoch: u64,
    /// One outcome per key (none for frame-level errors).
    pub outcomes: Vec<Outcome>,
    /// Progress of a move covering the key, when there is one.
    pub progress: Option<MigrationProgress>,
}

impl Reply {
    /// A reply with an overall status and no outcomes.
    pub fn error(op: u8, request_id: u64, epoch: u64, status: Status) -> Reply {
        Reply { op, status, request_id, epoch, outcomes: Vec::new(), progress: None }
    }

    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.put_u16_le(MAGIC);
        out.put_u8(PROTOCOL_VERSION);
        out.put_u8(0x80 | self.op);
        out.put_u8(self.status as u8);
        out.put_u8(if self.progress.is_some() { FLAG_PROGRESS } else { 0 });
        out.put_u16_le(self.outcomes.len() as u16);
        out.put_u64_le(self.request_id);
        out.put_u64_le(self.epoch);
        for o in &self.outcomes {
            out.put_u8(o.status as u8);
            out.put_u8(if o.held { OUTCOME_HELD } else { 0 });
            out.put_u64_le(o.version);
            out.put_u32_le(o.redirect.unwrap_or(NO_NODE));
            match &o.value {
                Some(value) => {
                    out.put_u32_le(value.len() as u32);
                    out.put_slice(value);
                }
                None => out.put_u32_le(NO_VALUE),
            }
        }
        if let Some(p) = &self.progress {
            out.put_u64_le(p.range.first);
            out.put_u64_le(p.range.last);
            out.put_u64_le(p.cursor);
            out.put_u32_le(p.source);
            out.put_u8(u8::from(p.done));
        }
    }

    /// Size of the encoded frame in bytes.
    pub fn encoded_len(&self) -> usize {
        REPLY_HEADER_LEN
            + self
                .outcomes
                .iter()
                .map(|o| OUTCOME_FIXED_LEN + o.value.as_ref().map_or(0, |v| v.len()))
                .sum::<usize>()
            + if self.progress.is_some() { PROGRESS_LEN } else { 0 }
    }

    /// Checks then parses a reply; values are zero-copy slices of `frame`.
    pub fn decode(frame: &Bytes) -> Result<Reply, FrameError> {
        let bad = FrameError::BadReply;
        let mut r = Reader { buf: frame };
        if frame.len() < REPLY_HEADER_LEN {
            return Err(bad("short header"));
        }
        if r.u16() != Some(MAGIC) {
            return Err(bad("magic"));
        }
        if r.u8() != Some(PROTOCOL_VERSION) {
            return Err(bad("version"));
        }
        let kind = r.u8().ok_or(bad("kind"))?;
        if kind & 0x80 == 0 {
            return Err(bad("not a reply"));
        }
        let status = r.u8().and_then(Status::from_code).ok_or(bad("status"))?;
        let flags = r.u8().ok_or(bad("flags"))?;
        let count = usize::from(r.u16().ok_or(bad("count"))?);
        let request_id = r.u64().ok_or(bad("request id"))?;
        let epoch = r.u64().ok_or(bad("epoch"))?;
        if count > MAX_MULTI_GET || count * OUTCOME_FIXED_LEN > r.remaining() {
            return Err(bad("outcome count"));
        }
        let mut outcomes = Vec::with_capacity(count);
        for _ in 0..count {
            let status = r.u8().and_then(Status::from_code).ok_or(bad("outcome status"))?;
            let outcome_flags = r.u8().ok_or(bad("outcome flags"))?;
            let version = r.u64().ok_or(bad("version"))?;
            let redirect = r.u32().ok_or(bad("redirect"))?;
            let len = r.u32().ok_or(bad("value length"))?;
            let value = if len == NO_VALUE {
                None
            } else {
                let start = frame.len() - r.remaining();
                r.take(len as usize).ok_or(bad("value"))?;
                Some(frame.slice(start..start + len as usize))
            };
            outcomes.push(Outcome {
                status,
                version,
                redirect: (redirect != NO_NODE).then_some(redirect),
                value,
                held: outcome_flags & OUTCOME_HELD != 0,
            });
        }
        let progress = if flags & FLAG_PROGRESS != 0 {
            let first = r.u64().ok_or(bad("progress"))?;
            let last = r.u64().ok_or(bad("progress"))?;
            let cursor = r.u64().ok_or(bad("progress"))?;
            let source = r.u32().ok_or(bad("progress"))?;
            let done = r.u8().ok_or(bad("progress"))? != 0;
            let range = HashRange::new(first, last).map_err(|_| bad("progress range"))?;
            Some(MigrationProgress { range, cursor, source, done })
        } else {
            None
        };
        if !r.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(Reply { op: kind & 0x7f, status, request_id, epoch, outcomes, progress })
    }
}

#[cfg(test)]
mod tests;
