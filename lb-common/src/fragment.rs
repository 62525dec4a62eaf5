//! IP fragments of VIP flows: the keys and value of the two fragment maps.
//!
//! Only a datagram's first fragment carries its transport header, and so its
//! ports. The XDP program remembers them under the datagram's fragment key
//! (source, destination, protocol, IP identification, VLAN), as Cilium does, and
//! sends the later fragments after the first one, as packets of its flow.

/// How long after a datagram's first fragment its later fragments follow it
/// (1 s). The fragments of one datagram leave the client back to back; a
/// later fragment that comes after this finds no ports (it is an orphan,
/// dropped), so that a new datagram that reuses an identification never
/// follows an old one's flow.
pub const FRAGMENT_LIFETIME_NS: u64 = 1_000_000_000;

/// Key of [`FRAGMENTS4_MAP`]: one fragmented IPv4 datagram.
///
/// [`FRAGMENTS4_MAP`]: crate::limits::FRAGMENTS4_MAP
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragmentKey4 {
    /// Client address (network byte order).
    pub src_addr: [u8; 4],
    /// VIP (network byte order).
    pub dst_addr: [u8; 4],
    /// The IPv4 identification, host byte order.
    pub id: u32,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    ///
    /// [`PROTO_TCP`]: crate::ip::PROTO_TCP
    /// [`PROTO_UDP`]: crate::ip::PROTO_UDP
    pub proto: u8,
    /// The VLAN path of the datagram's frames (see [`crate::vlan`]), 24
    /// bits little-endian, as in the flow keys.
    pub vlan: [u8; 3],
}

impl FragmentKey4 {
    /// The key of a datagram from its parts, assembled in two 64-bit words
    /// (see `FlowKey4::from_parts`); `src_addr` and `dst_addr` are the
    /// address bytes as they are in the packet, read as a native-endian `u32`;
    /// `vlan` is the frame's VLAN path (below 2^24).
    #[inline(always)]
    pub fn from_parts(src_addr: u32, dst_addr: u32, id: u32, proto: u8, vlan: u32) -> Self {
        let words = [
            u64::from(src_addr) | u64::from(dst_addr) << 32,
            id_word(id, proto, vlan),
        ];
        // SAFETY: 16 bytes, 8-byte aligned, every bit pattern is a valid key;
        // the fields sit where the layout test checks (little-endian, asserted
        // in the crate root).
        unsafe { core::mem::transmute(words) }
    }
}

/// Key of [`FRAGMENTS6_MAP`]: one fragmented IPv6 datagram.
///
/// [`FRAGMENTS6_MAP`]: crate::limits::FRAGMENTS6_MAP
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragmentKey6 {
    /// Client address (network byte order).
    pub src_addr: [u8; 16],
    /// VIP (network byte order).
    pub dst_addr: [u8; 16],
    /// The fragment header's identification, host byte order.
    pub id: u32,
    /// The fragment header's next header: [`PROTO_TCP`] or [`PROTO_UDP`].
    ///
    /// [`PROTO_TCP`]: crate::ip::PROTO_TCP
    /// [`PROTO_UDP`]: crate::ip::PROTO_UDP
    pub proto: u8,
    /// The VLAN path of the datagram's frames (see [`crate::vlan`]), 24
    /// bits little-endian, as in the flow keys.
    pub vlan: [u8; 3],
}

impl FragmentKey6 {
    /// The key of a datagram from its parts, assembled in five 64-bit words,
    /// as [`FragmentKey4::from_parts`]; each address is two native-endian
    /// `u64`s of its bytes.
    #[inline(always)]
    pub fn from_parts(
        src_addr: [u64; 2],
        dst_addr: [u64; 2],
        id: u32,
        proto: u8,
        vlan: u32,
    ) -> Self {
        let words = [
            src_addr[0],
            src_addr[1],
            dst_addr[0],
            dst_addr[1],
            id_word(id, proto, vlan),
        ];
        // SAFETY: as in `FragmentKey4::from_parts`, for 40 bytes.
        unsafe { core::mem::transmute(words) }
    }
}

/// The last word of both fragment keys: identification, protocol, VLAN path.
#[inline(always)]
fn id_word(id: u32, proto: u8, vlan: u32) -> u64 {
    u64::from(id) | u64::from(proto) << 32 | u64::from(vlan) << 40
}

/// Value of both fragment maps: the ports of a datagram's first fragment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragmentPorts {
    /// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC_COARSE) when the first
    /// fragment came: later fragments follow it for [`FRAGMENT_LIFETIME_NS`].
    pub first_seen_ns: u64,
    /// Client port, host byte order.
    pub src_port: u16,
    /// VIP port, host byte order.
    pub dst_port: u16,
    /// Explicit padding.
    pub _pad: u32,
}

const _: () = {
    assert!(size_of::<FragmentKey4>() == 16);
    assert!(size_of::<FragmentKey6>() == 40);
    assert!(size_of::<FragmentPorts>() == 16);
};

#[cfg(feature = "user")]
mod pod {
    use super::{FragmentKey4, FragmentKey6, FragmentPorts};

    // SAFETY: each is #[repr(C)], holds only integers and byte arrays, and
    // has no implicit padding (the size assertions and layout tests here).
    unsafe impl aya::Pod for FragmentKey4 {}
    unsafe impl aya::Pod for FragmentKey6 {}
    unsafe impl aya::Pod for FragmentPorts {}
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;
    use crate::ip::{PROTO_TCP, PROTO_UDP};

    #[test]
    fn fragment_layout() {
        assert_eq!(offset_of!(FragmentKey4, src_addr), 0);
        assert_eq!(offset_of!(FragmentKey4, dst_addr), 4);
        assert_eq!(offset_of!(FragmentKey4, id), 8);
        assert_eq!(offset_of!(FragmentKey4, proto), 12);
        assert_eq!(offset_of!(FragmentKey4, vlan), 13);
        assert_eq!(offset_of!(FragmentKey6, src_addr), 0);
        assert_eq!(offset_of!(FragmentKey6, dst_addr), 16);
        assert_eq!(offset_of!(FragmentKey6, id), 32);
        assert_eq!(offset_of!(FragmentKey6, proto), 36);
        assert_eq!(offset_of!(FragmentKey6, vlan), 37);
        assert_eq!(offset_of!(FragmentPorts, first_seen_ns), 0);
        assert_eq!(offset_of!(FragmentPorts, src_port), 8);
        assert_eq!(offset_of!(FragmentPorts, dst_port), 10);
        assert_eq!(offset_of!(FragmentPorts, _pad), 12);
    }

    #[test]
    fn keys_from_parts_fill_every_field() {
        let src = [198, 51, 100, 7];
        let dst = [192, 0, 2, 1];
        assert_eq!(
            FragmentKey4::from_parts(
                u32::from_ne_bytes(src),
                u32::from_ne_bytes(dst),
                0xbeef,
                PROTO_UDP,
                4001
            ),
            FragmentKey4 {
                src_addr: src,
                dst_addr: dst,
                id: 0xbeef,
                proto: PROTO_UDP,
                vlan: [0xa1, 0x0f, 0],
            }
        );
        let src6: [u8; 16] = core::array::from_fn(|i| i as u8);
        let dst6: [u8; 16] = core::array::from_fn(|i| 0xf0 | i as u8);
        let halves = |a: [u8; 16]| {
            [
                u64::from_ne_bytes(a[..8].try_into().unwrap()),
                u64::from_ne_bytes(a[8..].try_into().unwrap()),
            ]
        };
        assert_eq!(
            FragmentKey6::from_parts(
                halves(src6),
                halves(dst6),
                0x0bad_cafe,
                PROTO_TCP,
                100 << 12 | 4001
            ),
            FragmentKey6 {
                src_addr: src6,
                dst_addr: dst6,
                id: 0x0bad_cafe,
                proto: PROTO_TCP,
                vlan: [0xa1, 0x4f, 0x06],
            }
        );
    }
}
