//! The backend of a new flow by its service's scheduler (see
//! `lb_common::schedule`): weighted least-connection from the service's
//! tree, or an entry of the service's table: at a per-CPU position for `rr`
//! and `wrr`, at a hash of the 5-tuple for `mh` and of the client address
//! for `sh`. In flood mode (`crate::flood`) every service picks by the hash
//! from its table (`wlc` services keep a Maglev table for it).

use lb_common::{
    BackendSet, LoadTree, SCHEDULER_MH, SCHEDULER_SH, SCHEDULER_WLC, ScheduleTable, Service, wlc,
};

use crate::{
    conntrack::TableKey,
    maps::{RR_POSITION, SCHEDULE_TABLES},
};

/// The slot `service`'s scheduler picks for new flow `key` among
/// `backends` (`tree`: the service's wlc tree); with `by_hash`, the entry
/// of the service's table at the hash `sh` uses (the client address) or,
/// for every other scheduler, the hash of the 5-tuple: the same for a SYN
/// and its ACK. A table entry whose backend no longer takes new flows (the
/// control plane rewrites the table right after the backends) falls back
/// to wlc, as does a service without a table. `None` when no backend can
/// take the flow.
#[inline(always)]
pub fn pick<K: TableKey>(
    key: &K,
    service: &Service,
    backends: &BackendSet,
    tree: &LoadTree,
    by_hash: bool,
) -> Option<u32> {
    match pick_slot(key, service, backends, tree, by_hash) {
        NO_SLOT => None,
        slot => Some(slot),
    }
}

/// [`pick_slot`]'s answer when no backend can take the flow.
const NO_SLOT: u32 = u32::MAX;

/// [`pick`], returning [`NO_SLOT`] for `None`. A function of its own (a
/// BPF-to-BPF call, whose five arguments are all BPF allows: a returned
/// `Option` would take a sixth): only new flows come here, and the
/// established path's inlined code stays as small as it was.
#[inline(never)]
fn pick_slot<K: TableKey>(
    key: &K,
    service: &Service,
    backends: &BackendSet,
    tree: &LoadTree,
    by_hash: bool,
) -> u32 {
    let from_table = match service.scheduler {
        SCHEDULER_SH => hashed_entry(service.id, key.client_hash()),
        SCHEDULER_MH => hashed_entry(service.id, key.flow_hash()),
        _ if by_hash => hashed_entry(service.id, key.flow_hash()),
        SCHEDULER_WLC => None,
        _ => next_entry(service.id),
    };
    match from_table {
        Some(slot) if backends.scheduling_weight(slot) > 0 => slot,
        _ => wlc::select(tree).unwrap_or(NO_SLOT),
    }
}

/// The slot in service `id`'s table at `hash`.
#[inline(always)]
fn hashed_entry(id: u32, hash: u64) -> Option<u32> {
    let table = SCHEDULE_TABLES.get(id)?;
    match table.len {
        0 => None,
        len => entry(table, hash % u64::from(len)),
    }
}

/// The slot in service `id`'s round-robin sequence at this CPU's position,
/// which moves on.
#[inline(always)]
fn next_entry(id: u32) -> Option<u32> {
    let table = SCHEDULE_TABLES.get(id)?;
    let len = table.len;
    if len == 0 {
        return None;
    }
    let position = RR_POSITION.get_ptr_mut(id)?;
    // SAFETY: this CPU's own entry of a per-CPU array; nothing else
    // touches it while this program run holds it.
    let position = unsafe { &mut *position };
    let at = *position;
    *position = at.wrapping_add(1);
    entry(table, u64::from(at % len))
}

/// The backend slot of `table`'s entry `index`, if it has one.
#[inline(always)]
fn entry(table: &ScheduleTable, index: u64) -> Option<u32> {
    let entry = *table.slots.get(index as usize)?;
    (entry != 0).then(|| u32::from(entry - 1))
}
