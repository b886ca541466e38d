//! Following a move: the destination's progress, polled until the pass is
//! done, and whose fault it is when it does not move.

use super::MoveOptions;
use crate::coordinator::{Coordinator, CoordinatorError};
use crate::node_client::NodeClient;
use fulva_proto::grpc::{MigrationStatusRequest, MigrationStatusResponse, PullFailure};
use fulva_proto::{HashRange, NodeId};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

impl Coordinator {
    /// Whether `node` answers a stats call within `timeout` (tried once a
    /// second).
    pub(super) async fn answers(&self, node: NodeId, timeout: Duration) -> bool {
        let started = Instant::now();
        loop {
            if let Ok(mut client) = self.node_client(node).await {
                let call = client.get_stats(fulva_proto::grpc::GetStatsRequest {});
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), call).await {
                    return true;
                }
            }
            if started.elapsed() >= timeout {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Polls the destination until the pass is done. A destination silent
    /// for `options.node_timeout` is lost; when the pull fails or nothing is
    /// applied for `options.stall_timeout`, a source silent for the node
    /// timeout is lost, else the move failed (or stalled) and rolls back.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn wait_for_pass(
        &self,
        dest: &mut NodeClient,
        destination: NodeId,
        source: NodeId,
        range: HashRange,
        options: MoveOptions,
        abort: &CancellationToken,
        progress: &mut impl FnMut(&MigrationStatusResponse),
    ) -> Result<MigrationStatusResponse, CoordinatorError> {
        let mut silent_since: Option<Instant> = None;
        let mut last_progress = ((0u64, 0u64), Instant::now());
        loop {
            if abort.is_cancelled() {
                return Err(CoordinatorError::AbortRequested);
            }
            let call = dest.migration_status(MigrationStatusRequest { range: Some(range.into()) });
            let status = match tokio::time::timeout(options.node_timeout, call).await {
                Ok(Ok(status)) => status,
                Ok(Err(err)) if err.is_not_found() => return Err(err.into()),
                failed => {
                    let since = *silent_since.get_or_insert_with(Instant::now);
                    tracing::debug!(destination, ?failed, "no status from the destination");
                    if since.elapsed() >= options.node_timeout {
                        return Err(CoordinatorError::NodeLost {
                            node: destination,
                            seconds: since.elapsed().as_secs_f64(),
                        });
                    }
                    tokio::time::sleep(options.poll_interval.max(Duration::from_millis(100))).await;
                    continue;
                }
            };
            silent_since = None;
            progress(&status);
            if status.done {
                return Ok(status);
            }
            let moved = (status.cursor, status.bytes_applied);
            if moved != last_progress.0 {
                last_progress = (moved, Instant::now());
            }
            let stalled = last_progress.1.elapsed() >= options.stall_timeout;
            let failure = status.failure();
            if failure != PullFailure::None || stalled {
                // Whose fault? A source that does not answer is lost.
                if !self.answers(source, options.node_timeout).await {
                    return Err(CoordinatorError::NodeLost {
                        node: source,
                        seconds: options.node_timeout.as_secs_f64(),
                    });
                }
                if failure != PullFailure::None {
                    return Err(CoordinatorError::PullFailed {
                        range,
                        reason: failure,
                        detail: status.error,
                    });
                }
                return Err(CoordinatorError::Stalled {
                    range,
                    seconds: last_progress.1.elapsed().as_secs_f64(),
                });
            }
            tokio::select! {
                () = abort.cancelled() => {}
                () = tokio::time::sleep(options.poll_interval) => {}
            }
        }
    }
}
