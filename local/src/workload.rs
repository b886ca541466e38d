//! Closed-loop YCSB-style workloads, shared by `fulva up` and `fulva bench`.

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::future::Future;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How keys are picked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// Zipfian with this skew (YCSB uses 0.99); key 0 is the hottest.
    Zipfian(f64),
}

/// The standard YCSB core mixes used here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Mix {
    /// 50% reads, 50% updates.
    #[value(name = "ycsb-a")]
    #[serde(rename = "ycsb-a")]
    A,
    /// 95% reads, 5% updates.
    #[value(name = "ycsb-b")]
    #[serde(rename = "ycsb-b")]
    B,
    /// 100% reads.
    #[value(name = "ycsb-c")]
    #[serde(rename = "ycsb-c")]
    C,
}

impl Mix {
    /// Fraction of operations that are reads.
    pub fn read_fraction(self) -> f64 {
        match self {
            Mix::A => 0.5,
            Mix::B => 0.95,
            Mix::C => 1.0,
        }
    }

    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Mix::A => "ycsb-a",
            Mix::B => "ycsb-b",
            Mix::C => "ycsb-c",
        }
    }
}

/// What a workload does.
#[derive(Clone, Copy, Debug)]
pub struct WorkloadSpec {
    /// Fraction of reads (the rest are updates).
    pub read_fraction: f64,
    /// Key choice.
    pub distribution: Distribution,
    /// Keys in the keyspace (`key(0)..key(keys - 1)`).
    pub keys: u64,
    /// Bytes per value.
    pub value_size: usize,
    /// A share of operations concentrated on the keys of one hash range.
    pub hotspot: Option<Hotspot>,
}

/// A hot spot: `share` of all operations pick, with the workload's
/// distribution, among the keys whose hash falls in `range` (so one shard,
/// and one node, gets them).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hotspot {
    /// Hashes of the hot keys.
    pub range: fulva_proto::HashRange,
    /// Fraction of operations on the hot keys.
    pub share: f64,
}

impl WorkloadSpec {
    /// A `mix` over `keys` keys of `value_size` bytes, zipfian with skew
    /// `zipf` (0 = uniform).
    pub fn new(mix: Mix, zipf: f64, keys: u64, value_size: usize) -> WorkloadSpec {
        WorkloadSpec {
            read_fraction: mix.read_fraction(),
            distribution: if zipf > 0.0 { Distribution::Zipfian(zipf) } else { Distribution::Uniform },
            keys,
            value_size,
            hotspot: None,
        }
    }

    /// The same workload with a hot spot.
    pub fn with_hotspot(self, hotspot: Hotspot) -> WorkloadSpec {
        WorkloadSpec { hotspot: Some(hotspot), ..self }
    }
}

/// The key with index `i`.
pub fn key(i: u64) -> String {
    format!("user{i:012}")
}

/// Writes the key with index `i` into `buf` (no allocation on the hot path).
pub fn key_into(i: u64, buf: &mut Vec<u8>) {
    buf.clear();
    let _ = write!(buf, "user{i:012}");
}

/// Zipfian ranks in `0..n` after Gray et al., "Quickly generating
/// billion-record synthetic databases" (the generator YCSB uses).
#[derive(Clone, Debug)]
pub struct Zipfian {
    n: f64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipfian {
    /// A generator over `n` items with skew `theta` (0 < theta < 1).
    pub fn new(n: u64, theta: f64) -> Zipfian {
        let zeta = |count: u64| (1..=count).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zetan = zeta(n);
        let zeta2 = zeta(2.min(n));
        let nf = n as f64;
        Zipfian {
            n: nf,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta: (1.0 - (2.0 / nf).powf(1.0 - theta)) / (1.0 - zeta2 / zetan),
        }
    }

    /// The next rank, from a uniform draw `u` in [0, 1).
    pub fn rank(&self, u: f64) -> u64 {
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        ((self.n * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64).min(self.n as u64 - 1)
    }
}

/// Picks key indices by a [`Distribution`], optionally with a hot spot.
#[derive(Clone, Debug)]
pub struct KeyChooser {
    base: Ranks,
    hot: Option<(Vec<u64>, Ranks, f64)>,
}

#[derive(Clone, Debug)]
enum Ranks {
    Uniform(u64),
    Zipfian(Zipfian),
}

impl Ranks {
    fn new(distribution: Distribution, n: u64) -> Ranks {
        match distribution {
            Distribution::Uniform => Ranks::Uniform(n.max(1)),
            Distribution::Zipfian(theta) => Ranks::Zipfian(Zipfian::new(n.max(1), theta)),
        }
    }

    fn next(&self, rng: &mut SmallRng) -> u64 {
        match self {
            Ranks::Uniform(n) => rng.random_range(0..*n),
            Ranks::Zipfian(z) => z.rank(rng.random::<f64>()),
        }
    }
}

impl KeyChooser {
    /// A chooser for `spec`.
    pub fn new(spec: &WorkloadSpec) -> KeyChooser {
        let hot = spec.hotspot.and_then(|h| {
            let mut buf = Vec::with_capacity(32);
            let keys: Vec<u64> = (0..spec.keys)
                .filter(|&i| {
                    key_into(i, &mut buf);
                    h.range.contains(fulva_proto::key_hash(&buf))
                })
                .collect();
            (!keys.is_empty()).then(|| {
                let ranks = Ranks::new(spec.distribution, keys.len() as u64);
                (keys, ranks, h.share.clamp(0.0, 1.0))
            })
        });
        KeyChooser { base: Ranks::new(spec.distribution, spec.keys), hot }
    }

    /// Keys in the hot spot (0 without one).
    pub fn hot_keys(&self) -> usize {
        self.hot.as_ref().map_or(0, |h| h.0.len())
    }

    /// Next key index.
    pub fn next(&self, rng: &mut SmallRng) -> u64 {
        if let Some((keys, ranks, share)) = &self.hot {
            if rng.random_bool(*share) {
                return keys[ranks.next(rng) as usize];
            }
        }
        self.base.next(rng)
    }
}

/// One client's view of the store under test (a Fulva client, a Redis connection).
pub trait Session: Send + 'static {
    /// Reads `key`.
    fn get(&mut self, key: &[u8]) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Writes `value` under `key`.
    fn put(&mut self, key: &[u8], value: &[u8]) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Which bucket (node) latency of `key` is recorded under.
    fn bucket(&self, key: &[u8]) -> usize;
}

/// Latency histograms (nanoseconds) per bucket, filled by one task.
pub struct TaskRecord {
    /// One histogram per bucket.
    pub latency: Vec<Histogram<u64>>,
    /// Failed operations.
    pub errors: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

impl TaskRecord {
    fn new(buckets: usize) -> TaskRecord {
        TaskRecord { latency: (0..buckets).map(|_| histogram()).collect(), errors: 0 }
    }
}

/// Collects latencies from every task; read by a reporter while tasks run.
pub struct Recorder {
    buckets: usize,
    tasks: Mutex<Vec<Arc<Mutex<TaskRecord>>>>,
}

/// Latency summary of a set of operations.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Summary {
    /// Operations completed.
    pub ops: u64,
    /// Failed operations.
    pub errors: u64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// 99.9th percentile, microseconds.
    pub p999_us: f64,
}

impl Summary {
    /// Summarizes a histogram in nanoseconds.
    pub fn of(h: &Histogram<u64>, errors: u64) -> Summary {
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1_000.0;
        Summary { ops: h.len(), errors, p50_us: us(0.5), p99_us: us(0.99), p999_us: us(0.999) }
    }
}

impl Recorder {
    /// A recorder with `buckets` latency buckets.
    pub fn new(buckets: usize) -> Arc<Recorder> {
        Arc::new(Recorder { buckets: buckets.max(1), tasks: Mutex::new(Vec::new()) })
    }

    fn task(&self) -> Arc<Mutex<TaskRecord>> {
        let record = Arc::new(Mutex::new(TaskRecord::new(self.buckets)));
        self.tasks.lock().push(record.clone());
        record
    }

    /// Takes everything recorded since the last call, merged per bucket.
    pub fn drain(&self) -> (Vec<Histogram<u64>>, u64) {
        let mut merged: Vec<Histogram<u64>> = (0..self.buckets).map(|_| histogram()).collect();
        let mut errors = 0;
        for task in self.tasks.lock().iter() {
            let mut record = task.lock();
            for (into, from) in merged.iter_mut().zip(record.latency.iter_mut()) {
                let _ = into.add(&*from);
                from.reset();
            }
            errors += std::mem::take(&mut record.errors);
        }
        (merged, errors)
    }
}

/// One operation a closed-loop task completed.
#[derive(Clone, Copy, Debug)]
pub struct OpSample<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The session's latency bucket of the key ([`Session::bucket`]); 0
    /// unless the hook [wants it](SampleHook::wants_bucket).
    pub bucket: usize,
    /// A read (else a write).
    pub read: bool,
    /// From the call to its answer.
    pub latency: Duration,
    /// Whether it succeeded.
    pub ok: bool,
}

/// Sees every operation of one closed-loop task, as it completes (one hook
/// per task, so no hook is shared between tasks).
pub trait SampleHook: Send + 'static {
    /// Takes one completed operation.
    fn record(&mut self, sample: &OpSample<'_>);

    /// Whether [`OpSample::bucket`] is wanted (it costs a map lookup per
    /// operation on the load generator's side, so it is asked for only when used).
    fn wants_bucket(&self) -> bool {
        false
    }
}

/// Feeds a task's latencies into a [`Recorder`], per bucket.
struct RecorderHook(Arc<Mutex<TaskRecord>>);

impl SampleHook for RecorderHook {
    fn record(&mut self, sample: &OpSample<'_>) {
        let mut r = self.0.lock();
        if sample.ok {
            let _ = r.latency[sample.bucket].record((sample.latency.as_nanos() as u64).max(1));
        } else {
            r.errors += 1;
        }
    }

    fn wants_bucket(&self) -> bool {
        true
    }
}

/// Runs one closed-loop task per session until `stop` is cancelled or
/// `max_ops` operations are done in total, recording latencies into `recorder`.
pub async fn run_closed_loop<S: Session>(
    sessions: Vec<S>,
    spec: WorkloadSpec,
    recorder: Arc<Recorder>,
    stop: CancellationToken,
    max_ops: u64,
    seed: u64,
) {
    let hooks = sessions.iter().map(|_| RecorderHook(recorder.task())).collect();
    run_closed_loop_with(sessions, spec, hooks, stop, max_ops, seed).await;
}

/// The closed-loop runner: one task per session, each choosing keys by
/// `spec` (task `i` seeded `seed + i`), reading or writing, and handing
/// every completed operation to its hook `hooks[i]`, until `stop` is
/// cancelled or `max_ops` operations are done in total. Returns the hooks.
pub async fn run_closed_loop_with<S: Session, H: SampleHook>(
    sessions: Vec<S>,
    spec: WorkloadSpec,
    hooks: Vec<H>,
    stop: CancellationToken,
    max_ops: u64,
    seed: u64,
) -> Vec<H> {
    assert_eq!(sessions.len(), hooks.len(), "one hook per session");
    let chooser = Arc::new(KeyChooser::new(&spec));
    let remaining = Arc::new(std::sync::atomic::AtomicU64::new(max_ops));
    let mut tasks = Vec::new();
    for (i, (mut session, mut hook)) in sessions.into_iter().zip(hooks).enumerate() {
        let (chooser, stop, remaining) = (chooser.clone(), stop.clone(), remaining.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(seed.wrapping_add(i as u64));
            let mut key = Vec::with_capacity(32);
            let mut value = vec![0u8; spec.value_size];
            let wants_bucket = hook.wants_bucket();
            while !stop.is_cancelled() {
                let left = remaining.fetch_update(
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                    |r| r.checked_sub(1),
                );
                if left.is_err() {
                    break;
                }
                key_into(chooser.next(&mut rng), &mut key);
                let bucket = if wants_bucket { session.bucket(&key) } else { 0 };
                let read = rng.random_bool(spec.read_fraction.clamp(0.0, 1.0));
                let started = Instant::now();
                let result = if read {
                    session.get(&key).await
                } else {
                    rng.fill(&mut value[..]);
                    session.put(&key, &value).await
                };
                let latency = started.elapsed();
                hook.record(&OpSample { key: &key, bucket, read, latency, ok: result.is_ok() });
            }
            hook
        }));
    }
    let mut hooks = Vec::with_capacity(tasks.len());
    for task in tasks {
        hooks.push(task.await.expect("a closed-loop task does not panic"));
    }
    hooks
}

/// Writes `keys` keys of `value_size` bytes with `concurrency` writers,
/// printing progress to stderr every second when `progress` is set.
pub async fn load<S: Session>(
    sessions: Vec<S>,
    keys: u64,
    value_size: usize,
    progress: Option<&str>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut session) in sessions.into_iter().enumerate() {
        let (next, done) = (next.clone(), done.clone());
        tasks.spawn(async move {
            let mut rng = SmallRng::seed_from_u64(i as u64);
            let mut key = Vec::with_capacity(32);
            let mut value = vec![0u8; value_size];
            loop {
                let idx = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if idx >= keys {
                    return Ok::<(), anyhow::Error>(());
                }
                key_into(idx, &mut key);
                rng.fill(&mut value[..]);
                session.put(&key, &value).await?;
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    let label = progress.map(str::to_string);
    let reporter = tokio::spawn({
        let done = done.clone();
        async move {
            let Some(label) = label else { return };
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let n = done.load(std::sync::atomic::Ordering::Relaxed);
                eprintln!(
                    "  loading {label}: {n}/{keys} keys ({:.0}%)",
                    n as f64 * 100.0 / keys.max(1) as f64
                );
            }
        }
    });
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        if let Ok(Err(err)) = joined {
            result = Err(err);
        }
    }
    reporter.abort();
    result.map(|()| started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipfian_is_skewed_towards_low_ranks() {
        let z = Zipfian::new(1_000, 0.99);
        let mut rng = SmallRng::seed_from_u64(3);
        let mut counts = vec![0u32; 1_000];
        for _ in 0..100_000 {
            counts[z.rank(rng.random()) as usize] += 1;
        }
        // Rank 0 alone gets a large share; the tail is thin but reached.
        assert!(counts[0] > 10_000, "rank 0 drew {}", counts[0]);
        assert!(counts[0] > counts[10] * 5);
        assert!(counts[500..].iter().any(|&c| c > 0));
    }

    #[test]
    fn uniform_stays_in_range() {
        let spec = WorkloadSpec::new(Mix::C, 0.0, 10, 1);
        let chooser = KeyChooser::new(&spec);
        let mut rng = SmallRng::seed_from_u64(1);
        assert!((0..1_000).all(|_| chooser.next(&mut rng) < 10));
        assert_eq!(key(7), "user000000000007");
    }

    #[test]
    fn a_hot_spot_concentrates_operations_in_its_range() {
        let range = fulva_proto::HashRange::FULL.divide(8)[3];
        let spec = WorkloadSpec::new(Mix::B, 0.99, 20_000, 1).with_hotspot(Hotspot { range, share: 0.8 });
        let chooser = KeyChooser::new(&spec);
        assert!(
            (2_000..3_000).contains(&chooser.hot_keys()),
            "about an eighth of the keys: {}",
            chooser.hot_keys()
        );
        let mut rng = SmallRng::seed_from_u64(9);
        let hot = (0..10_000)
            .filter(|_| range.contains(fulva_proto::key_hash(key(chooser.next(&mut rng)).as_bytes())))
            .count();
        // 80% by choice, plus the eighth of the rest that lands there anyway.
        assert!((8_000..8_700).contains(&hot), "{hot} of 10000 in the hot range");
    }
}
