//! Packet fixtures for the XDP data path, in the style of katran's
//! `lib/testing/fixtures`.
//!
//! Every case loads a fresh [`Datapath`] (connection tables of
//! [`CAPACITY`] entries), provisions its maps through the same
//! `lb::datapath` functions the daemon uses, runs hand-built frames through
//! the real program with `BPF_PROG_TEST_RUN` and compares the verdict, the
//! output frame (built independently from the input: for `XDP_TX` the input
//! with its two MAC addresses replaced, for every other verdict the input
//! itself), the per-reason verdict counters (one packet, frame length minus
//! 14 bytes, under exactly one reason) and, where the case is about them, the
//! connection tables (IPv4 and IPv6), the per-CPU flow caches, the
//! per-backend connection counts and the per-service and per-backend
//! statistics. A mismatch panics with the
//! case name and the input, expected and actual frames in hex.
//!
//! Without `ctx_in`, the kernel runs the program as if the frame had arrived
//! on the loopback device (ifindex [`LO_IFINDEX`]); backends are provisioned
//! as reached through that NIC, with the director NIC's MAC [`NIC_MAC`].
//!
//! The program needs root (or CAP_BPF + CAP_NET_ADMIN). Without it every test
//! prints `SKIPPED (needs root)` to stderr and returns, unless `CI` is set, in
//! which case it fails.

use std::{
    collections::BTreeMap,
    io::{self, ErrorKind},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::RangeInclusive,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, HashMap, MapData},
    programs::ProgramError,
    util::nr_cpus,
};
use lb::{
    datapath::{Datapath, MAP_NAMES, Maps, array_get, service_key},
    sweeper,
};
use lb_common::{
    BACKEND_STATE_DOWN, BACKEND_STATE_EMPTY, BACKEND_STATE_REMOVED, BackendConns, CONNTRACK4_MAP,
    CONNTRACK6_MAP, Counters, FAMILY_IPV4, FLOW_CACHE_PERIOD_SHIFT, FLOW_CACHE_WAYS,
    FLOW_CACHE4_MAP, FLOW_CACHE6_MAP, Flow, FlowKey, LoadTree, MAX_BACKENDS, MAX_SERVICES,
    PROTO_TCP, PROTO_UDP, REASON_FORWARDED, REASON_FRAGMENT, REASON_INTERNAL, REASON_MALFORMED,
    REASON_NO_BACKEND, REASON_NO_SERVICE, REASON_NOT_IP, REASON_NOT_L4, SERVICES_MAP, Service,
    conn_state::{
        STATE_CLOSE, STATE_ESTABLISHED, STATE_FIN_WAIT, STATE_SYN_RECV, STATE_UDP, TCP_ACK,
        TCP_FIN, TCP_RST, TCP_SYN, Timeouts, state_name,
    },
    flow_cache_index, flow_cache_set, wlc,
};
use lb_tests::{
    VIP4, VIP6,
    frame::{
        CLIENT4, CLIENT6, ETH_LEN, Ext, Ip, L4, PORT, Pkt, TCP_PSH, arp_request, hex, lldp_frame,
    },
    xdp_case::{
        CAPACITY, Case, DECOY_ID, Expect, Real, SERVICE_ID, Sent, XDP_DROP, XDP_TX, action_name,
        backend_set, counted, l3, loud, privileged, up,
    },
};

// ---------------------------------------------------------------------------
// New flows
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// One connection table per address family
// ---------------------------------------------------------------------------

/// Bytes of a connection-table value ([`Flow`]).
const FLOW_VALUE_LEN: usize = 16;
/// Bytes of a [`CONNTRACK4_MAP`] key (`lb_common::FlowKey4`).
const FLOW_KEY4_LEN: usize = 16;
/// Bytes of a [`CONNTRACK6_MAP`] key (`lb_common::FlowKey6`).
const FLOW_KEY6_LEN: usize = 40;

/// A connection-table entry as the kernel stores it.
struct RawFlow {
    /// The key's bytes.
    key: Vec<u8>,
    /// The value's bytes.
    value: Vec<u8>,
}

/// Every entry of the data path's map `table` as the kernel stores it,
/// read through a handle opened by map id, apart from
/// `lb::datapath::Maps` and its types. Checks the map's key and value
/// sizes first.
fn raw_entries<const KEY_LEN: usize>(case: &Case, table: &str) -> Vec<RawFlow> {
    let name = &case.name;
    let map = case.map_by_name(table, KEY_LEN, FLOW_VALUE_LEN);
    let raw = HashMap::<MapData, [u8; KEY_LEN], [u8; FLOW_VALUE_LEN]>::try_from(map)
        .unwrap_or_else(|e| panic!("{name}: {table} as raw bytes: {e}"));
    raw.iter()
        .map(|entry| {
            let (key, value) = entry.unwrap_or_else(|e| panic!("{name}: walking {table}: {e}"));
            RawFlow {
                key: key.to_vec(),
                value: value.to_vec(),
            }
        })
        .collect()
}

/// Where the transport ports of a plain (option-less) frame start.
fn ports_offset(frame: &[u8]) -> usize {
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => ETH_LEN + 20,
        0x86dd => ETH_LEN + 40,
        ethertype => panic!("not IP: ethertype {ethertype:#06x}"),
    }
}

/// The connection-table key bytes the data path must store for a plain
/// (option-less) IPv4 or IPv6 frame, taken from the frame's own bytes:
/// source and destination address as on the wire, then both ports in host
/// byte order, the protocol number and zero padding.
fn key_bytes_of_frame(frame: &[u8]) -> Vec<u8> {
    let l4 = ports_offset(frame);
    let (addrs, proto) = match l4 - ETH_LEN {
        20 => (&frame[ETH_LEN + 12..ETH_LEN + 20], frame[ETH_LEN + 9]),
        _ => (&frame[ETH_LEN + 8..ETH_LEN + 40], frame[ETH_LEN + 6]),
    };
    let port_at = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]).to_ne_bytes();
    let mut key = addrs.to_vec();
    key.extend(port_at(l4));
    key.extend(port_at(l4 + 2));
    key.extend([proto, 0, 0, 0]);
    key
}

/// The value bytes of a flow seen at `last_seen_ns`, bound to `slot` of
/// service `id` in `state`: the time, the three 16-bit fields in host byte
/// order and zero padding.
fn flow_bytes(last_seen_ns: u64, id: u16, slot: u16, state: u16) -> Vec<u8> {
    let mut value = last_seen_ns.to_ne_bytes().to_vec();
    for field in [id, slot, state, 0] {
        value.extend(field.to_ne_bytes());
    }
    value
}

/// A new flow is recorded in the table of its address family only, under
/// the 16-byte (IPv4) or 40-byte (IPv6) key the frame's addresses, ports and
/// protocol give, with a 16-byte value naming its service, backend slot and
/// state. A first flow from another client port takes slot 0, so the
/// measured flow is on slot 1 and every field of its value is nonzero. The
/// flow is also found through `Maps::flow` and walked by `Maps::flows` as
/// the key of its family.
fn flow_lands_in_its_family_table(name: &str, vip: IpAddr, pkt: impl Fn(u16) -> Pkt) {
    let Some(mut case) = Case::new(name) else {
        return;
    };
    let first = pkt(40000);
    let proto = first.proto();
    let state = if proto == PROTO_TCP {
        STATE_SYN_RECV
    } else {
        STATE_UDP
    };
    case.service(SERVICE_ID, vip, proto, &[up(100), up(100), up(100)]);
    case.forward("first flow", &first, SERVICE_ID, 0);
    let measured = pkt(40001);
    let frame = measured.build();
    case.forward("measured flow", &measured, SERVICE_ID, 1);
    let last_seen = case.expect_flow("measured flow", &measured, SERVICE_ID, 1, state);

    let expected_key = key_bytes_of_frame(&frame);
    let expected_value = flow_bytes(last_seen, SERVICE_ID as u16, 1, state as u16);
    let (own_table, raw) = match vip {
        IpAddr::V4(_) => (
            CONNTRACK4_MAP,
            raw_entries::<FLOW_KEY4_LEN>(&case, CONNTRACK4_MAP),
        ),
        IpAddr::V6(_) => (
            CONNTRACK6_MAP,
            raw_entries::<FLOW_KEY6_LEN>(&case, CONNTRACK6_MAP),
        ),
    };
    assert_eq!(raw.len(), 2, "{name}: entries in {own_table}");
    let entry = raw
        .iter()
        .find(|entry| entry.key == expected_key)
        .unwrap_or_else(|| {
            let keys: Vec<String> = raw.iter().map(|entry| hex(&entry.key)).collect();
            panic!(
                "{name}: no {own_table} key equals the frame's\nexpected:\n{}found:\n{}",
                hex(&expected_key),
                keys.join("")
            )
        });
    assert_eq!(
        entry.value,
        expected_value,
        "{name}: {own_table} value bytes\nexpected:\n{}actual:\n{}",
        hex(&expected_value),
        hex(&entry.value)
    );
    let expected_counts = match vip {
        IpAddr::V4(_) => (2, 0),
        IpAddr::V6(_) => (0, 2),
    };
    assert_eq!(
        case.flows_per_table(),
        expected_counts,
        "{name}: flows in ({CONNTRACK4_MAP}, {CONNTRACK6_MAP})"
    );
    let mut walked: Vec<FlowKey> = case.dp.maps.flows().map(|(key, _)| key).collect();
    walked.sort_by_key(FlowKey::client_port);
    assert_eq!(
        walked,
        [first.flow_key(), measured.flow_key()],
        "{name}: Maps::flows"
    );
}

/// A TCP flow over IPv4 goes to CONNTRACK4.
#[test]
fn ipv4_tcp_flow_is_in_conntrack4() {
    flow_lands_in_its_family_table("conntrack4_tcp", VIP4.into(), |sport| {
        Pkt::tcp4(sport, TCP_SYN)
    });
}

/// A UDP flow over IPv4 goes to CONNTRACK4.
#[test]
fn ipv4_udp_flow_is_in_conntrack4() {
    flow_lands_in_its_family_table("conntrack4_udp", VIP4.into(), Pkt::udp4);
}

/// A TCP flow over IPv6 goes to CONNTRACK6.
#[test]
fn ipv6_tcp_flow_is_in_conntrack6() {
    flow_lands_in_its_family_table("conntrack6_tcp", VIP6.into(), |sport| {
        Pkt::tcp6(sport, TCP_SYN)
    });
}

/// A UDP flow over IPv6 goes to CONNTRACK6.
#[test]
fn ipv6_udp_flow_is_in_conntrack6() {
    flow_lands_in_its_family_table("conntrack6_udp", VIP6.into(), Pkt::udp6);
}

/// The two tables are independent: IPv4 and IPv6 flows of the same client
/// port to services on the same port each get their own entry, deleting one
/// (`Maps::remove_flow`) leaves the other, and a flow the control plane
/// writes (`Maps::insert_flow`) lands in its family's table and is
/// forwarded as recorded.
#[test]
fn ipv4_and_ipv6_flows_are_kept_apart() {
    let name = "tables_apart";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1)]);
    case.service(DECOY_ID, VIP6.into(), PROTO_TCP, &[up(1), up(1)]);
    let syn4 = Pkt::tcp4(40000, TCP_SYN);
    let syn6 = Pkt::tcp6(40000, TCP_SYN);
    case.forward("IPv4 SYN", &syn4, SERVICE_ID, 0);
    case.forward("IPv6 SYN", &syn6, DECOY_ID, 0);
    assert_eq!(case.flows_per_table(), (1, 1), "{name}: flows per table");
    assert_eq!(case.flow_count(), 2, "{name}: Maps::flow_count");
    assert!(
        case.dp.maps.remove_flow(&syn6.flow_key()),
        "{name}: removing the IPv6 flow"
    );
    assert_eq!(case.flows_per_table(), (1, 0), "{name}: after the removal");
    assert!(
        !case.dp.maps.remove_flow(&syn6.flow_key()),
        "{name}: removing the IPv6 flow twice"
    );
    case.expect_flow("after the removal", &syn4, SERVICE_ID, 0, STATE_SYN_RECV);
    // The IPv6 flow is new again: scheduled afresh, on the idle slot 1.
    let ack6 = Pkt::tcp6(40000, TCP_ACK);
    case.forward("IPv6 ACK", &ack6, DECOY_ID, 1);
    case.expect_flow("IPv6 ACK", &ack6, DECOY_ID, 1, STATE_ESTABLISHED);
    // A flow written by the control plane is forwarded as recorded.
    let planted = Pkt::tcp6(40001, TCP_ACK);
    let flow = Flow {
        last_seen_ns: sweeper::monotonic_ns(),
        service_id: DECOY_ID as u16,
        backend_slot: 1,
        state: STATE_ESTABLISHED as u16,
        _pad: 0,
    };
    case.dp
        .maps
        .insert_flow(&planted.flow_key(), &flow)
        .unwrap_or_else(|e| panic!("{name}: insert_flow: {e:#}"));
    assert_eq!(case.flows_per_table(), (1, 2), "{name}: after insert_flow");
    case.forward("planted flow", &planted, DECOY_ID, 1);
    assert_eq!(
        case.service_stats(DECOY_ID).new_conns,
        2,
        "{name}: the planted flow is not a new connection"
    );
}

// ---------------------------------------------------------------------------
// Traffic that is not for a service
// ---------------------------------------------------------------------------

/// Frames that are IP but not for a service (or not TCP/UDP) pass to the
/// director's stack byte for byte, counted under their reason, and create no
/// flow and no service statistics.
#[test]
fn non_vip_traffic_passes_untouched() {
    let other_vip4 = Ipv4Addr::new(192, 0, 2, 201);
    let other_vip6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x201);
    // The IPv4 VIP's bytes at the start of an IPv6 address: the key's family
    // must keep it from matching the IPv4 service.
    let v4_bytes_in_v6 = Ipv6Addr::from([192, 0, 2, 200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let tcp = |sport, dport| L4::Tcp {
        sport,
        dport,
        flags: TCP_SYN,
    };
    let cases: Vec<(&str, Pkt, u32)> = vec![
        (
            "other IPv4 address",
            Pkt::v4(CLIENT4, other_vip4, tcp(40000, PORT)),
            REASON_NO_SERVICE,
        ),
        (
            "other TCP port",
            Pkt::v4(CLIENT4, VIP4, tcp(40000, 22)),
            REASON_NO_SERVICE,
        ),
        (
            "VIP port as source port",
            Pkt::v4(CLIENT4, VIP4, tcp(PORT, 443)),
            REASON_NO_SERVICE,
        ),
        ("UDP to a TCP service", Pkt::udp4(40000), REASON_NO_SERVICE),
        (
            "ICMP echo to the VIP",
            Pkt::v4(CLIENT4, VIP4, L4::Echo),
            REASON_NOT_L4,
        ),
        (
            "other IPv6 address",
            Pkt::v6(CLIENT6, other_vip6, tcp(40000, PORT)),
            REASON_NO_SERVICE,
        ),
        (
            "IPv6 UDP to a TCP service",
            Pkt::udp6(40000),
            REASON_NO_SERVICE,
        ),
        (
            "IPv4 VIP bytes in IPv6",
            Pkt::v6(CLIENT6, v4_bytes_in_v6, tcp(40000, PORT)),
            REASON_NO_SERVICE,
        ),
        (
            "ICMPv6 echo to the VIP",
            Pkt::v6(CLIENT6, VIP6, L4::Echo),
            REASON_NOT_L4,
        ),
        (
            "ICMPv6 after extension headers",
            Pkt::v6(CLIENT6, VIP6, L4::Echo).with_ext(&[Ext::HopByHop(8), Ext::DestOpts(8)]),
            REASON_NOT_L4,
        ),
    ];
    for (label, pkt, reason) in cases {
        let name = format!("non_vip_traffic: {label}");
        let Some(mut case) = Case::new(&name) else {
            return;
        };
        case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1)]);
        case.service(DECOY_ID, VIP6.into(), PROTO_TCP, &[up(1)]);
        case.send(label, &pkt.build(), Expect::Pass(reason));
        assert_eq!(case.flow_count(), 0, "{name}: flows");
        for id in [SERVICE_ID, DECOY_ID] {
            assert_eq!(
                case.service_stats(id),
                Counters::default(),
                "{name}: stats of service {id}"
            );
            assert_eq!(
                case.conns(id, 0),
                BackendConns::default(),
                "{name}: conns of service {id}"
            );
        }
    }
}

/// Traffic to a port no service uses (for its protocol) is passed by the
/// port prefilter byte for byte, counted as no-service, and leaves both
/// connection tables empty, for IPv4 and IPv6, TCP and UDP, whatever the
/// TCP flags.
#[test]
fn unused_ports_pass_and_record_no_flow() {
    let frames: Vec<(String, Pkt)> = [(IpAddr::from(VIP4), "IPv4"), (IpAddr::from(VIP6), "IPv6")]
        .into_iter()
        .flat_map(|(vip, family)| {
            let to = move |l4| match vip {
                IpAddr::V4(vip) => Pkt::v4(CLIENT4, vip, l4),
                IpAddr::V6(vip) => Pkt::v6(CLIENT6, vip, l4),
            };
            let tcp = move |sport, dport, flags| {
                to(L4::Tcp {
                    sport,
                    dport,
                    flags,
                })
            };
            [
                ("TCP SYN to port 22", tcp(40000, 22, TCP_SYN)),
                ("TCP ACK to port 22", tcp(40000, 22, TCP_ACK)),
                ("TCP SYN to the next port", tcp(40000, PORT + 1, TCP_SYN)),
                ("TCP SYN to port 0", tcp(40000, 0, TCP_SYN)),
                ("TCP SYN to port 65535", tcp(40000, 65535, TCP_SYN)),
                ("TCP from the service port", tcp(PORT, 443, TCP_SYN)),
                (
                    "UDP to port 53",
                    to(L4::Udp {
                        sport: 40000,
                        dport: 53,
                    }),
                ),
                (
                    "UDP to the service port (TCP only)",
                    to(L4::Udp {
                        sport: 40000,
                        dport: PORT,
                    }),
                ),
            ]
            .map(|(label, pkt)| (format!("{family} {label}"), pkt.with_payload(b"data")))
        })
        .collect();
    for (label, pkt) in frames {
        let name = format!("unused_port: {label}");
        let Some(mut case) = Case::new(&name) else {
            return;
        };
        case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1)]);
        case.service(DECOY_ID, VIP6.into(), PROTO_TCP, &[up(1)]);
        case.send(&label, &pkt.build(), Expect::Pass(REASON_NO_SERVICE));
        assert_eq!(
            case.flows_per_table(),
            (0, 0),
            "{name}: flows in ({CONNTRACK4_MAP}, {CONNTRACK6_MAP})"
        );
        for id in [SERVICE_ID, DECOY_ID] {
            assert_eq!(
                case.service_stats(id),
                Counters::default(),
                "{name}: stats of service {id}"
            );
            assert_eq!(
                case.conns(id, 0),
                BackendConns::default(),
                "{name}: conns of service {id}"
            );
        }
    }
}

/// ARP and LLDP pass as not IP.
#[test]
fn non_ip_frames_pass() {
    for (label, frame) in [
        ("ARP request for the VIP", arp_request()),
        ("LLDP", lldp_frame()),
    ] {
        let name = format!("non_ip: {label}");
        let Some(mut case) = Case::new(&name) else {
            return;
        };
        case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1)]);
        case.send(label, &frame, Expect::Pass(REASON_NOT_IP));
        assert_eq!(case.flow_count(), 0, "{name}: flows");
    }
}

// ---------------------------------------------------------------------------
// Header variants
// ---------------------------------------------------------------------------

/// IPv4 options of `len` bytes: a Router Alert, then NOPs, then an End of
/// Options List (for lengths above 4).
fn ipv4_options(len: usize) -> Vec<u8> {
    let mut options = vec![0x94, 0x04, 0x00, 0x00];
    options.resize(len, 0x01);
    if len > 4 {
        options[len - 1] = 0x00;
    }
    options
}

/// IPv4 headers with options (IHL 6 to 15) are parsed at the right offset:
/// the flow is forwarded and recorded with the real ports.
#[test]
fn ipv4_options_are_skipped() {
    for ihl in 6u16..=15 {
        let name = format!("ipv4_options: ihl {ihl}");
        let Some(mut case) = Case::new(&name) else {
            return;
        };
        case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1)]);
        let syn =
            Pkt::tcp4(40000 + ihl, TCP_SYN).with_options(&ipv4_options(usize::from(ihl - 5) * 4));
        let frame = syn.build();
        assert_eq!(frame[ETH_LEN] & 0x0f, ihl as u8, "{name}: builder IHL");
        case.send("SYN", &frame, Expect::Tx(syn.forwarded(SERVICE_ID, 0)));
        case.expect_flow("SYN", &syn, SERVICE_ID, 0, STATE_SYN_RECV);
        assert_eq!(case.flow_count(), 1, "{name}: flows");
    }
}

/// IPv6 extension header chains the parser walks (at most four headers) are
/// skipped; a fifth header, or a fragment header anywhere, hands the packet
/// to the stack.
#[test]
fn ipv6_extension_headers() {
    use Ext::*;
    let forwarded: Vec<(&str, Pkt)> = vec![
        (
            "hop-by-hop + destination options",
            Pkt::tcp6(40000, TCP_SYN).with_ext(&[HopByHop(8), DestOpts(16)]),
        ),
        (
            "destination options (UDP)",
            Pkt::udp6(40000).with_ext(&[DestOpts(24)]),
        ),
        (
            "hop-by-hop + routing + AH + destination options",
            Pkt::tcp6(40000, TCP_SYN).with_ext(&[HopByHop(8), Routing(24), Auth(24), DestOpts(8)]),
        ),
        (
            "AH of 16 bytes",
            Pkt::tcp6(40000, TCP_SYN).with_ext(&[Auth(16)]),
        ),
    ];
    for (label, pkt) in forwarded {
        let name = format!("ipv6_ext: {label}");
        let Some(mut case) = Case::new(&name) else {
            return;
        };
        case.service(SERVICE_ID, VIP6.into(), pkt.proto(), &[up(1)]);
        case.forward(label, &pkt, SERVICE_ID, 0);
        let state = if pkt.proto() == PROTO_TCP {
            STATE_SYN_RECV
        } else {
            STATE_UDP
        };
        case.expect_flow(label, &pkt, SERVICE_ID, 0, state);
    }
    let too_long = Pkt::tcp6(40000, TCP_SYN).with_ext(&[
        HopByHop(8),
        DestOpts(8),
        Routing(8),
        DestOpts(8),
        Auth(16),
    ]);
    let Some(mut case) = Case::new("ipv6_ext: five headers") else {
        return;
    };
    case.service(SERVICE_ID, VIP6.into(), PROTO_TCP, &[up(1)]);
    case.send(
        "five headers",
        &too_long.build(),
        Expect::Pass(REASON_NOT_L4),
    );
    assert_eq!(case.flow_count(), 0, "ipv6_ext: five headers: flows");
}

/// Fragments (even a first fragment carrying the whole TCP header) pass to
/// the stack; DF alone is not a fragment.
#[test]
fn fragments_pass_to_the_stack() {
    let syn4 = || Pkt::tcp4(40000, TCP_SYN);
    let syn6 = || Pkt::tcp6(40000, TCP_SYN);
    let cases: Vec<(&str, Pkt, Expect)> = vec![
        (
            "IPv4 first fragment (MF)",
            syn4().with_frag(0x2000),
            Expect::Pass(REASON_FRAGMENT),
        ),
        (
            "IPv4 middle fragment (MF, offset 185)",
            syn4().with_frag(0x2000 | 185),
            Expect::Pass(REASON_FRAGMENT),
        ),
        (
            "IPv4 last fragment (offset 1)",
            syn4().with_frag(1),
            Expect::Pass(REASON_FRAGMENT),
        ),
        (
            "IPv6 first fragment",
            syn6().with_ext(&[Ext::Fragment {
                offset: 0,
                more: true,
            }]),
            Expect::Pass(REASON_FRAGMENT),
        ),
        (
            "IPv6 last fragment after hop-by-hop",
            syn6().with_ext(&[
                Ext::HopByHop(8),
                Ext::Fragment {
                    offset: 100,
                    more: false,
                },
            ]),
            Expect::Pass(REASON_FRAGMENT),
        ),
        (
            "IPv4 DF, no fragment",
            syn4().with_frag(0x4000),
            Expect::Tx(syn4().forwarded(SERVICE_ID, 0)),
        ),
        (
            "IPv4 no flags",
            syn4().with_frag(0),
            Expect::Tx(syn4().with_frag(0).forwarded(SERVICE_ID, 0)),
        ),
    ];
    for (label, pkt, expect) in cases {
        let name = format!("fragments: {label}");
        let Some(mut case) = Case::new(&name) else {
            return;
        };
        case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1)]);
        case.service(DECOY_ID, VIP6.into(), PROTO_TCP, &[up(1)]);
        let forwards = matches!(expect, Expect::Tx(_));
        case.send(label, &pkt.build(), expect);
        assert_eq!(case.flow_count(), usize::from(forwards), "{name}: flows");
    }
}

/// Inconsistent IP headers are dropped as malformed.
#[test]
fn bad_ip_headers_are_dropped() {
    let with_vihl = |vihl| {
        let mut p = Pkt::tcp4(40000, TCP_SYN);
        if let Ip::V4 { vihl: v, .. } = &mut p.ip {
            *v = Some(vihl);
        }
        p
    };
    let with_tot_len = |len| {
        let mut p = Pkt::tcp4(40000, TCP_SYN);
        if let Ip::V4 { tot_len, .. } = &mut p.ip {
            *tot_len = Some(len);
        }
        p
    };
    let with_v6_first_byte = |byte| {
        let mut p = Pkt::tcp6(40000, TCP_SYN);
        if let Ip::V6 { first_byte, .. } = &mut p.ip {
            *first_byte = Some(byte);
        }
        p
    };
    let mut cases: Vec<(String, Pkt)> = vec![
        ("IPv4 version 6".into(), with_vihl(0x65)),
        ("IPv4 version 0".into(), with_vihl(0x05)),
        ("IPv4 version 15".into(), with_vihl(0xf5)),
        ("IPv4 total length 19 < IHL*4".into(), with_tot_len(19)),
        ("IPv4 total length 0".into(), with_tot_len(0)),
        ("IPv6 version 4".into(), with_v6_first_byte(0x40)),
        ("IPv6 version 0".into(), with_v6_first_byte(0x00)),
    ];
    for ihl in 0..5u8 {
        cases.push((format!("IPv4 IHL {ihl}"), with_vihl(0x40 | ihl)));
    }
    for (label, pkt) in cases {
        let name = format!("bad_ip: {label}");
        let Some(mut case) = Case::new(&name) else {
            return;
        };
        case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1)]);
        case.service(DECOY_ID, VIP6.into(), PROTO_TCP, &[up(1)]);
        case.send(&label, &pkt.build(), Expect::Drop(REASON_MALFORMED));
        assert_eq!(case.flow_count(), 0, "{name}: flows");
    }
}

/// KNOWN BUG in lb-ebpf (`parse.rs`): the IPv4 total length and the IPv6
/// payload length are not checked against the transport header, so a
/// datagram too short to hold its TCP/UDP header is parsed from the bytes
/// that follow it in the frame (Ethernet padding, or anything a sender puts
/// there), scheduled and forwarded. Linux (and so IPVS) trims the packet to
/// its IP length and drops it; the data path should drop it as malformed
/// ("inconsistent headers", like a total length below IHL * 4). This test
/// states the correct behaviour and fails until `parse.rs` compares
/// `tot_len` with `header_len + transport header` (IPv6: `payload_len` with
/// the extension headers + transport header).
#[test]
fn bug_l4_header_beyond_ip_length_is_malformed() {
    let v4_len = |pkt: Pkt, len| {
        let mut p = pkt;
        if let Ip::V4 { tot_len, .. } = &mut p.ip {
            *tot_len = Some(len);
        }
        p
    };
    let v6_len = |pkt: Pkt, len| {
        let mut p = pkt;
        if let Ip::V6 { payload_len, .. } = &mut p.ip {
            *payload_len = Some(len);
        }
        p
    };
    let cases: Vec<(&str, Pkt)> = vec![
        (
            "IPv4 total length 20, TCP header after it",
            v4_len(Pkt::tcp4(40000, TCP_SYN), 20),
        ),
        (
            "IPv4 total length 30, half a TCP header",
            v4_len(Pkt::tcp4(40000, TCP_SYN), 30),
        ),
        (
            "IPv4 total length 24, half a UDP header",
            v4_len(Pkt::udp4(40000), 24),
        ),
        (
            "IPv6 payload length 8, TCP header",
            v6_len(Pkt::tcp6(40000, TCP_SYN), 8),
        ),
        (
            "IPv6 payload length 8, extension header + TCP",
            v6_len(Pkt::tcp6(40000, TCP_SYN).with_ext(&[Ext::DestOpts(8)]), 8),
        ),
    ];
    // Every case runs before the test fails, so the report shows them all.
    let mut wrong = Vec::new();
    for (label, pkt) in cases {
        let name = format!("bug_short_ip_length: {label}");
        let Some(mut case) = Case::new(&name) else {
            return;
        };
        let vip = match pkt.ip {
            Ip::V4 { .. } => IpAddr::from(VIP4),
            Ip::V6 { .. } => IpAddr::from(VIP6),
        };
        case.service(SERVICE_ID, vip, pkt.proto(), &[up(1)]);
        let frame = pkt.build();
        let (action, _) = case
            .run(&frame)
            .unwrap_or_else(|e| panic!("{name}: BPF_PROG_TEST_RUN failed: {e:#}"));
        if action != XDP_DROP || case.flow_count() != 0 {
            wrong.push(format!(
                "  {label}: {} and {} flow(s) recorded\n{}",
                action_name(action),
                case.flow_count(),
                hex(&frame)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "bug_short_ip_length: expected XDP_DROP (drop_malformed) and no flow for every case; \
         got:\n{}",
        wrong.join("")
    );
}

/// A valid frame cut at every length: cuts inside a header are dropped as
/// malformed, cuts inside the payload (headers complete) are forwarded as
/// they are, and cuts shorter than an Ethernet header are refused by the
/// kernel (`BPF_PROG_TEST_RUN` needs at least 14 bytes), so the program never
/// sees them.
fn truncations(name: &str, vip: IpAddr, pkt: &Pkt) {
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service(SERVICE_ID, vip, pkt.proto(), &[up(1)]);
    let frame = pkt.build();
    let expected_tx = pkt.forwarded(SERVICE_ID, 0);
    let layout = pkt.layout();
    let v4 = matches!(pkt.ip, Ip::V4 { .. });
    let l4_name = if pkt.proto() == PROTO_TCP {
        "TCP header"
    } else {
        "UDP header"
    };
    assert!(
        layout.l4_end < frame.len(),
        "{name}: the fixture needs a payload"
    );
    for cut in 0..frame.len() {
        let input = &frame[..cut];
        let region = match cut {
            c if c < ETH_LEN => "Ethernet header",
            c if c < layout.ip_fixed_end => {
                if v4 {
                    "IPv4 fixed header"
                } else {
                    "IPv6 header"
                }
            }
            c if c < layout.ip_end => {
                if v4 {
                    "IPv4 options"
                } else {
                    "IPv6 extension headers"
                }
            }
            c if c < layout.l4_end => l4_name,
            _ => "payload",
        };
        let label = format!("cut at {cut} (inside the {region})");
        if cut < ETH_LEN {
            match case.run(input) {
                Err(ProgramError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EINVAL) => {}
                other => {
                    panic!("{name}/{label}: expected EINVAL from BPF_PROG_TEST_RUN, got {other:?}")
                }
            }
        } else if cut < layout.l4_end {
            case.send(&label, input, Expect::Drop(REASON_MALFORMED));
        } else {
            case.send(&label, input, Expect::Tx(expected_tx[..cut].to_vec()));
        }
    }
    // Only the payload cuts reached the connection table, all as one flow.
    assert_eq!(case.flow_count(), 1, "{name}: flows");
    let payload_cuts = (frame.len() - layout.l4_end) as u64;
    assert_eq!(
        case.service_stats(SERVICE_ID).packets,
        payload_cuts,
        "{name}: forwarded packets"
    );
}

/// A data segment over IPv4 with 8 bytes of options.
#[test]
fn truncated_ipv4_tcp() {
    let pkt = Pkt::tcp4(40000, TCP_ACK | TCP_PSH)
        .with_options(&ipv4_options(8))
        .with_payload(b"payload");
    truncations("truncated_ipv4_tcp", VIP4.into(), &pkt);
}

/// A datagram over IPv4.
#[test]
fn truncated_ipv4_udp() {
    truncations(
        "truncated_ipv4_udp",
        VIP4.into(),
        &Pkt::udp4(40000).with_payload(b"payload"),
    );
}

/// A data segment over IPv6 behind hop-by-hop and destination options.
#[test]
fn truncated_ipv6_tcp() {
    let pkt = Pkt::tcp6(40000, TCP_ACK | TCP_PSH)
        .with_ext(&[Ext::HopByHop(8), Ext::DestOpts(16)])
        .with_payload(b"payload");
    truncations("truncated_ipv6_tcp", VIP6.into(), &pkt);
}

/// A datagram over IPv6 behind an authentication header.
#[test]
fn truncated_ipv6_udp() {
    let pkt = Pkt::udp6(40000)
        .with_ext(&[Ext::Auth(16)])
        .with_payload(b"payload");
    truncations("truncated_ipv6_udp", VIP6.into(), &pkt);
}

// ---------------------------------------------------------------------------
// Backend selection
// ---------------------------------------------------------------------------

/// A backend that stops taking new flows (`stopped`: weight 0, or down) gets
/// none, while the flow it already has continues through ESTABLISHED and FIN.
fn stopped_backend_keeps_its_flow(name: &str, stopped: Real) {
    let Some(mut case) = Case::new(name) else {
        return;
    };
    let vip = IpAddr::from(VIP4);
    case.service(SERVICE_ID, vip, PROTO_TCP, &[up(100), up(100)]);
    let syn = Pkt::tcp4(40000, TCP_SYN);
    case.forward("SYN before", &syn, SERVICE_ID, 0);
    case.backends(SERVICE_ID, vip, &[stopped, up(100)]);
    // With slot 0 usable, the second and fourth new flows would tie with it
    // (one inactive flow each side) and go to slot 0.
    for sport in 40001..40005 {
        let other = Pkt::tcp4(sport, TCP_SYN);
        case.forward(&format!("new flow {sport}"), &other, SERVICE_ID, 1);
    }
    case.expect_conns("new flows", SERVICE_ID, 1, 0, 4);
    let ack = Pkt::tcp4(40000, TCP_ACK);
    case.forward("ACK after", &ack, SERVICE_ID, 0);
    case.expect_flow("ACK after", &ack, SERVICE_ID, 0, STATE_ESTABLISHED);
    case.expect_conns("ACK after", SERVICE_ID, 0, 1, 0);
    let fin = Pkt::tcp4(40000, TCP_FIN | TCP_ACK);
    case.forward("FIN after", &fin, SERVICE_ID, 0);
    case.expect_flow("FIN after", &fin, SERVICE_ID, 0, STATE_FIN_WAIT);
    case.expect_conns("FIN after", SERVICE_ID, 0, 0, 1);
    assert_eq!(
        case.backend_stats(SERVICE_ID, 0).new_conns,
        1,
        "{name}: slot 0 new_conns"
    );
    assert_eq!(
        case.backend_stats(SERVICE_ID, 0).packets,
        3,
        "{name}: slot 0 packets"
    );
    assert_eq!(
        case.backend_stats(SERVICE_ID, 1).new_conns,
        4,
        "{name}: slot 1 new_conns"
    );
}

/// Weight 0 quiesces a backend.
#[test]
fn quiesced_backend_keeps_existing_flows() {
    stopped_backend_keeps_its_flow("quiesced_backend", up(0));
}

/// A backend down by health check takes no new flows.
#[test]
fn down_backend_keeps_existing_flows() {
    stopped_backend_keeps_its_flow(
        "down_backend",
        Real {
            weight: 100,
            state: BACKEND_STATE_DOWN,
        },
    );
}

/// A backend removed while flows use it (`lb backend remove`, or gone
/// from the config on reload) takes no new flows; its flows finish on it.
#[test]
fn removed_backend_finishes_its_flows() {
    stopped_backend_keeps_its_flow(
        "removed_backend",
        Real {
            weight: 0,
            state: BACKEND_STATE_REMOVED,
        },
    );
}

/// Backends that are in the set but may not take new flows (down, weight 0,
/// removed, empty) are never chosen. Every new flow goes where IPVS's wlc
/// ([`wlc::scan`]) says given the connection counts just before it, before
/// and after a health change moves a backend out and another in.
///
/// A scheduler tree whose root names a backend that may not take flows (a
/// race with a reload could leave one for a moment) makes the data path drop
/// the SYN as `drop_no_backend` rather than send it there; the next write of
/// the backends rebuilds the tree.
#[test]
fn unusable_backends_are_never_scheduled() {
    let name = "unusable_backends";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    let vip = IpAddr::from(VIP4);
    let down = |weight| Real {
        weight,
        state: BACKEND_STATE_DOWN,
    };
    let removed = Real {
        weight: 0,
        state: BACKEND_STATE_REMOVED,
    };
    let empty = Real {
        weight: 0,
        state: BACKEND_STATE_EMPTY,
    };
    // Slots 1, 3 and 6 may take flows; 0, 2, 4 and 5 may not.
    let before = [down(100), up(100), up(0), up(50), removed, empty, up(100)];
    // Slot 0 comes back up, slot 6 goes down.
    let after = [up(100), up(100), up(0), up(50), removed, empty, down(100)];
    case.service(SERVICE_ID, vip, PROTO_TCP, &before);

    let mut sport = 41000u16;
    let mut chosen = [0u64; 7];
    for (phase, reals, usable) in [
        ("before", &before, [1u32, 3, 6]),
        ("after", &after, [0, 1, 3]),
    ] {
        if phase == "after" {
            case.backends(SERVICE_ID, vip, reals);
        }
        // What lb wrote is the tree of the set now installed: its weights
        // (0 for every slot that may not take flows), root and winners.
        let installed = case.backend_set(SERVICE_ID);
        let mut expected = LoadTree::default();
        wlc::rebuild(&mut expected, &installed, &case.conn_set(SERVICE_ID));
        let tree = array_get(&case.dp.maps.wlc_tree, SERVICE_ID)
            .unwrap_or_else(|e| panic!("{name}: reading the tree: {e:#}"));
        assert_eq!(tree, expected, "{name}/{phase}: the tree in WLC_TREE");
        let weights: Vec<u32> = tree.weights[..7].to_vec();
        let usable_weights: Vec<u32> = (0..7u32)
            .map(|slot| {
                if usable.contains(&slot) {
                    reals[slot as usize].weight
                } else {
                    0
                }
            })
            .collect();
        assert_eq!(weights, usable_weights, "{name}/{phase}: tree weights");
        for _ in 0..30 {
            let want = wlc::scan(&case.backend_set(SERVICE_ID), &case.conn_set(SERVICE_ID))
                .unwrap_or_else(|| panic!("{name}/{phase}: the model finds no backend"));
            assert!(
                usable.contains(&want),
                "{name}/{phase}: the model chose unusable slot {want}"
            );
            let syn = Pkt::tcp4(sport, TCP_SYN);
            case.forward(&format!("{phase}: SYN {sport}"), &syn, SERVICE_ID, want);
            chosen[want as usize] += 1;
            sport += 1;
        }
    }
    for slot in 0..7u32 {
        assert_eq!(
            case.backend_stats(SERVICE_ID, slot).new_conns,
            chosen[slot as usize],
            "{name}: new_conns of slot {slot}"
        );
    }
    assert_eq!(
        [chosen[2], chosen[4], chosen[5]],
        [0, 0, 0],
        "{name}: never usable slots got flows"
    );
    assert!(
        chosen[0] > 0 && chosen[6] > 0,
        "{name}: slot 0 (after) and slot 6 (before) took flows: {chosen:?}"
    );

    // A stale tree naming slot 2 (weight 0) in every node.
    let mut stale = array_get(&case.dp.maps.wlc_tree, SERVICE_ID)
        .unwrap_or_else(|e| panic!("{name}: reading the tree: {e:#}"));
    stale.winners = [3; MAX_BACKENDS];
    case.dp
        .maps
        .wlc_tree
        .set(SERVICE_ID, stale, 0)
        .unwrap_or_else(|e| panic!("{name}: planting a stale tree: {e:#}"));
    let flows = case.flow_count();
    let syn = Pkt::tcp4(sport, TCP_SYN);
    case.send(
        "SYN with a stale tree",
        &syn.build(),
        Expect::Drop(REASON_NO_BACKEND),
    );
    assert_eq!(case.flow_count(), flows, "{name}: a flow was recorded");
    case.backends(SERVICE_ID, vip, &after);
    let want = wlc::scan(&case.backend_set(SERVICE_ID), &case.conn_set(SERVICE_ID));
    case.forward(
        "SYN after the tree was rebuilt",
        &syn,
        SERVICE_ID,
        want.expect("a usable backend"),
    );
}

/// A service without a usable backend drops new flows (counted as
/// no-backend) and records nothing.
#[test]
fn service_without_usable_backend_drops() {
    let down = Real {
        weight: 100,
        state: BACKEND_STATE_DOWN,
    };
    let empty = Real {
        weight: 100,
        state: BACKEND_STATE_EMPTY,
    };
    let cases: [(&str, &[Real]); 5] = [
        ("all weight 0", &[up(0), up(0)]),
        ("all down", &[down, down]),
        ("down and weight 0", &[down, up(0)]),
        ("no backends", &[]),
        ("all slots empty", &[empty, empty]),
    ];
    for (label, reals) in cases {
        let name = format!("no_backend: {label}");
        let Some(mut case) = Case::new(&name) else {
            return;
        };
        case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, reals);
        case.service(SERVICE_ID + 1, VIP4.into(), PROTO_UDP, reals);
        for (what, pkt) in [
            ("SYN", Pkt::tcp4(40000, TCP_SYN)),
            ("mid-flow ACK", Pkt::tcp4(40001, TCP_ACK)),
            ("UDP", Pkt::udp4(40002)),
        ] {
            case.send(what, &pkt.build(), Expect::Drop(REASON_NO_BACKEND));
        }
        assert_eq!(case.flow_count(), 0, "{name}: flows");
        for id in [SERVICE_ID, SERVICE_ID + 1] {
            assert_eq!(
                case.service_stats(id),
                Counters::default(),
                "{name}: service {id} stats"
            );
            let conns = case.conn_set(id);
            assert!(
                conns.conns.iter().all(|c| *c == BackendConns::default()),
                "{name}: service {id} connection counts moved"
            );
        }
    }
}

/// With weights 1000/500/800, every new flow goes where IPVS's wlc
/// ([`wlc::scan`]) says given the BACKEND_CONNS contents just before it;
/// most flows complete their handshake (active), every fourth stays half
/// open (inactive), so both terms of the overhead matter: the data path's
/// tree must follow each state change. The connection counts are checked
/// against a model after every packet.
#[test]
fn wlc_follows_the_reference_model() {
    let name = "wlc_reference";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    let weights = [1000, 500, 800];
    case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &weights.map(up));
    let set = case.backend_set(SERVICE_ID);
    let mut model = [BackendConns::default(); 3];
    let mut chosen = [0u64; 3];
    for i in 0..60u16 {
        let sport = 41000 + i;
        let before = case.conn_set(SERVICE_ID);
        let want = wlc::scan(&set, &before).expect("a usable backend");
        let syn = Pkt::tcp4(sport, TCP_SYN);
        let label = format!("flow {i} SYN");
        case.forward(&label, &syn, SERVICE_ID, want);
        case.expect_flow(&label, &syn, SERVICE_ID, want, STATE_SYN_RECV);
        let slot = want as usize;
        chosen[slot] += 1;
        model[slot].inactive += 1;
        if i % 4 != 3 {
            let ack = Pkt::tcp4(sport, TCP_ACK);
            let label = format!("flow {i} ACK");
            case.forward(&label, &ack, SERVICE_ID, want);
            model[slot].inactive -= 1;
            model[slot].active += 1;
        }
        assert_eq!(
            &case.conn_set(SERVICE_ID).conns[..3],
            &model,
            "{name}: counts after flow {i}"
        );
    }
    for slot in 0..3u32 {
        assert_eq!(
            case.backend_stats(SERVICE_ID, slot).new_conns,
            chosen[slot as usize],
            "{name}: new_conns of slot {slot}"
        );
    }
    assert!(
        chosen.iter().all(|&n| n > 0),
        "{name}: every backend got flows: {chosen:?}"
    );
    // Established flows split in the order of the weights (1000 > 800 > 500).
    assert!(
        model[0].active > model[2].active && model[2].active > model[1].active,
        "{name}: the established flows follow the weights: {model:?}"
    );
}

/// A flow whose backend was removed (slot emptied) is scheduled again on its
/// next packet: to another backend, as a new connection, in the state that
/// packet gives a new flow.
#[test]
fn flow_on_emptied_slot_is_rescheduled() {
    let name = "emptied_slot";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    let vip = IpAddr::from(VIP4);
    case.service(SERVICE_ID, vip, PROTO_TCP, &[up(100), up(100)]);
    let syn = Pkt::tcp4(40000, TCP_SYN);
    case.forward("SYN", &syn, SERVICE_ID, 0);
    let ack = Pkt::tcp4(40000, TCP_ACK);
    case.forward("ACK", &ack, SERVICE_ID, 0);
    case.expect_flow("ACK", &ack, SERVICE_ID, 0, STATE_ESTABLISHED);
    let removed = Real {
        weight: 0,
        state: BACKEND_STATE_EMPTY,
    };
    case.backends(SERVICE_ID, vip, &[removed, up(100)]);
    let data = Pkt::tcp4(40000, TCP_ACK | TCP_PSH).with_payload(b"more data");
    case.forward("data after removal", &data, SERVICE_ID, 1);
    case.expect_flow(
        "data after removal",
        &data,
        SERVICE_ID,
        1,
        STATE_ESTABLISHED,
    );
    case.expect_conns("data after removal", SERVICE_ID, 1, 1, 0);
    assert_eq!(
        case.backend_stats(SERVICE_ID, 1).new_conns,
        1,
        "{name}: slot 1 new_conns"
    );
    assert_eq!(
        case.service_stats(SERVICE_ID).new_conns,
        2,
        "{name}: service new_conns"
    );
    assert_eq!(case.flow_count(), 1, "{name}: flows");
    // Slot 0's stale count (active 1) is left for the control plane's sweeper.
}

/// A backend removed by shrinking the set (its slot past `len`, zeroed) loses
/// its flows the same way: they are scheduled again.
#[test]
fn flow_of_removed_last_backend_is_rescheduled() {
    let name = "shrunk_set";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    let vip = IpAddr::from(VIP4);
    case.service(SERVICE_ID, vip, PROTO_TCP, &[up(100), up(100)]);
    let first = Pkt::tcp4(40000, TCP_SYN);
    case.forward("SYN 1", &first, SERVICE_ID, 0);
    let second = Pkt::tcp4(40001, TCP_SYN);
    case.forward("SYN 2", &second, SERVICE_ID, 1);
    case.backends(SERVICE_ID, vip, &[up(100)]);
    let ack = Pkt::tcp4(40001, TCP_ACK);
    case.forward("ACK 2", &ack, SERVICE_ID, 0);
    case.expect_flow("ACK 2", &ack, SERVICE_ID, 0, STATE_ESTABLISHED);
    case.expect_conns("ACK 2", SERVICE_ID, 0, 1, 1);
    assert_eq!(
        case.backend_stats(SERVICE_ID, 0).new_conns,
        2,
        "{name}: slot 0 new_conns"
    );
}

/// A flow recorded under a service id that was retired (its backend set
/// emptied, its VIP renumbered) is scheduled in the new service.
#[test]
fn flow_of_replaced_service_is_rescheduled() {
    let name = "replaced_service";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    let vip = IpAddr::from(VIP6);
    case.service(SERVICE_ID, vip, PROTO_TCP, &[up(100), up(100)]);
    let syn = Pkt::tcp6(40000, TCP_SYN);
    case.forward("SYN", &syn, SERVICE_ID, 0);
    let ack = Pkt::tcp6(40000, TCP_ACK);
    case.forward("ACK", &ack, SERVICE_ID, 0);
    // Renumbering, as the control plane must do it (`Maps::set_service`):
    // empty the old backend set, then install the service under its new id.
    case.backends(SERVICE_ID, vip, &[]);
    case.service(DECOY_ID, vip, PROTO_TCP, &[up(100), up(100)]);
    let data = Pkt::tcp6(40000, TCP_ACK | TCP_PSH).with_payload(b"data");
    case.forward("data", &data, DECOY_ID, 0);
    case.expect_flow("data", &data, DECOY_ID, 0, STATE_ESTABLISHED);
    case.expect_conns("data", DECOY_ID, 0, 1, 0);
    assert_eq!(
        case.service_stats(DECOY_ID).new_conns,
        1,
        "{name}: new service new_conns"
    );
    assert_eq!(case.flow_count(), 1, "{name}: flows");
}

// ---------------------------------------------------------------------------
// Counters and maps
// ---------------------------------------------------------------------------

/// Verdict, service and backend byte counters add the frame length minus the
/// Ethernet header, Ethernet padding and jumbo-ish frames included.
#[test]
fn byte_counters_exclude_the_ethernet_header() {
    let name = "byte_counters";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1)]);
    // A 54-byte ACK padded to the 60-byte Ethernet minimum: the padding is
    // part of the frame, forwarded as it is and counted.
    let padded = Pkt::tcp4(40000, TCP_ACK).padded_to(60);
    let padded_frame = padded.build();
    assert_eq!(padded_frame.len(), 60);
    case.send(
        "padded ACK",
        &padded_frame,
        Expect::Tx(padded.forwarded(SERVICE_ID, 0)),
    );
    let big = Pkt::tcp4(40000, TCP_ACK | TCP_PSH).with_payload(&[0xa5; 1460]);
    let big_frame = big.build();
    assert_eq!(big_frame.len(), 1514);
    case.send(
        "full-size segment",
        &big_frame,
        Expect::Tx(big.forwarded(SERVICE_ID, 0)),
    );
    let passed = Pkt::v4(CLIENT4, VIP4, L4::Echo).with_payload(&[0x5a; 100]);
    case.send("ICMP", &passed.build(), Expect::Pass(REASON_NOT_L4));
    let total = counted(2, 46 + 1500, 1);
    assert_eq!(
        case.service_stats(SERVICE_ID),
        total,
        "{name}: service stats"
    );
    assert_eq!(
        case.backend_stats(SERVICE_ID, 0),
        total,
        "{name}: backend stats"
    );
    let verdicts = case.verdicts();
    assert_eq!(
        verdicts[REASON_FORWARDED as usize],
        counted(2, 46 + 1500, 0),
        "{name}: forwarded"
    );
    assert_eq!(
        verdicts[REASON_NOT_L4 as usize],
        counted(1, 20 + 8 + 100, 0),
        "{name}: not L4"
    );
}

/// A service whose id lies past the backend map (the maps disagree) is an
/// internal drop: counted, never forwarded, no flow recorded.
#[test]
fn service_id_past_the_backend_map_is_an_internal_drop() {
    let name = "service_id_out_of_range";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1)]);
    case.dp
        .maps
        .services
        .insert(
            service_key(VIP4.into(), PORT, PROTO_TCP),
            Service {
                id: MAX_SERVICES,
                flags: 0,
            },
            0,
        )
        .unwrap_or_else(|e| panic!("{name}: rewriting the service: {e}"));
    let syn = Pkt::tcp4(40000, TCP_SYN);
    case.send("SYN", &syn.build(), Expect::Drop(REASON_INTERNAL));
    assert_eq!(case.flow_count(), 0, "{name}: no flow may be recorded");
    assert_eq!(
        case.service_stats(SERVICE_ID),
        Counters::default(),
        "{name}: service stats"
    );
}

/// Removes a pin directory (through [`Datapath::unpin`]) even when the test
/// fails half way.
struct Pinned(Datapath);

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Err(e) = self.0.unpin() {
            eprintln!("unpinning the fixture's maps: {e:#}");
        }
    }
}

/// `Datapath::load` with a pin directory pins every map, the pins reopen as
/// the same maps, and `bpftool map dump pinned DIR/SERVICES` prints the
/// key and value fields by name (BTF).
#[test]
fn pinned_maps_dump_with_field_names() {
    let name = "pinned_maps";
    if !privileged(name) {
        return;
    }
    let dir = PathBuf::from(format!("/sys/fs/bpf/lbfix-{}", std::process::id()));
    let dp = Datapath::load(CAPACITY, Some(&dir)).unwrap_or_else(|e| panic!("{name}: load: {e:#}"));
    let mut pinned = Pinned(dp);
    for map in MAP_NAMES {
        assert!(
            dir.join(map).exists(),
            "{name}: {map} not pinned in {}",
            dir.display()
        );
    }
    let key = service_key(VIP4.into(), PORT, PROTO_TCP);
    pinned
        .0
        .maps
        .set_service(
            key,
            SERVICE_ID,
            &backend_set(SERVICE_ID, VIP4.into(), &[up(1)]),
        )
        .unwrap_or_else(|e| panic!("{name}: set_service: {e:#}"));
    let reopened = Maps::from_pins(&dir).unwrap_or_else(|e| panic!("{name}: from_pins: {e:#}"));
    assert_eq!(
        reopened.services.get(&key, 0).ok(),
        Some(Service {
            id: SERVICE_ID,
            flags: 0
        }),
        "{name}: the pinned SERVICES map is the loaded one"
    );
    drop(reopened);
    dump_shows_field_names(name, &dir.join(SERVICES_MAP));
    pinned
        .0
        .unpin()
        .unwrap_or_else(|e| panic!("{name}: unpin: {e:#}"));
    assert!(!dir.exists(), "{name}: {} left behind", dir.display());
}

/// Checks that `bpftool map dump pinned PATH` names the fields of the service
/// key and value (skipped loudly without bpftool, unless `CI` is set).
fn dump_shows_field_names(name: &str, path: &Path) {
    let output = match Command::new("bpftool")
        .arg("map")
        .arg("dump")
        .arg("pinned")
        .arg(path)
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound && std::env::var_os("CI").is_none() => {
            loud(&format!(
                "SKIPPED (needs bpftool): `{name}` bpftool dump check"
            ));
            return;
        }
        Err(e) => panic!("{name}: running bpftool: {e}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{name}: bpftool failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    for field in [
        "\"addr\"".to_owned(),
        format!("\"port\": {PORT}"),
        format!("\"proto\": {PROTO_TCP}"),
        format!("\"family\": {FAMILY_IPV4}"),
        format!("\"id\": {SERVICE_ID}"),
        "\"flags\": 0".to_owned(),
    ] {
        assert!(
            stdout.contains(&field),
            "{name}: bpftool output lacks {field}:\n{stdout}"
        );
    }
}

// ---------------------------------------------------------------------------
// The control plane's sweeper against the data path's own counting
// ---------------------------------------------------------------------------

/// Flows the LRU tables evicted, or the sweeper expired, leave no counts
/// behind: the sweeper rewrites every backend's counters from both tables
/// (an IPv4 service's from CONNTRACK4, an IPv6 service's from CONNTRACK6).
#[test]
fn sweeper_reconciles_evicted_flows_and_expires_idle_ones() {
    let name = "sweeper";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1), up(1)]);
    case.service(DECOY_ID, VIP6.into(), PROTO_TCP, &[up(1), up(1)]);
    let services = [SERVICE_ID, DECOY_ID];
    let slots = |case: &Case, id| [case.conns(id, 0), case.conns(id, 1)];
    let inactive = |case: &Case, id| slots(case, id).iter().map(|c| c.inactive).sum::<u64>();

    // Three times each table's size of new flows: the LRU evicts, but the
    // data path counted every flow it opened.
    let opened4 = 3 * CAPACITY.ipv4 as u16;
    let opened6 = 3 * CAPACITY.ipv6 as u16;
    let syns = (0..opened4)
        .map(|i| Pkt::tcp4(10_000 + i, TCP_SYN))
        .chain((0..opened6).map(|i| Pkt::tcp6(10_000 + i, TCP_SYN)));
    for syn in syns {
        let (action, _) = case.run(&syn.build()).expect("BPF_PROG_TEST_RUN");
        assert_eq!(action, XDP_TX, "{name}: SYN {:?}", syn.flow_key());
    }
    assert_eq!(inactive(&case, SERVICE_ID), u64::from(opened4));
    assert_eq!(inactive(&case, DECOY_ID), u64::from(opened6));
    let (live4, live6) = case.flows_per_table();
    assert!(
        live4 < usize::from(opened4) && live6 < usize::from(opened6),
        "{name}: no LRU eviction happened ({live4} IPv4 and {live6} IPv6 flows)"
    );
    assert!(live4 > 0 && live6 > 0, "{name}: a table is empty");

    let report = sweeper::sweep(&mut case.dp.maps, &services, &Timeouts::IPVS)
        .expect("sweeping the connection tables");
    assert_eq!(report.expired, 0, "{name}: expired");
    assert_eq!(report.live, live4 + live6, "{name}: live");
    for (id, table) in [(SERVICE_ID, CONNTRACK4_MAP), (DECOY_ID, CONNTRACK6_MAP)] {
        let mut per_slot = [0u64; 2];
        for (_, flow) in case.dp.maps.flows() {
            if u32::from(flow.service_id) == id {
                per_slot[usize::from(flow.backend_slot)] += 1;
            }
        }
        let counts = slots(&case, id);
        assert_eq!(
            [counts[0].inactive, counts[1].inactive],
            per_slot,
            "{name}: counters of service {id} after the sweep differ from {table}"
        );
        assert_eq!(counts[0].active + counts[1].active, 0);
    }

    // A SYN_RECV timeout of zero: every half-open flow has idled out.
    let report = sweeper::sweep(
        &mut case.dp.maps,
        &services,
        &Timeouts {
            syn_recv: 0,
            ..Timeouts::IPVS
        },
    )
    .expect("sweeping the connection tables");
    assert_eq!((report.expired, report.live), (live4 + live6, 0));
    assert_eq!(case.flows_per_table(), (0, 0), "{name}: flows left");
    for id in services {
        assert_eq!(inactive(&case, id), 0, "{name}: service {id} inactive");
    }
}

/// A sweep that frees a backend lets it take the next new flow at once: the
/// sweeper rebuilds the scheduler tree from the counters it rewrote (the
/// data path only repairs the tree for the counter changes it makes).
#[test]
fn sweeper_rebuilds_the_scheduler_tree() {
    let name = "sweeper_tree";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1), up(1)]);
    // Slot 0: two half-open flows (overhead 2); slot 1: one established
    // flow (overhead 256). The next flow would go to slot 0.
    case.forward("SYN 1", &Pkt::tcp4(40001, TCP_SYN), SERVICE_ID, 0);
    case.forward("SYN 2", &Pkt::tcp4(40002, TCP_SYN), SERVICE_ID, 1);
    case.forward("ACK 2", &Pkt::tcp4(40002, TCP_ACK), SERVICE_ID, 1);
    case.forward("SYN 3", &Pkt::tcp4(40003, TCP_SYN), SERVICE_ID, 0);
    case.expect_conns("before the sweep", SERVICE_ID, 0, 0, 2);
    case.expect_conns("before the sweep", SERVICE_ID, 1, 1, 0);
    // An ESTABLISHED timeout of zero expires the flow of slot 1.
    let report = sweeper::sweep(
        &mut case.dp.maps,
        &[SERVICE_ID],
        &Timeouts {
            established: 0,
            ..Timeouts::IPVS
        },
    )
    .expect("sweeping the connection tables");
    assert_eq!((report.expired, report.live), (1, 2), "{name}: sweep");
    case.expect_conns("after the sweep", SERVICE_ID, 1, 0, 0);
    case.forward("SYN 4", &Pkt::tcp4(40004, TCP_SYN), SERVICE_ID, 1);
}

// ---------------------------------------------------------------------------
// The per-CPU flow cache
// ---------------------------------------------------------------------------
//
// `BPF_PROG_TEST_RUN` runs the program on the calling thread's CPU, so each
// of these fixtures pins its thread to one CPU ([`pin_to_one_cpu`]) and reads
// that CPU's set of FLOW_CACHE4 / FLOW_CACHE6 (`lb_common::flow_cache_index`):
// the [`FLOW_CACHE_WAYS`] entries the flow's key hashes to. The cache maps
// are not in `lb::datapath::Maps`: they are opened by id and read as raw
// bytes.
//
// A cached flow is only used in the cache period it was cached in
// (`jiffies >> FLOW_CACHE_PERIOD_SHIFT`). The fixtures read the kernel's
// jiffies from /proc/timer_list ([`current_period`]) around the packets
// that matter: a cache entry's stamp must lie between the periods read just
// before and just after the packet that wrote it, and a fixture that needs a
// cache hit retries its whole sequence on a fresh data path
// ([`within_one_period`]) when the period rolled over between caching and
// the packet that should hit.

/// Bytes of a flow-cache entry of [`FLOW_CACHE4_MAP`] (`lb_common::CachedFlow4`).
const CACHED4_LEN: usize = 32;
/// Bytes of a flow-cache entry of [`FLOW_CACHE6_MAP`] (`lb_common::CachedFlow6`).
const CACHED6_LEN: usize = 56;
/// Bytes of a [`FLOW_CACHE4_MAP`] value, a set of [`FLOW_CACHE_WAYS`]
/// entries (`lb_common::CachedFlowSet4`).
const CACHED_SET4_LEN: usize = FLOW_CACHE_WAYS * CACHED4_LEN;
/// Bytes of a [`FLOW_CACHE6_MAP`] value (`lb_common::CachedFlowSet6`): its
/// ways, then padding to the next 64-byte boundary.
const CACHED_SET6_LEN: usize = (FLOW_CACHE_WAYS * CACHED6_LEN).next_multiple_of(64);
/// Bytes of an array key (the index).
const ARRAY_KEY_LEN: usize = 4;
/// How often a fixture that needs one cache period for its sequence tries it
/// before failing. A period is 64 ms (HZ=1000) to 640 ms (HZ=100) and a
/// sequence takes about a millisecond, so a second attempt is already rare.
const PERIOD_ATTEMPTS: u16 = 10;

/// A flow-cache entry as the kernel stores it, decoded from its bytes: the
/// key (16 or 40 bytes), then service id, backend slot, state and padding
/// (16 bits each, host byte order) and the period stamp (64 bits).
#[derive(Clone, Debug, PartialEq, Eq)]
struct RawCached {
    key: Vec<u8>,
    service_id: u16,
    slot: u16,
    state: u16,
    pad: u16,
    stamp: u64,
}

impl RawCached {
    /// Decodes the bytes of one way of a cache set.
    fn decode(bytes: &[u8]) -> Self {
        let at = bytes.len() - 16;
        let u16_at = |i: usize| u16::from_ne_bytes([bytes[at + i], bytes[at + i + 1]]);
        let stamp = bytes[at + 8..]
            .try_into()
            .map(u64::from_ne_bytes)
            .expect("an 8-byte stamp");
        Self {
            key: bytes[..at].to_vec(),
            service_id: u16_at(0),
            slot: u16_at(2),
            state: u16_at(4),
            pad: u16_at(6),
            stamp,
        }
    }
}

/// The flow-cache set of a flow whose connection-table key has the bytes
/// `key` (16 or 40 bytes): `lb_common::flow_cache_set` of the key's
/// native-endian 64-bit words.
fn cache_set(key: &[u8]) -> u32 {
    let words: Vec<u64> = key
        .chunks_exact(8)
        .map(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")))
        .collect();
    match words.len() {
        2 => flow_cache_set::<2>(&words.try_into().expect("2 words")),
        5 => flow_cache_set::<5>(&words.try_into().expect("5 words")),
        n => panic!("a flow key of {n} words"),
    }
}

/// The way of `ways` (one CPU's flow-cache set) that holds the flow whose
/// key has the bytes `key`, if any. Fails when several ways hold it: a flow
/// is cached at most once per CPU.
fn way_holding(case: &str, ways: &[RawCached], key: &[u8]) -> Option<usize> {
    let holding: Vec<usize> = (0..ways.len()).filter(|&w| ways[w].key == key).collect();
    assert!(
        holding.len() <= 1,
        "{case}: ways {holding:?} of one set hold the same flow: {ways:?}"
    );
    holding.first().copied()
}

/// `count` client ports whose TCP flows (`pkt`, for IPv4 or IPv6) fall in
/// one flow-cache set: the ports of the `nth` (from 0) set to gather `count`
/// of them, counting up from port 1024. Different `nth` give different sets,
/// so no port is shared.
fn ports_in_one_set(pkt: impl Fn(u16, u8) -> Pkt, count: usize, nth: usize) -> Vec<u16> {
    let mut by_set = BTreeMap::<u32, Vec<u16>>::new();
    let mut gathered = 0;
    for port in 1024..=u16::MAX {
        let set = cache_set(&key_bytes_of_frame(&pkt(port, TCP_ACK).build()));
        let ports = by_set.entry(set).or_default();
        ports.push(port);
        if ports.len() == count {
            if gathered == nth {
                return ports.clone();
            }
            gathered += 1;
        }
    }
    panic!(
        "fewer than {} flow-cache sets hold {count} client ports",
        nth + 1
    )
}

/// The kernel's jiffies counter (what `bpf_jiffies64` returns), from the
/// `jiffies:` line of /proc/timer_list (root only).
fn jiffies() -> u64 {
    let list = std::fs::read_to_string("/proc/timer_list")
        .unwrap_or_else(|e| panic!("reading /proc/timer_list (for jiffies): {e}"));
    list.lines()
        .find_map(|line| line.strip_prefix("jiffies: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `jiffies:` line in /proc/timer_list"))
}

/// The current flow-cache period, as the data path computes it.
fn current_period() -> u64 {
    jiffies() >> FLOW_CACHE_PERIOD_SHIFT
}

/// Waits (at most 3 s: a period lasts at most 640 ms, at HZ=100) until the
/// flow-cache period is past `stamp`; returns the new period.
fn wait_for_period_after(case: &str, stamp: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let period = current_period();
        if period > stamp {
            return period;
        }
        assert!(
            Instant::now() < deadline,
            "{case}: the cache period stayed at {period} for 3 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Pins the calling thread (each test runs on its own) to the CPU it runs
/// on, so that every `BPF_PROG_TEST_RUN` of the test writes that CPU's flow
/// cache; returns the CPU.
fn pin_to_one_cpu(case: &str) -> usize {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    let cpu = usize::try_from(cpu)
        .unwrap_or_else(|_| panic!("{case}: sched_getcpu: {}", io::Error::last_os_error()));
    pin_to_cpu(case, cpu);
    cpu
}

/// The CPUs the calling thread may run on.
fn allowed_cpus(case: &str) -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is a valid set for the kernel to fill;
    // pid 0 is the calling thread.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let rc = libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set);
        assert_eq!(
            rc,
            0,
            "{case}: sched_getaffinity: {}",
            io::Error::last_os_error()
        );
        set
    };
    // SAFETY: CPU_ISSET reads inside the set for any index below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Pins the calling thread to CPU `cpu` (see [`pin_to_one_cpu`]).
fn pin_to_cpu(case: &str, cpu: usize) {
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET stays inside
    // it for any CPU the kernel runs us on; pid 0 is the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(
        rc,
        0,
        "{case}: pinning the test thread to CPU {cpu}: {}",
        io::Error::last_os_error()
    );
    // SAFETY: as above.
    let now = unsafe { libc::sched_getcpu() };
    assert_eq!(
        usize::try_from(now).ok(),
        Some(cpu),
        "{case}: still on CPU {now}"
    );
}

/// Runs `attempt` (given the attempt number, from 0) until it returns
/// `Some`: it returns `None` when the flow-cache period rolled over during
/// the part of its sequence that must fit in one period. Fails after
/// [`PERIOD_ATTEMPTS`] attempts.
fn within_one_period<T>(case: &str, mut attempt: impl FnMut(u16) -> Option<T>) -> T {
    for n in 0..PERIOD_ATTEMPTS {
        if let Some(done) = attempt(n) {
            return done;
        }
        eprintln!("{case}: the cache period rolled over during attempt {n}; trying again");
    }
    panic!("{case}: the cache period rolled over during each of {PERIOD_ATTEMPTS} attempts")
}

/// Runs `body` until it returns `Some` (see [`within_one_period`]), each
/// attempt on a fresh case: a two-backend TCP service on the IPv4 VIP and an
/// established flow from client port `sport_base + attempt`, cached on this
/// CPU on slot 0. `body` gets the case, the cache entry, the client port and
/// the CPU.
fn with_cached_flow(
    name: &str,
    sport_base: u16,
    mut body: impl FnMut(&mut Case, RawCached, u16, usize) -> Option<()>,
) {
    if !privileged(name) {
        return;
    }
    let cpu = pin_to_one_cpu(name);
    within_one_period(name, |attempt| {
        let mut case = Case::new(format!("{name} (attempt {attempt})")).expect("privileged");
        case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(100), up(100)]);
        let sport = sport_base + attempt;
        let cached = open_cached(&case, Pkt::tcp4, sport, 0, cpu);
        body(&mut case, cached, sport, cpu)
    });
}

/// The flow-cache set of the flow of the plain IPv4 or IPv6 `frame` on
/// every possible CPU, each as its [`FLOW_CACHE_WAYS`] ways.
fn cache_sets(case: &Case, frame: &[u8]) -> Vec<Vec<RawCached>> {
    let key = key_bytes_of_frame(frame);
    let set = cache_set(&key);
    match key.len() {
        FLOW_KEY4_LEN => every_cpus_set::<CACHED_SET4_LEN>(case, FLOW_CACHE4_MAP, CACHED4_LEN, set),
        FLOW_KEY6_LEN => every_cpus_set::<CACHED_SET6_LEN>(case, FLOW_CACHE6_MAP, CACHED6_LEN, set),
        n => panic!("{}: a flow key of {n} bytes", case.name),
    }
}

/// Set `set` of the flow cache `table` (values of `LEN` bytes, entries
/// of `entry_len`) in the block of every possible CPU, each decoded into
/// its [`FLOW_CACHE_WAYS`] ways.
fn every_cpus_set<const LEN: usize>(
    case: &Case,
    table: &str,
    entry_len: usize,
    set: u32,
) -> Vec<Vec<RawCached>> {
    let name = &case.name;
    let map = case.map_by_name(table, ARRAY_KEY_LEN, LEN);
    let array = Array::<MapData, [u8; LEN]>::try_from(map)
        .unwrap_or_else(|e| panic!("{name}: {table} as raw bytes: {e}"));
    let cpus = nr_cpus().expect("the number of possible CPUs") as u32;
    (0..cpus)
        .map(|cpu| {
            let index = flow_cache_index(cpu, set);
            let value = array
                .get(&index, 0)
                .unwrap_or_else(|e| panic!("{name}: reading {table}[{index}]: {e}"));
            value
                .chunks_exact(entry_len)
                .take(FLOW_CACHE_WAYS)
                .map(RawCached::decode)
                .collect()
        })
        .collect()
}

/// CPU `cpu`'s flow-cache entry of `frame`'s flow, if that CPU caches it.
fn cached_entry(case: &Case, frame: &[u8], cpu: usize) -> Option<RawCached> {
    let key = key_bytes_of_frame(frame);
    let sets = cache_sets(case, frame);
    let ways = sets
        .get(cpu)
        .unwrap_or_else(|| panic!("{}: no flow-cache value for CPU {cpu}", case.name));
    way_holding(&case.name, ways, &key).map(|way| ways[way].clone())
}

/// Asserts that no way of any CPU's flow cache holds `pkt`'s flow.
fn expect_not_cached(case: &Case, label: &str, pkt: &Pkt) {
    let frame = pkt.build();
    let key = key_bytes_of_frame(&frame);
    for (cpu, ways) in cache_sets(case, &frame).iter().enumerate() {
        if let Some(way) = way_holding(&case.name, ways, &key) {
            panic!(
                "{}/{label}: the flow is in way {way} of CPU {cpu}'s flow cache: {:?}",
                case.name, ways[way]
            );
        }
    }
}

/// Asserts that a way of CPU `cpu`'s flow cache, and of no other CPU's,
/// holds `pkt`'s flow (its key bytes as the frame gives them) bound to
/// `slot` of service `id` in `state`, stamped with a period of `periods`
/// (read just before and just after the packet that cached it). Returns
/// the entry.
fn expect_cached(
    case: &Case,
    label: &str,
    pkt: &Pkt,
    cpu: usize,
    (id, slot, state): (u32, u32, u32),
    periods: RangeInclusive<u64>,
) -> RawCached {
    let name = &case.name;
    let frame = pkt.build();
    let key = key_bytes_of_frame(&frame);
    let sets = cache_sets(case, &frame);
    for (other, ways) in sets.iter().enumerate() {
        if other != cpu {
            assert_eq!(
                way_holding(name, ways, &key),
                None,
                "{name}/{label}: the flow is in CPU {other}'s flow cache too, not only CPU {cpu}'s"
            );
        }
    }
    let ways = sets
        .get(cpu)
        .unwrap_or_else(|| panic!("{name}: no flow-cache value for CPU {cpu}"));
    let Some(way) = way_holding(name, ways, &key) else {
        let keys: String = ways.iter().map(|entry| hex(&entry.key)).collect();
        panic!(
            "{name}/{label}: no way of CPU {cpu}'s flow-cache set holds the flow\n\
             way keys:\n{keys}frame key:\n{}",
            hex(&key)
        );
    };
    let entry = ways[way].clone();
    assert_eq!(
        (
            u32::from(entry.service_id),
            u32::from(entry.slot),
            state_name(u32::from(entry.state)),
            entry.pad
        ),
        (id, slot, state_name(state), 0),
        "{name}/{label}: cached (service, slot, state, padding)"
    );
    assert!(
        entry.stamp != 0 && periods.contains(&entry.stamp),
        "{name}/{label}: cache stamp {} is not the period of the packet ({periods:?})",
        entry.stamp
    );
    entry
}

/// Runs `frame` like [`Case::run_counted`] if the flow-cache period is
/// still `stamp` afterwards; `None` when it rolled over meanwhile.
fn run_in_period(case: &Case, label: &str, frame: &[u8], stamp: u64) -> Option<Sent> {
    let sent = case.run_counted(label, frame);
    (current_period() == stamp).then_some(sent)
}

/// Opens a TCP flow from client port `sport` of service
/// [`SERVICE_ID`] on its least loaded backend `slot`, which must have no
/// flows yet, and caches it: the SYN opens it in the table (SYN_RECV)
/// and leaves it out of the cache; the ACK (a state change) goes through
/// the table (ESTABLISHED, `slot` counted active) and caches the flow on
/// `cpu`. Returns the entry.
fn open_cached(
    case: &Case,
    pkt: impl Fn(u16, u8) -> Pkt,
    sport: u16,
    slot: u32,
    cpu: usize,
) -> RawCached {
    let syn = pkt(sport, TCP_SYN);
    case.forward("SYN", &syn, SERVICE_ID, slot);
    case.expect_flow("SYN", &syn, SERVICE_ID, slot, STATE_SYN_RECV);
    case.expect_conns("SYN", SERVICE_ID, slot, 0, 1);
    expect_not_cached(case, "SYN", &syn);
    let ack = pkt(sport, TCP_ACK);
    let start = current_period();
    case.forward("ACK", &ack, SERVICE_ID, slot);
    let end = current_period();
    case.expect_flow("ACK", &ack, SERVICE_ID, slot, STATE_ESTABLISHED);
    case.expect_conns("ACK", SERVICE_ID, slot, 1, 0);
    let flow = (SERVICE_ID, slot, STATE_ESTABLISHED);
    expect_cached(case, "ACK", &ack, cpu, flow, start..=end)
}

/// Opens a TCP flow from client port `sport` of service [`SERVICE_ID`]
/// on its least loaded backend `slot`, which must have no flows yet,
/// through the table alone: SYN then ACK, both forwarded to `slot`, the
/// flow ESTABLISHED in the table and in no CPU's flow cache. For a flow
/// whose cache set is full of flows of period `stamp`; `None` when the
/// period was no longer `stamp` after the ACK.
fn open_uncached(
    case: &Case,
    pkt: impl Fn(u16, u8) -> Pkt,
    sport: u16,
    slot: u32,
    stamp: u64,
) -> Option<()> {
    let syn = pkt(sport, TCP_SYN);
    case.forward("SYN", &syn, SERVICE_ID, slot);
    case.expect_conns("SYN", SERVICE_ID, slot, 0, 1);
    let ack = pkt(sport, TCP_ACK);
    let frame = ack.build();
    let sent = run_in_period(case, "ACK", &frame, stamp)?;
    case.check(
        "ACK",
        &frame,
        Expect::Tx(ack.forwarded(SERVICE_ID, slot)),
        sent,
    );
    case.expect_flow("ACK", &ack, SERVICE_ID, slot, STATE_ESTABLISHED);
    case.expect_conns("ACK", SERVICE_ID, slot, 1, 0);
    expect_not_cached(case, "ACK", &ack);
    Some(())
}

/// A SYN opens its flow in the table only; the ACK, a state change, goes
/// through the table and caches the flow on this CPU alone, under the key
/// bytes of the frame, with its service, slot, new state and the period.
fn handshake_caches_the_flow(name: &str, vip: IpAddr, pkt: impl Fn(u16, u8) -> Pkt) {
    let Some(mut case) = Case::new(name) else {
        return;
    };
    let cpu = pin_to_one_cpu(name);
    case.service(SERVICE_ID, vip, PROTO_TCP, &[up(100), up(100)]);
    open_cached(&case, pkt, 40000, 0, cpu);
    assert_eq!(case.flow_count(), 1, "{name}: flows");
}

/// IPv4: SYN not cached, ACK cached.
#[test]
fn ipv4_flow_cache_follows_the_handshake() {
    handshake_caches_the_flow("ipv4_flow_cache_handshake", VIP4.into(), Pkt::tcp4);
}

/// IPv6: SYN not cached, ACK cached (under the 40-byte key).
#[test]
fn ipv6_flow_cache_follows_the_handshake() {
    handshake_caches_the_flow("ipv6_flow_cache_handshake", VIP6.into(), Pkt::tcp6);
}

/// A packet of a cached flow that does not change its state is forwarded
/// from the cache alone: with the flow deleted from the table, data on it
/// still goes to its backend, and the table stays without it (no lookup
/// miss that schedules it again, no write); the cache entry and the
/// connection counts are left as they were; the statistics count it.
#[test]
fn flow_cache_hit_bypasses_the_table() {
    let name = "flow_cache_hit";
    with_cached_flow(name, 41000, |case, cached, sport, cpu| {
        let ack = Pkt::tcp4(sport, TCP_ACK);
        assert!(
            case.dp.maps.remove_flow(&ack.flow_key()),
            "{name}: deleting the flow from the table"
        );
        assert_eq!(case.flow(&ack), None, "{name}: flow deleted");
        let data = Pkt::tcp4(sport, TCP_ACK | TCP_PSH).with_payload(b"from the cache");
        let frame = data.build();
        let sent = run_in_period(&case, "data", &frame, cached.stamp)?;
        case.check(
            "data",
            &frame,
            Expect::Tx(data.forwarded(SERVICE_ID, 0)),
            sent,
        );
        assert_eq!(
            case.flow(&data),
            None,
            "{}: flow back in the table",
            case.name
        );
        assert_eq!(case.flow_count(), 0, "{}: flows", case.name);
        assert_eq!(
            cached_entry(&case, &frame, cpu),
            Some(cached),
            "{}: the cache entry changed",
            case.name
        );
        case.expect_conns("data", SERVICE_ID, 0, 1, 0);
        case.expect_conns("data", SERVICE_ID, 1, 0, 0);
        assert_eq!(
            case.backend_stats(SERVICE_ID, 0).packets,
            3,
            "{}: slot 0 packets",
            case.name
        );
        assert_eq!(
            case.service_stats(SERVICE_ID).new_conns,
            1,
            "{}: service new_conns",
            case.name
        );
        Some(())
    });
}

/// A SYN (without ACK) never probes the cache, even for a cached flow whose
/// state it would not change (a SYN on an established flow): with the flow
/// cached and deleted from the table, a SYN opens it again in the table, on
/// the least loaded backend.
#[test]
fn flow_cache_is_not_probed_by_syns() {
    let name = "flow_cache_syn";
    with_cached_flow(name, 42000, |case, cached, sport, _| {
        let syn = Pkt::tcp4(sport, TCP_SYN);
        assert!(
            case.dp.maps.remove_flow(&syn.flow_key()),
            "{name}: deleting the flow from the table"
        );
        let frame = syn.build();
        let sent = run_in_period(&case, "SYN again", &frame, cached.stamp)?;
        // Slot 0 still counts the deleted flow as active: slot 1 is chosen.
        case.check(
            "SYN again",
            &frame,
            Expect::Tx(syn.forwarded(SERVICE_ID, 1)),
            sent,
        );
        case.expect_flow("SYN again", &syn, SERVICE_ID, 1, STATE_SYN_RECV);
        case.expect_conns("SYN again", SERVICE_ID, 1, 0, 1);
        assert_eq!(
            case.service_stats(SERVICE_ID).new_conns,
            2,
            "{}: service new_conns",
            case.name
        );
        Some(())
    });
}

/// A packet that changes the state of a cached flow goes through the table:
/// FIN moves the table's flow to FIN_WAIT and its backend's count from
/// active to inactive, RST then to CLOSE; the cache follows each time.
#[test]
fn flow_cache_state_changes_go_through_the_table() {
    let name = "flow_cache_state_change";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    let cpu = pin_to_one_cpu(name);
    case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(100), up(100)]);
    let cached = open_cached(&case, Pkt::tcp4, 40000, 0, cpu);
    let mut stamp = cached.stamp;
    for (label, flags, state) in [
        ("FIN", TCP_FIN | TCP_ACK, STATE_FIN_WAIT),
        ("RST", TCP_RST, STATE_CLOSE),
    ] {
        let pkt = Pkt::tcp4(40000, flags);
        let start = current_period();
        case.forward(label, &pkt, SERVICE_ID, 0);
        let end = current_period();
        case.expect_flow(label, &pkt, SERVICE_ID, 0, state);
        case.expect_conns(label, SERVICE_ID, 0, 0, 1);
        case.expect_conns(label, SERVICE_ID, 1, 0, 0);
        let entry = expect_cached(&case, label, &pkt, cpu, (SERVICE_ID, 0, state), start..=end);
        assert!(
            entry.stamp >= stamp,
            "{name}/{label}: cache stamp went back"
        );
        stamp = entry.stamp;
    }
}

/// A cached flow whose backend slot was emptied (`lb backend remove
/// --reschedule`) is not forwarded from the cache: its next packet is
/// scheduled again, on the remaining backend, and the table follows; the
/// packet after that caches the new slot.
#[test]
fn flow_cache_skips_emptied_slots() {
    let name = "flow_cache_emptied_slot";
    let removed = Real {
        weight: 0,
        state: BACKEND_STATE_EMPTY,
    };
    with_cached_flow(name, 43000, |case, cached, sport, cpu| {
        case.backends(SERVICE_ID, VIP4.into(), &[removed, up(100)]);
        let data = Pkt::tcp4(sport, TCP_ACK | TCP_PSH).with_payload(b"after removal");
        let frame = data.build();
        let label = "data after removal";
        let sent = run_in_period(&case, label, &frame, cached.stamp)?;
        case.check(
            label,
            &frame,
            Expect::Tx(data.forwarded(SERVICE_ID, 1)),
            sent,
        );
        case.expect_flow(label, &data, SERVICE_ID, 1, STATE_ESTABLISHED);
        case.expect_conns(label, SERVICE_ID, 1, 1, 0);
        assert_eq!(
            case.backend_stats(SERVICE_ID, 1).new_conns,
            1,
            "{}: slot 1 new_conns",
            case.name
        );
        let more = Pkt::tcp4(sport, TCP_ACK);
        let start = current_period();
        case.forward("next ACK", &more, SERVICE_ID, 1);
        let end = current_period();
        case.expect_flow("next ACK", &more, SERVICE_ID, 1, STATE_ESTABLISHED);
        let flow = (SERVICE_ID, 1, STATE_ESTABLISHED);
        expect_cached(&case, "next ACK", &more, cpu, flow, start..=end);
        Some(())
    });
}

/// UDP: the first datagram opens the flow in the table only; the second
/// finds it there and caches it (state UDP).
#[test]
fn flow_cache_udp() {
    let name = "flow_cache_udp";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    let cpu = pin_to_one_cpu(name);
    case.service(SERVICE_ID, VIP4.into(), PROTO_UDP, &[up(1), up(1)]);
    let first = Pkt::udp4(5353).with_payload(b"query");
    case.forward("first datagram", &first, SERVICE_ID, 0);
    case.expect_flow("first datagram", &first, SERVICE_ID, 0, STATE_UDP);
    expect_not_cached(&case, "first datagram", &first);
    let second = Pkt::udp4(5353).with_payload(b"second query");
    let start = current_period();
    case.forward("second datagram", &second, SERVICE_ID, 0);
    let end = current_period();
    case.expect_flow("second datagram", &second, SERVICE_ID, 0, STATE_UDP);
    case.expect_conns("second datagram", SERVICE_ID, 0, 0, 1);
    let flow = (SERVICE_ID, 0, STATE_UDP);
    expect_cached(&case, "second datagram", &second, cpu, flow, start..=end);
}

/// A cached flow goes back to its table once per period: after the period
/// rolled over, its next packet refreshes the table's last-seen time and
/// caches the flow again with the new period.
#[test]
fn flow_cache_period_refreshes_the_table() {
    let name = "flow_cache_period";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    let cpu = pin_to_one_cpu(name);
    case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(100), up(100)]);
    let cached = open_cached(&case, Pkt::tcp4, 40000, 0, cpu);
    let ack = Pkt::tcp4(40000, TCP_ACK);
    let seen = case.expect_flow("ACK", &ack, SERVICE_ID, 0, STATE_ESTABLISHED);
    let start = wait_for_period_after(name, cached.stamp);
    let data = Pkt::tcp4(40000, TCP_ACK | TCP_PSH).with_payload(b"a period later");
    case.forward("data", &data, SERVICE_ID, 0);
    let end = current_period();
    let now_seen = case.expect_flow("data", &data, SERVICE_ID, 0, STATE_ESTABLISHED);
    assert!(
        now_seen > seen,
        "{name}: last_seen_ns not refreshed ({seen} before, {now_seen} after)"
    );
    case.expect_conns("data", SERVICE_ID, 0, 1, 0);
    let flow = (SERVICE_ID, 0, STATE_ESTABLISHED);
    let entry = expect_cached(&case, "data", &data, cpu, flow, start..=end);
    assert!(
        entry.stamp > cached.stamp,
        "{name}: cache stamp {} not past {}",
        entry.stamp,
        cached.stamp
    );
}

/// Runs `body` until it returns `Some` (see [`within_one_period`]), each
/// attempt on a fresh case: a TCP service on `vip` with one backend more
/// than a flow-cache set has ways, and [`FLOW_CACHE_WAYS`] + 1 client ports
/// whose flows (`pkt`) fall in one set, a different set each attempt. The
/// flows of all ports but the last are opened (the `i`th on slot `i`) and
/// cached on this CPU within one period, which fills their set: one flow
/// per way. `body` gets the case, the ports, the cache entries of the open
/// flows (in port order) and the CPU.
fn with_full_cache_set(
    name: &str,
    vip: IpAddr,
    pkt: impl Fn(u16, u8) -> Pkt,
    mut body: impl FnMut(&mut Case, &[u16], &[RawCached], usize) -> Option<()>,
) {
    if !privileged(name) {
        return;
    }
    let cpu = pin_to_one_cpu(name);
    within_one_period(name, |attempt| {
        let mut case = Case::new(format!("{name} (attempt {attempt})")).expect("privileged");
        case.service(SERVICE_ID, vip, PROTO_TCP, &[up(100); FLOW_CACHE_WAYS + 1]);
        let ports = ports_in_one_set(&pkt, FLOW_CACHE_WAYS + 1, usize::from(attempt));
        let cached: Vec<RawCached> = (0..)
            .zip(&ports[..FLOW_CACHE_WAYS])
            .map(|(slot, &sport)| open_cached(&case, &pkt, sport, slot, cpu))
            .collect();
        if cached.iter().any(|entry| entry.stamp != cached[0].stamp) {
            return None;
        }
        let ways = &cache_sets(&case, &pkt(ports[0], TCP_ACK).build())[cpu];
        for entry in &cached {
            assert!(
                ways.contains(entry),
                "{}: the flow-cache set lost a flow of its period: {entry:?}\nset: {ways:?}",
                case.name
            );
        }
        body(&mut case, &ports, &cached, cpu)
    });
}

/// Flows whose keys fall in one flow-cache set are cached side by side, one
/// per way, and each is forwarded from the cache alone: with every one of
/// them deleted from the table, data on each still goes to its own backend,
/// the table stays empty, and the set and the connection counts are left as
/// they were.
fn cache_set_holds_a_flow_per_way(name: &str, vip: IpAddr, pkt: impl Fn(u16, u8) -> Pkt) {
    with_full_cache_set(name, vip, &pkt, |case, ports, cached, cpu| {
        let stamp = cached[0].stamp;
        let set_frame = pkt(ports[0], TCP_ACK).build();
        let set = cache_sets(&case, &set_frame)[cpu].clone();
        let open = &ports[..FLOW_CACHE_WAYS];
        for &sport in open {
            assert!(
                case.dp.maps.remove_flow(&pkt(sport, TCP_ACK).flow_key()),
                "{}: deleting the flow from port {sport} from the table",
                case.name
            );
        }
        for (slot, &sport) in (0..).zip(open) {
            let label = format!("data from port {sport}");
            let data = pkt(sport, TCP_ACK | TCP_PSH).with_payload(b"from the cache");
            let frame = data.build();
            let sent = run_in_period(&case, &label, &frame, stamp)?;
            case.check(
                &label,
                &frame,
                Expect::Tx(data.forwarded(SERVICE_ID, slot)),
                sent,
            );
            assert_eq!(
                case.flow(&data),
                None,
                "{}/{label}: flow back in the table",
                case.name
            );
        }
        assert_eq!(case.flow_count(), 0, "{}: flows", case.name);
        assert_eq!(
            cache_sets(&case, &set_frame)[cpu],
            set,
            "{}: the flow-cache set changed",
            case.name
        );
        for slot in 0..FLOW_CACHE_WAYS as u32 {
            case.expect_conns("data", SERVICE_ID, slot, 1, 0);
        }
        Some(())
    });
}

/// IPv4: a flow in every way of one set, each forwarded from the cache.
#[test]
fn ipv4_flow_cache_set_holds_a_flow_per_way() {
    cache_set_holds_a_flow_per_way("ipv4_flow_cache_ways", VIP4.into(), Pkt::tcp4);
}

/// IPv6: a flow in every way of one set, each forwarded from the cache.
#[test]
fn ipv6_flow_cache_set_holds_a_flow_per_way() {
    cache_set_holds_a_flow_per_way("ipv6_flow_cache_ways", VIP6.into(), Pkt::tcp6);
}

/// Each CPU caches flows in its own block of sets
/// (`lb_common::flow_cache_index`): run on each CPU this test may use in
/// turn, an IPv4 and an IPv6 flow opened there are cached in that CPU's
/// block and in no other CPU's (`open_cached` checks both).
#[test]
fn flow_cache_keeps_each_cpus_flows_in_its_own_block() {
    let name = "flow_cache_cpu_blocks";
    if !privileged(name) {
        return;
    }
    let cpus = allowed_cpus(name);
    for (n, &cpu) in (0u16..).zip(&cpus) {
        pin_to_cpu(name, cpu);
        let mut case = Case::new(format!("{name} (CPU {cpu})")).expect("privileged");
        case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(100)]);
        open_cached(&case, Pkt::tcp4, 41_000 + n, 0, cpu);
        let mut case = Case::new(format!("{name} (CPU {cpu}, IPv6)")).expect("privileged");
        case.service(SERVICE_ID, VIP6.into(), PROTO_TCP, &[up(100)]);
        open_cached(&case, Pkt::tcp6, 41_000 + n, 0, cpu);
    }
    eprintln!("{name}: checked on CPUs {cpus:?}");
}

/// A flow whose set is full of other flows of the current period is not
/// cached and does not evict them: its handshake and data go through the
/// table (the data refreshes a table entry marked as last seen at 1 ns),
/// to its own backend, while no CPU caches it and the set's entries stay
/// as they were.
#[test]
fn flow_cache_full_set_leaves_a_new_flow_in_the_table() {
    let name = "flow_cache_full_set";
    with_full_cache_set(name, VIP4.into(), Pkt::tcp4, |case, ports, cached, cpu| {
        let stamp = cached[0].stamp;
        let (sport, slot) = (ports[FLOW_CACHE_WAYS], FLOW_CACHE_WAYS as u32);
        let set_frame = Pkt::tcp4(sport, TCP_ACK).build();
        let set = cache_sets(&case, &set_frame)[cpu].clone();
        open_uncached(&case, Pkt::tcp4, sport, slot, stamp)?;
        assert_eq!(
            cache_sets(&case, &set_frame)[cpu],
            set,
            "{}/handshake: the full flow-cache set changed",
            case.name
        );
        let data = Pkt::tcp4(sport, TCP_ACK | TCP_PSH).with_payload(b"past a full set");
        let mut flow = case
            .flow(&data)
            .unwrap_or_else(|| panic!("{}: flow missing from the table", case.name));
        flow.last_seen_ns = 1;
        case.dp
            .maps
            .insert_flow(&data.flow_key(), &flow)
            .unwrap_or_else(|e| panic!("{}: insert_flow: {e:#}", case.name));
        let frame = data.build();
        let sent = run_in_period(&case, "data", &frame, stamp)?;
        case.check(
            "data",
            &frame,
            Expect::Tx(data.forwarded(SERVICE_ID, slot)),
            sent,
        );
        let seen = case.expect_flow("data", &data, SERVICE_ID, slot, STATE_ESTABLISHED);
        assert!(
            seen > 1,
            "{}/data: last_seen_ns not refreshed: the packet skipped the table",
            case.name
        );
        expect_not_cached(&case, "data", &data);
        assert_eq!(
            cache_sets(&case, &set_frame)[cpu],
            set,
            "{}/data: the full flow-cache set changed",
            case.name
        );
        Some(())
    });
}

/// A new period frees the ways of a full set: the first packet of the flow
/// left out of it in the old period caches it, in the first way holding a
/// flow of the old period, with the new stamp; that flow alone is evicted,
/// the other ways keep their entries.
#[test]
fn flow_cache_new_period_frees_a_way_of_a_full_set() {
    let name = "flow_cache_full_set_next_period";
    with_full_cache_set(name, VIP4.into(), Pkt::tcp4, |case, ports, cached, cpu| {
        let stamp = cached[0].stamp;
        let (sport, slot) = (ports[FLOW_CACHE_WAYS], FLOW_CACHE_WAYS as u32);
        open_uncached(&case, Pkt::tcp4, sport, slot, stamp)?;
        let set_frame = Pkt::tcp4(sport, TCP_ACK).build();
        let before = cache_sets(&case, &set_frame)[cpu].clone();
        let start = wait_for_period_after(&case.name, stamp);
        let data = Pkt::tcp4(sport, TCP_ACK | TCP_PSH).with_payload(b"a period later");
        case.forward("data", &data, SERVICE_ID, slot);
        let end = current_period();
        case.expect_flow("data", &data, SERVICE_ID, slot, STATE_ESTABLISHED);
        let flow = (SERVICE_ID, slot, STATE_ESTABLISHED);
        let entry = expect_cached(&case, "data", &data, cpu, flow, start..=end);
        let after = cache_sets(&case, &set_frame)[cpu].clone();
        let way = way_holding(&case.name, &after, &entry.key).expect("cached");
        assert_eq!(
            Some(way),
            before.iter().position(|old| old.stamp != entry.stamp),
            "{}: the flow did not take the first way of an older period\nbefore: {before:?}\nafter: {after:?}",
            case.name
        );
        for (other, (old, new)) in before.iter().zip(&after).enumerate() {
            if other != way {
                assert_eq!(new, old, "{}: way {other} changed", case.name);
            }
        }
        let evicted: Vec<&RawCached> = cached.iter().filter(|old| !after.contains(old)).collect();
        assert_eq!(
            evicted,
            [&before[way]],
            "{}: the flows evicted from the set",
            case.name
        );
        Some(())
    });
}

// ---------------------------------------------------------------------------
// Counters: the data path counts a forwarded frame once, per backend
// ---------------------------------------------------------------------------

/// A forwarded frame touches only its backend's counters: SERVICE_STATS and
/// the `forwarded` entry of VERDICT_STATS stay zero in the kernel, while the
/// service totals and the `forwarded` verdict read by `lb stats` add the
/// backends up.
#[test]
fn forwarded_frames_are_counted_once_per_backend() {
    let name = "counted_once";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(100), up(100)]);
    let (a, b) = (Pkt::tcp4(40000, TCP_SYN), Pkt::tcp4(40001, TCP_SYN));
    case.send("SYN a", &a.build(), Expect::Tx(a.forwarded(SERVICE_ID, 0)));
    case.send("SYN b", &b.build(), Expect::Tx(b.forwarded(SERVICE_ID, 1)));
    let frame = a.build();
    let one = counted(1, l3(&frame), 1);
    assert_eq!(case.backend_stats(SERVICE_ID, 0), one, "{name}: backend 0");
    assert_eq!(case.backend_stats(SERVICE_ID, 1), one, "{name}: backend 1");
    assert_eq!(
        case.counters(&case.dp.maps.service_stats, SERVICE_ID),
        Counters::default(),
        "{name}: the data path must not write SERVICE_STATS"
    );
    assert_eq!(
        case.counters(&case.dp.maps.verdict_stats, REASON_FORWARDED),
        Counters::default(),
        "{name}: the data path must not count forwarded frames as a verdict"
    );
    let two = counted(2, 2 * l3(&frame), 2);
    assert_eq!(
        case.service_stats(SERVICE_ID),
        two,
        "{name}: service totals"
    );
    assert_eq!(
        case.verdicts()[REASON_FORWARDED as usize],
        counted(2, 2 * l3(&frame), 0),
        "{name}: forwarded verdict"
    );
}

/// A backend slot given to a new backend starts from zero, and what the old
/// backend forwarded stays in the service's totals (as IPVS keeps service
/// counters when a real server goes).
#[test]
fn reused_slot_keeps_the_service_totals() {
    let name = "reused_slot_totals";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(100)]);
    let mut sent = Counters::default();
    for port in 40000..40003 {
        let syn = Pkt::tcp4(port, TCP_SYN);
        let frame = syn.build();
        case.send("SYN", &frame, Expect::Tx(syn.forwarded(SERVICE_ID, 0)));
        sent = sent + counted(1, l3(&frame), 1);
    }
    assert_eq!(case.service_stats(SERVICE_ID), sent, "{name}: before");
    case.dp
        .maps
        .reset_backend_stats(SERVICE_ID, 0)
        .unwrap_or_else(|e| panic!("{name}: reset_backend_stats: {e:#}"));
    assert_eq!(
        case.backend_stats(SERVICE_ID, 0),
        Counters::default(),
        "{name}: the slot starts from zero"
    );
    assert_eq!(
        case.service_stats(SERVICE_ID),
        sent,
        "{name}: service totals unchanged"
    );
    let syn = Pkt::tcp4(40010, TCP_SYN);
    let frame = syn.build();
    case.send(
        "SYN after",
        &frame,
        Expect::Tx(syn.forwarded(SERVICE_ID, 0)),
    );
    let after = counted(1, l3(&frame), 1);
    assert_eq!(
        case.backend_stats(SERVICE_ID, 0),
        after,
        "{name}: new backend"
    );
    assert_eq!(
        case.service_stats(SERVICE_ID),
        sent + after,
        "{name}: service totals grow on"
    );
}

/// Removing a service zeroes its counters but keeps what it forwarded in the
/// `forwarded` verdict total, which never goes backwards.
#[test]
fn removed_service_keeps_the_forwarded_total() {
    let name = "removed_service_total";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(100), up(100)]);
    let mut sent = Counters::default();
    for port in 40000..40004 {
        let syn = Pkt::tcp4(port, TCP_SYN);
        let frame = syn.build();
        // Equal weights: wlc alternates between the two idle-equal slots.
        let slot = u32::from(port - 40000) % 2;
        case.send("SYN", &frame, Expect::Tx(syn.forwarded(SERVICE_ID, slot)));
        sent = sent + counted(1, l3(&frame), 0);
    }
    let forwarded = case.verdicts()[REASON_FORWARDED as usize];
    assert_eq!(forwarded, sent, "{name}: before");
    case.dp
        .maps
        .remove_service(
            service_key(VIP4.into(), PORT, PROTO_TCP),
            SERVICE_ID,
            std::iter::empty(),
        )
        .unwrap_or_else(|e| panic!("{name}: remove_service: {e:#}"));
    assert_eq!(
        case.service_stats(SERVICE_ID),
        Counters::default(),
        "{name}: the removed service's counters"
    );
    assert_eq!(
        case.verdicts()[REASON_FORWARDED as usize],
        sent,
        "{name}: forwarded total kept"
    );
}
