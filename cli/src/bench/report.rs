//! What `fulva bench migration` measures and reports, for every system it
//! runs (Fulva's strategies, Redis Cluster): the samples clients record, the
//! loopback byte counter, time bins, period summaries and the per-run result
//! that the table, the JSON file and the plot are made from.

use crate::bench::LoadArgs;
use fulva_local::hiccup::{self, Hiccup};
use fulva_local::workload::{Mix, OpSample, SampleHook};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What every system of one `fulva bench migration` run gets: the same data,
/// load and timeline.
#[derive(Clone, Debug)]
pub struct Experiment {
    /// Keys, values, clients and skew.
    pub load: LoadArgs,
    /// Workload mix.
    pub mix: Mix,
    /// Seconds of steady load before the move.
    pub before_secs: u64,
    /// Seconds of load after the move ends.
    pub after_secs: u64,
    /// Fraction of the key space (from hash 0, or from slot 0) that moves.
    pub fraction: f64,
    /// Width of a time bin, ms.
    pub bin_ms: u64,
}

/// Latency and throughput of one class of keys in one time bin.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BinStats {
    /// Operations completed in the bin.
    pub ops: u64,
    /// Median latency, µs.
    pub p50_us: u32,
    /// 99th percentile, µs.
    pub p99_us: u32,
    /// 99.9th percentile, µs.
    pub p999_us: u32,
}

/// One time bin.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Bin {
    /// Start of the bin, ms since the load began.
    pub t_ms: u64,
    /// Keys in the moving range.
    pub moving: BinStats,
    /// All other keys.
    pub other: BinStats,
    /// Share of the bin's reads that went to both ends of the move (None:
    /// the system has no dual reads).
    pub dual_read_share: Option<f64>,
}

/// Summary of a period (steady, during the move).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Period {
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Median latency, µs.
    pub p50_us: u32,
    /// 99th percentile, µs.
    pub p99_us: u32,
    /// 99.9th percentile, µs.
    pub p999_us: u32,
    /// Longest stretch without a completed operation, ms.
    pub longest_stall_ms: f64,
    /// When that stretch began, ms since the load began.
    pub longest_stall_at_ms: f64,
    /// Longest time the bench's hiccup meter did not run, ms: how long the
    /// machine itself held a runnable thread off the CPU in the period.
    pub longest_hiccup_ms: f64,
    /// Longest hiccup overlapping the longest stall, ms.
    pub hiccup_in_stall_ms: f64,
    /// Loopback bytes (both directions) per operation.
    pub wire_bytes_per_op: f64,
}

/// Everything measured for one strategy.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StrategyResult {
    /// Strategy name.
    pub strategy: String,
    /// Move start and end, ms since the load began.
    pub move_start_ms: u64,
    /// End of the move.
    pub move_end_ms: u64,
    /// Bytes moved (keys and values).
    pub moved_bytes: u64,
    /// Migration speed, MB/s.
    pub migrated_mb_per_sec: f64,
    /// Source-driven lock window, ms.
    pub lock_window_ms: Option<f64>,
    /// Operations lost per MB moved: (steady - during ops/s) x move seconds / MB.
    pub ops_lost_per_mb: f64,
    /// Server CPU milliseconds per MB moved (every server process, from /proc,
    /// during the move, client traffic included).
    pub server_cpu_ms_per_mb: Option<f64>,
    /// CPU the move's own tasks used on both nodes per MB moved, ms (None:
    /// not metered, as for Redis).
    pub move_cpu_ms_per_mb: Option<f64>,
    /// Share of reads sent to both ends of the move from 200 ms after its
    /// start to its end (None: the system has no dual reads).
    pub dual_read_share_after_200ms: Option<f64>,
    /// Before the move, all keys.
    pub steady: Period,
    /// During the move, all keys.
    pub during: Period,
    /// During the move, keys of the moving range only.
    pub during_moving: Period,
    /// Operations that failed.
    pub errors: u64,
    /// With `--adaptive-p99-us`: what the control loop saw and did.
    pub adaptive: Option<AdaptiveTrace>,
    /// Time bins.
    pub bins: Vec<Bin>,
}

/// The adaptive rate's steps during a move.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct AdaptiveTrace {
    /// Client p99 target, µs.
    pub target_p99_us: u64,
    /// One entry a second: ms since the load began, client p99 (µs) of the
    /// second before, the rate set (MB/s).
    pub steps: Vec<(u64, u64, f64)>,
    /// Seconds of the move whose client p99 stayed within the target, of all.
    pub seconds_within: u32,
    /// Seconds the move lasted (steps taken).
    pub seconds: u32,
}

/// One completed operation.
#[derive(Clone, Copy)]
pub struct Sample {
    /// Completion time, µs since the load began.
    pub done_us: u64,
    /// Latency, µs.
    pub latency_us: u32,
    /// Whether its key is in the moving range.
    pub moving: bool,
    /// A read (else a write).
    pub read: bool,
}

/// Everything one run measured, for [`summarize`].
pub struct RunRecord {
    /// Every completed operation.
    pub samples: Vec<Sample>,
    /// The move's start and end, and the end of the load, since the load began.
    pub move_start: Duration,
    /// End of the move.
    pub move_end: Duration,
    /// End of the load.
    pub end: Duration,
    /// Loopback bytes before the move and during it.
    pub wire: (u64, u64),
    /// Bytes moved (keys and values).
    pub moved_bytes: u64,
    /// How long the move took, as its mover reports it.
    pub move_duration: Duration,
    /// Source-driven: the lock window.
    pub lock_window: Option<Duration>,
    /// Operations that failed.
    pub errors: u64,
    /// The clients' dual-read counter over time: (µs since the load began,
    /// reads sent to both ends so far); empty for systems without dual reads.
    pub dual_reads: Vec<(u64, u64)>,
    /// CPU seconds the server processes (and the mover, where it is its own
    /// process) used during the move, from /proc; `None` when not measured.
    pub server_cpu_during_move: Option<f64>,
    /// CPU seconds the move's own tasks used on both nodes (fulva's
    /// migration CPU meter); `None` when not measured.
    pub move_cpu: Option<f64>,
    /// What the hiccup meter noted during the run.
    pub hiccups: Vec<Hiccup>,
}

/// Bytes through the loopback interface so far, both directions.
pub fn lo_bytes() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/net/dev") else { return 0 };
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix("lo:").map(str::to_string))
        .and_then(|rest| {
            let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            Some(f.first()? + f.get(8)?)
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn stats(latencies: &mut [u32]) -> BinStats {
    latencies.sort_unstable();
    BinStats {
        ops: latencies.len() as u64,
        p50_us: percentile(latencies, 0.5),
        p99_us: percentile(latencies, 0.99),
        p999_us: percentile(latencies, 0.999),
    }
}

/// `samples` must be in completion order.
fn period(
    samples: &[Sample],
    hiccups: &[Hiccup],
    (from_us, to_us): (u64, u64),
    only_moving: bool,
    wire_bytes: u64,
) -> Period {
    let mut lat: Vec<u32> = Vec::new();
    let mut times: Vec<u64> = Vec::new();
    let first = samples.partition_point(|s| s.done_us < from_us);
    let last = samples.partition_point(|s| s.done_us < to_us);
    for s in samples[first..last].iter().filter(|s| !only_moving || s.moving) {
        lat.push(s.latency_us);
        times.push(s.done_us);
    }
    times.sort_unstable();
    let (mut stall, mut stall_at) = (0u64, from_us);
    let mut previous = from_us;
    for &t in times.iter().chain(std::iter::once(&to_us)) {
        if t.saturating_sub(previous) > stall {
            (stall, stall_at) = (t - previous, previous);
        }
        previous = t;
    }
    let st = stats(&mut lat);
    let secs = (to_us.saturating_sub(from_us)) as f64 / 1e6;
    Period {
        ops_per_sec: st.ops as f64 / secs.max(1e-9),
        p50_us: st.p50_us,
        p99_us: st.p99_us,
        p999_us: st.p999_us,
        longest_stall_ms: stall as f64 / 1e3,
        longest_stall_at_ms: stall_at as f64 / 1e3,
        longest_hiccup_ms: hiccup::longest_between(hiccups, from_us, to_us),
        hiccup_in_stall_ms: hiccup::longest_between(hiccups, stall_at, stall_at + stall),
        wire_bytes_per_op: wire_bytes as f64 / (st.ops.max(1)) as f64,
    }
}

/// Dual reads counted between `from_us` and `to_us` (the counter's samples
/// nearest inside the window).
fn dual_reads_between(timeline: &[(u64, u64)], from_us: u64, to_us: u64) -> Option<u64> {
    // The timeline is in time order: the last sample at or before `t`.
    let at = |t: u64| timeline[..timeline.partition_point(|(u, _)| *u <= t)].last().map_or(0, |(_, n)| *n);
    (!timeline.is_empty()).then(|| at(to_us).saturating_sub(at(from_us)))
}

/// Bins and summarizes one run.
pub fn summarize(name: &str, bin_ms: u64, mut run: RunRecord) -> StrategyResult {
    // In completion order, so each window below is found by binary search.
    run.samples.sort_unstable_by_key(|s| s.done_us);
    let samples = &run.samples;
    let window = |from: u64, to: u64| {
        &samples[samples.partition_point(|s| s.done_us < from)..samples.partition_point(|s| s.done_us < to)]
    };
    let (ms, me, end_us) =
        (run.move_start.as_micros() as u64, run.move_end.as_micros() as u64, run.end.as_micros() as u64);
    // The first third of the warm-up is skipped; steady state is the rest before the move.
    let steady_from = (ms / 3).min(1_000_000);
    let before = window(0, ms).len() as u64;
    let steady = window(steady_from, ms).len() as u64;
    let steady_wire = run.wire.0 * steady / before.max(1);
    let reads_between = |from: u64, to: u64| window(from, to).iter().filter(|s| s.read).count();
    let share = |from: u64, to: u64| {
        dual_reads_between(&run.dual_reads, from, to)
            .map(|d| d as f64 / reads_between(from, to).max(1) as f64)
    };
    let bin_us = bin_ms.max(1) * 1000;
    let mut bins = Vec::new();
    let mut start = 0;
    while start < end_us {
        let mut moving_lat = Vec::new();
        let mut other_lat = Vec::new();
        for s in window(start, start + bin_us) {
            if s.moving {
                moving_lat.push(s.latency_us)
            } else {
                other_lat.push(s.latency_us)
            }
        }
        bins.push(Bin {
            t_ms: start / 1000,
            moving: stats(&mut moving_lat),
            other: stats(&mut other_lat),
            dual_read_share: share(start, start + bin_us),
        });
        start += bin_us;
    }
    let hiccups = &run.hiccups;
    let steady = period(samples, hiccups, (steady_from, ms), false, steady_wire);
    let during = period(samples, hiccups, (ms, me), false, run.wire.1);
    let moved_mb = run.moved_bytes as f64 / 1e6;
    let move_secs = (me.saturating_sub(ms)) as f64 / 1e6;
    StrategyResult {
        strategy: name.to_string(),
        move_start_ms: ms / 1000,
        move_end_ms: me / 1000,
        moved_bytes: run.moved_bytes,
        migrated_mb_per_sec: moved_mb / run.move_duration.as_secs_f64().max(1e-9),
        lock_window_ms: run.lock_window.map(|d| d.as_secs_f64() * 1e3),
        ops_lost_per_mb: (steady.ops_per_sec - during.ops_per_sec).max(0.0) * move_secs / moved_mb.max(1e-9),
        server_cpu_ms_per_mb: run.server_cpu_during_move.map(|cpu| cpu * 1e3 / moved_mb.max(1e-9)),
        move_cpu_ms_per_mb: run.move_cpu.map(|cpu| cpu * 1e3 / moved_mb.max(1e-9)),
        dual_read_share_after_200ms: share((ms + 200_000).min(me), me),
        during_moving: period(samples, hiccups, (ms, me), true, run.wire.1),
        steady,
        during,
        errors: run.errors,
        adaptive: None,
        bins,
    }
}

/// Most latencies [`RecentLatency`] keeps between two looks (about two
/// seconds of a saturated run); later ones wait for the next look.
const RECENT_CAP: usize = 1 << 18;

/// Client latencies (µs) since the adaptive control loop last looked. Its
/// buffer is allocated once and bounded: a buffer that doubled as it filled
/// (with nobody taking from it in a fixed-rate run) held the samplers on
/// its lock through each copy, a benchmark-made stall of every client that
/// doubled in time (3.4 s, 6.8 s, ...) and grew to 14-25 ms.
pub struct RecentLatency(Mutex<Vec<u64>>);

impl Default for RecentLatency {
    fn default() -> RecentLatency {
        RecentLatency(Mutex::new(Vec::with_capacity(RECENT_CAP)))
    }
}

impl RecentLatency {
    fn extend(&self, latencies: impl Iterator<Item = u64>) {
        let mut recent = self.0.lock();
        let room = RECENT_CAP - recent.len();
        recent.extend(latencies.take(room));
    }
}

impl fulva_coordinator::rebalance_job::LatencySignal for RecentLatency {
    fn take_p99(&self) -> Option<Duration> {
        let taken: Vec<u64> = self.0.lock().drain(..).collect();
        fulva_coordinator::probe::p99_of(taken)
    }
}

/// The closed-loop hook of one load task: keeps every operation's
/// completion time (µs since `t0`), latency (µs) and key tag (which part of
/// the key space it is in: the caller says afterwards which tags moved),
/// counts failures, and feeds `recent` every 32 operations when set.
pub struct Sampler<F> {
    t0: Instant,
    tag: F,
    taken: Vec<(u64, u32, u32, bool)>,
    errors: Arc<AtomicU64>,
    recent: Option<Arc<RecentLatency>>,
}

impl<F: Fn(&[u8]) -> u32 + Send + 'static> Sampler<F> {
    /// A sampler timing from `t0`, tagging keys with `tag`.
    pub fn new(
        t0: Instant,
        tag: F,
        errors: Arc<AtomicU64>,
        recent: Option<Arc<RecentLatency>>,
    ) -> Sampler<F> {
        // Room for a few minutes of a saturated run: a vector that doubles
        // stops its client for the copy.
        Sampler { t0, tag, taken: Vec::with_capacity(1 << 20), errors, recent }
    }
}

impl<F: Fn(&[u8]) -> u32 + Send + 'static> SampleHook for Sampler<F> {
    fn record(&mut self, op: &OpSample<'_>) {
        if !op.ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let latency_us = op.latency.as_micros().min(u128::from(u32::MAX)) as u32;
        self.taken.push((self.t0.elapsed().as_micros() as u64, latency_us, (self.tag)(op.key), op.read));
        if let Some(recent) = &self.recent {
            if self.taken.len().is_multiple_of(32) {
                let tail = &self.taken[self.taken.len() - 32..];
                recent.extend(tail.iter().map(|s| u64::from(s.1)));
            }
        }
    }
}

/// Every sampler's operations as [`Sample`]s; `moved(tag)` says whether a key of that tag moved.
pub fn samples_of<F>(samplers: Vec<Sampler<F>>, moved: impl Fn(u32) -> bool) -> Vec<Sample> {
    samplers
        .into_iter()
        .flat_map(|s| s.taken)
        .map(|(done_us, latency_us, tag, read)| Sample { done_us, latency_us, moving: moved(tag), read })
        .collect()
}

/// Samples a client's dual-read counter every `every` until `stop`: the
/// timeline [`RunRecord::dual_reads`] wants.
pub async fn follow_dual_reads(
    stats: impl Fn() -> u64,
    t0: Instant,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> Vec<(u64, u64)> {
    let mut timeline = vec![(t0.elapsed().as_micros() as u64, stats())];
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => timeline.push((t0.elapsed().as_micros() as u64, stats())),
        }
    }
    timeline.push((t0.elapsed().as_micros() as u64, stats()));
    timeline
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(done_ms: u64, read: bool) -> Sample {
        Sample { done_us: done_ms * 1000, latency_us: 100, moving: true, read }
    }

    #[test]
    fn a_run_is_summarized_with_its_losses_and_dual_read_share() {
        // 1000 ops/s before the move (t = 0..3 s), 500 ops/s during it (3..5 s), every op a read.
        let mut samples: Vec<Sample> = (0..3000).map(|i| sample(i, true)).collect();
        samples.extend((0..1000).map(|i| sample(3000 + 2 * i, true)));
        // Samplers hand their samples over one client after another, not in time order.
        samples.reverse();
        // The counter, read every 100 ms: 40 dual reads per 100 ms in the
        // first 200 ms of the move (of 50 reads), 5 per 100 ms after.
        let mut dual_reads = vec![(0, 0)];
        let mut count = 0;
        for step in 0..=20u64 {
            dual_reads.push((3_000_000 + step * 100_000, count));
            count += if step < 2 { 40 } else { 5 };
        }
        let run = RunRecord {
            samples,
            move_start: Duration::from_secs(3),
            move_end: Duration::from_secs(5),
            end: Duration::from_secs(5),
            wire: (0, 0),
            moved_bytes: 4_000_000,
            move_duration: Duration::from_secs(2),
            lock_window: None,
            errors: 0,
            dual_reads,
            server_cpu_during_move: None,
            move_cpu: None,
            // The machine held the bench off the CPU for 30 ms in the move.
            hiccups: vec![Hiccup { woke_us: 4_030_000, late_us: 30_000 }],
        };
        let r = summarize("fulva", 100, run);
        assert!((r.steady.ops_per_sec - 1000.0).abs() < 1.0, "{}", r.steady.ops_per_sec);
        assert!((r.during.ops_per_sec - 500.0).abs() < 1.0, "{}", r.during.ops_per_sec);
        assert!((r.migrated_mb_per_sec - 2.0).abs() < 1e-9);
        // 500 ops/s lost for 2 s over 4 MB.
        assert!((r.ops_lost_per_mb - 250.0).abs() < 1.0, "{}", r.ops_lost_per_mb);
        // From 200 ms after the start: 5 of every 50 reads.
        let share = r.dual_read_share_after_200ms.unwrap();
        assert!((share - 0.1).abs() < 0.01, "{share}");
        let bin = |t: u64| r.bins.iter().find(|b| b.t_ms == t).unwrap().dual_read_share.unwrap();
        assert!((bin(3000) - 0.8).abs() < 0.05, "{}", bin(3000));
        assert!((bin(4000) - 0.1).abs() < 0.05, "{}", bin(4000));
        assert_eq!(bin(1000), 0.0, "no dual reads before the move");
        assert_eq!(r.during.longest_hiccup_ms, 30.0);
        assert_eq!(r.steady.longest_hiccup_ms, 0.0);
    }

    #[test]
    fn a_system_without_dual_reads_reports_none() {
        let run = RunRecord {
            samples: (0..100).map(|i| sample(i, true)).collect(),
            move_start: Duration::from_millis(50),
            move_end: Duration::from_millis(80),
            end: Duration::from_millis(100),
            wire: (0, 0),
            moved_bytes: 1,
            move_duration: Duration::from_millis(30),
            lock_window: None,
            errors: 0,
            dual_reads: Vec::new(),
            server_cpu_during_move: None,
            move_cpu: None,
            hiccups: Vec::new(),
        };
        let r = summarize("redis-cluster", 10, run);
        assert_eq!(r.dual_read_share_after_200ms, None);
        assert!(r.bins.iter().all(|b| b.dual_read_share.is_none()));
    }
}
