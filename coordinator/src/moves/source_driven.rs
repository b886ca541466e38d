//! The source-driven pass (RAMCloud's default, DrTM-B): copy while the
//! source serves, then lock and ship what changed. The lock window is
//! downtime for the range's keys, and the report says how long it was.

use super::{handover, Ends, Pass, Stage};
use crate::coordinator::{Coordinator, CoordinatorError};
use crate::node_client::NodeClient;
use fulva_proto::grpc::{
    BeginCopyRequest, FreezeRangeRequest, MigrationStatusResponse, StartMigrationRequest,
};
use std::time::Instant;

impl Coordinator {
    /// Source-driven: the destination copies while the source serves (deletes
    /// keep tombstones there); then the source locks the range (downtime:
    /// every request gets Retry), the final pass ships what changed since the
    /// copy began, and the caller hands the range over. Returns the final
    /// status and when the lock began.
    pub(super) async fn source_driven(
        &self,
        pass: &Pass<'_>,
        src: &mut NodeClient,
        dest: &mut NodeClient,
        stage: &mut Stage,
        progress: &mut impl FnMut(&MigrationStatusResponse),
    ) -> Result<(MigrationStatusResponse, Instant), CoordinatorError> {
        let Pass { ends, epoch, options, abort } = *pass;
        let Ends { range, source, destination } = ends;
        let r = Some(range.into());
        // Copy while the source serves (deletes keep tombstones there) ...
        *stage = Stage::SourceHeld;
        let copy = src.begin_copy(BeginCopyRequest { range: r, destination, epoch }).await?;
        dest.start_migration(StartMigrationRequest {
            range: r,
            objects_total: copy.objects,
            bytes_total: copy.bytes,
            epoch,
            rate_limit_bytes_per_sec: options.rate_limit_bytes_per_sec,
            serve: false,
            ..Default::default()
        })
        .await?;
        self.wait_for_pass(dest, destination, source, range, options, abort, progress).await?;
        // ... then lock the range (downtime: every request gets Retry),
        // ship what changed since the copy began, and hand over.
        let locked = Instant::now();
        let frozen =
            src.freeze_range(FreezeRangeRequest { range: r, destination, epoch, lock: true }).await?;
        dest.start_migration(StartMigrationRequest {
            serve: false,
            final_pass: true,
            min_version: copy.copy_from_version,
            ..handover(r, frozen, epoch)
        })
        .await?;
        let status = self.wait_for_pass(dest, destination, source, range, options, abort, progress).await?;
        Ok((status, locked))
    }
}
