//! The time of flow and fragment timestamps and of the SYN-flood guard:
//! the kernel's coarse monotonic clock, read at most once per tick on each
//! CPU; and the flow cache's period, counted in ticks.
//!
//! The coarse clock only moves at the timer tick, and `bpf_jiffies64` (the
//! tick count, a load the verifier inlines) says when it may have moved.
//! A packet reads the tick once ([`Tick::read`]): its flow-cache period
//! and its clock reading both come from it.
//! Each CPU keeps the clock's last reading with the tick it was read in
//! ([`CLOCK`]): a packet in the same tick takes that reading, which costs a
//! few loads instead of the helper call (about 20 ns). A reading is then at
//! most one tick older than the coarse clock itself would be.

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns};
use lb_common::FLOW_CACHE_PERIOD_SHIFT;

use crate::maps::CLOCK;

/// Value of [`CLOCK`]: one CPU's last reading of the coarse clock.
#[repr(C)]
pub struct TickReading {
    /// `bpf_jiffies64` when it was read.
    jiffies: u64,
    /// The coarse clock then (ns of `CLOCK_MONOTONIC`).
    ns: u64,
}

/// The tick (`bpf_jiffies64`) a packet arrived in.
#[derive(Clone, Copy)]
pub struct Tick(u64);

impl Tick {
    /// The current tick.
    #[inline(always)]
    pub fn read() -> Self {
        // SAFETY: a helper without arguments (inlined by the verifier on
        // 64-bit JITs).
        Self(unsafe { bpf_jiffies64() })
    }

    /// The flow cache's period of this tick (see
    /// [`FLOW_CACHE_PERIOD_SHIFT`]).
    #[inline(always)]
    pub const fn cache_period(self) -> u64 {
        self.0 >> FLOW_CACHE_PERIOD_SHIFT
    }

    /// The now of flow timestamps and of the SYN-flood guard in this tick:
    /// the coarse monotonic clock (a few ms of resolution is plenty for
    /// idle timeouts counted in seconds and for the guard's 100 ms
    /// windows), as this CPU last read it in this tick.
    #[inline(always)]
    pub fn now(self) -> u64 {
        let Some(reading) = CLOCK.get_ptr_mut(0) else {
            // SAFETY: a helper without arguments.
            return unsafe { bpf_ktime_get_coarse_ns() };
        };
        // SAFETY: this CPU's own value: nothing else touches it while this
        // program run holds it (XDP does not nest on a CPU).
        let reading = unsafe { &mut *reading };
        // A zeroed reading never matches: jiffies start at INITIAL_JIFFIES,
        // far from 0, and only grow.
        if reading.jiffies != self.0 {
            // SAFETY: as above.
            reading.ns = unsafe { bpf_ktime_get_coarse_ns() };
            reading.jiffies = self.0;
        }
        reading.ns
    }
}

/// [`Tick::now`] of the current tick, for a packet that has not read it
/// (a fragment's, before its flow is known).
#[inline(always)]
pub fn now() -> u64 {
    Tick::read().now()
}
