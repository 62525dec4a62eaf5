//! The flow filter: a table of one-byte marks, indexed by a hash of a flow
//! key, that says which keys the flow tables may hold. A SYN whose mark is
//! clear is a new flow without looking in either table (two hash misses,
//! the most of a SYN's cost when a flood is forwarded without records).
//!
//! A mark is set for a key whenever a flow enters a table under it (by the
//! data path, and by the control plane for a flow connection sync
//! installs); flows that leave a table leave their mark, so a mark may be
//! set for a key no table holds (a lookup for nothing), never clear for one
//! a table holds. The sweeper clears the stale marks by rebuilding the
//! filter from its walk of the tables, in the second of two generations:
//!
//! 1. it clears the generation SYNs do not read ([`FlowFilterState::next`]),
//! 2. sets [`FILTER_REBUILDING`], from when on every new flow is marked in
//!    both generations,
//! 3. marks every flow its walk finds in the next generation,
//! 4. makes the next generation the current one and clears
//!    [`FILTER_REBUILDING`].
//!
//! A flow that stays in a table through the walk is marked by the walk; one
//! that enters during it, by the data path in both generations. The data
//! path reads [`FlowFilterState`] after its insert, so a flow inserted
//! while it still read "not rebuilding" was in its table before the walk
//! began. Before [`FILTER_READY`] is set (a data path adopted without its
//! filter) every SYN looks in the tables.

use crate::flow_cache::folded_key;

/// Marks per value of [`FLOW_FILTER_MAP`]: one cache line.
///
/// [`FLOW_FILTER_MAP`]: crate::limits::FLOW_FILTER_MAP
pub const FILTER_LINE_MARKS: u32 = 64;

/// A value of [`FLOW_FILTER_MAP`]: [`FILTER_LINE_MARKS`] marks, each 0
/// (no flow under a key of this position) or 1 (maybe one). One byte per
/// mark: a store sets it, where a bit would need an atomic OR.
///
/// [`FLOW_FILTER_MAP`]: crate::limits::FLOW_FILTER_MAP
pub type FlowFilterLine = [u8; FILTER_LINE_MARKS as usize];

/// [`FlowFilterState::phase`]: the current generation is the second one.
pub const FILTER_SECOND: u32 = 1;
/// [`FlowFilterState::phase`]: a rebuild is under way; new flows are marked
/// in both generations.
pub const FILTER_REBUILDING: u32 = 2;
/// [`FlowFilterState::phase`]: the current generation marks every flow of
/// the tables; until set, SYNs look in the tables whatever their mark.
pub const FILTER_READY: u32 = 4;

/// The value of [`FLOW_FILTER_STATE_MAP`]: where the marks are and which
/// generation SYNs read. Written whole by the control plane (8 bytes: the
/// data path reads it in one load).
///
/// [`FLOW_FILTER_STATE_MAP`]: crate::limits::FLOW_FILTER_STATE_MAP
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowFilterState {
    /// `FILTER_*` bits.
    pub phase: u32,
    /// Lines of each generation (a power of two); the map holds twice as
    /// many, the first generation's then the second's.
    pub lines: u32,
}

impl FlowFilterState {
    /// Whether SYNs may trust the marks.
    #[inline(always)]
    pub const fn ready(&self) -> bool {
        self.phase & FILTER_READY != 0
    }

    /// The generation SYNs read (0 or 1).
    #[inline(always)]
    pub const fn current(&self) -> u32 {
        self.phase & FILTER_SECOND
    }

    /// The generation a rebuild fills.
    #[inline(always)]
    pub const fn next(&self) -> u32 {
        self.current() ^ 1
    }

    /// Whether a rebuild is under way.
    #[inline(always)]
    pub const fn rebuilding(&self) -> bool {
        self.phase & FILTER_REBUILDING != 0
    }

    /// The line (map index) and byte of the mark of the key with the
    /// 64-bit words `words` in generation `generation`.
    #[inline(always)]
    pub fn position<const N: usize>(&self, words: &[u64; N], generation: u32) -> (u32, usize) {
        let marks = self.lines.wrapping_mul(FILTER_LINE_MARKS);
        let mark = filter_hash(words) & marks.wrapping_sub(1);
        (
            generation * self.lines + mark / FILTER_LINE_MARKS,
            (mark % FILTER_LINE_MARKS) as usize,
        )
    }
}

/// The hash of a key's 64-bit words that places its mark: the words
/// folded by a multiply, then mixed (the fold alone leaves keys that differ
/// in their port only on too few marks).
#[inline(always)]
fn filter_hash<const N: usize>(words: &[u64; N]) -> u32 {
    let mut hash = folded_key(words);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    (hash >> 32) as u32
}

/// Lines per generation of a filter for tables holding `flows` flows in
/// all: one to two marks per flow (a power of two, at least one page's
/// worth). Every full table would set about half the marks; a smaller
/// filter stays in the CPU's caches more, and its read is what a SYN pays
/// instead of two table lookups.
pub const fn flow_filter_lines(flows: u64) -> u32 {
    let lines = flows.div_ceil(FILTER_LINE_MARKS as u64);
    let lines = if lines < 64 { 64 } else { lines };
    let lines = lines.next_power_of_two();
    if lines > 1 << 24 {
        1 << 24
    } else {
        lines as u32
    }
}

const _: () = {
    assert!(size_of::<FlowFilterState>() == 8);
    assert!(FILTER_LINE_MARKS.is_power_of_two());
};

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] of two u32s: no padding, every bit pattern valid.
unsafe impl aya::Pod for FlowFilterState {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_has_one_to_two_marks_per_flow() {
        assert_eq!(flow_filter_lines(0), 64);
        assert_eq!(flow_filter_lines(4096), 64);
        assert_eq!(flow_filter_lines(4097), 128);
        // 1 M + 256 K + their pending tables (256 K + 64 K): 2 M marks.
        let lines = flow_filter_lines(1_638_400);
        assert_eq!(u64::from(lines) * u64::from(FILTER_LINE_MARKS), 2 << 20);
        assert!(flow_filter_lines(u64::MAX).is_power_of_two());
    }

    #[test]
    fn positions_stay_in_their_generation() {
        let state = FlowFilterState {
            phase: FILTER_READY,
            lines: 64,
        };
        let mut used = [false; 64 * 64];
        for port in 0..2048u64 {
            let words = [0x0764_33c6_0102_00c0, port << 16 | 80];
            let (first, byte) = state.position(&words, 0);
            let (second, same_byte) = state.position(&words, 1);
            assert!(first < 64 && byte < 64);
            assert_eq!((second, same_byte), (first + 64, byte));
            used[first as usize * 64 + byte] = true;
        }
        // 2,048 keys over 4,096 marks: a uniform hash sets about 1,611.
        let set = used.iter().filter(|u| **u).count();
        assert!(set > 1450, "{set} marks for 2,048 keys");
    }

    #[test]
    fn the_phase_bits_name_the_generations() {
        let mut state = FlowFilterState::default();
        assert!(!state.ready());
        assert_eq!((state.current(), state.next()), (0, 1));
        state.phase = FILTER_READY | FILTER_SECOND | FILTER_REBUILDING;
        assert!(state.ready() && state.rebuilding());
        assert_eq!((state.current(), state.next()), (1, 0));
    }
}
