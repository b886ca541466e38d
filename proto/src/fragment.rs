//! Messages larger than one datagram: split into fragments on send,
//! reassembled on receive.
//!
//! A frame (request or reply) that fits the transport's datagram goes as it
//! is. A larger one goes as fragments, each a datagram of its own:
//! ```text
//!  0 magic u16 = 0xF17B   2 version u8 = 1   3 flags u8 = 0   4 index u32
//!  8 message_id u64      16 total_len u32    20 chunk_len u32
//! 24 bytes [index * chunk_len, min(total_len, (index + 1) * chunk_len))
//! ```
//! Every fragment of a message carries the same id, total length and chunk
//! length; the receiver keys a message by its sender's address and id. The
//! id is a hash of the message's bytes ([`message_id`]), so the same frame
//! sent again carries the same id: a client's retransmission of a request,
//! or a node's second reply to it while the answer is unchanged, fills in
//! the fragments the receiver missed instead of starting over (at 5% loss a
//! 1 MiB frame in 725 packets would almost never arrive whole in one try).
//! Two different frames never share an id (but for a 64-bit hash
//! collision), so fragments of two answers are never mixed. A duplicated
//! fragment is ignored; fragments may come in any order. What the receiver holds is bounded: a message larger
//! than its limit, or whose fragments disagree, is refused and its memory
//! freed; partial messages expire after a timeout; and when the bytes held
//! would exceed the budget, the oldest partial message goes first.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Magic number that opens every fragment (a whole frame opens with
/// [`crate::frame::MAGIC`]).
pub const FRAGMENT_MAGIC: u16 = 0xF17B;
/// Version of the fragment header.
pub const FRAGMENT_VERSION: u8 = 1;
/// Bytes in a fragment's header.
pub const FRAGMENT_HEADER_LEN: usize = 24;
/// The largest message anything reassembles, whatever it is configured to
/// (8 MiB values, 64 KiB keys and headers).
pub const MAX_MESSAGE_LIMIT: usize = (8 << 20) + (128 << 10);

/// The id of a message: a hash of its bytes (see the module's text).
pub fn message_id(message: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(message)
}

/// Whether `datagram` is a fragment (rather than a whole frame).
pub fn is_fragment(datagram: &[u8]) -> bool {
    datagram.len() >= 2 && u16::from_le_bytes([datagram[0], datagram[1]]) == FRAGMENT_MAGIC
}

/// One fragment of a message: its header and its share of the bytes.
#[derive(Debug, Clone, Copy)]
pub struct Fragment<'a> {
    header: [u8; FRAGMENT_HEADER_LEN],
    bytes: &'a [u8],
}

impl Fragment<'_> {
    /// Appends the fragment's datagram to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.header);
        out.extend_from_slice(self.bytes);
    }

    /// Bytes of the fragment's datagram.
    pub fn len(&self) -> usize {
        FRAGMENT_HEADER_LEN + self.bytes.len()
    }

    /// Whether the fragment carries no bytes (never, for a real message).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// The fragments of `message` for a transport whose datagrams hold at most
/// `max_datagram` bytes, under its [`message_id`]. Only for messages that
/// do not fit one datagram (a whole frame is sent as it is).
pub fn fragments(message: &[u8], max_datagram: usize) -> impl Iterator<Item = Fragment<'_>> + '_ {
    fragments_with_id(message, max_datagram, message_id(message))
}

/// [`fragments`] under the id `id`.
pub fn fragments_with_id(
    message: &[u8],
    max_datagram: usize,
    id: u64,
) -> impl Iterator<Item = Fragment<'_>> + '_ {
    fragment_headers(message.len(), max_datagram, id)
        .map(move |(header, range)| Fragment { header, bytes: &message[range] })
}

/// The headers of the fragments of a `len`-byte message under the id `id`,
/// each with the range of the message's bytes it carries (for a sender that
/// sends each header and its bytes from where they lie, without copying).
pub fn fragment_headers(
    len: usize,
    max_datagram: usize,
    id: u64,
) -> impl Iterator<Item = ([u8; FRAGMENT_HEADER_LEN], std::ops::Range<usize>)> {
    assert!(max_datagram > FRAGMENT_HEADER_LEN, "a datagram must hold more than a fragment header");
    let chunk = (max_datagram - FRAGMENT_HEADER_LEN).min(u32::MAX as usize);
    let total = u32::try_from(len).expect("a message is smaller than 4 GiB");
    (0..len.div_ceil(chunk)).map(move |index| {
        let mut header = [0u8; FRAGMENT_HEADER_LEN];
        header[0..2].copy_from_slice(&FRAGMENT_MAGIC.to_le_bytes());
        header[2] = FRAGMENT_VERSION;
        header[4..8].copy_from_slice(&(index as u32).to_le_bytes());
        header[8..16].copy_from_slice(&id.to_le_bytes());
        header[16..20].copy_from_slice(&total.to_le_bytes());
        header[20..24].copy_from_slice(&(chunk as u32).to_le_bytes());
        (header, index * chunk..((index + 1) * chunk).min(len))
    })
}

/// How much a [`Reassembler`] may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReassemblyLimits {
    /// Largest message accepted, in bytes (at most [`MAX_MESSAGE_LIMIT`]).
    pub max_message: usize,
    /// Bytes held across every partial message.
    pub max_pending_bytes: usize,
    /// Partial messages held per sender.
    pub max_per_peer: usize,
    /// How long a partial message waits for its missing fragments.
    pub timeout: Duration,
}

impl ReassemblyLimits {
    /// Limits for messages up to `max_message` bytes: room for 8 of them at
    /// once (at least 32 MiB), 8 per sender, 2 s to complete.
    pub fn for_messages(max_message: usize) -> ReassemblyLimits {
        let max_message = max_message.min(MAX_MESSAGE_LIMIT);
        ReassemblyLimits {
            max_message,
            max_pending_bytes: (max_message * 8).max(32 << 20),
            max_per_peer: 8,
            timeout: Duration::from_secs(2),
        }
    }
}

/// What happened to one datagram given to [`Reassembler::accept`].
#[derive(Debug, PartialEq, Eq)]
pub enum Accepted<'a> {
    /// Not a fragment: a whole frame, to be handled as it is.
    Whole(&'a [u8]),
    /// The last missing fragment: the whole message.
    Complete(Vec<u8>),
    /// A fragment kept (or a duplicate ignored); the message is not whole yet.
    Pending,
    /// A fragment refused: malformed, larger than the limit, or at odds with
    /// the fragments of its message before it (whose memory is freed).
    Refused,
}

/// Counts of what a [`Reassembler`] did, since they were last taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReassemblyStats {
    /// Messages made whole.
    pub completed: u64,
    /// Fragments refused (each also frees its partial message, if any).
    pub refused: u64,
    /// Partial messages dropped because their missing fragments did not
    /// come in time.
    pub expired: u64,
    /// Partial messages dropped to stay within the memory budget or the
    /// per-sender count.
    pub evicted: u64,
}

struct Partial {
    /// Room for the whole message (capacity `total`, length 0 until every
    /// fragment is in: the bytes are written in place, never zeroed first).
    bytes: Vec<u8>,
    total: usize,
    chunk: u32,
    /// One bit per fragment: received.
    have: Vec<u64>,
    missing: u32,
    started: Instant,
}

/// Puts messages back together from their fragments, for one receive loop.
pub struct Reassembler {
    limits: ReassemblyLimits,
    partial: HashMap<(SocketAddr, u64), Partial>,
    /// Partial messages in the order they started (some may be gone).
    order: VecDeque<(Instant, SocketAddr, u64)>,
    per_peer: HashMap<SocketAddr, usize>,
    held: usize,
    swept: Instant,
    stats: ReassemblyStats,
}

impl Reassembler {
    /// An empty reassembler bounded by `limits`.
    pub fn new(limits: ReassemblyLimits) -> Reassembler {
        Reassembler {
            limits: ReassemblyLimits { max_message: limits.max_message.min(MAX_MESSAGE_LIMIT), ..limits },
            partial: HashMap::new(),
            order: VecDeque::new(),
            per_peer: HashMap::new(),
            held: 0,
            swept: Instant::now(),
            stats: ReassemblyStats::default(),
        }
    }

    /// Bytes held in partial messages.
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// Partial messages held.
    pub fn partial_messages(&self) -> usize {
        self.partial.len()
    }

    /// The counts since the last call, then zero.
    pub fn take_stats(&mut self) -> ReassemblyStats {
        std::mem::take(&mut self.stats)
    }

    /// Takes one datagram from `from`.
    pub fn accept<'a>(&mut self, from: SocketAddr, datagram: &'a [u8]) -> Accepted<'a> {
        if !is_fragment(datagram) {
            return Accepted::Whole(datagram);
        }
        let now = Instant::now();
        if now.duration_since(self.swept) >= self.limits.timeout / 4 {
            self.expire(now);
        }
        match self.take(from, datagram, now) {
            Ok(Some(message)) => {
                self.stats.completed += 1;
                Accepted::Complete(message)
            }
            Ok(None) => Accepted::Pending,
            Err(()) => {
                self.stats.refused += 1;
                Accepted::Refused
            }
        }
    }

    fn take(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) -> Result<Option<Vec<u8>>, ()> {
        if datagram.len() < FRAGMENT_HEADER_LEN || datagram[2] != FRAGMENT_VERSION {
            return Err(());
        }
        let u32_at = |at: usize| u32::from_le_bytes(datagram[at..at + 4].try_into().expect("4 bytes"));
        let index = u32_at(4);
        let id = u64::from_le_bytes(datagram[8..16].try_into().expect("8 bytes"));
        let total = u32_at(16);
        let chunk = u32_at(20);
        let bytes = &datagram[FRAGMENT_HEADER_LEN..];
        let key = (from, id);
        let refuse = |this: &mut Reassembler| {
            this.remove(&key);
            Err(())
        };
        if total == 0 || chunk == 0 || total as usize > self.limits.max_message {
            return refuse(self);
        }
        let count = total.div_ceil(chunk);
        if index >= count || bytes.len() != (total - index * chunk).min(chunk) as usize {
            return refuse(self);
        }
        if let Some(partial) = self.partial.get(&key) {
            if partial.total != total as usize || partial.chunk != chunk {
                return refuse(self);
            }
        } else {
            if count == 1 {
                // A message that fit one fragment needs no holding.
                return Ok(Some(bytes.to_vec()));
            }
            self.make_room(from, total as usize);
            let words = (count as usize).div_ceil(64);
            self.partial.insert(
                key,
                Partial {
                    bytes: Vec::with_capacity(total as usize),
                    total: total as usize,
                    chunk,
                    have: vec![0; words],
                    missing: count,
                    started: now,
                },
            );
            self.order.push_back((now, from, id));
            *self.per_peer.entry(from).or_default() += 1;
            self.held += total as usize;
        }
        let partial = self.partial.get_mut(&key).expect("present");
        let (word, bit) = ((index / 64) as usize, 1u64 << (index % 64));
        if partial.have[word] & bit != 0 {
            return Ok(None); // a duplicate
        }
        partial.have[word] |= bit;
        let at = index as usize * chunk as usize;
        let room = &mut partial.bytes.spare_capacity_mut()[at..at + bytes.len()];
        // SAFETY: `room` is `bytes.len()` bytes of the buffer's spare capacity
        // (in bounds: `index < count` and the length check above put
        // `at + bytes.len()` at most `total`, the capacity), and `bytes` is a
        // datagram, which cannot overlap the buffer.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), room.as_mut_ptr().cast::<u8>(), bytes.len()) };
        partial.missing -= 1;
        if partial.missing > 0 {
            return Ok(None);
        }
        let total = partial.total;
        // SAFETY: every fragment `0..count` has been written (each bit of
        // `have` was set once, by a write of exactly that fragment's bytes),
        // and the fragments tile `0..total` with no gap, so all `total`
        // bytes within the capacity are initialized.
        unsafe { partial.bytes.set_len(total) };
        Ok(self.remove(&key))
    }

    /// Drops partial messages until `incoming` more bytes fit the budget and
    /// `from` holds fewer than its share: the oldest first.
    fn make_room(&mut self, from: SocketAddr, incoming: usize) {
        while self.per_peer.get(&from).copied().unwrap_or(0) >= self.limits.max_per_peer {
            let Some(oldest) = self.oldest_of(Some(from)) else { break };
            self.remove(&oldest);
            self.stats.evicted += 1;
        }
        while self.held + incoming > self.limits.max_pending_bytes {
            let Some(oldest) = self.oldest_of(None) else { break };
            self.remove(&oldest);
            self.stats.evicted += 1;
        }
    }

    /// The oldest partial message (of `peer`, when given).
    fn oldest_of(&mut self, peer: Option<SocketAddr>) -> Option<(SocketAddr, u64)> {
        // Entries of messages already gone are dropped on the way.
        while let Some(&(started, from, id)) = self.order.front() {
            if self.partial.get(&(from, id)).is_some_and(|p| p.started == started) {
                break;
            }
            self.order.pop_front();
        }
        match peer {
            None => self.order.front().map(|&(_, from, id)| (from, id)),
            Some(peer) => self
                .order
                .iter()
                .find(|&&(started, from, id)| {
                    from == peer && self.partial.get(&(from, id)).is_some_and(|p| p.started == started)
                })
                .map(|&(_, from, id)| (from, id)),
        }
    }

    fn expire(&mut self, now: Instant) {
        self.swept = now;
        while let Some(oldest) = self.oldest_of(None) {
            let started = self.partial[&oldest].started;
            if now.duration_since(started) < self.limits.timeout {
                break;
            }
            self.remove(&oldest);
            self.stats.expired += 1;
        }
    }

    /// Forgets a partial message; returns its bytes.
    fn remove(&mut self, key: &(SocketAddr, u64)) -> Option<Vec<u8>> {
        let partial = self.partial.remove(key)?;
        self.held -= partial.total;
        if let Some(n) = self.per_peer.get_mut(&key.0) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&key.0);
            }
        }
        Some(partial.bytes)
    }
}

#[cfg(test)]
mod tests;
