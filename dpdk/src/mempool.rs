//! A pool of packet buffers.

use crate::eal::{Eal, EalError};
use std::ffi::CString;
use std::ptr::NonNull;

/// A DPDK packet-buffer pool; freed on drop.
pub struct Mempool {
    raw: NonNull<fulva_dpdk_sys::rte_mempool>,
}

// SAFETY: DPDK mempools are thread-safe (lock-free rings with per-lcore caches;
// non-EAL threads use the shared ring).
unsafe impl Send for Mempool {}
// SAFETY: as above: alloc and free may be called from any thread.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// A pool named `name` of `n` buffers with `data_room` bytes each
    /// (headroom included; 2048 + 128 fits a standard frame).
    pub fn new(_eal: &Eal, name: &str, n: u32, data_room: u16) -> Result<Mempool, EalError> {
        let cname =
            CString::new(name).map_err(|_| EalError::from_code("mempool name with a NUL byte", 22))?;
        // SAFETY: the EAL is initialised (a reference proves it) and cname is a
        // valid NUL-terminated string for the call's duration.
        let raw = unsafe {
            fulva_dpdk_sys::fulva_pktmbuf_pool_create(cname.as_ptr(), n, 256.min(n / 2), data_room)
        };
        NonNull::new(raw)
            .map(|raw| Mempool { raw })
            .ok_or_else(|| EalError::last(format!("rte_pktmbuf_pool_create({name})")))
    }

    pub(crate) fn as_ptr(&self) -> *mut fulva_dpdk_sys::rte_mempool {
        self.raw.as_ptr()
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        // SAFETY: the pool was created by rte_pktmbuf_pool_create and is freed
        // once; ports using it hold a reference (Arc) and are dropped first.
        unsafe { fulva_dpdk_sys::fulva_mempool_free(self.raw.as_ptr()) }
    }
}
