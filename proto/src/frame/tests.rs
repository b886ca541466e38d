use super::*;
use proptest::prelude::*;

fn header(op: Op) -> RequestHeader {
    RequestHeader { op: op as u8, flags: 0, request_id: 42, client_id: 7, seq: 3, ack: 2, epoch: 9 }
}

fn encode(req: &Request<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    req.encode(&mut out);
    assert_eq!(out.len(), req.encoded_len());
    out
}

#[test]
fn every_request_kind_round_trips() {
    let bodies = [
        RequestBody::Get { key: b"k" },
        RequestBody::Put { key: b"key", value: b"value" },
        RequestBody::Put { key: b"", value: b"" },
        RequestBody::Delete { key: b"gone" },
        RequestBody::MultiGet { keys: vec![b"a".as_slice(), b"bb", b""] },
    ];
    for body in bodies {
        let req = Request { header: header(body.op()), body };
        let bytes = encode(&req);
        assert_eq!(Request::decode(&bytes), Ok(req));
    }
}

#[test]
fn unknown_op_is_answerable() {
    let mut bytes = encode(&Request { header: header(Op::Get), body: RequestBody::Get { key: b"k" } });
    bytes[3] = 0x33;
    let err = Request::decode(&bytes).unwrap_err();
    assert_eq!(err.reply_to(), Some((Status::UnknownOp, 42, 0x33)));
}

#[test]
fn other_version_is_answerable_but_garbage_is_not() {
    let mut bytes = encode(&Request { header: header(Op::Get), body: RequestBody::Get { key: b"k" } });
    bytes[2] = 9;
    assert_eq!(Request::decode(&bytes).unwrap_err().reply_to(), Some((Status::UnsupportedVersion, 42, 1)));
    bytes[0] = 0;
    assert_eq!(Request::decode(&bytes).unwrap_err().reply_to(), None);
    assert_eq!(Request::decode(&[]).unwrap_err(), FrameError::TooShort { len: 0 });
}

#[test]
fn lying_value_length_is_malformed() {
    let mut bytes =
        encode(&Request { header: header(Op::Put), body: RequestBody::Put { key: b"k", value: b"v" } });
    bytes[REQUEST_HEADER_LEN + 2..REQUEST_HEADER_LEN + 6].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(Request::decode(&bytes), Err(FrameError::Malformed { what: "value length", .. })));
}

#[test]
fn trailing_bytes_are_malformed() {
    let mut bytes = encode(&Request { header: header(Op::Delete), body: RequestBody::Delete { key: b"k" } });
    bytes.push(0);
    assert!(matches!(Request::decode(&bytes), Err(FrameError::Malformed { what: "trailing bytes", .. })));
}

fn reply_strategy() -> impl Strategy<Value = Reply> {
    let outcome = (
        0u8..10,
        any::<u64>(),
        proptest::option::of(0u32..1000),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
        any::<bool>(),
    )
        .prop_map(|(s, version, redirect, value, held)| Outcome {
            status: Status::from_code(s).unwrap(),
            version,
            redirect,
            value: value.map(Bytes::from),
            held,
        });
    let progress = (any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>(), any::<bool>()).prop_map(
        |(a, b, cursor, source, done)| MigrationProgress {
            range: HashRange { first: a.min(b), last: a.max(b) },
            cursor,
            source,
            done,
        },
    );
    (
        1u8..5,
        0u8..10,
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(outcome, 0..8),
        proptest::option::of(progress),
    )
        .prop_map(|(op, s, request_id, epoch, outcomes, progress)| Reply {
            op,
            status: Status::from_code(s).unwrap(),
            request_id,
            epoch,
            outcomes,
            progress,
        })
}

proptest! {
    #[test]
    fn decoder_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Request::decode(&bytes);
        let _ = Reply::decode(&Bytes::from(bytes));
    }

    #[test]
    fn decoder_never_panics_on_mutated_frames(
        key in proptest::collection::vec(any::<u8>(), 0..40),
        value in proptest::collection::vec(any::<u8>(), 0..80),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in any::<usize>(),
    ) {
        let req = Request { header: header(Op::Put), body: RequestBody::Put { key: &key, value: &value } };
        let mut bytes = encode(&req);
        for (at, byte) in flips {
            let at = at % bytes.len();
            bytes[at] = byte;
        }
        let keep = cut % (bytes.len() + 1);
        bytes.truncate(keep);
        if let Ok(decoded) = Request::decode(&bytes) {
            // Anything that decodes re-encodes to the same bytes.
            let again = encode(&decoded);
            prop_assert_eq!(&again, &bytes);
        }
    }

    #[test]
    fn truncated_frames_never_decode(key in proptest::collection::vec(any::<u8>(), 0..40), cut in 0usize..1000) {
        let req = Request { header: header(Op::Get), body: RequestBody::Get { key: &key } };
        let bytes = encode(&req);
        let keep = cut % bytes.len();
        prop_assert!(Request::decode(&bytes[..keep]).is_err());
    }

    #[test]
    fn multi_get_round_trips(keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 0..40)) {
        let req = Request { header: header(Op::MultiGet), body: RequestBody::MultiGet { keys: keys.iter().map(Vec::as_slice).collect() } };
        let bytes = encode(&req);
        prop_assert_eq!(Request::decode(&bytes), Ok(req));
    }

    #[test]
    fn replies_round_trip(reply in reply_strategy()) {
        let mut out = Vec::new();
        reply.encode(&mut out);
        prop_assert_eq!(out.len(), reply.encoded_len());
        let back = Reply::decode(&Bytes::from(out.clone()));
        prop_assert_eq!(back, Ok(reply));
        // Every strict prefix fails to decode.
        for keep in [0, out.len() / 2, out.len() - 1] {
            prop_assert!(Reply::decode(&Bytes::copy_from_slice(&out[..keep])).is_err());
        }
    }
}

#[test]
fn progress_covers_the_hashes_below_its_cursor_of_its_range_or_all_of_it_once_done() {
    let range = HashRange { first: 100, last: 199 };
    let p = MigrationProgress { range, cursor: 150, source: 0, done: false };
    assert!(p.covers(100) && p.covers(149));
    assert!(!p.covers(150) && !p.covers(199), "at and above the cursor the source may still hold it");
    assert!(!p.covers(99) && !p.covers(200), "outside the range it answers for nothing");
    let done = MigrationProgress { done: true, ..p };
    assert!(done.covers(150) && done.covers(199));
    assert!(!done.covers(200));
}
