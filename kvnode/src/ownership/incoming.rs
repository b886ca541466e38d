//! A move coming into this node: what it has applied (the cursor), its
//! phase, its settings, and why its pull failed. The data path reads it to
//! decide what the destination may answer alone; the migration engine
//! (`crate::migration`) drives it.

use super::phase::SharedPhase;
pub use super::phase::{MoveEvent, MovePhase};
use bytes::Bytes;
use fulva_proto::grpc::{MigrationStatusResponse, PullFailure};
use fulva_proto::{HashRange, MigrationProgress, NodeId, Strategy};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Most keys waiting for a priority pull at once; reads beyond it ask later.
pub const MAX_PENDING_FETCHES: usize = 16_384;

/// Behaviours that re-create bugs of the paper's code, for proving that the
/// tests catch them. Never enable outside tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrapSwitches {
    /// Trap 1: publish the cursor when a batch arrives, before it is applied.
    pub cursor_before_apply: bool,
    /// Trap 3: deletes at a move's destination leave no tombstone.
    pub no_tombstones: bool,
    /// A batch of hot keys (shipped out of hash order) moves the cursor past
    /// its highest hash, as if every key below it had arrived.
    pub hot_batch_moves_cursor: bool,
    /// Any node the CA signed may pull any range (the check of the move's
    /// destination is skipped), so one node can read another's data.
    pub any_node_may_pull: bool,
    /// A reply's fragments are numbered by the request they answer instead
    /// of by their content, so two different answers to one request (a
    /// retransmitted read, a write in between) mix in the client.
    pub fragment_id_from_request: bool,
}

/// State of a range moving into this node.
pub struct IncomingMove {
    /// The moving range.
    pub range: HashRange,
    /// Node it leaves.
    pub source: NodeId,
    /// Source's gRPC control address.
    pub source_control_addr: String,
    /// How it moves.
    pub strategy: Strategy,
    phase: SharedPhase,
    /// Held while a pass starts, so its settings are in place before the
    /// phase that publishes them.
    starting: Mutex<()>,
    cursor: AtomicU64,
    pub(crate) objects_applied: AtomicU64,
    pub(crate) bytes_applied: AtomicU64,
    objects_total: AtomicU64,
    pub(crate) bytes_total: AtomicU64,
    pub(crate) rate_limit: AtomicU64,
    /// CPU time the pull's task used here, ns.
    pub(crate) cpu_ns: Arc<AtomicU64>,
    started: Mutex<Option<Instant>>,
    finished: Mutex<Option<Instant>>,
    pub(crate) error: Mutex<Option<PullError>>,
    pub(crate) cancel: CancellationToken,
    /// Pull only objects above this version (a source-driven final pass, or
    /// taking back an aborted move: older objects never left this node).
    pub(crate) min_version: AtomicU64,
    /// Hottest keys to ask the source for before the hash-order pass.
    pub(crate) hot_keys: AtomicU32,
    /// Rocksteady: keys pulled on demand (present at the source or not).
    pub(crate) fetched: Mutex<HashSet<Bytes>>,
    /// Rocksteady: keys asked for and not yet fetched.
    pub(crate) requested: Mutex<HashSet<Bytes>>,
    fetch_tx: tokio::sync::mpsc::UnboundedSender<Bytes>,
    pub(crate) fetch_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Bytes>>>,
}

impl IncomingMove {
    /// A move of `range` from `source`, prepared but not active.
    pub fn new(
        range: HashRange,
        source: NodeId,
        source_control_addr: String,
        strategy: Strategy,
    ) -> IncomingMove {
        let (fetch_tx, fetch_rx) = tokio::sync::mpsc::unbounded_channel();
        IncomingMove {
            min_version: AtomicU64::new(0),
            hot_keys: AtomicU32::new(0),
            fetched: Mutex::new(HashSet::new()),
            requested: Mutex::new(HashSet::new()),
            fetch_tx,
            fetch_rx: Mutex::new(Some(fetch_rx)),
            range,
            source,
            source_control_addr,
            strategy,
            phase: SharedPhase::new(),
            starting: Mutex::new(()),
            cursor: AtomicU64::new(range.first),
            objects_applied: AtomicU64::new(0),
            bytes_applied: AtomicU64::new(0),
            objects_total: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
            rate_limit: AtomicU64::new(0),
            cpu_ns: Arc::new(AtomicU64::new(0)),
            started: Mutex::new(None),
            finished: Mutex::new(None),
            error: Mutex::new(None),
            cancel: CancellationToken::new(),
        }
    }

    /// Whether the destination takes requests for the range yet.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.phase.get().serves()
    }

    /// Whether every object of the range has been applied.
    #[inline]
    pub fn is_done(&self) -> bool {
        self.phase.get().complete()
    }

    /// Progress as carried in replies.
    #[inline]
    pub fn progress(&self) -> MigrationProgress {
        MigrationProgress {
            range: self.range,
            cursor: self.cursor.load(Ordering::Acquire),
            source: self.source,
            done: self.is_done(),
        }
    }

    /// Whether `hash` is covered: its objects, if any, are applied here.
    #[inline]
    pub fn covers(&self, hash: u64) -> bool {
        self.is_done() || hash < self.cursor.load(Ordering::Acquire)
    }

    /// Objects of the range above this version arrived during this move
    /// (pulled from the source or written here), so none is older than the
    /// source's copy: 0 for a move out of a frozen source, the original
    /// move's version ceiling when this node takes back a range it kept a
    /// copy of (that old copy may be older than the writes it is pulling).
    #[inline]
    pub fn authority_floor(&self) -> u64 {
        self.min_version.load(Ordering::Acquire)
    }

    /// Stops the pull (the range was dropped or the move aborted).
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Changes the bandwidth limit (bytes/s, 0 = none) of the running pull.
    pub fn set_rate_limit(&self, bytes_per_sec: u64) {
        self.rate_limit.store(bytes_per_sec, Ordering::Release);
    }

    /// Status for the coordinator.
    pub fn status(&self) -> MigrationStatusResponse {
        let started = *self.started.lock();
        let finished = *self.finished.lock();
        let elapsed = match (started, finished) {
            (Some(s), Some(f)) => f.duration_since(s),
            (Some(s), None) => s.elapsed(),
            _ => Duration::ZERO,
        };
        let bytes_applied = self.bytes_applied.load(Ordering::Acquire);
        let bytes_total = self.bytes_total.load(Ordering::Acquire);
        let rate = bytes_applied as f64 / elapsed.as_secs_f64().max(1e-3);
        let eta = if self.is_done() {
            0.0
        } else {
            bytes_total.saturating_sub(bytes_applied) as f64 / rate.max(1.0)
        };
        let error = self.error.lock().clone();
        MigrationStatusResponse {
            active: self.is_active(),
            done: self.is_done(),
            cursor: self.cursor.load(Ordering::Acquire),
            objects_applied: self.objects_applied.load(Ordering::Acquire),
            bytes_applied,
            objects_total: self.objects_total.load(Ordering::Acquire),
            bytes_total,
            elapsed_seconds: elapsed.as_secs_f64(),
            eta_seconds: eta,
            error: error.as_ref().map(ToString::to_string).unwrap_or_default(),
            failure: error.as_ref().map_or(PullFailure::None, PullError::failure) as i32,
            cpu_seconds: self.cpu_ns.load(Ordering::Relaxed) as f64 / 1e9,
            rate_limit_bytes_per_sec: self.rate_limit.load(Ordering::Acquire),
        }
    }

    /// The move's phase.
    pub fn phase(&self) -> MovePhase {
        self.phase.get()
    }

    /// Starts a pass of the pull; false if that pass cannot start now (it
    /// already started, or the pass before it has not ended).
    pub fn begin_pass(&self, pass: PassStart) -> bool {
        let PassStart { objects_total, bytes_total, rate_limit, serve, final_pass, min_version, hot_keys } =
            pass;
        let event = match (serve, final_pass) {
            (true, _) => MoveEvent::BeginServing,
            (false, true) => MoveEvent::BeginFinal,
            (false, false) => MoveEvent::BeginCopy,
        };
        let _starting = self.starting.lock();
        if self.phase.get().after(event).is_none() {
            return false;
        }
        if objects_total > 0 || bytes_total > 0 {
            self.objects_total.store(objects_total, Ordering::Release);
            self.bytes_total.store(bytes_total, Ordering::Release);
        }
        self.rate_limit.store(rate_limit, Ordering::Release);
        self.started.lock().get_or_insert_with(Instant::now);
        self.min_version.store(min_version, Ordering::Release);
        self.hot_keys.store(hot_keys, Ordering::Release);
        if event == MoveEvent::BeginFinal {
            // The final pass starts over at the range's beginning.
            self.cursor.store(self.range.first, Ordering::Release);
            *self.finished.lock() = None;
        }
        // Published last: the data path sees the new phase with its settings.
        self.phase.apply(event).is_some()
    }

    /// Marks the pass in force complete (its last batch applied).
    pub(crate) fn complete_pass(&self) {
        if self.phase.apply(MoveEvent::LastBatchApplied).is_some() {
            self.finished.lock().get_or_insert_with(Instant::now);
        }
    }

    /// Rocksteady: whether `key` was pulled on demand.
    pub fn is_fetched(&self, key: &[u8]) -> bool {
        self.fetched.lock().contains(key)
    }

    /// Asks for a priority pull of `key` (once while it is pending; at most
    /// [`MAX_PENDING_FETCHES`] pending). Rocksteady answers the read `Retry`
    /// until the key is here; fulva answers at once (the client reads both
    /// ends) and pulls the key so later reads find it held here.
    pub fn request_fetch(&self, key: &[u8]) {
        let mut requested = self.requested.lock();
        if requested.len() >= MAX_PENDING_FETCHES || requested.contains(key) {
            return;
        }
        let key = Bytes::copy_from_slice(key);
        requested.insert(key.clone());
        let _ = self.fetch_tx.send(key);
    }

    /// The cursor: every hash below it is applied here.
    pub fn cursor(&self) -> u64 {
        self.cursor.load(Ordering::Acquire)
    }

    /// Moves the cursor to `cursor` once everything below it is applied
    /// (it only grows within a pass).
    pub(crate) fn publish_cursor(&self, cursor: u64) {
        self.cursor.fetch_max(cursor, Ordering::AcqRel);
    }
}

/// How a pass of a move starts (from the coordinator's `StartMigration`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassStart {
    /// Objects in the range at the source (for progress).
    pub objects_total: u64,
    /// Bytes in the range at the source (for progress).
    pub bytes_total: u64,
    /// Bandwidth limit in bytes/s (0 = none).
    pub rate_limit: u64,
    /// Serve the range here from now on (fulva, rocksteady).
    pub serve: bool,
    /// The final pass of a source-driven move: starts over at the range's beginning.
    pub final_pass: bool,
    /// Pull only objects above this version.
    pub min_version: u64,
    /// Ask the source for this many of the range's hottest keys before the
    /// hash-order pass (not paced: a bounded burst that ends dual reads for
    /// most traffic at once).
    pub hot_keys: u32,
}

/// Why a destination's pull from its source failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PullError {
    /// The source's control address does not parse.
    #[error("source address {addr}: {detail}")]
    BadAddress {
        /// The address.
        addr: String,
        /// The parser's words.
        detail: String,
    },
    /// The source could not be reached.
    #[error("connect to source {addr}: {detail}")]
    Unreachable {
        /// The source's control address.
        addr: String,
        /// The transport's words.
        detail: String,
    },
    /// The source refused the pull.
    #[error("pull: {0}")]
    Refused(String),
    /// The stream broke mid-range.
    #[error("stream: {0}")]
    StreamBroken(String),
    /// The stream ended before its last batch.
    #[error("stream ended before the last batch")]
    Truncated,
    /// The source's transfer stream broke the protocol (or another node
    /// answered); nothing of the offending batch was applied.
    #[error("transfer stream refused: {0}")]
    BadStream(String),
    /// The move was cancelled at this node.
    #[error("cancelled")]
    Cancelled,
}

impl PullError {
    /// The reason as the status call reports it.
    pub fn failure(&self) -> PullFailure {
        match self {
            PullError::BadAddress { .. } => PullFailure::BadAddress,
            PullError::Unreachable { .. } => PullFailure::Unreachable,
            PullError::Refused(_) => PullFailure::Refused,
            PullError::StreamBroken(_) | PullError::Cancelled => PullFailure::StreamBroken,
            PullError::Truncated => PullFailure::Truncated,
            PullError::BadStream(_) => PullFailure::BadStream,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_pull_reports_its_reason_as_a_typed_failure_and_its_words() {
        let range = HashRange { first: 0, last: 1 << 40 };
        let mv = IncomingMove::new(range, 0, "127.0.0.1:1".into(), Strategy::Fulva);
        assert_eq!(mv.status().failure(), PullFailure::None, "no failure while the pull runs");
        assert!(mv.status().error.is_empty());
        let cases = [
            (PullError::BadAddress { addr: "x".into(), detail: "bad".into() }, PullFailure::BadAddress),
            (PullError::Unreachable { addr: "a".into(), detail: "refused".into() }, PullFailure::Unreachable),
            (PullError::Refused("range not frozen".into()), PullFailure::Refused),
            (PullError::StreamBroken("reset".into()), PullFailure::StreamBroken),
            (PullError::Truncated, PullFailure::Truncated),
            (PullError::BadStream("record 3: hash is not the key's hash".into()), PullFailure::BadStream),
        ];
        for (error, failure) in cases {
            *mv.error.lock() = Some(error.clone());
            let status = mv.status();
            assert_eq!(status.failure(), failure, "{error}");
            assert_eq!(status.error, error.to_string());
        }
    }
}
