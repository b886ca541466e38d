//! Feeds arbitrary bytes to the data-path decoders: they must never panic,
//! and anything that decodes must re-encode to the same frame.
#![no_main]

use bytes::Bytes;
use fulva_proto::{Reply, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = Request::decode(data) {
        let mut again = Vec::new();
        request.encode(&mut again);
        assert_eq!(&again[..], data);
    }
    let frame = Bytes::copy_from_slice(data);
    if let Ok(reply) = Reply::decode(&frame) {
        let mut again = Vec::new();
        reply.encode(&mut again);
        assert_eq!(again.len(), data.len());
    }
});
