//! The pass of fulva and rocksteady: the destination serves the range from
//! the freeze on. The coordinator's steps are the same for both; they differ
//! at the nodes (fulva's clients read both ends until the cursor passes a
//! key, rocksteady's destination pulls a missing key on demand).

use super::{handover, Ends, Pass, Stage};
use crate::coordinator::{Coordinator, CoordinatorError};
use crate::node_client::NodeClient;
use fulva_proto::grpc::{FreezeRangeRequest, MigrationStatusResponse, StartMigrationRequest};
use fulva_proto::ShardState;

impl Coordinator {
    /// Fulva and rocksteady: the source freezes the range and hands over its
    /// highest version and completion records, the destination serves the
    /// range from then on (rocksteady's pulling missing keys on demand), the
    /// map shows the move, and the pass runs to its end. Returns the final status.
    pub(super) async fn destination_serves(
        &self,
        pass: &Pass<'_>,
        src: &mut NodeClient,
        dest: &mut NodeClient,
        stage: &mut Stage,
        progress: &mut impl FnMut(&MigrationStatusResponse),
    ) -> Result<MigrationStatusResponse, CoordinatorError> {
        let Pass { ends, epoch, options, abort } = *pass;
        let Ends { range, source, destination } = ends;
        let r = Some(range.into());
        let check_abort =
            || if abort.is_cancelled() { Err(CoordinatorError::AbortRequested) } else { Ok(()) };
        *stage = Stage::SourceHeld;
        let frozen =
            src.freeze_range(FreezeRangeRequest { range: r, destination, epoch, lock: false }).await?;
        check_abort()?;
        // From here on the destination may take writes: undoing the move
        // means carrying them back.
        *stage = Stage::DestinationServing { copied_up_to: frozen.max_version };
        dest.start_migration(StartMigrationRequest {
            objects_total: frozen.objects,
            bytes_total: frozen.bytes,
            rate_limit_bytes_per_sec: options.rate_limit_bytes_per_sec,
            serve: true,
            hot_keys: options.hot_keys,
            ..handover(r, frozen, epoch)
        })
        .await?;
        let migrating = self
            .set_shard(range, destination, ShardState::Migrating { source, strategy: options.strategy })
            .await?;
        self.broadcast_epoch(&migrating).await;
        tracing::info!(%range, source, destination, epoch = migrating.epoch, strategy = options.strategy.name(), "move started");
        self.wait_for_pass(dest, destination, source, range, options, abort, progress).await
    }
}
