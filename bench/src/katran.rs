//! lb against Katran's XDP balancer in the same run (`--katran PATH`).
//!
//! The user builds Katran's `balancer.bpf.o` from its source
//! (docs/performance.md, "Against Katran", has the commands). The bench
//! loads it with `bpftool` (libbpf sets up its map-in-map, `lru_mapping`),
//! configures it as Katran's control plane would for one VIP: the VIP in
//! `vip_map`, the reals in `reals`, the VIP's consistent-hash ring in
//! `ch_rings` (every one of its 65,537 positions names a real), the
//! gateway MAC in `ctl_array`, and a per-CPU LRU of Katran's default size
//! in `lru_mapping` for the CPU the bench runs on: one holding only the
//! established flows for the established cases, another for the new flows
//! (see [`Lru`]). Katran then tunnels
//! (IPIP) each forwarded frame to its real, where lb rewrites MACs: each
//! does what it does in production.
//!
//! Every case sends the same frames to the empty program, the MAC swap, lb
//! and Katran, one call per frame ([`Method::PerCall`]: a new flow or a
//! different flow per packet cannot be repeated on one buffer), every
//! program in turn in every round; a figure is the median over the rounds
//! of the trimmed per-call mean.
//!
//! The new-flow rows run in one of two regimes, each program in its own
//! way of meeting a SYN flood:
//!
//! - Stateful ("default tables", "~1,000-flow table"): every SYN records
//!   its flow. lb's SYN-flood guard is off (set explicitly, checked: no SYN
//!   forwarded statelessly), so each SYN opens a pending flow; Katran's
//!   new-connection rate limiter (the stats entry `MAX_VIPS +
//!   NEW_CONN_RATE_CNTR`: `v1` new flows in the second that began at `v2`;
//!   above `MAX_CONN_RATE`, 125,000 per CPU, it stops recording flows) is
//!   reset to zero outside the timed calls, every [`RATE_RESET_CALLS`]
//!   calls, so each SYN pays for its LRU update (checked: the round's last
//!   flow is in both programs' tables).
//! - Flood ("flood", informational: no target): each program as it runs
//!   above its rate of new flows. lb is in flood mode (`lb_common::flood`:
//!   its guard at `lb run`'s default rate, `FLOOD_UNTIL` held ahead): a
//!   SYN its flow filter has no mark for skips both tables (one with a
//!   mark misses both) and takes its backend from the service's Maglev
//!   table at the tuple's hash, with no insert. Before each of these
//!   rounds lb's filter is rebuilt from its tables, as `lb run`'s sweeper
//!   does every sweep (the stateful rounds leave marks of flows long
//!   evicted). Katran's limiter is NOT reset but held above its rate (`v1`
//!   far above `MAX_CONN_RATE`, `v2` now, written outside the timed
//!   calls): a SYN takes its real from the ring and skips the LRU update.
//!   Checked: neither table records any of the round's flows (a sample of
//!   them), and lb counted every SYN as forwarded statelessly. Katran's
//!   SYN never looks in its LRU, while lb's reads its filter first (a SYN
//!   may belong to a flow it knows).
//!
//! The live benchmark runs the same balancer on real frames
//! ([`LiveKatran`]: the bench's live VIP, an LRU on every CPU).
//!
//! [`Method::PerCall`]: crate::micro::Method::PerCall

use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail, ensure};
use aya::{
    maps::{Array, HashMap, Map, MapData, MapInfo, PerCpuArray, PerCpuValues},
    programs::Xdp,
};
use aya_obj::programs::XdpAttachType;
use lb::{
    datapath::{
        Datapath,
        maps::{FlowCapacity, monotonic_ns},
    },
    sweeper,
};
use lb_common::{
    EVENT_STATELESS_SYN, PROTO_TCP,
    conn_state::{TCP_ACK, TCP_SYN, Timeouts},
};
use lb_tests::{
    VIP4,
    frame::{PORT, ROUTER_MAC, TCP_PSH},
    xdp_case::{XDP_PASS, XDP_TX, up},
};
use serde::Serialize;

use crate::micro::{
    DIRECTOR4, FLOOD_REARM_CALLS, Figure, FloodMode, Params, Reference, SMALL_TABLE_FLOWS, Tuple,
    establish, filter_as_lb_run, flow_event, install, ipv4_datapath, prefill, rotation, stateful,
    thousands, time_per_call_with,
};

/// Reals of Katran's VIP and backends of lb's service: the new-flow case
/// of the issue (64 backends).
const REALS: u32 = 64;
/// Flows in both tables for the case of a different established flow per
/// packet.
const MANY_FLOWS: u32 = 100_000;
/// Katran's per-CPU LRU size with its default total (`LruSize` 8,000,000 in
/// its control plane's config) shared by the online CPUs.
const KATRAN_DEFAULT_LRU_TOTAL: u32 = 8_000_000;
/// Positions of a VIP's consistent-hash ring (`RING_SIZE`).
const RING_SIZE: u32 = 65_537;
/// The stats-map entry of Katran's new-connection rate limiter
/// (`MAX_VIPS + NEW_CONN_RATE_CNTR`).
const CONN_RATE_KEY: u32 = 512 + 2;
/// Calls between two resets of the rate limiter: well below its 125,000
/// new flows per second.
const RATE_RESET_CALLS: u32 = 10_000;
/// Flood clients checked absent from the tables after a flood round.
const FLOOD_SAMPLE: u32 = 64;
/// `BPF_MAP_TYPE_LRU_HASH`, `BPF_MAP_CREATE`, `BPF_MAP_UPDATE_ELEM`,
/// `BPF_MAP_DELETE_ELEM` (linux/bpf.h).
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;

/// Where the rows come from when `--katran` is missing.
pub const HOW_TO: &str = "not measured: build Katran's balancer.bpf.o as docs/performance.md \
                          (\"Against Katran\") shows and run `cargo xtask bench --katran PATH`";

/// Katran's `struct flow_key` (IPv4: the first 4 bytes of each address).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FlowKey {
    src: [u8; 16],
    dst: [u8; 16],
    /// Source then destination port, network byte order.
    ports: [u8; 4],
    proto: u8,
    _pad: [u8; 3],
}

/// Katran's `struct vip_definition`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct VipDefinition {
    vip: [u8; 16],
    /// Network byte order.
    port: [u8; 2],
    proto: u8,
    _pad: u8,
}

/// Katran's `struct vip_meta`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct VipMeta {
    flags: u32,
    vip_num: u32,
}

/// Katran's `struct real_definition` (flags 0: an IPv4 real).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RealDefinition {
    dst: [u8; 16],
    flags: u8,
    _pad: [u8; 3],
}

/// Katran's `struct real_pos_lru`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RealPosLru {
    pos: u32,
    _pad: u32,
    atime: u64,
}

/// Katran's `struct lb_stats`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct LbStats {
    v1: u64,
    v2: u64,
}

// SAFETY: each is #[repr(C)] of integers and byte arrays with explicit
// padding: every bit pattern is valid and no byte is uninitialised.
unsafe impl aya::Pod for FlowKey {}
unsafe impl aya::Pod for VipDefinition {}
unsafe impl aya::Pod for VipMeta {}
unsafe impl aya::Pod for RealDefinition {}
unsafe impl aya::Pod for RealPosLru {}
unsafe impl aya::Pod for LbStats {}

const _: () = {
    assert!(size_of::<FlowKey>() == 40);
    assert!(size_of::<VipDefinition>() == 20);
    assert!(size_of::<RealDefinition>() == 20);
    assert!(size_of::<RealPosLru>() == 16);
};

impl FlowKey {
    /// The key Katran derives from a packet of `tuple` (IPv4).
    fn of(tuple: &Tuple) -> Self {
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (tuple.src, tuple.dst) else {
            unreachable!("the Katran cases are IPv4");
        };
        let mut key = Self {
            proto: tuple.proto,
            ..Self::default()
        };
        key.src[..4].copy_from_slice(&src.octets());
        key.dst[..4].copy_from_slice(&dst.octets());
        key.ports[..2].copy_from_slice(&tuple.sport.to_be_bytes());
        key.ports[2..].copy_from_slice(&tuple.dport.to_be_bytes());
        key
    }
}

/// Katran's balancer, loaded and configured for one VIP.
struct Katran {
    program: Xdp,
    /// `lru_mapping`: the per-CPU LRU of each CPU (none: `fallback_cache`).
    lru_mapping: MapData,
    /// `stats`, for the rate limiter's entry.
    stats: PerCpuArray<MapData, LbStats>,
    /// The LRU holding only the established flows (see [`Lru`]).
    established: LruMap,
    /// The LRU the new flows go to (see [`Lru`]).
    new_flows: LruMap,
    cpu: u32,
}

/// One of Katran's per-CPU LRUs, and its fd for `lru_mapping`.
struct LruMap {
    map: HashMap<MapData, FlowKey, RealPosLru>,
    fd: u32,
}

impl LruMap {
    /// Whether it holds the flow of `tuple`.
    fn records(&self, tuple: &Tuple) -> anyhow::Result<bool> {
        match self.map.get(&FlowKey::of(tuple), 0) {
            Ok(_) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(e).context("reading Katran's LRU"),
        }
    }
}

/// Which LRU Katran uses for the bench's CPU in a case. Both have Katran's
/// default size. The new flows of earlier rounds would lengthen the hash
/// chains of the established flows' lookups, more in a full run (a
/// million per round, up to the LRU's capacity) than in a quick one: so
/// the established flows have an LRU of their own, holding the same
/// [`MANY_FLOWS`] flows as lb's connection table in every run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lru {
    /// The established flows' LRU: only the [`MANY_FLOWS`] flows.
    Established,
    /// The new flows' LRU: every stateful round's SYNs go there.
    NewFlows,
    /// None: Katran falls back to its 1,000-flow `fallback_cache`.
    Fallback,
}

impl Katran {
    /// Loads `object` with `bpftool` and configures one VIP (the bench's
    /// IPv4 VIP and port, TCP) over [`REALS`] reals, with a per-CPU LRU of
    /// `lru_flows` for CPU `cpu`.
    fn load(object: &Path, cpu: usize, lru_flows: u32) -> anyhow::Result<Self> {
        let program = load_balancer(object)?;
        configure(&program, VIP4, PORT, ROUTER_MAC)?;
        let lru_mapping = lru_mapping(&program)?;
        let stats = PerCpuArray::try_from(program_map(&program, "stats")?)?;
        let cpu = u32::try_from(cpu)?;
        let katran = Self {
            program,
            lru_mapping,
            stats,
            established: new_lru(lru_flows)?,
            new_flows: new_lru(lru_flows)?,
            cpu,
        };
        katran.use_lru(Lru::Established)?;
        Ok(katran)
    }

    /// Puts LRU `lru` in `lru_mapping` for the bench's CPU, or none.
    fn use_lru(&self, lru: Lru) -> anyhow::Result<()> {
        let lru_fd = match lru {
            Lru::Established => Some(self.established.fd),
            Lru::NewFlows => Some(self.new_flows.fd),
            Lru::Fallback => None,
        };
        set_cpu_lru(&self.lru_mapping, self.cpu, lru_fd)
    }

    /// Records `flows` established flows of the rotation in the established
    /// flows' LRU, as Katran does on their first packets.
    fn prefill(&mut self, flows: u32) -> anyhow::Result<()> {
        for i in 0..flows {
            let tuple = rotation(flows, i);
            let pos = RealPosLru {
                pos: 1 + i % REALS,
                ..RealPosLru::default()
            };
            self.established
                .map
                .insert(FlowKey::of(&tuple), pos, 0)
                .context("prefilling Katran's LRU")?;
        }
        Ok(())
    }

    /// The kernel's trimmed mean ns per call over `calls` frames `frame(i)`,
    /// each answered with `verdict`; between calls (untimed), the rate
    /// limiter is kept as `limiter` says.
    fn time(
        &mut self,
        params: &Params,
        verdict: u32,
        limiter: Limiter,
        frame: impl Fn(u32) -> Vec<u8>,
    ) -> anyhow::Result<f64> {
        let cpus = online_cpus()?;
        let stats = &mut self.stats;
        let every = match limiter {
            Limiter::Reset => RATE_RESET_CALLS,
            Limiter::Above => FLOOD_REARM_CALLS,
        };
        time_per_call_with(
            &self.program,
            params.calls,
            params.trim,
            verdict,
            frame,
            |i| {
                if i.is_multiple_of(every) {
                    let value = match limiter {
                        // A new second begins at the next SYN, counted from 1.
                        Limiter::Reset => LbStats::default(),
                        // A second that began now, already far above the rate.
                        Limiter::Above => LbStats {
                            v1: u64::MAX / 2,
                            v2: monotonic_ns(),
                        },
                    };
                    stats
                        .set(CONN_RATE_KEY, PerCpuValues::try_from(vec![value; cpus])?, 0)
                        .with_context(|| format!("setting Katran's rate limiter ({limiter:?})"))?;
                }
                Ok(())
            },
        )
    }

    /// How many of the `flows` established flows of the rotation the
    /// established flows' LRU does not hold.
    fn lost(&self, flows: u32) -> anyhow::Result<u32> {
        let mut lost = 0;
        for i in 0..flows {
            lost += u32::from(!self.established.records(&rotation(flows, i))?);
        }
        Ok(lost)
    }
}

/// How Katran's new-connection rate limiter is kept during a case (see
/// the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Limiter {
    /// Reset every [`RATE_RESET_CALLS`] calls: below the rate, every new
    /// flow is recorded.
    Reset,
    /// Held above `MAX_CONN_RATE` (a second that began at the last write,
    /// with far more new flows than the rate): no new flow is recorded.
    Above,
}

/// Katran's balancer in `object`, loaded with `bpftool` (libbpf sets up
/// its map-in-map, `lru_mapping`).
fn load_balancer(object: &Path) -> anyhow::Result<Xdp> {
    let pin = PathBuf::from(format!(
        "/sys/fs/bpf/lb-bench-katran-{}",
        std::process::id()
    ));
    let out = Command::new("bpftool")
        .arg("prog")
        .arg("load")
        .arg(object)
        .arg(&pin)
        .args(["type", "xdp"])
        .output()
        .context("running bpftool (the setup installs it; Katran's object is loaded with it)")?;
    if !out.status.success() {
        bail!(
            "bpftool could not load {} as Katran's XDP balancer: {}",
            object.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let program = Xdp::from_pin(&pin, XdpAttachType::Interface);
    // The program lives on through its fd; the pin is ours to remove.
    std::fs::remove_file(&pin).with_context(|| format!("removing {}", pin.display()))?;
    program.context("opening Katran's pinned program")
}

/// Configures Katran's `program` as its control plane would for one TCP
/// VIP, `vip`:`port`, over [`REALS`] reals: the VIP in `vip_map`, the reals
/// in `reals`, the VIP's consistent-hash ring in `ch_rings` (every one of
/// its positions names a real) and the MAC of the gateway its tunnelled
/// frames go to in `ctl_array`.
fn configure(program: &Xdp, vip: Ipv4Addr, port: u16, gateway: [u8; 6]) -> anyhow::Result<()> {
    let map = |name: &str| program_map(program, name);
    let mut vips: HashMap<_, VipDefinition, VipMeta> = HashMap::try_from(map("vip_map")?)?;
    let mut definition = VipDefinition {
        port: port.to_be_bytes(),
        proto: PROTO_TCP,
        ..VipDefinition::default()
    };
    definition.vip[..4].copy_from_slice(&vip.octets());
    vips.insert(definition, VipMeta::default(), 0)
        .context("vip_map")?;
    let mut reals: Array<_, RealDefinition> = Array::try_from(map("reals")?)?;
    for i in 1..=REALS {
        let mut real = RealDefinition::default();
        real.dst[..4].copy_from_slice(&Ipv4Addr::new(198, 51, 100, i as u8).octets());
        reals.set(i, real, 0).context("reals")?;
    }
    let mut ring: Array<_, u32> = Array::try_from(map("ch_rings")?)?;
    for position in 0..RING_SIZE {
        ring.set(position, 1 + position % REALS, 0)
            .context("ch_rings")?;
    }
    let mut ctl: Array<_, u64> = Array::try_from(map("ctl_array")?)?;
    let mut mac = [0u8; 8];
    mac[..6].copy_from_slice(&gateway);
    ctl.set(0, u64::from_ne_bytes(mac), 0)
        .context("ctl_array")?;
    Ok(())
}

/// Katran's `lru_mapping`: the per-CPU LRU of each CPU.
fn lru_mapping(program: &Xdp) -> anyhow::Result<MapData> {
    match program_map(program, "lru_mapping")? {
        Map::ArrayOfMaps(data) | Map::Unsupported(data) => Ok(data),
        other => bail!("Katran's lru_mapping is not an array of maps: {other:?}"),
    }
}

/// Puts the LRU `lru_fd` in `lru_mapping` for CPU `cpu`; none: Katran falls
/// back to its 1,000-flow `fallback_cache` there.
fn set_cpu_lru(lru_mapping: &MapData, cpu: u32, lru_fd: Option<u32>) -> anyhow::Result<()> {
    let mut attr = [0u64; 4];
    attr[0] = lru_mapping.fd().as_fd().as_raw_fd() as u64;
    attr[1] = (&raw const cpu) as u64;
    let command = if let Some(lru_fd) = &lru_fd {
        attr[2] = (&raw const *lru_fd) as u64;
        BPF_MAP_UPDATE_ELEM
    } else {
        BPF_MAP_DELETE_ELEM
    };
    bpf(command, &mut attr).with_context(|| format!("lru_mapping[{cpu}]"))?;
    Ok(())
}

/// Katran's balancer for the live benchmark, configured for one TCP VIP
/// and with an LRU of Katran's default size on every CPU, as its control
/// plane sets it up: it forwards wherever the director's NAPI runs.
pub struct LiveKatran {
    /// The balancer, attached to the director's NIC by the live bench.
    pub program: Xdp,
}

impl LiveKatran {
    /// Loads Katran's `object` for `vip`:`port` (TCP), its tunnelled frames
    /// addressed to `gateway`.
    pub fn load(object: &Path, vip: Ipv4Addr, port: u16, gateway: [u8; 6]) -> anyhow::Result<Self> {
        let program = load_balancer(object)?;
        configure(&program, vip, port, gateway)?;
        let mapping = lru_mapping(&program)?;
        let cpus = online_cpus()?;
        for cpu in 0..cpus {
            // `lru_mapping` holds the LRU from here on; nothing else reads it.
            let lru = new_lru(KATRAN_DEFAULT_LRU_TOTAL / cpus as u32)?;
            set_cpu_lru(&mapping, u32::try_from(cpu)?, Some(lru.fd))?;
        }
        Ok(Self { program })
    }
}

/// A fresh `LRU_HASH` of Katran's flow keys with room for `flows`, for
/// `lru_mapping` (its inner map's key and value sizes), and its fd.
fn new_lru(flows: u32) -> anyhow::Result<LruMap> {
    // struct { map_type, key_size, value_size, max_entries, map_flags, ... }
    let mut attr = [0u64; 16];
    attr[0] = u64::from(BPF_MAP_TYPE_LRU_HASH) | (size_of::<FlowKey>() as u64) << 32;
    attr[1] = size_of::<RealPosLru>() as u64 | u64::from(flows) << 32;
    let fd = bpf(BPF_MAP_CREATE, &mut attr).context("creating an LRU for Katran")?;
    // SAFETY: the kernel just returned this fd to us, and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = fd.as_raw_fd() as u32;
    let data = MapData::from_fd(fd).context("opening Katran's LRU")?;
    Ok(LruMap {
        map: HashMap::try_from(Map::from_map_data(data)?)?,
        fd: raw,
    })
}

/// The CPUs per-CPU maps have a value for.
fn online_cpus() -> anyhow::Result<usize> {
    aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))
}

/// `bpf(2)` with `attr`; returns its non-negative result. (aya has no call
/// for creating a bare map or updating an array of maps.)
fn bpf<const N: usize>(command: libc::c_long, attr: &mut [u64; N]) -> anyhow::Result<i32> {
    // SAFETY: `attr` is a zero-padded bpf_attr of the command, valid for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr.as_mut_ptr(),
            size_of::<[u64; N]>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(ret as i32)
}

/// Map `name` of `program`.
fn program_map(program: &Xdp, name: &str) -> anyhow::Result<Map> {
    let ids = program
        .info()?
        .map_ids()?
        .ok_or_else(|| anyhow!("the kernel does not list Katran's maps"))?;
    for id in ids {
        if MapInfo::from_id(id)?.name_as_str() == Some(name) {
            return Ok(Map::from_map_data(MapData::from_id(id)?)?);
        }
    }
    bail!("Katran's object has no map {name}: is it balancer.bpf.o?")
}

/// One case: the same frames to every program.
#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Case {
    /// The same established flow on every call.
    Established,
    /// A different established flow on every call, among [`MANY_FLOWS`].
    EstablishedMany,
    /// A SYN of a new flow on every call, into each program's default tables.
    NewFlow,
    /// A SYN of a new flow on every call, into a small table (lb's 1,024
    /// flows; Katran's 1,000-flow fallback LRU).
    NewFlowSmallTable,
    /// A SYN of a new flow on every call, each program above its rate of
    /// new flows (default tables): lb in flood mode, Katran's limiter held
    /// above `MAX_CONN_RATE`; neither records the flow.
    NewFlowFlood,
    /// A frame for no service.
    NoService,
}

impl Case {
    /// Every case, in the order measured and printed.
    const ALL: [Self; 6] = [
        Self::Established,
        Self::EstablishedMany,
        Self::NewFlow,
        Self::NewFlowSmallTable,
        Self::NewFlowFlood,
        Self::NoService,
    ];

    /// What the table calls it.
    fn label(self) -> String {
        match self {
            Self::Established => "established, the same flow per call".into(),
            Self::EstablishedMany => format!(
                "established, any of {} flows per call",
                thousands(MANY_FLOWS)
            ),
            Self::NewFlow => format!("new TCP flow, {REALS} backends, default tables"),
            Self::NewFlowSmallTable => {
                format!("new TCP flow, {REALS} backends, ~1,000-flow table")
            }
            Self::NewFlowFlood => format!("new TCP flow, {REALS} backends, flood"),
            Self::NoService => "no service (XDP_PASS)".into(),
        }
    }

    /// The LRU Katran uses in the case.
    fn katran_lru(self) -> Lru {
        match self {
            Self::Established | Self::EstablishedMany | Self::NoService => Lru::Established,
            Self::NewFlow | Self::NewFlowFlood => Lru::NewFlows,
            Self::NewFlowSmallTable => Lru::Fallback,
        }
    }

    /// The bound on lb's net cost over Katran's, if any (the flood
    /// row is informational).
    fn target(self) -> Option<f64> {
        match self {
            Self::EstablishedMany | Self::NewFlow | Self::NewFlowSmallTable => Some(0.7),
            _ => None,
        }
    }
}

/// One case's figures (ns per call).
#[derive(Serialize)]
pub struct Row {
    /// The case.
    pub case: Case,
    /// Its label in the table.
    pub label: String,
    /// The empty program: the per-call floor.
    pub empty: Figure,
    /// The MAC-swap `XDP_TX` program.
    pub mac_swap: Figure,
    /// lb.
    pub lb: Figure,
    /// Katran.
    pub katran: Figure,
    /// lb's cost net of the floor over Katran's net of the floor (medians).
    pub lb_over_katran: f64,
    /// The bound on that ratio, if any.
    pub target: Option<f64>,
}

/// Everything the Katran comparison needs, loaded once.
struct Bed {
    reference: Reference,
    katran: Katran,
    /// lb at its default limits, 64 backends, [`MANY_FLOWS`] flows; its
    /// guard off but for the flood case.
    lb: Datapath,
    /// Flood mode of `lb`, for the flood case.
    lb_flood: FloodMode,
    /// lb with 1,024-flow tables, its guard off.
    lb_small: Datapath,
    /// The frame of the established flow.
    established: Vec<u8>,
    /// The frame for no service.
    no_service: Vec<u8>,
}

/// Measures every [`Case`] against Katran's balancer in `object`.
pub fn run(object: &Path, params: &Params) -> anyhow::Result<Vec<Row>> {
    let vip = IpAddr::V4(VIP4);
    let lru_flows = KATRAN_DEFAULT_LRU_TOTAL / online_cpus()? as u32;
    let mut katran = Katran::load(object, params.cpu, lru_flows)?;
    let backends = vec![up(1); REALS as usize];
    // Clients of new flows: past the established ones, two sets per round
    // for the stateful cases, then one set for the flood case (recorded by
    // neither program, so the same in every round).
    let clients = u64::from(MANY_FLOWS) + (2 * params.rounds as u64 + 1) * u64::from(params.calls);
    ensure!(
        clients <= u64::from(Tuple::CLIENTS),
        "{} rounds of {} calls need {clients} new-flow clients against Katran: \
         at most {} (fewer rounds or calls)",
        params.rounds,
        params.calls,
        Tuple::CLIENTS
    );
    let mut lb = Datapath::load(FlowCapacity::default(), None)?;
    stateful(&mut lb)?;
    let lb_flood = FloodMode::of(&lb)?;
    install(&mut lb, 0, vip, PROTO_TCP, &backends)?;
    filter_as_lb_run(&mut lb)?;
    prefill(&mut lb, vip, MANY_FLOWS, REALS as u16)?;
    katran.prefill(MANY_FLOWS)?;
    let client = rotation(MANY_FLOWS, 0);
    let established = establish(&lb, &client)?;
    let mut lb_small = ipv4_datapath(SMALL_TABLE_FLOWS, SMALL_TABLE_FLOWS)?;
    stateful(&mut lb_small)?;
    install(&mut lb_small, 0, vip, PROTO_TCP, &backends)?;
    filter_as_lb_run(&mut lb_small)?;
    let no_service = Tuple {
        dst: DIRECTOR4.into(),
        dport: 22,
        ..client
    }
    .frame(TCP_ACK | TCP_PSH);
    let mut bed = Bed {
        reference: Reference::load()?,
        katran,
        lb,
        lb_flood,
        lb_small,
        established,
        no_service,
    };
    let mut rounds: Vec<Vec<[f64; 4]>> = vec![Vec::new(); Case::ALL.len()];
    for round in 0..params.rounds {
        for (i, case) in Case::ALL.into_iter().enumerate() {
            let figures = bed
                .round(params, case, round as u32)
                .with_context(|| format!("against Katran: {}, round {round}", case.label()))?;
            rounds[i].push(figures);
        }
    }
    Ok(Case::ALL
        .into_iter()
        .zip(rounds)
        .map(|(case, rounds)| {
            let column = |k: usize| Figure::of(rounds.iter().map(|r| r[k]).collect());
            let (empty, mac_swap, lb, katran) = (column(0), column(1), column(2), column(3));
            let lb_over_katran =
                (lb.median_ns - empty.median_ns) / (katran.median_ns - empty.median_ns);
            Row {
                case,
                label: case.label(),
                empty,
                mac_swap,
                lb,
                katran,
                lb_over_katran,
                target: case.target(),
            }
        })
        .collect())
}

impl Bed {
    /// One round of `case`: the empty program, the MAC swap, lb, Katran.
    fn round(&mut self, params: &Params, case: Case, round: u32) -> anyhow::Result<[f64; 4]> {
        // New flows: clients past the established ones, others in every
        // round and stateful case, so that every SYN is new (see `run`).
        let first = MANY_FLOWS
            + params.calls
                * match case {
                    Case::NewFlowFlood => 2 * params.rounds as u32,
                    _ => 2 * round + u32::from(case == Case::NewFlow),
                };
        let vip = IpAddr::V4(VIP4);
        let client = move |i: u32| Tuple::client(first + i, vip, PROTO_TCP);
        let new_client = move |i: u32| client(i).frame(TCP_SYN);
        let many = |i: u32| rotation(MANY_FLOWS, i).frame(TCP_ACK | TCP_PSH);
        let established = self.established.clone();
        let no_service = self.no_service.clone();
        let (frame, verdict): (Box<dyn Fn(u32) -> Vec<u8>>, u32) = match case {
            Case::Established => (Box::new(move |_| established.clone()), XDP_TX),
            Case::EstablishedMany => (Box::new(many), XDP_TX),
            Case::NewFlow | Case::NewFlowSmallTable | Case::NewFlowFlood => {
                (Box::new(new_client), XDP_TX)
            }
            Case::NoService => (Box::new(move |_| no_service.clone()), XDP_PASS),
        };
        self.katran.use_lru(case.katran_lru())?;
        let time = |program: &Xdp, verdict: u32| {
            time_per_call_with(program, params.calls, params.trim, verdict, &frame, |_| {
                Ok(())
            })
        };
        let empty = time(self.reference.empty(), XDP_PASS)?;
        let swap_verdict = if verdict == XDP_PASS { XDP_TX } else { verdict };
        let mac_swap = time(self.reference.trivial(), swap_verdict)?;
        let stateless = |lb: &Datapath| flow_event(lb, EVENT_STATELESS_SYN);
        let stateless_before = [stateless(&self.lb)?, stateless(&self.lb_small)?];
        let (ours, limiter) = match case {
            Case::NewFlowSmallTable => (time(self.lb_small.program(), verdict)?, Limiter::Reset),
            Case::NewFlowFlood => (self.lb_in_flood(params, &frame)?, Limiter::Above),
            _ => (time(self.lb.program(), verdict)?, Limiter::Reset),
        };
        if case != Case::NewFlowFlood {
            ensure!(
                [stateless(&self.lb)?, stateless(&self.lb_small)?] == stateless_before,
                "lb forwarded SYNs in flood mode in a case of the stateful path"
            );
        }
        let katran = self.katran.time(params, verdict, limiter, &frame)?;
        ensure!(katran > 0.0, "Katran's figure is 0 ns");
        // The regime each program ran in.
        match case {
            Case::EstablishedMany => {
                let lost = self.katran.lost(MANY_FLOWS)?;
                ensure!(
                    lost == 0,
                    "Katran's LRU lost {lost} of the established flows"
                );
                for i in 0..MANY_FLOWS {
                    ensure!(
                        self.lb.maps.flow(&rotation(MANY_FLOWS, i).key())?.is_some(),
                        "lb's table lost established flow {i}"
                    );
                }
            }
            Case::NewFlow => {
                let last = client(params.calls - 1);
                ensure!(
                    self.lb.maps.flow(&last.key())?.is_some()
                        && self.katran.new_flows.records(&last)?,
                    "the round's last new flow is missing from lb's or Katran's table"
                );
            }
            Case::NewFlowFlood => {
                for i in (0..params.calls).step_by((params.calls / FLOOD_SAMPLE).max(1) as usize) {
                    ensure!(
                        self.lb.maps.flow(&client(i).key())?.is_none(),
                        "lb recorded new flow {i} in flood mode"
                    );
                    ensure!(
                        !self.katran.new_flows.records(&client(i))?,
                        "Katran recorded new flow {i} above its rate limit"
                    );
                }
            }
            _ => {}
        }
        Ok([empty, mac_swap, ours, katran])
    }

    /// lb's figure for the SYNs `frame(i)` in flood mode: enters it, times
    /// the calls holding it, leaves it; checks every SYN was forwarded
    /// without a table entry.
    fn lb_in_flood(
        &mut self,
        params: &Params,
        frame: impl Fn(u32) -> Vec<u8>,
    ) -> anyhow::Result<f64> {
        // The flow filter as `lb run`'s sweeper leaves it: rebuilt from the
        // tables (the stateful rounds before marked millions of flows
        // their tables no longer hold, which no sweep has cleared here).
        sweeper::walk(&mut self.lb.maps, &[], &Timeouts::IPVS)
            .context("rebuilding lb's flow filter")?;
        let before = flow_event(&self.lb, EVENT_STATELESS_SYN)?;
        self.lb_flood.enter(&mut self.lb)?;
        let flood = &mut self.lb_flood;
        let ns = time_per_call_with(
            self.lb.program(),
            params.calls,
            params.trim,
            XDP_TX,
            frame,
            |i| flood.hold(i),
        );
        self.lb_flood.leave(&mut self.lb)?;
        let ns = ns?;
        let stateless = flow_event(&self.lb, EVENT_STATELESS_SYN)? - before;
        ensure!(
            stateless == u64::from(params.calls),
            "lb forwarded {stateless} of {} SYNs statelessly in flood mode",
            params.calls
        );
        Ok(ns)
    }
}

/// One program's figure of a row.
type Column = fn(&Row) -> &Figure;

/// What results.json says about Katran.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// Measured with the balancer object at `object`.
    Measured {
        /// The object given with `--katran`.
        object: PathBuf,
        /// Every case.
        rows: Vec<Row>,
    },
    /// Not measured: how to get the rows.
    NotMeasured(&'static str),
}

impl Comparison {
    /// The table: per call, each program's median and lb's net cost over
    /// Katran's, with the bound.
    pub fn table(&self) -> String {
        let mut s =
            String::from("\nagainst Katran (per call, ns; net = minus the empty program)\n");
        let rows = match self {
            Self::Measured { object, rows } => {
                s += &format!("  Katran: {}\n", object.display());
                rows
            }
            Self::NotMeasured(how) => {
                for case in Case::ALL {
                    s += &format!("  {:<48} {how}\n", case.label());
                }
                return s;
            }
        };
        s += &format!(
            "  {:<48} {:>7} {:>8} {:>7} {:>7} {:>9}  target\n",
            "case", "empty", "mac-swap", "lb", "Katran", "lb/Katran"
        );
        for r in rows {
            let verdict = match r.target {
                Some(limit) if r.lb_over_katran <= limit => format!("<= {limit}x  met"),
                Some(limit) => format!("<= {limit}x  MISSED"),
                None => "-".to_owned(),
            };
            s += &format!(
                "  {:<48} {:>7.1} {:>8.1} {:>7.1} {:>7.1} {:>8.3}x  {verdict}\n",
                r.label,
                r.empty.median_ns,
                r.mac_swap.median_ns,
                r.lb.median_ns,
                r.katran.median_ns,
                r.lb_over_katran
            );
        }
        s
    }

    /// Draws lb's and Katran's net cost per case into `path` (SVG), when
    /// measured.
    pub fn plot(&self, path: &Path) -> anyhow::Result<()> {
        use plotters::prelude::*;
        let Self::Measured { rows, .. } = self else {
            return Ok(());
        };
        let net = |f: &Figure, r: &Row| (f.median_ns - r.empty.median_ns).max(0.0);
        let y_max = rows
            .iter()
            .map(|r| net(&r.lb, r).max(net(&r.katran, r)))
            .fold(1.0, f64::max)
            * 1.15;
        let root = SVGBackend::new(path, (1000, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let n = rows.len();
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "ns per call, minus the empty program: lb vs Katran vs MAC swap",
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(-0.5f64..n as f64 - 0.5, 0f64..y_max)?;
        let short = |case: Case| match case {
            Case::Established => "est., same flow",
            Case::EstablishedMany => "est., 100 k flows",
            Case::NewFlow => "new, default",
            Case::NewFlowSmallTable => "new, ~1,000",
            Case::NewFlowFlood => "new, flood",
            Case::NoService => "no service",
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                    short(rows[i as usize].case).to_owned()
                } else {
                    String::new()
                }
            })
            .y_desc("ns per call, net")
            .draw()?;
        let series: [(&str, RGBColor, Column); 3] = [
            ("lb", RGBColor(0x1f, 0x77, 0xb4), |r| &r.lb),
            ("Katran", RGBColor(0x2c, 0xa0, 0x2c), |r| &r.katran),
            ("MAC swap", RGBColor(0xff, 0x7f, 0x0e), |r| &r.mac_swap),
        ];
        for (k, (name, colour, figure)) in series.into_iter().enumerate() {
            let offset = k as f64 * 0.27 - 0.4;
            chart
                .draw_series(rows.iter().enumerate().map(|(i, r)| {
                    let x = i as f64 + offset;
                    Rectangle::new([(x, 0.0), (x + 0.25, net(figure(r), r))], colour.filled())
                }))?
                .label(name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    }
}
