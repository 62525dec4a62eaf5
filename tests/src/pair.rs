//! A VRRP pair of directors for the failover tests: the pair bed
//! ([`TestBed::build_pair`]), its real servers, real keepalived on each
//! director moving the VIP ([`crate::keepalived`]), and the real `lb run`
//! on each, both with the same services and, with sync, a `[sync]`
//! section naming the other director as its peer, under one shared key.
//!
//! Director 1 (`director`, 192.0.2.2) runs keepalived as `state MASTER`,
//! priority 150; director 2 (`director2`, 192.0.2.3) as `state BACKUP`,
//! priority 100; one `vrrp_instance`, `virtual_router_id` 51, `advert_int
//! 1`, the IPv4 VIP `192.0.2.200/32 dev lbd0`, `nopreempt` not set (director
//! 1 takes the VIP back when it returns).
//!
//! Every failure panics with the test's name, what failed and everything
//! both `lb`s and both keepalived printed. Dropping the pair stops both
//! keepalived (by pid), both `lb`s, the real servers, and removes the scratch
//! directory and the namespaces, in that order.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Read as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    DIRECTOR_IFACE, Host, LbConfig, LbDaemon, RealServer, ServiceConfig, Stats, TestBed, VIP4,
    client::{self, HeldConn},
    conns::Conns,
    daemon::{ScratchDir, SyncConfig, write_sync_key},
    keepalived::{self, Keepalived, VrrpInstance},
    lb_binary,
    stats::SyncStats,
    unique_tag,
};

/// How long the backends may take to come up after `lb run` is ready.
const ALL_UP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the first keepalived may take to hold the VIP.
const FIRST_MASTER_TIMEOUT: Duration = Duration::from_secs(15);

/// The directors of a pair: 0 is `director` (VRRP master by priority), 1 is
/// `director2`.
pub const DIRECTORS: [usize; 2] = [0, 1];

/// What [`DirectorPair::start`] builds.
#[derive(Clone, Copy, Debug)]
pub struct PairSpec {
    /// Number of real servers (`rs1`..).
    pub real_servers: usize,
    /// The port of every real server's TCP server, and of
    /// [`DirectorPair::open`].
    pub port: u16,
    /// Whether the `lb`s sync their connections (a `[sync]` section).
    pub sync: bool,
}

/// A VRRP pair of directors running `lb` (see the module docs).
///
/// Field order is drop order.
pub struct DirectorPair {
    test: &'static str,
    port: u16,
    /// keepalived on each director (`None` while stopped).
    keepalived: [Option<Keepalived>; 2],
    /// Each director's VRRP instance.
    instances: [VrrpInstance; 2],
    /// What each director's stopped keepalived printed, for failures.
    stopped_logs: [String; 2],
    /// `lb run` on each director.
    lbs: [LbDaemon; 2],
    /// The config each `lb` was started with.
    pub configs: [LbConfig; 2],
    /// The real servers, `rs1` first.
    pub servers: Vec<RealServer>,
    /// keepalived's configs, pid files and the sync key.
    scratch: ScratchDir,
    /// The test bed.
    pub bed: TestBed,
}

impl DirectorPair {
    /// Builds the pair bed with `spec.real_servers` real servers, starts
    /// them, starts keepalived on both directors and waits until director
    /// 1 holds the VIP, then starts `lb run` on both with the services
    /// `services` returns (and `[sync]` when `spec.sync`), `configure`
    /// changing each config first, and waits until both are ready and
    /// every backend is up on both.
    pub fn start(
        test: &'static str,
        spec: PairSpec,
        configure: impl Fn(&mut LbConfig),
        services: impl Fn(&TestBed) -> Vec<ServiceConfig>,
    ) -> Self {
        let tag = unique_tag();
        let bed = TestBed::build_pair(&tag, spec.real_servers)
            .unwrap_or_else(|e| panic!("{test}: building the pair bed: {e:#}"));
        let servers = bed
            .start_servers(spec.port, &[])
            .unwrap_or_else(|e| panic!("{test}: {e:#}"));
        let scratch =
            ScratchDir::create(&format!("{tag}-pair")).unwrap_or_else(|e| panic!("{test}: {e:#}"));

        let instances = DIRECTORS.map(|i| VrrpInstance {
            router_id: format!("lbt{tag}-director{}", i + 1),
            name: "lb_vip".to_owned(),
            master: i == 0,
            interface: DIRECTOR_IFACE.to_owned(),
            virtual_router_id: 51,
            priority: if i == 0 { 150 } else { 100 },
            advert_int: 1,
            addresses: vec![format!("{VIP4}/32 dev {DIRECTOR_IFACE}")],
        });
        let hosts = [bed.director(), director2(&bed)];
        let keepalived = DIRECTORS.map(|i| {
            Some(
                Keepalived::start(
                    &hosts[i].ns,
                    scratch.path(),
                    &format!("keepalived{}", i + 1),
                    &instances[i],
                )
                .unwrap_or_else(|e| panic!("{test}: {e:#}")),
            )
        });
        if let Err(e) = keepalived::wait_address(
            &[(&hosts[0].ns, true), (&hosts[1].ns, false)],
            DIRECTOR_IFACE,
            VIP4.into(),
            FIRST_MASTER_TIMEOUT,
        ) {
            panic!(
                "{test}: director 1 did not become VRRP master: {e:#}\n{}",
                keepalived_logs(&keepalived)
            );
        }

        let key = random_key().unwrap_or_else(|e| panic!("{test}: {e:#}"));
        let key_file = write_sync_key(scratch.path(), "sync.key", key.as_bytes())
            .unwrap_or_else(|e| panic!("{test}: {e:#}"));
        let mut configs = [
            bed.lb_config(services(&bed)),
            bed.director2_lb_config(services(&bed)),
        ];
        for (i, config) in configs.iter_mut().enumerate() {
            configure(config);
            if spec.sync {
                config.sync = Some(SyncConfig {
                    interface: DIRECTOR_IFACE.to_owned(),
                    peers: vec![hosts[1 - i].ipv4.into()],
                    group: None,
                    port: None,
                    key_file: key_file.clone(),
                });
            }
        }
        let lb_bin = lb_binary().unwrap_or_else(|e| panic!("{test}: {e:#}"));
        let lb1 = LbDaemon::launch(
            &lb_bin,
            &hosts[0].ns,
            &configs[0],
            &format!("{tag}-d1"),
            &[],
        )
        .and_then(LbDaemon::wait_ready)
        .unwrap_or_else(|e| panic!("{test}: lb run on director 1: {e:#}"));
        let lb2 = LbDaemon::launch(
            &lb_bin,
            &hosts[1].ns,
            &configs[1],
            &format!("{tag}-d2"),
            &[],
        )
        .and_then(LbDaemon::wait_ready)
        .unwrap_or_else(|e| {
            panic!(
                "{test}: lb run on director 2: {e:#}\n----- lb on director 1 -----\n{}",
                lb1.log()
            )
        });
        let pair = Self {
            test,
            port: spec.port,
            keepalived,
            instances,
            stopped_logs: [String::new(), String::new()],
            lbs: [lb1, lb2],
            configs,
            servers,
            scratch,
            bed,
        };
        for i in DIRECTORS {
            if let Err(e) = pair.lbs[i].wait_all_up(ALL_UP_TIMEOUT) {
                pair.fail(&format!("director {}: {e:#}", i + 1));
            }
        }
        pair
    }

    /// The test's name.
    pub fn test(&self) -> &'static str {
        self.test
    }

    /// Panics with `msg`, everything both `lb`s and both keepalived
    /// printed, and who holds the VIP.
    pub fn fail(&self, msg: &str) -> ! {
        let mut s = String::new();
        for i in DIRECTORS {
            let _ = write!(
                s,
                "\n----- lb on director {} -----\n{}",
                i + 1,
                self.lbs[i].log()
            );
        }
        for i in DIRECTORS {
            if !self.stopped_logs[i].is_empty() {
                let _ = write!(
                    s,
                    "\n----- keepalived on director {}, stopped earlier -----\n{}",
                    i + 1,
                    self.stopped_logs[i]
                );
            }
        }
        let _ = write!(s, "{}", keepalived_logs(&self.keepalived));
        for i in DIRECTORS {
            let holds =
                keepalived::holds_address(&self.director(i).ns, DIRECTOR_IFACE, VIP4.into());
            let _ = write!(s, "\ndirector {} holds the VIP: {holds:?}", i + 1);
        }
        panic!("{}: {msg}{s}", self.test)
    }

    /// Director `i`'s host (0: `director`, 1: `director2`).
    pub fn director(&self, i: usize) -> &Host {
        [self.bed.director(), director2(&self.bed)][i]
    }

    /// `lb run` on director `i`.
    pub fn lb(&self, i: usize) -> &LbDaemon {
        &self.lbs[i]
    }

    /// `lb stats --json` of director `i`, failing the test if it fails.
    pub fn stats(&self, i: usize) -> Stats {
        self.lbs[i]
            .stats()
            .unwrap_or_else(|e| self.fail(&format!("lb stats on director {}: {e:#}", i + 1)))
    }

    /// The `sync` object of director `i`'s stats, failing the test if
    /// there is none.
    pub fn sync_stats(&self, i: usize) -> SyncStats {
        self.stats(i)
            .sync()
            .unwrap_or_else(|e| self.fail(&format!("director {}: {e:#}", i + 1)))
            .clone()
    }

    /// Polls director `i`'s sync stats until `ready` accepts them, at most
    /// `timeout`; returns them and how long it took, or fails the test
    /// with the last ones (`what` says what was waited for).
    pub fn wait_sync(
        &self,
        i: usize,
        what: &str,
        timeout: Duration,
        ready: impl Fn(&SyncStats) -> bool,
    ) -> (SyncStats, Duration) {
        let start = Instant::now();
        loop {
            let sync = self.sync_stats(i);
            if ready(&sync) {
                return (sync, start.elapsed());
            }
            if start.elapsed() > timeout {
                self.fail(&format!(
                    "director {}: {what}: not within {timeout:?}; its sync stats: {sync:#?}",
                    i + 1
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops director `i`'s keepalived (SIGTERM to its pid, as `systemctl
    /// stop` does).
    pub fn stop_vrrp(&mut self, i: usize) {
        if let Some(mut k) = self.keepalived[i].take() {
            let log = k
                .stop()
                .unwrap_or_else(|e| self.fail(&format!("stopping keepalived {}: {e:#}", i + 1)));
            self.stopped_logs[i].push_str(&log);
        }
    }

    /// Starts director `i`'s keepalived again, with its config.
    pub fn start_vrrp(&mut self, i: usize) {
        assert!(
            self.keepalived[i].is_none(),
            "{}: keepalived {} already runs",
            self.test,
            i + 1
        );
        let started = Keepalived::start(
            &self.director(i).ns,
            self.scratch.path(),
            &format!("keepalived{}", i + 1),
            &self.instances[i],
        )
        .unwrap_or_else(|e| self.fail(&format!("starting keepalived {}: {e:#}", i + 1)));
        self.keepalived[i] = Some(started);
    }

    /// Sets director `i`'s NIC up or down (`ip link set lbd0 up|down` in
    /// its namespace), as a cut cable or a failed switch port.
    pub fn set_link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        self.director(i)
            .ns
            .ip(&["link", "set", DIRECTOR_IFACE, state])
            .unwrap_or_else(|e| self.fail(&format!("director {}: link {state}: {e:#}", i + 1)));
    }

    /// Waits until director `i` holds the VIP and the other does not, at
    /// most `timeout`; returns how long it took.
    pub fn wait_master(&self, i: usize, timeout: Duration) -> Duration {
        let expect = [
            (&self.director(i).ns, true),
            (&self.director(1 - i).ns, false),
        ];
        keepalived::wait_address(&expect, DIRECTOR_IFACE, VIP4.into(), timeout)
            .unwrap_or_else(|e| self.fail(&format!("VRRP: {e:#}")))
    }

    /// Opens `n` TCP connections from the client to the VIP on the spec's
    /// port, failing the test if any fails.
    pub fn open(&self, n: usize) -> Vec<HeldConn> {
        client::open_tcp(&self.bed.client().ns, self.target(), n)
            .unwrap_or_else(|e| self.fail(&format!("opening {n} TCP connections: {e:#}")))
    }

    /// The service's address: the VIP on the spec's port.
    pub fn target(&self) -> SocketAddr {
        SocketAddr::new(VIP4.into(), self.port)
    }

    /// Pings every held connection: each must still be answered by the
    /// server it was opened to. `when` says when, for the failure.
    pub fn ping_all<'a>(&self, conns: impl IntoIterator<Item = &'a mut HeldConn>, when: &str) {
        client::ping_all(conns).unwrap_or_else(|e| self.fail(&format!("{when}: {e:#}")));
    }

    /// `lb conns --json` of director `i`.
    pub fn conns(&self, i: usize) -> Conns {
        let pins = self.lbs[i].pin_path().display().to_string();
        Conns::query(self.lbs[i].binary(), &["--pin-path", &pins])
            .unwrap_or_else(|e| self.fail(&format!("lb conns on director {}: {e:#}", i + 1)))
    }

    /// The held connections director `i`'s connection table does not map
    /// to the real server that answered them: (client address, expected
    /// server, what the table says).
    pub fn flows_not_matching<'a>(
        &self,
        i: usize,
        conns: impl IntoIterator<Item = &'a HeldConn>,
    ) -> Vec<(SocketAddr, String, Option<IpAddr>)> {
        let table: BTreeMap<SocketAddr, Option<IpAddr>> = self
            .conns(i)
            .connections
            .iter()
            .map(|c| (c.client_addr(), c.real_server))
            .collect();
        conns
            .into_iter()
            .filter_map(|conn| {
                let client = conn
                    .local_addr()
                    .unwrap_or_else(|e| self.fail(&format!("a held connection: {e:#}")));
                let expected = self.address_of(conn.server());
                let found = table.get(&client).copied().flatten();
                (found != Some(expected)).then(|| (client, conn.server().to_owned(), found))
            })
            .collect()
    }

    /// Waits until director `i`'s connection table maps every connection of
    /// `conns` to the real server that answered it, at most `timeout`;
    /// returns how long it took, or fails the test (`when` says when).
    pub fn wait_flows_known(
        &self,
        i: usize,
        conns: &[&HeldConn],
        when: &str,
        timeout: Duration,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let missing = self.flows_not_matching(i, conns.iter().copied());
            if missing.is_empty() {
                return start.elapsed();
            }
            if start.elapsed() > timeout {
                self.fail(&format!(
                    "{when}: director {}'s connection table does not map {} of {} connections \
                     to their real servers after {timeout:?} (client, server, table): {missing:?}",
                    i + 1,
                    missing.len(),
                    conns.len()
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The IPv4 address of real server `name` (named after its role).
    pub fn address_of(&self, name: &str) -> IpAddr {
        self.bed
            .real_servers()
            .iter()
            .find(|h| h.role == name)
            .map(|h| IpAddr::V4(h.ipv4))
            .unwrap_or_else(|| self.fail(&format!("no real server {name}")))
    }

    /// Fails the test unless every backend of every service is up on
    /// director `i`; `when` says when.
    pub fn assert_all_up(&self, i: usize, when: &str) {
        let stats = self.stats(i);
        let not_up = stats.backends_not_up();
        if !not_up.is_empty() {
            self.fail(&format!(
                "{when}: backends not up on director {}: {not_up:#?}",
                i + 1
            ));
        }
    }

    /// Waits until every backend is up on director `i`, at most `timeout`.
    pub fn wait_all_up(&self, i: usize, timeout: Duration) {
        if let Err(e) = self.lbs[i].wait_all_up(timeout) {
            self.fail(&format!("director {}: {e:#}", i + 1));
        }
    }

    /// Sends `payload` in one UDP datagram from director `from`'s address
    /// (an ephemeral port) to director `to`'s sync port: a message on the
    /// wire as a peer (or an attacker on the segment) sends it.
    pub fn send_to_sync_port(&self, from: usize, to: usize, payload: &[u8]) {
        let source = SocketAddr::new(self.director(from).ipv4.into(), 0);
        let target = SocketAddr::new(self.director(to).ipv4.into(), self.sync_port());
        let datagram = payload.to_vec();
        self.director(from)
            .ns
            .run(move || {
                let socket = std::net::UdpSocket::bind(source)?;
                socket.send_to(&datagram, target)?;
                Ok(())
            })
            .unwrap_or_else(|e| self.fail(&format!("sending to {target}: {e:#}")));
    }

    /// The UDP port sync messages go to.
    pub fn sync_port(&self) -> u16 {
        self.configs[0]
            .sync
            .as_ref()
            .map_or(SyncConfig::DEFAULT_PORT, SyncConfig::port)
    }

    /// Stops both keepalived, then both `lb`s with SIGTERM, asserting each
    /// exits 0 and removes its pins; then removes everything else.
    pub fn finish(mut self) {
        for i in DIRECTORS {
            if let Some(mut k) = self.keepalived[i].take() {
                let _ = k.stop();
            }
        }
        let Self {
            test,
            lbs,
            servers,
            scratch,
            bed,
            ..
        } = self;
        for (i, lb) in lbs.into_iter().enumerate() {
            let pins = lb.pin_path().to_owned();
            let (status, log) = lb
                .stop()
                .unwrap_or_else(|e| panic!("{test}: stopping lb on director {}: {e:#}", i + 1));
            assert!(
                status.success(),
                "{test}: lb on director {} exited with {status} after SIGTERM; its output:\n{log}",
                i + 1
            );
            assert!(
                !pins.exists(),
                "{test}: lb on director {} left its pin directory {} behind; its output:\n{log}",
                i + 1,
                pins.display()
            );
        }
        drop(servers);
        drop(scratch);
        drop(bed);
    }
}

/// The pair bed's second director.
fn director2(bed: &TestBed) -> &Host {
    bed.director2().expect("a pair bed has a second director")
}

/// Both keepalived's output, for a failure.
fn keepalived_logs(keepalived: &[Option<Keepalived>; 2]) -> String {
    let mut s = String::new();
    for (i, k) in keepalived.iter().enumerate() {
        match k {
            Some(k) => {
                let _ = write!(
                    s,
                    "\n----- keepalived on director {} ({}) -----\n{}",
                    i + 1,
                    k.conf().display(),
                    k.log()
                );
            }
            None => {
                let _ = write!(s, "\n----- keepalived on director {}: stopped -----", i + 1);
            }
        }
    }
    s
}

/// A fresh random sync key: 32 bytes from /dev/urandom, as 64 hex digits.
fn random_key() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The UDP payload of `frame` (an untagged Ethernet frame) if it is an
/// IPv4 UDP datagram from `source` to `target`:`port` (unfragmented).
pub fn udp_payload(frame: &[u8], source: Ipv4Addr, target: Ipv4Addr, port: u16) -> Option<&[u8]> {
    const ETH: usize = 14;
    if frame.len() < ETH + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[ETH..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
    if ip[0] >> 4 != 4 || ip[9] != 17 || fragment != 0 || total > ip.len() || total < ihl + 8 {
        return None;
    }
    if ip[12..16] != source.octets() || ip[16..20] != target.octets() {
        return None;
    }
    let udp = &ip[ihl..total];
    let length = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if u16::from_be_bytes([udp[2], udp[3]]) != port || length < 8 || length > udp.len() {
        return None;
    }
    Some(&udp[8..length])
}
