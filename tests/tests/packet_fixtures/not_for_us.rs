//! Traffic that is not for a service (another address or port, not TCP or
//! UDP, not IP at all: ARP, LLDP) or not for this director (another MAC)
//! passes to the director's stack byte for byte and leaves no trace in the
//! tables.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{
    NicFilter, PROTO_TCP, REASON_NO_SERVICE, REASON_NOT_FOR_US, REASON_NOT_IP, REASON_NOT_L4,
    conn_state::{TCP_ACK, TCP_SYN},
};
use lb_tests::{
    VIP4, VIP6,
    frame::{CLIENT4, CLIENT6, Ext, L4, NIC_MAC, PORT, Pkt, arp_request, lldp_frame},
    xdp_case::{Case, DECOY_ID, Expect, Fixture, LO_IFINDEX, SERVICE_ID, run_fixtures, up},
};

/// A TCP SYN header from `sport` to `dport`.
const fn syn(sport: u16, dport: u16) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags: TCP_SYN,
    }
}

/// Frames that are IP but not for a service (or not TCP/UDP) pass to the
/// director's stack byte for byte, counted under their reason, and create no
/// flow and no service statistics.
#[test]
fn non_vip_traffic_passes_untouched() {
    let other_vip4 = Ipv4Addr::new(192, 0, 2, 201);
    let other_vip6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x201);
    // The IPv4 VIP's bytes at the start of an IPv6 address: the key's family
    // must keep it from matching the IPv4 service.
    let v4_bytes_in_v6 = Ipv6Addr::from([192, 0, 2, 200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let cases = [
        (
            "other IPv4 address",
            Pkt::v4(CLIENT4, other_vip4, syn(40000, PORT)),
            REASON_NO_SERVICE,
        ),
        (
            "other TCP port",
            Pkt::v4(CLIENT4, VIP4, syn(40000, 22)),
            REASON_NO_SERVICE,
        ),
        (
            "VIP port as source port",
            Pkt::v4(CLIENT4, VIP4, syn(PORT, 443)),
            REASON_NO_SERVICE,
        ),
        ("UDP to a TCP service", Pkt::udp4(40000), REASON_NO_SERVICE),
        (
            "ICMP echo to the VIP",
            Pkt::v4(CLIENT4, VIP4, L4::Echo),
            REASON_NOT_L4,
        ),
        (
            "other IPv6 address",
            Pkt::v6(CLIENT6, other_vip6, syn(40000, PORT)),
            REASON_NO_SERVICE,
        ),
        (
            "IPv6 UDP to a TCP service",
            Pkt::udp6(40000),
            REASON_NO_SERVICE,
        ),
        (
            "IPv4 VIP bytes in IPv6",
            Pkt::v6(CLIENT6, v4_bytes_in_v6, syn(40000, PORT)),
            REASON_NO_SERVICE,
        ),
        (
            "ICMPv6 echo to the VIP",
            Pkt::v6(CLIENT6, VIP6, L4::Echo),
            REASON_NOT_L4,
        ),
        (
            "ICMPv6 after extension headers",
            Pkt::v6(CLIENT6, VIP6, L4::Echo).with_ext(&[Ext::HopByHop(8), Ext::DestOpts(8)]),
            REASON_NOT_L4,
        ),
    ];
    run_fixtures(
        "non_vip_traffic",
        cases.map(|(name, pkt, reason)| Fixture::passed(name, pkt.build(), reason).both_vips()),
    );
}

/// Traffic to a port no service uses (for its protocol) is passed by the
/// port prefilter byte for byte, counted as no-service, and leaves both
/// connection tables empty, for IPv4 and IPv6, TCP and UDP, whatever the
/// TCP flags.
#[test]
fn unused_ports_pass_and_record_no_flow() {
    let fixtures = [(IpAddr::from(VIP4), "IPv4"), (IpAddr::from(VIP6), "IPv6")]
        .into_iter()
        .flat_map(|(vip, family)| {
            let to = move |l4| {
                let client = match vip {
                    IpAddr::V4(_) => IpAddr::from(CLIENT4),
                    IpAddr::V6(_) => IpAddr::from(CLIENT6),
                };
                Pkt::between(client, vip, l4)
            };
            let tcp = move |sport, dport, flags| {
                to(L4::Tcp {
                    sport,
                    dport,
                    flags,
                })
            };
            [
                ("TCP SYN to port 22", tcp(40000, 22, TCP_SYN)),
                ("TCP ACK to port 22", tcp(40000, 22, TCP_ACK)),
                ("TCP SYN to the next port", tcp(40000, PORT + 1, TCP_SYN)),
                ("TCP SYN to port 0", tcp(40000, 0, TCP_SYN)),
                ("TCP SYN to port 65535", tcp(40000, 65535, TCP_SYN)),
                ("TCP from the service port", tcp(PORT, 443, TCP_SYN)),
                (
                    "UDP to port 53",
                    to(L4::Udp {
                        sport: 40000,
                        dport: 53,
                    }),
                ),
                (
                    "UDP to the service port (TCP only)",
                    to(L4::Udp {
                        sport: 40000,
                        dport: PORT,
                    }),
                ),
            ]
            .map(|(label, pkt)| {
                let frame = pkt.with_payload(b"data").build();
                Fixture::passed(format!("{family} {label}"), frame, REASON_NO_SERVICE).both_vips()
            })
        });
    run_fixtures("unused_port", fixtures);
}

/// ARP and LLDP pass as not IP.
#[test]
fn non_ip_frames_pass() {
    let fixtures = [
        ("ARP request for the VIP", arp_request()),
        ("LLDP", lldp_frame()),
    ]
    .map(|(name, frame)| {
        Fixture::passed(name, frame, REASON_NOT_IP).service(
            SERVICE_ID,
            VIP4.into(),
            PROTO_TCP,
            &[up(1)],
        )
    });
    run_fixtures("non_ip", fixtures);
}

/// With the NIC's filter set (its MAC [`NIC_MAC`] and VRRP router id 0x33,
/// whose IPv4 virtual MAC is `VIP_MAC`, where the frame builder sends),
/// frames for a service to the NIC's MAC or to a VRRP MAC of that id are
/// balanced; frames to another host's MAC, another router id or broadcast
/// (a promiscuous NIC, a flooding switch) pass to the stack as
/// `pass_not_for_us` and open no flow. Without its filter the NIC takes
/// them again.
#[test]
fn frames_to_another_mac_are_passed() {
    let name = "not_for_us_mac";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1)]);
    case.service(DECOY_ID, VIP6.into(), PROTO_TCP, &[up(1)]);
    case.dp
        .maps
        .set_nic_filter(&NicFilter::new("lo", LO_IFINDEX, NIC_MAC, &[0x33]))
        .expect("writing the NIC filter");
    let to = |mut pkt: Pkt, mac: [u8; 6]| {
        pkt.dst_mac = mac;
        pkt
    };
    case.forward("to the VRRP MAC", &Pkt::tcp4(40000, TCP_SYN), SERVICE_ID, 0);
    case.forward(
        "to the NIC's MAC",
        &to(Pkt::tcp4(40001, TCP_SYN), NIC_MAC),
        SERVICE_ID,
        0,
    );
    case.forward(
        "to the IPv6 VRRP MAC",
        &to(
            Pkt::tcp6(40002, TCP_SYN),
            [0x00, 0x00, 0x5e, 0x00, 0x02, 0x33],
        ),
        DECOY_ID,
        0,
    );
    // Another host's MAC on the segment.
    let elsewhere = [0x02, 0x99, 0x00, 0x00, 0x00, 0x01];
    for (sport, label, mac) in [
        (40100, "another host's MAC", elsewhere),
        (
            40101,
            "another VRRP id",
            [0x00, 0x00, 0x5e, 0x00, 0x01, 0x34],
        ),
        (40102, "broadcast", [0xff; 6]),
    ] {
        let frame = to(Pkt::tcp4(sport, TCP_SYN), mac).build();
        case.send(label, &frame, Expect::Pass(REASON_NOT_FOR_US));
    }
    assert_eq!(case.flow_count(), 3, "{name}: flows");

    // Removing the filter of a NIC that was never a redirect target (no
    // `TX_PORTS` entry to delete) succeeds, and the NIC takes every frame
    // again.
    assert_eq!(
        case.dp.maps.remove_nic("lo").expect("removing lo's filter"),
        Some(LO_IFINDEX),
        "{name}: removed ifindex"
    );
    let frame = to(Pkt::tcp4(40103, TCP_SYN), elsewhere);
    case.forward("another host's MAC, no filter", &frame, SERVICE_ID, 0);
    assert_eq!(case.flow_count(), 4, "{name}: flows without the filter");
}
