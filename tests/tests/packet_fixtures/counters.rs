//! The data path's counters: bytes without the Ethernet header, a forwarded
//! frame counted once (per backend), and totals that outlive a reused slot
//! or a removed service.

use lb_common::{
    Counters, PROTO_TCP, REASON_FORWARDED, REASON_NOT_L4,
    conn_state::{TCP_ACK, TCP_SYN},
};
use lb_tests::{
    VIP4,
    frame::{CLIENT4, L4, Pkt, TCP_PSH},
    xdp_case::{Case, Expect, SERVICE_ID, counted, l3, up},
};

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
        .remove_service(SERVICE_ID)
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
