//! How the maps store addresses, services and backends: the conversions
//! between `std::net` types and the `lb_common` keys and values, and the
//! names of the protocol numbers they hold.
//!
//! Plain data, no aya: the director's bookkeeping builds backend sets with
//! these without touching the maps.

use std::net::IpAddr;

use lb_common::{Backend, FAMILY_IPV4, FAMILY_IPV6, PROTO_TCP, PROTO_UDP, ServiceKey};

/// An IP address as the maps store it: 16 bytes in network order (IPv4 in
/// the first four) and its `FAMILY_*`.
pub fn addr_key(addr: IpAddr) -> ([u8; 16], u8) {
    let mut bytes = [0u8; 16];
    match addr {
        IpAddr::V4(v4) => {
            bytes[..4].copy_from_slice(&v4.octets());
            (bytes, FAMILY_IPV4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_IPV6),
    }
}

/// The inverse of [`addr_key`].
pub fn addr_from_key(bytes: [u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_IPV4 {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        IpAddr::from(bytes)
    }
}

/// The [`SERVICES_MAP`](lb_common::SERVICES_MAP) key of a service.
pub fn service_key(vip: IpAddr, port: u16, proto: u8) -> ServiceKey {
    let (addr, family) = addr_key(vip);
    ServiceKey {
        addr,
        port,
        proto,
        family,
    }
}

/// Where a backend is on the network: its MAC, and the director NIC (index
/// and MAC) it is on-link through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The real server's MAC (destination MAC of forwarded frames).
    pub mac: [u8; 6],
    /// The director NIC's MAC (source MAC of forwarded frames).
    pub nic_mac: [u8; 6],
    /// The director NIC's index.
    pub ifindex: u32,
}

/// A backend slot as the data path stores it.
pub fn backend_entry(addr: IpAddr, attachment: Attachment, weight: u32, state: u32) -> Backend {
    let Attachment {
        mac,
        nic_mac,
        ifindex,
    } = attachment;
    Backend {
        addr: addr_key(addr).0,
        mac,
        nic_mac,
        ifindex,
        weight,
        state,
    }
}

/// "tcp", "udp", or "unknown".
pub fn protocol_name(proto: u8) -> &'static str {
    match proto {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        _ => "unknown",
    }
}
