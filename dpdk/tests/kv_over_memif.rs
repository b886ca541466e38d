//! A storage node and a client whose data path is DPDK (two `net_memif`
//! ports joined by one socket, EAL `--no-huge --no-pci`): GET, PUT and
//! DELETE, of values up to 1 MiB (hundreds of fragments each at a
//! 1500-byte MTU), work under 5% injected loss, duplication and reordering (the same
//! injector and protocol code as on UDP), retransmissions cover what the
//! link drops while it comes up, and the recorded history is linearizable.

use fulva_client::{Client, ClientConfig, History, RecordingClient};
use fulva_dpdk::{DpdkConfig, DpdkTransport};
use fulva_kvnode::NodeConfig;
use fulva_local::ControlPlane;
use fulva_proto::transport::{FaultConfig, FaultyTransport};
use fulva_proto::NodeInfo;
use std::net::SocketAddrV4;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_a_client_over_memif() {
    let pid = std::process::id();
    let socket = format!("/tmp/fulva-kv-memif-{pid}.sock");
    let args: Vec<String> = [
        "--no-huge".to_string(),
        "--no-pci".to_string(),
        "-m".to_string(),
        "256".to_string(),
        "--log-level=*:warning".to_string(),
        format!("--file-prefix=fulva-kv-{pid}"),
        format!("--vdev=net_memif0,role=server,socket={socket},id=0"),
        format!("--vdev=net_memif1,role=client,socket={socket},id=0"),
    ]
    .into();
    let node_addr: SocketAddrV4 = "10.9.0.1:7100".parse().unwrap();
    let client_addr: SocketAddrV4 = "10.9.0.2:7100".parse().unwrap();
    let node_side = DpdkTransport::start(DpdkConfig::new(args.clone(), "net_memif0", node_addr)).unwrap();
    let client_side = DpdkTransport::start(DpdkConfig::new(args, "net_memif1", client_addr)).unwrap();

    let stop = CancellationToken::new();
    // The same fault injector as the UDP tests, on both ends of the DPDK path.
    let faults = FaultConfig { loss: 0.05, duplicate: 0.05, reorder: 0.05, ..FaultConfig::default() };
    let node_side = FaultyTransport::new(node_side, FaultConfig { seed: 1, ..faults });
    let client_side = FaultyTransport::new(client_side, FaultConfig { seed: 2, ..faults });
    let node = fulva_kvnode::start_on(NodeConfig::loopback(0), vec![node_side], stop.clone()).await.unwrap();
    assert_eq!(node.data_addr, node_addr.into());
    let infos = vec![NodeInfo { id: 0, data_addr: node.data_addr, control_addr: node.control_addr }];
    let control = ControlPlane::start(infos, 4).await.unwrap();
    let endpoint = control.endpoint.clone();

    let client = Client::with_transports(ClientConfig::new(endpoint), vec![client_side]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    let history = History::create(&path).unwrap();
    let mut recorder = RecordingClient::new(client, history.clone());
    for i in 0..200u32 {
        let key = format!("k{}", i % 20);
        match i % 4 {
            0 | 1 => {
                recorder.put(key.as_bytes(), format!("v{i}").as_bytes()).await.unwrap();
            }
            2 => {
                recorder.get(key.as_bytes()).await.unwrap();
            }
            _ => {
                recorder.delete(key.as_bytes()).await.unwrap();
            }
        }
    }
    // 1 MiB values are 725 fragments each way at a 1500-byte MTU; under 5%
    // loss a retransmission fills in what the last try missed.
    for i in 0..3u32 {
        let key = format!("large{i}");
        let value: Vec<u8> = (0..(1u32 << 20)).map(|b| (b.wrapping_mul(31) ^ i) as u8).collect();
        recorder.put(key.as_bytes(), &value).await.unwrap();
        assert_eq!(recorder.get(key.as_bytes()).await.unwrap().as_deref(), Some(&value[..]));
    }
    recorder.put(b"greeting", b"hello").await.unwrap();
    assert_eq!(recorder.get(b"greeting").await.unwrap().as_deref(), Some(&b"hello"[..]));
    assert!(recorder.delete(b"greeting").await.unwrap());
    assert_eq!(recorder.get(b"greeting").await.unwrap(), None);
    history.flush().unwrap();

    let served: u64 = {
        let mut total = 0;
        node.handler.ownership.for_each(|r| total += r.metrics.ops(fulva_proto::Op::Put));
        total
    };
    assert!(served >= 100, "the puts reached the node over DPDK: {served}");
    let events = fulva_local::check::read_history(&path).unwrap();
    assert!(events.len() >= 400, "every operation was recorded");
    let report = fulva_local::check::check_events(&events).unwrap();
    assert!(report.is_linearizable(), "{report:?}");
    // The client's side goes first, then the node's: with the node's side
    // stopped first the test crashed once at exit (SIGSEGV) under the full
    // suite's load; the cause inside DPDK's memif teardown is not confirmed.
    drop(recorder);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    stop.cancel();
    node.shutdown().await;
    let _ = std::fs::remove_file(&socket);
}
