//! Flow tables per address family: a flow lands in the IPv4 tables
//! (CONNTRACK4, PENDING4) or the IPv6 ones (CONNTRACK6, PENDING6) under the
//! key and value bytes its frame gives (in the pending tables, as a way of
//! the set its key hashes to), and the families are independent.

use std::net::IpAddr;

use aya::maps::{Array, HashMap, MapData};
use lb::datapath::maps::monotonic_ns;
use lb_common::{
    CONNTRACK4_MAP, CONNTRACK6_MAP, FLOW_SET_WAYS, Flow, FlowKey, PENDING4_MAP, PENDING6_MAP,
    PROTO_TCP,
    conn_state::{STATE_ESTABLISHED, STATE_SYN_RECV, STATE_UDP, TCP_ACK, TCP_SYN},
    flow_set_index,
};
use lb_tests::{
    VIP4, VIP6,
    frame::{Pkt, hex},
    xdp_case::{Case, DECOY_ID, SERVICE_ID, up},
};

use crate::raw_keys::{FLOW_KEY4_LEN, FLOW_KEY6_LEN, key_bytes_of_frame};

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

/// Every flow of the pending table `table` as the kernel stores it, read
/// through a handle opened by map id as raw sets of `SET_LEN` bytes (ways
/// of a `KEY_LEN`-byte key and a 16-byte value, a way with a zero time
/// being empty), apart from `lb::datapath::maps::Maps` and its types; with
/// the set each flow was found in. Checks the map's key and value sizes
/// first.
pub(crate) fn raw_pending_entries<const KEY_LEN: usize, const SET_LEN: usize>(
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
        (false, IpAddr::V4(_)) => CONNTRACK4_MAP,
        (false, IpAddr::V6(_)) => CONNTRACK6_MAP,
    };
    let expected_value = flow_bytes(last_seen, SERVICE_ID as u16, 1, state as u16);
    let raw = match (proto == PROTO_TCP, vip) {
        (false, IpAddr::V4(_)) => raw_entries::<FLOW_KEY4_LEN>(&case, own_table),
        (false, IpAddr::V6(_)) => raw_entries::<FLOW_KEY6_LEN>(&case, own_table),
        (true, _) => {
            let capacity = case.dp.maps.flow_capacity().expect("reading the capacity");
            let flows = match vip {
                IpAddr::V4(_) => capacity.pending_ipv4,
                IpAddr::V6(_) => capacity.pending_ipv6,
            };
            let sets = flows / FLOW_SET_WAYS as u32;
            let entries = match vip {
                IpAddr::V4(_) => raw_pending_entries::<FLOW_KEY4_LEN, 64>(&case, own_table),
                IpAddr::V6(_) => raw_pending_entries::<FLOW_KEY6_LEN, 128>(&case, own_table),
            };
            for (set, flow) in &entries {
                let words: Vec<u64> = flow
                    .key
                    .chunks(8)
                    .map(|word| u64::from_ne_bytes(word.try_into().expect("8 bytes")))
                    .collect();
                let expected = match words.len() {
                    2 => flow_set_index(&<[u64; 2]>::try_from(words).expect("2 words"), sets),
                    _ => flow_set_index(&<[u64; 5]>::try_from(words).expect("5 words"), sets),
                };
                assert_eq!(*set, expected, "{name}: the set of {}", hex(&flow.key));
            }
            entries.into_iter().map(|(_, flow)| flow).collect()
        }
    };
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

/// A UDP flow over IPv4 goes to CONNTRACK4.
#[test]
fn ipv4_udp_flow_is_in_conntrack4() {
    flow_lands_in_its_family_table("conntrack4_udp", VIP4.into(), Pkt::udp4);
}

/// A TCP SYN over IPv6 goes to PENDING6.
#[test]
fn ipv6_tcp_flow_is_in_pending6() {
    flow_lands_in_its_family_table("pending6_tcp", VIP6.into(), |sport| {
        Pkt::tcp6(sport, TCP_SYN)
    });
}

/// A UDP flow over IPv6 goes to CONNTRACK6.
#[test]
fn ipv6_udp_flow_is_in_conntrack6() {
    flow_lands_in_its_family_table("conntrack6_udp", VIP6.into(), Pkt::udp6);
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
