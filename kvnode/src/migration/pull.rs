//! The destination's pull: connect to the source, take batches, apply each,
//! then publish its cursor; resume from the cursor after a cut.
//!
//! Two transfers carry the same batches: the TCP transfer stream
//! (`fulva_proto::transfer`, the default) and gRPC's `PullRange` (set with
//! `--migration-transfer grpc`, and the coordinator's relay).

use super::cpu::{CpuSink, Metered};
use super::rate::RateLimiter;
use crate::config::MigrationTransfer;
use crate::handler::Handler;
use crate::metrics::Side;
use crate::ownership::{IncomingMove, PullError};
use fulva_proto::grpc::node_control_client::NodeControlClient;
use fulva_proto::grpc::{PullRangeRequest, RangeBatch, TransferEndpointRequest};
use fulva_proto::transfer::{self, BatchKind, Hello, StreamCheck, TransferError, TransferRecord};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Attempts to resume a pull after the stream from the source fails.
const PULL_ATTEMPTS: u32 = 20;

/// Records applied between yields to the data path (the workers share these threads).
const APPLY_SLICE: usize = 256;

/// Batches in flight on the TCP transfer: more when unthrottled (to keep
/// the wire busy while a batch is applied), fewer under a rate limit (the
/// burst a limit lets through before pacing starts).
const WINDOW_UNLIMITED: u16 = 8;
const WINDOW_LIMITED: u16 = 2;

/// Pulls the range from its source and applies it, until done or cancelled.
pub async fn pull(handler: Arc<Handler>, mv: Arc<IncomingMove>) {
    let strategy = mv.strategy.name();
    let incoming = handler.metrics.incoming_moves.with_label_values(&[strategy]);
    incoming.inc();
    let sinks: Vec<Arc<dyn CpuSink>> =
        vec![mv.cpu_ns.clone(), Arc::new(handler.metrics.migration_cpu(Side::Destination))];
    Metered::new(pull_until_done(&handler, &mv), sinks).await;
    incoming.dec();
    let _ = handler.metrics.migration_progress.remove_label_values(&[&crate::metrics::range_label(mv.range)]);
}

async fn pull_until_done(handler: &Arc<Handler>, mv: &Arc<IncomingMove>) {
    let mut attempts = 0;
    let mut limiter = RateLimiter::new();
    loop {
        if mv.cancel.is_cancelled() {
            return;
        }
        let pulled = match handler.migration_transfer {
            MigrationTransfer::Tcp => pull_once_tcp(handler, mv, &mut limiter).await,
            MigrationTransfer::Grpc => pull_once_grpc(handler, mv, &mut limiter).await,
        };
        match pulled {
            Ok(()) => {
                tracing::info!(range = %mv.range, objects = mv.objects_applied.load(Ordering::Relaxed), "range moved in");
                return;
            }
            Err(_) if mv.cancel.is_cancelled() => return,
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

/// A gRPC client of the source's control service (showing this node's
/// certificate, and checking the source's). `window` bounds the
/// HTTP/2 flow-control windows (0: tonic's defaults).
pub(super) async fn control_client(
    handler: &Handler,
    mv: &IncomingMove,
    window: u32,
) -> Result<NodeControlClient<tonic::transport::Channel>, PullError> {
    let addr = &mv.source_control_addr;
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| PullError::BadAddress { addr: addr.clone(), detail: e.to_string() })?
        .connect_timeout(Duration::from_secs(2));
    if window > 0 {
        endpoint = endpoint
            .initial_stream_window_size(window)
            .initial_connection_window_size(window.saturating_mul(2));
    }
    let tls = handler.client_tls();
    let channel = fulva_tls::connect_channel(endpoint, tls, fulva_tls::Role::Node(mv.source))
        .await
        .map_err(|e| PullError::Unreachable { addr: addr.clone(), detail: e.to_string() })?;
    Ok(NodeControlClient::new(channel)
        .max_decoding_message_size(fulva_proto::MAX_CONTROL_MESSAGE)
        .max_encoding_message_size(fulva_proto::MAX_CONTROL_MESSAGE))
}

/// Where a pull (re)starts, and the hot keys to ask for: once, at the
/// range's start; a resumed pull goes on in hash order.
fn resume_point(mv: &IncomingMove) -> (u64, u32) {
    let from = mv.cursor();
    let hot_keys = if from == mv.range.first { mv.hot_keys.swap(0, Ordering::AcqRel) } else { 0 };
    (from, hot_keys)
}

/// One connection of the TCP transfer: the source's port from its control
/// service, then [`pull_from`] that port.
async fn pull_once_tcp(
    handler: &Handler,
    mv: &Arc<IncomingMove>,
    limiter: &mut RateLimiter,
) -> Result<(), PullError> {
    let mut control = control_client(handler, mv, 0).await?;
    let port = control
        .transfer_endpoint(TransferEndpointRequest {})
        .await
        .map_err(PullError::refused)?
        .into_inner()
        .port;
    let addr = transfer::transfer_addr(&mv.source_control_addr, port).ok_or_else(|| {
        PullError::BadAddress { addr: mv.source_control_addr.clone(), detail: "no port".into() }
    })?;
    pull_transfer(handler, mv, &addr, limiter).await
}

/// One connection of the TCP transfer to the source at `addr`: a hello,
/// then batches against credits until the last. Public so tests can put a
/// misbehaving source there.
pub async fn pull_from(handler: &Handler, mv: &Arc<IncomingMove>, addr: &str) -> Result<(), PullError> {
    let mut limiter = RateLimiter::new();
    metered(handler, mv, pull_transfer(handler, mv, addr, &mut limiter)).await
}

/// Runs `pull`, charging its CPU to the move and the node's destination meter.
async fn metered<T>(handler: &Handler, mv: &IncomingMove, pull: impl std::future::Future<Output = T>) -> T {
    let sinks: Vec<Arc<dyn CpuSink>> =
        vec![mv.cpu_ns.clone(), Arc::new(handler.metrics.migration_cpu(Side::Destination))];
    Metered::new(pull, sinks).await
}

async fn pull_transfer(
    handler: &Handler,
    mv: &Arc<IncomingMove>,
    addr: &str,
    limiter: &mut RateLimiter,
) -> Result<(), PullError> {
    let (from, hot_keys) = resume_point(mv);
    let min_version = mv.min_version.load(Ordering::Acquire);
    let limited = mv.rate_limit.load(Ordering::Acquire) > 0;
    let hello = Hello {
        destination: handler.node_id,
        source: mv.source,
        range: mv.range,
        from,
        min_version,
        hot_keys,
        batch_bytes: handler.migration_batch_bytes,
        window: if limited { WINDOW_LIMITED } else { WINDOW_UNLIMITED },
    };
    let connect = fulva_tls::connect_stream(addr, handler.client_tls(), fulva_tls::Role::Node(mv.source));
    let mut stream = transfer::open(connect, &hello).await.map_err(|err| match err {
        TransferError::Unreachable(detail) => PullError::Unreachable { addr: addr.to_string(), detail },
        err => PullError::transfer(err),
    })?;
    let mut check = StreamCheck::new(mv.range, from, min_version);
    loop {
        let batch = tokio::select! {
            () = mv.cancel.cancelled() => return Err(PullError::Cancelled),
            batch = check.read_batch(&mut stream) => batch.map_err(PullError::transfer)?,
        };
        if handler.traps.cursor_before_apply && batch.kind == BatchKind::Scan {
            mv.publish_cursor(batch.next_cursor);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (kind, wire_bytes) = (batch.kind, batch.wire_bytes);
        apply_records(handler, mv, batch.records, kind, batch.next_cursor).await;
        match kind {
            BatchKind::Last => return Ok(()),
            BatchKind::Hot => {}
            // Paced by what crossed the wire, so the limit holds there.
            BatchKind::Scan => limiter.pace(wire_bytes, mv.rate_limit.load(Ordering::Acquire)).await,
        }
        transfer::write_credit(&mut stream, 1).await.map_err(PullError::transfer)?;
    }
}

/// One gRPC `PullRange` stream.
async fn pull_once_grpc(
    handler: &Handler,
    mv: &Arc<IncomingMove>,
    limiter: &mut RateLimiter,
) -> Result<(), PullError> {
    // Small HTTP/2 windows: the source sends only as fast as this node
    // applies, so the rate limit holds on the wire too and a batch in flight
    // is all a lost source can take with it beyond what was applied.
    let window = (handler.migration_batch_bytes.saturating_mul(2)).max(65_535);
    let mut client = control_client(handler, mv, window).await?;
    let (from, hot_keys) = resume_point(mv);
    let request = PullRangeRequest {
        range: Some(mv.range.into()),
        from_hash: from,
        batch_bytes: handler.migration_batch_bytes,
        min_version: mv.min_version.load(Ordering::Acquire),
        hot_keys,
    };
    let mut stream = client.pull_range(request).await.map_err(PullError::refused)?.into_inner();
    loop {
        let batch = tokio::select! {
            () = mv.cancel.cancelled() => return Err(PullError::Cancelled),
            batch = stream.message() => batch.map_err(|s| PullError::StreamBroken(s.message().to_string()))?,
        };
        let Some(batch) = batch else { return Err(PullError::Truncated) };
        if handler.traps.cursor_before_apply && !batch.hot {
            mv.publish_cursor(batch.next_cursor);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let bytes = apply_batch(handler, mv, &batch).await;
        if batch.last && !batch.hot {
            return Ok(());
        }
        if !batch.hot {
            limiter.pace(bytes, mv.rate_limit.load(Ordering::Acquire)).await;
        }
    }
}

/// What a gRPC batch carries, as the transfer stream names it. A hot batch
/// never ends a pull, whatever its last flag says.
fn kind_of(batch: &RangeBatch) -> BatchKind {
    match (batch.hot, batch.last) {
        (true, _) => BatchKind::Hot,
        (false, true) => BatchKind::Last,
        (false, false) => BatchKind::Scan,
    }
}

/// Applies one gRPC batch of the range (pulled, or pushed by a relaying
/// coordinator) and then publishes its cursor, or marks the move done after
/// the last batch. Returns the bytes applied.
pub async fn apply_batch(handler: &Handler, mv: &Arc<IncomingMove>, batch: &RangeBatch) -> u64 {
    let records = batch
        .objects
        .iter()
        .map(|o| TransferRecord {
            hash: o.hash,
            version: o.version,
            key: o.key.clone(),
            value: (!o.tombstone).then(|| o.value.clone()),
        })
        .collect();
    apply_records(handler, mv, records, kind_of(batch), batch.next_cursor).await
}

/// Applies `records` a stripe slice at a time (one lock each), yielding to
/// the data path between slices, then publishes the cursor: only after the
/// batch is applied (trap 1 avoided). Hot keys arrive out of order: they are
/// held here, but cover nothing. Returns the bytes applied.
async fn apply_records(
    handler: &Handler,
    mv: &Arc<IncomingMove>,
    mut records: Vec<TransferRecord>,
    kind: BatchKind,
    next_cursor: u64,
) -> u64 {
    if kind == BatchKind::Hot {
        // In hash order, so keys of one stripe share a lock.
        records.sort_unstable_by_key(|r| r.hash);
    }
    let bytes: u64 =
        records.iter().map(|r| (r.key.len() + r.value.as_ref().map_or(0, |v| v.len())) as u64).sum();
    for (i, slice) in records.chunks(APPLY_SLICE).enumerate() {
        if i > 0 {
            tokio::task::yield_now().await;
        }
        handler.apply_migrated_records(mv, slice);
    }
    let count = records.len() as u64;
    mv.objects_applied.fetch_add(count, Ordering::AcqRel);
    let applied = mv.bytes_applied.fetch_add(bytes, Ordering::AcqRel) + bytes;
    let strategy = mv.strategy.name();
    handler.metrics.migrated_bytes.with_label_values(&[strategy]).inc_by(bytes);
    handler.metrics.migrated_objects.with_label_values(&[strategy]).inc_by(count);
    let total = mv.bytes_total.load(Ordering::Acquire);
    if total > 0 {
        handler
            .metrics
            .migration_progress
            .with_label_values(&[&crate::metrics::range_label(mv.range)])
            .set((applied as f64 / total as f64).min(1.0));
    }
    match kind {
        BatchKind::Hot if handler.traps.hot_batch_moves_cursor => {
            if let Some(highest) = records.last() {
                mv.publish_cursor(highest.hash.saturating_add(1));
            }
        }
        BatchKind::Hot => {}
        BatchKind::Last => {
            mv.publish_cursor(mv.range.last);
            mv.complete_pass();
        }
        BatchKind::Scan => mv.publish_cursor(next_cursor),
    }
    bytes
}

/// The cursor of a move (every hash below it is applied).
pub fn cursor_of(mv: &IncomingMove) -> u64 {
    mv.cursor()
}

/// Why a pull failed, from what the source's transfer said.
impl PullError {
    /// A gRPC error of the source: a lost source is a broken stream, any
    /// other answer a refusal.
    fn refused(status: tonic::Status) -> PullError {
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                PullError::StreamBroken(status.message().to_string())
            }
            _ => PullError::Refused(status.message().to_string()),
        }
    }

    /// An error of the TCP transfer stream: a cut connection is a broken
    /// stream, a protocol breach a bad stream.
    fn transfer(err: TransferError) -> PullError {
        match err {
            TransferError::Truncated => PullError::Truncated,
            TransferError::Io(detail) => PullError::StreamBroken(detail),
            TransferError::Refused(why) => PullError::Refused(why),
            other => PullError::BadStream(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grpc_batch_maps_to_a_transfer_kind() {
        let batch = |hot, last| RangeBatch { hot, last, ..RangeBatch::default() };
        assert_eq!(kind_of(&batch(false, false)), BatchKind::Scan);
        assert_eq!(kind_of(&batch(false, true)), BatchKind::Last);
        assert_eq!(kind_of(&batch(true, true)), BatchKind::Hot, "a hot batch never ends a pull");
    }

    #[test]
    fn a_failed_transfer_maps_to_the_failure_the_status_call_reports() {
        use fulva_proto::grpc::PullFailure;
        // A refused pull whose status says the source is gone counts as a broken stream.
        let gone = PullError::refused(tonic::Status::unavailable("connection reset"));
        assert_eq!(gone.failure(), PullFailure::StreamBroken);
        assert_eq!(PullError::refused(tonic::Status::not_found("no range")).failure(), PullFailure::Refused);
        // A transfer stream that breaks the protocol is a bad stream; a cut connection is not.
        let wrong = PullError::transfer(TransferError::WrongPeer { expected: 1, found: 2 });
        assert_eq!(wrong.failure(), PullFailure::BadStream);
        assert!(wrong.to_string().contains("node 2"), "{wrong}");
        assert_eq!(PullError::transfer(TransferError::Truncated).failure(), PullFailure::Truncated);
        assert_eq!(
            PullError::transfer(TransferError::Io("reset".into())).failure(),
            PullFailure::StreamBroken
        );
    }
}
