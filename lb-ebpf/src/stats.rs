//! Per-CPU counters: a forwarded frame is counted once for its backend and
//! once for the NICs it passes; any other frame under its verdict reason. Per-CPU values need no atomics; the
//! control plane sums the CPUs, and adds a service's backends up into the
//! service's totals and all services into the `forwarded` verdict (two
//! counter updates fewer per forwarded frame).

use lb_common::{Counters, backend_index, nic_filter_index};

use crate::{
    conntrack::Binding,
    maps::{BACKEND_STATS, FLOW_EVENTS, NIC_STATS, VERDICT_STATS},
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

/// Counts one forwarded frame of `l3_len` bytes that leaves through the NIC
/// it arrived on, `ifindex`.
#[inline(always)]
pub fn count_nic_tx(ifindex: u32, l3_len: u64) {
    if let Some(c) = NIC_STATS.get_ptr_mut(nic_filter_index(ifindex)) {
        // SAFETY: a per-CPU slot: only this CPU writes it while this program runs.
        unsafe {
            (*c).tx_packets += 1;
            (*c).tx_bytes += l3_len;
        }
    }
}

/// Counts one forwarded frame of `l3_len` bytes that arrived on NIC
/// `ingress` and is redirected to NIC `egress`.
#[inline(always)]
pub fn count_nic_redirect(ingress: u32, egress: u32, l3_len: u64) {
    if let Some(c) = NIC_STATS.get_ptr_mut(nic_filter_index(ingress)) {
        // SAFETY: as above.
        unsafe {
            (*c).redirected_out_packets += 1;
            (*c).redirected_out_bytes += l3_len;
        }
    }
    if let Some(c) = NIC_STATS.get_ptr_mut(nic_filter_index(egress)) {
        // SAFETY: as above.
        unsafe {
            (*c).redirected_in_packets += 1;
            (*c).redirected_in_bytes += l3_len;
        }
    }
}
