//! Flow tables per address family: a flow lands in the IPv4 tables
//! (CONFIRMED4 and its overflow CONNTRACK4, PENDING4) or the IPv6 ones
//! (CONFIRMED6, CONNTRACK6, PENDING6) under the key and value bytes its
//! frame gives (in the tables of sets, as a way of the set its key hashes
//! to; in the overflow hash when that set is full), and the families are
//! independent.

use std::net::IpAddr;

use aya::maps::{Array, HashMap, MapData};
use lb::datapath::maps::monotonic_ns;
use lb_common::{
    CONFIRMED4_MAP, CONFIRMED6_MAP, CONNTRACK4_MAP, FLOW_SET_WAYS, Flow, FlowKey, PENDING4_MAP,
    PENDING6_MAP, PROTO_TCP, PROTO_UDP, confirmed_set_capacity,
    conn_state::{STATE_ESTABLISHED, STATE_SYN_RECV, STATE_UDP, TCP_ACK, TCP_SYN},
    flow_set_index,
};
use lb_tests::{
    VIP4, VIP6,
    frame::{Pkt, hex},
    xdp_case::{Case, DECOY_ID, SERVICE_ID, up},
};

use crate::{
    cache_view::{current_period, wait_for_period_after},
    raw_keys::{FLOW_KEY4_LEN, FLOW_KEY6_LEN, key_bytes_of_frame},
};

/// Bytes of a connection-table value ([`Flow`]).
const FLOW_VALUE_LEN: usize = 16;

/// A connection-table entry as the kernel stores it.
pub(crate) struct RawFlow {
    /// The key's bytes.
    pub(crate) key: Vec<u8>,
    /// The value's bytes.
    value: Vec<u8>,
}

/// Every entry of the data path's map `table` as the kernel stores it,
/// read through a handle opened by map id, apart from
/// `lb::datapath::maps::Maps` and its types. Checks the map's key and value
/// sizes first.
pub(crate) fn raw_entries<const KEY_LEN: usize>(case: &Case, table: &str) -> Vec<RawFlow> {
    let name = &case.name;
    let map = case.map_by_name(table, KEY_LEN, FLOW_VALUE_LEN);
    let raw = HashMap::<MapData, [u8; KEY_LEN], [u8; FLOW_VALUE_LEN]>::try_from(map)
        .unwrap_or_else(|e| panic!("{name}: {table} as raw bytes: {e}"));
    raw.iter()
        .map(|entry| {
            let (key, value) = entry.unwrap_or_else(|e| panic!("{name}: walking {table}: {e}"));
            RawFlow {
                key: key.to_vec(),
                value: value.to_vec(),
            }
        })
        .collect()
}

/// Every flow of the table of flow sets `table` (a pending table or a
/// connection table's sets) as the kernel stores it, read
/// through a handle opened by map id as raw sets of `SET_LEN` bytes (ways
/// of a `KEY_LEN`-byte key and a 16-byte value, a way with a zero time
/// being empty), apart from `lb::datapath::maps::Maps` and its types; with
/// the set each flow was found in. Checks the map's key and value sizes
/// first.
pub(crate) fn raw_set_entries<const KEY_LEN: usize, const SET_LEN: usize>(
    case: &Case,
    table: &str,
) -> Vec<(u32, RawFlow)> {
    let name = &case.name;
    let map = case.map_by_name(table, 4, SET_LEN);
    let raw = Array::<MapData, [u8; SET_LEN]>::try_from(map)
        .unwrap_or_else(|e| panic!("{name}: {table} as raw sets: {e}"));
    let way_len = KEY_LEN + FLOW_VALUE_LEN;
    let mut flows = vec![];
    for (index, set) in raw.iter().enumerate() {
        let set = set.unwrap_or_else(|e| panic!("{name}: reading set {index} of {table}: {e}"));
        for way in 0..FLOW_SET_WAYS {
            let entry = &set[way * way_len..(way + 1) * way_len];
            let (key, value) = entry.split_at(KEY_LEN);
            if value[..8] != [0; 8] {
                let flow = RawFlow {
                    key: key.to_vec(),
                    value: value.to_vec(),
                };
                flows.push((index as u32, flow));
            }
        }
    }
    flows
}

/// The set of the flow key of bytes `key` (16 or 40) in a table of `sets`
/// sets, by `lb_common::flow_set_index` of its 64-bit words.
fn set_of_key_bytes(key: &[u8], sets: u32) -> u32 {
    let words: Vec<u64> = key
        .chunks(8)
        .map(|word| u64::from_ne_bytes(word.try_into().expect("8 bytes")))
        .collect();
    match words.len() {
        2 => flow_set_index(&<[u64; 2]>::try_from(words).expect("2 words"), sets),
        _ => flow_set_index(&<[u64; 5]>::try_from(words).expect("5 words"), sets),
    }
}

/// The value bytes of a flow seen at `last_seen_ns`, bound to `slot` of
/// service `id` in `state` without flags (it carried no data): the time and
/// the four 16-bit fields in host byte order.
fn flow_bytes(last_seen_ns: u64, id: u16, slot: u16, state: u16) -> Vec<u8> {
    let mut value = last_seen_ns.to_ne_bytes().to_vec();
    for field in [id, slot, state, 0] {
        value.extend(field.to_ne_bytes());
    }
    value
}

/// A new flow is recorded in the table of its address family only (a SYN
/// in the pending table, a UDP flow in the connection table), under the
/// 16-byte (IPv4) or 40-byte (IPv6) key the frame's addresses, ports and
/// protocol give, with a 16-byte value naming its service, backend slot,
/// state and flags (none: these packets carry no data). A first flow from another
/// client port takes slot 0, so the measured flow is on slot 1. The flow is
/// also found through `Maps::flow` and walked by `Maps::flows` as the key
/// of its family.
fn flow_lands_in_its_family_table(name: &str, vip: IpAddr, pkt: impl Fn(u16) -> Pkt) {
    let Some(mut case) = Case::new(name) else {
        return;
    };
    let first = pkt(40000);
    let proto = first.proto();
    let state = if proto == PROTO_TCP {
        STATE_SYN_RECV
    } else {
        STATE_UDP
    };
    case.service(SERVICE_ID, vip, proto, &[up(100), up(100), up(100)]);
    case.forward("first flow", &first, SERVICE_ID, 0);
    let measured = pkt(40001);
    let frame = measured.build();
    case.forward("measured flow", &measured, SERVICE_ID, 1);
    let last_seen = case.expect_flow("measured flow", &measured, SERVICE_ID, 1, state);

    let expected_key = key_bytes_of_frame(&frame);
    let own_table = match (proto == PROTO_TCP, vip) {
        (true, IpAddr::V4(_)) => PENDING4_MAP,
        (true, IpAddr::V6(_)) => PENDING6_MAP,
        (false, IpAddr::V4(_)) => CONFIRMED4_MAP,
        (false, IpAddr::V6(_)) => CONFIRMED6_MAP,
    };
    let expected_value = flow_bytes(last_seen, SERVICE_ID as u16, 1, state as u16);
    let capacity = case.dp.maps.flow_capacity().expect("reading the capacity");
    let flows = match (proto == PROTO_TCP, vip) {
        (true, IpAddr::V4(_)) => capacity.pending_ipv4,
        (true, IpAddr::V6(_)) => capacity.pending_ipv6,
        (false, IpAddr::V4(_)) => confirmed_set_capacity(capacity.ipv4),
        (false, IpAddr::V6(_)) => confirmed_set_capacity(capacity.ipv6),
    };
    let sets = flows / FLOW_SET_WAYS as u32;
    let entries = match vip {
        IpAddr::V4(_) => raw_set_entries::<FLOW_KEY4_LEN, 64>(&case, own_table),
        IpAddr::V6(_) => raw_set_entries::<FLOW_KEY6_LEN, 128>(&case, own_table),
    };
    for (set, flow) in &entries {
        assert_eq!(
            *set,
            set_of_key_bytes(&flow.key, sets),
            "{name}: the set of {}",
            hex(&flow.key)
        );
    }
    let raw: Vec<RawFlow> = entries.into_iter().map(|(_, flow)| flow).collect();
    assert_eq!(raw.len(), 2, "{name}: entries in {own_table}");
    let entry = raw
        .iter()
        .find(|entry| entry.key == expected_key)
        .unwrap_or_else(|| {
            let keys: Vec<String> = raw.iter().map(|entry| hex(&entry.key)).collect();
            panic!(
                "{name}: no {own_table} key equals the frame's\nexpected:\n{}found:\n{}",
                hex(&expected_key),
                keys.join("")
            )
        });
    assert_eq!(
        entry.value,
        expected_value,
        "{name}: {own_table} value bytes\nexpected:\n{}actual:\n{}",
        hex(&expected_value),
        hex(&entry.value)
    );
    let expected_counts = match vip {
        IpAddr::V4(_) => (2, 0),
        IpAddr::V6(_) => (0, 2),
    };
    assert_eq!(
        case.flows_per_table(),
        expected_counts,
        "{name}: flows in the (IPv4, IPv6) tables"
    );
    let mut walked: Vec<FlowKey> = case.dp.maps.flows().map(|(key, _)| key).collect();
    walked.sort_by_key(FlowKey::client_port);
    assert_eq!(
        walked,
        [first.flow_key(), measured.flow_key()],
        "{name}: Maps::flows"
    );
}

/// A TCP SYN over IPv4 goes to PENDING4.
#[test]
fn ipv4_tcp_flow_is_in_pending4() {
    flow_lands_in_its_family_table("pending4_tcp", VIP4.into(), |sport| {
        Pkt::tcp4(sport, TCP_SYN)
    });
}

/// A UDP flow over IPv4 goes to CONFIRMED4.
#[test]
fn ipv4_udp_flow_is_in_confirmed4() {
    flow_lands_in_its_family_table("confirmed4_udp", VIP4.into(), Pkt::udp4);
}

/// A TCP SYN over IPv6 goes to PENDING6.
#[test]
fn ipv6_tcp_flow_is_in_pending6() {
    flow_lands_in_its_family_table("pending6_tcp", VIP6.into(), |sport| {
        Pkt::tcp6(sport, TCP_SYN)
    });
}

/// A UDP flow over IPv6 goes to CONFIRMED6.
#[test]
fn ipv6_udp_flow_is_in_confirmed6() {
    flow_lands_in_its_family_table("confirmed6_udp", VIP6.into(), Pkt::udp6);
}

/// The two tables are independent: IPv4 and IPv6 flows of the same client
/// port to services on the same port each get their own entry, deleting one
/// (`Maps::remove_flow`) leaves the other, and a flow the control plane
/// writes (`Maps::insert_flow`) lands in its family's table and is
/// forwarded as recorded.
#[test]
fn ipv4_and_ipv6_flows_are_kept_apart() {
    let name = "tables_apart";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service(SERVICE_ID, VIP4.into(), PROTO_TCP, &[up(1)]);
    case.service(DECOY_ID, VIP6.into(), PROTO_TCP, &[up(1), up(1)]);
    let syn4 = Pkt::tcp4(40000, TCP_SYN);
    let syn6 = Pkt::tcp6(40000, TCP_SYN);
    case.forward("IPv4 SYN", &syn4, SERVICE_ID, 0);
    case.forward("IPv6 SYN", &syn6, DECOY_ID, 0);
    assert_eq!(case.flows_per_table(), (1, 1), "{name}: flows per table");
    assert_eq!(case.flow_count(), 2, "{name}: Maps::flow_count");
    assert!(
        case.dp.maps.remove_flow(&syn6.flow_key()),
        "{name}: removing the IPv6 flow"
    );
    assert_eq!(case.flows_per_table(), (1, 0), "{name}: after the removal");
    assert!(
        !case.dp.maps.remove_flow(&syn6.flow_key()),
        "{name}: removing the IPv6 flow twice"
    );
    case.expect_flow("after the removal", &syn4, SERVICE_ID, 0, STATE_SYN_RECV);
    // The IPv6 flow is new again: scheduled afresh, on the idle slot 1.
    let ack6 = Pkt::tcp6(40000, TCP_ACK);
    case.forward("IPv6 ACK", &ack6, DECOY_ID, 1);
    case.expect_flow("IPv6 ACK", &ack6, DECOY_ID, 1, STATE_ESTABLISHED);
    // A flow written by the control plane is forwarded as recorded.
    let planted = Pkt::tcp6(40001, TCP_ACK);
    let flow = Flow {
        last_seen_ns: monotonic_ns(),
        service_id: DECOY_ID as u16,
        backend_slot: 1,
        state: STATE_ESTABLISHED as u16,
        flags: 0,
    };
    case.dp
        .maps
        .insert_flow(&planted.flow_key(), &flow)
        .unwrap_or_else(|e| panic!("{name}: insert_flow: {e:#}"));
    assert_eq!(case.flows_per_table(), (1, 2), "{name}: after insert_flow");
    case.forward("planted flow", &planted, DECOY_ID, 1);
    assert_eq!(
        case.service_stats(DECOY_ID).new_conns,
        2,
        "{name}: the planted flow is not a new connection"
    );
}

/// A flow whose set of the connection table is full goes to the overflow
/// hash (CONNTRACK4, under its frame's key and value bytes), keeps its
/// backend there, and is walked, counted and removed with the others; the
/// control plane rewrites it there even once its set has a free way
/// (`Maps::insert_flow`, as sync does), and its packets follow the rewrite
/// once the flow cache's period has passed; a way its set frees takes the
/// next flow of that set.
#[test]
fn a_flow_whose_set_is_full_goes_to_the_overflow_hash() {
    let name = "set_overflow";
    let Some(mut case) = Case::new(name) else {
        return;
    };
    case.service(SERVICE_ID, VIP4.into(), PROTO_UDP, &[up(1), up(1), up(1)]);
    let capacity = case.dp.maps.flow_capacity().expect("reading the capacity");
    let sets = confirmed_set_capacity(capacity.ipv4) / FLOW_SET_WAYS as u32;
    let set_of = |sport: u16| match Pkt::udp4(sport).flow_key() {
        FlowKey::V4(key) => flow_set_index(&key.words(), sets),
        FlowKey::V6(_) => unreachable!("an IPv4 frame"),
    };
    // Four client ports whose flows share one set.
    let ports: Vec<u16> = (40001..u16::MAX)
        .filter(|&port| set_of(port) == set_of(40000))
        .take(3)
        .collect();
    let [second, third, fourth] = ports[..] else {
        panic!("{name}: fewer than four ports of one set");
    };
    let first = 40000;
    for (slot, port) in [first, second, third].into_iter().enumerate() {
        case.forward("new flow", &Pkt::udp4(port), SERVICE_ID, slot as u32);
    }
    let last_seen = case.expect_flow("third flow", &Pkt::udp4(third), SERVICE_ID, 2, STATE_UDP);
    let in_sets = |case: &Case| -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = raw_set_entries::<FLOW_KEY4_LEN, 64>(case, CONFIRMED4_MAP)
            .into_iter()
            .map(|(_, flow)| flow.key)
            .collect();
        keys.sort();
        keys
    };
    let key = |port| key_bytes_of_frame(&Pkt::udp4(port).build());
    let sorted = |mut keys: Vec<Vec<u8>>| {
        keys.sort();
        keys
    };
    assert_eq!(
        in_sets(&case),
        sorted(vec![key(first), key(second)]),
        "{name}: the set holds the first two flows"
    );
    let overflow = raw_entries::<FLOW_KEY4_LEN>(&case, CONNTRACK4_MAP);
    assert_eq!(overflow.len(), 1, "{name}: entries in {CONNTRACK4_MAP}");
    assert_eq!(
        overflow[0].key,
        key(third),
        "{name}: the overflowing flow's key"
    );
    assert_eq!(
        overflow[0].value,
        flow_bytes(last_seen, SERVICE_ID as u16, 2, STATE_UDP as u16),
        "{name}: the overflowing flow's value"
    );
    case.forward("overflowing flow again", &Pkt::udp4(third), SERVICE_ID, 2);
    assert_eq!(case.flows_per_table(), (3, 0), "{name}: flows per table");
    assert_eq!(case.dp.maps.flows().count(), 3, "{name}: Maps::flows");

    // A way of the set frees up; the control plane rewrites the
    // overflowing flow where it is (as sync does), not into that way.
    assert!(
        case.dp.maps.remove_flow(&Pkt::udp4(first).flow_key()),
        "{name}: removing the first flow"
    );
    let rebound = Flow {
        last_seen_ns: monotonic_ns(),
        service_id: SERVICE_ID as u16,
        backend_slot: 1,
        state: STATE_UDP as u16,
        flags: 0,
    };
    case.dp
        .maps
        .insert_flow(&Pkt::udp4(third).flow_key(), &rebound)
        .unwrap_or_else(|e| panic!("{name}: insert_flow: {e:#}"));
    assert_eq!(
        in_sets(&case),
        vec![key(second)],
        "{name}: the set after the rewrite"
    );
    let overflow = raw_entries::<FLOW_KEY4_LEN>(&case, CONNTRACK4_MAP);
    assert_eq!(
        (overflow.len(), overflow[0].key.clone()),
        (1, key(third)),
        "{name}: {CONNTRACK4_MAP} after the rewrite"
    );
    // (Read from the table: this CPU's flow cache still holds the copy it
    // took this period, until the period ends.)
    assert_eq!(
        case.flow(&Pkt::udp4(third)),
        Some(rebound),
        "{name}: the rewritten flow"
    );
    // Once the period has passed, every CPU's cached copy is stale: the
    // packet goes to the table and follows the rewrite.
    wait_for_period_after(name, current_period());
    case.forward(
        "rewritten flow, next period",
        &Pkt::udp4(third),
        SERVICE_ID,
        1,
    );
    assert!(
        case.dp.maps.remove_flow(&Pkt::udp4(third).flow_key()),
        "{name}: removing the overflowing flow"
    );
    assert!(
        raw_entries::<FLOW_KEY4_LEN>(&case, CONNTRACK4_MAP).is_empty(),
        "{name}: {CONNTRACK4_MAP} after the removal"
    );
    // The freed way takes the next flow of the set (every slot still
    // counts one flow until a sweep, so the pick is the first slot).
    case.forward("fourth flow", &Pkt::udp4(fourth), SERVICE_ID, 0);
    assert_eq!(
        in_sets(&case),
        sorted(vec![key(second), key(fourth)]),
        "{name}: the freed way holds the fourth flow"
    );
    assert!(
        raw_entries::<FLOW_KEY4_LEN>(&case, CONNTRACK4_MAP).is_empty(),
        "{name}: {CONNTRACK4_MAP} after the fourth flow"
    );
    case.forward("second flow again", &Pkt::udp4(second), SERVICE_ID, 1);
}
