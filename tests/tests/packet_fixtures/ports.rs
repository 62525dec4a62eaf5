//! Services over several ports: a service covers each port of its list
//! and ranges (one `SERVICES` entry per port, one service id), or every
//! port of its VIP (one entry on port 0, looked up after a miss); a port's
//! own service wins over the every-port one; persistence spans all of a
//! service's ports; changing a service's ports deletes the ports it left.

use std::net::IpAddr;

use lb_common::{
    ANY_PORT, PORT_TCP, PROTO_TCP, REASON_NO_SERVICE, SERVICE_FLAG_SLOPPY_TCP, Service, ServiceKey,
    conn_state::TCP_SYN,
};
use lb_tests::{
    VIP4, VIP6,
    frame::{CLIENT4, CLIENT6, L4, Pkt},
    xdp_case::{Case, DECOY_ID, Expect, Real, SERVICE_ID, backend_set, up},
};

/// GridFTP's control port.
const CONTROL: u16 = 2811;
/// The data range of the cases.
const DATA: (u16, u16) = (50000, 50010);

/// A SYN from `client`:`sport` to `vip`:`dport`.
fn syn(client: IpAddr, vip: IpAddr, sport: u16, dport: u16) -> Pkt {
    Pkt::between(
        client,
        vip,
        L4::Tcp {
            sport,
            dport,
            flags: TCP_SYN,
        },
    )
}

/// Installs TCP service `id` on `vip` over `ports` (`ANY_PORT`: every
/// port) and `reals`, with persistence of `timeout_s` seconds (0: none).
fn install(case: &mut Case, id: u32, vip: IpAddr, ports: &[u16], reals: &[Real], timeout_s: u32) {
    let keys: Vec<ServiceKey> = ports
        .iter()
        .map(|&port| ServiceKey::new(vip, port, PROTO_TCP, 0))
        .collect();
    let prefix = if vip.is_ipv4() { 32 } else { 128 };
    case.dp
        .maps
        .set_service(
            &keys,
            Service {
                id,
                flags: SERVICE_FLAG_SLOPPY_TCP,
                persistence_timeout_s: timeout_s,
                persistence_prefix: if timeout_s > 0 { prefix } else { 0 },
                ..Service::default()
            },
            &backend_set(id, vip, reals),
        )
        .unwrap_or_else(|e| panic!("{}: set_service: {e:#}", case.name));
}

/// The control port and the data range.
fn gridftp_ports() -> Vec<u16> {
    std::iter::once(CONTROL).chain(DATA.0..=DATA.1).collect()
}

/// A SYN to the control port, to each end of the data range and to a port
/// inside it is balanced by the one service (least connection over its two
/// backends, one connection count); the ports just outside the range and
/// another port pass as no service's. IPv4 and IPv6.
#[test]
fn a_service_covers_each_port_of_its_ranges() {
    for (family, client, vip) in [
        ("IPv4", IpAddr::from(CLIENT4), IpAddr::from(VIP4)),
        ("IPv6", IpAddr::from(CLIENT6), IpAddr::from(VIP6)),
    ] {
        let Some(mut case) = Case::new(format!("ports ({family})")) else {
            return;
        };
        install(
            &mut case,
            SERVICE_ID,
            vip,
            &gridftp_ports(),
            &[up(1), up(1)],
            0,
        );
        for (i, port) in [CONTROL, DATA.0, DATA.1, DATA.0 + 5]
            .into_iter()
            .enumerate()
        {
            let slot = i as u32 % 2;
            case.forward(
                &format!("port {port}"),
                &syn(client, vip, 40000, port),
                SERVICE_ID,
                slot,
            );
        }
        case.expect_conns("two each", SERVICE_ID, 0, 0, 2);
        case.expect_conns("two each", SERVICE_ID, 1, 0, 2);
        for port in [DATA.0 - 1, DATA.1 + 1, CONTROL + 1, 80] {
            let frame = syn(client, vip, 40001, port).build();
            case.send(
                &format!("port {port}"),
                &frame,
                Expect::Pass(REASON_NO_SERVICE),
            );
        }
    }
}

/// A service over every port takes a SYN to any port; a service of the
/// same VIP on a port of its own keeps that port; the every-port service
/// covers nothing on another VIP or protocol.
#[test]
fn every_port_and_its_exceptions() {
    let Some(mut case) = Case::new("every port") else {
        return;
    };
    let vip = IpAddr::from(VIP4);
    install(&mut case, SERVICE_ID, vip, &[ANY_PORT], &[up(1)], 0);
    install(&mut case, DECOY_ID, vip, &[CONTROL], &[up(1)], 0);
    for port in [1, 22, 8080, 65535] {
        case.forward(
            &format!("port {port}"),
            &syn(CLIENT4.into(), vip, 40000, port),
            SERVICE_ID,
            0,
        );
    }
    case.forward(
        "its own port",
        &syn(CLIENT4.into(), vip, 40000, CONTROL),
        DECOY_ID,
        0,
    );
    let udp = Pkt::between(
        CLIENT4.into(),
        vip,
        L4::Udp {
            sport: 40000,
            dport: 53,
        },
    );
    case.send("UDP", &udp.build(), Expect::Pass(REASON_NO_SERVICE));
    let other_vip = syn(CLIENT6.into(), IpAddr::from(VIP6), 40000, 8080);
    case.send(
        "another VIP",
        &other_vip.build(),
        Expect::Pass(REASON_NO_SERVICE),
    );
    // The every-port service opened every port of the prefilter; removed,
    // it closes them, and the port of the other service stays open.
    let bits = |case: &Case, port: u16| case.dp.maps.service_ports.get(&u32::from(port), 0).ok();
    assert_eq!(
        bits(&case, 8080),
        Some(PORT_TCP),
        "{}: port 8080 open",
        case.name
    );
    case.dp
        .maps
        .remove_service(SERVICE_ID)
        .unwrap_or_else(|e| panic!("{}: remove_service: {e:#}", case.name));
    assert_eq!(
        bits(&case, 8080),
        Some(0),
        "{}: port 8080 closed",
        case.name
    );
    assert_eq!(
        bits(&case, CONTROL),
        Some(PORT_TCP),
        "{}: its own port",
        case.name
    );
    let frame = syn(CLIENT4.into(), vip, 40001, 8080).build();
    case.send("removed", &frame, Expect::Pass(REASON_NO_SERVICE));
}

/// A persistent service's template spans its ports: a client's data
/// connections follow its control connection's backend (least connection
/// alone would alternate), and another client's do the same on the other
/// backend.
#[test]
fn persistence_spans_the_ports_of_a_service() {
    let Some(mut case) = Case::new("persistence over ports") else {
        return;
    };
    let vip = IpAddr::from(VIP4);
    install(
        &mut case,
        SERVICE_ID,
        vip,
        &gridftp_ports(),
        &[up(1), up(1)],
        600,
    );
    let other = IpAddr::from([203, 0, 113, 77]);
    case.forward(
        "control",
        &syn(CLIENT4.into(), vip, 40000, CONTROL),
        SERVICE_ID,
        0,
    );
    case.forward(
        "other's control",
        &syn(other, vip, 40000, CONTROL),
        SERVICE_ID,
        1,
    );
    for (i, port) in (DATA.0..DATA.0 + 5).enumerate() {
        let sport = 41000 + i as u16;
        case.forward(
            "data",
            &syn(CLIENT4.into(), vip, sport, port),
            SERVICE_ID,
            0,
        );
        case.forward("other's data", &syn(other, vip, sport, port), SERVICE_ID, 1);
    }
    case.expect_conns("six each", SERVICE_ID, 0, 0, 6);
}

/// Setting a service again with fewer ports deletes the ports it left
/// (they pass as no service's) and keeps the rest; removing it deletes
/// all; the other service's ports stay.
#[test]
fn ports_a_service_leaves_are_deleted() {
    let Some(mut case) = Case::new("ports left") else {
        return;
    };
    let vip = IpAddr::from(VIP4);
    let client = IpAddr::from(CLIENT4);
    install(&mut case, SERVICE_ID, vip, &gridftp_ports(), &[up(1)], 0);
    install(&mut case, DECOY_ID, vip, &[DATA.1 + 1], &[up(1)], 0);
    install(&mut case, SERVICE_ID, vip, &[CONTROL, DATA.0], &[up(1)], 0);
    assert_eq!(
        case.dp.maps.services.keys().count(),
        3,
        "{}: keys",
        case.name
    );
    case.forward("kept", &syn(client, vip, 40000, DATA.0), SERVICE_ID, 0);
    let left = syn(client, vip, 40000, DATA.0 + 1).build();
    case.send("left", &left, Expect::Pass(REASON_NO_SERVICE));
    assert_eq!(
        case.dp
            .maps
            .service_ports
            .get(&u32::from(DATA.0 + 1), 0)
            .ok(),
        Some(0),
        "{}: the prefilter closed the port left",
        case.name
    );
    case.dp
        .maps
        .remove_service(SERVICE_ID)
        .unwrap_or_else(|e| panic!("{}: remove_service: {e:#}", case.name));
    let control = syn(client, vip, 40001, CONTROL).build();
    case.send("removed", &control, Expect::Pass(REASON_NO_SERVICE));
    case.forward(
        "the other service",
        &syn(client, vip, 40002, DATA.1 + 1),
        DECOY_ID,
        0,
    );
    assert_eq!(
        case.dp.maps.services.keys().count(),
        1,
        "{}: keys",
        case.name
    );
}
