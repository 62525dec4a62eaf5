//! `lb run`: bring the data path up on the director's NICs, keep its maps in
//! step with health checks and the neighbour table, sweep the connection
//! table, and take it all down again on SIGINT/SIGTERM.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::{Context as _, bail};
use lb_common::{BACKEND_STATE_DOWN, BACKEND_STATE_UP, BackendSet};
use log::{error, info, warn};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    task::JoinSet,
    time,
};

use crate::{
    config::{Config, HealthKind, ServiceConfig, XdpMode},
    datapath::{Attachment, Datapath, backend_entry, service_key},
    health::{CheckResult, Hysteresis, TcpCheck},
    netlink::{Netlink, Nic, format_mac},
    sweeper,
};

/// How often the neighbour table is re-read for backend MACs.
const NEIGHBOUR_REFRESH: Duration = Duration::from_secs(1);
/// How long start-up waits for the kernel to resolve backend MACs.
const RESOLVE_WAIT: Duration = Duration::from_secs(3);

/// A backend and what the daemon knows about it.
struct BackendState {
    address: IpAddr,
    weight: u32,
    /// MAC given in the config; never replaced by the neighbour table.
    static_mac: bool,
    /// Current MAC, if known.
    mac: Option<[u8; 6]>,
    /// The director NIC the backend is on-link through.
    nic: Nic,
    health: Hysteresis,
}

impl BackendState {
    /// Whether new flows may go to this backend (weight aside).
    fn usable(&self) -> bool {
        self.health.is_up() && self.mac.is_some()
    }
}

/// A service and its backends as installed in the maps.
struct ServiceState {
    id: u32,
    config: ServiceConfig,
    backends: Vec<BackendState>,
}

impl ServiceState {
    /// The service's backend set as the data path stores it. A backend that
    /// is down, or whose MAC is not known yet, gets no new flows.
    fn backend_set(&self) -> BackendSet {
        let mut set = BackendSet {
            len: self.backends.len() as u32,
            ..BackendSet::default()
        };
        for (slot, b) in self.backends.iter().enumerate() {
            let state = if b.usable() {
                BACKEND_STATE_UP
            } else {
                BACKEND_STATE_DOWN
            };
            let attachment = Attachment {
                mac: b.mac.unwrap_or_default(),
                nic_mac: b.nic.mac,
                ifindex: b.nic.index,
            };
            set.backends[slot] = backend_entry(slot as u32, b.address, attachment, b.weight, state);
        }
        set
    }

    /// Logs loudly when no backend can take new flows.
    fn warn_if_unusable(&self) {
        if !self.backends.iter().any(|b| b.usable() && b.weight > 0) {
            error!(
                "service {}: no backend is up with weight > 0; new connections to {} are dropped \
                 until one recovers (established flows continue)",
                self.config.name,
                SocketAddr::new(self.config.vip, self.config.port)
            );
        }
    }
}

/// Fails unless the process may load XDP programs: root, or CAP_NET_ADMIN
/// with CAP_BPF (or CAP_SYS_ADMIN).
pub fn ensure_privileged(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |bit: u32| caps & (1 << bit) != 0;
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    if has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN)) {
        return Ok(());
    }
    bail!("{what} needs root (or the capabilities CAP_BPF and CAP_NET_ADMIN); run it with sudo")
}

/// Runs the director until SIGINT or SIGTERM.
pub async fn run(config: Config, mode: XdpMode) -> anyhow::Result<()> {
    ensure_privileged("lb run")?;
    let netlink = Netlink::open()?;
    let mut nics = Vec::new();
    for name in &config.director.interfaces {
        nics.push(netlink.nic(name).await?);
    }
    let mut services = plan_services(&netlink, &config, &nics).await?;
    resolve_macs(&netlink, &mut services).await?;

    let director = &config.director;
    let mut datapath = Datapath::load(director.max_flows, Some(&director.pin_path))?;
    let result = serve(&mut datapath, &netlink, &config, &nics, mode, &mut services).await;
    let detached = datapath.detach_all();
    let unpinned = datapath.unpin();
    result?;
    detached?;
    unpinned?;
    info!(
        "detached from {}; pins removed",
        director.interfaces.join(", ")
    );
    Ok(())
}

/// Builds the services' runtime state, checking that every backend is
/// on-link through one of the director's NICs (direct routing rewrites only
/// MAC addresses, so a real server must share an L2 segment with the director).
async fn plan_services(
    netlink: &Netlink,
    config: &Config,
    nics: &[Nic],
) -> anyhow::Result<Vec<ServiceState>> {
    let mut services = Vec::new();
    for (id, service) in config.services.iter().enumerate() {
        let mut backends = Vec::new();
        for backend in &service.backends {
            let Some(nic) = netlink.on_link_nic(nics, backend.address).await? else {
                bail!(
                    "service {}: backend {} is not on-link through any director interface ({}): \
                     direct routing needs the real servers on the director's own L2 network \
                     (give the NIC an address in the backend's subnet)",
                    service.name,
                    backend.address,
                    config.director.interfaces.join(", ")
                );
            };
            backends.push(BackendState {
                address: backend.address,
                weight: backend.weight,
                static_mac: backend.mac.is_some(),
                mac: backend.mac,
                nic: nic.clone(),
                health: Hysteresis::new(service.health.rise, service.health.fall),
            });
        }
        services.push(ServiceState {
            id: id as u32,
            config: service.clone(),
            backends,
        });
    }
    Ok(services)
}

/// Fills in backend MACs from the neighbour table; asks the kernel to
/// resolve the missing ones. Returns whether any MAC changed.
async fn refresh_macs(netlink: &Netlink, services: &mut [ServiceState]) -> anyhow::Result<bool> {
    let table = netlink.neighbours().await?;
    let mut changed = false;
    for service in services.iter_mut() {
        for b in service.backends.iter_mut().filter(|b| !b.static_mac) {
            match table.get(&(b.nic.index, b.address)) {
                Some(mac) if b.mac != Some(*mac) => {
                    info!(
                        "service {}: backend {} is at {} on {}{}",
                        service.config.name,
                        b.address,
                        format_mac(mac),
                        b.nic.name,
                        b.mac
                            .map(|old| format!(" (was {})", format_mac(&old)))
                            .unwrap_or_default()
                    );
                    b.mac = Some(*mac);
                    changed = true;
                }
                Some(_) => {}
                // Keep a MAC we already know: the entry may just have been
                // garbage-collected. Ask the kernel to resolve it again.
                None => netlink.solicit(b.nic.index, b.address).await?,
            }
        }
    }
    Ok(changed)
}

/// Start-up resolution: waits up to [`RESOLVE_WAIT`] for every MAC.
async fn resolve_macs(netlink: &Netlink, services: &mut [ServiceState]) -> anyhow::Result<()> {
    let deadline = time::Instant::now() + RESOLVE_WAIT;
    loop {
        refresh_macs(netlink, services).await?;
        let missing: Vec<_> = services
            .iter()
            .flat_map(|s| s.backends.iter())
            .filter(|b| b.mac.is_none())
            .map(|b| b.address.to_string())
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

/// Fills the maps, attaches, and runs the event loop until a stop signal.
async fn serve(
    datapath: &mut Datapath,
    netlink: &Netlink,
    config: &Config,
    nics: &[Nic],
    mode: XdpMode,
    services: &mut [ServiceState],
) -> anyhow::Result<()> {
    for s in services.iter() {
        let key = service_key(s.config.vip, s.config.port, s.config.protocol.number());
        datapath.maps.set_service(key, s.id, &s.backend_set())?;
        s.warn_if_unusable();
    }
    let aya_mode = match mode {
        XdpMode::Driver => aya::programs::XdpMode::Driver,
        XdpMode::Skb => aya::programs::XdpMode::Skb,
    };
    for nic in nics {
        datapath.attach(&nic.name, aya_mode).with_context(|| {
            if mode == XdpMode::Driver {
                format!(
                    "{} may not support native XDP: try `--xdp-mode skb` (generic XDP, slower)",
                    nic.name
                )
            } else {
                format!("attaching to {}", nic.name)
            }
        })?;
    }
    let service_ids: Vec<u32> = services.iter().map(|s| s.id).collect();
    info!(
        "lb: ready: {} service(s) on {} ({mode:?} mode), maps pinned at {}",
        services.len(),
        config.director.interfaces.join(", "),
        config.director.pin_path.display()
    );

    let (results_tx, mut results) = mpsc::channel::<CheckResult>(256);
    let mut checks = JoinSet::new();
    for (si, s) in services.iter().enumerate() {
        if s.config.health.kind != HealthKind::Tcp {
            continue;
        }
        for (slot, b) in s.backends.iter().enumerate() {
            let check = TcpCheck {
                target: SocketAddr::new(b.address, s.config.health.port),
                interval: s.config.health.interval,
                timeout: s.config.health.timeout,
            };
            checks.spawn(check.run(si, slot, results_tx.clone()));
        }
    }
    drop(results_tx);

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sweep = time::interval(config.director.sweep_interval);
    let mut neighbours = time::interval(NEIGHBOUR_REFRESH);
    loop {
        tokio::select! {
            Some(result) = results.recv() => {
                let s = &mut services[result.service];
                let b = &mut s.backends[result.slot];
                if let Some(up) = b.health.observe(result.ok) {
                    let (state, count) = if up {
                        ("UP", s.config.health.rise)
                    } else {
                        ("DOWN", s.config.health.fall)
                    };
                    warn!(
                        "service {}: backend {} is {state} after {count} {} check(s) of port {}",
                        s.config.name,
                        b.address,
                        if up { "successful" } else { "failed" },
                        s.config.health.port
                    );
                    datapath.maps.set_backends(s.id, &s.backend_set())?;
                    s.warn_if_unusable();
                }
            }
            _ = neighbours.tick() => {
                match refresh_macs(netlink, services).await {
                    Ok(true) => {
                        for s in services.iter() {
                            datapath.maps.set_backends(s.id, &s.backend_set())?;
                        }
                    }
                    Ok(false) => {}
                    Err(e) => warn!("reading the neighbour table: {e:#}"),
                }
            }
            _ = sweep.tick() => {
                let report = sweeper::sweep(&mut datapath.maps, &service_ids, &config.director.timeouts)?;
                if report.expired > 0 {
                    log::debug!("sweep: {} flow(s) expired, {} live", report.expired, report.live);
                }
            }
            _ = sighup.recv() => {
                warn!("SIGHUP: configuration reload is not implemented yet; restart lb to apply config changes (ignored)");
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    checks.abort_all();
    info!("stopping");
    Ok(())
}
