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
}

/// Datagrams to send with one [`Transport::send_batch`](super::Transport::send_batch) call.
/// Buffers are kept between uses, so filling a batch does not allocate.
#[derive(Default)]
pub struct SendBatch {
    pub(crate) bufs: Vec<Vec<u8>>,
    pub(crate) to: Vec<SocketAddr>,
    pub(crate) filled: usize,
}

impl SendBatch {
    /// An empty batch.
    pub fn new() -> SendBatch {
        SendBatch::default()
    }

    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.filled = 0;
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
        }
        self.to[self.filled] = to;
        let buf = &mut self.bufs[self.filled];
        buf.clear();
        self.filled += 1;
        buf
    }

    /// Drops the last datagram queued (its buffer stays for reuse).
    pub fn pop(&mut self) {
        self.filled = self.filled.saturating_sub(1);
    }

    /// Datagram `i` and its destination.
    pub fn get(&self, i: usize) -> (&[u8], SocketAddr) {
        (&self.bufs[i], self.to[i])
    }
}
