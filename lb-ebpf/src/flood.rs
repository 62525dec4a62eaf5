//! The SYN-flood guard (`lb_common::flood`): counts the SYNs that open a
//! flow, enters flood mode when one CPU's count reaches the guard's rate,
//! and says how a TCP packet of a flow no table knows is opened.

use lb_common::{
    FLOOD_HOLD_NS, PROTO_TCP,
    conn_state::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    in_flood, picks_up_acks,
};

use crate::{
    maps::{FLOOD_GUARD, FLOOD_UNTIL, SYN_WINDOW},
    parse::Packet,
};

/// How a new flow is opened.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// By its service's scheduler, and recorded: the normal way.
    Scheduled,
    /// A SYN in flood mode: by the hash of its tuple, recorded nowhere.
    StatelessSyn,
    /// An ACK (no SYN, FIN or RST) during flood mode or its grace period:
    /// by the same hash as its SYN, recorded pending until the client's
    /// first payload confirms it (at once when it carries payload).
    HashedAck,
}

/// Whether flood mode was on when this CPU's SYN window began: a SYN then
/// is likely forwarded unrecorded. A hint without the clock, which the
/// SYN reads after its tables' lookup (`crate::clock::now`): a window lasts
/// [`FLOOD_WINDOW_NS`](lb_common::FLOOD_WINDOW_NS)
/// and the next SYN counted after it starts the next, so the answer lags
/// flood mode by about a window. [`opening`] decides.
#[inline(always)]
pub fn flooding() -> bool {
    let (Some(window), Some(until)) = (SYN_WINDOW.get_ptr(0), FLOOD_UNTIL.get_ptr(0)) else {
        return false;
    };
    // SAFETY: valid map values (the window this CPU's own), read whole.
    unsafe { in_flood((*window).start_ns, *until) }
}

/// How `packet`, of a flow neither table holds, arriving at `now`
/// (`crate::clock::now`), is opened. A SYN is counted in this CPU's window
/// first; the one that brings the window to the guard's limit starts (or
/// extends) flood mode for every CPU.
#[inline(always)]
pub fn opening(packet: &Packet, now: u64) -> Opening {
    if packet.proto != PROTO_TCP {
        return Opening::Scheduled;
    }
    let Some(limit) = FLOOD_GUARD.get(0).and_then(|guard| guard.window_limit()) else {
        return Opening::Scheduled;
    };
    let Some(until) = FLOOD_UNTIL.get_ptr_mut(0) else {
        return Opening::Scheduled;
    };
    if packet.opens_connection() {
        if let Some(window) = SYN_WINDOW.get_ptr_mut(0) {
            // SAFETY: this CPU's own per-CPU value. `until` is shared: CPUs
            // that reach their limit at once store times a window apart,
            // and either is a right end of flood mode.
            unsafe {
                if (*window).count(now, limit) {
                    *until = now + FLOOD_HOLD_NS;
                }
            }
        }
        // SAFETY: a valid array value, read whole.
        if in_flood(now, unsafe { *until }) {
            return Opening::StatelessSyn;
        }
    } else if packet.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_ACK) == TCP_ACK
        // SAFETY: a valid array value, read whole.
        && picks_up_acks(now, unsafe { *until })
    {
        return Opening::HashedAck;
    }
    Opening::Scheduled
}
