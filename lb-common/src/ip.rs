//! Address families and IP protocols as the maps store them.

/// Address family of an IPv4 key or value (matches `AF_INET`).
pub const FAMILY_IPV4: u8 = 2;
/// Address family of an IPv6 key or value (matches `AF_INET6`).
pub const FAMILY_IPV6: u8 = 10;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
