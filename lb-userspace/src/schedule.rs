//! Builds the tables of IPVS's table schedulers (`lb_common::schedule`):
//! the weighted round-robin sequence of `rr` and `wrr`, and the Maglev
//! lookup table of `mh` and `sh`, from the backends that take new flows.

use lb_common::{
    BackendSet, MAX_BACKENDS, SCHEDULE_TABLE_SIZE, SCHEDULER_RR, SCHEDULER_WRR, ScheduleTable,
    flow_hash,
};

/// The slots that take new flows in `backends`, with their weights.
fn usable(backends: &BackendSet) -> Vec<(u16, u32)> {
    (0..backends.len.min(MAX_BACKENDS as u32))
        .map(|slot| (slot as u16, backends.scheduling_weight(slot)))
        .filter(|&(_, weight)| weight > 0)
        .collect()
}

/// Weights divided by their greatest common divisor.
fn reduced(weights: impl Iterator<Item = u32> + Clone) -> impl Iterator<Item = u32> {
    fn gcd(a: u32, b: u32) -> u32 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let divisor = weights.clone().fold(0, gcd).max(1);
    weights.map(move |w| w / divisor)
}

/// The table of scheduler `scheduler` (not wlc) over `backends`.
pub fn table(scheduler: u32, backends: &BackendSet) -> ScheduleTable {
    let usable = usable(backends);
    match scheduler {
        SCHEDULER_RR => sequence(&usable.iter().map(|&(s, _)| (s, 1)).collect::<Vec<_>>()),
        SCHEDULER_WRR => sequence(&usable),
        _ => {
            let addresses: Vec<([u8; 16], u16, u32)> = usable
                .iter()
                .map(|&(slot, weight)| (backends.backends[slot as usize].addr, slot, weight))
                .collect();
            maglev(&addresses)
        }
    }
}

/// The weighted round-robin sequence of `(slot, weight)`: each slot
/// `weight / gcd` times, interleaved by smooth weighted round robin
/// (the slot with the highest running credit goes next), at most
/// [`SCHEDULE_TABLE_SIZE`] long (longer sequences are cut, which shifts
/// the weights by at most one entry each).
pub fn sequence(backends: &[(u16, u32)]) -> ScheduleTable {
    let mut table = ScheduleTable::default();
    let weights: Vec<i64> = reduced(backends.iter().map(|&(_, w)| w))
        .map(i64::from)
        .collect();
    let total: i64 = weights.iter().sum();
    let len = (total as usize).min(SCHEDULE_TABLE_SIZE);
    let mut credit = vec![0i64; backends.len()];
    for entry in table.slots.iter_mut().take(len) {
        for (c, w) in credit.iter_mut().zip(&weights) {
            *c += w;
        }
        let best = (0..credit.len())
            .max_by_key(|&i| (credit[i], std::cmp::Reverse(i)))
            .expect("at least one backend when total > 0");
        credit[best] -= total;
        *entry = backends[best].0 + 1;
    }
    table.len = len as u32;
    table
}

/// The Maglev lookup table of `(address, slot, weight)`: every backend
/// walks its own permutation of the table (offset and skip from two
/// hashes of its address, so the table depends on the addresses, not
/// on the slots' order) and claims its next free entry, as many times
/// per round as its reduced weight, until the table is full.
pub fn maglev(backends: &[([u8; 16], u16, u32)]) -> ScheduleTable {
    let mut table = ScheduleTable::default();
    if backends.is_empty() {
        return table;
    }
    let m = SCHEDULE_TABLE_SIZE as u64;
    let mut order: Vec<&([u8; 16], u16, u32)> = backends.iter().collect();
    order.sort_by_key(|b| b.0);
    let turns: Vec<u32> = {
        let reduced: Vec<u32> = reduced(order.iter().map(|b| b.2)).collect();
        // Keep a round shorter than the table.
        let sum: u64 = reduced.iter().map(|&w| u64::from(w)).sum();
        let scale = sum.div_ceil(m / 4).max(1);
        reduced
            .iter()
            .map(|&w| (u64::from(w) / scale).max(1) as u32)
            .collect()
    };
    let walks: Vec<(u64, u64)> = order
        .iter()
        .map(|b| {
            let words = address_words(&b.0);
            let offset = flow_hash(&[words[0], words[1], 1]) % m;
            let skip = flow_hash(&[words[0], words[1], 2]) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; order.len()];
    let mut filled = 0;
    while filled < SCHEDULE_TABLE_SIZE {
        for (i, b) in order.iter().enumerate() {
            for _ in 0..turns[i] {
                if filled == SCHEDULE_TABLE_SIZE {
                    break;
                }
                let (offset, skip) = walks[i];
                loop {
                    let entry = ((offset + next[i] * skip) % m) as usize;
                    next[i] += 1;
                    if table.slots[entry] == 0 {
                        table.slots[entry] = b.1 + 1;
                        filled += 1;
                        break;
                    }
                }
            }
        }
    }
    table.len = SCHEDULE_TABLE_SIZE as u32;
    table
}

/// An address's 16 bytes as two native-endian words.
fn address_words(addr: &[u8; 16]) -> [u64; 2] {
    [
        u64::from_ne_bytes(addr[..8].try_into().expect("8 bytes")),
        u64::from_ne_bytes(addr[8..].try_into().expect("8 bytes")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u16) -> [u8; 16] {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[198, 51, 100, i as u8]);
        a
    }

    /// Share of entries per slot.
    fn shares(table: &ScheduleTable) -> Vec<usize> {
        let mut count = vec![0usize; 256];
        for &s in &table.slots[..table.len as usize] {
            count[usize::from(s - 1)] += 1;
        }
        count
    }

    #[test]
    fn weighted_round_robin_follows_the_weights() {
        let t = sequence(&[(0, 1000), (1, 500), (2, 800)]);
        assert_eq!(t.len, 23, "10 + 5 + 8 after the gcd");
        let s = shares(&t);
        assert_eq!(&s[..3], &[10, 5, 8]);
        // Interleaved, not 10 in a row.
        assert_ne!(&t.slots[..3], &[1, 1, 1]);
        let rr = sequence(&[(0, 1), (3, 1)]);
        assert_eq!(&rr.slots[..rr.len as usize], &[1, 4]);
    }

    #[test]
    fn maglev_shares_follow_the_weights() {
        let backends: Vec<_> = (0..10)
            .map(|i| (addr(i), i, if i < 5 { 2 } else { 1 }))
            .collect();
        let t = maglev(&backends);
        let s = shares(&t);
        let unit = SCHEDULE_TABLE_SIZE as f64 / 15.0;
        for (i, &n) in s.iter().take(10).enumerate() {
            let want = unit * if i < 5 { 2.0 } else { 1.0 };
            assert!(
                (n as f64 - want).abs() / want < 0.05,
                "slot {i}: {n} vs {want:.0}"
            );
        }
    }

    /// The disruption figures of docs/schedulers.md: with N = 10 equal
    /// backends, one leaving moves only its own entries plus under 5 % of
    /// the others'; one joining takes about 1/11 and moves little else.
    #[test]
    fn maglev_moves_little_when_a_backend_leaves_or_joins() {
        let all: Vec<_> = (0..11).map(|i| (addr(i), i, 1)).collect();
        let ten = maglev(&all[..10]);
        let nine = maglev(&all[..9]);
        let eleven = maglev(&all);
        let moved = |a: &ScheduleTable, b: &ScheduleTable, skip: u16| {
            a.slots
                .iter()
                .zip(&b.slots)
                .filter(|(x, y)| x != y && **x != skip + 1)
                .count() as f64
                / SCHEDULE_TABLE_SIZE as f64
        };
        // Leaving: entries of the others that change.
        let leave = moved(&ten, &nine, 9);
        assert!(
            leave < 0.05,
            "leave moved {leave:.3} besides the leaver's own"
        );
        // Joining: entries that change and did not go to the newcomer.
        let join = ten
            .slots
            .iter()
            .zip(&eleven.slots)
            .filter(|(x, y)| x != y && **y != 11)
            .count() as f64
            / SCHEDULE_TABLE_SIZE as f64;
        assert!(
            join < 0.05,
            "join moved {join:.3} besides the newcomer's share"
        );
        let share = |t: &ScheduleTable, slot: u16| {
            t.slots.iter().filter(|&&s| s == slot + 1).count() as f64 / SCHEDULE_TABLE_SIZE as f64
        };
        eprintln!(
            "maglev, 10 equal backends: one leaving moves its own {:.4} and {leave:.4} of the \
             rest; one joining takes {:.4} and moves {join:.4} of the rest",
            share(&ten, 9),
            share(&eleven, 10)
        );
        // The table depends on addresses, not slot order.
        let mut shuffled = all[..10].to_vec();
        shuffled.reverse();
        assert_eq!(maglev(&shuffled), ten);
    }

    #[test]
    fn hashes_spread_and_repeat() {
        assert_eq!(flow_hash(&[1, 2]), flow_hash(&[1, 2]));
        assert_ne!(flow_hash(&[1, 2]), flow_hash(&[2, 1]));
        let mut buckets = [0u32; 16];
        for i in 0..16_000u64 {
            buckets[(flow_hash(&[i, 7]) % 16) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&n| (800..1200).contains(&n)),
            "{buckets:?}"
        );
    }
}
