//! Flow sets: flows in sets of [`FLOW_SET_WAYS`], indexed by a hash of the
//! flow key ([`flow_set_index`]), in an mmapable array of one set per cache
//! line (IPv4; two lines for IPv6). The pending tables are such arrays.
//!
//! A SYN's flow is recorded by writing one way of its set: no kernel hash
//! insert, no allocation, one cache line read and written, where an LRU
//! hash paid for its bucket, its element and its lists (about half of a
//! new flow's cost in the kernel's insert). A pending set keeps the flows
//! that hash to it while it has room; a new flow takes the way of its own
//! key, else an empty way, else the way of the flow seen least recently
//! ([`FlowSet::way_for`]): as in an LRU, a flood of new flows evicts
//! pending flows only, and the oldest first within a set.
//!
//! An entry is empty when its [`Flow::last_seen_ns`] is 0 (the coarse clock
//! never reads 0 after boot). The control plane removes a flow by swapping
//! that word from the value it read to 0 (a compare-and-swap through its
//! mapping of the map), so that a flow the data path refreshed or replaced
//! meanwhile stays.

use crate::{
    flow::{Flow, FlowKey4, FlowKey6},
    flow_cache::folded_key,
};

/// Ways of a flow set: two IPv4 entries of 32 bytes fill one cache line.
pub const FLOW_SET_WAYS: usize = 2;

/// One way of a flow set: a flow and its key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSetEntry<K> {
    /// The flow's key.
    pub key: K,
    /// The flow (`last_seen_ns` 0: the way is empty).
    pub flow: Flow,
}

impl<K> FlowSetEntry<K> {
    /// Whether the way holds a flow.
    #[inline(always)]
    pub const fn is_used(&self) -> bool {
        self.flow.last_seen_ns != 0
    }
}

/// A value of [`PENDING4_MAP`]/[`PENDING6_MAP`]: the flows whose keys hash
/// to one set. 64-byte aligned (64 bytes for IPv4, 128 for IPv6, its last
/// 16 unused), in an mmapable array whose values start on a page: a set
/// never shares a cache line with another.
///
/// [`PENDING4_MAP`]: crate::limits::PENDING4_MAP
/// [`PENDING6_MAP`]: crate::limits::PENDING6_MAP
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSet<K> {
    /// The ways.
    pub ways: [FlowSetEntry<K>; FLOW_SET_WAYS],
}

/// Value of [`PENDING4_MAP`](crate::limits::PENDING4_MAP).
pub type FlowSet4 = FlowSet<FlowKey4>;
/// Value of [`PENDING6_MAP`](crate::limits::PENDING6_MAP).
pub type FlowSet6 = FlowSet<FlowKey6>;

const _: () = {
    assert!(size_of::<FlowSet4>() == 64);
    assert!(size_of::<FlowSet6>() == 128);
};

impl<K> FlowSet<K> {
    /// The way holding the flow whose key `holds` recognises, if any.
    #[inline(always)]
    pub fn find(&self, holds: impl Fn(&K) -> bool) -> Option<usize> {
        self.ways
            .iter()
            .position(|entry| entry.is_used() && holds(&entry.key))
    }

    /// The way a new flow of the key `holds` recognises goes to: the way
    /// holding that key already, else an empty way, else the way of the
    /// flow seen least recently.
    #[inline(always)]
    pub fn way_for(&self, holds: impl Fn(&K) -> bool) -> usize {
        if let Some(way) = self.find(holds) {
            return way;
        }
        let [first, second] = &self.ways;
        if !first.is_used()
            || (second.is_used() && first.flow.last_seen_ns <= second.flow.last_seen_ns)
        {
            0
        } else {
            1
        }
    }
}

/// Sets of a flow-set table holding `flows` flows: a power of two (the set
/// index is a mask of the hash), at least one.
pub const fn flow_sets(flows: u32) -> u32 {
    let sets = flows.div_ceil(FLOW_SET_WAYS as u32);
    if sets <= 1 {
        1
    } else {
        sets.next_power_of_two()
    }
}

/// The set of a flow key, given as its 64-bit words (`FlowKey4::words`,
/// `FlowKey6::words`), in a table of `sets` sets (a power of two):
/// the key's words folded by a multiply, then mixed (a fold alone leaves
/// keys that differ in their port only in too few sets).
#[inline(always)]
pub fn flow_set_index<const N: usize>(words: &[u64; N], sets: u32) -> u32 {
    let mut hash = folded_key(words);
    hash ^= hash >> 29;
    hash = hash.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    ((hash >> 32) as u32) & sets.wrapping_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(port: u16, last_seen_ns: u64) -> FlowSetEntry<FlowKey4> {
        FlowSetEntry {
            key: FlowKey4 {
                src_port: port,
                ..FlowKey4::default()
            },
            flow: Flow {
                last_seen_ns,
                ..Flow::default()
            },
        }
    }

    #[test]
    fn a_key_keeps_its_way_then_takes_an_empty_one_then_the_oldest() {
        let port = |p: u16| move |key: &FlowKey4| key.src_port == p;
        let mut set = FlowSet4::default();
        assert_eq!(set.find(port(1)), None);
        assert_eq!(set.way_for(port(1)), 0);
        set.ways[0] = entry(1, 100);
        assert_eq!(set.find(port(1)), Some(0));
        assert_eq!(set.way_for(port(1)), 0, "its own way");
        assert_eq!(set.way_for(port(2)), 1, "the empty way");
        set.ways[1] = entry(2, 50);
        assert_eq!(set.way_for(port(3)), 1, "the least recently seen");
        set.ways[1].flow.last_seen_ns = 200;
        assert_eq!(set.way_for(port(3)), 0);
        set.ways[0].flow.last_seen_ns = 0;
        assert_eq!(set.find(port(1)), None, "an emptied way holds nothing");
        assert_eq!(set.way_for(port(3)), 0);
    }

    #[test]
    fn sets_are_a_power_of_two_holding_the_flows() {
        assert_eq!(flow_sets(0), 1);
        assert_eq!(flow_sets(1024), 512);
        assert_eq!(flow_sets(1000), 512);
        assert_eq!(flow_sets(1025), 1024);
    }

    #[test]
    fn keys_that_differ_in_their_port_spread_over_the_sets() {
        let sets = 1024;
        let mut used = [false; 1024];
        for port in 0..4096u16 {
            let key = FlowKey4 {
                src_addr: [192, 0, 2, 1],
                src_port: port,
                ..FlowKey4::default()
            };
            used[flow_set_index(&key.words(), sets) as usize] = true;
        }
        let used = used.iter().filter(|u| **u).count();
        assert!(used > 1000, "4096 ports used only {used} of 1024 sets");
    }
}
