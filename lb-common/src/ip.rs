//! Address families and IP protocols as the maps store them, and the
//! 16-byte form in which keys and values hold an address of either family.

use core::net::IpAddr;

/// Address family of an IPv4 key or value (matches `AF_INET`).
pub const FAMILY_IPV4: u8 = 2;
/// Address family of an IPv6 key or value (matches `AF_INET6`).
pub const FAMILY_IPV6: u8 = 10;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IP protocol number of ICMP (over IPv4).
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number (IPv6 next header) of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;

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

/// "tcp", "udp", or "unknown".
pub const fn protocol_name(proto: u8) -> &'static str {
    match proto {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use core::net::Ipv6Addr;

    use super::*;

    #[test]
    fn addresses_round_trip_through_the_key_form() {
        let v4 = IpAddr::from([192, 0, 2, 1]);
        let (bytes, family) = addr_key(v4);
        assert_eq!(bytes, [192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(family, FAMILY_IPV4);
        assert_eq!(addr_from_key(bytes, family), v4);
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        let (bytes, family) = addr_key(v6);
        assert_eq!(
            bytes,
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
        );
        assert_eq!(family, FAMILY_IPV6);
        assert_eq!(addr_from_key(bytes, family), v6);
    }

    #[test]
    fn protocol_names() {
        assert_eq!(protocol_name(PROTO_TCP), "tcp");
        assert_eq!(protocol_name(PROTO_UDP), "udp");
        assert_eq!(protocol_name(1), "unknown");
    }
}
