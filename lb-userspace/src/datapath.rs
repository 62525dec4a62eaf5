//! The XDP data path as the control plane sees it: the embedded object, its
//! maps, its attachments to director NICs and its pins in bpffs.
//!
//! The daemon, `lb stats` and the packet-level tests all go through this
//! module, so maps are provisioned by one piece of code everywhere.

use std::{
    fs,
    io::ErrorKind,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use lb_common::{
    BACKEND_CONNS_MAP, BACKEND_STATS_MAP, BACKENDS_MAP, Backend, BackendConnSet, BackendSet,
    CONNTRACK_MAP, Counters, FAMILY_IPV4, FAMILY_IPV6, Flow, FlowKey, SERVICE_PORTS_MAP,
    SERVICE_STATS_MAP, SERVICES_MAP, Service, ServiceKey, VERDICT_STATS_MAP, XDP_PROGRAM, port_bit,
};

/// The XDP object built from `lb-ebpf` by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));

/// Name of the trivial `XDP_PASS` program in [`EBPF_OBJECT`].
const PASS_PROGRAM: &str = "lb_pass";

/// Every map the control plane reads or writes, in pin order.
pub const MAP_NAMES: [&str; 8] = [
    SERVICES_MAP,
    BACKENDS_MAP,
    BACKEND_CONNS_MAP,
    CONNTRACK_MAP,
    SERVICE_PORTS_MAP,
    VERDICT_STATS_MAP,
    SERVICE_STATS_MAP,
    BACKEND_STATS_MAP,
];

/// Typed handles on the data path's maps (see `lb_common::maps` for the layout).
pub struct Maps {
    /// (VIP, port, protocol) -> service id.
    pub services: HashMap<MapData, ServiceKey, Service>,
    /// Service id -> its backends.
    pub backends: Array<MapData, BackendSet>,
    /// Service id -> active/inactive counts per backend.
    pub backend_conns: Array<MapData, BackendConnSet>,
    /// The connection table (an LRU hash).
    pub conntrack: HashMap<MapData, FlowKey, Flow>,
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
            conntrack: typed(&mut take, CONNTRACK_MAP)?,
            service_ports: typed(&mut take, SERVICE_PORTS_MAP)?,
            verdict_stats: typed(&mut take, VERDICT_STATS_MAP)?,
            service_stats: typed(&mut take, SERVICE_STATS_MAP)?,
            backend_stats: typed(&mut take, BACKEND_STATS_MAP)?,
        })
    }

    /// Opens the maps a running `lb` pinned under `dir`.
    pub fn from_pins(dir: &Path) -> anyhow::Result<Self> {
        if !dir.is_dir() {
            bail!(
                "no lb data path is pinned at {} (is `lb run` running with this pin_path? \
                 reading bpffs needs root)",
                dir.display()
            );
        }
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

    /// Replaces the backend set of service `id` (weights, health, MACs).
    pub fn set_backends(&mut self, id: u32, backends: &BackendSet) -> anyhow::Result<()> {
        self.backends
            .set(id, backends, 0)
            .with_context(|| format!("writing backends of service {id} to {BACKENDS_MAP}"))
    }
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
pub fn backend_entry(
    slot: u32,
    addr: IpAddr,
    attachment: Attachment,
    weight: u32,
    state: u32,
) -> Backend {
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
        slot,
    }
}

/// Reads one value of an array map (used for the large backend values).
pub fn array_get<V: Pod>(map: &Array<MapData, V>, index: u32) -> anyhow::Result<V> {
    map.get(&index, 0)
        .with_context(|| format!("reading entry {index}"))
}

/// The loaded data path: the XDP program, its maps, and where it is attached
/// and pinned. Dropping it detaches the program; [`Datapath::unpin`] removes
/// the pins.
pub struct Datapath {
    ebpf: Ebpf,
    /// Typed handles on every map.
    pub maps: Maps,
    links: Vec<(String, XdpLinkId)>,
    pinned: Option<PathBuf>,
}

impl Datapath {
    /// Loads the program and creates its maps, with a connection table of
    /// `max_flows` entries, and pins every map under `pin_dir` when given (the
    /// directory is created and must not exist yet) so that
    /// `bpftool map dump pinned DIR/NAME` and `lb stats` can read them.
    /// Nothing is attached yet.
    pub fn load(max_flows: u32, pin_dir: Option<&Path>) -> anyhow::Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(CONNTRACK_MAP, max_flows)
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
        let mut datapath = Self {
            ebpf,
            maps: match maps {
                Ok(maps) => maps,
                Err(e) => {
                    if let Some(dir) = pin_dir {
                        remove_pins(dir);
                    }
                    return Err(e);
                }
            },
            links: Vec::new(),
            pinned: None,
        };
        datapath.pinned = pin_dir.map(Path::to_owned);
        Ok(datapath)
    }

    /// The XDP program (for `BPF_PROG_TEST_RUN`).
    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(XDP_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("the program was loaded as XDP in Datapath::load")
    }

    /// Attaches the program to `iface` in `mode`.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> anyhow::Result<()> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(XDP_PROGRAM)
            .expect("loaded in Datapath::load")
            .try_into()?;
        let link = program
            .attach(iface, mode)
            .with_context(|| format!("attaching XDP to {iface} in {mode:?} mode"))?;
        self.links.push((iface.to_owned(), link));
        Ok(())
    }

    /// Detaches the program from every NIC it was attached to.
    pub fn detach_all(&mut self) -> anyhow::Result<()> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(XDP_PROGRAM)
            .expect("loaded in Datapath::load")
            .try_into()?;
        for (iface, link) in self.links.drain(..) {
            program
                .detach(link)
                .with_context(|| format!("detaching XDP from {iface}"))?;
        }
        Ok(())
    }

    /// Removes the pins created by [`Datapath::load`].
    pub fn unpin(&mut self) -> anyhow::Result<()> {
        let Some(dir) = self.pinned.take() else {
            return Ok(());
        };
        for name in MAP_NAMES {
            match fs::remove_file(dir.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("unpinning {name}")),
            }
        }
        fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))
    }
}

/// Creates the pin directory, refusing one that already exists.
fn create_pin_dir(dir: &Path) -> anyhow::Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => bail!(
            "{} already exists: another lb is running with this pin_path, or one was \
             killed and left its pins (remove the directory to start afresh)",
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
    for name in MAP_NAMES {
        let _ = fs::remove_file(dir.join(name));
    }
    let _ = fs::remove_dir(dir);
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
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(CONNTRACK_MAP, 1)
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
