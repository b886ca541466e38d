//! Failures in the middle of a move, with real processes on a real (virtual)
//! network: two `fulva node` processes, each in a network namespace the test
//! creates, reached from the test (coordinator and clients) over one veth
//! pair each, and joined to each other by a third veth pair that carries the
//! bulk transfer (the S–D link). While clients read, write and delete keys of
//! the moving range, a fault hits the move:
//!
//! - the destination is killed (by PID): the source takes the range back;
//!   the only writes lost are those the destination alone acknowledged
//!   between the freeze and its death;
//! - the source is killed: the destination keeps what it pulled; the only
//!   writes lost are those the source alone held (acknowledged before the
//!   freeze and not pulled yet);
//! - the S–D link goes down (`ip link set down`) for a few seconds: the
//!   transfer stalls and resumes, the move finishes, nothing is lost;
//! - the S–D link goes down for good: the pull fails, the move is aborted and
//!   the destination's writes go back to the source through the coordinator
//!   (which reaches both), nothing is lost;
//! - the move makes no progress while both nodes answer (throttled to a byte
//!   a second): after the stall timeout it is aborted, the destination's
//!   writes carried back, nothing lost.
//!
//! In each case no range is left Migrating, and the recorded history, less
//! the keys of the documented crash losses, passes the linearizability checker.
//! Needs root (network namespaces) and iproute2; `scripts/test` installs it.

use fulva_client::{Client, ClientConfig, Event, History, RecordingClient};
use fulva_coordinator::{AbortReason, CoordinatorError, MoveOptions};
use fulva_local::check::{check_events, operations_by_key, read_history};
use fulva_local::{ChildGuard, ControlPlane};
use fulva_proto::{key_hash, HashRange, NodeInfo, ShardState};
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Keys loaded into the moving range (about 2 MB: more than the network
/// buffers hold, so a move at `RATE` lasts about ten seconds).
const KEYS: usize = 2000;
/// Keys the clients work on during the move: they read all of them and
/// write (or delete) the first half.
const HOT: usize = 150;
const VALUE: usize = 1000;
const RATE: u64 = 200_000;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("iproute2's ip (apt-get install iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Two namespaces `fa`/`fb` with a veth each to this namespace (subnets
/// .1 and .2) and a direct veth between them (subnet .3) that each uses, by
/// a host route, to reach the other: the S–D link.
struct Lab {
    tag: String,
    net: u8,
}

impl Lab {
    fn new(net: u8) -> Lab {
        let tag = format!("{}{net}", std::process::id() % 10_000);
        let lab = Lab { tag, net };
        let (a, b, n) = (lab.ns('a'), lab.ns('b'), net);
        for (ns, side, i) in [(&a, 'a', 1), (&b, 'b', 2)] {
            let (outer, inner) = (format!("fr{side}{}", lab.tag), format!("fn{side}{}", lab.tag));
            ip(&["netns", "add", ns]);
            ip(&["link", "add", &outer, "type", "veth", "peer", "name", &inner]);
            ip(&["link", "set", &inner, "netns", ns]);
            ip(&["addr", "add", &format!("10.{n}.{i}.1/24"), "dev", &outer]);
            ip(&["link", "set", &outer, "up"]);
            ip(&["-n", ns, "addr", "add", &format!("10.{n}.{i}.2/24"), "dev", &inner]);
            ip(&["-n", ns, "link", "set", &inner, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let (da, db) = (lab.direct('a'), lab.direct('b'));
        ip(&["link", "add", &da, "netns", &a, "type", "veth", "peer", "name", &db, "netns", &b]);
        ip(&["-n", &a, "addr", "add", &format!("10.{n}.3.1/24"), "dev", &da]);
        ip(&["-n", &b, "addr", "add", &format!("10.{n}.3.2/24"), "dev", &db]);
        ip(&["-n", &a, "link", "set", &da, "up"]);
        ip(&["-n", &b, "link", "set", &db, "up"]);
        ip(&["-n", &a, "route", "add", &format!("10.{n}.2.2/32"), "via", &format!("10.{n}.3.2"), "dev", &da]);
        ip(&["-n", &b, "route", "add", &format!("10.{n}.1.2/32"), "via", &format!("10.{n}.3.1"), "dev", &db]);
        lab
    }

    fn ns(&self, side: char) -> String {
        format!("f{side}{}", self.tag)
    }

    fn direct(&self, side: char) -> String {
        format!("fd{side}{}", self.tag)
    }

    /// Node `id` (0 in `fa`, 1 in `fb`): its addresses.
    fn addr(&self, id: u32, port: u16) -> SocketAddr {
        format!("10.{}.{}.2:{port}", self.net, id + 1).parse().unwrap()
    }

    fn set_link(&self, up: bool) {
        ip(&["-n", &self.ns('a'), "link", "set", &self.direct('a'), if up { "up" } else { "down" }]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for side in ['a', 'b'] {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(side)]).status();
            let _ = Command::new("ip")
                .args(["link", "del", &format!("fr{side}{}", self.tag)])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Starts `fulva node` `id` in its namespace and waits until it listens.
async fn start_node(lab: &Lab, id: u32) -> ChildGuard {
    let ns = lab.ns(if id == 0 { 'a' } else { 'b' });
    let child = Command::new("ip")
        .args(["netns", "exec", &ns, env!("CARGO_BIN_EXE_fulva"), "node"])
        .arg(format!("--node-id={id}"))
        .arg(format!("--data-addr={}", lab.addr(id, 7100)))
        .arg(format!("--control-addr={}", lab.addr(id, 7200)))
        .arg(format!("--metrics-addr={}", lab.addr(id, 7300)))
        .arg(format!("--transfer-addr={}", lab.addr(id, 7400)))
        .arg("--migration-batch-bytes=8192")
        .arg("--insecure")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // `ip netns exec` execs the node: the child's PID is the node's.
    let node = ChildGuard::new(child);
    let started = Instant::now();
    while tokio::net::TcpStream::connect(lab.addr(id, 7200)).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "node {id} did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    KillDestination,
    KillSource,
    CutLink,
    CutLinkForGood,
    /// Both nodes answer, but nothing is applied: the move is throttled to a
    /// byte a second mid-way.
    Stall,
}

/// Keys whose hashes fall in `range`.
fn keys_in(range: HashRange) -> Vec<String> {
    (0..).map(|i| format!("key{i}")).filter(|k| range.contains(key_hash(k.as_bytes()))).take(KEYS).collect()
}

/// Clients working on the moving range with a recorded history: the keys
/// are loaded first, then four clients read all of the `HOT` keys and write
/// or delete half of them until `finish`, which reads every key once more.
struct Workload {
    endpoint: String,
    keys: Arc<Vec<String>>,
    history: Arc<History>,
    path: std::path::PathBuf,
    done: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

fn client_config(endpoint: &str) -> ClientConfig {
    let mut c = ClientConfig::new(endpoint);
    c.deadline = Duration::from_secs(2);
    c.max_timeout = Duration::from_millis(200);
    c
}

impl Workload {
    async fn start(endpoint: &str, keys: Arc<Vec<String>>) -> Workload {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let history = History::create(&path).unwrap();
        let mut loader =
            RecordingClient::new(Client::connect(client_config(endpoint)).await.unwrap(), history.clone());
        for (i, key) in keys.iter().enumerate() {
            loader.put(key.as_bytes(), format!("{i:0>VALUE$}").as_bytes()).await.unwrap();
        }
        let done = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for w in 0..4u64 {
            let mut client = RecordingClient::new(
                Client::connect(client_config(endpoint)).await.unwrap(),
                history.clone(),
            );
            let (keys, done) = (keys.clone(), done.clone());
            workers.push(tokio::spawn(async move {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(w);
                let mut n = 0u64;
                let started = Instant::now();
                while !done.load(Ordering::Relaxed)
                    && n < 200_000
                    && started.elapsed() < Duration::from_secs(120)
                {
                    let i = rng.random_range(0..HOT);
                    let key = &keys[i];
                    match rng.random_range(0..10) {
                        _ if i >= HOT / 2 => drop(client.get(key.as_bytes()).await),
                        0..5 => drop(client.get(key.as_bytes()).await),
                        5..9 => {
                            drop(client.put(key.as_bytes(), format!("w{w}-{n:0>VALUE$}").as_bytes()).await)
                        }
                        _ => drop(client.delete(key.as_bytes()).await),
                    }
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
        Workload { endpoint: endpoint.to_string(), keys, history, path, done, workers, _dir: dir }
    }

    /// Stops the clients, reads every key once more, and returns the history.
    async fn finish(self, what: &str) -> Vec<Event> {
        self.done.store(true, Ordering::Relaxed);
        for w in self.workers {
            w.await.unwrap();
        }
        let mut reader = RecordingClient::new(
            Client::connect(client_config(&self.endpoint)).await.unwrap(),
            self.history.clone(),
        );
        for key in self.keys.iter() {
            let read = reader.get(key.as_bytes()).await;
            assert!(read.is_ok(), "{what}: final read of {key}: {read:?}");
        }
        self.history.flush().unwrap();
        read_history(&self.path).unwrap()
    }
}

struct Run {
    events: Vec<Event>,
    outcome: Result<fulva_coordinator::MoveReport, CoordinatorError>,
    /// History clock (ns): the move was asked for, the map showed it Migrating, the fault hit.
    move_called: u64,
    migrating_seen: u64,
    fault_at: u64,
}

async fn run(fault: Fault, net: u8) -> Run {
    let lab = Lab::new(net);
    let mut nodes = vec![start_node(&lab, 0).await, start_node(&lab, 1).await];
    let infos: Vec<NodeInfo> = (0..2)
        .map(|id| NodeInfo { id, data_addr: lab.addr(id, 7100), control_addr: lab.addr(id, 7200) })
        .collect();
    let control = ControlPlane::start(infos, 2).await.unwrap();
    let (coordinator, endpoint) = (control.coordinator.clone(), control.endpoint.clone());
    let moving = coordinator.map().shards.iter().find(|s| s.owner == 0).unwrap().range;
    let keys = Arc::new(keys_in(moving));

    let work = Workload::start(&endpoint, keys.clone()).await;
    let history = work.history.clone();

    let options = MoveOptions {
        rate_limit_bytes_per_sec: RATE,
        node_timeout: Duration::from_secs(3),
        stall_timeout: Duration::from_secs(if fault == Fault::Stall { 4 } else { 30 }),
        ..MoveOptions::default()
    };
    let move_called = history.elapsed_ns();
    let mover = {
        let coordinator = coordinator.clone();
        tokio::spawn(async move { coordinator.migrate(moving, 1, options, |_| {}).await })
    };
    let started = Instant::now();
    while !coordinator.map().shards.iter().any(|s| matches!(s.state, ShardState::Migrating { .. })) {
        assert!(started.elapsed() < Duration::from_secs(20), "the move did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let migrating_seen = history.elapsed_ns();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fault_at = history.elapsed_ns();
    match fault {
        Fault::KillDestination => nodes[1].kill().unwrap(),
        Fault::KillSource => nodes[0].kill().unwrap(),
        Fault::CutLink => {
            lab.set_link(false);
            tokio::time::sleep(Duration::from_secs(4)).await;
            lab.set_link(true);
        }
        Fault::CutLinkForGood => lab.set_link(false),
        Fault::Stall => coordinator.set_move_rate(moving, 1).await.unwrap(),
    }
    let outcome =
        tokio::time::timeout(Duration::from_secs(90), mover).await.expect("the move ended").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = work.finish(&format!("{fault:?}")).await;
    let map = coordinator.map();
    assert!(
        map.shards.iter().all(|s| s.state == ShardState::Normal),
        "{fault:?}: a range was left moving: {map:?}"
    );
    drop(control);
    drop(nodes);
    Run { events, outcome, move_called, migrating_seen, fault_at }
}

/// Keys whose final read misses an acknowledged write, with the (call,
/// return) times of the acknowledged writes it misses.
fn lost(events: &[Event]) -> Vec<(String, Vec<(u64, u64)>)> {
    fulva_local::stress::lost_writes_by_key(&operations_by_key(events).unwrap())
}

/// The history without `keys` passes the checker.
fn linearizable_without(events: &[Event], keys: &[String]) {
    let kept: Vec<Event> = events.iter().filter(|e| !keys.contains(&e.key)).cloned().collect();
    let report = check_events(&kept).unwrap();
    assert!(report.violations.is_empty(), "not linearizable: {:?}", report.violations);
    assert_eq!(report.keys, KEYS - keys.len(), "every other key is checked");
}

fn need_root() {
    let out = Command::new("ip").args(["netns", "list"]).output();
    assert!(
        out.is_ok_and(|o| o.status.success()),
        "these tests need iproute2 and root (network namespaces); scripts/test installs iproute2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_killed_mid_move_leaves_the_range_on_its_source() {
    need_root();
    let run = run(Fault::KillDestination, 71).await;
    match &run.outcome {
        Err(CoordinatorError::Aborted { back_on: 0, carried_back: false, reason, .. }) => {
            assert!(matches!(reason, AbortReason::DestinationLost { node: 1 }), "{reason}");
            assert!(reason.to_string().contains("lost"), "{reason}")
        }
        other => panic!("expected the range back on node 0: {other:?}"),
    }
    let lost = lost(&run.events);
    // Only writes the destination alone acknowledged, between the freeze and its death.
    for (key, acked) in &lost {
        assert!(!acked.is_empty(), "{key}: lost without an acknowledged write");
        for &(call, ret) in acked {
            assert!(
                call >= run.move_called && ret <= run.fault_at + 50_000_000,
                "{key}: lost write {call}..{ret} outside the destination's window"
            );
        }
    }
    eprintln!(
        "destination killed: {} keys lost writes the dead destination alone had acknowledged",
        lost.len()
    );
    linearizable_without(&run.events, &lost.into_iter().map(|l| l.0).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_killed_mid_move_leaves_the_range_on_its_destination() {
    need_root();
    let run = run(Fault::KillSource, 72).await;
    match &run.outcome {
        Ok(report) => assert!(report.source_lost, "{report:?}"),
        other => panic!("expected the move rolled forward: {other:?}"),
    }
    let lost = lost(&run.events);
    // Only writes the source alone held: acknowledged before the freeze, not pulled.
    for (key, acked) in &lost {
        for &(_, ret) in acked {
            assert!(
                ret <= run.migrating_seen,
                "{key}: a write acknowledged after the freeze ({ret}) was lost"
            );
        }
    }
    eprintln!("source killed: {} keys lost writes only the dead source held", lost.len());
    linearizable_without(&run.events, &lost.into_iter().map(|l| l.0).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_between_source_and_destination_stalls_the_move_and_loses_nothing() {
    need_root();
    let run = run(Fault::CutLink, 73).await;
    let report = run.outcome.as_ref().expect("the move finished once the link came back");
    assert!(!report.source_lost);
    assert!(report.duration > Duration::from_secs(4), "the move outlasted the cut: {report:?}");
    assert_eq!(lost(&run.events), Vec::new(), "no acknowledged write is lost");
    linearizable_without(&run.events, &[]);
}

fn start_coordinator(lab: &Lab, listen: SocketAddr, map_file: &std::path::Path) -> ChildGuard {
    let node = |id: u32| format!("{id}={},{}", lab.addr(id, 7100), lab.addr(id, 7200));
    ChildGuard::new(
        Command::new(env!("CARGO_BIN_EXE_fulva"))
            .args(["coordinator", "--insecure", "--listen", &listen.to_string(), "--shards", "2"])
            .arg("--map-file")
            .arg(map_file)
            .args(["--node", &node(0), "--node", &node(1)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

async fn map_of(endpoint: &str) -> Option<fulva_proto::ShardMap> {
    let mut client = fulva_proto::grpc::shard_map_service_client::ShardMapServiceClient::connect(format!(
        "http://{endpoint}"
    ))
    .await
    .ok()?;
    let map = client.get_shard_map(fulva_proto::grpc::GetShardMapRequest::default()).await.ok()?.into_inner();
    fulva_proto::ShardMap::try_from(map).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_mid_move_is_recovered_by_the_next_one() {
    need_root();
    let lab = Lab::new(74);
    let _nodes = [start_node(&lab, 0).await, start_node(&lab, 1).await];
    let dir = tempfile::tempdir().unwrap();
    let map_file = dir.path().join("map.json");
    let listen: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let endpoint = listen.to_string();
    let mut coordinator = start_coordinator(&lab, listen, &map_file);
    let started = Instant::now();
    let map = loop {
        if let Some(map) = map_of(&endpoint).await {
            break map;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the coordinator did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let moving = map.shards.iter().find(|s| s.owner == 0).unwrap().range;
    let work = Workload::start(&endpoint, Arc::new(keys_in(moving))).await;

    let _mover = ChildGuard::new(
        Command::new(env!("CARGO_BIN_EXE_fulva"))
            .args(["migrate", "--endpoint", &endpoint, "--range", &moving.to_string(), "--to", "1"])
            .args(["--rate-limit-mb", &(RATE as f64 / 1e6).to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while !map_of(&endpoint)
        .await
        .is_some_and(|m| m.shards.iter().any(|s| matches!(s.state, ShardState::Migrating { .. })))
    {
        assert!(started.elapsed() < Duration::from_secs(20), "the move did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // SIGKILL by PID, mid-move; the next coordinator opens the same map file.
    coordinator.kill().unwrap();
    let _next = start_coordinator(&lab, listen, &map_file);
    let started = Instant::now();
    let map = loop {
        if let Some(map) =
            map_of(&endpoint).await.filter(|m| m.shards.iter().all(|s| s.state == ShardState::Normal))
        {
            break map;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "a range stayed Migrating after recovery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let events = work.finish("coordinator killed").await;
    let lost = lost(&events);
    assert_eq!(lost, Vec::new(), "no acknowledged write is lost when the coordinator dies");
    linearizable_without(&events, &[]);
    eprintln!(
        "coordinator killed: recovered to epoch {} with {} shards, nothing lost",
        map.epoch,
        map.shards.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_cut_for_good_aborts_the_move_and_carries_the_writes_back_through_the_coordinator() {
    need_root();
    let run = run(Fault::CutLinkForGood, 75).await;
    match &run.outcome {
        Err(CoordinatorError::Aborted { back_on: 0, carried_back: true, .. }) => {}
        other => panic!("expected the move aborted with the writes carried back: {other:?}"),
    }
    assert_eq!(lost(&run.events), Vec::new(), "no acknowledged write is lost");
    linearizable_without(&run.events, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_without_progress_is_aborted_after_the_stall_timeout() {
    need_root();
    let run = run(Fault::Stall, 76).await;
    match &run.outcome {
        Err(CoordinatorError::Aborted { back_on: 0, carried_back: true, reason, .. }) => {
            assert!(
                matches!(reason, AbortReason::Failed(e) if matches!(**e, CoordinatorError::Stalled { .. })),
                "{reason}"
            );
            assert!(reason.to_string().contains("no progress"), "{reason}")
        }
        other => panic!("expected the stalled move aborted with the writes carried back: {other:?}"),
    }
    assert_eq!(lost(&run.events), Vec::new(), "no acknowledged write is lost");
    linearizable_without(&run.events, &[]);
}
