//! The per-CPU flow caches: their size, their entries and the set logic
//! that decides which way of a set a flow takes.

use crate::flow::{FlowKey4, FlowKey6};

/// Ways of each flow-cache set: the flows that share a hash and can be
/// cached side by side.
pub const FLOW_CACHE_WAYS: usize = 4;
/// Sets of each flow cache ([`FLOW_CACHE4_MAP`], [`FLOW_CACHE6_MAP`]) per CPU.
///
/// [`FLOW_CACHE4_MAP`]: crate::limits::FLOW_CACHE4_MAP
/// [`FLOW_CACHE6_MAP`]: crate::limits::FLOW_CACHE6_MAP
pub const FLOW_CACHE_SETS: u32 = 1 << 12;
/// Flows each flow cache holds at most per CPU.
pub const FLOW_CACHE_ENTRIES: u32 = FLOW_CACHE_SETS * FLOW_CACHE_WAYS as u32;

/// An entry of the per-CPU IPv4 flow cache: a copy of a connection-table
/// entry, taken at `stamp`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedFlow4 {
    /// The flow (all zero: an empty entry).
    pub key: FlowKey4,
    /// Service of the flow.
    pub service_id: u16,
    /// Backend slot of the flow.
    pub backend_slot: u16,
    /// The flow's state when it was cached.
    pub state: u16,
    /// The flow's `Flow::flags` when it was cached.
    pub flags: u16,
    /// Cache period (`jiffies >> FLOW_CACHE_PERIOD_SHIFT`) in which the
    /// connection table was last read and refreshed for this flow.
    pub stamp: u64,
}

/// An entry of the per-CPU IPv6 flow cache, as [`CachedFlow4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedFlow6 {
    /// The flow (all zero: an empty entry).
    pub key: FlowKey6,
    /// Service of the flow.
    pub service_id: u16,
    /// Backend slot of the flow.
    pub backend_slot: u16,
    /// The flow's state when it was cached.
    pub state: u16,
    /// The flow's `Flow::flags` when it was cached.
    pub flags: u16,
    /// As [`CachedFlow4::stamp`].
    pub stamp: u64,
}

/// A flow-cache entry of either family, as the set logic sees it.
pub trait CachedFlow<const N: usize> {
    /// Whether the entry holds the flow whose key has the words `words`
    /// (`FlowKey4::words`, `FlowKey6::words`).
    fn holds(&self, words: &[u64; N]) -> bool;
    /// The entry's [`CachedFlow4::stamp`].
    fn stamp(&self) -> u64;
}

/// Whether two keys, given as their 64-bit words, are equal (one test of
/// the OR of the XORs rather than a branch per word).
#[inline(always)]
pub(crate) fn same_words<const N: usize>(a: &[u64; N], b: &[u64; N]) -> bool {
    a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Implements [`CachedFlow`] for the entry type of one address family,
/// whose key has `N` words (the two families differ only in types).
macro_rules! cached_flow {
    ($entry:ty, $words:literal) => {
        impl CachedFlow<$words> for $entry {
            #[inline(always)]
            fn holds(&self, words: &[u64; $words]) -> bool {
                same_words(&self.key.words(), words)
            }
            #[inline(always)]
            fn stamp(&self) -> u64 {
                self.stamp
            }
        }
    };
}

cached_flow!(CachedFlow4, 2);
cached_flow!(CachedFlow6, 5);

/// A value of a flow cache: the [`FLOW_CACHE_WAYS`] entries of one set, for
/// flows whose keys hash to it. Sets are 64-byte aligned (128 bytes for
/// IPv4; 256 for IPv6, the last 32 unused) and the caches are mmapable
/// arrays, whose values start on a page: a set never shares a cache line
/// with another, and an IPv4 hit in one of the first two ways reads one
/// line (a per-CPU array would place each set at any 8-byte boundary).
///
/// Within a cache period an entry keeps its flow: a flow is cached into the
/// way that already holds it, or else into a way holding no flow of the
/// current period; when every way holds another flow of this period, the
/// flow is not cached and its packets take the table path until the period
/// ends. So flows that outnumber a set's ways cost one table lookup each
/// per packet, instead of evicting each other on every packet (a
/// round-robin over five flows in four ways would never hit).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCacheSet<E> {
    /// The entries; all-zero ways are empty.
    pub ways: [E; FLOW_CACHE_WAYS],
}

/// Value of [`FLOW_CACHE4_MAP`].
///
/// [`FLOW_CACHE4_MAP`]: crate::limits::FLOW_CACHE4_MAP
pub type CachedFlowSet4 = FlowCacheSet<CachedFlow4>;
/// Value of [`FLOW_CACHE6_MAP`].
///
/// [`FLOW_CACHE6_MAP`]: crate::limits::FLOW_CACHE6_MAP
pub type CachedFlowSet6 = FlowCacheSet<CachedFlow6>;

impl<E> FlowCacheSet<E> {
    /// The way holding flow `words` cached in `period`, if any.
    #[inline(always)]
    pub fn hit<const N: usize>(&self, words: &[u64; N], period: u64) -> Option<usize>
    where
        E: CachedFlow<N>,
    {
        self.ways
            .iter()
            .position(|entry| entry.stamp() == period && entry.holds(words))
    }

    /// The way to cache flow `words` in during `period`: the one that holds
    /// it already, else the first one holding no flow of `period`; `None`
    /// when every way holds another flow of `period` (see the type's doc).
    #[inline(always)]
    pub fn way_for<const N: usize>(&self, words: &[u64; N], period: u64) -> Option<usize>
    where
        E: CachedFlow<N>,
    {
        let ways = &self.ways;
        ways.iter()
            .position(|entry| entry.holds(words))
            .or_else(|| ways.iter().position(|entry| entry.stamp() != period))
    }
}

/// The flow-cache set (per-CPU array index) of a flow key, given as its
/// 64-bit words (`FlowKey4::words`, `FlowKey6::words`): the top bits of a
/// multiplicative hash.
#[inline(always)]
pub fn flow_cache_set<const N: usize>(words: &[u64; N]) -> u32 {
    (folded_key(words) >> (64 - FLOW_CACHE_SETS.trailing_zeros())) as u32
}

/// A key's 64-bit words folded by a multiply (golden-ratio constant): its
/// high bits are a fast hash of the key (the flow cache's set, the flow
/// filter's position after a mix).
#[inline(always)]
pub fn folded_key<const N: usize>(words: &[u64; N]) -> u64 {
    let mut hash = 0u64;
    for word in words {
        hash = (hash ^ word).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    hash
}

/// The flow-cache map index of set `set` (see [`flow_cache_set`]) for CPU
/// `cpu`: each CPU owns [`FLOW_CACHE_SETS`] consecutive sets, so the map has
/// `FLOW_CACHE_SETS` times the possible CPUs entries (set by the loader) and
/// a CPU only ever writes its own.
#[inline(always)]
pub const fn flow_cache_index(cpu: u32, set: u32) -> u32 {
    cpu * FLOW_CACHE_SETS + set
}

/// The flow cache's period is `2^FLOW_CACHE_PERIOD_SHIFT` jiffies (64 ms at
/// HZ=1000, 256 ms at HZ=250, 640 ms at HZ=100): a cached flow goes back to
/// its connection table, refreshing its last-seen time there, at least once
/// per period.
pub const FLOW_CACHE_PERIOD_SHIFT: u32 = 6;

const _: () = {
    assert!(size_of::<CachedFlow4>() == 32);
    assert!(size_of::<CachedFlow6>() == 56);
    assert!(size_of::<CachedFlowSet4>() == 128);
    assert!(size_of::<CachedFlowSet6>() == 256);
    assert!(align_of::<CachedFlowSet4>() == 64);
    assert!(FLOW_CACHE_SETS.is_power_of_two());
    assert!(FLOW_CACHE_WAYS.is_power_of_two());
};

#[cfg(feature = "user")]
mod pod {
    use super::{CachedFlow4, CachedFlow6};

    // SAFETY: both are #[repr(C)], hold only integers and byte arrays, and
    // have no implicit padding (the size assertions and layout tests here).
    unsafe impl aya::Pod for CachedFlow4 {}
    unsafe impl aya::Pod for CachedFlow6 {}
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;
    use crate::ip::PROTO_TCP;

    #[test]
    fn flow_cache_set_spreads_keys_over_the_cache() {
        let mut used = [false; FLOW_CACHE_SETS as usize];
        for port in 0..2048u16 {
            let key = FlowKey4::from_parts(0x0764_33c6, 0x0102_00c0, port, 80, PROTO_TCP, 0);
            let set = flow_cache_set(&key.words());
            assert!(set < FLOW_CACHE_SETS);
            used[set as usize] = true;
        }
        // 2048 keys into 4096 sets: a uniform hash leaves ~1,610 distinct.
        let distinct = used.iter().filter(|u| **u).count();
        assert!(distinct > 1500, "{distinct} distinct sets for 2048 keys");
    }

    /// A cached IPv4 flow from client port `port`, stamped `stamp`.
    fn cached4(port: u16, stamp: u64) -> CachedFlow4 {
        CachedFlow4 {
            key: FlowKey4::from_parts(0x0764_33c6, 0x0102_00c0, port, 80, PROTO_TCP, 0),
            stamp,
            ..CachedFlow4::default()
        }
    }

    #[test]
    fn flow_cache_set_keeps_the_flows_of_the_period() {
        let words = |port| cached4(port, 0).key.words();
        let ways = FLOW_CACHE_WAYS as u16;
        // One flow more than the set has ways: client ports 1 to ways + 1.
        let extra = words(ways + 1);
        let mut set = CachedFlowSet4::default();
        // Empty ways (stamp 0) take flows in order.
        for way in 0..FLOW_CACHE_WAYS {
            let flow = words(way as u16 + 1);
            assert_eq!(set.hit(&flow, 7), None);
            assert_eq!(set.way_for(&flow, 7), Some(way));
            set.ways[way] = cached4(way as u16 + 1, 7);
            assert_eq!(set.hit(&flow, 7), Some(way));
        }
        // Every way holds a flow of this period: one flow more is not
        // cached, a cached flow is refreshed in place.
        assert_eq!(set.hit(&extra, 7), None);
        assert_eq!(set.way_for(&extra, 7), None);
        let last = FLOW_CACHE_WAYS - 1;
        assert_eq!(set.way_for(&words(ways), 7), Some(last));
        // A new period: nothing hits, a flow keeps its way, and a way of an
        // earlier period goes to another flow.
        assert_eq!(set.hit(&words(1), 8), None);
        assert_eq!(set.way_for(&words(ways), 8), Some(last));
        assert_eq!(set.way_for(&extra, 8), Some(0));
        set.ways[0] = cached4(ways + 1, 8);
        assert_eq!(set.way_for(&words(1), 8), Some(1));
        // A stale copy in the last way is reused, not duplicated.
        assert_eq!(set.way_for(&words(ways), 8), Some(last));
    }

    #[test]
    fn flow_cache_layout() {
        assert_eq!(offset_of!(CachedFlow4, key), 0);
        assert_eq!(offset_of!(CachedFlow4, service_id), 16);
        assert_eq!(offset_of!(CachedFlow4, backend_slot), 18);
        assert_eq!(offset_of!(CachedFlow4, state), 20);
        assert_eq!(offset_of!(CachedFlow4, stamp), 24);
        assert_eq!(offset_of!(CachedFlow6, key), 0);
        assert_eq!(offset_of!(CachedFlow6, service_id), 40);
        assert_eq!(offset_of!(CachedFlow6, stamp), 48);
    }
}
