//! Schedulers beside wlc: `mh` picks the entry of the service's Maglev
//! table at the flow's hash, the same after a fresh load (the table depends
//! on the backends' addresses only), and schedules a TCP packet of an
//! unknown flow, which wlc drops; when a backend goes down, `mh` moves only
//! its flows; `sh` keeps a client on one backend; `rr` cycles over the
//! backends and `wrr` follows the weights.

use std::net::IpAddr;

use lb_common::{
    BACKEND_STATE_DOWN, FlowKey, PROTO_TCP, REASON_NO_FLOW, SCHEDULER_MH, SCHEDULER_RR,
    SCHEDULER_SH, SCHEDULER_WLC, SCHEDULER_WRR, Service, ServiceKey,
    conn_state::{TCP_ACK, TCP_SYN},
    flow_hash,
};
use lb_tests::{
    VIP4,
    frame::{L4, PORT, Pkt},
    xdp_case::{Case, Expect, Real, SERVICE_ID, backend_set, up},
};

/// Installs TCP service [`SERVICE_ID`] on VIP4 over `reals` with
/// `SCHEDULER_*` `scheduler` (not sloppy: only a SYN opens a flow).
fn install(case: &mut Case, scheduler: u32, reals: &[Real]) {
    let vip = IpAddr::from(VIP4);
    case.dp
        .maps
        .set_service(
            &[ServiceKey::new(vip, PORT, PROTO_TCP, 0)],
            Service {
                id: SERVICE_ID,
                scheduler,
                ..Service::default()
            },
            &backend_set(SERVICE_ID, vip, reals),
        )
        .unwrap_or_else(|e| panic!("{}: set_service: {e:#}", case.name));
}

/// A TCP packet with `flags` from client address `client` (last octet of
/// 203.0.113.0/24), port `sport`.
fn tcp(client: u8, sport: u16, flags: u8) -> Pkt {
    Pkt::between(
        IpAddr::from([203, 0, 113, client]),
        VIP4.into(),
        L4::Tcp {
            sport,
            dport: PORT,
            flags,
        },
    )
}

/// The slot the service's table holds at `hash`.
fn table_slot(case: &Case, hash: u64) -> u32 {
    let table = case
        .dp
        .maps
        .schedule_tables
        .get(&SERVICE_ID, 0)
        .unwrap_or_else(|e| panic!("{}: the schedule table: {e}", case.name));
    let entry = table.slots[(hash % u64::from(table.len)) as usize];
    assert_ne!(entry, 0, "{}: an empty table entry", case.name);
    u32::from(entry - 1)
}

/// The hash `mh` uses for the flow of `pkt`.
fn mh_hash(pkt: &Pkt) -> u64 {
    match pkt.flow_key() {
        FlowKey::V4(key) => flow_hash(&key.words()),
        FlowKey::V6(key) => flow_hash(&key.words()),
    }
}

/// Four equal backends.
const FOUR: [Real; 4] = [up(1), up(1), up(1), up(1)];

/// Every SYN goes to the slot at its 5-tuple's hash in the Maglev table,
/// byte for byte; a fresh data path builds the same table and sends every
/// flow to the same backend.
#[test]
fn mh_picks_the_table_entry_at_the_flows_hash() {
    let Some(mut first) = Case::new("mh") else {
        return;
    };
    install(&mut first, SCHEDULER_MH, &FOUR);
    let Some(mut second) = Case::new("mh, a fresh load") else {
        return;
    };
    install(&mut second, SCHEDULER_MH, &FOUR);
    let tables = |case: &Case| case.dp.maps.schedule_tables.get(&SERVICE_ID, 0).unwrap();
    assert!(
        tables(&first) == tables(&second),
        "the two loads built different tables"
    );
    let mut per_slot = [0u32; 4];
    for i in 0..200u16 {
        let syn = tcp(1 + (i % 50) as u8, 40000 + i, TCP_SYN);
        let slot = table_slot(&first, mh_hash(&syn));
        first.forward(&format!("SYN {i}"), &syn, SERVICE_ID, slot);
        second.forward(&format!("SYN {i}, fresh load"), &syn, SERVICE_ID, slot);
        per_slot[slot as usize] += 1;
    }
    assert!(
        per_slot.iter().all(|&n| n > 25),
        "spread over the four: {per_slot:?}"
    );
}

/// A TCP packet of a flow this director never saw (after a failover) is
/// scheduled by the hash under mh, to the backend its SYN would have had;
/// wlc drops it as `drop_no_flow`.
#[test]
fn mh_schedules_packets_of_unknown_flows() {
    for (scheduler, name) in [(SCHEDULER_MH, "mh"), (SCHEDULER_WLC, "wlc")] {
        let Some(mut case) = Case::new(format!("unknown flows ({name})")) else {
            return;
        };
        install(&mut case, scheduler, &FOUR);
        let ack = tcp(7, 41000, TCP_ACK);
        if scheduler == SCHEDULER_MH {
            let slot = table_slot(&case, mh_hash(&ack));
            case.forward("an ACK of an unknown flow", &ack, SERVICE_ID, slot);
        } else {
            case.send(
                "an ACK of an unknown flow",
                &ack.build(),
                Expect::Drop(REASON_NO_FLOW),
            );
        }
    }
}

/// A backend that goes down takes its flows' table entries with it: new
/// flows that were on the other backends stay there, the down backend's
/// flows spread over the others.
#[test]
fn mh_moves_only_the_flows_of_a_backend_that_goes_down() {
    let Some(mut case) = Case::new("mh, a backend down") else {
        return;
    };
    install(&mut case, SCHEDULER_MH, &FOUR);
    let syns: Vec<Pkt> = (0..200u16).map(|i| tcp(9, 42000 + i, TCP_SYN)).collect();
    let before: Vec<u32> = syns.iter().map(|s| table_slot(&case, mh_hash(s))).collect();
    let mut down = FOUR;
    down[2].state = BACKEND_STATE_DOWN;
    install(&mut case, SCHEDULER_MH, &down);
    let mut moved = 0;
    for (i, (syn, &was)) in syns.iter().zip(&before).enumerate() {
        let now = table_slot(&case, mh_hash(syn));
        if was == 2 {
            assert_ne!(now, 2, "{}: flow {i} still on the down backend", case.name);
            moved += 1;
        } else {
            assert_eq!(
                now, was,
                "{}: flow {i} moved off a backend that stayed up",
                case.name
            );
        }
        case.forward(&format!("SYN {i}"), syn, SERVICE_ID, now);
    }
    assert!(
        moved > 20,
        "{}: {moved} flows were on the down backend",
        case.name
    );
}

/// Under sh every connection of a client goes to one backend, whatever
/// its ports; clients spread over the backends.
#[test]
fn sh_keeps_a_client_on_one_backend() {
    let Some(mut case) = Case::new("sh") else {
        return;
    };
    install(&mut case, SCHEDULER_SH, &FOUR);
    let mut used = [false; 4];
    for client in 1..=40u8 {
        let address = IpAddr::from([203, 0, 113, client]);
        let words: [u64; 2] = {
            let (bytes, _) = lb_common::addr_key(address);
            [
                u64::from_ne_bytes(bytes[..8].try_into().unwrap()),
                u64::from_ne_bytes(bytes[8..].try_into().unwrap()),
            ]
        };
        let slot = table_slot(&case, flow_hash(&words));
        used[slot as usize] = true;
        for sport in [40000, 40001, 51234] {
            case.forward(
                &format!("client {client}"),
                &tcp(client, sport, TCP_SYN),
                SERVICE_ID,
                slot,
            );
        }
    }
    assert!(
        used.iter().all(|&u| u),
        "sh left a backend unused: {used:?}"
    );
}

/// Pins the calling thread to the CPU it runs on: round robin keeps a
/// position per CPU, and the case below follows one CPU's sequence.
fn stay_on_this_cpu() {
    // SAFETY: sched_getcpu has no preconditions; a zeroed cpu_set_t is a
    // valid empty set, CPU_SET writes inside it, and sched_setaffinity reads
    // a set of the size passed.
    unsafe {
        let cpu = usize::try_from(libc::sched_getcpu()).expect("a CPU number");
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "pinning the test thread"
        );
    }
}

/// rr cycles over the backends in slot order, skipping a drained one; wrr
/// with weights 3:1 sends three of every four new flows to the first.
#[test]
fn round_robin_cycles_and_weighted_round_robin_weighs() {
    stay_on_this_cpu();
    let Some(mut case) = Case::new("rr") else {
        return;
    };
    let mut reals = [up(1), up(1), up(0), up(1)];
    reals[2].weight = 0;
    install(&mut case, SCHEDULER_RR, &reals);
    for (i, slot) in [0, 1, 3, 0, 1, 3, 0].into_iter().enumerate() {
        case.forward(
            &format!("SYN {i}"),
            &tcp(20, 43000 + i as u16, TCP_SYN),
            SERVICE_ID,
            slot,
        );
    }
    let Some(mut case) = Case::new("wrr") else {
        return;
    };
    install(&mut case, SCHEDULER_WRR, &[up(300), up(100)]);
    let mut per_slot = [0u32; 2];
    for i in 0..40u16 {
        let syn = tcp(21, 44000 + i, TCP_SYN);
        let slot = table_slot(&case, u64::from(i));
        case.forward(&format!("SYN {i}"), &syn, SERVICE_ID, slot);
        per_slot[slot as usize] += 1;
    }
    assert_eq!(per_slot, [30, 10], "{}", case.name);
}
