//! The SYN-flood guard: above a rate of new TCP flows, SYNs are scheduled
//! without a table entry.
//!
//! Every CPU counts the SYNs that open a flow in windows of
//! [`FLOOD_WINDOW_NS`] ([`SynWindow`], per CPU). When one CPU's count in a
//! window reaches its share of [`FloodGuard::syn_rate`], the director enters
//! flood mode for [`FLOOD_HOLD_NS`] (`FLOOD_UNTIL`, one value for every
//! CPU, written only then); every later window over the rate extends it.
//! In flood mode a new flow's SYN is forwarded to the backend a hash of its
//! 5-tuple picks from the service's hash table (the table of `mh`, `sh`,
//! `rr` and `wrr`, and a Maglev table the control plane also keeps for
//! `wlc` services), and recorded nowhere: a flood of spoofed SYNs costs no
//! insert and evicts nothing. The handshake's ACK, which finds no flow,
//! repeats the hash pick and records the flow in the pending table, from
//! which the client's first payload confirms it (so that an ACK flood
//! cannot fill the connection table, which never evicts); that pick-up
//! lasts until [`FLOOD_ACK_GRACE_NS`] after flood mode ends, long enough
//! for a handshake begun in it to complete.

/// Length of a counting window of the SYN rate.
pub const FLOOD_WINDOW_NS: u64 = 100_000_000;
/// How long flood mode lasts after the last window over the rate began.
pub const FLOOD_HOLD_NS: u64 = 1_000_000_000;
/// How long after flood mode ends an ACK of an unknown flow is still picked
/// up by the hash: a handshake whose SYN was forwarded statelessly, and
/// whose SYN-ACK the real server retransmitted (after 1 s, then 3 s).
pub const FLOOD_ACK_GRACE_NS: u64 = 5_000_000_000;
/// [`FloodGuard::syn_rate`] unless configured: new TCP flows per second on
/// one CPU (Katran's default connection-rate limit is of this order).
pub const DEFAULT_SYN_FLOOD_RATE: u32 = 100_000;

/// Value of `FLOOD_GUARD` (index 0), written by the control plane.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodGuard {
    /// New TCP flows per second on one CPU that start flood mode; 0: never
    /// (every SYN opens a pending flow).
    pub syn_rate: u32,
    /// Explicit padding.
    pub _pad: u32,
}

impl FloodGuard {
    /// SYNs in one window of one CPU that start flood mode (at least 1);
    /// `None` when the guard is off.
    #[inline(always)]
    pub const fn window_limit(&self) -> Option<u64> {
        if self.syn_rate == 0 {
            return None;
        }
        let limit = self.syn_rate as u64 * FLOOD_WINDOW_NS / 1_000_000_000;
        Some(if limit == 0 { 1 } else { limit })
    }
}

/// Value of `SYN_WINDOW` (per CPU, index 0): this CPU's count of SYNs that
/// opened a flow in its current window, written by XDP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynWindow {
    /// Start of the window (coarse monotonic clock, ns).
    pub start_ns: u64,
    /// SYNs counted since.
    pub syns: u64,
}

impl SynWindow {
    /// Counts one SYN at `now`, starting a new window when the current one
    /// is over; whether this SYN brought the window to `limit` (the one SYN
    /// of the window that starts or extends flood mode).
    #[inline(always)]
    pub fn count(&mut self, now: u64, limit: u64) -> bool {
        if now.wrapping_sub(self.start_ns) >= FLOOD_WINDOW_NS {
            self.start_ns = now;
            self.syns = 0;
        }
        self.syns += 1;
        self.syns == limit
    }
}

/// Whether the director is in flood mode at `now`, flood mode lasting until
/// `until` (the value of `FLOOD_UNTIL`; 0: never entered).
#[inline(always)]
pub const fn in_flood(now: u64, until: u64) -> bool {
    now < until
}

/// Whether an ACK of an unknown flow is picked up by the hash at `now`:
/// in flood mode and for [`FLOOD_ACK_GRACE_NS`] after it.
#[inline(always)]
pub const fn picks_up_acks(now: u64, until: u64) -> bool {
    until != 0 && now < until.saturating_add(FLOOD_ACK_GRACE_NS)
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] of integers with explicit padding.
unsafe impl aya::Pod for FloodGuard {}
#[cfg(feature = "user")]
// SAFETY: #[repr(C)] of integers.
unsafe impl aya::Pod for SynWindow {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_limit_is_the_rate_per_window() {
        let guard = |syn_rate| FloodGuard { syn_rate, _pad: 0 };
        assert_eq!(guard(0).window_limit(), None);
        assert_eq!(guard(100_000).window_limit(), Some(10_000));
        assert_eq!(guard(5).window_limit(), Some(1));
    }

    #[test]
    fn a_window_reports_its_limit_once_and_restarts() {
        let mut w = SynWindow::default();
        let t0 = 5 * FLOOD_WINDOW_NS;
        assert!(!w.count(t0, 3));
        assert!(!w.count(t0 + 1, 3));
        assert!(w.count(t0 + 2, 3));
        assert!(!w.count(t0 + 3, 3), "only the SYN that reaches the limit");
        // The next window counts from zero.
        assert!(!w.count(t0 + FLOOD_WINDOW_NS, 3));
        assert_eq!(w.syns, 1);
        assert_eq!(w.start_ns, t0 + FLOOD_WINDOW_NS);
    }

    #[test]
    fn acks_are_picked_up_through_the_grace_period() {
        let until = 10 * FLOOD_HOLD_NS;
        assert!(in_flood(until - 1, until));
        assert!(!in_flood(until, until));
        assert!(picks_up_acks(until + FLOOD_ACK_GRACE_NS - 1, until));
        assert!(!picks_up_acks(until + FLOOD_ACK_GRACE_NS, until));
        assert!(!picks_up_acks(1, 0), "never in flood mode: no pick-up");
    }
}
