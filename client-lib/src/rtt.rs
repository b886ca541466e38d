//! The retransmission timeout, from the round trips the client measures
//! (Jacobson and Karels, as TCP's RFC 6298): a first resend waits for the
//! smoothed round trip plus four times its variation, within the client's
//! `initial_timeout` and `max_timeout`. Only replies to requests sent once
//! are measured (Karn: a reply to a resent request could answer either
//! send). Without it, a fixed 20 ms sent a third of all 1 MiB reads twice
//! under load, each resend costing the node a second 1 MiB reply.

use parking_lot::Mutex;
use std::time::Duration;

/// Smoothed round trip and its variation, in microseconds.
#[derive(Debug)]
pub(crate) struct RttEstimator {
    state: Mutex<Option<(f64, f64)>>,
    floor: Duration,
    ceiling: Duration,
}

impl RttEstimator {
    /// An estimator whose timeouts stay within `floor..=ceiling`.
    pub(crate) fn new(floor: Duration, ceiling: Duration) -> RttEstimator {
        RttEstimator { state: Mutex::new(None), floor, ceiling: ceiling.max(floor) }
    }

    /// Takes one round trip of a request sent once.
    pub(crate) fn sample(&self, rtt: Duration) {
        let r = rtt.as_secs_f64() * 1e6;
        let mut state = self.state.lock();
        *state = Some(match *state {
            None => (r, r / 2.0),
            Some((srtt, rttvar)) => {
                let rttvar = 0.75 * rttvar + 0.25 * (srtt - r).abs();
                (0.875 * srtt + 0.125 * r, rttvar)
            }
        });
    }

    /// How long a request waits before its first resend.
    pub(crate) fn timeout(&self) -> Duration {
        let Some((srtt, rttvar)) = *self.state.lock() else { return self.floor };
        Duration::from_micros((srtt + 4.0 * rttvar) as u64).clamp(self.floor, self.ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeout_follows_the_round_trips_within_its_bounds() {
        let rtt = RttEstimator::new(Duration::from_millis(20), Duration::from_millis(500));
        assert_eq!(rtt.timeout(), Duration::from_millis(20), "nothing measured yet");
        for _ in 0..50 {
            rtt.sample(Duration::from_micros(300));
        }
        assert_eq!(rtt.timeout(), Duration::from_millis(20), "fast replies: the floor");
        for _ in 0..50 {
            rtt.sample(Duration::from_millis(60));
        }
        let slow = rtt.timeout();
        assert!(slow >= Duration::from_millis(60) && slow < Duration::from_millis(120), "{slow:?}");
        for _ in 0..50 {
            rtt.sample(Duration::from_secs(3));
        }
        assert_eq!(rtt.timeout(), Duration::from_millis(500), "the ceiling");
    }
}
