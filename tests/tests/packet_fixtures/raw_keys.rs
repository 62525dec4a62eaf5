//! Connection-table keys as the kernel stores them, derived from a frame's
//! own bytes (apart from `lb_common::FlowKey`).

use lb_tests::frame::{ETH_LEN, TAG_LEN, TPID_8021AD, TPID_8021Q};

/// Bytes of a [`CONNTRACK4_MAP`](lb_common::CONNTRACK4_MAP) key (`lb_common::FlowKey4`).
pub const FLOW_KEY4_LEN: usize = 16;
/// Bytes of a [`CONNTRACK6_MAP`](lb_common::CONNTRACK6_MAP) key (`lb_common::FlowKey6`).
pub const FLOW_KEY6_LEN: usize = 40;

/// The EtherType after a frame's VLAN tags, where the IP header starts, and
/// the VLAN ids of the tags (outermost first).
fn after_tags(frame: &[u8]) -> (u16, usize, Vec<u16>) {
    let mut at = ETH_LEN;
    let mut ids = Vec::new();
    loop {
        let ethertype = u16::from_be_bytes([frame[at - 2], frame[at - 1]]);
        if ethertype != TPID_8021Q && ethertype != TPID_8021AD {
            return (ethertype, at, ids);
        }
        ids.push(u16::from_be_bytes([frame[at], frame[at + 1]]) & 0x0fff);
        at += TAG_LEN;
    }
}

/// The connection-table key bytes the data path must store for a plain
/// (option-less) IPv4 or IPv6 frame, taken from the frame's own bytes:
/// source and destination address as on the wire, then both ports in host
/// byte order, the protocol number and the VLAN ids of the frame's tags in
/// 12 bits each, the innermost lowest, as three little-endian bytes (zero
/// for an untagged frame).
pub fn key_bytes_of_frame(frame: &[u8]) -> Vec<u8> {
    let (ethertype, ip, ids) = after_tags(frame);
    let (l4, addrs, proto) = match ethertype {
        0x0800 => (ip + 20, &frame[ip + 12..ip + 20], frame[ip + 9]),
        0x86dd => (ip + 40, &frame[ip + 8..ip + 40], frame[ip + 6]),
        ethertype => panic!("not IP: ethertype {ethertype:#06x}"),
    };
    let port_at = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]).to_ne_bytes();
    let mut key = addrs.to_vec();
    key.extend(port_at(l4));
    key.extend(port_at(l4 + 2));
    key.push(proto);
    let vlan = ids
        .iter()
        .filter(|&&id| id != 0)
        .fold(0u32, |path, &id| path << 12 | u32::from(id));
    key.extend(&vlan.to_le_bytes()[..3]);
    key
}
