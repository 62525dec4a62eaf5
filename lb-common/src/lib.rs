//! The ABI shared by the XDP program (`lb-ebpf`) and the `lb` control plane.
//!
//! Everything that crosses the kernel/user boundary lives here: map names and
//! size limits ([`limits`]), the `#[repr(C)]` keys and values of every map,
//! one module per concern ([`ip`], [`vlan`], [`nic`], [`service`], [`backend`], [`flow`],
//! [`persist`], [`pending`], [`flow_cache`], [`flow_filter`], [`fragment`], [`stats`], [`sync`], [`flood`]), and the two pieces of per-packet logic that
//! both sides must agree on exactly: the TCP state machine ([`conn_state`])
//! and weighted least-connection selection ([`wlc`]). The XDP program calls
//! them; host unit tests exercise them.
//!
//! Map types hold only integers and byte arrays, with explicit padding, so
//! their layout is identical on both sides and `bpftool map dump` prints every
//! field by name.
//!
//! | map | kind | key -> value |
//! | --- | --- | --- |
//! | [`LAYOUT_MAP`] | array | 0 -> [`LAYOUT_VERSION`] |
//! | [`NIC_FILTER_MAP`] | array | [`nic_filter_index`] -> [`NicFilter`] |
//! | [`TX_PORTS_MAP`] | device hash | ifindex -> ifindex |
//! | [`NIC_STATS_MAP`] | per-CPU array | [`nic_filter_index`] -> [`NicCounters`] |
//! | [`SERVICES_MAP`] | hash | [`ServiceKey`] -> [`Service`] |
//! | [`BACKENDS_MAP`] | array | service id -> [`BackendSet`] |
//! | [`BACKEND_CONNS_MAP`] | array | service id -> [`BackendConnSet`] |
//! | [`WLC_TREE_MAP`] | array | service id -> [`LoadTree`] |
//! | [`CONFIRMED4_MAP`] | array of sets | [`flow_set_index`] -> [`FlowSet4`] |
//! | [`CONFIRMED6_MAP`] | array of sets | [`flow_set_index`] -> [`FlowSet6`] |
//! | [`CONNTRACK4_MAP`] | hash | [`FlowKey4`] -> [`Flow`] |
//! | [`CONNTRACK6_MAP`] | hash | [`FlowKey6`] -> [`Flow`] |
//! | [`PENDING4_MAP`] | array of sets | [`flow_set_index`] -> [`FlowSet4`] |
//! | [`PENDING6_MAP`] | array of sets | [`flow_set_index`] -> [`FlowSet6`] |
//! | [`FLOW_CACHE4_MAP`] | array, one block of sets per CPU | [`flow_cache_index`] -> [`CachedFlowSet4`] |
//! | [`FLOW_CACHE6_MAP`] | array, one block of sets per CPU | [`flow_cache_index`] -> [`CachedFlowSet6`] |
//! | [`FLOW_FILTER_MAP`] | array, two generations of lines | [`FlowFilterState::position`] -> [`FlowFilterLine`] |
//! | [`FLOW_FILTER_STATE_MAP`] | array | 0 -> [`FlowFilterState`] |
//! | [`SERVICE_PORTS_MAP`] | array | port -> `PORT_*` protocol bits |
//! | [`VIPS_MAP`] | hash | [`VipKey`] -> `PORT_*` protocol bits |
//! | [`FRAGMENTS4_MAP`] | LRU hash | [`FragmentKey4`] -> [`FragmentPorts`] |
//! | [`FRAGMENTS6_MAP`] | LRU hash | [`FragmentKey6`] -> [`FragmentPorts`] |
//! | [`VERDICT_STATS_MAP`] | per-CPU array | verdict reason -> [`Counters`] |
//! | [`SERVICE_STATS_MAP`] | per-CPU array | service id -> [`Counters`] |
//! | [`BACKEND_STATS_MAP`] | per-CPU array | [`backend_index`] -> [`Counters`] |
//! | [`FLOW_EVENTS_MAP`] | per-CPU array | [`flow_event_index`] -> `u64` |
//! | [`PERSIST_MAP`] | LRU hash | [`PersistKey`] -> [`PersistTemplate`] |
//! | [`SYNC_ENABLED_MAP`] | array | 0 -> 1 while flows are synced |
//! | [`FLOW_CHANGES_MAP`] | ring buffer | [`FlowChange`]s for connection sync |
//! | [`SYNC_STATS_MAP`] | array | 0 -> [`SyncCounters`] |
//! | [`FLOOD_GUARD_MAP`] | array | 0 -> [`FloodGuard`] |
//! | [`FLOOD_UNTIL_MAP`] | array | 0 -> end of flood mode (ns) |
//! | [`SYN_WINDOW_MAP`] | per-CPU array | 0 -> [`SynWindow`] |
//!
//! [`LAYOUT_MAP`]: limits::LAYOUT_MAP
//! [`LAYOUT_VERSION`]: limits::LAYOUT_VERSION
//! [`NIC_FILTER_MAP`]: limits::NIC_FILTER_MAP
//! [`nic_filter_index`]: nic::nic_filter_index
//! [`NicFilter`]: nic::NicFilter
//! [`TX_PORTS_MAP`]: limits::TX_PORTS_MAP
//! [`NIC_STATS_MAP`]: limits::NIC_STATS_MAP
//! [`NicCounters`]: nic::NicCounters
//! [`SERVICES_MAP`]: limits::SERVICES_MAP
//! [`BACKENDS_MAP`]: limits::BACKENDS_MAP
//! [`BACKEND_CONNS_MAP`]: limits::BACKEND_CONNS_MAP
//! [`WLC_TREE_MAP`]: limits::WLC_TREE_MAP
//! [`CONFIRMED4_MAP`]: limits::CONFIRMED4_MAP
//! [`CONFIRMED6_MAP`]: limits::CONFIRMED6_MAP
//! [`CONNTRACK4_MAP`]: limits::CONNTRACK4_MAP
//! [`CONNTRACK6_MAP`]: limits::CONNTRACK6_MAP
//! [`PENDING4_MAP`]: limits::PENDING4_MAP
//! [`PENDING6_MAP`]: limits::PENDING6_MAP
//! [`FLOW_EVENTS_MAP`]: limits::FLOW_EVENTS_MAP
//! [`flow_event_index`]: stats::flow_event_index
//! [`PERSIST_MAP`]: limits::PERSIST_MAP
//! [`PersistKey`]: persist::PersistKey
//! [`SYNC_ENABLED_MAP`]: limits::SYNC_ENABLED_MAP
//! [`FLOW_CHANGES_MAP`]: limits::FLOW_CHANGES_MAP
//! [`FlowChange`]: sync::FlowChange
//! [`SYNC_STATS_MAP`]: limits::SYNC_STATS_MAP
//! [`SyncCounters`]: sync::SyncCounters
//! [`FLOOD_GUARD_MAP`]: limits::FLOOD_GUARD_MAP
//! [`FloodGuard`]: flood::FloodGuard
//! [`FLOOD_UNTIL_MAP`]: limits::FLOOD_UNTIL_MAP
//! [`SYN_WINDOW_MAP`]: limits::SYN_WINDOW_MAP
//! [`SynWindow`]: flood::SynWindow
//! [`PersistTemplate`]: persist::PersistTemplate
//! [`FLOW_CACHE4_MAP`]: limits::FLOW_CACHE4_MAP
//! [`FLOW_CACHE6_MAP`]: limits::FLOW_CACHE6_MAP
//! [`FLOW_FILTER_MAP`]: limits::FLOW_FILTER_MAP
//! [`FLOW_FILTER_STATE_MAP`]: limits::FLOW_FILTER_STATE_MAP
//! [`FlowFilterState::position`]: flow_filter::FlowFilterState::position
//! [`FlowFilterLine`]: flow_filter::FlowFilterLine
//! [`FlowFilterState`]: flow_filter::FlowFilterState
//! [`SERVICE_PORTS_MAP`]: limits::SERVICE_PORTS_MAP
//! [`VIPS_MAP`]: limits::VIPS_MAP
//! [`VipKey`]: service::VipKey
//! [`FRAGMENTS4_MAP`]: limits::FRAGMENTS4_MAP
//! [`FRAGMENTS6_MAP`]: limits::FRAGMENTS6_MAP
//! [`FragmentKey4`]: fragment::FragmentKey4
//! [`FragmentKey6`]: fragment::FragmentKey6
//! [`FragmentPorts`]: fragment::FragmentPorts
//! [`VERDICT_STATS_MAP`]: limits::VERDICT_STATS_MAP
//! [`SERVICE_STATS_MAP`]: limits::SERVICE_STATS_MAP
//! [`BACKEND_STATS_MAP`]: limits::BACKEND_STATS_MAP
//! [`ServiceKey`]: service::ServiceKey
//! [`Service`]: service::Service
//! [`BackendSet`]: backend::BackendSet
//! [`BackendConnSet`]: backend::BackendConnSet
//! [`LoadTree`]: wlc::LoadTree
//! [`FlowKey4`]: flow::FlowKey4
//! [`FlowKey6`]: flow::FlowKey6
//! [`Flow`]: flow::Flow
//! [`flow_cache_index`]: flow_cache::flow_cache_index
//! [`CachedFlowSet4`]: flow_cache::CachedFlowSet4
//! [`CachedFlowSet6`]: flow_cache::CachedFlowSet6
//! [`Counters`]: stats::Counters
//! [`backend_index`]: stats::backend_index
#![no_std]

pub mod backend;
pub mod conn_state;
pub mod flood;
pub mod flow;
pub mod flow_cache;
pub mod flow_filter;
pub mod flow_set;
pub mod fragment;
pub mod ip;
pub mod limits;
pub mod nic;
pub mod persist;
pub mod schedule;
pub mod service;
pub mod stats;
pub mod sync;
pub mod vlan;
pub mod wlc;

// The crate's flat API: every map type, name and limit is also `lb_common::X`.
pub use backend::*;
pub use flood::*;
pub use flow::*;
pub use flow_cache::*;
pub use flow_filter::*;
pub use flow_set::*;
pub use fragment::*;
pub use ip::*;
pub use limits::*;
pub use nic::*;
pub use persist::*;
pub use schedule::{
    SCHEDULE_TABLE_SIZE, SCHEDULER_MH, SCHEDULER_RR, SCHEDULER_SH, SCHEDULER_WLC, SCHEDULER_WRR,
    ScheduleTable, flow_hash, hashes_flows,
};
pub use service::*;
pub use stats::*;
pub use sync::*;
pub use vlan::*;
pub use wlc::LoadTree;

// `FlowKey4::from_parts`, `FlowKey6::from_parts`, their fragment-key
// counterparts and the words of an `AlignedServiceKey` or a `VipKey` place
// fields by bit position; both the BPF target
// (bpfel) and the hosts lb runs on are little-endian.
const _: () = assert!(cfg!(target_endian = "little"));
