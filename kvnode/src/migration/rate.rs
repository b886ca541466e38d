//! Holds a move's byte stream to a rate limit that may change at any time.

use std::time::Duration;
use tokio::time::Instant;

/// Paces a byte stream to a limit that may change at any time.
pub(super) struct RateLimiter {
    window_start: Instant,
    window_bytes: u64,
}

impl RateLimiter {
    pub(super) fn new() -> RateLimiter {
        RateLimiter { window_start: Instant::now(), window_bytes: 0 }
    }

    /// Waits until `bytes` more fit under `limit` bytes/s (0: no limit).
    pub(super) async fn pace(&mut self, bytes: u64, limit: u64) {
        if limit == 0 {
            self.window_start = Instant::now();
            self.window_bytes = 0;
            return;
        }
        self.window_bytes += bytes;
        let due = Duration::from_secs_f64(self.window_bytes as f64 / limit as f64);
        let elapsed = self.window_start.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
        // Short windows so a new limit takes effect within about a second.
        if self.window_start.elapsed() > Duration::from_secs(1) {
            self.window_start = Instant::now();
            self.window_bytes = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pacing_holds_the_limit_and_a_zero_limit_does_not_wait() {
        let mut limiter = RateLimiter::new();
        let start = tokio::time::Instant::now();
        for _ in 0..10 {
            limiter.pace(100_000, 1_000_000).await;
        }
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(990) && waited <= Duration::from_millis(1010),
            "1 MB at 1 MB/s took {waited:?}"
        );
        let start = tokio::time::Instant::now();
        for _ in 0..10 {
            limiter.pace(100_000, 0).await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
