//! IP fragments of VIP flows: a fragmented datagram to a service goes whole
//! to the flow's real server, never to the director's own stack (which also
//! holds the VIP).
//!
//! A fragment matters when it goes to a VIP over a protocol one of the VIP's
//! services uses (`VIPS`, written by the control plane with the services);
//! any other fragment (to the director's own addresses, ICMP to a VIP) is
//! passed as before. Only a datagram's first fragment carries the transport
//! header: it is balanced as any packet of its flow, and its ports are
//! remembered under (source, destination, protocol, identification, VLAN) in
//! `FRAGMENTS4`/`FRAGMENTS6`, LRU maps, as Cilium does. A later fragment
//! takes the ports of its first fragment, if that came within
//! `FRAGMENT_LIFETIME_NS`, and then goes where a packet of the flow goes
//! (its backend, or the stack if the port is no service's); without them it
//! is an orphan and is dropped, since nothing can tell its flow.
//!
//! An IPv6 datagram's fragmentable part must start with its TCP/UDP header
//! (the fragment header's next header), as Linux sends it; one whose
//! fragmentable part starts with another extension header is passed.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    FRAGMENT_LIFETIME_NS, FragmentKey4, FragmentKey6, FragmentPorts, REASON_FRAGMENT,
    REASON_FRAGMENT_ORPHAN, VipKey, port_bit,
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    clock::now,
    maps::{FRAGMENTS4, FRAGMENTS6, VIPS},
    parse::{self, Fragment, IpHeader, Packet, load_addr6, load_u32},
    verdict::Verdict,
};

/// The packet `fragment` stands for: a first fragment with its own ports, a
/// later one with its first fragment's; or what to do with a fragment of no
/// service (`Pass`), a later one whose first was not seen (`Drop`), or a
/// first fragment without a whole transport header (`Drop`).
#[inline(always)]
pub fn packet(ctx: &XdpContext, fragment: &Fragment) -> Result<Packet, Verdict> {
    if protocols_of_vip(fragment.ip.header) & port_bit(fragment.proto) == 0 {
        return Err(Verdict::Pass(REASON_FRAGMENT));
    }
    if fragment.first {
        let packet = parse::transport(
            ctx,
            fragment.ip,
            fragment.data_offset,
            fragment.proto,
            fragment.ip_end,
        )?;
        if fragment.more {
            remember(fragment, packet.src_port, packet.dst_port);
        }
        return Ok(packet);
    }
    let (src_port, dst_port) = recall(fragment).ok_or(Verdict::Drop(REASON_FRAGMENT_ORPHAN))?;
    Ok(Packet {
        ip: fragment.ip.header,
        l3_offset: fragment.ip.offset,
        vlan: fragment.ip.vlan,
        proto: fragment.proto,
        src_port,
        dst_port,
        // Flags are in the first fragment's header: a later one changes no
        // TCP state.
        tcp_flags: 0,
        carries_data: true,
    })
}

/// The `PORT_*` bits of the protocols of the services on the destination
/// address of the datagram with header `ip` (0 if it is no VIP).
#[inline(always)]
fn protocols_of_vip(ip: IpHeader) -> u32 {
    // SAFETY: `parse` checked that the IP header is inside the frame.
    let key = unsafe {
        match ip {
            IpHeader::V4(ip) => VipKey::v4(load_u32(&raw const (*ip).dst_addr)),
            IpHeader::V6(ip) => VipKey::v6(load_addr6(&raw const (*ip).dst_addr)),
        }
    };
    // SAFETY: the control plane replaces entries whole; a copy is taken at once.
    unsafe { VIPS.get(key) }.copied().unwrap_or(0)
}

/// Remembers the ports of first fragment `fragment` for its datagram's
/// later fragments. A full map forgets its oldest datagram; should the
/// kernel fail the insert, the later fragments are dropped as orphans.
#[inline(always)]
fn remember(fragment: &Fragment, src_port: u16, dst_port: u16) {
    let ports = FragmentPorts {
        first_seen_ns: now(),
        src_port,
        dst_port,
        _pad: 0,
    };
    let _ = match fragment.ip.header {
        IpHeader::V4(ip) => FRAGMENTS4.insert(key4(ip, fragment), ports, 0),
        IpHeader::V6(ip) => FRAGMENTS6.insert(key6(ip, fragment), ports, 0),
    };
}

/// The ports of the datagram of later fragment `fragment`, if its first
/// fragment came within `FRAGMENT_LIFETIME_NS`.
#[inline(always)]
fn recall(fragment: &Fragment) -> Option<(u16, u16)> {
    let ports = match fragment.ip.header {
        IpHeader::V4(ip) => FRAGMENTS4.get_ptr(key4(ip, fragment)),
        IpHeader::V6(ip) => FRAGMENTS6.get_ptr(key6(ip, fragment)),
    }?;
    // SAFETY: a valid map value; a first fragment on another CPU may rewrite
    // it at once, with the same ports unless the identification was reused.
    let ports = unsafe { *ports };
    (now().wrapping_sub(ports.first_seen_ns) <= FRAGMENT_LIFETIME_NS)
        .then_some((ports.src_port, ports.dst_port))
}

/// The IPv4 fragment-map key of `fragment`, whose header is `ip`.
#[inline(always)]
fn key4(ip: *const Ipv4Hdr, fragment: &Fragment) -> FragmentKey4 {
    // SAFETY: `parse` checked that the IPv4 header is inside the frame.
    let (src, dst) = unsafe {
        (
            load_u32(&raw const (*ip).src_addr),
            load_u32(&raw const (*ip).dst_addr),
        )
    };
    FragmentKey4::from_parts(src, dst, fragment.id, fragment.proto, fragment.ip.vlan)
}

/// The IPv6 fragment-map key of `fragment`, whose header is `ip`.
#[inline(always)]
fn key6(ip: *const Ipv6Hdr, fragment: &Fragment) -> FragmentKey6 {
    // SAFETY: `parse` checked that the IPv6 header is inside the frame.
    let (src, dst) = unsafe {
        (
            load_addr6(&raw const (*ip).src_addr),
            load_addr6(&raw const (*ip).dst_addr),
        )
    };
    FragmentKey6::from_parts(src, dst, fragment.id, fragment.proto, fragment.ip.vlan)
}
