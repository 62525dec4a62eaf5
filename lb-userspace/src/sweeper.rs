//! The connection-table sweeper: expires idle flows by IPVS-style per-state
//! timeouts and rewrites every backend's active/inactive counters from what
//! the table really holds, so flows that expired or were evicted by the LRU
//! never leave counts that drift. Each service's scheduler tree is rebuilt
//! from the rewritten counters.
//!
//! The tables change while they are walked: the data path refreshes,
//! inserts and evicts flows. A walk reads them in batches of
//! `LOOKUP_BATCH` flows a system call, bucket by bucket, so it counts each
//! flow once (a key-by-key walk starts over when the key it stands on is
//! evicted), and a flow found idle is only deleted if it is still idle when
//! its turn comes (the data path may have refreshed it since).

use std::collections::HashMap as StdHashMap;

use anyhow::Context as _;
use lb_common::{
    BackendConnSet, Flow, FlowKey, MAX_BACKENDS,
    conn_state::{Timeouts, is_active},
};

use crate::datapath::maps::{Maps, array_get, monotonic_ns};

/// What one sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Flows removed because they were idle past their state's timeout.
    pub expired: usize,
    /// Flows left in the table.
    pub live: usize,
    /// Live flows per service id and backend slot (what the counters were
    /// set to).
    pub conns: StdHashMap<u32, BackendConnSet>,
}

/// Whether a flow last seen at `flow.last_seen_ns` has idled out at `now_ns`.
pub fn is_expired(flow: &Flow, now_ns: u64, timeouts: &Timeouts) -> bool {
    let idle_ns = now_ns.saturating_sub(flow.last_seen_ns);
    idle_ns
        > timeouts
            .for_state(u32::from(flow.state))
            .saturating_mul(1_000_000_000)
}

/// Deletes every flow of service `id` from both connection tables (the
/// service was removed, and its id may be given to another service);
/// returns how many there were.
pub fn forget_service(maps: &mut Maps, id: u32) -> anyhow::Result<usize> {
    let mut doomed = Vec::new();
    maps.for_each_flow(|key, flow| {
        if u32::from(flow.service_id) == id {
            doomed.push(key);
        }
    })?;
    for key in &doomed {
        maps.remove_flow(key);
    }
    Ok(doomed.len())
}

/// Tallies live flows per service id and backend slot.
#[derive(Default)]
struct Tally {
    per_service: StdHashMap<u32, BackendConnSet>,
}

impl Tally {
    fn add(&mut self, flow: &Flow) {
        let slot = flow.backend_slot as usize;
        if slot >= MAX_BACKENDS {
            return;
        }
        let conns = &mut self
            .per_service
            .entry(u32::from(flow.service_id))
            .or_default()
            .conns[slot];
        if is_active(u32::from(flow.state)) {
            conns.active += 1;
        } else {
            conns.inactive += 1;
        }
    }
}

/// One walk of both connection tables: the flows found idle past their
/// timeout, and the others tallied per service and slot.
#[derive(Default)]
pub struct Walk {
    /// Flows idle past their state's timeout when the walk saw them.
    pub idle: Vec<FlowKey>,
    tally: Tally,
    live: usize,
}

/// Walks both connection tables once, in batches (see
/// [`Maps::for_each_flow`]: each flow is counted once).
pub fn walk(maps: &Maps, timeouts: &Timeouts) -> anyhow::Result<Walk> {
    let now_ns = monotonic_ns();
    let mut walk = Walk::default();
    maps.for_each_flow(|key, flow| {
        if is_expired(&flow, now_ns, timeouts) {
            walk.idle.push(key);
        } else {
            walk.tally.add(&flow);
            walk.live += 1;
        }
    })?;
    Ok(walk)
}

/// Deletes the flows of `walk.idle` that are still idle now; the others
/// (refreshed by the data path since the walk) are tallied as live.
/// Returns how many were deleted.
pub fn expire(maps: &mut Maps, walk: &mut Walk, timeouts: &Timeouts) -> usize {
    let mut expired = 0;
    for key in std::mem::take(&mut walk.idle) {
        // Already gone (evicted, or expired by an earlier sweep) is fine.
        let Ok(Some(flow)) = maps.flow(&key) else {
            continue;
        };
        if is_expired(&flow, monotonic_ns(), timeouts) {
            if maps.remove_flow(&key) {
                expired += 1;
            }
        } else {
            walk.tally.add(&flow);
            walk.live += 1;
        }
    }
    expired
}

/// Expires idle flows of both connection tables, rewrites the counters of
/// `service_ids` (every service in use) from the flows that remain, and
/// rebuilds their scheduler trees.
pub fn sweep(
    maps: &mut Maps,
    service_ids: &[u32],
    timeouts: &Timeouts,
) -> anyhow::Result<SweepReport> {
    let mut walk = walk(maps, timeouts)?;
    let expired = expire(maps, &mut walk, timeouts);
    let mut tally = walk.tally;
    for &id in service_ids {
        let conns = tally.per_service.entry(id).or_default();
        maps.backend_conns
            .set(id, *conns, 0)
            .with_context(|| format!("writing connection counts of service {id}"))?;
        let backends = array_get(&maps.backends, id)?;
        maps.rebuild_tree(id, &backends, conns)?;
    }
    Ok(SweepReport {
        expired,
        live: walk.live,
        conns: tally.per_service,
    })
}

#[cfg(test)]
mod tests {
    use lb_common::conn_state::{STATE_CLOSE, STATE_ESTABLISHED, STATE_SYN_RECV, STATE_UDP};

    use super::*;

    const S: u64 = 1_000_000_000;

    fn flow(state: u32, last_seen_s: u64) -> Flow {
        Flow {
            last_seen_ns: last_seen_s * S,
            state: state as u16,
            ..Flow::default()
        }
    }

    #[test]
    fn flows_expire_by_their_state_timeout() {
        let t = Timeouts::IPVS;
        let now = 10_000 * S;
        assert!(!is_expired(&flow(STATE_ESTABLISHED, 10_000 - 900), now, &t));
        assert!(is_expired(&flow(STATE_ESTABLISHED, 10_000 - 901), now, &t));
        assert!(!is_expired(&flow(STATE_SYN_RECV, 10_000 - 60), now, &t));
        assert!(is_expired(&flow(STATE_SYN_RECV, 10_000 - 61), now, &t));
        assert!(is_expired(&flow(STATE_CLOSE, 10_000 - 11), now, &t));
        assert!(!is_expired(&flow(STATE_UDP, 10_000 - 299), now, &t));
        // A flow seen "after" now (clock read races the data path) is live.
        assert!(!is_expired(&flow(STATE_CLOSE, 10_001), now, &t));
    }

    #[test]
    fn tally_counts_active_and_inactive_per_slot() {
        let mut tally = Tally::default();
        let mut f = flow(STATE_ESTABLISHED, 0);
        f.service_id = 3;
        f.backend_slot = 2;
        tally.add(&f);
        tally.add(&f);
        f.state = STATE_SYN_RECV as u16;
        tally.add(&f);
        f.backend_slot = MAX_BACKENDS as u16; // corrupt slot: ignored
        tally.add(&f);
        let set = &tally.per_service[&3];
        assert_eq!(set.conns[2].active, 2);
        assert_eq!(set.conns[2].inactive, 1);
        assert_eq!(
            set.conns.iter().map(|c| c.active + c.inactive).sum::<u64>(),
            3
        );
    }
}
