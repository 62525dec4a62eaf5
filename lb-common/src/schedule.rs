//! IPVS's table schedulers beside weighted least-connection ([`crate::wlc`]):
//! round robin (`rr`), weighted round robin (`wrr`), source hashing (`sh`)
//! and Maglev hashing (`mh`). Each service of these keeps a
//! [`ScheduleTable`] of backend slots, which the control plane builds
//! (`lb::schedule`) from the backends that take new flows whenever it
//! writes the service:
//!
//! - `rr` and `wrr`: the order of IPVS's weighted round robin over the
//!   weights divided by their greatest common divisor (`rr`: all weights 1),
//!   interleaved as smooth weighted round robin does; the XDP program walks
//!   it with a per-CPU position, so each CPU follows the sequence (IPVS keeps
//!   one position for all CPUs) and the mix over all of them keeps the
//!   weights;
//! - `mh`: a Maglev lookup table of [`SCHEDULE_TABLE_SIZE`]
//!   entries, a prime, each backend taking a share proportional to its
//!   weight, indexed by a hash of the flow's 5-tuple ([`flow_hash`]); a
//!   backend that leaves or joins moves about its own share of the flows;
//! - `sh`: the same Maglev table, indexed by a hash of the client address
//!   alone, so all of a client's connections go to one backend.
//!
//! `mh` and `sh` depend only on the config and the backends' health, so
//! directors with the same config agree on every flow: a TCP packet of a
//! flow a director has not seen (after a failover, or through an ECMP
//! reshuffle) is scheduled by the hash, as a SYN is.

/// `Service::scheduler`: weighted least-connection (the default).
pub const SCHEDULER_WLC: u32 = 0;
/// `Service::scheduler`: round robin.
pub const SCHEDULER_RR: u32 = 1;
/// `Service::scheduler`: weighted round robin.
pub const SCHEDULER_WRR: u32 = 2;
/// `Service::scheduler`: source hashing (consistent, weighted).
pub const SCHEDULER_SH: u32 = 3;
/// `Service::scheduler`: Maglev hashing of the 5-tuple.
pub const SCHEDULER_MH: u32 = 4;

/// Entries of a [`ScheduleTable`]: a prime (Maglev's table size must be),
/// about 64 entries per backend at 256 backends.
pub const SCHEDULE_TABLE_SIZE: usize = 16_381;

/// Value of [`SCHEDULE_TABLES_MAP`] (by service id): the slots a table
/// scheduler picks from.
///
/// [`SCHEDULE_TABLES_MAP`]: crate::limits::SCHEDULE_TABLES_MAP
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduleTable {
    /// Entries in use: the sequence's length (`rr`, `wrr`) or
    /// [`SCHEDULE_TABLE_SIZE`] (`mh`, `sh`); 0: no backend takes new flows.
    pub len: u32,
    /// Backend slot + 1 of each entry; 0: none.
    pub slots: [u16; SCHEDULE_TABLE_SIZE],
    /// Explicit padding.
    pub _pad: u16,
}

impl Default for ScheduleTable {
    fn default() -> Self {
        Self {
            len: 0,
            slots: [0; SCHEDULE_TABLE_SIZE],
            _pad: 0,
        }
    }
}

const _: () = assert!(size_of::<ScheduleTable>() == 4 + 2 * SCHEDULE_TABLE_SIZE + 2);

/// Whether scheduler `scheduler` picks a flow's backend from a hash of the
/// flow alone (`mh`, `sh`): any director with the same config picks the
/// same one.
#[inline(always)]
pub fn hashes_flows(scheduler: u32) -> bool {
    scheduler == SCHEDULER_MH || scheduler == SCHEDULER_SH
}

/// A 64-bit hash of `words` (a flow key's or an address's 64-bit words),
/// the same on every director: a multiply-xorshift over the words.
#[inline(always)]
pub fn flow_hash(words: &[u64]) -> u64 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    for &w in words {
        h = (h ^ w).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 31;
    }
    h ^ (h >> 29)
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] of integers with explicit padding: every bit pattern
// is valid and no byte is uninitialised.
unsafe impl aya::Pod for ScheduleTable {}
