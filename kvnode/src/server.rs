//! The data-path server loop: receive frames, execute them, send the replies.

use crate::handler::Handler;
use fulva_proto::fragment::Reassembler;
use fulva_proto::frame::MAX_DATAGRAM;
use fulva_proto::transport::{RecvBatch, SendBatch, Transport};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Most datagrams taken (and replies sent) per system call.
const BATCH: usize = 32;

/// Serves frames arriving on `transport` until `shutdown` is cancelled.
///
/// Run one per worker; each owns its transport (its own socket or queue).
/// Frames are taken in batches of whatever is ready, executed in order, and
/// the replies leave together.
pub async fn serve<T: Transport>(transport: T, handler: Arc<Handler>, shutdown: CancellationToken) {
    let mut incoming = RecvBatch::new(BATCH, MAX_DATAGRAM + 1);
    let mut replies = SendBatch::new();
    // Frames larger than a datagram come and go as fragments: the kernel
    // sends every datagram of one client socket to the same worker, so each
    // worker puts its own clients' frames back together.
    let mut reassembler = Reassembler::new(handler.reassembly_limits());
    let max_datagram = transport.max_datagram();
    let fragment_id: fn(&[u8]) -> u64 = if handler.traps.fragment_id_from_request {
        // The trap: the reply's request id (bytes 8..16), whatever it says.
        |reply| u64::from_le_bytes(reply[8..16].try_into().expect("a reply header is 24 bytes"))
    } else {
        fulva_proto::fragment::message_id
    };
    loop {
        let received = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            received = transport.recv_batch(&mut incoming) => received,
        };
        if let Err(err) = received {
            // ICMP errors from earlier sends surface here on some kernels; keep serving.
            tracing::debug!(error = %err, "data-path receive failed");
            continue;
        }
        for i in 0..incoming.len() {
            let (datagram, from) = incoming.get(i);
            if handler.handle_datagram(&mut reassembler, from, datagram, replies.next_buf(from)) {
                replies.fragment_last(max_datagram, fragment_id);
            } else {
                replies.pop();
            }
        }
        handler.metrics.count_reassembly(reassembler.take_stats());
        if !replies.is_empty() {
            if let Err(err) = transport.send_batch(&replies).await {
                tracing::debug!(error = %err, "data-path send failed");
            }
            // Cleared here, not before the next receive, so a large reply's
            // frame is not kept while the socket is idle.
            replies.clear();
            replies.release_beyond(BATCH);
        }
    }
}
