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
    Director, Health, LbConfig, NetNs, PinDir, Protocol, ServiceConfig, Spec, TestBed, VIP4, VIP6,
    client, cmd,
    daemon::{ScratchDir, output_timeout},
    lb_binary, pin_path_for, skip_unless_root, unique_tag,
};

/// The service port (TCP and UDP, and the health check's).
const PORT: u16 = 8080;
/// Weights of rs1, rs2, rs3.
const WEIGHTS: [u32; 3] = [1000, 500, 800];
/// Allowed deviation from a server's weighted share.
const TOLERANCE: f64 = 0.10;
const INTERVAL: Duration = Health::TCP_INTERVAL;
const FALL: u32 = Health::TCP_FALL;
const RISE: u32 = Health::TCP_RISE;

/// A bed with three running real servers (UDP on both VIPs) and `lb run` on
/// the director with one service `name` on `vip` over rs1..rs3 (TCP check on
/// [`PORT`]), every backend up.
fn start(test: &'static str, name: &str, vip: IpAddr, protocol: Protocol) -> Director {
    let udp: [SocketAddr; 2] = [(VIP4, PORT).into(), (VIP6, PORT).into()];
    Director::start(test, spec(&udp), |bed| {
        vec![bed.service(name, vip, PORT, protocol, Health::tcp(PORT), &WEIGHTS)]
    })
}

/// Three real servers (rs1..rs3) answering TCP on [`PORT`] and UDP on
/// `udp`, and a plain `lb run`.
fn spec(udp: &[SocketAddr]) -> Spec<'_> {
    Spec {
        real_servers: WEIGHTS.len(),
        port: PORT,
        udp,
        lb_args: &[],
    }
}

/// Asserts each of rs1..rs3 got its weighted share of `total` within [`TOLERANCE`].
fn assert_weighted(setup: &Director, what: &str, counts: &BTreeMap<String, usize>, total: usize) {
    setup.assert_weighted(what, counts, total, &WEIGHTS, TOLERANCE);
}

/// 300 held TCP connections to a wlc service over rs1..rs3 (1000/500/800).
fn tcp_wlc_split(test: &'static str, vip: IpAddr) {
    const N: usize = 300;
    let setup = start(test, "web", vip, Protocol::Tcp);
    let mut conns = setup.open(vip, N);
    let counts = client::count_conns(&conns);
    eprintln!("{test}: the client saw {counts:?}");
    assert_weighted(&setup, "TCP connections", &counts, N);

    // lb's own view must match what the client saw.
    setup.assert_held_conns_counted(vip, PORT, &counts, N);

    // Every held flow still reaches the server that answered it.
    setup.ping_all(&mut conns, "after the split");
    // Again once the health checks have had `fall` intervals to act: the
    // director holds the VIP on its NIC, where the kernel would pick it as
    // the source of checks to backends in its prefix (IPv6: by longest
    // match), and a real server answers a VIP-sourced check to its own lo.
    thread::sleep(INTERVAL * (FALL + 1));
    setup.assert_all_up("after the health checks' fall intervals");
    setup.ping_all(&mut conns, "after the health checks' fall intervals");
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
    let setup = start(TEST, "dns", vip, Protocol::Udp);
    let names = client::udp_flows(&setup.bed.client().ns, SocketAddr::new(vip, PORT), N)
        .unwrap_or_else(|e| setup.fail(&format!("UDP flows: {e:#}")));
    let counts = client::count_by_server(names.iter().map(String::as_str));
    eprintln!("{TEST}: the client saw {counts:?}");
    assert_weighted(&setup, "UDP flows", &counts, N);

    let expected = setup.by_address(&counts, vip);
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
    // Once the TCP checks in front of the UDP service have had `fall`
    // intervals to act, every backend is still up and new flows still flow.
    thread::sleep(INTERVAL * (FALL + 1));
    setup.assert_all_up("after the health checks' fall intervals");
    client::udp_flows(&setup.bed.client().ns, SocketAddr::new(vip, PORT), 30)
        .unwrap_or_else(|e| setup.fail(&format!("UDP flows after fall intervals: {e:#}")));
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
    let setup = start(TEST, "gridftp", vip, Protocol::Tcp);
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
    thread::sleep(INTERVAL * (FALL + 1));
    setup.assert_all_up("after the health checks' fall intervals");
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
    let mut setup = start(TEST, "web", vip, Protocol::Tcp);
    let victim = setup.servers[1].name().to_owned();
    let victim_addr = setup.address_of(&victim, vip);
    let backend_state = |setup: &Director| {
        let stats = setup.stats();
        stats
            .service(vip, PORT)
            .and_then(|svc| svc.backend(victim_addr))
            .map(|b| b.state.clone())
            .unwrap_or_else(|| setup.fail(&format!("{victim} missing from lb stats: {stats:#?}")))
    };

    let mut held = setup.open(vip, N);
    eprintln!("{TEST}: before: {:?}", client::count_conns(&held));

    setup.servers[1].stop_listener();
    thread::sleep(INTERVAL * FALL + Duration::from_secs(1));
    let state = backend_state(&setup);
    if state != "down" {
        setup.fail(&format!(
            "{victim}'s listener is closed for {FALL} intervals + 1 s, yet lb says {state:?}"
        ));
    }
    let during = setup.open(vip, N);
    let counts = client::count_conns(&during);
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
    let counts = client::count_conns(&after);
    eprintln!("{TEST}: after {victim} is back: {counts:?}");
    if !counts.contains_key(&victim) {
        setup.fail(&format!(
            "{victim} is up again but got no new connection: {counts:?}"
        ));
    }
    held.extend(after);

    // Connections to the other servers never broke.
    setup.ping_all(
        held.iter_mut().filter(|c| c.server() != victim),
        &format!("after {victim} went down and came back"),
    );
    drop(held);
    setup.finish();
}

/// `no_backend = "reject"`: once every backend is down, a client's connect
/// is refused at once by the RST lb answers from XDP, instead of timing out
/// on SYNs dropped, and lb counts it as `reset_no_backend`.
#[test]
fn connect_is_refused_when_no_backend_is_up_and_the_service_rejects() {
    const TEST: &str = "connect_is_refused_when_no_backend_is_up_and_the_service_rejects";
    if skip_unless_root(TEST) {
        return;
    }
    let vip = IpAddr::from(VIP4);
    let mut setup = Director::start(TEST, spec(&[]), |bed| {
        let mut web = bed.service("web", vip, PORT, Protocol::Tcp, Health::tcp(PORT), &WEIGHTS);
        web.reject_without_backend = true;
        vec![web]
    });
    for server in &mut setup.servers {
        server.stop_listener();
    }
    let (stats, all_down) = setup
        .lb
        .wait_stats(INTERVAL * (FALL + 3), |s| {
            s.services
                .iter()
                .all(|svc| svc.backends.iter().all(|b| b.state == "down"))
        })
        .unwrap_or_else(|e| setup.fail(&format!("lb stats: {e:#}")));
    if !all_down {
        setup.fail(&format!("backends not all down: {stats:#?}"));
    }
    let target = SocketAddr::new(vip, PORT);
    let refused = setup
        .bed
        .client()
        .ns
        .run(move || {
            let started = std::time::Instant::now();
            let outcome = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5));
            anyhow::Ok((outcome.map(|_| ()).map_err(|e| e.kind()), started.elapsed()))
        })
        .unwrap_or_else(|e| setup.fail(&format!("connecting: {e:#}")));
    if refused.0 != Err(std::io::ErrorKind::ConnectionRefused) {
        setup.fail(&format!(
            "connect to {target} with no backend up: {:?} after {:?}, expected a refusal",
            refused.0, refused.1
        ));
    }
    let stats = setup.stats();
    let resets = stats
        .verdicts
        .iter()
        .find(|v| v.reason == "reset_no_backend")
        .map_or(0, |v| v.packets);
    if resets == 0 {
        setup.fail(&format!("no reset_no_backend counted: {stats:#?}"));
    }
    setup.finish();
}

/// A fresh host, where nothing is mounted at `/sys/fs/bpf`: `lb run`
/// mounts bpffs itself, says so, and forwards; the held connections still
/// answer once the health checks have had `fall` intervals to act.
#[test]
fn fresh_host_gets_bpffs_mounted() {
    const TEST: &str = "fresh_host_gets_bpffs_mounted";
    const N: usize = 30;
    if skip_unless_root(TEST) {
        return;
    }
    let vip = IpAddr::from(VIP4);
    let setup = Director::start_without_bpffs(TEST, spec(&[]), |bed| {
        vec![bed.service("web", vip, PORT, Protocol::Tcp, Health::tcp(PORT), &WEIGHTS)]
    });
    if !setup.lb.log().contains("mounted bpffs at /sys/fs/bpf") {
        setup.fail("lb did not say that it mounted bpffs");
    }
    let mut conns = setup.open(vip, N);
    thread::sleep(INTERVAL * (FALL + 1));
    setup.ping_all(&mut conns, "after the health checks' fall intervals");
    setup.assert_all_up("after the health checks' fall intervals");
    drop(conns);
    setup.finish();
}

#[test]
fn bpftool_shows_map_field_names() {
    const TEST: &str = "bpftool_shows_map_field_names";
    if skip_unless_root(TEST) {
        return;
    }
    let vip = IpAddr::from(VIP4);
    let setup = start(TEST, "web", vip, Protocol::Tcp);
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
        max_flows_v6: 1024,
        sweep_interval: None,
        timeouts: Vec::new(),
        sync: None,
        announce_table: None,
        syn_flood_rate: None,
        services: vec![ServiceConfig {
            name: "web".to_owned(),
            vip: VIP4.into(),
            port: PORT,
            protocol: Protocol::Tcp,
            health: Health::None,
            backends: vec![("192.0.2.11".parse().expect("address"), 1000)],
            reject_without_backend: false,
            sorry_server: None,
            quorum: None,
            persistence: None,
            vlan: Vec::new(),
            more_ports: Vec::new(),
            scheduler: "wlc",
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
    let servers = bed
        .start_servers(PORT, &[])
        .unwrap_or_else(|e| panic!("{TEST}: {e:#}"));
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
