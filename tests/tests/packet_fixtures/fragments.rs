//! IP fragments (IPv4 MF or offset, IPv6 fragment header): a datagram's
//! first fragment is balanced as a packet of its flow and its ports are
//! remembered in FRAGMENTS4/FRAGMENTS6; its later fragments follow it to the
//! same backend; a later fragment to a VIP whose first was not seen (or came
//! more than `FRAGMENT_LIFETIME_NS` ago) is dropped as
//! `drop_fragment_orphan`; fragments that belong to no service (the
//! director's own addresses, ICMP, a protocol no service of the VIP uses)
//! pass as before. The VIP map follows the services.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::{HashMap, MapData};
use lb::datapath::maps::monotonic_ns;
use lb_common::{
    BACKEND_STATE_DOWN, Counters, FRAGMENT_LIFETIME_NS, FRAGMENTS4_MAP, FRAGMENTS6_MAP,
    FragmentKey4, FragmentKey6, FragmentPorts, PORT_TCP, PORT_UDP, PROTO_TCP, PROTO_UDP,
    REASON_FRAGMENT, REASON_FRAGMENT_ORPHAN, REASON_MALFORMED, REASON_NO_BACKEND, REASON_NO_FLOW,
    REASON_NO_SERVICE, SERVICE_FLAG_REJECT, ServiceKey, VipKey,
    conn_state::{STATE_ESTABLISHED, STATE_SYN_RECV, STATE_UDP, TCP_ACK, TCP_SYN},
};
use lb_tests::{
    VIP4, VIP6,
    frame::{CLIENT4, CLIENT6, Ext, Ip, L4, PORT, Piece, Pkt, TCP_PSH},
    xdp_case::{Case, DECOY_ID, Expect, Fixture, Real, SERVICE_ID, counted, l3, run_fixtures, up},
};

/// The director's own addresses (not VIPs): their fragments go to its stack.
const DIRECTOR4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const DIRECTOR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
/// Payload of the fragmented datagrams: three fragments over a 1,500-byte MTU.
const PAYLOAD: usize = 3000;

/// One address family: its VIP and the frames the cases send.
#[derive(Clone, Copy)]
struct Family {
    name: &'static str,
    vip: IpAddr,
    /// The director's own address.
    own: IpAddr,
    /// The client.
    client: IpAddr,
    /// Bytes of transport header and payload per fragment over a 1,500-byte
    /// MTU: 1,480 after a 20-byte IPv4 header; 1,448 after a 40-byte IPv6
    /// header and an 8-byte fragment header (rounded down to 8).
    max: usize,
}

const FAMILIES: [Family; 2] = [
    Family {
        name: "IPv4",
        vip: IpAddr::V4(VIP4),
        own: IpAddr::V4(DIRECTOR4),
        client: IpAddr::V4(CLIENT4),
        max: 1480,
    },
    Family {
        name: "IPv6",
        vip: IpAddr::V6(VIP6),
        own: IpAddr::V6(DIRECTOR6),
        client: IpAddr::V6(CLIENT6),
        max: 1448,
    },
];

impl Family {
    /// A datagram of `l4` from the client to `dst`, with identification
    /// `id`, cut into fragments.
    fn datagram(&self, dst: IpAddr, l4: L4, id: u32) -> Vec<Pkt> {
        Pkt::between(self.client, dst, l4)
            .with_payload(&payload())
            .with_ident(id)
            .fragments(self.max)
    }

    /// A UDP datagram from client port `sport` to the VIP's [`PORT`].
    fn udp(&self, sport: u16, id: u32) -> Vec<Pkt> {
        self.datagram(self.vip, L4::Udp { sport, dport: PORT }, id)
    }

    /// Case `what` of this family, on a fresh data path.
    fn case(&self, what: &str) -> Option<Case> {
        Case::new(format!("{what} ({})", self.name))
    }
}

/// [`PAYLOAD`] bytes that differ from one position to the next.
fn payload() -> Vec<u8> {
    (0..PAYLOAD).map(|i| (i % 251) as u8).collect()
}

/// The key of a fragment map, read back by the fixtures.
trait RememberedKey: aya::Pod {
    /// The map's name.
    const MAP: &'static str;
    /// Identification, protocol, client and VIP.
    fn parts(&self) -> (u32, u8, IpAddr, IpAddr);
}

impl RememberedKey for FragmentKey4 {
    const MAP: &'static str = FRAGMENTS4_MAP;
    fn parts(&self) -> (u32, u8, IpAddr, IpAddr) {
        let (src, dst) = (self.src_addr.into(), self.dst_addr.into());
        (self.id, self.proto, src, dst)
    }
}

impl RememberedKey for FragmentKey6 {
    const MAP: &'static str = FRAGMENTS6_MAP;
    fn parts(&self) -> (u32, u8, IpAddr, IpAddr) {
        let (src, dst) = (self.src_addr.into(), self.dst_addr.into());
        (self.id, self.proto, src, dst)
    }
}

/// The data path's fragment map with keys `K`, opened by map id.
fn fragment_map<K: RememberedKey>(case: &Case) -> HashMap<MapData, K, FragmentPorts> {
    let map = case.map_by_name(K::MAP, size_of::<K>(), size_of::<FragmentPorts>());
    HashMap::try_from(map).unwrap_or_else(|e| panic!("{}: {}: {e}", case.name, K::MAP))
}

/// Every entry of the fragment map with keys `K`, as its key's parts and ports.
fn entries<K: RememberedKey>(case: &Case) -> Vec<((u32, u8, IpAddr, IpAddr), FragmentPorts)> {
    fragment_map::<K>(case)
        .iter()
        .map(|entry| {
            let (key, ports) = entry.unwrap_or_else(|e| panic!("{}: walking: {e}", case.name));
            (key.parts(), ports)
        })
        .collect()
}

/// Every entry of the fragment map of `vip`'s family, as (id, protocol,
/// client, VIP) -> ports.
fn remembered(case: &Case, vip: IpAddr) -> Vec<((u32, u8, IpAddr, IpAddr), FragmentPorts)> {
    match vip {
        IpAddr::V4(_) => entries::<FragmentKey4>(case),
        IpAddr::V6(_) => entries::<FragmentKey6>(case),
    }
}

/// Sets the time the first fragment of every datagram remembered in the
/// fragment map with keys `K` came to `first_seen_ns`.
fn age<K: RememberedKey>(case: &Case, first_seen_ns: u64) {
    let name = &case.name;
    let mut map = fragment_map::<K>(case);
    let keys: Vec<K> = map
        .keys()
        .map(|k| k.unwrap_or_else(|e| panic!("{name}: walking: {e}")))
        .collect();
    for key in keys {
        let ports = map
            .get(&key, 0)
            .unwrap_or_else(|e| panic!("{name}: reading an entry: {e}"));
        let aged = FragmentPorts {
            first_seen_ns,
            ..ports
        };
        map.insert(key, aged, 0)
            .unwrap_or_else(|e| panic!("{name}: rewriting an entry: {e}"));
    }
}

/// Sets the time the first fragment of every remembered datagram of `vip`'s
/// family came to `first_seen_ns`.
fn age_remembered(case: &Case, vip: IpAddr, first_seen_ns: u64) {
    match vip {
        IpAddr::V4(_) => age::<FragmentKey4>(case, first_seen_ns),
        IpAddr::V6(_) => age::<FragmentKey6>(case, first_seen_ns),
    }
}

/// Sends every fragment of `fragments` and checks each is forwarded to
/// `slot` of [`SERVICE_ID`], bytes exact; returns their layer-3 bytes.
fn forward_all(case: &Case, label: &str, fragments: &[Pkt], slot: u32) -> u64 {
    fragments
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            case.forward(&format!("{label}, fragment {i}"), piece, SERVICE_ID, slot);
            l3(&piece.build())
        })
        .sum()
}

/// Two UDP datagrams of two flows, each cut into three fragments: the first
/// fragments are scheduled as their flows (slots 0 and 1) and remembered
/// with their ports; the later fragments, interleaved, each follow their own
/// datagram's first, with exact output bytes, and count as forwarded for
/// its backend (one new connection each). A second datagram of the first
/// flow goes whole to its backend too.
#[test]
fn later_fragments_follow_their_first() {
    for family in FAMILIES {
        let Some(mut case) = family.case("later_fragments_follow_their_first") else {
            return;
        };
        let name = case.name.clone();
        case.service(SERVICE_ID, family.vip, PROTO_UDP, &[up(1), up(1), up(1)]);
        let a = family.udp(40000, 0x1111);
        let b = family.udp(40001, 0x2222);
        assert_eq!((a.len(), b.len()), (3, 3), "{name}: fragments per datagram");

        let before = monotonic_ns();
        case.forward("first fragment of a", &a[0], SERVICE_ID, 0);
        case.forward("first fragment of b", &b[0], SERVICE_ID, 1);
        let after = monotonic_ns();
        case.expect_flow("a", &a[0], SERVICE_ID, 0, STATE_UDP);
        case.expect_flow("b", &b[0], SERVICE_ID, 1, STATE_UDP);
        let mut entries = remembered(&case, family.vip);
        entries.sort_by_key(|(key, _)| key.0);
        let seen: Vec<_> = entries
            .iter()
            .map(|(key, ports)| (*key, ports.src_port, ports.dst_port))
            .collect();
        assert_eq!(
            seen,
            [
                ((0x1111, PROTO_UDP, family.client, family.vip), 40000, PORT),
                ((0x2222, PROTO_UDP, family.client, family.vip), 40001, PORT),
            ],
            "{name}: remembered datagrams"
        );
        for (_, ports) in &entries {
            // The coarse clock lags the precise one by up to a tick.
            assert!(
                ports.first_seen_ns <= after && ports.first_seen_ns + 10_000_000 >= before,
                "{name}: first_seen_ns {} outside [{before}, {after}]",
                ports.first_seen_ns
            );
        }

        for (label, piece, slot) in [
            ("b, fragment 1", &b[1], 1),
            ("a, fragment 1", &a[1], 0),
            ("a, fragment 2", &a[2], 0),
            ("b, fragment 2", &b[2], 1),
        ] {
            case.forward(label, piece, SERVICE_ID, slot);
        }
        let bytes = |d: &[Pkt]| d.iter().map(|p| l3(&p.build())).sum::<u64>();
        assert_eq!(
            case.backend_stats(SERVICE_ID, 0),
            counted(3, bytes(&a), 1),
            "{name}: slot 0"
        );
        assert_eq!(
            case.backend_stats(SERVICE_ID, 1),
            counted(3, bytes(&b), 1),
            "{name}: slot 1"
        );

        let again = family.udp(40000, 0x1112);
        let sent = forward_all(&case, "a again", &again, 0);
        assert_eq!(
            case.backend_stats(SERVICE_ID, 0),
            counted(6, bytes(&a) + sent, 1),
            "{name}: slot 0 after a second datagram"
        );
        assert_eq!(case.flow_count(), 2, "{name}: flows");
    }
}

/// Fragments behind IPv4 options (repeated in every fragment) and behind an
/// IPv6 hop-by-hop header and destination options (the unfragmentable part,
/// before the fragment header) are tied to their datagram as well.
#[test]
fn fragments_behind_options_and_extension_headers() {
    for (family, headers) in [
        (
            FAMILIES[0],
            Pkt::udp4(40000).with_options(&[0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00]),
        ),
        (
            FAMILIES[1],
            Pkt::udp6(40000).with_ext(&[Ext::HopByHop(8), Ext::DestOpts(16)]),
        ),
    ] {
        let Some(mut case) = family.case("fragments_behind_options") else {
            return;
        };
        case.service(SERVICE_ID, family.vip, PROTO_UDP, &[up(1), up(1)]);
        // The header bytes a fragment repeats take room from its data.
        let repeated = headers.layout().ip_end - headers.layout().ip_fixed_end;
        let fragments = headers
            .with_payload(&payload())
            .with_ident(0xaaaa)
            .fragments(family.max - repeated);
        assert_eq!(fragments.len(), 3, "{}: fragments", case.name);
        forward_all(&case, "datagram", &fragments, 0);
        case.expect_flow("datagram", &fragments[0], SERVICE_ID, 0, STATE_UDP);
    }
}

/// A TCP data segment cut into fragments follows its connection: the first
/// fragment's header is the connection's (ESTABLISHED, unchanged), the later
/// ones go to the same backend and change no state (a service without
/// `sloppy_tcp`, so only the SYN opened the flow).
#[test]
fn fragments_of_a_tcp_segment_follow_the_connection() {
    for family in FAMILIES {
        let Some(mut case) = family.case("fragments_of_a_tcp_segment") else {
            return;
        };
        case.service_with_flags(SERVICE_ID, family.vip, PROTO_TCP, &[up(1), up(1)], 0);
        let tcp = |flags| L4::Tcp {
            sport: 40000,
            dport: PORT,
            flags,
        };
        let whole = |flags| Pkt::between(family.client, family.vip, tcp(flags));
        case.forward("SYN", &whole(TCP_SYN), SERVICE_ID, 0);
        case.forward("ACK", &whole(TCP_ACK), SERVICE_ID, 0);
        let segment = family.datagram(family.vip, tcp(TCP_ACK | TCP_PSH), 0x3333);
        forward_all(&case, "data", &segment, 0);
        case.expect_flow(
            "after the data",
            &segment[0],
            SERVICE_ID,
            0,
            STATE_ESTABLISHED,
        );
        case.expect_conns("after the data", SERVICE_ID, 0, 1, 0);
        case.expect_conns("after the data", SERVICE_ID, 1, 0, 0);
    }
}

/// A later fragment that comes before its datagram's first is an orphan:
/// dropped and counted, no flow opened. Sent again after the first, it
/// follows. A later fragment of another identification, or of the same one
/// from another client, is an orphan too.
#[test]
fn orphans_are_dropped_and_counted() {
    for family in FAMILIES {
        let Some(mut case) = family.case("orphans_are_dropped") else {
            return;
        };
        let name = case.name.clone();
        case.service(SERVICE_ID, family.vip, PROTO_UDP, &[up(1)]);
        let d = family.udp(40000, 0x4444);
        let orphan = || Expect::Drop(REASON_FRAGMENT_ORPHAN);
        case.send("fragment 2 first", &d[2].build(), orphan());
        case.send("fragment 1 first", &d[1].build(), orphan());
        assert_eq!(case.flow_count(), 0, "{name}: no flow from orphans");
        assert_eq!(
            case.service_stats(SERVICE_ID),
            Counters::default(),
            "{name}: service stats"
        );
        forward_all(&case, "in order", &d, 0);

        let other_id = family.udp(40000, 0x4445);
        case.send("another identification", &other_id[1].build(), orphan());
        let mut spoofed = d[1].clone();
        match &mut spoofed.ip {
            Ip::V4 { src, .. } => *src = Ipv4Addr::new(203, 0, 113, 7),
            Ip::V6 { src, .. } => *src = Ipv6Addr::new(0x2001, 0xdb8, 0x5f00, 0, 0, 0, 0, 7),
        }
        case.send("another client", &spoofed.build(), orphan());
        assert_eq!(case.flow_count(), 1, "{name}: flows");
    }
}

/// Fragments that belong to no service pass to the stack as before: to the
/// director's own address, ICMP to a VIP, UDP to a VIP that has only a TCP
/// service, an IPv6 datagram whose fragmentable part starts with another
/// extension header. Whole packets with DF or no flags are no fragments;
/// an IPv6 atomic fragment (offset 0, no M) is a whole datagram.
#[test]
fn fragments_of_no_service_pass() {
    let mut fixtures = Vec::new();
    for family in FAMILIES {
        let f = family.name;
        let udp = L4::Udp {
            sport: 40000,
            dport: PORT,
        };
        let own = family.datagram(family.own, udp, 0x5555);
        let echo = family.datagram(family.vip, L4::Echo, 0x5556);
        let udp_to_tcp_vip = family.udp(40000, 0x5557);
        let pass = |what: String, piece: &Pkt| {
            Fixture::passed(format!("{f}: {what}"), piece.build(), REASON_FRAGMENT).service(
                SERVICE_ID,
                family.vip,
                PROTO_TCP,
                &[up(1)],
            )
        };
        for (i, which) in [(0, "first"), (1, "later")] {
            fixtures.push(pass(format!("{which} fragment to the director"), &own[i]));
            fixtures.push(pass(
                format!("{which} ICMP echo fragment to the VIP"),
                &echo[i],
            ));
            fixtures.push(pass(
                format!("{which} UDP fragment to a TCP-only VIP"),
                &udp_to_tcp_vip[i],
            ));
        }
    }
    let udp6 = Pkt::udp6(40000).with_payload(b"payload");
    fixtures.push(
        Fixture::passed(
            "IPv6: fragment header, then destination options",
            udp6.clone()
                .with_ext(&[
                    Ext::Fragment {
                        offset: 0,
                        more: true,
                        id: 0x5558,
                    },
                    Ext::DestOpts(8),
                ])
                .build(),
            REASON_FRAGMENT,
        )
        .service(SERVICE_ID, VIP6.into(), PROTO_UDP, &[up(1)]),
    );
    let atomic = udp6.with_ext(&[Ext::Fragment {
        offset: 0,
        more: false,
        id: 0x5559,
    }]);
    fixtures.push(
        Fixture::forwarded("IPv6: atomic fragment", &atomic, SERVICE_ID, 0, STATE_UDP).service(
            SERVICE_ID,
            VIP6.into(),
            PROTO_UDP,
            &[up(1)],
        ),
    );
    for (what, frag) in [("IPv4 DF, no fragment", 0x4000), ("IPv4 no flags", 0)] {
        fixtures.push(
            Fixture::forwarded(
                what,
                &Pkt::tcp4(40000, TCP_SYN).with_frag(frag),
                SERVICE_ID,
                0,
                STATE_SYN_RECV,
            )
            .both_vips(),
        );
    }
    run_fixtures("fragments_of_no_service", fixtures);
}

/// A datagram to a VIP on a port no service uses goes whole to the stack:
/// its later fragments follow the first there (`pass_no_service`), and
/// nothing is forwarded or opened. An atomic IPv6 fragment leaves nothing
/// behind in the fragment map.
#[test]
fn a_datagram_to_no_service_port_passes_whole() {
    for family in FAMILIES {
        let Some(mut case) = family.case("datagram_to_no_service_port") else {
            return;
        };
        let name = case.name.clone();
        case.service(SERVICE_ID, family.vip, PROTO_UDP, &[up(1)]);
        let other_port = L4::Udp {
            sport: 40000,
            dport: PORT + 1,
        };
        for (i, piece) in family
            .datagram(family.vip, other_port, 0x6666)
            .iter()
            .enumerate()
        {
            case.send(
                &format!("fragment {i}"),
                &piece.build(),
                Expect::Pass(REASON_NO_SERVICE),
            );
        }
        assert_eq!(case.flow_count(), 0, "{name}: flows");
        assert_eq!(
            case.service_stats(SERVICE_ID),
            Counters::default(),
            "{name}: service stats"
        );
        if family.vip.is_ipv6() {
            let atomic = Pkt::udp6(40001)
                .with_payload(b"whole")
                .with_ext(&[Ext::Fragment {
                    offset: 0,
                    more: false,
                    id: 0x6667,
                }]);
            case.forward("atomic fragment", &atomic, SERVICE_ID, 0);
        }
        assert_eq!(
            remembered(&case, family.vip).len(),
            1,
            "{name}: only the fragmented datagram is remembered"
        );
    }
}

/// A first fragment that does not hold its whole transport header (a tiny
/// fragment, RFC 1858), and an IPv6 fragment header the payload length cuts,
/// are malformed: dropped, nothing opened or remembered.
#[test]
fn malformed_first_fragments_are_dropped() {
    let tiny = |pkt: Pkt, len| Pkt {
        piece: Some(Piece {
            offset: 0,
            len,
            more: true,
        }),
        ..pkt.with_payload(&payload())
    };
    let mut cut_header = tiny(Pkt::udp6(40000), 1448);
    if let Ip::V6 { payload_len, .. } = &mut cut_header.ip {
        *payload_len = Some(4);
    }
    let fixtures = [
        ("IPv4: 4 bytes of UDP header", tiny(Pkt::udp4(40000), 4)),
        (
            "IPv4: 16 bytes of TCP header",
            tiny(Pkt::tcp4(40000, TCP_ACK), 16),
        ),
        ("IPv6: 4 bytes of UDP header", tiny(Pkt::udp6(40000), 4)),
        (
            "IPv6: 16 bytes of TCP header",
            tiny(Pkt::tcp6(40000, TCP_ACK), 16),
        ),
        ("IPv6: fragment header past the payload length", cut_header),
    ]
    .map(|(what, pkt)| {
        let vip = match pkt.ip {
            Ip::V4 { .. } => IpAddr::from(VIP4),
            Ip::V6 { .. } => IpAddr::from(VIP6),
        };
        Fixture::dropped(what, pkt.build(), REASON_MALFORMED).service(
            SERVICE_ID,
            vip,
            pkt.proto(),
            &[up(1)],
        )
    });
    run_fixtures("malformed_first_fragments", fixtures);
}

/// A later fragment follows its first for [`FRAGMENT_LIFETIME_NS`]: the
/// remembered datagram, aged to just inside the lifetime, is still followed;
/// aged past it, the later fragment is an orphan. The first fragment sent
/// again is remembered afresh and followed.
#[test]
fn stale_fragment_entries_are_ignored() {
    for family in FAMILIES {
        let Some(mut case) = family.case("stale_fragment_entries") else {
            return;
        };
        case.service(SERVICE_ID, family.vip, PROTO_UDP, &[up(1)]);
        let d = family.udp(40000, 0x7777);
        case.forward("first fragment", &d[0], SERVICE_ID, 0);
        age_remembered(
            &case,
            family.vip,
            monotonic_ns() - FRAGMENT_LIFETIME_NS + 500_000_000,
        );
        case.forward("within the lifetime", &d[1], SERVICE_ID, 0);
        age_remembered(
            &case,
            family.vip,
            monotonic_ns() - FRAGMENT_LIFETIME_NS - 50_000_000,
        );
        case.send(
            "past the lifetime",
            &d[2].build(),
            Expect::Drop(REASON_FRAGMENT_ORPHAN),
        );
        case.forward("first fragment again", &d[0], SERVICE_ID, 0);
        case.forward("after it", &d[2], SERVICE_ID, 0);
    }
}

/// A SYN cut into fragments to a `no_backend = "reject"` service without a
/// usable backend is dropped, not answered: an RST made of a first fragment
/// would keep its fragment fields. Its later fragments open nothing.
#[test]
fn a_fragmented_syn_gets_no_reset() {
    for family in FAMILIES {
        let Some(mut case) = family.case("fragmented_syn_no_reset") else {
            return;
        };
        let down = Real {
            weight: 1,
            state: BACKEND_STATE_DOWN,
        };
        case.service_with_flags(
            SERVICE_ID,
            family.vip,
            PROTO_TCP,
            &[down],
            SERVICE_FLAG_REJECT,
        );
        let syn = L4::Tcp {
            sport: 40000,
            dport: PORT,
            flags: TCP_SYN,
        };
        let d = family.datagram(family.vip, syn, 0x8888);
        case.send(
            "first fragment",
            &d[0].build(),
            Expect::Drop(REASON_NO_BACKEND),
        );
        case.send(
            "later fragment",
            &d[1].build(),
            Expect::Drop(REASON_NO_FLOW),
        );
        assert_eq!(case.flow_count(), 0, "{}: flows", case.name);
    }
}

/// The VIP map follows the services: a VIP holds the protocol bits of its
/// services while any is installed, and a later UDP fragment without its
/// first is an orphan only while the VIP has a UDP service.
#[test]
fn the_vip_map_follows_the_services() {
    let name = "the_vip_map_follows_the_services";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    let vip = IpAddr::from(VIP4);
    case.service(SERVICE_ID, vip, PROTO_UDP, &[up(1)]);
    case.service(DECOY_ID, vip, PROTO_TCP, &[up(1)]);
    let bits = |case: &Case| match case.dp.maps.vips.get(&VipKey::of(&key(PROTO_UDP)), 0) {
        Ok(bits) => Some(bits),
        Err(aya::maps::MapError::KeyNotFound) => None,
        Err(e) => panic!("{name}: reading the VIP map: {e}"),
    };
    fn key(proto: u8) -> ServiceKey {
        ServiceKey::new(VIP4.into(), PORT, proto, 0)
    }
    assert_eq!(bits(&case), Some(PORT_TCP | PORT_UDP), "{name}: both");
    let later = FAMILIES[0].udp(40000, 0x9999).remove(1);
    case.send(
        "with a UDP service",
        &later.build(),
        Expect::Drop(REASON_FRAGMENT_ORPHAN),
    );
    let remove = |case: &mut Case, id| {
        case.dp
            .maps
            .remove_service(id)
            .unwrap_or_else(|e| panic!("{name}: removing a service: {e:#}"));
    };
    remove(&mut case, SERVICE_ID);
    assert_eq!(bits(&case), Some(PORT_TCP), "{name}: TCP left");
    case.send(
        "without a UDP service",
        &later.build(),
        Expect::Pass(REASON_FRAGMENT),
    );
    remove(&mut case, DECOY_ID);
    assert_eq!(bits(&case), None, "{name}: no service left");
}
