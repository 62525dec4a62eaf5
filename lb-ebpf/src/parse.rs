//! Header parsing: Ethernet, VLAN tags if any ([`vlan`](crate::vlan)), IPv4
//! (with options) or IPv6 (bounded extension header walk), then the TCP or
//! UDP ports; any other protocol goes to the caller's handler. Every read
//! goes through [`ptr_at`]. An IP fragment stops the parse at the IP layer:
//! [`Fragment`] says what `crate::fragment` needs to tie it to its datagram
//! ([`transport`] reads a first fragment's ports).
//!
//! The addresses are not copied while parsing: most traffic that is not for
//! a service is recognised by its port alone, so the connection-table key is
//! built ([`Packet::key4`], [`Packet::key6`]) only once the port matched.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    FlowKey4, FlowKey6, PROTO_TCP, PROTO_UDP, REASON_MALFORMED, REASON_NOT_IP, REASON_NOT_L4,
    conn_state::{TCP_ACK, TCP_SYN},
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{verdict::Verdict, vlan};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

/// IPv6 extension headers: hop-by-hop options, routing, fragment,
/// authentication, destination options.
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;
/// Most IPv6 extension headers walked before giving the packet to the stack.
const MAX_IPV6_EXT_HEADERS: usize = 4;

/// IPv4 "more fragments" flag, in the host-order `frags` field.
const IPV4_MF: u16 = 0x2000;
/// IPv4 fragment-offset mask, in the host-order `frags` field.
pub const IPV4_OFFSET_MASK: u16 = 0x1FFF;
/// IPv6 fragment header: offset mask and M ("more fragments") flag of its
/// host-order 16-bit offset field.
const IPV6_OFFSET_MASK: u16 = 0xFFF8;
const IPV6_MORE: u16 = 0x0001;

/// Truncated or inconsistent headers.
const MALFORMED: Verdict = Verdict::Drop(REASON_MALFORMED);

/// Byte offset of the data offset (high four bits) in a TCP header.
const TCP_DATA_OFFSET_OFFSET: usize = 12;
/// Byte offset of the flags in a TCP header.
const TCP_FLAGS_OFFSET: usize = 13;

/// The IP header of a parsed packet, checked to lie inside the frame.
#[derive(Clone, Copy)]
pub enum IpHeader {
    /// An IPv4 header (options, if any, follow it).
    V4(*const Ipv4Hdr),
    /// An IPv6 header.
    V6(*const Ipv6Hdr),
}

/// An IP packet that is neither TCP nor UDP, located for [`parse`]'s
/// handler of such packets.
pub struct NotTcpUdp {
    /// Its IP header.
    pub ip: IpHeader,
    /// The VLAN path of the frame's tags (0: untagged).
    pub vlan: u32,
    /// Its upper-layer protocol (IPv6: after the extension headers).
    pub proto: u8,
    /// Where its upper-layer header starts, in bytes into the frame.
    pub offset: usize,
    /// Where the IP datagram ends by its own length field, in bytes into
    /// the frame (Ethernet padding may follow).
    pub end: usize,
}

/// An IP fragment (IPv4 MF or a fragment offset, an IPv6 fragment header).
pub struct Fragment {
    /// Its IP layer.
    pub ip: IpLayer,
    /// The IPv4 protocol, or the IPv6 fragment header's next header.
    pub proto: u8,
    /// The datagram's identification (IPv4: 16 bits), host byte order.
    pub id: u32,
    /// Where the fragment's data start: a first fragment's transport header.
    pub data_offset: usize,
    /// Where the fragment ends by its IP length field.
    pub ip_end: usize,
    /// Whether it is its datagram's first fragment (offset 0).
    pub first: bool,
    /// Whether more fragments follow (IPv4 MF, IPv6 M): false for the last,
    /// and for an IPv6 atomic fragment (offset 0, M clear: RFC 6946).
    pub more: bool,
}

/// Why a frame did not parse as a [`Packet`].
pub enum Unparsed {
    /// Not a TCP/UDP packet of its own: what to do with it.
    Verdict(Verdict),
    /// An IP fragment.
    Fragment(Fragment),
}

impl From<Verdict> for Unparsed {
    fn from(verdict: Verdict) -> Self {
        Self::Verdict(verdict)
    }
}

/// Where a frame's IP layer is.
#[derive(Clone, Copy)]
pub struct IpLayer {
    /// The IP header.
    pub header: IpHeader,
    /// Where it starts: after the Ethernet header and the VLAN tags, if any.
    pub offset: usize,
    /// The VLAN path of the frame's tags (0: untagged).
    pub vlan: u32,
}

/// A TCP or UDP packet, reduced to what the load balancer needs.
pub struct Packet {
    /// Where its addresses are.
    pub ip: IpHeader,
    /// Where the IP header starts: after the Ethernet header and the VLAN
    /// tags, if any.
    pub l3_offset: usize,
    /// The VLAN path of the frame's tags (0: untagged; see `lb_common::vlan`).
    pub vlan: u32,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// Client port, host byte order.
    pub src_port: u16,
    /// Destination (VIP) port, host byte order.
    pub dst_port: u16,
    /// TCP flags (zero for UDP).
    pub tcp_flags: u8,
    /// Whether the packet carries payload past its transport header.
    pub carries_data: bool,
}

impl Packet {
    /// Whether this is a TCP SYN without ACK: the packet that opens a connection.
    #[inline(always)]
    pub fn opens_connection(&self) -> bool {
        self.proto == PROTO_TCP && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    /// The IPv4 connection-table key of this packet, whose header is `ip`.
    #[inline(always)]
    pub fn key4(&self, ip: *const Ipv4Hdr) -> FlowKey4 {
        // SAFETY: `parse` checked that the IPv4 header is inside the frame.
        let (src, dst) = unsafe {
            (
                load_u32(&raw const (*ip).src_addr),
                load_u32(&raw const (*ip).dst_addr),
            )
        };
        FlowKey4::from_parts(
            src,
            dst,
            self.src_port,
            self.dst_port,
            self.proto,
            self.vlan,
        )
    }

    /// The IPv6 connection-table key of this packet, whose header is `ip`.
    #[inline(always)]
    pub fn key6(&self, ip: *const Ipv6Hdr) -> FlowKey6 {
        // SAFETY: `parse` checked that the IPv6 header is inside the frame.
        let (src, dst) = unsafe {
            (
                load_addr6(&raw const (*ip).src_addr),
                load_addr6(&raw const (*ip).dst_addr),
            )
        };
        FlowKey6::from_parts(
            src,
            dst,
            self.src_port,
            self.dst_port,
            self.proto,
            self.vlan,
        )
    }

    /// The IP-layer length of the packet, from `frame_l3_len`, the frame's
    /// length without its Ethernet header ([`l3_len`]): without its VLAN
    /// tags too.
    #[inline(always)]
    pub fn ip_len(&self, frame_l3_len: u64) -> u64 {
        frame_l3_len - (self.l3_offset - EthHdr::LEN) as u64
    }
}

/// A pointer to a `T` at `offset` bytes into the frame, if the frame holds it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Mutable variant of [`ptr_at`].
#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    ptr_at::<T>(ctx, offset).map(|p| p.cast_mut())
}

/// Reads a big-endian 16-bit header field with one 16-bit load (the
/// network-types fields are byte arrays, which the compiler would read a
/// byte at a time).
///
/// # Safety
/// `field` must lie inside the frame. Every field read this way sits at an
/// even offset from the frame start (Ethernet 14, VLAN tags of 4, IPv4
/// header a multiple of 4, IPv6 extension headers of 4 or 8, an ICMP header
/// 8 before the packet it quotes), and frames start at an even address, so
/// the load is aligned.
#[inline(always)]
pub unsafe fn be16(field: *const [u8; 2]) -> u16 {
    u16::from_be(unsafe { field.cast::<u16>().read() })
}

/// Reads 4 packet bytes as a native-endian `u32`, with one load.
///
/// # Safety
/// `src` lies inside the frame. The load may be misaligned (IPv4 addresses
/// sit at offset 26 and 30 of the frame): the program is built with the
/// BPF backend's `allows-misaligned-mem-access` feature (see
/// `lb-ebpf/build.rs`), and the verifier permits misaligned packet loads
/// on architectures with efficient unaligned access.
#[inline(always)]
pub unsafe fn load_u32(src: *const [u8; 4]) -> u32 {
    unsafe { src.cast::<u32>().read_unaligned() }
}

/// Reads an IPv6 address as two native-endian `u64`s of its bytes, with
/// two loads.
///
/// # Safety
/// As for [`load_u32`].
#[inline(always)]
pub unsafe fn load_addr6(src: *const [u8; 16]) -> [u64; 2] {
    let src = src.cast::<u64>();
    unsafe { [src.read_unaligned(), src.add(1).read_unaligned()] }
}

/// Length of the frame without its Ethernet header (IPVS counts IP-layer bytes).
#[inline(always)]
pub fn l3_len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()).saturating_sub(EthHdr::LEN) as u64
}

/// Parses a frame into a [`Packet`], or says why it is not one:
/// `Pass` for traffic that is not IP, `Drop(REASON_MALFORMED)` for
/// truncated or inconsistent headers, including a transport header that
/// the IP length field does not cover; a [`Fragment`] for an IP fragment;
/// for an IP packet that is neither TCP nor UDP, the verdict of
/// `not_tcp_udp`.
#[inline(always)]
pub fn parse(
    ctx: &XdpContext,
    not_tcp_udp: impl FnOnce(&XdpContext, &NotTcpUdp) -> Verdict,
) -> Result<Packet, Unparsed> {
    let eth = ptr_at::<EthHdr>(ctx, 0).ok_or(MALFORMED)?;
    // SAFETY: the Ethernet header is inside the frame.
    let ether_type = u16::from_be(unsafe { (*eth).ether_type });
    // Two inlined copies of the IP parser: an untagged frame is parsed at
    // constant offsets, and only other EtherTypes are checked for tags.
    match ether_type {
        ETH_P_IP | ETH_P_IPV6 => parse_ip(ctx, not_tcp_udp, ether_type, EthHdr::LEN, 0),
        _ => {
            let tagged = vlan::skip_tags(ctx, ether_type)?;
            parse_ip(
                ctx,
                not_tcp_udp,
                tagged.ether_type,
                tagged.offset,
                tagged.vlan,
            )
        }
    }
}

/// [`parse`] from the IP header on: the header `ether_type` announces, at
/// `l3_offset`, of a frame on the VLAN path `vlan`.
#[inline(always)]
fn parse_ip(
    ctx: &XdpContext,
    not_tcp_udp: impl FnOnce(&XdpContext, &NotTcpUdp) -> Verdict,
    ether_type: u16,
    l3_offset: usize,
    vlan: u32,
) -> Result<Packet, Unparsed> {
    // SAFETY: `ptr_at` checked that every header read below lies inside the frame.
    // `ip_end`: where the IP datagram ends by its own length field. The
    // transport header must lie inside it, not in Ethernet padding after it.
    let (header, l4_offset, proto, ip_end) = match ether_type {
        ETH_P_IP => {
            let ip = ptr_at::<Ipv4Hdr>(ctx, l3_offset).ok_or(MALFORMED)?;
            let (vihl, tot_len, frags, proto) = unsafe {
                (
                    (*ip).vihl,
                    be16(&raw const (*ip).tot_len),
                    be16(&raw const (*ip).frags),
                    (*ip).proto,
                )
            };
            let header_len = ((vihl & 0x0F) as usize) * 4;
            if vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN || (tot_len as usize) < header_len {
                return Err(MALFORMED.into());
            }
            if frags & (IPV4_MF | IPV4_OFFSET_MASK) != 0 {
                return Err(Unparsed::Fragment(Fragment {
                    ip: IpLayer {
                        header: IpHeader::V4(ip),
                        offset: l3_offset,
                        vlan,
                    },
                    proto,
                    id: u32::from(unsafe { be16(&raw const (*ip).id) }),
                    data_offset: l3_offset + header_len,
                    ip_end: l3_offset + tot_len as usize,
                    first: frags & IPV4_OFFSET_MASK == 0,
                    more: frags & IPV4_MF != 0,
                }));
            }
            (
                IpHeader::V4(ip),
                l3_offset + header_len,
                proto,
                l3_offset + tot_len as usize,
            )
        }
        ETH_P_IPV6 => {
            let ip = ptr_at::<Ipv6Hdr>(ctx, l3_offset).ok_or(MALFORMED)?;
            let (version, payload_len, next) = unsafe {
                (
                    (*ip).vcf[0] >> 4,
                    be16(&raw const (*ip).payload_len),
                    (*ip).next_hdr,
                )
            };
            if version != 6 {
                return Err(MALFORMED.into());
            }
            let ip_end = l3_offset + Ipv6Hdr::LEN + payload_len as usize;
            let (offset, proto) = skip_ipv6_extensions(ctx, ip, l3_offset, vlan, next, ip_end)?;
            (IpHeader::V6(ip), offset, proto, ip_end)
        }
        _ => return Err(Verdict::Pass(REASON_NOT_IP).into()),
    };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        let packet = NotTcpUdp {
            ip: header,
            vlan,
            proto,
            offset: l4_offset,
            end: ip_end,
        };
        return Err(Unparsed::Verdict(not_tcp_udp(ctx, &packet)));
    }
    let ip = IpLayer {
        header,
        offset: l3_offset,
        vlan,
    };
    transport(ctx, ip, l4_offset, proto, ip_end).map_err(Unparsed::Verdict)
}

/// The TCP or UDP header at `l4_offset` of a datagram (or first fragment)
/// with IP layer `ip` and protocol `proto` that ends at `ip_end`: the
/// [`Packet`]; `Pass(REASON_NOT_L4)` for another protocol,
/// `Drop(REASON_MALFORMED)` for a header the frame or the IP length does not
/// hold whole.
#[inline(always)]
pub fn transport(
    ctx: &XdpContext,
    ip: IpLayer,
    l4_offset: usize,
    proto: u8,
    ip_end: usize,
) -> Result<Packet, Verdict> {
    let (src_port, dst_port, tcp_flags, carries_data) = match proto {
        PROTO_TCP => {
            if l4_offset + TcpHdr::LEN > ip_end {
                return Err(MALFORMED);
            }
            let tcp = ptr_at::<TcpHdr>(ctx, l4_offset).ok_or(MALFORMED)?;
            // SAFETY: the whole 20-byte TCP header is inside the frame.
            let (src, dst, data_offset, flags) = unsafe {
                (
                    be16(&raw const (*tcp).source),
                    be16(&raw const (*tcp).dest),
                    *(tcp as *const u8).add(TCP_DATA_OFFSET_OFFSET) >> 4,
                    *(tcp as *const u8).add(TCP_FLAGS_OFFSET),
                )
            };
            // The header's own length (in 32-bit words): at least the 20
            // fixed bytes, and within the IP payload.
            let header_len = usize::from(data_offset) * 4;
            if header_len < TcpHdr::LEN || l4_offset + header_len > ip_end {
                return Err(MALFORMED);
            }
            (src, dst, flags, l4_offset + header_len < ip_end)
        }
        PROTO_UDP => {
            if l4_offset + UdpHdr::LEN > ip_end {
                return Err(MALFORMED);
            }
            let udp = ptr_at::<UdpHdr>(ctx, l4_offset).ok_or(MALFORMED)?;
            // SAFETY: the whole 8-byte UDP header is inside the frame.
            let (src, dst) = unsafe { (be16(&raw const (*udp).src), be16(&raw const (*udp).dst)) };
            (src, dst, 0, l4_offset + UdpHdr::LEN < ip_end)
        }
        _ => return Err(Verdict::Pass(REASON_NOT_L4)),
    };
    Ok(Packet {
        ip: ip.header,
        l3_offset: ip.offset,
        vlan: ip.vlan,
        proto,
        src_port,
        dst_port,
        tcp_flags,
        carries_data,
    })
}

/// Walks up to [`MAX_IPV6_EXT_HEADERS`] extension headers of the datagram
/// with header `ip` at `l3_offset` on VLAN path `vlan`, ending at `ip_end`,
/// starting after the fixed header with
/// next-header `next`; returns the offset and number of the upper-layer
/// header, or the [`Fragment`] a fragment header makes it.
#[inline(always)]
fn skip_ipv6_extensions(
    ctx: &XdpContext,
    ip: *const Ipv6Hdr,
    l3_offset: usize,
    vlan: u32,
    mut next: u8,
    ip_end: usize,
) -> Result<(usize, u8), Unparsed> {
    let mut offset = l3_offset + Ipv6Hdr::LEN;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let unit = match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => 8,
            IPV6_AUTH => 4,
            IPV6_FRAGMENT => {
                let ip = IpLayer {
                    header: IpHeader::V6(ip),
                    offset: l3_offset,
                    vlan,
                };
                return Err(ipv6_fragment(ctx, ip, offset, ip_end));
            }
            _ => return Ok((offset, next)),
        };
        let header = ptr_at::<[u8; 2]>(ctx, offset).ok_or(MALFORMED)?;
        // SAFETY: both bytes are inside the frame.
        let [next_header, len] = unsafe { *header };
        // Hdr Ext Len counts 8-octet units past the first (4-octet units past
        // the first two for AH).
        offset += (len as usize + if unit == 8 { 1 } else { 2 }) * unit;
        next = next_header;
    }
    match next {
        PROTO_TCP | PROTO_UDP => Ok((offset, next)),
        _ => Err(Verdict::Pass(REASON_NOT_L4).into()),
    }
}

/// The fragment whose IPv6 layer is `ip`, ending at `ip_end`, and whose
/// fragment header is at `offset`: next header (the fragment's protocol),
/// reserved, offset (13 bits) and M flag, identification. Malformed when
/// the header does not lie whole inside the frame and the payload length.
#[inline(always)]
fn ipv6_fragment(ctx: &XdpContext, ip: IpLayer, offset: usize, ip_end: usize) -> Unparsed {
    let Some(header) = ptr_at::<[u8; 8]>(ctx, offset).filter(|_| offset + 8 <= ip_end) else {
        return MALFORMED.into();
    };
    // SAFETY: the eight bytes are inside the frame; the 16-bit field sits at
    // an even offset (extension headers are multiples of 4 or 8 bytes).
    let (next, offset_flags, id) = unsafe {
        let bytes = header.cast::<u8>();
        (
            *bytes,
            be16(bytes.add(2).cast()),
            u32::from_be(load_u32(bytes.add(4).cast())),
        )
    };
    Unparsed::Fragment(Fragment {
        ip,
        proto: next,
        id,
        data_offset: offset + 8,
        ip_end,
        first: offset_flags & IPV6_OFFSET_MASK == 0,
        more: offset_flags & IPV6_MORE != 0,
    })
}
