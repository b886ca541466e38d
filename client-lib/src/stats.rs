//! Client counters.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters kept by a client.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Datagrams sent again after a timeout.
    pub retransmits: AtomicU64,
    /// Redirect replies followed.
    pub redirects: AtomicU64,
    /// Shard maps fetched after a redirect.
    pub map_refreshes: AtomicU64,
    /// Calls or attempts that ran out of time.
    pub timeouts: AtomicU64,
    /// Replies that arrived after their call was answered or gave up.
    pub late_replies: AtomicU64,
    /// Datagrams that did not decode as replies.
    pub bad_replies: AtomicU64,
    /// Reads sent to both ends of a move (the source too, because the
    /// destination may not hold the key yet).
    pub dual_reads: AtomicU64,
    /// Reads of a moving range answered by its destination alone because it
    /// holds the key (a dual read that did not wait for the source, or a read
    /// of a learned key).
    pub held_reads: AtomicU64,
}

impl ClientStats {
    /// Reads one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
