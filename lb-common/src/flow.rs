//! Map names, size limits and the keys/values stored in each map.
//!
//! | map | kind | key -> value |
//! | --- | --- | --- |
//! | [`SERVICES_MAP`] | hash | [`ServiceKey`] -> [`Service`] |
//! | [`BACKENDS_MAP`] | array | service id -> [`BackendSet`] |
//! | [`BACKEND_CONNS_MAP`] | array | service id -> [`BackendConnSet`] |
//! | [`WLC_TREE_MAP`] | array | service id -> [`LoadTree`] |
//! | [`CONNTRACK4_MAP`] | LRU hash | [`FlowKey4`] -> [`Flow`] |
//! | [`CONNTRACK6_MAP`] | LRU hash | [`FlowKey6`] -> [`Flow`] |
//! | [`FLOW_CACHE4_MAP`] | array, one block of sets per CPU | [`flow_cache_index`] -> [`CachedFlowSet4`] |
//! | [`FLOW_CACHE6_MAP`] | array, one block of sets per CPU | [`flow_cache_index`] -> [`CachedFlowSet6`] |
//! | [`SERVICE_PORTS_MAP`] | array | port -> `PORT_*` protocol bits |
//! | [`VERDICT_STATS_MAP`] | per-CPU array | verdict reason -> [`Counters`] |
//! | [`SERVICE_STATS_MAP`] | per-CPU array | service id -> [`Counters`] |
//! | [`BACKEND_STATS_MAP`] | per-CPU array | [`backend_index`] -> [`Counters`] |

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Name of the service map (hash: [`ServiceKey`] -> [`Service`]), written by the control plane.
pub const SERVICES_MAP: &str = "SERVICES";
/// Name of the backend map (array: service id -> [`BackendSet`]), written by the control plane.
pub const BACKENDS_MAP: &str = "BACKENDS";
/// Name of the per-backend connection counters (array: service id -> [`BackendConnSet`]).
/// The XDP program adjusts them atomically; the control plane's sweeper overwrites
/// them with the counts it finds in the connection table.
pub const BACKEND_CONNS_MAP: &str = "BACKEND_CONNS";
/// Name of the scheduler's tournament trees (array: service id -> [`LoadTree`]):
/// which backend of each service gets the next new flow. The XDP program
/// repairs a backend's path whenever its counters change; the control plane
/// rebuilds a service's tree whenever it writes its backends or counters.
pub const WLC_TREE_MAP: &str = "WLC_TREE";
/// Name of the IPv4 connection table (LRU hash: [`FlowKey4`] -> [`Flow`]),
/// written by XDP, expired by the control plane.
pub const CONNTRACK4_MAP: &str = "CONNTRACK4";
/// Name of the IPv6 connection table (LRU hash: [`FlowKey6`] -> [`Flow`]),
/// written by XDP, expired by the control plane.
pub const CONNTRACK6_MAP: &str = "CONNTRACK6";
/// Name of the port prefilter (array: destination port -> `PORT_*` bits of the
/// protocols some service uses on that port), written by the control plane.
/// Traffic to a port no service uses is passed before any hash lookup.
pub const SERVICE_PORTS_MAP: &str = "SERVICE_PORTS";
/// Name of the IPv4 flow cache (array: [`flow_cache_index`] -> [`CachedFlowSet4`]).
pub const FLOW_CACHE4_MAP: &str = "FLOW_CACHE4";
/// Name of the IPv6 flow cache (array: [`flow_cache_index`] -> [`CachedFlowSet6`]).
pub const FLOW_CACHE6_MAP: &str = "FLOW_CACHE6";
/// Name of the per-CPU verdict counters (array: `REASON_*` -> [`Counters`]).
/// The data path counts every verdict but `forwarded` here; the control
/// plane keeps the `forwarded` total of removed services in it.
pub const VERDICT_STATS_MAP: &str = "VERDICT_STATS";
/// Name of the per-CPU service counters (array: service id -> [`Counters`]):
/// what backends that no longer hold a slot of the service had forwarded,
/// written by the control plane. A service's totals are this plus its
/// backends' [`BACKEND_STATS_MAP`] counters.
pub const SERVICE_STATS_MAP: &str = "SERVICE_STATS";
/// Name of the per-CPU backend counters (array: [`backend_index`] -> [`Counters`]):
/// the data path counts every forwarded packet here, once.
pub const BACKEND_STATS_MAP: &str = "BACKEND_STATS";
/// Name of the XDP load-balancing program in the object file.
pub const XDP_PROGRAM: &str = "lb_xdp";

/// Most services one director can hold (service ids are `0..MAX_SERVICES`).
pub const MAX_SERVICES: u32 = 128;
/// Most backends (real servers) one service can hold (slots are `0..MAX_BACKENDS`).
pub const MAX_BACKENDS: usize = 256;
/// Default capacity of the IPv4 connection table; the control plane may size
/// it differently.
pub const DEFAULT_MAX_FLOWS: u32 = 1 << 20;
/// Default capacity of the IPv6 connection table; the control plane may size
/// it differently.
pub const DEFAULT_MAX_FLOWS_V6: u32 = 1 << 18;
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
    /// Index of this service in [`BACKENDS_MAP`], [`BACKEND_CONNS_MAP`],
    /// [`WLC_TREE_MAP`] and the stats maps.
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
}

/// Value of [`BACKENDS_MAP`]: all backends of one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSet {
    /// Number of slots in use: backends live in `backends[..len]`.
    pub len: u32,
    /// Backend slots; a slot keeps its index for the life of the backend, so
    /// flows in the connection table stay bound to it.
    pub backends: [Backend; MAX_BACKENDS],
}

impl Default for BackendSet {
    fn default() -> Self {
        Self {
            len: 0,
            backends: [Backend::default(); MAX_BACKENDS],
        }
    }
}

impl BackendSet {
    /// The weight with which the backend in `slot` competes for new flows:
    /// its weight if it is in use (below `len`) and up, otherwise 0 (it takes
    /// no new flows).
    #[inline(always)]
    pub fn scheduling_weight(&self, slot: u32) -> u32 {
        if slot >= self.len {
            return 0;
        }
        let backend = &self.backends[slot as usize & (MAX_BACKENDS - 1)];
        if backend.state == BACKEND_STATE_UP {
            backend.weight
        } else {
            0
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

/// Value of [`WLC_TREE_MAP`]: a tournament tree over the backend slots of
/// one service, for weighted least-connection in O(log n) (see
/// [`crate::wlc`]).
///
/// A complete binary tree in heap order: node 1 is the top, node `n` has
/// the children `2n` and `2n + 1`, and the leaves `MAX_BACKENDS + slot` are
/// the slots themselves (not stored). Each stored node holds the winner of
/// its subtree, the least-loaded backend that may take new flows, as
/// `slot + 1`; 0 means none (so a zeroed tree schedules nothing). A service
/// plays only the smallest subtree that holds its slots: `root`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadTree {
    /// The weight each slot competes with for new flows: its weight if the
    /// backend is up and in use, 0 if it takes no new flows (the control
    /// plane's view of [`BackendSet`], written with the tree).
    pub weights: [u32; MAX_BACKENDS],
    /// Winner of each node (`slot + 1`, or 0); entry 0 is unused.
    pub winners: [u16; MAX_BACKENDS],
    /// The node whose winner gets the next new flow: the top of the smallest
    /// subtree holding slots `0..len` (see [`crate::wlc::root_for`]); 0 in a
    /// zeroed tree (no winner).
    pub root: u32,
}

impl Default for LoadTree {
    fn default() -> Self {
        Self {
            weights: [0; MAX_BACKENDS],
            winners: [0; MAX_BACKENDS],
            root: 0,
        }
    }
}

/// Key of [`CONNTRACK4_MAP`]: an IPv4 client-to-VIP 5-tuple.
///
/// Sixteen bytes, so the kernel hashes and compares less than half of what
/// an IPv6 key costs on every packet.
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
    pub proto: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
}

impl FlowKey4 {
    /// The key of a flow from its parts, assembled in two 64-bit words (the
    /// XDP program keeps them in registers: no narrow stores followed by a
    /// wide load). `src_addr` and `dst_addr` are the address bytes as
    /// they are in the packet, read as a native-endian `u32`.
    #[inline(always)]
    pub fn from_parts(
        src_addr: u32,
        dst_addr: u32,
        src_port: u16,
        dst_port: u16,
        proto: u8,
    ) -> Self {
        Self::from_words([
            u64::from(src_addr) | u64::from(dst_addr) << 32,
            u64::from(src_port) | u64::from(dst_port) << 16 | u64::from(proto) << 32,
        ])
    }

    /// The key as 64-bit words, for the flow cache's hash and comparison.
    #[inline(always)]
    pub fn words(&self) -> [u64; 2] {
        // SAFETY: 16 bytes without implicit padding, 8-byte aligned.
        unsafe { core::mem::transmute(*self) }
    }

    /// The key whose [`words`](Self::words) are `words`.
    #[inline(always)]
    pub fn from_words(words: [u64; 2]) -> Self {
        // SAFETY: every bit pattern is a valid key.
        unsafe { core::mem::transmute(words) }
    }

    /// The service this flow is addressed to.
    #[inline(always)]
    pub fn service_key(&self) -> AlignedServiceKey {
        AlignedServiceKey::from_words([
            u64::from(u32::from_ne_bytes(self.dst_addr)),
            0,
            service_key_tail(self.dst_port, self.proto, FAMILY_IPV4),
        ])
    }
}

/// A [`ServiceKey`] in an 8-byte aligned buffer of three 64-bit words (its
/// 20 bytes, then 4 of padding), assembled in registers: the key the XDP
/// program looks services up with. The verifier refuses misaligned stack
/// accesses, and LLVM, told that misaligned accesses are fine (see
/// `lb-ebpf/build.rs`), merges the narrow stores that build a 4-byte
/// aligned key into 8-byte stores at 4-byte offsets.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug)]
pub struct AlignedServiceKey {
    /// The key.
    pub key: ServiceKey,
    /// Padding to the third word's end.
    _pad: u32,
}

impl AlignedServiceKey {
    /// The key whose words are `words`.
    #[inline(always)]
    fn from_words(words: [u64; 3]) -> Self {
        // SAFETY: 24 bytes, 8-byte aligned, every bit pattern is valid; the
        // fields sit at the offsets the layout test checks (little-endian,
        // asserted below).
        unsafe { core::mem::transmute(words) }
    }
}

/// The last 8 bytes of an [`AlignedServiceKey`]: port, protocol and family
/// (then padding), as one little-endian word.
#[inline(always)]
fn service_key_tail(port: u16, proto: u8, family: u8) -> u64 {
    u64::from(port) | u64::from(proto) << 16 | u64::from(family) << 24
}

/// Key of [`CONNTRACK6_MAP`]: an IPv6 client-to-VIP 5-tuple.
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
    pub proto: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
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
    ) -> Self {
        Self::from_words([
            src_addr[0],
            src_addr[1],
            dst_addr[0],
            dst_addr[1],
            u64::from(src_port) | u64::from(dst_port) << 16 | u64::from(proto) << 32,
        ])
    }

    /// The key as 64-bit words, for the flow cache's hash and comparison.
    #[inline(always)]
    pub fn words(&self) -> [u64; 5] {
        // SAFETY: 40 bytes without implicit padding, 8-byte aligned.
        unsafe { core::mem::transmute(*self) }
    }

    /// The key whose [`words`](Self::words) are `words`.
    #[inline(always)]
    pub fn from_words(words: [u64; 5]) -> Self {
        // SAFETY: every bit pattern is a valid key.
        unsafe { core::mem::transmute(words) }
    }

    /// The service this flow is addressed to.
    #[inline(always)]
    pub fn service_key(&self) -> AlignedServiceKey {
        let words = self.words();
        AlignedServiceKey::from_words([
            words[2],
            words[3],
            service_key_tail(self.dst_port, self.proto, FAMILY_IPV6),
        ])
    }
}

/// A flow of either family, as the control plane handles it: the key of
/// the connection table that holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowKey {
    /// A flow in [`CONNTRACK4_MAP`].
    V4(FlowKey4),
    /// A flow in [`CONNTRACK6_MAP`].
    V6(FlowKey6),
}

impl FlowKey {
    /// The key of the flow from `client`:`client_port` to `vip`:`port` over
    /// `proto`. `None` when the two addresses are of different families.
    pub fn new(
        client: IpAddr,
        client_port: u16,
        vip: IpAddr,
        port: u16,
        proto: u8,
    ) -> Option<Self> {
        match (client, vip) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => Some(Self::V4(FlowKey4 {
                src_addr: src.octets(),
                dst_addr: dst.octets(),
                src_port: client_port,
                dst_port: port,
                proto,
                _pad: [0; 3],
            })),
            (IpAddr::V6(src), IpAddr::V6(dst)) => Some(Self::V6(FlowKey6 {
                src_addr: src.octets(),
                dst_addr: dst.octets(),
                src_port: client_port,
                dst_port: port,
                proto,
                _pad: [0; 3],
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
    pub fn proto(&self) -> u8 {
        match self {
            Self::V4(k) => k.proto,
            Self::V6(k) => k.proto,
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
    pub service_id: u16,
    /// Backend slot within the service (below [`MAX_BACKENDS`]).
    pub backend_slot: u16,
    /// One of the `conn_state::STATE_*` constants.
    pub state: u16,
    /// Explicit padding.
    pub _pad: u16,
}

/// Ways of each flow-cache set: the flows that share a hash and can be
/// cached side by side.
pub const FLOW_CACHE_WAYS: usize = 4;
/// Sets of each flow cache ([`FLOW_CACHE4_MAP`], [`FLOW_CACHE6_MAP`]) per CPU.
pub const FLOW_CACHE_SETS: u32 = 1 << 12;
/// Flows each flow cache holds at most per CPU.
pub const FLOW_CACHE_ENTRIES: u32 = FLOW_CACHE_SETS * FLOW_CACHE_WAYS as u32;

/// An entry of the per-CPU IPv4 flow cache: a copy of a connection-table
/// entry, taken at `stamp`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedFlow4 {
    /// The flow (all zero: an empty entry).
    pub key: FlowKey4,
    /// Service of the flow.
    pub service_id: u16,
    /// Backend slot of the flow.
    pub backend_slot: u16,
    /// The flow's state when it was cached.
    pub state: u16,
    /// Explicit padding.
    pub _pad: u16,
    /// Cache period (`jiffies >> FLOW_CACHE_PERIOD_SHIFT`) in which the
    /// connection table was last read and refreshed for this flow.
    pub stamp: u64,
}

/// An entry of the per-CPU IPv6 flow cache, as [`CachedFlow4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedFlow6 {
    /// The flow (all zero: an empty entry).
    pub key: FlowKey6,
    /// Service of the flow.
    pub service_id: u16,
    /// Backend slot of the flow.
    pub backend_slot: u16,
    /// The flow's state when it was cached.
    pub state: u16,
    /// Explicit padding.
    pub _pad: u16,
    /// As [`CachedFlow4::stamp`].
    pub stamp: u64,
}

/// A flow-cache entry of either family, as the set logic sees it.
pub trait CachedFlow<const N: usize> {
    /// Whether the entry holds the flow whose key has the words `words`
    /// (`FlowKey4::words`, `FlowKey6::words`).
    fn holds(&self, words: &[u64; N]) -> bool;
    /// The entry's [`CachedFlow4::stamp`].
    fn stamp(&self) -> u64;
}

/// Whether two keys, given as their 64-bit words, are equal (one test of
/// the OR of the XORs rather than a branch per word).
#[inline(always)]
fn same_words<const N: usize>(a: &[u64; N], b: &[u64; N]) -> bool {
    a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Implements [`CachedFlow`] for the entry type of one address family,
/// whose key has `N` words (the two families differ only in types).
macro_rules! cached_flow {
    ($entry:ty, $words:literal) => {
        impl CachedFlow<$words> for $entry {
            #[inline(always)]
            fn holds(&self, words: &[u64; $words]) -> bool {
                same_words(&self.key.words(), words)
            }
            #[inline(always)]
            fn stamp(&self) -> u64 {
                self.stamp
            }
        }
    };
}

cached_flow!(CachedFlow4, 2);
cached_flow!(CachedFlow6, 5);

/// A value of a flow cache: the [`FLOW_CACHE_WAYS`] entries of one set, for
/// flows whose keys hash to it. Sets are 64-byte aligned (128 bytes for
/// IPv4; 256 for IPv6, the last 32 unused) and the caches are mmapable
/// arrays, whose values start on a page: a set never shares a cache line
/// with another, and an IPv4 hit in one of the first two ways reads one
/// line (a per-CPU array would place each set at any 8-byte boundary).
///
/// Within a cache period an entry keeps its flow: a flow is cached into the
/// way that already holds it, or else into a way holding no flow of the
/// current period; when every way holds another flow of this period, the
/// flow is not cached and its packets take the table path until the period
/// ends. So flows that outnumber a set's ways cost one table lookup each
/// per packet, instead of evicting each other on every packet (a
/// round-robin over five flows in four ways would never hit).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCacheSet<E> {
    /// The entries; all-zero ways are empty.
    pub ways: [E; FLOW_CACHE_WAYS],
}

/// Value of [`FLOW_CACHE4_MAP`].
pub type CachedFlowSet4 = FlowCacheSet<CachedFlow4>;
/// Value of [`FLOW_CACHE6_MAP`].
pub type CachedFlowSet6 = FlowCacheSet<CachedFlow6>;

impl<E> FlowCacheSet<E> {
    /// The way holding flow `words` cached in `period`, if any.
    #[inline(always)]
    pub fn hit<const N: usize>(&self, words: &[u64; N], period: u64) -> Option<usize>
    where
        E: CachedFlow<N>,
    {
        self.ways
            .iter()
            .position(|entry| entry.stamp() == period && entry.holds(words))
    }

    /// The way to cache flow `words` in during `period`: the one that holds
    /// it already, else the first one holding no flow of `period`; `None`
    /// when every way holds another flow of `period` (see the type's doc).
    #[inline(always)]
    pub fn way_for<const N: usize>(&self, words: &[u64; N], period: u64) -> Option<usize>
    where
        E: CachedFlow<N>,
    {
        let ways = &self.ways;
        ways.iter()
            .position(|entry| entry.holds(words))
            .or_else(|| ways.iter().position(|entry| entry.stamp() != period))
    }
}

/// The flow-cache set (per-CPU array index) of a flow key, given as its
/// 64-bit words (`FlowKey4::words`, `FlowKey6::words`): the top bits of a
/// multiplicative hash.
#[inline(always)]
pub fn flow_cache_set<const N: usize>(words: &[u64; N]) -> u32 {
    let mut hash = 0u64;
    for word in words {
        hash = (hash ^ word).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    (hash >> (64 - FLOW_CACHE_SETS.trailing_zeros())) as u32
}

/// The flow-cache map index of set `set` (see [`flow_cache_set`]) for CPU
/// `cpu`: each CPU owns [`FLOW_CACHE_SETS`] consecutive sets, so the map has
/// `FLOW_CACHE_SETS` times the possible CPUs entries (set by the loader) and
/// a CPU only ever writes its own.
#[inline(always)]
pub const fn flow_cache_index(cpu: u32, set: u32) -> u32 {
    cpu * FLOW_CACHE_SETS + set
}

/// The flow cache's period is `2^FLOW_CACHE_PERIOD_SHIFT` jiffies (64 ms at
/// HZ=1000, 256 ms at HZ=250, 640 ms at HZ=100): a cached flow goes back to
/// its connection table, refreshing its last-seen time there, at least once
/// per period.
pub const FLOW_CACHE_PERIOD_SHIFT: u32 = 6;

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

impl core::ops::Add for Counters {
    type Output = Self;

    /// Field by field (wrapping, as the kernel's counters do).
    fn add(self, other: Self) -> Self {
        Self {
            packets: self.packets.wrapping_add(other.packets),
            bytes: self.bytes.wrapping_add(other.bytes),
            new_conns: self.new_conns.wrapping_add(other.new_conns),
        }
    }
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
    // `FlowKey4::from_parts` and `FlowKey6::from_parts` place fields by bit
    // position; both the BPF target (bpfel) and the hosts lb runs on are
    // little-endian.
    assert!(cfg!(target_endian = "little"));
    assert!(size_of::<ServiceKey>() == 20);
    assert!(size_of::<AlignedServiceKey>() == 24);
    assert!(core::mem::offset_of!(AlignedServiceKey, key) == 0);
    assert!(size_of::<Service>() == 8);
    assert!(size_of::<Backend>() == 40);
    assert!(size_of::<BackendSet>() == 4 + 40 * MAX_BACKENDS);
    assert!(size_of::<LoadTree>() == 6 * MAX_BACKENDS + 4);
    assert!(size_of::<BackendConns>() == 16);
    assert!(size_of::<BackendConnSet>() == 16 * MAX_BACKENDS);
    assert!(size_of::<FlowKey4>() == 16);
    assert!(size_of::<FlowKey6>() == 40);
    assert!(size_of::<Flow>() == 16);
    assert!(size_of::<CachedFlow4>() == 32);
    assert!(size_of::<CachedFlow6>() == 56);
    assert!(size_of::<CachedFlowSet4>() == 128);
    assert!(size_of::<CachedFlowSet6>() == 256);
    assert!(align_of::<CachedFlowSet4>() == 64);
    assert!(FLOW_CACHE_SETS.is_power_of_two());
    assert!(FLOW_CACHE_WAYS.is_power_of_two());
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
    unsafe impl aya::Pod for LoadTree {}
    unsafe impl aya::Pod for FlowKey4 {}
    unsafe impl aya::Pod for FlowKey6 {}
    unsafe impl aya::Pod for CachedFlow4 {}
    unsafe impl aya::Pod for CachedFlow6 {}
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
        assert_eq!(offset_of!(BackendSet, len), 0);
        assert_eq!(offset_of!(BackendSet, backends), 4);
    }

    #[test]
    fn conns_layout() {
        assert_eq!(offset_of!(BackendConns, active), 0);
        assert_eq!(offset_of!(BackendConns, inactive), 8);
        assert_eq!(offset_of!(BackendConnSet, conns), 0);
    }

    #[test]
    fn flow_layout() {
        assert_eq!(offset_of!(FlowKey4, src_addr), 0);
        assert_eq!(offset_of!(FlowKey4, dst_addr), 4);
        assert_eq!(offset_of!(FlowKey4, src_port), 8);
        assert_eq!(offset_of!(FlowKey4, dst_port), 10);
        assert_eq!(offset_of!(FlowKey4, proto), 12);
        assert_eq!(offset_of!(FlowKey4, _pad), 13);
        assert_eq!(offset_of!(FlowKey6, src_addr), 0);
        assert_eq!(offset_of!(FlowKey6, dst_addr), 16);
        assert_eq!(offset_of!(FlowKey6, src_port), 32);
        assert_eq!(offset_of!(FlowKey6, dst_port), 34);
        assert_eq!(offset_of!(FlowKey6, proto), 36);
        assert_eq!(offset_of!(FlowKey6, _pad), 37);
        assert_eq!(offset_of!(Flow, last_seen_ns), 0);
        assert_eq!(offset_of!(Flow, service_id), 8);
        assert_eq!(offset_of!(Flow, backend_slot), 10);
        assert_eq!(offset_of!(Flow, state), 12);
        assert_eq!(offset_of!(Flow, _pad), 14);
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

    #[test]
    fn flow_keys_by_family() {
        let v4 = FlowKey::new(
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
            40000,
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            80,
            PROTO_TCP,
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
            (v4.client_port(), v4.port(), v4.proto()),
            (40000, 80, PROTO_TCP)
        );
        let client6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7));
        let vip6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        let v6 = FlowKey::new(client6, 40001, vip6, 53, PROTO_UDP).expect("one family");
        assert!(matches!(v6, FlowKey::V6(_)));
        assert_eq!(v6.client(), client6);
        assert_eq!(v6.vip(), vip6);
        assert_eq!(
            (v6.client_port(), v6.port(), v6.proto()),
            (40001, 53, PROTO_UDP)
        );
        assert_eq!(
            FlowKey::new(
                client6,
                1,
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                80,
                PROTO_TCP
            ),
            None
        );
    }

    #[test]
    fn only_up_backends_with_weight_compete_for_new_flows() {
        let mut set = BackendSet::default();
        let states = [
            (BACKEND_STATE_UP, 100),
            (BACKEND_STATE_DOWN, 100),
            (BACKEND_STATE_UP, 0),
            (BACKEND_STATE_REMOVED, 100),
            (BACKEND_STATE_EMPTY, 100),
            (BACKEND_STATE_UP, 7),
        ];
        for (slot, &(state, weight)) in states.iter().enumerate() {
            set.backends[slot] = Backend {
                state,
                weight,
                ..Backend::default()
            };
        }
        set.len = states.len() as u32;
        let weights: [u32; 7] = core::array::from_fn(|slot| set.scheduling_weight(slot as u32));
        assert_eq!(weights, [100, 0, 0, 0, 0, 7, 0]);
        // Slots past `len` take no flows even if they hold a backend.
        set.len = 1;
        assert_eq!(set.scheduling_weight(5), 0);
        assert_eq!(set.scheduling_weight(u32::MAX), 0);
    }

    #[test]
    fn keys_assembled_from_parts_match_their_fields() {
        let v4 = FlowKey4::from_parts(
            u32::from_ne_bytes([198, 51, 100, 7]),
            u32::from_ne_bytes([192, 0, 2, 1]),
            40000,
            80,
            PROTO_TCP,
        );
        assert_eq!(
            v4,
            FlowKey4 {
                src_addr: [198, 51, 100, 7],
                dst_addr: [192, 0, 2, 1],
                src_port: 40000,
                dst_port: 80,
                proto: PROTO_TCP,
                _pad: [0; 3],
            }
        );
        assert_eq!(FlowKey4::from_words(v4.words()), v4);
        let src: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
        let dst: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let halves = |a: [u8; 16]| {
            [
                u64::from_ne_bytes(a[..8].try_into().unwrap()),
                u64::from_ne_bytes(a[8..].try_into().unwrap()),
            ]
        };
        let v6 = FlowKey6::from_parts(halves(src), halves(dst), 40001, 53, PROTO_UDP);
        assert_eq!(
            v6,
            FlowKey6 {
                src_addr: src,
                dst_addr: dst,
                src_port: 40001,
                dst_port: 53,
                proto: PROTO_UDP,
                _pad: [0; 3],
            }
        );
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
            }
        );
        let v6 = FlowKey6 {
            dst_addr: [0x20; 16],
            dst_port: 53,
            proto: PROTO_UDP,
            ..FlowKey6::default()
        };
        assert_eq!(
            v6.service_key().key,
            ServiceKey {
                addr: [0x20; 16],
                port: 53,
                proto: PROTO_UDP,
                family: FAMILY_IPV6,
            }
        );
    }

    #[test]
    fn flow_cache_set_spreads_keys_over_the_cache() {
        let mut used = [false; FLOW_CACHE_SETS as usize];
        for port in 0..2048u16 {
            let key = FlowKey4::from_parts(0x0764_33c6, 0x0102_00c0, port, 80, PROTO_TCP);
            let set = flow_cache_set(&key.words());
            assert!(set < FLOW_CACHE_SETS);
            used[set as usize] = true;
        }
        // 2048 keys into 4096 sets: a uniform hash leaves ~1,610 distinct.
        let distinct = used.iter().filter(|u| **u).count();
        assert!(distinct > 1500, "{distinct} distinct sets for 2048 keys");
    }

    /// A cached IPv4 flow from client port `port`, stamped `stamp`.
    fn cached4(port: u16, stamp: u64) -> CachedFlow4 {
        CachedFlow4 {
            key: FlowKey4::from_parts(0x0764_33c6, 0x0102_00c0, port, 80, PROTO_TCP),
            stamp,
            ..CachedFlow4::default()
        }
    }

    #[test]
    fn flow_cache_set_keeps_the_flows_of_the_period() {
        let words = |port| cached4(port, 0).key.words();
        let ways = FLOW_CACHE_WAYS as u16;
        // One flow more than the set has ways: client ports 1 to ways + 1.
        let extra = words(ways + 1);
        let mut set = CachedFlowSet4::default();
        // Empty ways (stamp 0) take flows in order.
        for way in 0..FLOW_CACHE_WAYS {
            let flow = words(way as u16 + 1);
            assert_eq!(set.hit(&flow, 7), None);
            assert_eq!(set.way_for(&flow, 7), Some(way));
            set.ways[way] = cached4(way as u16 + 1, 7);
            assert_eq!(set.hit(&flow, 7), Some(way));
        }
        // Every way holds a flow of this period: one flow more is not
        // cached, a cached flow is refreshed in place.
        assert_eq!(set.hit(&extra, 7), None);
        assert_eq!(set.way_for(&extra, 7), None);
        let last = FLOW_CACHE_WAYS - 1;
        assert_eq!(set.way_for(&words(ways), 7), Some(last));
        // A new period: nothing hits, a flow keeps its way, and a way of an
        // earlier period goes to another flow.
        assert_eq!(set.hit(&words(1), 8), None);
        assert_eq!(set.way_for(&words(ways), 8), Some(last));
        assert_eq!(set.way_for(&extra, 8), Some(0));
        set.ways[0] = cached4(ways + 1, 8);
        assert_eq!(set.way_for(&words(1), 8), Some(1));
        // A stale copy in the last way is reused, not duplicated.
        assert_eq!(set.way_for(&words(ways), 8), Some(last));
    }

    #[test]
    fn flow_cache_layout() {
        assert_eq!(offset_of!(CachedFlow4, key), 0);
        assert_eq!(offset_of!(CachedFlow4, service_id), 16);
        assert_eq!(offset_of!(CachedFlow4, backend_slot), 18);
        assert_eq!(offset_of!(CachedFlow4, state), 20);
        assert_eq!(offset_of!(CachedFlow4, stamp), 24);
        assert_eq!(offset_of!(CachedFlow6, key), 0);
        assert_eq!(offset_of!(CachedFlow6, service_id), 40);
        assert_eq!(offset_of!(CachedFlow6, stamp), 48);
    }
}
