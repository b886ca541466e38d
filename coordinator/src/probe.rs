//! A probe client that measures what clients see: it reads a few keys of a
//! cluster at a steady rate over the data path and reports the p99 latency
//! since it was last asked. The adaptive migration rate steers by it.

use crate::rebalance_job::LatencySignal;
use fulva_client::{Client, ClientConfig, ClientError};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The probe client could not connect to the control endpoint.
#[derive(Debug, thiserror::Error)]
#[error("probe client: {0}")]
pub struct ProbeError(#[source] pub ClientError);

/// Reads per second the probe makes.
pub const PROBE_RATE: u32 = 200;

/// Latencies of probe reads, in microseconds, since the last `take_p99`.
pub struct ProbeLatency {
    samples: Arc<Mutex<Vec<u64>>>,
    stop: CancellationToken,
}

impl ProbeLatency {
    /// Connects to the control endpoint (`cluster`: `NAMESPACE/NAME` when it
    /// serves several, else empty; `tls`: an identity that may read the
    /// map, none on a plain endpoint) and starts reading.
    pub async fn start(
        endpoint: &str,
        cluster: &str,
        tls: Option<Arc<fulva_tls::ClientTls>>,
    ) -> Result<ProbeLatency, ProbeError> {
        let mut config = ClientConfig::new(endpoint);
        config.cluster = cluster.to_string();
        config.tls = tls.map(fulva_client::ClientTlsSetting::Loaded);
        config.sockets = 1;
        config.deadline = Duration::from_secs(1);
        let client = Client::connect(config).await.map_err(ProbeError)?;
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (into, token) = (samples.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / PROBE_RATE);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut i = 0u64;
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = tick.tick() => {}
                }
                i += 1;
                let started = Instant::now();
                // A failed read counts with the time it took (up to the deadline).
                let _ = client.get(format!("fulva-probe-{}", i % 1024)).await;
                let mut s = into.lock();
                if s.len() < 100_000 {
                    s.push(started.elapsed().as_micros() as u64);
                }
            }
        });
        Ok(ProbeLatency { samples, stop })
    }
}

/// The 99th percentile of `samples` (microseconds), None when empty.
pub fn p99_of(mut samples: Vec<u64>) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let i = ((samples.len() as f64 * 0.99).ceil() as usize).clamp(1, samples.len()) - 1;
    Some(Duration::from_micros(samples[i]))
}

impl LatencySignal for ProbeLatency {
    fn take_p99(&self) -> Option<Duration> {
        p99_of(std::mem::take(&mut *self.samples.lock()))
    }
}

impl Drop for ProbeLatency {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_the_value_below_which_99_percent_fall() {
        assert_eq!(p99_of(Vec::new()), None);
        assert_eq!(p99_of(vec![7]), Some(Duration::from_micros(7)));
        let samples: Vec<u64> = (1..=1000).rev().collect();
        assert_eq!(p99_of(samples), Some(Duration::from_micros(990)));
    }
}
