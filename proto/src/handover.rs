//! A freeze's handover of completion records and ack floors, in chunks.
//!
//! A frozen source hands the destination every completion record of the
//! moving range and the ack floor of every client it knows: up to
//! `--max-clients` of them. `FreezeRange` streams them out of the source and
//! `StartMigration` streams them into the destination, [`CHUNK`] entries a
//! message, so no single gRPC message grows with the number of clients.

use crate::grpc::{ClientAck, CompletionRecord, FreezeRangeResponse, StartMigrationRequest};

/// Records (or ack floors) per message: about 40 bytes each, so a message
/// stays near 650 KB.
pub const CHUNK: usize = 16_384;

/// A message that carries records and ack floors besides its own fields.
pub trait Handover: Default {
    /// Its completion records.
    fn records(&mut self) -> &mut Vec<CompletionRecord>;
    /// Its ack floors.
    fn acks(&mut self) -> &mut Vec<ClientAck>;
}

impl Handover for FreezeRangeResponse {
    fn records(&mut self) -> &mut Vec<CompletionRecord> {
        &mut self.records
    }
    fn acks(&mut self) -> &mut Vec<ClientAck> {
        &mut self.acks
    }
}

impl Handover for StartMigrationRequest {
    fn records(&mut self) -> &mut Vec<CompletionRecord> {
        &mut self.records
    }
    fn acks(&mut self) -> &mut Vec<ClientAck> {
        &mut self.acks
    }
}

/// Splits a message into several: the first carries its own fields and the
/// first chunk; each next one only records and ack floors.
pub fn split<M: Handover>(mut whole: M) -> Vec<M> {
    let records = chunks(std::mem::take(whole.records()));
    let acks = chunks(std::mem::take(whole.acks()));
    let mut messages = vec![whole];
    for (i, (records, acks)) in zip_longest(records, acks).enumerate() {
        if i > 0 {
            messages.push(M::default());
        }
        let last = messages.last_mut().expect("one at least");
        *last.records() = records;
        *last.acks() = acks;
    }
    messages
}

/// Puts a streamed message back together: the first message's fields,
/// every message's records and ack floors (none: no message came).
pub fn join<M: Handover>(messages: Vec<M>) -> Option<M> {
    let mut messages = messages.into_iter();
    let mut whole = messages.next()?;
    for mut part in messages {
        whole.records().append(part.records());
        whole.acks().append(part.acks());
    }
    Some(whole)
}

fn chunks<T>(items: Vec<T>) -> Vec<Vec<T>> {
    let mut out = Vec::with_capacity(items.len().div_ceil(CHUNK));
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        out.push(items.by_ref().take(CHUNK).collect());
    }
    out
}

fn zip_longest<A, B>(a: Vec<Vec<A>>, b: Vec<Vec<B>>) -> impl Iterator<Item = (Vec<A>, Vec<B>)> {
    let n = a.len().max(b.len());
    let (mut a, mut b) = (a.into_iter(), b.into_iter());
    (0..n).map(move |_| (a.next().unwrap_or_default(), b.next().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_handover_goes_in_chunks_and_comes_back_whole() {
        let records: Vec<CompletionRecord> = (0..40_000u64)
            .map(|i| CompletionRecord { client_id: i, seq: i + 1, ..Default::default() })
            .collect();
        let acks: Vec<ClientAck> = (0..100_000u64).map(|i| ClientAck { client_id: i, ack: i * 2 }).collect();
        let frozen = FreezeRangeResponse {
            max_version: 77,
            records: records.clone(),
            acks: acks.clone(),
            objects: 5,
            bytes: 6,
        };
        let messages = split(frozen.clone());
        assert_eq!(messages.len(), 100_000usize.div_ceil(CHUNK));
        assert!(messages.iter().all(|m| m.records.len() <= CHUNK && m.acks.len() <= CHUNK));
        assert!(messages[1..].iter().all(|m| m.max_version == 0 && m.objects == 0), "settings once");
        let whole = join(messages).unwrap();
        assert_eq!(whole, frozen);

        let start =
            StartMigrationRequest { version_floor: 77, records, acks, serve: true, ..Default::default() };
        let messages = split(start.clone());
        assert!(messages[1..].iter().all(|m| !m.serve && m.version_floor == 0));
        assert_eq!(join(messages).unwrap(), start);
        // Nothing to hand over: one message.
        assert_eq!(split(FreezeRangeResponse::default()).len(), 1);
        assert_eq!(join::<StartMigrationRequest>(Vec::new()), None);
    }
}
