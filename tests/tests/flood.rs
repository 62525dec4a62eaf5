//! End-to-end test: floods of spoofed TCP frames must not break established
//! connections. The real `lb` binary runs on a director namespace with a
//! small connection table; the client holds idle connections through the
//! VIP, and one more that it keeps pinging, while a generator in the
//! client's namespace sends a SYN flood, a fake-handshake flood and an ACK
//! flood, each from several times more distinct spoofed tuples than the
//! table holds (see `lb_tests::spoof`). Afterwards every connection must
//! still reach its original real server and new connections must get
//! through at once. lb's flow tables must show what each flood did: the
//! SYNs only churned the pending table, the fake handshakes filled the
//! connection table's free room and were then refused (insert failures),
//! and once the silent fake handshakes idle past `syn_recv` the sweeper
//! frees the table again.
//!
//! It needs root; without it it prints `SKIPPED (needs root)` and passes,
//! unless `CI` is set, where it fails. `LB_BIN` names the `lb` binary
//! (default: `target/release/lb`).

use std::{
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use lb::sweeper;
use lb_common::confirmed_set_capacity;
use lb_tests::{
    Director, Health, Protocol, Spec, Stats, VIP4,
    client::{self, HeldConn},
    conns::Conns,
    skip_unless_root,
    spoof::{Flood, FloodKind, parse_mac},
    watch::{Watcher, ping_each},
};

/// The service port (and the health check's).
const PORT: u16 = 8080;
/// Weights of rs1, rs2, rs3.
const WEIGHTS: [u32; 3] = [1000, 1000, 1000];
/// Size of each connection table: the config's minimum (its pending table
/// holds 1,024 flows too).
const MAX_FLOWS: u32 = 1024;
/// The sweeper's interval in this test.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// The SYN_RECV timeout in this test: also how long a silent fake handshake
/// holds its place in a connection table under pressure.
const SYN_RECV: Duration = Duration::from_secs(4);
/// New connections after the table recovered.
const LATER: usize = 5;
/// Distinct spoofed tuples per flood: five times the table (at least four
/// times is the requirement).
const TUPLES: u32 = 5 * MAX_FLOWS;
/// Idle connections that must survive the floods.
const IDLE: usize = 20;
/// New connections opened after the floods.
const NEW: usize = 20;
/// After the floods, the connection pinged during them goes on for this long
/// before the connections are checked: longer than a per-CPU flow cache of
/// lb's may keep forwarding a flow its table no longer holds (lb's cache
/// periods last 64 jiffies, at most 640 ms at HZ=100), and longer than a
/// flow touched just before the floods may stay cached, so the checks see
/// what the tables hold.
const SETTLE: Duration = Duration::from_secs(1);
/// New connections must all be open and answered within this time after the
/// last flood frame was sent: [`SETTLE`], then 2 s (the checks in between
/// take a fraction of a second when the connections work). A SYN that lb
/// lost would be sent again by the client's kernel after 1 s, so the bound
/// allows one retransmission, and fails if new connections need more than
/// that to get through.
const NEW_CONNS_WITHIN: Duration = Duration::from_secs(3);
/// Within this time after each flood, the connection pinged during the
/// floods must have been answered twice more than when the flood started.
const WATCH_WITHIN: Duration = Duration::from_secs(2);
/// Frames of a flood that may go missing on the way to lb's counters (veth
/// queues): 1 %.
const LOSS_DIVISOR: u64 = 100;
const INTERVAL: Duration = Health::TCP_INTERVAL;
const FALL: u32 = Health::TCP_FALL;

/// Packets lb forwarded for the service on `vip` (its in_pkts).
fn service_pkts(setup: &Director, stats: &Stats, vip: IpAddr) -> u64 {
    stats
        .service(vip, PORT)
        .unwrap_or_else(|| setup.fail(&format!("no service on {vip}:{PORT}: {stats:#?}")))
        .in_pkts
}

/// New connections the service on `vip` counted.
fn service_conns(setup: &Director, stats: &Stats, vip: IpAddr) -> u64 {
    stats
        .service(vip, PORT)
        .unwrap_or_else(|| setup.fail(&format!("no service on {vip}:{PORT}: {stats:#?}")))
        .conns
}

/// How many of `clients` (client addresses) have a flow in lb's tables
/// (`lb conns`).
fn flows_held(setup: &Director, clients: &[SocketAddr]) -> usize {
    let config = setup.lb.config_path().display().to_string();
    let conns = Conns::query(setup.lb.binary(), &["--config", &config])
        .unwrap_or_else(|e| setup.fail(&format!("lb conns: {e:#}")));
    clients
        .iter()
        .filter(|c| conns.connections.iter().any(|f| f.client_addr() == **c))
        .count()
}

/// `n` less the frames a flood of `n` may lose.
fn at_least(n: u64) -> u64 {
    n - n / LOSS_DIVISOR
}

#[test]
fn floods_do_not_break_established_connections() {
    const TEST: &str = "floods_do_not_break_established_connections";
    if skip_unless_root(TEST) {
        return;
    }
    let vip = IpAddr::from(VIP4);
    let spec = Spec::tcp(WEIGHTS.len(), PORT);
    let setup = Director::start_configured(
        TEST,
        spec,
        |config| {
            config.max_flows = MAX_FLOWS;
            config.max_flows_v6 = MAX_FLOWS;
            config.sweep_interval = Some(SWEEP_INTERVAL);
            config.timeouts = vec![("syn_recv", SYN_RECV)];
        },
        |bed| vec![bed.service("web", vip, PORT, Protocol::Tcp, Health::tcp(PORT), &WEIGHTS)],
    );

    // Idle connections: each carries data once, then waits out the floods.
    let mut idle = setup.open(vip, IDLE);
    setup.ping_all(&mut idle, "before the floods");
    let servers: Vec<String> = idle.iter().map(|c| c.server().to_owned()).collect();
    let clients: Vec<SocketAddr> = idle
        .iter()
        .map(|c| {
            c.local_addr()
                .unwrap_or_else(|e| setup.fail(&format!("{e:#}")))
        })
        .collect();
    eprintln!(
        "{TEST}: {IDLE} idle connections: {:?}",
        client::count_conns(&idle)
    );

    // One more connection keeps pinging while the floods run.
    let watched = setup.open(vip, 1).pop().expect("one connection");
    let watched_client = watched
        .local_addr()
        .unwrap_or_else(|e| setup.fail(&format!("{e:#}")));
    let watcher = Watcher::start(watched);

    let client = setup.bed.client();
    let director = setup.bed.director();
    let src_mac = parse_mac(&client.mac).unwrap_or_else(|e| setup.fail(&format!("{e:#}")));
    let dst_mac = parse_mac(&director.mac).unwrap_or_else(|e| setup.fail(&format!("{e:#}")));
    let target = SocketAddr::new(vip, PORT);
    let mut held_after = Vec::new();
    // The first flood during which the watched connection stopped answering.
    let mut watch_broke = None;
    let mut first = 0;
    let mut flood_end = Instant::now();
    for kind in [FloodKind::Syn, FloodKind::FakeHandshake, FloodKind::Ack] {
        let flood = Flood {
            kind,
            first,
            tuples: TUPLES,
            target,
            dst_mac,
            src_mac,
        };
        // Each flood its own tuples: none reuses a tuple an earlier one opened.
        first += TUPLES;
        let before = setup.stats();
        let answers_before = watcher.answers();
        let sent = flood
            .send(&client.ns, &client.iface)
            .unwrap_or_else(|e| setup.fail(&format!("{e:#}")));
        flood_end = Instant::now();
        let answers = watcher.answers() - answers_before;
        // lb kept forwarding the watched connection: two more answers than
        // when the flood started means a ping sent after it started (the
        // first may have been in flight already) got its answer.
        if watch_broke.is_none() && !watcher.wait_answers(answers_before + 2, WATCH_WITHIN) {
            let got = watcher.answers() - answers_before;
            watch_broke = Some(format!(
                "{kind:?} flood: {got} answers since it started, none more {WATCH_WITHIN:?} \
                 after its end"
            ));
        }
        let after = setup.stats();
        let forwarded = service_pkts(&setup, &after, vip) - service_pkts(&setup, &before, vip);
        let conns = service_conns(&setup, &after, vip) - service_conns(&setup, &before, vip);
        let no_flow =
            after.verdict_packets("drop_no_flow") - before.verdict_packets("drop_no_flow");
        let held = flows_held(&setup, &clients);
        let watched_held = flows_held(&setup, &[watched_client]);
        held_after.push(format!("{kind:?}: {held} idle + {watched_held} watched"));
        eprintln!(
            "{TEST}: {kind:?} flood: {sent:?} ({TUPLES} tuples); lb: +{forwarded} packets \
             forwarded, +{conns} new connections, +{no_flow} drop_no_flow; the watched \
             connection answered {answers} times while it was sent; flows of the idle \
             connections in lb's tables: {held} of {IDLE}, of the watched one: {watched_held} \
             of 1; flows: {:?}",
            after.flows
        );
        // The flood reached lb: every SYN was forwarded to a real server (a
        // new client's SYN must be), every lone ACK was dropped for want of
        // a flow.
        let tuples = u64::from(TUPLES);
        let (was, now) = (before.flows.ipv4, after.flows.ipv4);
        if now.capacity != MAX_FLOWS || now.pending_capacity != MAX_FLOWS {
            setup.fail(&format!("{kind:?} flood: table sizes {now:?}"));
        }
        match kind {
            FloodKind::Syn | FloodKind::FakeHandshake => {
                if forwarded < at_least(tuples) {
                    setup.fail(&format!(
                        "{kind:?} flood: lb forwarded {forwarded} packets of the service \
                         for {tuples} spoofed SYNs: the flood did not reach it"
                    ));
                }
            }
            FloodKind::Ack => {}
        }
        match kind {
            // Half-open flows churn the pending table only.
            FloodKind::Syn => {
                let evicted = now.evictions - was.evictions;
                if now.flows != was.flows
                    || now.insert_failed != was.insert_failed
                    || evicted < at_least(tuples) - u64::from(MAX_FLOWS)
                {
                    setup.fail(&format!(
                        "SYN flood: the connection table changed or the pending table did \
                         not evict ({evicted} evictions): {was:?} -> {now:?}"
                    ));
                }
            }
            // Fake handshakes fill the free room (at least `max_flows`:
            // the sets hold as many again as the overflow hash, less the
            // ways of sets the flood left short), then are refused.
            FloodKind::FakeHandshake => {
                let refused = now.insert_failed - was.insert_failed;
                let confirmed = now.flows - was.flows;
                let most = u64::from(MAX_FLOWS + confirmed_set_capacity(MAX_FLOWS));
                if now.flows < u64::from(MAX_FLOWS)
                    || now.flows > most
                    || refused + confirmed < at_least(tuples)
                {
                    setup.fail(&format!(
                        "fake-handshake flood: the connection table is not full of them, or \
                         {refused} refusals and {confirmed} confirmed for {tuples} \
                         handshakes: {was:?} -> {now:?}"
                    ));
                }
            }
            FloodKind::Ack => {
                if no_flow < at_least(tuples) || now.flows != was.flows {
                    setup.fail(&format!(
                        "ACK flood: {tuples} spoofed ACKs, but only {no_flow} drop_no_flow, \
                         or the tables changed: {was:?} -> {now:?}"
                    ));
                }
            }
        }
    }

    thread::sleep(SETTLE);
    // Every idle connection is still answered by its original real server
    // (checked while the watcher finishes its last ping, so that a silent
    // connection costs one read timeout in all), and every ping of the
    // watched connection through the floods was answered by its real server.
    watcher.stop();
    let outcomes = ping_each(&mut idle);
    let (watched, outcome) = watcher.finish();
    let mut broken: Vec<String> = outcomes
        .iter()
        .zip(&servers)
        .enumerate()
        .filter_map(|(i, (outcome, server))| {
            outcome
                .as_ref()
                .map(|what| format!("idle connection {i} (to {server}): {what}"))
        })
        .collect();
    let idle_broken = broken.len();
    if watch_broke.is_some() || outcome.is_err() {
        broken.push(format!(
            "the connection pinged during the floods: {}; {}",
            watch_broke
                .as_deref()
                .unwrap_or("answered after every flood"),
            outcome.err().as_deref().unwrap_or("no failed ping")
        ));
    }
    if !broken.is_empty() {
        let stats = setup.stats();
        setup.fail(&format!(
            "after the floods, {idle_broken} of {IDLE} idle connections no longer reach their \
             real server, and the connection pinged during the floods {}:\n  {}\n\
             flows in lb's tables after each flood: {}\nlb stats: flows {:?}, verdicts {:?}",
            if broken.len() > idle_broken {
                "broke"
            } else {
                "kept working"
            },
            broken.join("\n  "),
            held_after.join(", "),
            stats.flows,
            stats.verdicts
        ));
    }

    // New connections get through again soon after the floods stop.
    let mut fresh = setup.open(vip, NEW);
    let took = flood_end.elapsed();
    if took > NEW_CONNS_WITHIN {
        setup.fail(&format!(
            "{NEW} new connections took {took:?} after the floods, more than {NEW_CONNS_WITHIN:?}"
        ));
    }
    setup.ping_all(&mut fresh, "new connections after the floods");
    eprintln!(
        "{TEST}: {NEW} new connections open {took:?} after the floods: {:?}",
        client::count_conns(&fresh)
    );

    let stats = setup.stats();
    eprintln!(
        "{TEST}: lb stats after the floods: flows {:?}; verdicts {:?}",
        stats.flows, stats.verdicts
    );
    // The full table is under pressure; once the fake handshakes (which
    // never carried data) idle past `syn_recv`, the sweeper removes them and
    // the table has room again; the connections that carried data stay.
    setup
        .lb
        .wait_log("IPv4 connection table is at least", SWEEP_INTERVAL * 4)
        .unwrap_or_else(|e| setup.fail(&format!("no pressure warning: {e:#}")));
    setup
        .lb
        .wait_log(
            "IPv4 connection table has room again",
            SYN_RECV + SWEEP_INTERVAL * 4,
        )
        .unwrap_or_else(|e| setup.fail(&format!("the table did not recover: {e:#}")));
    let recovered = setup.stats().flows.ipv4;
    // The 20 idle connections and the watched one stay (the new ones stayed
    // in the pending table: the full table refused them). The fake
    // handshakes idle past `syn_recv` while the table was under pressure
    // are gone: all of them, or, when a sweep fell inside the flood's
    // confirmations, those confirmed before it, which leaves the table
    // below the pressure mark (the others then live out their state's
    // timeout, as any silent flow of a table with room).
    let pressure_mark = u64::from(MAX_FLOWS) * sweeper::PRESSURE_PERCENT / 100;
    if recovered.flows < (IDLE + 1) as u64 || recovered.flows >= pressure_mark {
        setup.fail(&format!(
            "after the recovery: {recovered:?} (expected {} to {})",
            IDLE + 1,
            pressure_mark - 1
        ));
    }
    let mut later = setup.open(vip, LATER);
    setup.ping_all(&mut later, "new connections after the recovery");
    let confirmed = setup.stats().flows.ipv4;
    if confirmed.flows != recovered.flows + LATER as u64
        || confirmed.insert_failed != recovered.insert_failed
    {
        setup.fail(&format!(
            "{LATER} new connections after the recovery are not all confirmed: \
             {recovered:?} -> {confirmed:?}"
        ));
    }

    // Once the health checks have had `fall` intervals after the floods,
    // every backend is still up and every connection still answers.
    thread::sleep(INTERVAL * (FALL + 1));
    setup.assert_all_up("after the floods and the health checks' fall intervals");
    let mut all: Vec<HeldConn> = idle.into_iter().chain(fresh).chain(later).collect();
    all.push(watched);
    setup.ping_all(&mut all, "after the health checks' fall intervals");
    drop(all);
    setup.finish();
}
