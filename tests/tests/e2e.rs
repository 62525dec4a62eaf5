//! End-to-end tests: the real `lb` binary on a director namespace, real
//! sockets on a client and three real servers (see `lb_tests::bed`).
//!
//! They need root; without it they print `SKIPPED (needs root)` and pass,
//! unless `CI` is set, where they fail. `LB_BIN` names the `lb` binary
//! (default: `target/release/lb`).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::Command,
    thread,
    time::Duration,
};

use lb_tests::{
    DIRECTOR_IFACE, Health, LbConfig, LbDaemon, NetNs, PinDir, Protocol, RealServer, ServiceConfig,
    Stats, TestBed, VIP4, VIP6,
    client::{self, HeldConn},
    cmd,
    daemon::{ScratchDir, output_timeout},
    lb_binary, pin_path_for, skip_unless_root, unique_tag,
};

/// The service port (TCP and UDP, and the health check's).
const PORT: u16 = 8080;
/// Weights of rs1, rs2, rs3.
const WEIGHTS: [u32; 3] = [1000, 500, 800];
/// Allowed deviation from a server's weighted share.
const TOLERANCE: f64 = 0.10;
const INTERVAL: Duration = Duration::from_secs(1);
const FALL: u32 = 2;
const RISE: u32 = 2;

fn tcp_health() -> Health {
    Health::Tcp {
        interval: INTERVAL,
        timeout: Duration::from_millis(500),
        port: PORT,
        fall: FALL,
        rise: RISE,
    }
}

/// A bed with three running real servers and `lb run` on the director.
/// Field order is drop order: lb stops first, the namespaces go last.
struct Setup {
    test: &'static str,
    lb: LbDaemon,
    servers: Vec<RealServer>,
    bed: TestBed,
}

impl Setup {
    /// Builds the bed, starts the servers and `lb` with the services `services`
    /// returns, and waits until every backend is up.
    fn new(test: &'static str, services: impl FnOnce(&TestBed) -> Vec<ServiceConfig>) -> Self {
        let tag = unique_tag();
        let bed = TestBed::build(&tag, WEIGHTS.len())
            .unwrap_or_else(|e| panic!("{test}: building the test bed: {e:#}"));
        let udp: [SocketAddr; 2] = [(VIP4, PORT).into(), (VIP6, PORT).into()];
        let servers = bed
            .real_servers()
            .iter()
            .map(|h| {
                RealServer::start(&h.ns, &h.role, PORT, &udp)
                    .unwrap_or_else(|e| panic!("{test}: starting {}: {e:#}", h.role))
            })
            .collect();
        let config = LbConfig {
            interfaces: vec![DIRECTOR_IFACE.to_owned()],
            pin_path: pin_path_for(&tag),
            max_flows: 65_536,
            services: services(&bed),
        };
        let lb_bin = lb_binary().unwrap_or_else(|e| panic!("{test}: {e:#}"));
        let lb = LbDaemon::start(&lb_bin, &bed.director().ns, &config, &tag, &[])
            .unwrap_or_else(|e| panic!("{test}: lb run: {e:#}"));
        let setup = Self {
            test,
            lb,
            servers,
            bed,
        };
        let (stats, all_up) = setup
            .lb
            .wait_stats(Duration::from_secs(15), |s| {
                s.services
                    .iter()
                    .all(|svc| svc.backends.iter().all(|b| b.state == "up"))
            })
            .unwrap_or_else(|e| setup.fail(&format!("lb stats: {e:#}")));
        if !all_up {
            setup.fail(&format!(
                "backends not all up 15 s after lb was ready: {stats:#?}"
            ));
        }
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

    /// Opens `n` connections from the client, failing the test if any fails.
    fn open(&self, vip: IpAddr, n: usize) -> Vec<HeldConn> {
        client::open_tcp(&self.bed.client().ns, SocketAddr::new(vip, PORT), n)
            .unwrap_or_else(|e| self.fail(&format!("opening {n} TCP connections: {e:#}")))
    }

    /// Real server name -> its address in `vip`'s family.
    fn address_of(&self, role: &str, vip: IpAddr) -> IpAddr {
        self.bed
            .real_servers()
            .iter()
            .find(|h| h.role == role)
            .unwrap_or_else(|| self.fail(&format!("no real server {role}")))
            .addr_like(vip)
    }

    /// Stops lb with SIGTERM; asserts it exits 0 and removes its pins.
    fn finish(self) {
        let Self {
            test,
            lb,
            servers,
            bed,
        } = self;
        let pins = lb.pin_path().to_owned();
        let (status, log) = lb
            .stop()
            .unwrap_or_else(|e| panic!("{test}: stopping lb: {e:#}"));
        assert!(
            status.success(),
            "{test}: lb exited with {status} after SIGTERM; its output:\n{log}"
        );
        assert!(
            !pins.exists(),
            "{test}: lb left its pin directory {} behind; its output:\n{log}",
            pins.display()
        );
        drop(servers);
        drop(bed);
    }
}

/// Asserts each of rs1..rs3 got its weighted share of `total` within [`TOLERANCE`].
fn assert_weighted(setup: &Setup, what: &str, counts: &BTreeMap<String, usize>, total: usize) {
    let sum: u32 = WEIGHTS.iter().sum();
    let got: usize = counts.values().sum();
    if got != total {
        setup.fail(&format!(
            "{what}: {got} answers for {total} tries: {counts:?}"
        ));
    }
    for (server, weight) in setup.servers.iter().zip(WEIGHTS) {
        let share = total as f64 * f64::from(weight) / f64::from(sum);
        let n = counts.get(server.name()).copied().unwrap_or(0);
        if (n as f64 - share).abs() > TOLERANCE * share {
            setup.fail(&format!(
                "{what}: {} (weight {weight}) got {n}, expected {share:.1} ± {:.0} %; all: {counts:?}",
                server.name(),
                TOLERANCE * 100.0
            ));
        }
    }
}

/// 300 held TCP connections to a wlc service over rs1..rs3 (1000/500/800).
fn tcp_wlc_split(test: &'static str, vip: IpAddr) {
    const N: usize = 300;
    let setup = Setup::new(test, |bed| {
        vec![bed.service("web", vip, PORT, Protocol::Tcp, tcp_health(), &WEIGHTS)]
    });
    let mut conns = setup.open(vip, N);
    let counts = client::count_by_server(conns.iter().map(HeldConn::server));
    eprintln!("{test}: the client saw {counts:?}");
    assert_weighted(&setup, "TCP connections", &counts, N);

    // lb's own view must match what the client saw.
    let expected: BTreeMap<IpAddr, u64> = counts
        .iter()
        .map(|(role, &n)| (setup.address_of(role, vip), n as u64))
        .collect();
    let (stats, agrees) = setup
        .lb
        .wait_stats(Duration::from_secs(3), |s| {
            s.service(vip, PORT).is_some_and(|svc| {
                svc.conns == N as u64
                    && svc.backends.iter().all(|b| {
                        let n = expected.get(&b.address).copied().unwrap_or(0);
                        b.active_conns == n && b.conns == n
                    })
            })
        })
        .unwrap_or_else(|e| setup.fail(&format!("lb stats: {e:#}")));
    if !agrees {
        setup.fail(&format!(
            "lb stats disagree with the client (expected per backend: {expected:?} \
             active and new conns, {N} service conns): {:#?}",
            stats.service(vip, PORT)
        ));
    }

    // Every held flow still reaches the server that answered it.
    for (i, conn) in conns.iter_mut().enumerate() {
        let server = conn.server().to_owned();
        match conn.ping() {
            Ok(name) if name == server => {}
            Ok(name) => setup.fail(&format!(
                "connection {i} was answered by {server} but its ping by {name}"
            )),
            Err(e) => setup.fail(&format!("connection {i} to {server} broke: {e:#}")),
        }
    }
    drop(conns);
    setup.finish();
}

#[test]
fn tcp_ipv4_connections_split_by_weight() {
    const TEST: &str = "tcp_ipv4_connections_split_by_weight";
    if skip_unless_root(TEST) {
        return;
    }
    tcp_wlc_split(TEST, VIP4.into());
}

#[test]
fn tcp_ipv6_connections_split_by_weight() {
    const TEST: &str = "tcp_ipv6_connections_split_by_weight";
    if skip_unless_root(TEST) {
        return;
    }
    tcp_wlc_split(TEST, VIP6.into());
}

#[test]
fn udp_flows_split_by_weight() {
    const TEST: &str = "udp_flows_split_by_weight";
    const N: usize = 300;
    if skip_unless_root(TEST) {
        return;
    }
    let vip = IpAddr::from(VIP4);
    // The TCP check on the same port as the UDP service, like keepalived's
    // TCP_CHECK in front of UDP services.
    let setup = Setup::new(TEST, |bed| {
        vec![bed.service("dns", vip, PORT, Protocol::Udp, tcp_health(), &WEIGHTS)]
    });
    let names = client::udp_flows(&setup.bed.client().ns, SocketAddr::new(vip, PORT), N)
        .unwrap_or_else(|e| setup.fail(&format!("UDP flows: {e:#}")));
    let counts = client::count_by_server(names.iter().map(String::as_str));
    eprintln!("{TEST}: the client saw {counts:?}");
    assert_weighted(&setup, "UDP flows", &counts, N);

    let expected: BTreeMap<IpAddr, u64> = counts
        .iter()
        .map(|(role, &n)| (setup.address_of(role, vip), n as u64))
        .collect();
    let stats = setup.stats();
    let svc = stats
        .service(vip, PORT)
        .unwrap_or_else(|| setup.fail(&format!("no UDP service in lb stats: {stats:#?}")));
    let seen: BTreeMap<IpAddr, u64> = svc.backends.iter().map(|b| (b.address, b.conns)).collect();
    if seen != expected || svc.conns != N as u64 {
        setup.fail(&format!(
            "lb counted new UDP flows {seen:?} (service: {}), the client saw {expected:?} ({N})",
            svc.conns
        ));
    }
    setup.finish();
}

#[test]
fn upload_64_mib_arrives_intact() {
    const TEST: &str = "upload_64_mib_arrives_intact";
    const LEN: u64 = 64 << 20;
    if skip_unless_root(TEST) {
        return;
    }
    let vip = IpAddr::from(VIP4);
    let setup = Setup::new(TEST, |bed| {
        vec![bed.service("gridftp", vip, PORT, Protocol::Tcp, tcp_health(), &WEIGHTS)]
    });
    let (server, report) = client::upload(&setup.bed.client().ns, SocketAddr::new(vip, PORT), LEN)
        .unwrap_or_else(|e| setup.fail(&format!("uploading {LEN} bytes: {e:#}")));
    eprintln!("{TEST}: {server} reported {report:?}");
    if report.received != LEN || report.received_hash != report.sent_hash {
        setup.fail(&format!(
            "upload damaged: sent {} bytes hash {:016x}, {server} received {} bytes hash {:016x}",
            report.sent, report.sent_hash, report.received, report.received_hash
        ));
    }
    let stats = setup.stats();
    let backend = stats
        .service(vip, PORT)
        .and_then(|svc| svc.backend(setup.address_of(&server, vip)))
        .unwrap_or_else(|| setup.fail(&format!("{server} missing from lb stats: {stats:#?}")));
    if backend.in_bytes < LEN {
        setup.fail(&format!(
            "lb counted {} bytes to {server}, less than the {LEN} uploaded",
            backend.in_bytes
        ));
    }
    setup.finish();
}

#[test]
fn health_check_takes_a_server_out_and_back() {
    const TEST: &str = "health_check_takes_a_server_out_and_back";
    const N: usize = 30;
    if skip_unless_root(TEST) {
        return;
    }
    let vip = IpAddr::from(VIP4);
    let mut setup = Setup::new(TEST, |bed| {
        vec![bed.service("web", vip, PORT, Protocol::Tcp, tcp_health(), &WEIGHTS)]
    });
    let victim = setup.servers[1].name().to_owned();
    let victim_addr = setup.address_of(&victim, vip);
    let backend_state = |setup: &Setup| {
        let stats = setup.stats();
        stats
            .service(vip, PORT)
            .and_then(|svc| svc.backend(victim_addr))
            .map(|b| b.state.clone())
            .unwrap_or_else(|| setup.fail(&format!("{victim} missing from lb stats: {stats:#?}")))
    };

    let mut held = setup.open(vip, N);
    eprintln!(
        "{TEST}: before: {:?}",
        client::count_by_server(held.iter().map(HeldConn::server))
    );

    setup.servers[1].stop_listener();
    thread::sleep(INTERVAL * FALL + Duration::from_secs(1));
    let state = backend_state(&setup);
    if state != "down" {
        setup.fail(&format!(
            "{victim}'s listener is closed for {FALL} intervals + 1 s, yet lb says {state:?}"
        ));
    }
    let during = setup.open(vip, N);
    let counts = client::count_by_server(during.iter().map(HeldConn::server));
    eprintln!("{TEST}: while {victim} is down: {counts:?}");
    if counts.contains_key(&victim) {
        setup.fail(&format!(
            "{victim} is down but got new connections: {counts:?}"
        ));
    }
    held.extend(during);

    setup.servers[1]
        .start_listener()
        .unwrap_or_else(|e| setup.fail(&format!("restarting {victim}: {e:#}")));
    thread::sleep(INTERVAL * RISE + Duration::from_secs(1));
    let state = backend_state(&setup);
    if state != "up" {
        setup.fail(&format!(
            "{victim} listens again for {RISE} intervals + 1 s, yet lb says {state:?}"
        ));
    }
    let after = setup.open(vip, N);
    let counts = client::count_by_server(after.iter().map(HeldConn::server));
    eprintln!("{TEST}: after {victim} is back: {counts:?}");
    if !counts.contains_key(&victim) {
        setup.fail(&format!(
            "{victim} is up again but got no new connection: {counts:?}"
        ));
    }
    held.extend(after);

    // Connections to the other servers never broke.
    for conn in held.iter_mut().filter(|c| c.server() != victim) {
        let server = conn.server().to_owned();
        match conn.ping() {
            Ok(name) if name == server => {}
            Ok(name) => setup.fail(&format!("a connection to {server} now reaches {name}")),
            Err(e) => setup.fail(&format!("a connection to {server} broke: {e:#}")),
        }
    }
    drop(held);
    setup.finish();
}

#[test]
fn bpftool_shows_map_field_names() {
    const TEST: &str = "bpftool_shows_map_field_names";
    if skip_unless_root(TEST) {
        return;
    }
    let vip = IpAddr::from(VIP4);
    let setup = Setup::new(TEST, |bed| {
        vec![bed.service("web", vip, PORT, Protocol::Tcp, tcp_health(), &WEIGHTS)]
    });
    for (map, fields) in [
        (
            lb_common::SERVICES_MAP,
            &["\"addr\"", "\"port\"", "\"proto\""][..],
        ),
        (
            lb_common::BACKENDS_MAP,
            &["\"addr\"", "\"mac\"", "\"weight\"", "\"state\""][..],
        ),
    ] {
        let path = setup.lb.pin_path().join(map);
        let out = cmd::run(
            Command::new("bpftool")
                .args(["map", "dump", "pinned"])
                .arg(&path),
        )
        .unwrap_or_else(|e| setup.fail(&format!("bpftool: {e:#}")));
        for field in fields {
            if !out.contains(field) {
                let head: String = out.chars().take(2000).collect();
                setup.fail(&format!(
                    "`bpftool map dump pinned {}` does not name {field}:\n{head}",
                    path.display()
                ));
            }
        }
    }
    setup.finish();
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    const TEST: &str = "bad_input_is_refused_and_changes_nothing";
    if skip_unless_root(TEST) {
        return;
    }
    let tag = unique_tag();
    let lb = lb_binary().unwrap_or_else(|e| panic!("{TEST}: {e:#}"));
    let director = NetNs::create(&format!("lbt{tag}-director"))
        .unwrap_or_else(|e| panic!("{TEST}: creating a namespace: {e:#}"));
    let scratch = ScratchDir::create(&tag).unwrap_or_else(|e| panic!("{TEST}: {e:#}"));
    let pins: PathBuf = pin_path_for(&tag);
    let _pin_guard = PinDir::new(pins.clone());
    let config = LbConfig {
        interfaces: vec!["nosuch0".to_owned()],
        pin_path: pins.clone(),
        max_flows: 1024,
        services: vec![ServiceConfig {
            name: "web".to_owned(),
            vip: VIP4.into(),
            port: PORT,
            protocol: Protocol::Tcp,
            health: Health::None,
            backends: vec![("192.0.2.11".parse().expect("address"), 1000)],
        }],
    };
    let path = config
        .write(scratch.path())
        .unwrap_or_else(|e| panic!("{TEST}: {e:#}"));

    // The config itself is valid...
    let check = output_timeout(
        Command::new(&lb).arg("check").arg("--config").arg(&path),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{TEST}: {e:#}"));
    assert!(
        check.success,
        "{TEST}: `{}` refused a valid config: {}{}",
        check.command, check.stdout, check.stderr
    );

    // ...but the NIC does not exist.
    let run = output_timeout(
        director.command(&lb).arg("run").arg("--config").arg(&path),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{TEST}: {e:#}"));
    assert!(
        !run.success,
        "{TEST}: `{}` succeeded with a missing NIC: {}{}",
        run.command, run.stdout, run.stderr
    );
    assert!(
        run.stderr.contains("nosuch0"),
        "{TEST}: lb's error does not name the missing NIC nosuch0:\n{}",
        run.stderr
    );
    assert!(
        !pins.exists(),
        "{TEST}: lb failed but left a pin directory {}",
        pins.display()
    );

    // An invalid VIP is refused by `lb check`, naming the field.
    let bad = scratch.path().join("bad.toml");
    std::fs::write(
        &bad,
        config
            .to_toml()
            .replace(&format!("\"{VIP4}\""), "\"192.0.2.300\""),
    )
    .unwrap_or_else(|e| panic!("{TEST}: writing {}: {e}", bad.display()));
    let check = output_timeout(
        Command::new(&lb).arg("check").arg("--config").arg(&bad),
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{TEST}: {e:#}"));
    let message = format!("{}{}", check.stdout, check.stderr);
    assert!(
        !check.success && message.contains("vip"),
        "{TEST}: `{}` on an invalid VIP: exit {:?}, output:\n{message}",
        check.command,
        check.code
    );
}

/// The bed itself, without lb: the client reaches every real server on its
/// own addresses, over IPv4 and IPv6.
#[test]
fn test_bed_reaches_real_servers_directly() {
    const TEST: &str = "test_bed_reaches_real_servers_directly";
    if skip_unless_root(TEST) {
        return;
    }
    let tag = unique_tag();
    let bed = TestBed::build(&tag, 2).unwrap_or_else(|e| panic!("{TEST}: building the bed: {e:#}"));
    let servers: Vec<RealServer> = bed
        .real_servers()
        .iter()
        .map(|h| {
            RealServer::start(&h.ns, &h.role, PORT, &[])
                .unwrap_or_else(|e| panic!("{TEST}: starting {}: {e:#}", h.role))
        })
        .collect();
    for host in bed.real_servers() {
        for addr in [IpAddr::from(host.ipv4), IpAddr::from(host.ipv6)] {
            let mut conns = client::open_tcp(&bed.client().ns, SocketAddr::new(addr, PORT), 2)
                .unwrap_or_else(|e| panic!("{TEST}: connecting to {}: {e:#}", host.role));
            for conn in &mut conns {
                assert_eq!(conn.server(), host.role, "{TEST}: greeting from {addr}");
                let again = conn
                    .ping()
                    .unwrap_or_else(|e| panic!("{TEST}: ping {addr}: {e:#}"));
                assert_eq!(again, host.role, "{TEST}: ping answer from {addr}");
            }
        }
    }
    drop(servers);
}
