//! Virtual services: the key and value of the service map, the aligned key
//! the XDP program looks services up with, the port prefilter's bits and
//! the key of the VIP map.

use core::net::IpAddr;

use crate::ip::{FAMILY_IPV4, FAMILY_IPV6, PROTO_TCP, PROTO_UDP, addr_key};

/// Key of [`SERVICES_MAP`]: a virtual service (VIP, port, protocol, VLAN).
///
/// `addr` holds the address in network byte order; an IPv4 address fills the
/// first four bytes and the rest are zero. `port` is in host byte order.
///
/// [`SERVICES_MAP`]: crate::limits::SERVICES_MAP
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// Virtual IP address (network byte order, IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// Destination port, host byte order.
    pub port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    ///
    /// [`FAMILY_IPV4`]: crate::ip::FAMILY_IPV4
    /// [`FAMILY_IPV6`]: crate::ip::FAMILY_IPV6
    pub family: u8,
    /// The VLAN path of the frames the service takes (see [`crate::vlan`]):
    /// 0 untagged, else the VID (`outer << 12 | inner` for two tags).
    pub vlan: u32,
}

impl ServiceKey {
    /// The key of the service `vip`:`port` over `proto` ([`PROTO_TCP`] or
    /// [`PROTO_UDP`]) on the VLAN path `vlan` (see [`crate::vlan`]).
    pub fn new(vip: IpAddr, port: u16, proto: u8, vlan: u32) -> Self {
        let (addr, family) = addr_key(vip);
        Self {
            addr,
            port,
            proto,
            family,
            vlan,
        }
    }
}

/// Value of [`SERVICES_MAP`].
///
/// [`SERVICES_MAP`]: crate::limits::SERVICES_MAP
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Index of this service in [`BACKENDS_MAP`], [`BACKEND_CONNS_MAP`],
    /// [`WLC_TREE_MAP`] and the stats maps.
    ///
    /// [`BACKENDS_MAP`]: crate::limits::BACKENDS_MAP
    /// [`BACKEND_CONNS_MAP`]: crate::limits::BACKEND_CONNS_MAP
    /// [`WLC_TREE_MAP`]: crate::limits::WLC_TREE_MAP
    pub id: u32,
    /// `SERVICE_FLAG_*` bits.
    pub flags: u32,
    /// Client persistence (IPVS's `-p`, keepalived's `persistence_timeout`),
    /// in seconds: while a template of the client's masked address lives,
    /// its new connections go to the template's backend. 0: none.
    pub persistence_timeout_s: u32,
    /// How many leading bits of the client's address a persistence
    /// template covers (IPVS's `-M`, keepalived's
    /// `persistence_granularity`): 32 (IPv4) or 128 (IPv6) for one client.
    pub persistence_prefix: u32,
    /// How new flows are scheduled: `SCHEDULER_WLC` (0, the default),
    /// `SCHEDULER_RR`, `SCHEDULER_WRR`, `SCHEDULER_SH` or `SCHEDULER_MH`
    /// (see [`crate::schedule`]).
    pub scheduler: u32,
}

/// Service flag: a TCP SYN that finds no backend to take it is answered with
/// a TCP RST from XDP (`no_backend = "reject"`), so the client fails at once
/// instead of retrying its SYN; without it the SYN is dropped.
pub const SERVICE_FLAG_REJECT: u32 = 1;

/// Service flag: any TCP packet of an unknown flow opens one (IPVS's
/// `sloppy_tcp`), as after a failover to a director that never saw the
/// flow's SYN; without it only a SYN does, and other packets of unknown
/// flows are dropped, so that a flood of spoofed ACKs opens nothing.
pub const SERVICE_FLAG_SLOPPY_TCP: u32 = 2;

/// A [`ServiceKey`] in an 8-byte aligned buffer of three 64-bit words,
/// assembled in registers: the key the XDP program looks services up with.
/// The verifier refuses misaligned stack accesses, and LLVM, told that
/// misaligned accesses are fine (see `lb-ebpf/build.rs`), merges the narrow
/// stores that build a 4-byte aligned key into 8-byte stores at 4-byte
/// offsets.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug)]
pub struct AlignedServiceKey {
    /// The key.
    pub key: ServiceKey,
}

impl AlignedServiceKey {
    /// The same key with the port [`ANY_PORT`]: the key of a service over
    /// every port of its VIP.
    ///
    /// [`ANY_PORT`]: crate::limits::ANY_PORT
    #[inline(always)]
    pub fn any_port(&self) -> Self {
        // SAFETY: 24 bytes, 8-byte aligned, no padding; the port is the low
        // 16 bits of the last word (`service_key_tail`).
        let mut words: [u64; 3] = unsafe { core::mem::transmute(*self) };
        words[2] &= !0xffff;
        Self::from_words(words)
    }

    /// The key whose words are `words`.
    #[inline(always)]
    pub(crate) fn from_words(words: [u64; 3]) -> Self {
        // SAFETY: 24 bytes, 8-byte aligned, every bit pattern is valid; the
        // fields sit at the offsets the layout test checks (little-endian,
        // asserted in the crate root).
        unsafe { core::mem::transmute(words) }
    }
}

/// The last 8 bytes of an [`AlignedServiceKey`]: port, protocol, family
/// and VLAN path, as one little-endian word.
#[inline(always)]
pub(crate) fn service_key_tail(port: u16, proto: u8, family: u8, vlan: u32) -> u64 {
    u64::from(port) | u64::from(proto) << 16 | u64::from(family) << 24 | u64::from(vlan) << 32
}

/// [`SERVICE_PORTS_MAP`] bit: some TCP service uses this port.
///
/// [`SERVICE_PORTS_MAP`]: crate::limits::SERVICE_PORTS_MAP
pub const PORT_TCP: u32 = 1;
/// [`SERVICE_PORTS_MAP`] bit: some UDP service uses this port.
///
/// [`SERVICE_PORTS_MAP`]: crate::limits::SERVICE_PORTS_MAP
pub const PORT_UDP: u32 = 2;
/// Size of [`SERVICE_PORTS_MAP`]: one entry per port.
///
/// [`SERVICE_PORTS_MAP`]: crate::limits::SERVICE_PORTS_MAP
pub const SERVICE_PORTS_ENTRIES: u32 = 1 << 16;

/// The [`SERVICE_PORTS_MAP`] bit of an IP protocol (0 for any other protocol).
///
/// [`SERVICE_PORTS_MAP`]: crate::limits::SERVICE_PORTS_MAP
#[inline(always)]
pub const fn port_bit(proto: u8) -> u32 {
    match proto {
        PROTO_TCP => PORT_TCP,
        PROTO_UDP => PORT_UDP,
        _ => 0,
    }
}

/// Key of [`VIPS_MAP`]: a VIP, the address of one or more services (its
/// value: the `PORT_*` bits of their protocols). Built in 64-bit words by
/// the XDP program, like an [`AlignedServiceKey`].
///
/// [`VIPS_MAP`]: crate::limits::VIPS_MAP
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    /// The address (network byte order, IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// Explicit padding.
    pub _pad: [u8; 7],
}

impl VipKey {
    /// The VIP of service `service`.
    pub fn of(service: &ServiceKey) -> Self {
        Self {
            addr: service.addr,
            family: service.family,
            _pad: [0; 7],
        }
    }

    /// The key of IPv4 address `addr`: its bytes as they are in the packet,
    /// read as a native-endian `u32`.
    #[inline(always)]
    pub fn v4(addr: u32) -> Self {
        Self::from_words([u64::from(addr), 0, u64::from(FAMILY_IPV4)])
    }

    /// The key of IPv6 address `addr`: two native-endian `u64`s of its bytes.
    #[inline(always)]
    pub fn v6(addr: [u64; 2]) -> Self {
        Self::from_words([addr[0], addr[1], u64::from(FAMILY_IPV6)])
    }

    #[inline(always)]
    fn from_words(words: [u64; 3]) -> Self {
        // SAFETY: 24 bytes, 8-byte aligned, every bit pattern is valid; the
        // fields sit at the offsets the layout test checks (little-endian,
        // asserted in the crate root).
        unsafe { core::mem::transmute(words) }
    }
}

const _: () = {
    assert!(size_of::<VipKey>() == 24);
    assert!(size_of::<ServiceKey>() == 24);
    assert!(size_of::<AlignedServiceKey>() == 24);
    assert!(core::mem::offset_of!(AlignedServiceKey, key) == 0);
    assert!(size_of::<Service>() == 20);
};

#[cfg(feature = "user")]
mod pod {
    use super::{Service, ServiceKey, VipKey};

    // SAFETY: both are #[repr(C)], hold only integers and byte arrays, and
    // have no implicit padding (the size assertions and layout tests here).
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for VipKey {}
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;
    use crate::ip::{FAMILY_IPV4, FAMILY_IPV6};

    #[test]
    fn service_key_layout() {
        assert_eq!(offset_of!(ServiceKey, addr), 0);
        assert_eq!(offset_of!(ServiceKey, port), 16);
        assert_eq!(offset_of!(ServiceKey, proto), 18);
        assert_eq!(offset_of!(ServiceKey, family), 19);
        assert_eq!(offset_of!(ServiceKey, vlan), 20);
    }

    #[test]
    fn vip_key_layout() {
        assert_eq!(offset_of!(VipKey, addr), 0);
        assert_eq!(offset_of!(VipKey, family), 16);
        assert_eq!(offset_of!(VipKey, _pad), 17);
    }

    #[test]
    fn vip_keys_from_packets_match_the_control_planes() {
        let v4 = [192, 0, 2, 200];
        assert_eq!(
            VipKey::v4(u32::from_ne_bytes(v4)),
            VipKey::of(&ServiceKey::new(IpAddr::from(v4), 80, PROTO_TCP, 0))
        );
        let v6: [u8; 16] = core::array::from_fn(|i| 0x20 + i as u8);
        let words = [
            u64::from_ne_bytes(v6[..8].try_into().unwrap()),
            u64::from_ne_bytes(v6[8..].try_into().unwrap()),
        ];
        assert_eq!(
            VipKey::v6(words),
            VipKey::of(&ServiceKey::new(IpAddr::from(v6), 53, PROTO_UDP, 4001))
        );
    }

    #[test]
    fn service_layout() {
        assert_eq!(offset_of!(Service, id), 0);
        assert_eq!(offset_of!(Service, flags), 4);
        assert_eq!(offset_of!(Service, persistence_timeout_s), 8);
        assert_eq!(offset_of!(Service, persistence_prefix), 12);
        assert_eq!(offset_of!(Service, scheduler), 16);
    }

    #[test]
    fn port_bits() {
        assert_eq!(port_bit(PROTO_TCP), PORT_TCP);
        assert_eq!(port_bit(PROTO_UDP), PORT_UDP);
        assert_eq!(port_bit(1), 0);
        assert_eq!(PORT_TCP & PORT_UDP, 0);
    }

    #[test]
    fn service_keys_by_family() {
        assert_eq!(
            ServiceKey::new(IpAddr::from([192, 0, 2, 1]), 80, PROTO_TCP, 0),
            ServiceKey {
                addr: [192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                port: 80,
                proto: PROTO_TCP,
                family: FAMILY_IPV4,
                vlan: 0,
            }
        );
        assert_eq!(
            ServiceKey::new(IpAddr::from([0x20; 16]), 53, PROTO_UDP, 4001),
            ServiceKey {
                addr: [0x20; 16],
                port: 53,
                proto: PROTO_UDP,
                family: FAMILY_IPV6,
                vlan: 4001,
            }
        );
    }
}
