//! The XDP data path as the control plane sees it: the embedded object, its
//! maps, its attachments to director NICs and its pins in bpffs.
//!
//! The daemon, `lb stats` and the packet-level tests all go through this
//! module, so maps are provisioned by one piece of code everywhere.

use std::{
    fs,
    io::ErrorKind,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{
        Array, HashMap, IterableMap as _, Map, MapData, MapError, MapInfo, PerCpuArray,
        PerCpuValues,
    },
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLinkId,
    },
};
use aya_obj::programs::XdpAttachType;
use lb_common::{
    BACKEND_CONNS_MAP, BACKEND_STATS_MAP, BACKENDS_MAP, Backend, BackendConnSet, BackendSet,
    CONNTRACK4_MAP, CONNTRACK6_MAP, Counters, DEFAULT_MAX_FLOWS, DEFAULT_MAX_FLOWS_V6, FAMILY_IPV4,
    FAMILY_IPV6, FLOW_CACHE_SETS, FLOW_CACHE4_MAP, FLOW_CACHE6_MAP, Flow, FlowKey, FlowKey4,
    FlowKey6, LoadTree, MAX_BACKENDS, MAX_SERVICES, NUM_REASONS, REASON_FORWARDED,
    SERVICE_PORTS_MAP, SERVICE_STATS_MAP, SERVICES_MAP, Service, ServiceKey, VERDICT_STATS_MAP,
    WLC_TREE_MAP, XDP_PROGRAM, backend_index, port_bit, wlc,
};

use crate::stats::protocol_name;

/// The XDP object built from `lb-ebpf` by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));

/// Name of the trivial `XDP_PASS` program in [`EBPF_OBJECT`].
const PASS_PROGRAM: &str = "lb_pass";

/// Every map the control plane reads or writes, in pin order (the names of
/// [`MAP_LAYOUT`]).
pub const MAP_NAMES: [&str; MAP_LAYOUT.len()] = {
    let mut names = [""; MAP_LAYOUT.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = MAP_LAYOUT[i].0;
        i += 1;
    }
    names
};

/// Pins that earlier builds of `lb` made and this one no longer does: the
/// single connection table of both families (`CONNTRACK`), before it was
/// split by family. [`remove_pin_dir`] removes them too, so `lb detach`
/// clears a data path pinned by an older `lb` before an upgrade.
const RETIRED_MAP_NAMES: [&str; 1] = ["CONNTRACK"];

/// How many flows each connection table holds: the IPv4 and IPv6 tables are
/// separate LRU hashes, each evicting its least recently used flow when full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowCapacity {
    /// Capacity of the IPv4 connection table (`CONNTRACK4`).
    pub ipv4: u32,
    /// Capacity of the IPv6 connection table (`CONNTRACK6`).
    pub ipv6: u32,
}

impl Default for FlowCapacity {
    /// `lb_common::DEFAULT_MAX_FLOWS` IPv4 and `DEFAULT_MAX_FLOWS_V6` IPv6 flows.
    fn default() -> Self {
        Self {
            ipv4: DEFAULT_MAX_FLOWS,
            ipv6: DEFAULT_MAX_FLOWS_V6,
        }
    }
}

/// Typed handles on the data path's maps (see `lb_common::maps` for the layout).
pub struct Maps {
    /// (VIP, port, protocol) -> service id.
    pub services: HashMap<MapData, ServiceKey, Service>,
    /// Service id -> its backends.
    pub backends: Array<MapData, BackendSet>,
    /// Service id -> active/inactive counts per backend.
    pub backend_conns: Array<MapData, BackendConnSet>,
    /// Service id -> the scheduler's tournament tree of its backends.
    pub wlc_tree: Array<MapData, LoadTree>,
    /// The IPv4 connection table (an LRU hash).
    pub conntrack4: HashMap<MapData, FlowKey4, Flow>,
    /// The IPv6 connection table (an LRU hash).
    pub conntrack6: HashMap<MapData, FlowKey6, Flow>,
    /// Destination port -> `PORT_*` bits of the protocols services use on it.
    pub service_ports: Array<MapData, u32>,
    /// Per-CPU counters per verdict reason.
    pub verdict_stats: PerCpuArray<MapData, Counters>,
    /// Per-CPU counters per service.
    pub service_stats: PerCpuArray<MapData, Counters>,
    /// Per-CPU counters per backend (`lb_common::backend_index`).
    pub backend_stats: PerCpuArray<MapData, Counters>,
}

impl Maps {
    /// Builds typed handles from a map source (`take(name)` yields the map).
    fn from_source(mut take: impl FnMut(&str) -> anyhow::Result<Map>) -> anyhow::Result<Self> {
        fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
            take: &mut impl FnMut(&str) -> anyhow::Result<Map>,
            name: &str,
        ) -> anyhow::Result<T> {
            T::try_from(take(name)?).with_context(|| format!("map {name} has an unexpected type"))
        }
        Ok(Self {
            services: typed(&mut take, SERVICES_MAP)?,
            backends: typed(&mut take, BACKENDS_MAP)?,
            backend_conns: typed(&mut take, BACKEND_CONNS_MAP)?,
            wlc_tree: typed(&mut take, WLC_TREE_MAP)?,
            conntrack4: typed(&mut take, CONNTRACK4_MAP)?,
            conntrack6: typed(&mut take, CONNTRACK6_MAP)?,
            service_ports: typed(&mut take, SERVICE_PORTS_MAP)?,
            verdict_stats: typed(&mut take, VERDICT_STATS_MAP)?,
            service_stats: typed(&mut take, SERVICE_STATS_MAP)?,
            backend_stats: typed(&mut take, BACKEND_STATS_MAP)?,
        })
    }

    /// Opens the maps a running `lb` pinned under `dir`. Fails when a map
    /// is missing or was made by a build with another map layout, saying
    /// how to clear the pins.
    pub fn from_pins(dir: &Path) -> anyhow::Result<Self> {
        if !dir.is_dir() {
            bail!(
                "no lb data path is pinned at {} (is `lb run` running with this pin_path? \
                 reading bpffs needs root)",
                dir.display()
            );
        }
        check_layout(dir)?;
        Self::from_source(|name| {
            let path = dir.join(name);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))?;
            Map::from_map_data(data).with_context(|| format!("map {}", path.display()))
        })
    }

    /// Sums a per-CPU counter over all CPUs.
    pub fn sum(values: &aya::maps::PerCpuValues<Counters>) -> Counters {
        values.iter().fold(Counters::default(), |acc, c| Counters {
            packets: acc.packets + c.packets,
            bytes: acc.bytes + c.bytes,
            new_conns: acc.new_conns + c.new_conns,
        })
    }

    /// Counters of one per-CPU stats array entry, summed over CPUs.
    pub fn counters(map: &PerCpuArray<MapData, Counters>, index: u32) -> anyhow::Result<Counters> {
        Ok(Self::sum(&map.get(&index, 0)?))
    }
}

impl Maps {
    /// Installs (or replaces) service `id` under `key` with `backends`, and
    /// opens the service's port in the port prefilter.
    ///
    /// Backends are written before the service becomes visible, so the data
    /// path never finds a service without its backend set. The connection
    /// counters are left alone: flows already bound to the service keep
    /// counting (the sweeper reconciles them).
    ///
    /// The data path forwards a known flow by the service id and slot stored
    /// in the flow, without looking the service up: removing or renumbering
    /// a service must first empty its old backend set (an empty slot makes
    /// the flow's next packet look the service up again).
    pub fn set_service(
        &mut self,
        key: ServiceKey,
        id: u32,
        backends: &BackendSet,
    ) -> anyhow::Result<()> {
        self.set_backends(id, backends)?;
        let port = u32::from(key.port);
        let bits = self.service_ports.get(&port, 0)? | port_bit(key.proto);
        self.service_ports
            .set(port, bits, 0)
            .with_context(|| format!("opening port {port} in {SERVICE_PORTS_MAP}"))?;
        self.services
            .insert(key, Service { id, flags: 0 }, 0)
            .with_context(|| format!("writing service {id} to {SERVICES_MAP}"))
    }

    /// Removes service `key` (id `id`): empties its backend set first (so
    /// its known flows stop being forwarded), deletes its key, closes its
    /// port in the prefilter unless one of `others` (the services that
    /// remain) still uses it, and zeroes its counters. The caller deletes
    /// its flows (`sweeper::forget_service`) before giving the id out again.
    pub fn remove_service(
        &mut self,
        key: ServiceKey,
        id: u32,
        others: impl Iterator<Item = ServiceKey>,
    ) -> anyhow::Result<()> {
        self.set_backends(id, &BackendSet::default())?;
        match self.services.remove(&key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(e).with_context(|| format!("deleting service {id}")),
        }
        let port = u32::from(key.port);
        let bits = others
            .filter(|k| k.port == key.port)
            .fold(0, |bits, k| bits | port_bit(k.proto));
        self.service_ports.set(port, bits, 0)?;
        self.backend_conns.set(id, BackendConnSet::default(), 0)?;
        // What the service forwarded stays in the `forwarded` verdict total.
        fold_counters(
            &self.service_stats,
            id,
            &mut self.verdict_stats,
            REASON_FORWARDED,
        )?;
        zero_counters(&mut self.service_stats, id)?;
        for slot in 0..MAX_BACKENDS as u32 {
            let index = backend_index(id, slot);
            fold_counters(
                &self.backend_stats,
                index,
                &mut self.verdict_stats,
                REASON_FORWARDED,
            )?;
            zero_counters(&mut self.backend_stats, index)?;
        }
        Ok(())
    }

    /// Zeroes the counters of backend `slot` of service `id` (a new backend
    /// takes the slot), keeping what it forwarded in the service's totals.
    pub fn reset_backend_stats(&mut self, id: u32, slot: u32) -> anyhow::Result<()> {
        let index = backend_index(id, slot);
        fold_counters(&self.backend_stats, index, &mut self.service_stats, id)?;
        zero_counters(&mut self.backend_stats, index)
    }

    /// Counters of service `id` (IPVS Conns, InPkts, InBytes), summed over
    /// CPUs: what its backends forwarded, including backends whose slots
    /// were given to others since.
    ///
    /// The data path counts each forwarded packet once, per backend
    /// (`BACKEND_STATS`); `SERVICE_STATS` holds only what earlier backends
    /// of the service forwarded ([`Maps::reset_backend_stats`] moves it there).
    pub fn service_counters(&self, id: u32) -> anyhow::Result<Counters> {
        let mut total = Self::counters(&self.service_stats, id)?;
        for slot in 0..MAX_BACKENDS as u32 {
            total = total + Self::counters(&self.backend_stats, backend_index(id, slot))?;
        }
        Ok(total)
    }

    /// The sum of [`Maps::service_counters`] over every installed service.
    /// A service entry with an id past the maps (never written by `lb`; the
    /// data path drops its packets as `drop_internal`) forwarded nothing.
    pub fn forwarded_by_services(&self) -> anyhow::Result<Counters> {
        let mut total = Counters::default();
        for entry in self.services.iter() {
            let (_, service) = entry?;
            if service.id < MAX_SERVICES {
                total = total + self.service_counters(service.id)?;
            }
        }
        Ok(total)
    }

    /// Counters per verdict reason (`REASON_*`), summed over CPUs.
    ///
    /// The data path does not count forwarded packets under a verdict (they
    /// are counted per backend); `forwarded` is `forwarded_by_services` (see
    /// [`Maps::forwarded_by_services`]) plus what removed services had
    /// forwarded, which [`Maps::remove_service`] keeps in `VERDICT_STATS`.
    /// Verdict counters count no connections.
    pub fn verdict_counters(
        &self,
        forwarded_by_services: Counters,
    ) -> anyhow::Result<Vec<Counters>> {
        (0..NUM_REASONS)
            .map(|reason| {
                let counted = Self::counters(&self.verdict_stats, reason)?;
                Ok(if reason == REASON_FORWARDED {
                    Counters {
                        new_conns: 0,
                        ..counted + forwarded_by_services
                    }
                } else {
                    counted
                })
            })
            .collect()
    }

    /// Reads every service and its backend set (to adopt a running data path).
    pub fn installed_services(&self) -> anyhow::Result<Vec<(ServiceKey, u32, BackendSet)>> {
        let mut found = Vec::new();
        for entry in self.services.iter() {
            let (key, service) = entry?;
            found.push((key, service.id, array_get(&self.backends, service.id)?));
        }
        Ok(found)
    }

    /// Replaces the backend set of service `id` (weights, health, MACs) and
    /// rebuilds its scheduler tree to match.
    ///
    /// The only writer of [`BACKENDS_MAP`]. The data path takes a new flow's
    /// backend from the tree's root and its MAC from the set, so the tree
    /// must never name a backend the set it reads does not hold. The tree is
    /// written twice: first over the backends that may take flows in both
    /// the old and the new set (a backend that stops taking flows leaves the
    /// tree before the set changes), then, once the new set is in place,
    /// over the new set (a new backend joins only then). A packet that reads
    /// a tree while it is being rewritten may see a root whose weight is
    /// already 0; it refuses it (`drop_no_backend`, the client's SYN is
    /// retransmitted) rather than use it.
    pub fn set_backends(&mut self, id: u32, backends: &BackendSet) -> anyhow::Result<()> {
        let old = array_get(&self.backends, id)?;
        let conns = array_get(&self.backend_conns, id)?;
        let mut in_both = *backends;
        for (slot, backend) in in_both.backends.iter_mut().enumerate() {
            if old.scheduling_weight(slot as u32) == 0 {
                backend.weight = 0;
            }
        }
        self.rebuild_tree(id, &in_both, &conns)?;
        self.backends
            .set(id, backends, 0)
            .with_context(|| format!("writing backends of service {id} to {BACKENDS_MAP}"))?;
        self.rebuild_tree(id, backends, &conns)
    }

    /// Rebuilds the scheduler tree of service `id` for `backends` and the
    /// connection counters `conns`.
    pub fn rebuild_tree(
        &mut self,
        id: u32,
        backends: &BackendSet,
        conns: &BackendConnSet,
    ) -> anyhow::Result<()> {
        let mut tree = LoadTree::default();
        wlc::rebuild(&mut tree, backends, conns);
        self.wlc_tree
            .set(id, tree, 0)
            .with_context(|| format!("writing the tree of service {id} to {WLC_TREE_MAP}"))
    }
}

/// The two connection tables, behind one key type.
impl Maps {
    /// The flow under `key`, from the table of its family (`None`: no such flow).
    pub fn flow(&self, key: &FlowKey) -> anyhow::Result<Option<Flow>> {
        let found = match key {
            FlowKey::V4(k) => self.conntrack4.get(k, 0),
            FlowKey::V6(k) => self.conntrack6.get(k, 0),
        };
        match found {
            Ok(flow) => Ok(Some(flow)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("looking up flow {}", describe(key))),
        }
    }

    /// Every flow of both tables, IPv4 first, with the errors of the walk:
    /// for readers that must report a walk that broke off. An entry that
    /// vanishes (expired or evicted) between listing and reading it is
    /// skipped, not an error.
    ///
    /// The walk does not freeze the tables: the data path keeps adding and
    /// evicting flows, so a flow may be missed or (when the entry the walk
    /// stands on is deleted and the kernel restarts it) seen twice.
    pub fn try_flows(&self) -> impl Iterator<Item = Result<(FlowKey, Flow), MapError>> + '_ {
        let ipv4 = self
            .conntrack4
            .iter()
            .map(|entry| entry.map(|(key, flow)| (FlowKey::V4(key), flow)));
        let ipv6 = self
            .conntrack6
            .iter()
            .map(|entry| entry.map(|(key, flow)| (FlowKey::V6(key), flow)));
        ipv4.chain(ipv6)
    }

    /// Every flow of both tables, IPv4 first, skipping entries that cannot
    /// be read (those that vanish mid-walk). See [`Maps::try_flows`] for
    /// what a walk of live tables sees.
    pub fn flows(&self) -> impl Iterator<Item = (FlowKey, Flow)> + '_ {
        self.try_flows().filter_map(Result::ok)
    }

    /// Deletes the flow under `key`; whether it was there. Failing to delete
    /// is treated as absence: the data path may have evicted or re-created
    /// the flow meanwhile, and the next sweep sees it again.
    pub fn remove_flow(&mut self, key: &FlowKey) -> bool {
        let removed = match key {
            FlowKey::V4(k) => self.conntrack4.remove(k),
            FlowKey::V6(k) => self.conntrack6.remove(k),
        };
        removed.is_ok()
    }

    /// Writes (adds or replaces) the flow under `key` in the table of its family.
    pub fn insert_flow(&mut self, key: &FlowKey, flow: &Flow) -> anyhow::Result<()> {
        let inserted = match key {
            FlowKey::V4(k) => self.conntrack4.insert(k, flow, 0),
            FlowKey::V6(k) => self.conntrack6.insert(k, flow, 0),
        };
        inserted.with_context(|| format!("writing flow {}", describe(key)))
    }

    /// How many flows both tables hold (a walk of their keys).
    pub fn flow_count(&self) -> usize {
        self.conntrack4.keys().count() + self.conntrack6.keys().count()
    }

    /// Capacity of both connection tables, as the kernel created them.
    pub fn flow_capacity(&self) -> anyhow::Result<FlowCapacity> {
        let max_entries = |map: &MapData, name: &str| {
            map.info()
                .map(|info| info.max_entries())
                .with_context(|| format!("reading the size of {name}"))
        };
        Ok(FlowCapacity {
            ipv4: max_entries(self.conntrack4.map(), CONNTRACK4_MAP)?,
            ipv6: max_entries(self.conntrack6.map(), CONNTRACK6_MAP)?,
        })
    }
}

/// A flow as error messages name it: `tcp 192.0.2.10:40000 -> 192.0.2.200:80`.
fn describe(key: &FlowKey) -> String {
    let client = SocketAddr::new(key.client(), key.client_port());
    let vip = SocketAddr::new(key.vip(), key.port());
    format!("{} {client} -> {vip}", protocol_name(key.proto()))
}

/// Adds every CPU's counters at `from` in `from_map` to the same CPU's
/// counters at `to` in `to_map`. Only the control plane writes `to`.
fn fold_counters(
    from_map: &PerCpuArray<MapData, Counters>,
    from: u32,
    to_map: &mut PerCpuArray<MapData, Counters>,
    to: u32,
) -> anyhow::Result<()> {
    let add = from_map
        .get(&from, 0)
        .with_context(|| format!("reading counters {from}"))?;
    let into = to_map
        .get(&to, 0)
        .with_context(|| format!("reading counters {to}"))?;
    let sums: Vec<Counters> = into.iter().zip(add.iter()).map(|(a, b)| *a + *b).collect();
    to_map
        .set(to, PerCpuValues::try_from(sums)?, 0)
        .with_context(|| format!("writing counters {to}"))
}

/// Entries of each flow cache: `FLOW_CACHE_SETS` for every possible CPU
/// (see `lb_common::flow_cache_index`).
pub fn flow_cache_sets() -> anyhow::Result<u32> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    u32::try_from(cpus)
        .ok()
        .and_then(|cpus| cpus.checked_mul(FLOW_CACHE_SETS))
        .ok_or_else(|| anyhow!("{cpus} possible CPUs: too many for the flow caches"))
}

/// Sets every CPU's counters at `index` to zero.
fn zero_counters(map: &mut PerCpuArray<MapData, Counters>, index: u32) -> anyhow::Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let zeros = PerCpuValues::try_from(vec![Counters::default(); cpus])?;
    map.set(index, zeros, 0)
        .with_context(|| format!("zeroing counters {index}"))
}

/// An IP address as the maps store it: 16 bytes in network order (IPv4 in
/// the first four) and its `FAMILY_*`.
pub fn addr_key(addr: IpAddr) -> ([u8; 16], u8) {
    let mut bytes = [0u8; 16];
    match addr {
        IpAddr::V4(v4) => {
            bytes[..4].copy_from_slice(&v4.octets());
            (bytes, FAMILY_IPV4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_IPV6),
    }
}

/// The inverse of [`addr_key`].
pub fn addr_from_key(bytes: [u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_IPV4 {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        IpAddr::from(bytes)
    }
}

/// The [`SERVICES_MAP`] key of a service.
pub fn service_key(vip: IpAddr, port: u16, proto: u8) -> ServiceKey {
    let (addr, family) = addr_key(vip);
    ServiceKey {
        addr,
        port,
        proto,
        family,
    }
}

/// Where a backend is on the network: its MAC, and the director NIC (index
/// and MAC) it is on-link through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The real server's MAC (destination MAC of forwarded frames).
    pub mac: [u8; 6],
    /// The director NIC's MAC (source MAC of forwarded frames).
    pub nic_mac: [u8; 6],
    /// The director NIC's index.
    pub ifindex: u32,
}

/// A backend slot as the data path stores it.
pub fn backend_entry(addr: IpAddr, attachment: Attachment, weight: u32, state: u32) -> Backend {
    let Attachment {
        mac,
        nic_mac,
        ifindex,
    } = attachment;
    Backend {
        addr: addr_key(addr).0,
        mac,
        nic_mac,
        ifindex,
        weight,
        state,
    }
}

/// Reads one value of an array map (used for the large backend values).
pub fn array_get<V: Pod>(map: &Array<MapData, V>, index: u32) -> anyhow::Result<V> {
    map.get(&index, 0)
        .with_context(|| format!("reading entry {index}"))
}

/// File name of the pinned XDP program in a pin directory.
const PROGRAM_PIN: &str = "prog_lb_xdp";
/// Prefix of the pinned XDP links in a pin directory (`link_<interface>`).
const LINK_PIN_PREFIX: &str = "link_";

/// Every map the control plane reads or writes with its key and value
/// sizes, to recognise a pinned data path made by a build with another map
/// layout before adopting it.
const MAP_LAYOUT: [(&str, usize, usize); 10] = [
    (SERVICES_MAP, size_of::<ServiceKey>(), size_of::<Service>()),
    (BACKENDS_MAP, 4, size_of::<BackendSet>()),
    (BACKEND_CONNS_MAP, 4, size_of::<BackendConnSet>()),
    (WLC_TREE_MAP, 4, size_of::<LoadTree>()),
    (CONNTRACK4_MAP, size_of::<FlowKey4>(), size_of::<Flow>()),
    (CONNTRACK6_MAP, size_of::<FlowKey6>(), size_of::<Flow>()),
    (SERVICE_PORTS_MAP, 4, 4),
    (VERDICT_STATS_MAP, 4, size_of::<Counters>()),
    (SERVICE_STATS_MAP, 4, size_of::<Counters>()),
    (BACKEND_STATS_MAP, 4, size_of::<Counters>()),
];

/// Checks that `dir` holds every map of [`MAP_LAYOUT`] with this build's
/// key and value sizes (an older `lb` may have left its own layout pinned).
fn check_layout(dir: &Path) -> anyhow::Result<()> {
    let restart_hint = format!(
        "`lb detach --pin-path {}` removes it (its flows are lost), then `lb run` starts afresh",
        dir.display()
    );
    for (name, key_size, value_size) in MAP_LAYOUT {
        let path = dir.join(name);
        if !path.exists() {
            bail!(
                "the pinned data path lacks map {} (it is incomplete, or was made by another \
                 lb version); {restart_hint}",
                path.display()
            );
        }
        let info = MapInfo::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        if (info.key_size() as usize, info.value_size() as usize) != (key_size, value_size) {
            bail!(
                "the pinned map {} has key/value sizes {}/{} where this lb expects \
                 {key_size}/{value_size}: it was made by another lb version; {restart_hint}",
                path.display(),
                info.key_size(),
                info.value_size()
            );
        }
    }
    Ok(())
}

/// An attachment of the program to one NIC.
enum Link {
    /// Owned by this process: detached when dropped (no pin directory).
    Owned(XdpLinkId),
    /// Pinned in bpffs: stays attached when this process dies, until the
    /// pin is removed.
    Pinned(PinnedLink),
}

/// The loaded data path: the XDP program, its maps, and where it is attached
/// and pinned.
///
/// With a pin directory, the maps, the program and one link per NIC are
/// pinned there, so the data path keeps forwarding when `lb` exits or is
/// killed, and [`Datapath::adopt`] takes it over again. [`Datapath::unpin`]
/// removes the pins (detaching the program); dropping a `Datapath` without
/// unpinning leaves it running.
pub struct Datapath {
    /// The object the program was loaded from; `None` when adopted.
    ebpf: Option<Ebpf>,
    /// The program when adopted from its pin.
    adopted_program: Option<Xdp>,
    /// Typed handles on every map.
    pub maps: Maps,
    links: Vec<(String, Link)>,
    pinned: Option<PathBuf>,
}

impl Datapath {
    /// Loads the program and creates its maps, with connection tables of
    /// `capacity` flows, and pins the maps and the program under `pin_dir`
    /// when given (the directory is created and must not exist yet: see
    /// [`Datapath::adopt`]) so that `bpftool map dump pinned DIR/NAME` and
    /// `lb stats` can read them. Nothing is attached yet.
    pub fn load(capacity: FlowCapacity, pin_dir: Option<&Path>) -> anyhow::Result<Self> {
        let cache_sets = flow_cache_sets()?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(CONNTRACK4_MAP, capacity.ipv4)
            .map_max_entries(CONNTRACK6_MAP, capacity.ipv6)
            .map_max_entries(FLOW_CACHE4_MAP, cache_sets)
            .map_max_entries(FLOW_CACHE6_MAP, cache_sets)
            .load(EBPF_OBJECT)
            .context(
                "loading the XDP object into the kernel (needs root or CAP_BPF+CAP_NET_ADMIN)",
            )?;
        let program: &mut Xdp = ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or_else(|| anyhow!("program {XDP_PROGRAM} missing from the object"))?
            .try_into()?;
        program
            .load()
            .with_context(|| format!("the kernel rejected the XDP program {XDP_PROGRAM}"))?;
        if let Some(dir) = pin_dir {
            create_pin_dir(dir)?;
            if let Err(e) = program.pin(dir.join(PROGRAM_PIN)) {
                remove_pins(dir);
                return Err(e).context(format!("pinning the program in {}", dir.display()));
            }
        }
        let maps = Maps::from_source(|name| {
            let map = ebpf
                .take_map(name)
                .ok_or_else(|| anyhow!("map {name} missing from the object"))?;
            if let Some(dir) = pin_dir {
                map.pin(dir.join(name))
                    .with_context(|| format!("pinning map {name} in {}", dir.display()))?;
            }
            Ok(map)
        });
        let maps = match maps {
            Ok(maps) => maps,
            Err(e) => {
                if let Some(dir) = pin_dir {
                    remove_pins(dir);
                }
                return Err(e);
            }
        };
        Ok(Self {
            ebpf: Some(ebpf),
            adopted_program: None,
            maps,
            links: Vec::new(),
            pinned: pin_dir.map(Path::to_owned),
        })
    }

    /// Whether `dir` holds a pinned data path (left by an `lb` that exited
    /// with `--keep-datapath` or was killed).
    pub fn is_pinned(dir: &Path) -> bool {
        dir.join(PROGRAM_PIN).exists()
    }

    /// Takes over the data path pinned under `dir`: its maps (flows and
    /// counters included), its program and its links, which stay attached.
    /// Fails, touching nothing, when the pins are incomplete or were made by
    /// a build with another map layout.
    pub fn adopt(dir: &Path) -> anyhow::Result<Self> {
        let maps = Maps::from_pins(dir)?;
        let program = Xdp::from_pin(dir.join(PROGRAM_PIN), XdpAttachType::Interface)
            .with_context(|| format!("opening the pinned program in {}", dir.display()))?;
        let mut links = Vec::new();
        for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(iface) = name.strip_prefix(LINK_PIN_PREFIX) else {
                continue;
            };
            let link = PinnedLink::from_pin(entry.path())
                .with_context(|| format!("opening the pinned link {}", entry.path().display()))?;
            links.push((iface.to_owned(), Link::Pinned(link)));
        }
        links.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self {
            ebpf: None,
            adopted_program: Some(program),
            maps,
            links,
            pinned: Some(dir.to_owned()),
        })
    }

    /// The XDP program (for `BPF_PROG_TEST_RUN`).
    pub fn program(&self) -> &Xdp {
        match (&self.ebpf, &self.adopted_program) {
            (Some(ebpf), _) => ebpf
                .program(XDP_PROGRAM)
                .and_then(|p| p.try_into().ok())
                .expect("the program was loaded as XDP in Datapath::load"),
            (None, Some(program)) => program,
            (None, None) => unreachable!("a Datapath always has its program"),
        }
    }

    fn program_mut(&mut self) -> &mut Xdp {
        match (&mut self.ebpf, &mut self.adopted_program) {
            (Some(ebpf), _) => ebpf
                .program_mut(XDP_PROGRAM)
                .and_then(|p| p.try_into().ok())
                .expect("the program was loaded as XDP in Datapath::load"),
            (None, Some(program)) => program,
            (None, None) => unreachable!("a Datapath always has its program"),
        }
    }

    /// The NICs the program is attached to.
    pub fn attached(&self) -> impl Iterator<Item = &str> {
        self.links.iter().map(|(iface, _)| iface.as_str())
    }

    /// Attaches the program to `iface` in `mode` (pinning the link when the
    /// data path is pinned). Attaching to a NIC it is already on does nothing.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> anyhow::Result<()> {
        if self.attached().any(|i| i == iface) {
            return Ok(());
        }
        let pin = self
            .pinned
            .as_ref()
            .map(|dir| dir.join(format!("{LINK_PIN_PREFIX}{iface}")));
        let program = self.program_mut();
        let id = program
            .attach(iface, mode)
            .with_context(|| format!("attaching XDP to {iface} in {mode:?} mode"))?;
        let link = match pin {
            None => Link::Owned(id),
            Some(path) => {
                let link = FdLink::try_from(program.take_link(id)?).with_context(|| {
                    format!(
                        "{iface}: the kernel attached XDP without a bpf_link (needs Linux 5.9+)"
                    )
                })?;
                Link::Pinned(
                    link.pin(&path)
                        .with_context(|| format!("pinning the link at {}", path.display()))?,
                )
            }
        };
        self.links.push((iface.to_owned(), link));
        Ok(())
    }

    /// Detaches the program from `iface` (and removes its link pin).
    pub fn detach(&mut self, iface: &str) -> anyhow::Result<()> {
        let Some(at) = self.links.iter().position(|(i, _)| i == iface) else {
            return Ok(());
        };
        let (iface, link) = self.links.remove(at);
        match link {
            Link::Owned(id) => self
                .program_mut()
                .detach(id)
                .with_context(|| format!("detaching XDP from {iface}")),
            // Dropping the last reference to the link detaches it.
            Link::Pinned(link) => link
                .unpin()
                .map(drop)
                .with_context(|| format!("unpinning the XDP link of {iface}")),
        }
    }

    /// Detaches the program from every NIC it is attached to.
    pub fn detach_all(&mut self) -> anyhow::Result<()> {
        let ifaces: Vec<String> = self.attached().map(str::to_owned).collect();
        for iface in ifaces {
            self.detach(&iface)?;
        }
        Ok(())
    }

    /// Removes the pins of the maps and the program (detach first).
    pub fn unpin(&mut self) -> anyhow::Result<()> {
        match self.pinned.take() {
            Some(dir) => remove_pin_dir(&dir),
            None => Ok(()),
        }
    }
}

/// Removes a pinned data path: its links (which detaches the program from
/// every NIC), its program and maps, and the directory.
pub fn remove_pin_dir(dir: &Path) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(LINK_PIN_PREFIX) {
            fs::remove_file(entry.path())
                .with_context(|| format!("unpinning {}", entry.path().display()))?;
        }
    }
    for name in MAP_NAMES
        .iter()
        .chain(&RETIRED_MAP_NAMES)
        .chain([&PROGRAM_PIN])
    {
        match fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("unpinning {name}")),
        }
    }
    fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))
}

/// Creates the pin directory, refusing one that already exists.
fn create_pin_dir(dir: &Path) -> anyhow::Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => bail!(
            "{} already exists but holds no complete lb data path (remove the directory, \
             or run `lb detach --pin-path {}`, to start afresh)",
            dir.display(),
            dir.display()
        ),
        Err(e) => Err(e).with_context(|| {
            format!(
                "creating pin directory {} (is bpffs mounted at /sys/fs/bpf?)",
                dir.display()
            )
        }),
    }
}

/// Best-effort removal of a half-made pin directory after a failed load.
fn remove_pins(dir: &Path) {
    if let Err(e) = remove_pin_dir(dir) {
        tracing::warn!("cleaning up {}: {e:#}", dir.display());
    }
}

/// A trivial `XDP_PASS` program attached to one NIC until dropped. A veth
/// delivers frames sent with `XDP_TX` only when its peer runs an XDP
/// program; the namespace test bed attaches this one to the director's peer.
pub struct PassProgram {
    _ebpf: Ebpf,
}

impl PassProgram {
    /// Attaches the pass program to `ifname` in the calling thread's network
    /// namespace (driver mode).
    pub fn attach(ifname: &str) -> anyhow::Result<Self> {
        // The pass program uses no map: the smallest tables will do.
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(CONNTRACK4_MAP, 1)
            .map_max_entries(CONNTRACK6_MAP, 1)
            .load(EBPF_OBJECT)
            .context("loading the XDP object")?;
        let program: &mut Xdp = ebpf
            .program_mut(PASS_PROGRAM)
            .ok_or_else(|| anyhow!("program {PASS_PROGRAM} missing from the object"))?
            .try_into()?;
        program.load()?;
        program
            .attach(ifname, XdpMode::Driver)
            .with_context(|| format!("attaching {PASS_PROGRAM} to {ifname}"))?;
        Ok(Self { _ebpf: ebpf })
    }
}
