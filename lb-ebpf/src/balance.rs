//! One frame's way through the load balancer: [`decide`] runs the steps of
//! the other modules against the maps and returns the frame's [`Verdict`].

use aya_ebpf::programs::XdpContext;
use lb_common::{
    BackendSet, PROTO_TCP, REASON_INTERNAL, REASON_NO_BACKEND, REASON_NO_FLOW, REASON_NO_SERVICE,
    REASON_NOT_FOR_US, SERVICE_FLAG_REJECT, SERVICE_FLAG_SLOPPY_TCP, hashes_flows,
};

use crate::{
    clock::Tick,
    conntrack::{self, Binding, Lookup, TableKey},
    flood::{self, Opening},
    forward, fragment, icmp,
    maps::{self, BACKEND_CONNS, BACKENDS, WLC_TREE},
    parse::{self, IpHeader, Packet, Unparsed},
    reset, stats,
    verdict::Verdict,
};

/// Decides the fate of one frame and, for a VIP flow, rewrites it.
/// `l3_len` is the frame's length without its Ethernet header.
///
/// Cheapest first: traffic to a port no service uses is passed after one
/// array lookup, before its addresses are even read; a frame addressed to
/// another host's MAC is passed after a second; a flow this CPU
/// forwarded recently is forwarded from the flow cache; any other known flow
/// from its connection table (its service and backend slot are in the
/// flow); only a new flow pays for the service lookup and backend selection.
/// An IP packet that is neither TCP nor UDP goes to [`icmp::relay`].
/// An IP fragment of a service's datagram goes on as the packet of its flow
/// it stands for (see [`fragment`]).
#[inline(always)]
pub fn decide(ctx: &XdpContext, l3_len: u64) -> Verdict {
    let packet = match parse::parse(ctx, icmp::relay) {
        Ok(packet) => packet,
        Err(Unparsed::Verdict(verdict)) => return verdict,
        Err(Unparsed::Fragment(piece)) => match fragment::packet(ctx, &piece) {
            Ok(packet) => packet,
            Err(verdict) => return verdict,
        },
    };
    if !maps::serves_port(packet.dst_port, packet.proto) {
        return Verdict::Pass(REASON_NO_SERVICE);
    }
    if !forward::for_this_nic(ctx) {
        return Verdict::Pass(REASON_NOT_FOR_US);
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
    // Read once: the flow cache's period and the packet's time come from it.
    let tick = Tick::read();
    let period = tick.cache_period();
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
        None => match from_table(packet, key, cache_set, tick) {
            Ok(found) => found,
            Err(Verdict::Reset) => {
                return match reset::answer(ctx, packet) {
                    Ok(()) => Verdict::Reset,
                    Err(()) => Verdict::Drop(REASON_NO_BACKEND),
                };
            }
            Err(verdict) => return verdict,
        },
    };
    // Slots are bounded where they are read; `get` keeps a panic path out
    // of the program should the compiler lose track of that.
    let Some(backend) = backends.backends.get(binding.slot as usize) else {
        return Verdict::Drop(REASON_INTERNAL);
    };
    let verdict = forward::to_backend(ctx, backend, l3_len);
    if let Verdict::Drop(_) = verdict {
        return verdict;
    }
    stats::count_forwarded(service_id, binding, packet.ip_len(l3_len));
    verdict
}

/// `packet` of flow `key` without the flow cache: the flow from its tables,
/// then cached in `cache_set` (this CPU's set for it) in `tick`'s cache
/// period; or, for a flow the tables do not have, a new flow. A new flow is
/// not cached: its next packet changes its state (TCP) or finds it in a
/// table (UDP), and caches it then; only a flow that replaces one in a
/// table is, over the old flow's cached copy.
#[inline(always)]
fn from_table<K: TableKey>(
    packet: &Packet,
    key: &K,
    cache_set: Option<&mut K::CacheSet>,
    tick: Tick,
) -> Result<(u32, &'static BackendSet, Binding), Verdict> {
    let period = tick.cache_period();
    let replaces = match conntrack::known(key, packet, tick) {
        Lookup::Found(service_id, backends, binding) => {
            if let Some(set) = cache_set {
                key.cache(set, service_id, &binding, period);
            }
            return Ok((service_id, backends, binding));
        }
        Lookup::Missing => None,
        Lookup::Orphaned(table) | Lookup::Reused(table) => Some(table),
    };
    let Some(service) = maps::service(&key.service_key()) else {
        return Err(Verdict::Pass(REASON_NO_SERVICE));
    };
    let (service_id, flags) = (service.id, service.flags);
    // One clock read for the guard, the new flow and its template.
    let now = tick.now();
    let opening = match replaces {
        None => flood::opening(packet, now),
        Some(_) => Opening::Scheduled,
    };
    if opening == Opening::Scheduled
        && replaces.is_none()
        && packet.proto == PROTO_TCP
        && !packet.opens_connection()
        && flags & SERVICE_FLAG_SLOPPY_TCP == 0
        // Every director with the config picks the same backend by the hash.
        && !hashes_flows(service.scheduler)
    {
        return Err(Verdict::Drop(REASON_NO_FLOW));
    }
    let (Some(backends), Some(conns), Some(tree)) = (
        BACKENDS.get(service_id),
        BACKEND_CONNS.get_ptr_mut(service_id),
        WLC_TREE.get_ptr_mut(service_id),
    ) else {
        return Err(Verdict::Drop(REASON_INTERNAL));
    };
    let binding = match conntrack::open(
        key,
        packet,
        &service,
        (backends, conns, tree),
        replaces,
        (opening, now),
    ) {
        Ok(binding) => binding,
        Err(Verdict::Drop(REASON_NO_BACKEND))
            if flags & SERVICE_FLAG_REJECT != 0 && packet.opens_connection() =>
        {
            return Err(Verdict::Reset);
        }
        Err(verdict) => return Err(verdict),
    };
    // The old flow may still be cached; its next packets must not find it.
    if replaces.is_some()
        && let Some(set) = cache_set
    {
        key.cache(set, service_id, &binding, period);
    }
    Ok((service_id, backends, binding))
}
