//! The `fulva` binary as a user runs it.

use fulva_local::ChildGuard;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn fulva() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fulva"))
}

/// `fulva ARGS --endpoint ENDPOINT` with the certificates of `fulva up`'s
/// TLS directory `tls`.
fn tool(tls: &std::path::Path, endpoint: &str, args: &[&str]) -> Command {
    let mut command = fulva();
    command.env("FULVA_TLS_DIR", tls).args(args).args(["--endpoint", endpoint]);
    command
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn up_serves_a_workload_across_three_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let output = fulva()
        .args(["up", "--duration", "4", "--keys", "3000", "--clients", "8"])
        .args(["--control-addr", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    // The closing line lists client operations per node: all three served load.
    let totals = stderr.lines().find_map(|l| l.split_once("client operations per node: ")).expect(&stderr).1;
    let per_node: Vec<u64> =
        totals.trim_matches(['[', ']']).split(", ").map(|n| n.parse().unwrap()).collect();
    assert_eq!(per_node.len(), 3, "{stderr}");
    assert!(per_node.iter().all(|&n| n > 100), "every node must serve load: {per_node:?}");
    assert!(stdout.contains("served ops/s"), "{stdout}");
    // The coordinator persisted the map.
    let map: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("shard-map.json")).unwrap()).unwrap();
    assert_eq!(map["shards"].as_array().unwrap().len(), 12);
}

/// Starts `fulva up` with `args` and waits until it prints a line containing
/// `ready`; returns its control endpoint and the guard that ends it.
fn spawn_up(args: &[&str], ready: &str) -> (String, ChildGuard, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("127.0.0.1:{}", free_port());
    let mut child = fulva()
        .arg("up")
        .args(args)
        .args(["--duration", "60", "--control-addr", &endpoint])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let reaper = ChildGuard::new(child);
    let started = Instant::now();
    let mut lines = stderr.lines();
    for line in lines.by_ref() {
        if line.unwrap().contains(ready) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "cluster did not start");
    }
    // Keep reading (a closed pipe would end the process at its next line),
    // echoing into the test's output so a failure shows what the cluster said.
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(|line| eprintln!("fulva up: {line}")));
    (endpoint, reaper, dir)
}

#[test]
fn kv_commands_work_against_a_running_cluster() {
    let (endpoint, _reaper, dir) = spawn_up(&["--no-workload"], "shards, control endpoint");
    // `fulva up` runs on mutual TLS with its certificates in DATA_DIR/tls.
    let tls = dir.path().join("tls");
    // Runs `fulva kv ARGS`, checks its exit code and returns its stdout; a
    // mismatch shows what the command printed on stderr.
    let kv = |args: &[&str], code: i32| {
        let out = tool(&tls, &endpoint, &["kv"]).args(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "fulva kv {args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
        stdout
    };
    kv(&["get", "greeting"], 1);
    kv(&["put", "greeting", "hello"], 0);
    assert_eq!(kv(&["get", "greeting"], 0), "hello\n");
    assert_eq!(kv(&["mget", "greeting", "nope"], 0), "greeting\thello\nnope\t(not found)\n");
    kv(&["del", "greeting"], 0);
    kv(&["del", "greeting"], 1);
    kv(&["get", "greeting"], 1);

    // Values that are not command-line text: 1 MiB of every byte value,
    // from a file and back to one.
    let blob: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let (input, output) = (dir.path().join("blob.in"), dir.path().join("blob.out"));
    std::fs::write(&input, &blob).unwrap();
    assert!(kv(&["put", "blob", "--file", input.to_str().unwrap()], 0).contains("1048576 bytes"));
    kv(&["get", "blob", "--output", output.to_str().unwrap()], 0);
    assert!(std::fs::read(&output).unwrap() == blob, "the file came back different");
    // Over the limit: refused, naming it; nothing stored.
    std::fs::write(&input, vec![b'x'; (1 << 20) + 1]).unwrap();
    let out = tool(&tls, &endpoint, &["kv"])
        .args(["put", "huge", "--file", input.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("limit is 1048576"), "{stderr}");
    kv(&["get", "huge"], 1);

    // `fulva map | head -0`: stdout is a pipe nobody reads any more. The
    // command ends quietly instead of panicking on the closed pipe.
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills the two descriptors; the read end is closed at
    // once and the write end is handed to the child (and owned by it).
    let write_end = unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        libc::close(fds[0]);
        <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[1])
    };
    let out = tool(&tls, &endpoint, &["map"]).stdout(write_end).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_arguments_get_a_clear_error() {
    let out = fulva().args(["up", "--nodes", "0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nodes"));
    let out = fulva().args(["kv", "--endpoint", "127.0.0.1:1", "get", "k"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("control endpoint"));
}

#[test]
fn bench_kv_runs_fulva_and_a_real_redis_side_by_side() {
    assert!(
        Command::new("redis-server").arg("--version").output().is_ok(),
        "redis-server is needed (scripts/test installs it: apt-get install redis-server)"
    );
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("kv.json");
    let out = fulva()
        .args([
            "bench",
            "kv",
            "--vs-redis",
            "--keys",
            "2000",
            "--clients",
            "4",
            "--duration",
            "1",
            "--warmup",
            "0",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = doc["results"].as_array().unwrap();
    let systems: Vec<(&str, &str)> =
        results.iter().map(|r| (r["system"].as_str().unwrap(), r["mix"].as_str().unwrap())).collect();
    assert_eq!(systems, [("fulva", "ycsb-b"), ("fulva", "ycsb-c"), ("redis", "ycsb-b"), ("redis", "ycsb-c")]);
    for r in results {
        assert!(r["ops_per_sec"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["latency"]["errors"].as_u64(), Some(0), "{r}");
        // Each server is its own process, whose CPU time was read.
        assert!(r["server_cores"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["ops_per_server_core"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert!(stdout.contains("fulva kernel/redis ops/s"), "{stdout}");
}

#[test]
fn migrate_moves_a_range_of_a_running_cluster() {
    let (endpoint, _reaper, dir) = spawn_up(&["--keys", "2000", "--clients", "4"], "running ycsb-b");
    let tls = dir.path().join("tls");
    // Without the cluster's certificates the endpoint takes no call.
    let refused =
        fulva().args(["map", "--endpoint", &endpoint]).env_remove("FULVA_TLS_DIR").output().unwrap();
    assert!(!refused.status.success(), "{}", String::from_utf8_lossy(&refused.stdout));
    let run = |args: &[&str]| {
        let out = tool(&tls, &endpoint, args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let map = run(&["map"]);
    // The first shard, owned by node 0, moves to node 1 under load.
    let first = map.lines().find(|l| l.starts_with("0x0000000000000000..=")).expect(&map);
    let range = first.split_whitespace().next().unwrap().to_string();
    assert!(first.split_whitespace().nth(1) == Some("0"), "{first}");
    let moved = run(&["migrate", "--range", &range, "--to", "1"]);
    assert!(moved.contains("from node 0 to node 1"), "{moved}");
    let after = run(&["map"]);
    let line = after.lines().find(|l| l.starts_with(&range)).expect(&after);
    assert_eq!(line.split_whitespace().nth(1), Some("1"), "{after}");
    assert!(line.ends_with("normal"), "{line}");
    // And back, hash order only (no hot keys shipped first).
    let back = run(&["migrate", "--range", &range, "--to", "0", "--hot-keys", "0"]);
    assert!(back.contains("from node 1 to node 0"), "{back}");
    // A bad request is refused with a clear message.
    let out = tool(&tls, &endpoint, &["migrate", "--range", &range, "--to", "9"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown destination node 9"));
}

#[test]
fn bench_migration_runs_every_strategy_and_a_redis_cluster_reshard_and_draws_a_plot() {
    let dir = tempfile::tempdir().unwrap();
    let (json, png) = (dir.path().join("m.json"), dir.path().join("m.png"));
    let out = fulva()
        .args([
            "bench",
            "migration",
            "--keys",
            "5000",
            "--clients",
            "4",
            "--before",
            "1",
            "--after",
            "1",
            "--vs-redis",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&png)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = doc["results"].as_array().unwrap();
    let names: Vec<&str> = results.iter().map(|r| r["strategy"].as_str().unwrap()).collect();
    assert_eq!(names, ["fulva", "rocksteady", "source-driven", "redis-cluster", "fulva@redis-rate"]);
    // The matched-rate run moves at the rate Redis reached (within the limiter's slack).
    let redis_rate = results[3]["migrated_mb_per_sec"].as_f64().unwrap();
    let matched_rate = results[4]["migrated_mb_per_sec"].as_f64().unwrap();
    assert!(matched_rate <= redis_rate * 1.5, "fulva at {matched_rate} MB/s, redis at {redis_rate} MB/s");
    // Fulva's runs count the reads they sent to both nodes; Redis has none.
    assert!(results[0]["dual_read_share_after_200ms"].is_number(), "{}", results[0]);
    assert!(results[3]["dual_read_share_after_200ms"].is_null());
    assert!(results.iter().all(|r| r["ops_lost_per_mb"].as_f64().is_some_and(|l| l >= 0.0)));
    // Every system's servers are processes of their own, their CPU read from /proc.
    assert!(
        results.iter().all(|r| r["server_cpu_ms_per_mb"].as_f64().is_some_and(|c| c > 0.0)),
        "{results:?}"
    );
    for r in results {
        assert!(r["moved_bytes"].as_u64().unwrap() > 0, "{r}");
        assert!(r["move_end_ms"].as_u64() >= r["move_start_ms"].as_u64(), "{r}");
        assert!(r["bins"].as_array().unwrap().iter().any(|b| b["moving"]["ops"].as_u64().unwrap() > 0));
    }
    assert!(results[2]["lock_window_ms"].as_f64().is_some(), "source-driven reports its lock window");
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG file");
}
