//! Path MTU discovery through the director: the client sits behind a router
//! whose link to it has an MTU of 1,280 bytes, and advertises the MSS of a
//! 1,500-byte link (see `TestBed::build_behind_router`). A real server's
//! full-sized segments (DF set, as Linux sends TCP) are too big for that
//! link: the router answers each with an ICMP error to the VIP (IPv4
//! fragmentation needed, IPv6 packet too big), which reaches the director,
//! and lb sends it on to the flow's real server (`icmp_forwarded`), which
//! lowers its path MTU to the client and sends smaller segments.
//!
//! They need root; without it they print `SKIPPED (needs root)` and pass,
//! unless `CI` is set, where they fail. `LB_BIN` names the `lb` binary
//! (default: `target/release/lb`).

use std::{
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    Director, Health, Host, Protocol, Spec, VIP4, VIP6,
    client::{self, Download},
    skip_unless_root,
};

/// The service port (and the health check's).
const PORT: u16 = 8080;
/// The MTU of the client's link to the router.
const CLIENT_MTU: u32 = 1280;
/// Bytes of each download.
const LEN: u64 = 32 << 20;
/// How long a download may go without a byte before it counts as stalled.
const STALL: Duration = Duration::from_secs(5);
/// How long a whole download may take.
const DOWNLOAD_BOUND: Duration = Duration::from_secs(60);
/// The name of the verdict that counts ICMP errors sent on to real servers.
const ICMP_FORWARDED: &str = "icmp_forwarded";

/// A bed with the client behind the router, two real servers and `lb run`
/// with a TCP service on each VIP over both (TCP check on [`PORT`]).
fn start(test: &'static str) -> Director {
    let spec = Spec {
        real_servers: 2,
        port: PORT,
        udp: &[],
        lb_args: &[],
    };
    Director::start_behind_router(test, spec, CLIENT_MTU, |bed| {
        [("web4", IpAddr::from(VIP4)), ("web6", IpAddr::from(VIP6))]
            .map(|(name, vip)| {
                bed.service(name, vip, PORT, Protocol::Tcp, Health::tcp(PORT), &[1, 1])
            })
            .into()
    })
}

/// Downloads [`LEN`] bytes from `vip` on the client, giving up after
/// [`STALL`] without a byte; returns the real server that sent them, what
/// arrived and how long it took.
fn download(setup: &Director, vip: IpAddr) -> (String, Download, Duration) {
    let started = Instant::now();
    let (server, report) = client::download(
        &setup.bed.client().ns,
        SocketAddr::new(vip, PORT),
        LEN,
        STALL,
    )
    .unwrap_or_else(|e| setup.fail(&format!("downloading {LEN} bytes from {vip}: {e:#}")));
    (server, report, started.elapsed())
}

/// A download from `vip` arrives intact within [`DOWNLOAD_BOUND`], and lb
/// sent the router's ICMP errors about it on to the real server, which
/// learned the client link's MTU. `when` says when, for failures.
fn download_intact(setup: &Director, vip: IpAddr, when: &str) {
    let before = setup.stats().verdict_packets(ICMP_FORWARDED);
    let (server, report, took) = download(setup, vip);
    let forwarded = setup.stats().verdict_packets(ICMP_FORWARDED) - before;
    let path = path_mtu(setup, &server, vip);
    eprintln!(
        "{}: {when}: {vip}: {server} sent {report:?} in {took:?}; {forwarded} ICMP errors \
         forwarded; its route to the client: {path}",
        setup.test()
    );
    if !report.is_intact() || took > DOWNLOAD_BOUND {
        setup.fail(&format!(
            "{when}: the download from {vip} did not arrive intact within {DOWNLOAD_BOUND:?} \
             ({took:?}): {report:?}; {forwarded} ICMP errors forwarded"
        ));
    }
    if forwarded == 0 || !path.contains(&format!("mtu {CLIENT_MTU}")) {
        setup.fail(&format!(
            "{when}: {forwarded} ICMP errors forwarded for the download from {vip}, and \
             {server}'s route to the client is `{path}`: its segments fit the narrow link \
             without lb's help, so this test shows nothing"
        ));
    }
}

/// What real server `role` knows of its route to the client in `vip`'s
/// family (`ip route get`: a learned path MTU shows as `mtu N`).
fn path_mtu(setup: &Director, role: &str, vip: IpAddr) -> String {
    let host = setup
        .bed
        .real_servers()
        .iter()
        .find(|h| h.role == role)
        .unwrap_or_else(|| setup.fail(&format!("no real server {role}")));
    let client = setup.bed.client().addr_like(vip).to_string();
    host.ns
        .ip(&["route", "get", &client])
        .unwrap_or_else(|e| setup.fail(&format!("ip route get {client} on {role}: {e:#}")))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A 32 MiB download from each VIP through the client's 1,280-byte link
/// completes intact, the router's ICMP errors about it reaching the real
/// server through lb; again once the health checks have had `fall`
/// intervals to act, with the real servers' learned path MTUs flushed so
/// that the errors are needed again.
#[test]
fn downloads_through_a_narrow_link_arrive_intact() {
    const TEST: &str = "downloads_through_a_narrow_link_arrive_intact";
    if skip_unless_root(TEST) {
        return;
    }
    let setup = start(TEST);
    for vip in [IpAddr::from(VIP4), IpAddr::from(VIP6)] {
        download_intact(&setup, vip, "first download");
    }
    thread::sleep(Health::TCP_INTERVAL * (Health::TCP_FALL + 1));
    setup.assert_all_up("after the health checks' fall intervals");
    for rs in setup.bed.real_servers() {
        for family in ["-4", "-6"] {
            rs.ns
                .ip(&[family, "route", "flush", "cache"])
                .unwrap_or_else(|e| setup.fail(&format!("flushing {}'s routes: {e:#}", rs.role)));
        }
    }
    for vip in [IpAddr::from(VIP4), IpAddr::from(VIP6)] {
        download_intact(&setup, vip, "after the fall intervals");
    }
    setup.finish();
}

/// Where the router's ICMP errors never reach the real servers, a download
/// stalls at its first full-sized segment: what happened before lb sent
/// them on, when it passed them to the director's own stack, which has no
/// such connection. Here the router drops its own ICMP errors to the VIPs
/// (a routing rule for ICMP sends them into a blackhole); its counters show
/// it refused the real servers' packets as too big, and lb never saw an
/// error to forward.
#[test]
fn downloads_stall_when_the_errors_do_not_reach_the_real_server() {
    const TEST: &str = "downloads_stall_when_the_errors_do_not_reach_the_real_server";
    if skip_unless_root(TEST) {
        return;
    }
    let setup = start(TEST);
    let router = setup
        .bed
        .router()
        .unwrap_or_else(|| setup.fail("the bed has no router"));
    for (family, icmp, vip) in [
        ("-4", "icmp", IpAddr::from(VIP4)),
        ("-6", "ipv6-icmp", IpAddr::from(VIP6)),
    ] {
        let vip = vip.to_string();
        for args in [
            &[family, "rule", "add", "ipproto", icmp, "table", "100"][..],
            &[family, "route", "add", "blackhole", &vip, "table", "100"],
        ] {
            router
                .ns
                .ip(args)
                .unwrap_or_else(|e| setup.fail(&format!("ip {args:?} on the router: {e:#}")));
        }
    }
    for vip in [IpAddr::from(VIP4), IpAddr::from(VIP6)] {
        let before = (
            setup.stats().verdict_packets(ICMP_FORWARDED),
            refused_as_too_big(&setup, router),
        );
        let (server, report, took) = download(&setup, vip);
        let after = (
            setup.stats().verdict_packets(ICMP_FORWARDED),
            refused_as_too_big(&setup, router),
        );
        eprintln!(
            "{TEST}: {vip}: {server} sent {report:?} in {took:?}; (icmp_forwarded, router's \
             (IPv4, IPv6) too big) went from {before:?} to {after:?}"
        );
        let refused = match vip {
            IpAddr::V4(_) => after.1.0 - before.1.0,
            IpAddr::V6(_) => after.1.1 - before.1.1,
        };
        if !report.stalled || report.received >= LEN || refused == 0 || after.0 != before.0 {
            setup.fail(&format!(
                "the download from {vip} should stall with the router's errors dropped and \
                 the router refusing the segments as too big: {report:?}; (icmp_forwarded, \
                 router's (IPv4, IPv6) too big) went from {before:?} to {after:?}"
            ));
        }
    }
    setup.finish();
}

/// How many packets `router` refused as too big for the next link: IPv4
/// with DF set (`FragFails` of `/proc/net/snmp`) and IPv6
/// (`Ip6InTooBigErrors` of `/proc/net/snmp6`).
fn refused_as_too_big(setup: &Director, router: &Host) -> (u64, u64) {
    let read = |file: &str| {
        router
            .ns
            .exec("cat", &[file])
            .unwrap_or_else(|e| setup.fail(&format!("reading the router's {file}: {e:#}")))
    };
    let snmp = read("/proc/net/snmp");
    // A line of names, then one of values.
    let mut ip = snmp.lines().filter(|line| line.starts_with("Ip:"));
    let frag_fails = ip.next().zip(ip.next()).and_then(|(names, values)| {
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == "FragFails")
            .and_then(|(_, value)| value.parse().ok())
    });
    let too_big = read("/proc/net/snmp6")
        .lines()
        .find_map(|line| line.strip_prefix("Ip6InTooBigErrors"))
        .and_then(|value| value.trim().parse().ok());
    frag_fails.zip(too_big).unwrap_or_else(|| {
        setup.fail(&format!(
            "no FragFails or Ip6InTooBigErrors in the router's counters:\n{snmp}"
        ))
    })
}
