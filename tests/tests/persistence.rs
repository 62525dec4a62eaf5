//! End-to-end test of client persistence (keepalived's
//! `persistence_timeout`) over a service of several ports, as GridFTP uses
//! them: the real `lb` binary on a director namespace, one service over the
//! control port 2811 and the data range 50000-50100, three real servers
//! weighted 1000/500/800 listening on the control port and on data ports
//! across the range, and 30 clients (30 addresses of the client namespace),
//! each opening a control connection to 2811 and then five data
//! connections to ports of the range. Every connection of a client lands on
//! its control connection's real server, the clients spread by weight,
//! `lb conns` lists one template per client and `lb stats` counts them and
//! shows the service's ports; once a client's connections are closed and
//! the timeout has passed its template is gone.
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

use lb_tests::{Director, Health, Protocol, Spec, VIP4, client, conns::Conns, skip_unless_root};

/// The control port.
const PORT: u16 = 2811;
/// The data range.
const DATA_RANGE: (u16, u16) = (50000, 50100);
/// The data ports the real servers listen on: across the range, its ends
/// included.
const DATA_PORTS: [u16; 6] = [50000, 50001, 50037, 50050, 50099, 50100];
/// Weights of rs1, rs2, rs3.
const WEIGHTS: [u32; 3] = [1000, 500, 800];
/// Clients, each from its own address.
const CLIENTS: u8 = 30;
/// Data connections each client opens after its control connection.
const DATA: usize = 5;
/// The persistence timeout.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How long the flows of closed connections stay.
const CLOSED: Duration = Duration::from_secs(1);
/// The sweeper's interval.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);

#[test]
fn a_clients_connections_stay_on_one_real_server() {
    const TEST: &str = "a_clients_connections_stay_on_one_real_server";
    if skip_unless_root(TEST) {
        return;
    }
    let vip = IpAddr::from(VIP4);
    let spec = Spec::tcp(WEIGHTS.len(), PORT);
    let setup = Director::start_configured(
        TEST,
        spec,
        |config| {
            config.sweep_interval = Some(SWEEP_INTERVAL);
            // Closed connections leave their flows soon, so that a closed
            // client's template can expire within the test.
            config.timeouts = vec![("fin_wait", CLOSED), ("close", CLOSED)];
        },
        |bed| {
            let mut service = bed.service(
                "door",
                vip,
                PORT,
                Protocol::Tcp,
                Health::tcp(PORT),
                &WEIGHTS,
            );
            service.persistence = Some((TIMEOUT, 32));
            service.more_ports = vec![DATA_RANGE];
            vec![service]
        },
    );
    // The real servers' data listeners, as GridFTP's data channels.
    let _data_servers: Vec<_> = DATA_PORTS
        .iter()
        .map(|&port| {
            setup
                .bed
                .start_servers(port, &[])
                .unwrap_or_else(|e| setup.fail(&format!("data listeners on {port}: {e:#}")))
        })
        .collect();
    let client = setup.bed.client();
    let addresses = setup.add_client_addresses(CLIENTS);
    let target = SocketAddr::new(vip, PORT);

    // Each client: a control connection, then its data connections, each
    // to another port of the range.
    let mut held = Vec::new();
    let mut clients_per_server: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..CLIENTS {
        let source = addresses[usize::from(i)];
        let open = |n| {
            client::open_tcp_from(&client.ns, source, target, n)
                .unwrap_or_else(|e| setup.fail(&format!("{e:#}")))
        };
        let control = open(1);
        let data: Vec<_> = (0..DATA)
            .flat_map(|k| {
                let port = DATA_PORTS[(usize::from(i) + k) % DATA_PORTS.len()];
                client::open_tcp_from(&client.ns, source, SocketAddr::new(vip, port), 1)
                    .unwrap_or_else(|e| setup.fail(&format!("data port {port}: {e:#}")))
            })
            .collect();
        let server = control[0].server().to_owned();
        let strays: Vec<&str> = data
            .iter()
            .map(|c| c.server())
            .filter(|s| *s != server)
            .collect();
        if !strays.is_empty() {
            setup.fail(&format!(
                "client {source}: control connection on {server}, data connections on {strays:?}"
            ));
        }
        *clients_per_server.entry(server).or_default() += 1;
        held.extend(control);
        held.extend(data);
    }
    eprintln!("{TEST}: clients per real server: {clients_per_server:?}");
    // wlc over clients that each hold six connections: by weight, within
    // two clients of each share (13.0, 6.5 and 10.4 of 30).
    let total: u32 = WEIGHTS.iter().sum();
    for (i, weight) in WEIGHTS.iter().enumerate() {
        let role = format!("rs{}", i + 1);
        let got = f64::from(clients_per_server.get(&role).copied().unwrap_or(0));
        let share = f64::from(CLIENTS) * f64::from(*weight) / f64::from(total);
        if (got - share).abs() > 2.0 {
            setup.fail(&format!(
                "{role} has {got} clients, its weight's share is {share:.1}: \
                 {clients_per_server:?}"
            ));
        }
    }

    // One template per client, listed and counted.
    let config = setup.lb.config_path().display().to_string();
    let conns = Conns::query(setup.lb.binary(), &["--config", &config])
        .unwrap_or_else(|e| setup.fail(&format!("lb conns: {e:#}")));
    let templates: Vec<_> = conns
        .connections
        .iter()
        .filter(|c| c.state == "PERSIST")
        .collect();
    if templates.len() != usize::from(CLIENTS) || templates.iter().any(|t| t.client_port != 0) {
        setup.fail(&format!("lb conns lists these templates: {templates:#?}"));
    }
    let stats = setup.stats();
    let counted: u64 = stats.services.iter().map(|s| s.persist_conns).sum();
    if counted != u64::from(CLIENTS) {
        setup.fail(&format!("lb stats counts {counted} templates: {stats:#?}"));
    }
    // One service with all its ports, its connections counted once.
    let shown: Vec<(u16, &str, u64)> = stats
        .services
        .iter()
        .map(|s| (s.port, s.ports.as_str(), s.conns))
        .collect();
    let opened = u64::from(CLIENTS) * (1 + DATA as u64);
    if shown != [(PORT, "2811,50000-50100", opened)] {
        setup.fail(&format!(
            "lb stats shows {shown:?} (port, ports, connections), not one service over \
             2811,50000-50100 with {opened} connections"
        ));
    }

    // Past the timeout, with its connections open, a client keeps its
    // server (its live flows keep the template); once they are closed and
    // the timeout has passed, its template is gone.
    thread::sleep(TIMEOUT + SWEEP_INTERVAL * 2);
    let first = addresses[0];
    let again = client::open_tcp_from(&client.ns, first, target, 1)
        .unwrap_or_else(|e| setup.fail(&format!("{e:#}")));
    if again[0].server() != held[0].server() {
        setup.fail(&format!(
            "client {first} moved from {} to {} while its connections were open",
            held[0].server(),
            again[0].server()
        ));
    }
    drop(again);
    let first_client: Vec<_> = held.drain(..=DATA).collect();
    drop(first_client);
    thread::sleep(CLOSED + TIMEOUT + SWEEP_INTERVAL * 4);
    let conns = Conns::query(setup.lb.binary(), &["--config", &config])
        .unwrap_or_else(|e| setup.fail(&format!("lb conns: {e:#}")));
    let left = conns
        .connections
        .iter()
        .filter(|c| c.state == "PERSIST")
        .count();
    if left != usize::from(CLIENTS) - 1
        || conns
            .connections
            .iter()
            .any(|c| c.state == "PERSIST" && c.client == first)
    {
        setup.fail(&format!(
            "{left} templates after client {first} closed its connections: {:#?}",
            conns.connections
        ));
    }

    // The health checks have had their fall intervals; everything holds.
    thread::sleep(Health::TCP_INTERVAL * (Health::TCP_FALL + 1));
    setup.assert_all_up("after the persistence timeouts");
    setup.ping_all(&mut held, "every other client's connections");
    drop(held);
    setup.finish();
}
