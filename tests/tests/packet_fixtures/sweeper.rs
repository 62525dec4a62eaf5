//! The control plane's sweeper against the data path's own counting.

use lb::sweeper;
use lb_common::{
    CONNTRACK4_MAP, CONNTRACK6_MAP, PROTO_TCP,
    conn_state::{TCP_ACK, TCP_SYN, Timeouts},
};
use lb_tests::{
    VIP4, VIP6,
    frame::Pkt,
    xdp_case::{CAPACITY, Case, DECOY_ID, SERVICE_ID, XDP_TX, up},
};

/// Flows the pending tables evicted, or the sweeper expired, leave no counts
/// behind: the sweeper corrects every backend's counters by both tables
/// (an IPv4 service's from CONNTRACK4, an IPv6 service's from CONNTRACK6).
#[test]
fn sweeper_reconciles_evicted_flows_and_expires_idle_ones() {
    let name = "sweeper";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1), up(1)]);
    case.service(DECOY_ID, VIP6.into(), PROTO_TCP, &[up(1), up(1)]);
    let services = case.service_values();
    let slots = |case: &Case, id| [case.conns(id, 0), case.conns(id, 1)];
    let inactive = |case: &Case, id| slots(case, id).iter().map(|c| c.inactive).sum::<u64>();

    // Three times each table's size of new flows: the pending table
    // evicts, but the data path counted every flow it opened.
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
        "{name}: no pending eviction happened ({live4} IPv4 and {live6} IPv6 flows)"
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
    for id in [SERVICE_ID, DECOY_ID] {
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
    let services = case.service_values();
    let report = sweeper::sweep(
        &mut case.dp.maps,
        &services,
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

/// A flow that the data path refreshes between the sweeper's walk and its
/// deletes stays (it is tallied as live); one still idle is deleted.
#[test]
fn sweeper_keeps_a_flow_refreshed_during_its_walk() {
    let name = "sweeper_refreshed";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1)]);
    // A SYN_RECV timeout of zero: both half-open flows are idle at once.
    let timeouts = Timeouts {
        syn_recv: 0,
        ..Timeouts::IPVS
    };
    let refreshed = Pkt::tcp4(40001, TCP_SYN);
    let idle = Pkt::tcp4(40002, TCP_SYN);
    case.forward("SYN 1", &refreshed, SERVICE_ID, 0);
    case.forward("SYN 2", &idle, SERVICE_ID, 0);
    let mut walk = sweeper::walk(&mut case.dp.maps, &[], &timeouts).expect("walking the tables");
    assert_eq!(walk.idle.len(), 2, "{name}: idle flows found by the walk");
    // The handshake of flow 1 completes while the sweep is under way.
    case.forward("ACK 1", &Pkt::tcp4(40001, TCP_ACK), SERVICE_ID, 0);
    assert_eq!(
        sweeper::expire(&mut case.dp.maps, &mut walk, &timeouts).len(),
        1,
        "{name}: expired"
    );
    assert!(
        case.flow(&refreshed).is_some(),
        "{name}: the refreshed flow was deleted"
    );
    assert!(case.flow(&idle).is_none(), "{name}: the idle flow was kept");
}

/// Flows the data path opens and confirms while a sweep is under way
/// (between its walk and its counter writes) stay counted: the sweep
/// corrects the counters by the drift it found (here a flow the counters
/// lost) instead of writing its tally over them, and the scheduler tree it
/// rebuilds sends the next flow where wlc would.
#[test]
fn a_sweep_keeps_the_flows_opened_while_it_ran() {
    let name = "sweeper_concurrent";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1), up(1)]);
    let services = case.service_values();
    // Two established flows on slot 0 and one on slot 1 before the sweep.
    for (sport, slot) in [(41001, 0), (41002, 1), (41003, 0)] {
        case.forward("SYN", &Pkt::tcp4(sport, TCP_SYN), SERVICE_ID, slot);
        case.forward("ACK", &Pkt::tcp4(sport, TCP_ACK), SERVICE_ID, slot);
    }
    case.expect_conns("before the sweep", SERVICE_ID, 0, 2, 0);
    case.expect_conns("before the sweep", SERVICE_ID, 1, 1, 0);
    // Slot 1's counter lost its flow (as a racing reset can lose one).
    let mut lost = case.conn_set(SERVICE_ID);
    lost.conns[1].active = 0;
    case.set_conns(SERVICE_ID, &lost);

    let report = sweeper::collect(&mut case.dp.maps, &services, &Timeouts::IPVS)
        .expect("walking the tables");
    // While the sweep runs: slot 1, which looks idle, takes two new flows;
    // one is confirmed, the other stays half-open.
    case.forward("SYN 4", &Pkt::tcp4(41004, TCP_SYN), SERVICE_ID, 1);
    case.forward("ACK 4", &Pkt::tcp4(41004, TCP_ACK), SERVICE_ID, 1);
    case.forward("SYN 5", &Pkt::tcp4(41005, TCP_SYN), SERVICE_ID, 1);
    case.expect_conns("during the sweep", SERVICE_ID, 1, 1, 1);
    sweeper::write_counts(&mut case.dp.maps, &services, &report).expect("writing the counts");

    // The lost flow is back, and the two opened meanwhile are still there.
    case.expect_conns("after the sweep", SERVICE_ID, 0, 2, 0);
    case.expect_conns("after the sweep", SERVICE_ID, 1, 2, 1);
    // Overhead 2 * 256 on slot 0 and 2 * 256 + 1 on slot 1: slot 0 next.
    case.forward("SYN 6", &Pkt::tcp4(41006, TCP_SYN), SERVICE_ID, 0);
    // A sweep with nothing under way changes nothing.
    let report =
        sweeper::sweep(&mut case.dp.maps, &services, &Timeouts::IPVS).expect("sweeping the tables");
    assert_eq!(report.live, 6, "{name}: live flows");
    case.expect_conns("after a quiet sweep", SERVICE_ID, 0, 2, 1);
    case.expect_conns("after a quiet sweep", SERVICE_ID, 1, 2, 1);
}

/// The batched walk the sweeper uses sees every flow of both tables once
/// (the connection tables in batches, the pending tables set by set),
/// whatever the batch size (here a few flows a call, so the walk resumes
/// from the kernel's position many times): the same flows as a key-by-key
/// walk of unchanging tables.
#[test]
fn batched_walk_sees_every_flow_once() {
    let name = "sweeper_batched_walk";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1)]);
    case.service(DECOY_ID, VIP6.into(), PROTO_TCP, &[up(1)]);
    // 300 confirmed flows of each family, and 40 half-open ones.
    for sport in 0..340 {
        let flags: &[u8] = if sport < 300 {
            &[TCP_SYN, TCP_ACK]
        } else {
            &[TCP_SYN]
        };
        for &flags in flags {
            case.run(&Pkt::tcp4(20_000 + sport, flags).build())
                .expect("BPF_PROG_TEST_RUN");
            case.run(&Pkt::tcp6(20_000 + sport, flags).build())
                .expect("BPF_PROG_TEST_RUN");
        }
    }
    let mut expected: Vec<_> = case.dp.maps.flows().map(|(key, _)| key).collect();
    expected.sort_by_key(|key| format!("{key:?}"));
    assert_eq!(expected.len(), 680, "{name}: flows in the tables");
    for batch in [1, 7, 4096] {
        let mut seen = Vec::new();
        case.dp
            .maps
            .for_each_flow_in_batches(batch, |_, key, _| seen.push(key))
            .expect("a batched walk");
        seen.sort_by_key(|key| format!("{key:?}"));
        assert_eq!(seen, expected, "{name}: batches of {batch}");
    }
}
