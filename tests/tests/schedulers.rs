//! End-to-end test of the hashing schedulers with the real `lb` binary:
//! three real servers weighted 1000/500/800, an `mh` service on port 8080
//! and an `sh` service on port 8081 of the same VIP. New connections to the
//! `mh` service spread by weight; every connection of a client address to
//! the `sh` service lands on one real server. Once a real server stops
//! accepting and its health check takes it down, the `sh` clients that were
//! on it move to the others and every other client stays where it was (the
//! Maglev table moves only the leaver's share), `mh` sends nothing to it,
//! and the connections already open keep their servers. Checked again after
//! the health checks' `interval * (fall + 1)`.
//!
//! It needs root; without it it prints `SKIPPED (needs root)` and passes,
//! unless `CI` is set, where it fails. `LB_BIN` names the `lb` binary
//! (default: `target/release/lb`).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    thread,
};

use lb_tests::{Director, Health, Protocol, Spec, VIP4, client, skip_unless_root};

/// The `mh` service's port.
const MH_PORT: u16 = 8080;
/// The `sh` service's port.
const SH_PORT: u16 = 8081;
/// Weights of rs1, rs2, rs3.
const WEIGHTS: [u32; 3] = [1000, 500, 800];
/// Client addresses for the `sh` service.
const CLIENTS: u8 = 30;

#[test]
fn hashing_schedulers_spread_by_weight_and_move_only_a_leavers_clients() {
    const TEST: &str = "hashing_schedulers_spread_by_weight_and_move_only_a_leavers_clients";
    if skip_unless_root(TEST) {
        return;
    }
    let vip = IpAddr::from(VIP4);
    let mut setup = Director::start(TEST, Spec::tcp(WEIGHTS.len(), MH_PORT), |bed| {
        let mut mh = bed.service(
            "maglev",
            vip,
            MH_PORT,
            Protocol::Tcp,
            Health::tcp(MH_PORT),
            &WEIGHTS,
        );
        mh.scheduler = "mh";
        // Checked on the mh port: a real server that stops accepting there
        // is down for both.
        let mut sh = bed.service(
            "source",
            vip,
            SH_PORT,
            Protocol::Tcp,
            Health::tcp(MH_PORT),
            &WEIGHTS,
        );
        sh.scheduler = "sh";
        vec![mh, sh]
    });
    let _sh_servers = setup
        .bed
        .start_servers(SH_PORT, &[])
        .unwrap_or_else(|e| setup.fail(&format!("listeners on {SH_PORT}: {e:#}")));
    let client = setup.bed.client();
    let addresses = setup.add_client_addresses(CLIENTS);

    // mh: new connections spread by weight (Maglev shares 10:5:8).
    let mut held = client::open_tcp(&client.ns, SocketAddr::new(vip, MH_PORT), 300)
        .unwrap_or_else(|e| setup.fail(&format!("{e:#}")));
    let per_server = client::count_conns(&held);
    let total: u32 = WEIGHTS.iter().sum();
    for (i, weight) in WEIGHTS.iter().enumerate() {
        let role = format!("rs{}", i + 1);
        let got = per_server.get(&role).copied().unwrap_or(0) as f64;
        let share = 300.0 * f64::from(*weight) / f64::from(total);
        if (got - share).abs() > 30.0 {
            setup.fail(&format!(
                "mh: {role} got {got} of 300, its share is {share:.0}: {per_server:?}"
            ));
        }
    }

    // sh: each client address on one server, whatever its ports.
    let target = SocketAddr::new(vip, SH_PORT);
    let mut home: BTreeMap<IpAddr, String> = BTreeMap::new();
    for &source in &addresses {
        let conns = client::open_tcp_from(&client.ns, source, target, 3)
            .unwrap_or_else(|e| setup.fail(&format!("{e:#}")));
        let server = conns[0].server().to_owned();
        if conns.iter().any(|c| c.server() != server) {
            let servers: Vec<&str> = conns.iter().map(|c| c.server()).collect();
            setup.fail(&format!("sh: client {source} spread over {servers:?}"));
        }
        home.insert(source, server);
        held.extend(conns);
    }
    eprintln!("{TEST}: sh clients per server: {:?}", count(&home));
    thread::sleep(Health::TCP_INTERVAL * (Health::TCP_FALL + 1));
    setup.assert_all_up("after the health checks' fall intervals");

    // rs2 stops accepting; its health check takes it down.
    setup.servers[1].stop_listener();
    let (stats, down) = setup
        .lb
        .wait_stats(Health::TCP_INTERVAL * (Health::TCP_FALL + 3), |s| {
            s.services.iter().all(|svc| {
                svc.backends
                    .iter()
                    .any(|b| b.slot == 1 && b.state == "down")
            })
        })
        .unwrap_or_else(|e| setup.fail(&format!("lb stats: {e:#}")));
    if !down {
        setup.fail(&format!("rs2 is not down in both services: {stats:#?}"));
    }

    // sh: the clients of rs2 move, every other client stays.
    let mut moved = 0;
    for (source, was) in &home {
        let conns = client::open_tcp_from(&client.ns, *source, target, 1)
            .unwrap_or_else(|e| setup.fail(&format!("{e:#}")));
        let now = conns[0].server().to_owned();
        match (was.as_str(), now.as_str()) {
            ("rs2", "rs2") => {
                setup.fail(&format!("sh: client {source} still sent to the down rs2"))
            }
            ("rs2", _) => moved += 1,
            (was, now) if was != now => setup.fail(&format!(
                "sh: client {source} moved from {was} to {now}, which stayed up"
            )),
            _ => {}
        }
        held.extend(conns);
    }
    let on_rs2 = home.values().filter(|s| *s == "rs2").count();
    if moved != on_rs2 || on_rs2 == 0 {
        setup.fail(&format!("sh: {moved} clients moved, {on_rs2} were on rs2"));
    }
    // mh: nothing new to rs2.
    let fresh = client::open_tcp(&client.ns, SocketAddr::new(vip, MH_PORT), 100)
        .unwrap_or_else(|e| setup.fail(&format!("{e:#}")));
    if let Some(n) = client::count_conns(&fresh).get("rs2") {
        setup.fail(&format!("mh: {n} new connections went to the down rs2"));
    }
    held.extend(fresh);
    // Every connection, rs2's included, still answers from its server.
    setup.ping_all(&mut held, "after rs2 went down");
    drop(held);
    setup.finish();
}

/// Clients per server.
fn count(home: &BTreeMap<IpAddr, String>) -> BTreeMap<&str, usize> {
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for server in home.values() {
        *per.entry(server.as_str()).or_default() += 1;
    }
    per
}
