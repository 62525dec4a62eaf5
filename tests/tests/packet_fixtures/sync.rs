//! What the data path tells connection sync: while `SYNC_ENABLED` is on,
//! every flow that enters a connection table and every state change there
//! is written to the `FLOW_CHANGES` ring, byte for byte the table's entry
//! and key; half-open flows, packets that change nothing but the flags and
//! everything while sync is off are not. A flow installed by sync
//! (`FLOW_SYNCED`) is forwarded to its slot and becomes this director's own
//! on its first packet.

use aya::maps::{MapData, RingBuf};
use lb_common::{
    FLOW_CARRIED_DATA, FLOW_SYNCED, Flow, FlowChange, FlowKey, FlowKey4, FlowKey6, PROTO_TCP,
    PROTO_UDP,
    conn_state::{STATE_ESTABLISHED, STATE_FIN_WAIT, STATE_UDP, TCP_ACK, TCP_FIN, TCP_SYN},
};
use lb_tests::{
    VIP4, VIP6,
    frame::{Pkt, TCP_PSH},
    xdp_case::{Case, SERVICE_ID, up},
};

/// Every change in the ring, oldest first.
fn drain(ring: &mut RingBuf<MapData>) -> Vec<(FlowKey, Flow)> {
    let mut changes = Vec::new();
    while let Some(item) = ring.next() {
        let change = match item.len() {
            32 => {
                // SAFETY: a FlowChange<FlowKey4> the program wrote.
                let c = unsafe {
                    item.as_ptr()
                        .cast::<FlowChange<FlowKey4>>()
                        .read_unaligned()
                };
                (FlowKey::V4(c.key), c.flow)
            }
            56 => {
                // SAFETY: a FlowChange<FlowKey6> the program wrote.
                let c = unsafe {
                    item.as_ptr()
                        .cast::<FlowChange<FlowKey6>>()
                        .read_unaligned()
                };
                (FlowKey::V6(c.key), c.flow)
            }
            n => panic!("a ring entry of {n} bytes"),
        };
        changes.push(change);
    }
    changes
}

/// Asserts that the ring holds exactly `pkt`'s flow as its table holds it.
fn expect_change(case: &Case, ring: &mut RingBuf<MapData>, label: &str, pkt: &Pkt) {
    let flow = case
        .flow(pkt)
        .unwrap_or_else(|| panic!("{}/{label}: no flow", case.name));
    assert_eq!(
        drain(ring),
        [(pkt.flow_key(), flow)],
        "{}/{label}: the ring",
        case.name
    );
}

fn changes_while_sync_is_on(name: &str, tcp: fn(u16, u8) -> Pkt, udp: fn(u16) -> Pkt, ipv6: bool) {
    let Some(mut case) = Case::new(name) else {
        return;
    };
    let vip = if ipv6 { VIP6.into() } else { VIP4.into() };
    case.service(SERVICE_ID, vip, PROTO_TCP, &[up(1), up(1)]);
    case.service(SERVICE_ID + 1, vip, PROTO_UDP, &[up(1)]);
    let mut ring = case.dp.maps.take_flow_changes().expect("the ring");

    // Off: a whole connection leaves nothing.
    case.forward("off SYN", &tcp(40000, TCP_SYN), SERVICE_ID, 0);
    case.forward("off ACK", &tcp(40000, TCP_ACK), SERVICE_ID, 0);
    case.forward("off datagram", &udp(40000), SERVICE_ID + 1, 0);
    assert_eq!(drain(&mut ring), [], "{name}: sync off");

    case.dp.maps.set_sync_enabled(true).expect("sync on");
    // A half-open flow is not announced; its confirmation is.
    case.forward("SYN", &tcp(40001, TCP_SYN), SERVICE_ID, 1);
    assert_eq!(drain(&mut ring), [], "{name}: SYN");
    let ack = tcp(40001, TCP_ACK);
    case.forward("ACK", &ack, SERVICE_ID, 1);
    case.expect_flow("ACK", &ack, SERVICE_ID, 1, STATE_ESTABLISHED);
    expect_change(&case, &mut ring, "ACK", &ack);
    // Data changes only the flags: nothing to tell.
    let data = tcp(40001, TCP_ACK | TCP_PSH).with_payload(b"RETR big\r\n");
    case.forward("data", &data, SERVICE_ID, 1);
    assert_eq!(drain(&mut ring), [], "{name}: data");
    // A state change of a confirmed flow is, with its flags.
    let fin = tcp(40001, TCP_ACK | TCP_FIN);
    case.forward("FIN", &fin, SERVICE_ID, 1);
    case.expect_flow("FIN", &fin, SERVICE_ID, 1, STATE_FIN_WAIT);
    assert_eq!(
        case.flow(&fin).map(|f| f.flags),
        Some(FLOW_CARRIED_DATA),
        "{name}: FIN flags"
    );
    expect_change(&case, &mut ring, "FIN", &fin);
    // A UDP flow is confirmed, and announced, at once.
    let datagram = udp(40002);
    case.forward("datagram", &datagram, SERVICE_ID + 1, 0);
    case.expect_flow("datagram", &datagram, SERVICE_ID + 1, 0, STATE_UDP);
    expect_change(&case, &mut ring, "datagram", &datagram);
    // Its next datagram changes nothing.
    case.forward("datagram 2", &datagram, SERVICE_ID + 1, 0);
    assert_eq!(drain(&mut ring), [], "{name}: datagram 2");

    case.dp.maps.set_sync_enabled(false).expect("sync off");
    // wlc: slot 0 holds an active connection, slot 1 a closing one.
    case.forward("off again SYN", &tcp(40003, TCP_SYN), SERVICE_ID, 1);
    case.forward("off again ACK", &tcp(40003, TCP_ACK), SERVICE_ID, 1);
    assert_eq!(drain(&mut ring), [], "{name}: sync off again");
}

#[test]
fn changes_while_sync_is_on_ipv4() {
    changes_while_sync_is_on("sync_changes_ipv4", Pkt::tcp4, Pkt::udp4, false);
}

#[test]
fn changes_while_sync_is_on_ipv6() {
    changes_while_sync_is_on("sync_changes_ipv6", Pkt::tcp6, Pkt::udp6, true);
}

/// A flow installed by sync on slot 1 (where the scheduler would pick slot
/// 0 for a new flow) is forwarded there; its first packet here clears
/// `FLOW_SYNCED` and is not announced again.
#[test]
fn a_synced_copy_is_forwarded_and_becomes_ours() {
    const NAME: &str = "sync_copy_becomes_ours";
    let Some(mut case) = Case::new(NAME) else {
        return;
    };
    case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1), up(1)]);
    let mut ring = case.dp.maps.take_flow_changes().expect("the ring");
    case.dp.maps.set_sync_enabled(true).expect("sync on");
    let data = Pkt::tcp4(41000, TCP_ACK | TCP_PSH).with_payload(b"more data\r\n");
    let copy = Flow {
        last_seen_ns: 1,
        service_id: SERVICE_ID as u16,
        backend_slot: 1,
        state: STATE_ESTABLISHED as u16,
        flags: FLOW_SYNCED,
    };
    case.dp
        .maps
        .insert_flow(&data.flow_key(), &copy)
        .expect("installing the copy");
    case.forward("data", &data, SERVICE_ID, 1);
    let flow = case.flow(&data).expect("the flow");
    assert_eq!(
        (flow.backend_slot, flow.flags),
        (1, FLOW_CARRIED_DATA),
        "{NAME}: slot and flags"
    );
    assert!(flow.last_seen_ns > 1, "{NAME}: refreshed");
    assert_eq!(drain(&mut ring), [], "{NAME}: not announced");
}
