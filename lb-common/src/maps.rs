//! Map names, size limits and the keys/values stored in each map.
//!
//! | map | kind | key -> value |
//! | --- | --- | --- |
//! | [`SERVICES_MAP`] | hash | [`ServiceKey`] -> [`Service`] |
//! | [`BACKENDS_MAP`] | array | service id -> [`BackendSet`] |
//! | [`BACKEND_CONNS_MAP`] | array | service id -> [`BackendConnSet`] |
//! | [`CONNTRACK_MAP`] | LRU hash | [`FlowKey`] -> [`Flow`] |
//! | [`SERVICE_PORTS_MAP`] | array | port -> `PORT_*` protocol bits |
//! | [`VERDICT_STATS_MAP`] | per-CPU array | verdict reason -> [`Counters`] |
//! | [`SERVICE_STATS_MAP`] | per-CPU array | service id -> [`Counters`] |
//! | [`BACKEND_STATS_MAP`] | per-CPU array | [`backend_index`] -> [`Counters`] |

/// Name of the service map (hash: [`ServiceKey`] -> [`Service`]), written by the control plane.
pub const SERVICES_MAP: &str = "SERVICES";
/// Name of the backend map (array: service id -> [`BackendSet`]), written by the control plane.
pub const BACKENDS_MAP: &str = "BACKENDS";
/// Name of the per-backend connection counters (array: service id -> [`BackendConnSet`]).
/// The XDP program adjusts them atomically; the control plane's sweeper overwrites
/// them with the counts it finds in the connection table.
pub const BACKEND_CONNS_MAP: &str = "BACKEND_CONNS";
/// Name of the connection table (LRU hash: [`FlowKey`] -> [`Flow`]), written by XDP,
/// expired by the control plane.
pub const CONNTRACK_MAP: &str = "CONNTRACK";
/// Name of the port prefilter (array: destination port -> `PORT_*` bits of the
/// protocols some service uses on that port), written by the control plane.
/// Traffic to a port no service uses is passed before any hash lookup.
pub const SERVICE_PORTS_MAP: &str = "SERVICE_PORTS";
/// Name of the per-CPU verdict counters (array: `REASON_*` -> [`Counters`]).
pub const VERDICT_STATS_MAP: &str = "VERDICT_STATS";
/// Name of the per-CPU service counters (array: service id -> [`Counters`]).
pub const SERVICE_STATS_MAP: &str = "SERVICE_STATS";
/// Name of the per-CPU backend counters (array: [`backend_index`] -> [`Counters`]).
pub const BACKEND_STATS_MAP: &str = "BACKEND_STATS";
/// Name of the XDP load-balancing program in the object file.
pub const XDP_PROGRAM: &str = "lb_xdp";

/// Most services one director can hold (service ids are `0..MAX_SERVICES`).
pub const MAX_SERVICES: u32 = 128;
/// Most backends (real servers) one service can hold (slots are `0..MAX_BACKENDS`).
pub const MAX_BACKENDS: usize = 256;
/// Default capacity of the connection table; the control plane may size it differently.
pub const DEFAULT_MAX_FLOWS: u32 = 1 << 20;
/// Most director NICs one `lb` attaches to.
pub const MAX_IFACES: u32 = 64;
/// Largest backend weight (as IPVS: 0..=65535).
pub const MAX_WEIGHT: u32 = 65_535;

/// Address family of an IPv4 key or value (matches `AF_INET`).
pub const FAMILY_IPV4: u8 = 2;
/// Address family of an IPv6 key or value (matches `AF_INET6`).
pub const FAMILY_IPV6: u8 = 10;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// Key of [`SERVICES_MAP`]: a virtual service (VIP, port, protocol).
///
/// `addr` holds the address in network byte order; an IPv4 address fills the
/// first four bytes and the rest are zero. `port` is in host byte order.
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
    pub family: u8,
}

/// Value of [`SERVICES_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Index of this service in [`BACKENDS_MAP`], [`BACKEND_CONNS_MAP`] and the stats maps.
    pub id: u32,
    /// Reserved for service flags (persistence, port ranges); zero today.
    pub flags: u32,
}

/// Backend slot is unused.
pub const BACKEND_STATE_EMPTY: u32 = 0;
/// Backend is healthy and may receive new flows (if its weight is above zero).
pub const BACKEND_STATE_UP: u32 = 1;
/// Backend failed its health check: no new flows; existing flows continue.
pub const BACKEND_STATE_DOWN: u32 = 2;
/// Backend was removed from the service while flows still use it: no new
/// flows; existing flows finish on it, then the control plane empties the slot.
pub const BACKEND_STATE_REMOVED: u32 = 3;

/// One real server of a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Real server address (network byte order, IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// Real server MAC: the destination MAC of forwarded frames.
    pub mac: [u8; 6],
    /// MAC of the director NIC the real server is reached through: the
    /// source MAC of forwarded frames.
    pub nic_mac: [u8; 6],
    /// Director NIC through which the real server is reached.
    pub ifindex: u32,
    /// WLC weight, `0..=MAX_WEIGHT`; 0 quiesces the backend (no new flows).
    pub weight: u32,
    /// One of the `BACKEND_STATE_*` constants.
    pub state: u32,
    /// This backend's own slot number. The selection loop records the winner
    /// by this loaded value rather than by the loop index, which keeps the
    /// verifier's state count small (see `wlc`).
    pub slot: u32,
}

/// Value of [`BACKENDS_MAP`]: all backends of one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSet {
    /// Number of slots in use: backends live in `backends[..len]`.
    pub len: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Backend slots; a slot keeps its index for the life of the backend, so
    /// flows in the connection table stay bound to it.
    pub backends: [Backend; MAX_BACKENDS],
}

impl Default for BackendSet {
    fn default() -> Self {
        Self {
            len: 0,
            _pad: 0,
            backends: [Backend::default(); MAX_BACKENDS],
        }
    }
}

/// Connection counters of one backend, as IPVS's ActiveConn / InActConn.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendConns {
    /// Flows in ESTABLISHED.
    pub active: u64,
    /// Flows in any other state (SYN_RECV, FIN_WAIT, CLOSE, UDP).
    pub inactive: u64,
}

/// Value of [`BACKEND_CONNS_MAP`]: the counters of every slot of one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendConnSet {
    /// Counters indexed by backend slot.
    pub conns: [BackendConns; MAX_BACKENDS],
}

impl Default for BackendConnSet {
    fn default() -> Self {
        Self {
            conns: [BackendConns::default(); MAX_BACKENDS],
        }
    }
}

/// Key of [`CONNTRACK_MAP`]: the client-to-VIP 5-tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Client address (network byte order, IPv4 in the first 4 bytes).
    pub src_addr: [u8; 16],
    /// VIP (network byte order, IPv4 in the first 4 bytes).
    pub dst_addr: [u8; 16],
    /// Client port, host byte order.
    pub src_port: u16,
    /// VIP port, host byte order.
    pub dst_port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// Explicit padding.
    pub _pad: [u8; 2],
}

/// Value of [`CONNTRACK_MAP`]: where a flow goes and what state it is in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC, tick resolution) of the last packet seen.
    pub last_seen_ns: u64,
    /// Service the flow belongs to.
    pub service_id: u32,
    /// Backend slot within the service.
    pub backend_slot: u32,
    /// One of the `conn_state::STATE_*` constants.
    pub state: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// [`SERVICE_PORTS_MAP`] bit: some TCP service uses this port.
pub const PORT_TCP: u32 = 1;
/// [`SERVICE_PORTS_MAP`] bit: some UDP service uses this port.
pub const PORT_UDP: u32 = 2;
/// Size of [`SERVICE_PORTS_MAP`]: one entry per port.
pub const SERVICE_PORTS_ENTRIES: u32 = 1 << 16;

/// The [`SERVICE_PORTS_MAP`] bit of an IP protocol (0 for any other protocol).
#[inline(always)]
pub const fn port_bit(proto: u8) -> u32 {
    match proto {
        PROTO_TCP => PORT_TCP,
        PROTO_UDP => PORT_UDP,
        _ => 0,
    }
}

/// Packet, byte and new-connection counters (per CPU in the stats maps).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets (IPVS InPkts).
    pub packets: u64,
    /// IP-layer bytes, Ethernet header excluded (IPVS InBytes).
    pub bytes: u64,
    /// New flows scheduled (IPVS Conns); zero in the verdict counters.
    pub new_conns: u64,
}

/// Verdict reason: forwarded to a backend with `XDP_TX`.
pub const REASON_FORWARDED: u32 = 0;
/// Verdict reason: not IPv4/IPv6 (ARP, LLDP, ...): `XDP_PASS`.
pub const REASON_NOT_IP: u32 = 1;
/// Verdict reason: IP but not TCP/UDP, or an IPv6 extension header we do not walk: `XDP_PASS`.
pub const REASON_NOT_L4: u32 = 2;
/// Verdict reason: an IP fragment (no L4 header to match on): `XDP_PASS`.
pub const REASON_FRAGMENT: u32 = 3;
/// Verdict reason: no service for (destination, port, protocol): `XDP_PASS`.
pub const REASON_NO_SERVICE: u32 = 4;
/// Verdict reason: truncated or inconsistent headers: `XDP_DROP`.
pub const REASON_MALFORMED: u32 = 5;
/// Verdict reason: a new flow for a service with no healthy backend of weight > 0: `XDP_DROP`.
pub const REASON_NO_BACKEND: u32 = 6;
/// Verdict reason: the maps disagree (a service id past the backend map):
/// `XDP_DROP`. Never expected; counted to make it visible.
pub const REASON_INTERNAL: u32 = 7;
/// Number of verdict reasons (size of [`VERDICT_STATS_MAP`]).
pub const NUM_REASONS: u32 = 8;

/// Human-readable name of a verdict reason, for `lb stats`.
pub const fn reason_name(reason: u32) -> &'static str {
    match reason {
        REASON_FORWARDED => "forwarded",
        REASON_NOT_IP => "pass_not_ip",
        REASON_NOT_L4 => "pass_not_tcp_udp",
        REASON_FRAGMENT => "pass_fragment",
        REASON_NO_SERVICE => "pass_no_service",
        REASON_MALFORMED => "drop_malformed",
        REASON_NO_BACKEND => "drop_no_backend",
        REASON_INTERNAL => "drop_internal",
        _ => "unknown",
    }
}

/// Index of a backend's counters in [`BACKEND_STATS_MAP`].
pub const fn backend_index(service_id: u32, slot: u32) -> u32 {
    service_id * MAX_BACKENDS as u32 + slot
}

/// Size of [`BACKEND_STATS_MAP`].
pub const BACKEND_STATS_ENTRIES: u32 = MAX_SERVICES * MAX_BACKENDS as u32;

const _: () = {
    assert!(size_of::<ServiceKey>() == 20);
    assert!(size_of::<Service>() == 8);
    assert!(size_of::<Backend>() == 44);
    assert!(size_of::<BackendSet>() == 8 + 44 * MAX_BACKENDS);
    assert!(size_of::<BackendConns>() == 16);
    assert!(size_of::<BackendConnSet>() == 16 * MAX_BACKENDS);
    assert!(size_of::<FlowKey>() == 40);
    assert!(size_of::<Flow>() == 24);
    assert!(size_of::<Counters>() == 24);
    assert!(MAX_BACKENDS.is_power_of_two());
};

#[cfg(feature = "user")]
mod pod {
    use super::*;

    // SAFETY: every type below is #[repr(C)], holds only integers and byte
    // arrays, and has no implicit padding (checked by the size assertions above
    // and the offset tests below).
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for BackendSet {}
    unsafe impl aya::Pod for BackendConnSet {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for Counters {}
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;

    #[test]
    fn service_key_layout() {
        assert_eq!(offset_of!(ServiceKey, addr), 0);
        assert_eq!(offset_of!(ServiceKey, port), 16);
        assert_eq!(offset_of!(ServiceKey, proto), 18);
        assert_eq!(offset_of!(ServiceKey, family), 19);
    }

    #[test]
    fn service_layout() {
        assert_eq!(offset_of!(Service, id), 0);
        assert_eq!(offset_of!(Service, flags), 4);
    }

    #[test]
    fn backend_layout() {
        assert_eq!(offset_of!(Backend, addr), 0);
        assert_eq!(offset_of!(Backend, mac), 16);
        assert_eq!(offset_of!(Backend, nic_mac), 22);
        assert_eq!(offset_of!(Backend, ifindex), 28);
        assert_eq!(offset_of!(Backend, weight), 32);
        assert_eq!(offset_of!(Backend, state), 36);
        assert_eq!(offset_of!(Backend, slot), 40);
        assert_eq!(offset_of!(BackendSet, len), 0);
        assert_eq!(offset_of!(BackendSet, backends), 8);
    }

    #[test]
    fn conns_layout() {
        assert_eq!(offset_of!(BackendConns, active), 0);
        assert_eq!(offset_of!(BackendConns, inactive), 8);
        assert_eq!(offset_of!(BackendConnSet, conns), 0);
    }

    #[test]
    fn flow_layout() {
        assert_eq!(offset_of!(FlowKey, src_addr), 0);
        assert_eq!(offset_of!(FlowKey, dst_addr), 16);
        assert_eq!(offset_of!(FlowKey, src_port), 32);
        assert_eq!(offset_of!(FlowKey, dst_port), 34);
        assert_eq!(offset_of!(FlowKey, proto), 36);
        assert_eq!(offset_of!(FlowKey, family), 37);
        assert_eq!(offset_of!(FlowKey, _pad), 38);
        assert_eq!(offset_of!(Flow, last_seen_ns), 0);
        assert_eq!(offset_of!(Flow, service_id), 8);
        assert_eq!(offset_of!(Flow, backend_slot), 12);
        assert_eq!(offset_of!(Flow, state), 16);
        assert_eq!(offset_of!(Flow, _pad), 20);
    }

    #[test]
    fn counters_layout() {
        assert_eq!(offset_of!(Counters, packets), 0);
        assert_eq!(offset_of!(Counters, bytes), 8);
        assert_eq!(offset_of!(Counters, new_conns), 16);
    }

    #[test]
    fn every_reason_has_a_name() {
        for reason in 0..NUM_REASONS {
            assert_ne!(reason_name(reason), "unknown", "reason {reason}");
        }
        assert_eq!(reason_name(NUM_REASONS), "unknown");
    }

    #[test]
    fn port_bits() {
        assert_eq!(port_bit(PROTO_TCP), PORT_TCP);
        assert_eq!(port_bit(PROTO_UDP), PORT_UDP);
        assert_eq!(port_bit(1), 0);
        assert_eq!(PORT_TCP & PORT_UDP, 0);
    }

    #[test]
    fn backend_index_is_dense() {
        assert_eq!(backend_index(0, 0), 0);
        assert_eq!(backend_index(1, 0), MAX_BACKENDS as u32);
        assert_eq!(
            backend_index(MAX_SERVICES - 1, MAX_BACKENDS as u32 - 1),
            BACKEND_STATS_ENTRIES - 1
        );
    }
}
