//! A hiccup meter: a thread that asks to wake every millisecond and notes
//! each time it woke late. A late wake is time in which no thread of that
//! priority could run on this machine (CPU oversubscription, the
//! hypervisor taking the vCPU, the kernel): a stall of the system under test
//! as long as a hiccup seen at the same time is the machine's, not its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the meter sleeps between looks.
const PERIOD: Duration = Duration::from_millis(1);
/// Late wakes shorter than this are not noted.
const NOTED: Duration = Duration::from_millis(2);
/// Most hiccups kept (about 17 minutes of one every millisecond).
const MOST: usize = 1 << 20;

/// One late wake: when the meter woke (µs since the meter's `t0`) and how
/// long past its period it had not run (µs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hiccup {
    /// When the meter woke, µs since `t0`.
    pub woke_us: u64,
    /// Time it did not run beyond its period, µs.
    pub late_us: u64,
}

impl Hiccup {
    /// When the hiccup began, µs since `t0`.
    pub fn began_us(&self) -> u64 {
        self.woke_us.saturating_sub(self.late_us)
    }
}

/// A running hiccup meter.
pub struct HiccupMeter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Hiccup>>>,
}

impl HiccupMeter {
    /// Starts the meter, timing from `t0`.
    pub fn start(t0: Instant) -> HiccupMeter {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("hiccup-meter".into())
            .spawn(move || {
                let mut noted = Vec::new();
                let mut last = Instant::now();
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(PERIOD);
                    let now = Instant::now();
                    let late = now.duration_since(last).saturating_sub(PERIOD);
                    if late >= NOTED && noted.len() < MOST {
                        let woke_us = now.duration_since(t0).as_micros() as u64;
                        noted.push(Hiccup { woke_us, late_us: late.as_micros() as u64 });
                    }
                    last = now;
                }
                noted
            })
            .expect("spawn the hiccup meter");
        HiccupMeter { stop, thread: Some(thread) }
    }

    /// Stops the meter: the late wakes it noted, in time order.
    pub fn finish(mut self) -> Vec<Hiccup> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map(|t| t.join().unwrap_or_default()).unwrap_or_default()
    }
}

impl Drop for HiccupMeter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The longest hiccup (ms) overlapping `from_us..to_us`.
pub fn longest_between(hiccups: &[Hiccup], from_us: u64, to_us: u64) -> f64 {
    hiccups
        .iter()
        .filter(|h| h.woke_us > from_us && h.began_us() < to_us)
        .map(|h| h.late_us)
        .max()
        .unwrap_or(0) as f64
        / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_meter_runs_and_each_window_finds_the_hiccups_that_overlap_it() {
        let t0 = Instant::now();
        let meter = HiccupMeter::start(t0);
        std::thread::sleep(Duration::from_millis(30));
        let hiccups = meter.finish();
        // The meter ran; whatever it noted lies in time order within the run.
        assert!(hiccups.windows(2).all(|w| w[0].woke_us <= w[1].woke_us));
        let made = [Hiccup { woke_us: 10_000, late_us: 4_000 }, Hiccup { woke_us: 50_000, late_us: 20_000 }];
        assert_eq!(longest_between(&made, 0, 8_000), 4.0, "overlaps the first");
        assert_eq!(longest_between(&made, 35_000, 40_000), 20.0, "inside the second");
        assert_eq!(longest_between(&made, 11_000, 29_000), 0.0, "between the two");
    }
}
