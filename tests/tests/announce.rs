//! End-to-end test of `[announce]`, lb's side of an ECMP group: the real
//! `lb` binary on a director namespace with two real servers, announcing
//! the VIP in routing table 201 through its TUN device `lbvip`. The route
//! is there while a real server is up; it goes when the last one goes down
//! (after the health checks' `interval * fall`) and comes back when one
//! returns; a killed lb takes its device and route with it (the BGP
//! speaker then withdraws the VIP), a restarted one announces again, and
//! `lb stop` withdraws. `tests/tests/ecmp.rs` runs the same with BIRD and
//! a router. Checked again after the health checks' `interval * (fall +
//! 1)`, so a flapping announcement would show.
//!
//! It needs root; without it it prints `SKIPPED (needs root)` and passes,
//! unless `CI` is set, where it fails. `LB_BIN` names the `lb` binary
//! (default: `target/release/lb`).

use std::{
    net::IpAddr,
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    Director, Health, LbDaemon, Protocol, Spec, TestBed, VIP4, lb_binary, skip_unless_root,
};

/// The service port.
const PORT: u16 = 8080;
/// The routing table lb announces in.
const TABLE: u32 = 201;
/// The health checks: interval and fall.
const INTERVAL: Duration = Duration::from_millis(300);
const FALL: u32 = 2;

/// The director's routes in [`TABLE`].
fn routes(bed: &TestBed) -> String {
    bed.director()
        .ns
        .ip(&["route", "show", "table", &TABLE.to_string()])
        .unwrap_or_default()
}

/// Whether the VIP is announced (its route through `lbvip` is in the table).
fn announced(bed: &TestBed) -> bool {
    routes(bed)
        .lines()
        .any(|l| l.starts_with(&format!("{VIP4} dev lbvip")))
}

/// Waits up to `within` for the announcement to be `wanted`.
fn wait_announced(bed: &TestBed, wanted: bool, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if announced(bed) == wanted {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_vip_is_announced_while_it_has_a_usable_real_server_and_lb_runs() {
    const TEST: &str = "a_vip_is_announced_while_it_has_a_usable_real_server_and_lb_runs";
    if skip_unless_root(TEST) {
        return;
    }
    let vip = IpAddr::from(VIP4);
    let health = Health::Tcp {
        interval: INTERVAL,
        timeout: Duration::from_millis(200),
        port: PORT,
        fall: FALL,
        rise: 1,
    };
    let mut setup = Director::start_configured(
        TEST,
        Spec::tcp(2, PORT),
        |config| config.announce_table = Some(TABLE),
        |bed| vec![bed.service("web", vip, PORT, Protocol::Tcp, health, &[1, 1])],
    );
    let timers = INTERVAL * (FALL + 1) + Duration::from_secs(1);
    if !wait_announced(&setup.bed, true, Duration::from_secs(3)) {
        setup.fail(&format!(
            "the VIP is not announced in table {TABLE}: {}",
            routes(&setup.bed)
        ));
    }
    thread::sleep(timers);
    if !announced(&setup.bed) {
        setup.fail("the announcement went away with both real servers up");
    }

    // One real server down: still announced.
    setup.servers[0].stop_listener();
    thread::sleep(timers);
    if !announced(&setup.bed) {
        setup.fail("withdrawn with one of two real servers still up");
    }
    // The last one down: withdrawn.
    setup.servers[1].stop_listener();
    if !wait_announced(&setup.bed, false, timers + Duration::from_secs(2)) {
        setup.fail("still announced with every real server down");
    }
    if let Err(e) = setup
        .lb
        .wait_log(&format!("withdrawing {VIP4}"), Duration::from_secs(1))
    {
        setup.fail(&format!("lb did not say it withdrew the VIP: {e:#}"));
    }
    thread::sleep(timers);
    if announced(&setup.bed) {
        setup.fail("announced again with every real server still down");
    }
    // One comes back: announced again.
    setup.servers[1]
        .start_listener()
        .unwrap_or_else(|e| setup.fail(&format!("restarting rs2's listener: {e:#}")));
    if !wait_announced(&setup.bed, true, timers + Duration::from_secs(2)) {
        setup.fail("not announced again once rs2 was back");
    }

    // lb killed: the device and its route go with it; the data path stays.
    let Director {
        lb,
        config,
        bed,
        servers: _servers,
        ..
    } = setup;
    let killed_log = lb.kill().unwrap();
    if !wait_announced(&bed, false, Duration::from_secs(2)) {
        panic!(
            "{TEST}: still announced after lb was killed: {}\n{killed_log}",
            routes(&bed)
        );
    }
    let links = bed.director().ns.ip(&["link", "show"]).unwrap();
    assert!(
        !links.contains("lbvip"),
        "{TEST}: the TUN device outlived the killed lb:\n{links}"
    );
    // A new lb adopts the data path and announces again; lb stop withdraws.
    let lb_bin = lb_binary().unwrap();
    let lb = LbDaemon::launch(&lb_bin, &bed.director().ns, &config, bed.tag(), &[])
        .and_then(LbDaemon::wait_ready)
        .unwrap_or_else(|e| panic!("{TEST}: lb run again: {e:#}"));
    if !wait_announced(&bed, true, timers + Duration::from_secs(2)) {
        panic!(
            "{TEST}: the restarted lb does not announce: {}\n{}",
            routes(&bed),
            lb.log()
        );
    }
    let (status, log) = lb.stop().unwrap();
    assert!(status.success(), "{TEST}: lb stop: {status}\n{log}");
    assert!(
        !announced(&bed) && !routes(&bed).contains("lbvip"),
        "{TEST}: still announced after lb stop: {}\n{log}",
        routes(&bed)
    );
}
