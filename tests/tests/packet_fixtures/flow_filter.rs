//! The flow filter (`lb_common::flow_filter`): a SYN whose mark is clear
//! skips the flow tables, so every way a flow enters a table must mark it,
//! and the sweeper's rebuild must keep every flow's mark.

use lb::{datapath::maps::monotonic_ns, sweeper};
use lb_common::{
    Flow, FlowKey, PROTO_TCP,
    conn_state::{STATE_CLOSE, TCP_SYN, Timeouts},
};
use lb_tests::{
    VIP4,
    frame::Pkt,
    xdp_case::{Case, SERVICE_ID, up},
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

/// A flow opened while a rebuild runs is marked in the generation the
/// rebuild fills, even when the walk does not see it: after the rebuild,
/// its retransmitted SYN still finds it and keeps its backend.
#[test]
fn a_flow_opened_during_a_rebuild_keeps_its_mark() {
    let name = "flow_filter_rebuild";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1), up(1)]);
    let syn = Pkt::tcp4(42010, TCP_SYN);

    let rebuild = case
        .dp
        .maps
        .flow_filter
        .begin_rebuild()
        .expect("starting a rebuild");
    case.forward("SYN during the rebuild", &syn, SERVICE_ID, 0);
    // No walk: only the data path's mark can keep the flow visible.
    case.dp
        .maps
        .flow_filter
        .finish_rebuild(rebuild)
        .expect("finishing the rebuild");

    // Found, it stays on slot 0; scheduled afresh, it would go to the idle
    // slot 1 and count a second connection.
    case.forward("retransmitted SYN", &syn, SERVICE_ID, 0);
    case.expect_conns("after the retransmission", SERVICE_ID, 0, 0, 1);
    case.expect_conns("after the retransmission", SERVICE_ID, 1, 0, 0);
}

/// A rebuild clears the marks of flows that left the tables, and keeps
/// those of the flows still there.
#[test]
fn a_rebuild_clears_the_marks_of_flows_that_left() {
    let name = "flow_filter_clears";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1), up(1)]);
    let services = case.service_values();
    let occupancy = |case: &Case| {
        case.dp
            .maps
            .flow_filter
            .occupancy()
            .unwrap_or_else(|e| panic!("{name}: reading the filter: {e:#}"))
    };
    assert_eq!(occupancy(&case), 0, "{name}: marks of a new data path");
    for sport in 0..40 {
        case.run(&Pkt::tcp4(43000 + sport, TCP_SYN).build())
            .expect("BPF_PROG_TEST_RUN");
    }
    let marked = occupancy(&case);
    assert!(
        (30..=40).contains(&marked),
        "{name}: {marked} marks for 40 flows"
    );
    for sport in 0..30 {
        case.dp
            .maps
            .remove_flow(&Pkt::tcp4(43000 + sport, TCP_SYN).flow_key());
    }
    sweeper::walk(&mut case.dp.maps, &services, &Timeouts::IPVS).expect("walking the tables");
    let kept = occupancy(&case);
    assert!(
        (8..=10).contains(&kept),
        "{name}: {kept} marks for the 10 flows left"
    );
    // Their retransmitted SYNs find them: same backends, no new connection.
    let counted = case.conn_set(SERVICE_ID);
    for sport in 30..40 {
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
