//! The data path's maps. Each static's name is the map's name, spelled once
//! more for the control plane as `lb_common`'s `*_MAP` constants; the sizes
//! are `lb_common`'s limits. [`serves_port`] is the port prefilter's lookup,
//! [`service`] the service lookup.

use aya_ebpf::{
    btf_maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, RingBuf},
    macros::btf_map,
};
use lb_common::{
    AlignedServiceKey, BACKEND_STATS_ENTRIES, BackendConnSet, BackendSet, CachedFlowSet4,
    CachedFlowSet6, Counters, DEFAULT_MAX_FLOWS, DEFAULT_MAX_FLOWS_V6, FLOW_CACHE_SETS,
    FLOW_CHANGES_BYTES, FLOW_EVENTS_ENTRIES, FRAGMENT_ENTRIES, FloodGuard, Flow, FlowChange,
    FlowFilterLine, FlowFilterState, FlowKey4, FlowKey6, FlowSet4, FlowSet6, FragmentKey4,
    FragmentKey6, FragmentPorts, LoadTree, MAX_IFACES, MAX_SERVICE_KEYS, MAX_SERVICES,
    NIC_FILTER_ENTRIES, NUM_REASONS, NicCounters, NicFilter, PERSIST_TEMPLATES, PersistKey,
    PersistTemplate, SERVICE_PORTS_ENTRIES, ScheduleTable, Service, ServiceKey, SynWindow,
    SyncCounters, VIPS_ENTRIES, VipKey, port_bit,
};

use crate::clock::TickReading;

/// The layout stamp (`lb_common::LAYOUT_VERSION`), written by the control
/// plane when it loads the data path and checked when another adopts it;
/// never read here.
#[btf_map]
pub static LAYOUT: Array<u32, 1> = Array::new();

/// The destination MACs each director NIC accepts, indexed by
/// `lb_common::nic_filter_index` of its ifindex. Written by the control plane
/// when it attaches to a NIC.
#[btf_map]
pub static NIC_FILTER: Array<NicFilter, { NIC_FILTER_ENTRIES as usize }> = Array::new();

/// The NICs a frame may be redirected to: ifindex -> that NIC, every NIC the
/// program is attached to. Written by the control plane when it attaches
/// and detaches.
#[btf_map]
pub static TX_PORTS: DevMapHash<{ MAX_IFACES as usize }> = DevMapHash::new();

/// Per-CPU counters per NIC, indexed like [`NIC_FILTER`]: forwarded frames
/// by the NIC they arrived on and left through.
#[btf_map]
pub static NIC_STATS: PerCpuArray<NicCounters, { NIC_FILTER_ENTRIES as usize }> =
    PerCpuArray::new();

/// Virtual services: (VIP, port, protocol, VLAN) -> the service, one entry
/// per port it covers (port `lb_common::ANY_PORT` for a service over every port).
/// Written by the control plane.
#[btf_map]
pub static SERVICES: HashMap<ServiceKey, Service, { MAX_SERVICE_KEYS as usize }> = HashMap::new();

/// Backends of each service, indexed by service id. Written by the control plane.
#[btf_map]
pub static BACKENDS: Array<BackendSet, { MAX_SERVICES as usize }> = Array::new();

/// Active/inactive flow counts per backend, indexed by service id. Adjusted
/// atomically here; reset from the connection table by the control plane's sweeper.
#[btf_map]
pub static BACKEND_CONNS: Array<BackendConnSet, { MAX_SERVICES as usize }> = Array::new();

/// Each service's tournament tree of backend loads, indexed by service id:
/// its root names the backend for the next new flow (see `lb_common::wlc`).
/// Repaired here on every counter change; rebuilt by the control plane when
/// it writes the service's backends or counters.
#[btf_map]
pub static WLC_TREE: Array<LoadTree, { MAX_SERVICES as usize }> = Array::new();

/// The IPv4 connection table's sets: confirmed flows (client 5-tuple ->
/// service, backend slot, TCP state, last seen), two per set indexed by
/// `lb_common::flow_set_index` (see `lb_common::CONFIRMED4_MAP`): a lookup
/// reads one cache line. A confirmed flow is never evicted; one whose set
/// is full goes to [`CONNTRACK4`]. An mmapable array, so that every set
/// sits on its own cache line and the control plane reads, installs and
/// expires flows through a mapping; the loader sizes it
/// ([`CONFIRMED4_SETS`] sets).
#[btf_map]
pub static CONFIRMED4: Array<FlowSet4, 1, BPF_F_MMAPABLE> = Array::new();

/// The IPv6 connection table's sets, as [`CONFIRMED4`].
#[btf_map]
pub static CONFIRMED6: Array<FlowSet6, 1, BPF_F_MMAPABLE> = Array::new();

/// Sets of [`CONFIRMED4`] (a power of two), set by the loader with the
/// map's size: a constant of the loaded program.
#[unsafe(no_mangle)]
static CONFIRMED4_SETS: u32 = 1;

/// Sets of [`CONFIRMED6`], as [`CONFIRMED4_SETS`].
#[unsafe(no_mangle)]
static CONFIRMED6_SETS: u32 = 1;

/// The IPv4 connection table's overflow hash: the confirmed flows whose
/// set of [`CONFIRMED4`] was full. A plain hash: a full table refuses new
/// flows instead of evicting old ones, and they stay in [`PENDING4`]. The
/// control plane may resize it before loading and expires idle flows.
#[btf_map]
pub static CONNTRACK4: HashMap<FlowKey4, Flow, { DEFAULT_MAX_FLOWS as usize }> = HashMap::new();

/// The IPv6 connection table's overflow hash, as [`CONNTRACK4`] with
/// 16-byte addresses.
#[btf_map]
pub static CONNTRACK6: HashMap<FlowKey6, Flow, { DEFAULT_MAX_FLOWS_V6 as usize }> = HashMap::new();

/// The IPv4 pending table: half-open flows, and flows [`CONNTRACK4`] was too
/// full to take, in sets of `lb_common::FLOW_SET_WAYS` flows indexed by
/// `lb_common::flow_set_index` (see `lb_common::flow_set`): a SYN records its
/// flow by writing one cache line, and a flood of new flows evicts pending
/// flows only. An mmapable array, so that every set sits on its own cache
/// line and the control plane reads and expires flows through a mapping;
/// the loader sizes it ([`PENDING4_SETS`] sets).
#[btf_map]
pub static PENDING4: Array<FlowSet4, 1, BPF_F_MMAPABLE> = Array::new();

/// The IPv6 pending table, as [`PENDING4`] ([`PENDING6_SETS`] sets).
#[btf_map]
pub static PENDING6: Array<FlowSet6, 1, BPF_F_MMAPABLE> = Array::new();

/// Sets of [`PENDING4`] (a power of two), set by the loader with the map's
/// size: a constant of the loaded program.
#[unsafe(no_mangle)]
static PENDING4_SETS: u32 = 1;

/// Sets of [`PENDING6`], as [`PENDING4_SETS`].
#[unsafe(no_mangle)]
static PENDING6_SETS: u32 = 1;

/// Which table of flow sets [`set_count`] sizes.
#[derive(Clone, Copy)]
pub enum SetTable {
    /// The connection table's sets ([`CONFIRMED4`], [`CONFIRMED6`]).
    Confirmed,
    /// The pending table ([`PENDING4`], [`PENDING6`]).
    Pending,
}

/// The sets of `table` of the IPv4 (`ipv6` false) or IPv6 family, as
/// loaded.
#[inline(always)]
pub fn set_count(table: SetTable, ipv6: bool) -> u32 {
    // SAFETY: read-only data of the program; volatile, so that the value
    // the loader wrote is read instead of the one compiled in.
    unsafe {
        core::ptr::read_volatile(match (table, ipv6) {
            (SetTable::Confirmed, false) => &CONFIRMED4_SETS,
            (SetTable::Confirmed, true) => &CONFIRMED6_SETS,
            (SetTable::Pending, false) => &PENDING4_SETS,
            (SetTable::Pending, true) => &PENDING6_SETS,
        })
    }
}

/// Persistence templates: (service, masked client) -> the backend slot its
/// new connections go to (see `lb_common::persist`). Written here when a
/// persistent service's client opens a connection; refreshed from the live
/// flows and expired by the control plane.
#[btf_map]
pub static PERSIST: LruHashMap<PersistKey, PersistTemplate, { PERSIST_TEMPLATES as usize }> =
    LruHashMap::new();

/// Port prefilter: destination port -> `PORT_*` bits of the protocols some
/// service uses on it. Written by the control plane.
#[btf_map]
pub static SERVICE_PORTS: Array<u32, { SERVICE_PORTS_ENTRIES as usize }> = Array::new();

/// Whether some service uses `port` over `proto`, by [`SERVICE_PORTS`]: one
/// array lookup, before anything else is read of a frame. (A service over
/// every port opens every port's entry.)
#[inline(always)]
pub fn serves_port(port: u16, proto: u8) -> bool {
    SERVICE_PORTS.get(u32::from(port)).copied().unwrap_or(0) & port_bit(proto) != 0
}

/// The service of a flow to `key`: the one on its own port, else the one
/// over every port of its VIP (`lb_common::ANY_PORT`), as IPVS prefers a port's own
/// service to a port-0 one.
#[inline(always)]
pub fn service(key: &AlignedServiceKey) -> Option<Service> {
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value, the key would be copied to a stack slot of its own 4-byte alignment"
    )]
    // SAFETY: the control plane replaces service entries whole; a copy is taken at once.
    let own = unsafe { SERVICES.get(&key.key) }.copied();
    own.or_else(|| {
        let any = key.any_port();
        #[expect(clippy::needless_borrows_for_generic_args, reason = "as above")]
        // SAFETY: as above.
        unsafe { SERVICES.get(&any.key) }.copied()
    })
}

/// The tables of the services scheduled by `rr`, `wrr`, `sh` or `mh`, by
/// service id (see `lb_common::schedule`). Written by the control plane.
#[btf_map]
pub static SCHEDULE_TABLES: Array<ScheduleTable, { MAX_SERVICES as usize }> = Array::new();

/// Each CPU's next position in the `rr`/`wrr` table of each service, by
/// service id. Data path only.
#[btf_map]
pub static RR_POSITION: PerCpuArray<u32, { MAX_SERVICES as usize }> = PerCpuArray::new();

/// VIPs: address -> `PORT_*` bits of the protocols its services use.
/// Written by the control plane with the services; read for IP fragments
/// only (see `fragment`).
#[btf_map]
pub static VIPS: HashMap<VipKey, u32, { VIPS_ENTRIES as usize }> = HashMap::new();

/// IPv4 fragment map: (source, destination, protocol, identification) of a
/// datagram to a VIP -> the ports of its first fragment, for its later
/// fragments (see `fragment`). Written only by the data path; an LRU, so the
/// oldest datagram makes room for a new one.
#[btf_map]
pub static FRAGMENTS4: LruHashMap<FragmentKey4, FragmentPorts, { FRAGMENT_ENTRIES as usize }> =
    LruHashMap::new();

/// IPv6 fragment map, as [`FRAGMENTS4`] (the identification has 32 bits).
#[btf_map]
pub static FRAGMENTS6: LruHashMap<FragmentKey6, FragmentPorts, { FRAGMENT_ENTRIES as usize }> =
    LruHashMap::new();

/// IPv4 flow cache: (CPU, hash of the key) -> a set of four recent copies of
/// connection-table entries (see `conntrack`); each CPU reads and writes only
/// its own sets. Written only by the data path. An mmapable array, so that
/// its values start on a page and every set on a cache line; the loader sets
/// its size to `FLOW_CACHE_SETS` per possible CPU (with the size here, one
/// CPU's, the other CPUs find no set and take the table path).
#[btf_map]
pub static FLOW_CACHE4: Array<CachedFlowSet4, { FLOW_CACHE_SETS as usize }, BPF_F_MMAPABLE> =
    Array::new();

/// IPv6 flow cache, as [`FLOW_CACHE4`].
#[btf_map]
pub static FLOW_CACHE6: Array<CachedFlowSet6, { FLOW_CACHE_SETS as usize }, BPF_F_MMAPABLE> =
    Array::new();

/// The flow filter (`lb_common::flow_filter`): one-byte marks, by a hash of
/// the flow key, of the keys the flow tables may hold, a confirmed and a
/// pending mark per key in one line; a SYN skips each table whose mark is
/// clear. Set by the data path after every insert into a flow table (the
/// mark of its kind), by the control plane for the flows it installs, cleared
/// only by the sweeper's rebuild (of the generation SYNs do not read). An
/// mmapable array, so that the control plane writes single marks; the
/// loader sizes it (two generations of `flow_filter_lines` lines).
#[btf_map]
pub static FLOW_FILTER: Array<FlowFilterLine, 128, BPF_F_MMAPABLE> = Array::new();

/// Which generation of [`FLOW_FILTER`] SYNs read, whether it is ready and
/// whether a rebuild runs (`lb_common::FlowFilterState`); written by the
/// control plane.
#[btf_map]
pub static FLOW_FILTER_STATE: Array<FlowFilterState, 1> = Array::new();

/// Per-CPU packet/byte counters per verdict reason (`REASON_*`), for every
/// frame that is not forwarded. The control plane keeps the `forwarded`
/// total of removed services under `REASON_FORWARDED`.
#[btf_map]
pub static VERDICT_STATS: PerCpuArray<Counters, { NUM_REASONS as usize }> = PerCpuArray::new();

/// Per-CPU counters per service id: what backends that no longer hold a
/// slot of the service had forwarded. Written by the control plane only
/// (the data path counts per backend).
#[btf_map]
pub static SERVICE_STATS: PerCpuArray<Counters, { MAX_SERVICES as usize }> = PerCpuArray::new();

/// Per-CPU counters per backend (`lb_common::backend_index`): every
/// forwarded frame, once.
#[btf_map]
pub static BACKEND_STATS: PerCpuArray<Counters, { BACKEND_STATS_ENTRIES as usize }> =
    PerCpuArray::new();

/// Per-CPU flow-table event counters (`lb_common::flow_event_index`):
/// pending flows opened and promoted, inserts a full connection table
/// refused; the control plane adds the pending flows it removes.
#[btf_map]
pub static FLOW_EVENTS: PerCpuArray<u64, { FLOW_EVENTS_ENTRIES as usize }> = PerCpuArray::new();

/// Whether the control plane syncs flows with other directors (index 0: 1
/// or 0); only then does the data path write [`FLOW_CHANGES`].
#[btf_map]
pub static SYNC_ENABLED: Array<u32, 1> = Array::new();

/// Flows confirmed in, or changing state in, the connection tables, for
/// the control plane's connection sync (`lb_common::FlowChange` of either
/// family's key).
#[btf_map]
pub static FLOW_CHANGES: RingBuf<FlowChange<FlowKey6>, { FLOW_CHANGES_BYTES as usize }> =
    RingBuf::new();

/// Connection sync's counters, kept by the control plane (never written
/// here): a map of the data path so that they are pinned, read and adopted
/// with the others.
#[btf_map]
pub static SYNC_STATS: Array<SyncCounters, 1> = Array::new();

/// The SYN-flood guard's setting (index 0), from the control plane.
#[btf_map]
pub static FLOOD_GUARD: Array<FloodGuard, 1> = Array::new();

/// Until when the director is in flood mode (index 0: coarse monotonic ns;
/// 0: never was), written when a CPU's SYN count reaches the guard's rate.
#[btf_map]
pub static FLOOD_UNTIL: Array<u64, 1> = Array::new();

/// Each CPU's count of flow-opening SYNs in its current window.
#[btf_map]
pub static SYN_WINDOW: PerCpuArray<SynWindow, 1> = PerCpuArray::new();

/// Each CPU's last reading of the coarse clock and the tick it was read in
/// (index 0; see `crate::clock`). Data path only.
#[btf_map]
pub static CLOCK: PerCpuArray<TickReading, 1> = PerCpuArray::new();

/// `BPF_F_MMAPABLE`: the array's values are page-aligned (and could be mapped
/// into user space).
const BPF_F_MMAPABLE: usize = 1 << 10;
