//! The connection table: an existing flow keeps its backend and advances its
//! TCP state; a new flow gets a backend by weighted least-connection.
//! The per-backend active/inactive counters follow every state change, with
//! atomic adds because several CPUs schedule flows of one service at once.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use lb_common::{
    BACKEND_STATE_EMPTY, BackendConnSet, BackendConns, BackendSet, Flow, MAX_BACKENDS, PROTO_TCP,
    REASON_NO_BACKEND,
    conn_state::{STATE_NONE, STATE_UDP, is_active, tcp_next_state},
    wlc,
};

use crate::{BACKEND_CONNS, BACKENDS, CONNTRACK, Verdict, parse::Packet};

/// Insert whether or not the key exists (`BPF_ANY`).
const BPF_ANY: u64 = 0;

/// The backend a packet goes to.
#[derive(Clone, Copy)]
pub struct Binding {
    /// Backend slot, always below [`MAX_BACKENDS`].
    pub slot: u32,
    /// Whether this packet opened the flow (counted as a new connection).
    pub new_flow: bool,
}

/// Keeps a slot index provably inside the backend arrays for the verifier.
#[inline(always)]
const fn bounded(slot: u32) -> u32 {
    slot & (MAX_BACKENDS as u32 - 1)
}

/// The state of a flow after `packet`, starting from `state`.
#[inline(always)]
fn next_state(packet: &Packet, state: u32) -> u32 {
    if packet.flow.proto == PROTO_TCP {
        tcp_next_state(state, packet.tcp_flags)
    } else {
        STATE_UDP
    }
}

/// The now of flow timestamps: the coarse monotonic clock. A few ms of
/// resolution is plenty for idle timeouts counted in seconds, and it is much
/// cheaper than the precise clock.
#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// A packet of a flow already in the connection table: advances its state
/// and returns its service id, the service's backends and its backend.
///
/// The flow keeps its backend while the backend exists, even when it is
/// quiesced or down. `None` for a flow that is not in the table, or whose
/// backend slot was emptied (its backend or service was removed: the control
/// plane empties a service's backend set before it removes or renumbers the
/// service), so that it is scheduled again.
#[inline(always)]
pub fn known(packet: &Packet) -> Option<(u32, &'static BackendSet, Binding)> {
    let flow = CONNTRACK.get_ptr_mut(packet.flow)?;
    // SAFETY: a valid entry of the connection table; this CPU is the only
    // writer of a given flow while its packets arrive on one RX queue.
    let flow = unsafe { &mut *flow };
    let service_id = flow.service_id;
    let backends = BACKENDS.get(service_id)?;
    let slot = bounded(flow.backend_slot);
    if backends.backends[slot as usize].state == BACKEND_STATE_EMPTY {
        return None;
    }
    let state = next_state(packet, flow.state);
    if state != flow.state {
        if let Some(conns) = BACKEND_CONNS.get_ptr_mut(service_id) {
            move_count(conns, slot, is_active(flow.state), is_active(state));
        }
        flow.state = state;
    }
    flow.last_seen_ns = now();
    Some((
        service_id,
        backends,
        Binding {
            slot,
            new_flow: false,
        },
    ))
}

/// Opens a flow for `packet` in service `service_id`: picks its backend by
/// weighted least-connection and records it; `Drop(REASON_NO_BACKEND)` when
/// no backend can take it.
#[inline(always)]
pub fn open(
    packet: &Packet,
    service_id: u32,
    backends: &BackendSet,
    conns: *mut BackendConnSet,
) -> Result<Binding, Verdict> {
    // SAFETY: `conns` points at this service's counters in BACKEND_CONNS.
    let slot = match wlc::select(backends, unsafe { &*conns }) {
        Some(slot) => bounded(slot),
        None => return Err(Verdict::Drop(REASON_NO_BACKEND)),
    };
    let state = next_state(packet, STATE_NONE);
    let flow = Flow {
        last_seen_ns: now(),
        service_id,
        backend_slot: slot,
        state,
        _pad: 0,
    };
    // A full table evicts its least recently used flow, so this only fails on
    // memory pressure; the packet is still forwarded and the next packet of
    // the flow schedules again.
    if CONNTRACK.insert(packet.flow, flow, BPF_ANY).is_ok() {
        add_count(conns, slot, is_active(state), 1);
    }
    Ok(Binding {
        slot,
        new_flow: true,
    })
}

/// Atomically adds `delta` (two's complement for a decrement) to a backend's
/// active or inactive counter.
#[inline(always)]
fn add_count(conns: *mut BackendConnSet, slot: u32, active: bool, delta: u64) {
    // SAFETY: `slot` is bounded; the counters live in a map value.
    unsafe {
        let counters: *mut BackendConns = &raw mut (*conns).conns[slot as usize];
        let counter = if active {
            &raw mut (*counters).active
        } else {
            &raw mut (*counters).inactive
        };
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, delta);
    }
}

/// Moves one flow between a backend's inactive and active counters.
#[inline(always)]
fn move_count(conns: *mut BackendConnSet, slot: u32, was_active: bool, now_active: bool) {
    if was_active != now_active {
        add_count(conns, slot, was_active, 1u64.wrapping_neg());
        add_count(conns, slot, now_active, 1);
    }
}
