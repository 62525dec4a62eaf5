//! The pending tables' sets (`lb_common::flow_set`): a set keeps two flows;
//! a third flow whose key lands in it takes the way of the flow seen least
//! recently, whose next packets then find no flow, and `lb stats` counts it
//! as evicted. The other flows of the set, and every other set, keep theirs.

use std::{collections::HashMap, thread, time::Duration};

use lb::inspect::stats::FlowTables;
use lb_common::{
    FLOW_SET_WAYS, FlowKey, PROTO_TCP, REASON_NO_FLOW,
    conn_state::{STATE_ESTABLISHED, TCP_ACK, TCP_SYN},
    flow_set_index,
};
use lb_tests::{
    VIP4,
    frame::Pkt,
    xdp_case::{CAPACITY, Case, Expect, SERVICE_ID, up},
};

/// Two triples of client ports from 40000 whose flows to the service land
/// in one pending set each (two different sets) of a table of `sets` sets.
fn two_triples_in_sets(sets: u32) -> [[u16; 3]; 2] {
    let set_of = |port: u16| {
        let FlowKey::V4(key) = Pkt::tcp4(port, TCP_SYN).flow_key() else {
            unreachable!("an IPv4 packet")
        };
        flow_set_index(&key.words(), sets)
    };
    let mut seen: HashMap<u32, Vec<u16>> = HashMap::new();
    let mut triples = vec![];
    for port in 40000..u16::MAX {
        let ports = seen.entry(set_of(port)).or_default();
        ports.push(port);
        if let [a, b, c] = ports[..] {
            triples.push([a, b, c]);
            if let [one, two] = triples[..] {
                return [one, two];
            }
        }
    }
    unreachable!("25,535 ports over {sets} sets put three in two of them")
}

/// Three half-open flows in one set, on a fresh data path: after the first
/// two SYNs, a retransmitted SYN refreshes flow `refreshed` (0 or 1); the
/// third SYN then takes the way of the other one, seen least recently (not
/// the oldest, not a fixed way): its ACK finds no flow (`drop_no_flow`),
/// the two others keep their backends and complete their handshakes, and
/// the eviction is counted.
fn third_flow_evicts_the_least_recently_seen(name: &str, ports: [u16; 3], refreshed: usize) {
    let Some(mut case) = Case::new(name) else {
        return;
    };
    // Not `sloppy_tcp`: an ACK without a flow is dropped, as IPVS does.
    case.service_with_flags(
        SERVICE_ID,
        VIP4.into(),
        PROTO_TCP,
        &[up(1), up(1), up(1)],
        0,
    );
    // Slots by wlc: each new flow takes the least loaded backend.
    for (slot, port) in (0..).zip(&ports[..2]) {
        case.forward("SYN", &Pkt::tcp4(*port, TCP_SYN), SERVICE_ID, slot);
    }
    // The coarse clock must move for the flows' times to differ.
    thread::sleep(Duration::from_millis(20));
    let syn = Pkt::tcp4(ports[refreshed], TCP_SYN);
    case.forward("retransmitted SYN", &syn, SERVICE_ID, refreshed as u32);
    thread::sleep(Duration::from_millis(20));
    case.forward("third SYN", &Pkt::tcp4(ports[2], TCP_SYN), SERVICE_ID, 2);

    let evicted = 1 - refreshed;
    assert!(
        case.flow(&Pkt::tcp4(ports[evicted], TCP_SYN)).is_none(),
        "{name}: the flow seen least recently is still pending"
    );
    case.send(
        "ACK of the evicted flow",
        &Pkt::tcp4(ports[evicted], TCP_ACK).build(),
        Expect::Drop(REASON_NO_FLOW),
    );
    for (port, slot) in [(ports[refreshed], refreshed as u32), (ports[2], 2)] {
        let ack = Pkt::tcp4(port, TCP_ACK);
        case.forward("ACK of a kept flow", &ack, SERVICE_ID, slot);
        case.expect_flow("confirmed", &ack, SERVICE_ID, slot, STATE_ESTABLISHED);
    }
    let flows = FlowTables::read(&case.dp.maps).expect("reading the flow tables");
    assert_eq!(
        (flows.ipv4.flows, flows.ipv4.pending, flows.ipv4.evictions),
        (2, 0, 1),
        "{name}: (confirmed, pending, evicted) flows"
    );
}

/// The flow in the set's first way goes when the second was refreshed, and
/// the second way's when the first was.
#[test]
fn a_third_flow_in_a_full_set_evicts_the_least_recently_seen() {
    let sets = CAPACITY.pending_ipv4 / FLOW_SET_WAYS as u32;
    let [one, two] = two_triples_in_sets(sets);
    third_flow_evicts_the_least_recently_seen("pending_set_evicts_first", one, 1);
    third_flow_evicts_the_least_recently_seen("pending_set_evicts_second", two, 0);
}
