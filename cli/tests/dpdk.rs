//! The `fulva` command over DPDK (built with `--features dpdk`; EAL
//! `--no-huge --no-pci`, `net_memif` links): `fulva node --transport dpdk`
//! serves `fulva kv --transport dpdk`, and `fulva bench kv` measures both
//! data paths side by side.
#![cfg(feature = "dpdk")]

use fulva_local::ControlPlane;
use fulva_local::NodeProcess;
use fulva_proto::NodeInfo;
use std::path::Path;
use std::process::Command;

fn eal(prefix: &str, role: &str, socket: &Path) -> String {
    format!(
        "--no-huge --no-pci -m 256 --log-level=*:warning --file-prefix={prefix}-{} \
         --vdev=net_memif0,role={role},socket={},id=0",
        std::process::id(),
        socket.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_reads_and_writes_a_dpdk_node() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("memif.sock");
    let node_args = vec![
        "--transport=dpdk".to_string(),
        "--dpdk-port=net_memif0".to_string(),
        format!("--eal-args={}", eal("kv-node", "server", &socket)),
    ];
    let binary = Path::new(env!("CARGO_BIN_EXE_fulva"));
    let node = NodeProcess::start(
        binary,
        0,
        &node_args,
        "10.9.0.1:7100".parse().unwrap(),
        dir.path().join("node.log"),
    )
    .await
    .unwrap();
    let infos = vec![NodeInfo { id: 0, data_addr: node.data_addr, control_addr: node.control_addr }];
    let control = ControlPlane::start(infos, 4).await.unwrap();
    let endpoint = control.endpoint.clone();

    // Each `fulva kv` is its own process with its own EAL; they take turns on the one link.
    let kv = |n: usize, args: &[&str]| {
        let out = Command::new(binary)
            .args(["kv", "--endpoint", &endpoint, "--transport", "dpdk", "--dpdk-port", "net_memif0"])
            .arg(format!("--eal-args={}", eal(&format!("kv-client{n}"), "client", &socket)))
            .args(["--dpdk-addr", "10.9.0.100:7200"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = kv(0, &["put", "greeting", "hello over dpdk"]);
    assert_eq!(code, Some(0), "{stdout}{stderr}\nnode:\n{}", node.log_tail());
    assert!(stdout.starts_with("OK (version"), "{stdout}");
    let (code, stdout, stderr) = kv(1, &["get", "greeting"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.trim(), "hello over dpdk");
    let (code, _, _) = kv(2, &["del", "greeting"]);
    assert_eq!(code, Some(0));
    let (code, _, stderr) = kv(3, &["get", "greeting"]);
    assert_eq!(code, Some(1), "a deleted key is not found: {stderr}");
    drop(control);
    node.stop().await;
}

#[test]
fn bench_kv_measures_kernel_udp_and_dpdk_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("kv.json");
    let out = Command::new(env!("CARGO_BIN_EXE_fulva"))
        .args(["bench", "kv", "--transport", "kernel,dpdk", "--mix", "ycsb-b"])
        .args(["--keys", "2000", "--clients", "8", "--duration", "1", "--warmup", "0"])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = doc["results"].as_array().unwrap();
    let paths: Vec<&str> = results.iter().map(|r| r["transport"].as_str().unwrap()).collect();
    assert_eq!(paths, ["kernel", "dpdk"]);
    for r in results {
        assert!(r["ops_per_sec"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["latency"]["errors"].as_u64(), Some(0), "{r}");
        assert!(r["server_cores"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert!(stdout.contains("fulva dpdk/kernel ops/s"), "{stdout}");
}
