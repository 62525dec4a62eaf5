//! Map names, the program's name and the size limits both sides build the
//! maps with, so the control plane never spells a map name twice.

/// Name of the layout stamp (array of one `u32`: [`LAYOUT_VERSION`]),
/// written by the control plane that loads the data path and checked by the
/// one that adopts it. The program does not read it.
pub const LAYOUT_MAP: &str = "LAYOUT";
/// The version of the maps' layout and meaning: what an adopting `lb` must
/// find in [`LAYOUT_MAP`]. Raise it whenever a map's key, value or the
/// meaning of a field changes.
pub const LAYOUT_VERSION: u32 = 14;

/// Name of the service map (hash: [`ServiceKey`] -> [`Service`]), written by the control plane.
///
/// [`ServiceKey`]: crate::service::ServiceKey
/// [`Service`]: crate::service::Service
pub const SERVICES_MAP: &str = "SERVICES";
/// Name of the backend map (array: service id -> [`BackendSet`]), written by the control plane.
///
/// [`BackendSet`]: crate::backend::BackendSet
pub const BACKENDS_MAP: &str = "BACKENDS";
/// Name of the per-backend connection counters (array: service id -> [`BackendConnSet`]).
/// The XDP program adjusts them atomically; the control plane's sweeper overwrites
/// them with the counts it finds in the connection table.
///
/// [`BackendConnSet`]: crate::backend::BackendConnSet
pub const BACKEND_CONNS_MAP: &str = "BACKEND_CONNS";
/// Name of the scheduler's tournament trees (array: service id -> [`LoadTree`]):
/// which backend of each service gets the next new flow. The XDP program
/// repairs a backend's path whenever its counters change; the control plane
/// rebuilds a service's tree whenever it writes its backends or counters.
///
/// [`LoadTree`]: crate::wlc::LoadTree
pub const WLC_TREE_MAP: &str = "WLC_TREE";
/// Name of the table schedulers' tables (array: service id ->
/// [`ScheduleTable`]), written by the control plane with each service of
/// `rr`, `wrr`, `sh` or `mh` (see [`crate::schedule`]).
///
/// [`ScheduleTable`]: crate::schedule::ScheduleTable
pub const SCHEDULE_TABLES_MAP: &str = "SCHEDULE_TABLES";
/// Name of the round-robin positions (per-CPU array: service id -> the
/// next entry of its `rr`/`wrr` table this CPU takes). Data path only.
pub const RR_POSITION_MAP: &str = "RR_POSITION";
/// Name of the IPv4 connection table's sets (mmapable array:
/// [`flow_set_index`] -> [`FlowSet4`], see [`crate::flow_set`]): confirmed
/// flows (a TCP handshake the client completed, UDP, a flow a `sloppy_tcp`
/// service picked up mid-way), two per set, found by reading one cache
/// line. A confirmed flow is never evicted: a flow whose set is full goes
/// to the overflow hash [`CONNTRACK4_MAP`]. Written by XDP (a way is
/// claimed with a compare-and-swap) and by the control plane's installs,
/// expired by the control plane.
///
/// [`flow_set_index`]: crate::flow_set::flow_set_index
/// [`FlowSet4`]: crate::flow_set::FlowSet4
pub const CONFIRMED4_MAP: &str = "CONFIRMED4";
/// Name of the IPv6 connection table's sets ([`FlowSet6`] values), as
/// [`CONFIRMED4_MAP`], overflowing into [`CONNTRACK6_MAP`].
///
/// [`FlowSet6`]: crate::flow_set::FlowSet6
pub const CONFIRMED6_MAP: &str = "CONFIRMED6";
/// Name of the IPv4 connection table's overflow hash (hash: [`FlowKey4`]
/// -> [`Flow`]): the confirmed flows whose set of [`CONFIRMED4_MAP`] was
/// full. Written by XDP and the control plane, expired by the control
/// plane. It never evicts: when it is full too, new flows stay in
/// [`PENDING4_MAP`].
///
/// [`FlowKey4`]: crate::flow::FlowKey4
/// [`Flow`]: crate::flow::Flow
pub const CONNTRACK4_MAP: &str = "CONNTRACK4";
/// Name of the IPv6 connection table's overflow hash (hash: [`FlowKey6`]
/// -> [`Flow`]), as [`CONNTRACK4_MAP`] for [`CONFIRMED6_MAP`], overflowing
/// into [`PENDING6_MAP`].
///
/// [`FlowKey6`]: crate::flow::FlowKey6
/// [`Flow`]: crate::flow::Flow
pub const CONNTRACK6_MAP: &str = "CONNTRACK6";
/// Name of the IPv4 pending table (mmapable array: [`flow_set_index`] ->
/// [`FlowSet4`], see [`crate::flow_set`]): flows not confirmed yet
/// (half-open TCP) and flows the full connection table could not take. A
/// flood of new flows evicts only flows here (the least recently seen of
/// a set), never a confirmed flow of [`CONNTRACK4_MAP`]. Written by XDP,
/// expired by the control plane.
///
/// [`flow_set_index`]: crate::flow_set::flow_set_index
/// [`FlowSet4`]: crate::flow_set::FlowSet4
pub const PENDING4_MAP: &str = "PENDING4";
/// Name of the IPv6 pending table ([`FlowSet6`] values), as
/// [`PENDING4_MAP`].
///
/// [`FlowSet6`]: crate::flow_set::FlowSet6
pub const PENDING6_MAP: &str = "PENDING6";
/// Name of the persistence templates (LRU hash: [`PersistKey`] ->
/// [`PersistTemplate`]): written by XDP when a persistent service's client
/// opens a connection, refreshed and expired by the control plane.
///
/// [`PersistKey`]: crate::persist::PersistKey
/// [`PersistTemplate`]: crate::persist::PersistTemplate
pub const PERSIST_MAP: &str = "PERSIST";
/// Name of the per-CPU flow-table event counters (array:
/// [`flow_event_index`] -> `u64`): flows opened in and promoted from the
/// pending tables, refused by a full connection table, and removed from the
/// pending tables by the control plane; written by XDP and (removals) by
/// the control plane.
///
/// [`flow_event_index`]: crate::stats::flow_event_index
pub const FLOW_EVENTS_MAP: &str = "FLOW_EVENTS";
/// Name of the connection-sync switch (array: 0 -> 1 while `lb run` syncs
/// flows with other directors, else 0), written by the control plane.
pub const SYNC_ENABLED_MAP: &str = "SYNC_ENABLED";
/// Name of the flow-change ring (a BPF ring buffer of
/// [`FlowChange`](crate::sync::FlowChange)s: flows confirmed in, and state
/// changes of, the connection tables), written by XDP while
/// [`SYNC_ENABLED_MAP`] is on and read by the control plane's sync.
pub const FLOW_CHANGES_MAP: &str = "FLOW_CHANGES";
/// Name of connection sync's counters (array: 0 ->
/// [`SyncCounters`](crate::sync::SyncCounters)), written by the control plane.
pub const SYNC_STATS_MAP: &str = "SYNC_STATS";
/// Size of [`FLOW_CHANGES_MAP`] in bytes (a power of two): about 64 k
/// IPv6 changes, a second of new flows at 64 k connections per second.
pub const FLOW_CHANGES_BYTES: u32 = 4 << 20;
/// Name of the SYN-flood guard's setting (array: 0 ->
/// [`FloodGuard`](crate::flood::FloodGuard)), written by the control plane.
pub const FLOOD_GUARD_MAP: &str = "FLOOD_GUARD";
/// Name of the end of flood mode (array: 0 -> coarse monotonic ns until
/// which new SYNs are scheduled without a table entry; 0: never in flood
/// mode), written by XDP (see [`crate::flood`]).
pub const FLOOD_UNTIL_MAP: &str = "FLOOD_UNTIL";
/// Name of the SYN counters (per-CPU array: 0 ->
/// [`SynWindow`](crate::flood::SynWindow)), written by XDP.
pub const SYN_WINDOW_MAP: &str = "SYN_WINDOW";
/// Name of the port prefilter (array: destination port -> `PORT_*` bits of the
/// protocols some service uses on that port), written by the control plane.
/// Traffic to a port no service uses is passed before any hash lookup.
pub const SERVICE_PORTS_MAP: &str = "SERVICE_PORTS";
/// Name of the VIP map (hash: [`VipKey`] -> `PORT_*` bits of the protocols
/// the VIP's services use), written by the control plane with the services.
/// A later IP fragment (no ports) to a VIP over such a protocol belongs to
/// a service's datagram: it follows its first fragment or is dropped.
///
/// [`VipKey`]: crate::service::VipKey
pub const VIPS_MAP: &str = "VIPS";
/// Size of [`VIPS_MAP`]: every service may have a VIP of its own.
pub const VIPS_ENTRIES: u32 = MAX_SERVICES;
/// Name of the IPv4 fragment map (LRU hash: [`FragmentKey4`] ->
/// [`FragmentPorts`]): the ports of the datagrams whose first fragment went
/// to a VIP, for their later fragments. The XDP program's own (not pinned).
///
/// [`FragmentKey4`]: crate::fragment::FragmentKey4
/// [`FragmentPorts`]: crate::fragment::FragmentPorts
pub const FRAGMENTS4_MAP: &str = "FRAGMENTS4";
/// Name of the IPv6 fragment map (LRU hash: [`FragmentKey6`] ->
/// [`FragmentPorts`]), as [`FRAGMENTS4_MAP`].
///
/// [`FragmentKey6`]: crate::fragment::FragmentKey6
/// [`FragmentPorts`]: crate::fragment::FragmentPorts
pub const FRAGMENTS6_MAP: &str = "FRAGMENTS6";
/// Size of each fragment map: fragmented datagrams to VIPs whose later
/// fragments may still come (within `FRAGMENT_LIFETIME_NS` of the first);
/// past it, the oldest datagram is forgotten.
pub const FRAGMENT_ENTRIES: u32 = 8192;
/// Name of the IPv4 flow cache (array: [`flow_cache_index`] -> [`CachedFlowSet4`]).
///
/// [`flow_cache_index`]: crate::flow_cache::flow_cache_index
/// [`CachedFlowSet4`]: crate::flow_cache::CachedFlowSet4
pub const FLOW_CACHE4_MAP: &str = "FLOW_CACHE4";
/// Name of the IPv6 flow cache (array: [`flow_cache_index`] -> [`CachedFlowSet6`]).
///
/// [`flow_cache_index`]: crate::flow_cache::flow_cache_index
/// [`CachedFlowSet6`]: crate::flow_cache::CachedFlowSet6
pub const FLOW_CACHE6_MAP: &str = "FLOW_CACHE6";
/// Name of the flow filter (mmapable array: line -> [`FlowFilterLine`], two
/// generations of [`FlowFilterState::lines`] lines), which says which flow
/// keys the flow tables may hold; the loader sizes it with
/// [`flow_filter_lines`].
///
/// [`FlowFilterLine`]: crate::flow_filter::FlowFilterLine
/// [`FlowFilterState::lines`]: crate::flow_filter::FlowFilterState::lines
/// [`flow_filter_lines`]: crate::flow_filter::flow_filter_lines
pub const FLOW_FILTER_MAP: &str = "FLOW_FILTER";
/// Name of the flow filter's state (array: 0 -> [`FlowFilterState`]),
/// written by the control plane.
///
/// [`FlowFilterState`]: crate::flow_filter::FlowFilterState
pub const FLOW_FILTER_STATE_MAP: &str = "FLOW_FILTER_STATE";
/// Name of the per-CPU verdict counters (array: `REASON_*` -> [`Counters`]).
/// The data path counts every verdict but `forwarded` here; the control
/// plane keeps the `forwarded` total of removed services in it.
///
/// [`Counters`]: crate::stats::Counters
pub const VERDICT_STATS_MAP: &str = "VERDICT_STATS";
/// Name of the per-CPU service counters (array: service id -> [`Counters`]):
/// what backends that no longer hold a slot of the service had forwarded,
/// written by the control plane. A service's totals are this plus its
/// backends' [`BACKEND_STATS_MAP`] counters.
///
/// [`Counters`]: crate::stats::Counters
pub const SERVICE_STATS_MAP: &str = "SERVICE_STATS";
/// Name of the per-CPU backend counters (array: [`backend_index`] -> [`Counters`]):
/// the data path counts every forwarded packet here, once.
///
/// [`backend_index`]: crate::stats::backend_index
/// [`Counters`]: crate::stats::Counters
pub const BACKEND_STATS_MAP: &str = "BACKEND_STATS";
/// Name of the XDP load-balancing program in the object file.
pub const XDP_PROGRAM: &str = "lb_xdp";

/// Most services one director can hold (service ids are `0..MAX_SERVICES`).
pub const MAX_SERVICES: u32 = 128;
/// Most entries of [`SERVICES_MAP`]: one per port a service covers (a
/// service over every port takes one), all services together.
pub const MAX_SERVICE_KEYS: u32 = 65_536;
/// The port of a service's key that stands for every port (IPVS's port-0
/// services): the data path looks it up when no service has the packet's
/// own port.
pub const ANY_PORT: u16 = 0;
/// Most backends (real servers) one service can hold (slots are `0..MAX_BACKENDS`).
pub const MAX_BACKENDS: usize = 256;
/// Default capacity of the IPv4 connection table; the control plane may size
/// it differently.
pub const DEFAULT_MAX_FLOWS: u32 = 1 << 20;
/// Default capacity of the IPv6 connection table; the control plane may size
/// it differently.
pub const DEFAULT_MAX_FLOWS_V6: u32 = 1 << 18;
/// Smallest pending table (see [`pending_capacity`]).
pub const MIN_PENDING_FLOWS: u32 = 1024;

/// Capacity of a family's pending table ([`PENDING4_MAP`], [`PENDING6_MAP`])
/// beside a connection table of `max_flows`: as many flows, rounded up to a
/// power of two (whole sets of `crate::flow_set`), at least
/// [`MIN_PENDING_FLOWS`]. Half-open flows live there for one round trip, so
/// it is mostly empty: its sets of two flows then rarely overflow before the
/// table is full (32 bytes per IPv4 flow, a third of a connection-table
/// entry).
pub const fn pending_capacity(max_flows: u32) -> u32 {
    if max_flows > MIN_PENDING_FLOWS {
        max_flows.next_power_of_two()
    } else {
        MIN_PENDING_FLOWS
    }
}

/// Flows a family's connection-table sets hold ([`CONFIRMED4_MAP`],
/// [`CONFIRMED6_MAP`]) beside an overflow hash of `max_flows`: as many,
/// rounded up to a power of two (whole sets of two). Filled to that
/// number, about a quarter of the flows find their set full and go to the
/// overflow hash; so the connection table holds at least `max_flows`, and
/// a table filled to a tenth of that sends under 1 % there.
pub const fn confirmed_set_capacity(max_flows: u32) -> u32 {
    if max_flows > 2 {
        max_flows.next_power_of_two()
    } else {
        2
    }
}

/// Most director NICs one `lb` attaches to.
pub const MAX_IFACES: u32 = 64;
/// Name of the NIC filter (array: [`nic_filter_index`] of the ingress
/// ifindex -> [`NicFilter`]), written by the control plane when it attaches.
///
/// [`nic_filter_index`]: crate::nic::nic_filter_index
/// [`NicFilter`]: crate::nic::NicFilter
pub const NIC_FILTER_MAP: &str = "NIC_FILTER";
/// Size of [`NIC_FILTER_MAP`] and [`NIC_STATS_MAP`].
pub const NIC_FILTER_ENTRIES: u32 = 256;
/// Name of the redirect targets (device hash: ifindex -> the same ifindex),
/// every NIC the program is attached to, written by the control plane when
/// it attaches and removed when it detaches. A frame for a backend on-link
/// through another NIC than the one it arrived on is redirected there
/// (`bpf_redirect_map`); [`MAX_IFACES`] entries.
pub const TX_PORTS_MAP: &str = "TX_PORTS";
/// Name of the per-CPU NIC counters (array: [`nic_filter_index`] of a NIC's
/// ifindex -> [`NicCounters`]): what each NIC forwarded, by the NIC it
/// arrived on and left through. Written by XDP; zeroed by the control plane
/// when it detaches from the NIC.
///
/// [`nic_filter_index`]: crate::nic::nic_filter_index
/// [`NicCounters`]: crate::nic::NicCounters
pub const NIC_STATS_MAP: &str = "NIC_STATS";
/// Largest backend weight (as IPVS: 0..=65535).
pub const MAX_WEIGHT: u32 = 65_535;

const _: () = assert!(MAX_BACKENDS.is_power_of_two());
