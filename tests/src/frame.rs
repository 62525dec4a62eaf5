//! Hand-built Ethernet frames for running the XDP program through
//! `BPF_PROG_TEST_RUN`: a [`Pkt`] describes one frame (Ethernet, VLAN tags
//! if any, IPv4 with options or IPv6 with extension headers, TCP, UDP, an
//! ICMP echo request or an ICMP error quoting another packet, a payload)
//! and [`Pkt::build`] writes its bytes, checksums included. Fields that a
//! well-formed frame computes (IHL, lengths, version) can be overridden to
//! build malformed headers. [`Pkt::fragments`] cuts a datagram into IP
//! fragments, each a [`Pkt`] of its own.
//!
//! Frames arrive from the client-side router ([`ROUTER_MAC`]) for a VIP's
//! MAC ([`VIP_MAC`]); a forwarded frame leaves from the director NIC
//! ([`NIC_MAC`]) for a backend's MAC ([`backend_mac`]). The packet fixtures
//! and the benchmarks share this address plan with the namespace test bed's
//! VIPs ([`VIP4`], [`VIP6`]) and router ([`ROUTER4`], [`ROUTER6`]: the
//! source of ICMP errors).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{FlowKey, PROTO_TCP, PROTO_UDP, conn_state::TCP_ACK, vlan_path};

use crate::bed::{ROUTER4, ROUTER6, VIP4, VIP6};

/// Length of an Ethernet header.
pub const ETH_LEN: usize = 14;
/// Length of a VLAN tag (its EtherType, then its control information).
pub const TAG_LEN: usize = 4;
/// EtherType of an 802.1Q VLAN tag.
pub const TPID_8021Q: u16 = 0x8100;
/// EtherType of an 802.1ad VLAN tag (the outer tag of QinQ).
pub const TPID_8021AD: u16 = 0x88a8;
/// TCP PSH flag (carried along; lb's state machine ignores it).
pub const TCP_PSH: u8 = 0x08;
/// The virtual services' port (GridFTP).
pub const PORT: u16 = 2811;
/// The IPv4 client of [`Pkt::tcp4`] and [`Pkt::udp4`].
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// The IPv6 client of [`Pkt::tcp6`] and [`Pkt::udp6`].
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);

/// Destination MAC of frames arriving for a VIP: a VRRP virtual MAC
/// (keepalived `use_vmac`), deliberately different from [`NIC_MAC`] so that a
/// program copying the old destination into the source would be caught.
pub const VIP_MAC: [u8; 6] = [0x00, 0x00, 0x5e, 0x00, 0x01, 0x33];
/// The director NIC's own MAC: the source MAC of forwarded frames.
pub const NIC_MAC: [u8; 6] = [0x02, 0xd1, 0x00, 0x00, 0x00, 0x01];
/// The client-side router's MAC: the source MAC of arriving frames.
pub const ROUTER_MAC: [u8; 6] = [0x02, 0xc1, 0x00, 0x00, 0x00, 0x01];

/// MAC of backend `slot` of service `service_id`: both are encoded in it, so
/// an output frame names the service and slot it was sent to.
pub const fn backend_mac(service_id: u32, slot: u32) -> [u8; 6] {
    [0x02, 0xbe, 0x00, 0x00, service_id as u8, slot as u8]
}

/// Internet checksum (RFC 1071) of `data`, continuing from the partial sum `sum`.
pub fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A VLAN tag between the Ethernet addresses and the EtherType.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    /// Its EtherType: [`TPID_8021Q`] or [`TPID_8021AD`].
    pub tpid: u16,
    /// Priority (3 bits), drop eligibility (1 bit) and VLAN id (12 bits).
    pub tci: u16,
}

impl Tag {
    /// An 802.1Q tag of VLAN `vid`, priority 0.
    pub const fn dot1q(vid: u16) -> Self {
        Self {
            tpid: TPID_8021Q,
            tci: vid,
        }
    }

    /// An 802.1ad (QinQ service) tag of VLAN `vid`, priority 0.
    pub const fn dot1ad(vid: u16) -> Self {
        Self {
            tpid: TPID_8021AD,
            tci: vid,
        }
    }

    /// The tag's VLAN id.
    pub const fn vid(self) -> u16 {
        self.tci & 0x0fff
    }
}

/// An IPv6 extension header.
#[derive(Clone, Copy)]
pub enum Ext {
    /// Hop-by-hop options of the given total length (a multiple of 8), PadN-filled.
    HopByHop(usize),
    /// Routing header of the given total length, unknown type, no segments left.
    Routing(usize),
    /// Destination options of the given total length, PadN-filled.
    DestOpts(usize),
    /// Authentication header of the given total length (a multiple of 8, at least 16).
    Auth(usize),
    /// Fragment header.
    Fragment {
        /// Fragment offset in 8-octet units.
        offset: u16,
        /// The M (more fragments) flag.
        more: bool,
        /// Identification.
        id: u32,
    },
}

impl Ext {
    /// The next-header number that announces this header.
    pub const fn number(self) -> u8 {
        match self {
            Self::HopByHop(_) => 0,
            Self::Routing(_) => 43,
            Self::DestOpts(_) => 60,
            Self::Auth(_) => 51,
            Self::Fragment { .. } => 44,
        }
    }

    /// The header's bytes, announcing `next` as the following header.
    pub fn bytes(self, next: u8) -> Vec<u8> {
        let eight_octet = |len: usize| {
            assert!(
                len >= 8 && len.is_multiple_of(8),
                "bad extension header length {len}"
            );
            (len / 8 - 1) as u8
        };
        match self {
            Self::HopByHop(len) | Self::DestOpts(len) => {
                // One PadN option filling the rest of the header.
                let mut b = vec![next, eight_octet(len), 1, (len - 4) as u8];
                b.resize(len, 0);
                b
            }
            Self::Routing(len) => {
                // Routing type 253 (RFC 4727 experiment), segments left 0.
                let mut b = vec![next, eight_octet(len), 253, 0];
                b.resize(len, 0);
                b
            }
            Self::Auth(len) => {
                assert!(len >= 16 && len.is_multiple_of(8), "bad AH length {len}");
                // Payload Len counts 4-octet units minus 2; SPI 0x100, sequence 1.
                let mut b = vec![next, (len / 4 - 2) as u8, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1];
                b.resize(len, 0);
                b
            }
            Self::Fragment { offset, more, id } => {
                let field = (offset << 3) | u16::from(more);
                let mut b = vec![next, 0];
                b.extend(field.to_be_bytes());
                b.extend(id.to_be_bytes());
                b
            }
        }
    }
}

/// Network layer of a [`Pkt`].
#[derive(Clone)]
pub enum Ip {
    /// IPv4.
    V4 {
        /// Source address.
        src: Ipv4Addr,
        /// Destination address.
        dst: Ipv4Addr,
        /// Options (a multiple of 4 bytes, at most 40).
        options: Vec<u8>,
        /// Identification field.
        ident: u16,
        /// Flags and fragment offset as on the wire (0x4000 = DF); a
        /// [`Piece`] sets its own.
        frag: u16,
        /// Overrides the version/IHL byte (malformed headers).
        vihl: Option<u8>,
        /// Overrides the total length (malformed headers).
        tot_len: Option<u16>,
    },
    /// IPv6.
    V6 {
        /// Source address.
        src: Ipv6Addr,
        /// Destination address.
        dst: Ipv6Addr,
        /// Extension headers between the fixed header and the transport
        /// header (in a [`Piece`], before its fragment header).
        ext: Vec<Ext>,
        /// The identification of a [`Piece`]'s fragment header.
        ident: u32,
        /// Overrides the first byte (version and traffic class; malformed headers).
        first_byte: Option<u8>,
        /// Overrides the payload length (malformed headers).
        payload_len: Option<u16>,
    },
}

/// Transport layer of a [`Pkt`].
#[derive(Clone, Copy)]
pub enum L4 {
    /// TCP with a 20-byte header.
    Tcp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
        /// Flags (`TCP_SYN`, `TCP_ACK`, ...).
        flags: u8,
    },
    /// UDP.
    Udp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
    },
    /// ICMP (IPv4) or ICMPv6 echo request.
    Echo,
    /// ICMP (IPv4) or ICMPv6 message of any type with the 8-byte header of
    /// an error; the payload is what it quotes (see [`Pkt::icmp_error`]).
    Icmp {
        /// Type.
        kind: u8,
        /// Code.
        code: u8,
        /// The header's last four bytes (the next-hop MTU of an IPv4
        /// fragmentation needed, the MTU of an ICMPv6 packet too big).
        info: u32,
    },
}

/// Which bytes of its datagram a fragment carries: of the transport header
/// and payload (IPv4: everything after the header and its options; IPv6:
/// after the extension headers, which every fragment repeats before its
/// fragment header).
#[derive(Clone, Copy, Debug)]
pub struct Piece {
    /// Where the fragment's bytes start (a multiple of 8).
    pub offset: usize,
    /// How many bytes it carries.
    pub len: usize,
    /// Whether more fragments follow (IPv4 MF, IPv6 M).
    pub more: bool,
}

/// A frame: Ethernet, IP, transport header and payload.
#[derive(Clone)]
pub struct Pkt {
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// VLAN tags, outermost first.
    pub tags: Vec<Tag>,
    /// Network layer.
    pub ip: Ip,
    /// Transport layer.
    pub l4: L4,
    /// Bytes after the transport header.
    pub payload: Vec<u8>,
    /// Minimum frame length: shorter frames get Ethernet padding (zeros).
    pub pad_to: usize,
    /// The piece of the datagram this frame carries, if it is a fragment.
    pub piece: Option<Piece>,
}

/// Byte offsets where the headers of a built [`Pkt`] end.
pub struct Layout {
    /// Start of the IP header: after the Ethernet header and the tags.
    pub ip_start: usize,
    /// End of the fixed IP header (34 for IPv4, 54 for IPv6, untagged).
    pub ip_fixed_end: usize,
    /// End of IPv4 options or IPv6 extension headers.
    pub ip_end: usize,
    /// End of the TCP, UDP or echo header.
    pub l4_end: usize,
}

impl Pkt {
    /// A frame from the router to the director, addressed to [`VIP_MAC`].
    pub fn new(ip: Ip, l4: L4) -> Self {
        Self {
            dst_mac: VIP_MAC,
            src_mac: ROUTER_MAC,
            tags: Vec::new(),
            ip,
            l4,
            payload: Vec::new(),
            pad_to: 0,
            piece: None,
        }
    }

    /// Plain IPv4 from `src` to `dst`, DF set.
    pub fn v4(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Self {
        Self::new(
            Ip::V4 {
                src,
                dst,
                options: Vec::new(),
                ident: 0x1234,
                frag: 0x4000,
                vihl: None,
                tot_len: None,
            },
            l4,
        )
    }

    /// Plain IPv6 from `src` to `dst`.
    pub fn v6(src: Ipv6Addr, dst: Ipv6Addr, l4: L4) -> Self {
        Self::new(
            Ip::V6 {
                src,
                dst,
                ext: Vec::new(),
                ident: 0x0bad_cafe,
                first_byte: None,
                payload_len: None,
            },
            l4,
        )
    }

    /// [`Pkt::v4`] or [`Pkt::v6`] from `src` to `dst` (panics when their
    /// families differ).
    pub fn between(src: IpAddr, dst: IpAddr, l4: L4) -> Self {
        match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => Self::v4(src, dst, l4),
            (IpAddr::V6(src), IpAddr::V6(dst)) => Self::v6(src, dst, l4),
            _ => panic!("{src} and {dst} are of different address families"),
        }
    }

    /// TCP from the IPv4 client port `sport` to VIP4:PORT.
    pub fn tcp4(sport: u16, flags: u8) -> Self {
        Self::v4(
            CLIENT4,
            VIP4,
            L4::Tcp {
                sport,
                dport: PORT,
                flags,
            },
        )
    }

    /// TCP from the IPv6 client port `sport` to \[VIP6\]:PORT.
    pub fn tcp6(sport: u16, flags: u8) -> Self {
        Self::v6(
            CLIENT6,
            VIP6,
            L4::Tcp {
                sport,
                dport: PORT,
                flags,
            },
        )
    }

    /// UDP from the IPv4 client port `sport` to VIP4:PORT.
    pub fn udp4(sport: u16) -> Self {
        Self::v4(CLIENT4, VIP4, L4::Udp { sport, dport: PORT })
    }

    /// UDP from the IPv6 client port `sport` to \[VIP6\]:PORT.
    pub fn udp6(sport: u16) -> Self {
        Self::v6(CLIENT6, VIP6, L4::Udp { sport, dport: PORT })
    }

    /// The same frame with `payload` after the transport header.
    pub fn with_payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// The same frame with IPv4 options (panics for IPv6).
    pub fn with_options(mut self, opts: &[u8]) -> Self {
        let Ip::V4 { options, .. } = &mut self.ip else {
            panic!("IPv4 options on an IPv6 frame")
        };
        *options = opts.to_vec();
        self
    }

    /// The same frame with identification `value`: IPv4's (panics past 16
    /// bits), or that of an IPv6 fragment's fragment header.
    pub fn with_ident(mut self, value: u32) -> Self {
        match &mut self.ip {
            Ip::V4 { ident, .. } => {
                *ident = u16::try_from(value).expect("an IPv4 identification has 16 bits");
            }
            Ip::V6 { ident, .. } => *ident = value,
        }
        self
    }

    /// The same frame with IPv4 flags/fragment offset `value` (panics for IPv6).
    pub fn with_frag(mut self, value: u16) -> Self {
        let Ip::V4 { frag, .. } = &mut self.ip else {
            panic!("IPv4 fragment field on an IPv6 frame")
        };
        *frag = value;
        self
    }

    /// The same frame with IPv6 extension headers (panics for IPv4).
    pub fn with_ext(mut self, headers: &[Ext]) -> Self {
        let Ip::V6 { ext, .. } = &mut self.ip else {
            panic!("IPv6 extension headers on an IPv4 frame")
        };
        *ext = headers.to_vec();
        self
    }

    /// The packet a real server sends back to the client of this one (from
    /// the VIP, ports swapped, TCP with ACK and PSH), `len` bytes long at
    /// the IP layer (filled with payload), from and to the same MACs.
    pub fn reply(&self, len: usize) -> Self {
        let ip = match &self.ip {
            Ip::V4 { src, dst, .. } => Ip::V4 {
                src: *dst,
                dst: *src,
                options: Vec::new(),
                ident: 0x4321,
                frag: 0x4000,
                vihl: None,
                tot_len: None,
            },
            Ip::V6 { src, dst, .. } => Ip::V6 {
                src: *dst,
                dst: *src,
                ext: Vec::new(),
                ident: 0x4321,
                first_byte: None,
                payload_len: None,
            },
        };
        let l4 = match self.l4 {
            L4::Tcp { sport, dport, .. } => L4::Tcp {
                sport: dport,
                dport: sport,
                flags: TCP_ACK | TCP_PSH,
            },
            L4::Udp { sport, dport } => L4::Udp {
                sport: dport,
                dport: sport,
            },
            L4::Echo | L4::Icmp { .. } => panic!("only TCP and UDP packets have replies"),
        };
        let mut reply = Self::new(ip, l4);
        let headers = reply.layout().l4_end - ETH_LEN;
        reply.payload = (0..len.saturating_sub(headers)).map(|i| i as u8).collect();
        reply
    }

    /// An ICMP error of `kind` and `code` (`info`: its header's last four
    /// bytes) from the router ([`ROUTER4`], [`ROUTER6`]) to the source of
    /// `quoted`, quoting the first `quote_len` bytes of `quoted`'s IP packet
    /// (all of it if shorter). It arrives as `quoted`'s frames do (from
    /// [`ROUTER_MAC`] to [`VIP_MAC`]).
    pub fn icmp_error(quoted: &Pkt, kind: u8, code: u8, info: u32, quote_len: usize) -> Self {
        let mut quote = quoted.build().split_off(quoted.layout().ip_start);
        quote.truncate(quote_len);
        let l4 = L4::Icmp { kind, code, info };
        let error = match &quoted.ip {
            Ip::V4 { src, .. } => Self::v4(ROUTER4, *src, l4).with_frag(0),
            Ip::V6 { src, .. } => Self::v6(ROUTER6, *src, l4),
        };
        error.with_payload(&quote)
    }

    /// An IPv4 "fragmentation needed" (destination unreachable, code 4) for
    /// `quoted`, with next-hop MTU `mtu`, quoting as Linux does (576 bytes
    /// in all at most).
    pub fn frag_needed(quoted: &Pkt, mtu: u16) -> Self {
        Self::icmp_error(quoted, 3, 4, u32::from(mtu), 576 - 28)
    }

    /// An ICMPv6 "packet too big" for `quoted`, with MTU `mtu`, quoting as
    /// much as fits in 1,280 bytes.
    pub fn packet_too_big(quoted: &Pkt, mtu: u32) -> Self {
        Self::icmp_error(quoted, 2, 0, mtu, 1280 - 48)
    }

    /// The datagram cut into IP fragments of at most `max` bytes of its
    /// transport header and payload each (`max` a multiple of 8), in order:
    /// what a host with a link MTU of `max` plus the IP header (IPv4 with
    /// its options; IPv6 with its extension headers and a fragment header)
    /// sends. Every fragment keeps the frame's identification.
    pub fn fragments(&self, max: usize) -> Vec<Pkt> {
        assert!(
            max >= 8 && max.is_multiple_of(8),
            "fragment size {max} is not a multiple of 8"
        );
        let total = self.layout().l4_end - self.layout().ip_end + self.payload.len();
        (0..total)
            .step_by(max)
            .map(|offset| Pkt {
                piece: Some(Piece {
                    offset,
                    len: max.min(total - offset),
                    more: offset + max < total,
                }),
                ..self.clone()
            })
            .collect()
    }

    /// The same frame with the VLAN tags `tags`, outermost first.
    pub fn with_tags(mut self, tags: &[Tag]) -> Self {
        self.tags = tags.to_vec();
        self
    }

    /// The same frame on 802.1Q VLAN `vid` (one tag).
    pub fn on_vlan(self, vid: u16) -> Self {
        self.with_tags(&[Tag::dot1q(vid)])
    }

    /// The same frame on QinQ VLANs `outer` (802.1ad) and `inner` (802.1Q).
    pub fn on_qinq(self, outer: u16, inner: u16) -> Self {
        self.with_tags(&[Tag::dot1ad(outer), Tag::dot1q(inner)])
    }

    /// The VLAN path of the frame's tags, as the data path matches it (see
    /// `lb_common::vlan`): priority tags (VLAN id 0) leave it unchanged.
    pub fn vlan_path(&self) -> u32 {
        let ids: Vec<u16> = self
            .tags
            .iter()
            .map(|t| t.vid())
            .filter(|&id| id != 0)
            .collect();
        vlan_path(&ids)
    }

    /// The same frame with Ethernet padding up to `len` bytes.
    pub fn padded_to(mut self, len: usize) -> Self {
        self.pad_to = len;
        self
    }

    /// The frame a backend in slot `slot` of service `service_id` receives:
    /// destination MAC the backend's, source MAC the director NIC's, every
    /// other byte as built.
    pub fn forwarded(&self, service_id: u32, slot: u32) -> Vec<u8> {
        let mut out = self.clone();
        out.dst_mac = backend_mac(service_id, slot);
        out.src_mac = NIC_MAC;
        out.build()
    }

    /// IP protocol number of the transport layer.
    pub const fn proto(&self) -> u8 {
        match (self.l4, &self.ip) {
            (L4::Tcp { .. }, _) => PROTO_TCP,
            (L4::Udp { .. }, _) => PROTO_UDP,
            (L4::Echo | L4::Icmp { .. }, Ip::V4 { .. }) => 1,
            (L4::Echo | L4::Icmp { .. }, Ip::V6 { .. }) => 58,
        }
    }

    /// Transport header and payload, checksummed over `pseudo` (the
    /// pseudo-header's partial sum; ICMPv4 has none).
    fn l4_bytes(&self, pseudo: impl Fn(usize) -> u32) -> Vec<u8> {
        let (mut b, sum_at) = match self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut b = Vec::with_capacity(20);
                b.extend(sport.to_be_bytes());
                b.extend(dport.to_be_bytes());
                b.extend(0x1000_0000_u32.to_be_bytes()); // sequence number
                let ack = if flags & TCP_ACK != 0 {
                    0x2000_0000_u32
                } else {
                    0
                };
                b.extend(ack.to_be_bytes());
                b.extend([5 << 4, flags]);
                b.extend(64240u16.to_be_bytes()); // window
                b.extend([0, 0, 0, 0]); // checksum, urgent pointer
                (b, 16)
            }
            L4::Udp { sport, dport } => {
                let mut b = Vec::with_capacity(8);
                b.extend(sport.to_be_bytes());
                b.extend(dport.to_be_bytes());
                b.extend(((8 + self.payload.len()) as u16).to_be_bytes());
                b.extend([0, 0]);
                (b, 6)
            }
            L4::Echo => {
                let kind = if self.proto() == 1 { 8 } else { 128 };
                (vec![kind, 0, 0, 0, 0x12, 0x34, 0, 1], 2)
            }
            L4::Icmp { kind, code, info } => {
                let mut b = vec![kind, code, 0, 0];
                b.extend(info.to_be_bytes());
                (b, 2)
            }
        };
        b.extend(&self.payload);
        let mut sum = checksum(&b, pseudo(b.len()));
        if sum == 0 && matches!(self.l4, L4::Udp { .. }) {
            sum = 0xffff;
        }
        b[sum_at..sum_at + 2].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// The frame's bytes.
    pub fn build(&self) -> Vec<u8> {
        let proto = self.proto();
        let mut f = Vec::with_capacity(128);
        f.extend(self.dst_mac);
        f.extend(self.src_mac);
        for tag in &self.tags {
            f.extend(tag.tpid.to_be_bytes());
            f.extend(tag.tci.to_be_bytes());
        }
        match &self.ip {
            Ip::V4 {
                src,
                dst,
                options,
                ident,
                frag,
                vihl,
                tot_len,
            } => {
                assert!(options.len().is_multiple_of(4) && options.len() <= 40);
                let pseudo = |len: usize| {
                    let mut p = Vec::with_capacity(12);
                    p.extend(src.octets());
                    p.extend(dst.octets());
                    p.extend([0, proto]);
                    p.extend((len as u16).to_be_bytes());
                    u32::from(!checksum(&p, 0))
                };
                let l4 =
                    self.piece_of(self.l4_bytes(|len| if proto == 1 { 0 } else { pseudo(len) }));
                let frag = match self.piece {
                    Some(piece) => (piece.offset / 8) as u16 | if piece.more { 0x2000 } else { 0 },
                    None => *frag,
                };
                let header_len = 20 + options.len();
                let mut h = Vec::with_capacity(header_len);
                h.push(vihl.unwrap_or(0x40 | (header_len / 4) as u8));
                h.push(0);
                h.extend(
                    tot_len
                        .unwrap_or((header_len + l4.len()) as u16)
                        .to_be_bytes(),
                );
                h.extend(ident.to_be_bytes());
                h.extend(frag.to_be_bytes());
                h.extend([64, proto, 0, 0]);
                h.extend(src.octets());
                h.extend(dst.octets());
                h.extend(options);
                let sum = checksum(&h, 0);
                h[10..12].copy_from_slice(&sum.to_be_bytes());
                f.extend(0x0800u16.to_be_bytes());
                f.extend(h);
                f.extend(l4);
            }
            Ip::V6 {
                src,
                dst,
                ext,
                ident,
                first_byte,
                payload_len,
            } => {
                let l4 = self.piece_of(self.l4_bytes(|len| {
                    let mut p = Vec::with_capacity(40);
                    p.extend(src.octets());
                    p.extend(dst.octets());
                    p.extend((len as u32).to_be_bytes());
                    p.extend([0, 0, 0, proto]);
                    u32::from(!checksum(&p, 0))
                }));
                let ext = self.ext_chain(ext, *ident);
                let mut chain = Vec::new();
                for (i, header) in ext.iter().enumerate() {
                    let next = ext.get(i + 1).map_or(proto, |h| h.number());
                    chain.extend(header.bytes(next));
                }
                let first_next = ext.first().map_or(proto, |h| h.number());
                f.extend(0x86ddu16.to_be_bytes());
                f.extend([first_byte.unwrap_or(0x60), 0, 0, 0]);
                f.extend(
                    payload_len
                        .unwrap_or((chain.len() + l4.len()) as u16)
                        .to_be_bytes(),
                );
                f.extend([first_next, 64]);
                f.extend(src.octets());
                f.extend(dst.octets());
                f.extend(chain);
                f.extend(l4);
            }
        }
        if f.len() < self.pad_to {
            f.resize(self.pad_to, 0);
        }
        f
    }

    /// The bytes of the transport header and payload `l4` this frame
    /// carries: all of them, or its [`Piece`]'s.
    fn piece_of(&self, l4: Vec<u8>) -> Vec<u8> {
        match self.piece {
            Some(piece) => l4[piece.offset..piece.offset + piece.len].to_vec(),
            None => l4,
        }
    }

    /// The IPv6 extension headers `ext`, and a [`Piece`]'s fragment header
    /// with identification `ident` after them.
    fn ext_chain(&self, ext: &[Ext], ident: u32) -> Vec<Ext> {
        let mut chain = ext.to_vec();
        if let Some(piece) = self.piece {
            chain.push(Ext::Fragment {
                offset: (piece.offset / 8) as u16,
                more: piece.more,
                id: ident,
            });
        }
        chain
    }

    /// Where the headers of the built frame end (for a fragment: the headers
    /// of its datagram, and its own fragment header).
    pub fn layout(&self) -> Layout {
        let ip_start = ETH_LEN + TAG_LEN * self.tags.len();
        let (ip_fixed_end, ip_end) = match &self.ip {
            Ip::V4 { options, .. } => (ip_start + 20, ip_start + 20 + options.len()),
            Ip::V6 { ext, ident, .. } => {
                let chain: usize = self
                    .ext_chain(ext, *ident)
                    .iter()
                    .map(|h| h.bytes(0).len())
                    .sum();
                (ip_start + 40, ip_start + 40 + chain)
            }
        };
        let l4_len = match self.l4 {
            L4::Tcp { .. } => 20,
            L4::Udp { .. } | L4::Echo | L4::Icmp { .. } => 8,
        };
        Layout {
            ip_start,
            ip_fixed_end,
            ip_end,
            l4_end: ip_end + l4_len,
        }
    }

    /// The frame's connection-table key (TCP/UDP only).
    pub fn flow_key(&self) -> FlowKey {
        let (sport, dport) = match self.l4 {
            L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport } => (sport, dport),
            L4::Echo | L4::Icmp { .. } => panic!("an ICMP message has no flow key"),
        };
        let (src, dst) = match &self.ip {
            Ip::V4 { src, dst, .. } => (IpAddr::from(*src), IpAddr::from(*dst)),
            Ip::V6 { src, dst, .. } => (IpAddr::from(*src), IpAddr::from(*dst)),
        };
        FlowKey::new(src, sport, dst, dport, self.proto(), self.vlan_path())
            .expect("one address family")
    }
}

/// Length of `frame` after its Ethernet header and its VLAN tags (at most
/// two): the IP layer, whose bytes the counters of forwarded frames add.
pub fn ip_len(frame: &[u8]) -> u64 {
    let mut start = ETH_LEN;
    for _ in 0..2 {
        match u16::from_be_bytes([frame[start - 2], frame[start - 1]]) {
            TPID_8021Q | TPID_8021AD => start += TAG_LEN,
            _ => break,
        }
    }
    (frame.len() - start) as u64
}

/// An ARP request for VIP4 from the client (padded to 60 bytes).
pub fn arp_request() -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend([0xff; 6]);
    f.extend(ROUTER_MAC);
    f.extend(0x0806u16.to_be_bytes());
    f.extend([0, 1, 0x08, 0x00, 6, 4, 0, 1]); // Ethernet/IPv4, request
    f.extend(ROUTER_MAC);
    f.extend(CLIENT4.octets());
    f.extend([0; 6]);
    f.extend(VIP4.octets());
    f.resize(60, 0);
    f
}

/// An LLDP frame (chassis id, port id, TTL, end), padded to 60 bytes.
pub fn lldp_frame() -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend([0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e]);
    f.extend(ROUTER_MAC);
    f.extend(0x88ccu16.to_be_bytes());
    f.extend([0x02, 0x07, 0x04]); // chassis id: MAC
    f.extend(ROUTER_MAC);
    f.extend([0x04, 0x03, 0x07, b'p', b'1']); // port id: local "p1"
    f.extend([0x06, 0x02, 0x00, 0x78]); // TTL 120
    f.extend([0x00, 0x00]);
    f.resize(60, 0);
    f
}

/// `bytes` as a hex dump, 16 bytes a line.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::new();
    for (i, line) in bytes.chunks(16).enumerate() {
        let words: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        s += &format!("    {:04x}: {}\n", i * 16, words.join(" "));
    }
    if bytes.is_empty() {
        s += "    (empty)\n";
    }
    s
}
