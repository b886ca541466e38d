//! Kernel UDP transport. On Linux, batches go through `recvmmsg`/`sendmmsg`:
//! one system call moves every datagram that is ready.

use super::{RecvBatch, SendBatch, Transport};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Socket buffer size asked of the kernel; bursts of replies to many clients
/// must not overflow the default (~200 KiB) buffers.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// A datagram transport over a kernel UDP socket.
#[derive(Debug)]
pub struct UdpTransport {
    socket: UdpSocket,
}

impl UdpTransport {
    /// Binds a socket on `addr` (port 0 picks a free port).
    ///
    /// With `reuse_port`, several transports may bind the same address and the
    /// kernel spreads senders across them (SO_REUSEPORT), one per server worker.
    pub fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<UdpTransport> {
        let domain = if addr.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
        let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        // Larger buffers are an optimisation; a kernel that refuses them still works.
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        Ok(UdpTransport { socket: UdpSocket::from_std(socket.into())? })
    }
}

impl Transport for UdpTransport {
    fn recv_from<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send + 'a {
        self.socket.recv_from(buf)
    }

    async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<()> {
        self.socket.send_to(buf, to).await.map(|_| ())
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    #[cfg(target_os = "linux")]
    async fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        loop {
            self.socket.readable().await?;
            match self.socket.try_io(Interest::READABLE, || mmsg::recv(&self.socket, batch)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return result,
            }
        }
    }

    #[cfg(target_os = "linux")]
    async fn send_batch(&self, batch: &SendBatch) -> io::Result<()> {
        let mut sent = 0;
        while sent < batch.len() {
            self.socket.writable().await?;
            match self.socket.try_io(Interest::WRITABLE, || mmsg::send(&self.socket, batch, sent)) {
                Ok(n) => sent += n.max(1),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                // One bad destination must not stall the rest: skip it.
                Err(_) => sent += 1,
            }
        }
        Ok(())
    }
}

#[cfg(target_os = "linux")]
mod mmsg {
    use super::{RecvBatch, SendBatch};
    use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
    use std::io::{self, IoSlice, IoSliceMut};
    use std::net::SocketAddr;
    use std::os::fd::AsRawFd;
    use tokio::net::UdpSocket;

    fn to_socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
        if let Some(v4) = addr.as_sockaddr_in() {
            return Some(SocketAddr::V4((*v4).into()));
        }
        addr.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
    }

    /// Receives up to the batch's capacity without blocking.
    pub(super) fn recv(socket: &UdpSocket, batch: &mut RecvBatch) -> io::Result<usize> {
        let count = batch.bufs.len();
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(count, None);
        let mut slices: Vec<[IoSliceMut<'_>; 1]> =
            batch.bufs.iter_mut().map(|b| [IoSliceMut::new(b.as_mut_slice())]).collect();
        let results =
            recvmmsg(socket.as_raw_fd(), &mut headers, slices.iter_mut(), MsgFlags::MSG_DONTWAIT, None)
                .map_err(io::Error::from)?;
        let mut filled = 0;
        for msg in results {
            // Datagrams without an IP sender cannot be answered; skip them.
            let Some(from) = msg.address.as_ref().and_then(to_socket_addr) else { continue };
            batch.lens[filled] = msg.bytes;
            batch.from[filled] = from;
            filled += 1;
        }
        batch.filled = filled;
        Ok(filled)
    }

    /// Sends datagrams `start..` of the batch without blocking; returns how many went out.
    pub(super) fn send(socket: &UdpSocket, batch: &SendBatch, start: usize) -> io::Result<usize> {
        let count = batch.len() - start;
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(count, None);
        // Two parts each: a fragment's header and its bytes where the frame
        // lies (the second part is empty for a whole datagram).
        let slices: Vec<[IoSlice<'_>; 2]> = (start..batch.len())
            .map(|i| {
                let d = batch.datagram(i);
                [IoSlice::new(d.head), IoSlice::new(d.tail)]
            })
            .collect();
        let addrs: Vec<Option<SockaddrStorage>> =
            (start..batch.len()).map(|i| Some(SockaddrStorage::from(batch.datagram(i).to))).collect();
        let results =
            sendmmsg(socket.as_raw_fd(), &mut headers, slices.iter(), &addrs, [], MsgFlags::MSG_DONTWAIT)
                .map_err(io::Error::from)?;
        Ok(results.count())
    }
}
