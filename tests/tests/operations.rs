//! Operating a running director: `lb reload`, SIGKILL and adoption of the
//! pinned data path, `lb backend drain|set-weight|remove|add`, `lb stop
//! --keep-datapath` and `lb detach`. The real `lb` binary on a director
//! namespace, real TCP connections from a client namespace to four real
//! servers (see `lb_tests::bed`).
//!
//! They need root; without it they print `SKIPPED (needs root)` and pass,
//! unless `CI` is set, where they fail.

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, SocketAddr},
    thread,
    time::Duration,
};

use lb_tests::{
    DIRECTOR_IFACE, Health, LbConfig, LbDaemon, RealServer, Stats, TestBed, VIP4,
    client::{self, HeldConn},
    cmd::Finished,
    lb_binary, pin_path_for, skip_unless_root, unique_tag,
};

/// The service port.
const PORT: u16 = 8080;
/// The service's name in the config.
const SERVICE: &str = "web";

/// A bed with four running real servers (rs1..rs4) and `lb run` on the
/// director balancing `weights` over the first `weights.len()` of them.
/// Field order is drop order: lb stops first, the namespaces go last.
struct Setup {
    test: &'static str,
    lb: LbDaemon,
    config: LbConfig,
    tag: String,
    servers: Vec<RealServer>,
    bed: TestBed,
}

impl Setup {
    fn new(test: &'static str, weights: &[u32]) -> Self {
        let tag = unique_tag();
        let bed = TestBed::build(&tag, 4)
            .unwrap_or_else(|e| panic!("{test}: building the test bed: {e:#}"));
        let servers = bed
            .real_servers()
            .iter()
            .map(|h| {
                RealServer::start(&h.ns, &h.role, PORT, &[])
                    .unwrap_or_else(|e| panic!("{test}: starting {}: {e:#}", h.role))
            })
            .collect();
        let config = LbConfig {
            interfaces: vec![DIRECTOR_IFACE.to_owned()],
            pin_path: pin_path_for(&tag),
            max_flows: 65_536,
            services: vec![service(&bed, weights)],
        };
        let lb = start_lb(test, &bed, &config, &tag);
        let setup = Self {
            test,
            lb,
            config,
            tag,
            servers,
            bed,
        };
        setup.wait_backends_up(weights.len());
        setup
    }

    /// Panics with `msg` and everything lb printed.
    fn fail(&self, msg: &str) -> ! {
        panic!(
            "{}: {msg}\n----- lb output -----\n{}",
            self.test,
            self.lb.log()
        )
    }

    fn stats(&self) -> Stats {
        self.lb
            .stats()
            .unwrap_or_else(|e| self.fail(&format!("lb stats: {e:#}")))
    }

    /// Waits until the service has `n` backends, all up.
    fn wait_backends_up(&self, n: usize) {
        let (stats, ok) = self
            .lb
            .wait_stats(Duration::from_secs(15), |s| {
                s.services.iter().all(|svc| {
                    svc.backends.len() == n && svc.backends.iter().all(|b| b.state == "up")
                })
            })
            .unwrap_or_else(|e| self.fail(&format!("lb stats: {e:#}")));
        if !ok {
            self.fail(&format!("expected {n} backends up within 15 s: {stats:#?}"));
        }
    }

    /// Opens `n` connections from the client, failing the test if any fails.
    fn open(&self, n: usize) -> Vec<HeldConn> {
        client::open_tcp(&self.bed.client().ns, SocketAddr::new(VIP4.into(), PORT), n)
            .unwrap_or_else(|e| self.fail(&format!("opening {n} TCP connections: {e:#}")))
    }

    /// Pings every held connection: each must answer with the server it
    /// was opened to.
    fn ping_all(&self, conns: &mut [HeldConn], when: &str) {
        for (i, conn) in conns.iter_mut().enumerate() {
            let expected = conn.server().to_owned();
            match conn.ping() {
                Ok(answer) if answer == expected => {}
                Ok(answer) => self.fail(&format!(
                    "{when}: connection {i} to {expected} was answered by {answer}"
                )),
                Err(e) => self.fail(&format!(
                    "{when}: connection {i} to {expected} broke: {e:#}"
                )),
            }
        }
    }

    /// The address of real server `rsN` (IPv4).
    fn address(&self, role: &str) -> IpAddr {
        self.bed
            .real_servers()
            .iter()
            .find(|h| h.role == role)
            .unwrap_or_else(|| self.fail(&format!("no real server {role}")))
            .addr_like(VIP4.into())
    }

    /// `lb ARGS --socket ...`, which must succeed.
    fn ctl(&self, args: &[&str]) -> Finished {
        let out = self
            .lb
            .ctl(args)
            .unwrap_or_else(|e| self.fail(&format!("lb {}: {e:#}", args.join(" "))));
        if !out.success {
            self.fail(&format!("`{}` failed:\n{}", out.command, out.stderr));
        }
        out
    }

    /// Backend `address` of the service in `stats`.
    fn backend<'a>(&self, stats: &'a Stats, address: IpAddr) -> &'a lb_tests::stats::BackendStats {
        stats.services[0]
            .backends
            .iter()
            .find(|b| b.address == address)
            .unwrap_or_else(|| self.fail(&format!("no backend {address} in {stats:#?}")))
    }
}

/// The `web` service over the first `weights.len()` real servers.
fn service(bed: &TestBed, weights: &[u32]) -> lb_tests::ServiceConfig {
    bed.service(
        SERVICE,
        VIP4.into(),
        PORT,
        lb_tests::Protocol::Tcp,
        Health::Toml(format!(
            "kind = \"tcp\"\nport = {PORT}\ninterval = \"500ms\"\ntimeout = \"300ms\"\nwarmup = \"0s\""
        )),
        weights,
    )
}

fn start_lb(test: &str, bed: &TestBed, config: &LbConfig, tag: &str) -> LbDaemon {
    let lb_bin = lb_binary().unwrap_or_else(|e| panic!("{test}: {e:#}"));
    LbDaemon::start(&lb_bin, &bed.director().ns, config, tag, &[])
        .unwrap_or_else(|e| panic!("{test}: lb run: {e:#}"))
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

fn count(conns: &[HeldConn]) -> BTreeMap<String, usize> {
    client::count_by_server(conns.iter().map(HeldConn::server))
}

#[test]
fn reload_reweights_and_adds_a_backend_without_breaking_held_connections() {
    const TEST: &str = "reload_reweights_and_adds_a_backend_without_breaking_held_connections";
    if skip_unless_root(TEST) {
        return;
    }
    let mut setup = Setup::new(TEST, &[1000, 500, 800]);
    let mut held = setup.open(200);
    let before = count(&held);
    let load: Vec<u64> = ["rs1", "rs2", "rs3", "rs4"]
        .iter()
        .map(|rs| before.get(*rs).copied().unwrap_or(0) as u64)
        .collect();

    // Re-weight rs1..rs3 and add rs4, then reload.
    let new_weights = [200, 500, 800, 1000];
    setup.config.services = vec![service(&setup.bed, &new_weights)];
    setup
        .config
        .write(
            setup
                .lb
                .config_path()
                .parent()
                .expect("config has a directory"),
        )
        .unwrap_or_else(|e| setup.fail(&format!("rewriting the config: {e:#}")));
    let out = setup.ctl(&["reload"]);
    for expected in ["weights changed", "backends added"] {
        if !out.stdout.contains(expected) {
            setup.fail(&format!(
                "`lb reload` said {:?}, expected {expected:?}",
                out.stdout
            ));
        }
    }
    setup.wait_backends_up(4);
    setup.ping_all(&mut held, "after the reload");

    // New connections follow the new weights, given the load already there.
    let fresh = setup.open(300);
    let got = count(&fresh);
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
    let rs4 = setup.backend(&stats, setup.address("rs4"));
    assert_eq!(rs4.weight, 1000, "{TEST}: {stats:#?}");
    assert_eq!(
        setup.backend(&stats, setup.address("rs1")).weight,
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
        setup.backend(&after, setup.address("rs4")).weight,
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
        setup.backend(&after, setup.address("rs4")).weight,
        900,
        "{TEST}: SIGHUP did not apply the new weight: {after:#?}"
    );
    setup.ping_all(&mut held, "after SIGHUP");
    drop(fresh);
    drop(held);
}

#[test]
fn sigkill_during_a_transfer_then_restart_adopts_the_data_path() {
    const TEST: &str = "sigkill_during_a_transfer_then_restart_adopts_the_data_path";
    if skip_unless_root(TEST) {
        return;
    }
    let setup = Setup::new(TEST, &[1000, 500, 800]);
    let Setup {
        test,
        lb,
        config,
        tag,
        servers,
        bed,
    } = setup;
    let mut conns = client::open_tcp(&bed.client().ns, SocketAddr::new(VIP4.into(), PORT), 30)
        .unwrap_or_else(|e| panic!("{test}: opening connections: {e:#}"));
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
    let mut during = client::open_tcp(&bed.client().ns, SocketAddr::new(VIP4.into(), PORT), 5)
        .unwrap_or_else(|e| panic!("{test}: connecting while lb is dead: {e:#}"));
    let lb = start_lb(test, &bed, &config, &tag);
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
    for conn in conns.iter_mut().chain(during.iter_mut()) {
        let server = conn.server().to_owned();
        assert_eq!(
            conn.ping()
                .unwrap_or_else(|e| panic!("{test}: a held connection broke: {e:#}")),
            server
        );
    }
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
    let setup = Setup::new(TEST, &[1000, 500, 800]);
    let rs2 = setup.address("rs2").to_string();
    let rs3 = setup.address("rs3").to_string();
    let mut held = setup.open(60);
    let on_rs2 = count(&held).get("rs2").copied().unwrap_or(0);
    assert!(on_rs2 > 0, "{TEST}: no connection went to rs2");

    // Drain rs2: no new connections, its open ones keep working.
    let out = setup.ctl(&["backend", "drain", "--service", SERVICE, "--address", &rs2]);
    assert!(out.stdout.contains("draining"), "{TEST}: {}", out.stdout);
    let stats = setup.stats();
    let b = setup.backend(&stats, setup.address("rs2"));
    assert_eq!(
        (b.weight, b.state.as_str()),
        (0, "up"),
        "{TEST}: {stats:#?}"
    );
    let fresh = setup.open(60);
    assert_eq!(
        count(&fresh).get("rs2"),
        None,
        "{TEST}: a drained backend got new connections"
    );
    setup.ping_all(&mut held, "after draining rs2");

    // Weight back: rs2 takes new connections again.
    setup.ctl(&[
        "backend",
        "set-weight",
        "--service",
        SERVICE,
        "--address",
        &rs2,
        "--weight",
        "500",
    ]);
    let again = setup.open(60);
    assert!(
        count(&again).get("rs2").copied().unwrap_or(0) > 0,
        "{TEST}: rs2 got nothing after set-weight 500: {:?}",
        count(&again)
    );

    // Remove rs3 (default: its flows finish on it).
    setup.ctl(&["backend", "remove", "--service", SERVICE, "--address", &rs3]);
    let stats = setup.stats();
    assert_eq!(
        setup.backend(&stats, setup.address("rs3")).state,
        "removed",
        "{TEST}: {stats:#?}"
    );
    let more = setup.open(30);
    assert_eq!(
        count(&more).get("rs3"),
        None,
        "{TEST}: a removed backend got new connections"
    );
    setup.ping_all(&mut held, "after removing rs3");

    // Add it back: same slot, its flows never stopped.
    setup.ctl(&[
        "backend",
        "add",
        "--service",
        SERVICE,
        "--address",
        &rs3,
        "--weight",
        "800",
    ]);
    setup.wait_backends_up(3);
    // Bad requests are refused with the reason.
    let out = setup
        .lb
        .ctl(&[
            "backend",
            "set-weight",
            "--service",
            "nope",
            "--address",
            &rs3,
            "--weight",
            "1",
        ])
        .unwrap();
    assert!(
        !out.success && out.stderr.contains("no service named \"nope\""),
        "{TEST}: {out:?}"
    );
    let out = setup
        .lb
        .ctl(&[
            "backend",
            "add",
            "--service",
            SERVICE,
            "--address",
            "203.0.113.9",
            "--weight",
            "1",
        ])
        .unwrap();
    assert!(
        !out.success && out.stderr.contains("not on-link"),
        "{TEST}: {out:?}"
    );

    // Remove with --reschedule: rs1's flows move on their next packet.
    let rs1 = setup.address("rs1").to_string();
    setup.ctl(&[
        "backend",
        "remove",
        "--service",
        SERVICE,
        "--address",
        &rs1,
        "--reschedule",
    ]);
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
    let setup = Setup::new(TEST, &[1000, 500, 800]);
    let Setup {
        test,
        lb,
        config,
        tag: _,
        servers,
        bed,
    } = setup;
    let mut held = client::open_tcp(&bed.client().ns, SocketAddr::new(VIP4.into(), PORT), 10)
        .unwrap_or_else(|e| panic!("{test}: {e:#}"));
    let out = lb.ctl(&["stop", "--keep-datapath"]).unwrap();
    assert!(out.success, "{test}: {out:?}");
    let (status, log, _pins) = lb.wait_exit().unwrap();
    assert!(status.success(), "{test}: {log}");
    assert!(
        config.pin_path.exists(),
        "{test}: --keep-datapath removed the pins:\n{log}"
    );
    // Still forwarding without lb: held and new connections work.
    for conn in &mut held {
        let server = conn.server().to_owned();
        assert_eq!(conn.ping().unwrap(), server);
    }
    let fresh = client::open_tcp(&bed.client().ns, SocketAddr::new(VIP4.into(), PORT), 10)
        .unwrap_or_else(|e| panic!("{test}: connecting after stop --keep-datapath: {e:#}"));
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
