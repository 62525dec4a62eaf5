//! End-to-end tests of an ECMP group of directors announced by BGP, with
//! the real components: BIRD 2 on a router and on two directors, Linux
//! multipath routes hashing on L4 ports, and the real `lb` on both
//! directors with `[announce]` ([`TestBed::build_ecmp`]).
//!
//! ```text
//!   client 198.51.100.10 ── router 192.0.2.1 (BIRD, AS 65000, ECMP, L4 hash)
//!                                  │ segment 192.0.2.0/24
//!        director 192.0.2.2 (lb + BIRD, AS 65001)   director2 192.0.2.3 (lb + BIRD, AS 65001)
//!        rs1..rs3 192.0.2.11-13, VIP on lo, replies to the client through the router
//! ```
//!
//! Each director's lb puts the VIP in routing table 200 through its TUN
//! device while the service has a usable real server; its BIRD learns that
//! table and announces it to the router, whose BIRD merges both directors'
//! routes into one route with two nexthops (`merge paths`), which the
//! kernel hashes per flow (`fib_multipath_hash_policy=1`).
//!
//! Both tests open 200 connections from the client, check that both
//! directors forwarded some, then `lb stop` the first director: the router
//! must drop to the second director alone and every connection must still
//! answer from its original real server; start it again: two nexthops
//! again, every connection answers; `kill -9` the second director's lb: its
//! TUN device dies with it, BIRD withdraws, the router keeps the first
//! director alone, every connection answers; start it again (it adopts its
//! data path); and once more after the health checks' `interval * (fall +
//! 1)`. With `mh` the directors agree on each flow's real server by hash
//! (a director schedules a mid-connection packet of a flow it does not know
//! by the same hash); with `wlc` they need `[sync]`, which the second test
//! adds, on a multicast group.
//!
//! They need root and BIRD (`bird2`, installed by `cargo xtask setup`);
//! without root they print `SKIPPED (needs root)` and pass, unless `CI` is
//! set, where they fail. `LB_BIN` names the `lb` binary (default:
//! `target/release/lb`).

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use lb_tests::{
    Health, LbConfig, LbDaemon, NetNs, Protocol, SyncConfig, TestBed, VIP4,
    bed::ROUTER4,
    client::{self, HeldConn},
    daemon::{ScratchDir, write_sync_key},
    lb_binary, skip_unless_root, unique_tag,
};

/// The service port.
const PORT: u16 = 8080;
/// Connections the client holds.
const CONNECTIONS: usize = 200;
/// lb's announcement table on both directors.
const TABLE: u32 = 200;
/// The multicast group of the `wlc` test's sync.
const SYNC_GROUP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(239, 0, 0, 81));
/// How long a withdrawal or an announcement may take to reach the router's
/// kernel: BIRD's kernel scan (1 s) and the BGP update.
const CONVERGE: Duration = Duration::from_secs(15);

/// A BIRD daemon in a namespace, stopped (by its pid) when dropped.
struct Bird {
    pid: i32,
    log: PathBuf,
}

impl Bird {
    /// Starts `bird` in `ns` with `config`, its files under `dir/name.*`.
    fn start(ns: &NetNs, dir: &Path, name: &str, config: &str) -> Self {
        let conf = dir.join(format!("{name}.conf"));
        let log = dir.join(format!("{name}.log"));
        let config = format!("log \"{}\" all;\n{config}", log.display());
        fs::write(&conf, config).expect("writing the BIRD config");
        let pid_file = dir.join(format!("{name}.pid"));
        let socket = dir.join(format!("{name}.ctl"));
        ns.exec(
            "bird",
            &[
                "-c",
                &conf.display().to_string(),
                "-s",
                &socket.display().to_string(),
                "-P",
                &pid_file.display().to_string(),
            ],
        )
        .unwrap_or_else(|e| panic!("starting BIRD {name}: {e:#}"));
        // BIRD forks into the background and then writes its pid.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pid = fs::read_to_string(&pid_file)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok());
            match pid {
                Some(pid) => return Self { pid, log },
                None if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                None => panic!("BIRD {name} wrote no pid file: {}", log.display()),
            }
        }
    }

    /// What BIRD logged.
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let pid = self.pid;
        // SAFETY: a signal to the pid BIRD wrote; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        // SAFETY: signal 0 only checks that the process exists.
        while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// BIRD on a director at `address`: lb's table learnt, announced by eBGP.
fn director_bird(address: IpAddr) -> String {
    format!(
        "router id {address};
protocol device {{ scan time 1; }}
protocol kernel lbvips {{
    kernel table {TABLE};
    learn;
    scan time 1;
    ipv4 {{ import all; export none; }};
}}
protocol bgp uplink {{
    local {address} as 65001;
    neighbor {ROUTER4} as 65000;
    hold time 6;
    connect retry time 1;
    ipv4 {{ import none; export where proto = \"lbvips\"; }};
}}
"
    )
}

/// BIRD on the router: a session per director, multipath into the kernel.
fn router_bird(directors: &[IpAddr]) -> String {
    let mut config = format!(
        "router id {ROUTER4};
protocol device {{ scan time 1; }}
protocol kernel {{
    merge paths on;
    ipv4 {{ import none; export all; }};
}}
"
    );
    for (i, director) in directors.iter().enumerate() {
        config += &format!(
            "protocol bgp director{i} {{
    local {ROUTER4} as 65000;
    neighbor {director} as 65001;
    hold time 6;
    connect retry time 1;
    ipv4 {{ import all; export none; }};
}}
"
        );
    }
    config
}

/// The test bed with BIRD everywhere and lb on both directors.
struct Group {
    test: &'static str,
    // Field order is drop order: lb, then BIRD, then the real servers and
    // the namespaces.
    lbs: [Option<LbDaemon>; 2],
    configs: [LbConfig; 2],
    /// `lb run`s started so far.
    runs: usize,
    birds: Vec<Bird>,
    _servers: Vec<lb_tests::RealServer>,
    _scratch: ScratchDir,
    bed: TestBed,
}

impl Group {
    /// Builds the bed, starts BIRD and lb (scheduler `scheduler`, with
    /// `[sync]` between the directors if `sync`).
    fn start(test: &'static str, scheduler: &'static str, sync: bool) -> Self {
        let tag = unique_tag();
        let bed = TestBed::build_ecmp(&tag, 3).unwrap_or_else(|e| panic!("{test}: bed: {e:#}"));
        let scratch = ScratchDir::create(&format!("{tag}-bgp")).unwrap();
        let router = bed.router().expect("the ECMP bed has a router");
        router
            .ns
            .sysctls(&[("net.ipv4.fib_multipath_hash_policy", "1")])
            .unwrap();
        let servers = bed.start_servers(PORT, &[]).unwrap();
        let vip = IpAddr::from(VIP4);
        let health = Health::Tcp {
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(300),
            port: PORT,
            fall: 2,
            rise: 1,
        };
        let mut service = bed.service("door", vip, PORT, Protocol::Tcp, health, &[1, 1, 1]);
        service.scheduler = scheduler;
        let directors = [
            bed.director(),
            bed.director2().expect("the ECMP bed has two directors"),
        ];
        let addresses = directors.map(|d| IpAddr::from(d.ipv4));
        let mut configs = [
            bed.lb_config(vec![service.clone()]),
            bed.director2_lb_config(vec![service]),
        ];
        let key = write_sync_key(scratch.path(), "sync.key", b"ecmp-group-shared-sync-key")
            .expect("writing the sync key");
        for config in &mut configs {
            config.announce_table = Some(TABLE);
            config.sweep_interval = Some(Duration::from_secs(1));
            if sync {
                // By multicast (the failover tests sync by unicast).
                config.sync = Some(SyncConfig {
                    interface: lb_tests::DIRECTOR_IFACE.to_owned(),
                    peers: Vec::new(),
                    group: Some(SYNC_GROUP),
                    port: None,
                    key_file: key.clone(),
                });
            }
        }
        let mut birds = vec![Bird::start(
            &router.ns,
            scratch.path(),
            "router",
            &router_bird(&addresses),
        )];
        for (i, director) in directors.iter().enumerate() {
            birds.push(Bird::start(
                &director.ns,
                scratch.path(),
                &format!("director{}", i + 1),
                &director_bird(addresses[i]),
            ));
        }
        let mut group = Self {
            test,
            lbs: [None, None],
            configs,
            runs: 0,
            birds,
            _servers: servers,
            _scratch: scratch,
            bed,
        };
        for i in 0..2 {
            group.start_lb(i);
        }
        group
    }

    fn fail(&self, msg: &str) -> ! {
        let mut out = format!("{}: {msg}\nrouter: {}\n", self.test, self.route());
        for (i, lb) in self.lbs.iter().enumerate() {
            if let Some(lb) = lb {
                out += &format!("----- lb on director {} -----\n{}\n", i + 1, lb.log());
            }
        }
        for bird in &self.birds {
            out += &format!("----- BIRD -----\n{}\n", bird.log());
        }
        panic!("{out}");
    }

    fn director_ns(&self, i: usize) -> &NetNs {
        match i {
            0 => &self.bed.director().ns,
            _ => &self.bed.director2().expect("two directors").ns,
        }
    }

    /// Starts lb on director `i` (0 or 1) and waits for its backends.
    fn start_lb(&mut self, i: usize) {
        let lb_bin = lb_binary().unwrap();
        // Each run's config in a directory of its own.
        self.runs += 1;
        let tag = format!("{}-lb{}", self.bed.tag(), self.runs);
        let lb = LbDaemon::launch(&lb_bin, self.director_ns(i), &self.configs[i], &tag, &[])
            .and_then(LbDaemon::wait_ready)
            .unwrap_or_else(|e| self.fail(&format!("lb run on director {}: {e:#}", i + 1)));
        lb.wait_all_up(Duration::from_secs(10))
            .unwrap_or_else(|e| self.fail(&format!("backends of director {}: {e:#}", i + 1)));
        self.lbs[i] = Some(lb);
    }

    /// The router's route to the VIP.
    fn route(&self) -> String {
        let router = self.bed.router().expect("a router");
        router
            .ns
            .ip(&["route", "show", &VIP4.to_string()])
            .unwrap_or_default()
    }

    /// The directors the router's route to the VIP goes through.
    fn nexthops(&self) -> Vec<IpAddr> {
        self.route()
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .filter_map(|w| w[1].parse().ok())
            .collect()
    }

    /// Waits until the router goes through exactly the directors `wanted`
    /// (by index); returns how long that took.
    fn wait_nexthops(&self, wanted: &[usize], when: &str) -> Duration {
        let started = Instant::now();
        let mut expected: Vec<IpAddr> = wanted
            .iter()
            .map(|&i| IpAddr::from(self.director_address(i)))
            .collect();
        expected.sort();
        loop {
            let mut got = self.nexthops();
            got.sort();
            if got == expected {
                return started.elapsed();
            }
            if started.elapsed() > CONVERGE {
                self.fail(&format!(
                    "{when}: the router goes through {got:?}, not {expected:?}"
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn director_address(&self, i: usize) -> std::net::Ipv4Addr {
        match i {
            0 => self.bed.director().ipv4,
            _ => self.bed.director2().expect("two directors").ipv4,
        }
    }

    /// Packets director `i`'s lb forwarded for the service.
    fn forwarded(&self, i: usize) -> u64 {
        let lb = self.lbs[i].as_ref().expect("lb runs");
        lb.stats()
            .unwrap_or_else(|e| self.fail(&format!("lb stats: {e:#}")))
            .services
            .iter()
            .map(|s| s.in_pkts)
            .sum()
    }

    /// Every connection answers from its original real server.
    fn ping_all(&self, conns: &mut [HeldConn], when: &str) {
        if let Err(e) = client::ping_all(conns.iter_mut()) {
            self.fail(&format!("{when}: {e:#}"));
        }
    }
}

impl Drop for Group {
    /// Stops the lbs still running, then removes a data path a killed lb
    /// left pinned (a restart that failed).
    fn drop(&mut self) {
        for lb in self.lbs.iter_mut().filter_map(Option::take) {
            let _ = lb.stop();
        }
        let Ok(lb_bin) = lb_binary() else {
            return;
        };
        for config in &self.configs {
            if config.pin_path.exists() {
                let _ = std::process::Command::new(&lb_bin)
                    .arg("detach")
                    .arg("--pin-path")
                    .arg(&config.pin_path)
                    .output();
            }
        }
    }
}

fn group_survives_directors_leaving(test: &'static str, scheduler: &'static str, sync: bool) {
    if skip_unless_root(test) {
        return;
    }
    let mut group = Group::start(test, scheduler, sync);
    let converged = group.wait_nexthops(&[0, 1], "both directors announcing");
    eprintln!("{test}: ECMP over both directors after {converged:?}");
    let target = SocketAddr::new(VIP4.into(), PORT);
    let mut conns = client::open_tcp(&group.bed.client().ns, target, CONNECTIONS)
        .unwrap_or_else(|e| group.fail(&format!("opening {CONNECTIONS} connections: {e:#}")));
    group.ping_all(&mut conns, "through both directors");
    let spread = [group.forwarded(0), group.forwarded(1)];
    eprintln!(
        "{test}: packets forwarded by each director: {spread:?}; real servers: {:?}",
        client::count_conns(&conns)
    );
    if spread.contains(&0) {
        group.fail(&format!(
            "the router did not spread the connections over both directors: {spread:?}"
        ));
    }
    if sync {
        // Each director holds every connection: its own and the other's.
        for i in 0..2 {
            let lb = group.lbs[i].as_ref().expect("lb runs");
            let (stats, all) = lb
                .wait_stats(Duration::from_secs(5), |s| {
                    s.flows.ipv4.flows >= CONNECTIONS as u64
                        && s.sync().is_ok_and(|sync| sync.flows_installed > 0)
                })
                .unwrap_or_else(|e| group.fail(&format!("lb stats: {e:#}")));
            if !all {
                group.fail(&format!(
                    "director {} holds {} of the {CONNECTIONS} connections: {:?}",
                    i + 1,
                    stats.flows.ipv4.flows,
                    stats.sync
                ));
            }
        }
    }

    // lb stop on director 1: withdrawn, its connections move to director 2.
    let lb = group.lbs[0].take().expect("lb runs");
    let stopping = Instant::now();
    let (status, log) = lb.stop().unwrap();
    assert!(status.success(), "{test}: lb stop: {status}\n{log}");
    group.wait_nexthops(&[1], "director 1's lb stopped");
    eprintln!(
        "{test}: director 1 withdrawn {:?} after lb stop began",
        stopping.elapsed()
    );
    group.ping_all(&mut conns, "director 1's lb stopped");

    // Back: announced again, nothing breaks.
    let starting = Instant::now();
    group.start_lb(0);
    group.wait_nexthops(&[0, 1], "director 1's lb started again");
    eprintln!(
        "{test}: director 1 announced again {:?} after lb run began",
        starting.elapsed()
    );
    group.ping_all(&mut conns, "director 1 back");

    // lb killed on director 2: its device dies, BIRD withdraws.
    let lb = group.lbs[1].take().expect("lb runs");
    let killing = Instant::now();
    let _ = lb.kill().unwrap();
    group.wait_nexthops(&[0], "director 2's lb killed");
    eprintln!(
        "{test}: director 2 withdrawn {:?} after its lb was killed",
        killing.elapsed()
    );
    group.ping_all(&mut conns, "director 2's lb killed");
    group.start_lb(1);
    group.wait_nexthops(&[0, 1], "director 2's lb started again");
    group.ping_all(&mut conns, "director 2 back");

    // The timers: health checks, sweeps, sync refreshes.
    thread::sleep(Duration::from_millis(500) * 3 + Duration::from_secs(2));
    group.wait_nexthops(&[0, 1], "after the timers");
    group.ping_all(&mut conns, "after the timers");
    drop(conns);
    for i in 0..2 {
        if let Some(lb) = group.lbs[i].take() {
            let (status, log) = lb.stop().unwrap();
            assert!(
                status.success(),
                "{test}: lb stop {}: {status}\n{log}",
                i + 1
            );
        }
    }
}

#[test]
fn an_mh_group_keeps_every_connection_when_a_director_leaves_and_returns() {
    group_survives_directors_leaving(
        "an_mh_group_keeps_every_connection_when_a_director_leaves_and_returns",
        "mh",
        false,
    );
}

#[test]
fn a_wlc_group_with_sync_keeps_every_connection_when_a_director_leaves_and_returns() {
    group_survives_directors_leaving(
        "a_wlc_group_with_sync_keeps_every_connection_when_a_director_leaves_and_returns",
        "wlc",
        true,
    );
}
