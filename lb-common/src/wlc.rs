//! Weighted least-connection selection, exactly as IPVS's `wlc` scheduler.
//!
//! For every backend that is up and has weight > 0,
//! `overhead = active * 256 + inactive`; the chosen backend minimises
//! `overhead / weight`, compared without division
//! (`overhead_a * weight_b < overhead_b * weight_a`); ties go to the lower slot.
//!
//! This is the code the XDP program runs for every new flow. It walks the
//! service's [`BackendSet::schedule`] (the backends that are up with a weight
//! above zero, packed 8 bytes each) rather than every slot, and is written
//! for the verifier: one bounded loop over a fixed-size array, and the winner
//! is recorded by the slot number *loaded from the map value* rather than by
//! the loop index, which keeps the verifier's explored states (and so its
//! instruction budget) small for 256 backends.

use crate::{BackendConnSet, BackendSet, MAX_BACKENDS};

/// The largest connection count the scheduler distinguishes. Real counts are
/// bounded by the connection table's size (far below 2^32), and this bound
/// keeps `overhead * weight` inside a `u64`: `(2^32 * 257) * 65535 < 2^57`.
pub const MAX_COUNTED_CONNS: u64 = u32::MAX as u64;

/// A counter as the scheduler sees it: its low 32 bits.
///
/// The XDP program and the control plane's sweeper both write the counters,
/// so a decrement racing a reset can leave a transiently wrapped ("negative")
/// value; it reads as `MAX_COUNTED_CONNS`, so that backend gets no new flows
/// until the next sweep rewrites its counts from the connection table.
///
/// A single mask on purpose: any branch or select here (even a sign test)
/// leaves a different known constant in a register on some path of every
/// loop iteration, and the verifier can then no longer prune states over
/// 256 backends.
#[inline(always)]
const fn counted(raw: u64) -> u64 {
    raw & MAX_COUNTED_CONNS
}

/// IPVS's overhead of a backend: `active * 256 + inactive`.
#[inline(always)]
pub const fn overhead(active: u64, inactive: u64) -> u64 {
    counted(active) * 256 + counted(inactive)
}

/// The slot of the backend that gets the next new flow, or `None` when no
/// backend is up with a weight above zero.
#[inline(always)]
pub fn select(set: &BackendSet, conns: &BackendConnSet) -> Option<u32> {
    let mut best_slot = 0u32;
    let mut best_overhead = 0u64;
    // 0 = no candidate yet (a candidate always has weight > 0).
    let mut best_weight = 0u64;
    // One condition per candidate and no `continue`: with a skip branch LLVM
    // splits the loop in two, and the inner loop's base index becomes a
    // per-path constant that defeats the verifier's state pruning.
    for i in 0..MAX_BACKENDS {
        if i as u32 >= set.schedule_len {
            break;
        }
        let candidate = &set.schedule[i];
        let slot = candidate.slot & (MAX_BACKENDS as u32 - 1);
        let c = &conns.conns[slot as usize];
        let weight = candidate.weight as u64;
        let load = overhead(c.active, c.inactive);
        if best_weight == 0 || load * best_weight < best_overhead * weight {
            best_slot = slot;
            best_overhead = load;
            best_weight = weight;
        }
    }
    if best_weight == 0 {
        None
    } else {
        Some(best_slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BACKEND_STATE_DOWN, BACKEND_STATE_UP, Backend, BackendConns, MAX_WEIGHT};

    fn service(weights: &[u32]) -> (BackendSet, BackendConnSet) {
        let mut set = BackendSet::default();
        for (slot, &weight) in weights.iter().enumerate() {
            set.backends[slot] = Backend {
                weight,
                state: BACKEND_STATE_UP,
                ..Backend::default()
            };
        }
        set.len = weights.len() as u32;
        set.refresh_schedule();
        (set, BackendConnSet::default())
    }

    /// Schedules `n` new flows, each counted as active, and returns how many
    /// each slot received.
    fn schedule(set: &BackendSet, conns: &mut BackendConnSet, n: usize) -> [usize; 8] {
        let mut got = [0; 8];
        for _ in 0..n {
            let slot = select(set, conns).expect("a backend") as usize;
            got[slot] += 1;
            conns.conns[slot].active += 1;
        }
        got
    }

    #[test]
    fn empty_service_has_no_backend() {
        let (set, conns) = service(&[]);
        assert_eq!(select(&set, &conns), None);
    }

    #[test]
    fn ties_go_to_the_lower_slot() {
        let (set, conns) = service(&[100, 100, 100]);
        assert_eq!(select(&set, &conns), Some(0));
        let (set, conns) = service(&[1, 5, 5]);
        assert_eq!(
            select(&set, &conns),
            Some(0),
            "all idle: overhead 0 everywhere"
        );
    }

    #[test]
    fn split_follows_weights_exactly() {
        let (set, mut conns) = service(&[1000, 500, 800]);
        let got = schedule(&set, &mut conns, 2300);
        assert_eq!(&got[..3], &[1000, 500, 800]);
    }

    #[test]
    fn overhead_weighs_active_256_times_inactive() {
        let (set, mut conns) = service(&[1, 1]);
        conns.conns[0] = BackendConns {
            active: 1,
            inactive: 0,
        };
        conns.conns[1] = BackendConns {
            active: 0,
            inactive: 255,
        };
        assert_eq!(select(&set, &conns), Some(1), "255 < 256");
        conns.conns[1].inactive = 256;
        assert_eq!(select(&set, &conns), Some(0), "tie goes to slot 0");
        conns.conns[1].inactive = 257;
        assert_eq!(select(&set, &conns), Some(0));
    }

    #[test]
    fn weight_zero_is_quiesced() {
        let (mut set, mut conns) = service(&[0, 10, 10]);
        let got = schedule(&set, &mut conns, 100);
        assert_eq!(got[0], 0);
        set.backends[1].weight = 0;
        set.backends[2].weight = 0;
        set.refresh_schedule();
        assert_eq!(select(&set, &conns), None);
    }

    #[test]
    fn down_and_empty_backends_get_nothing() {
        let (mut set, mut conns) = service(&[10, 10, 10]);
        set.backends[1].state = BACKEND_STATE_DOWN;
        set.backends[2].state = crate::BACKEND_STATE_EMPTY;
        set.refresh_schedule();
        let got = schedule(&set, &mut conns, 50);
        assert_eq!(&got[..3], &[50, 0, 0]);
        set.backends[0].state = BACKEND_STATE_DOWN;
        set.refresh_schedule();
        assert_eq!(select(&set, &conns), None);
    }

    #[test]
    fn slots_past_len_are_ignored() {
        let (mut set, conns) = service(&[10, 10]);
        set.len = 1;
        set.backends[0].state = BACKEND_STATE_DOWN;
        set.refresh_schedule();
        assert_eq!(select(&set, &conns), None);
    }

    #[test]
    fn full_service_of_max_backends() {
        let weights = [1u32; MAX_BACKENDS];
        let (set, mut conns) = service(&weights);
        for slot in 0..MAX_BACKENDS - 1 {
            conns.conns[slot].active = 1;
        }
        assert_eq!(select(&set, &conns), Some(MAX_BACKENDS as u32 - 1));
    }

    #[test]
    fn huge_counters_do_not_overflow() {
        let (set, mut conns) = service(&[MAX_WEIGHT, 1]);
        conns.conns[0] = BackendConns {
            active: u64::MAX / 2,
            inactive: u64::MAX / 2,
        };
        conns.conns[1] = BackendConns {
            active: 0,
            inactive: 0,
        };
        assert_eq!(select(&set, &conns), Some(1));
        // Saturated counters on both sides: the heavier weight wins.
        conns.conns[1] = conns.conns[0];
        assert_eq!(select(&set, &conns), Some(0));
        assert_eq!(overhead(u64::MAX / 2, 0), MAX_COUNTED_CONNS * 256);
        assert!(
            overhead(MAX_COUNTED_CONNS, MAX_COUNTED_CONNS)
                .checked_mul(MAX_WEIGHT as u64)
                .is_some()
        );
    }

    #[test]
    fn wrapped_counters_read_as_fully_loaded() {
        let (set, mut conns) = service(&[1, 1]);
        conns.conns[0].active = 1000;
        conns.conns[1].inactive = 0u64.wrapping_sub(1);
        assert_eq!(overhead(0, 0u64.wrapping_sub(1)), MAX_COUNTED_CONNS);
        assert_eq!(select(&set, &conns), Some(0));
    }
}
