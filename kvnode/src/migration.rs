//! The destination side of a live move (strategy `fulva`).
//!
//! The destination takes writes for the moving range from the moment it is
//! activated, with versions above the source's highest, and pulls the range's
//! objects from the source in hash order. Each pulled object is applied with
//! "higher version wins" under its key's lock, so an old copy never replaces a
//! newer write or tombstone. The progress cursor (every hash below it is
//! applied) is published only after a batch is applied, and rides on every
//! reply for the range so clients read from the destination alone where the
//! cursor covers the key and from both nodes elsewhere.

use crate::handler::Handler;
use crate::store::Object;
use bytes::Bytes;
use fulva_proto::grpc::node_control_client::NodeControlClient;
use fulva_proto::grpc::{MigrationStatusResponse, PullRangeRequest};
use fulva_proto::{HashRange, MigrationProgress, NodeId, Strategy};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Attempts to resume a pull after the stream from the source fails.
const PULL_ATTEMPTS: u32 = 20;

/// Behaviours that re-create bugs of the paper's code, for proving that the
/// tests catch them. Never enable outside tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrapSwitches {
    /// Trap 1: publish the cursor when a batch arrives, before it is applied.
    pub cursor_before_apply: bool,
    /// Trap 3: deletes at a move's destination leave no tombstone.
    pub no_tombstones: bool,
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
    active: AtomicBool,
    cursor: AtomicU64,
    done: AtomicBool,
    objects_applied: AtomicU64,
    bytes_applied: AtomicU64,
    objects_total: AtomicU64,
    bytes_total: AtomicU64,
    rate_limit: AtomicU64,
    started: Mutex<Option<Instant>>,
    finished: Mutex<Option<Instant>>,
    error: Mutex<Option<String>>,
    cancel: CancellationToken,
}

impl IncomingMove {
    /// A move of `range` from `source`, prepared but not active.
    pub fn new(
        range: HashRange,
        source: NodeId,
        source_control_addr: String,
        strategy: Strategy,
    ) -> IncomingMove {
        IncomingMove {
            range,
            source,
            source_control_addr,
            strategy,
            active: AtomicBool::new(false),
            cursor: AtomicU64::new(range.first),
            done: AtomicBool::new(false),
            objects_applied: AtomicU64::new(0),
            bytes_applied: AtomicU64::new(0),
            objects_total: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
            rate_limit: AtomicU64::new(0),
            started: Mutex::new(None),
            finished: Mutex::new(None),
            error: Mutex::new(None),
            cancel: CancellationToken::new(),
        }
    }

    /// Whether the destination takes requests for the range yet.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Whether every object of the range has been applied.
    #[inline]
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
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
            error: self.error.lock().clone().unwrap_or_default(),
            rate_limit_bytes_per_sec: self.rate_limit.load(Ordering::Acquire),
        }
    }

    /// Activates the move: requests are served and the pull starts.
    pub fn activate(&self, objects_total: u64, bytes_total: u64, rate_limit: u64) {
        self.objects_total.store(objects_total, Ordering::Release);
        self.bytes_total.store(bytes_total, Ordering::Release);
        self.rate_limit.store(rate_limit, Ordering::Release);
        *self.started.lock() = Some(Instant::now());
        self.active.store(true, Ordering::Release);
    }

    fn publish_cursor(&self, cursor: u64) {
        self.cursor.fetch_max(cursor, Ordering::AcqRel);
    }
}

/// Pulls the range from its source and applies it, until done or cancelled.
pub async fn pull(handler: Arc<Handler>, mv: Arc<IncomingMove>) {
    let mut attempts = 0;
    let mut limiter = RateLimiter::new();
    loop {
        if mv.cancel.is_cancelled() {
            return;
        }
        match pull_once(&handler, &mv, &mut limiter).await {
            Ok(()) => {
                *mv.finished.lock() = Some(Instant::now());
                tracing::info!(range = %mv.range, objects = mv.objects_applied.load(Ordering::Relaxed), "range moved in");
                return;
            }
            Err(err) => {
                attempts += 1;
                tracing::warn!(range = %mv.range, error = %err, attempts, "pull from the source failed; resuming");
                if attempts >= PULL_ATTEMPTS {
                    *mv.error.lock() = Some(err);
                    return;
                }
                tokio::select! {
                    () = mv.cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(50 * u64::from(attempts))) => {}
                }
            }
        }
    }
}

async fn pull_once(handler: &Handler, mv: &IncomingMove, limiter: &mut RateLimiter) -> Result<(), String> {
    let mut client = NodeControlClient::connect(format!("http://{}", mv.source_control_addr))
        .await
        .map_err(|e| format!("connect to source {}: {e}", mv.source_control_addr))?;
    let from = mv.cursor.load(Ordering::Acquire);
    let request = PullRangeRequest {
        range: Some(mv.range.into()),
        from_hash: from,
        batch_bytes: handler.migration_batch_bytes,
    };
    let mut stream =
        client.pull_range(request).await.map_err(|s| format!("pull: {}", s.message()))?.into_inner();
    let traps = handler.traps;
    loop {
        let batch = tokio::select! {
            () = mv.cancel.cancelled() => return Err("cancelled".into()),
            batch = stream.message() => batch.map_err(|s| format!("stream: {}", s.message()))?,
        };
        let Some(batch) = batch else { return Err("stream ended before the last batch".into()) };
        if traps.cursor_before_apply {
            mv.publish_cursor(batch.next_cursor);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut bytes = 0u64;
        for object in &batch.objects {
            bytes += (object.key.len() + object.value.len()) as u64;
            let value = (!object.tombstone).then(|| Bytes::copy_from_slice(&object.value));
            handler.apply_migrated(object.hash, &object.key, Object { version: object.version, value });
        }
        mv.objects_applied.fetch_add(batch.objects.len() as u64, Ordering::AcqRel);
        mv.bytes_applied.fetch_add(bytes, Ordering::AcqRel);
        // Trap 1 avoided: the cursor moves only after the batch is applied.
        if batch.last {
            mv.publish_cursor(mv.range.last);
            mv.done.store(true, Ordering::Release);
            return Ok(());
        }
        mv.publish_cursor(batch.next_cursor);
        limiter.pace(bytes, mv.rate_limit.load(Ordering::Acquire)).await;
    }
}

/// Paces a byte stream to a limit that may change at any time.
struct RateLimiter {
    window_start: Instant,
    window_bytes: u64,
}

impl RateLimiter {
    fn new() -> RateLimiter {
        RateLimiter { window_start: Instant::now(), window_bytes: 0 }
    }

    async fn pace(&mut self, bytes: u64, limit: u64) {
        if limit == 0 {
            self.window_start = Instant::now();
            self.window_bytes = 0;
            return;
        }
        self.window_bytes += bytes;
        let due = Duration::from_secs_f64(self.window_bytes as f64 / limit as f64);
        let elapsed = self.window_start.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
        // Short windows so a new limit takes effect within about a second.
        if self.window_start.elapsed() > Duration::from_secs(1) {
            self.window_start = Instant::now();
            self.window_bytes = 0;
        }
    }
}
