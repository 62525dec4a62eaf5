//! `lb run`: bring the data path up on the director's NICs (or adopt the one
//! a previous `lb` left pinned), keep its maps in step with the config,
//! health checks, live changes and the neighbour table, sweep the connection
//! table, and answer the control socket until told to stop.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::{Context as _, bail};
use lb_common::{NicFilter, Service, conn_state::Timeouts};
use tokio::{
    net::TcpListener,
    signal::unix::{Signal, SignalKind, signal},
    sync::mpsc,
    task::AbortHandle,
    time,
};
use tracing::{debug, error, info, warn};

use crate::{
    announce::Announcer,
    config::{
        BPFFS_ROOT, Config, HealthConfig, HealthKind, ServiceConfig, SyncConfig, SyncOverrides,
        SyncPeers, XdpMode,
        values::{format_mac, vlan_suffix},
    },
    control::{ControlSocket, Incoming, Reply, Request},
    datapath::{
        Datapath,
        maps::{FlowCapacity, Maps},
        pins::ensure_bpffs,
    },
    director::{Change, Director, ServiceRuntime},
    health::{
        command::notify,
        probe::{CheckResult, HealthChecker},
    },
    host::{Nic, ethtool, netlink::Netlink, privilege},
    inspect::{ServiceNames, metrics, stats::Snapshot},
    sweeper,
    sync::{self, Directory, FlowSync},
};

/// How often the neighbour table is re-read for backend MACs.
const NEIGHBOUR_REFRESH: Duration = Duration::from_secs(1);
/// How long start-up waits for the kernel to resolve backend MACs.
const RESOLVE_WAIT: Duration = Duration::from_secs(3);

/// What `lb run` was asked to do.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The config file (re-read on reload).
    pub config_path: PathBuf,
    /// `--xdp-mode`, overriding `[director] xdp_mode`.
    pub xdp_mode: Option<XdpMode>,
    /// `--metrics-listen`, overriding `[director] metrics_listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// The `--sync-*` flags, overriding `[sync]`.
    pub sync: SyncOverrides,
}

/// Runs the director until SIGINT, SIGTERM or `lb stop`.
pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    privilege::ensure_bpf("lb run")?;
    // Before anything slow (netlink, loading, waiting for MACs): a SIGHUP or
    // SIGTERM that arrives during start-up is handled once lb is ready, not
    // by the default action, which would kill lb half-way.
    let signals = Signals::install()?;
    info!("starting with {}", options.config_path.display());
    match privilege::raise_open_files_limit() {
        Ok(limit) => debug!("open files limit: {limit}"),
        Err(e) => warn!("raising the open files limit: {e}"),
    }
    let mut config = Config::load(&options.config_path)?;
    config.sync = options.sync.apply(config.sync)?;
    let mode = options.xdp_mode.unwrap_or(config.director.xdp_mode);
    let netlink = Netlink::open()?;
    let nics = director_nics(&netlink, &config).await?;
    let ports = nic_ports(&netlink, &nics).await?;
    let links = backend_links(&netlink, &config, &nics).await?;
    let control = ControlSocket::bind(&config.director.control_socket)?;
    let metrics_listen = options.metrics_listen.or(config.director.metrics_listen);
    let metrics = match metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
            format!("listening for metrics on {addr} (is the port in use? valid: ADDR:PORT)")
        })?),
        None => None,
    };

    if ensure_bpffs(Path::new(BPFFS_ROOT))? {
        info!("mounted bpffs at {BPFFS_ROOT}: none was mounted there");
    }
    let pin_path = config.director.pin_path.clone();
    let adopted = Datapath::is_pinned(&pin_path);
    let mut datapath = if adopted {
        Datapath::adopt(&pin_path)?
    } else {
        let capacity = FlowCapacity::with_pending_tables(
            config.director.max_flows,
            config.director.max_flows_v6,
        );
        Datapath::load(capacity, Some(&pin_path))?
    };
    let names = Arc::new(RwLock::new(ServiceNames::from_config(Some(&config))));
    let mut daemon = Daemon {
        config_path: options.config_path,
        sync_overrides: options.sync,
        config,
        netlink,
        nics,
        ports,
        mode,
        director: Director::new(),
        names,
        check_sources: links.check_sources,
        checks: HashMap::new(),
        unwritten: Vec::new(),
        errors: 0,
        table_pressure: [false; 2],
        next_generation: 0,
        results: mpsc::channel(1024),
        sync: None,
        announcer: None,
    };
    let started = daemon
        .start(&mut datapath, adopted, &links.nics)
        .await
        .map(|()| control);
    let serving = started.is_ok();
    let outcome = match started {
        Ok(control) => daemon.serve(&mut datapath, control, metrics, signals).await,
        Err(e) if adopted => {
            // The adopted data path keeps forwarding as it was.
            return Err(e.context(format!(
                "left the adopted data path at {} running as it was",
                pin_path.display()
            )));
        }
        Err(e) => Err(e),
    };
    daemon.checks.clear();
    match outcome {
        Ok(Stop::KeepDatapath) => {
            info!(
                "stopped; the data path stays attached to {} with its maps pinned at {}: \
                 `lb run` adopts it, `lb detach` removes it",
                datapath.attached().collect::<Vec<_>>().join(", "),
                pin_path.display()
            );
            Ok(())
        }
        Ok(Stop::Detach) => {
            let ifaces = datapath.attached().collect::<Vec<_>>().join(", ");
            datapath.detach_all()?;
            datapath.unpin()?;
            info!("detached from {ifaces}; pins removed");
            Ok(())
        }
        // Start-up failed on a data path this lb loaded: nothing forwarded
        // through it yet, so nothing is left behind.
        Err(e) if !serving => {
            let _ = datapath.detach_all();
            let _ = datapath.unpin();
            Err(e)
        }
        // Only an explicit stop detaches a running data path: it keeps
        // forwarding every flow for the next `lb run` to adopt.
        Err(e) => Err(e.context(format!(
            "lb stopped on an error; the data path stays attached with its maps pinned at {} \
             (`lb run` adopts it, `lb detach` removes it)",
            pin_path.display()
        ))),
    }
}

/// Looks up the configured director NICs.
async fn director_nics(netlink: &Netlink, config: &Config) -> anyhow::Result<Vec<Nic>> {
    let mut nics = Vec::new();
    for name in &config.director.interfaces {
        nics.push(netlink.nic(name).await?);
    }
    Ok(nics)
}

/// The ports (bond slaves) of each director NIC, by the NIC's index.
async fn nic_ports(netlink: &Netlink, nics: &[Nic]) -> anyhow::Result<HashMap<u32, Vec<Nic>>> {
    let mut ports = HashMap::new();
    for nic in nics {
        ports.insert(nic.index, netlink.ports(nic.index).await?);
    }
    Ok(ports)
}

/// Where the director reaches its backends (see [`backend_links`]).
struct BackendLinks {
    /// The director NIC of every backend.
    nics: HashMap<IpAddr, Nic>,
    /// The source address of every backend's health checks, where the
    /// director has an address of its own in the backend's prefix.
    check_sources: HashMap<IpAddr, IpAddr>,
}

/// Finds the director NIC of every backend and sorry server, checking that each is on-link
/// (direct routing rewrites only MAC addresses, so a real server must share
/// an L2 segment with the director), and the source of its health checks.
async fn backend_links(
    netlink: &Netlink,
    config: &Config,
    nics: &[Nic],
) -> anyhow::Result<BackendLinks> {
    let vips = vips(config);
    let mut links = BackendLinks {
        nics: HashMap::new(),
        check_sources: HashMap::new(),
    };
    for service in &config.services {
        for address in service.servers() {
            let (nic, source) = on_link(
                netlink,
                nics,
                &config.director.interfaces,
                &vips,
                service,
                address,
            )
            .await?;
            links.nics.insert(address, nic);
            if let Some(source) = source {
                links.check_sources.insert(address, source);
            }
        }
    }
    Ok(links)
}

/// Every VIP of the config: never the source of a health check.
fn vips(config: &Config) -> HashSet<IpAddr> {
    config.services.iter().map(|s| s.vip).collect()
}

/// The interface a backend of `service` is on-link through (a director
/// NIC, its bond, or a VLAN device stacked on either), and the director's
/// own address in its prefix there; fails when no director NIC reaches it.
/// Warns when that interface is not on the service's VLAN.
async fn on_link(
    netlink: &Netlink,
    nics: &[Nic],
    interfaces: &[String],
    vips: &HashSet<IpAddr>,
    service: &ServiceConfig,
    address: IpAddr,
) -> anyhow::Result<(Nic, Option<IpAddr>)> {
    let name = &service.name;
    let Some(link) = netlink.on_link(nics, address, vips, &service.vlan).await? else {
        bail!(
            "service {name}: backend {address} is not on-link through any director interface \
             ({}), the bond one is enslaved to or a VLAN device on either: direct routing needs \
             the real servers on the director's own L2 network (give the interface an address \
             in the backend's subnet)",
            interfaces.join(", ")
        );
    };
    if link.vlan != service.vlan {
        let on = |ids: &[u16]| match vlan_suffix(lb_common::vlan_path(ids)) {
            suffix if suffix.is_empty() => "untagged".to_owned(),
            suffix => suffix.trim_start().to_owned(),
        };
        warn!(
            "service {name}: backend {address} is on-link through {} ({}), not through a device \
             of the service's VLAN ({}): lb resolves its MAC and checks its health there, and \
             forwards the service's frames to that MAC with their tags as they came",
            link.nic.name,
            on(&link.vlan),
            on(&service.vlan),
        );
    }
    Ok((link.nic, link.source))
}

/// The signals `lb run` handles, installed at the very start.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        let install =
            |kind: SignalKind| signal(kind).context("installing the signal handlers of lb run");
        Ok(Self {
            interrupt: install(SignalKind::interrupt())?,
            terminate: install(SignalKind::terminate())?,
            hangup: install(SignalKind::hangup())?,
        })
    }
}

/// How the daemon was stopped.
enum Stop {
    /// SIGINT, SIGTERM or `lb stop`: detach and remove the pins.
    Detach,
    /// `lb stop --keep-datapath`: leave the data path running.
    KeepDatapath,
}

/// Key of a health-check result: service id, slot and the generation of
/// the checker (results of a replaced checker are ignored).
type CheckKey = (u32, u32, u64);

/// A running health checker; aborted when dropped.
struct RunningCheck {
    address: IpAddr,
    source: Option<IpAddr>,
    health: HealthConfig,
    generation: u64,
    task: AbortHandle,
}

impl Drop for RunningCheck {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The sweeper, off the event loop: each sweep's table walk
/// ([`sweeper::collect`]) runs on a blocking thread with a map handle of
/// its own, one at a time; the event loop only corrects the counters by
/// what it tallied ([`sweeper::write_counts`]), so a table of a million
/// flows never stalls it.
struct Sweeps {
    /// The sweeper's map handle; `None` while a sweep runs.
    maps: Option<Maps>,
    /// When the next sweep may start (see [`sweeper::pause_after`]).
    not_before: time::Instant,
    /// Where a sweep sends its handle back, with its report and duration.
    finished: mpsc::Sender<SweepOutcome>,
    results: mpsc::Receiver<SweepOutcome>,
}

/// What a sweep sends back: the map handle, its report, how long it took.
type SweepOutcome = (Maps, anyhow::Result<sweeper::SweepReport>, Duration);

impl Sweeps {
    fn new(maps: Maps) -> Self {
        let (finished, results) = mpsc::channel(1);
        Self {
            maps: Some(maps),
            not_before: time::Instant::now(),
            finished,
            results,
        }
    }

    /// Starts a sweep of `services` unless one runs or the last one's
    /// pause ([`sweeper::pause_after`]) has not passed.
    fn start(&mut self, services: Vec<Service>, timeouts: Timeouts) {
        if time::Instant::now() < self.not_before {
            debug!("sweep skipped: the last one's pause has not passed");
            return;
        }
        let Some(mut maps) = self.maps.take() else {
            debug!("sweep skipped: the last one still runs");
            return;
        };
        let finished = self.finished.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let report = sweeper::collect(&mut maps, &services, &timeouts);
            let _ = finished.blocking_send((maps, report, started.elapsed()));
        });
    }

    /// The report of the sweep that finishes next (cancel-safe).
    async fn finished(&mut self) -> anyhow::Result<sweeper::SweepReport> {
        let Some((maps, report, took)) = self.results.recv().await else {
            // The sender lives in self: never closed.
            return std::future::pending().await;
        };
        self.maps = Some(maps);
        let pause = sweeper::pause_after(took);
        self.not_before = time::Instant::now() + pause;
        if took > Duration::from_millis(100) {
            debug!("sweep took {took:?}; the next waits at least {pause:?}");
        }
        report
    }
}

/// The daemon's state.
struct Daemon {
    config_path: PathBuf,
    /// `lb run`'s `--sync-*` flags, applied to every config read.
    sync_overrides: SyncOverrides,
    config: Config,
    netlink: Netlink,
    nics: Vec<Nic>,
    /// The ports (bond slaves) of each NIC, by the NIC's index.
    ports: HashMap<u32, Vec<Nic>>,
    mode: XdpMode,
    director: Director,
    /// Service names of the running config, for the metrics endpoint.
    names: Arc<RwLock<ServiceNames>>,
    /// Source address of each backend's health checks (see [`BackendLinks`]).
    check_sources: HashMap<IpAddr, IpAddr>,
    /// Health checkers by (service id, slot).
    checks: HashMap<(u32, u32), RunningCheck>,
    /// Map writes that failed, to try again (see [`Daemon::write_or_retry`]).
    unwritten: Vec<Change>,
    /// Errors of the event loop so far (each logged; lb went on).
    errors: u64,
    /// Whether the last sweep found the IPv4 and the IPv6 connection table
    /// under pressure (logged when it changes).
    table_pressure: [bool; 2],
    next_generation: u64,
    results: (
        mpsc::Sender<CheckResult<CheckKey>>,
        mpsc::Receiver<CheckResult<CheckKey>>,
    ),
    /// Connection sync with other directors, when `[sync]` is configured.
    sync: Option<FlowSync>,
    /// The VIPs announced to the routers, when `[announce]` is configured.
    announcer: Option<Announcer>,
}

impl Daemon {
    /// Brings the maps in line with the config (after adopting what a
    /// previous `lb` left, if anything), resolves MACs and attaches.
    async fn start(
        &mut self,
        datapath: &mut Datapath,
        adopted: bool,
        backend_nics: &HashMap<IpAddr, Nic>,
    ) -> anyhow::Result<()> {
        self.register_nics(&mut datapath.maps)?;
        datapath
            .maps
            .set_flood_guard(self.config.director.syn_flood_rate)?;
        if adopted {
            let by_index = self.nics.iter().map(|n| (n.index, n.clone())).collect();
            let found = datapath.maps.installed_services()?;
            let (director, changes) = Director::adopt(found, &self.config, &by_index);
            self.director = director;
            write_changes(&mut datapath.maps, &mut self.director, &changes)?;
            let flows = datapath.maps.flow_count();
            info!(
                "adopted the data path pinned at {} ({flows} flow(s), attached to {})",
                self.config.director.pin_path.display(),
                datapath.attached().collect::<Vec<_>>().join(", ")
            );
        }
        let (changes, summary) = self.director.apply(&self.config, backend_nics)?;
        if adopted {
            info!("config applied to the adopted data path: {summary}");
        }
        resolve_macs(&self.netlink, &mut self.director).await?;
        write_changes(&mut datapath.maps, &mut self.director, &changes)?;
        self.attach(datapath)?;
        self.reconcile_checks();
        if let Some(config) = &self.config.sync {
            self.sync = Some(self.start_sync(config, datapath).await?);
        }
        if let Some(config) = &self.config.announce {
            self.announcer = Some(Announcer::start(config, self.netlink.clone()).await?);
            self.services_changed();
        }
        Ok(())
    }

    /// Tells connection sync and the announcer what the services and
    /// backends are now.
    fn services_changed(&self) {
        if let Some(sync) = &self.sync {
            sync.set_directory(Directory::of(&self.director));
        }
        if let Some(announcer) = &self.announcer {
            let usable = self
                .director
                .services
                .iter()
                .filter(|s| s.has_usable_backend())
                .map(|s| s.config.vip)
                .collect();
            announcer.announce(usable);
        }
    }

    /// Starts connection sync as `config` says: reads the key, finds the
    /// director's own address on the sync interface (never a VIP) and opens
    /// the socket.
    async fn start_sync(
        &self,
        config: &SyncConfig,
        datapath: &mut Datapath,
    ) -> anyhow::Result<FlowSync> {
        let key = sync::read_key(&config.key_file)?;
        let toward = match &config.peers {
            SyncPeers::Unicast(peers) => peers[0],
            SyncPeers::Multicast(group) => *group,
        };
        let (ifindex, source) = self
            .netlink
            .own_address(&config.interface, toward, &vips(&self.config))
            .await
            .context("[sync] interface")?;
        FlowSync::start(
            config,
            key,
            source,
            ifindex,
            &mut datapath.maps,
            &self.config.director.pin_path,
            Directory::of(&self.director),
        )
        .await
    }

    /// Registers every configured NIC in the maps, before the backends
    /// behind it are written: its MAC filter (accepting frames to its own
    /// MAC and the configured VRRP virtual MACs only; a bond's slaves, on
    /// whose queues its program runs, to the bond's) and its place among
    /// the redirect targets (frames other NICs receive for its backends).
    fn register_nics(&self, maps: &mut Maps) -> anyhow::Result<()> {
        for nic in &self.nics {
            let receivers = std::iter::once(nic).chain(self.ports_of(nic));
            for receiver in receivers {
                let filter = NicFilter::new(
                    &receiver.name,
                    receiver.index,
                    nic.mac,
                    &self.config.director.vrrp_vrids,
                );
                if let Some(other) = maps.set_nic_filter(&filter)? {
                    warn!(
                        "{} (ifindex {}) shares its MAC filter entry and counters with ifindex \
                         {other}, whose frames are no longer filtered by destination MAC",
                        receiver.name, receiver.index
                    );
                }
            }
            maps.set_tx_port(nic.index)?;
        }
        Ok(())
    }

    /// The ports (bond slaves) of `nic`: none for a NIC that is no bond.
    fn ports_of(&self, nic: &Nic) -> &[Nic] {
        self.ports
            .get(&nic.index)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Attaches to the configured NICs (registered by
    /// [`Daemon::register_nics`]) and detaches from any other, which it
    /// removes from the maps.
    fn attach(&self, datapath: &mut Datapath) -> anyhow::Result<()> {
        let stale: Vec<String> = datapath
            .attached()
            .filter(|i| !self.config.director.interfaces.iter().any(|c| c == i))
            .map(str::to_owned)
            .collect();
        for iface in stale {
            datapath.detach(&iface)?;
            datapath.maps.remove_nic(&iface)?;
            info!("detached from {iface} (no longer in the config)");
        }
        let mode = match self.mode {
            XdpMode::Driver => aya::programs::XdpMode::Driver,
            XdpMode::Skb => aya::programs::XdpMode::Skb,
        };
        let tagged = self.config.services.iter().any(|s| !s.vlan.is_empty());
        for nic in &self.nics {
            if tagged {
                // The ports receive a bond's frames; a plain NIC its own.
                let receivers = match self.ports_of(nic) {
                    [] => std::slice::from_ref(nic),
                    ports => ports,
                };
                receivers.iter().for_each(warn_if_tags_are_stripped);
            }
            datapath.attach(&nic.name, mode).with_context(|| {
                if self.mode == XdpMode::Driver {
                    format!(
                        "{} may not support native XDP: try `--xdp-mode skb` (generic XDP, slower)",
                        nic.name
                    )
                } else {
                    format!("attaching to {}", nic.name)
                }
            })?;
        }
        Ok(())
    }

    /// Starts, restarts or stops health checkers so that every live backend
    /// has exactly one, matching its service's health config.
    fn reconcile_checks(&mut self) {
        let mut wanted = HashMap::new();
        for s in &self.director.services {
            for (slot, b) in s.backends().filter(|(_, b)| !b.removed && !b.sorry) {
                wanted.insert((s.id, slot), (b.address, &s.config));
            }
        }
        let sources = &self.check_sources;
        let source_of = |service: &ServiceConfig, address: &IpAddr| {
            service
                .health
                .bind_to
                .or_else(|| sources.get(address).copied())
        };
        self.checks.retain(|key, check| {
            wanted.get(key).is_some_and(|(address, s)| {
                *address == check.address
                    && s.health == check.health
                    && source_of(s, address) == check.source
            })
        });
        for ((id, slot), (address, service)) in wanted {
            if self.checks.contains_key(&(id, slot)) {
                continue;
            }
            let source = source_of(service, &address);
            let Some(checker) = HealthChecker::new(service, address, source) else {
                continue;
            };
            let connects = matches!(service.health.kind, HealthKind::Tcp | HealthKind::Http(_));
            match source {
                Some(source) if connects => info!(
                    "service {}: health checks of {address} leave from {source}",
                    service.name
                ),
                None if connects => warn!(
                    "service {}: the director has no address of its own in the prefix of \
                     {address}; its health checks leave from whatever source the kernel picks",
                    service.name
                ),
                _ => {}
            }
            let generation = self.next_generation;
            self.next_generation += 1;
            let task = tokio::spawn(checker.run((id, slot, generation), self.results.0.clone()));
            self.checks.insert(
                (id, slot),
                RunningCheck {
                    address,
                    source,
                    health: service.health.clone(),
                    generation,
                    task: task.abort_handle(),
                },
            );
        }
    }

    /// The services a sweep recounts: every service in use.
    fn swept_services(&self) -> Vec<Service> {
        self.director
            .services
            .iter()
            .map(|s| s.config.service_value(s.id))
            .collect()
    }

    /// Logs a connection table coming under pressure (a flood, or
    /// `max_flows` too small) and leaving it.
    fn log_table_pressure(&mut self, pressure: [bool; 2]) {
        for (family, (was, is)) in ["IPv4", "IPv6"]
            .into_iter()
            .zip(self.table_pressure.into_iter().zip(pressure))
        {
            match (was, is) {
                (false, true) => warn!(
                    "the {family} connection table is at least {}% full: connections whose \
                     client never sent data now expire after the syn_recv timeout (a flood of \
                     fake handshakes, or max_flows too small; lb stats shows the tables)",
                    sweeper::PRESSURE_PERCENT
                ),
                (true, false) => info!("the {family} connection table has room again"),
                _ => {}
            }
        }
        self.table_pressure = pressure;
    }

    /// The event loop.
    async fn serve(
        &mut self,
        datapath: &mut Datapath,
        control: ControlSocket,
        metrics_listener: Option<TcpListener>,
        mut signals: Signals,
    ) -> anyhow::Result<Stop> {
        let (requests_tx, mut requests) = mpsc::channel::<Incoming>(16);
        let control_path = self.config.director.control_socket.clone();
        let control_task = tokio::spawn(control.serve(requests_tx));
        let metrics_task = metrics_listener.map(|listener| {
            let pin_path = self.config.director.pin_path.clone();
            let names = self.names.clone();
            let source: Arc<dyn Fn() -> anyhow::Result<Snapshot> + Send + Sync> =
                Arc::new(move || {
                    let names = names.read().unwrap_or_else(|e| e.into_inner()).clone();
                    Snapshot::read_named(&Maps::from_pins(&pin_path)?, &names)
                });
            let addr = listener.local_addr();
            if let Ok(addr) = addr {
                info!("metrics at http://{addr}/metrics");
            }
            tokio::spawn(metrics::serve(listener, source))
        });
        info!(
            "lb: ready: {} service(s) on {} ({:?} mode), maps pinned at {}, control socket {}",
            self.director.services.len(),
            self.config.director.interfaces.join(", "),
            self.mode,
            self.config.director.pin_path.display(),
            control_path.display()
        );
        for s in &self.director.services {
            warn_if_unusable(s);
        }

        let mut sweep = time::interval(self.config.director.sweep_interval);
        let mut sweeps = Sweeps::new(Maps::from_pins(&self.config.director.pin_path)?);
        let mut neighbours = time::interval(NEIGHBOUR_REFRESH);
        let stop = loop {
            tokio::select! {
                Some(result) = self.results.1.recv() => self.on_check(&mut datapath.maps, result),
                _ = neighbours.tick() => {
                    let mut changes = std::mem::take(&mut self.unwritten);
                    add_changes(&mut changes, self.refreshed_macs().await);
                    self.write_or_retry(&mut datapath.maps, changes, "a neighbour refresh");
                }
                _ = sweep.tick() => sweeps.start(self.swept_services(), self.config.director.timeouts),
                swept = sweeps.finished() => {
                    let services = self.swept_services();
                    match swept.and_then(|report| {
                        sweeper::write_counts(&mut datapath.maps, &services, &report).map(|()| report)
                    }) {
                        Ok(report) => {
                            if report.expired > 0 {
                                debug!("sweep: {} flow(s) expired, {} live", report.expired, report.live);
                            }
                            self.log_table_pressure(report.pressure);
                            if let Some(sync) = &self.sync {
                                sync.expired(&report.expired_flows);
                            }
                            let changes = self.director.free_finished(&report.conns);
                            self.write_or_retry(&mut datapath.maps, changes, "a sweep");
                        }
                        Err(e) => self.failed("a sweep (tried again at the next one)", &e),
                    }
                }
                _ = signals.hangup.recv() => {
                    info!("SIGHUP: reloading {}", self.config_path.display());
                    match self.reload(datapath).await {
                        Ok(summary) => info!("reload: {summary}"),
                        Err(e) => error!("reload refused, the running state is unchanged: {e:#}"),
                    }
                }
                Some((request, reply, written)) = requests.recv() => {
                    let (answer, stop) = self.on_request(datapath, request).await;
                    let _ = reply.send(answer);
                    if let Some(stop) = stop {
                        // Let the client read the reply before the runtime goes.
                        let _ = time::timeout(Duration::from_secs(1), written).await;
                        break stop;
                    }
                }
                _ = signals.interrupt.recv() => break Stop::Detach,
                _ = signals.terminate.recv() => break Stop::Detach,
            }
        };
        control_task.abort();
        if let Some(task) = metrics_task {
            task.abort();
        }
        if let Some(sync) = self.sync.take() {
            sync.stop(&mut datapath.maps);
        }
        if let Some(announcer) = self.announcer.take() {
            announcer.stop();
        }
        info!("stopping");
        Ok(stop)
    }

    /// A health-check result: moves the backend up or down when the
    /// rise/fall thresholds say so.
    fn on_check(&mut self, maps: &mut Maps, result: CheckResult<CheckKey>) {
        let (id, slot, generation) = result.key;
        if self
            .checks
            .get(&(id, slot))
            .is_none_or(|c| c.generation != generation)
        {
            return;
        }
        let Some(service) = self.director.by_id(id) else {
            return;
        };
        let health = service.config.health.clone();
        let name = service.config.name.clone();
        let Some(Some(backend)) = service.slots.get_mut(slot as usize) else {
            return;
        };
        if !result.ok {
            debug!(
                "service {name}: backend {}: check failed: {}",
                backend.address, result.detail
            );
        }
        let Some(up) = backend.health.observe(result.ok) else {
            return;
        };
        let address = backend.address;
        let state = if up { "up" } else { "down" };
        let count = if up { health.rise } else { health.fall };
        let action = match (up, health.inhibit_on_failure) {
            (false, true) => "; weight set to 0 (inhibit_on_failure)",
            (false, false) => "; no new connections go to it",
            (true, _) => "",
        };
        warn!(
            "service {name}: backend {address} is {} after {count} {} check(s){action}: {}",
            state.to_uppercase(),
            if up { "successful" } else { "failed" },
            result.detail
        );
        self.write_or_retry(maps, vec![Change::SetService(id)], "a health transition");
        if !health.notify.is_empty() {
            tokio::spawn(async move {
                notify(&health.notify, &name, address, state).await;
            });
        }
    }

    /// Writes `changes` to the maps. A failure is logged and counted, and the
    /// changes are kept in [`Daemon::unwritten`] for the next neighbour tick
    /// (every change is idempotent): the data path keeps forwarding with the
    /// maps as they are, rather than lb exiting and taking it down.
    fn write_or_retry(&mut self, maps: &mut Maps, changes: Vec<Change>, what: &str) {
        if changes.is_empty() {
            return;
        }
        let written = write_changes(maps, &mut self.director, &changes);
        self.services_changed();
        if let Err(e) = written {
            self.failed(
                &format!("the map writes of {what} (tried again within a second)"),
                &e,
            );
            add_changes(&mut self.unwritten, changes);
        }
    }

    /// Logs and counts an error of the event loop that lb survives.
    fn failed(&mut self, what: &str, e: &anyhow::Error) {
        self.errors += 1;
        error!(
            "{what} failed ({} error(s) since start; the data path keeps forwarding): {e:#}",
            self.errors
        );
    }

    /// Re-reads the config file and applies the difference, wholly or not at
    /// all: an error (a bad config, a NIC or backend that cannot be found, a
    /// change the director refuses) leaves the running state untouched; once
    /// applied, map writes or attachments that fail are retried, and the
    /// reply says so.
    async fn reload(&mut self, datapath: &mut Datapath) -> anyhow::Result<String> {
        let mut config = Config::load(&self.config_path)?;
        config.sync = self.sync_overrides.apply(config.sync)?;
        let old = &self.config.director;
        let new = &config.director;
        for (field, changed) in [
            ("pin_path", old.pin_path != new.pin_path),
            ("control_socket", old.control_socket != new.control_socket),
        ] {
            if changed {
                bail!("[director] {field} cannot change while lb runs: restart lb to apply it");
            }
        }
        let mut needs_restart = Vec::new();
        for (field, changed) in [
            ("max_flows", old.max_flows != new.max_flows),
            ("max_flows_v6", old.max_flows_v6 != new.max_flows_v6),
            ("xdp_mode", old.xdp_mode != new.xdp_mode),
            ("metrics_listen", old.metrics_listen != new.metrics_listen),
            ("[sync]", self.config.sync != config.sync),
            ("[announce]", self.config.announce != config.announce),
        ] {
            if changed {
                needs_restart.push(field);
            }
        }
        let nics = director_nics(&self.netlink, &config).await?;
        let ports = nic_ports(&self.netlink, &nics).await?;
        let links = backend_links(&self.netlink, &config, &nics).await?;
        let (mut changes, summary) = self.director.apply(&config, &links.nics)?;
        // From here on the reload is applied: lb's state is the new config's.
        // What does not reach the kernel at once is retried and reported.
        self.check_sources = links.check_sources;
        // Learn or solicit MACs of new backends at once rather than on the
        // next tick.
        add_changes(&mut changes, self.refreshed_macs().await);
        let attached_before: Vec<String> = datapath.attached().map(str::to_owned).collect();
        self.nics = nics;
        self.ports = ports;
        *self.names.write().unwrap_or_else(|e| e.into_inner()) =
            ServiceNames::from_config(Some(&config));
        self.config = config;
        let errors_before = self.errors;
        if let Err(e) = self.register_nics(&mut datapath.maps) {
            self.failed(
                "registering the NICs after the reload (tried again at the next reload)",
                &e,
            );
        }
        if let Err(e) = datapath
            .maps
            .set_flood_guard(self.config.director.syn_flood_rate)
        {
            self.failed(
                "setting syn_flood_rate after the reload (tried again at the next reload)",
                &e,
            );
        }
        self.write_or_retry(&mut datapath.maps, changes, "the reload");
        if let Err(e) = self.attach(datapath) {
            self.failed(
                "attaching after the reload (tried again at the next reload)",
                &e,
            );
        }
        self.reconcile_checks();
        let mut message = summary.to_string();
        if self.errors > errors_before {
            message += "; applied, but some of it did not reach the kernel yet: see lb's log";
        }
        let attached_now: Vec<String> = datapath.attached().map(str::to_owned).collect();
        if attached_now != attached_before {
            message += &format!("; attached to {}", attached_now.join(", "));
        }
        if !needs_restart.is_empty() {
            message += &format!(
                "; [director] {} changed: takes effect at the next fresh start",
                needs_restart.join(", ")
            );
        }
        Ok(message)
    }

    /// Carries out a control-socket request.
    async fn on_request(
        &mut self,
        datapath: &mut Datapath,
        request: Request,
    ) -> (Reply, Option<Stop>) {
        let result = match request {
            Request::Reload => {
                info!("lb reload: reloading {}", self.config_path.display());
                let result = self.reload(datapath).await;
                match &result {
                    Ok(summary) => info!("reload: {summary}"),
                    Err(e) => error!("reload refused, the running state is unchanged: {e:#}"),
                }
                result
            }
            Request::Stop { keep_datapath } => {
                let (stop, message) = if keep_datapath {
                    (Stop::KeepDatapath, "stopping; the data path stays attached")
                } else {
                    (Stop::Detach, "stopping; detaching the data path")
                };
                return (Reply::ok(message), Some(stop));
            }
            Request::BackendAdd {
                service,
                address,
                weight,
                mac,
            } => self.backend_add(datapath, &service, address, weight, mac).await,
            Request::BackendRemove {
                service,
                address,
                reschedule,
            } => {
                let reschedule = reschedule.unwrap_or(self.config.director.expire_nodest_conn);
                self.live_change(datapath, |d| d.remove_backend(&service, address, reschedule))
                    .map(|()| {
                        if reschedule {
                            format!("removed {address} from {service}; its flows move to other backends on their next packet")
                        } else {
                            format!("removed {address} from {service}; its flows finish on it")
                        }
                    })
            }
            Request::BackendSetWeight {
                service,
                address,
                weight,
            } => self
                .live_change(datapath, |d| d.set_weight(&service, address, weight))
                .map(|()| {
                    if weight == 0 {
                        format!("{service}/{address}: weight 0 (draining: no new connections, existing ones continue)")
                    } else {
                        format!("{service}/{address}: weight {weight}")
                    }
                }),
        };
        let reply = match result {
            Ok(message) => {
                info!("control: {message}");
                Reply::ok(message)
            }
            Err(e) => Reply::error(format!("{e:#}")),
        };
        (reply, None)
    }

    async fn backend_add(
        &mut self,
        datapath: &mut Datapath,
        service: &str,
        address: IpAddr,
        weight: u32,
        mac: Option<[u8; 6]>,
    ) -> anyhow::Result<String> {
        let service_config = self.director.service_mut(service)?.config.clone();
        let (nic, source) = on_link(
            &self.netlink,
            &self.nics,
            &self.config.director.interfaces,
            &vips(&self.config),
            &service_config,
            address,
        )
        .await?;
        match source {
            Some(source) => self.check_sources.insert(address, source),
            None => self.check_sources.remove(&address),
        };
        self.live_change(datapath, |d| {
            d.add_backend(service, address, weight, mac, nic)
        })?;
        // A neighbour the director already knows gives the MAC at once; the
        // next tick would not see it as a change, so it is written here.
        let learnt = self.refreshed_macs().await;
        self.write_or_retry(&mut datapath.maps, learnt, "the new backend's MAC");
        Ok(format!("added {address} to {service} with weight {weight}"))
    }

    /// Refreshes the backends' MACs from the neighbour table (see
    /// [`refresh_macs`]): the services to write. A table that cannot be read
    /// is logged, and the next neighbour tick reads it again.
    async fn refreshed_macs(&mut self) -> Vec<Change> {
        match refresh_macs(&self.netlink, &mut self.director).await {
            Ok(changed) => changed.into_iter().map(Change::SetService).collect(),
            Err(e) => {
                warn!("reading the neighbour table: {e:#}");
                Vec::new()
            }
        }
    }

    /// Applies a live change to the director and writes it to the maps.
    fn live_change(
        &mut self,
        datapath: &mut Datapath,
        change: impl FnOnce(&mut Director) -> anyhow::Result<Vec<Change>>,
    ) -> anyhow::Result<()> {
        let changes = change(&mut self.director)?;
        write_changes(&mut datapath.maps, &mut self.director, &changes)?;
        self.reconcile_checks();
        Ok(())
    }
}

/// Appends `more` to `changes`, leaving out those already there.
fn add_changes(changes: &mut Vec<Change>, more: Vec<Change>) {
    for change in more {
        if !changes.contains(&change) {
            changes.push(change);
        }
    }
}

/// Writes `changes` to the maps, after re-evaluating the quorum of every
/// service they touch (logged when it is lost or regained).
fn write_changes(
    maps: &mut Maps,
    director: &mut Director,
    changes: &[Change],
) -> anyhow::Result<()> {
    for change in changes {
        if let Change::SetService(id) = *change
            && let Some(s) = director.by_id(id)
            && let Some(lost) = s.update_quorum()
        {
            log_quorum(s, lost);
        }
    }
    let director = &*director;
    for change in changes {
        match *change {
            Change::RemoveService { id } => {
                maps.remove_service(id)?;
                let flows = sweeper::forget_service(maps, id)?;
                info!("service id {id} removed with {flows} flow(s)");
            }
            Change::ResetBackendStats { id, slot } => maps.reset_backend_stats(id, slot)?,
            Change::SetService(id) => {
                let Some(s) = director.services.iter().find(|s| s.id == id) else {
                    continue;
                };
                maps.set_service(&s.keys(), s.config.service_value(id), &s.backend_set())?;
            }
        }
    }
    for id in changes.iter().filter_map(|c| match c {
        Change::SetService(id) => Some(*id),
        _ => None,
    }) {
        if let Some(s) = director.services.iter().find(|s| s.id == id) {
            warn_if_unusable(s);
        }
    }
    Ok(())
}

/// Logs a service losing or regaining its quorum, and where new
/// connections go.
fn log_quorum(service: &ServiceRuntime, lost: bool) {
    let c = &service.config;
    let then = match (lost, c.sorry_server) {
        (true, Some(sorry)) => format!("new connections go to the sorry server {sorry}"),
        (true, None) => {
            "no sorry server is set: new connections still go to the up backends".to_owned()
        }
        (false, Some(sorry)) => {
            format!("new connections go to the backends again, not to the sorry server {sorry}")
        }
        (false, None) => "new connections go to the backends".to_owned(),
    };
    let threshold = if lost {
        format!("below {} - {}", c.quorum, c.hysteresis)
    } else {
        format!("at least {} + {}", c.quorum, c.hysteresis)
    };
    if lost {
        warn!(
            "service {}: quorum LOST (weight of up backends {threshold}); {then}; running \
             flows keep their servers",
            c.name
        );
    } else {
        info!(
            "service {}: quorum regained (weight of up backends {threshold}); {then}",
            c.name
        );
    }
}

/// Warns when NIC `nic` takes VLAN tags off received frames: lb's services
/// on VLANs would then not get their frames (see [`ethtool`]).
fn warn_if_tags_are_stripped(nic: &Nic) {
    let name = &nic.name;
    match ethtool::rx_vlan_offloads(name) {
        Ok(on) if !on.is_empty() => warn!(
            "{name} takes VLAN tags off the frames it receives ({} on): many drivers then hand \
             XDP the frames without their tags, lb takes them for untagged frames, and the \
             services on VLANs do not get them; turn it off: ethtool -K {name} rxvlan off \
             rx-vlan-stag-hw-parse off",
            on.join(", ")
        ),
        Ok(_) => {}
        Err(e) => debug!("reading the receive VLAN offload of {name}: {e}"),
    }
}

/// Logs loudly when no backend of a service can take new flows.
fn warn_if_unusable(service: &ServiceRuntime) {
    if !service.has_usable_backend() {
        error!(
            "service {}: no backend is up with weight > 0; new connections to {} port {} are \
             dropped (counted as drop_no_backend) until one recovers; established flows continue",
            service.config.name, service.config.vip, service.config.ports
        );
    }
}

/// Fills in backend MACs from the neighbour table; asks the kernel to
/// resolve the missing ones. Returns the ids of services whose MACs changed,
/// which the caller must write to the maps. Fails only when the table cannot
/// be read (nothing changed then); a failed solicitation is logged, and the
/// next refresh asks again.
async fn refresh_macs(netlink: &Netlink, director: &mut Director) -> anyhow::Result<Vec<u32>> {
    let table = netlink.neighbours().await?;
    let mut changed = Vec::new();
    for service in &mut director.services {
        let name = &service.config.name;
        let mut any = false;
        for b in service.slots.iter_mut().flatten().filter(|b| !b.static_mac) {
            match table.get(&(b.nic.index, b.address)) {
                Some(mac) if b.mac != Some(*mac) => {
                    info!(
                        "service {name}: backend {} is at {} on {}{}",
                        b.address,
                        format_mac(mac),
                        b.nic.name,
                        b.mac
                            .map(|old| format!(" (was {})", format_mac(&old)))
                            .unwrap_or_default()
                    );
                    b.mac = Some(*mac);
                    any = true;
                }
                Some(_) => {}
                // Keep a MAC we already know: the entry may just have been
                // garbage-collected. Ask the kernel to resolve it again.
                None => {
                    if let Err(e) = netlink.solicit(b.nic.index, b.address).await {
                        warn!("service {name}: backend {}: {e:#}", b.address);
                    }
                }
            }
        }
        if any {
            changed.push(service.id);
        }
    }
    Ok(changed)
}

/// Start-up resolution: waits up to [`RESOLVE_WAIT`] for every MAC.
async fn resolve_macs(netlink: &Netlink, director: &mut Director) -> anyhow::Result<()> {
    let deadline = time::Instant::now() + RESOLVE_WAIT;
    loop {
        refresh_macs(netlink, director).await?;
        let missing: Vec<_> = director
            .services
            .iter()
            .flat_map(|s| s.backends())
            .filter(|(_, b)| b.mac.is_none())
            .map(|(_, b)| b.address.to_string())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if time::Instant::now() >= deadline {
            warn!(
                "no MAC yet for backend(s) {}: they get no new flows until the kernel resolves them",
                missing.join(", ")
            );
            return Ok(());
        }
        time::sleep(Duration::from_millis(100)).await;
    }
}
