//! End-to-end test: fragmented datagrams to a UDP service. The client sends
//! UDP datagrams of 8 KiB to a VIP over veths of the default 1,500-byte MTU,
//! so its kernel cuts each into IP fragments (IPv4, and IPv6 with fragment
//! headers). lb must send every fragment of a datagram to its flow's real
//! server, which reassembles it and answers the client directly with the
//! length and hash of what it got; the director's own stack, which also
//! holds the VIP, must see none of them. Then a flood of orphan fragments
//! (later fragments whose first never comes, from spoofed sources, sent raw
//! from the client's namespace) is dropped and counted as
//! `drop_fragment_orphan` and changes nothing else: every flow still reaches
//! its real server, before and after the health checks' fall intervals.
//!
//! It needs root; without it it prints `SKIPPED (needs root)` and passes,
//! unless `CI` is set, where it fails. `LB_BIN` names the `lb` binary
//! (default: `target/release/lb`).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    thread,
    time::Duration,
};

use lb_tests::{
    Director, Health, Protocol, Spec, Stats, VIP4, VIP6,
    client::{self, UdpFlows},
    frame::{L4, Pkt},
    skip_unless_root,
    spoof::{self, parse_mac},
};

/// The service port (UDP, and the TCP health check's).
const PORT: u16 = 8080;
/// Weights of rs1, rs2, rs3.
const WEIGHTS: [u32; 3] = [1000, 500, 800];
/// Bytes of each datagram's payload.
const LEN: usize = 8192;
/// Flows (client sockets), each sending a datagram per round.
const FLOWS: usize = 30;
/// Datagrams of the orphan flood; each sends its later fragments only.
const ORPHAN_DATAGRAMS: u32 = 2000;
/// Datagrams whose fragments are sent from one CPU before the sender moves
/// to the next (see `lb_tests::spoof`).
const DATAGRAMS_PER_CPU_TURN: usize = 32;
/// Frames of the flood that may go missing on the way to lb's counters
/// (veth queues): 1 %.
const LOSS_DIVISOR: u64 = 100;
const INTERVAL: Duration = Health::TCP_INTERVAL;
const FALL: u32 = Health::TCP_FALL;

/// Bytes of transport header and payload per fragment over a 1,500-byte
/// MTU: 1,480 after a 20-byte IPv4 header; 1,448 after a 40-byte IPv6
/// header and an 8-byte fragment header (rounded down to 8).
fn fragment_size(vip: IpAddr) -> usize {
    match vip {
        IpAddr::V4(_) => 1480,
        IpAddr::V6(_) => 1448,
    }
}

/// Fragments of one datagram of [`LEN`] bytes: 6 in both families.
fn fragments_per_datagram(vip: IpAddr) -> u64 {
    (8 + LEN).div_ceil(fragment_size(vip)) as u64
}

/// Packets of verdict `reason` in `stats`.
fn verdict(stats: &Stats, reason: &str) -> u64 {
    stats
        .verdicts
        .iter()
        .find(|v| v.reason == reason)
        .map_or(0, |v| v.packets)
}

/// One round: a datagram on every flow, each answered by the real server
/// the flow went to before (`servers`, if given). Returns the servers.
fn round(
    setup: &Director,
    flows: &mut UdpFlows,
    when: &str,
    servers: Option<&[String]>,
) -> Vec<String> {
    let got = flows
        .datagrams(LEN)
        .unwrap_or_else(|e| setup.fail(&format!("{when}: {e:#}")));
    if let Some(servers) = servers
        && got != servers
    {
        setup.fail(&format!(
            "{when}: flows moved between real servers: before {servers:?}, now {got:?}"
        ));
    }
    got
}

/// The later fragments of [`ORPHAN_DATAGRAMS`] datagrams of [`LEN`] bytes
/// to `target`, each from its own spoofed client and identification, in the
/// frames the client's NIC (`src_mac`) sends to the director (`dst_mac`).
fn orphan_fragments(target: SocketAddr, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Vec<Vec<u8>> {
    let payload = vec![0x5a; LEN];
    (0..ORPHAN_DATAGRAMS)
        .flat_map(|i| {
            let source = spoof::spoofed(i, target.ip());
            let udp = L4::Udp {
                sport: source.port(),
                dport: target.port(),
            };
            let mut datagram = Pkt::between(source.ip(), target.ip(), udp)
                .with_payload(&payload)
                .with_ident(i + 1);
            datagram.src_mac = src_mac;
            datagram.dst_mac = dst_mac;
            datagram
                .fragments(fragment_size(target.ip()))
                .into_iter()
                .skip(1)
                .map(|piece| piece.build())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn fragmented_datagrams(test: &'static str, vip: IpAddr) {
    let udp: [SocketAddr; 2] = [(VIP4, PORT).into(), (VIP6, PORT).into()];
    let spec = Spec {
        real_servers: WEIGHTS.len(),
        port: PORT,
        udp: &udp,
        lb_args: &[],
    };
    let setup = Director::start(test, spec, |bed| {
        vec![bed.service("dns", vip, PORT, Protocol::Udp, Health::tcp(PORT), &WEIGHTS)]
    });
    let target = SocketAddr::new(vip, PORT);
    let client = setup.bed.client();
    let before = setup.stats();
    let mut flows = UdpFlows::open(&client.ns, target, FLOWS)
        .unwrap_or_else(|e| setup.fail(&format!("opening {FLOWS} UDP flows: {e:#}")));

    // Every datagram arrives whole at one real server and is answered; the
    // flows spread over the real servers and keep to theirs.
    let servers = round(&setup, &mut flows, "first datagrams", None);
    round(&setup, &mut flows, "second datagrams", Some(&servers));
    let counts = client::count_by_server(servers.iter().map(String::as_str));
    eprintln!(
        "{test}: {FLOWS} flows of {LEN}-byte datagrams ({} fragments each) answered by {counts:?}",
        fragments_per_datagram(vip)
    );
    if counts.len() != WEIGHTS.len() {
        setup.fail(&format!(
            "the flows did not reach every real server: {counts:?}"
        ));
    }

    // lb forwarded every fragment, and passed none to the director's stack.
    let stats = setup.stats();
    let svc = stats
        .service(vip, PORT)
        .unwrap_or_else(|| setup.fail(&format!("no UDP service in lb stats: {stats:#?}")));
    let expected = setup.by_address(&counts, vip);
    let seen: BTreeMap<IpAddr, u64> = svc.backends.iter().map(|b| (b.address, b.conns)).collect();
    let fragments = flows.sent() as u64 * fragments_per_datagram(vip);
    if seen != expected || svc.conns != FLOWS as u64 || svc.in_pkts != fragments {
        setup.fail(&format!(
            "lb counted {} flows {seen:?} and {} packets; the client saw {expected:?} and sent \
             {} datagrams, {fragments} fragments",
            svc.conns,
            svc.in_pkts,
            flows.sent()
        ));
    }
    for reason in ["pass_fragment", "drop_fragment_orphan"] {
        if verdict(&stats, reason) != verdict(&before, reason) {
            setup.fail(&format!("{reason} moved: {:?}", stats.verdicts));
        }
    }

    // A flood of orphan fragments is dropped and counted, and nothing else.
    let src_mac = parse_mac(&client.mac).unwrap_or_else(|e| setup.fail(&format!("{e:#}")));
    let director_mac =
        parse_mac(&setup.bed.director().mac).unwrap_or_else(|e| setup.fail(&format!("{e:#}")));
    let frames = orphan_fragments(target, src_mac, director_mac);
    let sent = frames.len() as u64;
    let per_turn = DATAGRAMS_PER_CPU_TURN * frames.len() / ORPHAN_DATAGRAMS as usize;
    let flood = spoof::send(&client.ns, &client.iface, frames, per_turn)
        .unwrap_or_else(|e| setup.fail(&format!("orphan flood: {e:#}")));
    let after = setup.stats();
    let orphans = verdict(&after, "drop_fragment_orphan") - verdict(&stats, "drop_fragment_orphan");
    let svc_after = after
        .service(vip, PORT)
        .unwrap_or_else(|| setup.fail(&format!("no UDP service in lb stats: {after:#?}")));
    eprintln!(
        "{test}: orphan flood {flood:?}: lb counted {orphans} drop_fragment_orphan; flows {:?}",
        after.flows
    );
    if orphans < sent - sent / LOSS_DIVISOR || orphans > sent {
        setup.fail(&format!(
            "{sent} orphan fragments sent, {orphans} counted as drop_fragment_orphan: {:?}",
            after.verdicts
        ));
    }
    if (svc_after.conns, svc_after.in_pkts) != (svc.conns, svc.in_pkts)
        || after.flows != stats.flows
        || verdict(&after, "pass_fragment") != verdict(&stats, "pass_fragment")
    {
        setup.fail(&format!(
            "the orphan flood changed more than its counter: service {} conns {} packets -> {} \
             conns {} packets; flows {:?} -> {:?}; verdicts {:?}",
            svc.conns,
            svc.in_pkts,
            svc_after.conns,
            svc_after.in_pkts,
            stats.flows,
            after.flows,
            after.verdicts
        ));
    }
    round(&setup, &mut flows, "after the orphan flood", Some(&servers));
    let mut fresh = UdpFlows::open(&client.ns, target, WEIGHTS.len())
        .unwrap_or_else(|e| setup.fail(&format!("opening new UDP flows: {e:#}")));
    round(&setup, &mut fresh, "new flows after the orphan flood", None);

    // Once the health checks have had `fall` intervals to act, every backend
    // is up and every flow still reaches its real server.
    thread::sleep(INTERVAL * (FALL + 1));
    setup.assert_all_up("after the health checks' fall intervals");
    round(
        &setup,
        &mut flows,
        "after the health checks' fall intervals",
        Some(&servers),
    );
    setup.finish();
}

#[test]
fn ipv4_fragmented_datagrams_reach_one_real_server() {
    const TEST: &str = "ipv4_fragmented_datagrams_reach_one_real_server";
    if skip_unless_root(TEST) {
        return;
    }
    fragmented_datagrams(TEST, VIP4.into());
}

#[test]
fn ipv6_fragmented_datagrams_reach_one_real_server() {
    const TEST: &str = "ipv6_fragmented_datagrams_reach_one_real_server";
    if skip_unless_root(TEST) {
        return;
    }
    fragmented_datagrams(TEST, VIP6.into());
}
