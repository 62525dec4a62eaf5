//! 802.1Q and 802.1ad (QinQ) VLAN tags: a tagged frame is balanced only by
//! a service of its VLAN (two tags: of that pair), an untagged one only by
//! an untagged service; a forwarded frame keeps its tags byte for byte; the
//! same 5-tuple on two VLANs is two flows; truncated tags are malformed;
//! fragments and ICMP errors follow their flow on its VLAN.

use std::net::IpAddr;

use lb_common::{
    BACKEND_STATE_DOWN, CONFIRMED4_MAP, CONNTRACK4_MAP, PROTO_TCP, PROTO_UDP,
    REASON_FRAGMENT_ORPHAN, REASON_ICMP_FORWARDED, REASON_MALFORMED, REASON_NO_SERVICE,
    REASON_NOT_IP, REASON_NOT_L4, REASON_REJECTED, SERVICE_FLAG_REJECT, SERVICE_FLAG_SLOPPY_TCP,
    conn_state::{STATE_ESTABLISHED, STATE_SYN_RECV, STATE_UDP, TCP_ACK, TCP_SYN},
    vlan_path,
};
use lb_tests::{
    VIP4, VIP6,
    frame::{
        CLIENT4, CLIENT6, ETH_LEN, L4, PORT, Pkt, TAG_LEN, TPID_8021Q, Tag, arp_request, hex,
        ip_len,
    },
    xdp_case::{Case, Expect, Fixture, Real, SERVICE_ID, counted, run_fixtures, up},
};

use crate::{
    families::{raw_entries, raw_set_entries},
    raw_keys::{FLOW_KEY4_LEN, key_bytes_of_frame},
    selection::reset_for,
};

/// The VLAN of the `bond0.4001` layout.
const VLAN: u16 = 4001;
/// The QinQ service VLAN (outer tag) of the cases with two tags.
const OUTER: u16 = 100;

/// A TCP SYN from the IPv4 client on VLAN [`VLAN`].
fn tagged_syn4() -> Pkt {
    Pkt::tcp4(40000, TCP_SYN).on_vlan(VLAN)
}

/// A frame forwarded to slot 0 of the service it opens a flow of.
fn forwarded(name: &str, pkt: Pkt) -> Fixture {
    let state = if pkt.proto() == PROTO_TCP {
        STATE_SYN_RECV
    } else {
        STATE_UDP
    };
    Fixture::forwarded(name, &pkt, SERVICE_ID, 0, state)
}

/// Frames with one tag or two are balanced by the service of their VLAN,
/// and leave with their tags as they came (priority bits included): only
/// the MAC addresses change. A priority tag (VLAN id 0) leaves a frame on
/// the VLAN it is on without it.
#[test]
fn tagged_frames_are_balanced_by_the_service_of_their_vlan() {
    let v4 = IpAddr::from(VIP4);
    let v6 = IpAddr::from(VIP6);
    let qinq = vlan_path(&[OUTER, VLAN]);
    let on =
        |f: Fixture, vip, proto, vlan| f.service_on_vlan(SERVICE_ID, vip, proto, vlan, &[up(1)]);
    let fixtures = [
        on(
            forwarded("802.1Q TCP/IPv4", tagged_syn4()),
            v4,
            PROTO_TCP,
            4001,
        ),
        on(
            forwarded("802.1Q UDP/IPv4", Pkt::udp4(40000).on_vlan(VLAN)),
            v4,
            PROTO_UDP,
            4001,
        ),
        on(
            forwarded("802.1Q TCP/IPv6", Pkt::tcp6(40000, TCP_SYN).on_vlan(VLAN)),
            v6,
            PROTO_TCP,
            4001,
        ),
        on(
            forwarded(
                "802.1Q with priority 5 and DEI",
                Pkt::tcp4(40000, TCP_SYN).with_tags(&[Tag {
                    tpid: TPID_8021Q,
                    tci: 5 << 13 | 1 << 12 | VLAN,
                }]),
            ),
            v4,
            PROTO_TCP,
            4001,
        ),
        on(
            forwarded(
                "QinQ (802.1ad outer, 802.1Q inner) TCP/IPv4",
                Pkt::tcp4(40000, TCP_SYN).on_qinq(OUTER, VLAN),
            ),
            v4,
            PROTO_TCP,
            qinq,
        ),
        on(
            forwarded("QinQ UDP/IPv6", Pkt::udp6(40000).on_qinq(OUTER, VLAN)),
            v6,
            PROTO_UDP,
            qinq,
        ),
        on(
            forwarded(
                "two 802.1Q tags",
                Pkt::tcp4(40000, TCP_SYN).with_tags(&[Tag::dot1q(OUTER), Tag::dot1q(VLAN)]),
            ),
            v4,
            PROTO_TCP,
            qinq,
        ),
        on(
            forwarded(
                "priority tag (VLAN 0), untagged service",
                Pkt::tcp4(40000, TCP_SYN).on_vlan(0),
            ),
            v4,
            PROTO_TCP,
            0,
        ),
        on(
            forwarded(
                "QinQ with a priority outer tag, service of the inner VLAN",
                Pkt::tcp4(40000, TCP_SYN).on_qinq(0, VLAN),
            ),
            v4,
            PROTO_TCP,
            4001,
        ),
    ];
    run_fixtures("vlan_forwarded", fixtures);
}

/// A tagged frame is not balanced by an untagged service or a service of
/// another VLAN (or of another QinQ pair), an untagged frame not by a VLAN
/// service: each is passed to the stack as traffic of no service, whichever
/// services the other VLANs have.
#[test]
fn frames_of_other_vlans_are_not_balanced() {
    let v4 = IpAddr::from(VIP4);
    let v6 = IpAddr::from(VIP6);
    let passed = |name: &str, pkt: Pkt, vip, vlan: u32| {
        Fixture::passed(name, pkt.build(), REASON_NO_SERVICE).service_on_vlan(
            SERVICE_ID,
            vip,
            pkt.proto(),
            vlan,
            &[up(1)],
        )
    };
    let fixtures = [
        passed("802.1Q frame, untagged service", tagged_syn4(), v4, 0),
        passed(
            "untagged frame, VLAN service",
            Pkt::tcp4(40000, TCP_SYN),
            v4,
            4001,
        ),
        passed(
            "802.1Q frame, service of another VLAN",
            Pkt::tcp4(40000, TCP_SYN).on_vlan(4002),
            v4,
            4001,
        ),
        passed(
            "untagged IPv6 frame, VLAN service",
            Pkt::tcp6(40000, TCP_SYN),
            v6,
            4001,
        ),
        passed(
            "802.1Q UDP/IPv6 frame, untagged service",
            Pkt::udp6(40000).on_vlan(VLAN),
            v6,
            0,
        ),
        passed(
            "QinQ frame, service of its inner VLAN alone",
            Pkt::tcp4(40000, TCP_SYN).on_qinq(OUTER, VLAN),
            v4,
            4001,
        ),
        passed(
            "QinQ frame, service of another outer VLAN",
            Pkt::tcp4(40000, TCP_SYN).on_qinq(OUTER + 1, VLAN),
            v4,
            vlan_path(&[OUTER, VLAN]),
        ),
        passed(
            "802.1Q frame, QinQ service of its VLAN inside",
            tagged_syn4(),
            v4,
            vlan_path(&[OUTER, VLAN]),
        ),
    ];
    run_fixtures("vlan_other", fixtures);
}

/// Tagged frames that are not TCP/UDP over IP pass as the untagged ones do
/// (ARP in a VLAN, three tags: more than the data path reads); a tag or
/// header cut short by the frame's end is malformed.
#[test]
fn tagged_frames_that_are_not_ours_or_are_cut_short() {
    let v4 = IpAddr::from(VIP4);
    let service = |f: Fixture| f.service_on_vlan(SERVICE_ID, v4, PROTO_TCP, 4001, &[up(1)]);
    let mut arp = arp_request();
    arp.splice(12..12, [0x81, 0x00, 0x0f, 0xa1]);
    let three = Pkt::tcp4(40000, TCP_SYN)
        .with_tags(&[Tag::dot1ad(OUTER), Tag::dot1q(VLAN), Tag::dot1q(7)])
        .build();
    let whole = tagged_syn4().build();
    let two = Pkt::tcp4(40000, TCP_SYN).on_qinq(OUTER, VLAN).build();
    let cut = |frame: &[u8], len: usize| frame[..len].to_vec();
    let fixtures = [
        Fixture::passed("ARP in VLAN 4001", arp, REASON_NOT_IP),
        Fixture::passed("three tags", three, REASON_NOT_IP),
        Fixture::dropped(
            "802.1Q tag cut after 2 bytes",
            cut(&whole, ETH_LEN + 2),
            REASON_MALFORMED,
        ),
        Fixture::dropped(
            "inner QinQ tag cut after 3 bytes",
            cut(&two, ETH_LEN + TAG_LEN + 3),
            REASON_MALFORMED,
        ),
        Fixture::dropped(
            "IPv4 header cut after the tag",
            cut(&whole, ETH_LEN + TAG_LEN + 19),
            REASON_MALFORMED,
        ),
        Fixture::dropped(
            "TCP header cut after the tag and IPv4 header",
            cut(&whole, ETH_LEN + TAG_LEN + 20 + 10),
            REASON_MALFORMED,
        ),
    ]
    .map(service);
    run_fixtures("vlan_malformed", fixtures);
}

/// The same client, port, VIP, port and protocol on VLAN 4001, VLAN 4002
/// and untagged are three flows, each bound to the service of its VLAN and
/// recorded under its own key (the VLAN in the key's last three bytes);
/// their later packets, from the tables and from the flow cache, each go
/// to their own service's backend with their own tag, and forwarded bytes
/// are counted without the tags.
#[test]
fn one_five_tuple_on_several_vlans_is_several_flows() {
    let name = "vlan_flows";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    let v4 = IpAddr::from(VIP4);
    let services = [(0u16, 2u32), (4001, 3), (4002, 5)];
    for (vid, id) in services {
        case.service_on_vlan(
            id,
            v4,
            PROTO_TCP,
            u32::from(vid),
            &[up(1)],
            SERVICE_FLAG_SLOPPY_TCP,
        );
    }
    let on = |vid: u16, flags: u8| {
        let pkt = Pkt::tcp4(40000, flags);
        if vid == 0 { pkt } else { pkt.on_vlan(vid) }
    };
    for (vid, id) in services {
        case.forward(&format!("SYN on VLAN {vid}"), &on(vid, TCP_SYN), id, 0);
    }
    for round in 0..3 {
        for (vid, id) in services {
            let ack = on(vid, TCP_ACK);
            case.forward(&format!("ACK {round} on VLAN {vid}"), &ack, id, 0);
            let label = format!("ACK {round} on VLAN {vid}");
            case.expect_flow(&label, &ack, id, 0, STATE_ESTABLISHED);
        }
    }
    // The connection table: its sets, and its overflow hash.
    let raw = raw_set_entries::<FLOW_KEY4_LEN, 64>(&case, CONFIRMED4_MAP)
        .into_iter()
        .map(|(_, entry)| entry)
        .chain(raw_entries::<FLOW_KEY4_LEN>(&case, CONNTRACK4_MAP));
    let mut keys: Vec<Vec<u8>> = raw.map(|entry| entry.key).collect();
    let mut expected: Vec<Vec<u8>> = services
        .iter()
        .map(|&(vid, _)| key_bytes_of_frame(&on(vid, TCP_ACK).build()))
        .collect();
    keys.sort();
    expected.sort();
    assert_eq!(
        keys,
        expected,
        "{name}: connection table keys\nexpected:\n{}actual:\n{}",
        expected.iter().map(|k| hex(k)).collect::<String>(),
        keys.iter().map(|k| hex(k)).collect::<String>(),
    );
    let syn = on(4001, TCP_SYN).build();
    let ack = on(4001, TCP_ACK).build();
    assert_eq!(ip_len(&syn), (syn.len() - ETH_LEN - TAG_LEN) as u64);
    assert_eq!(
        case.backend_stats(3, 0),
        counted(4, ip_len(&syn) + 3 * ip_len(&ack), 1),
        "{name}: VLAN 4001 backend stats count IP bytes, without the tag"
    );
}

/// With `no_backend = "reject"`, a tagged SYN no backend can take is
/// answered with a RST that keeps the SYN's tags (one or two, IPv4 or
/// IPv6), byte for byte.
#[test]
fn the_reset_of_a_tagged_syn_keeps_its_tags() {
    let down = Real {
        weight: 100,
        state: BACKEND_STATE_DOWN,
    };
    let cases = [
        ("802.1Q IPv4", tagged_syn4(), IpAddr::from(VIP4)),
        (
            "QinQ IPv4",
            Pkt::tcp4(40000, TCP_SYN).on_qinq(OUTER, VLAN),
            IpAddr::from(VIP4),
        ),
        (
            "802.1Q IPv6",
            Pkt::tcp6(40000, TCP_SYN).on_vlan(VLAN),
            IpAddr::from(VIP6),
        ),
    ];
    for (label, syn, vip) in cases {
        let name = format!("vlan reject: {label}");
        let Some(mut case) = Case::new(&name) else {
            return;
        };
        case.service_on_vlan(
            SERVICE_ID,
            vip,
            PROTO_TCP,
            syn.vlan_path(),
            &[down],
            SERVICE_FLAG_REJECT,
        );
        let reply = reset_for(&syn, 1);
        let tags = 12..syn.layout().ip_start - 2;
        assert_eq!(
            reply[tags.clone()],
            syn.build()[tags],
            "{name}: the expected reply's tags"
        );
        case.send(label, &syn.build(), Expect::Reply(reply, REASON_REJECTED));
        assert_eq!(case.flow_count(), 0, "{name}: flows");
    }
}

/// The fragments and ICMP errors of a flow on a VLAN follow it: a tagged
/// UDP datagram's first fragment is balanced by the service of its VLAN
/// and its later fragments, tags kept, follow it to the same backend; a
/// later fragment with the same identification on another VLAN is another
/// datagram (an orphan). A tagged ICMP error about a flow of the VLAN goes
/// to the flow's backend with its tags; the same error untagged is about
/// no flow and passes.
#[test]
fn fragments_and_icmp_errors_on_a_vlan_follow_their_flow() {
    for (family, client, vip, max) in [
        ("IPv4", IpAddr::from(CLIENT4), IpAddr::from(VIP4), 1480),
        ("IPv6", IpAddr::from(CLIENT6), IpAddr::from(VIP6), 1448),
    ] {
        let Some(mut case) = Case::new(format!("fragments and ICMP on a VLAN ({family})")) else {
            return;
        };
        case.service_on_vlan(SERVICE_ID, vip, PROTO_UDP, 4001, &[up(1), up(1)], 0);
        let l4 = L4::Udp {
            sport: 40000,
            dport: PORT,
        };
        let payload: Vec<u8> = (0..3000).map(|i| (i % 251) as u8).collect();
        let datagram = Pkt::between(client, vip, l4)
            .with_payload(&payload)
            .with_ident(0x1111);
        let fragments: Vec<Pkt> = datagram
            .fragments(max)
            .into_iter()
            .map(|piece| piece.on_vlan(VLAN))
            .collect();
        assert_eq!(fragments.len(), 3, "{family}: fragments");
        for (i, piece) in fragments.iter().enumerate() {
            case.forward(&format!("fragment {i}"), piece, SERVICE_ID, 0);
        }
        let elsewhere = fragments[1].clone().on_vlan(VLAN + 1);
        case.send(
            "a later fragment on another VLAN",
            &elsewhere.build(),
            Expect::Drop(REASON_FRAGMENT_ORPHAN),
        );

        let flow = Pkt::between(
            client,
            vip,
            L4::Udp {
                sport: 40001,
                dport: PORT,
            },
        )
        .on_vlan(VLAN);
        case.forward("a second flow", &flow, SERVICE_ID, 1);
        let error = match vip {
            IpAddr::V4(_) => Pkt::frag_needed(&flow.reply(1500), 1280),
            IpAddr::V6(_) => Pkt::packet_too_big(&flow.reply(1500), 1280),
        };
        let tagged = error.clone().on_vlan(VLAN);
        case.send(
            "a tagged ICMP error about it",
            &tagged.build(),
            Expect::Reply(tagged.forwarded(SERVICE_ID, 1), REASON_ICMP_FORWARDED),
        );
        case.send(
            "the same error untagged",
            &error.build(),
            Expect::Pass(REASON_NOT_L4),
        );
    }
}
