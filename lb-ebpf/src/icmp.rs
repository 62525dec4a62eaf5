//! ICMP errors about VIP flows go to the flow's real server, as IPVS
//! (`ip_vs_in_icmp`) and Katran (`handle_icmp`) do.
//!
//! In direct routing the real server answers the client from the VIP, so a
//! router that cannot forward one of its packets (too big for the next link
//! with DF set, TTL exceeded, no route) sends its ICMP error to the VIP: to
//! the director. Unless the director passes it on, the real server never
//! learns the path MTU and its connection stalls on the first full-sized
//! segment.
//!
//! Taken: an ICMPv4 destination unreachable (any code: fragmentation needed,
//! ...) or time exceeded, an ICMPv6 destination unreachable, packet too big
//! or time exceeded, whose quoted packet goes from a service's VIP and port
//! to the client of a flow in the tables. Its flow is the quoted packet's
//! reversed: client = quoted destination, VIP = quoted source, ports
//! swapped. The frame goes to the flow's backend with only its MAC addresses
//! changed (`XDP_TX`, counted as `icmp_forwarded`); the flow itself is only
//! read, never changed.
//!
//! The quote is bounds-checked against the frame and the outer IP length: an
//! IPv4 header by its IHL (not a later fragment, which quotes no ports), or
//! the fixed IPv6 header followed directly by TCP or UDP, then the first 8
//! bytes of the transport header (what an ICMPv4 error must quote at least).
//! As for TCP and UDP, the port prefilter applies (to the quoted source
//! port), then the NIC's MAC filter. Everything else passes to the
//! director's stack as before: other ICMP messages, errors with a short or
//! unexpected quote, or about packets of no service (`pass_not_tcp_udp`);
//! errors about a service's flow the tables do not know, as IPVS passes them
//! (`pass_icmp_no_flow`); errors addressed to another MAC
//! (`pass_not_for_us`).

use aya_ebpf::programs::XdpContext;
use lb_common::{
    FlowKey4, FlowKey6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, REASON_ICMP_NO_FLOW,
    REASON_NOT_FOR_US, REASON_NOT_L4,
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    conntrack::{self, TableKey},
    forward, maps,
    parse::{self, IPV4_OFFSET_MASK, IpHeader, NotTcpUdp, be16, load_addr6, load_u32, ptr_at},
    verdict::Verdict,
};

/// ICMPv4 destination unreachable (code 4: fragmentation needed).
const ICMP_DEST_UNREACH: u8 = 3;
/// ICMPv4 time exceeded.
const ICMP_TIME_EXCEEDED: u8 = 11;
/// ICMPv6 destination unreachable.
const ICMPV6_DEST_UNREACH: u8 = 1;
/// ICMPv6 packet too big.
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
/// ICMPv6 time exceeded.
const ICMPV6_TIME_EXCEEDED: u8 = 3;
/// Length of the ICMP (and ICMPv6) error header before the quoted packet.
const ICMP_HEADER_LEN: usize = 8;
/// Bytes of the quoted transport header that must be there (the ports
/// first): what RFC 792 makes an ICMPv4 error quote at least.
const QUOTED_L4_LEN: usize = 8;

/// The verdict on `packet`, an IP packet that is neither TCP nor UDP: an
/// ICMP error about a known flow goes to the flow's backend, anything else
/// passes (see the module docs).
///
/// A function of its own (a BPF-to-BPF call): TCP and UDP packets never
/// come here, and the rare path stays out of their inlined code.
#[inline(never)]
pub fn relay(ctx: &XdpContext, packet: &NotTcpUdp) -> Verdict {
    const NOT_TCP_UDP: Verdict = Verdict::Pass(REASON_NOT_L4);
    if packet.offset + ICMP_HEADER_LEN > packet.end {
        return NOT_TCP_UDP;
    }
    let Some(kind) = ptr_at::<u8>(ctx, packet.offset) else {
        return NOT_TCP_UDP;
    };
    // SAFETY: the type byte is inside the frame.
    let kind = unsafe { *kind };
    let quote = packet.offset + ICMP_HEADER_LEN;
    let verdict = match packet.ip {
        IpHeader::V4(_)
            if packet.proto == PROTO_ICMP
                && matches!(kind, ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED) =>
        {
            quoted_flow4(ctx, quote, packet.end, packet.vlan).map(|key| to_backend(ctx, &key))
        }
        IpHeader::V6(_)
            if packet.proto == PROTO_ICMPV6
                && matches!(
                    kind,
                    ICMPV6_DEST_UNREACH | ICMPV6_PACKET_TOO_BIG | ICMPV6_TIME_EXCEEDED
                ) =>
        {
            quoted_flow6(ctx, quote, packet.end, packet.vlan).map(|key| to_backend(ctx, &key))
        }
        _ => None,
    };
    verdict.unwrap_or(NOT_TCP_UDP)
}

/// The flow of the IPv4 packet an ICMP error on VLAN path `vlan` quotes at
/// `at` (the datagram ends at `end`), if the quote holds its IP header and
/// transport ports.
#[inline(always)]
fn quoted_flow4(ctx: &XdpContext, at: usize, end: usize, vlan: u32) -> Option<FlowKey4> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, at)?;
    // SAFETY: the fixed IPv4 header is inside the frame.
    let (vihl, frags, proto, src, dst) = unsafe {
        (
            (*ip).vihl,
            be16(&raw const (*ip).frags),
            (*ip).proto,
            load_u32(&raw const (*ip).src_addr),
            load_u32(&raw const (*ip).dst_addr),
        )
    };
    let header_len = usize::from(vihl & 0x0F) * 4;
    if vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN || frags & IPV4_OFFSET_MASK != 0 {
        return None;
    }
    let (src_port, dst_port) = quoted_ports(ctx, proto, at + header_len, end)?;
    // From the VIP to the client: the flow is the other way round.
    Some(FlowKey4::from_parts(
        dst, src, dst_port, src_port, proto, vlan,
    ))
}

/// The flow of the IPv6 packet an ICMPv6 error on VLAN path `vlan` quotes
/// at `at` (the datagram ends at `end`), if the quote holds its IP header
/// and transport ports right after it.
#[inline(always)]
fn quoted_flow6(ctx: &XdpContext, at: usize, end: usize, vlan: u32) -> Option<FlowKey6> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, at)?;
    // SAFETY: the fixed IPv6 header is inside the frame.
    let (version, proto, src, dst) = unsafe {
        (
            (*ip).vcf[0] >> 4,
            (*ip).next_hdr,
            load_addr6(&raw const (*ip).src_addr),
            load_addr6(&raw const (*ip).dst_addr),
        )
    };
    if version != 6 {
        return None;
    }
    let (src_port, dst_port) = quoted_ports(ctx, proto, at + Ipv6Hdr::LEN, end)?;
    // From the VIP to the client: the flow is the other way round.
    Some(FlowKey6::from_parts(
        dst, src, dst_port, src_port, proto, vlan,
    ))
}

/// The source and destination ports of the quoted `proto` header at `at`,
/// if it is TCP or UDP, its first [`QUOTED_L4_LEN`] bytes lie inside the
/// frame and before `end`, and some service uses its source port (the port
/// prefilter).
#[inline(always)]
fn quoted_ports(ctx: &XdpContext, proto: u8, at: usize, end: usize) -> Option<(u16, u16)> {
    if !matches!(proto, PROTO_TCP | PROTO_UDP) || at + QUOTED_L4_LEN > end {
        return None;
    }
    let ports = ptr_at::<[u8; QUOTED_L4_LEN]>(ctx, at)?.cast::<[u8; 2]>();
    // SAFETY: both ports are inside the frame.
    let (src, dst) = unsafe { (be16(ports), be16(ports.add(1))) };
    maps::serves_port(src, proto).then_some((src, dst))
}

/// The verdict on an ICMP error about flow `key`: sent to the flow's
/// backend if the frame is for this NIC and the tables know the flow.
#[inline(always)]
fn to_backend<K: TableKey>(ctx: &XdpContext, key: &K) -> Verdict {
    if !forward::for_this_nic(ctx) {
        return Verdict::Pass(REASON_NOT_FOR_US);
    }
    if let Some(backend) = conntrack::backend_of(key) {
        return match forward::to_backend(ctx, backend, parse::l3_len(ctx)) {
            Verdict::Tx => Verdict::IcmpToBackend { redirect: false },
            Verdict::Redirect => Verdict::IcmpToBackend { redirect: true },
            other => other,
        };
    }
    if maps::service(&key.service_key()).is_some() {
        Verdict::Pass(REASON_ICMP_NO_FLOW)
    } else {
        Verdict::Pass(REASON_NOT_L4)
    }
}
