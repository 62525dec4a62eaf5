//! A director with several NICs: a frame for a backend on-link through the
//! NIC it arrived on goes back out with `XDP_TX`, as ever; one for a backend
//! on-link through another NIC is redirected there (`XDP_REDIRECT` through
//! `TX_PORTS`) with that NIC's MAC as source; one for a NIC missing from
//! `TX_PORTS` is dropped unchanged and counted as `drop_no_tx_port`. Each
//! NIC counts what it forwarded.
//!
//! The NICs are veths in a namespace of the test's own, where the case runs
//! (`TX_PORTS` holds devices of the writer's namespace, and `ctx_in` names
//! the NIC a frame arrives on there). Without live frames, the test run
//! returns a redirected frame instead of sending it.

use std::net::IpAddr;

use lb_common::{
    Attachment, BACKEND_STATE_UP, Backend, BackendSet, Counters, NicCounters, NicFilter, PROTO_TCP,
    PROTO_UDP, REASON_NO_TX_PORT, Service, ServiceKey,
    conn_state::{TCP_ACK, TCP_SYN},
};
use lb_tests::{
    NetNs, VIP4, VIP6,
    frame::{NIC_MAC, PORT, Pkt, backend_mac},
    netns::ifindex,
    unique_tag,
    xdp_case::{Case, Expect, counted, l3, privileged},
};

/// The MAC of the second director NIC.
const NIC_B_MAC: [u8; 6] = [0x02, 0xd1, 0x00, 0x00, 0x00, 0x02];
/// The MAC of the third director NIC.
const NIC_C_MAC: [u8; 6] = [0x02, 0xd1, 0x00, 0x00, 0x00, 0x03];
/// The IPv4 TCP service, its backend on-link through the ingress NIC.
const SAME_NIC: u32 = 3;
/// The IPv6 TCP service, its backend on-link through the second NIC.
const OTHER_NIC: u32 = 7;
/// The IPv4 UDP service, its backend on-link through the third NIC, which
/// is missing from `TX_PORTS` at first.
const MISSING_NIC: u32 = 9;

/// `pkt` as it leaves for backend 0 of service `id` through the NIC of MAC
/// `nic_mac`.
fn sent(pkt: &Pkt, id: u32, nic_mac: [u8; 6]) -> Vec<u8> {
    let mut out = pkt.clone();
    out.dst_mac = backend_mac(id, 0);
    out.src_mac = nic_mac;
    out.build()
}

/// Installs service `id` on (`vip`, PORT, `proto`) with one backend
/// on-link through NIC `ifindex` of MAC `nic_mac`.
fn service(case: &mut Case, id: u32, vip: IpAddr, proto: u8, ifindex: u32, nic_mac: [u8; 6]) {
    let address: IpAddr = match vip {
        IpAddr::V4(_) => [198, 51, 100, 10].into(),
        IpAddr::V6(_) => "2001:db8:2::10".parse().expect("an address"),
    };
    let attachment = Attachment {
        mac: backend_mac(id, 0),
        nic_mac,
        ifindex,
    };
    let mut set = BackendSet {
        len: 1,
        ..BackendSet::default()
    };
    set.backends[0] = Backend::new(address, attachment, 1, BACKEND_STATE_UP);
    case.dp
        .maps
        .set_service(
            &[ServiceKey::new(vip, PORT, proto, 0)],
            Service {
                id,
                ..Service::default()
            },
            &set,
        )
        .unwrap_or_else(|e| panic!("{}: set_service {id}: {e:#}", case.name));
}

/// The counters of NIC `name` as `lb stats` reads them (`None`: not
/// registered).
fn nic(case: &Case, name: &str) -> Option<NicCounters> {
    case.dp
        .maps
        .nic_counters()
        .unwrap_or_else(|e| panic!("{}: reading the NIC counters: {e:#}", case.name))
        .into_iter()
        .find(|(filter, _)| filter.name() == name)
        .map(|(_, counters)| counters)
}

#[test]
fn backends_behind_another_nic_are_redirected_there() {
    let name = "redirect";
    if !privileged(name) {
        return;
    }
    let ns = NetNs::create(&format!("lbt{}-fixture", unique_tag()))
        .unwrap_or_else(|e| panic!("{name}: creating a namespace: {e:#}"));
    for (a, b) in [("nica", "nicx"), ("nicb", "nicc")] {
        ns.ip(&["link", "add", a, "type", "veth", "peer", "name", b])
            .unwrap_or_else(|e| panic!("{name}: creating veths {a}, {b}: {e:#}"));
    }
    ns.run(move || {
        let [a, b, c] = ["nica", "nicb", "nicc"].map(|nic| ifindex(nic).expect("a veth"));
        let mut case = Case::new(name).expect("privileged");
        for (nic, index, mac) in [
            ("nica", a, NIC_MAC),
            ("nicb", b, NIC_B_MAC),
            ("nicc", c, NIC_C_MAC),
        ] {
            case.dp
                .maps
                .set_nic_filter(&NicFilter::new(nic, index, mac, &[0x33]))
                .expect("writing a NIC filter");
        }
        for index in [a, b] {
            case.dp.maps.set_tx_port(index).expect("writing TX_PORTS");
        }
        service(&mut case, SAME_NIC, VIP4.into(), PROTO_TCP, a, NIC_MAC);
        service(&mut case, OTHER_NIC, VIP6.into(), PROTO_TCP, b, NIC_B_MAC);
        service(&mut case, MISSING_NIC, VIP4.into(), PROTO_UDP, c, NIC_C_MAC);
        case.arrive_on(a);

        let same = Pkt::tcp4(40000, TCP_SYN);
        case.send(
            "backend on the ingress NIC",
            &same.build(),
            Expect::Tx(sent(&same, SAME_NIC, NIC_MAC)),
        );
        let (syn, ack) = (Pkt::tcp6(40001, TCP_SYN), Pkt::tcp6(40001, TCP_ACK));
        for (label, pkt) in [("SYN to a backend on another NIC", &syn), ("its ACK", &ack)] {
            case.send(
                label,
                &pkt.build(),
                Expect::Redirect(sent(pkt, OTHER_NIC, NIC_B_MAC)),
            );
        }
        let udp = Pkt::udp4(40002);
        case.send(
            "backend on a NIC missing from TX_PORTS",
            &udp.build(),
            Expect::Drop(REASON_NO_TX_PORT),
        );
        assert_eq!(
            case.backend_stats(MISSING_NIC, 0),
            Counters::default(),
            "{name}: a dropped frame counted as forwarded"
        );
        case.dp.maps.set_tx_port(c).expect("writing TX_PORTS");
        case.send(
            "the same, once the NIC is in TX_PORTS",
            &udp.build(),
            Expect::Redirect(sent(&udp, MISSING_NIC, NIC_C_MAC)),
        );

        let (tcp4, tcp6, udp4) = (l3(&same.build()), l3(&syn.build()), l3(&udp.build()));
        assert_eq!(
            case.backend_stats(OTHER_NIC, 0),
            counted(2, 2 * tcp6, 1),
            "{name}: backend behind nicb"
        );
        // The UDP flow was scheduled by the dropped frame, which was not
        // counted: the backend forwarded one frame and got no new flow.
        assert_eq!(
            case.backend_stats(MISSING_NIC, 0),
            counted(1, udp4, 0),
            "{name}: backend behind nicc"
        );
        let expected = [
            (
                "nica",
                NicCounters {
                    tx_packets: 1,
                    tx_bytes: tcp4,
                    redirected_out_packets: 3,
                    redirected_out_bytes: 2 * tcp6 + udp4,
                    ..NicCounters::default()
                },
            ),
            (
                "nicb",
                NicCounters {
                    redirected_in_packets: 2,
                    redirected_in_bytes: 2 * tcp6,
                    ..NicCounters::default()
                },
            ),
            (
                "nicc",
                NicCounters {
                    redirected_in_packets: 1,
                    redirected_in_bytes: udp4,
                    ..NicCounters::default()
                },
            ),
        ];
        for (nic_name, counters) in expected {
            assert_eq!(
                nic(&case, nic_name),
                Some(counters),
                "{name}: counters of {nic_name}"
            );
        }

        // Detached: the NIC leaves TX_PORTS and lb stats.
        assert_eq!(
            case.dp.maps.remove_nic("nicb").expect("removing nicb"),
            Some(b),
            "{name}: nicb's ifindex"
        );
        assert_eq!(nic(&case, "nicb"), None, "{name}: nicb still listed");
        case.send(
            "after its NIC was detached",
            &ack.build(),
            Expect::Drop(REASON_NO_TX_PORT),
        );
        assert_eq!(
            case.backend_stats(OTHER_NIC, 0),
            counted(2, 2 * tcp6, 1),
            "{name}: backend behind nicb"
        );
        anyhow::Ok(())
    })
    .unwrap_or_else(|e| panic!("{name}: {e:#}"));
}
