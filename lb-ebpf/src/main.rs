//! The XDP data path of the `lb` direct-routing load balancer.
//!
//! Per packet: parse ([`parse`]), look up the service, find or create the
//! flow ([`conntrack`], choosing a backend by weighted least-connection on a
//! miss), rewrite the Ethernet addresses ([`forward`]) and count everything
//! ([`stats`]). Only [`lb_xdp`] turns a [`Verdict`] into an XDP action.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_xadd is the only 64-bit atomic add bpfel-unknown-none offers"
)]

mod conntrack;
mod forward;
mod parse;
mod stats;

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use conntrack::{Binding, TableKey};
use lb_common::{
    BACKEND_STATS_ENTRIES, BackendConnSet, BackendSet, CachedFlowSet4, CachedFlowSet6, Counters,
    DEFAULT_MAX_FLOWS, DEFAULT_MAX_FLOWS_V6, FLOW_CACHE_SETS, Flow, FlowKey4, FlowKey6, LoadTree,
    MAX_SERVICES, NUM_REASONS, REASON_INTERNAL, REASON_NO_SERVICE, SERVICE_PORTS_ENTRIES, Service,
    ServiceKey, port_bit,
};
use parse::{IpHeader, Packet};

/// Virtual services: (VIP, port, protocol) -> service id. Written by the control plane.
#[btf_map]
static SERVICES: HashMap<ServiceKey, Service, { MAX_SERVICES as usize }> = HashMap::new();

/// Backends of each service, indexed by service id. Written by the control plane.
#[btf_map]
static BACKENDS: Array<BackendSet, { MAX_SERVICES as usize }> = Array::new();

/// Active/inactive flow counts per backend, indexed by service id. Adjusted
/// atomically here; reset from the connection table by the control plane's sweeper.
#[btf_map]
static BACKEND_CONNS: Array<BackendConnSet, { MAX_SERVICES as usize }> = Array::new();

/// Each service's tournament tree of backend loads, indexed by service id:
/// its root names the backend for the next new flow (see `lb_common::wlc`).
/// Repaired here on every counter change; rebuilt by the control plane when
/// it writes the service's backends or counters.
#[btf_map]
static WLC_TREE: Array<LoadTree, { MAX_SERVICES as usize }> = Array::new();

/// The IPv4 connection table: client 5-tuple -> service, backend slot, TCP
/// state, last seen. The control plane may resize it before loading and
/// expires idle flows.
#[btf_map]
static CONNTRACK4: LruHashMap<FlowKey4, Flow, { DEFAULT_MAX_FLOWS as usize }> = LruHashMap::new();

/// The IPv6 connection table, as [`CONNTRACK4`] with 16-byte addresses.
#[btf_map]
static CONNTRACK6: LruHashMap<FlowKey6, Flow, { DEFAULT_MAX_FLOWS_V6 as usize }> =
    LruHashMap::new();

/// Port prefilter: destination port -> `PORT_*` bits of the protocols some
/// service uses on it. Written by the control plane.
#[btf_map]
static SERVICE_PORTS: Array<u32, { SERVICE_PORTS_ENTRIES as usize }> = Array::new();

/// IPv4 flow cache: (CPU, hash of the key) -> a set of four recent copies of
/// connection-table entries (see `conntrack`); each CPU reads and writes only
/// its own sets. Written only by the data path. An mmapable array, so that
/// its values start on a page and every set on a cache line; the loader sets
/// its size to `FLOW_CACHE_SETS` per possible CPU (with the size here, one
/// CPU's, the other CPUs find no set and take the table path).
#[btf_map]
static FLOW_CACHE4: Array<CachedFlowSet4, { FLOW_CACHE_SETS as usize }, BPF_F_MMAPABLE> =
    Array::new();

/// IPv6 flow cache, as [`FLOW_CACHE4`].
#[btf_map]
static FLOW_CACHE6: Array<CachedFlowSet6, { FLOW_CACHE_SETS as usize }, BPF_F_MMAPABLE> =
    Array::new();

/// Per-CPU packet/byte counters per verdict reason (`REASON_*`), for every
/// frame that is not forwarded. The control plane keeps the `forwarded`
/// total of removed services under `REASON_FORWARDED`.
#[btf_map]
static VERDICT_STATS: PerCpuArray<Counters, { NUM_REASONS as usize }> = PerCpuArray::new();

/// Per-CPU counters per service id: what backends that no longer hold a
/// slot of the service had forwarded. Written by the control plane only
/// (the data path counts per backend).
#[btf_map]
static SERVICE_STATS: PerCpuArray<Counters, { MAX_SERVICES as usize }> = PerCpuArray::new();

/// Per-CPU counters per backend (`lb_common::backend_index`): every
/// forwarded frame, once.
#[btf_map]
static BACKEND_STATS: PerCpuArray<Counters, { BACKEND_STATS_ENTRIES as usize }> =
    PerCpuArray::new();

/// `BPF_F_MMAPABLE`: the array's values are page-aligned (and could be mapped
/// into user space).
const BPF_F_MMAPABLE: usize = 1 << 10;

/// What to do with a packet, and why.
#[derive(Clone, Copy)]
pub enum Verdict {
    /// Rewritten for a backend; send it back out of the ingress NIC.
    Tx,
    /// Not ours: hand it to the director's network stack.
    Pass(u32),
    /// Ours, but it cannot be forwarded.
    Drop(u32),
}

/// The load balancer: every frame arriving on a director NIC goes through here.
#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    // DR rewrites MAC addresses only, so the length is the same before and after.
    let l3_len = parse::l3_len(&ctx);
    let (action, reason) = match balance(&ctx, l3_len) {
        // Counted for its backend by `balance_flow`.
        Verdict::Tx => return xdp_action::XDP_TX,
        Verdict::Pass(reason) => (xdp_action::XDP_PASS, reason),
        Verdict::Drop(reason) => (xdp_action::XDP_DROP, reason),
    };
    stats::count_verdict(reason, l3_len);
    action
}

/// Decides the fate of one frame and, for a VIP flow, rewrites it.
/// `l3_len` is the frame's length without its Ethernet header.
///
/// Cheapest first: traffic to a port no service uses is passed after one
/// array lookup, before its addresses are even read; a flow this CPU
/// forwarded recently is forwarded from the flow cache; any other known flow
/// from its connection table (its service and backend slot are in the
/// flow); only a new flow pays for the service lookup and backend selection.
#[inline(always)]
fn balance(ctx: &XdpContext, l3_len: u64) -> Verdict {
    let packet = match parse::parse(ctx) {
        Ok(packet) => packet,
        Err(verdict) => return verdict,
    };
    let ports = SERVICE_PORTS
        .get(u32::from(packet.dst_port))
        .copied()
        .unwrap_or(0);
    if ports & port_bit(packet.proto) == 0 {
        return Verdict::Pass(REASON_NO_SERVICE);
    }
    match packet.ip {
        IpHeader::V4(ip) => balance_flow(ctx, &packet, &packet.key4(ip), l3_len),
        IpHeader::V6(ip) => balance_flow(ctx, &packet, &packet.key6(ip), l3_len),
    }
}

/// Forwards `packet` of flow `key` to its backend, scheduling the flow first
/// if it is new.
#[inline(always)]
fn balance_flow(ctx: &XdpContext, packet: &Packet, key: &impl TableKey, l3_len: u64) -> Verdict {
    let period = conntrack::cache_period();
    // Found once: probed here, refilled from the table below.
    let cache_set = key.cache_set();
    // A connection's first SYN is almost never cached, and probing for it
    // would cost a cache miss on every new connection.
    let hit = match cache_set.as_deref() {
        Some(set) if !packet.opens_connection() => conntrack::cached(key, set, packet, period),
        _ => None,
    };
    let (service_id, backends, binding) = match hit {
        Some(hit) => hit,
        None => match from_table(packet, key, cache_set, period) {
            Ok(found) => found,
            Err(verdict) => return verdict,
        },
    };
    let backend = &backends.backends[binding.slot as usize];
    if forward::rewrite_macs(ctx, backend).is_err() {
        return Verdict::Drop(REASON_INTERNAL);
    }
    stats::count_forwarded(service_id, binding, l3_len);
    Verdict::Tx
}

/// `packet` of flow `key` without the flow cache: the flow from its table,
/// then cached in `cache_set` (this CPU's set for it) in `period`; or, for a
/// flow the table does not have, a new flow. A new flow is not cached: its
/// next packet changes its state (TCP) or finds it in the table (UDP), and
/// caches it then.
#[inline(always)]
fn from_table<K: TableKey>(
    packet: &Packet,
    key: &K,
    cache_set: Option<&mut K::CacheSet>,
    period: u64,
) -> Result<(u32, &'static BackendSet, Binding), Verdict> {
    if let Some((service_id, backends, binding)) = conntrack::known(key, packet) {
        if let Some(set) = cache_set {
            key.cache(set, service_id, &binding, period);
        }
        return Ok((service_id, backends, binding));
    }
    let service_key = key.service_key();
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value, the key would be copied to a stack slot of its own 4-byte alignment"
    )]
    // SAFETY: the control plane replaces service entries whole; a copy is taken at once.
    let Some(service_id) = (unsafe { SERVICES.get(&service_key.key) }).map(|s| s.id) else {
        return Err(Verdict::Pass(REASON_NO_SERVICE));
    };
    let (Some(backends), Some(conns), Some(tree)) = (
        BACKENDS.get(service_id),
        BACKEND_CONNS.get_ptr_mut(service_id),
        WLC_TREE.get_ptr_mut(service_id),
    ) else {
        return Err(Verdict::Drop(REASON_INTERNAL));
    };
    let binding = conntrack::open(key, packet, service_id, conns, tree)?;
    Ok((service_id, backends, binding))
}

/// Frames that reach the trivial program are handed to the network stack.
/// The test bed attaches it to veth peers: a veth delivers `XDP_TX` frames
/// only when its peer has an XDP program.
#[xdp]
pub fn lb_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
