//! Ethernet II / IPv4 / UDP framing of data-path datagrams, and ARP
//! replies, so DPDK packets are valid on a real network.

use std::net::{Ipv4Addr, SocketAddrV4};

/// Ethernet + IPv4 + UDP header bytes.
pub const HEADERS: usize = 14 + 20 + 8;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
/// The broadcast MAC address.
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// A parsed UDP datagram.
#[derive(Debug, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// Sender's MAC.
    pub src_mac: [u8; 6],
    /// Sender.
    pub src: SocketAddrV4,
    /// Receiver.
    pub dst: SocketAddrV4,
    /// UDP payload.
    pub payload: &'a [u8],
}

/// An ARP request for `target` from (`sender_mac`, `sender_ip`).
#[derive(Debug, PartialEq, Eq)]
pub struct ArpRequest {
    /// Who asks.
    pub sender_mac: [u8; 6],
    /// Its address.
    pub sender_ip: Ipv4Addr,
    /// The address asked about.
    pub target: Ipv4Addr,
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 =
        header.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Appends a frame carrying `payload` from (`src_mac`, `src`) to (`dst_mac`, `dst`) to `out`.
/// The UDP checksum is 0 (optional in IPv4); the IPv4 header checksum is set.
pub fn build(
    src_mac: [u8; 6],
    src: SocketAddrV4,
    dst_mac: [u8; 6],
    dst: SocketAddrV4,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    let ip_len = (20 + 8 + payload.len()) as u16;
    out.extend_from_slice(&dst_mac);
    out.extend_from_slice(&src_mac);
    out.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let ip_start = out.len();
    out.extend_from_slice(&[0x45, 0]);
    out.extend_from_slice(&ip_len.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]); // id, don't fragment, TTL 64, UDP, checksum later
    out.extend_from_slice(&src.ip().octets());
    out.extend_from_slice(&dst.ip().octets());
    let sum = checksum(&out[ip_start..ip_start + 20]);
    out[ip_start + 10..ip_start + 12].copy_from_slice(&sum.to_be_bytes());
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(payload);
}

/// The UDP datagram in `frame`, if it is a well-formed IPv4/UDP packet.
pub fn parse(frame: &[u8]) -> Option<Datagram<'_>> {
    if frame.len() < HEADERS || u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || ip.len() < ihl + 8 || ip[9] != 17 || checksum(&ip[..ihl]) != 0 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if total < ihl + 8 || total > ip.len() {
        return None;
    }
    let udp = &ip[ihl..total];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len < 8 || udp_len > udp.len() {
        return None;
    }
    let mut src_mac = [0u8; 6];
    src_mac.copy_from_slice(&frame[6..12]);
    let addr = |at: usize| Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]);
    Some(Datagram {
        src_mac,
        src: SocketAddrV4::new(addr(12), u16::from_be_bytes([udp[0], udp[1]])),
        dst: SocketAddrV4::new(addr(16), u16::from_be_bytes([udp[2], udp[3]])),
        payload: &udp[8..udp_len],
    })
}

/// The ARP request in `frame`, if it is one (Ethernet/IPv4).
pub fn parse_arp_request(frame: &[u8]) -> Option<ArpRequest> {
    if frame.len() < 42 || u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_ARP {
        return None;
    }
    let arp = &frame[14..42];
    // htype 1, ptype IPv4, hlen 6, plen 4, op request.
    if arp[..8] != [0, 1, 8, 0, 6, 4, 0, 1] {
        return None;
    }
    let mut sender_mac = [0u8; 6];
    sender_mac.copy_from_slice(&arp[8..14]);
    Some(ArpRequest {
        sender_mac,
        sender_ip: Ipv4Addr::new(arp[14], arp[15], arp[16], arp[17]),
        target: Ipv4Addr::new(arp[24], arp[25], arp[26], arp[27]),
    })
}

/// Appends the ARP reply to `request` saying `ip` is at `mac`.
pub fn build_arp_reply(request: &ArpRequest, mac: [u8; 6], ip: Ipv4Addr, out: &mut Vec<u8>) {
    out.extend_from_slice(&request.sender_mac);
    out.extend_from_slice(&mac);
    out.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    out.extend_from_slice(&mac);
    out.extend_from_slice(&ip.octets());
    out.extend_from_slice(&request.sender_mac);
    out.extend_from_slice(&request.sender_ip.octets());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_built_frame_parses_back(payload in prop::collection::vec(any::<u8>(), 0..1400),
                                     a in any::<[u8; 4]>(), b in any::<[u8; 4]>(), p in any::<u16>(), q in any::<u16>()) {
            let src = SocketAddrV4::new(a.into(), p);
            let dst = SocketAddrV4::new(b.into(), q);
            let mut frame = Vec::new();
            build([1; 6], src, [2; 6], dst, &payload, &mut frame);
            prop_assert_eq!(frame.len(), HEADERS + payload.len());
            let d = parse(&frame).unwrap();
            prop_assert_eq!(d, Datagram { src_mac: [1; 6], src, dst, payload: &payload });
        }

        #[test]
        fn random_bytes_never_panic(frame in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&frame);
            let _ = parse_arp_request(&frame);
        }
    }

    #[test]
    fn a_corrupted_header_is_refused_and_arp_is_answered() {
        let mut frame = Vec::new();
        let (src, dst) = ("10.0.0.1:7100".parse().unwrap(), "10.0.0.2:7100".parse().unwrap());
        build([1; 6], src, [2; 6], dst, b"hello", &mut frame);
        frame[14 + 8] ^= 0xff; // TTL: the header checksum no longer matches
        assert!(parse(&frame).is_none());

        let request =
            ArpRequest { sender_mac: [3; 6], sender_ip: [10, 0, 0, 3].into(), target: [10, 0, 0, 2].into() };
        let mut ask = Vec::new();
        ask.extend_from_slice(&BROADCAST);
        ask.extend_from_slice(&[3; 6]);
        ask.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        ask.extend_from_slice(&[3; 6]);
        ask.extend_from_slice(&[10, 0, 0, 3]);
        ask.extend_from_slice(&[0; 6]);
        ask.extend_from_slice(&[10, 0, 0, 2]);
        assert_eq!(parse_arp_request(&ask), Some(request));
        let mut reply = Vec::new();
        build_arp_reply(&parse_arp_request(&ask).unwrap(), [2; 6], [10, 0, 0, 2].into(), &mut reply);
        assert_eq!(&reply[..6], &[3; 6]);
        assert_eq!(&reply[20..22], &[0, 2], "an ARP reply");
        assert_eq!(&reply[22..28], &[2; 6]);
    }
}
