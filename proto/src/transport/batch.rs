//! Reusable buffers for receiving and sending several datagrams per call.

use std::net::SocketAddr;

/// Datagrams received by one [`Transport::recv_batch`](super::Transport::recv_batch) call.
pub struct RecvBatch {
    pub(crate) bufs: Vec<Vec<u8>>,
    pub(crate) lens: Vec<usize>,
    pub(crate) from: Vec<SocketAddr>,
    pub(crate) filled: usize,
}

const UNSPECIFIED: SocketAddr =
    SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0));

impl RecvBatch {
    /// Room for `count` datagrams of up to `size` bytes each.
    pub fn new(count: usize, size: usize) -> RecvBatch {
        let count = count.max(1);
        RecvBatch {
            bufs: (0..count).map(|_| vec![0u8; size]).collect(),
            lens: vec![0; count],
            from: vec![UNSPECIFIED; count],
            filled: 0,
        }
    }

    /// Datagrams held after the last receive.
    pub fn len(&self) -> usize {
        self.filled
    }

    /// Whether the last receive got nothing.
    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// Datagram `i` and its sender.
    pub fn get(&self, i: usize) -> (&[u8], SocketAddr) {
        (&self.bufs[i][..self.lens[i]], self.from[i])
    }

    /// Empties the batch, keeping its buffers (for transports outside this crate).
    pub fn clear(&mut self) {
        self.filled = 0;
    }

    /// Whether every slot holds a datagram.
    pub fn is_full(&self) -> bool {
        self.filled == self.bufs.len()
    }

    /// Copies `data` (truncated to the slot size) into the next slot; returns
    /// false, taking nothing, when the batch is full.
    pub fn push(&mut self, data: &[u8], from: SocketAddr) -> bool {
        if self.is_full() {
            return false;
        }
        let slot = &mut self.bufs[self.filled];
        let n = data.len().min(slot.len());
        slot[..n].copy_from_slice(&data[..n]);
        self.lens[self.filled] = n;
        self.from[self.filled] = from;
        self.filled += 1;
        true
    }
}

/// Datagrams to send with one [`Transport::send_batch`](super::Transport::send_batch) call.
/// Buffers are kept between uses, so filling a batch does not allocate.
///
/// A datagram is one buffer, or, for a fragment of a large frame, its
/// header in the buffer and its bytes still in the frame (a "tail"), so a
/// large reply is not copied once more to be cut up: a kernel UDP socket
/// sends both parts with one `sendmmsg` entry.
#[derive(Default)]
pub struct SendBatch {
    pub(crate) bufs: Vec<Vec<u8>>,
    pub(crate) to: Vec<SocketAddr>,
    /// Per datagram: the frame of `wholes` and the range of it that follows
    /// the buffer, if any.
    tails: Vec<Option<(usize, std::ops::Range<usize>)>>,
    /// Frames sent as fragments, kept until the batch is cleared.
    wholes: Vec<Vec<u8>>,
    pub(crate) filled: usize,
}

/// One datagram of a [`SendBatch`]: `head` then `tail` (often empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// The first bytes (the whole datagram, or a fragment's header).
    pub head: &'a [u8],
    /// The rest (a fragment's bytes, where the frame lies), or empty.
    pub tail: &'a [u8],
    /// Where it goes.
    pub to: SocketAddr,
}

impl Datagram<'_> {
    /// Bytes in the datagram.
    pub fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    /// Whether the datagram is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The datagram in one piece: borrowed when it is one already, else
    /// copied into `scratch`.
    pub fn contiguous<'b>(&'b self, scratch: &'b mut Vec<u8>) -> &'b [u8] {
        if self.tail.is_empty() {
            return self.head;
        }
        scratch.clear();
        scratch.extend_from_slice(self.head);
        scratch.extend_from_slice(self.tail);
        scratch
    }
}

impl SendBatch {
    /// An empty batch.
    pub fn new() -> SendBatch {
        SendBatch::default()
    }

    /// Empties the batch, keeping its buffers (the large frames kept for
    /// their fragments are freed).
    pub fn clear(&mut self) {
        self.filled = 0;
        self.wholes.clear();
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.filled
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// A cleared buffer for the next datagram to `to`; fill it in place.
    pub fn next_buf(&mut self, to: SocketAddr) -> &mut Vec<u8> {
        if self.filled == self.bufs.len() {
            self.bufs.push(Vec::with_capacity(256));
            self.to.push(to);
            self.tails.push(None);
        }
        self.to[self.filled] = to;
        self.tails[self.filled] = None;
        let buf = &mut self.bufs[self.filled];
        buf.clear();
        self.filled += 1;
        buf
    }

    /// Splits the last datagram queued into fragments when it is larger than
    /// `max_datagram` ([`crate::fragment`]), under the id `id` gives it
    /// ([`crate::fragment::message_id`] but in a trap); its oversized buffer
    /// is freed, so one large reply does not keep its memory in the batch.
    pub fn fragment_last(&mut self, max_datagram: usize, id: impl Fn(&[u8]) -> u64) {
        let Some(last) = self.filled.checked_sub(1) else { return };
        if self.bufs[last].len() <= max_datagram {
            return;
        }
        let whole = std::mem::take(&mut self.bufs[last]);
        let to = self.to[last];
        self.pop();
        let which = self.wholes.len();
        for (header, range) in crate::fragment::fragment_headers(whole.len(), max_datagram, id(&whole)) {
            self.next_buf(to).extend_from_slice(&header);
            self.tails[self.filled - 1] = Some((which, range));
        }
        self.wholes.push(whole);
    }

    /// Frees the buffers past the first `keep` (after a burst of fragments,
    /// so the batch does not keep their memory).
    pub fn release_beyond(&mut self, keep: usize) {
        if self.bufs.len() > keep {
            let keep = keep.max(self.filled);
            self.bufs.truncate(keep);
            self.to.truncate(keep);
            self.tails.truncate(keep);
        }
    }

    /// Drops the last datagram queued (its buffer stays for reuse).
    pub fn pop(&mut self) {
        self.filled = self.filled.saturating_sub(1);
    }

    /// Datagram `i`, in one or two parts.
    pub fn datagram(&self, i: usize) -> Datagram<'_> {
        let tail = match &self.tails[i] {
            Some((which, range)) => &self.wholes[*which][range.clone()],
            None => &[][..],
        };
        Datagram { head: &self.bufs[i], tail, to: self.to[i] }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_last_datagram_becomes_fragments_and_its_buffer_is_freed() {
        let to: SocketAddr = "10.0.0.1:9".parse().unwrap();
        let mut batch = SendBatch::new();
        batch.next_buf(to).extend_from_slice(b"small");
        batch.next_buf(to).extend_from_slice(&vec![7u8; 10_000]);
        batch.fragment_last(1_000, crate::fragment::message_id);
        assert_eq!(batch.len(), 1 + 10_000usize.div_ceil(1_000 - crate::fragment::FRAGMENT_HEADER_LEN));
        assert_eq!(batch.datagram(0).head, b"small");
        let mut r =
            crate::fragment::Reassembler::new(crate::fragment::ReassemblyLimits::for_messages(1 << 20));
        let mut whole = None;
        let mut scratch = Vec::new();
        for i in 1..batch.len() {
            let d = batch.datagram(i);
            assert!(d.len() <= 1_000 && d.head.len() == crate::fragment::FRAGMENT_HEADER_LEN);
            if let crate::fragment::Accepted::Complete(m) = r.accept(to, d.contiguous(&mut scratch)) {
                whole = Some(m);
            }
        }
        assert_eq!(whole, Some(vec![7u8; 10_000]));
        assert!(batch.bufs.iter().all(|b| b.capacity() < 10_000), "no buffer holds the whole frame");
        // Cleared, the frame is freed; a datagram that fits stays as it is.
        batch.clear();
        assert!(batch.wholes.is_empty());
        batch.next_buf(to).extend_from_slice(b"x");
        batch.fragment_last(1_000, crate::fragment::message_id);
        assert_eq!((batch.len(), batch.datagram(0).head, batch.datagram(0).tail), (1, &b"x"[..], &b""[..]));
    }

    #[test]
    fn push_fills_slots_in_order_truncates_and_stops_when_full() {
        let from: SocketAddr = "10.0.0.1:9".parse().unwrap();
        let mut batch = RecvBatch::new(2, 4);
        assert!(batch.push(b"ab", from));
        assert!(batch.push(b"abcdef", from));
        assert!(batch.is_full());
        assert!(!batch.push(b"x", from), "a full batch takes nothing");
        assert_eq!(batch.len(), 2);
        assert_eq!(batch.get(0), (&b"ab"[..], from));
        assert_eq!(batch.get(1).0, b"abcd", "longer than a slot: truncated");
        batch.clear();
        assert!(batch.is_empty());
        assert!(batch.push(b"z", from));
        assert_eq!(batch.get(0).0, b"z");
    }
}
