//! Per-CPU counters: a forwarded frame is counted once, for its backend; any
//! other frame under its verdict reason. Per-CPU values need no atomics; the
//! control plane sums the CPUs, and adds a service's backends up into the
//! service's totals and all services into the `forwarded` verdict (two
//! counter updates fewer per forwarded frame).

use lb_common::{Counters, backend_index};

use crate::{
    conntrack::Binding,
    maps::{BACKEND_STATS, FLOW_EVENTS, VERDICT_STATS},
};

#[inline(always)]
fn add(counters: Option<*mut Counters>, bytes: u64, new_flow: bool) {
    if let Some(c) = counters {
        // SAFETY: a per-CPU slot: only this CPU writes it while this program runs.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
            if new_flow {
                (*c).new_conns += 1;
            }
        }
    }
}

/// Counts one frame of `l3_len` bytes under its verdict `reason`.
#[inline(always)]
pub fn count_verdict(reason: u32, l3_len: u64) {
    add(VERDICT_STATS.get_ptr_mut(reason), l3_len, false);
}

/// Counts one forwarded frame for its backend.
#[inline(always)]
pub fn count_forwarded(service_id: u32, binding: Binding, l3_len: u64) {
    add(
        BACKEND_STATS.get_ptr_mut(backend_index(service_id, binding.slot)),
        l3_len,
        binding.new_flow,
    );
}

/// Counts one flow-table event at `index` (`lb_common::flow_event_index`).
#[inline(always)]
pub fn count_flow_event(index: u32) {
    if let Some(count) = FLOW_EVENTS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot: only this CPU writes it while this program runs.
        unsafe { *count += 1 }
    }
}
