//! What a move costs in CPU: the time the threads running its pull (at the
//! destination) or its sending (at the source) spent on it, measured with
//! the thread CPU clock around every poll of the task's future.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// CPU time this thread has used, ns.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec and the clock id is a
    // constant the kernel knows; clock_gettime writes only into `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Where a metered task's CPU time is added up.
pub trait CpuSink: Send + Sync + 'static {
    /// Adds `ns` of CPU time.
    fn add(&self, ns: u64);
}

impl CpuSink for AtomicU64 {
    fn add(&self, ns: u64) {
        self.fetch_add(ns, Ordering::Relaxed);
    }
}

impl CpuSink for prometheus::Counter {
    fn add(&self, ns: u64) {
        self.inc_by(ns as f64 / 1e9);
    }
}

/// A future whose every poll's CPU time goes to its sinks.
pub struct Metered<F> {
    inner: Pin<Box<F>>,
    sinks: Vec<Arc<dyn CpuSink>>,
}

impl<F: Future> Metered<F> {
    /// Meters `inner` into `sinks`.
    pub fn new(inner: F, sinks: Vec<Arc<dyn CpuSink>>) -> Metered<F> {
        Metered { inner: Box::pin(inner), sinks }
    }
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let start = thread_cpu_ns();
        let polled = self.inner.as_mut().poll(cx);
        let spent = thread_cpu_ns().saturating_sub(start);
        for sink in &self.sinks {
            sink.add(spent);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_busy_future_is_charged_its_cpu_and_a_sleeping_one_almost_none() {
        let busy = Arc::new(AtomicU64::new(0));
        let work = async {
            let mut x = 0u64;
            for i in 0..20_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x)
        };
        let before = thread_cpu_ns();
        Metered::new(work, vec![busy.clone() as Arc<dyn CpuSink>]).await;
        let total = thread_cpu_ns() - before;
        let charged = busy.load(Ordering::Relaxed);
        assert!(charged > 0 && charged <= total, "{charged} of {total} ns");
        assert!(charged * 10 >= total * 9, "the work is most of what ran: {charged} of {total} ns");

        let idle = Arc::new(AtomicU64::new(0));
        let sleep = tokio::time::sleep(std::time::Duration::from_millis(50));
        Metered::new(sleep, vec![idle.clone() as Arc<dyn CpuSink>]).await;
        assert!(idle.load(Ordering::Relaxed) < 20_000_000, "sleeping is not charged as CPU");
    }
}
