//! A randomized stress run: clients read, write and delete a small set of hot
//! keys over a lossy network while ranges move back and forth and split; the
//! recorded history is checked for linearizability. Used by the default test
//! suite (short) and by `fulva soak` (long).

use crate::check::{self, Operation, Report};
use crate::cluster::{LocalCluster, LocalClusterConfig};
use fulva_client::{ClientTraps, Function, History, RecordingClient};
use fulva_coordinator::{CoordinatorError, MoveOptions};
use fulva_kvnode::NodeConfig;
use fulva_proto::transport::FaultConfig;
use fulva_proto::{key_hash, ShardState, Strategy};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shape of a stress run.
#[derive(Clone, Debug)]
pub struct StressConfig {
    /// Storage nodes.
    pub nodes: u32,
    /// Concurrent client processes.
    pub clients: u32,
    /// Hot keys the clients use.
    pub keys: u32,
    /// Share of the clients' operations that are reads; the rest are writes
    /// and deletes, 7 to 3.
    pub read_share: f64,
    /// Filler keys loaded so that moves carry data and take several batches.
    pub filler_keys: u32,
    /// Bytes of every value written, hot keys and filler (0: short values,
    /// `p3-17`, and 100-byte filler). Values larger than a datagram travel
    /// as fragments.
    pub value_bytes: usize,
    /// Stop after this many moves ...
    pub moves: u64,
    /// ... or after this long, whichever comes first.
    pub max_duration: Duration,
    /// Most shards splitting may create.
    pub max_shards: usize,
    /// Bandwidth limit of each move (bytes/s), so moves overlap many operations.
    pub move_rate_limit: u64,
    /// Hottest keys a fulva or rocksteady move ships first.
    pub hot_keys: u32,
    /// Faults injected on every data-path socket.
    pub faults: FaultConfig,
    /// Strategies moves pick from at random.
    pub strategies: Vec<Strategy>,
    /// Share of moves aborted at a random moment while they run.
    pub abort_share: f64,
    /// Where the history goes.
    pub history: PathBuf,
    /// Node settings (trap switches, batch size).
    pub node: NodeConfig,
    /// Trap switches of the workload's clients.
    pub client_traps: ClientTraps,
    /// Seed of every random choice.
    pub seed: u64,
    /// Print progress every few seconds.
    pub verbose: bool,
}

impl StressConfig {
    /// A short run for the default test suite.
    pub fn quick(history: PathBuf) -> StressConfig {
        StressConfig {
            nodes: 3,
            clients: 6,
            keys: 8,
            read_share: 0.5,
            filler_keys: 4_000,
            value_bytes: 0,
            moves: 40,
            max_duration: Duration::from_secs(25),
            max_shards: 24,
            move_rate_limit: 2_000_000,
            hot_keys: fulva_coordinator::DEFAULT_HOT_KEYS,
            faults: FaultConfig {
                loss: 0.02,
                duplicate: 0.02,
                reorder: 0.02,
                max_delay: Duration::from_millis(3),
                seed: 7,
            },
            strategies: vec![Strategy::Fulva, Strategy::Rocksteady, Strategy::SourceDriven],
            abort_share: 0.25,
            history,
            // Fetches on a miss on: the stress covers the path with the most moving parts.
            node: NodeConfig {
                migration_batch_bytes: 8 * 1024,
                migration_fetch_on_miss: true,
                ..NodeConfig::loopback(0)
            },
            client_traps: ClientTraps::default(),
            seed: 1,
            verbose: false,
        }
    }
}

/// What a stress run did and found.
#[derive(Clone, Debug)]
pub struct StressReport {
    /// Moves completed.
    pub moves: u64,
    /// Moves aborted and rolled back.
    pub aborted: u64,
    /// Of those, moves aborted after the destination served the range (its
    /// writes carried back by a reverse move).
    pub carried_back: u64,
    /// Splits done.
    pub splits: u64,
    /// Client operations completed (all kinds).
    pub operations: u64,
    /// Operations that failed or timed out.
    pub errors: u64,
    /// Linearizability of the history.
    pub check: Report,
    /// Acknowledged writes the final state lost (0 when correct).
    pub lost_writes: usize,
    /// How long it ran.
    pub elapsed: Duration,
}

/// A value that starts with `name` and, to `bytes` bytes, goes on with a
/// pattern of its own (so values of one length differ all along).
fn value_of(name: &str, bytes: usize) -> Vec<u8> {
    let mut value = name.as_bytes().to_vec();
    if bytes <= value.len() {
        return value;
    }
    value.push(b'-');
    let seed = fulva_proto::key_hash(name.as_bytes());
    let mut i = 0u64;
    while value.len() < bytes {
        value.push(b'a' + ((seed.rotate_left((i % 64) as u32) ^ i) % 26) as u8);
        i += 1;
    }
    value
}

/// Runs a stress run and checks its history.
pub async fn run(config: StressConfig) -> anyhow::Result<StressReport> {
    let started = Instant::now();
    let cluster = LocalCluster::start(LocalClusterConfig {
        nodes: config.nodes,
        shards: config.nodes * 2,
        node: config.node.clone(),
        faults: Some(config.faults),
        ..LocalClusterConfig::default()
    })
    .await?;
    let loader = cluster.client().await?;
    for i in 0..config.filler_keys {
        loader
            .put(format!("filler{i}"), value_of(&format!("filler{i}"), config.value_bytes.max(100)))
            .await?;
    }
    let history = History::create(&config.history)?;
    let stop = Arc::new(AtomicBool::new(false));
    let operations = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let hot: Vec<String> = (0..config.keys).map(|k| format!("hot{k}")).collect();

    let mut workers = Vec::new();
    for p in 0..config.clients {
        let (client, _) =
            cluster.faulty_client_with_stats(u64::from(p) + config.seed * 1000, config.client_traps).await?;
        let mut recorder = RecordingClient::new(client, history.clone());
        let (stop, operations, errors, hot) = (stop.clone(), operations.clone(), errors.clone(), hot.clone());
        let seed = config.seed.wrapping_mul(7919).wrapping_add(u64::from(p));
        let read_share = config.read_share.clamp(0.0, 1.0);
        let value_bytes = config.value_bytes;
        workers.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 1_000_000 {
                let key = hot[rng.random_range(0..hot.len())].as_bytes();
                let ok = if rng.random_bool(read_share) {
                    recorder.get(key).await.is_ok()
                } else if rng.random_bool(0.7) {
                    let value = value_of(&format!("p{p}-{n}"), value_bytes);
                    recorder.put(key, &value).await.is_ok()
                } else {
                    recorder.delete(key).await.is_ok()
                };
                operations.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
        }));
    }

    let mut rng = SmallRng::seed_from_u64(config.seed);
    let (mut moves, mut splits, mut aborted, mut carried_back) = (0u64, 0u64, 0u64, 0u64);
    let mut last_report = Instant::now();
    while moves < config.moves && started.elapsed() < config.max_duration {
        let map = cluster.coordinator.map();
        let hash = key_hash(hot[rng.random_range(0..hot.len())].as_bytes());
        let Some(shard) = map.shard_of(hash).copied() else { continue };
        if shard.state != ShardState::Normal {
            continue;
        }
        let width = shard.range.last - shard.range.first;
        if map.shards.len() < config.max_shards && width > 1 << 20 && rng.random_bool(0.3) {
            let at = shard.range.first + rng.random_range(1..width);
            cluster.coordinator.split(at).await?;
            splits += 1;
            continue;
        }
        let others: Vec<u32> = map.nodes.iter().map(|n| n.id).filter(|&id| id != shard.owner).collect();
        let destination = others[rng.random_range(0..others.len())];
        let strategy = config.strategies[rng.random_range(0..config.strategies.len())];
        let options = MoveOptions {
            strategy,
            rate_limit_bytes_per_sec: config.move_rate_limit,
            hot_keys: config.hot_keys,
            ..MoveOptions::default()
        };
        let migrate = cluster.coordinator.migrate(shard.range, destination, options, |_| {});
        let result = if rng.random_bool(config.abort_share) {
            // Abort at a random moment: before the freeze, mid-pull, or too
            // late (the move finished first and the abort finds nothing).
            let delay = Duration::from_millis(rng.random_range(0..60));
            let aborter = async {
                tokio::time::sleep(delay).await;
                let _ = cluster.coordinator.abort_move(shard.range);
            };
            tokio::join!(migrate, aborter).0
        } else {
            migrate.await
        };
        match result {
            Ok(_) => moves += 1,
            Err(CoordinatorError::Aborted { carried_back: back, .. }) => {
                aborted += 1;
                carried_back += u64::from(back);
            }
            Err(err) => return Err(err.into()),
        }
        if config.verbose && last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "  {:>5.0}s: {moves} moves, {aborted} aborted, {splits} splits, {} operations, {} errors",
                started.elapsed().as_secs_f64(),
                operations.load(Ordering::Relaxed),
                errors.load(Ordering::Relaxed)
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await?;
    }
    // Final reads through a clean client, recorded like the rest.
    let mut reader = RecordingClient::new(cluster.client().await?, history.clone());
    for key in &hot {
        reader.get(key.as_bytes()).await?;
    }
    history.flush()?;
    cluster.shutdown().await;

    let events = check::read_history(&config.history)?;
    let report = check::check_events(&events)?;
    let by_key = check::operations_by_key(&events)?;
    Ok(StressReport {
        moves,
        aborted,
        carried_back,
        splits,
        operations: operations.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        check: report,
        lost_writes: lost_writes(&by_key),
        elapsed: started.elapsed(),
    })
}

/// Acknowledged writes missing from the final state: for each key, the final
/// read (the last operation) must return the value of one of the writes that
/// nothing overwrote for certain — a write or delete (acknowledged, or of
/// unknown outcome) after whose return no acknowledged write was invoked.
pub fn lost_writes(by_key: &BTreeMap<String, Vec<Operation>>) -> usize {
    lost_writes_by_key(by_key).len()
}

/// The keys of [`lost_writes`], each with the (call, return) times of the
/// acknowledged writes its final read missed.
pub fn lost_writes_by_key(by_key: &BTreeMap<String, Vec<Operation>>) -> Vec<(String, Vec<(u64, u64)>)> {
    let mut lost = Vec::new();
    for (key, ops) in by_key {
        let Some(last_read) =
            ops.iter().filter(|o| o.f == Function::Read && o.ret.is_some()).max_by_key(|o| o.call)
        else {
            continue;
        };
        let writes: Vec<&Operation> =
            ops.iter().filter(|o| o.f != Function::Read && o.call < last_read.call).collect();
        if writes.is_empty() {
            continue;
        }
        // Only an acknowledged write overwrites for certain; one of unknown
        // outcome may never have happened.
        let survivors: Vec<&&Operation> = writes
            .iter()
            .filter(|w| {
                let done = w.ret.unwrap_or(w.call);
                !writes.iter().any(|o| o.ret.is_some() && o.call > done)
            })
            .collect();
        if !survivors.iter().any(|w| w.value == last_read.value) {
            let acked = survivors.iter().filter_map(|w| w.ret.map(|r| (w.call, r))).collect();
            lost.push((key.clone(), acked));
        }
    }
    lost
}
