//! The data-path server loop: receive a frame, execute it, send the reply.

use crate::handler::Handler;
use fulva_proto::frame::MAX_DATAGRAM;
use fulva_proto::transport::Transport;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Serves frames arriving on `transport` until `shutdown` is cancelled.
///
/// Run one per worker; each owns its transport (its own socket or queue).
pub async fn serve<T: Transport>(transport: T, handler: Arc<Handler>, shutdown: CancellationToken) {
    let mut frame = vec![0u8; MAX_DATAGRAM + 1];
    let mut reply = Vec::with_capacity(2048);
    loop {
        let received = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            received = transport.recv_from(&mut frame) => received,
        };
        let (len, from) = match received {
            Ok(r) => r,
            Err(err) => {
                // ICMP errors from earlier sends surface here on some kernels; keep serving.
                tracing::debug!(error = %err, "data-path receive failed");
                continue;
            }
        };
        reply.clear();
        if handler.handle_frame(&frame[..len], &mut reply) {
            if let Err(err) = transport.send_to(&reply, from).await {
                tracing::debug!(error = %err, peer = %from, "data-path send failed");
            }
        }
    }
}
