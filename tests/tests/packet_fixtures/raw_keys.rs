//! Connection-table keys as the kernel stores them, derived from a frame's
//! own bytes (apart from `lb_common::FlowKey`).

use lb_tests::frame::ETH_LEN;

/// Bytes of a [`CONNTRACK4_MAP`](lb_common::CONNTRACK4_MAP) key (`lb_common::FlowKey4`).
pub const FLOW_KEY4_LEN: usize = 16;
/// Bytes of a [`CONNTRACK6_MAP`](lb_common::CONNTRACK6_MAP) key (`lb_common::FlowKey6`).
pub const FLOW_KEY6_LEN: usize = 40;

/// Where the transport ports of a plain (option-less) frame start.
fn ports_offset(frame: &[u8]) -> usize {
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => ETH_LEN + 20,
        0x86dd => ETH_LEN + 40,
        ethertype => panic!("not IP: ethertype {ethertype:#06x}"),
    }
}

/// The connection-table key bytes the data path must store for a plain
/// (option-less) IPv4 or IPv6 frame, taken from the frame's own bytes:
/// source and destination address as on the wire, then both ports in host
/// byte order, the protocol number and zero padding.
pub fn key_bytes_of_frame(frame: &[u8]) -> Vec<u8> {
    let l4 = ports_offset(frame);
    let (addrs, proto) = match l4 - ETH_LEN {
        20 => (&frame[ETH_LEN + 12..ETH_LEN + 20], frame[ETH_LEN + 9]),
        _ => (&frame[ETH_LEN + 8..ETH_LEN + 40], frame[ETH_LEN + 6]),
    };
    let port_at = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]).to_ne_bytes();
    let mut key = addrs.to_vec();
    key.extend(port_at(l4));
    key.extend(port_at(l4 + 2));
    key.extend([proto, 0, 0, 0]);
    key
}
