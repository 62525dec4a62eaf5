//! The flow filter (`lb_common::flow_filter`): [`may_hold`] tells a SYN
//! whether its flow's tables need a look; [`mark`] records that a flow
//! entered one.

use lb_common::FlowFilterState;

use crate::{
    conntrack::TableKey,
    maps::{FLOW_FILTER, FLOW_FILTER_STATE},
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

/// Whether the flow tables may hold flow `key`: false only when the filter
/// is ready and the key's mark in the current generation is clear.
#[inline(always)]
pub fn may_hold<K: TableKey>(key: &K) -> bool {
    let Some(state) = state() else {
        return true;
    };
    if !state.ready() {
        return true;
    }
    let (line, byte) = key.filter_position(&state, state.current());
    FLOW_FILTER
        .get(line)
        .is_none_or(|marks| marks[byte % marks.len()] != 0)
}

/// Marks flow `key`, which just entered a flow table, in the current
/// generation, and in the next one while a rebuild runs. Call it after a
/// locked instruction that follows the insert (an atomic counter update, a
/// table delete): the state must be read after the flow is visible in its
/// table, so that a flow marked in the current generation only was in its
/// table before the rebuild's walk began.
#[inline(always)]
pub fn mark<K: TableKey>(key: &K) {
    let Some(state) = state() else {
        return;
    };
    set(key, &state, state.current());
    if state.rebuilding() {
        set(key, &state, state.next());
    }
}

/// Sets the mark of `key` in generation `generation`.
#[inline(always)]
fn set<K: TableKey>(key: &K, state: &FlowFilterState, generation: u32) {
    let (line, byte) = key.filter_position(state, generation);
    if let Some(marks) = FLOW_FILTER.get_ptr_mut(line) {
        // SAFETY: a valid array value; a one-byte store races with no
        // other write but another 1.
        unsafe { (*marks)[byte % (*marks).len()] = 1 };
    }
}
