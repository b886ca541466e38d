//! The real `fulva-operator` binary against kmock's Kubernetes API emulator
//! (PyPI `kmock`, served on loopback by tests/e2e/kmock_operator.py): with a
//! FulvaCluster stored, the operator takes the leader Lease, adds its
//! finalizer, creates the Services and the StatefulSet, and writes status;
//! the FulvaRebalance controller writes a stored rebalance's status. Then a
//! rolling update over three real kvnode processes on loopback addresses
//! (kmock runs no pods): the StatefulSet is OnDelete, the operator drains the
//! outdated pod with live moves and deletes it only once its node owns nothing.

use std::process::Command;

#[test]
fn the_operator_binary_reconciles_a_cluster_on_an_emulated_api_server() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/e2e/kmock_operator.py");
    let has_kmock = Command::new("python3").args(["-c", "import kmock"]).status().is_ok_and(|s| s.success());
    assert!(
        has_kmock,
        "python3 with the kmock package is needed (scripts/test installs it: pip install kmock)"
    );
    // The kvnode binary is built next to the operator's in a workspace build.
    let operator = std::path::Path::new(env!("CARGO_BIN_EXE_fulva-operator"));
    let kvnode = operator.with_file_name("fulva-kvnode");
    if !kvnode.exists() {
        let built = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "fulva-kvnode", "--bin", "fulva-kvnode"])
            .status()
            .expect("cargo runs");
        assert!(built.success(), "building fulva-kvnode for the rolling-update scenario");
    }
    assert!(kvnode.exists(), "no fulva-kvnode next to {}", operator.display());
    let output = Command::new("python3")
        .arg(script)
        .arg(operator)
        .arg(&kvnode)
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
        "statefulset updateStrategy OnDelete",
        "shard map over the real nodes",
        "Updating condition names the pod",
        "pod deleted only once its node owned nothing",
    ] {
        assert!(stdout.contains(&format!("ok   {check}")), "{check}: {stdout}");
    }
}
