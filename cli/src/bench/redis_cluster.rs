//! The Redis Cluster baseline of `fulva bench migration`: two real
//! redis-server processes in cluster mode, every slot first on one, the same
//! keys and workload through a cluster-aware client that follows MOVED and
//! ASK, and `redis-cli --cluster reshard` moving the same share of the slots.

use super::redis::RedisServer;
use super::report::{lo_bytes, samples_of, summarize, Experiment, RunRecord, Sampler, StrategyResult};
use fulva_local::sessions::RedisSession;
use fulva_local::workload::{run_closed_loop_with, Session, WorkloadSpec};
use parking_lot::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const SLOTS: usize = 16_384;

/// Redis Cluster's key slot: CRC16 (XMODEM) of the key, modulo 16384 (the
/// benchmark's keys carry no hash tags).
pub fn key_slot(key: &[u8]) -> usize {
    let mut crc: u16 = 0;
    for &byte in key {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    usize::from(crc) % SLOTS
}

/// Which of the two servers (0 or 1) a `MOVED`/`ASK` error points at.
fn target(error: &str, ports: [u16; 2]) -> Option<usize> {
    let port: u16 = error.split_whitespace().nth(2)?.rsplit(':').next()?.parse().ok()?;
    ports.iter().position(|&p| p == port)
}

async fn cluster_command(addr: std::net::SocketAddr, parts: &[&[u8]]) -> anyhow::Result<String> {
    let mut s = RedisSession::connect(addr).await?;
    s.command(parts).await?;
    Ok(String::from_utf8_lossy(s.last_bulk()).into_owned())
}

/// A closed-loop task's handle on the Redis Cluster: a connection to each
/// node and the slot owners it has learned, following MOVED (learn the new
/// owner), ASK (ask there once) and TRYAGAIN (wait a millisecond), as a
/// cluster-aware client does.
struct ClusterSession {
    conns: [RedisSession; 2],
    owner: Arc<RwLock<Vec<u8>>>,
    ports: [u16; 2],
}

impl ClusterSession {
    async fn run(&mut self, command: &[&[u8]], slot: usize) -> anyhow::Result<()> {
        let mut node = usize::from(self.owner.read()[slot]);
        for _ in 0..16 {
            match self.conns[node].command_or_error(command).await? {
                Ok(_) => return Ok(()),
                Err(e) if e.starts_with("MOVED") => {
                    let t = target(&e, self.ports).ok_or_else(|| anyhow::anyhow!("{e}"))?;
                    self.owner.write()[slot] = t as u8;
                    node = t;
                }
                Err(e) if e.starts_with("ASK") => {
                    let t = target(&e, self.ports).ok_or_else(|| anyhow::anyhow!("{e}"))?;
                    if let Ok(Ok(_)) = self.conns[t].asking(command).await {
                        return Ok(());
                    }
                }
                Err(e) if e.starts_with("TRYAGAIN") => tokio::time::sleep(Duration::from_millis(1)).await,
                Err(e) => anyhow::bail!("{e}"),
            }
        }
        anyhow::bail!("no answer after 16 redirects")
    }
}

impl Session for ClusterSession {
    async fn get(&mut self, key: &[u8]) -> anyhow::Result<()> {
        self.run(&[b"GET", key], key_slot(key)).await
    }

    async fn put(&mut self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        self.run(&[b"SET", key, value], key_slot(key)).await
    }

    fn bucket(&self, _key: &[u8]) -> usize {
        0
    }
}

/// Runs the Redis Cluster resharding under the benchmark's workload.
pub async fn run(args: &Experiment, redis_server: &str) -> anyhow::Result<StrategyResult> {
    let dirs = [tempfile_dir()?, tempfile_dir()?];
    let mut servers = Vec::new();
    for dir in &dirs {
        let extra = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--dir"]
            .iter()
            .map(|s| s.to_string())
            .chain(std::iter::once(dir.path().display().to_string()))
            .collect::<Vec<_>>();
        servers.push(RedisServer::start_with(redis_server, &extra).await?);
    }
    let addrs = [servers[0].addr, servers[1].addr];
    let ports = [addrs[0].port(), addrs[1].port()];
    cluster_command(addrs[0], &[b"CLUSTER", b"ADDSLOTSRANGE", b"0", b"16383"]).await?;
    cluster_command(addrs[0], &[b"CLUSTER", b"MEET", b"127.0.0.1", ports[1].to_string().as_bytes()]).await?;
    let ids = [
        cluster_command(addrs[0], &[b"CLUSTER", b"MYID"]).await?,
        cluster_command(addrs[1], &[b"CLUSTER", b"MYID"]).await?,
    ];
    let started = Instant::now();
    loop {
        let a = cluster_command(addrs[0], &[b"CLUSTER", b"INFO"]).await?;
        let b = cluster_command(addrs[1], &[b"CLUSTER", b"INFO"]).await?;
        if [&a, &b].iter().all(|i| i.contains("cluster_state:ok") && i.contains("cluster_known_nodes:2")) {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "redis cluster did not form");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("  redis cluster: two nodes on {} and {}, every slot on the first", addrs[0], addrs[1]);
    let value = vec![b'x'; args.load.value_size];
    let loaders = 4u64;
    let per = args.load.keys.div_ceil(loaders);
    let mut loads = Vec::new();
    for i in 0..loaders {
        let (addr, value) = (addrs[0], value.clone());
        let range = (i * per).min(args.load.keys)..((i + 1) * per).min(args.load.keys);
        loads.push(tokio::spawn(async move {
            RedisSession::connect(addr).await?.set_pipelined(range, &value, 512).await
        }));
    }
    for load in loads {
        load.await??;
    }

    let moving_slots = ((SLOTS as f64) * args.fraction.clamp(0.01, 1.0)) as usize;
    let spec = WorkloadSpec::new(args.mix, args.load.zipf, args.load.keys, args.load.value_size);
    let owner: Arc<RwLock<Vec<u8>>> = Arc::new(RwLock::new(vec![0; SLOTS]));
    let errors = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let hiccups = fulva_local::hiccup::HiccupMeter::start(t0);
    let stop = CancellationToken::new();
    let mut sessions = Vec::new();
    for _ in 0..args.load.clients {
        let conns = [RedisSession::connect(addrs[0]).await?, RedisSession::connect(addrs[1]).await?];
        sessions.push(ClusterSession { conns, owner: owner.clone(), ports });
    }
    let samplers = (0..args.load.clients)
        .map(|_| Sampler::new(t0, |key: &[u8]| key_slot(key) as u32, errors.clone(), None))
        .collect();
    let clients = args.load.clients as u64;
    let load =
        tokio::spawn(run_closed_loop_with(sessions, spec, samplers, stop.clone(), clients * 50_000_000, 99));
    let lo_start = lo_bytes();
    tokio::time::sleep(Duration::from_secs(args.before_secs)).await;
    let move_start = t0.elapsed();
    let lo_move_start = lo_bytes();
    let server_cpu =
        || servers.iter().filter_map(|s| s.pid().and_then(fulva_local::process::cpu_seconds)).sum::<f64>();
    let cpu_start = server_cpu() + fulva_local::process::finished_children_cpu_seconds();
    let reshard = tokio::process::Command::new("redis-cli")
        .args([
            "--cluster",
            "reshard",
            &addrs[0].to_string(),
            "--cluster-from",
            ids[0].trim(),
            "--cluster-to",
            ids[1].trim(),
        ])
        .args(["--cluster-slots", &moving_slots.to_string(), "--cluster-yes"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("cannot run redis-cli (apt-get install redis-tools): {e}"))?;
    anyhow::ensure!(
        reshard.status.success(),
        "redis-cli --cluster reshard failed: {}",
        String::from_utf8_lossy(&reshard.stderr)
    );
    let move_end = t0.elapsed();
    let lo_move_end = lo_bytes();
    // Both redis-servers and redis-cli (a finished child by now).
    let cpu_during_move = server_cpu() + fulva_local::process::finished_children_cpu_seconds() - cpu_start;
    tokio::time::sleep(Duration::from_secs(args.after_secs)).await;
    stop.cancel();
    let samplers = load.await?;
    let end = t0.elapsed();
    let hiccups = hiccups.finish();
    // Which slots moved: the second node's own line in CLUSTER NODES.
    let nodes = cluster_command(addrs[1], &[b"CLUSTER", b"NODES"]).await?;
    let mut moved = vec![false; SLOTS];
    if let Some(line) = nodes.lines().find(|l| l.contains("myself")) {
        for part in line.split_whitespace().skip(8) {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                for slot in moved.iter_mut().take(b.min(SLOTS - 1) + 1).skip(a) {
                    *slot = true;
                }
            }
        }
    }
    let samples = samples_of(samplers, |slot| moved[slot as usize]);
    for server in servers {
        server.stop().await;
    }
    let moved_bytes = args.load.keys as f64
        * (args.load.value_size + 16) as f64
        * moved.iter().filter(|m| **m).count() as f64
        / SLOTS as f64;
    let run = RunRecord {
        samples,
        move_start,
        move_end,
        end,
        wire: (lo_move_start - lo_start, lo_move_end - lo_move_start),
        moved_bytes: moved_bytes as u64,
        move_duration: move_end - move_start,
        lock_window: None,
        errors: errors.load(Ordering::Relaxed),
        dual_reads: Vec::new(),
        server_cpu_during_move: Some(cpu_during_move),
        move_cpu: None,
        hiccups,
    };
    Ok(summarize("redis-cluster", args.bin_ms, run))
}

fn tempfile_dir() -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix("fulva-redis-cluster").tempdir()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_match_redis() {
        // Values from the Redis Cluster specification's examples and CLUSTER KEYSLOT.
        // CRC16-XMODEM of "123456789" is 0x31C3, below 16384.
        assert_eq!(key_slot(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
    }
}
