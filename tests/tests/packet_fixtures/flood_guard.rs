//! The SYN-flood guard (`lb_common::flood`): when one CPU counts the
//! guard's share of flow-opening SYNs in a 100 ms window, the director
//! enters flood mode for a second (`FLOOD_UNTIL`). In flood mode a SYN of a
//! flow neither table holds goes to the entry of its service's hash table
//! at the hash of its 5-tuple (`sh`: of its client's address), recorded
//! nowhere (a wlc service keeps a Maglev table for it); a pure ACK of a
//! flow no table holds, in flood mode and for 5 s after it, repeats the
//! pick and confirms the flow. Flows the tables hold, and the templates of
//! persistent services, win over the hash; the guard at 0 is off, whatever
//! `FLOOD_UNTIL` says.
//!
//! Every hashed backend is computed independently of the program: the
//! entry of the table read back from `SCHEDULE_TABLES` at
//! [`flow_hash`] of the flow key's words (the documented contract of `mh`
//! and `sh`). Flood mode is set by writing `FLOOD_UNTIL` in the data path's
//! clock (`CLOCK_MONOTONIC_COARSE`), except in the cases about the rate
//! itself, which run their SYNs within one window and check that they did.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb::datapath::maps::FlowTable;
use lb_common::{
    DEFAULT_SYN_FLOOD_RATE, EVENT_HASHED_ACK, EVENT_PENDING_OPENED, EVENT_PROMOTED,
    EVENT_STATELESS_SYN, FLOOD_HOLD_NS, FLOOD_WINDOW_NS, FLOW_CARRIED_DATA, FloodGuard, FlowKey,
    NUM_FLOW_EVENTS, NUM_REASONS, PROTO_TCP, PROTO_UDP, REASON_FORWARDED, REASON_NO_FLOW,
    SCHEDULER_SH, SCHEDULER_WLC, ScheduleTable, Service, ServiceKey, SynWindow,
    conn_state::{
        STATE_ESTABLISHED, STATE_SYN_RECV, STATE_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
    },
    flow_hash,
};
use lb_tests::{
    VIP4, VIP6,
    frame::{L4, PORT, Pkt, TCP_PSH, hex, ip_len},
    xdp_case::{Case, Expect, Real, SERVICE_ID, XDP_TX, action_name, backend_set, loud, up},
};

/// One second in nanoseconds.
const SECOND: u64 = 1_000_000_000;

/// The guard's rate in the cases about the rate: 50 SYNs per second on
/// one CPU, so [`LIMIT`] in one window.
const RATE: u32 = 50;

/// SYNs of one window that start flood mode at [`RATE`]: its share of a
/// 100 ms window.
const LIMIT: u16 = 5;

/// SYNs of distinct tuples a burst sends: the first `LIMIT - 1` open
/// pending flows, the one that reaches the limit and every later one are
/// forwarded by the hash.
const BURST: u16 = 3 * LIMIT;

/// Three equal backends.
const THREE: [Real; 3] = [up(1), up(1), up(1)];

/// Two equal backends.
const TWO: [Real; 2] = [up(1), up(1)];

/// The frames of one address family: TCP from its client to its VIP.
#[derive(Clone, Copy)]
struct Family {
    /// Name, for case names.
    name: &'static str,
    /// `Pkt::tcp4` or `Pkt::tcp6`.
    tcp: fn(u16, u8) -> Pkt,
    /// Whether the family is IPv6 (which flow events count).
    ipv6: bool,
}

/// IPv4.
const V4: Family = Family {
    name: "ipv4",
    tcp: Pkt::tcp4,
    ipv6: false,
};

/// IPv6.
const V6: Family = Family {
    name: "ipv6",
    tcp: Pkt::tcp6,
    ipv6: true,
};

impl Family {
    /// The family's VIP.
    fn vip(self) -> IpAddr {
        if self.ipv6 { VIP6.into() } else { VIP4.into() }
    }

    /// Flows in this family's tables (connection and pending), then in the
    /// other family's.
    fn flows(self, case: &Case) -> (usize, usize) {
        let (v4, v6) = case.flows_per_table();
        if self.ipv6 { (v6, v4) } else { (v4, v6) }
    }
}

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: the clock of the data path's
/// `bpf_ktime_get_coarse_ns`, so of `FLOOD_UNTIL`.
fn coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC_COARSE)");
    ts.tv_sec as u64 * SECOND + ts.tv_nsec as u64
}

/// Installs TCP service `service` (its id [`SERVICE_ID`]) on (`vip`,
/// [`PORT`]) over `reals`, as the daemon does (which also writes its hash
/// table).
fn install(case: &mut Case, vip: IpAddr, service: Service, reals: &[Real]) {
    case.dp
        .maps
        .set_service(
            &[ServiceKey::new(vip, PORT, PROTO_TCP, 0)],
            Service {
                id: SERVICE_ID,
                ..service
            },
            &backend_set(SERVICE_ID, vip, reals),
        )
        .unwrap_or_else(|e| panic!("{}: set_service: {e:#}", case.name));
}

/// A service with scheduler `scheduler`, neither sloppy (only a SYN opens
/// a flow; an unknown ACK is `drop_no_flow`) nor persistent.
fn plain(scheduler: u32) -> Service {
    Service {
        scheduler,
        ..Service::default()
    }
}

/// Sets the guard's rate (0: off).
fn set_guard(case: &mut Case, syn_rate: u32) {
    case.dp
        .maps
        .set_flood_guard(syn_rate)
        .unwrap_or_else(|e| panic!("{}: set_flood_guard: {e:#}", case.name));
}

/// Writes `FLOOD_UNTIL` (flood mode while the clock is below it).
fn set_flood_until(case: &mut Case, until: u64) {
    case.dp
        .maps
        .flood_until
        .set(0, until, 0)
        .unwrap_or_else(|e| panic!("{}: writing FLOOD_UNTIL: {e}", case.name));
}

/// Reads `FLOOD_UNTIL`.
fn flood_until(case: &Case) -> u64 {
    case.dp
        .maps
        .flood_until()
        .unwrap_or_else(|e| panic!("{}: {e:#}", case.name))
}

/// Puts the data path in flood mode for the next minute.
fn flood_for_a_minute(case: &mut Case) -> u64 {
    let until = coarse_ns() + 60 * SECOND;
    set_flood_until(case, until);
    until
}

/// Every CPU's `SYN_WINDOW`.
fn syn_windows(case: &Case) -> Vec<SynWindow> {
    case.dp
        .maps
        .syn_window
        .get(&0, 0)
        .unwrap_or_else(|e| panic!("{}: reading SYN_WINDOW: {e}", case.name))
        .iter()
        .copied()
        .collect()
}

/// The service's table as the data path reads it.
fn table(case: &Case) -> ScheduleTable {
    case.dp
        .maps
        .schedule_tables
        .get(&SERVICE_ID, 0)
        .unwrap_or_else(|e| panic!("{}: reading the schedule table: {e}", case.name))
}

/// The slot of `table`'s entry at `hash`.
fn slot_at(table: &ScheduleTable, hash: u64) -> u32 {
    assert_ne!(table.len, 0, "an empty schedule table");
    let entry = table.slots[(hash % u64::from(table.len)) as usize];
    assert_ne!(entry, 0, "an empty schedule table entry");
    u32::from(entry - 1)
}

/// The hash of `pkt`'s 5-tuple (and VLAN): [`flow_hash`] of its key's words.
fn tuple_hash(pkt: &Pkt) -> u64 {
    match pkt.flow_key() {
        FlowKey::V4(key) => flow_hash(&key.words()),
        FlowKey::V6(key) => flow_hash(&key.words()),
    }
}

/// The hash of a client's address (`sh`): [`flow_hash`] of its 16 bytes as
/// two words.
fn client_hash(client: IpAddr) -> u64 {
    let (bytes, _) = lb_common::addr_key(client);
    flow_hash(&[
        u64::from_ne_bytes(bytes[..8].try_into().expect("8 bytes")),
        u64::from_ne_bytes(bytes[8..].try_into().expect("8 bytes")),
    ])
}

/// The slot flood mode picks for `pkt`'s flow in a service that is not
/// `sh`: its table's entry at the hash of the 5-tuple.
fn hashed(case: &Case, pkt: &Pkt) -> u32 {
    slot_at(&table(case), tuple_hash(pkt))
}

/// The first client port from `from` whose flow (`make(port)`, any flags:
/// the hash does not see them) the hash sends to a slot `want` accepts,
/// and that slot.
fn port_where(
    case: &Case,
    from: u16,
    make: impl Fn(u16) -> Pkt,
    want: impl Fn(u32) -> bool,
) -> (u16, u32) {
    let table = table(case);
    (from..from + 1000)
        .map(|port| (port, slot_at(&table, tuple_hash(&make(port)))))
        .find(|&(_, slot)| want(slot))
        .unwrap_or_else(|| panic!("{}: no port from {from} hashes as wanted", case.name))
}

/// The flow events of `family` that flood mode touches.
#[derive(Debug, PartialEq, Eq, Default)]
struct Events {
    /// `EVENT_PENDING_OPENED`.
    pending_opened: u64,
    /// `EVENT_PROMOTED`.
    promoted: u64,
    /// `EVENT_STATELESS_SYN`.
    stateless_syns: u64,
    /// `EVENT_HASHED_ACK`.
    hashed_acks: u64,
}

/// Asserts `family`'s flow events, and that the other family has none.
fn expect_events(case: &Case, label: &str, family: Family, want: Events) {
    let read = |ipv6| {
        case.dp
            .maps
            .flow_events(ipv6)
            .unwrap_or_else(|e| panic!("{}/{label}: {e:#}", case.name))
    };
    let events = read(family.ipv6);
    let got = Events {
        pending_opened: events[EVENT_PENDING_OPENED as usize],
        promoted: events[EVENT_PROMOTED as usize],
        stateless_syns: events[EVENT_STATELESS_SYN as usize],
        hashed_acks: events[EVENT_HASHED_ACK as usize],
    };
    assert_eq!(got, want, "{}/{label}: flow events", case.name);
    assert_eq!(
        read(!family.ipv6),
        [0; NUM_FLOW_EVENTS as usize],
        "{}/{label}: flow events of the other family",
        case.name
    );
}

/// Asserts that no backend of the service counts a connection.
fn expect_no_conns(case: &Case, label: &str) {
    let set = case.conn_set(SERVICE_ID);
    assert!(
        set.conns.iter().all(|c| (c.active, c.inactive) == (0, 0)),
        "{}/{label}: a backend counts a connection: {:?}",
        case.name,
        &set.conns[..4]
    );
}

/// Asserts that `pkt`'s flow is in no table.
fn expect_unrecorded(case: &Case, label: &str, pkt: &Pkt) {
    assert_eq!(
        case.table_of(pkt),
        None,
        "{}/{label}: the flow is in a table",
        case.name
    );
}

/// Asserts that `pkt`'s flow is in `table`.
fn expect_table(case: &Case, label: &str, pkt: &Pkt, table: FlowTable) {
    assert_eq!(
        case.table_of(pkt),
        Some(table),
        "{}/{label}: the flow's table",
        case.name
    );
}

/// Pins the calling thread to the CPU it runs on: the SYN window is per
/// CPU, and the rate cases count on one.
fn stay_on_this_cpu() {
    // SAFETY: sched_getcpu has no preconditions; a zeroed cpu_set_t is a
    // valid empty set, CPU_SET writes inside it, and sched_setaffinity reads
    // a set of the size passed.
    unsafe {
        let cpu = usize::try_from(libc::sched_getcpu()).expect("a CPU number");
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "pinning the test thread"
        );
    }
}

// ---------------------------------------------------------------------------
// 1. The guard off (a fresh data path's default)
// ---------------------------------------------------------------------------

/// A freshly loaded data path has the guard off: a burst of SYNs well over
/// any small rate opens pending flows by wlc exactly as without the guard,
/// counts nothing in the SYN window and never enters flood mode.
fn guard_off_by_default(family: Family) {
    let Some(mut case) = Case::new(format!("flood_guard_off_{}", family.name)) else {
        return;
    };
    install(&mut case, family.vip(), plain(SCHEDULER_WLC), &TWO);
    let guard = case.dp.maps.flood_guard.get(&0, 0).expect("FLOOD_GUARD");
    assert_eq!(guard, FloodGuard::default(), "{}: the default", case.name);
    for sport in 40000..40000 + BURST {
        let syn = (family.tcp)(sport, TCP_SYN);
        let slot = u32::from(sport % 2);
        case.forward(&format!("SYN {sport}"), &syn, SERVICE_ID, slot);
        case.expect_flow("SYN", &syn, SERVICE_ID, slot, STATE_SYN_RECV);
        expect_table(&case, "SYN", &syn, FlowTable::Pending);
    }
    assert_eq!(flood_until(&case), 0, "{}: FLOOD_UNTIL", case.name);
    assert!(
        syn_windows(&case)
            .iter()
            .all(|w| *w == SynWindow::default()),
        "{}: SYNs counted with the guard off",
        case.name
    );
    expect_events(
        &case,
        "burst",
        family,
        Events {
            pending_opened: u64::from(BURST),
            ..Events::default()
        },
    );
}

#[test]
fn ipv4_guard_off_by_default() {
    guard_off_by_default(V4);
}

#[test]
fn ipv6_guard_off_by_default() {
    guard_off_by_default(V6);
}

// ---------------------------------------------------------------------------
// 2. Flood mode entered by the rate
// ---------------------------------------------------------------------------

/// What one attempt at a burst within one window came to.
enum Attempt {
    /// No privileges: skipped (after a loud notice).
    Skipped,
    /// Checked.
    Done,
    /// The burst took a window or more: nothing to conclude.
    TooSlow,
}

/// A burst of [`BURST`] SYNs of distinct tuples within one window, the
/// guard at [`RATE`]: the first `LIMIT - 1` open pending flows by wlc
/// (slots 0, 1, 2, 0), the one that reaches the limit puts the data path
/// in flood mode for [`FLOOD_HOLD_NS`] from its time, and it and every
/// later one go to the hash table's slot, byte for byte, in no table,
/// counted as stateless SYNs (and as new connections).
fn burst(family: Family, attempt: u32) -> Attempt {
    let Some(mut case) = Case::new(format!("flood_rate_{} (attempt {attempt})", family.name))
    else {
        return Attempt::Skipped;
    };
    install(&mut case, family.vip(), plain(SCHEDULER_WLC), &THREE);
    set_guard(&mut case, RATE);
    assert_eq!(flood_until(&case), 0, "{}: FLOOD_UNTIL at first", case.name);
    let syns: Vec<Pkt> = (0..BURST)
        .map(|i| (family.tcp)(40000 + i, TCP_SYN))
        .collect();
    let inputs: Vec<Vec<u8>> = syns.iter().map(Pkt::build).collect();
    let verdicts_before = case.verdicts();
    let run = |input: &Vec<u8>| {
        case.run(input)
            .unwrap_or_else(|e| panic!("{}: BPF_PROG_TEST_RUN: {e}", case.name))
    };
    let below = usize::from(LIMIT - 1);
    let start = coarse_ns();
    let mut outputs: Vec<(u32, Vec<u8>)> = inputs[..below].iter().map(run).collect();
    let until_below_limit = flood_until(&case);
    outputs.extend(inputs[below..].iter().map(run));
    let end = coarse_ns();
    if end - start >= FLOOD_WINDOW_NS {
        loud(&format!(
            "{}: the burst took {} ms, more than a window: trying again",
            case.name,
            (end - start) / 1_000_000
        ));
        return Attempt::TooSlow;
    }

    assert_eq!(
        until_below_limit, 0,
        "{}: flood mode before the window's count reached {LIMIT}",
        case.name
    );
    let until = flood_until(&case);
    assert!(
        (start + FLOOD_HOLD_NS..=end + FLOOD_HOLD_NS).contains(&until),
        "{}: FLOOD_UNTIL {until} is not the limit SYN's time + 1 s (burst from {start} to {end})",
        case.name
    );
    let table = table(&case);
    for (i, ((syn, input), (action, out))) in syns.iter().zip(&inputs).zip(&outputs).enumerate() {
        let label = format!("SYN {i}");
        let (slot, pending) = if i < below {
            (i as u32 % 3, true)
        } else {
            (slot_at(&table, tuple_hash(syn)), false)
        };
        let expected = syn.forwarded(SERVICE_ID, slot);
        assert!(
            *action == XDP_TX && *out == expected,
            "{}/{label}: expected XDP_TX to slot {slot}, got {}\ninput:\n{}expected:\n{}actual:\n{}",
            case.name,
            action_name(*action),
            hex(input),
            hex(&expected),
            hex(out)
        );
        if pending {
            case.expect_flow(&label, syn, SERVICE_ID, slot, STATE_SYN_RECV);
            expect_table(&case, &label, syn, FlowTable::Pending);
        } else {
            expect_unrecorded(&case, &label, syn);
        }
    }
    assert_eq!(
        family.flows(&case),
        (below, 0),
        "{}: flows in the (family's, other) tables",
        case.name
    );
    expect_events(
        &case,
        "burst",
        family,
        Events {
            pending_opened: u64::from(LIMIT - 1),
            stateless_syns: u64::from(BURST - LIMIT + 1),
            ..Events::default()
        },
    );
    // Every SYN was forwarded and counted once, as a new connection.
    let verdicts_after = case.verdicts();
    for r in 0..NUM_REASONS as usize {
        let packets = verdicts_after[r].packets - verdicts_before[r].packets;
        let want = if r == REASON_FORWARDED as usize {
            u64::from(BURST)
        } else {
            0
        };
        assert_eq!(packets, want, "{}: verdict counter {r}", case.name);
    }
    let bytes: u64 = inputs.iter().map(|input| ip_len(input)).sum();
    let stats = case.service_stats(SERVICE_ID);
    assert_eq!(
        (stats.packets, stats.bytes, stats.new_conns),
        (u64::from(BURST), bytes, u64::from(BURST)),
        "{}: service stats",
        case.name
    );
    // Only the pending flows count on their backends (SYN_RECV: inactive).
    for slot in 0..3 {
        let inactive = (0..below as u32).filter(|i| i % 3 == slot).count() as u64;
        case.expect_conns("burst", SERVICE_ID, slot, 0, inactive);
    }
    // This CPU counted the whole burst in one window.
    let windows = syn_windows(&case);
    let counting: Vec<&SynWindow> = windows.iter().filter(|w| w.syns > 0).collect();
    assert!(
        counting.len() == 1
            && counting[0].syns == u64::from(BURST)
            && (start..=end).contains(&counting[0].start_ns),
        "{}: SYN windows {counting:?} (burst from {start} to {end})",
        case.name
    );
    Attempt::Done
}

/// [`burst`], again on a fresh data path (at most three times) when the
/// burst did not fit in one window.
fn rate_enters_flood_mode(family: Family) {
    stay_on_this_cpu();
    for attempt in 1..=3 {
        match burst(family, attempt) {
            Attempt::Skipped | Attempt::Done => return,
            Attempt::TooSlow => {}
        }
    }
    panic!(
        "flood_rate_{}: three bursts of {BURST} SYNs each took more than {} ms",
        family.name,
        FLOOD_WINDOW_NS / 1_000_000
    );
}

#[test]
fn ipv4_the_rate_enters_flood_mode() {
    rate_enters_flood_mode(V4);
}

#[test]
fn ipv6_the_rate_enters_flood_mode() {
    rate_enters_flood_mode(V6);
}

// ---------------------------------------------------------------------------
// 3. The handshake in flood mode
// ---------------------------------------------------------------------------

/// In flood mode a SYN goes to the hash's slot (one wlc would not pick)
/// unrecorded; its ACK goes to the same slot and records the flow there in
/// the pending table (ESTABLISHED, one active connection, one hashed ACK);
/// the client's first data confirms it (moved to the connection table) and
/// the rest follows from the table, then from the flow cache. One new
/// connection.
fn handshake_in_flood_mode(family: Family) {
    let Some(mut case) = Case::new(format!("flood_handshake_{}", family.name)) else {
        return;
    };
    install(&mut case, family.vip(), plain(SCHEDULER_WLC), &THREE);
    set_guard(&mut case, DEFAULT_SYN_FLOOD_RATE);
    // wlc gives a fresh service's first flow slot 0.
    let (sport, slot) = port_where(&case, 40000, |p| (family.tcp)(p, TCP_SYN), |s| s != 0);
    let until = flood_for_a_minute(&mut case);

    let syn = (family.tcp)(sport, TCP_SYN);
    case.forward("SYN", &syn, SERVICE_ID, slot);
    expect_unrecorded(&case, "SYN", &syn);
    assert_eq!(family.flows(&case), (0, 0), "{}: flows", case.name);
    expect_no_conns(&case, "SYN");
    expect_events(
        &case,
        "SYN",
        family,
        Events {
            stateless_syns: 1,
            ..Events::default()
        },
    );

    let ack = (family.tcp)(sport, TCP_ACK);
    case.forward("ACK", &ack, SERVICE_ID, slot);
    case.expect_flow("ACK", &ack, SERVICE_ID, slot, STATE_ESTABLISHED);
    expect_table(&case, "ACK", &ack, FlowTable::Pending);
    case.expect_conns("ACK", SERVICE_ID, slot, 1, 0);
    let want = Events {
        pending_opened: 1,
        stateless_syns: 1,
        hashed_acks: 1,
        ..Events::default()
    };
    expect_events(&case, "ACK", family, want);

    let data = (family.tcp)(sport, TCP_ACK | TCP_PSH).with_payload(b"RETR file\r\n");
    case.forward("data", &data, SERVICE_ID, slot);
    case.forward("more data", &data, SERVICE_ID, slot);
    assert_eq!(
        case.flow(&data).map(|f| f.flags),
        Some(FLOW_CARRIED_DATA),
        "{}: carried data",
        case.name
    );
    assert_eq!(family.flows(&case), (1, 0), "{}: flows", case.name);
    expect_table(&case, "data", &data, FlowTable::Confirmed);
    case.expect_conns("data", SERVICE_ID, slot, 1, 0);
    let want = Events {
        pending_opened: 1,
        promoted: 1,
        stateless_syns: 1,
        hashed_acks: 1,
    };
    expect_events(&case, "data", family, want);
    let stats = case.backend_stats(SERVICE_ID, slot);
    assert_eq!(
        (stats.packets, stats.new_conns),
        (4, 1),
        "{}: (packets, new connections) of slot {slot}",
        case.name
    );
    assert_eq!(
        case.service_stats(SERVICE_ID).packets,
        4,
        "{}: only slot {slot} forwarded",
        case.name
    );
    assert_eq!(
        flood_until(&case),
        until,
        "{}: FLOOD_UNTIL moved",
        case.name
    );
}

#[test]
fn ipv4_handshake_in_flood_mode() {
    handshake_in_flood_mode(V4);
}

#[test]
fn ipv6_handshake_in_flood_mode() {
    handshake_in_flood_mode(V6);
}

// ---------------------------------------------------------------------------
// 4. The grace period, and what is never picked up
// ---------------------------------------------------------------------------

/// An ACK of an unknown flow: dropped (`drop_no_flow`) when the data path
/// never was in flood mode; picked up by the hash (pure or carrying data)
/// 2 s after flood mode ended, inside the 5 s grace (a pure ACK into the
/// pending table, one with data confirmed at once), when a SYN is
/// scheduled normally again; dropped 10 s after. In flood mode, FIN, RST,
/// SYN-ACK and flagless packets of unknown flows are never picked up.
fn grace(family: Family) {
    let Some(mut case) = Case::new(format!("flood_grace_{}", family.name)) else {
        return;
    };
    install(&mut case, family.vip(), plain(SCHEDULER_WLC), &TWO);
    set_guard(&mut case, DEFAULT_SYN_FLOOD_RATE);
    let tcp = family.tcp;

    let never = tcp(41000, TCP_ACK);
    case.send(
        "ACK, never in flood mode",
        &never.build(),
        Expect::Drop(REASON_NO_FLOW),
    );
    expect_unrecorded(&case, "ACK, never in flood mode", &never);

    set_flood_until(&mut case, coarse_ns() - 2 * SECOND);
    let ack = tcp(41001, TCP_ACK);
    let ack_slot = hashed(&case, &ack);
    case.forward("ACK in the grace", &ack, SERVICE_ID, ack_slot);
    case.expect_flow(
        "ACK in the grace",
        &ack,
        SERVICE_ID,
        ack_slot,
        STATE_ESTABLISHED,
    );
    expect_table(&case, "ACK in the grace", &ack, FlowTable::Pending);
    let data = tcp(41002, TCP_ACK | TCP_PSH).with_payload(b"STOR file\r\n");
    let data_slot = hashed(&case, &data);
    case.forward("data in the grace", &data, SERVICE_ID, data_slot);
    case.expect_flow(
        "data in the grace",
        &data,
        SERVICE_ID,
        data_slot,
        STATE_ESTABLISHED,
    );
    assert_eq!(
        case.flow(&data).map(|f| f.flags),
        Some(FLOW_CARRIED_DATA),
        "{}: carried data",
        case.name
    );
    // With payload, a picked-up ACK is confirmed at once.
    expect_table(&case, "data in the grace", &data, FlowTable::Confirmed);
    expect_events(
        &case,
        "grace",
        family,
        Events {
            pending_opened: 1,
            hashed_acks: 2,
            ..Events::default()
        },
    );
    // Flood mode is over: a SYN opens a pending flow by wlc (the backend
    // with fewer active connections; slot 0 on a tie).
    let active = |slot| case.conns(SERVICE_ID, slot).active;
    let wlc_slot = u32::from(active(1) < active(0));
    let syn = tcp(41003, TCP_SYN);
    case.forward("SYN in the grace", &syn, SERVICE_ID, wlc_slot);
    case.expect_flow(
        "SYN in the grace",
        &syn,
        SERVICE_ID,
        wlc_slot,
        STATE_SYN_RECV,
    );
    expect_table(&case, "SYN in the grace", &syn, FlowTable::Pending);

    set_flood_until(&mut case, coarse_ns() - 10 * SECOND);
    let late = tcp(41004, TCP_ACK);
    case.send(
        "ACK after the grace",
        &late.build(),
        Expect::Drop(REASON_NO_FLOW),
    );
    expect_unrecorded(&case, "ACK after the grace", &late);

    flood_for_a_minute(&mut case);
    for (i, (flags, what)) in [
        (TCP_FIN | TCP_ACK, "FIN-ACK"),
        (TCP_FIN, "FIN"),
        (TCP_RST, "RST"),
        (TCP_RST | TCP_ACK, "RST-ACK"),
        (TCP_SYN | TCP_ACK, "SYN-ACK"),
        (0, "no flags"),
        (TCP_FIN | TCP_PSH | TCP_ACK, "FIN-PSH-ACK"),
    ]
    .into_iter()
    .enumerate()
    {
        let pkt = tcp(42000 + i as u16, flags);
        let label = format!("{what} in flood mode");
        case.send(&label, &pkt.build(), Expect::Drop(REASON_NO_FLOW));
        expect_unrecorded(&case, &label, &pkt);
    }
    assert_eq!(family.flows(&case), (3, 0), "{}: flows", case.name);
    // The pure ACK picked up in the grace and the SYN after it wait pending.
    expect_events(
        &case,
        "end",
        family,
        Events {
            pending_opened: 2,
            hashed_acks: 2,
            ..Events::default()
        },
    );
}

#[test]
fn ipv4_acks_are_picked_up_through_the_grace_only() {
    grace(V4);
}

#[test]
fn ipv6_acks_are_picked_up_through_the_grace_only() {
    grace(V6);
}

/// An ACK flood in flood mode: every spoofed pure ACK is picked up into the
/// pending table and none enters the connection table, which never evicts;
/// the one tuple whose client then sends payload is confirmed.
fn ack_flood_stays_pending(family: Family) {
    let Some(mut case) = Case::new(format!("flood_ack_flood_{}", family.name)) else {
        return;
    };
    install(&mut case, family.vip(), plain(SCHEDULER_WLC), &TWO);
    set_guard(&mut case, DEFAULT_SYN_FLOOD_RATE);
    flood_for_a_minute(&mut case);
    let tcp = family.tcp;
    const ACKS: u16 = 50;
    for i in 0..ACKS {
        let ack = tcp(43000 + i, TCP_ACK);
        let slot = hashed(&case, &ack);
        case.forward("spoofed ACK", &ack, SERVICE_ID, slot);
        expect_table(&case, "spoofed ACK", &ack, FlowTable::Pending);
    }
    let data = tcp(43000, TCP_ACK | TCP_PSH).with_payload(b"PASV\r\n");
    let slot = hashed(&case, &data);
    case.forward("payload", &data, SERVICE_ID, slot);
    expect_table(&case, "payload", &data, FlowTable::Confirmed);
    assert_eq!(
        family.flows(&case),
        (usize::from(ACKS), 0),
        "{}: flows",
        case.name
    );
    expect_events(
        &case,
        "end",
        family,
        Events {
            pending_opened: u64::from(ACKS),
            promoted: 1,
            hashed_acks: u64::from(ACKS),
            ..Events::default()
        },
    );
}

#[test]
fn ipv4_ack_flood_stays_pending() {
    ack_flood_stays_pending(V4);
}

#[test]
fn ipv6_ack_flood_stays_pending() {
    ack_flood_stays_pending(V6);
}

// ---------------------------------------------------------------------------
// 5. Flows from before flood mode
// ---------------------------------------------------------------------------

/// A connection confirmed before flood mode keeps its wlc backend in flood
/// mode although the hash would send its tuple elsewhere; a pending flow's
/// retransmitted SYN stays on its pending backend (the tables come before
/// the hash) and its ACK promotes it there.
fn flows_from_before_keep_their_backends(family: Family) {
    let Some(mut case) = Case::new(format!("flood_before_{}", family.name)) else {
        return;
    };
    install(&mut case, family.vip(), plain(SCHEDULER_WLC), &TWO);
    set_guard(&mut case, DEFAULT_SYN_FLOOD_RATE);
    let tcp = family.tcp;
    // wlc: the first flow to slot 0, the next to slot 1; tuples the hash
    // sends to the other slot.
    let (a, _) = port_where(&case, 40000, |p| tcp(p, TCP_SYN), |s| s == 1);
    let (b, _) = port_where(&case, a + 1, |p| tcp(p, TCP_SYN), |s| s == 0);
    case.forward("A SYN", &tcp(a, TCP_SYN), SERVICE_ID, 0);
    case.forward("A ACK", &tcp(a, TCP_ACK), SERVICE_ID, 0);
    expect_table(&case, "A ACK", &tcp(a, TCP_ACK), FlowTable::Confirmed);
    case.forward("B SYN", &tcp(b, TCP_SYN), SERVICE_ID, 1);
    expect_table(&case, "B SYN", &tcp(b, TCP_SYN), FlowTable::Pending);

    flood_for_a_minute(&mut case);
    let data = tcp(a, TCP_ACK | TCP_PSH).with_payload(b"LIST\r\n");
    case.forward("A data", &data, SERVICE_ID, 0);
    case.forward("A more data", &data, SERVICE_ID, 0);
    case.expect_flow("A data", &data, SERVICE_ID, 0, STATE_ESTABLISHED);
    let again = tcp(b, TCP_SYN);
    case.forward("B SYN again", &again, SERVICE_ID, 1);
    case.expect_flow("B SYN again", &again, SERVICE_ID, 1, STATE_SYN_RECV);
    expect_table(&case, "B SYN again", &again, FlowTable::Pending);
    let ack = tcp(b, TCP_ACK);
    case.forward("B ACK", &ack, SERVICE_ID, 1);
    case.expect_flow("B ACK", &ack, SERVICE_ID, 1, STATE_ESTABLISHED);
    expect_table(&case, "B ACK", &ack, FlowTable::Confirmed);
    case.expect_conns("end", SERVICE_ID, 0, 1, 0);
    case.expect_conns("end", SERVICE_ID, 1, 1, 0);
    assert_eq!(family.flows(&case), (2, 0), "{}: flows", case.name);
    expect_events(
        &case,
        "end",
        family,
        Events {
            pending_opened: 2,
            promoted: 2,
            ..Events::default()
        },
    );
}

#[test]
fn ipv4_flows_from_before_flood_mode_keep_their_backends() {
    flows_from_before_keep_their_backends(V4);
}

#[test]
fn ipv6_flows_from_before_flood_mode_keep_their_backends() {
    flows_from_before_keep_their_backends(V6);
}

// ---------------------------------------------------------------------------
// 6. The weights
// ---------------------------------------------------------------------------

/// In flood mode, 400 new flows of a wlc service with weights 1, 2, 1 go
/// each to its slot of the Maglev table, byte for byte, and so spread by
/// weight: each backend within a quarter of its share. None is recorded.
#[test]
fn flood_mode_spreads_new_flows_by_weight() {
    const FLOWS: u16 = 400;
    let Some(mut case) = Case::new("flood_weights") else {
        return;
    };
    let weights = [1u32, 2, 1];
    let reals: Vec<Real> = weights.iter().map(|&w| up(w)).collect();
    install(&mut case, VIP4.into(), plain(SCHEDULER_WLC), &reals);
    set_guard(&mut case, DEFAULT_SYN_FLOOD_RATE);
    flood_for_a_minute(&mut case);
    let table = table(&case);
    let mut per_slot = [0u64; 3];
    for i in 0..FLOWS {
        let syn = Pkt::between(
            IpAddr::from([203, 0, 113, 1 + (i % 100) as u8]),
            VIP4.into(),
            L4::Tcp {
                sport: 40000 + i,
                dport: PORT,
                flags: TCP_SYN,
            },
        );
        let slot = slot_at(&table, tuple_hash(&syn));
        case.forward(&format!("SYN {i}"), &syn, SERVICE_ID, slot);
        per_slot[slot as usize] += 1;
    }
    let total: u32 = weights.iter().sum();
    for (slot, (&n, &w)) in per_slot.iter().zip(&weights).enumerate() {
        let share = u64::from(FLOWS) * u64::from(w) / u64::from(total);
        assert!(
            n.abs_diff(share) <= share / 4,
            "{}: slot {slot} got {n} of {FLOWS} flows, its share is {share}: {per_slot:?}",
            case.name
        );
    }
    assert_eq!(case.flows_per_table(), (0, 0), "{}: flows", case.name);
    expect_no_conns(&case, "end");
    expect_events(
        &case,
        "end",
        V4,
        Events {
            stateless_syns: u64::from(FLOWS),
            ..Events::default()
        },
    );
}

// ---------------------------------------------------------------------------
// 7. Persistence
// ---------------------------------------------------------------------------

/// A persistent service in flood mode: a client with a live template goes
/// to its template's backend, SYN and ACK, wherever the hash points; a
/// client without one goes to the hash's slot, and its SYN writes no
/// template, its ACK does, and the client's next SYN follows it.
fn persistence_in_flood_mode(name: &str, vip: IpAddr, [a, b]: [IpAddr; 2], prefix: u32) {
    let Some(mut case) = Case::new(name) else {
        return;
    };
    let service = Service {
        persistence_timeout_s: 600,
        persistence_prefix: prefix,
        ..plain(SCHEDULER_WLC)
    };
    install(&mut case, vip, service, &THREE);
    set_guard(&mut case, DEFAULT_SYN_FLOOD_RATE);
    let ipv6 = vip.is_ipv6();
    let family = if ipv6 { V6 } else { V4 };
    let pkt = |client, sport, flags| {
        Pkt::between(
            client,
            vip,
            L4::Tcp {
                sport,
                dport: PORT,
                flags,
            },
        )
    };
    let template = |case: &Case, client| {
        let (addr, _) = lb_common::addr_key(client);
        case.dp
            .maps
            .persist
            .get(&lb_common::persist_key(addr, prefix, SERVICE_ID), 0)
            .ok()
            .map(|t| t.backend_slot)
    };

    // Before flood mode: A's first connection goes to slot 0 (wlc) and
    // becomes A's template.
    case.forward("A first SYN", &pkt(a, 40000, TCP_SYN), SERVICE_ID, 0);
    assert_eq!(template(&case, a), Some(0), "{name}: A's template");

    flood_for_a_minute(&mut case);
    let (a2, _) = port_where(&case, 40001, |p| pkt(a, p, TCP_SYN), |s| s != 0);
    let syn = pkt(a, a2, TCP_SYN);
    case.forward("A SYN", &syn, SERVICE_ID, 0);
    expect_unrecorded(&case, "A SYN", &syn);
    let ack = pkt(a, a2, TCP_ACK);
    case.forward("A ACK", &ack, SERVICE_ID, 0);
    case.expect_flow("A ACK", &ack, SERVICE_ID, 0, STATE_ESTABLISHED);
    assert_eq!(template(&case, a), Some(0), "{name}: A's template");

    // B has no template. wlc would pick slot 1 (slot 0 has A's two flows):
    // a tuple the hash sends to slot 2.
    let (b1, slot) = port_where(&case, 40000, |p| pkt(b, p, TCP_SYN), |s| s == 2);
    let syn = pkt(b, b1, TCP_SYN);
    case.forward("B SYN", &syn, SERVICE_ID, slot);
    expect_unrecorded(&case, "B SYN", &syn);
    assert_eq!(template(&case, b), None, "{name}: a template from the SYN");
    let ack = pkt(b, b1, TCP_ACK);
    case.forward("B ACK", &ack, SERVICE_ID, slot);
    case.expect_flow("B ACK", &ack, SERVICE_ID, slot, STATE_ESTABLISHED);
    expect_table(&case, "B ACK", &ack, FlowTable::Pending);
    assert_eq!(template(&case, b), Some(slot), "{name}: the ACK's template");
    let (b2, _) = port_where(&case, b1 + 1, |p| pkt(b, p, TCP_SYN), |s| s != slot);
    let next = pkt(b, b2, TCP_SYN);
    case.forward("B next SYN", &next, SERVICE_ID, slot);
    expect_unrecorded(&case, "B next SYN", &next);

    case.expect_conns("end", SERVICE_ID, 0, 1, 1);
    case.expect_conns("end", SERVICE_ID, 1, 0, 0);
    case.expect_conns("end", SERVICE_ID, slot, 1, 0);
    expect_events(
        &case,
        "end",
        family,
        Events {
            pending_opened: 3,
            stateless_syns: 3,
            hashed_acks: 2,
            ..Events::default()
        },
    );
}

#[test]
fn ipv4_persistence_in_flood_mode() {
    persistence_in_flood_mode(
        "flood_persist_ipv4",
        VIP4.into(),
        [
            Ipv4Addr::new(203, 0, 113, 7).into(),
            Ipv4Addr::new(203, 0, 113, 8).into(),
        ],
        32,
    );
}

#[test]
fn ipv6_persistence_in_flood_mode() {
    let client = |last| IpAddr::from(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, last));
    persistence_in_flood_mode(
        "flood_persist_ipv6",
        VIP6.into(),
        [client(7), client(8)],
        128,
    );
}

// ---------------------------------------------------------------------------
// 8. The guard at 0 while FLOOD_UNTIL is in the future; sh; UDP
// ---------------------------------------------------------------------------

/// The guard turned off (after having been on) while `FLOOD_UNTIL` is a
/// minute ahead: SYNs open pending flows by wlc, an unknown ACK is
/// `drop_no_flow`, nothing is counted as flood mode's.
fn guard_off_ignores_flood_until(family: Family) {
    let Some(mut case) = Case::new(format!("flood_guard_zero_{}", family.name)) else {
        return;
    };
    install(&mut case, family.vip(), plain(SCHEDULER_WLC), &TWO);
    set_guard(&mut case, RATE);
    set_guard(&mut case, 0);
    let until = flood_for_a_minute(&mut case);
    let tcp = family.tcp;
    for (sport, slot) in [(40000, 0), (40001, 1)] {
        let syn = tcp(sport, TCP_SYN);
        case.forward("SYN", &syn, SERVICE_ID, slot);
        case.expect_flow("SYN", &syn, SERVICE_ID, slot, STATE_SYN_RECV);
        expect_table(&case, "SYN", &syn, FlowTable::Pending);
    }
    let ack = tcp(40002, TCP_ACK);
    case.send("unknown ACK", &ack.build(), Expect::Drop(REASON_NO_FLOW));
    expect_unrecorded(&case, "unknown ACK", &ack);
    assert_eq!(flood_until(&case), until, "{}: FLOOD_UNTIL", case.name);
    expect_events(
        &case,
        "end",
        family,
        Events {
            pending_opened: 2,
            ..Events::default()
        },
    );
}

#[test]
fn ipv4_guard_off_ignores_flood_until() {
    guard_off_ignores_flood_until(V4);
}

#[test]
fn ipv6_guard_off_ignores_flood_until() {
    guard_off_ignores_flood_until(V6);
}

/// UDP is not the guard's: in flood mode a datagram of a new flow is
/// scheduled by wlc and recorded, where the hash would pick another slot.
#[test]
fn udp_is_untouched_by_flood_mode() {
    let Some(mut case) = Case::new("flood_udp") else {
        return;
    };
    case.service_with_flags(SERVICE_ID, VIP4.into(), PROTO_UDP, &TWO, 0);
    set_guard(&mut case, RATE);
    flood_for_a_minute(&mut case);
    let (sport, _) = port_where(&case, 40000, Pkt::udp4, |s| s == 1);
    let datagram = Pkt::udp4(sport);
    case.forward("datagram", &datagram, SERVICE_ID, 0);
    case.expect_flow("datagram", &datagram, SERVICE_ID, 0, STATE_UDP);
    expect_table(&case, "datagram", &datagram, FlowTable::Confirmed);
    expect_events(&case, "datagram", V4, Events::default());
}

/// An `sh` service in flood mode picks by the client's address, as `sh`
/// always does: every SYN of a client goes to its slot, unrecorded (out of
/// flood mode it would open a pending flow), and the client's ACK confirms
/// its flow there.
#[test]
fn sh_hashes_the_client_in_flood_mode() {
    let Some(mut case) = Case::new("flood_sh") else {
        return;
    };
    install(
        &mut case,
        VIP4.into(),
        plain(SCHEDULER_SH),
        &[up(1), up(1), up(1), up(1)],
    );
    set_guard(&mut case, DEFAULT_SYN_FLOOD_RATE);
    flood_for_a_minute(&mut case);
    let table = table(&case);
    let pkt = |client, sport, flags| {
        Pkt::between(
            client,
            VIP4.into(),
            L4::Tcp {
                sport,
                dport: PORT,
                flags,
            },
        )
    };
    for last in 1..=8u8 {
        let client = IpAddr::from([203, 0, 113, last]);
        let slot = slot_at(&table, client_hash(client));
        for sport in [40000, 40001, 51234] {
            let syn = pkt(client, sport, TCP_SYN);
            case.forward(&format!("client {last} SYN"), &syn, SERVICE_ID, slot);
            expect_unrecorded(&case, "SYN", &syn);
        }
        let ack = pkt(client, 40000, TCP_ACK);
        case.forward(&format!("client {last} ACK"), &ack, SERVICE_ID, slot);
        case.expect_flow("ACK", &ack, SERVICE_ID, slot, STATE_ESTABLISHED);
        expect_table(&case, "ACK", &ack, FlowTable::Pending);
    }
    expect_events(
        &case,
        "end",
        V4,
        Events {
            pending_opened: 8,
            stateless_syns: 24,
            hashed_acks: 8,
            ..Events::default()
        },
    );
}
