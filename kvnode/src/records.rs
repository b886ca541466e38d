//! At-most-once completion records (after RIFL, SOSP 2015).
//!
//! Every write carries the client's id and a sequence number, plus `ack`: the
//! client promises it will never again send a sequence number below `ack`.
//! The node remembers the outcome of each write at or above the client's ack
//! floor, answers a retry from that record instead of applying it again, and
//! refuses (`Stale`) anything below the floor — so a delayed duplicate of an
//! old write can never overwrite a newer one. Records of a client unheard of
//! for `ttl` are dropped; a duplicate delayed longer than that is the one case
//! not covered (the default TTL is far beyond any retry schedule).
//!
//! A record is kept per (seq, key hash, operation), not per seq alone: a
//! frame carrying another client's id and seq for a different key or
//! operation (a spoofed datagram, a buggy client) is a different write, and
//! is never answered from the record of the genuine one, so it cannot make
//! that write come back `ok` unapplied. A frame whose ack is above its own
//! seq is refused: a client's ack is its oldest unfinished write, which the
//! write it sends is at most.

use fulva_proto::Status;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Outcome of a completed write, replayed to retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Status replied.
    pub status: Status,
    /// Version written.
    pub version: u64,
}

/// What to do with an arriving write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// First time seen: apply it, then call [`CompletionTable::finish`].
    Apply,
    /// Already applied: reply with this.
    Replay(Completion),
    /// A copy is being applied right now: drop this one (the client retries).
    InProgress,
    /// Below the client's ack floor: never apply.
    Stale,
    /// The frame's ack is above its own seq: no client sends that.
    BadAck,
}

/// Which write a record is for, beyond its seq: the key's hash and whether
/// it deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WriteKind {
    /// Hash of the written key.
    pub hash: u64,
    /// A delete (else a put).
    pub delete: bool,
}

#[derive(Clone, Copy, Debug)]
enum Record {
    InProgress,
    /// Completed write.
    Done(Completion),
}

/// A record as handed from a move's source to its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MovedRecord {
    /// Client.
    pub client: u64,
    /// Write sequence number.
    pub seq: u64,
    /// Outcome.
    pub completion: Completion,
    /// Hash of the written key.
    pub hash: u64,
    /// Whether the write was a delete.
    pub delete: bool,
}

struct ClientRecords {
    ack: u64,
    records: HashMap<(u64, WriteKind), Record>,
    last_seen: Instant,
}

const SHARDS: usize = 64;

/// Records one client may hold above its ack floor (a client has at most
/// this many writes unfinished; the oldest records go beyond it).
pub const MAX_RECORDS_PER_CLIENT: usize = 4096;

/// Completion records of every client, sharded by client id.
pub struct CompletionTable {
    shards: Box<[Mutex<HashMap<u64, ClientRecords>>]>,
    ttl: Duration,
    /// Trap: records keyed by seq alone (what a write was is not checked).
    key_blind: bool,
    /// Most clients per shard; beyond it the least recently heard is dropped.
    clients_per_shard: usize,
    /// Clients dropped to stay within the bound.
    shed_clients: AtomicU64,
    /// Records dropped because one client held too many.
    shed_records: AtomicU64,
}

impl CompletionTable {
    /// A table that forgets clients idle for `ttl`.
    pub fn new(ttl: Duration) -> CompletionTable {
        CompletionTable::with_trap(ttl, false)
    }

    /// A table that, with `key_blind`, keys records by seq alone (the trap
    /// `trap_records_ignore_key`: a write is answered from the record of any
    /// write with the same client and seq).
    pub fn with_trap(ttl: Duration, key_blind: bool) -> CompletionTable {
        CompletionTable {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            ttl,
            key_blind,
            clients_per_shard: usize::MAX,
            shed_clients: AtomicU64::new(0),
            shed_records: AtomicU64::new(0),
        }
    }

    /// Keeps the records of at most about `max_clients` clients (unbounded
    /// unless set; a node sets `--max-clients`): past it,
    /// a new client displaces the least recently heard one (counted in
    /// [`CompletionTable::take_shed`]). Its records and ack floor go, so a
    /// duplicate of one of its old writes delayed past that could apply; the
    /// bound keeps memory and the freeze's handover bounded.
    pub fn with_max_clients(mut self, max_clients: usize) -> CompletionTable {
        self.clients_per_shard = max_clients.div_ceil(SHARDS).max(1);
        self
    }

    /// Clients and records dropped to stay within the bounds since the last call.
    pub fn take_shed(&self) -> (u64, u64) {
        (self.shed_clients.swap(0, Ordering::Relaxed), self.shed_records.swap(0, Ordering::Relaxed))
    }

    fn slot(&self, seq: u64, kind: WriteKind) -> (u64, WriteKind) {
        if self.key_blind {
            (seq, WriteKind { hash: 0, delete: false })
        } else {
            (seq, kind)
        }
    }

    fn shard(&self, client: u64) -> &Mutex<HashMap<u64, ClientRecords>> {
        &self.shards[(client.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SHARDS]
    }

    /// Decides what to do with write `seq` (a `kind` write) of `client`, given the client's `ack`.
    pub fn admit(&self, client: u64, seq: u64, ack: u64, kind: WriteKind) -> Admission {
        if ack > seq && !self.key_blind {
            return Admission::BadAck;
        }
        let slot = self.slot(seq, kind);
        let mut shard = self.shard(client).lock();
        if !shard.contains_key(&client) && shard.len() >= self.clients_per_shard {
            let oldest = shard.iter().min_by_key(|(_, c)| c.last_seen).map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                shard.remove(&oldest);
                self.shed_clients.fetch_add(1, Ordering::Relaxed);
            }
        }
        let entry = shard.entry(client).or_insert_with(|| ClientRecords {
            ack: 0,
            records: HashMap::new(),
            last_seen: Instant::now(),
        });
        entry.last_seen = Instant::now();
        if ack > entry.ack {
            entry.ack = ack;
            entry.records.retain(|(s, _), _| *s >= ack);
        }
        if seq < entry.ack {
            return Admission::Stale;
        }
        match entry.records.get(&slot) {
            Some(Record::Done(c)) => Admission::Replay(*c),
            Some(Record::InProgress) => Admission::InProgress,
            None => {
                if entry.records.len() >= MAX_RECORDS_PER_CLIENT {
                    let oldest = entry.records.keys().min_by_key(|(s, _)| *s).copied();
                    if let Some(oldest) = oldest {
                        entry.records.remove(&oldest);
                        self.shed_records.fetch_add(1, Ordering::Relaxed);
                    }
                }
                entry.records.insert(slot, Record::InProgress);
                Admission::Apply
            }
        }
    }

    /// The recorded outcome of write `seq` (a `kind` write) of `client`, if it completed here.
    pub fn lookup(&self, client: u64, seq: u64, kind: WriteKind) -> Option<Completion> {
        let shard = self.shard(client).lock();
        match shard.get(&client)?.records.get(&self.slot(seq, kind))? {
            Record::Done(c) => Some(*c),
            Record::InProgress => None,
        }
    }

    /// Records the outcome of a write admitted with [`Admission::Apply`].
    pub fn finish(&self, client: u64, seq: u64, kind: WriteKind, completion: Completion) {
        let slot = self.slot(seq, kind);
        let mut shard = self.shard(client).lock();
        if let Some(entry) = shard.get_mut(&client) {
            if seq >= entry.ack {
                entry.records.insert(slot, Record::Done(completion));
            }
        }
    }

    /// Completed records of writes to keys in `range`, and every client's ack floor.
    pub fn export(&self, range: fulva_proto::HashRange) -> (Vec<MovedRecord>, Vec<(u64, u64)>) {
        let mut records = Vec::new();
        let mut acks = Vec::new();
        for shard in self.shards.iter() {
            for (client, entry) in shard.lock().iter() {
                acks.push((*client, entry.ack));
                for ((seq, kind), record) in &entry.records {
                    if let Record::Done(completion) = record {
                        if range.contains(kind.hash) {
                            records.push(MovedRecord {
                                client: *client,
                                seq: *seq,
                                completion: *completion,
                                hash: kind.hash,
                                delete: kind.delete,
                            });
                        }
                    }
                }
            }
        }
        (records, acks)
    }

    /// Installs records and ack floors handed over by a move's source.
    pub fn import(&self, records: &[MovedRecord], acks: &[(u64, u64)]) {
        let now = Instant::now();
        let fresh = || ClientRecords { ack: 0, records: HashMap::new(), last_seen: now };
        for &(client, ack) in acks {
            let mut shard = self.shard(client).lock();
            let entry = shard.entry(client).or_insert_with(fresh);
            if ack > entry.ack {
                entry.ack = ack;
                entry.records.retain(|(s, _), _| *s >= ack);
            }
        }
        for r in records {
            let slot = self.slot(r.seq, WriteKind { hash: r.hash, delete: r.delete });
            let mut shard = self.shard(r.client).lock();
            let entry = shard.entry(r.client).or_insert_with(fresh);
            if r.seq >= entry.ack {
                entry.records.entry(slot).or_insert(Record::Done(r.completion));
            }
        }
    }

    /// Drops clients idle longer than the TTL; returns how many clients remain.
    pub fn expire(&self) -> usize {
        let now = Instant::now();
        self.shards
            .iter()
            .map(|s| {
                let mut shard = s.lock();
                shard.retain(|_, c| now.duration_since(c.last_seen) < self.ttl);
                shard.len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DONE: Completion = Completion { status: Status::Ok, version: 9 };
    const K1: WriteKind = WriteKind { hash: 11, delete: false };
    const K2: WriteKind = WriteKind { hash: 22, delete: false };

    #[test]
    fn retries_replay_and_old_duplicates_are_stale() {
        let t = CompletionTable::new(Duration::from_secs(60));
        assert_eq!(t.admit(1, 1, 1, K1), Admission::Apply);
        assert_eq!(t.admit(1, 1, 1, K1), Admission::InProgress);
        t.finish(1, 1, K1, DONE);
        assert_eq!(t.admit(1, 1, 1, K1), Admission::Replay(DONE));
        // The client acknowledged seq 1 (ack = 2): its record goes, and a late copy is stale.
        assert_eq!(t.admit(1, 2, 2, K1), Admission::Apply);
        assert_eq!(t.admit(1, 1, 1, K1), Admission::Stale);
        // Other clients are independent.
        assert_eq!(t.admit(2, 1, 1, K1), Admission::Apply);
    }

    #[test]
    fn a_write_with_another_key_or_op_is_never_answered_from_the_record() {
        let t = CompletionTable::new(Duration::from_secs(60));
        // A forged PUT k2 with the client's (id, seq) comes first ...
        assert_eq!(t.admit(1, 7, 7, K2), Admission::Apply);
        t.finish(1, 7, K2, DONE);
        // ... the client's own PUT k1 with that (id, seq) is applied, not replayed;
        assert_eq!(t.admit(1, 7, 7, K1), Admission::Apply);
        t.finish(1, 7, K1, Completion { status: Status::Ok, version: 10 });
        // and its retry replays its own record.
        assert_eq!(t.lookup(1, 7, K1), Some(Completion { status: Status::Ok, version: 10 }));
        // A delete of k1 with that (id, seq) is another write too.
        assert_eq!(t.admit(1, 7, 7, WriteKind { delete: true, ..K1 }), Admission::Apply);
        // An ack above the frame's own seq is refused and moves nothing.
        assert_eq!(t.admit(1, 8, 1 << 62, K1), Admission::BadAck);
        assert_eq!(t.admit(1, 8, 8, K1), Admission::Apply);
    }

    #[test]
    fn the_trap_answers_a_different_write_from_the_record() {
        let t = CompletionTable::with_trap(Duration::from_secs(60), true);
        assert_eq!(t.admit(1, 7, 7, K2), Admission::Apply);
        t.finish(1, 7, K2, DONE);
        assert_eq!(t.admit(1, 7, 7, K1), Admission::Replay(DONE));
    }

    #[test]
    fn records_move_with_their_kind() {
        let from = CompletionTable::new(Duration::from_secs(60));
        from.admit(1, 7, 7, K1);
        from.finish(1, 7, K1, DONE);
        let (records, acks) = from.export(fulva_proto::HashRange::FULL);
        assert!(!records[0].delete);
        let to = CompletionTable::new(Duration::from_secs(60));
        to.import(&records, &acks);
        assert_eq!(to.admit(1, 7, 7, K1), Admission::Replay(DONE));
        assert_eq!(to.admit(1, 7, 7, K2), Admission::Apply);
    }

    #[test]
    fn a_node_keeps_a_bounded_number_of_clients_and_records() {
        let t = CompletionTable::new(Duration::from_secs(60)).with_max_clients(640);
        for client in 0..200_000u64 {
            t.admit(client, 1, 1, K1);
        }
        let kept = t.expire();
        assert!(kept <= 640, "{kept} clients kept");
        let (clients, _) = t.take_shed();
        assert_eq!(clients, 200_000 - kept as u64, "every dropped client is counted");
        // The handover of a range carries only what is kept.
        let (_, acks) = t.export(fulva_proto::HashRange::FULL);
        assert_eq!(acks.len(), kept);
        // One client with writes that never finish keeps at most the bound.
        for seq in 1..=(MAX_RECORDS_PER_CLIENT as u64 + 10) {
            t.admit(7_000_000, seq, 1, K1);
        }
        assert_eq!(t.take_shed(), (1, 10));
    }

    #[test]
    fn idle_clients_expire() {
        let t = CompletionTable::new(Duration::ZERO);
        t.admit(5, 1, 1, K1);
        assert_eq!(t.expire(), 0);
    }
}
