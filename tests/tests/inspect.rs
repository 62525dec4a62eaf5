//! Inspection end to end: `lb stats`, `lb stats --rate`, `lb conns` and the
//! metrics endpoint of the real `lb` binary, checked against the traffic the
//! test itself sent through the director (see `lb_tests::bed`).
//!
//! They need root; without it they print `SKIPPED (needs root)` and pass,
//! unless `CI` is set, where they fail. `LB_BIN` names the `lb` binary
//! (default: `target/release/lb`).

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    Director, Health, Protocol, ServiceConfig, Spec, Stats, TestBed, VIP4, client,
    cmd::{self, Finished},
    conns::Conns,
    skip_unless_root,
};

/// The port of both services (TCP "web", UDP "dns") and of the health check.
const PORT: u16 = 8080;
/// Weights of rs1, rs2, rs3.
const WEIGHTS: [u32; 3] = [1000, 500, 800];
/// Where `lb run --metrics-listen` serves, inside the director's namespace.
const METRICS: &str = "127.0.0.1:9469";

/// A bed with three real servers (TCP on PORT, UDP on VIP4:PORT) and `lb run
/// EXTRA_ARGS...` on the director with services "web" (TCP) and "dns" (UDP).
fn start(test: &'static str, extra_args: &[&str]) -> Director {
    Director::start(test, spec(extra_args), services)
}

/// The bed's spec: three real servers answering TCP and UDP on [`PORT`],
/// and `lb run EXTRA_ARGS...`.
fn spec<'a>(extra_args: &'a [&'a str]) -> Spec<'a> {
    const UDP: [SocketAddr; 1] = [SocketAddr::new(IpAddr::V4(VIP4), PORT)];
    Spec {
        real_servers: WEIGHTS.len(),
        port: PORT,
        udp: &UDP,
        lb_args: extra_args,
    }
}

/// The services "web" (TCP) and "dns" (UDP) on the VIP over rs1..rs3.
fn services(bed: &TestBed) -> Vec<ServiceConfig> {
    let vip = IpAddr::from(VIP4);
    vec![
        bed.service("web", vip, PORT, Protocol::Tcp, Health::tcp(PORT), &WEIGHTS),
        bed.service("dns", vip, PORT, Protocol::Udp, Health::tcp(PORT), &WEIGHTS),
    ]
}

/// `--config FILE ARGS...` (names, pin path and timeouts of the running lb).
fn config_args(setup: &Director, args: &[&str]) -> Vec<String> {
    let config = setup.lb.config_path().display().to_string();
    ["--config", &config]
        .iter()
        .chain(args)
        .map(|a| (*a).to_owned())
        .collect()
}

/// `lb stats --config FILE ARGS... --json`.
fn lb_stats(setup: &Director, args: &[&str]) -> Stats {
    Stats::query_args(setup.lb.binary(), &config_args(setup, args))
        .unwrap_or_else(|e| setup.fail(&format!("lb stats: {e:#}")))
}

/// `lb conns --config FILE ARGS... --json`.
fn lb_conns(setup: &Director, args: &[&str]) -> Conns {
    Conns::query(setup.lb.binary(), &config_args(setup, args))
        .unwrap_or_else(|e| setup.fail(&format!("lb conns: {e:#}")))
}

/// The command `lb SUBCOMMAND --config FILE ARGS...`.
fn lb_command(setup: &Director, subcommand: &str, args: &[&str]) -> Command {
    let mut command = Command::new(setup.lb.binary());
    command.arg(subcommand).args(config_args(setup, args));
    command
}

/// `lb SUBCOMMAND --config FILE ARGS...`, whatever its exit status.
fn lb_output(setup: &Director, subcommand: &str, args: &[&str]) -> Finished {
    cmd::output(&mut lb_command(setup, subcommand, args))
        .unwrap_or_else(|e| setup.fail(&format!("{e:#}")))
}

/// `lb SUBCOMMAND --config FILE ARGS...` (a table), which must succeed.
fn lb_table(setup: &Director, subcommand: &str, args: &[&str]) -> String {
    cmd::run(&mut lb_command(setup, subcommand, args))
        .unwrap_or_else(|e| setup.fail(&format!("lb {subcommand}: {e:#}")))
}

/// 60 held TCP connections (each pinged once) and 40 UDP flows: `lb stats`
/// and `lb conns` must agree with what the client saw and sent.
#[test]
fn stats_and_conns_match_what_the_client_sent() {
    const TEST: &str = "stats_and_conns_match_what_the_client_sent";
    const TCP: usize = 60;
    const UDP: usize = 40;
    if skip_unless_root(TEST) {
        return;
    }
    let setup = start(TEST, &[]);
    let vip = IpAddr::from(VIP4);
    let target = SocketAddr::new(vip, PORT);
    let client_ns = &setup.bed.client().ns;

    let mut held = setup.open(vip, TCP);
    setup.ping_all(&mut held, "pinging once");
    let tcp_clients: BTreeMap<SocketAddr, IpAddr> = held
        .iter()
        .map(|conn| {
            let local = conn
                .local_addr()
                .unwrap_or_else(|e| setup.fail(&format!("local address: {e:#}")));
            (local, setup.address_of(conn.server(), vip))
        })
        .collect();
    let tcp_counts = setup.by_address(&client::count_conns(&held), vip);
    let udp_names = client::udp_flows(client_ns, target, UDP)
        .unwrap_or_else(|e| setup.fail(&format!("UDP flows: {e:#}")));
    let udp_counts = setup.by_address(
        &client::count_by_server(udp_names.iter().map(String::as_str)),
        vip,
    );
    eprintln!("{TEST}: TCP per real server {tcp_counts:?}, UDP {udp_counts:?}");

    // Delayed ACKs of the pings' answers go out within a few hundred ms; the
    // sweeper rewrites the connection counters once a second.
    // (`wait_stats` runs without --config: services are named VIP:PORT/proto.)
    let (stats, agrees) = setup
        .lb
        .wait_stats(Duration::from_secs(5), |s| {
            let agrees = |protocol: &str, counts: &BTreeMap<IpAddr, u64>| {
                s.services.iter().any(|svc| {
                    svc.name == format!("{vip}:{PORT}/{protocol}")
                        && svc.backends.iter().all(|b| {
                            let n = counts.get(&b.address).copied().unwrap_or(0);
                            // TCP flows are ESTABLISHED (active), UDP ones inactive.
                            let (active, inactive) =
                                if protocol == "tcp" { (n, 0) } else { (0, n) };
                            b.conns == n && b.active_conns == active && b.inactive_conns == inactive
                        })
                })
            };
            agrees("tcp", &tcp_counts) && agrees("udp", &udp_counts)
        })
        .unwrap_or_else(|e| setup.fail(&format!("lb stats: {e:#}")));
    if !agrees {
        setup.fail(&format!(
            "lb stats disagree with the client (TCP {tcp_counts:?} active, UDP {udp_counts:?} \
             inactive): {stats:#?}"
        ));
    }
    // The tables' occupancy: every flow the client opened, in the bed's
    // 65,536 / 16,384-flow tables (and their pending tables, as large).
    // TCP flows completed their handshake and UDP flows are confirmed at
    // once: all are in the connection tables, none pending.
    let flows = stats.flows;
    if (flows.ipv4.flows, flows.ipv4.pending) != ((TCP + UDP) as u64, 0)
        || (flows.ipv6.flows, flows.ipv6.pending) != (0, 0)
        || (flows.ipv4.capacity, flows.ipv6.capacity) != (65_536, 16_384)
        || (flows.ipv4.pending_capacity, flows.ipv6.pending_capacity) != (65_536, 16_384)
        || (flows.ipv4.insert_failed, flows.ipv4.evictions) != (0, 0)
    {
        setup.fail(&format!(
            "lb stats shows {flows:?} for {TCP} TCP and {UDP} UDP IPv4 flows"
        ));
    }
    thread::sleep(Duration::from_millis(500));

    // With --config, services carry their names.
    let stats = lb_stats(&setup, &[]);
    let service = |name: &str| {
        stats
            .services
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| setup.fail(&format!("no service {name:?} in lb stats: {stats:#?}")))
    };
    let web = service("web");
    let dns = service("dns");
    assert_eq!(
        (web.vip, web.port, web.protocol.as_str()),
        (vip, PORT, "tcp")
    );
    assert_eq!(
        (dns.vip, dns.port, dns.protocol.as_str()),
        (vip, PORT, "udp")
    );
    if web.conns != TCP as u64 || web.active_conns != TCP as u64 {
        setup.fail(&format!("web: {TCP} connections expected: {web:#?}"));
    }
    if dns.conns != UDP as u64 || dns.inactive_conns != UDP as u64 {
        setup.fail(&format!("dns: {UDP} UDP flows expected: {dns:#?}"));
    }
    for svc in [web, dns] {
        let (pkts, bytes) = svc
            .backends
            .iter()
            .fold((0, 0), |(p, b), x| (p + x.in_pkts, b + x.in_bytes));
        if (pkts, bytes) != (svc.in_pkts, svc.in_bytes) {
            setup.fail(&format!(
                "{}: backends add up to {pkts} packets / {bytes} bytes, the service says \
                 {} / {}",
                svc.name, svc.in_pkts, svc.in_bytes
            ));
        }
    }

    // TCP, client to VIP only (the replies bypass the director). Per
    // connection: the SYN, the ACK completing the handshake and the "ping\n"
    // segment are certain (3); the ACKs of the greeting and of the ping's
    // answer may or may not be separate packets (delayed ACK), and a rare
    // retransmission adds more: at most 8. Bytes are IP-layer (as IPVS
    // counts them): every packet has a 20-byte IPv4 header and a 20..=40
    // byte TCP header (SYN options, timestamps), plus the 5 payload bytes
    // of each ping (sent once, or again if retransmitted).
    let n = TCP as u64;
    if !(3 * n..=8 * n).contains(&web.in_pkts) {
        setup.fail(&format!(
            "web: {} packets for {n} connections, expected {}..={}",
            web.in_pkts,
            3 * n,
            8 * n
        ));
    }
    let (low, high) = (40 * web.in_pkts + 5 * n, 65 * web.in_pkts);
    if !(low..=high).contains(&web.in_bytes) {
        setup.fail(&format!(
            "web: {} bytes in {} packets, expected {low}..={high}",
            web.in_bytes, web.in_pkts
        ));
    }
    // UDP: one "ping\n" per flow, resent (at most 4 tries) only when no
    // answer came within 500 ms; each datagram is 20 (IPv4) + 8 (UDP) + 5
    // bytes at the IP layer.
    let n = UDP as u64;
    if !(n..=4 * n).contains(&dns.in_pkts) || dns.in_bytes != 33 * dns.in_pkts {
        setup.fail(&format!(
            "dns: {} datagrams / {} bytes for {n} flows, expected {n}..={} datagrams of 33 bytes",
            dns.in_pkts,
            dns.in_bytes,
            4 * n
        ));
    }
    let forwarded = stats
        .verdicts
        .iter()
        .find(|v| v.reason == "forwarded")
        .unwrap_or_else(|| setup.fail("no forwarded verdict"));
    if forwarded.packets != web.in_pkts + dns.in_pkts {
        setup.fail(&format!(
            "forwarded {} packets, the services {} + {}",
            forwarded.packets, web.in_pkts, dns.in_pkts
        ));
    }

    // The connection table lists exactly the test's flows.
    let conns = lb_conns(&setup, &[]);
    let client_addr = IpAddr::from(setup.bed.client().ipv4);
    let tcp: BTreeMap<SocketAddr, IpAddr> = conns
        .of_service("web")
        .map(|c| {
            let ok = c.protocol == "tcp"
                && c.state == "ESTABLISHED"
                && c.client == client_addr
                && (c.vip, c.port, c.real_server_port) == (vip, PORT, PORT)
                && (880..=900).contains(&c.expires_s);
            if !ok {
                setup.fail(&format!("unexpected web flow {c:#?}"));
            }
            let real = c
                .real_server
                .unwrap_or_else(|| setup.fail(&format!("web flow without real server: {c:#?}")));
            (c.client_addr(), real)
        })
        .collect();
    if tcp != tcp_clients {
        setup.fail(&format!(
            "lb conns lists web flows {tcp:?}, the client holds {tcp_clients:?}"
        ));
    }
    let mut udp_seen: BTreeMap<IpAddr, u64> = BTreeMap::new();
    for c in conns.of_service("dns") {
        if c.protocol != "udp" || c.state != "UDP" || c.expires_s > 300 || c.client != client_addr {
            setup.fail(&format!("unexpected dns flow {c:#?}"));
        }
        *udp_seen
            .entry(c.real_server.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)))
            .or_default() += 1;
    }
    if udp_seen != udp_counts || conns.connections.len() != TCP + UDP {
        setup.fail(&format!(
            "lb conns: {} flows, UDP per real server {udp_seen:?}; the client: {TCP} + {UDP}, \
             UDP {udp_counts:?}",
            conns.connections.len()
        ));
    }
    let mut sorted = conns.connections.clone();
    sorted.sort_by_key(|c| (c.vip, c.port, c.protocol.clone(), c.client_addr()));
    assert!(
        sorted
            .iter()
            .zip(&conns.connections)
            .all(|(a, b)| a.client_addr() == b.client_addr() && a.protocol == b.protocol),
        "{TEST}: lb conns is not sorted by VIP, protocol, client"
    );

    // --service filters, and an unknown name lists the valid ones.
    let only_web = lb_conns(&setup, &["--service", "web"]);
    assert_eq!(only_web.connections.len(), TCP, "{TEST}: --service web");
    assert!(only_web.connections.iter().all(|c| c.protocol == "tcp"));
    let only_dns = lb_conns(&setup, &["--service", "dns"]);
    assert_eq!(only_dns.connections.len(), UDP, "{TEST}: --service dns");
    let out = lb_output(&setup, "conns", &["--service", "nosuch"]);
    assert!(
        !out.success && out.stderr.contains("nosuch") && out.stderr.contains("dns, web"),
        "{TEST}: lb conns --service nosuch: exit {:?}, stderr {}",
        out.code,
        out.stderr
    );

    // The tables.
    let table = lb_table(&setup, "stats", &[]);
    eprintln!("{TEST}: lb stats:\n{table}");
    let has_row = |text: &str, parts: &[&str]| {
        text.lines()
            .any(|l| parts.iter().all(|p| l.split_whitespace().any(|w| w == *p)))
    };
    for (proto, name, svc) in [("TCP", "web", web), ("UDP", "dns", dns)] {
        let (conns, pkts, bytes) = (
            svc.conns.to_string(),
            svc.in_pkts.to_string(),
            svc.in_bytes.to_string(),
        );
        if !has_row(
            &table,
            &[proto, "192.0.2.200:8080", name, &conns, &pkts, &bytes],
        ) {
            setup.fail(&format!("no {proto} {name} row in lb stats:\n{table}"));
        }
    }
    for (address, n) in &tcp_counts {
        let row = ["->", &format!("{address}:{PORT}"), "up", &n.to_string()];
        if !has_row(&table, &row) {
            setup.fail(&format!("no row {row:?} in lb stats:\n{table}"));
        }
    }
    let table = lb_table(&setup, "conns", &[]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].split_whitespace().eq([
            "Pro",
            "Expire",
            "State",
            "Source",
            "Virtual",
            "Destination",
            "Service"
        ]),
        "{TEST}: lb conns header: {}",
        lines[0]
    );
    assert_eq!(lines.len(), 1 + TCP + UDP, "{TEST}: lb conns:\n{table}");
    for (client, real) in &tcp_clients {
        let row = [
            "TCP",
            "ESTABLISHED",
            &client.to_string(),
            "192.0.2.200:8080",
            &format!("{real}:{PORT}"),
            "web",
        ];
        if !has_row(&table, &row) {
            setup.fail(&format!("no row {row:?} in lb conns:\n{table}"));
        }
    }
    drop(held);
}

/// `lb stats --rate`: non-zero CPS/InPPS/InBPS while new UDP flows arrive,
/// zero once they stop.
#[test]
fn stats_rate_follows_traffic() {
    const TEST: &str = "stats_rate_follows_traffic";
    if skip_unless_root(TEST) {
        return;
    }
    let setup = start(TEST, &[]);
    let target = SocketAddr::new(VIP4.into(), PORT);

    // A new flow (a fresh socket, one "ping\n") every 10 ms until stopped.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        setup
            .bed
            .client()
            .ns
            .spawn("udp-traffic", move || {
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
                    socket.send_to(b"ping\n", target)?;
                    sent += 1;
                    thread::sleep(Duration::from_millis(10));
                }
                Ok(sent)
            })
            .unwrap_or_else(|e| setup.fail(&format!("starting the UDP sender: {e:#}")))
    };
    thread::sleep(Duration::from_millis(300));

    let started = Instant::now();
    let busy = lb_stats(&setup, &["--rate", "--interval", "1s"]);
    let took = started.elapsed();
    let table = lb_table(&setup, "stats", &["--rate", "--interval", "500ms"]);
    stop.store(true, Ordering::Relaxed);
    let sent = sender
        .join()
        .unwrap_or_else(|_| setup.fail("the UDP sender panicked"))
        .unwrap_or_else(|e| setup.fail(&format!("UDP sender: {e:#}")));
    eprintln!("{TEST}: sent {sent} datagrams; busy: {busy:#?}\n{table}");
    assert!(
        took >= Duration::from_secs(1),
        "{TEST}: --rate --interval 1s returned after {took:?}"
    );
    let dns = busy
        .services
        .iter()
        .find(|s| s.name == "dns")
        .unwrap_or_else(|| setup.fail(&format!("no dns service: {busy:#?}")));
    let rate = dns
        .rate
        .unwrap_or_else(|| setup.fail(&format!("no rate with --rate: {dns:#?}")));
    // About 100 flows/s of one 33-byte datagram each; the sender's pace
    // varies with the machine's load, so only the shape is checked.
    if !(10..=1000).contains(&rate.cps)
        || rate.in_pps < rate.cps
        || rate.in_bps.abs_diff(33 * rate.in_pps) > 33
    {
        setup.fail(&format!("dns rates while sending ~100 flows/s: {rate:?}"));
    }
    let backend_pps: u64 = dns
        .backends
        .iter()
        .map(|b| b.rate.map_or(0, |r| r.in_pps))
        .sum();
    if backend_pps.abs_diff(rate.in_pps) > dns.backends.len() as u64 {
        setup.fail(&format!(
            "backend InPPS add up to {backend_pps}, the service's is {}",
            rate.in_pps
        ));
    }
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.ends_with("CPS  InPPS  InBPS"),
        "{TEST}: lb stats --rate header: {header}"
    );

    thread::sleep(Duration::from_millis(200));
    let quiet = lb_stats(&setup, &["--rate", "--interval", "500ms"]);
    for svc in &quiet.services {
        let zero = Some(Default::default());
        if svc.rate != zero || svc.backends.iter().any(|b| b.rate != zero) {
            setup.fail(&format!("rates after the traffic stopped: {svc:#?}"));
        }
    }

    let out = lb_output(&setup, "stats", &["--interval", "1s"]);
    assert!(
        !out.success && out.stderr.contains("--rate"),
        "{TEST}: --interval without --rate: exit {:?}, {}",
        out.code,
        out.stderr
    );
}

/// `lb run --metrics-listen`: GET /metrics in the director's namespace
/// shows the services' counters.
#[test]
fn metrics_endpoint_serves_the_services() {
    const TEST: &str = "metrics_endpoint_serves_the_services";
    const N: usize = 12;
    if skip_unless_root(TEST) {
        return;
    }
    let setup = start(TEST, &["--metrics-listen", METRICS]);
    let vip = IpAddr::from(VIP4);
    let held = setup.open(vip, N);
    let counts = setup.by_address(&client::count_conns(&held), vip);
    let (stats, settled) = setup
        .lb
        .wait_stats(Duration::from_secs(5), |s| {
            s.services.iter().any(|svc| {
                svc.protocol == "tcp"
                    && svc
                        .backends
                        .iter()
                        .all(|b| b.active_conns == counts.get(&b.address).copied().unwrap_or(0))
            })
        })
        .unwrap_or_else(|e| setup.fail(&format!("lb stats: {e:#}")));
    if !settled {
        setup.fail(&format!(
            "lb stats never showed {counts:?} active: {stats:#?}"
        ));
    }

    let response = http_get(&setup, "/metrics");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| setup.fail(&format!("not an HTTP response: {response}")));
    let head_lower = head.to_ascii_lowercase();
    if !head.starts_with("HTTP/1.1 200") || !head_lower.contains("application/openmetrics-text") {
        setup.fail(&format!("GET /metrics: {head}"));
    }
    let web = format!(r#"service="web",vip="{vip}",port="{PORT}",protocol="tcp",vlan="""#);
    let dns = format!(r#"service="dns",vip="{vip}",port="{PORT}",protocol="udp",vlan="""#);
    let mut expected = vec![
        format!("lb_service_connections_total{{{web}}} {N}"),
        format!("lb_service_connections_active{{{web}}} {N}"),
        format!("lb_service_connections_total{{{dns}}} 0"),
        "# TYPE lb_service_incoming_bytes counter".to_owned(),
        "# UNIT lb_service_incoming_bytes bytes".to_owned(),
    ];
    for (address, weight) in setup.bed.real_servers().iter().zip(WEIGHTS) {
        let address = IpAddr::from(address.ipv4);
        let n = counts.get(&address).copied().unwrap_or(0);
        let backend = format!(r#"{web},backend="{address}""#);
        expected.extend([
            format!("lb_backend_connections_total{{{backend}}} {n}"),
            format!("lb_backend_connections_active{{{backend}}} {n}"),
            format!("lb_backend_weight{{{backend}}} {weight}"),
            format!("lb_backend_up{{{backend}}} 1"),
        ]);
    }
    for line in &expected {
        if !body.lines().any(|l| l == line) {
            setup.fail(&format!("GET /metrics lacks {line:?}:\n{body}"));
        }
    }
    let counted = |prefix: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    match counted(&format!("lb_service_incoming_packets_total{{{web}}} ")) {
        Some(p) if p >= 2 * N as u64 => {}
        other => setup.fail(&format!(
            "web packets {other:?} (at least SYN + ACK each):\n{body}"
        )),
    }
    match counted(r#"lb_verdict_packets_total{reason="forwarded"} "#) {
        Some(p) if p >= 2 * N as u64 => {}
        other => setup.fail(&format!("forwarded packets {other:?}:\n{body}")),
    }
    assert!(body.ends_with("# EOF\n"), "{TEST}: no EOF marker:\n{body}");

    let response = http_get(&setup, "/nope");
    assert!(
        response.starts_with("HTTP/1.1 404"),
        "{TEST}: GET /nope: {response}"
    );
    drop(held);
}

/// GET `path` from [`METRICS`] inside the director's namespace (retrying the
/// connect for a few seconds while the listener comes up).
fn http_get(setup: &Director, path: &str) -> String {
    try_http_get(setup, path).unwrap_or_else(|e| setup.fail(&format!("GET {path}: {e:#}")))
}

/// [`http_get`], returning the error.
fn try_http_get(setup: &Director, path: &str) -> anyhow::Result<String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {METRICS}\r\nConnection: close\r\n\r\n");
    setup.bed.director().ns.run(move || {
        let addr: SocketAddr = METRICS.parse()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut stream = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(anyhow::anyhow!("connecting to {addr}: {e}")),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    })
}

/// 2,000 idle connections to the metrics port of an lb that may open only
/// 1,024 files (a common limit it cannot raise here): lb keeps every backend
/// up past the health checks' `fall` intervals (they still get sockets),
/// and `/metrics` answers again once the idle connections' header-read
/// timeout has passed.
#[test]
fn idle_metrics_connections_starve_nothing() {
    const TEST: &str = "idle_metrics_connections_starve_nothing";
    const IDLE: usize = 2_000;
    if skip_unless_root(TEST) {
        return;
    }
    let setup =
        Director::start_with_open_files(TEST, spec(&["--metrics-listen", METRICS]), 1024, services);
    let idle = setup
        .bed
        .director()
        .ns
        .run(move || {
            let addr: SocketAddr = METRICS.parse()?;
            let mut idle = Vec::with_capacity(IDLE);
            for _ in 0..IDLE {
                // Connections over lb's cap are accepted and closed at once;
                // a full accept queue may refuse a few.
                if let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    idle.push(stream);
                }
            }
            anyhow::Ok(idle)
        })
        .unwrap_or_else(|e| setup.fail(&format!("opening idle connections: {e:#}")));
    eprintln!("{TEST}: {} idle connections opened", idle.len());
    thread::sleep(Health::TCP_INTERVAL * (Health::TCP_FALL + 1));
    setup.assert_all_up("with 2,000 idle metrics connections");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match try_http_get(&setup, "/metrics") {
            Ok(response) if response.starts_with("HTTP/1.1 200") => break,
            answer if Instant::now() > deadline => setup.fail(&format!(
                "GET /metrics with 2,000 idle connections open: {answer:?}"
            )),
            _ => thread::sleep(Duration::from_millis(200)),
        }
    }
    drop(idle);
    setup.finish();
}
