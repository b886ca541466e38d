//! Feeds arbitrary bytes to the transfer-stream decoders: they must never
//! panic, and anything that decodes must re-encode to the same bytes.
#![no_main]

use bytes::Bytes;
use fulva_proto::transfer::{BatchEncoder, Hello, StreamCheck, BATCH_HEADER_LEN, HELLO_LEN};
use fulva_proto::HashRange;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(hello) = data.get(..HELLO_LEN) {
        if let Ok(decoded) = Hello::decode(hello.try_into().expect("hello length")) {
            assert_eq!(&decoded.encode()[..], hello);
        }
    }
    let Some(header) = data.get(..BATCH_HEADER_LEN) else { return };
    // The first byte picks the range half and the resume point, so order and
    // cursor checks are reached too.
    let range = if data[0] & 1 == 0 { HashRange::FULL } else { HashRange { first: 0, last: u64::MAX >> 1 } };
    let mut check = StreamCheck::new(range, 0, 0);
    let Ok((len, count, next, kind)) = check.header(header.try_into().expect("header length")) else { return };
    let payload = &data[BATCH_HEADER_LEN..];
    if payload.len() != len {
        return;
    }
    if let Ok(batch) = check.decode(kind, count, next, Bytes::copy_from_slice(payload)) {
        let mut again = BatchEncoder::new();
        again.begin();
        for r in &batch.records {
            again.push(r.hash, r.version, &r.key, r.value.as_deref());
        }
        assert_eq!(again.finish(kind, next), data);
    }
});
