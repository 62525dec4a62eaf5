//! Tests of [`Config::parse`]: every field, default and message.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;

const EXAMPLE: &str = include_str!("../../../examples/lb.toml");

/// A valid file to start from: `[director]` on line 1, the service on
/// line 4, its backends on lines 9 and 12.
const BASE: &str = r#"[director]
interfaces = ["eth0"]

[[service]]
name = "gridftp"
vip = "192.0.2.200"
port = 2811

[[service.backend]]
address = "198.51.100.24"

[[service.backend]]
address = "198.51.100.25"
"#;

fn parse(text: &str) -> Config {
    match Config::parse(text, "lb.toml") {
        Ok(config) => config,
        Err(e) => panic!("unexpected error:\n{e}\nin:\n{text}"),
    }
}

fn error(text: &str) -> String {
    match Config::parse(text, "lb.toml") {
        Ok(config) => panic!("accepted {config:?}\nfrom:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// 1-based line of the first line of `text` containing `needle`.
fn line(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{needle:?} not in text"))
}

/// 1-based line where `key` is set (`key = ...`, `table.key = ...`) or
/// names a table (`[[table.key]]`).
fn key_line(text: &str, key: &str) -> usize {
    let set = format!("{key} =");
    let header = format!(".{key}]");
    text.lines()
        .position(|l| l.starts_with(&set) || l.contains(&format!(".{set}")) || l.contains(&header))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("{key:?} not set in text"))
}

/// BASE with `from` replaced by `to`; panics if `from` is not there.
fn base_with(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from:?} not in BASE");
    BASE.replacen(from, to, 1)
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// The health check a tcp service on `port` gets without a
/// `[service.health]` table.
fn default_health(port: u16) -> HealthConfig {
    HealthConfig {
        kind: HealthKind::Tcp,
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(3),
        port,
        fall: 3,
        rise: 2,
        retry_delay: Duration::from_secs(10),
        warmup: Duration::from_secs(10),
        inhibit_on_failure: false,
        notify: Vec::new(),
        bind_to: None,
    }
}

/// BASE with `lines` added to `[director]` (from line 3 on).
fn director_with(lines: &str) -> String {
    base_with("[\"eth0\"]\n", &format!("[\"eth0\"]\n{lines}\n"))
}

/// BASE with a `[service.health]` table (header on line 8, `lines` from
/// line 9 on).
fn health_with(lines: &str) -> String {
    base_with(
        "port = 2811\n",
        &format!("port = 2811\n[service.health]\n{lines}\n"),
    )
}

fn health(lines: &str) -> HealthConfig {
    parse(&health_with(lines)).services.remove(0).health
}

/// Asserts that `[service.health]` holding `lines` is rejected with
/// exactly `expected` (one `line: message` per problem, `\n`-separated;
/// the `lb.toml:` prefix and the context are added).
fn assert_health_error(lines: &str, expected: &[(usize, &str)]) {
    let expected: Vec<String> = expected
        .iter()
        .map(|(line, message)| {
            format!("lb.toml:{line}: service \"gridftp\", health check: {message}")
        })
        .collect();
    assert_eq!(
        error(&health_with(lines)),
        expected.join("\n"),
        "for:\n{lines}"
    );
}

#[test]
fn example_parses() {
    let config = parse(EXAMPLE);
    assert_eq!(
        config.director,
        DirectorConfig {
            interfaces: vec!["eth0".to_owned()],
            xdp_mode: XdpMode::Driver,
            pin_path: PathBuf::from("/sys/fs/bpf/lb"),
            max_flows: lb_common::DEFAULT_MAX_FLOWS,
            max_flows_v6: lb_common::DEFAULT_MAX_FLOWS_V6,
            sweep_interval: Duration::from_secs(2),
            timeouts: Timeouts::IPVS,
            control_socket: PathBuf::from("/run/lb/lb.sock"),
            metrics_listen: None,
            expire_nodest_conn: false,
            vrrp_vrids: Vec::new(),
            syn_flood_rate: lb_common::DEFAULT_SYN_FLOOD_RATE,
        }
    );
    let backend = |address, weight| BackendConfig {
        address,
        weight,
        mac: None,
    };
    assert_eq!(
        config.services,
        vec![ServiceConfig {
            name: "gridftp".to_owned(),
            vip: v4(192, 0, 2, 200),
            ports: Ports::single(2811),
            protocol: Protocol::Tcp,
            scheduler: Scheduler::Wlc,
            no_backend: NoBackend::Drop,
            sloppy_tcp: false,
            sorry_server: None,
            quorum: 1,
            hysteresis: 0,
            persistence: None,
            vlan: Vec::new(),
            health: HealthConfig {
                kind: HealthKind::Tcp,
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(3),
                port: 2811,
                fall: 3,
                rise: 2,
                retry_delay: Duration::from_secs(3),
                warmup: Duration::from_secs(10),
                inhibit_on_failure: false,
                notify: Vec::new(),
                bind_to: None,
            },
            backends: vec![
                backend(v4(198, 51, 100, 24), 1000),
                backend(v4(198, 51, 100, 25), 500),
                backend(v4(198, 51, 100, 26), 800),
            ],
        }]
    );
}

/// The commented-out parts of the example (`#key = ...` lines, as
/// opposed to `# prose`) are valid too once uncommented.
#[test]
fn example_commented_parts_parse() {
    let uncommented: String = EXAMPLE
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.is_empty() || !rest.starts_with([' ', '#']) => rest,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let config = parse(&uncommented);
    assert_eq!(
        config.services[0].backends[0].mac,
        Some([0x02, 0x00, 0xc6, 0x33, 0x64, 0x18])
    );
    let v6 = &config.services[1];
    assert_eq!(v6.name, "gridftp-v6");
    assert_eq!(
        v6.vip,
        IpAddr::V6("2001:db8::200".parse::<Ipv6Addr>().unwrap())
    );
    assert_eq!(
        v6.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
        [1000, 500, 800]
    );
    assert!(v6.backends.iter().all(|b| b.address.is_ipv6()));
    assert_eq!(v6.health, default_health(2811));
    assert_eq!(
        config.director.metrics_listen,
        Some(SocketAddr::from(([127, 0, 0, 1], 9100)))
    );
    assert_eq!(
        config.services[0].health.notify,
        ["/usr/local/bin/lb-notify", "--syslog"]
    );
}

#[test]
fn defaults() {
    let config = parse(BASE);
    assert_eq!(config.director.xdp_mode, XdpMode::Driver);
    assert_eq!(config.director.pin_path, Path::new("/sys/fs/bpf/lb"));
    assert_eq!(config.director.max_flows, lb_common::DEFAULT_MAX_FLOWS);
    assert_eq!(
        config.director.max_flows_v6,
        lb_common::DEFAULT_MAX_FLOWS_V6
    );
    assert_eq!(config.director.sweep_interval, Duration::from_secs(2));
    assert_eq!(config.director.timeouts, Timeouts::IPVS);
    assert_eq!(config.director.control_socket, Path::new("/run/lb/lb.sock"));
    assert_eq!(config.director.metrics_listen, None);
    assert!(!config.director.expire_nodest_conn);
    let service = &config.services[0];
    assert_eq!(service.protocol, Protocol::Tcp);
    assert_eq!(service.scheduler, Scheduler::Wlc);
    assert_eq!(service.health, default_health(2811));
    assert_eq!(service.backends[0].weight, 1);
    assert_eq!(service.backends[0].mac, None);
}

#[test]
fn udp_service_defaults_to_no_health_check() {
    let config = parse(&base_with("port = 2811", "port = 53\nprotocol = \"udp\""));
    let service = &config.services[0];
    assert_eq!(service.protocol, Protocol::Udp);
    assert_eq!(service.protocol.number(), lb_common::PROTO_UDP);
    assert_eq!(service.health.kind, HealthKind::None);
    assert_eq!(service.health.port, 53);
}

#[test]
fn default_health_timeout_fits_a_short_interval() {
    let text = base_with(
        "port = 2811\n",
        "port = 2811\n[service.health]\ninterval = \"1s\"\n",
    );
    let health = &parse(&text).services[0].health;
    assert_eq!(health.interval, Duration::from_secs(1));
    assert_eq!(health.timeout, Duration::from_secs(1));
}

#[test]
fn explicit_values() {
    let text = r#"
[director]
interfaces = ["eth0", "eth1"]
xdp_mode = "skb"
pin_path = "/sys/fs/bpf/lb-test"
max_flows = 4096
max_flows_v6 = 2048
sweep_interval = "500ms"
control_socket = "/var/run/lb-test/control.sock"
metrics_listen = "[2001:db8::1]:9100"
expire_nodest_conn = true
[director.timeouts]
established = "1h30m"
udp = "30s"

[[service]]
name = "dns"
vip = "2001:db8::53"
port = 53
protocol = "UDP"
health = { kind = "tcp", interval = "2s", timeout = "2s", port = 5353, fall = 1, rise = 100, retry_delay = "500ms", warmup = "0s", inhibit_on_failure = true, notify = ["/bin/notify"] }
backend = [{ address = "2001:db8::1", weight = 0, mac = "02:AB:cd:00:00:01" }]
"#;
    let config = parse(text);
    let d = &config.director;
    assert_eq!(d.interfaces, ["eth0", "eth1"]);
    assert_eq!(d.xdp_mode, XdpMode::Skb);
    assert_eq!(d.pin_path, Path::new("/sys/fs/bpf/lb-test"));
    assert_eq!(d.max_flows, 4096);
    assert_eq!(d.max_flows_v6, 2048);
    assert_eq!(d.sweep_interval, Duration::from_millis(500));
    assert_eq!(d.control_socket, Path::new("/var/run/lb-test/control.sock"));
    assert_eq!(
        d.metrics_listen,
        Some("[2001:db8::1]:9100".parse().unwrap())
    );
    assert!(d.expire_nodest_conn);
    assert_eq!(
        d.timeouts,
        Timeouts {
            established: 5400,
            udp: 30,
            ..Timeouts::IPVS
        }
    );
    let s = &config.services[0];
    assert_eq!(s.protocol, Protocol::Udp);
    assert_eq!(
        s.health,
        HealthConfig {
            kind: HealthKind::Tcp,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            port: 5353,
            fall: 1,
            rise: 100,
            retry_delay: Duration::from_millis(500),
            warmup: Duration::ZERO,
            inhibit_on_failure: true,
            notify: vec!["/bin/notify".to_owned()],
            bind_to: None,
        }
    );
    assert_eq!(
        s.backends,
        [BackendConfig {
            address: "2001:db8::1".parse().unwrap(),
            weight: 0,
            mac: Some([0x02, 0xab, 0xcd, 0, 0, 1]),
        }]
    );
}

/// Tables that toml builds implicitly (dotted keys, a sub-table without
/// its parent's header) have no position; they must still work.
#[test]
fn implicit_tables() {
    let text = "director.interfaces = [\"eth0\"]\n\
                director.timeouts.udp = \"1m\"\n"
        .to_owned()
        + BASE.trim_start_matches("[director]\ninterfaces = [\"eth0\"]\n");
    assert_eq!(parse(&text).director.timeouts.udp, 60);

    let text = "[director.timeouts]\nudp = \"1m\"\n";
    assert_eq!(
        error(text),
        "lb.toml: [director]: missing required field \"interfaces\" (e.g. interfaces = [\"eth0\"])"
    );
}

#[test]
fn no_services_is_valid() {
    assert!(
        parse("[director]\ninterfaces = [\"eth0\"]\n")
            .services
            .is_empty()
    );
}

// -- Errors from toml and serde

#[test]
fn syntax_error() {
    let text = base_with("port = 2811", "port = 2811 2812");
    let e = error(&text);
    assert!(
        e.starts_with(&format!(
            "lb.toml:{}: TOML syntax error: ",
            line(&text, "port")
        )),
        "{e}"
    );
}

#[test]
fn unknown_field_in_director() {
    let text = base_with("interfaces", "interfacs");
    assert_eq!(
        error(&text),
        "lb.toml:2: unknown field \"interfacs\" in [director] (valid: interfaces, xdp_mode, \
         pin_path, max_flows, max_flows_v6, sweep_interval, control_socket, metrics_listen, \
         expire_nodest_conn, vrrp_vrids, syn_flood_rate, timeouts)"
    );
}

#[test]
fn unknown_field_everywhere_names_its_section() {
    // (replace, by, unknown field, where)
    let cases = [
        (
            "[director]",
            "services = 1\n[director]",
            "services",
            "at the top level",
        ),
        (
            "[[service]]",
            "[director.timeouts]\nestablised = \"1h\"\n\n[[service]]",
            "establised",
            "in [director.timeouts]",
        ),
        (
            "port = 2811",
            "port = 2811\nvips = 1",
            "vips",
            "in service \"gridftp\"",
        ),
        (
            "port = 2811",
            "port = 2811\n[service.health]\ninterval = \"5s\"\nintervall = \"5s\"",
            "intervall",
            "in service \"gridftp\", health check",
        ),
        (
            "address = \"198.51.100.25\"",
            "address = \"198.51.100.25\"\nwieght = 2",
            "wieght",
            "in service \"gridftp\", backend 2",
        ),
        (
            "port = 2811",
            "port = 2811\n[[service.backends]]",
            "backends",
            "in service \"gridftp\"",
        ),
    ];
    for (from, to, bad, place) in cases {
        let text = base_with(from, to);
        let e = error(&text);
        let expected = format!(
            "lb.toml:{}: unknown field \"{bad}\" {place} (valid: ",
            key_line(&text, bad)
        );
        assert!(e.starts_with(&expected), "{e}\nexpected {expected}");
    }
    // In a second, unnamed service: the right one is named.
    for (in_service, at_end, bad, place) in [
        (
            "sheduler = 1\n",
            "",
            "sheduler",
            "in service 2 (valid: name, vip,",
        ),
        (
            "health.knd = 1\n",
            "",
            "knd",
            "in service 2, health check (valid: kind,",
        ),
        (
            "",
            "[[service.backend]]\naddres = 1\n",
            "addres",
            "in service 2, backend 2 (valid: address,",
        ),
    ] {
        let text = format!(
            "{BASE}\n[[service]]\nvip = \"192.0.2.201\"\nport = 80\n{in_service}\
             [[service.backend]]\naddress = \"198.51.100.30\"\n{at_end}"
        );
        let e = error(&text);
        let expected = format!(
            "lb.toml:{}: unknown field \"{bad}\" {place}",
            key_line(&text, bad)
        );
        assert!(e.starts_with(&expected), "{e}\nexpected {expected}");
    }
}

#[test]
fn single_bracket_service() {
    let e = error("[director]\ninterfaces = [\"eth0\"]\n[service]\nname = \"x\"\n");
    assert!(
        e.starts_with("lb.toml:3: service and backend must be arrays of tables: write [[service]]"),
        "{e}"
    );
}

// -- Errors from validation

#[test]
fn weight_out_of_range() {
    let text = base_with(
        "address = \"198.51.100.25\"",
        "address = \"198.51.100.25\"\nweight = 70000",
    );
    assert_eq!(
        error(&text),
        "lb.toml:14: service \"gridftp\", backend 2: weight 70000 is out of range (valid: 0..=65535)"
    );
}

#[test]
fn duplicate_service() {
    let second = "\n[[service]]\nname = \"gridftp2\"\nvip = \"192.0.2.200\"\nport = 2811\n\
                  [[service.backend]]\naddress = \"198.51.100.30\"\n";
    let text = format!("{BASE}{second}");
    assert_eq!(
        error(&text),
        "lb.toml:18: service \"gridftp2\": port 2811 of 192.0.2.200 tcp is already covered by \
         service \"gridftp\" at line 7 (a port of a VIP, protocol and VLAN belongs to one \
         service)"
    );
    // Another protocol on the same VIP and port is another service.
    parse(&format!(
        "{BASE}{}",
        second.replace("port = 2811", "port = 2811\nprotocol = \"udp\"")
    ));
    // So is the same VIP, port and protocol on a VLAN, or on another VLAN.
    let on = |vlan: &str| second.replace("port = 2811", &format!("port = 2811\nvlan = {vlan}"));
    parse(&format!("{BASE}{}", on("4001")));
    parse(&format!(
        "{}{}",
        base_with("port = 2811", "port = 2811\nvlan = 4001"),
        on("[100, 4001]")
    ));
    assert_eq!(
        error(&format!(
            "{}{}",
            base_with("port = 2811", "port = 2811\nvlan = 4001"),
            on("4001")
        )),
        "lb.toml:19: service \"gridftp2\": port 2811 of 192.0.2.200 tcp vlan 4001 is already \
         covered by service \"gridftp\" at line 7 (a port of a VIP, protocol and VLAN belongs \
         to one service)"
    );
}

#[test]
fn port_lists_and_ranges() {
    let config = Config::parse(
        &base_with(
            "port = 2811",
            "ports = [2811, \"50000-50100\", 50101, 40000]",
        ),
        "lb.toml",
    )
    .unwrap();
    let ports = &config.services[0].ports;
    assert_eq!(ports.to_string(), "2811,40000,50000-50101");
    assert_eq!(ports.first(), 2811);
    assert_eq!(
        config.services[0].health.port, 2811,
        "checks the first port"
    );
    let every = Config::parse(
        &base_with("port = 2811", "port = 0\n[service.health]\nport = 2811"),
        "lb.toml",
    )
    .unwrap();
    assert_eq!(every.services[0].ports, Ports::Every);

    let cases = [
        (
            "port = 2811\nports = [2811]",
            "both port and ports are set (valid: port = 2811 for one port, port = 0 for every \
             port, or ports = [2811, \"50000-51000\"] for several)",
        ),
        (
            "ports = []",
            "ports is empty (valid: a list of ports from 1 to 65535 and ranges \"FIRST-LAST\", \
             e.g. ports = [2811, \"50000-51000\"]; port = 0 for every port)",
        ),
        (
            "ports = [2811, \"51000-50000\"]",
            "ports has string \"51000-50000\" (valid: a list of ports from 1 to 65535 and ranges \
             \"FIRST-LAST\", e.g. ports = [2811, \"50000-51000\"]; port = 0 for every port)",
        ),
        (
            "ports = [0, 2811]",
            "ports has integer 0 (valid: a list of ports from 1 to 65535 and ranges \
             \"FIRST-LAST\", e.g. ports = [2811, \"50000-51000\"]; port = 0 for every port)",
        ),
        (
            "ports = [2811, \"2800-2900\"]",
            "ports lists port 2811 twice (valid: a list of ports from 1 to 65535 and ranges \
             \"FIRST-LAST\", e.g. ports = [2811, \"50000-51000\"]; port = 0 for every port)",
        ),
        (
            "ports = 2811",
            "ports must be a list (found integer 2811; valid: a list of ports from 1 to 65535 \
             and ranges \"FIRST-LAST\", e.g. ports = [2811, \"50000-51000\"]; port = 0 for \
             every port)",
        ),
    ];
    for (ports, message) in cases {
        // The problem is reported on the line of `ports`.
        let line = 7 + ports.matches('\n').count();
        assert_eq!(
            error(&base_with("port = 2811", ports)),
            format!("lb.toml:{line}: service \"gridftp\": {message}")
        );
    }
}

#[test]
fn overlapping_ranges_are_refused() {
    let second = "\n[[service]]\nname = \"data\"\nvip = \"192.0.2.200\"\n\
                  ports = [\"2000-3000\"]\n[[service.backend]]\naddress = \"198.51.100.30\"\n";
    assert_eq!(
        error(&format!("{BASE}{second}")),
        "lb.toml:18: service \"data\": port 2811 of 192.0.2.200 tcp is already covered by \
         service \"gridftp\" at line 7 (a port of a VIP, protocol and VLAN belongs to one \
         service)"
    );
    // A service over every port of the VIP sits beside the ports' own.
    let every = "\n[[service]]\nname = \"rest\"\nvip = \"192.0.2.200\"\nport = 0\n\
                 [service.health]\nport = 2811\n\
                 [[service.backend]]\naddress = \"198.51.100.30\"\n";
    assert!(Config::parse(&format!("{BASE}{every}"), "lb.toml").is_ok());
    assert_eq!(
        error(&format!("{BASE}{every}{}", every.replace("rest", "rest2"))),
        "lb.toml:27: service \"rest2\": every port of 192.0.2.200 tcp is already covered by \
         service \"rest\" at line 18 (a port of a VIP, protocol and VLAN belongs to one service)"
    );
}

#[test]
fn the_service_map_limits_the_ports() {
    let service = |i: u32| {
        format!(
            "\n[[service]]\nname = \"s{i}\"\nvip = \"192.0.2.{}\"\nports = [\"1-30000\"]\n\
             [[service.backend]]\naddress = \"198.51.100.30\"\n",
            10 + i
        )
    };
    let text = format!("{BASE}{}{}{}", service(1), service(2), service(3));
    let e = error(&text);
    assert!(
        e.contains(
            "service \"s3\": the services up to this one cover 90001 ports, more than the 65536 \
             service-map entries lb has (valid: at most 65536 ports in all; a service over every \
             port, port = 0, takes one)"
        ),
        "{e}"
    );
}

#[test]
fn vlan() {
    assert_eq!(parse(BASE).services[0].vlan, Vec::<u16>::new());
    assert_eq!(parse(BASE).services[0].vlan_path(), 0);
    let with = |line: &str| base_with("port = 2811", &format!("port = 2811\n{line}"));
    let service = parse(&with("vlan = 4001")).services.remove(0);
    assert_eq!(service.vlan, [4001]);
    assert_eq!(service.vlan_path(), 4001);
    let service = parse(&with("vlan = [100, 4001]")).services.remove(0);
    assert_eq!(service.vlan, [100, 4001]);
    assert_eq!(service.vlan_path(), 100 << 12 | 4001);
    assert_eq!(parse(&with("vlan = [4094]")).services[0].vlan, [4094]);
    const VALID: &str = "valid: a VLAN id from 1 to 4094, e.g. vlan = 4001, or the outer and \
                         inner ids of QinQ, e.g. vlan = [100, 4001]; leave vlan out for untagged \
                         frames";
    for (line, problem) in [
        ("vlan = 0", "vlan 0 is out of range"),
        ("vlan = 4095", "vlan 4095 is out of range"),
        ("vlan = [100, 5000]", "vlan 5000 is out of range"),
        ("vlan = []", "vlan lists 0 ids"),
        ("vlan = [1, 2, 3]", "vlan lists 3 ids"),
        (
            "vlan = \"4001\"",
            "vlan must be an integer or an array of two (found string \"4001\";",
        ),
    ] {
        let message = error(&with(line));
        let expected = format!("lb.toml:8: service \"gridftp\": {problem}");
        assert!(message.starts_with(&expected), "{line}: {message}");
        assert!(message.contains(VALID), "{line}: {message}");
    }
}

#[test]
fn duplicate_name() {
    let text = format!(
        "{BASE}\n[[service]]\nname = \"gridftp\"\nvip = \"192.0.2.201\"\nport = 2811\n\
         [[service.backend]]\naddress = \"198.51.100.30\"\n"
    );
    assert_eq!(
        error(&text),
        "lb.toml:16: service \"gridftp\": name \"gridftp\" is already used by the service \
         at line 5 (service names must be unique)"
    );
}

#[test]
fn backend_is_a_vip() {
    // The VIP of a service further down the file counts too.
    let text = format!(
        "{}\n[[service]]\nname = \"other\"\nvip = \"198.51.100.25\"\nport = 80\n\
         [[service.backend]]\naddress = \"198.51.100.30\"\n",
        BASE
    );
    assert_eq!(
        error(&text),
        "lb.toml:13: service \"gridftp\", backend 2: address 198.51.100.25 is the vip of \
         service \"other\"; a backend must be a real server, not a VIP"
    );
}

#[test]
fn mixed_address_families() {
    let text = base_with("\"198.51.100.25\"", "\"2001:db8::25\"");
    assert_eq!(
        error(&text),
        "lb.toml:13: service \"gridftp\", backend 2: address 2001:db8::25 is IPv6 but the \
         service's vip 192.0.2.200 is IPv4 (valid: the VIP's address family; use a \
         separate service for the other family)"
    );
    let text = base_with("\"192.0.2.200\"", "\"2001:db8::200\"");
    let e = error(&text);
    assert!(
        e.starts_with(
            "lb.toml:10: service \"gridftp\", backend 1: address 198.51.100.24 is IPv4 but \
             the service's vip 2001:db8::200 is IPv6"
        ),
        "{e}"
    );
    assert_eq!(e.lines().count(), 2, "{e}");
}

#[test]
fn duplicate_backend() {
    let text = base_with("\"198.51.100.25\"", "\"198.51.100.24\"");
    assert_eq!(
        error(&text),
        "lb.toml:13: service \"gridftp\", backend 2: address 198.51.100.24 is already \
         backend 1 of this service (valid: each address once per service)"
    );
}

#[test]
fn no_backends() {
    let text = "[director]\ninterfaces = [\"eth0\"]\n\n[[service]]\nname = \"gridftp\"\n\
                vip = \"192.0.2.200\"\nport = 2811\n";
    assert_eq!(
        error(text),
        "lb.toml:4: service \"gridftp\": no backends; add at least one [[service.backend]] \
         with an address"
    );
    let e = error(&format!("{text}backend = []\n"));
    assert!(
        e.starts_with("lb.toml:4: service \"gridftp\": no backends"),
        "{e}"
    );
}

#[test]
fn too_many_services() {
    let mut text = "[director]\ninterfaces = [\"eth0\"]\n".to_owned();
    for i in 0..=lb_common::MAX_SERVICES {
        text += &format!(
            "[[service]]\nname = \"s{i}\"\nvip = \"192.0.2.1\"\nport = {}\n\
             [[service.backend]]\naddress = \"198.51.100.1\"\n",
            i + 1
        );
    }
    let max = lb_common::MAX_SERVICES;
    assert_eq!(
        error(&text),
        format!(
            "lb.toml:{}: service \"s{max}\": too many services: {} (valid: at most {max})",
            line(&text, &format!("name = \"s{max}\"")) - 1,
            max + 1
        )
    );
}

#[test]
fn too_many_backends() {
    let mut text = base_with("address = \"198.51.100.25\"\n", "");
    text.truncate(text.trim_end().rfind('\n').unwrap());
    for i in 0..=lb_common::MAX_BACKENDS {
        text += &format!(
            "\n[[service.backend]]\naddress = \"10.0.{}.{}\"",
            i / 200,
            i % 200 + 1
        );
    }
    let e = error(&text);
    assert!(
        e.ends_with(
            "service \"gridftp\", backend 257: too many backends: 258 (valid: at most 256 per service)"
        ),
        "{e}"
    );
}

#[test]
fn interfaces() {
    let cases = [
        (
            "[]",
            "interfaces is empty; list at least one network interface",
        ),
        (
            "[\"eth0\", \"eth0\"]",
            "interface \"eth0\" is listed twice in interfaces",
        ),
        (
            "[\"a-very-long-interface\"]",
            "interface \"a-very-long-interface\" is not a valid interface name: it is longer than 15 bytes",
        ),
        (
            "[\"eth0:1\"]",
            "interface \"eth0:1\" is not a valid interface name: it contains",
        ),
        (
            "[\"\"]",
            "interface \"\" is not a valid interface name: it is empty",
        ),
        ("[1]", "interfaces must hold interface names as strings"),
        ("\"eth0\"", "interfaces must be an array of interface names"),
    ];
    for (value, message) in cases {
        let e = error(&base_with("[\"eth0\"]", value));
        assert!(
            e.starts_with(&format!("lb.toml:2: [director]: {message}")),
            "{e}"
        );
    }
    let e = error("[director]\nxdp_mode = \"skb\"\n");
    assert_eq!(
        e,
        "lb.toml:1: [director]: missing required field \"interfaces\" (e.g. interfaces = [\"eth0\"])"
    );
}

#[test]
fn missing_director() {
    let text = BASE.replacen("[director]\ninterfaces = [\"eth0\"]\n", "", 1);
    assert!(error(&text).starts_with("lb.toml: missing [director] table"));
}

#[test]
fn bad_mac() {
    for (mac, message) in [
        (
            "02:00:00:00:00",
            "is not a MAC address (valid: six two-digit hex bytes",
        ),
        ("02:00:00:00:00:0g", "is not a MAC address"),
        ("0200.0000.0001", "is not a MAC address"),
        ("01:00:5e:00:00:01", "is not a unicast MAC address"),
        ("00:00:00:00:00:00", "is not a unicast MAC address"),
    ] {
        let text = base_with(
            "address = \"198.51.100.24\"",
            &format!("address = \"198.51.100.24\"\nmac = \"{mac}\""),
        );
        let e = error(&text);
        let expected =
            format!("lb.toml:11: service \"gridftp\", backend 1: mac \"{mac}\" {message}");
        assert!(e.starts_with(&expected), "{e}\nexpected {expected}");
    }
}

#[test]
fn bad_durations() {
    let cases = [
        (
            "10",
            "sweep_interval = 10 has no unit; write a duration string such as sweep_interval = \"10s\" (valid examples: \"500ms\"",
        ),
        (
            "\"10\"",
            "sweep_interval \"10\" is not a duration: 10 has no unit",
        ),
        (
            "\"10 s\"",
            "sweep_interval \"10 s\" is not a duration: 10 has no unit",
        ),
        (
            "\"10sec\"",
            "sweep_interval \"10sec\" is not a duration: unknown unit \"sec\" (valid: ms, s, m, h, d)",
        ),
        ("\"\"", "sweep_interval \"\" is not a duration: it is empty"),
        ("\"1.5s\"", "sweep_interval \"1.5s\" is not a duration"),
        (
            "\"99999999999999999999s\"",
            "sweep_interval \"99999999999999999999s\" is not a duration: it is too long",
        ),
        (
            "\"2m\"",
            "sweep_interval \"2m\" is out of range (valid: 100ms..=1m)",
        ),
        (
            "\"50ms\"",
            "sweep_interval \"50ms\" is out of range (valid: 100ms..=1m)",
        ),
        (
            "true",
            "sweep_interval must be a duration string (found boolean true; valid examples",
        ),
    ];
    for (value, message) in cases {
        let text = base_with(
            "[\"eth0\"]",
            &format!("[\"eth0\"]\nsweep_interval = {value}"),
        );
        let e = error(&text);
        assert!(
            e.starts_with(&format!("lb.toml:3: [director]: {message}")),
            "{e}\nexpected {message}"
        );
    }
    let text = base_with(
        "[\"eth0\"]",
        "[\"eth0\"]\n[director.timeouts]\nclose = \"1500ms\"",
    );
    assert_eq!(
        error(&text),
        "lb.toml:4: [director.timeouts]: close 1500ms is not a whole number of seconds"
    );
    let text = base_with(
        "[\"eth0\"]",
        "[\"eth0\"]\n[director.timeouts]\nestablished = \"8d\"",
    );
    assert_eq!(
        error(&text),
        "lb.toml:4: [director.timeouts]: established \"8d\" is out of range (valid: 1s..=7d)"
    );
}

#[test]
fn timeout_longer_than_interval() {
    let text = base_with(
        "port = 2811\n",
        "port = 2811\n[service.health]\ninterval = \"2s\"\ntimeout = \"5s\"\n",
    );
    assert_eq!(
        error(&text),
        "lb.toml:10: service \"gridftp\", health check: timeout 5s is longer than interval 2s \
         (valid: at most the interval)"
    );
}

#[test]
fn no_backend() {
    assert_eq!(parse(BASE).services[0].no_backend, NoBackend::Drop);
    let with = |line: &str| base_with("port = 2811", &format!("port = 2811\n{line}"));
    assert_eq!(
        parse(&with("no_backend = \"reject\"")).services[0].no_backend,
        NoBackend::Reject
    );
    assert_eq!(
        error(&with("no_backend = \"refuse\"")),
        "lb.toml:8: service \"gridftp\": no_backend \"refuse\" is not supported (valid: drop, \
         reject)"
    );
    assert_eq!(
        error(&with("protocol = \"udp\"\nno_backend = \"reject\"")),
        "lb.toml:9: service \"gridftp\": no_backend \"reject\" answers with a TCP RST, and this \
         is a udp service (valid for udp: \"drop\")"
    );
}

#[test]
fn sloppy_tcp() {
    assert!(!parse(BASE).services[0].sloppy_tcp);
    let with = |line: &str| base_with("port = 2811", &format!("port = 2811\n{line}"));
    let service = parse(&with("sloppy_tcp = true")).services.remove(0);
    assert!(service.sloppy_tcp);
    assert_eq!(service.flags(), lb_common::SERVICE_FLAG_SLOPPY_TCP);
    assert_eq!(
        error(&with("sloppy_tcp = 1")),
        "lb.toml:8: service \"gridftp\": sloppy_tcp must be true or false (found integer 1)"
    );
}

#[test]
fn sorry_server_quorum_and_hysteresis() {
    let service = &parse(BASE).services[0];
    assert_eq!(
        (service.sorry_server, service.quorum, service.hysteresis),
        (None, 1, 0)
    );
    let with = |line: &str| base_with("port = 2811", &format!("port = 2811\n{line}"));
    let service = parse(&with(
        "sorry_server = \"198.51.100.99\"\nquorum = 2\nhysteresis = 1",
    ))
    .services
    .remove(0);
    assert_eq!(
        (service.sorry_server, service.quorum, service.hysteresis),
        (Some(v4(198, 51, 100, 99)), 2, 1)
    );
    let valid = "(valid: a real server of the VIP's family that is not a backend of the service)";
    for (line, problem) in [
        (
            "sorry_server = \"198.51.100.24\"",
            format!("sorry_server 198.51.100.24 is one of the service's backends {valid}"),
        ),
        (
            "sorry_server = \"192.0.2.200\"",
            format!("sorry_server 192.0.2.200 is the vip of service \"gridftp\" {valid}"),
        ),
        (
            "sorry_server = \"2001:db8::99\"",
            format!(
                "sorry_server 2001:db8::99 is IPv6 but the service's vip 192.0.2.200 is IPv4 \
                 {valid}"
            ),
        ),
        (
            "quorum = 0",
            "quorum 0 is out of range (valid: 1..=4294967295)".to_owned(),
        ),
        (
            "hysteresis = 1",
            "hysteresis 1 is out of range (valid: 0..=0)".to_owned(),
        ),
    ] {
        assert_eq!(
            error(&with(line)),
            format!("lb.toml:8: service \"gridftp\": {problem}"),
            "{line}"
        );
    }
}

#[test]
fn persistence() {
    assert_eq!(parse(BASE).services[0].persistence, None);
    let with = |line: &str| base_with("port = 2811", &format!("port = 2811\n{line}"));
    let service = parse(&with("persistence_timeout = \"10m\""))
        .services
        .remove(0);
    let value = service.service_value(4);
    assert_eq!(
        (value.persistence_timeout_s, value.persistence_prefix),
        (600, 32)
    );
    let service = parse(&with(
        "persistence_timeout = \"1h\"\npersistence_netmask = 24",
    ))
    .services
    .remove(0);
    assert_eq!(
        service.persistence,
        Some(Persistence {
            timeout: Duration::from_secs(3600),
            prefix: 24
        })
    );
    for (line, problem) in [
        (
            "persistence_netmask = 24",
            "persistence_netmask needs persistence_timeout (valid: set both, e.g. \
             persistence_timeout = \"10m\")",
        ),
        (
            "persistence_timeout = \"1m\"\npersistence_netmask = 33",
            "persistence_netmask 33 is out of range (valid: 0..=32)",
        ),
    ] {
        let error = error(&with(line));
        assert!(error.ends_with(problem), "{line}: {error}");
    }
}

#[test]
fn unknown_keywords() {
    let cases = [
        (
            "protocol",
            "\"sctp\"",
            "protocol \"sctp\" is not supported (valid: tcp, udp)",
        ),
        (
            "scheduler",
            "\"lc\"",
            "scheduler \"lc\" is not supported (valid: wlc, rr, wrr, sh, mh)",
        ),
        (
            "protocol",
            "6",
            "protocol must be a string (found integer 6)",
        ),
    ];
    for (key, value, message) in cases {
        let text = base_with("port = 2811", &format!("port = 2811\n{key} = {value}"));
        assert_eq!(
            error(&text),
            format!("lb.toml:8: service \"gridftp\": {message}")
        );
    }
    for (value, message) in [
        (
            "HTTP_GET",
            "kind \"HTTP_GET\" is not supported (valid: tcp, http, exec, none)",
        ),
        (
            "udp",
            "kind \"udp\" is not supported (valid: tcp, http, exec, none)",
        ),
    ] {
        let text = base_with(
            "port = 2811",
            &format!("port = 2811\nhealth.kind = \"{value}\""),
        );
        assert_eq!(
            error(&text),
            format!("lb.toml:8: service \"gridftp\", health check: {message}")
        );
    }
    let text = base_with("[\"eth0\"]", "[\"eth0\"]\nxdp_mode = \"native\"");
    assert_eq!(
        error(&text),
        "lb.toml:3: [director]: xdp_mode \"native\" is not supported (valid: driver, skb)"
    );
}

#[test]
fn ports() {
    let cases = [
        (
            "port = 2811",
            "port = 0",
            7,
            "service \"gridftp\", health check: a service over every port (port = 0) has no \
             port to check: give the check's port (valid: e.g. port = 2811 under \
             [service.health], or kind = \"none\")",
        ),
        (
            "port = 2811",
            "port = 65536",
            7,
            "service \"gridftp\": port 65536 is out of range (valid: 0..=65535)",
        ),
        (
            "port = 2811",
            "port = \"2811\"",
            7,
            "service \"gridftp\": port must be an integer (found string \"2811\")",
        ),
        (
            "port = 2811",
            "port = 2811\n[service.health]\nport = -1",
            9,
            "service \"gridftp\", health check: port -1 is out of range (valid: 1..=65535)",
        ),
    ];
    for (from, to, line, message) in cases {
        assert_eq!(
            error(&base_with(from, to)),
            format!("lb.toml:{line}: {message}")
        );
    }
}

#[test]
fn missing_required_fields() {
    let cases = [
        (
            "name = \"gridftp\"\n",
            4,
            "service 1: missing required field \"name\" (e.g. name = \"gridftp\")",
        ),
        (
            "vip = \"192.0.2.200\"\n",
            4,
            "service \"gridftp\": missing required field \"vip\" (e.g. vip = \"192.0.2.200\")",
        ),
        (
            "port = 2811\n",
            4,
            "service \"gridftp\": missing required field \"port\" (e.g. port = 2811)",
        ),
        (
            "address = \"198.51.100.25\"\n",
            12,
            "service \"gridftp\", backend 2: missing required field \"address\" (e.g. address = \"198.51.100.24\")",
        ),
    ];
    for (field, line, message) in cases {
        assert_eq!(
            error(&base_with(field, "")),
            format!("lb.toml:{line}: {message}")
        );
    }
}

#[test]
fn other_field_checks() {
    let cases = [
        (
            "name = \"gridftp\"",
            "name = \"grid ftp\"",
            "lb.toml:5: service \"grid ftp\": name \"grid ftp\" is not valid (valid: 1 to 32 characters from A-Z a-z 0-9 _ . -)",
        ),
        (
            "\"192.0.2.200\"",
            "\"192.0.2\"",
            "lb.toml:6: service \"gridftp\": vip \"192.0.2\" is not an IP address (valid: IPv4 or IPv6, e.g. \"192.0.2.200\" or \"2001:db8::200\")",
        ),
        (
            "\"192.0.2.200\"",
            "\"0.0.0.0\"",
            "lb.toml:6: service \"gridftp\": vip 0.0.0.0 is the unspecified address (valid: a unicast address)",
        ),
        (
            "\"198.51.100.24\"",
            "\"224.0.0.1\"",
            "lb.toml:10: service \"gridftp\", backend 1: address 224.0.0.1 is a multicast address (valid: a unicast address)",
        ),
        (
            "[\"eth0\"]",
            "[\"eth0\"]\nmax_flows = 100",
            "lb.toml:3: [director]: max_flows 100 is out of range (valid: 1024..=16777216)",
        ),
        (
            "[\"eth0\"]",
            "[\"eth0\"]\nmax_flows_v6 = 16777217",
            "lb.toml:3: [director]: max_flows_v6 16777217 is out of range (valid: 1024..=16777216)",
        ),
        (
            "[\"eth0\"]",
            "[\"eth0\"]\npin_path = \"/tmp/lb\"",
            "lb.toml:3: [director]: pin_path \"/tmp/lb\" is not under /sys/fs/bpf/ (valid: an absolute path below the BPF filesystem without \"..\", e.g. \"/sys/fs/bpf/lb\")",
        ),
        (
            "port = 2811",
            "port = 2811\nhealth = { fall = 0 }",
            "lb.toml:8: service \"gridftp\", health check: fall 0 is out of range (valid: 1..=100)",
        ),
    ];
    for (from, to, message) in cases {
        assert_eq!(error(&base_with(from, to)), message);
    }
    for path in [
        "/sys/fs/bpf",
        "/sys/fs/bpf/",
        "/sys/fs/bpf/../lb",
        "sys/fs/bpf/lb",
    ] {
        let e = error(&base_with(
            "[\"eth0\"]",
            &format!("[\"eth0\"]\npin_path = \"{path}\""),
        ));
        assert!(e.contains("is not under /sys/fs/bpf/"), "{path}: {e}");
    }
}

#[test]
fn every_problem_is_reported() {
    let text = base_with("\"198.51.100.24\"", "\"198.51.100.25\"\nweight = -1")
        .replacen("port = 2811", "port = 70000", 1)
        .replacen("[\"eth0\"]", "[]", 1);
    let e = error(&text);
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 4, "{e}");
    assert!(
        lines[0].starts_with("lb.toml:2: [director]: interfaces is empty"),
        "{e}"
    );
    assert!(
        lines[1].starts_with("lb.toml:7: service \"gridftp\": port 70000"),
        "{e}"
    );
    assert!(
        lines[2].starts_with("lb.toml:11: service \"gridftp\", backend 1: weight -1"),
        "{e}"
    );
    assert!(
        lines[3].starts_with(
            "lb.toml:14: service \"gridftp\", backend 2: address 198.51.100.25 is already backend 1"
        ),
        "{e}"
    );
}

#[test]
fn load_names_the_file() {
    let e = Config::load(Path::new("/nonexistent/lb.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("/nonexistent/lb.toml: cannot read config file: "),
        "{e}"
    );
}

#[test]
fn error_converts_into_anyhow() {
    fn is_anyhow_compatible<E: std::error::Error + Send + Sync + 'static>() {}
    is_anyhow_compatible::<ConfigError>();
}

/// `--xdp-mode` (parsed with [`XdpMode::from_str`]) and `xdp_mode` (the
/// file) take the same words.
#[test]
fn xdp_mode_keywords_match_the_command_line() {
    for mode in XdpMode::ALL {
        assert_eq!(XdpMode::from_str(mode.keyword()), Ok(*mode));
        assert_eq!(mode.to_string().parse::<XdpMode>(), Ok(*mode));
    }
    assert_eq!(
        "turbo".parse::<XdpMode>(),
        Err("\"turbo\" is not supported (valid: driver, skb)".to_owned())
    );
    let err = error(&director_with("xdp_mode = \"turbo\""));
    assert!(
        err.ends_with("xdp_mode \"turbo\" is not supported (valid: driver, skb)"),
        "{err}"
    );
}

#[test]
fn protocol_numbers_and_names() {
    assert_eq!(Protocol::Tcp.number(), lb_common::PROTO_TCP);
    assert_eq!(Protocol::Udp.number(), lb_common::PROTO_UDP);
    assert_eq!(Protocol::Tcp.to_string(), "tcp");
    assert_eq!(Protocol::Udp.to_string(), "udp");
}

// -- [director]: control socket, metrics, expire_nodest_conn

#[test]
fn control_socket() {
    let config = parse(&director_with("control_socket = \"/run/lb2/ctl.sock\""));
    assert_eq!(
        config.director.control_socket,
        Path::new("/run/lb2/ctl.sock")
    );
    let long = format!("/run/{}", "x".repeat(103));
    for (value, message) in [
        (
            "\"lb.sock\"",
            "control_socket \"lb.sock\" is not an absolute path",
        ),
        (
            "\"/run/../lb.sock\"",
            "control_socket \"/run/../lb.sock\" contains \"..\"",
        ),
        (
            "\"/run/lb/\"",
            "control_socket \"/run/lb/\" names a directory, not a socket file",
        ),
        (
            "\"/\"",
            "control_socket \"/\" names a directory, not a socket file",
        ),
    ] {
        assert_eq!(
            error(&director_with(&format!("control_socket = {value}"))),
            format!(
                "lb.toml:3: [director]: {message} (valid: an absolute file path of at most \
                 107 bytes without \"..\", e.g. \"/run/lb/lb.sock\")"
            )
        );
    }
    let e = error(&director_with(&format!("control_socket = \"{long}\"")));
    assert!(
        e.starts_with(&format!(
            "lb.toml:3: [director]: control_socket \"{long}\" is too long for a Unix socket"
        )),
        "{e}"
    );
    // 107 bytes is the most a sun_path holds.
    let longest = format!("/run/{}", "x".repeat(102));
    parse(&director_with(&format!("control_socket = \"{longest}\"")));
    assert_eq!(
        error(&director_with("control_socket = 1")),
        "lb.toml:3: [director]: control_socket must be a string (found integer 1)"
    );
}

#[test]
fn metrics_listen() {
    let cases = [
        ("9100", "127.0.0.1:9100"),
        ("\"9100\"", "127.0.0.1:9100"),
        ("\"0.0.0.0:9100\"", "0.0.0.0:9100"),
        ("\"192.0.2.1:80\"", "192.0.2.1:80"),
        ("\"[::1]:9100\"", "[::1]:9100"),
    ];
    for (value, expected) in cases {
        let config = parse(&director_with(&format!("metrics_listen = {value}")));
        assert_eq!(
            config.director.metrics_listen,
            Some(expected.parse().unwrap()),
            "{value}"
        );
    }
    const VALID: &str = "valid: \"ADDR:PORT\" such as \"127.0.0.1:9100\" or \
                         \"[::1]:9100\", or a port such as 9100 for 127.0.0.1:9100";
    let cases = [
        (
            "0",
            "metrics_listen 0 is out of range (valid: 1..=65535)".to_owned(),
        ),
        (
            "70000",
            "metrics_listen 70000 is out of range (valid: 1..=65535)".to_owned(),
        ),
        (
            "\"70000\"",
            format!("metrics_listen \"70000\" is not an address and port ({VALID})"),
        ),
        (
            "\"localhost:9100\"",
            format!("metrics_listen \"localhost:9100\" is not an address and port ({VALID})"),
        ),
        (
            "\"::1:9100\"",
            format!("metrics_listen \"::1:9100\" is not an address and port ({VALID})"),
        ),
        (
            "\"\"",
            format!("metrics_listen \"\" is not an address and port ({VALID})"),
        ),
        (
            "\"127.0.0.1:0\"",
            format!("metrics_listen \"127.0.0.1:0\" has port 0 ({VALID})"),
        ),
        (
            "\"0\"",
            format!("metrics_listen \"0\" has port 0 ({VALID})"),
        ),
        (
            "true",
            format!(
                "metrics_listen must be a string or a port number (found boolean true; {VALID})"
            ),
        ),
    ];
    for (value, message) in cases {
        assert_eq!(
            error(&director_with(&format!("metrics_listen = {value}"))),
            format!("lb.toml:3: [director]: {message}")
        );
    }
}

#[test]
fn expire_nodest_conn() {
    let config = parse(&director_with("expire_nodest_conn = true"));
    assert!(config.director.expire_nodest_conn);
    let config = parse(&director_with("expire_nodest_conn = false"));
    assert!(!config.director.expire_nodest_conn);
    assert_eq!(
        error(&director_with("expire_nodest_conn = \"yes\"")),
        "lb.toml:3: [director]: expire_nodest_conn must be true or false (found string \"yes\")"
    );
    assert_eq!(
        error(&director_with("expire_nodest_conn = 1")),
        "lb.toml:3: [director]: expire_nodest_conn must be true or false (found integer 1)"
    );
}

#[test]
fn vrrp_vrids() {
    assert!(parse(&director_with("")).director.vrrp_vrids.is_empty());
    let config = parse(&director_with("vrrp_vrids = [52, 51, 255]"));
    assert_eq!(config.director.vrrp_vrids, [51, 52, 255]);
    const VALID: &str = "valid: an array of VRRP router ids from 1 to 255, as keepalived's \
                         virtual_router_id, e.g. vrrp_vrids = [51]";
    for (value, problem) in [
        ("51", "vrrp_vrids must be an array (found integer 51;"),
        ("[0]", "vrrp_vrids holds integer 0 ("),
        ("[256]", "vrrp_vrids holds integer 256 ("),
        ("[\"51\"]", "vrrp_vrids holds string \"51\" ("),
        ("[51, 51]", "vrrp_vrids lists 51 twice ("),
    ] {
        let e = error(&director_with(&format!("vrrp_vrids = {value}")));
        assert!(
            e.starts_with(&format!("lb.toml:3: [director]: {problem}")) && e.contains(VALID),
            "{value}: {e}"
        );
    }
}

#[test]
fn syn_flood_rate() {
    let rate = |line: &str| parse(&director_with(line)).director.syn_flood_rate;
    assert_eq!(rate(""), lb_common::DEFAULT_SYN_FLOOD_RATE);
    assert_eq!(rate("syn_flood_rate = 0"), 0, "0 turns the guard off");
    assert_eq!(rate("syn_flood_rate = 20000"), 20_000);
    for value in ["-1", "100000001"] {
        let e = error(&director_with(&format!("syn_flood_rate = {value}")));
        assert!(
            e.starts_with("lb.toml:3: [director]: syn_flood_rate ") && e.contains("0..=100000000"),
            "{value}: {e}"
        );
    }
    let e = error(&director_with("syn_flood_rate = \"fast\""));
    assert!(
        e.starts_with("lb.toml:3: [director]: syn_flood_rate must be an integer"),
        "{e}"
    );
}

// -- [service.health]: common fields

#[test]
fn retry_delay_and_warmup() {
    // Both default to the interval.
    let h = health("interval = \"5s\"");
    assert_eq!(h.retry_delay, Duration::from_secs(5));
    assert_eq!(h.warmup, Duration::from_secs(5));
    let h = health("retry_delay = \"1s\"\nwarmup = \"0s\"");
    assert_eq!(h.interval, Duration::from_secs(10));
    assert_eq!(h.retry_delay, Duration::from_secs(1));
    assert_eq!(h.warmup, Duration::ZERO);
    let h = health("retry_delay = \"1h\"\nwarmup = \"1h\"");
    assert_eq!(h.retry_delay, Duration::from_secs(3600));
    assert_eq!(h.warmup, Duration::from_secs(3600));
    for (lines, message) in [
        (
            "retry_delay = \"0s\"",
            "retry_delay \"0s\" is out of range (valid: 100ms..=1h)",
        ),
        (
            "retry_delay = \"50ms\"",
            "retry_delay \"50ms\" is out of range (valid: 100ms..=1h)",
        ),
        (
            "retry_delay = 3",
            "retry_delay = 3 has no unit; write a duration string such as retry_delay = \
             \"3s\" (valid examples: \"500ms\", \"10s\", \"2m\", \"1h\", \"1m30s\")",
        ),
        (
            "warmup = \"2h\"",
            "warmup \"2h\" is out of range (valid: 0ms..=1h)",
        ),
        (
            "warmup = \"soon\"",
            "warmup \"soon\" is not a duration: expected a number at \"soon\" (valid \
             examples: \"500ms\", \"10s\", \"2m\", \"1h\", \"1m30s\")",
        ),
    ] {
        assert_health_error(lines, &[(9, message)]);
    }
}

#[test]
fn inhibit_on_failure() {
    assert!(!health("").inhibit_on_failure);
    assert!(health("inhibit_on_failure = true").inhibit_on_failure);
    assert_health_error(
        "inhibit_on_failure = \"true\"",
        &[(
            9,
            "inhibit_on_failure must be true or false (found string \"true\")",
        )],
    );
}

#[test]
fn bind_to() {
    assert_eq!(health("").bind_to, None);
    assert_eq!(
        health("bind_to = \"192.0.2.2\"").bind_to,
        Some("192.0.2.2".parse().unwrap())
    );
    assert_health_error(
        "bind_to = \"192.0.2.200\"",
        &[(
            9,
            "bind_to 192.0.2.200 is the service's VIP, which a real server answers on its own lo \
             (valid: an address of the director's own in the backends' subnet, of the VIP's family)",
        )],
    );
    assert_health_error(
        "bind_to = \"2001:db8::2\"",
        &[(
            9,
            "bind_to 2001:db8::2 is not of the VIP's address family (valid: an address of the \
             director's own in the backends' subnet, of the VIP's family)",
        )],
    );
    assert_health_error(
        "bind_to = \"eth0\"",
        &[(
            9,
            "bind_to \"eth0\" is not an IP address (valid: IPv4 or IPv6, e.g. \"192.0.2.200\" \
             or \"2001:db8::200\")",
        )],
    );
}

#[test]
fn notify() {
    assert!(health("").notify.is_empty());
    assert!(health("notify = []").notify.is_empty());
    assert_eq!(
        health("notify = [\"/usr/local/bin/lb-notify\", \"\", \"x y\"]").notify,
        ["/usr/local/bin/lb-notify", "", "x y"]
    );
    assert_eq!(health("notify = [\"lb-notify\"]").notify, ["lb-notify"]);
    const EXAMPLE: &str = "notify = [\"/usr/local/bin/lb-notify\", \"--syslog\"]";
    for (value, message) in [
        (
            "\"/usr/local/bin/lb-notify\"",
            format!(
                "notify must be an array of strings, the program and its arguments, e.g. \
                 {EXAMPLE} (found string \"/usr/local/bin/lb-notify\")"
            ),
        ),
        (
            "[\"\", \"up\"]",
            format!(
                "notify starts with an empty program name (valid: the program to run, then \
                 its arguments, e.g. {EXAMPLE})"
            ),
        ),
        (
            "[\"/bin/notify\", 1]",
            format!("notify must hold strings, e.g. {EXAMPLE} (found integer 1)"),
        ),
        (
            "[\"/bin/notify\\u0000\"]",
            "notify argument \"/bin/notify\\0\" contains a NUL character".to_owned(),
        ),
    ] {
        assert_health_error(&format!("notify = {value}"), &[(9, &message)]);
    }
}

// -- [service.health]: kinds

#[test]
fn http_check_defaults() {
    let h = health("kind = \"http\"");
    assert_eq!(
        h.kind,
        HealthKind::Http(HttpCheck {
            path: "/".to_owned(),
            status: vec![200],
            digest: None,
            host: None,
        })
    );
    assert_eq!(h.kind.to_string(), "http");
    assert_eq!(h.port, 2811);
}

#[test]
fn http_check_fields() {
    let h = health(
        "kind = \"HTTP\"\npath = \"/health?full=1&x=%20\"\nstatus = [200, 204, 301]\n\
         digest = \"D41D8CD98F00B204E9800998ECF8427E\"\nhost = \"www.example.org\"\nport = 8080",
    );
    assert_eq!(
        h.kind,
        HealthKind::Http(HttpCheck {
            path: "/health?full=1&x=%20".to_owned(),
            status: vec![200, 204, 301],
            digest: Some([
                0xd4, 0x1d, 0x8c, 0xd9, 0x8f, 0x00, 0xb2, 0x04, 0xe9, 0x80, 0x09, 0x98, 0xec, 0xf8,
                0x42, 0x7e
            ]),
            host: Some("www.example.org".to_owned()),
        })
    );
    assert_eq!(h.port, 8080);
    // One status code alone is accepted too.
    let h = health("kind = \"http\"\nstatus = 204");
    assert!(matches!(h.kind, HealthKind::Http(HttpCheck { status, .. }) if status == [204]));
    for host in [
        "[2001:db8::1]:8080",
        "192.0.2.1",
        "gridftp.example.org:2811",
    ] {
        let h = health(&format!("kind = \"http\"\nhost = \"{host}\""));
        assert!(
            matches!(&h.kind, HealthKind::Http(HttpCheck { host: Some(h), .. }) if h == host),
            "{host}"
        );
    }
}

#[test]
fn http_path_errors() {
    const VALID: &str = "(valid: an absolute path with an optional query, e.g. \"/\" or \
                         \"/health?full=1\")";
    for (path, why) in [
        ("health", "does not start with '/'"),
        ("", "does not start with '/'"),
        ("http://host/", "does not start with '/'"),
        ("/a b", "contains whitespace or a control character"),
        ("/a\\tb", "contains whitespace or a control character"),
        ("/a#frag", "is not a valid URI path"),
        (
            "/caf\u{e9}",
            "contains a non-ASCII character (percent-encode it)",
        ),
    ] {
        let shown = format!("{:?}", path.replace("\\t", "\t"));
        assert_health_error(
            &format!("kind = \"http\"\npath = \"{path}\""),
            &[(10, &format!("path {shown} {why} {VALID}"))],
        );
    }
    assert_health_error(
        "kind = \"http\"\npath = [\"/\"]",
        &[(10, "path must be a string (found an array)")],
    );
}

#[test]
fn http_status_errors() {
    for (value, message) in [
        (
            "[]",
            "status is empty (valid: at least one HTTP status code, e.g. status = [200])",
        ),
        ("[99]", "status 99 is out of range (valid: 100..=599)"),
        ("600", "status 600 is out of range (valid: 100..=599)"),
        ("[200, -1]", "status -1 is out of range (valid: 100..=599)"),
        (
            "\"200\"",
            "status must be an array of HTTP status codes, e.g. status = [200, 204] \
             (found string \"200\")",
        ),
        (
            "[200, \"204\"]",
            "status must hold HTTP status codes as integers, e.g. status = [200, 204] \
             (found string \"204\")",
        ),
    ] {
        assert_health_error(
            &format!("kind = \"http\"\nstatus = {value}"),
            &[(10, message)],
        );
    }
    // Every bad code is named.
    assert_health_error(
        "kind = \"http\"\nstatus = [1, 200, 1000]",
        &[
            (10, "status 1 is out of range (valid: 100..=599)"),
            (10, "status 1000 is out of range (valid: 100..=599)"),
        ],
    );
}

#[test]
fn http_digest_errors() {
    for digest in [
        "d41d8cd98f00b204e9800998ecf8427",
        "d41d8cd98f00b204e9800998ecf8427e0",
        "d41d8cd98f00b204e9800998ecf8427g",
        "+41d8cd98f00b204e9800998ecf8427e",
        "d41d8cd9-8f00b204e9800998ecf842",
        "",
    ] {
        assert_health_error(
            &format!("kind = \"http\"\ndigest = \"{digest}\""),
            &[(
                10,
                &format!(
                    "digest \"{digest}\" is not an MD5 digest (valid: 32 hex digits as \
                     printed by md5sum or genhash, e.g. \"d41d8cd98f00b204e9800998ecf8427e\")"
                ),
            )],
        );
    }
}

#[test]
fn http_host_errors() {
    for host in [
        "",
        "www example.org",
        "user@www.example.org",
        "a/b",
        "host:port",
        "host:",
        "host:70000",
        "2001:db8::1",
        "[2001:db8::1]x",
        "[2001:db8::1]:",
    ] {
        assert_health_error(
            &format!("kind = \"http\"\nhost = \"{host}\""),
            &[(
                10,
                &format!(
                    "host \"{host}\" is not a valid Host header (valid: a host name or \
                     address, optionally with :port, e.g. \"www.example.org\" or \
                     \"[2001:db8::1]:8080\")"
                ),
            )],
        );
    }
}

#[test]
fn exec_check() {
    let h = health("kind = \"exec\"\ncommand = [\"/usr/local/bin/check\", \"-q\", \"\"]");
    assert_eq!(
        h.kind,
        HealthKind::Exec(ExecCheck {
            command: vec![
                "/usr/local/bin/check".to_owned(),
                "-q".to_owned(),
                String::new()
            ],
        })
    );
    assert_eq!(h.kind.to_string(), "exec");
    // The port is only passed to the command; it still defaults.
    assert_eq!(h.port, 2811);
}

#[test]
fn exec_check_errors() {
    const EXAMPLE: &str = "[\"/usr/local/bin/check-gridftp\", \"--quiet\"]";
    assert_health_error(
        "kind = \"exec\"",
        &[(
            9,
            &format!(
                "missing required field \"command\" for kind \"exec\" (e.g. command = {EXAMPLE})"
            ),
        )],
    );
    for (value, message) in [
        (
            "[]",
            format!(
                "command is empty (valid: the program and its arguments, e.g. command = \
                 {EXAMPLE})"
            ),
        ),
        (
            "\"/usr/local/bin/check -q\"",
            format!(
                "command must be an array of strings, the program and its arguments, e.g. \
                 command = {EXAMPLE} (found string \"/usr/local/bin/check -q\")"
            ),
        ),
        (
            "[\"\"]",
            format!(
                "command starts with an empty program name (valid: the program to run, \
                 then its arguments, e.g. command = {EXAMPLE})"
            ),
        ),
        (
            "[\"/bin/check\", false]",
            format!("command must hold strings, e.g. command = {EXAMPLE} (found boolean false)"),
        ),
    ] {
        assert_health_error(
            &format!("kind = \"exec\"\ncommand = {value}"),
            &[(10, &message)],
        );
    }
}

#[test]
fn fields_of_another_kind() {
    let wrong = |key: &str, owner: &str, kind: &str| {
        format!(
            "{key} belongs to kind \"{owner}\" checks, but this check is kind \"{kind}\" \
             (valid: set kind = \"{owner}\", or remove {key})"
        )
    };
    // kind "tcp" by default.
    assert_health_error("path = \"/\"", &[(9, &wrong("path", "http", "tcp"))]);
    assert_health_error(
        "kind = \"tcp\"\nhost = \"www.example.org\"\ncommand = [\"/bin/true\"]",
        &[
            (10, &wrong("host", "http", "tcp")),
            (11, &wrong("command", "exec", "tcp")),
        ],
    );
    assert_health_error(
        "kind = \"http\"\ncommand = [\"/bin/true\"]",
        &[(10, &wrong("command", "exec", "http"))],
    );
    assert_health_error(
        "kind = \"exec\"\ncommand = [\"/bin/true\"]\nstatus = [200]\ndigest = \
         \"d41d8cd98f00b204e9800998ecf8427e\"",
        &[
            (11, &wrong("status", "http", "exec")),
            (12, &wrong("digest", "http", "exec")),
        ],
    );
    assert_health_error(
        "kind = \"none\"\npath = \"/\"",
        &[(10, &wrong("path", "http", "none"))],
    );
    // A udp service's check is "none" by default.
    let text = base_with(
        "port = 2811\n",
        "port = 53\nprotocol = \"udp\"\n[service.health]\nstatus = [200]\n",
    );
    assert_eq!(
        error(&text),
        format!(
            "lb.toml:10: service \"gridftp\", health check: {}",
            wrong("status", "http", "none")
        )
    );
    // A bad value of a misplaced field is reported as well.
    assert_health_error(
        "kind = \"tcp\"\nstatus = [0]",
        &[
            (10, "status 0 is out of range (valid: 100..=599)"),
            (10, &wrong("status", "http", "tcp")),
        ],
    );
    // With an unknown kind, only the kind is wrong.
    assert_health_error(
        "kind = \"smtp\"\npath = \"/\"",
        &[(
            9,
            "kind \"smtp\" is not supported (valid: tcp, http, exec, none)",
        )],
    );
}

#[test]
fn every_health_problem_is_reported() {
    assert_health_error(
        "kind = \"http\"\npath = \"x\"\nstatus = []\nretry_delay = \"0s\"\nnotify = \"x\"\n\
         inhibit_on_failure = 1",
        &[
            (
                10,
                "path \"x\" does not start with '/' (valid: an absolute path with an \
                 optional query, e.g. \"/\" or \"/health?full=1\")",
            ),
            (
                11,
                "status is empty (valid: at least one HTTP status code, e.g. status = [200])",
            ),
            (12, "retry_delay \"0s\" is out of range (valid: 100ms..=1h)"),
            (
                13,
                "notify must be an array of strings, the program and its arguments, e.g. \
                 notify = [\"/usr/local/bin/lb-notify\", \"--syslog\"] (found string \"x\")",
            ),
            (
                14,
                "inhibit_on_failure must be true or false (found integer 1)",
            ),
        ],
    );
}

#[test]
fn health_kind_names() {
    assert_eq!(HealthKind::Tcp.to_string(), "tcp");
    assert_eq!(HealthKind::None.to_string(), "none");
}

/// Every ```toml block of docs/health-checks.md is a valid
/// `[service.health]` table of the BASE service.
#[test]
fn health_docs_examples_parse() {
    const DOCS: &str = include_str!("../../../docs/health-checks.md");
    let mut blocks = 0;
    let mut rest = DOCS;
    while let Some(start) = rest.find("```toml\n") {
        let after = &rest[start + "```toml\n".len()..];
        let end = after.find("```").expect("an unclosed ```toml block");
        let block = &after[..end];
        assert!(block.starts_with("[service.health]\n"), "{block}");
        let text = base_with("port = 2811\n", &format!("port = 2811\n{block}"));
        if let Err(e) = Config::parse(&text, "docs/health-checks.md") {
            panic!("{e}\nin:\n{block}");
        }
        blocks += 1;
        rest = &after[end + 3..];
    }
    assert!(blocks >= 3, "only {blocks} ```toml blocks");
}

#[test]
fn sync_unicast_multicast_and_defaults() {
    let config = parse(&format!(
        "{BASE}\n[sync]\ninterface = \"eth1\"\npeers = [\"192.0.2.3\", \"192.0.2.4\"]\n\
         key_file = \"/etc/lb/sync.key\"\n"
    ));
    assert_eq!(
        config.sync,
        Some(SyncConfig {
            interface: "eth1".to_owned(),
            peers: SyncPeers::Unicast(vec![
                Ipv4Addr::new(192, 0, 2, 3).into(),
                Ipv4Addr::new(192, 0, 2, 4).into()
            ]),
            port: DEFAULT_SYNC_PORT,
            key_file: "/etc/lb/sync.key".into(),
        })
    );
    let config = parse(&format!(
        "{BASE}\n[sync]\ninterface = \"eth0\"\ngroup = \"239.0.0.81\"\nport = 9000\n\
         key_file = \"/k\"\n"
    ));
    let sync = config.sync.expect("sync");
    assert_eq!(
        (sync.peers, sync.port),
        (
            SyncPeers::Multicast(Ipv4Addr::new(239, 0, 0, 81).into()),
            9000
        )
    );
    assert_eq!(parse(BASE).sync, None);
}

#[test]
fn bad_sync_tables_name_what_is_wrong() {
    let sync = |body: &str| error(&format!("{BASE}\n[sync]\n{body}\n"));
    let key = "key_file = \"/etc/lb/sync.key\"";
    for (body, message) in [
        (
            format!("peers = [\"192.0.2.3\"]\n{key}"),
            "missing required field \"interface\"".to_owned(),
        ),
        (
            format!("interface = \"eth0\"\n{key}"),
            "says neither whom to sync with".to_owned(),
        ),
        (
            format!("interface = \"eth0\"\npeers = [\"192.0.2.3\"]\ngroup = \"239.0.0.81\"\n{key}"),
            "peers and group are both set".to_owned(),
        ),
        (
            format!("interface = \"eth0\"\npeers = [\"192.0.2.3\", \"2001:db8::3\"]\n{key}"),
            "peers mixes IPv4 and IPv6 (2001:db8::3)".to_owned(),
        ),
        (
            format!("interface = \"eth0\"\npeers = [\"192.0.2.3\", \"192.0.2.3\"]\n{key}"),
            "peers lists 192.0.2.3 twice".to_owned(),
        ),
        (
            format!("interface = \"eth0\"\ngroup = \"192.0.2.3\"\n{key}"),
            "group \"192.0.2.3\" is not a multicast address".to_owned(),
        ),
        (
            format!("interface = \"eth0\"\npeers = [\"192.0.2.3\"]\nport = 0\n{key}"),
            "port 0 is out of range (valid: 1..=65535)".to_owned(),
        ),
        (
            "interface = \"eth0\"\npeers = [\"192.0.2.3\"]\nkey_file = \"sync.key\"".to_owned(),
            "key_file \"sync.key\" is not an absolute file path".to_owned(),
        ),
        (
            "interface = \"eth0\"\npeers = [\"192.0.2.3\"]".to_owned(),
            "missing required field \"key_file\"".to_owned(),
        ),
    ] {
        let e = sync(&body);
        assert!(e.contains("[sync]: "), "{e}");
        assert!(e.contains(&message), "{body}: {e}");
    }
    assert!(sync("ttl = 1").contains("in [sync]"));
}

#[test]
fn announce_defaults_and_bad_values() {
    let config = parse(&format!("{BASE}\n[announce]\n"));
    assert_eq!(
        config.announce,
        Some(AnnounceConfig {
            table: DEFAULT_ANNOUNCE_TABLE,
            device: DEFAULT_ANNOUNCE_DEVICE.to_owned(),
        })
    );
    let e = error(&format!("{BASE}\n[announce]\ntable = 254\n"));
    assert!(
        e.contains("[announce]: table 254 is the kernel's own (default, main or local)"),
        "{e}"
    );
    let e = error(&format!("{BASE}\n[announce]\ndevice = \"a/b\"\n"));
    assert!(
        e.contains("[announce]: device \"a/b\" is not a valid interface name"),
        "{e}"
    );
}

#[test]
fn sync_flags_override_or_make_the_table() {
    let base = parse(&format!(
        "{BASE}\n[sync]\ninterface = \"eth1\"\npeers = [\"192.0.2.3\"]\nkey_file = \"/k\"\n"
    ))
    .sync;
    let none = SyncOverrides::default();
    assert_eq!(none.apply(base.clone()).unwrap(), base);
    assert_eq!(none.apply(None).unwrap(), None);
    let group = SyncOverrides {
        group: Some(Ipv4Addr::new(239, 0, 0, 81).into()),
        port: Some(9000),
        ..SyncOverrides::default()
    };
    let merged = group.apply(base).unwrap().unwrap();
    assert_eq!(
        (merged.interface.as_str(), merged.port, merged.peers),
        (
            "eth1",
            9000,
            SyncPeers::Multicast(Ipv4Addr::new(239, 0, 0, 81).into())
        )
    );
    let e = group.apply(None).unwrap_err().to_string();
    assert!(e.contains("need --sync-interface"), "{e}");
    let full = SyncOverrides {
        interface: Some("eth0".to_owned()),
        peers: vec![Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 3).into()],
        key_file: Some("/k".into()),
        ..SyncOverrides::default()
    };
    assert_eq!(full.apply(None).unwrap().unwrap().port, DEFAULT_SYNC_PORT);
    let bad = SyncOverrides {
        group: Some(Ipv4Addr::new(192, 0, 2, 1).into()),
        ..full
    };
    assert!(
        bad.apply(None)
            .unwrap_err()
            .to_string()
            .contains("give --sync-peer or --sync-group, not both")
    );
}
