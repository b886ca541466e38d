//! Kernel UDP transport.

use super::Transport;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
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
}
