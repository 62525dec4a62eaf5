//! End-to-end tests of a dual-homed director (see `lb_tests::bed`,
//! `Layout::DualHomed`): clients on the front network, real servers on the
//! back network, the director on both with the VIPs on its front NIC, and a
//! router between the networks for the real servers' direct replies. Every
//! frame arrives on the director's front NIC and is redirected to its back
//! NIC (`XDP_REDIRECT`), with the back NIC's MAC as source, which the real
//! servers' answers prove; `lb stats` counts it on both NICs.
//!
//! They need root; without it they print `SKIPPED (needs root)` and pass,
//! unless `CI` is set, where they fail. `LB_BIN` names the `lb` binary
//! (default: `target/release/lb`).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    thread,
};

use lb_tests::{
    DIRECTOR_BACK_IFACE, DIRECTOR_IFACE, Director, Health, Protocol, Spec, Stats, VIP4, VIP6,
    client, skip_unless_root,
};

/// The service port (TCP and UDP, and the health check's).
const PORT: u16 = 8080;
/// Weights of rs1, rs2, rs3.
const WEIGHTS: [u32; 3] = [1000, 500, 800];
/// Allowed deviation from a server's weighted share.
const TOLERANCE: f64 = 0.10;
/// Connections or flows per split.
const N: usize = 300;
/// The UDP services' addresses (every real server answers on both).
const UDP: [SocketAddr; 2] = [
    SocketAddr::new(IpAddr::V4(VIP4), PORT),
    SocketAddr::new(IpAddr::V6(VIP6), PORT),
];

/// A dual-homed director with three real servers (TCP and UDP on
/// [`PORT`]) and one service per `(name, vip, protocol)` over them, TCP
/// health checks on [`PORT`] (from the director's back NIC), every backend
/// up.
fn start(test: &'static str, services: &[(&str, IpAddr, Protocol)]) -> Director {
    let spec = Spec {
        real_servers: WEIGHTS.len(),
        port: PORT,
        udp: &UDP,
        lb_args: &[],
    };
    Director::start_dual_homed(test, spec, |bed| {
        services
            .iter()
            .map(|&(name, vip, protocol)| {
                bed.service(name, vip, PORT, protocol, Health::tcp(PORT), &WEIGHTS)
            })
            .collect()
    })
}

/// Fails the test unless `lb stats` shows every forwarded frame arriving on
/// the front NIC and redirected out of the back NIC, and nothing else on
/// either; returns the stats. `when` says when, for the failure.
fn assert_redirected(setup: &Director, when: &str) -> Stats {
    let stats = setup.stats();
    let (Some(front), Some(back)) = (stats.nic(DIRECTOR_IFACE), stats.nic(DIRECTOR_BACK_IFACE))
    else {
        setup.fail(&format!(
            "{when}: lb stats lacks {DIRECTOR_IFACE} or {DIRECTOR_BACK_IFACE}: {:#?}",
            stats.nics
        ));
    };
    let forwarded: u64 = stats.services.iter().map(|s| s.in_pkts).sum();
    let redirected = front.in_pkts > 0
        && front.redirected_pkts == front.in_pkts
        && front.redirected_bytes == front.in_bytes
        && front.out_pkts == 0
        && (back.out_pkts, back.out_bytes) == (front.in_pkts, front.in_bytes)
        && back.in_pkts == 0
        && back.redirected_pkts == 0
        && forwarded == front.in_pkts;
    if !redirected {
        setup.fail(&format!(
            "{when}: expected the {forwarded} frames the services forwarded to arrive on \
             {DIRECTOR_IFACE} and leave through {DIRECTOR_BACK_IFACE}, redirected: {:#?}",
            stats.nics
        ));
    }
    stats
}

/// [`N`] held TCP connections to `vip` split by weight over the real
/// servers behind the back NIC; still answered once the health checks have
/// had `fall` intervals to act.
fn tcp_split(test: &'static str, vip: IpAddr) {
    let setup = start(test, &[("web", vip, Protocol::Tcp)]);
    let mut conns = setup.open(vip, N);
    let counts = client::count_conns(&conns);
    eprintln!("{test}: the client saw {counts:?}");
    setup.assert_weighted("TCP connections", &counts, N, &WEIGHTS, TOLERANCE);
    setup.assert_held_conns_counted(vip, PORT, &counts, N);
    setup.ping_all(&mut conns, "after the split");
    assert_redirected(&setup, "after the split");

    thread::sleep(Health::TCP_INTERVAL * (Health::TCP_FALL + 1));
    setup.assert_all_up("after the health checks' fall intervals");
    setup.ping_all(&mut conns, "after the health checks' fall intervals");
    assert_redirected(&setup, "after the health checks' fall intervals");
    drop(conns);
    setup.finish();
}

#[test]
fn tcp_ipv4_through_the_back_nic_splits_by_weight() {
    const TEST: &str = "tcp_ipv4_through_the_back_nic_splits_by_weight";
    if skip_unless_root(TEST) {
        return;
    }
    tcp_split(TEST, VIP4.into());
}

#[test]
fn tcp_ipv6_through_the_back_nic_splits_by_weight() {
    const TEST: &str = "tcp_ipv6_through_the_back_nic_splits_by_weight";
    if skip_unless_root(TEST) {
        return;
    }
    tcp_split(TEST, VIP6.into());
}

/// [`N`] UDP flows to each VIP, IPv4 and IPv6, split by weight over the
/// real servers behind the back NIC, as `lb stats` counts them too; new
/// flows still flow once the health checks have had `fall` intervals to act.
#[test]
fn udp_through_the_back_nic_splits_by_weight() {
    const TEST: &str = "udp_through_the_back_nic_splits_by_weight";
    if skip_unless_root(TEST) {
        return;
    }
    let vips = [IpAddr::from(VIP4), IpAddr::from(VIP6)];
    let setup = start(
        TEST,
        &[
            ("dns4", vips[0], Protocol::Udp),
            ("dns6", vips[1], Protocol::Udp),
        ],
    );
    for vip in vips {
        let target = SocketAddr::new(vip, PORT);
        let names = client::udp_flows(&setup.bed.client().ns, target, N)
            .unwrap_or_else(|e| setup.fail(&format!("UDP flows to {target}: {e:#}")));
        let counts = client::count_by_server(names.iter().map(String::as_str));
        eprintln!("{TEST}: the client saw {counts:?} from {target}");
        setup.assert_weighted(
            &format!("UDP flows to {target}"),
            &counts,
            N,
            &WEIGHTS,
            TOLERANCE,
        );
        let expected = setup.by_address(&counts, vip);
        let stats = setup.stats();
        let svc = stats
            .service(vip, PORT)
            .unwrap_or_else(|| setup.fail(&format!("no service {target} in lb stats")));
        let seen: BTreeMap<IpAddr, u64> =
            svc.backends.iter().map(|b| (b.address, b.conns)).collect();
        if seen != expected || svc.conns != N as u64 {
            setup.fail(&format!(
                "lb counted new UDP flows {seen:?} (service: {}), the client saw {expected:?} ({N})",
                svc.conns
            ));
        }
    }
    assert_redirected(&setup, "after the flows");

    thread::sleep(Health::TCP_INTERVAL * (Health::TCP_FALL + 1));
    setup.assert_all_up("after the health checks' fall intervals");
    for target in UDP {
        client::udp_flows(&setup.bed.client().ns, target, 30).unwrap_or_else(|e| {
            setup.fail(&format!(
                "UDP flows to {target} after the fall intervals: {e:#}"
            ))
        });
    }
    assert_redirected(&setup, "after the health checks' fall intervals");
    setup.finish();
}

/// 64 MiB uploaded through the director arrive intact at the real server
/// behind its back NIC, and both NICs count every byte.
#[test]
fn upload_64_mib_through_the_back_nic_arrives_intact() {
    const TEST: &str = "upload_64_mib_through_the_back_nic_arrives_intact";
    const LEN: u64 = 64 << 20;
    if skip_unless_root(TEST) {
        return;
    }
    let vip = IpAddr::from(VIP4);
    let setup = start(TEST, &[("gridftp", vip, Protocol::Tcp)]);
    let (server, report) = client::upload(&setup.bed.client().ns, SocketAddr::new(vip, PORT), LEN)
        .unwrap_or_else(|e| setup.fail(&format!("uploading {LEN} bytes: {e:#}")));
    eprintln!("{TEST}: {server} reported {report:?}");
    if report.received != LEN || report.received_hash != report.sent_hash {
        setup.fail(&format!(
            "upload damaged: sent {} bytes hash {:016x}, {server} received {} bytes hash {:016x}",
            report.sent, report.sent_hash, report.received, report.received_hash
        ));
    }
    let stats = assert_redirected(&setup, "after the upload");
    let back = stats.nic(DIRECTOR_BACK_IFACE).map_or(0, |n| n.out_bytes);
    if back < LEN {
        setup.fail(&format!(
            "{DIRECTOR_BACK_IFACE} counted {back} bytes out, less than the {LEN} uploaded"
        ));
    }
    thread::sleep(Health::TCP_INTERVAL * (Health::TCP_FALL + 1));
    setup.assert_all_up("after the health checks' fall intervals");
    assert_redirected(&setup, "after the health checks' fall intervals");
    setup.finish();
}
