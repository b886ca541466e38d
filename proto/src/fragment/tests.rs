use super::*;
use proptest::prelude::*;

fn peer(n: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, n], 7000))
}

fn datagrams(message: &[u8], max_datagram: usize) -> Vec<Vec<u8>> {
    fragments(message, max_datagram)
        .map(|f| {
            let mut out = Vec::new();
            f.write_to(&mut out);
            assert!(out.len() <= max_datagram);
            out
        })
        .collect()
}

fn message(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn limits() -> ReassemblyLimits {
    ReassemblyLimits::for_messages(2 << 20)
}

#[test]
fn a_whole_frame_passes_through() {
    let mut r = Reassembler::new(limits());
    let frame = [0x7a, 0xf1, 2, 1];
    assert_eq!(r.accept(peer(1), &frame), Accepted::Whole(&frame[..]));
}

#[test]
fn fragments_in_any_order_and_repeated_make_the_message_once() {
    let m = message(1 << 20);
    let mut parts = datagrams(&m, 1500);
    assert_eq!(parts.len(), (1usize << 20).div_ceil(1500 - FRAGMENT_HEADER_LEN));
    parts.reverse();
    let dup = parts[3].clone();
    parts.insert(10, dup);
    let mut r = Reassembler::new(limits());
    let mut done = Vec::new();
    for p in &parts {
        match r.accept(peer(1), p) {
            Accepted::Complete(whole) => done.push(whole),
            Accepted::Pending => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(done, vec![m]);
    assert_eq!(r.held_bytes(), 0);
    assert_eq!(r.take_stats(), ReassemblyStats { completed: 1, ..ReassemblyStats::default() });
}

#[test]
fn two_senders_and_two_messages_do_not_mix() {
    let (a, b) = (message(200_000), message(150_000).into_iter().rev().collect::<Vec<_>>());
    let (pa, pb) = (datagrams(&a, 65_507), datagrams(&b, 65_507));
    let mut r = Reassembler::new(limits());
    let mut done = Vec::new();
    for i in 0..pa.len().max(pb.len()) {
        for (from, parts) in [(peer(1), &pa), (peer(2), &pb)] {
            if let Some(p) = parts.get(i) {
                if let Accepted::Complete(m) = r.accept(from, p) {
                    done.push(m);
                }
            }
        }
    }
    assert_eq!(done, vec![b, a]);
}

#[test]
fn a_lost_fragment_expires_and_frees_its_memory() {
    let m = message(100_000);
    let parts = datagrams(&m, 10_000);
    let mut r = Reassembler::new(ReassemblyLimits { timeout: Duration::from_millis(40), ..limits() });
    for p in &parts[1..] {
        assert_eq!(r.accept(peer(1), p), Accepted::Pending);
    }
    assert_eq!(r.held_bytes(), 100_000);
    std::thread::sleep(Duration::from_millis(60));
    // The next datagram from anyone sweeps the expired message away.
    let other = datagrams(&message(30_000), 10_000);
    assert_eq!(r.accept(peer(2), &other[0]), Accepted::Pending);
    assert_eq!(r.take_stats().expired, 1);
    assert_eq!(r.held_bytes(), 30_000);
    // The missing fragment, come too late, starts nothing whole.
    assert_eq!(r.accept(peer(1), &parts[0]), Accepted::Pending);
}

#[test]
fn inconsistent_or_oversized_fragments_are_refused_and_free_their_message() {
    let m = message(50_000);
    let parts = datagrams(&m, 10_000);
    let mut r = Reassembler::new(ReassemblyLimits { max_message: 60_000, ..limits() });
    assert_eq!(r.accept(peer(1), &parts[0]), Accepted::Pending);
    // Same id, another total length.
    let mut lying = parts[1].clone();
    lying[16..20].copy_from_slice(&60_000u32.to_le_bytes());
    assert_eq!(r.accept(peer(1), &lying), Accepted::Refused);
    assert_eq!(r.held_bytes(), 0, "the partial message is gone");
    // A fragment whose bytes do not match its place.
    let mut short = parts[2].clone();
    short.truncate(short.len() - 1);
    assert_eq!(r.accept(peer(1), &short), Accepted::Refused);
    // Past the last fragment; zero chunk; past the limit; a header cut short.
    let mut beyond = parts[0].clone();
    beyond[4..8].copy_from_slice(&99u32.to_le_bytes());
    assert_eq!(r.accept(peer(1), &beyond), Accepted::Refused);
    let mut zero = parts[0].clone();
    zero[20..24].copy_from_slice(&0u32.to_le_bytes());
    assert_eq!(r.accept(peer(1), &zero), Accepted::Refused);
    let big = datagrams(&message(70_000), 10_000);
    assert_eq!(r.accept(peer(1), &big[0]), Accepted::Refused);
    assert_eq!(r.accept(peer(1), &parts[0][..10]), Accepted::Refused);
    assert_eq!(r.held_bytes(), 0);
    assert_eq!(r.take_stats().refused, 6);
}

#[test]
fn memory_stays_within_the_budget_and_a_sender_within_its_share() {
    let limits = ReassemblyLimits { max_pending_bytes: 300_000, max_per_peer: 2, ..limits() };
    let mut r = Reassembler::new(limits);
    // Four senders each start a 100 kB message: the budget holds three.
    for n in 1..=4u8 {
        let parts = datagrams(&message(100_000), 10_000);
        assert_eq!(r.accept(peer(n), &parts[0]), Accepted::Pending);
        assert!(r.held_bytes() <= 300_000);
    }
    assert_eq!((r.partial_messages(), r.take_stats().evicted), (3, 1));
    // One sender starting many messages keeps only its newest two (the
    // first of them also pushes out the oldest large one: 310 kB > 300 kB).
    for i in 0..5u8 {
        let mut m = message(10_000);
        m[0] = i; // five different messages, five ids
        let parts = datagrams(&m, 2_000);
        assert_eq!(r.accept(peer(9), &parts[0]), Accepted::Pending);
    }
    assert_eq!((r.partial_messages(), r.take_stats().evicted), (4, 1 + 3));
    assert_eq!(r.held_bytes(), 2 * 100_000 + 2 * 10_000);
}

proptest! {
    /// Any order, any duplicates, some fragments lost: what comes out whole
    /// is exactly a message that was sent, and only when none of its
    /// fragments was lost.
    #[test]
    fn reassembly_never_makes_up_a_message(
        lens in proptest::collection::vec(1usize..40_000, 1..4),
        chunk in 64usize..5_000,
        shuffle in any::<u64>(),
        lose in proptest::collection::vec(any::<bool>(), 0..64),
        repeat in proptest::collection::vec(any::<bool>(), 0..64),
    ) {
        let messages: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, &l)| {
            (0..l).map(|j| (j as u64 * 7 + i as u64 * 13) as u8).collect()
        }).collect();
        let mut sent: Vec<(usize, Vec<u8>)> = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            for d in datagrams(m, chunk + FRAGMENT_HEADER_LEN) {
                sent.push((i, d));
            }
        }
        let mut lost = vec![false; messages.len()];
        let mut stream = Vec::new();
        for (n, (i, d)) in sent.into_iter().enumerate() {
            if lose.get(n).copied().unwrap_or(false) && lens[i] > chunk {
                lost[i] = true;
                continue;
            }
            if repeat.get(n).copied().unwrap_or(false) {
                stream.push((i, d.clone()));
            }
            stream.push((i, d));
        }
        // A deterministic shuffle.
        let mut state = shuffle | 1;
        for k in (1..stream.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            stream.swap(k, (state % (k as u64 + 1)) as usize);
        }
        let mut r = Reassembler::new(limits());
        let mut whole = vec![0usize; messages.len()];
        for (i, d) in &stream {
            match r.accept(peer(1), d) {
                Accepted::Complete(m) => {
                    prop_assert_eq!(&m, &messages[*i]);
                    whole[*i] += 1;
                }
                Accepted::Pending => {}
                other => prop_assert!(false, "{:?}", other),
            }
        }
        for i in 0..messages.len() {
            // Lost: never whole. Otherwise whole once, or twice when every
            // fragment came twice (a duplicated message, as a duplicated
            // datagram is; at-most-once handles it above).
            if lost[i] { prop_assert_eq!(whole[i], 0); } else { prop_assert!((1..=2).contains(&whole[i])); }
        }
    }
}

#[test]
fn the_same_frame_sent_again_fills_in_what_was_missed() {
    // The id is the frame's hash: a resend's fragments join the first try's.
    let m = message(50_000);
    let (first, again) = (datagrams(&m, 10_000), datagrams(&m, 10_000));
    let mut r = Reassembler::new(limits());
    for p in first.iter().step_by(2) {
        assert_eq!(r.accept(peer(1), p), Accepted::Pending);
    }
    let mut whole = None;
    for p in again.iter().skip(1).step_by(2) {
        if let Accepted::Complete(frame) = r.accept(peer(1), p) {
            whole = Some(frame);
        }
    }
    assert_eq!(whole, Some(m), "the first try's even fragments and the resend's odd ones");
    // Another frame of the same length does not mix in.
    let other = message(50_000).into_iter().map(|b| b ^ 1).collect::<Vec<u8>>();
    assert_ne!(message_id(&other), message_id(&message(50_000)));
}
