//! The flow filter: a table of one-byte marks, indexed by a hash of a flow
//! key, that says which keys the flow tables may hold, in two kinds of
//! marks that share a cache line: a key's confirmed mark (its connection
//! table) and its pending mark (its pending table, `crate::flow_set`). A
//! SYN reads the key's line once: with the confirmed mark clear it skips
//! the connection table (a miss in cold memory: its set, then its
//! overflow hash), with the pending mark clear its pending set (a cold
//! line, which a SYN that records its flow writes anyway; a SYN forwarded
//! in flood mode then touches neither table). Each kind has its own
//! bytes, so that a flood of new flows, which sets pending marks, leaves
//! the confirmed ones as they were.
//!
//! A mark is set for a key whenever a flow enters a table under it (by the
//! data path, and by the control plane for a flow connection sync
//! installs); flows that leave a table leave their mark, so a mark may be
//! set for a key its table does not hold (a lookup for nothing), never
//! clear for one it holds. The sweeper clears the stale marks by
//! rebuilding the filter from its walk of the tables, in the second of two
//! generations:
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

/// Bytes of a value of [`FLOW_FILTER_MAP`]: one cache line.
///
/// [`FLOW_FILTER_MAP`]: crate::limits::FLOW_FILTER_MAP
pub const FILTER_LINE_BYTES: u32 = 64;
/// Confirmed marks per line (its first bytes).
pub const FILTER_CONFIRMED_MARKS: u32 = 48;
/// Pending marks per line (its last bytes): a third as many, as the
/// pending tables hold few flows at once outside a flood (a set pending mark
/// only costs a SYN the read of its pending set, which it writes anyway to
/// record its flow).
pub const FILTER_PENDING_MARKS: u32 = FILTER_LINE_BYTES - FILTER_CONFIRMED_MARKS;

/// A value of [`FLOW_FILTER_MAP`]: [`FILTER_CONFIRMED_MARKS`] confirmed
/// marks, then [`FILTER_PENDING_MARKS`] pending marks, each 0 (no flow under
/// a key of this position) or 1 (maybe one). One byte per mark: a store
/// sets it, where a bit would need an atomic OR.
///
/// [`FLOW_FILTER_MAP`]: crate::limits::FLOW_FILTER_MAP
pub type FlowFilterLine = [u8; FILTER_LINE_BYTES as usize];

/// Which table a mark stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterKind {
    /// The connection table.
    Confirmed,
    /// The pending table.
    Pending,
}

/// Where a key's marks are in one generation: a line and a byte of each
/// kind in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterPosition {
    /// The line (map index).
    pub line: u32,
    /// The confirmed mark's byte (below [`FILTER_CONFIRMED_MARKS`]).
    pub confirmed: usize,
    /// The pending mark's byte (from [`FILTER_CONFIRMED_MARKS`] up).
    pub pending: usize,
}

impl FilterPosition {
    /// The byte of the mark of kind `kind`.
    #[inline(always)]
    pub const fn byte(&self, kind: FilterKind) -> usize {
        match kind {
            FilterKind::Confirmed => self.confirmed,
            FilterKind::Pending => self.pending,
        }
    }
}

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

    /// Where the marks of the key with the 64-bit words `words` are in
    /// generation `generation`.
    #[inline(always)]
    pub fn position<const N: usize>(&self, words: &[u64; N], generation: u32) -> FilterPosition {
        let hash = filter_hash(words);
        let low = hash & 0xFFFF_FFFF;
        FilterPosition {
            line: generation * self.lines + ((hash >> 32) as u32 & self.lines.wrapping_sub(1)),
            // The low half scaled to the marks (a multiply, not a division).
            confirmed: ((low * u64::from(FILTER_CONFIRMED_MARKS)) >> 32) as usize,
            pending: (FILTER_CONFIRMED_MARKS + (low as u32 >> 8) % FILTER_PENDING_MARKS) as usize,
        }
    }
}

/// The hash of a key's 64-bit words that places its marks: the words
/// folded by a multiply, then mixed (the fold alone leaves keys that differ
/// in their port only on too few marks). Its high half picks the line, its
/// low half the bytes.
#[inline(always)]
fn filter_hash<const N: usize>(words: &[u64; N]) -> u64 {
    let mut hash = folded_key(words);
    hash ^= hash >> 33;
    hash.wrapping_mul(0xFF51_AFD7_ED55_8CCD)
}

/// Lines per generation of a filter for connection tables holding `flows`
/// flows in all: one to two confirmed marks per flow (a power of two, at
/// least one page's worth). Every full table would set about half the
/// marks; a smaller filter stays in the CPU's caches more, and its read is
/// what a SYN pays instead of a table lookup. The pending marks are a third
/// as many.
pub const fn flow_filter_lines(flows: u64) -> u32 {
    let lines = flows.div_ceil(FILTER_CONFIRMED_MARKS as u64);
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
    assert!(FILTER_PENDING_MARKS.is_power_of_two());
};

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] of two u32s: no padding, every bit pattern valid.
unsafe impl aya::Pod for FlowFilterState {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_has_one_to_two_confirmed_marks_per_flow() {
        assert_eq!(flow_filter_lines(0), 64);
        assert_eq!(flow_filter_lines(48 * 64), 64);
        assert_eq!(flow_filter_lines(48 * 64 + 1), 128);
        // The default connection tables, 1 M + 256 K flows: 32 K lines,
        // 1.5 M confirmed marks, 2 MiB.
        let lines = flow_filter_lines(1_310_720);
        assert_eq!(lines, 32 << 10);
        assert!(flow_filter_lines(u64::MAX).is_power_of_two());
    }

    #[test]
    fn positions_stay_in_their_generation_and_kind() {
        let state = FlowFilterState {
            phase: FILTER_READY,
            lines: 64,
        };
        let mut confirmed = [false; 64 * 48];
        let mut pending = [false; 64 * 16];
        for port in 0..2048u64 {
            let words = [0x0764_33c6_0102_00c0, port << 16 | 80];
            let first = state.position(&words, 0);
            let second = state.position(&words, 1);
            assert!(first.line < 64);
            assert!(first.confirmed < 48 && (48..64).contains(&first.pending));
            assert_eq!(
                second,
                FilterPosition {
                    line: first.line + 64,
                    ..first
                }
            );
            confirmed[first.line as usize * 48 + first.byte(FilterKind::Confirmed)] = true;
            pending[first.line as usize * 16 + first.byte(FilterKind::Pending) - 48] = true;
        }
        // 2,048 keys over 3,072 marks: a uniform hash sets about 1,494;
        // over 1,024 marks, about 887.
        let set = confirmed.iter().filter(|u| **u).count();
        assert!(set > 1350, "{set} confirmed marks for 2,048 keys");
        let set = pending.iter().filter(|u| **u).count();
        assert!(set > 820, "{set} pending marks for 2,048 keys");
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
