//! Two storage nodes and a client in three processes, their data path on
//! DPDK: each node has a `net_memif` port (server role) and the client one
//! port to each (client role), EAL `--no-huge --no-pci` everywhere. Clients
//! read, write and delete while a range moves from node 0 to node 1 with the
//! fulva strategy (bulk transfer on the kernel's TCP); the recorded history
//! is linearizable and no acknowledged write is lost.
//!
//! The node processes are this test binary run again with
//! `FULVA_DPDK_TEST_NODE` set.

use fulva_client::{Client, ClientConfig, History, RecordingClient};
use fulva_coordinator::MoveOptions;
use fulva_dpdk::{DpdkConfig, DpdkTransport};
use fulva_kvnode::NodeConfig;
use fulva_local::{ChildGuard, ControlPlane};
use fulva_proto::{key_hash, NodeInfo, ShardState, Strategy};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddrV4;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const NODE_VAR: &str = "FULVA_DPDK_TEST_NODE";
const SOCKET_VAR: &str = "FULVA_DPDK_TEST_SOCKET";
const TEST: &str = "nodes_and_a_client_in_separate_processes_move_a_range";

fn node_addr(id: u32) -> SocketAddrV4 {
    SocketAddrV4::new([10, 9, 0, id as u8 + 1].into(), 7100)
}

fn eal(prefix: &str, vdevs: &[String]) -> Vec<String> {
    let mut args: Vec<String> = ["--no-huge", "--no-pci", "-m", "256", "--log-level=*:warning"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(format!("--file-prefix={prefix}"));
    args.extend(vdevs.iter().map(|v| format!("--vdev={v}")));
    args
}

/// The node process: serves until its stdin closes.
async fn run_node(id: u32, socket: String) {
    let args = eal(
        &format!("fulva-node{id}-{}", std::process::id()),
        &[format!("net_memif0,role=server,socket={socket},id=0")],
    );
    // The production path: the poller thread runs every request to completion.
    let dpdk = DpdkConfig::new(args, "net_memif0", node_addr(id));
    let config = NodeConfig { migration_batch_bytes: 4096, ..NodeConfig::loopback(id) };
    let stop = CancellationToken::new();
    let node = fulva_kvnode::start_dpdk(config, dpdk, stop.clone()).await.unwrap();
    println!("READY {}", node.control_addr);
    // The parent closes our stdin (or kills us) when it is done.
    let _ = tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await;
    stop.cancel();
    node.shutdown().await;
}

fn spawn_node(id: u32, socket: &str) -> (ChildGuard, std::net::SocketAddr) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(NODE_VAR, id.to_string())
        .env(SOCKET_VAR, socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let process = ChildGuard::new(child);
    for line in stdout.lines() {
        let line = line.unwrap();
        // libtest may have printed "test NAME ... " on the same line.
        if let Some((_, addr)) = line.split_once("READY ") {
            return (process, addr.trim().parse().unwrap());
        }
    }
    panic!("node {id} did not start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_and_a_client_in_separate_processes_move_a_range() {
    if let Ok(id) = std::env::var(NODE_VAR) {
        return run_node(id.parse().unwrap(), std::env::var(SOCKET_VAR).unwrap()).await;
    }
    let pid = std::process::id();
    let sockets: Vec<String> = (0..2).map(|i| format!("/tmp/fulva-2p-{pid}-{i}.sock")).collect();
    let (node0, control0) = spawn_node(0, &sockets[0]);
    let (node1, control1) = spawn_node(1, &sockets[1]);

    let infos = vec![
        NodeInfo { id: 0, data_addr: node_addr(0).into(), control_addr: control0 },
        NodeInfo { id: 1, data_addr: node_addr(1).into(), control_addr: control1 },
    ];
    let control = ControlPlane::start(infos, 2).await.unwrap();
    let (coordinator, endpoint) = (control.coordinator.clone(), control.endpoint.clone());

    // The client process (this one): one memif port to each node.
    let vdevs: Vec<String> = sockets
        .iter()
        .enumerate()
        .map(|(i, s)| format!("net_memif{i},role=client,socket={s},id=0"))
        .collect();
    let config = DpdkConfig {
        ports: vec!["net_memif0".into(), "net_memif1".into()],
        ..DpdkConfig::new(eal(&format!("fulva-client-{pid}"), &vdevs), "", "10.9.0.100:7100".parse().unwrap())
    };
    let transport = Arc::new(DpdkTransport::start(config).unwrap());
    let client = Client::with_transports(ClientConfig::new(endpoint), vec![transport]).await.unwrap();

    let moving = coordinator.map().shards[0];
    assert_eq!(moving.owner, 0);
    for i in 0..1_500 {
        client.put(format!("filler{i}"), [b'f'; 64]).await.unwrap();
    }
    // Large objects in the moving range: each request and reply of them is
    // up to 180 fragments at a 1500-byte MTU, through the nodes' poller (the
    // move below is throttled to 100 kB/s, so they are not larger).
    let large: Vec<(String, Vec<u8>)> = (0..)
        .map(|i| format!("large{i}"))
        .filter(|k| moving.range.contains(key_hash(k.as_bytes())))
        .zip([256 << 10, 64 << 10, 5_000])
        .map(|(k, len)| {
            let value = (0..len).map(|i| (i % 251) as u8 ^ k.len() as u8).collect();
            (k, value)
        })
        .collect();
    for (key, value) in &large {
        client.put(key, value).await.unwrap();
        assert_eq!(client.get(key).await.unwrap().as_deref(), Some(&value[..]), "{key} before the move");
    }
    let hot: Vec<String> = (0..)
        .map(|i| format!("hot{i}"))
        .filter(|k| moving.range.contains(key_hash(k.as_bytes())))
        .take(6)
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    let history = History::create(&path).unwrap();
    let running = Arc::new(AtomicBool::new(true));
    let mut workers = Vec::new();
    for p in 0..3u64 {
        let mut recorder = RecordingClient::new(client.clone(), history.clone());
        let (running, hot) = (running.clone(), hot.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while running.load(Ordering::Relaxed) && n < 100_000 {
                let key = hot[(n as usize * 7 + p as usize) % hot.len()].as_bytes();
                match (n + p) % 5 {
                    0 | 1 => drop(recorder.get(key).await),
                    2 | 3 => drop(recorder.put(key, format!("{p}-{n}").as_bytes()).await),
                    _ => drop(recorder.delete(key).await),
                }
                n += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let options = MoveOptions {
        strategy: Strategy::Fulva,
        rate_limit_bytes_per_sec: 100_000,
        ..MoveOptions::default()
    };
    let report = coordinator.migrate(moving.range, 1, options, |_| {}).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.store(false, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let mut reader = RecordingClient::new(client.clone(), history.clone());
    for key in &hot {
        reader.get(key.as_bytes()).await.unwrap();
    }
    history.flush().unwrap();
    for i in (0..1_500).step_by(50) {
        assert_eq!(client.get(format!("filler{i}")).await.unwrap().as_deref(), Some(&[b'f'; 64][..]));
    }
    for (key, value) in &large {
        assert_eq!(client.get(key).await.unwrap().as_deref(), Some(&value[..]), "{key} after the move");
    }

    assert!(report.objects > 100, "the range carried data: {report:?}");
    let shard = coordinator.map().shards.iter().find(|s| s.range == moving.range).copied().unwrap();
    assert_eq!((shard.owner, shard.state), (1, ShardState::Normal));
    let events = fulva_local::check::read_history(&path).unwrap();
    assert!(events.len() > 500, "clients kept working through the move: {} events", events.len());
    let check = fulva_local::check::check_events(&events).unwrap();
    assert!(check.is_linearizable(), "{check:?}");
    assert_eq!(fulva_local::stress::lost_writes(&fulva_local::check::operations_by_key(&events).unwrap()), 0);

    drop(control);
    drop((node0, node1));
    for s in sockets {
        let _ = std::fs::remove_file(s);
    }
}
