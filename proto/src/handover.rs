//! A freeze's handover of completion records and ack floors, in chunks.
//!
//! A frozen source hands the destination every completion record of the
//! moving range and the ack floor of every client it knows: up to
//! `--max-clients` of them. `FreezeRange` streams them out of the source and
//! `StartMigration` streams them into the destination, [`CHUNK`] entries a
//! message, so no single gRPC message grows with the number of clients.

use crate::grpc::{FreezeRangeResponse, StartMigrationRequest};

/// Records (or ack floors) per message: about 40 bytes each, so a message
/// stays near 650 KB.
pub const CHUNK: usize = 16_384;

/// Splits a freeze's answer into messages: the first carries the floor, the
/// sizes and the first chunk; each next one only records and ack floors.
pub fn split_freeze(mut whole: FreezeRangeResponse) -> Vec<FreezeRangeResponse> {
    let records = chunks(std::mem::take(&mut whole.records));
    let acks = chunks(std::mem::take(&mut whole.acks));
    let mut messages = vec![whole];
    for (i, (records, acks)) in zip_longest(records, acks).enumerate() {
        if i == 0 {
            messages[0].records = records;
            messages[0].acks = acks;
        } else {
            messages.push(FreezeRangeResponse { records, acks, ..FreezeRangeResponse::default() });
        }
    }
    messages
}

/// Puts a streamed freeze answer back together (none: no message came).
pub fn join_freeze(messages: Vec<FreezeRangeResponse>) -> Option<FreezeRangeResponse> {
    let mut messages = messages.into_iter();
    let mut whole = messages.next()?;
    for part in messages {
        whole.records.extend(part.records);
        whole.acks.extend(part.acks);
    }
    Some(whole)
}

/// Splits a pass's start into messages, as [`split_freeze`] does.
pub fn split_start(mut whole: StartMigrationRequest) -> Vec<StartMigrationRequest> {
    let records = chunks(std::mem::take(&mut whole.records));
    let acks = chunks(std::mem::take(&mut whole.acks));
    let mut messages = vec![whole];
    for (i, (records, acks)) in zip_longest(records, acks).enumerate() {
        if i == 0 {
            messages[0].records = records;
            messages[0].acks = acks;
        } else {
            messages.push(StartMigrationRequest { records, acks, ..StartMigrationRequest::default() });
        }
    }
    messages
}

/// Puts a streamed pass start back together: the first message's settings,
/// every message's records and ack floors (none: no message came).
pub fn join_start(messages: Vec<StartMigrationRequest>) -> Option<StartMigrationRequest> {
    let mut messages = messages.into_iter();
    let mut whole = messages.next()?;
    for part in messages {
        whole.records.extend(part.records);
        whole.acks.extend(part.acks);
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
    use crate::grpc::{ClientAck, CompletionRecord};

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
        let messages = split_freeze(frozen.clone());
        assert_eq!(messages.len(), 100_000usize.div_ceil(CHUNK));
        assert!(messages.iter().all(|m| m.records.len() <= CHUNK && m.acks.len() <= CHUNK));
        assert!(messages[1..].iter().all(|m| m.max_version == 0 && m.objects == 0), "settings once");
        let whole = join_freeze(messages).unwrap();
        assert_eq!(whole, frozen);

        let start =
            StartMigrationRequest { version_floor: 77, records, acks, serve: true, ..Default::default() };
        let messages = split_start(start.clone());
        assert!(messages[1..].iter().all(|m| !m.serve && m.version_floor == 0));
        assert_eq!(join_start(messages).unwrap(), start);
        // Nothing to hand over: one message.
        assert_eq!(split_freeze(FreezeRangeResponse::default()).len(), 1);
        assert_eq!(join_start(Vec::new()), None);
    }
}
