//! Randomized stress: moves back and forth and splits under a lossy network
//! while clients hammer a few hot keys; the history must be linearizable. The
//! same run with a trap of the paper's code switched back on must fail.

use fulva_local::stress::{self, StressConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_under_faults_stay_linearizable() {
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history.jsonl");
    let report = stress::run(StressConfig::quick(history.clone())).await.unwrap();
    println!("{report:?}");
    assert!(report.moves >= 10, "too few moves to mean anything: {report:?}");
    assert!(report.carried_back >= 1, "no move was aborted after its destination served: {report:?}");
    assert!(report.operations > 1_000, "{report:?}");
    assert!(
        report.check.is_linearizable(),
        "history {} is not linearizable: {:?}",
        history.display(),
        report.check
    );
    assert_eq!(report.lost_writes, 0);
}

/// Whether the checker flags a violation in one of three fulva-only stress
/// runs (seeds 1 to 3, no aborts) set up by `trap`: each run is random, so a
/// few independent runs guard against a scheduling accident hiding the bug.
async fn caught_in_three_runs(trap: impl Fn(&mut StressConfig)) -> bool {
    for attempt in 1..=3u64 {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StressConfig::quick(dir.path().join("history.jsonl"));
        config.abort_share = 0.0;
        config.seed = attempt;
        // Every trap is in what fulva's destination serves during the pull.
        config.strategies = vec![fulva_proto::Strategy::Fulva];
        trap(&mut config);
        if !stress::run(config).await.unwrap().check.violations.is_empty() {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_deletes_without_tombstones() {
    // Caught in every run so far.
    let caught = caught_in_three_runs(|config| {
        config.node.trap_no_tombstones = true;
        config.moves = 25;
    })
    .await;
    assert!(caught, "trap 3 went unnoticed in three runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_a_destination_absent_taken_as_final() {
    // A read reaching the destination before the key was pulled sees "absent".
    let caught = caught_in_three_runs(|config| {
        config.client_traps.destination_absent_is_final = true;
        config.moves = 25;
    })
    .await;
    assert!(caught, "a destination's 'absent' taken as final went unnoticed in three runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_learned_keys_kept_across_moves() {
    // A key learned in one move is read from its next move's destination
    // alone, before that destination has pulled it.
    let caught = caught_in_three_runs(|config| {
        config.client_traps.learned_keys_outlive_moves = true;
        config.moves = 25;
    })
    .await;
    assert!(caught, "learned keys kept across moves went unnoticed in three runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_a_hot_batch_that_moves_the_cursor() {
    // One hot key shipped ahead: the cursor jumps past it, so the cold keys
    // below it are read from the destination alone before they arrive.
    let caught = caught_in_three_runs(|config| {
        config.node.trap_hot_batch_moves_cursor = true;
        config.hot_keys = 1;
        // A slow pass keeps the cold keys the cursor jumped over away longer,
        // and few, wide shards hold several of the clients' keys each.
        config.move_rate_limit = 200_000;
        config.max_shards = 3;
        config.moves = 25;
        // A client's write of a cold key to the destination closes the
        // window for that key: with half the operations writes, a run missed
        // the bug two times in three; with 24 keys, 95% reads, every one of
        // six runs flagged 2 to 7 violations (and none with the trap off).
        config.keys = 24;
        config.read_share = 0.95;
    })
    .await;
    assert!(caught, "a hot batch moving the cursor went unnoticed in three runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_progress_published_before_apply() {
    // The bug shows only when a read lands between a batch's cursor and its apply.
    let caught = caught_in_three_runs(|config| {
        config.node.trap_cursor_before_apply = true;
        // Small batches, so many cursor steps open the trap's window.
        config.node.migration_batch_bytes = 2 * 1024;
        config.moves = 60;
        // The clients' keys must arrive in the hash-order pass, not ahead of
        // it as hot keys (with them shipped first no run flagged anything).
        // A client's write to the destination closes the window for its
        // key, so reads dominate: 24 keys, 95% reads flagged 5 to 10
        // violations in each of six runs, none with the trap off.
        config.hot_keys = 0;
        config.keys = 24;
        config.read_share = 0.95;
    })
    .await;
    assert!(caught, "trap 1 went unnoticed in three runs");
}
