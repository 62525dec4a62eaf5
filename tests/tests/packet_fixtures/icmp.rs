//! ICMP errors about VIP flows, for the real servers' path MTU discovery:
//! an IPv4 destination unreachable or time exceeded, or an ICMPv6
//! destination unreachable, packet too big or time exceeded, quoting a
//! packet from a VIP to the client of a known flow goes to that flow's
//! backend with only its MAC addresses changed, counted as `icmp_forwarded`
//! (not in the backend's counters), and leaves the flow as it was. An error
//! about a service's flow the tables do not know passes as
//! `pass_icmp_no_flow`; any other ICMP message, an error whose quote is
//! short or not a plain TCP/UDP packet, or an error about no service passes
//! as before (`pass_not_tcp_udp`); an error for another host's MAC passes as
//! `pass_not_for_us`.

use std::{net::IpAddr, thread, time::Duration};

use lb_common::{
    NicFilter, PROTO_TCP, PROTO_UDP, REASON_ICMP_FORWARDED, REASON_ICMP_NO_FLOW, REASON_NOT_FOR_US,
    REASON_NOT_L4,
    conn_state::{TCP_ACK, TCP_SYN},
};
use lb_tests::{
    VIP4, VIP6,
    frame::{CLIENT4, CLIENT6, Ext, Ip, L4, NIC_MAC, PORT, Pkt},
    xdp_case::{Case, DECOY_ID, Expect, Fixture, LO_IFINDEX, SERVICE_ID, run_fixtures, up},
};

/// Service id of the UDP service on VIP4.
const UDP_ID: u32 = 5;

/// A flow a case opened: a client packet of it, its service and backend slot.
struct Known {
    pkt: Pkt,
    id: u32,
    slot: u32,
}

/// The flows [`open_flows`] opens.
struct Flows {
    /// IPv4 TCP, half-open (pending table), slot 0.
    pending4: Known,
    /// IPv4 TCP, established (connection table), slot 1.
    tcp4: Known,
    /// IPv6 TCP, established, slot 1.
    tcp6: Known,
    /// IPv4 UDP, slot 1.
    udp4: Known,
}

/// A case with a TCP service on VIP4 ([`SERVICE_ID`]), a TCP service on
/// VIP6 ([`DECOY_ID`]) and a UDP service on VIP4 ([`UDP_ID`]), two backends
/// each, and the [`Flows`] open on them. The coarse clock moves on before it
/// returns, so that a flow whose last-seen time an error refreshed shows it.
fn case_with_flows(name: &str) -> Option<(Case, Flows)> {
    let mut case = Case::new(name)?;
    case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1), up(1)]);
    case.service(DECOY_ID, VIP6.into(), PROTO_TCP, &[up(1), up(1)]);
    case.service(UDP_ID, VIP4.into(), PROTO_UDP, &[up(1), up(1)]);
    // Least-connection with equal weights: the first flow of each service
    // goes to slot 0, the second to slot 1.
    let open = |label: &str, packets: &[Pkt], id: u32, slot: u32| {
        for pkt in packets {
            case.forward(label, pkt, id, slot);
        }
        Known {
            pkt: packets[0].clone(),
            id,
            slot,
        }
    };
    let pending4 = open("IPv4 SYN", &[Pkt::tcp4(40000, TCP_SYN)], SERVICE_ID, 0);
    let tcp4 = open(
        "IPv4 handshake",
        &[Pkt::tcp4(40001, TCP_SYN), Pkt::tcp4(40001, TCP_ACK)],
        SERVICE_ID,
        1,
    );
    open("IPv6 SYN", &[Pkt::tcp6(40000, TCP_SYN)], DECOY_ID, 0);
    let tcp6 = open(
        "IPv6 handshake",
        &[Pkt::tcp6(40001, TCP_SYN), Pkt::tcp6(40001, TCP_ACK)],
        DECOY_ID,
        1,
    );
    open("UDP", &[Pkt::udp4(40000)], UDP_ID, 0);
    let udp4 = open("UDP", &[Pkt::udp4(40001)], UDP_ID, 1);
    thread::sleep(Duration::from_millis(20));
    Some((
        case,
        Flows {
            pending4,
            tcp4,
            tcp6,
            udp4,
        },
    ))
}

/// Runs ICMP error `error` about flow `known` and checks that the program
/// sends it on with `expect`, and that the flow (its table, state, flags and
/// last-seen time), its backend's counters and connection counts stay as
/// they were.
fn send_about(case: &Case, label: &str, known: &Known, error: &Pkt, expect: Expect) {
    let before = (
        case.flow(&known.pkt),
        case.table_of(&known.pkt),
        case.backend_stats(known.id, known.slot),
        case.conns(known.id, known.slot),
    );
    assert!(before.0.is_some(), "{}/{label}: flow missing", case.name);
    case.send(label, &error.build(), expect);
    let after = (
        case.flow(&known.pkt),
        case.table_of(&known.pkt),
        case.backend_stats(known.id, known.slot),
        case.conns(known.id, known.slot),
    );
    assert_eq!(
        after, before,
        "{}/{label}: (flow, table, backend counters, connection counts) changed",
        case.name
    );
}

/// `error` about `known` goes to `known`'s backend, counted as `icmp_forwarded`.
fn relayed(case: &Case, label: &str, known: &Known, error: &Pkt) {
    let out = error.forwarded(known.id, known.slot);
    send_about(
        case,
        label,
        known,
        error,
        Expect::Reply(out, REASON_ICMP_FORWARDED),
    );
}

/// `error` about `known` passes to the stack unchanged as `pass_not_tcp_udp`.
fn passed(case: &Case, label: &str, known: &Known, error: &Pkt) {
    send_about(case, label, known, error, Expect::Pass(REASON_NOT_L4));
}

/// Every ICMP error type taken, about flows in either table of either
/// family, TCP and UDP, with quotes from the least an error must carry to
/// what Linux sends, reaches the flow's backend byte for byte.
#[test]
fn errors_about_known_flows_reach_their_backend() {
    let Some((case, flows)) = case_with_flows("icmp_known_flows") else {
        return;
    };
    let Flows {
        pending4,
        tcp4,
        tcp6,
        udp4,
    } = &flows;
    let full4 = tcp4.pkt.reply(1500);
    let full6 = tcp6.pkt.reply(1500);
    for (label, known, error) in [
        (
            "IPv4 fragmentation needed",
            tcp4,
            Pkt::frag_needed(&full4, 1280),
        ),
        (
            "IPv4 fragmentation needed, pending flow",
            pending4,
            Pkt::frag_needed(&pending4.pkt.reply(1500), 1280),
        ),
        (
            "IPv4 host unreachable",
            tcp4,
            Pkt::icmp_error(&full4, 3, 1, 0, 548),
        ),
        (
            "IPv4 port unreachable, quoting the IP header and 8 bytes",
            tcp4,
            Pkt::icmp_error(&full4, 3, 3, 0, 28),
        ),
        (
            "IPv4 time exceeded",
            tcp4,
            Pkt::icmp_error(&tcp4.pkt.reply(100), 11, 0, 0, 548),
        ),
        (
            "IPv4 quote with IP options",
            tcp4,
            Pkt::frag_needed(&full4.clone().with_options(&[0x94, 4, 0, 0]), 1280),
        ),
        (
            "IPv4 quote of a first fragment",
            tcp4,
            Pkt::frag_needed(&full4.clone().with_frag(0x2000), 1280),
        ),
        (
            "IPv4 fragmentation needed, UDP flow",
            udp4,
            Pkt::frag_needed(&udp4.pkt.reply(1500), 1280),
        ),
        (
            "IPv6 packet too big",
            tcp6,
            Pkt::packet_too_big(&full6, 1280),
        ),
        (
            "IPv6 packet too big, quoting the IP header and 8 bytes",
            tcp6,
            Pkt::icmp_error(&full6, 2, 0, 1280, 48),
        ),
        (
            "IPv6 packet too big after a hop-by-hop header",
            tcp6,
            Pkt::packet_too_big(&full6, 1280).with_ext(&[Ext::HopByHop(8)]),
        ),
        (
            "IPv6 address unreachable",
            tcp6,
            Pkt::icmp_error(&full6, 1, 3, 0, 1232),
        ),
        (
            "IPv6 time exceeded",
            tcp6,
            Pkt::icmp_error(&tcp6.pkt.reply(100), 3, 0, 0, 1232),
        ),
    ] {
        relayed(&case, label, known, &error);
    }
}

/// The same frame with its IPv4 total length set to `len` (panics for IPv6).
fn with_ipv4_length(mut pkt: Pkt, len: u16) -> Pkt {
    let Ip::V4 { tot_len, .. } = &mut pkt.ip else {
        panic!("an IPv4 length on an IPv6 frame")
    };
    *tot_len = Some(len);
    pkt
}

/// ICMP messages other than the errors taken, and errors whose quote is
/// short (inside the frame or the IP length) or not a plain TCP/UDP packet
/// (a later fragment, a wrong version, an IPv6 extension header), pass to
/// the stack as before, even about a known flow, which they leave alone.
#[test]
fn other_icmp_and_odd_quotes_pass() {
    let Some((case, flows)) = case_with_flows("icmp_other") else {
        return;
    };
    let (tcp4, tcp6) = (&flows.tcp4, &flows.tcp6);
    let full4 = tcp4.pkt.reply(1500);
    let full6 = tcp6.pkt.reply(1500);
    let mut bad_version4 = full4.clone();
    if let Ip::V4 { vihl, .. } = &mut bad_version4.ip {
        *vihl = Some(0x55);
    }
    let mut bad_version6 = full6.clone();
    if let Ip::V6 { first_byte, .. } = &mut bad_version6.ip {
        *first_byte = Some(0x40);
    }
    let frag_needed = Pkt::frag_needed(&full4, 1280);
    for (label, known, error) in [
        (
            "IPv4 source quench",
            tcp4,
            Pkt::icmp_error(&full4, 4, 0, 0, 548),
        ),
        ("IPv4 redirect", tcp4, Pkt::icmp_error(&full4, 5, 1, 0, 548)),
        (
            "IPv4 parameter problem",
            tcp4,
            Pkt::icmp_error(&full4, 12, 0, 0, 548),
        ),
        (
            "IPv4 echo reply carrying a packet",
            tcp4,
            Pkt::icmp_error(&full4, 0, 0, 0, 548),
        ),
        (
            "IPv4 quote short of 8 transport bytes",
            tcp4,
            Pkt::icmp_error(&full4, 3, 4, 1280, 20 + 7),
        ),
        (
            "IPv4 quote shorter than its IP header",
            tcp4,
            Pkt::icmp_error(&full4, 3, 4, 1280, 16),
        ),
        (
            "IPv4 quote past the IP length (in Ethernet padding)",
            tcp4,
            with_ipv4_length(frag_needed.clone(), 20 + 8 + 20 + 7),
        ),
        (
            "IPv4 ICMP header past the IP length",
            tcp4,
            with_ipv4_length(frag_needed, 20 + 4),
        ),
        (
            "IPv4 quote of a later fragment",
            tcp4,
            Pkt::frag_needed(&full4.clone().with_frag(100), 1280),
        ),
        (
            "IPv4 quote with a wrong version",
            tcp4,
            Pkt::frag_needed(&bad_version4, 1280),
        ),
        (
            "IPv6 parameter problem",
            tcp6,
            Pkt::icmp_error(&full6, 4, 0, 0, 1232),
        ),
        (
            "IPv6 echo request carrying a packet",
            tcp6,
            Pkt::icmp_error(&full6, 128, 0, 0, 1232),
        ),
        (
            "IPv6 quote short of 8 transport bytes",
            tcp6,
            Pkt::icmp_error(&full6, 2, 0, 1280, 40 + 7),
        ),
        (
            "IPv6 quote shorter than its IP header",
            tcp6,
            Pkt::icmp_error(&full6, 2, 0, 1280, 32),
        ),
        (
            "IPv6 quote with an extension header",
            tcp6,
            Pkt::packet_too_big(&full6.clone().with_ext(&[Ext::HopByHop(8)]), 1280),
        ),
        (
            "IPv6 quote with a wrong version",
            tcp6,
            Pkt::packet_too_big(&bad_version6, 1280),
        ),
    ] {
        passed(&case, label, known, &error);
    }
}

/// Errors about a service's flow the tables do not know pass to the stack
/// as `pass_icmp_no_flow`; errors about a port no service uses, about
/// another address than a VIP, and echo requests pass as `pass_not_tcp_udp`
/// as they did before. None opens a flow.
#[test]
fn errors_about_unknown_flows_pass() {
    // A 1,500-byte reply from `src`:`port` to client port 40000 of `client`.
    let from = |src: IpAddr, port: u16, client: IpAddr| {
        let request = L4::Tcp {
            sport: 40000,
            dport: port,
            flags: TCP_ACK,
        };
        Pkt::between(client, src, request).reply(1500)
    };
    let (vip4, vip6, client4, client6) = (VIP4.into(), VIP6.into(), CLIENT4.into(), CLIENT6.into());
    let director = IpAddr::from([192, 0, 2, 2]);
    let udp_reply = Pkt::udp4(40000).reply(1500);
    let cases = [
        (
            "IPv4 fragmentation needed",
            Pkt::frag_needed(&from(vip4, PORT, client4), 1280),
            REASON_ICMP_NO_FLOW,
        ),
        (
            "IPv4 time exceeded",
            Pkt::icmp_error(&from(vip4, PORT, client4), 11, 0, 0, 548),
            REASON_ICMP_NO_FLOW,
        ),
        (
            "IPv6 packet too big",
            Pkt::packet_too_big(&from(vip6, PORT, client6), 1280),
            REASON_ICMP_NO_FLOW,
        ),
        (
            "IPv4 error about a port no service uses",
            Pkt::frag_needed(&from(vip4, 22, client4), 1280),
            REASON_NOT_L4,
        ),
        (
            "IPv4 error about UDP from a TCP service's port",
            Pkt::frag_needed(&udp_reply, 1280),
            REASON_NOT_L4,
        ),
        (
            "IPv4 error about another address on the service port",
            Pkt::frag_needed(&from(director, PORT, client4), 1280),
            REASON_NOT_L4,
        ),
        (
            "IPv4 echo request",
            Pkt::v4(CLIENT4, VIP4, L4::Echo),
            REASON_NOT_L4,
        ),
        (
            "IPv6 echo request",
            Pkt::v6(CLIENT6, VIP6, L4::Echo),
            REASON_NOT_L4,
        ),
    ];
    run_fixtures(
        "icmp_unknown_flows",
        cases.map(|(name, pkt, reason)| Fixture::passed(name, pkt.build(), reason).both_vips()),
    );
}

/// With the NIC's filter set, an error about a known flow addressed to
/// another host's MAC passes as `pass_not_for_us`; addressed to the NIC's
/// own MAC, it reaches the backend.
#[test]
fn errors_to_another_mac_pass() {
    let Some((mut case, flows)) = case_with_flows("icmp_not_for_us") else {
        return;
    };
    case.dp
        .maps
        .set_nic_filter(&NicFilter::new("lo", LO_IFINDEX, NIC_MAC, &[]))
        .expect("writing the NIC filter");
    let mut error = Pkt::frag_needed(&flows.tcp4.pkt.reply(1500), 1280);
    error.dst_mac = [0x02, 0x99, 0x00, 0x00, 0x00, 0x01];
    send_about(
        &case,
        "to another MAC",
        &flows.tcp4,
        &error,
        Expect::Pass(REASON_NOT_FOR_US),
    );
    error.dst_mac = NIC_MAC;
    relayed(&case, "to the NIC's MAC", &flows.tcp4, &error);
}
