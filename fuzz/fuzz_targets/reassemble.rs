//! Feeds arbitrary datagrams from a few senders to a reassembler with small
//! limits: it must never panic, never hold more than its budget, and only
//! ever hand on a frame that is no larger than its limit.
#![no_main]

use fulva_proto::fragment::{Accepted, Reassembler, ReassemblyLimits};
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let limits = ReassemblyLimits {
        max_message: 4096,
        max_pending_bytes: 16_384,
        max_per_peer: 3,
        timeout: Duration::from_secs(60),
    };
    let mut reassembler = Reassembler::new(limits);
    // Each datagram: sender byte, length byte, then that many bytes.
    let mut rest = data;
    while rest.len() >= 2 {
        let (sender, len) = (rest[0] % 4, usize::from(rest[1]) * 8);
        rest = &rest[2..];
        let datagram = &rest[..len.min(rest.len())];
        rest = &rest[datagram.len()..];
        let from = SocketAddr::from(([127, 0, 0, sender], 7000));
        match reassembler.accept(from, datagram) {
            Accepted::Complete(frame) => assert!(frame.len() <= limits.max_message),
            Accepted::Whole(frame) => assert_eq!(frame, datagram),
            Accepted::Pending | Accepted::Refused => {}
        }
        assert!(reassembler.held_bytes() <= limits.max_pending_bytes);
    }
});
