//! A transport wrapper that loses, duplicates, reorders and delays datagrams,
//! for testing that the protocol survives an unreliable network.

use super::Transport;
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Probabilities of each fault, applied to every datagram sent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultConfig {
    /// Chance a datagram is dropped.
    pub loss: f64,
    /// Chance a datagram is sent twice.
    pub duplicate: f64,
    /// Chance a datagram is held back and sent after a delay (so later ones overtake it).
    pub reorder: f64,
    /// Longest hold-back of a reordered datagram.
    pub max_delay: Duration,
    /// Seed of the fault dice, for reproducible runs.
    pub seed: u64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig { loss: 0.0, duplicate: 0.0, reorder: 0.0, max_delay: Duration::from_millis(5), seed: 1 }
    }
}

/// Counts of faults injected so far.
#[derive(Debug, Default)]
pub struct FaultStats {
    /// Datagrams handed to `send_to`.
    pub sent: AtomicU64,
    /// Datagrams dropped.
    pub lost: AtomicU64,
    /// Extra copies sent.
    pub duplicated: AtomicU64,
    /// Datagrams delayed.
    pub reordered: AtomicU64,
}

/// Wraps a transport and injects faults on the send side.
pub struct FaultyTransport<T> {
    inner: Arc<T>,
    config: FaultConfig,
    rng: Mutex<SmallRng>,
    stats: Arc<FaultStats>,
}

impl<T: Transport> FaultyTransport<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, config: FaultConfig) -> FaultyTransport<T> {
        FaultyTransport {
            inner: Arc::new(inner),
            rng: Mutex::new(SmallRng::seed_from_u64(config.seed)),
            config,
            stats: Arc::default(),
        }
    }

    /// Fault counters.
    pub fn stats(&self) -> Arc<FaultStats> {
        self.stats.clone()
    }
}

enum Fate {
    Lose,
    Send { copies: u32, delay: Option<Duration> },
}

impl<T: Transport> FaultyTransport<T> {
    fn roll(&self) -> Fate {
        let mut rng = self.rng.lock();
        let c = &self.config;
        if rng.random_bool(c.loss.clamp(0.0, 1.0)) {
            return Fate::Lose;
        }
        let copies = if rng.random_bool(c.duplicate.clamp(0.0, 1.0)) { 2 } else { 1 };
        let delay = rng
            .random_bool(c.reorder.clamp(0.0, 1.0))
            .then(|| c.max_delay.mul_f64(rng.random_range(0.1..1.0)));
        Fate::Send { copies, delay }
    }
}

impl<T: Transport> Transport for FaultyTransport<T> {
    fn recv_from<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> impl std::future::Future<Output = io::Result<(usize, SocketAddr)>> + Send + 'a {
        self.inner.recv_from(buf)
    }

    /// Receiving is passed through (faults are injected on sending), in
    /// batches when the inner transport has them.
    fn recv_batch<'a>(
        &'a self,
        batch: &'a mut super::RecvBatch,
    ) -> impl std::future::Future<Output = io::Result<usize>> + Send + 'a {
        self.inner.recv_batch(batch)
    }

    async fn send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<()> {
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        match self.roll() {
            Fate::Lose => {
                self.stats.lost.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Fate::Send { copies, delay } => {
                if copies > 1 {
                    self.stats.duplicated.fetch_add(1, Ordering::Relaxed);
                }
                match delay {
                    None => {
                        for _ in 0..copies {
                            self.inner.send_to(buf, to).await?;
                        }
                    }
                    Some(delay) => {
                        self.stats.reordered.fetch_add(1, Ordering::Relaxed);
                        let inner = self.inner.clone();
                        let frame = buf.to_vec();
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            for _ in 0..copies {
                                let _ = inner.send_to(&frame, to).await;
                            }
                        });
                    }
                }
                Ok(())
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_datagram(&self) -> usize {
        self.inner.max_datagram()
    }
}
