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

use fulva_proto::Status;
use parking_lot::Mutex;
use std::collections::HashMap;
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
}

#[derive(Clone, Copy, Debug)]
enum Record {
    InProgress,
    /// Completed write and the hash of its key (records move with their range).
    Done(Completion, u64),
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
}

struct ClientRecords {
    ack: u64,
    records: HashMap<u64, Record>,
    last_seen: Instant,
}

const SHARDS: usize = 64;

/// Completion records of every client, sharded by client id.
pub struct CompletionTable {
    shards: Box<[Mutex<HashMap<u64, ClientRecords>>]>,
    ttl: Duration,
}

impl CompletionTable {
    /// A table that forgets clients idle for `ttl`.
    pub fn new(ttl: Duration) -> CompletionTable {
        CompletionTable { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(), ttl }
    }

    fn shard(&self, client: u64) -> &Mutex<HashMap<u64, ClientRecords>> {
        &self.shards[(client.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SHARDS]
    }

    /// Decides what to do with write `seq` of `client`, given the client's `ack`.
    pub fn admit(&self, client: u64, seq: u64, ack: u64) -> Admission {
        let mut shard = self.shard(client).lock();
        let entry = shard.entry(client).or_insert_with(|| ClientRecords {
            ack: 0,
            records: HashMap::new(),
            last_seen: Instant::now(),
        });
        entry.last_seen = Instant::now();
        if ack > entry.ack {
            entry.ack = ack;
            entry.records.retain(|s, _| *s >= ack);
        }
        if seq < entry.ack {
            return Admission::Stale;
        }
        match entry.records.get(&seq) {
            Some(Record::Done(c, _)) => Admission::Replay(*c),
            Some(Record::InProgress) => Admission::InProgress,
            None => {
                entry.records.insert(seq, Record::InProgress);
                Admission::Apply
            }
        }
    }

    /// The recorded outcome of write `seq` of `client`, if it completed here.
    pub fn lookup(&self, client: u64, seq: u64) -> Option<Completion> {
        let shard = self.shard(client).lock();
        match shard.get(&client)?.records.get(&seq)? {
            Record::Done(c, _) => Some(*c),
            Record::InProgress => None,
        }
    }

    /// Records the outcome of a write admitted with [`Admission::Apply`].
    pub fn finish(&self, client: u64, seq: u64, completion: Completion, hash: u64) {
        let mut shard = self.shard(client).lock();
        if let Some(entry) = shard.get_mut(&client) {
            if seq >= entry.ack {
                entry.records.insert(seq, Record::Done(completion, hash));
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
                for (seq, record) in &entry.records {
                    if let Record::Done(completion, hash) = record {
                        if range.contains(*hash) {
                            records.push(MovedRecord {
                                client: *client,
                                seq: *seq,
                                completion: *completion,
                                hash: *hash,
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
                entry.records.retain(|s, _| *s >= ack);
            }
        }
        for r in records {
            let mut shard = self.shard(r.client).lock();
            let entry = shard.entry(r.client).or_insert_with(fresh);
            if r.seq >= entry.ack {
                entry.records.entry(r.seq).or_insert(Record::Done(r.completion, r.hash));
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

    #[test]
    fn retries_replay_and_old_duplicates_are_stale() {
        let t = CompletionTable::new(Duration::from_secs(60));
        assert_eq!(t.admit(1, 1, 1), Admission::Apply);
        assert_eq!(t.admit(1, 1, 1), Admission::InProgress);
        t.finish(1, 1, DONE, 0);
        assert_eq!(t.admit(1, 1, 1), Admission::Replay(DONE));
        // The client acknowledged seq 1 (ack = 2): its record goes, and a late copy is stale.
        assert_eq!(t.admit(1, 2, 2), Admission::Apply);
        assert_eq!(t.admit(1, 1, 1), Admission::Stale);
        // Other clients are independent.
        assert_eq!(t.admit(2, 1, 1), Admission::Apply);
    }

    #[test]
    fn idle_clients_expire() {
        let t = CompletionTable::new(Duration::ZERO);
        t.admit(5, 1, 1);
        assert_eq!(t.expire(), 0);
    }
}
