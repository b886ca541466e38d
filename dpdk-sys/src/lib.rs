//! Raw bindings to the system DPDK (22.11, found with pkg-config) through a
//! small C shim (`shim/shim.c`) that exports DPDK's static-inline functions
//! (rx/tx burst, mbuf alloc/free/data) and the port set-up sequence.
//!
//! Everything here is `unsafe`; the safe layer is the `fulva-dpdk` crate.

#![allow(non_camel_case_types)]

use libc::{c_char, c_int, c_uint};

/// DPDK's packet buffer pool (opaque).
#[repr(C)]
pub struct rte_mempool {
    _private: [u8; 0],
}

/// DPDK's packet buffer (opaque).
#[repr(C)]
pub struct rte_mbuf {
    _private: [u8; 0],
}

extern "C" {
    /// `rte_eal_init`: starts the Environment Abstraction Layer (once per process).
    pub fn fulva_eal_init(argc: c_int, argv: *mut *mut c_char) -> c_int;
    /// `rte_eal_cleanup`.
    pub fn fulva_eal_cleanup() -> c_int;
    /// The calling thread's `rte_errno`.
    pub fn fulva_errno() -> c_int;
    /// `rte_strerror`.
    pub fn fulva_strerror(err: c_int) -> *const c_char;
    /// `rte_pktmbuf_pool_create` on the caller's socket.
    pub fn fulva_pktmbuf_pool_create(
        name: *const c_char,
        n: c_uint,
        cache: c_uint,
        data_room: u16,
    ) -> *mut rte_mempool;
    /// `rte_mempool_free`.
    pub fn fulva_mempool_free(mp: *mut rte_mempool);
    /// `rte_eth_dev_count_avail`.
    pub fn fulva_port_count() -> u16;
    /// `rte_eth_dev_get_port_by_name`.
    pub fn fulva_port_by_name(name: *const c_char, port: *mut u16) -> c_int;
    /// Configures one RX and one TX queue and starts the port.
    pub fn fulva_port_start(port: u16, rx_desc: u16, tx_desc: u16, mp: *mut rte_mempool) -> c_int;
    /// `rte_eth_dev_stop` then `rte_eth_dev_close`.
    pub fn fulva_port_stop(port: u16) -> c_int;
    /// `rte_eth_macaddr_get` into `out`.
    pub fn fulva_port_mac(port: u16, out: *mut u8) -> c_int;
    /// 1 when the link is up, 0 when down, -1 on error.
    pub fn fulva_port_link_up(port: u16) -> c_int;
    /// `rte_eth_rx_burst`.
    pub fn fulva_rx_burst(port: u16, queue: u16, pkts: *mut *mut rte_mbuf, n: u16) -> u16;
    /// `rte_eth_tx_burst`; the port takes ownership of the mbufs it accepts.
    pub fn fulva_tx_burst(port: u16, queue: u16, pkts: *mut *mut rte_mbuf, n: u16) -> u16;
    /// `rte_pktmbuf_alloc`.
    pub fn fulva_pktmbuf_alloc(mp: *mut rte_mempool) -> *mut rte_mbuf;
    /// `rte_pktmbuf_free`.
    pub fn fulva_pktmbuf_free(m: *mut rte_mbuf);
    /// `rte_pktmbuf_mtod`: the first data byte.
    pub fn fulva_pktmbuf_data(m: *mut rte_mbuf) -> *mut u8;
    /// `rte_pktmbuf_data_len`.
    pub fn fulva_pktmbuf_data_len(m: *const rte_mbuf) -> u16;
    /// `rte_pktmbuf_tailroom`.
    pub fn fulva_pktmbuf_tailroom(m: *const rte_mbuf) -> u16;
    /// `rte_pktmbuf_append`: grows the data by `len`, returns the new bytes (null if no room).
    pub fn fulva_pktmbuf_append(m: *mut rte_mbuf, len: u16) -> *mut u8;
}
