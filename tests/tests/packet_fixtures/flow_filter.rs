//! The flow filter (`lb_common::flow_filter`): a SYN skips each table whose
//! mark for its key is clear, so every way a flow enters a table must mark
//! it, with that table's kind of mark, and the sweeper's rebuild must keep
//! every flow's marks.

use lb::{datapath::maps::monotonic_ns, sweeper};
use lb_common::{
    Flow, FlowKey, PROTO_TCP,
    conn_state::{STATE_CLOSE, TCP_ACK, TCP_SYN, Timeouts},
};
use lb_tests::{
    VIP4,
    frame::Pkt,
    xdp_case::{Case, SERVICE_ID, XDP_TX, up},
};

/// A closed flow of client port `sport` bound to slot 1: a SYN that finds
/// it follows it to slot 1; a SYN scheduled afresh on an idle service goes
/// to slot 0.
fn closed_on_slot_1(sport: u16) -> (FlowKey, Flow) {
    let flow = Flow {
        last_seen_ns: monotonic_ns(),
        service_id: SERVICE_ID as u16,
        backend_slot: 1,
        state: STATE_CLOSE as u16,
        flags: 0,
    };
    (Pkt::tcp4(sport, TCP_SYN).flow_key(), flow)
}

/// A flow written to a table without a mark is invisible to a SYN (the
/// filter is consulted); the sweeper's walk marks it, and a flow the
/// control plane installs (`Maps::insert_flow`, as connection sync does)
/// is marked at once.
#[test]
fn a_syn_looks_in_the_tables_only_for_marked_flows() {
    let name = "flow_filter_marks";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1), up(1)]);
    let services = case.service_values();
    let raw_insert = |case: &mut Case, (key, flow): (FlowKey, Flow)| {
        let FlowKey::V4(key) = key else {
            unreachable!("an IPv4 packet")
        };
        case.dp
            .maps
            .conntrack4
            .insert(key, flow, 0)
            .unwrap_or_else(|e| panic!("{name}: writing CONNTRACK4: {e}"));
    };

    // Unmarked: the SYN is scheduled as a new flow (slot 0), not sent
    // after its closed flow (slot 1).
    raw_insert(&mut case, closed_on_slot_1(42001));
    case.forward(
        "SYN of an unmarked flow",
        &Pkt::tcp4(42001, TCP_SYN),
        SERVICE_ID,
        0,
    );

    // Marked by a sweep's walk.
    raw_insert(&mut case, closed_on_slot_1(42002));
    sweeper::walk(&mut case.dp.maps, &services, &Timeouts::IPVS).expect("walking the tables");
    case.forward(
        "SYN of a walked flow",
        &Pkt::tcp4(42002, TCP_SYN),
        SERVICE_ID,
        1,
    );

    // Marked by the control plane's insert.
    let (key, flow) = closed_on_slot_1(42003);
    case.dp
        .maps
        .insert_flow(&key, &flow)
        .unwrap_or_else(|e| panic!("{name}: inserting a flow: {e:#}"));
    case.forward(
        "SYN of an installed flow",
        &Pkt::tcp4(42003, TCP_SYN),
        SERVICE_ID,
        1,
    );
}

/// Opens flow `sport` with its SYN and confirms it with the handshake's
/// ACK (which moves it to the connection table).
fn open_and_confirm(case: &mut Case, sport: u16) {
    for flags in [TCP_SYN, TCP_ACK] {
        let (action, _) = case
            .run(&Pkt::tcp4(sport, flags).build())
            .expect("BPF_PROG_TEST_RUN");
        assert_eq!(action, XDP_TX, "flow {sport}");
    }
}

/// Flows that enter a table while a rebuild runs are marked in the
/// generation the rebuild fills, even when the walk does not see them:
/// after the rebuild, SYNs on their tuples still find them and keep their
/// backends. One is confirmed then (a confirmed mark), one only opened (a
/// pending mark).
#[test]
fn flows_opened_during_a_rebuild_keep_their_marks() {
    let name = "flow_filter_rebuild";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1), up(1)]);
    let confirmed = Pkt::tcp4(42010, TCP_SYN);
    let half_open = Pkt::tcp4(42011, TCP_SYN);

    let rebuild = case
        .dp
        .maps
        .flow_filter
        .begin_rebuild()
        .expect("starting a rebuild");
    open_and_confirm(&mut case, 42010);
    case.forward("SYN of the half-open flow", &half_open, SERVICE_ID, 1);
    // No walk: only the data path's marks can keep the flows visible.
    case.dp
        .maps
        .flow_filter
        .finish_rebuild(rebuild)
        .expect("finishing the rebuild");

    // Found, each stays on its slot and counts once; scheduled afresh, a
    // flow would count a second connection.
    case.forward("SYN on the confirmed flow", &confirmed, SERVICE_ID, 0);
    case.forward("retransmitted SYN", &half_open, SERVICE_ID, 1);
    case.expect_conns("after the SYNs", SERVICE_ID, 0, 1, 0);
    case.expect_conns("after the SYNs", SERVICE_ID, 1, 0, 1);
}

/// SYNs set pending marks only, their confirmations confirmed marks; a
/// rebuild clears the marks of flows that left the tables and keeps those
/// of the flows still there, of the kind of the table each is in.
#[test]
fn a_rebuild_clears_the_marks_of_flows_that_left() {
    let name = "flow_filter_clears";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1), up(1)]);
    let services = case.service_values();
    let occupancy = |case: &Case| {
        let marks = case
            .dp
            .maps
            .flow_filter
            .occupancy()
            .unwrap_or_else(|e| panic!("{name}: reading the filter: {e:#}"));
        (marks.confirmed.set, marks.pending.set)
    };
    assert_eq!(occupancy(&case), (0, 0), "{name}: marks of a new data path");
    for sport in 0..40 {
        case.run(&Pkt::tcp4(43000 + sport, TCP_SYN).build())
            .expect("BPF_PROG_TEST_RUN");
    }
    let (confirmed, pending) = occupancy(&case);
    assert_eq!(confirmed, 0, "{name}: confirmed marks after 40 SYNs");
    assert!(
        (30..=40).contains(&pending),
        "{name}: {pending} pending marks for 40 half-open flows"
    );
    for sport in 0..40 {
        open_and_confirm(&mut case, 43000 + sport);
    }
    let (confirmed, _) = occupancy(&case);
    assert!(
        (30..=40).contains(&confirmed),
        "{name}: {confirmed} confirmed marks for 40 confirmed flows"
    );
    for sport in 0..30 {
        case.dp
            .maps
            .remove_flow(&Pkt::tcp4(43000 + sport, TCP_SYN).flow_key());
    }
    // Five half-open flows besides the ten confirmed ones left.
    for sport in 100..105 {
        case.run(&Pkt::tcp4(43000 + sport, TCP_SYN).build())
            .expect("BPF_PROG_TEST_RUN");
    }
    sweeper::walk(&mut case.dp.maps, &services, &Timeouts::IPVS).expect("walking the tables");
    let (confirmed, pending) = occupancy(&case);
    assert!(
        (8..=10).contains(&confirmed),
        "{name}: {confirmed} confirmed marks for the 10 confirmed flows left"
    );
    assert!(
        (4..=5).contains(&pending),
        "{name}: {pending} pending marks for the 5 half-open flows left"
    );
    // SYNs on their tuples find them: same backends, no new connection.
    let counted = case.conn_set(SERVICE_ID);
    for sport in (30..40).chain(100..105) {
        let syn = Pkt::tcp4(43000 + sport, TCP_SYN);
        let flow = case.flow(&syn).expect("a kept flow");
        case.forward(
            "SYN of a kept flow",
            &syn,
            SERVICE_ID,
            u32::from(flow.backend_slot),
        );
    }
    assert_eq!(
        case.conn_set(SERVICE_ID),
        counted,
        "{name}: connections counted"
    );
}
