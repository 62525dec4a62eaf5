//! Flows: the keys of the two connection tables (one per address family),
//! the key of either family as the control plane handles it, and the
//! connection tables' value.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{
    flow_cache::same_words,
    ip::{FAMILY_IPV4, FAMILY_IPV6},
    service::{AlignedServiceKey, service_key_tail},
};

/// Key of [`CONNTRACK4_MAP`]: an IPv4 client-to-VIP 5-tuple and its VLAN.
///
/// Sixteen bytes, so the kernel hashes and compares less than half of what
/// an IPv6 key costs on every packet.
///
/// [`CONNTRACK4_MAP`]: crate::limits::CONNTRACK4_MAP
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey4 {
    /// Client address (network byte order).
    pub src_addr: [u8; 4],
    /// VIP (network byte order).
    pub dst_addr: [u8; 4],
    /// Client port, host byte order.
    pub src_port: u16,
    /// VIP port, host byte order.
    pub dst_port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    ///
    /// [`PROTO_TCP`]: crate::ip::PROTO_TCP
    /// [`PROTO_UDP`]: crate::ip::PROTO_UDP
    pub proto: u8,
    /// The VLAN path of the flow's frames (see [`crate::vlan`]), 24 bits
    /// little-endian ([`vlan_path`](Self::vlan_path)): a 5-tuple on
    /// another VLAN is another flow.
    pub vlan: [u8; 3],
}

impl FlowKey4 {
    /// The key of a flow from its parts, assembled in two 64-bit words (the
    /// XDP program keeps them in registers: no narrow stores followed by a
    /// wide load). `src_addr` and `dst_addr` are the address bytes as
    /// they are in the packet, read as a native-endian `u32`; `vlan` is
    /// the frame's VLAN path (below 2^24).
    #[inline(always)]
    pub fn from_parts(
        src_addr: u32,
        dst_addr: u32,
        src_port: u16,
        dst_port: u16,
        proto: u8,
        vlan: u32,
    ) -> Self {
        Self::from_words([
            u64::from(src_addr) | u64::from(dst_addr) << 32,
            ports_word(src_port, dst_port, proto, vlan),
        ])
    }

    /// The key as 64-bit words, for the flow cache's hash and comparison.
    #[inline(always)]
    pub fn words(&self) -> [u64; 2] {
        // SAFETY: 16 bytes without implicit padding, 8-byte aligned.
        unsafe { core::mem::transmute(*self) }
    }

    /// Whether `other` is the same key (one test over its words, where a
    /// field-by-field comparison branches per field).
    #[inline(always)]
    pub fn same_as(&self, other: &Self) -> bool {
        same_words(&self.words(), &other.words())
    }

    /// The key whose [`words`](Self::words) are `words`.
    #[inline(always)]
    pub fn from_words(words: [u64; 2]) -> Self {
        // SAFETY: every bit pattern is a valid key.
        unsafe { core::mem::transmute(words) }
    }

    /// The VLAN path of the flow's frames.
    #[inline(always)]
    pub fn vlan_path(&self) -> u32 {
        (self.words()[1] >> VLAN_SHIFT) as u32
    }

    /// The service this flow is addressed to.
    #[inline(always)]
    pub fn service_key(&self) -> AlignedServiceKey {
        AlignedServiceKey::from_words([
            u64::from(u32::from_ne_bytes(self.dst_addr)),
            0,
            service_key_tail(self.dst_port, self.proto, FAMILY_IPV4, self.vlan_path()),
        ])
    }
}

/// Key of [`CONNTRACK6_MAP`]: an IPv6 client-to-VIP 5-tuple and its VLAN.
///
/// [`CONNTRACK6_MAP`]: crate::limits::CONNTRACK6_MAP
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey6 {
    /// Client address (network byte order).
    pub src_addr: [u8; 16],
    /// VIP (network byte order).
    pub dst_addr: [u8; 16],
    /// Client port, host byte order.
    pub src_port: u16,
    /// VIP port, host byte order.
    pub dst_port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    ///
    /// [`PROTO_TCP`]: crate::ip::PROTO_TCP
    /// [`PROTO_UDP`]: crate::ip::PROTO_UDP
    pub proto: u8,
    /// The VLAN path of the flow's frames (see [`crate::vlan`]), 24 bits
    /// little-endian ([`vlan_path`](Self::vlan_path)): a 5-tuple on
    /// another VLAN is another flow.
    pub vlan: [u8; 3],
}

impl FlowKey6 {
    /// The key of a flow from its parts, assembled in five 64-bit words, as
    /// [`FlowKey4::from_parts`]; each address is two native-endian `u64`s
    /// of its bytes.
    #[inline(always)]
    pub fn from_parts(
        src_addr: [u64; 2],
        dst_addr: [u64; 2],
        src_port: u16,
        dst_port: u16,
        proto: u8,
        vlan: u32,
    ) -> Self {
        Self::from_words([
            src_addr[0],
            src_addr[1],
            dst_addr[0],
            dst_addr[1],
            ports_word(src_port, dst_port, proto, vlan),
        ])
    }

    /// The key as 64-bit words, for the flow cache's hash and comparison.
    #[inline(always)]
    pub fn words(&self) -> [u64; 5] {
        // SAFETY: 40 bytes without implicit padding, 8-byte aligned.
        unsafe { core::mem::transmute(*self) }
    }

    /// Whether `other` is the same key (one test over its words, where a
    /// field-by-field comparison branches per field).
    #[inline(always)]
    pub fn same_as(&self, other: &Self) -> bool {
        same_words(&self.words(), &other.words())
    }

    /// The key whose [`words`](Self::words) are `words`.
    #[inline(always)]
    pub fn from_words(words: [u64; 5]) -> Self {
        // SAFETY: every bit pattern is a valid key.
        unsafe { core::mem::transmute(words) }
    }

    /// The VLAN path of the flow's frames.
    #[inline(always)]
    pub fn vlan_path(&self) -> u32 {
        (self.words()[4] >> VLAN_SHIFT) as u32
    }

    /// The service this flow is addressed to.
    #[inline(always)]
    pub fn service_key(&self) -> AlignedServiceKey {
        let words = self.words();
        AlignedServiceKey::from_words([
            words[2],
            words[3],
            service_key_tail(self.dst_port, self.proto, FAMILY_IPV6, self.vlan_path()),
        ])
    }
}

/// Where the VLAN path sits in a flow key's last word (after the ports and
/// the protocol).
const VLAN_SHIFT: u32 = 40;

/// A flow key's last word: ports, protocol and VLAN path.
#[inline(always)]
fn ports_word(src_port: u16, dst_port: u16, proto: u8, vlan: u32) -> u64 {
    u64::from(src_port)
        | u64::from(dst_port) << 16
        | u64::from(proto) << 32
        | u64::from(vlan) << VLAN_SHIFT
}

/// A flow of either family, as the control plane handles it: the key of
/// the connection table that holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowKey {
    /// A flow in [`CONNTRACK4_MAP`].
    ///
    /// [`CONNTRACK4_MAP`]: crate::limits::CONNTRACK4_MAP
    V4(FlowKey4),
    /// A flow in [`CONNTRACK6_MAP`].
    ///
    /// [`CONNTRACK6_MAP`]: crate::limits::CONNTRACK6_MAP
    V6(FlowKey6),
}

impl FlowKey {
    /// The key of the flow from `client`:`client_port` to `vip`:`port` over
    /// `proto` on the VLAN path `vlan` (below 2^24). `None` when the two
    /// addresses are of different families.
    pub fn new(
        client: IpAddr,
        client_port: u16,
        vip: IpAddr,
        port: u16,
        proto: u8,
        vlan: u32,
    ) -> Option<Self> {
        let vlan = {
            let [a, b, c, _] = vlan.to_le_bytes();
            [a, b, c]
        };
        match (client, vip) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => Some(Self::V4(FlowKey4 {
                src_addr: src.octets(),
                dst_addr: dst.octets(),
                src_port: client_port,
                dst_port: port,
                proto,
                vlan,
            })),
            (IpAddr::V6(src), IpAddr::V6(dst)) => Some(Self::V6(FlowKey6 {
                src_addr: src.octets(),
                dst_addr: dst.octets(),
                src_port: client_port,
                dst_port: port,
                proto,
                vlan,
            })),
            _ => None,
        }
    }

    /// Client address.
    pub fn client(&self) -> IpAddr {
        match self {
            Self::V4(k) => IpAddr::V4(Ipv4Addr::from(k.src_addr)),
            Self::V6(k) => IpAddr::V6(Ipv6Addr::from(k.src_addr)),
        }
    }

    /// VIP.
    pub fn vip(&self) -> IpAddr {
        match self {
            Self::V4(k) => IpAddr::V4(Ipv4Addr::from(k.dst_addr)),
            Self::V6(k) => IpAddr::V6(Ipv6Addr::from(k.dst_addr)),
        }
    }

    /// Client port.
    pub fn client_port(&self) -> u16 {
        match self {
            Self::V4(k) => k.src_port,
            Self::V6(k) => k.src_port,
        }
    }

    /// VIP port.
    pub fn port(&self) -> u16 {
        match self {
            Self::V4(k) => k.dst_port,
            Self::V6(k) => k.dst_port,
        }
    }

    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    ///
    /// [`PROTO_TCP`]: crate::ip::PROTO_TCP
    /// [`PROTO_UDP`]: crate::ip::PROTO_UDP
    pub fn proto(&self) -> u8 {
        match self {
            Self::V4(k) => k.proto,
            Self::V6(k) => k.proto,
        }
    }

    /// The VLAN path of the flow's frames (see [`crate::vlan`]).
    pub fn vlan_path(&self) -> u32 {
        match self {
            Self::V4(k) => k.vlan_path(),
            Self::V6(k) => k.vlan_path(),
        }
    }
}

/// Value of both connection tables: where a flow goes and what state it is in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC, tick resolution) of the last packet seen.
    pub last_seen_ns: u64,
    /// Service the flow belongs to (below [`MAX_SERVICES`]).
    ///
    /// [`MAX_SERVICES`]: crate::limits::MAX_SERVICES
    pub service_id: u16,
    /// Backend slot within the service (below [`MAX_BACKENDS`]).
    ///
    /// [`MAX_BACKENDS`]: crate::limits::MAX_BACKENDS
    pub backend_slot: u16,
    /// One of the `conn_state::STATE_*` constants.
    pub state: u16,
    /// `FLOW_*` bits: [`FLOW_CARRIED_DATA`], [`FLOW_SYNCED`](crate::sync::FLOW_SYNCED).
    pub flags: u16,
}

/// [`Flow::flags`] bit: the client has sent payload on this flow. A TCP
/// handshake that never carried a byte is what a spoofed "fake handshake"
/// looks like; under table pressure the control plane expires such flows
/// after the short `syn_recv` timeout.
pub const FLOW_CARRIED_DATA: u16 = 1;

const _: () = {
    assert!(size_of::<FlowKey4>() == 16);
    assert!(size_of::<FlowKey6>() == 40);
    assert!(size_of::<Flow>() == 16);
};

#[cfg(feature = "user")]
mod pod {
    use super::{Flow, FlowKey4, FlowKey6};

    // SAFETY: each is #[repr(C)], holds only integers and byte arrays, and
    // has no implicit padding (the size assertions and layout tests here).
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for FlowKey4 {}
    unsafe impl aya::Pod for FlowKey6 {}
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;
    use crate::{
        ip::{PROTO_TCP, PROTO_UDP},
        service::ServiceKey,
        vlan::vlan_path,
    };

    #[test]
    fn flow_layout() {
        assert_eq!(offset_of!(FlowKey4, src_addr), 0);
        assert_eq!(offset_of!(FlowKey4, dst_addr), 4);
        assert_eq!(offset_of!(FlowKey4, src_port), 8);
        assert_eq!(offset_of!(FlowKey4, dst_port), 10);
        assert_eq!(offset_of!(FlowKey4, proto), 12);
        assert_eq!(offset_of!(FlowKey4, vlan), 13);
        assert_eq!(offset_of!(FlowKey6, src_addr), 0);
        assert_eq!(offset_of!(FlowKey6, dst_addr), 16);
        assert_eq!(offset_of!(FlowKey6, src_port), 32);
        assert_eq!(offset_of!(FlowKey6, dst_port), 34);
        assert_eq!(offset_of!(FlowKey6, proto), 36);
        assert_eq!(offset_of!(FlowKey6, vlan), 37);
        assert_eq!(offset_of!(Flow, last_seen_ns), 0);
        assert_eq!(offset_of!(Flow, service_id), 8);
        assert_eq!(offset_of!(Flow, backend_slot), 10);
        assert_eq!(offset_of!(Flow, state), 12);
        assert_eq!(offset_of!(Flow, flags), 14);
    }

    #[test]
    fn flow_keys_by_family() {
        let v4 = FlowKey::new(
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
            40000,
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            80,
            PROTO_TCP,
            0,
        )
        .expect("one family");
        let FlowKey::V4(k) = v4 else {
            panic!("an IPv4 key: {v4:?}")
        };
        assert_eq!(k.src_addr, [198, 51, 100, 7]);
        assert_eq!(k.dst_addr, [192, 0, 2, 1]);
        assert_eq!((k.src_port, k.dst_port, k.proto), (40000, 80, PROTO_TCP));
        assert_eq!(v4.client(), IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)));
        assert_eq!(v4.vip(), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(
            (v4.client_port(), v4.port(), v4.proto(), v4.vlan_path()),
            (40000, 80, PROTO_TCP, 0)
        );
        let client6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7));
        let vip6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        let qinq = vlan_path(&[100, 4001]);
        let v6 = FlowKey::new(client6, 40001, vip6, 53, PROTO_UDP, qinq).expect("one family");
        assert!(matches!(v6, FlowKey::V6(_)));
        assert_eq!(v6.client(), client6);
        assert_eq!(v6.vip(), vip6);
        assert_eq!(
            (v6.client_port(), v6.port(), v6.proto(), v6.vlan_path()),
            (40001, 53, PROTO_UDP, qinq)
        );
        assert_eq!(
            FlowKey::new(
                client6,
                1,
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                80,
                PROTO_TCP,
                0
            ),
            None
        );
    }

    #[test]
    fn keys_assembled_from_parts_match_their_fields() {
        let v4 = FlowKey4::from_parts(
            u32::from_ne_bytes([198, 51, 100, 7]),
            u32::from_ne_bytes([192, 0, 2, 1]),
            40000,
            80,
            PROTO_TCP,
            4001,
        );
        assert_eq!(
            v4,
            FlowKey4 {
                src_addr: [198, 51, 100, 7],
                dst_addr: [192, 0, 2, 1],
                src_port: 40000,
                dst_port: 80,
                proto: PROTO_TCP,
                vlan: [0xa1, 0x0f, 0],
            }
        );
        assert_eq!(v4.vlan_path(), 4001);
        assert_eq!(FlowKey4::from_words(v4.words()), v4);
        let src: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
        let dst: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let halves = |a: [u8; 16]| {
            [
                u64::from_ne_bytes(a[..8].try_into().unwrap()),
                u64::from_ne_bytes(a[8..].try_into().unwrap()),
            ]
        };
        let qinq = vlan_path(&[4094, 4001]);
        let v6 = FlowKey6::from_parts(halves(src), halves(dst), 40001, 53, PROTO_UDP, qinq);
        assert_eq!(
            v6,
            FlowKey6 {
                src_addr: src,
                dst_addr: dst,
                src_port: 40001,
                dst_port: 53,
                proto: PROTO_UDP,
                vlan: [0xa1, 0xef, 0xff],
            }
        );
        assert_eq!(v6.vlan_path(), qinq);
        assert_eq!(FlowKey6::from_words(v6.words()), v6);
    }

    #[test]
    fn service_keys_of_flows() {
        let v4 = FlowKey4 {
            dst_addr: [192, 0, 2, 1],
            dst_port: 80,
            proto: PROTO_TCP,
            ..FlowKey4::default()
        };
        assert_eq!(
            v4.service_key().key,
            ServiceKey {
                addr: [192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                port: 80,
                proto: PROTO_TCP,
                family: FAMILY_IPV4,
                vlan: 0,
            }
        );
        let tagged = FlowKey4 {
            vlan: [0xa1, 0x0f, 0],
            ..v4
        };
        assert_eq!(tagged.service_key().key.vlan, 4001);
        let v6 = FlowKey6 {
            dst_addr: [0x20; 16],
            dst_port: 53,
            proto: PROTO_UDP,
            vlan: [0xa1, 0x4f, 0x06],
            ..FlowKey6::default()
        };
        assert_eq!(
            v6.service_key().key,
            ServiceKey {
                addr: [0x20; 16],
                port: 53,
                proto: PROTO_UDP,
                family: FAMILY_IPV6,
                vlan: vlan_path(&[100, 4001]),
            }
        );
        assert_eq!(
            tagged.service_key().any_port().key,
            ServiceKey {
                port: crate::limits::ANY_PORT,
                vlan: 4001,
                ..v4.service_key().key
            }
        );
        assert_eq!(v6.service_key().any_port().key.port, 0);
        assert_eq!(
            v6.service_key().any_port().key.vlan,
            vlan_path(&[100, 4001])
        );
    }
}
