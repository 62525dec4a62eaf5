//! A TCP RST in answer to a SYN that no backend can take (a service with
//! `no_backend = "reject"`), so that the client fails at once instead of
//! retrying its SYN: the frame is turned around in place and trimmed to its
//! headers, then sent back out of the NIC it came in on.
//!
//! The reply, as RFC 9293 answers a segment without ACK: RST|ACK, sequence
//! number 0, acknowledgment number the SYN's sequence number plus its length
//! (1 for the SYN, plus its payload); from the VIP to the client, with the
//! MAC addresses swapped, TTL (hop limit) 64, no TCP options. VLAN tags and
//! IPv4 options are kept as they came; an IPv4 fragment (a SYN cut in
//! pieces) and an IPv6 packet with extension headers are not answered (the
//! caller drops them).

use aya_ebpf::{helpers::bpf_xdp_adjust_tail, programs::XdpContext};
use lb_common::PROTO_TCP;

use crate::parse::{IpHeader, Packet, ptr_at_mut};

/// The reply's TCP header length: no options.
const TCP_LEN: usize = 20;
/// RST and ACK flags.
const TCP_RST_ACK: u8 = 0x14;
/// The IPv4 MF flag and fragment offset.
const IPV4_FRAGMENT: u16 = 0x3fff;
/// TTL and hop limit of the reply.
const REPLY_TTL: u8 = 64;

/// Turns the SYN `packet` into the RST that answers it; `Err` when it cannot.
///
/// A function of its own (a BPF-to-BPF call): the rare path stays out of
/// the inlined per-packet code, whose optimisation it would otherwise change.
#[inline(never)]
pub fn answer(ctx: &XdpContext, packet: &Packet) -> Result<(), ()> {
    // A packet that is not answered is left as it came.
    let frame_len = match packet.ip {
        IpHeader::V4(_) => ipv4(ctx, packet.l3_offset)?,
        IpHeader::V6(_) => ipv6(ctx, packet.l3_offset)?,
    };
    let macs = ptr_at_mut::<[u8; 12]>(ctx, 0).ok_or(())?.cast::<u8>();
    // SAFETY: the Ethernet addresses are inside the frame.
    unsafe {
        let (dst_head, dst_tail) = (read32(macs, 0), read16(macs, 4));
        let (src_head, src_tail) = (read16(macs, 6), read32(macs, 8));
        write32(macs, 0, u32::from(src_head) << 16 | src_tail >> 16);
        write16(macs, 4, src_tail as u16);
        write16(macs, 6, (dst_head >> 16) as u16);
        write32(macs, 8, dst_head << 16 | u32::from(dst_tail));
    }
    let delta = frame_len as i64 - (ctx.data_end() - ctx.data()) as i64;
    // SAFETY: a helper on this program's own context; it only shrinks the
    // frame (`delta` is at most 0: the reply is the SYN's headers or fewer).
    if delta < 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta as i32) } != 0 {
        return Err(());
    }
    Ok(())
}

/// The IPv4 header at `l3_offset` and the TCP header after it, turned
/// around; returns the reply's frame length.
#[inline(always)]
fn ipv4(ctx: &XdpContext, l3_offset: usize) -> Result<usize, ()> {
    let ip = ptr_at_mut::<[u8; 20]>(ctx, l3_offset)
        .ok_or(())?
        .cast::<u8>();
    // SAFETY: the fixed IPv4 header is inside the frame; every access below
    // is at a constant offset inside it.
    let (header_len, total_len, fragment) = unsafe {
        (
            usize::from(*ip & 0x0f) * 4,
            read16(ip, 2),
            read16(ip, 6) & IPV4_FRAGMENT,
        )
    };
    if fragment != 0 {
        return Err(());
    }
    // Checked by the parser: 20 to 60 bytes, within the total length.
    let tcp = ptr_at_mut::<[u8; TCP_LEN]>(ctx, l3_offset + header_len)
        .ok_or(())?
        .cast::<u8>();
    let segment_len = usize::from(total_len).saturating_sub(header_len);
    let reply_len = (header_len + TCP_LEN) as u16;
    // SAFETY: as above, and the fixed TCP header is inside the frame.
    unsafe {
        // The source and destination swap places: their sum, and so the
        // checksum, stays the same. Length and TTL change: updated in place.
        let (src, dst) = (read32(ip, 12), read32(ip, 16));
        write32(ip, 12, dst);
        write32(ip, 16, src);
        let old_ttl = read16(ip, 8);
        write16(ip, 2, reply_len);
        *ip.add(8) = REPLY_TTL;
        let mut check = checksum_update(read16(ip, 10), total_len, reply_len);
        check = checksum_update(check, old_ttl, read16(ip, 8));
        write16(ip, 10, check);
        let pseudo = sum32(src) + sum32(dst) + u32::from(PROTO_TCP) + TCP_LEN as u32;
        turn_around(tcp, segment_len, pseudo);
    }
    Ok(l3_offset + header_len + TCP_LEN)
}

/// The IPv6 header at `l3_offset` and the TCP header right after it,
/// turned around; returns the reply's frame length.
#[inline(always)]
fn ipv6(ctx: &XdpContext, l3_offset: usize) -> Result<usize, ()> {
    let ip = ptr_at_mut::<[u8; 40]>(ctx, l3_offset)
        .ok_or(())?
        .cast::<u8>();
    let tcp = ptr_at_mut::<[u8; TCP_LEN]>(ctx, l3_offset + 40)
        .ok_or(())?
        .cast::<u8>();
    // SAFETY: the fixed IPv6 and TCP headers are inside the frame; every
    // access is at a constant offset inside them.
    unsafe {
        if *ip.add(6) != PROTO_TCP {
            // Extension headers: not answered.
            return Err(());
        }
        let segment_len = usize::from(read16(ip, 4));
        let mut pseudo = u32::from(PROTO_TCP) + TCP_LEN as u32;
        // Source (bytes 8..24) and destination (24..40) swap, a word at a time.
        let mut i = 0;
        while i < 4 {
            let (src, dst) = (read32(ip, 8 + 4 * i), read32(ip, 24 + 4 * i));
            write32(ip, 8 + 4 * i, dst);
            write32(ip, 24 + 4 * i, src);
            pseudo += sum32(src) + sum32(dst);
            i += 1;
        }
        write16(ip, 4, TCP_LEN as u16);
        *ip.add(7) = REPLY_TTL;
        turn_around(tcp, segment_len, pseudo);
    }
    Ok(l3_offset + 40 + TCP_LEN)
}

/// Rewrites the SYN's TCP header at `tcp` (of a segment of `segment_len`
/// bytes, header included) into the RST that answers it; `pseudo` is the
/// sum of the reply's pseudo-header.
///
/// # Safety
/// `tcp` must point at a fixed TCP header inside the frame.
#[inline(always)]
unsafe fn turn_around(tcp: *mut u8, segment_len: usize, pseudo: u32) {
    // SAFETY: the caller's; every offset is inside the 20-byte header.
    unsafe {
        let header_len = usize::from(*tcp.add(12) >> 4) * 4;
        let payload = segment_len.saturating_sub(header_len) as u32;
        let seq = read32(tcp, 4);
        let ports = read32(tcp, 0);
        write32(tcp, 0, ports.rotate_left(16));
        write32(tcp, 4, 0);
        write32(tcp, 8, seq.wrapping_add(1).wrapping_add(payload));
        *tcp.add(12) = (TCP_LEN as u8 / 4) << 4;
        *tcp.add(13) = TCP_RST_ACK;
        // Window, checksum and urgent pointer.
        write16(tcp, 14, 0);
        write32(tcp, 16, 0);
        let mut sum = pseudo;
        let mut i = 0;
        while i < TCP_LEN / 4 {
            sum += sum32(read32(tcp, 4 * i));
            i += 1;
        }
        write16(tcp, 16, !fold(sum));
    }
}

/// The big-endian 16-bit word at `at + offset`.
///
/// # Safety
/// The two bytes must be inside the frame.
#[inline(always)]
unsafe fn read16(at: *const u8, offset: usize) -> u16 {
    // SAFETY: the caller's.
    u16::from_be(unsafe { at.add(offset).cast::<u16>().read_unaligned() })
}

/// Writes `value` big-endian at `at + offset`.
///
/// # Safety
/// The two bytes must be inside the frame.
#[inline(always)]
unsafe fn write16(at: *mut u8, offset: usize, value: u16) {
    // SAFETY: the caller's.
    unsafe { at.add(offset).cast::<u16>().write_unaligned(value.to_be()) }
}

/// The big-endian 32-bit word at `at + offset`.
///
/// # Safety
/// The four bytes must be inside the frame.
#[inline(always)]
unsafe fn read32(at: *const u8, offset: usize) -> u32 {
    // SAFETY: the caller's.
    u32::from_be(unsafe { at.add(offset).cast::<u32>().read_unaligned() })
}

/// Writes `value` big-endian at `at + offset`.
///
/// # Safety
/// The four bytes must be inside the frame.
#[inline(always)]
unsafe fn write32(at: *mut u8, offset: usize, value: u32) {
    // SAFETY: the caller's.
    unsafe { at.add(offset).cast::<u32>().write_unaligned(value.to_be()) }
}

/// The sum of the two 16-bit halves of `word`.
#[inline(always)]
const fn sum32(word: u32) -> u32 {
    (word >> 16) + (word & 0xffff)
}

/// A one's-complement sum folded to 16 bits.
#[inline(always)]
const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum `check` after a 16-bit word of the data changed from `old`
/// to `new` (RFC 1624, eqn. 3).
#[inline(always)]
const fn checksum_update(check: u16, old: u16, new: u16) -> u16 {
    !fold(!check as u32 + !old as u32 + new as u32)
}
