//! The data-path transport a [`Client`](crate::Client) opens from its
//! [`ClientConfig`](crate::ClientConfig): kernel UDP, or DPDK when the crate
//! is built with the `dpdk` feature.

use fulva_proto::transport::{RecvBatch, SendBatch, Transport, UdpTransport};
use std::io;
use std::net::SocketAddr;

/// Which data path a client speaks.
#[derive(Clone, Debug, Default)]
pub enum TransportChoice {
    /// Kernel UDP sockets (`ClientConfig::sockets` of them).
    #[default]
    Kernel,
    /// One DPDK transport (EAL, ports and this end's address in the config).
    #[cfg(feature = "dpdk")]
    Dpdk(fulva_dpdk::DpdkConfig),
}

/// The transport behind [`Client::connect`](crate::Client::connect).
pub enum DataTransport {
    /// Kernel UDP.
    Udp(UdpTransport),
    /// DPDK.
    #[cfg(feature = "dpdk")]
    Dpdk(Box<fulva_dpdk::DpdkTransport>),
}

impl Transport for DataTransport {
    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        match self {
            DataTransport::Udp(t) => t.recv_from(buf).await,
            #[cfg(feature = "dpdk")]
            DataTransport::Dpdk(t) => t.recv_from(buf).await,
        }
    }

    async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<()> {
        match self {
            DataTransport::Udp(t) => t.send_to(buf, to).await,
            #[cfg(feature = "dpdk")]
            DataTransport::Dpdk(t) => t.send_to(buf, to).await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            DataTransport::Udp(t) => t.local_addr(),
            #[cfg(feature = "dpdk")]
            DataTransport::Dpdk(t) => t.local_addr(),
        }
    }

    fn max_datagram(&self) -> usize {
        match self {
            DataTransport::Udp(t) => t.max_datagram(),
            #[cfg(feature = "dpdk")]
            DataTransport::Dpdk(t) => t.max_datagram(),
        }
    }

    async fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        match self {
            DataTransport::Udp(t) => t.recv_batch(batch).await,
            #[cfg(feature = "dpdk")]
            DataTransport::Dpdk(t) => t.recv_batch(batch).await,
        }
    }

    async fn send_batch(&self, batch: &SendBatch) -> io::Result<()> {
        match self {
            DataTransport::Udp(t) => t.send_batch(batch).await,
            #[cfg(feature = "dpdk")]
            DataTransport::Dpdk(t) => t.send_batch(batch).await,
        }
    }
}
