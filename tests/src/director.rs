//! A running director for the end-to-end tests: a [`TestBed`], its real
//! servers and `lb run`, with every backend up, and the checks most tests
//! share. Every failure panics with the test's name, what failed and
//! everything `lb` printed.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use crate::{
    LbConfig, LbDaemon, NetNs, RealServer, ServiceConfig, Stats, TestBed,
    bed::Layout,
    client::{self, HeldConn},
    cmd::Finished,
    lb_binary, unique_tag,
};

/// How long the backends may take to come up after `lb run` is ready.
const ALL_UP_TIMEOUT: Duration = Duration::from_secs(15);

/// What [`Director::start`] builds.
#[derive(Clone, Copy, Debug)]
pub struct Spec<'a> {
    /// Number of real servers (`rs1`..).
    pub real_servers: usize,
    /// The port of every real server's TCP server, and of [`Director::open`].
    pub port: u16,
    /// The addresses every real server answers UDP on.
    pub udp: &'a [SocketAddr],
    /// Extra arguments of `lb run`.
    pub lb_args: &'a [&'a str],
}

impl Spec<'static> {
    /// `real_servers` real servers with a TCP server on `port`, no UDP and
    /// no extra `lb run` arguments.
    pub const fn tcp(real_servers: usize, port: u16) -> Self {
        Self {
            real_servers,
            port,
            udp: &[],
            lb_args: &[],
        }
    }
}

/// A bed with running real servers and `lb run` on the director.
///
/// Field order is drop order: lb stops first, then what the test added
/// (`extra`), then the real servers; the namespaces go last.
pub struct Director<X = ()> {
    test: &'static str,
    port: u16,
    /// The config `lb run` was started with.
    pub config: LbConfig,
    /// `lb run` on the director.
    pub lb: LbDaemon,
    /// What the test started before lb (see [`Director::start_with`]).
    pub extra: X,
    /// The real servers, `rs1` first.
    pub servers: Vec<RealServer>,
    /// The test bed.
    pub bed: TestBed,
}

impl Director {
    /// Builds the bed, starts the real servers and `lb` with the services
    /// `services` returns, and waits until every backend is up.
    pub fn start(
        test: &'static str,
        spec: Spec<'_>,
        services: impl FnOnce(&TestBed) -> Vec<ServiceConfig>,
    ) -> Self {
        Self::start_with(test, spec, |bed| ((), services(bed)))
    }

    /// Like [`Director::start`], on the dual-homed bed
    /// ([`Layout::DualHomed`]): `lb` attaches to both director NICs.
    pub fn start_dual_homed(
        test: &'static str,
        spec: Spec<'_>,
        services: impl FnOnce(&TestBed) -> Vec<ServiceConfig>,
    ) -> Self {
        Self::launch(
            test,
            Layout::DualHomed,
            spec,
            |bed| ((), services(bed)),
            |_| {},
            launch_ready,
        )
    }
}

impl Director {
    /// Like [`Director::start`], but `lb run` starts where no bpffs is
    /// mounted at `/sys/fs/bpf` (see [`LbDaemon::launch_without_bpffs`]);
    /// `spec.lb_args` must be empty.
    pub fn start_without_bpffs(
        test: &'static str,
        spec: Spec<'_>,
        services: impl FnOnce(&TestBed) -> Vec<ServiceConfig>,
    ) -> Self {
        assert!(spec.lb_args.is_empty(), "{test}: no lb_args without bpffs");
        Self::launch(
            test,
            Layout::OneSegment,
            spec,
            |bed| ((), services(bed)),
            |_| {},
            |lb, ns, config, tag, _| {
                LbDaemon::launch_without_bpffs(lb, ns, config, tag)?.wait_ready()
            },
        )
    }
}

impl Director {
    /// Like [`Director::start`], but `lb run` may open at most `open_files`
    /// files (see [`LbDaemon::launch_with_open_files`]).
    pub fn start_with_open_files(
        test: &'static str,
        spec: Spec<'_>,
        open_files: u64,
        services: impl FnOnce(&TestBed) -> Vec<ServiceConfig>,
    ) -> Self {
        Self::launch(
            test,
            Layout::OneSegment,
            spec,
            |bed| ((), services(bed)),
            |_| {},
            |lb, ns, config, tag, args| {
                LbDaemon::launch_with_open_files(lb, ns, config, tag, open_files, args)?
                    .wait_ready()
            },
        )
    }
}

impl Director {
    /// Like [`Director::start`], with `configure` changing lb's config
    /// from the bed's defaults (see [`TestBed::lb_config`]) first: table
    /// sizes, the sweep interval, timeouts.
    pub fn start_configured(
        test: &'static str,
        spec: Spec<'_>,
        configure: impl FnOnce(&mut LbConfig),
        services: impl FnOnce(&TestBed) -> Vec<ServiceConfig>,
    ) -> Self {
        Self::launch(
            test,
            Layout::OneSegment,
            spec,
            |bed| ((), services(bed)),
            configure,
            launch_ready,
        )
    }
}

impl Director {
    /// Like [`Director::start`], with the client behind a router on a link
    /// of MTU `client_mtu` (see [`TestBed::build_behind_router`]).
    pub fn start_behind_router(
        test: &'static str,
        spec: Spec<'_>,
        client_mtu: u32,
        services: impl FnOnce(&TestBed) -> Vec<ServiceConfig>,
    ) -> Self {
        Self::launch(
            test,
            Layout::BehindRouter { client_mtu },
            spec,
            |bed| ((), services(bed)),
            |_| {},
            launch_ready,
        )
    }
}

impl<X> Director<X> {
    /// Like [`Director::start`], but `prepare` also starts what the test
    /// needs besides the real servers before lb starts (kept as `extra`).
    pub fn start_with(
        test: &'static str,
        spec: Spec<'_>,
        prepare: impl FnOnce(&TestBed) -> (X, Vec<ServiceConfig>),
    ) -> Self {
        Self::launch(
            test,
            Layout::OneSegment,
            spec,
            prepare,
            |_| {},
            launch_ready,
        )
    }

    /// Builds the bed of `layout` and starts the real servers, then `lb
    /// run` through `start_lb` with the bed's config as `configure` changed
    /// it, and waits until every backend is up.
    fn launch(
        test: &'static str,
        layout: Layout,
        spec: Spec<'_>,
        prepare: impl FnOnce(&TestBed) -> (X, Vec<ServiceConfig>),
        configure: impl FnOnce(&mut LbConfig),
        start_lb: impl FnOnce(&Path, &NetNs, &LbConfig, &str, &[&str]) -> anyhow::Result<LbDaemon>,
    ) -> Self {
        let tag = unique_tag();
        let bed = TestBed::build_as(layout, &tag, spec.real_servers)
            .unwrap_or_else(|e| panic!("{test}: building the test bed: {e:#}"));
        let servers = bed
            .start_servers(spec.port, spec.udp)
            .unwrap_or_else(|e| panic!("{test}: {e:#}"));
        let (extra, services) = prepare(&bed);
        let mut config = bed.lb_config(services);
        configure(&mut config);
        let lb_bin = lb_binary().unwrap_or_else(|e| panic!("{test}: {e:#}"));
        let lb = start_lb(&lb_bin, &bed.director().ns, &config, &tag, spec.lb_args)
            .unwrap_or_else(|e| panic!("{test}: lb run: {e:#}"));
        let director = Self {
            test,
            port: spec.port,
            config,
            lb,
            extra,
            servers,
            bed,
        };
        director
            .lb
            .wait_all_up(ALL_UP_TIMEOUT)
            .unwrap_or_else(|e| director.fail(&format!("{e:#}")));
        director
    }

    /// The test's name.
    pub fn test(&self) -> &'static str {
        self.test
    }

    /// Panics with `msg` and everything lb printed.
    pub fn fail(&self, msg: &str) -> ! {
        panic!(
            "{}: {msg}\n----- lb output -----\n{}",
            self.test,
            self.lb.log()
        )
    }

    /// Writes `self.config` over lb's config file and runs `lb reload`;
    /// fails the test unless the reload succeeds.
    pub fn reload(&self) -> Finished {
        let dir = self
            .lb
            .config_path()
            .parent()
            .expect("the config has a directory");
        self.config
            .write(dir)
            .unwrap_or_else(|e| self.fail(&format!("rewriting the config: {e:#}")));
        let out = self
            .lb
            .ctl(&["reload"])
            .unwrap_or_else(|e| self.fail(&format!("lb reload: {e:#}")));
        if !out.success {
            self.fail(&format!("`{}` failed:\n{}", out.command, out.stderr));
        }
        out
    }

    /// `lb stats --json`, failing the test if it fails.
    pub fn stats(&self) -> Stats {
        self.lb
            .stats()
            .unwrap_or_else(|e| self.fail(&format!("lb stats: {e:#}")))
    }

    /// Fails the test unless every backend of every service is up; `when`
    /// says when, for the failure.
    pub fn assert_all_up(&self, when: &str) {
        let stats = self.stats();
        let not_up = stats.backends_not_up();
        if !not_up.is_empty() {
            self.fail(&format!("{when}: backends not up: {not_up:#?}"));
        }
    }

    /// Fails the test unless each real server got its weighted share of
    /// `total` within `tolerance` (a fraction): `counts` by server name,
    /// the i-th server weighted `weights[i]`. `what` names the traffic.
    pub fn assert_weighted(
        &self,
        what: &str,
        counts: &BTreeMap<String, usize>,
        total: usize,
        weights: &[u32],
        tolerance: f64,
    ) {
        let sum: u32 = weights.iter().sum();
        let got: usize = counts.values().sum();
        if got != total {
            self.fail(&format!(
                "{what}: {got} answers for {total} tries: {counts:?}"
            ));
        }
        for (server, &weight) in self.servers.iter().zip(weights) {
            let share = total as f64 * f64::from(weight) / f64::from(sum);
            let n = counts.get(server.name()).copied().unwrap_or(0);
            if (n as f64 - share).abs() > tolerance * share {
                self.fail(&format!(
                    "{what}: {} (weight {weight}) got {n}, expected {share:.1} ± {:.0} %; all: \
                     {counts:?}",
                    server.name(),
                    tolerance * 100.0
                ));
            }
        }
    }

    /// Fails the test unless `lb stats` agrees (within 3 s) with the
    /// `counts` of TCP connections per real server name the client holds
    /// to `vip`:`port`, `n` in all: as many scheduled to each backend, and
    /// as many active.
    pub fn assert_held_conns_counted(
        &self,
        vip: IpAddr,
        port: u16,
        counts: &BTreeMap<String, usize>,
        n: usize,
    ) {
        let expected = self.by_address(counts, vip);
        let (stats, agrees) = self
            .lb
            .wait_stats(Duration::from_secs(3), |s| {
                s.service(vip, port).is_some_and(|svc| {
                    svc.conns == n as u64
                        && svc.backends.iter().all(|b| {
                            let k = expected.get(&b.address).copied().unwrap_or(0);
                            b.active_conns == k && b.conns == k
                        })
                })
            })
            .unwrap_or_else(|e| self.fail(&format!("lb stats: {e:#}")));
        if !agrees {
            self.fail(&format!(
                "lb stats disagree with the client (expected per backend: {expected:?} \
                 active and new conns, {n} service conns): {:#?}",
                stats.service(vip, port)
            ));
        }
    }

    /// Adds `n` more IPv4 addresses to the client's NIC, 192.0.2.100 and
    /// up (beside the bed's client address), for clients of their own;
    /// returns them.
    pub fn add_client_addresses(&self, n: u8) -> Vec<IpAddr> {
        let client = self.bed.client();
        (0..n)
            .map(|i| {
                let address = IpAddr::from([192, 0, 2, 100 + i]);
                client
                    .ns
                    .ip(&[
                        "addr",
                        "add",
                        &format!("{address}/24"),
                        "dev",
                        &client.iface,
                    ])
                    .unwrap_or_else(|e| self.fail(&format!("adding a client address: {e:#}")));
                address
            })
            .collect()
    }

    /// Opens `n` TCP connections from the client to `vip` on the spec's
    /// port, failing the test if any fails.
    pub fn open(&self, vip: IpAddr, n: usize) -> Vec<HeldConn> {
        client::open_tcp(&self.bed.client().ns, SocketAddr::new(vip, self.port), n)
            .unwrap_or_else(|e| self.fail(&format!("opening {n} TCP connections: {e:#}")))
    }

    /// Pings every held connection: each must still be answered by the
    /// server it was opened to. `when` says when, for the failure.
    pub fn ping_all<'a>(&self, conns: impl IntoIterator<Item = &'a mut HeldConn>, when: &str) {
        client::ping_all(conns).unwrap_or_else(|e| self.fail(&format!("{when}: {e:#}")));
    }

    /// The address of real server `role` in `like`'s family.
    pub fn address_of(&self, role: &str, like: IpAddr) -> IpAddr {
        self.bed
            .real_servers()
            .iter()
            .find(|h| h.role == role)
            .unwrap_or_else(|| self.fail(&format!("no real server {role}")))
            .addr_like(like)
    }

    /// Counts per real server name -> per real server address in `like`'s
    /// family.
    pub fn by_address(
        &self,
        counts: &BTreeMap<String, usize>,
        like: IpAddr,
    ) -> BTreeMap<IpAddr, u64> {
        counts
            .iter()
            .map(|(role, &n)| (self.address_of(role, like), n as u64))
            .collect()
    }

    /// Stops lb with SIGTERM and asserts it exits 0 and removes its pins;
    /// then removes everything else.
    pub fn finish(self) {
        let Self {
            test,
            lb,
            extra,
            servers,
            bed,
            ..
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
        drop(extra);
        drop(servers);
        drop(bed);
    }
}

/// `lb run` with the bed's config, waited for until ready: how most beds
/// start lb.
fn launch_ready(
    lb: &Path,
    ns: &NetNs,
    config: &LbConfig,
    tag: &str,
    args: &[&str],
) -> anyhow::Result<LbDaemon> {
    LbDaemon::launch(lb, ns, config, tag, args)?.wait_ready()
}
