//! Prometheus metrics of one node.
//!
//! Each node owns a registry (several nodes may share a process in a local
//! cluster). Label values come from fixed sets: ops, statuses, drop reasons,
//! and the hex bounds of the ranges the node serves.

use fulva_proto::{HashRange, Op, Status};
use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a datagram was dropped without a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than a header.
    TooShort = 0,
    /// Wrong magic number.
    BadMagic = 1,
    /// A duplicate of a write still being applied; the client will retry.
    InProgress = 2,
}

impl DropReason {
    const ALL: [&'static str; 3] = ["too_short", "bad_magic", "in_progress"];
}

const OPS: [Op; 4] = [Op::Get, Op::Put, Op::Delete, Op::MultiGet];
const STATUSES: [Status; 10] = [
    Status::Ok,
    Status::NotFound,
    Status::Redirect,
    Status::TooLarge,
    Status::Malformed,
    Status::UnknownOp,
    Status::Stale,
    Status::Retry,
    Status::UnsupportedVersion,
    Status::Internal,
];

/// The node's metric families, with handles for the hot path built up front.
pub struct NodeMetrics {
    registry: Registry,
    range_ops: IntCounterVec,
    range_read_bytes: IntCounterVec,
    range_written_bytes: IntCounterVec,
    range_objects: IntGaugeVec,
    range_stored_bytes: IntGaugeVec,
    latency: [Histogram; 4],
    replies: [IntCounter; 10],
    dropped: [IntCounter; 3],
    /// Current shard-map epoch known to the node.
    pub epoch: IntGauge,
    /// Clients with completion records.
    pub client_records: IntGauge,
    /// Clients and records dropped to keep the records table bounded, by what.
    pub client_records_shed: IntCounterVec,
    /// Connections to the control service or transfer stream refused in
    /// their TLS handshake (no certificate, another CA's, not TLS).
    pub tls_handshakes_refused: IntCounter,
    /// Retried writes answered from a completion record instead of applied again.
    pub write_replays: IntCounter,
    /// What the data path's reassembly of fragmented frames did, by outcome
    /// (completed, refused, expired, evicted).
    pub fragmented_frames: IntCounterVec,
    /// Moves coming into this node, by strategy.
    pub incoming_moves: IntGaugeVec,
    /// Key and value bytes a move's pull applied here, by strategy.
    pub migrated_bytes: IntCounterVec,
    /// Objects a move's pull applied here, by strategy.
    pub migrated_objects: IntCounterVec,
    /// Share of an incoming move's bytes applied (0 to 1), by range.
    pub migration_progress: prometheus::GaugeVec,
    migration_cpu: prometheus::CounterVec,
}

/// Which end of a move spent CPU on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Sending the range (the transfer stream's batches).
    Source,
    /// Pulling and applying it.
    Destination,
}

/// Metric handles of one served range.
pub struct RangeMetrics {
    label: String,
    ops: [IntCounter; 4],
    read_bytes: IntCounter,
    written_bytes: IntCounter,
    /// Objects (including tombstones) in the range.
    pub objects: IntGauge,
    /// Key and value bytes in the range.
    pub stored_bytes: IntGauge,
    /// Operations per equal sub-range, so a planner can split where the load is.
    buckets: Box<[AtomicU64; LOAD_BUCKETS]>,
    first: u64,
    /// `LOAD_BUCKETS * 2^64 / width`: a sub-range index is one multiply away.
    bucket_scale: u128,
}

/// Sub-ranges a range's load is counted in.
pub const LOAD_BUCKETS: usize = 16;

impl RangeMetrics {
    /// Counts one operation on a key with hash `hash` (inside the range).
    #[inline]
    pub fn count_op(&self, op: Op, hash: u64) {
        self.ops[op as usize - 1].inc();
        let offset = hash.wrapping_sub(self.first) as u128;
        let bucket = ((offset * self.bucket_scale) >> 64).min(LOAD_BUCKETS as u128 - 1) as usize;
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// Operations so far in each of the range's equal sub-ranges, lowest first.
    pub fn bucket_ops(&self) -> Vec<u64> {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect()
    }

    /// Counts value bytes returned by reads.
    #[inline]
    pub fn count_read_bytes(&self, n: usize) {
        self.read_bytes.inc_by(n as u64);
    }

    /// Counts key and value bytes written.
    #[inline]
    pub fn count_written_bytes(&self, n: usize) {
        self.written_bytes.inc_by(n as u64);
    }

    /// Operations of kind `op` so far.
    pub fn ops(&self, op: Op) -> u64 {
        self.ops[op as usize - 1].get()
    }
}

/// Metric label for a range: its bounds in hex.
pub fn range_label(range: HashRange) -> String {
    format!("{:016x}-{:016x}", range.first, range.last)
}

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry.register(Box::new(c.clone())).expect("metric names are unique");
    c
}

impl NodeMetrics {
    /// CPU time moves' tasks used on this node, on `side`.
    pub fn migration_cpu(&self, side: Side) -> prometheus::Counter {
        self.migration_cpu.with_label_values(&[match side {
            Side::Source => "source",
            Side::Destination => "destination",
        }])
    }

    /// Creates and registers every family.
    pub fn new() -> NodeMetrics {
        let registry = Registry::new();
        let range_ops = register(
            &registry,
            IntCounterVec::new(
                Opts::new("fulva_kvnode_range_ops_total", "Requests served, by range and op"),
                &["range", "op"],
            )
            .expect("valid metric"),
        );
        let range_read_bytes = register(
            &registry,
            IntCounterVec::new(
                Opts::new("fulva_kvnode_range_read_bytes_total", "Value bytes returned by reads"),
                &["range"],
            )
            .expect("valid metric"),
        );
        let range_written_bytes = register(
            &registry,
            IntCounterVec::new(
                Opts::new("fulva_kvnode_range_written_bytes_total", "Key and value bytes written"),
                &["range"],
            )
            .expect("valid metric"),
        );
        let range_objects = register(
            &registry,
            IntGaugeVec::new(Opts::new("fulva_kvnode_range_objects", "Objects stored, by range"), &["range"])
                .expect("valid metric"),
        );
        let range_stored_bytes = register(
            &registry,
            IntGaugeVec::new(
                Opts::new("fulva_kvnode_range_stored_bytes", "Key and value bytes stored, by range"),
                &["range"],
            )
            .expect("valid metric"),
        );
        let latency_vec = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "fulva_kvnode_request_duration_seconds",
                    "Time to execute a request inside the node",
                )
                .buckets(exponential_buckets(1e-6, 2.0, 18).expect("valid buckets")),
                &["op"],
            )
            .expect("valid metric"),
        );
        let replies_vec = register(
            &registry,
            IntCounterVec::new(
                Opts::new("fulva_kvnode_replies_total", "Replies sent, by status"),
                &["status"],
            )
            .expect("valid metric"),
        );
        let dropped_vec = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "fulva_kvnode_dropped_frames_total",
                    "Datagrams dropped without a reply, by reason",
                ),
                &["reason"],
            )
            .expect("valid metric"),
        );
        let epoch = register(
            &registry,
            IntGauge::new("fulva_kvnode_epoch", "Shard-map epoch known to the node").expect("valid metric"),
        );
        let client_records = register(
            &registry,
            IntGauge::new("fulva_kvnode_client_records", "Clients with at-most-once completion records")
                .expect("valid metric"),
        );
        let client_records_shed = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "fulva_kvnode_client_records_shed_total",
                    "At-most-once records dropped to keep the table bounded: least recently heard clients past --max-clients, a client's oldest records past 4096",
                ),
                &["what"],
            )
            .expect("valid metric"),
        );
        for what in ["clients", "records"] {
            client_records_shed.with_label_values(&[what]);
        }
        let tls_handshakes_refused = register(
            &registry,
            IntCounter::new(
                "fulva_kvnode_tls_handshakes_refused_total",
                "Connections to the control service or transfer stream refused in their TLS handshake: no certificate, one the cluster's CA did not sign, or not TLS",
            )
            .expect("valid metric"),
        );
        let fragmented_frames = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "fulva_kvnode_fragmented_frames_total",
                    "Frames larger than a datagram, by what reassembly made of them: completed; refused (a malformed fragment, one past --max-value-bytes, or at odds with its message); expired (a fragment missing for 2 s); evicted (to keep the memory held bounded)",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
        );
        for outcome in ["completed", "refused", "expired", "evicted"] {
            fragmented_frames.with_label_values(&[outcome]);
        }
        let write_replays = register(
            &registry,
            IntCounter::new(
                "fulva_kvnode_write_replays_total",
                "Retried writes answered from their completion record instead of applied again",
            )
            .expect("valid metric"),
        );
        let incoming_moves = register(
            &registry,
            IntGaugeVec::new(
                Opts::new("fulva_kvnode_incoming_moves", "Moves coming into this node"),
                &["strategy"],
            )
            .expect("valid metric"),
        );
        let migrated_bytes = register(
            &registry,
            IntCounterVec::new(
                Opts::new("fulva_kvnode_migrated_bytes_total", "Key and value bytes applied by moves' pulls"),
                &["strategy"],
            )
            .expect("valid metric"),
        );
        let migrated_objects = register(
            &registry,
            IntCounterVec::new(
                Opts::new("fulva_kvnode_migrated_objects_total", "Objects applied by moves' pulls"),
                &["strategy"],
            )
            .expect("valid metric"),
        );
        let migration_progress = register(
            &registry,
            prometheus::GaugeVec::new(
                Opts::new(
                    "fulva_kvnode_migration_progress_ratio",
                    "Share of an incoming move's bytes applied",
                ),
                &["range"],
            )
            .expect("valid metric"),
        );
        let migration_cpu = register(
            &registry,
            prometheus::CounterVec::new(
                Opts::new(
                    "fulva_kvnode_migration_cpu_seconds_total",
                    "CPU time moves' tasks used on this node (pulling and applying, or sending)",
                ),
                &["side"],
            )
            .expect("valid metric"),
        );
        NodeMetrics {
            migration_cpu,
            incoming_moves,
            migrated_bytes,
            migrated_objects,
            migration_progress,
            write_replays,
            latency: OPS.map(|op| latency_vec.with_label_values(&[op.name()])),
            replies: STATUSES.map(|s| replies_vec.with_label_values(&[s.name()])),
            dropped: DropReason::ALL.map(|r| dropped_vec.with_label_values(&[r])),
            registry,
            range_ops,
            range_read_bytes,
            range_written_bytes,
            range_objects,
            range_stored_bytes,
            epoch,
            client_records,
            client_records_shed,
            tls_handshakes_refused,
            fragmented_frames,
        }
    }

    /// Handles for a newly served range.
    pub fn range(&self, range: HashRange) -> RangeMetrics {
        let label = range_label(range);
        RangeMetrics {
            ops: OPS.map(|op| self.range_ops.with_label_values(&[label.as_str(), op.name()])),
            read_bytes: self.range_read_bytes.with_label_values(&[&label]),
            written_bytes: self.range_written_bytes.with_label_values(&[&label]),
            objects: self.range_objects.with_label_values(&[&label]),
            stored_bytes: self.range_stored_bytes.with_label_values(&[&label]),
            label,
            buckets: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
            first: range.first,
            // Ranges narrower than the bucket count get one hash per bucket.
            bucket_scale: ((LOAD_BUCKETS as u128) << 64).div_ceil(range.width()).min(1u128 << 64),
        }
    }

    /// Removes a range's series once the node no longer serves it.
    pub fn forget_range(&self, range: &RangeMetrics) {
        let label = range.label.as_str();
        for op in OPS {
            let _ = self.range_ops.remove_label_values(&[label, op.name()]);
        }
        let _ = self.range_read_bytes.remove_label_values(&[label]);
        let _ = self.range_written_bytes.remove_label_values(&[label]);
        let _ = self.range_objects.remove_label_values(&[label]);
        let _ = self.range_stored_bytes.remove_label_values(&[label]);
    }

    /// Records the execution time of one request.
    #[inline]
    pub fn observe_latency(&self, op: Op, seconds: f64) {
        self.latency[op as usize - 1].observe(seconds);
    }

    /// Counts one reply.
    #[inline]
    pub fn count_reply(&self, status: Status) {
        self.replies[status as usize].inc();
    }

    /// Adds what one receive loop's reassembler did since it was last asked.
    pub fn count_reassembly(&self, stats: fulva_proto::fragment::ReassemblyStats) {
        if stats == fulva_proto::fragment::ReassemblyStats::default() {
            return;
        }
        for (outcome, n) in [
            ("completed", stats.completed),
            ("refused", stats.refused),
            ("expired", stats.expired),
            ("evicted", stats.evicted),
        ] {
            if n > 0 {
                self.fragmented_frames.with_label_values(&[outcome]).inc_by(n);
            }
        }
    }

    /// Counts one dropped datagram.
    pub fn count_drop(&self, reason: DropReason) {
        self.dropped[reason as usize].inc();
    }

    /// Datagrams dropped so far, all reasons.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(IntCounter::get).sum()
    }

    /// Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail for well-formed families.
        let _ = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_land_in_the_sub_range_of_their_hash() {
        let metrics = NodeMetrics::new();
        let full = metrics.range(HashRange::FULL);
        full.count_op(Op::Get, 0);
        full.count_op(Op::Get, u64::MAX);
        full.count_op(Op::Put, 1 << 63);
        let mut expected = vec![0; LOAD_BUCKETS];
        expected[0] = 1;
        expected[8] = 1;
        expected[15] = 1;
        assert_eq!(full.bucket_ops(), expected);

        let part = HashRange::new(1000, 1000 + 160 - 1).unwrap();
        let m = metrics.range(part);
        for hash in part.first..=part.last {
            m.count_op(Op::Get, hash);
        }
        assert_eq!(m.bucket_ops(), vec![10; LOAD_BUCKETS], "equal sub-ranges get equal counts");
        // Narrower than the bucket count: one hash per bucket.
        let tiny = metrics.range(HashRange::new(5, 7).unwrap());
        tiny.count_op(Op::Get, 7);
        assert_eq!(tiny.bucket_ops()[2], 1);
    }
}
