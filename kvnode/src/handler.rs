//! Executes data-path requests: limits, ownership, at-most-once, store.

use crate::config::NodeConfig;
use crate::heat::HeatSketch;
use crate::metrics::{DropReason, NodeMetrics};
use crate::ownership::{IncomingMove, TrapSwitches};
use crate::ownership::{Ownership, Placement, RangeRole, ReadRule, WriteRule};
use crate::records::{Admission, Completion, CompletionTable, WriteKind};
use crate::store::{Object, SizeDelta, Store};
use bytes::Bytes;
use fulva_proto::frame::{dual_read_destination, RequestHeader, MAX_DATAGRAM};
use fulva_proto::transfer::TransferRecord;
use fulva_proto::{
    key_hash, FrameError, MigrationProgress, Op, Outcome, Reply, Request, RequestBody, Status, Strategy,
};
use std::sync::Arc;
use std::time::Instant;

/// Limits on what a request may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest key in bytes.
    pub max_key_bytes: usize,
    /// Largest value in bytes.
    pub max_value_bytes: usize,
}

impl Limits {
    /// The largest frame (request or reply) the data path carries: a key
    /// and a value at their limits, and the headers.
    pub fn max_frame_bytes(&self) -> usize {
        (self.max_key_bytes + self.max_value_bytes + 1024).max(MAX_DATAGRAM)
    }
}

/// Everything a node needs to answer requests; shared by all workers.
pub struct Handler {
    /// This node's id.
    pub node_id: u32,
    /// A random id chosen at start (never 0): a node that restarted reports a
    /// new one, so the coordinator knows it holds nothing it held before.
    pub incarnation: u64,
    /// The node's objects, striped by key hash.
    pub store: Store,
    /// Served ranges and epoch.
    pub ownership: Ownership,
    /// At-most-once records.
    pub records: CompletionTable,
    /// Metrics.
    pub metrics: NodeMetrics,
    /// Test-only switches that re-create known bugs.
    pub traps: TrapSwitches,
    /// Target size of a pulled migration batch.
    pub migration_batch_bytes: u32,
    /// How a move's destination pulls.
    pub migration_transfer: crate::config::MigrationTransfer,
    /// Sampled read heat, for shipping a moving range's hottest keys first.
    pub heat: HeatSketch,
    /// Set once the node was told to stop: it reports not ready while it
    /// serves what it still holds.
    pub stopping: std::sync::atomic::AtomicBool,
    /// The node's TLS (its certificate as server and as the client of
    /// another node's transfer); none when running `--insecure`.
    pub tls: Option<fulva_tls::Tls>,
    /// Whether a fulva destination pulls the keys its reads miss.
    fetch_on_miss: bool,
    limits: Limits,
}

/// A random, non-zero id for this start of the node (from the kernel's
/// random pool; the clock if that fails).
fn new_incarnation() -> u64 {
    let mut id = 0u64;
    // SAFETY: getrandom writes at most 8 bytes into the u64 it is given.
    let n = unsafe { libc::getrandom((&mut id as *mut u64).cast(), 8, 0) };
    if n != 8 {
        id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
    }
    id.max(1)
}

fn redirect(to: Option<u32>) -> Outcome {
    Outcome { redirect: to, ..Outcome::status(Status::Redirect) }
}

fn apply_delta(gauges: &crate::metrics::RangeMetrics, delta: SizeDelta) {
    if delta.objects != 0 {
        gauges.objects.add(delta.objects);
    }
    if delta.bytes != 0 {
        gauges.stored_bytes.add(delta.bytes);
    }
}

impl Handler {
    /// A handler configured from `config`, serving nothing yet.
    pub fn new(config: &NodeConfig) -> Handler {
        Handler {
            node_id: config.node_id,
            incarnation: new_incarnation(),
            store: Store::new(config.stripe_bits),
            ownership: Ownership::default(),
            records: CompletionTable::with_trap(config.client_record_ttl(), config.trap_records_ignore_key)
                .with_max_clients(config.max_clients),
            metrics: NodeMetrics::new(),
            traps: TrapSwitches {
                cursor_before_apply: config.trap_cursor_before_apply,
                no_tombstones: config.trap_no_tombstones,
                hot_batch_moves_cursor: config.trap_hot_batch_moves_cursor,
                any_node_may_pull: config.trap_any_node_may_pull,
                fragment_id_from_request: config.trap_fragment_id_from_request,
            },
            migration_batch_bytes: config.migration_batch_bytes,
            migration_transfer: config.migration_transfer,
            heat: HeatSketch::default(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            tls: None,
            fetch_on_miss: config.migration_fetch_on_miss,
            limits: Limits { max_key_bytes: config.max_key_bytes, max_value_bytes: config.max_value_bytes },
        }
    }

    /// The same handler with `tls` as its TLS.
    pub fn with_tls(mut self, tls: Option<fulva_tls::Tls>) -> Handler {
        self.tls = tls;
        self
    }

    /// The client side of this node's TLS, for pulls from other nodes.
    pub fn client_tls(&self) -> Option<&Arc<fulva_tls::ClientTls>> {
        self.tls.as_ref().map(|t| &t.client)
    }

    /// What the data path's reassembly may hold: frames up to the largest
    /// any node takes (8 MiB values), whatever this one's limit, so a value
    /// over it gets a TooLarge reply naming the limit rather than silence.
    pub fn reassembly_limits(&self) -> fulva_proto::fragment::ReassemblyLimits {
        fulva_proto::fragment::ReassemblyLimits::for_messages(fulva_proto::fragment::MAX_MESSAGE_LIMIT)
    }

    /// Takes one datagram from `from`: a whole frame is handled at once, a
    /// fragment goes to `reassembler` and its frame is handled once whole.
    /// Returns whether `out` holds a reply to send.
    pub fn handle_datagram(
        &self,
        reassembler: &mut fulva_proto::fragment::Reassembler,
        from: std::net::SocketAddr,
        datagram: &[u8],
        out: &mut Vec<u8>,
    ) -> bool {
        use fulva_proto::fragment::Accepted;
        match reassembler.accept(from, datagram) {
            Accepted::Whole(frame) => self.handle_frame(frame, out),
            Accepted::Complete(frame) => self.handle_frame(&frame, out),
            Accepted::Pending | Accepted::Refused => false,
        }
    }

    /// Decodes `frame`, executes it and appends the reply to `out`.
    /// Returns false when nothing should be sent (the frame was dropped).
    pub fn handle_frame(&self, frame: &[u8], out: &mut Vec<u8>) -> bool {
        let reply = match Request::decode(frame) {
            Ok(request) => self.execute(&request),
            Err(err) => self.reject(&err),
        };
        match reply {
            Some(mut reply) => {
                // A reply may be as large as the largest single value's (it
                // goes as fragments past one datagram): a multi-get whose
                // values add up to more is refused with TooLarge (the client
                // asks for the keys one by one), never encoded. Only a
                // multi-get can be too large (one value is bounded by
                // --max-value-bytes), so no other reply is sized twice.
                if reply.op == Op::MultiGet as u8 && reply.encoded_len() > self.limits.max_frame_bytes() {
                    reply = Reply::error(reply.op, reply.request_id, reply.epoch, Status::TooLarge);
                }
                self.metrics.count_reply(reply.status);
                reply.encode(out);
                true
            }
            None => false,
        }
    }

    fn reject(&self, err: &FrameError) -> Option<Reply> {
        match err.reply_to() {
            Some((status, request_id, op)) => {
                Some(Reply::error(op, request_id, self.ownership.epoch(), status))
            }
            None => {
                let reason = match err {
                    FrameError::BadMagic(_) => DropReason::BadMagic,
                    _ => DropReason::TooShort,
                };
                self.metrics.count_drop(reason);
                None
            }
        }
    }

    /// Executes one decoded request. `None` means drop it silently (a copy of
    /// the same write is being applied; the client's retry gets the record).
    pub fn execute(&self, request: &Request<'_>) -> Option<Reply> {
        let started = Instant::now();
        let op = request.body.op();
        let dual = dual_read_destination(request.header.flags);
        let sampled = HeatSketch::samples(request.header.request_id);
        let mut progress = None;
        let (status, outcomes) = match &request.body {
            RequestBody::Get { key } => {
                let outcome = self.read(key, Op::Get, dual, sampled, &mut progress);
                (outcome.status, vec![outcome])
            }
            RequestBody::MultiGet { keys } => (
                Status::Ok,
                keys.iter().map(|key| self.read(key, Op::MultiGet, dual, sampled, &mut progress)).collect(),
            ),
            RequestBody::Put { key, value } => {
                let outcome = self.write(&request.header, key, Some(value), op, &mut progress)?;
                (outcome.status, vec![outcome])
            }
            RequestBody::Delete { key } => {
                let outcome = self.write(&request.header, key, None, op, &mut progress)?;
                (outcome.status, vec![outcome])
            }
        };
        self.metrics.observe_latency(op, started.elapsed().as_secs_f64());
        Some(Reply {
            op: op as u8,
            status,
            request_id: request.header.request_id,
            epoch: self.ownership.epoch(),
            outcomes,
            progress,
        })
    }

    fn read(
        &self,
        key: &[u8],
        op: Op,
        dual: Option<u32>,
        sampled: bool,
        progress: &mut Option<MigrationProgress>,
    ) -> Outcome {
        if key.len() > self.limits.max_key_bytes {
            return Outcome::too_large(self.limits.max_key_bytes, self.limits.max_value_bytes);
        }
        let hash = key_hash(key);
        if sampled {
            self.heat.record(hash);
        }
        self.ownership.with_placement(hash, |placement| match placement {
            Placement::Served(range) => {
                // At a fulva destination, objects above this version were
                // pulled or written during the move: they are the newest.
                let mut held_above = None;
                let mut fulva_move = None;
                match range.role.read_rule(dual) {
                    ReadRule::Answer => {}
                    ReadRule::Retry => return Outcome::status(Status::Retry),
                    ReadRule::Redirect(to) => return redirect(to),
                    ReadRule::AnswerForMove(mv) => {
                        *progress = Some(mv.progress());
                        held_above = Some(mv.authority_floor());
                        fulva_move = Some(mv);
                    }
                    // A key not here yet is pulled from the source first; the
                    // client retries. A key held here is already the newest.
                    ReadRule::AnswerOrPullFirst(mv) => {
                        if !mv.covers(hash)
                            && !mv.is_fetched(key)
                            && !self.holds(hash, key, mv.authority_floor())
                        {
                            mv.request_fetch(key);
                            return Outcome::status(Status::Retry);
                        }
                    }
                }
                range.metrics.count_op(op, hash);
                match self.store.get(hash, key) {
                    Some(Object { version, value }) => {
                        if let Some(value) = &value {
                            range.metrics.count_read_bytes(value.len());
                        }
                        let held = held_above.is_some_and(|floor| version > floor);
                        Outcome::read(version, value, held)
                    }
                    None => {
                        // A fulva destination missing a key its cursor has
                        // not passed pulls it now, so the next read of it
                        // needs only this node.
                        if let Some(mv) = fulva_move {
                            if self.fetch_on_miss && !mv.covers(hash) {
                                mv.request_fetch(key);
                            }
                        }
                        Outcome::status(Status::NotFound)
                    }
                }
            }
            Placement::Elsewhere { redirect: to } => redirect(to),
        })
    }

    fn write(
        &self,
        header: &RequestHeader,
        key: &[u8],
        value: Option<&[u8]>,
        op: Op,
        progress: &mut Option<MigrationProgress>,
    ) -> Option<Outcome> {
        if key.len() > self.limits.max_key_bytes
            || value.is_some_and(|v| v.len() > self.limits.max_value_bytes)
        {
            return Some(Outcome::too_large(self.limits.max_key_bytes, self.limits.max_value_bytes));
        }
        let hash = key_hash(key);
        let tracked = header.seq != 0;
        let kind = WriteKind { hash, delete: value.is_none() };
        // A retry of a write applied here before the range left (or froze) is
        // answered from its record; only a never-applied write is redirected.
        let replayed = || {
            let done = tracked.then(|| self.records.lookup(header.client_id, header.seq, kind)).flatten()?;
            self.metrics.write_replays.inc();
            Some(Outcome::written(done.status, done.version))
        };
        let replay_or_redirect = |to: Option<u32>| Some(replayed().unwrap_or_else(|| redirect(to)));
        self.ownership.with_placement(hash, |placement| {
            let range = match placement {
                Placement::Elsewhere { redirect: to } => return replay_or_redirect(to),
                Placement::Served(range) => range,
            };
            let keep_tombstone = match range.role.write_rule() {
                WriteRule::Apply { keep_tombstone, incoming } => {
                    if let Some(mv) = incoming.filter(|mv| mv.strategy == Strategy::Fulva) {
                        *progress = Some(mv.progress());
                    }
                    keep_tombstone && !(incoming.is_some() && self.traps.no_tombstones)
                }
                WriteRule::ReplayOrRetry => {
                    return Some(replayed().unwrap_or(Outcome::status(Status::Retry)))
                }
                WriteRule::ReplayOrRedirect(to) => return replay_or_redirect(Some(to)),
                WriteRule::Retry => return Some(Outcome::status(Status::Retry)),
            };
            if tracked {
                match self.records.admit(header.client_id, header.seq, header.ack, kind) {
                    Admission::Apply => {}
                    Admission::Replay(done) => {
                        self.metrics.write_replays.inc();
                        return Some(Outcome::written(done.status, done.version));
                    }
                    Admission::Stale => return Some(Outcome::status(Status::Stale)),
                    Admission::BadAck => return Some(Outcome::status(Status::Malformed)),
                    Admission::InProgress => {
                        self.metrics.count_drop(DropReason::InProgress);
                        return None;
                    }
                }
            }
            range.metrics.count_op(op, hash);
            range.metrics.count_written_bytes(key.len() + value.map_or(0, <[u8]>::len));
            let result = self.store.write(hash, key, value.map(Bytes::copy_from_slice), keep_tombstone);
            apply_delta(&range.metrics, result.delta);
            let status = if value.is_none() && !result.existed { Status::NotFound } else { Status::Ok };
            if tracked {
                self.records.finish(
                    header.client_id,
                    header.seq,
                    kind,
                    Completion { status, version: result.version },
                );
            }
            Some(Outcome::written(status, result.version))
        })
    }

    /// Whether the store holds an object for `key` above `floor` (one that
    /// arrived during the move whose authority floor that is).
    fn holds(&self, hash: u64, key: &[u8], floor: u64) -> bool {
        self.store.get(hash, key).is_some_and(|o| o.version > floor)
    }

    /// Applies an object pulled from a move's source ("higher version wins").
    ///
    /// Only while the range is still coming in through `incoming`: once the
    /// move has finished here (tombstones purged) or the range went away, a
    /// late copy could bring back a deleted key, so it is dropped.
    pub fn apply_migrated(
        &self,
        incoming: &Arc<IncomingMove>,
        hash: u64,
        key: &[u8],
        object: Object,
    ) -> bool {
        let record = TransferRecord {
            hash,
            version: object.version,
            key: Bytes::copy_from_slice(key),
            value: object.value,
        };
        self.apply_migrated_records(incoming, &[record])
    }

    /// Applies pulled records of `incoming`'s range (in hash order for
    /// fewest locks), each with "higher version wins": a stripe slice at a
    /// time, with one ownership check and one stripe lock per slice. Stops
    /// and returns false if the range is no longer this move's here.
    pub fn apply_migrated_records(&self, incoming: &Arc<IncomingMove>, records: &[TransferRecord]) -> bool {
        let mut rest = records;
        while let Some(first) = rest.first() {
            let stripe = self.store.stripe_index(first.hash);
            let len =
                rest.iter().position(|r| self.store.stripe_index(r.hash) != stripe).unwrap_or(rest.len());
            let (slice, after) = rest.split_at(len);
            let applied = self.ownership.with_placement(first.hash, |placement| match placement {
                Placement::Served(range) if matches!(&range.role, RangeRole::Incoming(m) if Arc::ptr_eq(m, incoming)) => {
                    apply_delta(&range.metrics, self.store.apply_stripe_if_newer(slice));
                    true
                }
                _ => false,
            });
            if !applied {
                return false;
            }
            rest = after;
        }
        true
    }

    /// Sets the gauges of the served range equal to `range` from a scan.
    pub fn refresh_range_gauges_of(&self, range: fulva_proto::HashRange) {
        // Scan without the ownership lock: a waiting writer would stall the data path.
        let size = self.store.measure(range);
        self.ownership.for_each(|owned| {
            if owned.range == range {
                owned.metrics.objects.set(size.objects);
                owned.metrics.stored_bytes.set(size.bytes);
            }
        });
    }
}
