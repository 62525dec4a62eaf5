//! Backend selection: weights, health states and removals, IPVS's wlc as a
//! reference model, and flows whose backend or service went away.

use std::net::IpAddr;

use lb::datapath::maps::array_get;
use lb_common::{
    BACKEND_STATE_DOWN, BACKEND_STATE_EMPTY, BACKEND_STATE_REMOVED, BackendConns, LoadTree,
    MAX_BACKENDS, PROTO_TCP, PROTO_UDP, REASON_NO_BACKEND, REASON_REJECTED, SERVICE_FLAG_REJECT,
    SERVICE_FLAG_SLOPPY_TCP,
    conn_state::{
        STATE_ESTABLISHED, STATE_FIN_WAIT, STATE_SYN_RECV, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
    },
    wlc,
};
use lb_tests::{
    VIP4, VIP6,
    frame::{Ip, L4, Pkt, TCP_PSH, checksum},
    xdp_case::{Case, DECOY_ID, Expect, Fixture, Real, SERVICE_ID, run_fixtures, up},
};

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
/// no-backend) and records nothing: a SYN, a mid-flow ACK of a flow it does
/// not know and a UDP datagram, for each way a backend set can be unusable.
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
    let sets: [(&str, &[Real]); 5] = [
        ("all weight 0", &[up(0), up(0)]),
        ("all down", &[down, down]),
        ("down and weight 0", &[down, up(0)]),
        ("no backends", &[]),
        ("all slots empty", &[empty, empty]),
    ];
    let fixtures = sets.into_iter().flat_map(|(set, reals)| {
        [
            ("SYN", Pkt::tcp4(40000, TCP_SYN)),
            ("mid-flow ACK", Pkt::tcp4(40001, TCP_ACK)),
            ("UDP", Pkt::udp4(40002)),
        ]
        .map(|(what, pkt)| {
            Fixture::dropped(format!("{set}: {what}"), pkt.build(), REASON_NO_BACKEND)
                .service(SERVICE_ID, VIP4.into(), PROTO_TCP, reals)
                .service(SERVICE_ID + 1, VIP4.into(), PROTO_UDP, reals)
        })
    });
    run_fixtures("no_backend", fixtures);
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

/// A SYN on the tuple of a flow that is not ESTABLISHED, whose backend
/// takes no new flows (down, drained to weight 0, removed), is scheduled
/// afresh, as IPVS does (`conn_reuse_mode`, `expire_nodest_conn`): the old
/// flow's counts leave its backend and the flow's later packets follow the
/// new backend, also where the old flow was in the flow cache (here: closing,
/// after a FIN). On an ESTABLISHED flow a SYN follows the flow.
#[test]
fn syn_reusing_the_tuple_of_a_stopped_backend_is_rescheduled() {
    let vip = IpAddr::from(VIP4);
    let stopped = [
        (
            "down",
            Real {
                weight: 100,
                state: BACKEND_STATE_DOWN,
            },
        ),
        ("drained", up(0)),
        (
            "removed",
            Real {
                weight: 0,
                state: BACKEND_STATE_REMOVED,
            },
        ),
    ];
    for (label, stopped) in stopped {
        let name = format!("syn_reuse: {label}");
        let Some(mut case) = Case::new(&name) else {
            return;
        };
        case.service(SERVICE_ID, vip, PROTO_TCP, &[up(100), up(100)]);
        let syn = Pkt::tcp4(40000, TCP_SYN);
        let ack = Pkt::tcp4(40000, TCP_ACK);
        let fin = Pkt::tcp4(40000, TCP_FIN | TCP_ACK);
        case.forward("SYN", &syn, SERVICE_ID, 0);
        case.forward("ACK", &ack, SERVICE_ID, 0);
        case.forward("FIN", &fin, SERVICE_ID, 0);
        case.expect_flow("FIN", &fin, SERVICE_ID, 0, STATE_FIN_WAIT);
        case.backends(SERVICE_ID, vip, &[stopped, up(100)]);
        case.forward("SYN again", &syn, SERVICE_ID, 1);
        case.expect_flow("SYN again", &syn, SERVICE_ID, 1, STATE_SYN_RECV);
        case.expect_conns("SYN again", SERVICE_ID, 0, 0, 0);
        case.expect_conns("SYN again", SERVICE_ID, 1, 0, 1);
        case.forward("ACK again", &ack, SERVICE_ID, 1);
        case.expect_flow("ACK again", &ack, SERVICE_ID, 1, STATE_ESTABLISHED);
        case.forward("data", &Pkt::tcp4(40000, TCP_PSH | TCP_ACK), SERVICE_ID, 1);
        assert_eq!(
            case.backend_stats(SERVICE_ID, 1).new_conns,
            1,
            "{name}: slot 1 new_conns"
        );
    }

    let name = "syn_reuse: established";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service(SERVICE_ID, vip, PROTO_TCP, &[up(100), up(100)]);
    let syn = Pkt::tcp4(40000, TCP_SYN);
    case.forward("SYN", &syn, SERVICE_ID, 0);
    case.forward("ACK", &Pkt::tcp4(40000, TCP_ACK), SERVICE_ID, 0);
    case.backends(
        SERVICE_ID,
        vip,
        &[
            Real {
                weight: 100,
                state: BACKEND_STATE_DOWN,
            },
            up(100),
        ],
    );
    case.forward("SYN on an established flow", &syn, SERVICE_ID, 0);
    case.expect_conns("SYN on an established flow", SERVICE_ID, 0, 1, 0);
}

/// The RST that answers `syn` (built with the frame builder, then given the
/// reply's sequence, acknowledgment and window): from the VIP back to the
/// client, MACs swapped, VLAN tags kept, no TCP options, acknowledging
/// `acked` bytes past the SYN's sequence number.
pub(crate) fn reset_for(syn: &Pkt, acked: u32) -> Vec<u8> {
    let L4::Tcp { sport, dport, .. } = syn.l4 else {
        panic!("a SYN is TCP");
    };
    let turned = L4::Tcp {
        sport: dport,
        dport: sport,
        flags: TCP_RST | TCP_ACK,
    };
    let (mut reply, pseudo) = match &syn.ip {
        Ip::V4 { src, dst, .. } => {
            let mut pseudo = [dst.octets(), src.octets()].concat();
            pseudo.extend([0, PROTO_TCP, 0, 20]);
            (Pkt::v4(*dst, *src, turned), pseudo)
        }
        Ip::V6 { src, dst, .. } => {
            let mut pseudo = [dst.octets(), src.octets()].concat();
            pseudo.extend([0, 0, 0, 20, 0, 0, 0, PROTO_TCP]);
            (Pkt::v6(*dst, *src, turned), pseudo)
        }
    };
    reply.dst_mac = syn.src_mac;
    reply.src_mac = syn.dst_mac;
    reply.tags = syn.tags.clone();
    let at = reply.layout().ip_end;
    let mut frame = reply.build();
    // The builder's SYN sequence number is 0x1000_0000.
    let tcp = &mut frame[at..at + 20];
    tcp[4..8].copy_from_slice(&0u32.to_be_bytes());
    tcp[8..12].copy_from_slice(&0x1000_0000u32.wrapping_add(acked).to_be_bytes());
    tcp[14..18].copy_from_slice(&[0; 4]);
    let sum = checksum(tcp, u32::from(!checksum(&pseudo, 0)));
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    frame
}

/// With `no_backend = "reject"` (`SERVICE_FLAG_REJECT`), a SYN that no
/// backend can take is answered from XDP with a TCP RST from the VIP, byte
/// for byte, counted as `reset_no_backend`, and opens no flow; any other
/// packet without a flow is still dropped.
#[test]
fn syn_without_a_backend_is_reset_when_the_service_rejects() {
    let syn4 = Pkt::tcp4(40000, TCP_SYN);
    let with_data = Pkt::tcp4(40001, TCP_SYN).with_payload(&[0xab; 8]);
    // Four bytes of TCP options (NOPs): data offset 6, nothing to acknowledge.
    let mut with_options = Pkt::tcp4(40002, TCP_SYN).with_payload(&[0x01; 4]);
    with_options.pad_to = 0;
    let options_at = with_options.layout().ip_end + 12;
    let syn6 = Pkt::tcp6(40003, TCP_SYN);
    let cases = [
        (
            "IPv4 SYN",
            syn4.build(),
            reset_for(&syn4, 1),
            IpAddr::from(VIP4),
        ),
        (
            "IPv4 SYN with 8 bytes of data",
            with_data.build(),
            reset_for(&with_data, 9),
            IpAddr::from(VIP4),
        ),
        (
            "IPv4 SYN with TCP options",
            {
                let mut frame = with_options.build();
                frame[options_at] = 6 << 4;
                frame
            },
            reset_for(&with_options, 1),
            IpAddr::from(VIP4),
        ),
        (
            "IPv6 SYN",
            syn6.build(),
            reset_for(&syn6, 1),
            IpAddr::from(VIP6),
        ),
    ];
    for (label, input, reply, vip) in cases {
        let name = format!("reject: {label}");
        let Some(mut case) = Case::new(&name) else {
            return;
        };
        let down = Real {
            weight: 100,
            state: BACKEND_STATE_DOWN,
        };
        case.service_with_flags(
            SERVICE_ID,
            vip,
            PROTO_TCP,
            &[down],
            SERVICE_FLAG_REJECT | SERVICE_FLAG_SLOPPY_TCP,
        );
        case.send(label, &input, Expect::Reply(reply, REASON_REJECTED));
        assert_eq!(case.flow_count(), 0, "{name}: flows");
        let ack = match vip {
            IpAddr::V4(_) => Pkt::tcp4(40000, TCP_ACK),
            IpAddr::V6(_) => Pkt::tcp6(40003, TCP_ACK),
        };
        case.send("ACK", &ack.build(), Expect::Drop(REASON_NO_BACKEND));
    }
}
