//! The XDP data path as the control plane sees it: the embedded object, the
//! program loaded from it and its attachments to director NICs; its
//! [`maps`] (their keys and values, and the conversions to and from them,
//! are `lb_common`'s), and its [`pins`] in bpffs.
//!
//! The daemon, `lb stats` and the packet-level tests all go through this
//! module, so maps are provisioned by one piece of code everywhere.

pub mod flow_filter;
pub mod flow_set;
pub mod mapping;
pub mod maps;
pub mod pins;

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLinkId,
    },
};
use aya_obj::programs::XdpAttachType;
use lb_common::{
    CONFIRMED4_MAP, CONFIRMED6_MAP, CONNTRACK4_MAP, CONNTRACK6_MAP, FLOW_CACHE4_MAP,
    FLOW_CACHE6_MAP, FLOW_FILTER_MAP, PENDING4_MAP, PENDING6_MAP, XDP_PROGRAM,
    confirmed_set_capacity, flow_filter_lines, flow_sets,
};

use self::{
    maps::{FlowCapacity, Maps, flow_cache_sets},
    pins::{LINK_PIN_PREFIX, PROGRAM_PIN, create_pin_dir, remove_pin_dir, remove_pins},
};

/// The XDP object built from `lb-ebpf` by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));

/// The program's constant of how many sets `CONFIRMED4` has (the loader
/// sets it with the map's size).
const CONFIRMED4_SETS_GLOBAL: &str = "CONFIRMED4_SETS";
/// As [`CONFIRMED4_SETS_GLOBAL`], for `CONFIRMED6`.
const CONFIRMED6_SETS_GLOBAL: &str = "CONFIRMED6_SETS";
/// The program's constant of how many sets `PENDING4` has (the loader
/// sets it with the map's size).
const PENDING4_SETS_GLOBAL: &str = "PENDING4_SETS";
/// As [`PENDING4_SETS_GLOBAL`], for `PENDING6`.
const PENDING6_SETS_GLOBAL: &str = "PENDING6_SETS";

/// Name of the trivial `XDP_PASS` program in [`EBPF_OBJECT`].
const PASS_PROGRAM: &str = "lb_pass";

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
        let filter_lines = flow_filter_lines(capacity.confirmed());
        let confirmed4_sets = flow_sets(confirmed_set_capacity(capacity.ipv4));
        let confirmed6_sets = flow_sets(confirmed_set_capacity(capacity.ipv6));
        let pending4_sets = flow_sets(capacity.pending_ipv4);
        let pending6_sets = flow_sets(capacity.pending_ipv6);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(CONNTRACK4_MAP, capacity.ipv4)
            .map_max_entries(CONNTRACK6_MAP, capacity.ipv6)
            .map_max_entries(CONFIRMED4_MAP, confirmed4_sets)
            .map_max_entries(CONFIRMED6_MAP, confirmed6_sets)
            .override_global(CONFIRMED4_SETS_GLOBAL, &confirmed4_sets, true)
            .override_global(CONFIRMED6_SETS_GLOBAL, &confirmed6_sets, true)
            .map_max_entries(PENDING4_MAP, pending4_sets)
            .map_max_entries(PENDING6_MAP, pending6_sets)
            .override_global(PENDING4_SETS_GLOBAL, &pending4_sets, true)
            .override_global(PENDING6_SETS_GLOBAL, &pending6_sets, true)
            .map_max_entries(FLOW_CACHE4_MAP, cache_sets)
            .map_max_entries(FLOW_CACHE6_MAP, cache_sets)
            .map_max_entries(FLOW_FILTER_MAP, 2 * filter_lines)
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
        let maps = maps.and_then(|mut maps| {
            maps.stamp_layout()?;
            maps.flow_filter.ready_empty(filter_lines)?;
            Ok(maps)
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
            .map_max_entries(PENDING4_MAP, 1)
            .map_max_entries(PENDING6_MAP, 1)
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
