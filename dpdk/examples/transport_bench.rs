//! One node and one client, the same closed-loop YCSB-B load over kernel UDP
//! (loopback) and over DPDK (`net_memif`, EAL `--no-huge --no-pci`), side by
//! side in one run. Node and client share the process and the machine's
//! cores, so the ratio is what to read, not the absolute numbers.
//!
//! ```sh
//! cargo run --release -p fulva-dpdk --example transport_bench -- [SECONDS] [TASKS]
//! ```

use fulva_client::{Client, ClientConfig};
use fulva_dpdk::{DpdkConfig, DpdkTransport};
use fulva_kvnode::NodeConfig;
use fulva_operator::{Coordinator, MemoryMapStore};
use fulva_proto::transport::{Transport, UdpTransport};
use fulva_proto::NodeInfo;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const KEYS: u64 = 10_000;

struct Result {
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
}

async fn run<N: Transport, C: Transport + Clone>(
    node_side: N,
    client_side: C,
    seconds: u64,
    tasks: usize,
) -> Result {
    let stop = CancellationToken::new();
    let node = fulva_kvnode::start_on(NodeConfig::loopback(0), vec![node_side], stop.clone()).await.unwrap();
    let infos = vec![NodeInfo { id: 0, data_addr: node.data_addr, control_addr: node.control_addr }];
    let coordinator =
        Arc::new(Coordinator::bootstrap(Arc::new(MemoryMapStore::default()), infos, 4, false).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    fulva_operator::spawn_control_endpoint(listener, coordinator.clone(), stop.clone());
    let client = Client::with_transports(ClientConfig::new(endpoint), vec![client_side]).await.unwrap();
    for i in 0..KEYS {
        client.put(format!("user{i:012}"), [7u8; 100]).await.unwrap();
    }
    let done = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(parking_lot::Mutex::new(Vec::<u64>::new()));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    for t in 0..tasks {
        let (client, done, latencies) = (client.clone(), done.clone(), latencies.clone());
        workers.push(tokio::spawn(async move {
            let mut local = Vec::new();
            let mut x = t as u64 * 7919 + 1;
            while Instant::now() < deadline {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let key = format!("user{:012}", (x >> 33) % KEYS);
                let started = Instant::now();
                if (x >> 20) % 100 < 95 {
                    client.get(&key).await.unwrap();
                } else {
                    client.put(&key, [9u8; 100]).await.unwrap();
                }
                local.push(started.elapsed().as_nanos() as u64);
            }
            done.fetch_add(local.len() as u64, Ordering::Relaxed);
            latencies.lock().extend(local);
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let mut all = std::mem::take(&mut *latencies.lock());
    all.sort_unstable();
    let q = |f: f64| {
        all.get(((all.len() as f64 * f) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(0)
            as f64
            / 1e3
    };
    let result = Result {
        ops_per_sec: done.load(Ordering::Relaxed) as f64 / seconds as f64,
        p50_us: q(0.5),
        p99_us: q(0.99),
    };
    stop.cancel();
    node.shutdown().await;
    result
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let tasks: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(16);

    let udp_node = UdpTransport::bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
    let udp_client = Arc::new(UdpTransport::bind("127.0.0.1:0".parse().unwrap(), false).unwrap());
    let udp = run(udp_node, udp_client, seconds, tasks).await;

    let pid = std::process::id();
    let socket = format!("/tmp/fulva-bench-{pid}.sock");
    let eal: Vec<String> = [
        "--no-huge".to_string(),
        "--no-pci".to_string(),
        "-m".to_string(),
        "512".to_string(),
        "--log-level=*:warning".to_string(),
        format!("--file-prefix=fulva-bench-{pid}"),
        format!("--vdev=net_memif0,role=server,socket={socket},id=0"),
        format!("--vdev=net_memif1,role=client,socket={socket},id=0"),
    ]
    .into();
    let node =
        DpdkTransport::start(DpdkConfig::new(eal.clone(), "net_memif0", "10.9.0.1:7100".parse().unwrap()))
            .unwrap();
    let client = Arc::new(
        DpdkTransport::start(DpdkConfig::new(eal, "net_memif1", "10.9.0.2:7100".parse().unwrap())).unwrap(),
    );
    let dpdk = run(node, client, seconds, tasks).await;
    let _ = std::fs::remove_file(&socket);

    println!("{tasks} closed-loop tasks, YCSB-B, {KEYS} keys of 100 B, {seconds} s each, node and client in one process");
    println!("{:<14} {:>12} {:>10} {:>10}", "transport", "ops/s", "p50 us", "p99 us");
    for (name, r) in [("kernel UDP", &udp), ("DPDK (memif)", &dpdk)] {
        println!("{name:<14} {:>12.0} {:>10.1} {:>10.1}", r.ops_per_sec, r.p50_us, r.p99_us);
    }
    println!("DPDK / UDP ops/s: {:.2}", dpdk.ops_per_sec / udp.ops_per_sec.max(1.0));
}
