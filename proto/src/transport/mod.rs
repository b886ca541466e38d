//! Datagram transports that carry data-path frames.
//!
//! The protocol code (node server, client) talks to a [`Transport`] and never
//! to a socket, so kernel UDP ([`UdpTransport`]), a fault-injecting wrapper for
//! tests ([`FaultyTransport`]) and a DPDK transport slot in alike. Addresses are
//! IP:port pairs on every transport (DPDK frames carry real IPv4/UDP headers).

mod batch;
mod faulty;
mod udp;

pub use batch::{Datagram, RecvBatch, SendBatch};

pub use faulty::{FaultConfig, FaultStats, FaultyTransport};
pub use udp::UdpTransport;

use std::future::Future;
use std::io;
use std::net::SocketAddr;

/// An unreliable, unordered datagram transport.
pub trait Transport: Send + Sync + 'static {
    /// Waits for one datagram, copies it into `buf` and returns its length and sender.
    /// A datagram longer than `buf` is truncated.
    fn recv_from<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send + 'a;

    /// Sends one datagram to `to`. Delivery is not guaranteed.
    fn send_to<'a>(
        &'a self,
        buf: &'a [u8],
        to: SocketAddr,
    ) -> impl Future<Output = io::Result<()>> + Send + 'a;

    /// Address this transport receives on.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// The largest datagram it carries: a frame larger than this goes as
    /// fragments ([`send_message`], [`crate::fragment`]).
    fn max_datagram(&self) -> usize {
        crate::frame::MAX_DATAGRAM
    }

    /// Waits for at least one datagram and takes as many as are ready, up to
    /// the batch's capacity. Returns how many were received.
    fn recv_batch<'a>(
        &'a self,
        batch: &'a mut RecvBatch,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        async move {
            let (len, from) = self.recv_from(&mut batch.bufs[0]).await?;
            batch.lens[0] = len;
            batch.from[0] = from;
            batch.filled = 1;
            Ok(1)
        }
    }

    /// Sends every datagram in the batch. Delivery is not guaranteed.
    fn send_batch<'a>(&'a self, batch: &'a SendBatch) -> impl Future<Output = io::Result<()>> + Send + 'a {
        async move {
            let mut scratch = Vec::new();
            for i in 0..batch.len() {
                let datagram = batch.datagram(i);
                self.send_to(datagram.contiguous(&mut scratch), datagram.to).await?;
            }
            Ok(())
        }
    }
}

impl<T: Transport> Transport for std::sync::Arc<T> {
    fn recv_from<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send + 'a {
        (**self).recv_from(buf)
    }

    fn send_to<'a>(
        &'a self,
        buf: &'a [u8],
        to: SocketAddr,
    ) -> impl Future<Output = io::Result<()>> + Send + 'a {
        (**self).send_to(buf, to)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        (**self).local_addr()
    }

    fn max_datagram(&self) -> usize {
        (**self).max_datagram()
    }

    fn recv_batch<'a>(
        &'a self,
        batch: &'a mut RecvBatch,
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        (**self).recv_batch(batch)
    }

    fn send_batch<'a>(&'a self, batch: &'a SendBatch) -> impl Future<Output = io::Result<()>> + Send + 'a {
        (**self).send_batch(batch)
    }
}

/// Sends one frame of any size: as it is when it fits a datagram, else as
/// fragments ([`crate::fragment`]). Delivery is not guaranteed: a lost
/// fragment loses the frame.
pub async fn send_message<T: Transport + ?Sized>(
    transport: &T,
    frame: &[u8],
    to: SocketAddr,
) -> io::Result<()> {
    let max = transport.max_datagram();
    if frame.len() <= max {
        return transport.send_to(frame, to).await;
    }
    let mut batch = SendBatch::new();
    for fragment in crate::fragment::fragments(frame, max) {
        fragment.write_to(batch.next_buf(to));
    }
    transport.send_batch(&batch).await
}
