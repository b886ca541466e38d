//! The Redis Cluster baseline of `fulva bench migration`: two real
//! redis-server processes in cluster mode, every slot first on one, the same
//! keys and workload through a cluster-aware client that follows MOVED and
//! ASK, and `redis-cli --cluster reshard` moving the same share of the slots.

use super::redis::RedisServer;
use super::report::{lo_bytes, summarize, Experiment, Sample, StrategyResult};
use fulva_local::sessions::RedisSession;
use fulva_local::workload::{key_into, KeyChooser, WorkloadSpec};
use parking_lot::RwLock;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    let chooser = Arc::new(KeyChooser::new(&spec));
    let owner: Arc<RwLock<Vec<u8>>> = Arc::new(RwLock::new(vec![0; SLOTS]));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let samples: Arc<parking_lot::Mutex<Vec<(u64, u32, usize)>>> = Arc::default();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.load.clients {
        let (chooser, owner, stop, errors, samples) =
            (chooser.clone(), owner.clone(), stop.clone(), errors.clone(), samples.clone());
        let mut conns = [RedisSession::connect(addrs[0]).await?, RedisSession::connect(addrs[1]).await?];
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(i as u64 + 99);
            let mut key = Vec::with_capacity(32);
            let mut value = vec![0u8; spec.value_size];
            let mut mine = Vec::with_capacity(1 << 16);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 50_000_000 {
                key_into(chooser.next(&mut rng), &mut key);
                let slot = key_slot(&key);
                let read = rng.random_bool(spec.read_fraction);
                if !read {
                    rng.fill(&mut value[..]);
                }
                let started = Instant::now();
                let mut node = usize::from(owner.read()[slot]);
                let mut ok = false;
                for _ in 0..16 {
                    let parts: [&[u8]; 3] = [b"SET", &key, &value];
                    let command: &[&[u8]] = if read { &[b"GET", &key] } else { &parts };
                    let reply = match conns[node].command_or_error(command).await {
                        Ok(r) => r,
                        Err(_) => break,
                    };
                    match reply {
                        Ok(_) => {
                            ok = true;
                            break;
                        }
                        Err(e) if e.starts_with("MOVED") => match target(&e, ports) {
                            Some(t) => {
                                owner.write()[slot] = t as u8;
                                node = t;
                            }
                            None => break,
                        },
                        Err(e) if e.starts_with("ASK") => {
                            let Some(t) = target(&e, ports) else { break };
                            if matches!(conns[t].asking(command).await, Ok(Ok(_))) {
                                ok = true;
                                break;
                            }
                        }
                        Err(e) if e.starts_with("TRYAGAIN") => {
                            tokio::time::sleep(Duration::from_millis(1)).await
                        }
                        Err(_) => break,
                    }
                }
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                mine.push((
                    t0.elapsed().as_micros() as u64,
                    started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32,
                    slot,
                ));
                n += 1;
            }
            samples.lock().extend(mine);
        }));
    }
    let lo_start = lo_bytes();
    tokio::time::sleep(Duration::from_secs(args.before_secs)).await;
    let move_start = t0.elapsed();
    let lo_move_start = lo_bytes();
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
    tokio::time::sleep(Duration::from_secs(args.after_secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let end = t0.elapsed();
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
    let samples: Vec<Sample> = samples
        .lock()
        .iter()
        .map(|&(done_us, latency_us, slot)| Sample { done_us, latency_us, moving: moved[slot] })
        .collect();
    for server in servers {
        server.stop().await;
    }
    let moved_bytes = args.load.keys as f64
        * (args.load.value_size + 16) as f64
        * moved.iter().filter(|m| **m).count() as f64
        / SLOTS as f64;
    Ok(summarize(
        "redis-cluster",
        args.bin_ms,
        samples,
        (move_start, move_end, end),
        (lo_move_start - lo_start, lo_move_end - lo_move_start),
        moved_bytes as u64,
        move_end - move_start,
        None,
        errors.load(Ordering::Relaxed),
    ))
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
