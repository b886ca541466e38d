//! The source's side of a pull: which batches it sends (the range's hottest
//! keys first when asked, then the range in hash order), over gRPC or the
//! TCP transfer stream.

use super::cpu::{CpuSink, Metered};
use crate::handler::Handler;
use crate::metrics::Side;
use crate::store::Object;
use bytes::Bytes;
use fulva_proto::grpc::{MigratedObject, RangeBatch};
use fulva_proto::transfer::{self, BatchEncoder, BatchKind, Hello, HelloReply, TransferError};
use fulva_proto::HashRange;
use fulva_tls::{Conn, PeerInfo, Role};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

type Objects = Vec<(u64, Bytes, Object)>;

/// The batches of one pull, produced one at a time: the objects are
/// gathered under each stripe's lock as reference-counted `Bytes` and
/// encoded by the caller outside it.
struct SourcePass {
    handler: Arc<Handler>,
    range: HashRange,
    from: u64,
    min_version: u64,
    batch_bytes: usize,
    hot: std::vec::IntoIter<Objects>,
    ended: bool,
}

impl SourcePass {
    /// The pass `request` asks for, with its hot set: the heat sketch's top
    /// keys in the range, each looked up. Built inline (2-3 ms for 4,096
    /// keys of 200,000 on an idle core): on a blocking thread, under load,
    /// the hot set reached the destination 40-60 ms later and dual reads
    /// lasted that much longer.
    fn new(handler: Arc<Handler>, request: &Hello) -> SourcePass {
        let range = request.range;
        let batch_bytes = (request.batch_bytes as usize).clamp(1024, 4 * 1024 * 1024);
        let hot = if request.hot_keys > 0 && request.from <= range.first {
            // The hottest keys first, so dual reads end for most traffic.
            let hashes = handler.heat.hottest(range, request.hot_keys as usize);
            chunk_by_bytes(handler.store.objects_of(&hashes, request.min_version), batch_bytes)
        } else {
            Vec::new()
        };
        SourcePass {
            handler,
            range,
            from: request.from,
            min_version: request.min_version,
            batch_bytes,
            hot: hot.into_iter(),
            ended: false,
        }
    }

    /// The next batch and what it is; `None` after the last.
    fn next_batch(&mut self) -> Option<(Objects, BatchKind, u64)> {
        if self.ended {
            return None;
        }
        if let Some(objects) = self.hot.next() {
            return Some((objects, BatchKind::Hot, 0));
        }
        let (objects, next, last) =
            self.handler.store.scan_batch(self.range, self.from, self.batch_bytes, self.min_version);
        self.from = next;
        self.ended = last;
        Some((objects, if last { BatchKind::Last } else { BatchKind::Scan }, next))
    }
}

/// The gRPC `PullRange` stream of `request`'s batches (the coordinator's
/// relay, and destinations set to pull over gRPC).
pub fn range_batches(
    handler: Arc<Handler>,
    request: &Hello,
) -> tokio::sync::mpsc::Receiver<Result<RangeBatch, tonic::Status>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let cpu: Arc<dyn CpuSink> = Arc::new(handler.metrics.migration_cpu(Side::Source));
    let mut pass = SourcePass::new(handler, request);
    let from = request.from;
    let send = async move {
        while let Some((objects, kind, next)) = pass.next_batch() {
            let batch = RangeBatch {
                objects: objects.into_iter().map(migrated_object).collect(),
                next_cursor: if kind == BatchKind::Hot { from } else { next },
                last: kind == BatchKind::Last,
                hot: kind == BatchKind::Hot,
            };
            if tx.send(Ok(batch)).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::spawn(Metered::new(send, vec![cpu]));
    rx
}

/// An object as the gRPC calls carry it.
pub fn migrated_object((hash, key, object): (u64, Bytes, Object)) -> MigratedObject {
    MigratedObject {
        key,
        hash,
        version: object.version,
        tombstone: object.value.is_none(),
        value: object.value.unwrap_or_default(),
    }
}

/// Splits `objects` into runs of about `max_bytes` of keys and values each.
fn chunk_by_bytes(objects: Objects, max_bytes: usize) -> Vec<Objects> {
    let mut chunks = Vec::new();
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for item in objects {
        bytes += item.1.len() + item.2.value.as_ref().map_or(0, Bytes::len);
        chunk.push(item);
        if bytes >= max_bytes {
            chunks.push(std::mem::take(&mut chunk));
            bytes = 0;
        }
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

/// How long a connection may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the source waits, after its last batch, for the destination to
/// close (closing first, with credits unread, could reset the connection
/// before the last batch is read).
const LINGER: Duration = Duration::from_secs(10);

/// Serves the TCP transfer stream on `connections` (past their TLS
/// handshake): each one is one pull of a range this node serves. Runs until
/// `shutdown` is cancelled.
pub async fn serve_transfers(
    mut connections: fulva_tls::Incoming,
    handler: Arc<Handler>,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = connections.next() => match accepted {
                Some(Ok(stream)) => stream,
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "transfer listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                None => return,
            },
        };
        let peer = stream.peer().clone();
        let (handler, token) = (handler.clone(), shutdown.clone());
        let cpu: Arc<dyn CpuSink> = Arc::new(handler.metrics.migration_cpu(Side::Source));
        tokio::spawn(async move {
            tokio::select! {
                () = token.cancelled() => {}
                sent = Metered::new(send_range(stream, handler.clone()), vec![cpu]) => match sent {
                    Ok(range) => tracing::debug!(%peer, %range, "range sent"),
                    Err(err) if err.is_connection() => tracing::info!(%peer, error = %err, "transfer cut"),
                    // A pull racing an abort or a finished move: the puller is told why.
                    Err(err @ TransferError::Refused(_)) => tracing::info!(%peer, error = %err, "transfer refused"),
                    Err(err) => tracing::warn!(%peer, error = %err, "transfer stream broke the protocol"),
                },
            }
        });
    }
}

/// Why `peer` may not pull `range`, if it may not: only the destination the
/// move names (and the coordinator) may. Without TLS nobody is checked.
pub fn unauthorized(handler: &Handler, peer: &PeerInfo, range: &HashRange) -> Option<String> {
    let destination = handler.ownership.destination_of(range);
    if peer.is(Role::Coordinator) || destination.is_some_and(|d| peer.is(Role::Node(d))) {
        return None;
    }
    if handler.traps.any_node_may_pull && peer.name().is_some_and(|n| n.starts_with("node-")) {
        return None;
    }
    tracing::warn!(%peer, %range, "pull refused: the caller is not the move's destination");
    Some(match destination {
        Some(d) => format!("{peer} may not pull range {range}: its move goes to node {d}"),
        None => format!("{peer} may not pull range {range}: no move of it is under way"),
    })
}

/// One pull over the transfer stream: the hello, the answer, then batches
/// against the destination's credits, the last one, and the linger.
async fn send_range(mut stream: Conn, handler: Arc<Handler>) -> Result<HashRange, TransferError> {
    let io = |e: std::io::Error| TransferError::Io(e.to_string());
    let hello = tokio::time::timeout(HELLO_TIMEOUT, transfer::read_hello(&mut stream))
        .await
        .map_err(|_| TransferError::Io("no hello within 5 s".into()))?;
    let hello = match hello {
        Ok(hello) => hello,
        Err(err) => {
            let refusal = HelloReply { node: handler.node_id, refusal: Some(err.to_string()) };
            let _ = stream.write_all(&refusal.encode()).await;
            return Err(err);
        }
    };
    let refusal = if let Some(why) = unauthorized(&handler, stream.peer(), &hello.range) {
        Some(why)
    } else if hello.source != handler.node_id {
        Some(format!("this is node {}, not node {}", handler.node_id, hello.source))
    } else if !handler.ownership.ranges().iter().any(|r| r.covers(&hello.range)) {
        Some(format!("range {} is not served here", hello.range))
    } else {
        None
    };
    let reply = HelloReply { node: handler.node_id, refusal: refusal.clone() };
    stream.write_all(&reply.encode()).await.map_err(io)?;
    if let Some(why) = refusal {
        return Err(TransferError::Refused(why));
    }
    // Credits are read only while the source waits for them, so one task
    // reads and writes the stream in turn: no split halves (and no lock
    // between them) are needed.
    let mut credits = u32::from(hello.window);
    let mut pass = SourcePass::new(handler, &hello);
    let mut encoder = BatchEncoder::new();
    while let Some((objects, kind, next)) = pass.next_batch() {
        while credits == 0 {
            credits += transfer::read_credit(&mut stream).await?;
        }
        encoder.begin();
        for (hash, key, object) in &objects {
            encoder.push(*hash, object.version, key, object.value.as_deref());
        }
        drop(objects);
        stream.write_all(encoder.finish(kind, next)).await.map_err(io)?;
        credits -= 1;
    }
    stream.shutdown().await.map_err(io)?;
    // Read until the destination closes: what it still sends is credits.
    let mut sink = [0u8; 256];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    Ok(hello.range)
}
