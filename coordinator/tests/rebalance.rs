//! Local mode of the operator: a hot spot on one node makes the rebalancer
//! split and move ranges live until the load is even, while a recorded
//! history stays linearizable.

use fulva_client::{History, RecordingClient};
use fulva_coordinator::policy::DEFAULT_POLICY_YAML;
use fulva_coordinator::RebalancePolicy;
use fulva_local::check;
use fulva_local::sessions::FulvaSession;
use fulva_local::workload::{self, Hotspot, Mix, Recorder, WorkloadSpec};
use fulva_local::{LocalCluster, LocalClusterConfig};
use fulva_proto::key_hash;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Whether per-node ops/s are even by the policy's own trigger: no node is
/// both `ops_imbalance` above the mean and `min_ops_per_sec` above it.
fn even(ops_per_sec: &[f64], triggers: &fulva_coordinator::policy::Triggers) -> bool {
    let mean = ops_per_sec.iter().sum::<f64>() / ops_per_sec.len() as f64;
    let max = ops_per_sec.iter().copied().fold(0.0, f64::max);
    max <= mean * (1.0 + triggers.ops_imbalance) || max - mean < triggers.min_ops_per_sec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_spot_is_spread_until_the_load_is_even() {
    fulva_local::telemetry::init_for_tests();
    let cluster = LocalCluster::start(LocalClusterConfig::default()).await.unwrap();
    let keys = 20_000;
    let client = cluster.client().await.unwrap();
    let session = FulvaSession { client: client.clone() };
    workload::load(vec![session.clone(); 16], keys, 100, None).await.unwrap();

    let hot = cluster.coordinator.map().shards[0];
    let spec =
        WorkloadSpec::new(Mix::B, 0.99, keys, 100).with_hotspot(Hotspot { range: hot.range, share: 0.8 });
    let stop = CancellationToken::new();
    let load = tokio::spawn(workload::run_closed_loop(
        vec![session; 16],
        spec,
        Recorder::new(3),
        stop.clone(),
        50_000_000,
        7,
    ));

    // Two recorded clients on keys of the hot range, which is what moves.
    let dir = tempfile::tempdir().unwrap();
    let history = History::create(dir.path().join("history.jsonl")).unwrap();
    let watched: Vec<String> = (0..)
        .map(|i| format!("watched{i}"))
        .filter(|k| hot.range.contains(key_hash(k.as_bytes())))
        .take(6)
        .collect();
    let mut recorders = Vec::new();
    for p in 0..2u64 {
        let mut recorder = RecordingClient::new(cluster.client().await.unwrap(), history.clone());
        let (stop, watched) = (stop.clone(), watched.clone());
        recorders.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(p);
            for n in 0..1_000_000u64 {
                if stop.is_cancelled() {
                    break;
                }
                let key = watched[rng.random_range(0..watched.len())].as_bytes();
                match rng.random_range(0..10) {
                    0..=5 => drop(recorder.get(key).await),
                    6..=8 => drop(recorder.put(key, format!("{p}-{n}").as_bytes()).await),
                    _ => drop(recorder.delete(key).await),
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
    }

    let policy = RebalancePolicy {
        cooldown_seconds: 10,
        triggers: fulva_coordinator::policy::Triggers { sustained_seconds: 2, ..Default::default() },
        ..RebalancePolicy::from_yaml(DEFAULT_POLICY_YAML).unwrap()
    };
    let rebalancing = CancellationToken::new();
    let (rebalancer, task) = cluster.start_rebalancer(policy.clone(), rebalancing.clone());

    // Wait for the imbalance to be noticed and to last, then for it to fall:
    // the rebalancer reports it even, and the nodes' own counters agree over
    // a few seconds in which no range changed hands.
    let started = Instant::now();
    let mut sustained_at: Option<Instant> = None;
    let mut initial: f64 = 0.0;
    let (balanced_after, served) = loop {
        let status = rebalancer.status();
        initial = initial.max(status.imbalance);
        if sustained_at.is_none() {
            sustained_at = status.imbalanced_since.map(|since| since + policy.sustained());
        }
        let Some(at) = sustained_at else {
            assert!(started.elapsed() < Duration::from_secs(30), "the hot spot never triggered: {status:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        assert!(
            at.elapsed() < Duration::from_secs(60),
            "still imbalanced 60 s after the trigger held: {status:?}"
        );
        let node_ops: Vec<f64> = status.node_ops.iter().map(|(_, ops)| *ops).collect();
        if !even(&node_ops, &policy.triggers) || !status.in_flight.is_empty() || status.finished == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let before = cluster.served_ops_by_range();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = cluster.served_ops_by_range();
        let same_ranges = before.len() == after.len() && before.keys().all(|k| after.contains_key(k));
        if rebalancer.status().started != status.started || !same_ranges {
            continue;
        }
        let served: Vec<f64> = (0..3u32)
            .map(|node| {
                after
                    .iter()
                    .filter(|(k, _)| k.0 == node)
                    .filter_map(|(k, a)| before.get(k).map(|b| a.saturating_sub(*b) as f64))
                    .sum()
            })
            .collect();
        // Served over the 2 s between the two looks.
        let served_per_sec: Vec<f64> = served.iter().map(|n| n / 2.0).collect();
        if even(&served_per_sec, &policy.triggers) {
            break (at.elapsed(), served);
        }
    };
    assert!(initial > 1.5, "a hot spot this strong is far off balance: {initial}");

    stop.cancel();
    rebalancing.cancel();
    task.await.unwrap();
    load.await.unwrap();
    for r in recorders {
        r.await.unwrap();
    }
    history.flush().unwrap();
    let status = rebalancer.status();
    println!(
        "imbalance {initial:.2} -> {:.2}, even {:.1} s after the trigger held; {} moves, {} splits; served {served:?}",
        status.imbalance,
        balanced_after.as_secs_f64(),
        status.finished,
        status.splits
    );
    for (_, event) in &status.events {
        println!("  {event}");
    }
    assert_eq!(status.failed + status.aborted, 0, "{status:?}");

    // No range moved twice within the cooldown.
    let moves: Vec<_> = status.history.iter().collect();
    for (i, a) in moves.iter().enumerate() {
        for b in &moves[i + 1..] {
            if a.range.overlaps(&b.range) {
                let (ended, _) = a.ended.expect("every move ended");
                assert!(
                    b.started.duration_since(ended) >= policy.cooldown(),
                    "{} moved again {:?} after {}",
                    b.range,
                    b.started.duration_since(ended),
                    a.range
                );
            }
        }
    }
    let events = check::read_history(&dir.path().join("history.jsonl")).unwrap();
    let report = check::check_events(&events).unwrap();
    assert!(report.operations > 100, "{report:?}");
    assert!(report.is_linearizable(), "{report:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposal_mode_plans_but_moves_nothing() {
    let cluster = LocalCluster::start(LocalClusterConfig::default()).await.unwrap();
    let keys = 5_000;
    let session = FulvaSession { client: cluster.client().await.unwrap() };
    workload::load(vec![session.clone(); 8], keys, 100, None).await.unwrap();
    let hot = cluster.coordinator.map().shards[0];
    let spec =
        WorkloadSpec::new(Mix::C, 0.99, keys, 100).with_hotspot(Hotspot { range: hot.range, share: 0.9 });
    let stop = CancellationToken::new();
    let load = tokio::spawn(workload::run_closed_loop(
        vec![session; 8],
        spec,
        Recorder::new(3),
        stop.clone(),
        20_000_000,
        3,
    ));
    let policy = RebalancePolicy {
        mode: fulva_coordinator::RebalanceMode::Proposal,
        triggers: fulva_coordinator::policy::Triggers { sustained_seconds: 1, ..Default::default() },
        sample_interval_ms: 250,
        ..RebalancePolicy::default()
    };
    let rebalancing = CancellationToken::new();
    let (rebalancer, task) = cluster.start_rebalancer(policy, rebalancing.clone());
    let epoch = cluster.coordinator.map().epoch;
    let deadline = Instant::now() + Duration::from_secs(20);
    let proposal = loop {
        if let Some(plan) = rebalancer.status().last_plan {
            break plan;
        }
        assert!(Instant::now() < deadline, "no proposal: {:?}", rebalancer.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Give it time to (wrongly) act on it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    rebalancing.cancel();
    task.await.unwrap();
    load.await.unwrap();
    let status = rebalancer.status();
    assert!(proposal.moves() >= 1 && proposal.after < proposal.before, "{proposal:?}");
    assert_eq!((status.started, status.splits), (0, 0), "proposal mode moved something: {status:?}");
    assert_eq!(cluster.coordinator.map().epoch, epoch, "the map never changed");
    assert!(status.events.iter().any(|(_, e)| e.starts_with("proposal:")), "{status:?}");
    cluster.shutdown().await;
}
