//! An Ethernet port with one RX and one TX queue.

use crate::eal::{Eal, EalError};
use crate::mbuf::Mbuf;
use crate::mempool::Mempool;
use std::ffi::CString;
use std::sync::Arc;

/// A started port; stopped and closed on drop. Polling (rx/tx) takes
/// `&mut self`: one thread drives a queue, as DPDK requires.
pub struct Port {
    id: u16,
    mac: [u8; 6],
    pool: Arc<Mempool>,
}

impl Port {
    /// Starts the port named `name` (a vdev like `net_memif0`, or a PCI
    /// address) with RX buffers from `pool`.
    pub fn start(_eal: &Eal, name: &str, pool: Arc<Mempool>) -> Result<Port, EalError> {
        let cname = CString::new(name).map_err(|_| EalError::from_code("port name with a NUL byte", 22))?;
        let mut id = 0u16;
        // SAFETY: cname is valid for the call; id is a valid out pointer.
        let rc = unsafe { fulva_dpdk_sys::fulva_port_by_name(cname.as_ptr(), &mut id) };
        if rc < 0 {
            return Err(EalError::from_code(format!("no DPDK port named {name}"), rc));
        }
        // SAFETY: the port id is valid and the pool outlives the port (we keep an Arc).
        let rc = unsafe { fulva_dpdk_sys::fulva_port_start(id, 1024, 1024, pool.as_ptr()) };
        if rc < 0 {
            return Err(EalError::from_code(format!("starting port {name}"), rc));
        }
        let mut mac = [0u8; 6];
        // SAFETY: mac has room for the 6 bytes written.
        let rc = unsafe { fulva_dpdk_sys::fulva_port_mac(id, mac.as_mut_ptr()) };
        if rc < 0 {
            return Err(EalError::from_code(format!("MAC address of port {name}"), rc));
        }
        Ok(Port { id, mac, pool })
    }

    /// The port's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Whether the link is up (a memif link is up once both ends connect).
    pub fn link_up(&self) -> bool {
        // SAFETY: the port is started.
        unsafe { fulva_dpdk_sys::fulva_port_link_up(self.id) == 1 }
    }

    /// The pool its buffers come from.
    pub fn pool(&self) -> &Arc<Mempool> {
        &self.pool
    }

    /// Receives up to `max` packets into `out`; returns how many.
    pub fn rx(&mut self, out: &mut Vec<Mbuf>, max: usize) -> usize {
        let mut raw = [std::ptr::null_mut::<fulva_dpdk_sys::rte_mbuf>(); 64];
        let n = max.min(raw.len()) as u16;
        // SAFETY: raw has room for n pointers; rx_burst fills the first k.
        let k = unsafe { fulva_dpdk_sys::fulva_rx_burst(self.id, 0, raw.as_mut_ptr(), n) };
        for &m in &raw[..usize::from(k)] {
            // SAFETY: rx_burst hands each returned mbuf to the caller.
            if let Some(m) = unsafe { Mbuf::from_raw(m) } {
                out.push(m);
            }
        }
        usize::from(k)
    }

    /// Sends the packets; those the port did not accept are dropped (freed).
    /// Returns how many were accepted.
    pub fn tx(&mut self, packets: Vec<Mbuf>) -> usize {
        let mut raw: Vec<*mut fulva_dpdk_sys::rte_mbuf> = packets.into_iter().map(Mbuf::into_raw).collect();
        let mut sent = 0;
        // A few attempts: a full TX ring drains quickly.
        for _ in 0..4 {
            if sent == raw.len() {
                break;
            }
            let n = (raw.len() - sent).min(u16::MAX as usize) as u16;
            // SAFETY: raw[sent..] holds n owned mbufs; tx_burst takes ownership
            // of the first k it returns.
            sent += usize::from(unsafe {
                fulva_dpdk_sys::fulva_tx_burst(self.id, 0, raw[sent..].as_mut_ptr(), n)
            });
        }
        for &m in &raw[sent..] {
            // SAFETY: not accepted by the port, so still ours to free.
            unsafe { fulva_dpdk_sys::fulva_pktmbuf_free(m) };
        }
        sent
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // SAFETY: the port was started by us and is stopped once.
        unsafe { fulva_dpdk_sys::fulva_port_stop(self.id) };
    }
}
