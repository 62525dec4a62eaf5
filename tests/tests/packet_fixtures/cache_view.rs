//! The per-CPU flow caches (FLOW_CACHE4, FLOW_CACHE6) read as the kernel
//! stores them, the kernel's cache period, and a test thread pinned to one
//! CPU: what the flow-cache fixtures look through.

use std::{
    collections::BTreeMap,
    io,
    ops::RangeInclusive,
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, MapData},
    util::nr_cpus,
};
use lb_common::{
    FLOW_CACHE_PERIOD_SHIFT, FLOW_CACHE_WAYS, FLOW_CACHE4_MAP, FLOW_CACHE6_MAP,
    conn_state::{STATE_ESTABLISHED, STATE_SYN_RECV, TCP_ACK, TCP_SYN, state_name},
    flow_cache_index, flow_cache_set,
};
use lb_tests::{
    frame::{Pkt, hex},
    xdp_case::{Case, Expect, SERVICE_ID, Sent},
};

use crate::raw_keys::{FLOW_KEY4_LEN, FLOW_KEY6_LEN, key_bytes_of_frame};

/// Bytes of a flow-cache entry of [`FLOW_CACHE4_MAP`] (`lb_common::CachedFlow4`).
const CACHED4_LEN: usize = 32;
/// Bytes of a flow-cache entry of [`FLOW_CACHE6_MAP`] (`lb_common::CachedFlow6`).
const CACHED6_LEN: usize = 56;
/// Bytes of a [`FLOW_CACHE4_MAP`] value, a set of [`FLOW_CACHE_WAYS`]
/// entries (`lb_common::CachedFlowSet4`).
const CACHED_SET4_LEN: usize = FLOW_CACHE_WAYS * CACHED4_LEN;
/// Bytes of a [`FLOW_CACHE6_MAP`] value (`lb_common::CachedFlowSet6`): its
/// ways, then padding to the next 64-byte boundary.
const CACHED_SET6_LEN: usize = (FLOW_CACHE_WAYS * CACHED6_LEN).next_multiple_of(64);
/// Bytes of an array key (the index).
const ARRAY_KEY_LEN: usize = 4;
/// The client's first data, sent with the handshake's ACK by the flows
/// these helpers open (so that data on them leaves their flags unchanged).
const REQUEST: &[u8] = b"GET / HTTP/1.0\r\n\r\n";

/// How often a fixture that needs one cache period for its sequence tries it
/// before failing. A period is 64 ms (HZ=1000) to 640 ms (HZ=100) and a
/// sequence takes about a millisecond, so a second attempt is already rare.
const PERIOD_ATTEMPTS: u16 = 10;

/// A flow-cache entry as the kernel stores it, decoded from its bytes: the
/// key (16 or 40 bytes), then service id, backend slot, state and flags
/// (16 bits each, host byte order) and the period stamp (64 bits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawCached {
    /// The flow's key bytes.
    pub key: Vec<u8>,
    /// Service id.
    pub service_id: u16,
    /// Backend slot.
    pub slot: u16,
    /// `STATE_*`.
    pub state: u16,
    /// `FLOW_*` flags, as the flow's table entry has them.
    pub flags: u16,
    /// The cache period the entry was written in.
    pub stamp: u64,
}

impl RawCached {
    /// Decodes the bytes of one way of a cache set.
    pub fn decode(bytes: &[u8]) -> Self {
        let at = bytes.len() - 16;
        let u16_at = |i: usize| u16::from_ne_bytes([bytes[at + i], bytes[at + i + 1]]);
        let stamp = bytes[at + 8..]
            .try_into()
            .map(u64::from_ne_bytes)
            .expect("an 8-byte stamp");
        Self {
            key: bytes[..at].to_vec(),
            service_id: u16_at(0),
            slot: u16_at(2),
            state: u16_at(4),
            flags: u16_at(6),
            stamp,
        }
    }
}

/// The flow-cache set of a flow whose connection-table key has the bytes
/// `key` (16 or 40 bytes): `lb_common::flow_cache_set` of the key's
/// native-endian 64-bit words.
fn cache_set(key: &[u8]) -> u32 {
    let words: Vec<u64> = key
        .chunks_exact(8)
        .map(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")))
        .collect();
    match words.len() {
        2 => flow_cache_set::<2>(&words.try_into().expect("2 words")),
        5 => flow_cache_set::<5>(&words.try_into().expect("5 words")),
        n => panic!("a flow key of {n} words"),
    }
}

/// The way of `ways` (one CPU's flow-cache set) that holds the flow whose
/// key has the bytes `key`, if any. Fails when several ways hold it: a flow
/// is cached at most once per CPU.
pub fn way_holding(case: &str, ways: &[RawCached], key: &[u8]) -> Option<usize> {
    let holding: Vec<usize> = (0..ways.len()).filter(|&w| ways[w].key == key).collect();
    assert!(
        holding.len() <= 1,
        "{case}: ways {holding:?} of one set hold the same flow: {ways:?}"
    );
    holding.first().copied()
}

/// `count` client ports whose TCP flows (`pkt`, for IPv4 or IPv6) fall in
/// one flow-cache set: the ports of the `nth` (from 0) set to gather `count`
/// of them, counting up from port 1024. Different `nth` give different sets,
/// so no port is shared.
pub fn ports_in_one_set(pkt: impl Fn(u16, u8) -> Pkt, count: usize, nth: usize) -> Vec<u16> {
    let mut by_set = BTreeMap::<u32, Vec<u16>>::new();
    let mut gathered = 0;
    for port in 1024..=u16::MAX {
        let set = cache_set(&key_bytes_of_frame(&pkt(port, TCP_ACK).build()));
        let ports = by_set.entry(set).or_default();
        ports.push(port);
        if ports.len() == count {
            if gathered == nth {
                return ports.clone();
            }
            gathered += 1;
        }
    }
    panic!(
        "fewer than {} flow-cache sets hold {count} client ports",
        nth + 1
    )
}

/// The kernel's jiffies counter (what `bpf_jiffies64` returns), from the
/// `jiffies:` line of /proc/timer_list (root only).
fn jiffies() -> u64 {
    let list = std::fs::read_to_string("/proc/timer_list")
        .unwrap_or_else(|e| panic!("reading /proc/timer_list (for jiffies): {e}"));
    list.lines()
        .find_map(|line| line.strip_prefix("jiffies: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `jiffies:` line in /proc/timer_list"))
}

/// The current flow-cache period, as the data path computes it.
pub fn current_period() -> u64 {
    jiffies() >> FLOW_CACHE_PERIOD_SHIFT
}

/// Waits (at most 3 s: a period lasts at most 640 ms, at HZ=100) until the
/// flow-cache period is past `stamp`; returns the new period.
pub fn wait_for_period_after(case: &str, stamp: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let period = current_period();
        if period > stamp {
            return period;
        }
        assert!(
            Instant::now() < deadline,
            "{case}: the cache period stayed at {period} for 3 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Pins the calling thread (each test runs on its own) to the CPU it runs
/// on, so that every `BPF_PROG_TEST_RUN` of the test writes that CPU's flow
/// cache; returns the CPU.
pub fn pin_to_one_cpu(case: &str) -> usize {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    let cpu = usize::try_from(cpu)
        .unwrap_or_else(|_| panic!("{case}: sched_getcpu: {}", io::Error::last_os_error()));
    pin_to_cpu(case, cpu);
    cpu
}

/// The CPUs the calling thread may run on.
pub fn allowed_cpus(case: &str) -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is a valid set for the kernel to fill;
    // pid 0 is the calling thread.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let rc = libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set);
        assert_eq!(
            rc,
            0,
            "{case}: sched_getaffinity: {}",
            io::Error::last_os_error()
        );
        set
    };
    // SAFETY: CPU_ISSET reads inside the set for any index below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Pins the calling thread to CPU `cpu` (see [`pin_to_one_cpu`]).
pub fn pin_to_cpu(case: &str, cpu: usize) {
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET stays inside
    // it for any CPU the kernel runs us on; pid 0 is the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(
        rc,
        0,
        "{case}: pinning the test thread to CPU {cpu}: {}",
        io::Error::last_os_error()
    );
    // SAFETY: as above.
    let now = unsafe { libc::sched_getcpu() };
    assert_eq!(
        usize::try_from(now).ok(),
        Some(cpu),
        "{case}: still on CPU {now}"
    );
}

/// Runs `attempt` (given the attempt number, from 0) until it returns
/// `Some`: it returns `None` when the flow-cache period rolled over during
/// the part of its sequence that must fit in one period. Fails after
/// [`PERIOD_ATTEMPTS`] attempts.
pub fn within_one_period<T>(case: &str, mut attempt: impl FnMut(u16) -> Option<T>) -> T {
    for n in 0..PERIOD_ATTEMPTS {
        if let Some(done) = attempt(n) {
            return done;
        }
        eprintln!("{case}: the cache period rolled over during attempt {n}; trying again");
    }
    panic!("{case}: the cache period rolled over during each of {PERIOD_ATTEMPTS} attempts")
}

/// The flow-cache set of the flow of the plain IPv4 or IPv6 `frame` on
/// every possible CPU, each as its [`FLOW_CACHE_WAYS`] ways.
pub fn cache_sets(case: &Case, frame: &[u8]) -> Vec<Vec<RawCached>> {
    let key = key_bytes_of_frame(frame);
    let set = cache_set(&key);
    match key.len() {
        FLOW_KEY4_LEN => every_cpus_set::<CACHED_SET4_LEN>(case, FLOW_CACHE4_MAP, CACHED4_LEN, set),
        FLOW_KEY6_LEN => every_cpus_set::<CACHED_SET6_LEN>(case, FLOW_CACHE6_MAP, CACHED6_LEN, set),
        n => panic!("{}: a flow key of {n} bytes", case.name),
    }
}

/// Set `set` of the flow cache `table` (values of `LEN` bytes, entries
/// of `entry_len`) in the block of every possible CPU, each decoded into
/// its [`FLOW_CACHE_WAYS`] ways.
fn every_cpus_set<const LEN: usize>(
    case: &Case,
    table: &str,
    entry_len: usize,
    set: u32,
) -> Vec<Vec<RawCached>> {
    let name = &case.name;
    let map = case.map_by_name(table, ARRAY_KEY_LEN, LEN);
    let array = Array::<MapData, [u8; LEN]>::try_from(map)
        .unwrap_or_else(|e| panic!("{name}: {table} as raw bytes: {e}"));
    let cpus = nr_cpus().expect("the number of possible CPUs") as u32;
    (0..cpus)
        .map(|cpu| {
            let index = flow_cache_index(cpu, set);
            let value = array
                .get(&index, 0)
                .unwrap_or_else(|e| panic!("{name}: reading {table}[{index}]: {e}"));
            value
                .chunks_exact(entry_len)
                .take(FLOW_CACHE_WAYS)
                .map(RawCached::decode)
                .collect()
        })
        .collect()
}

/// CPU `cpu`'s flow-cache entry of `frame`'s flow, if that CPU caches it.
pub fn cached_entry(case: &Case, frame: &[u8], cpu: usize) -> Option<RawCached> {
    let key = key_bytes_of_frame(frame);
    let sets = cache_sets(case, frame);
    let ways = sets
        .get(cpu)
        .unwrap_or_else(|| panic!("{}: no flow-cache value for CPU {cpu}", case.name));
    way_holding(&case.name, ways, &key).map(|way| ways[way].clone())
}

/// Asserts that no way of any CPU's flow cache holds `pkt`'s flow.
pub fn expect_not_cached(case: &Case, label: &str, pkt: &Pkt) {
    let frame = pkt.build();
    let key = key_bytes_of_frame(&frame);
    for (cpu, ways) in cache_sets(case, &frame).iter().enumerate() {
        if let Some(way) = way_holding(&case.name, ways, &key) {
            panic!(
                "{}/{label}: the flow is in way {way} of CPU {cpu}'s flow cache: {:?}",
                case.name, ways[way]
            );
        }
    }
}

/// Asserts that a way of CPU `cpu`'s flow cache, and of no other CPU's,
/// holds `pkt`'s flow (its key bytes as the frame gives them) bound to
/// `slot` of service `id` in `state`, with the flags of the flow's table
/// entry, stamped with a period of `periods` (read just before and just
/// after the packet that cached it). Returns the entry.
pub fn expect_cached(
    case: &Case,
    label: &str,
    pkt: &Pkt,
    cpu: usize,
    (id, slot, state): (u32, u32, u32),
    periods: RangeInclusive<u64>,
) -> RawCached {
    let name = &case.name;
    let frame = pkt.build();
    let key = key_bytes_of_frame(&frame);
    let sets = cache_sets(case, &frame);
    for (other, ways) in sets.iter().enumerate() {
        if other != cpu {
            assert_eq!(
                way_holding(name, ways, &key),
                None,
                "{name}/{label}: the flow is in CPU {other}'s flow cache too, not only CPU {cpu}'s"
            );
        }
    }
    let ways = sets
        .get(cpu)
        .unwrap_or_else(|| panic!("{name}: no flow-cache value for CPU {cpu}"));
    let Some(way) = way_holding(name, ways, &key) else {
        let keys: String = ways.iter().map(|entry| hex(&entry.key)).collect();
        panic!(
            "{name}/{label}: no way of CPU {cpu}'s flow-cache set holds the flow\n\
             way keys:\n{keys}frame key:\n{}",
            hex(&key)
        );
    };
    let entry = ways[way].clone();
    let flags = case
        .flow(pkt)
        .unwrap_or_else(|| panic!("{name}/{label}: a cached flow missing from the tables"))
        .flags;
    assert_eq!(
        (
            u32::from(entry.service_id),
            u32::from(entry.slot),
            state_name(u32::from(entry.state)),
            entry.flags
        ),
        (id, slot, state_name(state), flags),
        "{name}/{label}: cached (service, slot, state, flags)"
    );
    assert!(
        entry.stamp != 0 && periods.contains(&entry.stamp),
        "{name}/{label}: cache stamp {} is not the period of the packet ({periods:?})",
        entry.stamp
    );
    entry
}

/// Runs `frame` like [`Case::run_counted`] if the flow-cache period is
/// still `stamp` afterwards; `None` when it rolled over meanwhile.
pub fn run_in_period(case: &Case, label: &str, frame: &[u8], stamp: u64) -> Option<Sent> {
    let sent = case.run_counted(label, frame);
    (current_period() == stamp).then_some(sent)
}

/// Opens a TCP flow from client port `sport` of service
/// [`SERVICE_ID`] on its least loaded backend `slot`, which must have no
/// flows yet, and caches it: the SYN opens it in the table (SYN_RECV)
/// and leaves it out of the cache; the ACK (a state change, with the
/// client's first data) goes through the table (ESTABLISHED, `slot`
/// counted active) and caches the flow on `cpu`. Returns the entry.
pub fn open_cached(
    case: &Case,
    pkt: impl Fn(u16, u8) -> Pkt,
    sport: u16,
    slot: u32,
    cpu: usize,
) -> RawCached {
    let syn = pkt(sport, TCP_SYN);
    case.forward("SYN", &syn, SERVICE_ID, slot);
    case.expect_flow("SYN", &syn, SERVICE_ID, slot, STATE_SYN_RECV);
    case.expect_conns("SYN", SERVICE_ID, slot, 0, 1);
    expect_not_cached(case, "SYN", &syn);
    let ack = pkt(sport, TCP_ACK).with_payload(REQUEST);
    let start = current_period();
    case.forward("ACK", &ack, SERVICE_ID, slot);
    let end = current_period();
    case.expect_flow("ACK", &ack, SERVICE_ID, slot, STATE_ESTABLISHED);
    case.expect_conns("ACK", SERVICE_ID, slot, 1, 0);
    let flow = (SERVICE_ID, slot, STATE_ESTABLISHED);
    expect_cached(case, "ACK", &ack, cpu, flow, start..=end)
}

/// Opens a TCP flow from client port `sport` of service [`SERVICE_ID`]
/// on its least loaded backend `slot`, which must have no flows yet,
/// through the table alone: SYN then ACK, both forwarded to `slot`, the
/// flow ESTABLISHED in the table and in no CPU's flow cache. For a flow
/// whose cache set is full of flows of period `stamp`; `None` when the
/// period was no longer `stamp` after the ACK.
pub fn open_uncached(
    case: &Case,
    pkt: impl Fn(u16, u8) -> Pkt,
    sport: u16,
    slot: u32,
    stamp: u64,
) -> Option<()> {
    let syn = pkt(sport, TCP_SYN);
    case.forward("SYN", &syn, SERVICE_ID, slot);
    case.expect_conns("SYN", SERVICE_ID, slot, 0, 1);
    let ack = pkt(sport, TCP_ACK).with_payload(REQUEST);
    let frame = ack.build();
    let sent = run_in_period(case, "ACK", &frame, stamp)?;
    case.check(
        "ACK",
        &frame,
        Expect::Tx(ack.forwarded(SERVICE_ID, slot)),
        sent,
    );
    case.expect_flow("ACK", &ack, SERVICE_ID, slot, STATE_ESTABLISHED);
    case.expect_conns("ACK", SERVICE_ID, slot, 1, 0);
    expect_not_cached(case, "ACK", &ack);
    Some(())
}
