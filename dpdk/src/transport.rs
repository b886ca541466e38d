//! [`DpdkTransport`]: data-path datagrams over a DPDK port, framed as real
//! Ethernet/IPv4/UDP packets, with ARP replies and MAC learning.
//!
//! One poller thread owns the port: it receives bursts, answers ARP, hands
//! datagrams for this address to the async side, and sends what the async
//! side queued. Adaptive polling: while packets flow it polls without
//! pausing; after [`SPIN_ROUNDS`] empty rounds it waits for outgoing
//! datagrams with a timeout that doubles from 1 µs up to [`MAX_IDLE_WAIT`],
//! so an idle node sleeps instead of burning a core. A datagram queued for
//! sending wakes the poller at once; a packet arriving at an idle node waits
//! at most `MAX_IDLE_WAIT` (the documented wake-up latency).

use crate::packet;
use crate::{Eal, EalError, Mbuf, Mempool, Port};
use fulva_proto::transport::Transport;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

/// Empty polling rounds before the poller starts to sleep.
pub const SPIN_ROUNDS: u32 = 2_000;
/// Longest an idle poller sleeps: the wake-up latency for a packet arriving at an idle node.
pub const MAX_IDLE_WAIT: Duration = Duration::from_micros(500);

/// Settings of a DPDK transport.
#[derive(Clone, Debug)]
pub struct DpdkConfig {
    /// EAL arguments (see `fulva_kvnode::config::eal_args`).
    pub eal_args: Vec<String>,
    /// The ports: vdev names (`net_memif0`) or PCI addresses. With several
    /// (one link per peer, as memif is point-to-point), a peer's datagrams
    /// leave by the port its packets arrive on, and by every port until then.
    pub ports: Vec<String>,
    /// This end's IPv4 address and UDP port.
    pub local: SocketAddrV4,
    /// Peers' MAC addresses known in advance; others are learned from their
    /// packets or, until then, reached by broadcast.
    pub static_peers: Vec<(Ipv4Addr, [u8; 6])>,
    /// Packet buffers in the pool.
    pub pool_size: u32,
}

impl DpdkConfig {
    /// Defaults for `port` at `local`.
    pub fn new(eal_args: Vec<String>, port: impl Into<String>, local: SocketAddrV4) -> DpdkConfig {
        DpdkConfig { eal_args, ports: vec![port.into()], local, static_peers: Vec::new(), pool_size: 8191 }
    }
}

type Inbound = (Vec<u8>, SocketAddr);

/// A [`Transport`] over one DPDK port.
pub struct DpdkTransport {
    local: SocketAddrV4,
    inbound: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Inbound>>,
    outbound: Mutex<std_mpsc::Sender<(Vec<u8>, SocketAddrV4)>>,
    stop: Arc<AtomicBool>,
    poller: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl DpdkTransport {
    /// Starts the EAL (if not yet), the port and its poller thread.
    pub fn start(config: DpdkConfig) -> Result<DpdkTransport, EalError> {
        let eal = Eal::init(&config.eal_args)?;
        let first = config.ports.first().cloned().unwrap_or_default();
        let pool = Arc::new(Mempool::new(eal, &format!("fulva-{first}"), config.pool_size, 2048 + 128)?);
        let ports = config
            .ports
            .iter()
            .map(|name| Port::start(eal, name, pool.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let (in_tx, in_rx) = tokio::sync::mpsc::channel(8192);
        let (out_tx, out_rx) = std_mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let poller = Poller {
            ports,
            local: config.local,
            peers: config.static_peers.into_iter().map(|(ip, mac)| (ip, (0, mac))).collect(),
            inbound: in_tx,
            outbound: out_rx,
            stop: stop.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("dpdk-{first}"))
            .spawn(move || poller.run())
            .map_err(|e| EalError { what: "poller thread".into(), message: e.to_string(), code: 0 })?;
        Ok(DpdkTransport {
            local: config.local,
            inbound: tokio::sync::Mutex::new(in_rx),
            outbound: Mutex::new(out_tx),
            stop,
            poller: Mutex::new(Some(handle)),
        })
    }
}

impl Drop for DpdkTransport {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(handle) = self.poller.lock().take() {
            let _ = handle.join();
        }
    }
}

impl Transport for DpdkTransport {
    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let (data, from) = self
            .inbound
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "the DPDK poller stopped"))?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        Ok((n, from))
    }

    async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<()> {
        let SocketAddr::V4(to) = to else {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "the DPDK transport speaks IPv4 only"));
        };
        self.outbound
            .lock()
            .send((buf.to_vec(), to))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the DPDK poller stopped"))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::V4(self.local))
    }
}

struct Poller {
    ports: Vec<Port>,
    local: SocketAddrV4,
    /// Where each peer is: the port its packets came in on, and its MAC.
    peers: HashMap<Ipv4Addr, (usize, [u8; 6])>,
    inbound: tokio::sync::mpsc::Sender<Inbound>,
    outbound: std_mpsc::Receiver<(Vec<u8>, SocketAddrV4)>,
    stop: Arc<AtomicBool>,
}

impl Poller {
    fn run(mut self) {
        let mut received = Vec::with_capacity(32);
        let mut sending: Vec<Vec<Mbuf>> = self.ports.iter().map(|_| Vec::with_capacity(32)).collect();
        let mut frame = Vec::with_capacity(2048);
        let mut idle_rounds = 0u32;
        let mut wait = Duration::from_micros(1);
        while !self.stop.load(Ordering::Acquire) {
            let mut work = false;
            for i in 0..self.ports.len() {
                work |= self.receive(i, &mut received, &mut frame);
            }
            // Send everything queued.
            while let Ok((payload, to)) = self.outbound.try_recv() {
                self.queue(&payload, to, &mut frame, &mut sending);
                work = true;
            }
            self.flush(&mut sending);
            if work {
                idle_rounds = 0;
                wait = Duration::from_micros(1);
                continue;
            }
            idle_rounds = idle_rounds.saturating_add(1);
            if idle_rounds < SPIN_ROUNDS {
                std::hint::spin_loop();
                continue;
            }
            // Idle: sleep until something is queued to send, or the wait ends.
            match self.outbound.recv_timeout(wait) {
                Ok((payload, to)) => {
                    self.queue(&payload, to, &mut frame, &mut sending);
                    self.flush(&mut sending);
                    idle_rounds = 0;
                    wait = Duration::from_micros(1);
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => wait = (wait * 2).min(MAX_IDLE_WAIT),
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn flush(&mut self, sending: &mut [Vec<Mbuf>]) {
        for (port, queue) in self.ports.iter_mut().zip(sending.iter_mut()) {
            if !queue.is_empty() {
                port.tx(std::mem::take(queue));
            }
        }
    }

    /// Takes one burst from port `i`; returns whether anything arrived.
    fn receive(&mut self, i: usize, received: &mut Vec<Mbuf>, frame: &mut Vec<u8>) -> bool {
        received.clear();
        if self.ports[i].rx(received, 32) == 0 {
            return false;
        }
        let mut replies = Vec::new();
        for m in received.drain(..) {
            let data = m.data();
            if let Some(d) = packet::parse(data) {
                if d.dst != self.local {
                    continue;
                }
                self.peers.insert(*d.src.ip(), (i, d.src_mac));
                // A full queue means the node is overloaded: drop, as a NIC would.
                let _ = self.inbound.try_send((d.payload.to_vec(), SocketAddr::V4(d.src)));
            } else if let Some(arp) = packet::parse_arp_request(data) {
                if arp.target == *self.local.ip() {
                    self.peers.insert(arp.sender_ip, (i, arp.sender_mac));
                    frame.clear();
                    packet::build_arp_reply(&arp, self.ports[i].mac(), *self.local.ip(), frame);
                    if let Some(mut reply) = Mbuf::alloc(self.ports[i].pool()) {
                        if reply.append(frame) {
                            replies.push(reply);
                        }
                    }
                }
            }
        }
        if !replies.is_empty() {
            self.ports[i].tx(replies);
        }
        true
    }

    /// Frames `payload` for `to`: by the port and MAC it was last heard
    /// from, else broadcast on every port.
    fn queue(&self, payload: &[u8], to: SocketAddrV4, frame: &mut Vec<u8>, sending: &mut [Vec<Mbuf>]) {
        let targets: Vec<(usize, [u8; 6])> = match self.peers.get(to.ip()) {
            Some(&(port, mac)) => vec![(port, mac)],
            None => (0..self.ports.len()).map(|p| (p, packet::BROADCAST)).collect(),
        };
        for (port, dst_mac) in targets {
            let Some(p) = self.ports.get(port) else { continue };
            frame.clear();
            packet::build(p.mac(), self.local, dst_mac, to, payload, frame);
            if let Some(mut m) = Mbuf::alloc(p.pool()) {
                if m.append(frame) {
                    sending[port].push(m);
                }
            }
        }
    }
}
