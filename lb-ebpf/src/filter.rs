//! The flow filter (`lb_common::flow_filter`): [`may_hold`] tells a SYN
//! which of its flow's tables need a look; [`mark`] records that a flow
//! entered one.

use lb_common::{FilterKind, FlowFilterState};

use crate::{
    conntrack::TableKey,
    maps::{FLOW_FILTER, FLOW_FILTER_STATE, SetTable},
};

/// The filter's state, read in one 8-byte load (the control plane writes
/// it whole).
#[inline(always)]
fn state() -> Option<FlowFilterState> {
    let state = FLOW_FILTER_STATE.get_ptr(0)?;
    // SAFETY: a valid, 8-byte aligned array value of 8 bytes.
    let raw = unsafe { core::ptr::read_volatile(state.cast::<u64>()) };
    Some(FlowFilterState {
        phase: raw as u32,
        lines: (raw >> 32) as u32,
    })
}

/// Which of its tables may hold flow `key`.
#[derive(Clone, Copy)]
pub struct MayHold {
    /// The connection table may hold it.
    pub confirmed: bool,
    /// The pending table may hold it.
    pub pending: bool,
}

impl MayHold {
    /// Either table may hold it (no filter to go by).
    pub const BOTH: Self = Self {
        confirmed: true,
        pending: true,
    };
}

/// Which tables may hold flow `key`: a table may not only when the filter
/// is ready and the key's mark of that table in the current generation is
/// clear. Both marks are in one line, read once. `recording`: the SYN will
/// most likely be recorded (no flood mode), so its pending set will be
/// written whatever the marks say; that set's line is then read first,
/// and the two cache misses of a new flow in large tables (the filter's
/// line, the set's) overlap instead of following each other.
#[inline(always)]
pub fn may_hold<K: TableKey>(key: &K, recording: bool) -> MayHold {
    let Some(state) = state() else {
        return MayHold::BOTH;
    };
    if !state.ready() {
        return MayHold::BOTH;
    }
    let position = key.filter_position(&state, state.current());
    if recording {
        // No set: a loader sized the pending table to none.
        let Some(set) = key.set(SetTable::Pending) else {
            return MayHold::BOTH;
        };
        // SAFETY: a valid array value; the load's result is not needed.
        unsafe { core::ptr::read_volatile(&raw const set.ways[0].flow.last_seen_ns) };
    }
    let Some(marks) = FLOW_FILTER.get(position.line) else {
        return MayHold::BOTH;
    };
    MayHold {
        confirmed: marks[position.confirmed % marks.len()] != 0,
        pending: marks[position.pending % marks.len()] != 0,
    }
}

/// Marks flow `key`, which just entered the table of `kind`, in the current
/// generation, and in the next one while a rebuild runs. Call it after a
/// locked instruction that follows the insert (an atomic counter update, a
/// pending flow's removal): the state must be read after the flow is
/// visible in its table, so that a flow marked in the current generation
/// only was in its table before the rebuild's walk began.
#[inline(always)]
pub fn mark<K: TableKey>(key: &K, kind: FilterKind) {
    let Some(state) = state() else {
        return;
    };
    set(key, &state, state.current(), kind);
    if state.rebuilding() {
        set(key, &state, state.next(), kind);
    }
}

/// Sets the mark of kind `kind` of `key` in generation `generation`.
#[inline(always)]
fn set<K: TableKey>(key: &K, state: &FlowFilterState, generation: u32, kind: FilterKind) {
    let position = key.filter_position(state, generation);
    if let Some(marks) = FLOW_FILTER.get_ptr_mut(position.line) {
        // SAFETY: a valid array value; a one-byte store races with no
        // other write but another 1.
        unsafe { (*marks)[position.byte(kind) % (*marks).len()] = 1 };
    }
}
