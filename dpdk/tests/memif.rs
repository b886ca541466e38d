//! DPDK's own virtual devices, no hardware: EAL with `--no-huge --no-pci`
//! and two `net_memif` ports connected through one socket; frames built by
//! [`packet`](fulva_dpdk::packet) cross the link intact.

use fulva_dpdk::{packet, Eal, Mbuf, Mempool, Port};
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn frames_cross_a_memif_link() {
    let pid = std::process::id();
    let socket = format!("/tmp/fulva-memif-test-{pid}.sock");
    let args: Vec<String> = [
        "--no-huge",
        "--no-pci",
        "-m",
        "256",
        "--log-level",
        "*:warning",
        &format!("--file-prefix=fulva-test-{pid}"),
        &format!("--vdev=net_memif0,role=server,socket={socket},id=0"),
        &format!("--vdev=net_memif1,role=client,socket={socket},id=0"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let eal = Eal::init(&args).expect("EAL starts without hugepages or PCI");
    assert!(eal.port_count() >= 2);
    let pool = Arc::new(Mempool::new(eal, "memif-test", 2047, 2048 + 128).unwrap());
    let mut server = Port::start(eal, "net_memif0", pool.clone()).unwrap();
    let mut client = Port::start(eal, "net_memif1", pool.clone()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(server.link_up() && client.link_up()) {
        assert!(Instant::now() < deadline, "memif link never came up");
        std::thread::sleep(Duration::from_millis(10));
    }

    let from: SocketAddrV4 = "10.9.0.1:7100".parse().unwrap();
    let to: SocketAddrV4 = "10.9.0.2:7100".parse().unwrap();
    let mut frame = Vec::new();
    let mut sent = 0;
    for i in 0..200u32 {
        frame.clear();
        packet::build(client.mac(), from, server.mac(), to, &i.to_be_bytes(), &mut frame);
        // A ring that is full (or not mapped yet right after connecting) takes nothing: retry.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut m = Mbuf::alloc(&pool).expect("pool has room");
            assert!(m.append(&frame));
            if client.tx(vec![m]) == 1 {
                sent += 1;
                break;
            }
            assert!(Instant::now() < deadline, "port never accepted frame {i}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!(sent, 200);
    let mut got = Vec::new();
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 200 && Instant::now() < deadline {
        received.clear();
        server.rx(&mut received, 32);
        for m in &received {
            let d = packet::parse(m.data()).expect("a valid frame");
            assert_eq!((d.src, d.dst, d.src_mac), (from, to, client.mac()));
            got.push(u32::from_be_bytes(d.payload.try_into().unwrap()));
        }
    }
    assert_eq!(got, (0..200).collect::<Vec<_>>(), "every frame arrived, in order");

    // And back: the server answers one frame.
    frame.clear();
    packet::build(server.mac(), to, client.mac(), from, b"pong", &mut frame);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut answer = None;
    while answer.is_none() {
        assert!(Instant::now() < deadline, "no answer crossed back");
        let mut m = Mbuf::alloc(&pool).unwrap();
        assert!(m.append(&frame));
        server.tx(vec![m]);
        received.clear();
        client.rx(&mut received, 32);
        answer = received.iter().find_map(|m| packet::parse(m.data()).map(|d| d.payload.to_vec()));
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(answer.as_deref(), Some(&b"pong"[..]));
    drop((server, client));
    let _ = std::fs::remove_file(&socket);
}
