//! Weighted least-connection selection, with IPVS's `wlc` rule, in
//! O(log n) per new flow.
//!
//! For every backend that is up and has weight > 0,
//! `overhead = active * 256 + inactive`; the chosen backend minimises
//! `overhead / weight`, compared without division
//! (`overhead_a * weight_b < overhead_b * weight_a`); ties go to the lower slot.
//!
//! IPVS scans every backend for each new connection. Here each service keeps
//! a tournament tree ([`LoadTree`]) whose root names that backend, so a new
//! flow reads the root ([`select`]) and, once the chosen backend's counters
//! change, replays the matches on that backend's path to the root
//! ([`repair`]): one match per level of the smallest subtree holding the
//! service's slots, 8 for 256 backends. The XDP program repairs the path of
//! every backend whose counters it changes (a new flow, a TCP state change);
//! the control plane rebuilds the whole tree ([`rebuild`]), with the weights
//! it competes on, whenever it writes a service's backends or counters. Every
//! match reads the live counters, so the root is exactly the backend a full
//! scan would pick (ties to the lower slot, as the scan).
//!
//! Several CPUs may repair overlapping paths at once. A match that read a
//! child just before another CPU rewrote it leaves a winner that is not the
//! least loaded in its subtree, until the next repair through that node or
//! the control plane's next rebuild (every sweep); a backend whose weight in
//! the tree is 0 never wins a match, whatever the winners say.

use crate::{
    backend::{BackendConnSet, BackendSet},
    limits::MAX_BACKENDS,
};

/// Value of [`WLC_TREE_MAP`]: a tournament tree over the backend slots of
/// one service, for weighted least-connection in O(log n) (see
/// [`crate::wlc`]).
///
/// A complete binary tree in heap order: node 1 is the top, node `n` has
/// the children `2n` and `2n + 1`, and the leaves `MAX_BACKENDS + slot` are
/// the slots themselves (not stored). Each stored node holds the winner of
/// its subtree, the least-loaded backend that may take new flows, as
/// `slot + 1`; 0 means none (so a zeroed tree schedules nothing). A service
/// plays only the smallest subtree that holds its slots: `root`.
///
/// [`WLC_TREE_MAP`]: crate::limits::WLC_TREE_MAP
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadTree {
    /// The weight each slot competes with for new flows: its weight if the
    /// backend is up and in use, 0 if it takes no new flows (the control
    /// plane's view of [`BackendSet`], written with the tree).
    pub weights: [u32; MAX_BACKENDS],
    /// Winner of each node (`slot + 1`, or 0); entry 0 is unused.
    pub winners: [u16; MAX_BACKENDS],
    /// The node whose winner gets the next new flow: the top of the smallest
    /// subtree holding slots `0..len` (see [`root_for`]); 0 in a
    /// zeroed tree (no winner).
    pub root: u32,
}

impl Default for LoadTree {
    fn default() -> Self {
        Self {
            weights: [0; MAX_BACKENDS],
            winners: [0; MAX_BACKENDS],
            root: 0,
        }
    }
}

/// Levels of matches from a leaf to the root: `log2(MAX_BACKENDS)`.
pub const TREE_LEVELS: u32 = MAX_BACKENDS.trailing_zeros();

/// Keeps a slot or node index provably inside a `MAX_BACKENDS` array for the
/// verifier.
#[inline(always)]
const fn bounded(index: u32) -> usize {
    index as usize & (MAX_BACKENDS - 1)
}

/// The largest connection count the scheduler distinguishes. Real counts are
/// bounded by the connection table's size (far below 2^32), and this bound
/// keeps `overhead * weight` inside a `u64`: `(2^32 * 257) * 65535 < 2^57`.
pub const MAX_COUNTED_CONNS: u64 = u32::MAX as u64;

/// A counter as the scheduler sees it: its low 32 bits.
///
/// The XDP program and the control plane's sweeper both write the counters,
/// so a decrement racing a reset can leave a transiently wrapped ("negative")
/// value; it reads as `MAX_COUNTED_CONNS`, so that backend gets no new flows
/// until the next sweep corrects its counts by the connection table.
/// A single mask, with no branch, keeps each match short.
#[inline(always)]
const fn counted(raw: u64) -> u64 {
    raw & MAX_COUNTED_CONNS
}

/// IPVS's overhead of a backend: `active * 256 + inactive`.
#[inline(always)]
pub const fn overhead(active: u64, inactive: u64) -> u64 {
    counted(active) * 256 + counted(inactive)
}

/// The weight a tree entry (`slot + 1`, or 0 for none) competes with: 0 for
/// none and for a backend that may not take new flows. Without a branch
/// (see [`contender`]).
#[inline(always)]
fn entry_weight(tree: &LoadTree, entry: u32) -> u64 {
    u64::from(tree.weights[bounded(entry.wrapping_sub(1))]) & nonzero_mask(u64::from(entry))
}

/// The overhead a tree entry that takes no flows competes with, at weight
/// 1: above every backend's (at most `MAX_COUNTED_CONNS * 257 < 2^41`), so
/// that any backend that takes flows beats it, whatever its weight.
const OUT_OF_PLAY: u64 = 1 << 41;

/// A tree entry in a match, with the weight and overhead it competes with,
/// read once and carried up the tree by [`repair`].
#[derive(Clone, Copy)]
struct Contender {
    /// `slot + 1`; 0 for none and for a backend that may not take new flows.
    entry: u32,
    /// Its weight (1 for an entry of 0).
    weight: u64,
    /// Its overhead ([`OUT_OF_PLAY`] for an entry of 0).
    overhead: u64,
}

/// All ones when `value` (below 2^63) is not 0, else 0: a mask computed
/// without a branch.
#[inline(always)]
const fn nonzero_mask(value: u64) -> u64 {
    ((value | value.wrapping_neg()) >> 63).wrapping_neg()
}

/// Tree entry `entry` (`slot + 1`, or 0) as a contender: an entry whose
/// backend may not take new flows plays as none. Computed without a branch
/// (masks), as is the match: the verifier then walks one path through
/// [`repair`]'s levels, not two per level.
#[inline(always)]
fn contender(tree: &LoadTree, conns: &BackendConnSet, entry: u32) -> Contender {
    let weight = entry_weight(tree, entry);
    let plays = nonzero_mask(weight);
    let c = &conns.conns[bounded(entry.wrapping_sub(1))];
    Contender {
        entry: entry & plays as u32,
        weight: weight | (1 & !plays),
        overhead: (overhead(c.active, c.inactive) & plays) | (OUT_OF_PLAY & !plays),
    }
}

/// All ones when `rival` takes the match from `holder`, else 0: with a
/// strictly lower `overhead / weight`, or an equal one when the rival holds
/// the lower slots (`rival_is_left`: 1, else 0). Both products stay below
/// 2^58, so the sign of their wrapping difference is the comparison.
#[inline(always)]
fn takes_from(rival: &Contender, holder: &Contender, rival_is_left: u32) -> u64 {
    let rival_load = rival.overhead * holder.weight;
    let holder_load = holder.overhead * rival.weight + u64::from(rival_is_left);
    (rival_load.wrapping_sub(holder_load) >> 63).wrapping_neg()
}

/// `rival` where `mask` is all ones, `holder` where it is 0.
#[inline(always)]
fn pick(holder: Contender, rival: Contender, mask: u64) -> Contender {
    Contender {
        entry: holder.entry ^ ((holder.entry ^ rival.entry) & mask as u32),
        weight: holder.weight ^ ((holder.weight ^ rival.weight) & mask),
        overhead: holder.overhead ^ ((holder.overhead ^ rival.overhead) & mask),
    }
}

/// One match: the better of two tree entries, `left` holding the lower
/// slots. A side that may not take flows loses (both: none, 0); otherwise
/// `right` wins only with a strictly lower `overhead / weight`.
#[inline(always)]
fn better(tree: &LoadTree, conns: &BackendConnSet, left: u32, right: u32) -> u16 {
    let (left, right) = (contender(tree, conns, left), contender(tree, conns, right));
    pick(left, right, takes_from(&right, &left, 0)).entry as u16
}

/// The match at `node`, one of the nodes just above the leaves
/// (`MAX_BACKENDS / 2..MAX_BACKENDS`): between its two slots.
#[inline(always)]
fn play_slots(tree: &LoadTree, conns: &BackendConnSet, node: u32) -> u16 {
    let left = 2 * node - MAX_BACKENDS as u32 + 1;
    better(tree, conns, left, left + 1)
}

/// The match at an inner `node` (`1..MAX_BACKENDS / 2`): between the winners
/// of its two children.
#[inline(always)]
fn play_children(tree: &LoadTree, conns: &BackendConnSet, node: u32) -> u16 {
    let left = u32::from(tree.winners[bounded(2 * node)]);
    let right = u32::from(tree.winners[bounded(2 * node + 1)]);
    better(tree, conns, left, right)
}

/// The root of a service of `len` slots: the top of the smallest subtree
/// holding slots `0..len` (node `MAX_BACKENDS / 2^d` holds slots `0..2^d`),
/// at least two slots.
pub const fn root_for(len: u32) -> u32 {
    let mut root = MAX_BACKENDS as u32 / 2;
    while root > 1 && MAX_BACKENDS as u32 / root < len {
        root /= 2;
    }
    root
}

/// The slot of the backend that gets the next new flow, or `None` when no
/// backend is up with a weight above zero.
#[inline(always)]
pub fn select(tree: &LoadTree) -> Option<u32> {
    let winner = u32::from(tree.winners[bounded(tree.root)]);
    (entry_weight(tree, winner) > 0).then(|| winner - 1)
}

/// Replays the matches on the path from `slot` up to the service's root,
/// after `slot`'s counters changed. Each match's winner goes on to the next
/// as it is (entry, weight, overhead), so a level reads only its rival's
/// side of the tree, which no earlier level wrote: those reads do not wait
/// for the matches below.
#[inline(always)]
pub fn repair(tree: &mut LoadTree, conns: &BackendConnSet, slot: u32) {
    let root = tree.root;
    let slot = bounded(slot) as u32;
    // `node` is where `winner` stands: first the slot's leaf.
    let mut node = MAX_BACKENDS as u32 + slot;
    let mut winner = contender(tree, conns, slot + 1);
    let mut rival = contender(tree, conns, (slot ^ 1) + 1);
    for _ in 0..TREE_LEVELS {
        // The rival stands at `node ^ 1`: the left one when `node` is odd.
        winner = pick(winner, rival, takes_from(&rival, &winner, node & 1));
        node /= 2;
        tree.winners[bounded(node)] = winner.entry as u16;
        if node / 2 < root {
            break;
        }
        rival = contender(tree, conns, u32::from(tree.winners[bounded(node ^ 1)]));
    }
}

/// Rebuilds the tree of the service whose backends are `set`: the weights
/// its slots compete with, its root, and every match, bottom up (the
/// control plane, after writing a service's backends or counters).
pub fn rebuild(tree: &mut LoadTree, set: &BackendSet, conns: &BackendConnSet) {
    for (slot, weight) in tree.weights.iter_mut().enumerate() {
        *weight = set.scheduling_weight(slot as u32);
    }
    tree.root = root_for(set.len);
    tree.winners[0] = 0;
    for node in (MAX_BACKENDS as u32 / 2..MAX_BACKENDS as u32).rev() {
        tree.winners[bounded(node)] = play_slots(tree, conns, node);
    }
    for node in (1..MAX_BACKENDS as u32 / 2).rev() {
        tree.winners[bounded(node)] = play_children(tree, conns, node);
    }
}

/// IPVS's `wlc` as IPVS runs it: one scan over every slot that may take new
/// flows (weight from `set`), for the least `overhead / weight`, ties to the
/// lower slot. Not used to schedule: it is the reference that the tree's
/// [`select`] must agree with, in the unit tests and the packet fixtures.
pub fn scan(set: &BackendSet, conns: &BackendConnSet) -> Option<u32> {
    let mut best: Option<(u32, u64, u64)> = None;
    for slot in 0..MAX_BACKENDS as u32 {
        let weight = u64::from(set.scheduling_weight(slot));
        if weight == 0 {
            continue;
        }
        let c = &conns.conns[slot as usize];
        let load = overhead(c.active, c.inactive);
        if best.is_none_or(|(_, best_load, best_weight)| load * best_weight < best_load * weight) {
            best = Some((slot, load, weight));
        }
    }
    best.map(|(slot, _, _)| slot)
}

const _: () = assert!(size_of::<LoadTree>() == 6 * MAX_BACKENDS + 4);

#[cfg(feature = "user")]
mod pod {
    use super::LoadTree;

    // SAFETY: it is #[repr(C)], holds only integers, and has no implicit
    // padding (the size assertion and layout test here).
    unsafe impl aya::Pod for LoadTree {}
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;
    use crate::{
        backend::{
            BACKEND_STATE_DOWN, BACKEND_STATE_EMPTY, BACKEND_STATE_UP, Backend, BackendConns,
        },
        limits::MAX_WEIGHT,
    };

    /// A service with these weights (all up), no connections, and its tree.
    struct Service {
        set: BackendSet,
        conns: BackendConnSet,
        tree: LoadTree,
    }

    impl Service {
        fn new(weights: &[u32]) -> Self {
            let mut set = BackendSet::default();
            for (slot, &weight) in weights.iter().enumerate() {
                set.backends[slot] = Backend {
                    weight,
                    state: BACKEND_STATE_UP,
                    ..Backend::default()
                };
            }
            set.len = weights.len() as u32;
            let mut service = Self {
                set,
                conns: BackendConnSet::default(),
                tree: LoadTree::default(),
            };
            service.rebuild();
            service
        }

        fn rebuild(&mut self) {
            rebuild(&mut self.tree, &self.set, &self.conns);
        }

        fn select(&self) -> Option<u32> {
            select(&self.tree)
        }

        /// Adds `delta` to a counter of `slot` and repairs its path, as the
        /// XDP program does.
        fn count(&mut self, slot: u32, active: bool, delta: u64) {
            let c = &mut self.conns.conns[slot as usize];
            let counter = if active {
                &mut c.active
            } else {
                &mut c.inactive
            };
            *counter = counter.wrapping_add(delta);
            repair(&mut self.tree, &self.conns, slot);
        }

        /// Schedules `n` new flows, each counted as active, and returns how
        /// many each slot received.
        fn schedule(&mut self, n: usize) -> [usize; 8] {
            let mut got = [0; 8];
            for _ in 0..n {
                let slot = self.select().expect("a backend");
                got[slot as usize] += 1;
                self.count(slot, true, 1);
            }
            got
        }
    }

    #[test]
    fn load_tree_layout() {
        assert_eq!(offset_of!(LoadTree, weights), 0);
        assert_eq!(offset_of!(LoadTree, winners), 4 * MAX_BACKENDS);
        assert_eq!(offset_of!(LoadTree, root), 6 * MAX_BACKENDS);
    }

    #[test]
    fn tree_has_eight_levels() {
        assert_eq!(1 << TREE_LEVELS, MAX_BACKENDS);
    }

    #[test]
    fn root_holds_the_slots_in_use() {
        let roots = [0, 1, 2, 3, 4, 5, 8, 9, 128, 129, 256].map(|len| (len, root_for(len)));
        assert_eq!(
            roots,
            [
                (0, 128),
                (1, 128),
                (2, 128),
                (3, 64),
                (4, 64),
                (5, 32),
                (8, 32),
                (9, 16),
                (128, 2),
                (129, 1),
                (256, 1)
            ]
        );
    }

    #[test]
    fn empty_service_has_no_backend() {
        assert_eq!(Service::new(&[]).select(), None);
        assert_eq!(select(&LoadTree::default()), None);
    }

    #[test]
    fn ties_go_to_the_lower_slot() {
        assert_eq!(Service::new(&[100, 100, 100]).select(), Some(0));
        assert_eq!(
            Service::new(&[1, 5, 5]).select(),
            Some(0),
            "all idle: overhead 0 everywhere"
        );
    }

    #[test]
    fn split_follows_weights_exactly() {
        let got = Service::new(&[1000, 500, 800]).schedule(2300);
        assert_eq!(&got[..3], &[1000, 500, 800]);
    }

    #[test]
    fn overhead_weighs_active_256_times_inactive() {
        let mut service = Service::new(&[1, 1]);
        service.count(0, true, 1);
        service.count(1, false, 255);
        assert_eq!(service.select(), Some(1), "255 < 256");
        service.count(1, false, 1);
        assert_eq!(service.select(), Some(0), "tie goes to slot 0");
        service.count(1, false, 1);
        assert_eq!(service.select(), Some(0));
    }

    #[test]
    fn a_closing_flow_is_seen_at_once() {
        let mut service = Service::new(&[1, 1, 1]);
        service.schedule(30);
        // A flow of slot 2 leaves ESTABLISHED: slot 2 is now the least loaded.
        service.count(2, true, 1u64.wrapping_neg());
        service.count(2, false, 1);
        assert_eq!(service.select(), Some(2));
    }

    #[test]
    fn weight_zero_is_quiesced() {
        let mut service = Service::new(&[0, 10, 10]);
        let got = service.schedule(100);
        assert_eq!(got[0], 0);
        service.set.backends[1].weight = 0;
        service.set.backends[2].weight = 0;
        service.rebuild();
        assert_eq!(service.select(), None);
    }

    #[test]
    fn down_and_empty_backends_get_nothing() {
        let mut service = Service::new(&[10, 10, 10]);
        service.set.backends[1].state = BACKEND_STATE_DOWN;
        service.set.backends[2].state = BACKEND_STATE_EMPTY;
        service.rebuild();
        let got = service.schedule(50);
        assert_eq!(&got[..3], &[50, 0, 0]);
        service.set.backends[0].state = BACKEND_STATE_DOWN;
        service.rebuild();
        assert_eq!(service.select(), None);
    }

    #[test]
    fn slots_past_len_are_ignored() {
        let mut service = Service::new(&[10, 10]);
        service.set.len = 1;
        service.set.backends[0].state = BACKEND_STATE_DOWN;
        service.rebuild();
        assert_eq!(service.select(), None);
    }

    #[test]
    fn full_service_of_max_backends() {
        let mut service = Service::new(&[1u32; MAX_BACKENDS]);
        for slot in 0..MAX_BACKENDS as u32 - 1 {
            service.count(slot, true, 1);
        }
        assert_eq!(service.select(), Some(MAX_BACKENDS as u32 - 1));
    }

    #[test]
    fn tree_picks_what_a_full_scan_picks() {
        // A deterministic xorshift stream of new flows, state changes, closes
        // and weight/state changes, over services of several sizes.
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for len in [2, 37, MAX_BACKENDS] {
            let weights: [u32; MAX_BACKENDS] = core::array::from_fn(|slot| (slot as u32 % 7) * 100);
            let mut service = Service::new(&weights[..len]);
            let mut any_slot = || (next() % len as u64) as u32;
            for step in 0..20_000 {
                match any_slot() % 8 {
                    0..=3 => {
                        if let Some(slot) = service.select() {
                            service.count(slot, step % 2 == 0, 1);
                        }
                    }
                    4 | 5 => {
                        let slot = any_slot();
                        let c = service.conns.conns[slot as usize];
                        if c.active > 0 {
                            service.count(slot, true, 1u64.wrapping_neg());
                            service.count(slot, false, 1);
                        } else if c.inactive > 0 {
                            service.count(slot, false, 1u64.wrapping_neg());
                        }
                    }
                    6 => {
                        let slot = any_slot() as usize;
                        service.set.backends[slot].weight = (step % 4) * 50;
                        service.rebuild();
                    }
                    _ => {
                        let backend = &mut service.set.backends[any_slot() as usize];
                        backend.state = if backend.state == BACKEND_STATE_UP {
                            BACKEND_STATE_DOWN
                        } else {
                            BACKEND_STATE_UP
                        };
                        service.rebuild();
                    }
                }
                assert_eq!(
                    service.select(),
                    scan(&service.set, &service.conns),
                    "{len} slots, step {step}"
                );
                // Every match from the root down is the one a rebuild plays.
                let mut rebuilt = service.tree;
                rebuild(&mut rebuilt, &service.set, &service.conns);
                let root = service.tree.root as usize;
                assert_eq!(
                    service.tree.winners[root..],
                    rebuilt.winners[root..],
                    "{len} slots, step {step}"
                );
            }
        }
    }

    #[test]
    fn huge_counters_do_not_overflow() {
        let mut service = Service::new(&[MAX_WEIGHT, 1]);
        service.conns.conns[0] = BackendConns {
            active: u64::MAX / 2,
            inactive: u64::MAX / 2,
        };
        service.rebuild();
        assert_eq!(service.select(), Some(1));
        // Saturated counters on both sides: the heavier weight wins.
        service.conns.conns[1] = service.conns.conns[0];
        service.rebuild();
        assert_eq!(service.select(), Some(0));
        assert_eq!(overhead(u64::MAX / 2, 0), MAX_COUNTED_CONNS * 256);
        assert!(
            overhead(MAX_COUNTED_CONNS, MAX_COUNTED_CONNS)
                .checked_mul(MAX_WEIGHT as u64)
                .is_some()
        );
    }

    #[test]
    fn wrapped_counters_read_as_fully_loaded() {
        let mut service = Service::new(&[1, 1]);
        service.count(0, true, 1000);
        service.count(1, false, 1u64.wrapping_neg());
        assert_eq!(overhead(0, 0u64.wrapping_sub(1)), MAX_COUNTED_CONNS);
        assert_eq!(service.select(), Some(0));
    }
}
