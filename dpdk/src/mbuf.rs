//! An owned packet buffer.

use crate::mempool::Mempool;
use std::ptr::NonNull;

/// One packet buffer; returned to its pool on drop unless handed to a port.
pub struct Mbuf {
    raw: NonNull<fulva_dpdk_sys::rte_mbuf>,
}

// SAFETY: an mbuf is plain memory owned by exactly one Mbuf at a time; freeing
// it from another thread is allowed (mempools are thread-safe).
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// A fresh empty buffer from `pool`, or `None` when the pool is exhausted.
    pub fn alloc(pool: &Mempool) -> Option<Mbuf> {
        // SAFETY: the pool is valid for the call.
        NonNull::new(unsafe { fulva_dpdk_sys::fulva_pktmbuf_alloc(pool.as_ptr()) }).map(|raw| Mbuf { raw })
    }

    /// Takes ownership of a buffer DPDK handed over (from rx_burst).
    ///
    /// # Safety
    /// `raw` must be a valid mbuf owned by nobody else.
    pub(crate) unsafe fn from_raw(raw: *mut fulva_dpdk_sys::rte_mbuf) -> Option<Mbuf> {
        NonNull::new(raw).map(|raw| Mbuf { raw })
    }

    /// Gives up ownership (the port took the buffer).
    pub(crate) fn into_raw(self) -> *mut fulva_dpdk_sys::rte_mbuf {
        let raw = self.raw.as_ptr();
        std::mem::forget(self);
        raw
    }

    /// The packet's bytes (single-segment buffers only, which is all Fulva uses).
    pub fn data(&self) -> &[u8] {
        // SAFETY: mtod points at data_len initialised bytes owned by this mbuf,
        // valid as long as &self is.
        unsafe {
            let len = fulva_dpdk_sys::fulva_pktmbuf_data_len(self.raw.as_ptr());
            std::slice::from_raw_parts(
                fulva_dpdk_sys::fulva_pktmbuf_data(self.raw.as_ptr()),
                usize::from(len),
            )
        }
    }

    /// Appends `bytes`; false (and nothing appended) if they do not fit.
    pub fn append(&mut self, bytes: &[u8]) -> bool {
        let Ok(len) = u16::try_from(bytes.len()) else { return false };
        // SAFETY: append returns null or a pointer to `len` writable bytes in
        // this mbuf's tailroom; we write exactly `len` bytes.
        unsafe {
            let dst = fulva_dpdk_sys::fulva_pktmbuf_append(self.raw.as_ptr(), len);
            if dst.is_null() {
                return false;
            }
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len());
        }
        true
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: this Mbuf owns the buffer and frees it once.
        unsafe { fulva_dpdk_sys::fulva_pktmbuf_free(self.raw.as_ptr()) }
    }
}
