//! The backend of a new flow by its service's scheduler (see
//! `lb_common::schedule`): weighted least-connection from the service's
//! tree, or an entry of the service's table: at a per-CPU position for `rr`
//! and `wrr`, at a hash of the 5-tuple for `mh` and of the client address
//! for `sh`.

use lb_common::{BackendSet, LoadTree, SCHEDULER_MH, SCHEDULER_SH, SCHEDULER_WLC, Service, wlc};

use crate::{
    conntrack::TableKey,
    maps::{RR_POSITION, SCHEDULE_TABLES},
};

/// The slot `service`'s scheduler picks for new flow `key` among
/// `backends` (`tree`: the service's wlc tree). A table entry whose backend
/// no longer takes new flows (the control plane rewrites the table right
/// after the backends) falls back to wlc, as does a service without a
/// table. `None` when no backend can take the flow.
///
/// A function of its own (a BPF-to-BPF call): only new flows come here,
/// and the established path's inlined code stays as small as it was.
#[inline(never)]
pub fn pick<K: TableKey>(
    key: &K,
    service: &Service,
    backends: &BackendSet,
    tree: &LoadTree,
) -> Option<u32> {
    let from_table = match service.scheduler {
        SCHEDULER_WLC => None,
        scheduler => table_entry(key, service.id, scheduler),
    };
    match from_table {
        Some(slot) if backends.scheduling_weight(slot) > 0 => Some(slot),
        _ => wlc::select(tree),
    }
}

/// The slot in service `id`'s table that `scheduler` picks for `key`.
#[inline(always)]
fn table_entry<K: TableKey>(key: &K, id: u32, scheduler: u32) -> Option<u32> {
    let table = SCHEDULE_TABLES.get(id)?;
    let len = table.len;
    if len == 0 {
        return None;
    }
    let index = match scheduler {
        SCHEDULER_MH => key.flow_hash() % u64::from(len),
        SCHEDULER_SH => key.client_hash() % u64::from(len),
        _ => {
            let position = RR_POSITION.get_ptr_mut(id)?;
            // SAFETY: this CPU's own entry of a per-CPU array; nothing else
            // touches it while this program run holds it.
            let position = unsafe { &mut *position };
            let at = *position;
            *position = at.wrapping_add(1);
            u64::from(at % len)
        }
    };
    let entry = *table.slots.get(index as usize)?;
    (entry != 0).then(|| u32::from(entry - 1))
}
