//! The real `fulva-operator` binary against kmock's Kubernetes API emulator
//! (PyPI `kmock`, served on loopback by tests/e2e/kmock_operator.py): with a
//! FulvaCluster stored, the operator takes the leader Lease, adds its
//! finalizer, creates the Services and the StatefulSet, and writes status;
//! the FulvaRebalance controller writes a stored rebalance's status.

use std::process::Command;

#[test]
fn the_operator_binary_reconciles_a_cluster_on_an_emulated_api_server() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/e2e/kmock_operator.py");
    let has_kmock = Command::new("python3").args(["-c", "import kmock"]).status().is_ok_and(|s| s.success());
    assert!(
        has_kmock,
        "python3 with the kmock package is needed (scripts/test installs it: pip install kmock)"
    );
    let output = Command::new("python3")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_fulva-operator"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for check in [
        "leader lease taken",
        "finalizer added",
        "statefulset with 3 replicas",
        "status written",
        "rebalance status written",
    ] {
        assert!(stdout.contains(&format!("ok   {check}")), "{check}: {stdout}");
    }
}
