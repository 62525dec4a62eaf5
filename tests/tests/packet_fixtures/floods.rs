//! The two flow tables of a family under floods: half-open flows live in
//! the pending table (sets that evict their least recently seen flow), the
//! handshake's ACK confirms a flow into the
//! connection table (sets and an overflow hash; it never evicts), and no flood of spoofed
//! SYNs, fake handshakes or ACKs takes a confirmed flow's place.

use lb::{datapath::maps::FlowTable, inspect::stats::FlowTables, sweeper};
use lb_common::{
    FLOW_CARRIED_DATA, PROTO_TCP, PROTO_UDP, REASON_NO_FLOW, confirmed_set_capacity,
    conn_state::{STATE_ESTABLISHED, STATE_SYN_RECV, STATE_UDP, TCP_ACK, TCP_SYN, Timeouts},
};
use lb_tests::{
    VIP4, VIP6,
    frame::{Pkt, TCP_PSH},
    xdp_case::{CAPACITY, Case, SERVICE_ID, XDP_DROP, XDP_TX, up},
};

/// Spoofed tuples per flood: four times the connection table (the issue's
/// "at least 4x `max_flows`").
const FLOOD: u16 = 4 * CAPACITY.ipv4 as u16;

/// The idle connections the floods must not break.
const IDLE: u16 = 20;

/// The flow tables as `lb stats` reads them.
fn tables(case: &Case) -> FlowTables {
    FlowTables::read(&case.dp.maps)
        .unwrap_or_else(|e| panic!("{}: reading the flow tables: {e:#}", case.name))
}

/// Runs `pkt` and asserts the verdict `action`.
fn run_expecting(case: &Case, label: &str, pkt: &Pkt, action: u32) {
    let (got, _) = case
        .run(&pkt.build())
        .unwrap_or_else(|e| panic!("{}/{label}: BPF_PROG_TEST_RUN: {e}", case.name));
    assert_eq!(got, action, "{}/{label}: verdict", case.name);
}

/// A SYN opens its flow in the pending table, the handshake's ACK moves it
/// to the connection table, and the client's first data marks it as having
/// carried data; the flow keeps its backend throughout. A UDP flow is
/// confirmed at once. Every move is counted.
fn handshake_confirms(name: &str, tcp: fn(u16, u8) -> Pkt, udp: fn(u16) -> Pkt, ipv6: bool) {
    let Some(mut case) = Case::new(name) else {
        return;
    };
    let vip = if ipv6 { VIP6.into() } else { VIP4.into() };
    case.service_with_flags(SERVICE_ID, vip, PROTO_TCP, &[up(1), up(1)], 0);
    let syn = tcp(40000, TCP_SYN);
    case.forward("SYN", &syn, SERVICE_ID, 0);
    case.expect_flow("SYN", &syn, SERVICE_ID, 0, STATE_SYN_RECV);
    assert_eq!(case.table_of(&syn), Some(FlowTable::Pending), "{name}: SYN");
    let ack = tcp(40000, TCP_ACK);
    case.forward("ACK", &ack, SERVICE_ID, 0);
    case.expect_flow("ACK", &ack, SERVICE_ID, 0, STATE_ESTABLISHED);
    assert_eq!(
        case.table_of(&ack),
        Some(FlowTable::Confirmed),
        "{name}: ACK"
    );
    assert_eq!(case.flow(&ack).map(|f| f.flags), Some(0), "{name}: silent");
    let data = tcp(40000, TCP_ACK | TCP_PSH).with_payload(b"USER anonymous\r\n");
    case.forward("data", &data, SERVICE_ID, 0);
    assert_eq!(
        case.flow(&data).map(|f| f.flags),
        Some(FLOW_CARRIED_DATA),
        "{name}: carried data"
    );
    assert_eq!(case.flow_count(), 1, "{name}: flows");

    case.service(SERVICE_ID + 1, vip, PROTO_UDP, &[up(1)]);
    let datagram = udp(40001);
    case.forward("datagram", &datagram, SERVICE_ID + 1, 0);
    case.expect_flow("datagram", &datagram, SERVICE_ID + 1, 0, STATE_UDP);
    assert_eq!(
        case.table_of(&datagram),
        Some(FlowTable::Confirmed),
        "{name}: UDP"
    );

    let family = if ipv6 {
        tables(&case).ipv6
    } else {
        tables(&case).ipv4
    };
    assert_eq!(
        (
            family.flows,
            family.pending,
            family.insert_failed,
            family.evictions
        ),
        (2, 0, 0, 0),
        "{name}: {family:?}"
    );
}

/// IPv4: SYN pending, ACK confirmed.
#[test]
fn ipv4_handshake_confirms_the_flow() {
    handshake_confirms("confirm4", Pkt::tcp4, Pkt::udp4, false);
}

/// IPv6: SYN pending, ACK confirmed.
#[test]
fn ipv6_handshake_confirms_the_flow() {
    handshake_confirms("confirm6", Pkt::tcp6, Pkt::udp6, true);
}

/// Twenty established connections that carried data, then a spoofed SYN
/// flood, a spoofed fake-handshake flood (SYN then ACK per tuple) and a
/// spoofed ACK flood of four times the connection table each: every
/// connection is still forwarded to its own backend from its table entry.
/// The SYNs evict only pending flows; the fake handshakes fill the free
/// room of the connection table and then stay pending (insert failures);
/// the ACKs open nothing (`drop_no_flow`). A new connection after the
/// floods works (pending, as the table is full); once the sweeper has shed
/// the silent fake handshakes (the table is under pressure), new
/// connections are confirmed again.
#[test]
fn floods_never_evict_confirmed_flows() {
    let name = "floods";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service_with_flags(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1), up(1)], 0);
    let data = |sport| Pkt::tcp4(sport, TCP_ACK | TCP_PSH).with_payload(b"RETR file\r\n");
    let mut idle = Vec::new();
    for sport in 40000..40000 + IDLE {
        let slot = u32::from(sport % 2);
        case.forward("idle SYN", &Pkt::tcp4(sport, TCP_SYN), SERVICE_ID, slot);
        case.forward("idle ACK", &Pkt::tcp4(sport, TCP_ACK), SERVICE_ID, slot);
        case.forward("idle data", &data(sport), SERVICE_ID, slot);
        idle.push((sport, slot));
    }

    for sport in 1000..1000 + FLOOD {
        run_expecting(&case, "SYN flood", &Pkt::tcp4(sport, TCP_SYN), XDP_TX);
    }
    let after_syns = tables(&case).ipv4;
    assert_eq!(
        (after_syns.flows, after_syns.insert_failed),
        (u64::from(IDLE), 0),
        "{name}: the SYN flood reached the connection table: {after_syns:?}"
    );
    assert!(
        after_syns.evictions >= u64::from(FLOOD) - u64::from(CAPACITY.ipv4),
        "{name}: the pending table did not evict: {after_syns:?}"
    );

    for sport in 10_000..10_000 + FLOOD {
        run_expecting(&case, "fake SYN", &Pkt::tcp4(sport, TCP_SYN), XDP_TX);
        run_expecting(&case, "fake ACK", &Pkt::tcp4(sport, TCP_ACK), XDP_TX);
    }
    // Each fake handshake is confirmed while its set or the overflow hash
    // has room, else refused: the table holds at least its capacity (its
    // sets hold as many again as the hash, less the ways of sets the
    // flood left short), and refuses the rest.
    let after_fakes = tables(&case).ipv4;
    assert_eq!(
        after_fakes.flows + after_fakes.insert_failed,
        u64::from(IDLE) + u64::from(FLOOD),
        "{name}: fake handshakes, confirmed or refused: {after_fakes:?}"
    );
    assert!(
        after_fakes.flows >= u64::from(CAPACITY.ipv4)
            && after_fakes.flows
                <= u64::from(CAPACITY.ipv4 + confirmed_set_capacity(CAPACITY.ipv4))
            && after_fakes.insert_failed > 0,
        "{name}: fake handshakes fill the table, then are refused: {after_fakes:?}"
    );

    let no_flow_before = case.verdicts()[REASON_NO_FLOW as usize].packets;
    for sport in 20_000..20_000 + FLOOD {
        run_expecting(&case, "ACK flood", &Pkt::tcp4(sport, TCP_ACK), XDP_DROP);
    }
    assert_eq!(
        case.verdicts()[REASON_NO_FLOW as usize].packets - no_flow_before,
        u64::from(FLOOD),
        "{name}: drop_no_flow"
    );
    assert_eq!(tables(&case).ipv4.flows, after_fakes.flows);

    for &(sport, slot) in &idle {
        case.forward("idle after the floods", &data(sport), SERVICE_ID, slot);
        assert_eq!(
            case.table_of(&data(sport)),
            Some(FlowTable::Confirmed),
            "{name}: idle connection {sport}"
        );
    }

    // A new connection while the table is full: scheduled, kept pending
    // (counted as an insert failure at its ACK, and again when its first
    // payload tries once more), and it keeps its backend.
    // (The floods' evicted half-open flows still count on their backends
    // until the next sweep, so either may take it.)
    let new = |sport, flags| Pkt::tcp4(sport, flags);
    run_expecting(&case, "new SYN", &new(50000, TCP_SYN), XDP_TX);
    let bound = case.flow(&new(50000, TCP_SYN)).expect("the new flow");
    let slot = u32::from(bound.backend_slot);
    case.forward("new ACK", &new(50000, TCP_ACK), SERVICE_ID, slot);
    case.forward("new data", &data(50000), SERVICE_ID, slot);
    assert_eq!(
        case.table_of(&data(50000)),
        Some(FlowTable::Pending),
        "{name}: a new flow into a full table"
    );
    assert_eq!(
        tables(&case).ipv4.insert_failed,
        after_fakes.insert_failed + 2,
        "{name}: the refused confirmations are counted"
    );

    // Recovery: with the SYN_RECV timeout elapsed, a sweep of the full
    // (pressured) table expires the half-open flows and the silent fake
    // handshakes, and keeps every connection that carried data.
    let services = case.service_values();
    let report = sweeper::sweep(
        &mut case.dp.maps,
        &services,
        &Timeouts {
            syn_recv: 0,
            ..Timeouts::IPVS
        },
    )
    .unwrap_or_else(|e| panic!("{name}: sweeping: {e:#}"));
    let recovered = tables(&case).ipv4;
    assert_eq!(
        (recovered.flows, recovered.pending, report.live),
        (u64::from(IDLE), 1, usize::from(IDLE) + 1),
        "{name}: after the sweep: {recovered:?}"
    );
    for &(sport, slot) in &idle {
        case.forward("idle after the sweep", &data(sport), SERVICE_ID, slot);
    }
    case.forward("new flow after the sweep", &data(50000), SERVICE_ID, slot);
    case.forward("next SYN", &new(50001, TCP_SYN), SERVICE_ID, 1 - slot);
    case.forward("next ACK", &new(50001, TCP_ACK), SERVICE_ID, 1 - slot);
    assert_eq!(
        case.table_of(&new(50001, TCP_ACK)),
        Some(FlowTable::Confirmed),
        "{name}: a new connection is confirmed again"
    );
    let after = tables(&case).ipv4;
    assert_eq!(
        after.evictions, recovered.evictions,
        "{name}: nothing evicted since the sweep: {after:?}"
    );
}
