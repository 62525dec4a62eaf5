//! The per-CPU flow cache.
//!
//! `BPF_PROG_TEST_RUN` runs the program on the calling thread's CPU, so each
//! of these fixtures pins its thread to one CPU ([`pin_to_one_cpu`]) and reads
//! that CPU's set of FLOW_CACHE4 / FLOW_CACHE6 (`lb_common::flow_cache_index`):
//! the [`FLOW_CACHE_WAYS`] entries the flow's key hashes to. The cache maps
//! are not in `lb::datapath::maps::Maps`: they are opened by id and read as raw
//! bytes.
//!
//! A cached flow is only used in the cache period it was cached in
//! (`jiffies >> FLOW_CACHE_PERIOD_SHIFT`). The fixtures read the kernel's
//! jiffies from /proc/timer_list ([`current_period`]) around the packets
//! that matter: a cache entry's stamp must lie between the periods read just
//! before and just after the packet that wrote it, and a fixture that needs a
//! cache hit retries its whole sequence on a fresh data path
//! ([`within_one_period`]) when the period rolled over between caching and
//! the packet that should hit.

use std::net::IpAddr;

use lb_common::{
    BACKEND_STATE_EMPTY, FLOW_CACHE_WAYS, PROTO_TCP, PROTO_UDP,
    conn_state::{
        STATE_CLOSE, STATE_ESTABLISHED, STATE_FIN_WAIT, STATE_SYN_RECV, STATE_UDP, TCP_ACK,
        TCP_FIN, TCP_RST, TCP_SYN,
    },
};
use lb_tests::{
    VIP4, VIP6,
    frame::{Pkt, TCP_PSH},
    xdp_case::{Case, Expect, Real, SERVICE_ID, privileged, up},
};

use crate::cache_view::{
    RawCached, allowed_cpus, cache_sets, cached_entry, current_period, expect_cached,
    expect_not_cached, open_cached, open_uncached, pin_to_cpu, pin_to_one_cpu, ports_in_one_set,
    run_in_period, wait_for_period_after, way_holding, within_one_period,
};

/// Runs `body` until it returns `Some` (see [`within_one_period`]), each
/// attempt on a fresh case: a two-backend TCP service on the IPv4 VIP and an
/// established flow from client port `sport_base + attempt`, cached on this
/// CPU on slot 0. `body` gets the case, the cache entry, the client port and
/// the CPU.
fn with_cached_flow(
    name: &str,
    sport_base: u16,
    mut body: impl FnMut(&mut Case, RawCached, u16, usize) -> Option<()>,
) {
    if !privileged(name) {
        return;
    }
    let cpu = pin_to_one_cpu(name);
    within_one_period(name, |attempt| {
        let mut case = Case::new(format!("{name} (attempt {attempt})")).expect("privileged");
        case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(100), up(100)]);
        let sport = sport_base + attempt;
        let cached = open_cached(&case, Pkt::tcp4, sport, 0, cpu);
        body(&mut case, cached, sport, cpu)
    });
}

/// A SYN opens its flow in the table only; the ACK, a state change, goes
/// through the table and caches the flow on this CPU alone, under the key
/// bytes of the frame, with its service, slot, new state and the period.
fn handshake_caches_the_flow(name: &str, vip: IpAddr, pkt: impl Fn(u16, u8) -> Pkt) {
    let Some(mut case) = Case::new(name) else {
        return;
    };
    let cpu = pin_to_one_cpu(name);
    case.service(SERVICE_ID, vip, PROTO_TCP, &[up(100), up(100)]);
    open_cached(&case, pkt, 40000, 0, cpu);
    assert_eq!(case.flow_count(), 1, "{name}: flows");
}

/// IPv4: SYN not cached, ACK cached.
#[test]
fn ipv4_flow_cache_follows_the_handshake() {
    handshake_caches_the_flow("ipv4_flow_cache_handshake", VIP4.into(), Pkt::tcp4);
}

/// IPv6: SYN not cached, ACK cached (under the 40-byte key).
#[test]
fn ipv6_flow_cache_follows_the_handshake() {
    handshake_caches_the_flow("ipv6_flow_cache_handshake", VIP6.into(), Pkt::tcp6);
}

/// A packet of a cached flow that does not change its state is forwarded
/// from the cache alone: with the flow deleted from the table, data on it
/// still goes to its backend, and the table stays without it (no lookup
/// miss that schedules it again, no write); the cache entry and the
/// connection counts are left as they were; the statistics count it.
#[test]
fn flow_cache_hit_bypasses_the_table() {
    let name = "flow_cache_hit";
    with_cached_flow(name, 41000, |case, cached, sport, cpu| {
        let ack = Pkt::tcp4(sport, TCP_ACK);
        assert!(
            case.dp.maps.remove_flow(&ack.flow_key()),
            "{name}: deleting the flow from the table"
        );
        assert_eq!(case.flow(&ack), None, "{name}: flow deleted");
        let data = Pkt::tcp4(sport, TCP_ACK | TCP_PSH).with_payload(b"from the cache");
        let frame = data.build();
        let sent = run_in_period(case, "data", &frame, cached.stamp)?;
        case.check(
            "data",
            &frame,
            Expect::Tx(data.forwarded(SERVICE_ID, 0)),
            sent,
        );
        assert_eq!(
            case.flow(&data),
            None,
            "{}: flow back in the table",
            case.name
        );
        assert_eq!(case.flow_count(), 0, "{}: flows", case.name);
        assert_eq!(
            cached_entry(case, &frame, cpu),
            Some(cached),
            "{}: the cache entry changed",
            case.name
        );
        case.expect_conns("data", SERVICE_ID, 0, 1, 0);
        case.expect_conns("data", SERVICE_ID, 1, 0, 0);
        assert_eq!(
            case.backend_stats(SERVICE_ID, 0).packets,
            3,
            "{}: slot 0 packets",
            case.name
        );
        assert_eq!(
            case.service_stats(SERVICE_ID).new_conns,
            1,
            "{}: service new_conns",
            case.name
        );
        Some(())
    });
}

/// A SYN (without ACK) never probes the cache, even for a cached flow whose
/// state it would not change (a SYN on an established flow): with the flow
/// cached and deleted from the table, a SYN opens it again in the table, on
/// the least loaded backend.
#[test]
fn flow_cache_is_not_probed_by_syns() {
    let name = "flow_cache_syn";
    with_cached_flow(name, 42000, |case, cached, sport, _| {
        let syn = Pkt::tcp4(sport, TCP_SYN);
        assert!(
            case.dp.maps.remove_flow(&syn.flow_key()),
            "{name}: deleting the flow from the table"
        );
        let frame = syn.build();
        let sent = run_in_period(case, "SYN again", &frame, cached.stamp)?;
        // Slot 0 still counts the deleted flow as active: slot 1 is chosen.
        case.check(
            "SYN again",
            &frame,
            Expect::Tx(syn.forwarded(SERVICE_ID, 1)),
            sent,
        );
        case.expect_flow("SYN again", &syn, SERVICE_ID, 1, STATE_SYN_RECV);
        case.expect_conns("SYN again", SERVICE_ID, 1, 0, 1);
        assert_eq!(
            case.service_stats(SERVICE_ID).new_conns,
            2,
            "{}: service new_conns",
            case.name
        );
        Some(())
    });
}

/// A packet that changes the state of a cached flow goes through the table:
/// FIN moves the table's flow to FIN_WAIT and its backend's count from
/// active to inactive, RST then to CLOSE; the cache follows each time.
#[test]
fn flow_cache_state_changes_go_through_the_table() {
    let name = "flow_cache_state_change";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    let cpu = pin_to_one_cpu(name);
    case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(100), up(100)]);
    let cached = open_cached(&case, Pkt::tcp4, 40000, 0, cpu);
    let mut stamp = cached.stamp;
    for (label, flags, state) in [
        ("FIN", TCP_FIN | TCP_ACK, STATE_FIN_WAIT),
        ("RST", TCP_RST, STATE_CLOSE),
    ] {
        let pkt = Pkt::tcp4(40000, flags);
        let start = current_period();
        case.forward(label, &pkt, SERVICE_ID, 0);
        let end = current_period();
        case.expect_flow(label, &pkt, SERVICE_ID, 0, state);
        case.expect_conns(label, SERVICE_ID, 0, 0, 1);
        case.expect_conns(label, SERVICE_ID, 1, 0, 0);
        let entry = expect_cached(&case, label, &pkt, cpu, (SERVICE_ID, 0, state), start..=end);
        assert!(
            entry.stamp >= stamp,
            "{name}/{label}: cache stamp went back"
        );
        stamp = entry.stamp;
    }
}

/// A cached flow whose backend slot was emptied (`lb backend remove
/// --reschedule`) is not forwarded from the cache: its next packet is
/// scheduled again, on the remaining backend, and the table follows; the
/// packet after that caches the new slot.
#[test]
fn flow_cache_skips_emptied_slots() {
    let name = "flow_cache_emptied_slot";
    let removed = Real {
        weight: 0,
        state: BACKEND_STATE_EMPTY,
    };
    with_cached_flow(name, 43000, |case, cached, sport, cpu| {
        case.backends(SERVICE_ID, VIP4.into(), &[removed, up(100)]);
        let data = Pkt::tcp4(sport, TCP_ACK | TCP_PSH).with_payload(b"after removal");
        let frame = data.build();
        let label = "data after removal";
        let sent = run_in_period(case, label, &frame, cached.stamp)?;
        case.check(
            label,
            &frame,
            Expect::Tx(data.forwarded(SERVICE_ID, 1)),
            sent,
        );
        case.expect_flow(label, &data, SERVICE_ID, 1, STATE_ESTABLISHED);
        case.expect_conns(label, SERVICE_ID, 1, 1, 0);
        assert_eq!(
            case.backend_stats(SERVICE_ID, 1).new_conns,
            1,
            "{}: slot 1 new_conns",
            case.name
        );
        let more = Pkt::tcp4(sport, TCP_ACK);
        let start = current_period();
        case.forward("next ACK", &more, SERVICE_ID, 1);
        let end = current_period();
        case.expect_flow("next ACK", &more, SERVICE_ID, 1, STATE_ESTABLISHED);
        let flow = (SERVICE_ID, 1, STATE_ESTABLISHED);
        expect_cached(case, "next ACK", &more, cpu, flow, start..=end);
        Some(())
    });
}

/// UDP: the first datagram opens the flow in the table only; the second
/// finds it there and caches it (state UDP).
#[test]
fn flow_cache_udp() {
    let name = "flow_cache_udp";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    let cpu = pin_to_one_cpu(name);
    case.service(SERVICE_ID, VIP4.into(), PROTO_UDP, &[up(1), up(1)]);
    let first = Pkt::udp4(5353).with_payload(b"query");
    case.forward("first datagram", &first, SERVICE_ID, 0);
    case.expect_flow("first datagram", &first, SERVICE_ID, 0, STATE_UDP);
    expect_not_cached(&case, "first datagram", &first);
    let second = Pkt::udp4(5353).with_payload(b"second query");
    let start = current_period();
    case.forward("second datagram", &second, SERVICE_ID, 0);
    let end = current_period();
    case.expect_flow("second datagram", &second, SERVICE_ID, 0, STATE_UDP);
    case.expect_conns("second datagram", SERVICE_ID, 0, 0, 1);
    let flow = (SERVICE_ID, 0, STATE_UDP);
    expect_cached(&case, "second datagram", &second, cpu, flow, start..=end);
}

/// A cached flow goes back to its table once per period: after the period
/// rolled over, its next packet refreshes the table's last-seen time and
/// caches the flow again with the new period.
#[test]
fn flow_cache_period_refreshes_the_table() {
    let name = "flow_cache_period";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    let cpu = pin_to_one_cpu(name);
    case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(100), up(100)]);
    let cached = open_cached(&case, Pkt::tcp4, 40000, 0, cpu);
    let ack = Pkt::tcp4(40000, TCP_ACK);
    let seen = case.expect_flow("ACK", &ack, SERVICE_ID, 0, STATE_ESTABLISHED);
    let start = wait_for_period_after(name, cached.stamp);
    let data = Pkt::tcp4(40000, TCP_ACK | TCP_PSH).with_payload(b"a period later");
    case.forward("data", &data, SERVICE_ID, 0);
    let end = current_period();
    let now_seen = case.expect_flow("data", &data, SERVICE_ID, 0, STATE_ESTABLISHED);
    assert!(
        now_seen > seen,
        "{name}: last_seen_ns not refreshed ({seen} before, {now_seen} after)"
    );
    case.expect_conns("data", SERVICE_ID, 0, 1, 0);
    let flow = (SERVICE_ID, 0, STATE_ESTABLISHED);
    let entry = expect_cached(&case, "data", &data, cpu, flow, start..=end);
    assert!(
        entry.stamp > cached.stamp,
        "{name}: cache stamp {} not past {}",
        entry.stamp,
        cached.stamp
    );
}

/// Runs `body` until it returns `Some` (see [`within_one_period`]), each
/// attempt on a fresh case: a TCP service on `vip` with one backend more
/// than a flow-cache set has ways, and [`FLOW_CACHE_WAYS`] + 1 client ports
/// whose flows (`pkt`) fall in one set, a different set each attempt. The
/// flows of all ports but the last are opened (the `i`th on slot `i`) and
/// cached on this CPU within one period, which fills their set: one flow
/// per way. `body` gets the case, the ports, the cache entries of the open
/// flows (in port order) and the CPU.
fn with_full_cache_set(
    name: &str,
    vip: IpAddr,
    pkt: impl Fn(u16, u8) -> Pkt,
    mut body: impl FnMut(&mut Case, &[u16], &[RawCached], usize) -> Option<()>,
) {
    if !privileged(name) {
        return;
    }
    let cpu = pin_to_one_cpu(name);
    within_one_period(name, |attempt| {
        let mut case = Case::new(format!("{name} (attempt {attempt})")).expect("privileged");
        case.service(SERVICE_ID, vip, PROTO_TCP, &[up(100); FLOW_CACHE_WAYS + 1]);
        let ports = ports_in_one_set(&pkt, FLOW_CACHE_WAYS + 1, usize::from(attempt));
        let cached: Vec<RawCached> = (0..)
            .zip(&ports[..FLOW_CACHE_WAYS])
            .map(|(slot, &sport)| open_cached(&case, &pkt, sport, slot, cpu))
            .collect();
        if cached.iter().any(|entry| entry.stamp != cached[0].stamp) {
            return None;
        }
        let ways = &cache_sets(&case, &pkt(ports[0], TCP_ACK).build())[cpu];
        for entry in &cached {
            assert!(
                ways.contains(entry),
                "{}: the flow-cache set lost a flow of its period: {entry:?}\nset: {ways:?}",
                case.name
            );
        }
        body(&mut case, &ports, &cached, cpu)
    });
}

/// Flows whose keys fall in one flow-cache set are cached side by side, one
/// per way, and each is forwarded from the cache alone: with every one of
/// them deleted from the table, data on each still goes to its own backend,
/// the table stays empty, and the set and the connection counts are left as
/// they were.
fn cache_set_holds_a_flow_per_way(name: &str, vip: IpAddr, pkt: impl Fn(u16, u8) -> Pkt) {
    with_full_cache_set(name, vip, &pkt, |case, ports, cached, cpu| {
        let stamp = cached[0].stamp;
        let set_frame = pkt(ports[0], TCP_ACK).build();
        let set = cache_sets(case, &set_frame)[cpu].clone();
        let open = &ports[..FLOW_CACHE_WAYS];
        for &sport in open {
            assert!(
                case.dp.maps.remove_flow(&pkt(sport, TCP_ACK).flow_key()),
                "{}: deleting the flow from port {sport} from the table",
                case.name
            );
        }
        for (slot, &sport) in (0..).zip(open) {
            let label = format!("data from port {sport}");
            let data = pkt(sport, TCP_ACK | TCP_PSH).with_payload(b"from the cache");
            let frame = data.build();
            let sent = run_in_period(case, &label, &frame, stamp)?;
            case.check(
                &label,
                &frame,
                Expect::Tx(data.forwarded(SERVICE_ID, slot)),
                sent,
            );
            assert_eq!(
                case.flow(&data),
                None,
                "{}/{label}: flow back in the table",
                case.name
            );
        }
        assert_eq!(case.flow_count(), 0, "{}: flows", case.name);
        assert_eq!(
            cache_sets(case, &set_frame)[cpu],
            set,
            "{}: the flow-cache set changed",
            case.name
        );
        for slot in 0..FLOW_CACHE_WAYS as u32 {
            case.expect_conns("data", SERVICE_ID, slot, 1, 0);
        }
        Some(())
    });
}

/// IPv4: a flow in every way of one set, each forwarded from the cache.
#[test]
fn ipv4_flow_cache_set_holds_a_flow_per_way() {
    cache_set_holds_a_flow_per_way("ipv4_flow_cache_ways", VIP4.into(), Pkt::tcp4);
}

/// IPv6: a flow in every way of one set, each forwarded from the cache.
#[test]
fn ipv6_flow_cache_set_holds_a_flow_per_way() {
    cache_set_holds_a_flow_per_way("ipv6_flow_cache_ways", VIP6.into(), Pkt::tcp6);
}

/// Each CPU caches flows in its own block of sets
/// (`lb_common::flow_cache_index`): run on each CPU this test may use in
/// turn, an IPv4 and an IPv6 flow opened there are cached in that CPU's
/// block and in no other CPU's (`open_cached` checks both).
#[test]
fn flow_cache_keeps_each_cpus_flows_in_its_own_block() {
    let name = "flow_cache_cpu_blocks";
    if !privileged(name) {
        return;
    }
    let cpus = allowed_cpus(name);
    for (n, &cpu) in (0u16..).zip(&cpus) {
        pin_to_cpu(name, cpu);
        let mut case = Case::new(format!("{name} (CPU {cpu})")).expect("privileged");
        case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(100)]);
        open_cached(&case, Pkt::tcp4, 41_000 + n, 0, cpu);
        let mut case = Case::new(format!("{name} (CPU {cpu}, IPv6)")).expect("privileged");
        case.service(SERVICE_ID, VIP6.into(), PROTO_TCP, &[up(100)]);
        open_cached(&case, Pkt::tcp6, 41_000 + n, 0, cpu);
    }
    eprintln!("{name}: checked on CPUs {cpus:?}");
}

/// A flow whose set is full of other flows of the current period is not
/// cached and does not evict them: its handshake and data go through the
/// table (the data refreshes a table entry marked as last seen at 1 ns),
/// to its own backend, while no CPU caches it and the set's entries stay
/// as they were.
#[test]
fn flow_cache_full_set_leaves_a_new_flow_in_the_table() {
    let name = "flow_cache_full_set";
    with_full_cache_set(name, VIP4.into(), Pkt::tcp4, |case, ports, cached, cpu| {
        let stamp = cached[0].stamp;
        let (sport, slot) = (ports[FLOW_CACHE_WAYS], FLOW_CACHE_WAYS as u32);
        let set_frame = Pkt::tcp4(sport, TCP_ACK).build();
        let set = cache_sets(case, &set_frame)[cpu].clone();
        open_uncached(case, Pkt::tcp4, sport, slot, stamp)?;
        assert_eq!(
            cache_sets(case, &set_frame)[cpu],
            set,
            "{}/handshake: the full flow-cache set changed",
            case.name
        );
        let data = Pkt::tcp4(sport, TCP_ACK | TCP_PSH).with_payload(b"past a full set");
        let mut flow = case
            .flow(&data)
            .unwrap_or_else(|| panic!("{}: flow missing from the table", case.name));
        flow.last_seen_ns = 1;
        case.dp
            .maps
            .insert_flow(&data.flow_key(), &flow)
            .unwrap_or_else(|e| panic!("{}: insert_flow: {e:#}", case.name));
        let frame = data.build();
        let sent = run_in_period(case, "data", &frame, stamp)?;
        case.check(
            "data",
            &frame,
            Expect::Tx(data.forwarded(SERVICE_ID, slot)),
            sent,
        );
        let seen = case.expect_flow("data", &data, SERVICE_ID, slot, STATE_ESTABLISHED);
        assert!(
            seen > 1,
            "{}/data: last_seen_ns not refreshed: the packet skipped the table",
            case.name
        );
        expect_not_cached(case, "data", &data);
        assert_eq!(
            cache_sets(case, &set_frame)[cpu],
            set,
            "{}/data: the full flow-cache set changed",
            case.name
        );
        Some(())
    });
}

/// A new period frees the ways of a full set: the first packet of the flow
/// left out of it in the old period caches it, in the first way holding a
/// flow of the old period, with the new stamp; that flow alone is evicted,
/// the other ways keep their entries.
#[test]
fn flow_cache_new_period_frees_a_way_of_a_full_set() {
    let name = "flow_cache_full_set_next_period";
    with_full_cache_set(name, VIP4.into(), Pkt::tcp4, |case, ports, cached, cpu| {
        let stamp = cached[0].stamp;
        let (sport, slot) = (ports[FLOW_CACHE_WAYS], FLOW_CACHE_WAYS as u32);
        open_uncached(case, Pkt::tcp4, sport, slot, stamp)?;
        let set_frame = Pkt::tcp4(sport, TCP_ACK).build();
        let before = cache_sets(case, &set_frame)[cpu].clone();
        let start = wait_for_period_after(&case.name, stamp);
        let data = Pkt::tcp4(sport, TCP_ACK | TCP_PSH).with_payload(b"a period later");
        case.forward("data", &data, SERVICE_ID, slot);
        let end = current_period();
        case.expect_flow("data", &data, SERVICE_ID, slot, STATE_ESTABLISHED);
        let flow = (SERVICE_ID, slot, STATE_ESTABLISHED);
        let entry = expect_cached(case, "data", &data, cpu, flow, start..=end);
        let after = cache_sets(case, &set_frame)[cpu].clone();
        let way = way_holding(&case.name, &after, &entry.key).expect("cached");
        assert_eq!(
            Some(way),
            before.iter().position(|old| old.stamp != entry.stamp),
            "{}: the flow did not take the first way of an older period\nbefore: {before:?}\nafter: {after:?}",
            case.name
        );
        for (other, (old, new)) in before.iter().zip(&after).enumerate() {
            if other != way {
                assert_eq!(new, old, "{}: way {other} changed", case.name);
            }
        }
        let evicted: Vec<&RawCached> = cached.iter().filter(|old| !after.contains(old)).collect();
        assert_eq!(
            evicted,
            [&before[way]],
            "{}: the flows evicted from the set",
            case.name
        );
        Some(())
    });
}

// ---------------------------------------------------------------------------
