//! The packet fixtures' harness, in the style of katran's
//! `lib/testing/fixtures`: a [`Case`] loads a fresh [`Datapath`] (connection
//! tables of [`CAPACITY`] entries), provisions its maps through the same
//! `lb::datapath` functions the daemon uses, runs frames through the real
//! program with `BPF_PROG_TEST_RUN` and checks the verdict, the output frame
//! and the per-reason verdict counters, printing the input, expected and
//! actual frames in hex on a mismatch. A [`Fixture`] is one stateless case
//! (map setup, input frame, expected verdict and output) and
//! [`run_fixtures`] runs a table of them, naming every case that fails.
//!
//! Without `ctx_in`, the kernel runs the program as if the frame had arrived
//! on the loopback device (ifindex [`LO_IFINDEX`]); backends are provisioned
//! as reached through that NIC, with the director NIC's MAC
//! ([`NIC_MAC`]). [`Case::arrive_on`] makes frames arrive on another NIC
//! (a `struct xdp_md` in `ctx_in`, [`xdp_md`]), which must exist in the
//! calling thread's network namespace.
//!
//! Loading the program needs root (or CAP_BPF + CAP_NET_ADMIN): without it
//! [`privileged`] prints a loud `SKIPPED (needs root)` notice and the case
//! returns, unless `CI` is set, in which case it fails.

use std::{
    io::{self, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    panic::{self, AssertUnwindSafe},
};

use aya::{
    Pod,
    maps::{HashMap, Map, MapData, MapInfo, PerCpuArray},
    programs::{ProgramError, TestRun as _, TestRunOptions, Xdp},
};
use lb::datapath::{
    Datapath,
    maps::{FlowCapacity, FlowTable, Maps, array_get},
};
use lb_common::{
    Attachment, BACKEND_STATE_UP, Backend, BackendConnSet, BackendConns, BackendSet,
    CONNTRACK4_MAP, CONNTRACK6_MAP, Counters, Flow, NUM_REASONS, PROTO_TCP, REASON_FORWARDED,
    SERVICE_FLAG_SLOPPY_TCP, Service, ServiceKey, VERDICT_STATS_MAP, backend_index,
    conn_state::state_name, reason_name,
};

use crate::{
    bed::{VIP4, VIP6},
    frame::{ETH_LEN, Ip, NIC_MAC, PORT, Pkt, backend_mac, hex, ip_len},
};

// ---------------------------------------------------------------------------
// Constants and map setup
// ---------------------------------------------------------------------------

/// Flow-table sizes of every fixture's data path: connection tables of
/// 1,024 flows per family, and their (1,024-flow) pending tables.
pub const CAPACITY: FlowCapacity = FlowCapacity::with_pending_tables(1024, 1024);
/// Ifindex the kernel reports for `BPF_PROG_TEST_RUN` frames (loopback).
pub const LO_IFINDEX: u32 = 1;
/// Service id of the service under test: not 0, so that an id mix-up shows.
pub const SERVICE_ID: u32 = 3;
/// Service id of a decoy service sharing the VIP and port (other protocol).
pub const DECOY_ID: u32 = 7;
/// `XDP_ABORTED` (the constants below are the kernel's `enum xdp_action`).
pub const XDP_ABORTED: u32 = 0;
/// `XDP_DROP`.
pub const XDP_DROP: u32 = 1;
/// `XDP_PASS`.
pub const XDP_PASS: u32 = 2;
/// `XDP_TX`.
pub const XDP_TX: u32 = 3;
/// `XDP_REDIRECT`.
pub const XDP_REDIRECT: u32 = 4;

/// Name of an XDP verdict, for failure messages.
pub fn action_name(action: u32) -> &'static str {
    match action {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "XDP_<other>",
    }
}

/// Address of backend `slot`, in the VIP's family: 198.51.100.10 or
/// 2001:db8:2::10 for slot 0, counting up.
fn backend_addr(vip: IpAddr, slot: u32) -> IpAddr {
    match vip {
        IpAddr::V4(_) => {
            Ipv4Addr::from_bits(Ipv4Addr::new(198, 51, 100, 10).to_bits() + slot).into()
        }
        IpAddr::V6(_) => {
            let first = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x10);
            Ipv6Addr::from_bits(first.to_bits() + u128::from(slot)).into()
        }
    }
}

/// A backend as the fixtures describe it: weight and `BACKEND_STATE_*`.
#[derive(Clone, Copy)]
pub struct Real {
    /// Weight.
    pub weight: u32,
    /// `BACKEND_STATE_*`.
    pub state: u32,
}

/// An up backend of weight `weight`.
pub const fn up(weight: u32) -> Real {
    Real {
        weight,
        state: BACKEND_STATE_UP,
    }
}

/// The backend set of service `service_id` behind `vip`, one slot per entry
/// of `reals`, built with [`Backend::new`] like the daemon does.
pub fn backend_set(service_id: u32, vip: IpAddr, reals: &[Real]) -> BackendSet {
    let mut set = BackendSet::default();
    for (slot, real) in (0u32..).zip(reals) {
        let attachment = Attachment {
            mac: backend_mac(service_id, slot),
            nic_mac: NIC_MAC,
            ifindex: LO_IFINDEX,
        };
        set.backends[slot as usize] =
            Backend::new(backend_addr(vip, slot), attachment, real.weight, real.state);
    }
    set.len = reals.len() as u32;
    set
}

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// Whether this process may load BPF programs; prints a loud skip notice
/// (or panics when `CI` is set) when it may not.
pub fn privileged(case: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{case}: packet fixtures need root (CI is set, so this is a failure, not a skip)"
    );
    loud(&format!("SKIPPED (needs root): packet fixture `{case}`"));
    false
}

/// Writes `notice` straight to the process's stderr, past libtest's output
/// capture (which would hide an `eprintln!` of a passing test).
pub fn loud(notice: &str) {
    let _ = writeln!(io::stderr(), "\n!!!!! {notice} !!!!!\n");
}

/// What a fixture expects of one frame.
pub enum Expect {
    /// `XDP_TX` with exactly these output bytes, counted as forwarded.
    Tx(Vec<u8>),
    /// `XDP_REDIRECT` (to another director NIC) with exactly these output
    /// bytes, counted as forwarded.
    Redirect(Vec<u8>),
    /// `XDP_PASS` with the input unchanged, counted under the reason.
    Pass(u32),
    /// `XDP_DROP` with the input unchanged, counted under the reason.
    Drop(u32),
    /// `XDP_TX` with exactly these bytes, counted under the reason instead
    /// of as forwarded: a reply the program made in place of the input, or
    /// an ICMP error sent on to a backend.
    Reply(Vec<u8>, u32),
}

/// A frame run through the program, not yet checked (see [`Case::run_counted`]).
pub struct Sent {
    /// The verdict counters of every reason just before the run.
    before: Vec<Counters>,
    /// The verdict.
    action: u32,
    /// The output frame.
    out: Vec<u8>,
}

/// One fixture case: a freshly loaded data path and the case's name.
pub struct Case {
    /// The case's name, the start of every failure message.
    pub name: String,
    /// The data path under test.
    pub dp: Datapath,
    /// The NIC frames arrive on (`None`: loopback).
    ingress: Option<u32>,
}

impl Case {
    /// Loads a fresh data path; `None` (after a loud notice) without privileges.
    pub fn new(name: impl Into<String>) -> Option<Self> {
        let name = name.into();
        if !privileged(&name) {
            return None;
        }
        let dp = Datapath::load(CAPACITY, None)
            .unwrap_or_else(|e| panic!("{name}: loading the data path: {e:#}"));
        Some(Self {
            name,
            dp,
            ingress: None,
        })
    }

    /// Makes the frames run from now on arrive on NIC `ifindex` (in the
    /// calling thread's network namespace).
    pub fn arrive_on(&mut self, ifindex: u32) {
        self.ingress = Some(ifindex);
    }

    /// Installs service `id` on (`vip`, PORT, `proto`) with one backend per
    /// entry of `reals`, as a `sloppy_tcp` service: any packet of a new
    /// flow opens it, which is what most fixtures send. The fixtures of the
    /// default, where only a SYN opens a TCP flow, use
    /// [`Case::service_with_flags`].
    pub fn service(&mut self, id: u32, vip: IpAddr, proto: u8, reals: &[Real]) {
        self.service_with_flags(id, vip, proto, reals, SERVICE_FLAG_SLOPPY_TCP);
    }

    /// [`Case::service`] with the `SERVICE_FLAG_*` bits `flags`.
    pub fn service_with_flags(
        &mut self,
        id: u32,
        vip: IpAddr,
        proto: u8,
        reals: &[Real],
        flags: u32,
    ) {
        self.service_on_vlan(id, vip, proto, 0, reals, flags);
    }

    /// [`Case::service_with_flags`] for the frames of VLAN path `vlan`
    /// (see `lb_common::vlan`; 0: untagged frames).
    pub fn service_on_vlan(
        &mut self,
        id: u32,
        vip: IpAddr,
        proto: u8,
        vlan: u32,
        reals: &[Real],
        flags: u32,
    ) {
        self.dp
            .maps
            .set_service(
                &[ServiceKey::new(vip, PORT, proto, vlan)],
                Service {
                    id,
                    flags,
                    ..Service::default()
                },
                &backend_set(id, vip, reals),
            )
            .unwrap_or_else(|e| panic!("{}: set_service: {e:#}", self.name));
    }

    /// Every service's value in the service map, as the sweeper takes them.
    pub fn service_values(&self) -> Vec<Service> {
        self.dp
            .maps
            .services
            .iter()
            .map(|entry| {
                entry
                    .unwrap_or_else(|e| panic!("{}: reading the service map: {e}", self.name))
                    .1
            })
            .collect()
    }

    /// Replaces the backends of service `id` (as a re-weight, health change
    /// or removal on a running director does).
    pub fn backends(&mut self, id: u32, vip: IpAddr, reals: &[Real]) {
        self.dp
            .maps
            .set_backends(id, &backend_set(id, vip, reals))
            .unwrap_or_else(|e| panic!("{}: set_backends: {e:#}", self.name));
    }

    /// The verdict counters of every reason, summed over CPUs, as `lb stats`
    /// shows them (`forwarded` adds up the services).
    pub fn verdicts(&self) -> Vec<Counters> {
        let maps = &self.dp.maps;
        maps.forwarded_by_services()
            .and_then(|forwarded| maps.verdict_counters(forwarded))
            .unwrap_or_else(|e| panic!("{}: reading verdict counters: {e:#}", self.name))
    }

    /// One entry of a per-CPU stats map, summed over CPUs.
    pub fn counters(&self, map: &PerCpuArray<MapData, Counters>, index: u32) -> Counters {
        Maps::counters(map, index)
            .unwrap_or_else(|e| panic!("{}: reading counters {index}: {e:#}", self.name))
    }

    /// Statistics of service `id`, as `lb stats` shows them.
    pub fn service_stats(&self, id: u32) -> Counters {
        self.dp
            .maps
            .service_counters(id)
            .unwrap_or_else(|e| panic!("{}: reading service {id} counters: {e:#}", self.name))
    }

    /// Statistics of backend `slot` of service `id`.
    pub fn backend_stats(&self, id: u32, slot: u32) -> Counters {
        self.counters(&self.dp.maps.backend_stats, backend_index(id, slot))
    }

    /// The backend set of service `id` as the data path sees it.
    pub fn backend_set(&self, id: u32) -> BackendSet {
        array_get(&self.dp.maps.backends, id)
            .unwrap_or_else(|e| panic!("{}: reading backends: {e:#}", self.name))
    }

    /// Active/inactive counts of backend `slot` of service `id`.
    pub fn conns(&self, id: u32, slot: u32) -> BackendConns {
        self.conn_set(id).conns[slot as usize]
    }

    /// Active/inactive counts of every slot of service `id`.
    pub fn conn_set(&self, id: u32) -> BackendConnSet {
        array_get(&self.dp.maps.backend_conns, id)
            .unwrap_or_else(|e| panic!("{}: reading backend conns: {e:#}", self.name))
    }

    /// Overwrites the counters of service `id` (its scheduler tree is left
    /// as it is), as a lost update would leave them.
    pub fn set_conns(&mut self, id: u32, conns: &BackendConnSet) {
        self.dp
            .maps
            .backend_conns
            .set(id, conns, 0)
            .unwrap_or_else(|e| panic!("{}: writing backend conns: {e:#}", self.name));
    }

    /// The connection-table entry of `pkt`'s flow, if any.
    pub fn flow(&self, pkt: &Pkt) -> Option<Flow> {
        self.dp
            .maps
            .flow(&pkt.flow_key())
            .unwrap_or_else(|e| panic!("{}: reading the connection table: {e:#}", self.name))
    }

    /// Number of flows in both connection tables.
    pub fn flow_count(&self) -> usize {
        self.dp.maps.flow_count()
    }

    /// Number of flows in the IPv4 and in the IPv6 tables (connection
    /// table's sets and overflow hash, pending table), each counted by
    /// walking its map directly.
    pub fn flows_per_table(&self) -> (usize, usize) {
        let maps = &self.dp.maps;
        (
            maps.confirmed4.len()
                + table_len(&self.name, CONNTRACK4_MAP, &maps.conntrack4)
                + maps.pending4.len(),
            maps.confirmed6.len()
                + table_len(&self.name, CONNTRACK6_MAP, &maps.conntrack6)
                + maps.pending6.len(),
        )
    }

    /// The table that holds `pkt`'s flow, if any.
    pub fn table_of(&self, pkt: &Pkt) -> Option<FlowTable> {
        self.dp
            .maps
            .flow_in(&pkt.flow_key())
            .unwrap_or_else(|e| panic!("{}: reading the flow tables: {e:#}", self.name))
            .map(|(table, _)| table)
    }

    /// Asserts that `pkt`'s flow is bound to `slot` of service `id` in
    /// `state`, and returns its last-seen time.
    pub fn expect_flow(&self, label: &str, pkt: &Pkt, id: u32, slot: u32, state: u32) -> u64 {
        let table = match pkt.ip {
            Ip::V4 { .. } => "IPv4 tables",
            Ip::V6 { .. } => "IPv6 tables",
        };
        let flow = self
            .flow(pkt)
            .unwrap_or_else(|| panic!("{}/{label}: flow missing from {table}", self.name));
        assert_eq!(
            (
                u32::from(flow.service_id),
                u32::from(flow.backend_slot),
                state_name(u32::from(flow.state))
            ),
            (id, slot, state_name(state)),
            "{}/{label}: flow (service, slot, state)",
            self.name
        );
        assert!(
            flow.last_seen_ns > 0,
            "{}/{label}: last_seen_ns unset",
            self.name
        );
        flow.last_seen_ns
    }

    /// Asserts the active/inactive counts of backend `slot` of service `id`.
    pub fn expect_conns(&self, label: &str, id: u32, slot: u32, active: u64, inactive: u64) {
        let c = self.conns(id, slot);
        assert_eq!(
            (c.active, c.inactive),
            (active, inactive),
            "{}/{label}: (active, inactive) of slot {slot}",
            self.name
        );
    }

    /// Runs `input` through the program (see [`run_on`]), arriving on the
    /// case's NIC.
    pub fn run(&self, input: &[u8]) -> Result<(u32, Vec<u8>), ProgramError> {
        run_on(self.dp.program(), input, self.ingress)
    }

    /// Runs `pkt` and checks it is forwarded to `slot` of service `id` (see
    /// [`Case::send`]). Returns the output.
    pub fn forward(&self, label: &str, pkt: &Pkt, id: u32, slot: u32) -> Vec<u8> {
        self.send(label, &pkt.build(), Expect::Tx(pkt.forwarded(id, slot)))
    }

    /// Runs `input` and checks the verdict, the output bytes and that the
    /// verdict counters moved by exactly one packet of `input.len() - 14`
    /// bytes under the expected reason (a forwarded frame: its IP length,
    /// without VLAN tags). Returns the output.
    pub fn send(&self, label: &str, input: &[u8], expect: Expect) -> Vec<u8> {
        let sent = self.run_counted(label, input);
        self.check(label, input, expect, sent)
    }

    /// Runs `input` through the program, noting the verdict counters just
    /// before it, for [`Case::check`] to judge later.
    pub fn run_counted(&self, label: &str, input: &[u8]) -> Sent {
        let before = self.verdicts();
        let (action, out) = self.run(input).unwrap_or_else(|e| {
            panic!(
                "{}/{label}: BPF_PROG_TEST_RUN failed: {e:#}\ninput:\n{}",
                self.name,
                hex(input)
            )
        });
        Sent {
            before,
            action,
            out,
        }
    }

    /// Checks what [`Case::run_counted`] got for `input` as [`Case::send`]
    /// does. Returns the output.
    pub fn check(&self, label: &str, input: &[u8], expect: Expect, sent: Sent) -> Vec<u8> {
        let Sent {
            before,
            action: got,
            out,
        } = sent;
        let (action, reason, expected) = match expect {
            Expect::Tx(bytes) => (XDP_TX, REASON_FORWARDED, bytes),
            Expect::Redirect(bytes) => (XDP_REDIRECT, REASON_FORWARDED, bytes),
            Expect::Pass(reason) => (XDP_PASS, reason, input.to_vec()),
            Expect::Drop(reason) => (XDP_DROP, reason, input.to_vec()),
            Expect::Reply(bytes, reason) => (XDP_TX, reason, bytes),
        };
        if got != action || out != expected {
            let first_diff = out
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b)
                .unwrap_or(out.len().min(expected.len()));
            panic!(
                "{}/{label}: expected {} ({}), got {}; output differs from byte {first_diff} \
                 (lengths {} expected, {} actual)\ninput ({} bytes):\n{}expected:\n{}actual:\n{}",
                self.name,
                action_name(action),
                reason_name(reason),
                action_name(got),
                expected.len(),
                out.len(),
                input.len(),
                hex(input),
                hex(&expected),
                hex(&out),
            );
        }
        let after = self.verdicts();
        for r in 0..NUM_REASONS {
            let (b, a) = (before[r as usize], after[r as usize]);
            let delta = (
                a.packets - b.packets,
                a.bytes - b.bytes,
                a.new_conns - b.new_conns,
            );
            let want = match r {
                REASON_FORWARDED if r == reason => (1, ip_len(input), 0),
                _ if r == reason => (1, l3(input), 0),
                _ => (0, 0, 0),
            };
            assert_eq!(
                delta,
                want,
                "{}/{label}: {VERDICT_STATS_MAP}[{}] moved by (packets, bytes, new_conns)",
                self.name,
                reason_name(r)
            );
        }
        out
    }
    /// The data path's map `table`, opened by map id from the loaded
    /// program's map ids (apart from `lb::datapath::maps::Maps`, which does not
    /// hold every map), after checking its key and value sizes.
    pub fn map_by_name(&self, table: &str, key_len: usize, value_len: usize) -> Map {
        let name = &self.name;
        let ids = self
            .dp
            .program()
            .info()
            .and_then(|info| info.map_ids())
            .unwrap_or_else(|e| panic!("{name}: listing the program's maps: {e}"))
            .unwrap_or_else(|| panic!("{name}: the kernel does not list the program's maps"));
        let (id, info) = ids
            .into_iter()
            .map(|id| {
                let info = MapInfo::from_id(id).unwrap_or_else(|e| panic!("{name}: map {id}: {e}"));
                (id, info)
            })
            .find(|(_, info)| info.name_as_str() == Some(table))
            .unwrap_or_else(|| panic!("{name}: the program uses no map {table}"));
        assert_eq!(
            (info.key_size() as usize, info.value_size() as usize),
            (key_len, value_len),
            "{name}: {table} key/value sizes"
        );
        MapData::from_id(id)
            .map_err(anyhow::Error::from)
            .and_then(|data| Ok(Map::from_map_data(data)?))
            .unwrap_or_else(|e| panic!("{name}: opening {table} by id: {e:#}"))
    }
}

/// Runs `input` once through `program` and returns the verdict and the
/// output frame, or the error `BPF_PROG_TEST_RUN` returned.
pub fn run_once(program: &Xdp, input: &[u8]) -> Result<(u32, Vec<u8>), ProgramError> {
    run_on(program, input, None)
}

/// [`run_once`], the frame arriving on NIC `ingress` (in the calling
/// thread's network namespace; `None`: loopback). An `XDP_REDIRECT` is
/// returned with its frame, not sent (no live frames).
pub fn run_on(
    program: &Xdp,
    input: &[u8],
    ingress: Option<u32>,
) -> Result<(u32, Vec<u8>), ProgramError> {
    let mut out = vec![0u8; input.len() + 256];
    let ctx = ingress.map(|ifindex| xdp_md(input.len() as u32, ifindex));
    let result = program.test_run(TestRunOptions {
        data_in: Some(input),
        data_out: Some(&mut out),
        ctx_in: ctx.as_ref().map(|c| c.as_slice()),
        repeat: 1,
        ..Default::default()
    })?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out))
}

/// A `struct xdp_md` for `BPF_PROG_TEST_RUN`'s `ctx_in`: data at 0, `len`
/// bytes, no metadata, received on NIC `ifindex` queue 0.
pub fn xdp_md(len: u32, ifindex: u32) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&len.to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// Number of keys in `map` (named `table`), walking it; panics on a read error.
fn table_len<K: Pod, V: Pod>(case: &str, table: &str, map: &HashMap<MapData, K, V>) -> usize {
    map.keys()
        .try_fold(0, |len, key| key.map(|_| len + 1))
        .unwrap_or_else(|e| panic!("{case}: walking {table}: {e}"))
}

/// A [`Counters`] value, for comparisons.
pub const fn counted(packets: u64, bytes: u64, new_conns: u64) -> Counters {
    Counters {
        packets,
        bytes,
        new_conns,
    }
}

/// Layer-3 length of a frame (what the byte counters add).
pub const fn l3(frame: &[u8]) -> u64 {
    (frame.len() - ETH_LEN) as u64
}

// ---------------------------------------------------------------------------
// Tables of stateless fixtures
// ---------------------------------------------------------------------------

/// A service a [`Fixture`] installs before its frame runs.
#[derive(Clone)]
pub struct ServiceSetup {
    /// Service id.
    pub id: u32,
    /// The VIP (the service listens on [`PORT`]).
    pub vip: IpAddr,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    /// The VLAN path of its frames (0: untagged).
    pub vlan: u32,
    /// One backend per slot.
    pub reals: Vec<Real>,
}

/// The flow a forwarded [`Fixture`] frame must open.
struct Opens {
    /// The frame, for its flow key and address family.
    pkt: Pkt,
    /// Service id.
    id: u32,
    /// Backend slot.
    slot: u32,
    /// `STATE_*`.
    state: u32,
}

/// One stateless fixture, as a row of a table in katran's style: a name,
/// the map setup (services on a fresh data path), one input frame, the
/// expected verdict and output frame. [`run_fixtures`] also checks what the
/// frame left behind: a forwarded frame opens exactly its flow, any other
/// frame opens none and leaves every service's statistics and connection
/// counts at zero.
pub struct Fixture {
    name: String,
    services: Vec<ServiceSetup>,
    input: Vec<u8>,
    expect: Expect,
    opens: Option<Opens>,
}

impl Fixture {
    /// `pkt` is forwarded to `slot` of service `id` (`XDP_TX`, MACs
    /// rewritten) and opens its flow there in `state`.
    pub fn forwarded(name: impl Into<String>, pkt: &Pkt, id: u32, slot: u32, state: u32) -> Self {
        Self {
            name: name.into(),
            services: Vec::new(),
            input: pkt.build(),
            expect: Expect::Tx(pkt.forwarded(id, slot)),
            opens: Some(Opens {
                pkt: pkt.clone(),
                id,
                slot,
                state,
            }),
        }
    }

    /// `input` passes to the stack unchanged, counted under `reason`.
    pub fn passed(name: impl Into<String>, input: Vec<u8>, reason: u32) -> Self {
        Self::unforwarded(name, input, Expect::Pass(reason))
    }

    /// `input` is dropped, counted under `reason`.
    pub fn dropped(name: impl Into<String>, input: Vec<u8>, reason: u32) -> Self {
        Self::unforwarded(name, input, Expect::Drop(reason))
    }

    /// A frame that is not forwarded.
    fn unforwarded(name: impl Into<String>, input: Vec<u8>, expect: Expect) -> Self {
        Self {
            name: name.into(),
            services: Vec::new(),
            input,
            expect,
            opens: None,
        }
    }

    /// The same fixture with service `id` on (`vip`, [`PORT`], `proto`)
    /// installed first, one backend per entry of `reals`.
    pub fn service(self, id: u32, vip: IpAddr, proto: u8, reals: &[Real]) -> Self {
        self.service_on_vlan(id, vip, proto, 0, reals)
    }

    /// [`Fixture::service`] for the frames of VLAN path `vlan`.
    pub fn service_on_vlan(
        mut self,
        id: u32,
        vip: IpAddr,
        proto: u8,
        vlan: u32,
        reals: &[Real],
    ) -> Self {
        self.services.push(ServiceSetup {
            id,
            vip,
            proto,
            vlan,
            reals: reals.to_vec(),
        });
        self
    }

    /// The same fixture with the services most tables install: a TCP
    /// service [`SERVICE_ID`] on VIP4 and a TCP service [`DECOY_ID`] on
    /// VIP6, one backend each.
    pub fn both_vips(self) -> Self {
        self.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1)])
            .service(DECOY_ID, VIP6.into(), PROTO_TCP, &[up(1)])
    }

    /// Runs the fixture on a fresh data path as case `case`.
    fn run(self, case: &str) {
        let Some(mut case) = Case::new(case) else {
            return;
        };
        for s in &self.services {
            case.service_on_vlan(
                s.id,
                s.vip,
                s.proto,
                s.vlan,
                &s.reals,
                SERVICE_FLAG_SLOPPY_TCP,
            );
        }
        case.send("frame", &self.input, self.expect);
        match self.opens {
            Some(Opens {
                pkt,
                id,
                slot,
                state,
            }) => {
                case.expect_flow("frame", &pkt, id, slot, state);
                let flows = match pkt.ip {
                    Ip::V4 { .. } => (1, 0),
                    Ip::V6 { .. } => (0, 1),
                };
                assert_eq!(
                    case.flows_per_table(),
                    flows,
                    "{}: flows in the (IPv4, IPv6) tables",
                    case.name
                );
            }
            None => {
                assert_eq!(
                    case.flows_per_table(),
                    (0, 0),
                    "{}: flows in the (IPv4, IPv6) tables",
                    case.name
                );
                for ServiceSetup { id, .. } in &self.services {
                    assert_eq!(
                        case.service_stats(*id),
                        Counters::default(),
                        "{}: stats of service {id}",
                        case.name
                    );
                    assert!(
                        case.conn_set(*id)
                            .conns
                            .iter()
                            .all(|c| *c == BackendConns::default()),
                        "{}: connection counts of service {id} moved",
                        case.name
                    );
                }
            }
        }
    }
}

/// Runs every fixture of `table`, each on a fresh data path as the case
/// `<table>: <fixture name>`, and fails after the last one, naming every
/// fixture that failed (each failure's own message, with the frames in hex,
/// is printed as it happens). Without privileges, prints one loud skip
/// notice and returns (see [`privileged`]).
pub fn run_fixtures(table: &str, fixtures: impl IntoIterator<Item = Fixture>) {
    if !privileged(table) {
        return;
    }
    let mut failed = Vec::new();
    let mut total = 0;
    for fixture in fixtures {
        total += 1;
        let name = fixture.name.clone();
        let case = format!("{table}: {name}");
        if panic::catch_unwind(AssertUnwindSafe(|| fixture.run(&case))).is_err() {
            failed.push(name);
        }
    }
    assert!(
        failed.is_empty(),
        "{table}: {} of {total} fixtures failed:\n  {}",
        failed.len(),
        failed.join("\n  ")
    );
}
