//! Per-packet cost of lb's XDP program through `BPF_PROG_TEST_RUN`, beside
//! the reference programs of `bench-ebpf` (the trivial MAC-swap `XDP_TX`
//! forwarder and the empty program, i.e. the harness floor).
//!
//! Two ways of timing, each with the kernel's own clock (the `duration` the
//! syscall reports):
//!
//! - [`Method::Repeat`]: one syscall repeats the program `packets` times on
//!   the same buffer and reports the mean. Only valid for a frame that the
//!   program treats the same way on its own output: lb rewrites MACs only, so
//!   an established flow stays established, and the MAC swap swaps back.
//! - [`Method::PerCall`]: a new 5-tuple per packet (a new flow every time, or
//!   a different established flow every time) needs `repeat = 1` in a loop.
//!   The kernel clock ticks in steps of about 10 ns here, so a figure is the
//!   trimmed mean over `calls` calls, never a per-call median; the reference
//!   programs are timed the same way, so the per-call floor (about 90 ns,
//!   mostly the two clock reads) is comparable.
//!
//! Every round times every case and every program once, in turn; a figure is
//! the median over the rounds.
//!
//! lb meets the per-call frames with the MAC filter `lb run` gives a
//! director NIC ([`filter_as_lb_run`]), so every one pays for that check.
//! The repeat cases run without it: lb's output, which the next repetition
//! reads, is addressed to a backend, and the filter would hand it to the
//! network stack.
//!
//! Which part of the data path a case exercises ([`FlowPath`]) is derived
//! from its packets: lb keeps a per-CPU, four-way set-associative flow cache
//! ([`FLOW_CACHE_ENTRIES`] flows per CPU and family) in front of its
//! connection tables. A packet of a known flow whose state does not change is
//! forwarded from the cache when its set holds that flow (the table is read
//! at least once per flow per cache period); a SYN never probes the cache and
//! a new flow is not cached. [`cache_hit_share`] replays a case's flows
//! through a model of the cache, with lb's own hash and set logic, to tell
//! which cases run from the cache and which mostly miss it.
//!
//! The new-flow cases run in two regimes: a table of twice the calls, which
//! never evicts (its memory mostly cache-cold), and a table of
//! [`SMALL_TABLE_FLOWS`], which once full evicts the least recently seen
//! flow of a full set (one per SYN) and stays cache-hot:
//! the regime of Katran's published
//! new-flow figure, whose balancer falls back to a 1,000-entry LRU when its
//! per-CPU LRU maps are not set up, as under `BPF_PROG_TEST_RUN`.
//!
//! Those new-flow cases measure the stateful path: each loads a data path
//! whose SYN-flood guard is off (`set_flood_guard(0)`, checked: no SYN of
//! theirs is forwarded statelessly), so every SYN opens a pending flow.
//! One more case ([`Kind::NewFlowFlood`]) times the same SYNs with lb in
//! flood mode (`lb_common::flood`): the guard at `lb run`'s default rate
//! and `FLOOD_UNTIL` held in the future, so that every SYN misses both
//! tables, takes its backend from the service's Maglev table by the hash
//! of its tuple, and is forwarded without an insert (checked: the tables
//! stay empty, every SYN counted as stateless).

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{Context as _, anyhow, bail, ensure};
use aya::{
    Ebpf,
    maps::{Array, IterableMap as _, Map, MapData, MapInfo},
    programs::{ProgramInfo, TestRun as _, TestRunOptions, Xdp},
};
use lb::datapath::{
    Datapath,
    maps::{FlowCapacity, array_get, flow_cache_sets, monotonic_ns},
};
use lb_common::{
    CONFIRMED4_MAP, CONFIRMED6_MAP, CONNTRACK4_MAP, CONNTRACK6_MAP, CachedFlow, CachedFlow4,
    CachedFlow6, CachedFlowSet4, CachedFlowSet6, DEFAULT_SYN_FLOOD_RATE, EVENT_PENDING_OPENED,
    EVENT_STATELESS_SYN, FLOW_CACHE_ENTRIES, FLOW_CACHE_SETS, FLOW_CACHE4_MAP, FLOW_CACHE6_MAP,
    Flow, FlowCacheSet, FlowKey, NicFilter, PROTO_TCP, PROTO_UDP, SCHEDULER_MH, SCHEDULER_WLC,
    SERVICE_FLAG_SLOPPY_TCP, Service, ServiceKey, confirmed_set_capacity,
    conn_state::{STATE_ESTABLISHED, STATE_UDP, TCP_ACK, TCP_SYN, state_name},
    flow_cache_set, flow_sets, in_flood, pending_capacity,
};
use lb_tests::{
    VIP4, VIP6,
    frame::{L4, NIC_MAC, PORT, Pkt, ROUTER_MAC, TCP_PSH, VIP_MAC, backend_mac},
    xdp_case::{LO_IFINDEX, Real, XDP_PASS, XDP_TX, backend_set, run_once, up},
};
use serde::Serialize;

use crate::BENCH_OBJECT;

/// Length of every frame handed to the programs, where the headers allow it
/// (IPv6 + TCP needs 74 bytes); the IP payload fills it, so lengths agree.
const FRAME_LEN: usize = 64;
/// The director's own address: the destination of traffic for no service.
pub(crate) const DIRECTOR4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Client ports used per client address (1024..=65535).
const PORTS_PER_ADDR: u32 = 64_512;
/// Flows in the connection table for the established-path scaling cases.
pub const SCALING_FLOWS: [u32; 3] = [1_000, 100_000, 1_000_000];
/// IPv4 connection-table capacity of every scaling data path: the same for
/// all, so that only the fill changes, and above the largest fill, so that
/// the table is never full.
const SCALING_CAPACITY: u32 = 1_310_720;
/// IPv6 connection-table capacity of the data paths whose cases are all
/// IPv4 (scaling, new flow): the smallest lb accepts, as the table stays empty.
const IDLE_IPV6_CAPACITY: u32 = 1024;
/// Backends of the service for the new-flow cases.
pub const NEW_FLOW_BACKENDS: [u32; 4] = [1, 16, 64, 256];
/// IPv4 connection-table capacity of the small-table new-flow cases: about
/// the 1,000 entries of Katran's fallback LRU (`DEFAULT_LRU_SIZE` in its
/// balancer_consts.h, the table its new-flow figure is measured against
/// under `BPF_PROG_TEST_RUN`), rounded to the smallest capacity lb accepts.
pub const SMALL_TABLE_FLOWS: u32 = 1024;
/// Backends of the `mh` service of the new-flow case with Maglev.
pub const MH_BACKENDS: u32 = 64;
/// Backends of the service for the small-table new-flow cases.
pub const SMALL_TABLE_BACKENDS: [u32; 2] = [1, 64];
/// Backends of the service of the new-flow case in flood mode.
pub const FLOOD_BACKENDS: u32 = 64;
/// Calls between two writes of `FLOOD_UNTIL` far ahead while a case runs in
/// flood mode (untimed): the window that reaches the guard's rate sets it
/// to one second ahead, and a slow stretch of calls must not end flood
/// mode in the middle of a round.
pub(crate) const FLOOD_REARM_CALLS: u32 = 1_000;
/// Backends of the services for the established cases (as in the demo).
const ESTABLISHED_WEIGHTS: [u32; 3] = [1000, 500, 800];
/// Stride of the walk over prefilled flows (a prime above every fill, so
/// coprime with it: every flow is visited, in an order unrelated to the
/// order the flows were inserted in).
const ROTATION_STRIDE: u64 = 1_000_003;

/// How much to measure.
#[derive(Clone, Copy, Serialize)]
pub struct Params {
    /// Interleaved rounds; a figure is the median over them.
    pub rounds: usize,
    /// Repetitions per [`Method::Repeat`] figure.
    pub packets: u32,
    /// Calls per [`Method::PerCall`] figure (one packet each).
    pub calls: u32,
    /// Fraction of the per-call durations dropped at each end before the mean.
    pub trim: f64,
    /// The CPU everything runs on.
    pub cpu: usize,
}

/// How a figure was timed (see the module documentation).
#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// `repeat = packets` on one buffer; the kernel's mean.
    Repeat,
    /// `repeat = 1` per packet, a new 5-tuple per call; trimmed mean.
    PerCall,
}

/// What a case measures (the report picks targets and scaling curves by it).
#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An established TCP flow over IPv4.
    EstablishedTcp4,
    /// An established TCP flow over IPv6.
    EstablishedTcp6,
    /// A UDP flow already in the table.
    EstablishedUdp4,
    /// TCP for no service: `XDP_PASS`.
    NoService,
    /// A TCP SYN of a new flow: misses in both tables, wlc selection, an
    /// insert into a pending table of twice the calls (never full).
    NewFlow,
    /// A TCP SYN of a new flow with a pending table of [`SMALL_TABLE_FLOWS`]:
    /// misses, wlc selection, and an insert that, once the pending table is
    /// full, evicts least recently used flows (one per SYN on average).
    NewFlowSmallTable,
    /// [`Kind::NewFlow`] to an `mh` service: the entry of its Maglev table
    /// at the flow's hash instead of wlc's tree.
    NewFlowMh,
    /// The SYNs of [`Kind::NewFlow`] (64 backends, wlc) with lb in flood
    /// mode, at its default table sizes: misses in both tables, the
    /// backend from the service's Maglev table at the tuple's hash, no
    /// insert.
    NewFlowFlood,
    /// The same established flow, with `flows_in_table` flows in the table
    /// (served by the flow cache).
    ScalingSameFlow,
    /// A different established flow per packet, out of `flows_in_table`
    /// (from the flow cache while they fit in it, else mostly from the table:
    /// see [`CaseResult::path`]).
    ScalingEveryFlow,
}

/// Where lb's program finds the flow of a case's packets (see the module
/// documentation).
#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowPath {
    /// Mostly from this CPU's flow cache (its expected share of hits is at
    /// least a half).
    CacheHit,
    /// Mostly a flow-cache miss that finds the flow in the connection table.
    Table,
    /// A SYN: no cache probe, a table miss, backend selection, an insert.
    NewFlow,
    /// A SYN in flood mode: no cache probe, a table miss, a pick by the
    /// hash, no insert.
    FloodSyn,
    /// Passed after the service-port check, before any flow lookup.
    NoFlow,
}

impl FlowPath {
    /// The path of known flows whose packets the cache serves at `share`.
    fn of_known(share: f64) -> Self {
        if share >= 0.5 {
            Self::CacheHit
        } else {
            Self::Table
        }
    }

    /// The label the tables print.
    pub fn label(self) -> &'static str {
        match self {
            Self::CacheHit => "cache hit",
            Self::Table => "table",
            Self::NewFlow => "new flow",
            Self::FloodSyn => "flood",
            Self::NoFlow => "no flow",
        }
    }
}

/// A figure: the median over rounds of the per-round ns/packet.
#[derive(Clone, Serialize)]
pub struct Figure {
    /// Median of `rounds_ns`.
    pub median_ns: f64,
    /// ns/packet of each round, in order.
    pub rounds_ns: Vec<f64>,
}

impl Figure {
    /// The figure of the given per-round values.
    pub(crate) fn of(rounds_ns: Vec<f64>) -> Self {
        let mut sorted = rounds_ns.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median_ns = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Self {
            median_ns,
            rounds_ns,
        }
    }
}

/// One case: lb's program and both reference programs, timed the same way.
#[derive(Clone, Serialize)]
pub struct CaseResult {
    /// What is measured, for people.
    pub name: String,
    /// What is measured, for the report.
    pub kind: Kind,
    /// How it was timed.
    pub method: Method,
    /// Bytes of each frame.
    pub frame_len: usize,
    /// Packets per figure per round.
    pub packets: u32,
    /// Flows in the connection table (scaling cases).
    pub flows_in_table: Option<u32>,
    /// Capacity of the connection table the case's flows live in, or are
    /// looked up in (flood mode); `None` for traffic that no table sees.
    pub table_capacity: Option<u32>,
    /// Backends in the service (new-flow cases).
    pub backends: Option<u32>,
    /// Where lb finds the flow of the packets.
    pub path: FlowPath,
    /// Share of the timed packets that lb's flow cache is expected to serve
    /// in one round, within one cache period (a model of the cache replaying
    /// the case's flows; a new period costs one more miss per flow).
    pub cache_hit_share: f64,
    /// lb's program.
    pub ours: Figure,
    /// The MAC-swap `XDP_TX` program.
    pub trivial: Figure,
    /// The empty program: the harness floor.
    pub empty: Figure,
}

/// A loaded program's size.
#[derive(Clone, Serialize)]
pub struct ProgramSize {
    /// Program name.
    pub name: String,
    /// Instructions after the verifier's rewrites (`bpftool prog dump xlated`).
    pub xlated_insns: u32,
    /// Bytes of JIT-compiled code.
    pub jited_bytes: u32,
    /// Instructions the verifier processed to accept it (its complexity).
    pub verifier_processed_insns: Option<u32>,
}

/// One map's memory, as the kernel accounts it.
#[derive(Clone, Serialize)]
pub struct MapMemory {
    /// Map name.
    pub name: String,
    /// Configured capacity.
    pub max_entries: u32,
    /// Key bytes.
    pub key_size: u32,
    /// Value bytes (per CPU for per-CPU maps).
    pub value_size: u32,
    /// `memlock` from `/proc/self/fdinfo/FD` (the kernel's `map_mem_usage`,
    /// what `bpftool map show` prints as `bytes_memlock`).
    pub memlock_bytes: u64,
}

/// Memory of the map set of a data path loaded at lb's default limits.
#[derive(Clone, Serialize)]
pub struct Memory {
    /// IPv4 connection-table capacity (lb's default `max_flows`).
    pub conntrack4_max_flows: u32,
    /// IPv6 connection-table capacity (lb's default `max_flows_v6`).
    pub conntrack6_max_flows: u32,
    /// Every map of the program.
    pub maps: Vec<MapMemory>,
    /// Sum over the maps.
    pub total_bytes: u64,
    /// The IPv4 connection table's memory (its sets and overflow hash)
    /// divided by its capacity.
    pub conntrack4_bytes_per_flow: f64,
    /// The IPv6 connection table's memory (its sets and overflow hash)
    /// divided by its capacity.
    pub conntrack6_bytes_per_flow: f64,
    /// Entries of each per-CPU flow cache (per CPU).
    pub flow_cache_entries: u32,
    /// Memory of both flow caches (IPv4 and IPv6) at the possible CPUs.
    pub flow_cache_bytes: u64,
    /// `flow_cache_bytes` divided by the possible CPUs.
    pub flow_cache_bytes_per_cpu: f64,
    /// Per-CPU maps hold one value per possible CPU; this many here.
    pub possible_cpus: usize,
}

/// Everything the micro-benchmarks measured.
#[derive(Clone, Serialize)]
pub struct Results {
    /// Every case, in the order measured.
    pub cases: Vec<CaseResult>,
    /// Sizes of lb's program and the reference programs.
    pub programs: Vec<ProgramSize>,
    /// Memory of lb's maps at lb's default limits.
    pub memory: Memory,
}

// ---------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------

/// A packet's 5-tuple, as the client sends it.
#[derive(Clone, Copy)]
pub(crate) struct Tuple {
    pub(crate) src: IpAddr,
    pub(crate) dst: IpAddr,
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    pub(crate) proto: u8,
}

impl Tuple {
    /// Distinct clients [`Tuple::client`] has per service.
    pub(crate) const CLIENTS: u32 = 256 * PORTS_PER_ADDR;

    /// The `i`-th distinct client of a service on `vip`:`PORT` (port first,
    /// then the address), from 203.0.113.0/24 or 2001:db8:1::/64.
    pub(crate) fn client(i: u32, vip: IpAddr, proto: u8) -> Self {
        let host = i / PORTS_PER_ADDR;
        let src = match vip {
            IpAddr::V4(_) => {
                assert!(host < 256, "out of client addresses");
                Ipv4Addr::new(203, 0, 113, host as u8).into()
            }
            IpAddr::V6(_) => Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, host as u16).into(),
        };
        Self {
            src,
            dst: vip,
            sport: (1024 + i % PORTS_PER_ADDR) as u16,
            dport: PORT,
            proto,
        }
    }

    /// The connection-table key lb derives from this packet.
    pub(crate) fn key(&self) -> FlowKey {
        FlowKey::new(self.src, self.sport, self.dst, self.dport, self.proto, 0)
            .expect("a client and a VIP of one address family")
    }

    /// A well-formed frame of this tuple (TCP with `tcp_flags`), checksums
    /// included, its IP payload filled up (0xab) to [`FRAME_LEN`] where the
    /// headers leave room; the IPv4 identification is 0.
    pub(crate) fn frame(&self, tcp_flags: u8) -> Vec<u8> {
        let l4 = if self.proto == PROTO_TCP {
            L4::Tcp {
                sport: self.sport,
                dport: self.dport,
                flags: tcp_flags,
            }
        } else {
            L4::Udp {
                sport: self.sport,
                dport: self.dport,
            }
        };
        let mut pkt = Pkt::between(self.src, self.dst, l4);
        if self.src.is_ipv4() {
            pkt = pkt.with_ident(0);
        }
        let fill = FRAME_LEN.saturating_sub(pkt.layout().l4_end);
        pkt.with_payload(&vec![0xab; fill]).build()
    }
}

// ---------------------------------------------------------------------------
// Programs and data paths
// ---------------------------------------------------------------------------

/// Loads lb's data path for IPv4-only cases: an IPv4 connection table of
/// `ipv4_flows` and an IPv4 pending table of `pending_ipv4_flows` (where
/// new TCP flows open), and IPv6 tables of [`IDLE_IPV6_CAPACITY`].
pub(crate) fn ipv4_datapath(ipv4_flows: u32, pending_ipv4_flows: u32) -> anyhow::Result<Datapath> {
    Datapath::load(
        FlowCapacity {
            ipv4: ipv4_flows,
            pending_ipv4: pending_ipv4_flows,
            ..FlowCapacity::with_pending_tables(ipv4_flows, IDLE_IPV6_CAPACITY)
        },
        None,
    )
}

/// Name of the device the test runs' frames arrive on (ifindex
/// [`LO_IFINDEX`]), for its MAC filter.
const TEST_RUN_NIC: &str = "lo";

/// Gives `dp` the MAC filter `lb run` gives a director NIC
/// (`Maps::set_nic_filter`), on the device the test runs' frames arrive
/// on: its own MAC ([`NIC_MAC`]) and the VRRP router id of the virtual
/// MAC the frames are addressed to ([`VIP_MAC`], keepalived's `use_vmac`).
/// A per-call case so pays for the check a director makes on every frame.
/// The repeat cases run without it: their frame comes back from lb
/// addressed to a backend, which the filter passes to the stack. Checks
/// that the filter is in force: a frame for another host's MAC is passed.
pub(crate) fn filter_as_lb_run(dp: &mut Datapath) -> anyhow::Result<()> {
    let vrid = VIP_MAC[5];
    dp.maps
        .set_nic_filter(&NicFilter::new(TEST_RUN_NIC, LO_IFINDEX, NIC_MAC, &[vrid]))?;
    let mut elsewhere = Tuple::client(0, IpAddr::V4(VIP4), PROTO_TCP).frame(TCP_ACK | TCP_PSH);
    elsewhere[..6].copy_from_slice(&ROUTER_MAC);
    let (verdict, _) = run_once(dp.program(), &elsewhere).context("BPF_PROG_TEST_RUN")?;
    ensure!(
        verdict == XDP_PASS,
        "a frame for another MAC: verdict {verdict}, expected XDP_PASS (the MAC filter of {TEST_RUN_NIC})"
    );
    Ok(())
}

/// The reference programs, loaded.
pub(crate) struct Reference {
    ebpf: Ebpf,
}

impl Reference {
    /// Names of the MAC-swap and empty programs in [`BENCH_OBJECT`].
    const TRIVIAL: &str = "bench_mac_swap";
    const EMPTY: &str = "bench_empty";

    /// Loads both programs from [`BENCH_OBJECT`].
    pub(crate) fn load() -> anyhow::Result<Self> {
        let mut ebpf = Ebpf::load(BENCH_OBJECT).context("loading the reference programs")?;
        for name in [Self::TRIVIAL, Self::EMPTY] {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the reference object"))?
                .try_into()?;
            program.load().with_context(|| format!("loading {name}"))?;
        }
        Ok(Self { ebpf })
    }

    /// The loaded program `name`.
    fn program(&self, name: &str) -> &Xdp {
        self.ebpf
            .program(name)
            .and_then(|p| p.try_into().ok())
            .expect("loaded as XDP in Reference::load")
    }

    /// The MAC-swap `XDP_TX` program.
    pub(crate) fn trivial(&self) -> &Xdp {
        self.program(Self::TRIVIAL)
    }

    /// The empty program (`XDP_PASS`).
    pub(crate) fn empty(&self) -> &Xdp {
        self.program(Self::EMPTY)
    }
}

/// The kernel's mean ns/packet over `repeat` runs on one buffer; fails
/// unless the verdict is `verdict`.
fn time_repeat(program: &Xdp, frame: &[u8], repeat: u32, verdict: u32) -> anyhow::Result<f64> {
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::new()
        })
        .context("BPF_PROG_TEST_RUN")?;
    ensure!(
        result.return_value == verdict,
        "verdict {} instead of {verdict}",
        result.return_value
    );
    Ok(result.duration.as_nanos() as f64)
}

/// Trimmed mean ns/packet of one call per frame (`frame(i)` for `i` in
/// `0..calls`); fails unless every verdict is `verdict`.
fn time_per_call(
    program: &Xdp,
    calls: u32,
    trim: f64,
    verdict: u32,
    frame: impl Fn(u32) -> Vec<u8>,
) -> anyhow::Result<f64> {
    time_per_call_with(program, calls, trim, verdict, frame, |_| Ok(()))
}

/// [`time_per_call`], running `before(i)` (untimed) before call `i`.
pub(crate) fn time_per_call_with(
    program: &Xdp,
    calls: u32,
    trim: f64,
    verdict: u32,
    frame: impl Fn(u32) -> Vec<u8>,
    mut before: impl FnMut(u32) -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    let mut durations = Vec::with_capacity(calls as usize);
    for i in 0..calls {
        before(i)?;
        let frame = frame(i);
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                ..TestRunOptions::new()
            })
            .context("BPF_PROG_TEST_RUN")?;
        ensure!(
            result.return_value == verdict,
            "call {i}: verdict {} instead of {verdict}",
            result.return_value
        );
        durations.push(result.duration.as_nanos() as u64);
    }
    durations.sort_unstable();
    let cut = (durations.len() as f64 * trim) as usize;
    let kept = &durations[cut..durations.len() - cut];
    Ok(kept.iter().sum::<u64>() as f64 / kept.len() as f64)
}

/// The state of `key`'s flow in `dp`'s tables.
fn flow_of(dp: &Datapath, key: &FlowKey) -> anyhow::Result<Flow> {
    dp.maps
        .flow(key)?
        .ok_or_else(|| anyhow!("the measured flow is not in the connection table"))
}

/// Fails unless `key`'s flow is in `state`.
fn expect_state(dp: &Datapath, key: &FlowKey, state: u32) -> anyhow::Result<()> {
    let flow_state = u32::from(flow_of(dp, key)?.state);
    ensure!(
        flow_state == state,
        "flow in {} instead of {}",
        state_name(flow_state),
        state_name(state)
    );
    Ok(())
}

/// Sends `frame` through lb once and checks it is forwarded: `XDP_TX`, MACs
/// rewritten to its flow's backend and the NIC, every other byte unchanged.
fn expect_forwarded(dp: &Datapath, frame: &[u8], key: &FlowKey) -> anyhow::Result<()> {
    let (verdict, out) = run_once(dp.program(), frame).context("BPF_PROG_TEST_RUN")?;
    ensure!(verdict == XDP_TX, "verdict {verdict} instead of XDP_TX");
    let flow = flow_of(dp, key)?;
    let mut expected = frame.to_vec();
    expected[..6].copy_from_slice(&backend_mac(
        u32::from(flow.service_id),
        u32::from(flow.backend_slot),
    ));
    expected[6..12].copy_from_slice(&NIC_MAC);
    ensure!(
        out == expected,
        "forwarded frame differs from the input with its MACs replaced"
    );
    Ok(())
}

/// A case timed with [`Method::Repeat`] on lb's data path number `dp`.
struct RepeatCase {
    name: String,
    kind: Kind,
    flows_in_table: Option<u32>,
    table_capacity: Option<u32>,
    dp: usize,
    frame: Vec<u8>,
    verdict: u32,
    /// The flow the frame belongs to and the state it must keep.
    flow: Option<(FlowKey, u32)>,
}

/// Opens the TCP flow of `tuple` through lb (SYN, then ACK) and returns the
/// data segment (ACK|PSH) the benchmark repeats; checks it is forwarded.
pub(crate) fn establish(dp: &Datapath, tuple: &Tuple) -> anyhow::Result<Vec<u8>> {
    for flags in [TCP_SYN, TCP_ACK] {
        let (verdict, _) =
            run_once(dp.program(), &tuple.frame(flags)).context("BPF_PROG_TEST_RUN")?;
        ensure!(verdict == XDP_TX, "handshake packet: verdict {verdict}");
    }
    expect_state(dp, &tuple.key(), STATE_ESTABLISHED)?;
    let frame = tuple.frame(TCP_ACK | TCP_PSH);
    expect_forwarded(dp, &frame, &tuple.key())?;
    Ok(frame)
}

/// Inserts established flows of service 0 for clients `1..flows` from
/// userspace (client 0 is the measured flow, opened through the program).
pub(crate) fn prefill(
    dp: &mut Datapath,
    vip: IpAddr,
    flows: u32,
    backends: u16,
) -> anyhow::Result<()> {
    let now = monotonic_ns();
    for i in 1..flows {
        let flow = Flow {
            last_seen_ns: now,
            service_id: 0,
            backend_slot: (i % u32::from(backends)) as u16,
            state: STATE_ESTABLISHED as u16,
            flags: 0,
        };
        dp.maps
            .insert_flow(&Tuple::client(i, vip, PROTO_TCP).key(), &flow)
            .with_context(|| format!("prefilling flow {i} of {flows}"))?;
    }
    Ok(())
}

/// Share of `packets` packets, of flows `flow(0)`, `flow(1)`, ..., that one
/// CPU's flow cache serves, starting cold and within one cache period: lb's
/// own set logic (`FlowCacheSet::hit` and `way_for`) over sets indexed by
/// lb's own hash, where a packet hits when its set holds its flow and a
/// miss caches its flow if the set has a way for it. Only for packets of
/// known flows whose state the packet does not change.
fn cache_hit_share(packets: u32, flow: impl Fn(u32) -> FlowKey) -> f64 {
    let mut sets4 = vec![CachedFlowSet4::default(); FLOW_CACHE_SETS as usize];
    let mut sets6 = vec![CachedFlowSet6::default(); FLOW_CACHE_SETS as usize];
    let mut hits = 0u64;
    for i in 0..packets {
        let hit = match flow(i) {
            FlowKey::V4(key) => model_packet(&mut sets4, &key.words(), || CachedFlow4 {
                key,
                stamp: MODEL_PERIOD,
                ..CachedFlow4::default()
            }),
            FlowKey::V6(key) => model_packet(&mut sets6, &key.words(), || CachedFlow6 {
                key,
                stamp: MODEL_PERIOD,
                ..CachedFlow6::default()
            }),
        };
        hits += u64::from(hit);
    }
    hits as f64 / f64::from(packets.max(1))
}

/// The one cache period [`cache_hit_share`] runs in (empty ways have stamp 0).
const MODEL_PERIOD: u64 = 1;

/// One packet of flow `words` through its set of `sets` (one CPU's cache)
/// in [`MODEL_PERIOD`]: whether it hit; on a miss, the entry `entry` makes
/// goes into the way the set gives the flow, if any.
fn model_packet<E: CachedFlow<N>, const N: usize>(
    sets: &mut [FlowCacheSet<E>],
    words: &[u64; N],
    entry: impl FnOnce() -> E,
) -> bool {
    let set = &mut sets[flow_cache_set(words) as usize];
    if set.hit(words, MODEL_PERIOD).is_some() {
        return true;
    }
    if let Some(way) = set.way_for(words, MODEL_PERIOD) {
        set.ways[way] = entry();
    }
    false
}

/// Sizes of a loaded program.
fn program_size(name: &str, info: &ProgramInfo) -> ProgramSize {
    ProgramSize {
        name: name.to_owned(),
        xlated_insns: info.size_translated().unwrap_or(0) / 8,
        jited_bytes: info.size_jitted(),
        verifier_processed_insns: info.verified_instruction_count(),
    }
}

/// The `memlock:` line of a BPF object's fdinfo.
fn fdinfo_memlock(fd: i32) -> anyhow::Result<u64> {
    let path = format!("/proc/self/fdinfo/{fd}");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no memlock in {path}"))
}

/// Memory of every map of `dp`'s program (loaded with `capacity`).
fn memory(dp: &Datapath, capacity: FlowCapacity) -> anyhow::Result<Memory> {
    let ids = dp
        .program()
        .info()?
        .map_ids()?
        .ok_or_else(|| anyhow!("the kernel does not list the program's maps"))?;
    // SERVICE_STATS is written by the control plane only, so the program
    // does not reference it.
    let control_plane_only = dp.maps.service_stats.map().info()?.id();
    let mut maps = Vec::new();
    for id in ids.into_iter().chain([control_plane_only]) {
        let info = MapInfo::from_id(id)?;
        let fd = info.fd()?;
        maps.push(MapMemory {
            name: info.name_as_str().unwrap_or("?").to_owned(),
            max_entries: info.max_entries(),
            key_size: info.key_size(),
            value_size: info.value_size(),
            memlock_bytes: fdinfo_memlock(fd.as_fd().as_raw_fd())?,
        });
    }
    maps.sort_by_key(|m| std::cmp::Reverse(m.memlock_bytes));
    // The memlock of map `name`, once its size is checked to be `entries`.
    let memlock_of = |name: &str, entries: u32| -> anyhow::Result<u64> {
        let map = maps
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| anyhow!("no {name} map"))?;
        ensure!(
            map.max_entries == entries,
            "{name} holds {} entries where {entries} were expected",
            map.max_entries
        );
        Ok(map.memlock_bytes)
    };
    // A connection table's memory (its sets and its overflow hash) per
    // flow of its `max_flows`.
    let bytes_per_flow = |sets: &str, overflow: &str, capacity: u32| -> anyhow::Result<f64> {
        let set_count = flow_sets(confirmed_set_capacity(capacity));
        let bytes = memlock_of(sets, set_count)? + memlock_of(overflow, capacity)?;
        Ok(bytes as f64 / f64::from(capacity))
    };
    let cache_sets = flow_cache_sets()?;
    let flow_cache_bytes =
        memlock_of(FLOW_CACHE4_MAP, cache_sets)? + memlock_of(FLOW_CACHE6_MAP, cache_sets)?;
    let possible_cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    Ok(Memory {
        conntrack4_max_flows: capacity.ipv4,
        conntrack6_max_flows: capacity.ipv6,
        conntrack4_bytes_per_flow: bytes_per_flow(CONFIRMED4_MAP, CONNTRACK4_MAP, capacity.ipv4)?,
        conntrack6_bytes_per_flow: bytes_per_flow(CONFIRMED6_MAP, CONNTRACK6_MAP, capacity.ipv6)?,
        flow_cache_entries: FLOW_CACHE_ENTRIES,
        flow_cache_bytes,
        flow_cache_bytes_per_cpu: flow_cache_bytes as f64 / possible_cpus as f64,
        total_bytes: maps.iter().map(|m| m.memlock_bytes).sum(),
        maps,
        possible_cpus,
    })
}

// ---------------------------------------------------------------------------
// The benchmark
// ---------------------------------------------------------------------------

/// Per-round values of the three programs of one case.
#[derive(Default)]
struct Samples {
    ours: Vec<f64>,
    trivial: Vec<f64>,
    empty: Vec<f64>,
}

impl Samples {
    /// The medians of lb, the MAC swap and the empty program.
    fn figures(&self) -> (Figure, Figure, Figure) {
        (
            Figure::of(self.ours.clone()),
            Figure::of(self.trivial.clone()),
            Figure::of(self.empty.clone()),
        )
    }
}

/// Runs every case for `params.rounds` interleaved rounds, printing progress
/// to stderr.
pub fn run(params: &Params) -> anyhow::Result<Results> {
    let reference = Reference::load()?;
    let vip4 = IpAddr::V4(VIP4);
    let vip6 = IpAddr::V6(VIP6);

    // The data path at lb's default limits: the established and no-service
    // cases, and the memory figures.
    let defaults = FlowCapacity::default();
    let mut main = Datapath::load(defaults, None)?;
    install(&mut main, 0, vip4, PROTO_TCP, &ESTABLISHED_WEIGHTS.map(up))?;
    install(&mut main, 1, vip6, PROTO_TCP, &ESTABLISHED_WEIGHTS.map(up))?;
    install(&mut main, 2, vip4, PROTO_UDP, &ESTABLISHED_WEIGHTS.map(up))?;
    let memory = memory(&main, defaults)?;

    let tcp4 = Tuple::client(0, vip4, PROTO_TCP);
    let tcp6 = Tuple::client(0, vip6, PROTO_TCP);
    let udp4 = Tuple::client(0, vip4, PROTO_UDP);
    let udp_frame = udp4.frame(0);
    let (verdict, _) = run_once(main.program(), &udp_frame).context("BPF_PROG_TEST_RUN")?;
    ensure!(verdict == XDP_TX, "first UDP datagram: verdict {verdict}");
    expect_forwarded(&main, &udp_frame, &udp4.key())?;
    let no_service = Tuple {
        dst: DIRECTOR4.into(),
        dport: 22,
        ..tcp4
    }
    .frame(TCP_ACK | TCP_PSH);
    let (verdict, out) = run_once(main.program(), &no_service).context("BPF_PROG_TEST_RUN")?;
    ensure!(
        verdict == XDP_PASS && out == no_service,
        "traffic for no service: verdict {verdict} (frame changed: {})",
        out != no_service
    );

    let mut cases = vec![
        RepeatCase {
            name: "established TCP/IPv4".into(),
            kind: Kind::EstablishedTcp4,
            flows_in_table: None,
            table_capacity: Some(defaults.ipv4),
            dp: 0,
            frame: establish(&main, &tcp4)?,
            verdict: XDP_TX,
            flow: Some((tcp4.key(), STATE_ESTABLISHED)),
        },
        RepeatCase {
            name: "established TCP/IPv6".into(),
            kind: Kind::EstablishedTcp6,
            flows_in_table: None,
            table_capacity: Some(defaults.ipv6),
            dp: 0,
            frame: establish(&main, &tcp6)?,
            verdict: XDP_TX,
            flow: Some((tcp6.key(), STATE_ESTABLISHED)),
        },
        RepeatCase {
            name: "UDP/IPv4 flow".into(),
            kind: Kind::EstablishedUdp4,
            flows_in_table: None,
            table_capacity: Some(defaults.ipv4),
            dp: 0,
            frame: udp_frame,
            verdict: XDP_TX,
            flow: Some((udp4.key(), STATE_UDP)),
        },
        RepeatCase {
            name: "no service (XDP_PASS)".into(),
            kind: Kind::NoService,
            flows_in_table: None,
            table_capacity: None,
            dp: 0,
            frame: no_service,
            verdict: XDP_PASS,
            flow: None,
        },
    ];

    // One data path per table fill, all of the same capacity.
    let mut dps = vec![main];
    for flows in SCALING_FLOWS {
        eprintln!("lb-bench: prefilling a connection table with {flows} flows");
        let mut dp = ipv4_datapath(SCALING_CAPACITY, pending_capacity(SCALING_CAPACITY))?;
        install(&mut dp, 0, vip4, PROTO_TCP, &ESTABLISHED_WEIGHTS.map(up))?;
        prefill(&mut dp, vip4, flows, ESTABLISHED_WEIGHTS.len() as u16)?;
        cases.push(RepeatCase {
            name: format!("est. TCP/IPv4, same flow, {flows} in table"),
            kind: Kind::ScalingSameFlow,
            flows_in_table: Some(flows),
            table_capacity: Some(SCALING_CAPACITY),
            dp: dps.len(),
            frame: establish(&dp, &tcp4)?,
            verdict: XDP_TX,
            flow: Some((tcp4.key(), STATE_ESTABLISHED)),
        });
        dps.push(dp);
    }

    let mut repeat_samples: Vec<Samples> = cases.iter().map(|_| Samples::default()).collect();
    let mut new_flow_samples: Vec<Vec<f64>> = NEW_FLOW_BACKENDS.iter().map(|_| vec![]).collect();
    let mut small_table_samples: Vec<Vec<f64>> =
        SMALL_TABLE_BACKENDS.iter().map(|_| vec![]).collect();
    let mut mh_samples: Vec<f64> = Vec::new();
    let mut flood_samples: Vec<f64> = Vec::new();
    let mut every_flow_samples: Vec<Vec<f64>> = SCALING_FLOWS.iter().map(|_| vec![]).collect();
    // The reference programs timed per call (one figure for every per-call case).
    let mut per_call_reference = Samples::default();
    // lb in flood mode at its default limits: nothing is recorded, so one
    // data path serves every round.
    let mut flood_dp = Datapath::load(defaults, None)?;
    install_scheduled(
        &mut flood_dp,
        vip4,
        &vec![up(1); FLOOD_BACKENDS as usize],
        SCHEDULER_WLC,
    )?;
    filter_as_lb_run(&mut flood_dp)?;
    let mut flood = FloodMode::of(&flood_dp)?;
    flood.enter(&mut flood_dp)?;
    let syn = |i: u32| Tuple::client(i, vip4, PROTO_TCP).frame(TCP_SYN);

    for round in 0..params.rounds {
        eprintln!("lb-bench: round {} of {}", round + 1, params.rounds);
        for (case, samples) in cases.iter().zip(&mut repeat_samples) {
            let dp = &dps[case.dp];
            let context = || format!("{} (round {})", case.name, round + 1);
            samples.ours.push(
                time_repeat(dp.program(), &case.frame, params.packets, case.verdict)
                    .with_context(context)?,
            );
            if let Some((key, state)) = &case.flow {
                expect_state(dp, key, *state).with_context(context)?;
            }
            samples.trivial.push(
                time_repeat(reference.trivial(), &case.frame, params.packets, XDP_TX)
                    .with_context(context)?,
            );
            samples.empty.push(
                time_repeat(reference.empty(), &case.frame, params.packets, XDP_PASS)
                    .with_context(context)?,
            );
        }

        per_call_reference.trivial.push(
            time_per_call(reference.trivial(), params.calls, params.trim, XDP_TX, syn)
                .context("per-call MAC swap")?,
        );
        per_call_reference.empty.push(
            time_per_call(reference.empty(), params.calls, params.trim, XDP_PASS, syn)
                .context("per-call empty program")?,
        );

        for (&n, samples) in NEW_FLOW_BACKENDS.iter().zip(&mut new_flow_samples) {
            samples.push(
                new_flow_round(params, n, new_flow_capacity(params), SCHEDULER_WLC)
                    .with_context(|| format!("new flow, {n} backends (round {})", round + 1))?,
            );
        }
        mh_samples.push(
            new_flow_round(params, MH_BACKENDS, new_flow_capacity(params), SCHEDULER_MH)
                .with_context(|| format!("new flow, mh (round {})", round + 1))?,
        );
        flood_samples.push(
            flood_round(params, &flood_dp, &mut flood)
                .with_context(|| format!("new flow, flood mode (round {})", round + 1))?,
        );
        for (&n, samples) in SMALL_TABLE_BACKENDS.iter().zip(&mut small_table_samples) {
            samples.push(
                new_flow_round(params, n, SMALL_TABLE_FLOWS, SCHEDULER_WLC).with_context(|| {
                    format!(
                        "new flow, {n} backends, {SMALL_TABLE_FLOWS}-flow table (round {})",
                        round + 1
                    )
                })?,
            );
        }

        for ((&flows, samples), dp) in SCALING_FLOWS
            .iter()
            .zip(&mut every_flow_samples)
            .zip(&mut dps[1..])
        {
            let every = |i: u32| rotation(flows, i).frame(TCP_ACK | TCP_PSH);
            // Filtered for these calls only: this data path's repeat case
            // runs without (see `filter_as_lb_run`).
            filter_as_lb_run(dp)?;
            samples.push(
                time_per_call(dp.program(), params.calls, params.trim, XDP_TX, every)
                    .with_context(|| format!("every flow of {flows} (round {})", round + 1))?,
            );
            dp.maps.remove_nic(TEST_RUN_NIC)?;
        }
    }

    let mut results = Vec::new();
    for (case, samples) in cases.iter().zip(&repeat_samples) {
        let (ours, trivial, empty) = samples.figures();
        // The same frame every packet: one flow whose state stays, or none.
        let (path, cache_hit_share) = match &case.flow {
            Some((key, _)) => {
                let share = cache_hit_share(params.packets, |_| *key);
                (FlowPath::of_known(share), share)
            }
            None => (FlowPath::NoFlow, 0.0),
        };
        results.push(CaseResult {
            name: case.name.clone(),
            kind: case.kind,
            method: Method::Repeat,
            frame_len: case.frame.len(),
            packets: params.packets,
            flows_in_table: case.flows_in_table,
            table_capacity: case.table_capacity,
            backends: None,
            path,
            cache_hit_share,
            ours,
            trivial,
            empty,
        });
    }
    let (trivial, empty) = (
        Figure::of(per_call_reference.trivial),
        Figure::of(per_call_reference.empty),
    );
    // A per-call case; the caller fills in what is particular to it.
    let per_call = |name: String, kind, path, ours: &Vec<f64>| CaseResult {
        name,
        kind,
        method: Method::PerCall,
        frame_len: syn(0).len(),
        packets: params.calls,
        flows_in_table: None,
        table_capacity: None,
        backends: None,
        path,
        cache_hit_share: 0.0,
        ours: Figure::of(ours.clone()),
        trivial: trivial.clone(),
        empty: empty.clone(),
    };
    // SYNs never probe the cache.
    for (&n, samples) in NEW_FLOW_BACKENDS.iter().zip(&new_flow_samples) {
        results.push(CaseResult {
            table_capacity: Some(new_flow_capacity(params)),
            backends: Some(n),
            ..per_call(
                format!("new TCP flow, {n} backends"),
                Kind::NewFlow,
                FlowPath::NewFlow,
                samples,
            )
        });
    }
    results.push(CaseResult {
        table_capacity: Some(new_flow_capacity(params)),
        backends: Some(MH_BACKENDS),
        ..per_call(
            format!("new TCP flow, {MH_BACKENDS} backends, mh"),
            Kind::NewFlowMh,
            FlowPath::NewFlow,
            &mh_samples,
        )
    });
    results.push(CaseResult {
        table_capacity: Some(defaults.ipv4),
        backends: Some(FLOOD_BACKENDS),
        ..per_call(
            format!("new TCP flow, {FLOOD_BACKENDS} backends, flood mode"),
            Kind::NewFlowFlood,
            FlowPath::FloodSyn,
            &flood_samples,
        )
    });
    for (&n, samples) in SMALL_TABLE_BACKENDS.iter().zip(&small_table_samples) {
        results.push(CaseResult {
            table_capacity: Some(SMALL_TABLE_FLOWS),
            backends: Some(n),
            ..per_call(
                format!(
                    "new TCP flow, {n} backends, {}-flow table",
                    thousands(SMALL_TABLE_FLOWS)
                ),
                Kind::NewFlowSmallTable,
                FlowPath::NewFlow,
                samples,
            )
        });
    }
    for (&flows, samples) in SCALING_FLOWS.iter().zip(&every_flow_samples) {
        let share = cache_hit_share(params.calls, |i| rotation(flows, i).key());
        results.push(CaseResult {
            flows_in_table: Some(flows),
            table_capacity: Some(SCALING_CAPACITY),
            cache_hit_share: share,
            ..per_call(
                format!("est. TCP/IPv4, any of {flows} flows per pkt"),
                Kind::ScalingEveryFlow,
                FlowPath::of_known(share),
                samples,
            )
        });
    }

    let programs = vec![
        program_size(lb_common::XDP_PROGRAM, &dps[0].program().info()?),
        program_size(Reference::TRIVIAL, &reference.trivial().info()?),
        program_size(Reference::EMPTY, &reference.empty().info()?),
    ];
    Ok(Results {
        cases: results,
        programs,
        memory,
    })
}

/// The client of call `i` of the walk over `flows` prefilled flows (of
/// service 0 on the IPv4 VIP), [`ROTATION_STRIDE`] apart.
pub(crate) fn rotation(flows: u32, i: u32) -> Tuple {
    let client = (u64::from(i) * ROTATION_STRIDE % u64::from(flows)) as u32;
    Tuple::client(client, IpAddr::V4(VIP4), PROTO_TCP)
}

/// `n` with a comma between groups of three digits (1,024).
pub fn thousands(n: u32) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// IPv4 pending-table (and connection-table) capacity of the large-table
/// new-flow cases: twice the calls, so that the table never fills and
/// never evicts.
fn new_flow_capacity(params: &Params) -> u32 {
    (2 * params.calls).next_power_of_two()
}

/// One round of a new-flow case with `n` backends: a fresh data path whose
/// IPv4 tables hold `capacity` flows each, then `params.calls` SYNs of
/// distinct clients, each forwarded (`XDP_TX`, checked per call) after a
/// miss in both tables and an insert into the pending table.
///
/// Checks that every SYN inserted a flow: the backends' connection counters
/// add up to the calls (the program counts every successful insert; an
/// eviction does not decrease them, as no sweeper runs here). When the calls
/// outnumber `capacity` (the small table), the pending table evicted (the
/// least recently seen flow of a full set): checks too that the table
/// ended full (every way of every set holds a flow, as the calls outnumber
/// the sets many times over) and still holds the newest flow.
fn new_flow_round(params: &Params, n: u32, capacity: u32, scheduler: u32) -> anyhow::Result<f64> {
    let vip4 = IpAddr::V4(VIP4);
    let mut dp = ipv4_datapath(capacity, capacity)?;
    stateful(&mut dp)?;
    install_scheduled(&mut dp, vip4, &vec![up(1); n as usize], scheduler)?;
    filter_as_lb_run(&mut dp)?;
    let client = |i: u32| Tuple::client(i, vip4, PROTO_TCP);
    let ns = time_per_call(dp.program(), params.calls, params.trim, XDP_TX, |i| {
        client(i).frame(TCP_SYN)
    })?;
    expect_no_stateless_syn(&dp)?;
    let conns = array_get(&dp.maps.backend_conns, 0)?;
    let inserted: u64 = conns.conns.iter().map(|c| c.active + c.inactive).sum();
    if inserted != u64::from(params.calls) {
        bail!(
            "{inserted} flows inserted for {} SYNs: not every SYN was a new flow",
            params.calls
        );
    }
    if params.calls > capacity {
        let held = dp.maps.flow_count();
        ensure!(
            held == capacity as usize,
            "the {capacity}-flow table holds {held} flows after {} SYNs (expected it full)",
            params.calls,
        );
        ensure!(
            dp.maps.flow(&client(params.calls - 1).key())?.is_some(),
            "the pending table evicted the newest flow"
        );
    }
    Ok(ns)
}

/// One round of the new-flow case in flood mode on `dp` (lb's default
/// tables, [`FLOOD_BACKENDS`] backends, in flood mode through `flood`):
/// the SYNs of [`new_flow_round`], each forwarded (`XDP_TX`, checked per
/// call). Checks that the flood path really ran: every SYN was counted as
/// forwarded without a table entry and none opened a pending flow, the
/// tables and the backends' connection counts are still empty, and flood
/// mode still holds.
fn flood_round(params: &Params, dp: &Datapath, flood: &mut FloodMode) -> anyhow::Result<f64> {
    let vip4 = IpAddr::V4(VIP4);
    let (stateless, opened) = (
        flow_event(dp, EVENT_STATELESS_SYN)?,
        flow_event(dp, EVENT_PENDING_OPENED)?,
    );
    let ns = time_per_call_with(
        dp.program(),
        params.calls,
        params.trim,
        XDP_TX,
        |i| Tuple::client(i, vip4, PROTO_TCP).frame(TCP_SYN),
        |i| flood.hold(i),
    )?;
    let stateless = flow_event(dp, EVENT_STATELESS_SYN)? - stateless;
    let opened = flow_event(dp, EVENT_PENDING_OPENED)? - opened;
    ensure!(
        stateless == u64::from(params.calls) && opened == 0,
        "{stateless} of {} SYNs forwarded statelessly, {opened} opened a pending flow: \
         not every SYN took the flood path",
        params.calls
    );
    let held = dp.maps.flow_count();
    ensure!(
        held == 0,
        "the flow tables hold {held} flows after a round in flood mode"
    );
    let conns = array_get(&dp.maps.backend_conns, 0)?;
    let counted: u64 = conns.conns.iter().map(|c| c.active + c.inactive).sum();
    ensure!(counted == 0, "{counted} connections counted in flood mode");
    ensure!(
        in_flood(monotonic_ns(), dp.maps.flood_until()?),
        "flood mode ended during the round"
    );
    Ok(ns)
}

/// Makes `dp` open every new flow the stateful way: its SYN-flood guard
/// off (a freshly loaded data path's setting, written anyway so that a
/// change of that default cannot move the stateful cases to flood mode).
pub(crate) fn stateful(dp: &mut Datapath) -> anyhow::Result<()> {
    dp.maps
        .set_flood_guard(0)
        .context("turning lb's SYN-flood guard off")
}

/// Fails if `dp` forwarded any IPv4 SYN without a table entry (flood mode).
pub(crate) fn expect_no_stateless_syn(dp: &Datapath) -> anyhow::Result<()> {
    let stateless = flow_event(dp, EVENT_STATELESS_SYN)?;
    ensure!(
        stateless == 0,
        "{stateless} SYNs were forwarded in flood mode in a case of the stateful path"
    );
    Ok(())
}

/// The count of IPv4 flow-table event `event` (`EVENT_*`) of `dp`.
pub(crate) fn flow_event(dp: &Datapath, event: u32) -> anyhow::Result<u64> {
    Ok(dp.maps.flow_events(false)?[event as usize])
}

/// lb in flood mode (`lb_common::flood`): the SYN-flood guard at `lb run`'s
/// default rate and `FLOOD_UNTIL` far ahead, written again every
/// [`FLOOD_REARM_CALLS`] calls ([`FloodMode::hold`]), as the program moves
/// it to one second ahead each time a window reaches the rate.
pub(crate) struct FloodMode {
    /// A handle of its own on the data path's `FLOOD_UNTIL` (the data path
    /// is borrowed while its program runs).
    until: Array<MapData, u64>,
}

impl FloodMode {
    /// The end of flood mode written: far beyond any test.
    const FAR: u64 = u64::MAX / 2;

    /// Opens `dp`'s `FLOOD_UNTIL` (flood mode is not entered yet).
    pub(crate) fn of(dp: &Datapath) -> anyhow::Result<Self> {
        let id = dp.maps.flood_until.map().info()?.id();
        let until = Array::try_from(Map::from_map_data(MapData::from_id(id)?)?)?;
        Ok(Self { until })
    }

    /// Turns `dp`'s guard on at `lb run`'s default rate and enters flood mode.
    pub(crate) fn enter(&mut self, dp: &mut Datapath) -> anyhow::Result<()> {
        dp.maps
            .set_flood_guard(DEFAULT_SYN_FLOOD_RATE)
            .context("turning lb's SYN-flood guard on")?;
        self.set_until(Self::FAR)
    }

    /// Before call `i` (untimed): keeps flood mode on.
    pub(crate) fn hold(&mut self, i: u32) -> anyhow::Result<()> {
        if i.is_multiple_of(FLOOD_REARM_CALLS) {
            self.set_until(Self::FAR)?;
        }
        Ok(())
    }

    /// Leaves flood mode, with no grace period for ACKs (`FLOOD_UNTIL` 0:
    /// never entered), and turns `dp`'s guard off again.
    pub(crate) fn leave(&mut self, dp: &mut Datapath) -> anyhow::Result<()> {
        self.set_until(0)?;
        stateful(dp)
    }

    /// Writes `FLOOD_UNTIL`.
    fn set_until(&mut self, until: u64) -> anyhow::Result<()> {
        self.until
            .set(0, until, 0)
            .context("writing lb's FLOOD_UNTIL")
    }
}

/// Installs service `id` on (`vip`, `PORT`, `proto`) over `reals` in `dp`,
/// as a `sloppy_tcp` service: the established cases send ACKs of flows that
/// no SYN opened.
pub(crate) fn install(
    dp: &mut Datapath,
    id: u32,
    vip: IpAddr,
    proto: u8,
    reals: &[Real],
) -> anyhow::Result<()> {
    dp.maps.set_service(
        &[ServiceKey::new(vip, PORT, proto, 0)],
        Service {
            id,
            flags: SERVICE_FLAG_SLOPPY_TCP,
            ..Service::default()
        },
        &backend_set(id, vip, reals),
    )
}

/// Installs the new-flow cases' TCP service 0 on (`vip`, `PORT`) over
/// `reals`, scheduled by `SCHEDULER_*` `scheduler`.
fn install_scheduled(
    dp: &mut Datapath,
    vip: IpAddr,
    reals: &[Real],
    scheduler: u32,
) -> anyhow::Result<()> {
    dp.maps.set_service(
        &[ServiceKey::new(vip, PORT, PROTO_TCP, 0)],
        Service {
            id: 0,
            flags: SERVICE_FLAG_SLOPPY_TCP,
            scheduler,
            ..Service::default()
        },
        &backend_set(0, vip, reals),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1024), "1,024");
        assert_eq!(thousands(262_144), "262,144");
        assert_eq!(thousands(2_097_152), "2,097,152");
    }

    #[test]
    fn cache_model_tells_hits_from_misses() {
        let key = Tuple::client(0, IpAddr::V4(VIP4), PROTO_TCP).key();
        // One flow: every packet but the first is a hit.
        assert_eq!(cache_hit_share(1000, |_| key), 0.999);
        // Each flow once: all misses, whatever the cache's size.
        assert_eq!(
            cache_hit_share(10_000, |i| rotation(1_000_000, i).key()),
            0.0
        );
        // Far more flows than entries, visited in turn: only the flows that
        // took a way first (at most 16,384 of 100,000) hit, for the period.
        let many = cache_hit_share(1_000_000, |i| rotation(100_000, i).key());
        assert!((0.05..0.17).contains(&many), "{many}");
        // 10,000 flows in 4,096 four-way sets: most, not all, hit.
        let some = cache_hit_share(100_000, |i| rotation(10_000, i).key());
        assert!((0.85..0.98).contains(&some), "{some}");
        // Fewer flows than entries: mostly hits.
        assert!(cache_hit_share(100_000, |i| rotation(1000, i).key()) > 0.9);
    }
}
