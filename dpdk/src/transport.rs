//! [`DpdkTransport`]: data-path datagrams over DPDK ports, framed as real
//! Ethernet/IPv4/UDP packets, with ARP replies and MAC learning.
//!
//! Two ways to drive the ports, neither with a thread hop per packet:
//!
//! - **Run to completion** ([`DpdkTransport::start_serving`], a node): a
//!   poller thread owns the ports, executes every request addressed here with
//!   the node's handler and sends the reply itself. While packets flow it
//!   polls without pausing; after [`SPIN_ROUNDS`] empty rounds it sleeps for a
//!   time that doubles from 1 µs up to [`MAX_IDLE_WAIT`], so an idle node does
//!   not burn a core. A request reaching an idle node waits at most
//!   `MAX_IDLE_WAIT` (the documented wake-up latency).
//! - **Polled by the caller** ([`DpdkTransport::start`], a client): whoever
//!   awaits [`Transport::recv_batch`] polls the ports in place (yielding to
//!   other tasks between empty polls), and senders put their packets on the
//!   wire directly. After `SPIN_ROUNDS` empty polls the receiver sleeps until
//!   something is sent (a reply is then on its way) or [`CLIENT_IDLE_WAIT`]
//!   passes, the wake-up latency for a packet nobody asked for.

use crate::packet;
use crate::{Eal, EalError, Mbuf, Mempool, Port};
use fulva_proto::transport::{RecvBatch, SendBatch, Transport};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

/// Empty polling rounds before a poller (or a polling receiver) starts to sleep.
pub const SPIN_ROUNDS: u32 = 2_000;
/// Longest an idle node's poller sleeps: the wake-up latency for a request
/// arriving at an idle node.
pub const MAX_IDLE_WAIT: Duration = Duration::from_micros(500);
/// Longest an idle client's receiver sleeps when nothing is being sent.
pub const CLIENT_IDLE_WAIT: Duration = Duration::from_millis(1);

/// Packets taken or sent per burst.
const BURST: usize = 32;
/// The MTU unless configured: standard Ethernet.
pub const DEFAULT_MTU: usize = 1500;
/// The smallest MTU taken (IPv4's minimum for a host).
pub const MIN_MTU: usize = 576;
/// The largest MTU taken (jumbo frames).
pub const MAX_MTU: usize = 9000;

/// Settings of a DPDK transport.
#[derive(Clone, Debug)]
pub struct DpdkConfig {
    /// EAL arguments (see `fulva_kvnode::eal_args`).
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
    /// The ports' MTU: the largest IP packet a frame carries (1500 on most
    /// networks, up to 9000 with jumbo frames on an SR-IOV VF). Data-path
    /// frames larger than `mtu - 28` bytes (IP and UDP headers) travel as
    /// fragments.
    pub mtu: usize,
}

impl DpdkConfig {
    /// Defaults for `port` at `local`.
    pub fn new(eal_args: Vec<String>, port: impl Into<String>, local: SocketAddrV4) -> DpdkConfig {
        DpdkConfig {
            eal_args,
            ports: vec![port.into()],
            local,
            static_peers: Vec::new(),
            pool_size: 8191,
            mtu: DEFAULT_MTU,
        }
    }

    /// The largest UDP payload one packet carries at this MTU.
    pub fn max_datagram(&self) -> usize {
        self.mtu.clamp(MIN_MTU, MAX_MTU) - 28
    }
}

/// Executes one request datagram from `from`, writing the reply into `out`
/// (cleared); returns whether there is a reply to send. A datagram may be
/// a fragment ([`fulva_proto::fragment`]): the handler reassembles; a reply
/// larger than a packet goes back as fragments.
pub type FrameHandler = Arc<dyn Fn(&[u8], SocketAddr, &mut Vec<u8>) -> bool + Send + Sync>;

/// The ports of one transport and what is known about peers.
struct Link {
    ports: Vec<Port>,
    local: SocketAddrV4,
    /// The largest UDP payload of one packet.
    max_datagram: usize,
    /// Where each peer is: the port its packets came in on, and its MAC.
    peers: HashMap<Ipv4Addr, (usize, [u8; 6])>,
    /// Packets waiting for the next transmit burst, per port.
    sending: Vec<Vec<Mbuf>>,
    received: Vec<Mbuf>,
    /// Scratch space for one frame, and for one reply.
    frame: Vec<u8>,
    reply: Vec<u8>,
}

impl Link {
    fn open(config: DpdkConfig) -> Result<Link, EalError> {
        let eal = Eal::init(&config.eal_args)?;
        let first = config.ports.first().cloned().unwrap_or_default();
        let max_datagram = config.max_datagram();
        // Room for a whole packet at the MTU (Ethernet header included),
        // after the mbuf's 128-byte headroom.
        let data_room = (max_datagram + packet::HEADERS).max(2048) + 128;
        let pool =
            Arc::new(Mempool::new(eal, &format!("fulva-{first}"), config.pool_size, data_room as u16)?);
        let ports = config
            .ports
            .iter()
            .map(|name| Port::start(eal, name, pool.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Link {
            sending: ports.iter().map(|_| Vec::with_capacity(BURST)).collect(),
            ports,
            local: config.local,
            max_datagram,
            peers: config.static_peers.into_iter().map(|(ip, mac)| (ip, (0, mac))).collect(),
            received: Vec::with_capacity(BURST),
            frame: Vec::with_capacity(2048),
            reply: Vec::with_capacity(2048),
        })
    }

    /// Takes one burst from every port, answers ARP, and hands each datagram
    /// addressed here to `deliver(payload, from, reply)`; when it returns
    /// true, `reply` goes back to the sender. Returns whether anything arrived.
    fn poll(&mut self, mut deliver: impl FnMut(&[u8], SocketAddr, &mut Vec<u8>) -> bool) -> bool {
        let mut any = false;
        for i in 0..self.ports.len() {
            self.received.clear();
            if self.ports[i].rx(&mut self.received, BURST) == 0 {
                continue;
            }
            any = true;
            let received = std::mem::take(&mut self.received);
            for m in &received {
                let data = m.data();
                if let Some(d) = packet::parse(data) {
                    if d.dst != self.local {
                        continue;
                    }
                    if self.peers.get(d.src.ip()) != Some(&(i, d.src_mac)) {
                        self.peers.insert(*d.src.ip(), (i, d.src_mac));
                    }
                    self.reply.clear();
                    if deliver(d.payload, SocketAddr::V4(d.src), &mut self.reply) {
                        let reply = std::mem::take(&mut self.reply);
                        self.reply_to(i, d.src_mac, d.src, &reply);
                        self.reply = reply;
                        // A large reply leaves its memory behind.
                        if self.reply.capacity() > 4 * self.max_datagram {
                            self.reply = Vec::with_capacity(2048);
                        }
                    }
                } else if let Some(arp) = packet::parse_arp_request(data) {
                    if arp.target == *self.local.ip() {
                        self.peers.insert(arp.sender_ip, (i, arp.sender_mac));
                        self.frame.clear();
                        packet::build_arp_reply(&arp, self.ports[i].mac(), *self.local.ip(), &mut self.frame);
                        self.push(i);
                    }
                }
            }
            self.received = received;
            self.received.clear();
        }
        any
    }

    /// Sends `reply` back by the port it came in on: one packet, or its
    /// fragments when it does not fit one.
    fn reply_to(&mut self, port: usize, mac: [u8; 6], to: SocketAddrV4, reply: &[u8]) {
        if reply.len() <= self.max_datagram {
            self.frame_to(port, mac, reply, to);
            return;
        }
        let mut datagram = Vec::with_capacity(self.max_datagram);
        for fragment in fulva_proto::fragment::fragments(reply, self.max_datagram) {
            datagram.clear();
            fragment.write_to(&mut datagram);
            self.frame_to(port, mac, &datagram, to);
        }
    }

    /// Frames `payload` for `to`: by the port and MAC it was last heard
    /// from, else broadcast on every port.
    fn queue(&mut self, payload: &[u8], to: SocketAddrV4) {
        match self.peers.get(to.ip()).copied() {
            Some((port, mac)) => self.frame_to(port, mac, payload, to),
            None => {
                for port in 0..self.ports.len() {
                    self.frame_to(port, packet::BROADCAST, payload, to);
                }
            }
        }
    }

    fn frame_to(&mut self, port: usize, dst_mac: [u8; 6], payload: &[u8], to: SocketAddrV4) {
        let Some(p) = self.ports.get(port) else { return };
        self.frame.clear();
        packet::build(p.mac(), self.local, dst_mac, to, payload, &mut self.frame);
        self.push(port);
    }

    /// Copies the frame in `self.frame` into an mbuf queued on `port`,
    /// sending the burst once it is full.
    fn push(&mut self, port: usize) {
        if let Some(mut m) = Mbuf::alloc(self.ports[port].pool()) {
            if m.append(&self.frame) {
                self.sending[port].push(m);
            }
        }
        if self.sending[port].len() >= BURST {
            self.ports[port].tx(std::mem::take(&mut self.sending[port]));
        }
    }

    /// Sends every queued packet.
    fn flush(&mut self) {
        for (port, queue) in self.ports.iter_mut().zip(self.sending.iter_mut()) {
            if !queue.is_empty() {
                port.tx(std::mem::take(queue));
            }
        }
    }
}

/// How a transport's ports are driven.
enum Mode {
    /// The caller polls: receivers poll the ports, senders transmit.
    Polled {
        link: Mutex<Link>,
        /// Set by a receiver about to sleep; a sender clears it and wakes it.
        receiver_idle: AtomicBool,
        wake: tokio::sync::Notify,
    },
    /// A poller thread runs the handler on every request.
    Serving {
        outbound: std_mpsc::Sender<Vec<(Vec<u8>, SocketAddrV4)>>,
        /// Set when `outbound` holds something, so the poller need not look each round.
        queued: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
        poller: Mutex<Option<std::thread::JoinHandle<()>>>,
    },
}

/// A [`Transport`] over DPDK ports.
pub struct DpdkTransport {
    local: SocketAddrV4,
    max_datagram: usize,
    mode: Mode,
}

impl DpdkTransport {
    /// Starts the EAL (if not yet) and the ports, to be polled by whoever
    /// awaits [`Transport::recv_batch`] (a client's receive task).
    pub fn start(config: DpdkConfig) -> Result<DpdkTransport, EalError> {
        let (local, max_datagram) = (config.local, config.max_datagram());
        let link = Link::open(config)?;
        Ok(DpdkTransport {
            local,
            max_datagram,
            mode: Mode::Polled {
                link: Mutex::new(link),
                receiver_idle: AtomicBool::new(false),
                wake: tokio::sync::Notify::new(),
            },
        })
    }

    /// Starts the EAL (if not yet), the ports and a poller thread that runs
    /// `handler` on every datagram addressed here and sends the replies
    /// itself (run to completion: the way a node serves). Nothing reaches
    /// `recv_batch`, which waits forever.
    pub fn start_serving(config: DpdkConfig, handler: FrameHandler) -> Result<DpdkTransport, EalError> {
        let (local, max_datagram) = (config.local, config.max_datagram());
        let first = config.ports.first().cloned().unwrap_or_default();
        let link = Link::open(config)?;
        let (outbound, outbound_rx) = std_mpsc::channel();
        let queued = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let poller =
            Poller { link, handler, outbound: outbound_rx, queued: queued.clone(), stop: stop.clone() };
        let handle = std::thread::Builder::new()
            .name(format!("dpdk-{first}"))
            .spawn(move || poller.run())
            .map_err(|e| EalError { what: "poller thread".into(), message: e.to_string(), code: 0 })?;
        Ok(DpdkTransport {
            local,
            max_datagram,
            mode: Mode::Serving { outbound, queued, stop, poller: Mutex::new(Some(handle)) },
        })
    }

    fn send_all<'a>(&self, datagrams: impl Iterator<Item = (&'a [u8], SocketAddr)>) -> io::Result<()> {
        let max = self.max_datagram;
        let datagrams = datagrams.map(|(payload, to)| {
            if payload.len() > max {
                // Callers fragment larger frames (fulva_proto::transport::send_message).
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "a datagram of {} bytes does not fit the MTU ({max} bytes of payload)",
                        payload.len()
                    ),
                ));
            }
            Ok((payload, to))
        });
        let datagrams = datagrams.collect::<io::Result<Vec<_>>>()?.into_iter();
        match &self.mode {
            Mode::Polled { link, receiver_idle, wake } => {
                {
                    let mut link = link.lock();
                    for (payload, to) in datagrams {
                        link.queue(payload, ipv4(to)?);
                    }
                    link.flush();
                }
                if receiver_idle.swap(false, Ordering::AcqRel) {
                    wake.notify_one();
                }
                Ok(())
            }
            Mode::Serving { outbound, queued, .. } => {
                let owned = datagrams
                    .map(|(payload, to)| Ok((payload.to_vec(), ipv4(to)?)))
                    .collect::<io::Result<Vec<_>>>()?;
                outbound.send(owned).map_err(|_| stopped())?;
                queued.store(true, Ordering::Release);
                Ok(())
            }
        }
    }
}

impl Drop for DpdkTransport {
    fn drop(&mut self) {
        if let Mode::Serving { stop, poller, .. } = &self.mode {
            stop.store(true, Ordering::Release);
            if let Some(handle) = poller.lock().take() {
                let _ = handle.join();
            }
        }
    }
}

fn stopped() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the DPDK poller stopped")
}

fn ipv4(to: SocketAddr) -> io::Result<SocketAddrV4> {
    match to {
        SocketAddr::V4(to) => Ok(to),
        SocketAddr::V6(_) => {
            Err(io::Error::new(io::ErrorKind::Unsupported, "the DPDK transport speaks IPv4 only"))
        }
    }
}

impl Transport for DpdkTransport {
    /// One datagram; receive loops use [`Transport::recv_batch`] (this one
    /// sets up a batch per call).
    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let mut batch = RecvBatch::new(1, buf.len());
        self.recv_batch(&mut batch).await?;
        let (data, from) = batch.get(0);
        buf[..data.len()].copy_from_slice(data);
        Ok((data.len(), from))
    }

    async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<()> {
        self.send_all(std::iter::once((buf, to)))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::V4(self.local))
    }

    fn max_datagram(&self) -> usize {
        self.max_datagram
    }

    async fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        let Mode::Polled { link, receiver_idle, wake } = &self.mode else {
            // The poller thread handles everything itself.
            return std::future::pending().await;
        };
        batch.clear();
        let mut empty_rounds = 0u32;
        loop {
            {
                let mut link = link.lock();
                link.poll(|payload, from, _| {
                    // A full batch drops the rest, as an overrun NIC queue would.
                    batch.push(payload, from);
                    false
                });
                link.flush();
            }
            if !batch.is_empty() {
                return Ok(batch.len());
            }
            empty_rounds += 1;
            if empty_rounds < SPIN_ROUNDS {
                tokio::task::yield_now().await;
                continue;
            }
            // Idle: sleep until a send (whose reply will come) or the timeout.
            receiver_idle.store(true, Ordering::Release);
            let _ = tokio::time::timeout(CLIENT_IDLE_WAIT, wake.notified()).await;
            receiver_idle.store(false, Ordering::Release);
            empty_rounds = 0;
        }
    }

    async fn send_batch(&self, batch: &SendBatch) -> io::Result<()> {
        // A packet is built by copying anyway: a datagram in two parts (a
        // fragment and its bytes) is joined first; one in one part is not.
        let joined: Vec<(std::borrow::Cow<'_, [u8]>, SocketAddr)> = (0..batch.len())
            .map(|i| {
                let d = batch.datagram(i);
                let bytes = if d.tail.is_empty() { d.head.into() } else { [d.head, d.tail].concat().into() };
                (bytes, d.to)
            })
            .collect();
        self.send_all(joined.iter().map(|(payload, to)| (&payload[..], *to)))
    }
}

/// The run-to-completion poller of a serving transport.
struct Poller {
    link: Link,
    handler: FrameHandler,
    outbound: std_mpsc::Receiver<Vec<(Vec<u8>, SocketAddrV4)>>,
    queued: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Poller {
    fn run(mut self) {
        let mut idle_rounds = 0u32;
        let mut wait = Duration::from_micros(1);
        while !self.stop.load(Ordering::Acquire) {
            let handler = &self.handler;
            let mut work = self.link.poll(|payload, from, reply| handler(payload, from, reply));
            if self.queued.swap(false, Ordering::AcqRel) {
                while let Ok(datagrams) = self.outbound.try_recv() {
                    for (payload, to) in datagrams {
                        self.link.queue(&payload, to);
                    }
                    work = true;
                }
            }
            self.link.flush();
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
                Ok(datagrams) => {
                    for (payload, to) in datagrams {
                        self.link.queue(&payload, to);
                    }
                    self.link.flush();
                    idle_rounds = 0;
                    wait = Duration::from_micros(1);
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => wait = (wait * 2).min(MAX_IDLE_WAIT),
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}
