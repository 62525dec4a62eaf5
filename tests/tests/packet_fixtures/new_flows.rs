//! New flows: a SYN or a first datagram opens a flow on the least loaded
//! backend, and the flow's later packets follow it through the TCP states
//! (IPv4 and IPv6, TCP and UDP).

use std::net::IpAddr;

use lb_common::{
    BackendConns, Counters, PROTO_TCP, PROTO_UDP, REASON_NO_FLOW, SERVICE_FLAG_SLOPPY_TCP,
    conn_state::{
        STATE_CLOSE, STATE_ESTABLISHED, STATE_FIN_WAIT, STATE_SYN_RECV, STATE_UDP, TCP_ACK,
        TCP_FIN, TCP_RST, TCP_SYN,
    },
};
use lb_tests::{
    VIP4, VIP6,
    frame::{Pkt, TCP_PSH},
    xdp_case::{Case, DECOY_ID, Expect, SERVICE_ID, counted, l3, up},
};

/// A SYN to the VIP of `family` opens a flow: XDP_TX with the MACs rewritten,
/// the flow in SYN_RECV on slot 0, one inactive connection and one new
/// connection in the service and backend statistics. A decoy UDP service on
/// the same VIP and port must not be used.
fn syn_opens_a_flow(name: &str, vip: IpAddr, syn: &Pkt) {
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service(SERVICE_ID, vip, PROTO_TCP, &[up(100), up(100)]);
    case.service(DECOY_ID, vip, PROTO_UDP, &[up(100)]);
    let frame = syn.build();
    case.send("SYN", &frame, Expect::Tx(syn.forwarded(SERVICE_ID, 0)));
    case.expect_flow("SYN", syn, SERVICE_ID, 0, STATE_SYN_RECV);
    assert_eq!(case.flow_count(), 1, "{name}: flows");
    case.expect_conns("SYN", SERVICE_ID, 0, 0, 1);
    case.expect_conns("SYN", SERVICE_ID, 1, 0, 0);
    let one = counted(1, l3(&frame), 1);
    assert_eq!(case.service_stats(SERVICE_ID), one, "{name}: service stats");
    assert_eq!(
        case.backend_stats(SERVICE_ID, 0),
        one,
        "{name}: backend 0 stats"
    );
    assert_eq!(
        case.backend_stats(SERVICE_ID, 1),
        Counters::default(),
        "{name}: backend 1 stats"
    );
    assert_eq!(
        case.service_stats(DECOY_ID),
        Counters::default(),
        "{name}: decoy stats"
    );
    assert_eq!(
        case.conns(DECOY_ID, 0),
        BackendConns::default(),
        "{name}: decoy conns"
    );
}

/// IPv4 TCP SYN to a VIP.
#[test]
fn ipv4_tcp_syn_is_forwarded() {
    syn_opens_a_flow("ipv4_tcp_syn", VIP4.into(), &Pkt::tcp4(40000, TCP_SYN));
}

/// IPv6 TCP SYN to a VIP.
#[test]
fn ipv6_tcp_syn_is_forwarded() {
    syn_opens_a_flow("ipv6_tcp_syn", VIP6.into(), &Pkt::tcp6(40000, TCP_SYN));
}

/// One step of a TCP flow: flags sent, state and (active, inactive) of the
/// flow's backend afterwards.
struct Step {
    flags: u8,
    state: u32,
    active: u64,
    inactive: u64,
}

/// Sends `steps` of one TCP flow from client port 40000, starting with a
/// SYN, and checks that every packet goes to slot 0 (the SYN's choice) while
/// the flow's state and slot 0's counts follow the IPVS input-only table. A
/// second flow opened after the SYN goes to slot 1 (slot 0 is busier), which
/// shows that the first flow's packets follow the table, not the scheduler.
fn tcp_flow_follows_states(name: &str, vip: IpAddr, pkt: impl Fn(u16, u8) -> Pkt, steps: &[Step]) {
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service(SERVICE_ID, vip, PROTO_TCP, &[up(100), up(100)]);
    let syn = pkt(40000, TCP_SYN);
    let mut bytes = 0;
    let frame = syn.build();
    bytes += l3(&frame);
    case.send("SYN", &frame, Expect::Tx(syn.forwarded(SERVICE_ID, 0)));
    let mut last_seen = case.expect_flow("SYN", &syn, SERVICE_ID, 0, STATE_SYN_RECV);
    case.expect_conns("SYN", SERVICE_ID, 0, 0, 1);

    let other = pkt(40001, TCP_SYN);
    let other_frame = other.build();
    case.send(
        "other SYN",
        &other_frame,
        Expect::Tx(other.forwarded(SERVICE_ID, 1)),
    );
    case.expect_conns("other SYN", SERVICE_ID, 1, 0, 1);

    for (i, step) in steps.iter().enumerate() {
        let label = format!("step {i} flags {:#04x}", step.flags);
        let p = pkt(40000, step.flags).with_payload(if step.flags & TCP_PSH != 0 {
            b"data"
        } else {
            b""
        });
        let frame = p.build();
        bytes += l3(&frame);
        case.send(&label, &frame, Expect::Tx(p.forwarded(SERVICE_ID, 0)));
        let seen = case.expect_flow(&label, &p, SERVICE_ID, 0, step.state);
        assert!(
            seen >= last_seen,
            "{name}/{label}: last_seen_ns went backwards"
        );
        last_seen = seen;
        case.expect_conns(&label, SERVICE_ID, 0, step.active, step.inactive);
        case.expect_conns(&label, SERVICE_ID, 1, 0, 1);
    }
    let packets = 1 + steps.len() as u64;
    assert_eq!(
        case.backend_stats(SERVICE_ID, 0),
        counted(packets, bytes, 1),
        "{name}: backend 0 stats"
    );
    assert_eq!(
        case.backend_stats(SERVICE_ID, 1),
        counted(1, l3(&other_frame), 1),
        "{name}: backend 1 stats"
    );
    assert_eq!(
        case.service_stats(SERVICE_ID),
        counted(packets + 1, bytes + l3(&other_frame), 2),
        "{name}: service stats"
    );
    assert_eq!(case.flow_count(), 2, "{name}: flows");
}

/// The full life of a flow: handshake, data, FIN, a late ACK, RST.
const FULL_LIFE: [Step; 5] = [
    Step {
        flags: TCP_ACK,
        state: STATE_ESTABLISHED,
        active: 1,
        inactive: 0,
    },
    Step {
        flags: TCP_ACK | TCP_PSH,
        state: STATE_ESTABLISHED,
        active: 1,
        inactive: 0,
    },
    Step {
        flags: TCP_FIN | TCP_ACK,
        state: STATE_FIN_WAIT,
        active: 0,
        inactive: 1,
    },
    Step {
        flags: TCP_ACK,
        state: STATE_FIN_WAIT,
        active: 0,
        inactive: 1,
    },
    Step {
        flags: TCP_RST,
        state: STATE_CLOSE,
        active: 0,
        inactive: 1,
    },
];

/// An established flow reset by the client, and a SYN retransmitted after
/// the ACK (which does not reopen the handshake).
const RESET_LIFE: [Step; 3] = [
    Step {
        flags: TCP_ACK,
        state: STATE_ESTABLISHED,
        active: 1,
        inactive: 0,
    },
    Step {
        flags: TCP_SYN,
        state: STATE_ESTABLISHED,
        active: 1,
        inactive: 0,
    },
    Step {
        flags: TCP_RST | TCP_ACK,
        state: STATE_CLOSE,
        active: 0,
        inactive: 1,
    },
];

/// IPv4: SYN, ACK, data, FIN, ACK, RST on one flow.
#[test]
fn ipv4_tcp_flow_life() {
    tcp_flow_follows_states("ipv4_tcp_flow_life", VIP4.into(), Pkt::tcp4, &FULL_LIFE);
}

/// IPv6: SYN, ACK, data, FIN, ACK, RST on one flow.
#[test]
fn ipv6_tcp_flow_life() {
    tcp_flow_follows_states("ipv6_tcp_flow_life", VIP6.into(), Pkt::tcp6, &FULL_LIFE);
}

/// IPv4: SYN, ACK, SYN again, RST from ESTABLISHED.
#[test]
fn ipv4_tcp_flow_reset() {
    tcp_flow_follows_states("ipv4_tcp_flow_reset", VIP4.into(), Pkt::tcp4, &RESET_LIFE);
}

/// UDP flows are forwarded, recorded in STATE_UDP and counted inactive; the
/// second datagram of a flow follows the first.
fn udp_flow(name: &str, vip: IpAddr, pkt: impl Fn(u16) -> Pkt) {
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service(SERVICE_ID, vip, PROTO_UDP, &[up(1), up(1)]);
    case.service(DECOY_ID, vip, PROTO_TCP, &[up(1)]);
    let first = pkt(5353).with_payload(b"query");
    let first_frame = first.build();
    case.send(
        "first datagram",
        &first_frame,
        Expect::Tx(first.forwarded(SERVICE_ID, 0)),
    );
    case.expect_flow("first datagram", &first, SERVICE_ID, 0, STATE_UDP);
    case.expect_conns("first datagram", SERVICE_ID, 0, 0, 1);
    // Slot 0 now has one inactive flow, so a new flow goes to slot 1 ...
    let other = pkt(5354);
    case.forward("other flow", &other, SERVICE_ID, 1);
    // ... and slot 0 is the less loaded one again after that, but the first
    // flow stays on slot 0 either way.
    let second = pkt(5353).with_payload(b"a longer second datagram");
    let second_frame = second.build();
    case.send(
        "second datagram",
        &second_frame,
        Expect::Tx(second.forwarded(SERVICE_ID, 0)),
    );
    case.expect_flow("second datagram", &second, SERVICE_ID, 0, STATE_UDP);
    case.expect_conns("second datagram", SERVICE_ID, 0, 0, 1);
    case.expect_conns("second datagram", SERVICE_ID, 1, 0, 1);
    assert_eq!(
        case.backend_stats(SERVICE_ID, 0),
        counted(2, l3(&first_frame) + l3(&second_frame), 1),
        "{name}: backend 0 stats"
    );
    assert_eq!(
        case.service_stats(SERVICE_ID).new_conns,
        2,
        "{name}: service new_conns"
    );
    assert_eq!(
        case.service_stats(DECOY_ID),
        Counters::default(),
        "{name}: decoy stats"
    );
}

/// IPv4 UDP flow.
#[test]
fn ipv4_udp_flow() {
    udp_flow("ipv4_udp_flow", VIP4.into(), Pkt::udp4);
}

/// IPv6 UDP flow.
#[test]
fn ipv6_udp_flow() {
    udp_flow("ipv6_udp_flow", VIP6.into(), Pkt::udp6);
}

/// By default only a SYN opens a TCP flow: an ACK, a FIN, a RST or a bare
/// segment of a flow the tables do not know is dropped as `drop_no_flow`
/// and opens nothing, so a flood of spoofed ACKs leaves the tables alone;
/// with `sloppy_tcp` such a packet is scheduled (an ACK as ESTABLISHED).
/// A SYN's flow then takes every packet, and UDP is not affected.
#[test]
fn only_a_syn_opens_a_tcp_flow() {
    let name = "syn_only";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service_with_flags(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1)], 0);
    case.service_with_flags(DECOY_ID, VIP6.into(), PROTO_TCP, &[up(1)], 0);
    let strays = [
        ("ACK", Pkt::tcp4(40000, TCP_ACK)),
        ("data", Pkt::tcp4(40001, TCP_ACK | TCP_PSH)),
        ("FIN", Pkt::tcp4(40002, TCP_FIN | TCP_ACK)),
        ("RST", Pkt::tcp4(40003, TCP_RST)),
        ("no flags", Pkt::tcp4(40004, 0)),
        ("IPv6 ACK", Pkt::tcp6(40005, TCP_ACK)),
    ];
    for (label, pkt) in &strays {
        case.send(label, &pkt.build(), Expect::Drop(REASON_NO_FLOW));
    }
    assert_eq!(case.flow_count(), 0, "{name}: flows opened by strays");

    case.forward("SYN", &Pkt::tcp4(40000, TCP_SYN), SERVICE_ID, 0);
    let ack = Pkt::tcp4(40000, TCP_ACK);
    case.forward("its ACK", &ack, SERVICE_ID, 0);
    case.expect_flow("its ACK", &ack, SERVICE_ID, 0, STATE_ESTABLISHED);

    case.service_with_flags(
        SERVICE_ID,
        VIP4.into(),
        PROTO_TCP,
        &[up(1)],
        SERVICE_FLAG_SLOPPY_TCP,
    );
    let stray = Pkt::tcp4(40010, TCP_ACK);
    case.forward("sloppy_tcp: a stray ACK", &stray, SERVICE_ID, 0);
    case.expect_flow(
        "sloppy_tcp: a stray ACK",
        &stray,
        SERVICE_ID,
        0,
        STATE_ESTABLISHED,
    );
}
