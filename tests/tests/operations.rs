//! Operating a running director: `lb reload`, SIGKILL and adoption of the
//! pinned data path, `lb backend drain|set-weight|remove|add`, `lb stop
//! --keep-datapath` and `lb detach`. The real `lb` binary on a director
//! namespace, real TCP connections from a client namespace to four real
//! servers (see `lb_tests::bed`).
//!
//! They need root; without it they print `SKIPPED (needs root)` and pass,
//! unless `CI` is set, where they fail.

use std::{
    fs,
    net::{IpAddr, SocketAddr, TcpStream},
    thread,
    time::Duration,
};

use lb_tests::{
    DIRECTOR_IFACE, Director, Health, LbConfig, LbDaemon, PinDir, Protocol, RealServer,
    ServiceConfig, Spec, Stats, TestBed, VIP4,
    client::{self, HeldConn},
    cmd::Finished,
    lb_binary, skip_unless_root,
    stats::BackendStats,
    unique_tag,
};

/// The service port.
const PORT: u16 = 8080;
/// The service's name in the config.
const SERVICE: &str = "web";

/// A bed with four running real servers (rs1..rs4) and `lb run` on the
/// director balancing `weights` over the first `weights.len()` of them.
fn start(test: &'static str, weights: &[u32]) -> Director {
    let spec = Spec::tcp(4, PORT);
    let setup = Director::start(test, spec, |bed| vec![service(bed, weights)]);
    wait_backends_up(&setup, weights.len());
    setup
}

/// Waits until the service has `n` backends, all up.
fn wait_backends_up(setup: &Director, n: usize) {
    let (stats, ok) = setup
        .lb
        .wait_stats(Duration::from_secs(15), |s| {
            s.services
                .iter()
                .all(|svc| svc.backends.len() == n && svc.backends.iter().all(|b| b.state == "up"))
        })
        .unwrap_or_else(|e| setup.fail(&format!("lb stats: {e:#}")));
    if !ok {
        setup.fail(&format!("expected {n} backends up within 15 s: {stats:#?}"));
    }
}

/// The address of real server `rsN` (IPv4).
fn address(setup: &Director, role: &str) -> IpAddr {
    setup.address_of(role, VIP4.into())
}

/// `lb ARGS --socket ...`, which must succeed.
fn ctl(setup: &Director, args: &[&str]) -> Finished {
    let out = setup
        .lb
        .ctl(args)
        .unwrap_or_else(|e| setup.fail(&format!("lb {}: {e:#}", args.join(" "))));
    if !out.success {
        setup.fail(&format!("`{}` failed:\n{}", out.command, out.stderr));
    }
    out
}

/// `lb backend OP --service SERVICE --address ADDRESS MORE...`.
fn backend_args<'a>(
    op: &'a str,
    service: &'a str,
    address: &'a str,
    more: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["backend", op, "--service", service, "--address", address];
    args.extend(more);
    args
}

/// Backend `address` of the service in `stats`.
fn backend<'a>(setup: &Director, stats: &'a Stats, address: IpAddr) -> &'a BackendStats {
    stats.services[0]
        .backend(address)
        .unwrap_or_else(|| setup.fail(&format!("no backend {address} in {stats:#?}")))
}

/// The `web` service over the first `weights.len()` real servers.
fn service(bed: &TestBed, weights: &[u32]) -> ServiceConfig {
    bed.service(
        SERVICE,
        VIP4.into(),
        PORT,
        Protocol::Tcp,
        Health::Toml(format!(
            "kind = \"tcp\"\nport = {PORT}\ninterval = \"500ms\"\ntimeout = \"300ms\"\nwarmup = \"0s\""
        )),
        weights,
    )
}

/// Opens `n` connections from the client while no lb runs (`when`).
fn open_without_lb(test: &str, bed: &TestBed, n: usize, when: &str) -> Vec<HeldConn> {
    client::open_tcp(&bed.client().ns, SocketAddr::new(VIP4.into(), PORT), n)
        .unwrap_or_else(|e| panic!("{test}: connecting {when}: {e:#}"))
}

/// Starts `lb run` with `config` on the bed's director.
fn start_lb(test: &str, bed: &TestBed, config: &LbConfig) -> LbDaemon {
    let lb_bin = lb_binary().unwrap_or_else(|e| panic!("{test}: {e:#}"));
    LbDaemon::launch(&lb_bin, &bed.director().ns, config, bed.tag(), &[])
        .and_then(LbDaemon::wait_ready)
        .unwrap_or_else(|e| panic!("{test}: lb run: {e:#}"))
}

/// What is left after `lb stop --keep-datapath`: the data path, attached
/// and pinned (removed when `_pins` is dropped), and the rest of the bed.
struct KeptDatapath {
    config: LbConfig,
    servers: Vec<RealServer>,
    bed: TestBed,
    _pins: PinDir,
}

/// `lb stop --keep-datapath`: lb exits 0 and leaves its pins in place.
fn stop_keeping_the_data_path(setup: Director) -> KeptDatapath {
    let test = setup.test();
    let Director {
        lb,
        config,
        servers,
        bed,
        ..
    } = setup;
    let out = lb.ctl(&["stop", "--keep-datapath"]).unwrap();
    assert!(out.success, "{test}: {out:?}");
    let (status, log, pins) = lb.wait_exit().unwrap();
    assert!(status.success(), "{test}: {log}");
    assert!(
        config.pin_path.exists(),
        "{test}: --keep-datapath removed the pins:\n{log}"
    );
    KeptDatapath {
        config,
        servers,
        bed,
        _pins: pins,
    }
}

/// Where IPVS's weighted least-connection puts `n` more connections, one
/// after the other, when every connection stays open (overhead = active
/// connections; ties go to the lower slot). `load[i]` and `weights[i]` are
/// per slot.
fn wlc_expected(mut load: Vec<u64>, weights: &[u64], n: usize) -> Vec<u64> {
    for _ in 0..n {
        let mut best: Option<usize> = None;
        for (i, &w) in weights.iter().enumerate() {
            if w == 0 {
                continue;
            }
            best = match best {
                Some(b) if load[i] * weights[b] >= load[b] * w => Some(b),
                _ => Some(i),
            };
        }
        load[best.expect("some weight > 0")] += 1;
    }
    load
}

#[test]
fn reload_reweights_and_adds_a_backend_without_breaking_held_connections() {
    const TEST: &str = "reload_reweights_and_adds_a_backend_without_breaking_held_connections";
    if skip_unless_root(TEST) {
        return;
    }
    let mut setup = start(TEST, &[1000, 500, 800]);
    let mut held = setup.open(VIP4.into(), 200);
    let before = client::count_conns(&held);
    let load: Vec<u64> = ["rs1", "rs2", "rs3", "rs4"]
        .iter()
        .map(|rs| before.get(*rs).copied().unwrap_or(0) as u64)
        .collect();

    // Re-weight rs1..rs3 and add rs4, then reload.
    let new_weights = [200, 500, 800, 1000];
    setup.config.services = vec![service(&setup.bed, &new_weights)];
    let out = setup.reload();
    for expected in ["weights changed", "backends added"] {
        if !out.stdout.contains(expected) {
            setup.fail(&format!(
                "`lb reload` said {:?}, expected {expected:?}",
                out.stdout
            ));
        }
    }
    wait_backends_up(&setup, 4);
    setup.ping_all(&mut held, "after the reload");

    // New connections follow the new weights, given the load already there.
    let fresh = setup.open(VIP4.into(), 300);
    let got = client::count_conns(&fresh);
    let expected = wlc_expected(load.clone(), &[200, 500, 800, 1000], 300);
    for (i, rs) in ["rs1", "rs2", "rs3", "rs4"].iter().enumerate() {
        let n = got.get(*rs).copied().unwrap_or(0) as u64;
        let want = expected[i] - load[i];
        if n.abs_diff(want) > 3 {
            setup.fail(&format!(
                "after the reload {rs} got {n} of 300 new connections, expected {want} ± 3 \
                 (held before: {before:?}; new: {got:?})"
            ));
        }
    }
    setup.ping_all(&mut held, "after 300 more connections");
    let stats = setup.stats();
    let rs4 = backend(&setup, &stats, address(&setup, "rs4"));
    assert_eq!(rs4.weight, 1000, "{TEST}: {stats:#?}");
    assert_eq!(
        backend(&setup, &stats, address(&setup, "rs1")).weight,
        200,
        "{TEST}: {stats:#?}"
    );

    // An invalid config is refused and changes nothing.
    let path = setup.lb.config_path().to_owned();
    let good = fs::read_to_string(&path).unwrap();
    fs::write(&path, good.replace("weight = 1000", "weight = 70000")).unwrap();
    let out = setup.lb.ctl(&["reload"]).unwrap();
    assert!(
        !out.success,
        "{TEST}: an invalid reload succeeded: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains("weight 70000 is out of range"),
        "{TEST}: the refusal does not say why: {}",
        out.stderr
    );
    let after = setup.stats();
    assert_eq!(
        backend(&setup, &after, address(&setup, "rs4")).weight,
        1000,
        "{TEST}: a refused reload changed the weights: {after:#?}"
    );
    setup.ping_all(&mut held, "after the refused reload");
    // SIGHUP reloads the same way.
    fs::write(&path, good.replace("weight = 1000", "weight = 900")).unwrap();
    setup
        .lb
        .signal(libc::SIGHUP)
        .unwrap_or_else(|e| setup.fail(&format!("{e:#}")));
    setup
        .lb
        .wait_log("reload: weights changed", Duration::from_secs(5))
        .unwrap_or_else(|e| setup.fail(&format!("SIGHUP: {e:#}")));
    let after = setup.stats();
    assert_eq!(
        backend(&setup, &after, address(&setup, "rs4")).weight,
        900,
        "{TEST}: SIGHUP did not apply the new weight: {after:#?}"
    );
    setup.ping_all(&mut held, "after SIGHUP");
    drop(fresh);
    drop(held);
}

/// A reload that gives the service a data range serves the range at once,
/// and one that narrows the range stops serving the ports it left (the
/// director's own stack refuses them); connections on the service's port
/// and on the ports it keeps go on through both reloads.
#[test]
fn reload_changes_a_services_ports_and_keeps_its_connections() {
    const TEST: &str = "reload_changes_a_services_ports_and_keeps_its_connections";
    if skip_unless_root(TEST) {
        return;
    }
    let (kept, left) = (50000, 50005);
    let mut setup = start(TEST, &[1000, 500, 800]);
    let _data_servers: Vec<_> = [kept, left]
        .iter()
        .map(|&port| {
            setup
                .bed
                .start_servers(port, &[])
                .unwrap_or_else(|e| setup.fail(&format!("listeners on {port}: {e:#}")))
        })
        .collect();
    let at = |port| SocketAddr::new(VIP4.into(), port);
    let open = |setup: &Director, port, n| {
        client::open_tcp(&setup.bed.client().ns, at(port), n)
            .unwrap_or_else(|e| setup.fail(&format!("{n} connections to port {port}: {e:#}")))
    };
    let mut held = setup.open(VIP4.into(), 30);
    if client::open_tcp(&setup.bed.client().ns, at(left), 1).is_ok() {
        setup.fail(&format!(
            "port {left} answered before the service covered it"
        ));
    }

    setup.config.services[0].more_ports = vec![(kept, kept + 10)];
    setup.reload();
    let mut on_kept = open(&setup, kept, 10);
    let on_left = open(&setup, left, 10);
    setup.ping_all(&mut held, "after the range was added");
    let stats = setup.stats();
    if stats.services.len() != 1 || stats.services[0].ports != "8080,50000-50010" {
        setup.fail(&format!("lb stats after the range was added: {stats:#?}"));
    }

    drop(on_left);
    setup.config.services[0].more_ports = vec![(kept, kept + 2)];
    setup.reload();
    if client::open_tcp(&setup.bed.client().ns, at(left), 1).is_ok() {
        setup.fail(&format!(
            "port {left} still answered once the service left it"
        ));
    }
    open(&setup, kept, 5);
    setup.ping_all(&mut held, "after the range was narrowed");
    setup.ping_all(&mut on_kept, "on a port the service kept");
    // The health checks have had their fall intervals; everything holds.
    thread::sleep(Duration::from_millis(500) * 4);
    wait_backends_up(&setup, 3);
    setup.ping_all(&mut held, "after the health checks' fall intervals");
}

#[test]
fn sigkill_during_a_transfer_then_restart_adopts_the_data_path() {
    const TEST: &str = "sigkill_during_a_transfer_then_restart_adopts_the_data_path";
    if skip_unless_root(TEST) {
        return;
    }
    let setup = start(TEST, &[1000, 500, 800]);
    let mut conns = setup.open(VIP4.into(), 30);
    let test = setup.test();
    let Director {
        lb,
        config,
        servers,
        bed,
        ..
    } = setup;
    let before = lb.stats().unwrap();
    let mut upload_conn = conns.pop().unwrap();
    let uploader = thread::spawn(move || {
        let upload = upload_conn.upload(64 << 20);
        (upload_conn, upload)
    });
    thread::sleep(Duration::from_millis(20));
    let killed_log = lb.kill().unwrap();
    assert!(
        config.pin_path.exists(),
        "{test}: the pins vanished with the killed lb:\n{killed_log}"
    );
    // The data path keeps forwarding with no lb running.
    let mut during = open_without_lb(test, &bed, 5, "while lb is dead");
    let lb = start_lb(test, &bed, &config);
    lb.wait_log("adopted the data path", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{test}: {e:#}"));
    let (mut upload_conn, upload) = uploader.join().unwrap();
    let upload = upload.unwrap_or_else(|e| panic!("{test}: the upload broke: {e:#}\n{}", lb.log()));
    assert_eq!(
        (upload.received, upload.received_hash),
        (upload.sent, upload.sent_hash),
        "{test}: the 64 MiB upload arrived damaged"
    );
    assert_eq!(upload_conn.ping().unwrap(), upload_conn.server());
    client::ping_all(conns.iter_mut().chain(during.iter_mut()))
        .unwrap_or_else(|e| panic!("{test}: after the restart: {e:#}"));
    // Counters continue from where they were: the 35 connections and the
    // upload's ~46 k packets are all there.
    let after = lb.stats().unwrap();
    let (b, a) = (&before.services[0], &after.services[0]);
    assert!(
        a.conns == b.conns + 5 && a.in_bytes > b.in_bytes + (64 << 20),
        "{test}: counters did not continue: before {b:#?}\nafter {a:#?}"
    );
    let active: u64 = a.backends.iter().map(|b| b.active_conns).sum();
    assert!(
        active >= 35,
        "{test}: the adopted connection table lost flows ({active} active): {a:#?}"
    );
    drop(conns);
    drop(during);
    drop(upload_conn);
    let (status, log) = lb.stop().unwrap();
    assert!(status.success(), "{test}: {log}");
    assert!(!config.pin_path.exists(), "{test}: pins left after SIGTERM");
    drop(servers);
    drop(bed);
}

#[test]
fn drain_remove_and_add_backends_live() {
    const TEST: &str = "drain_remove_and_add_backends_live";
    if skip_unless_root(TEST) {
        return;
    }
    let setup = start(TEST, &[1000, 500, 800]);
    let rs2 = address(&setup, "rs2").to_string();
    let rs3 = address(&setup, "rs3").to_string();
    let mut held = setup.open(VIP4.into(), 60);
    let on_rs2 = client::count_conns(&held).get("rs2").copied().unwrap_or(0);
    assert!(on_rs2 > 0, "{TEST}: no connection went to rs2");

    // Drain rs2: no new connections, its open ones keep working.
    let out = ctl(&setup, &backend_args("drain", SERVICE, &rs2, &[]));
    assert!(out.stdout.contains("draining"), "{TEST}: {}", out.stdout);
    let stats = setup.stats();
    let b = backend(&setup, &stats, address(&setup, "rs2"));
    assert_eq!(
        (b.weight, b.state.as_str()),
        (0, "up"),
        "{TEST}: {stats:#?}"
    );
    let fresh = setup.open(VIP4.into(), 60);
    assert_eq!(
        client::count_conns(&fresh).get("rs2"),
        None,
        "{TEST}: a drained backend got new connections"
    );
    setup.ping_all(&mut held, "after draining rs2");

    // Weight back: rs2 takes new connections again.
    ctl(
        &setup,
        &backend_args("set-weight", SERVICE, &rs2, &["--weight", "500"]),
    );
    let again = setup.open(VIP4.into(), 60);
    assert!(
        client::count_conns(&again).get("rs2").copied().unwrap_or(0) > 0,
        "{TEST}: rs2 got nothing after set-weight 500: {:?}",
        client::count_conns(&again)
    );

    // Remove rs3 (default: its flows finish on it).
    ctl(&setup, &backend_args("remove", SERVICE, &rs3, &[]));
    let stats = setup.stats();
    assert_eq!(
        backend(&setup, &stats, address(&setup, "rs3")).state,
        "removed",
        "{TEST}: {stats:#?}"
    );
    let more = setup.open(VIP4.into(), 30);
    assert_eq!(
        client::count_conns(&more).get("rs3"),
        None,
        "{TEST}: a removed backend got new connections"
    );
    setup.ping_all(&mut held, "after removing rs3");

    // Add it back: same slot, its flows never stopped.
    ctl(
        &setup,
        &backend_args("add", SERVICE, &rs3, &["--weight", "800"]),
    );
    wait_backends_up(&setup, 3);
    // Bad requests are refused with the reason.
    let out = setup
        .lb
        .ctl(&backend_args(
            "set-weight",
            "nope",
            &rs3,
            &["--weight", "1"],
        ))
        .unwrap();
    assert!(
        !out.success && out.stderr.contains("no service named \"nope\""),
        "{TEST}: {out:?}"
    );
    let out = setup
        .lb
        .ctl(&backend_args(
            "add",
            SERVICE,
            "203.0.113.9",
            &["--weight", "1"],
        ))
        .unwrap();
    assert!(
        !out.success && out.stderr.contains("not on-link"),
        "{TEST}: {out:?}"
    );

    // Remove with --reschedule: rs1's flows move on their next packet.
    let rs1 = address(&setup, "rs1").to_string();
    ctl(
        &setup,
        &backend_args("remove", SERVICE, &rs1, &["--reschedule"]),
    );
    let stats = setup.stats();
    assert!(
        stats.services[0]
            .backends
            .iter()
            .all(|b| b.address.to_string() != rs1),
        "{TEST}: rs1 still listed after a rescheduling remove: {stats:#?}"
    );
    drop((fresh, again, more, held));
}

#[test]
fn stop_keep_datapath_then_detach() {
    const TEST: &str = "stop_keep_datapath_then_detach";
    if skip_unless_root(TEST) {
        return;
    }
    let setup = start(TEST, &[1000, 500, 800]);
    let mut held = setup.open(VIP4.into(), 10);
    let test = setup.test();
    let KeptDatapath {
        config,
        servers,
        bed,
        _pins,
    } = stop_keeping_the_data_path(setup);
    // Still forwarding without lb: held and new connections work.
    client::ping_all(&mut held)
        .unwrap_or_else(|e| panic!("{test}: after stop --keep-datapath: {e:#}"));
    let fresh = open_without_lb(test, &bed, 10, "after stop --keep-datapath");
    let lb_bin = lb_binary().unwrap();
    let detach = lb_tests::cmd::output(
        std::process::Command::new(&lb_bin)
            .arg("detach")
            .arg("--pin-path")
            .arg(&config.pin_path),
    )
    .unwrap();
    assert!(detach.success, "{test}: {detach:?}");
    assert!(!config.pin_path.exists(), "{test}: lb detach left the pins");
    // Detached: no XDP program on the director's NIC any more.
    let link = bed
        .director()
        .ns
        .ip(&["-d", "link", "show", DIRECTOR_IFACE])
        .unwrap();
    assert!(
        !link.contains("prog/xdp"),
        "{test}: still attached after lb detach:\n{link}"
    );
    drop((held, fresh));
    drop(servers);
    drop(bed);
}

/// A SIGHUP during start-up (here while lb waits for the MAC of a backend
/// that never answers ARP) does not kill lb: it is handled once lb is
/// ready, as a reload, and the data path forwards.
#[test]
fn sighup_during_start_up_is_handled_once_ready() {
    const TEST: &str = "sighup_during_start_up_is_handled_once_ready";
    if skip_unless_root(TEST) {
        return;
    }
    let bed = TestBed::build(&unique_tag(), 2).unwrap_or_else(|e| panic!("{TEST}: bed: {e:#}"));
    let _servers = bed
        .start_servers(PORT, &[])
        .unwrap_or_else(|e| panic!("{TEST}: {e:#}"));
    let mut web = service(&bed, &[1000, 500]);
    // In the director's subnet, but no host answers for it: lb waits for
    // its MAC before it attaches.
    web.backends.push((IpAddr::from([192, 0, 2, 99]), 1));
    let config = bed.lb_config(vec![web]);
    let lb_bin = lb_binary().unwrap_or_else(|e| panic!("{TEST}: {e:#}"));
    let lb = LbDaemon::launch(&lb_bin, &bed.director().ns, &config, bed.tag(), &[])
        .unwrap_or_else(|e| panic!("{TEST}: lb run: {e:#}"));
    lb.wait_log("starting with", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{TEST}: {e:#}\n{}", lb.log()));
    lb.signal(libc::SIGHUP)
        .unwrap_or_else(|e| panic!("{TEST}: SIGHUP: {e:#}"));
    let lb = lb
        .wait_ready()
        .unwrap_or_else(|e| panic!("{TEST}: a SIGHUP during start-up killed lb: {e:#}"));
    lb.wait_log("SIGHUP: reloading", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{TEST}: the SIGHUP was not handled: {e:#}\n{}", lb.log()));
    let conns = client::open_tcp(&bed.client().ns, SocketAddr::new(VIP4.into(), PORT), 10)
        .unwrap_or_else(|e| {
            panic!(
                "{TEST}: connecting after the start-up SIGHUP: {e:#}\n{}",
                lb.log()
            )
        });
    drop(conns);
    let (status, log) = lb.stop().unwrap_or_else(|e| panic!("{TEST}: {e:#}"));
    assert!(status.success(), "{TEST}: lb exited with {status}:\n{log}");
}

/// `lb backend remove --reschedule rs2` then `lb backend add rs4`: rs4 gets
/// a slot of its own, so it inherits neither the flows that still point at
/// rs2's slot (idle here, rescheduled on their next packet) nor rs2's
/// counters, also after the sweeper has recounted every backend.
#[test]
fn a_backend_added_after_a_rescheduling_remove_inherits_nothing() {
    const TEST: &str = "a_backend_added_after_a_rescheduling_remove_inherits_nothing";
    if skip_unless_root(TEST) {
        return;
    }
    let setup = start(TEST, &[1000, 500, 800]);
    let rs2 = address(&setup, "rs2").to_string();
    let rs4 = address(&setup, "rs4");
    let held = setup.open(VIP4.into(), 30);
    let on_rs2 = client::count_conns(&held).get("rs2").copied().unwrap_or(0);
    assert!(on_rs2 > 0, "{TEST}: no connection went to rs2");

    ctl(
        &setup,
        &backend_args("remove", SERVICE, &rs2, &["--reschedule"]),
    );
    ctl(
        &setup,
        &backend_args("add", SERVICE, &rs4.to_string(), &["--weight", "500"]),
    );
    wait_backends_up(&setup, 3);
    // Two sweeps (every 2 s) recount each backend's connections from the
    // table, where rs2's {on_rs2} idle flows still name its slot.
    thread::sleep(Duration::from_secs(5));
    let stats = setup.stats();
    let b = backend(&setup, &stats, rs4);
    assert_eq!(
        (b.active_conns, b.inactive_conns, b.conns, b.in_pkts),
        (0, 0, 0, 0),
        "{TEST}: rs4 inherited from rs2 ({on_rs2} idle flows): {stats:#?}"
    );
    drop(held);
    setup.finish();
}

/// A backend added live whose MAC the director's neighbour table already
/// holds (the director talked to it before) is written to the data path as
/// up, takes new flows, and still does after the neighbour refreshes and
/// health checks have run.
#[test]
fn a_backend_added_live_with_a_known_mac_takes_new_flows() {
    const TEST: &str = "a_backend_added_live_with_a_known_mac_takes_new_flows";
    if skip_unless_root(TEST) {
        return;
    }
    let setup = start(TEST, &[1000, 500]);
    let rs3 = address(&setup, "rs3");
    // A connection from the director itself puts rs3 in its neighbour table.
    let target = SocketAddr::new(rs3, PORT);
    setup
        .bed
        .director()
        .ns
        .run(move || Ok(TcpStream::connect_timeout(&target, Duration::from_secs(2))?))
        .unwrap_or_else(|e| {
            setup.fail(&format!("connecting to {target} from the director: {e:#}"))
        });

    ctl(
        &setup,
        &backend_args("add", SERVICE, &rs3.to_string(), &["--weight", "1000"]),
    );
    wait_backends_up(&setup, 3);
    // Past several neighbour refreshes (every second) and health checks.
    thread::sleep(Duration::from_secs(4));
    let stats = setup.stats();
    assert_eq!(
        backend(&setup, &stats, rs3).state,
        "up",
        "{TEST}: {stats:#?}"
    );
    let conns = setup.open(VIP4.into(), 40);
    assert!(
        client::count_conns(&conns).get("rs3").copied().unwrap_or(0) > 0,
        "{TEST}: rs3 got no new connection: {:?}",
        client::count_conns(&conns)
    );
    drop(conns);
    setup.finish();
}

/// Adoption checks the layout stamp of a pinned data path: one stamped with
/// another version is refused, with both versions and how to start afresh,
/// and left forwarding as it was.
#[test]
fn adoption_refuses_another_layout_version() {
    const TEST: &str = "adoption_refuses_another_layout_version";
    if skip_unless_root(TEST) {
        return;
    }
    let setup = start(TEST, &[1000, 500]);
    let mut held = setup.open(VIP4.into(), 5);
    let KeptDatapath {
        config,
        servers,
        bed,
        _pins: pins,
    } = stop_keeping_the_data_path(setup);
    // As a build with layout version 99 would have left it.
    let stamp = config.pin_path.join("LAYOUT");
    let update = lb_tests::cmd::output(std::process::Command::new("bpftool").args([
        "map",
        "update",
        "pinned",
        stamp.to_str().expect("UTF-8 path"),
        "key",
        "0",
        "0",
        "0",
        "0",
        "value",
        "99",
        "0",
        "0",
        "0",
    ]))
    .unwrap();
    assert!(update.success, "{TEST}: {update:?}");

    let lb_bin = lb_binary().unwrap();
    let refused = LbDaemon::launch(&lb_bin, &bed.director().ns, &config, bed.tag(), &[])
        .unwrap_or_else(|e| panic!("{TEST}: lb run: {e:#}"));
    let (status, log, mut second_guard) = refused.wait_exit().unwrap();
    // The first guard removes the pins at the end.
    second_guard.disarm();
    assert!(!status.success(), "{TEST}: lb adopted layout 99:\n{log}");
    assert!(
        log.contains("layout version 99, this lb has version")
            && log.contains("lb detach --pin-path"),
        "{TEST}: the refusal does not say why and what to do:\n{log}"
    );
    client::ping_all(&mut held)
        .unwrap_or_else(|e| panic!("{TEST}: after the refused adoption: {e:#}"));
    drop((held, pins));
    drop(servers);
    drop(bed);
}

/// A map write that fails in the event loop (here every sweep's write of
/// the connection counters: the map is frozen against writes from user
/// space) is logged, counted and retried: lb keeps running, the data path
/// keeps forwarding held and new connections, and only `lb stop` detaches.
#[test]
fn a_failing_map_write_never_takes_the_data_path_down() {
    const TEST: &str = "a_failing_map_write_never_takes_the_data_path_down";
    if skip_unless_root(TEST) {
        return;
    }
    let setup = start(TEST, &[1000, 500]);
    let mut held = setup.open(VIP4.into(), 10);
    let counters = setup.lb.pin_path().join("BACKEND_CONNS");
    let freeze = lb_tests::cmd::output(std::process::Command::new("bpftool").args([
        "map",
        "freeze",
        "pinned",
        counters.to_str().expect("UTF-8 path"),
    ]))
    .unwrap();
    assert!(freeze.success, "{TEST}: {freeze:?}");
    // Several sweeps (every 2 s) fail meanwhile.
    setup
        .lb
        .wait_log(
            "a sweep (tried again at the next one) failed",
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| setup.fail(&format!("{e:#}")));
    thread::sleep(Duration::from_secs(5));
    setup.ping_all(&mut held, "with every sweep failing");
    let fresh = setup.open(VIP4.into(), 10);
    drop((held, fresh));
    setup.finish();
}
