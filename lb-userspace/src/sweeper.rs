//! The flow-table sweeper: expires idle flows by IPVS-style per-state
//! timeouts and corrects every backend's active/inactive counters by what
//! the tables really hold, so flows that expired, were evicted from a
//! pending table or were installed by connection sync never leave counts
//! that drift. Each service's scheduler tree is rebuilt from the corrected
//! counters.
//!
//! The data path keeps counting while a sweep walks the tables, so a sweep
//! never writes its tally over the counters: it reads the counters before
//! its walk, and adds the difference between its tally and them (the
//! drift) to the counters as they are when it writes them ([`corrected`]).
//! Flows opened or closed meanwhile stay counted: overwritten, they would
//! be lost until the next sweep, and wlc would send new flows to a
//! backend that only looks idle.
//!
//! Each walk also rebuilds the flow filter (`lb_common::flow_filter`), so
//! that the marks of flows that left the tables are cleared.
//!
//! A connection table under pressure (at least [`PRESSURE_PERCENT`] full)
//! sheds its silent flows early: a TCP flow whose handshake completed but
//! whose client never sent a byte is held to the `syn_recv` timeout, as a
//! half-open flow is. That is what a flood of spoofed fake handshakes
//! leaves behind; it cannot evict a confirmed flow (the table never
//! evicts), and this frees its room for new flows once the flood stops.
//!
//! `lb run` walks the tables off its event loop ([`collect`], on a thread
//! of its own) and only writes the tallied counters on it
//! ([`write_counts`]); it spaces sweeps of a large table so that they take
//! at most [`SWEEP_CPU_PERCENT`] of a CPU ([`pause_after`]).
//!
//! Persistence templates live, as in IPVS, while any flow of their client
//! lives and for their service's persistence timeout after: the sweeper
//! restarts the timeout of every template with a live flow (so a timeout
//! shorter than `sweep_interval` may lapse between two sweeps), expires the
//! others once it has passed, and drops one whose backend takes no new
//! flows (down, drained or removed), so that the client's next connection
//! is scheduled afresh.
//!
//! The tables change while they are walked: the data path refreshes,
//! inserts, moves and evicts flows. A walk reads them in batches of
//! `LOOKUP_BATCH` flows a system call, bucket by bucket, so it counts each
//! flow once (a key-by-key walk starts over when the key it stands on is
//! evicted), and a flow found idle is only deleted if it is still idle when
//! its turn comes (the data path may have refreshed it since).

use std::collections::{HashMap as StdHashMap, HashSet};

use anyhow::Context as _;
use lb_common::{
    BackendConnSet, FLOW_CARRIED_DATA, FilterKind, Flow, FlowKey, MAX_BACKENDS, MAX_SERVICES,
    PersistKey, PersistTemplate, Service, addr_key,
    conn_state::{STATE_ESTABLISHED, Timeouts, is_active},
    persist_key,
};

use crate::datapath::maps::{FlowTable, LOOKUP_BATCH, Maps, array_get, monotonic_ns};

/// A connection table holding at least this share of its capacity (in
/// percent) is under pressure: its silent flows expire early.
pub const PRESSURE_PERCENT: u64 = 75;

/// The sweeper takes at most this share of one CPU, in percent (see
/// [`pause_after`]): 4, a margin below the 5 % the project allows, for the
/// counter writes and a walk slower than the last.
pub const SWEEP_CPU_PERCENT: u32 = 4;

/// How long `lb run` waits after a sweep that took `took` before it starts
/// another (its `sweep_interval` permitting): sweeps of a large table are
/// spaced so that they take at most [`SWEEP_CPU_PERCENT`] of a CPU, and
/// idle flows of such a table expire that much later instead.
pub fn pause_after(took: std::time::Duration) -> std::time::Duration {
    took * (100 / SWEEP_CPU_PERCENT - 1)
}

/// What one sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Flows removed because they were idle past their state's timeout.
    pub expired: usize,
    /// Those flows, as they were when removed (connection sync tells the
    /// other directors).
    pub expired_flows: Vec<(FlowKey, Flow)>,
    /// Flows left in the tables.
    pub live: usize,
    /// Whether the IPv4 and the IPv6 connection table were under pressure
    /// (their silent flows expire early).
    pub pressure: [bool; 2],
    /// Persistence templates left.
    pub templates: usize,
    /// Live flows per service id and backend slot, as the walk tallied them.
    pub conns: StdHashMap<u32, BackendConnSet>,
    /// The counters of each swept service, read just before the walk: the
    /// tally less these is the drift [`write_counts`] corrects.
    pub counted_before: StdHashMap<u32, BackendConnSet>,
}

/// Whether a flow last seen at `flow.last_seen_ns` has idled out at
/// `now_ns`; with `pressure`, a silent flow (see [`is_silent`]) is held to
/// the `syn_recv` timeout.
pub fn is_expired(flow: &Flow, now_ns: u64, timeouts: &Timeouts, pressure: bool) -> bool {
    let mut timeout = timeouts.for_state(u32::from(flow.state));
    if pressure && is_silent(flow) {
        timeout = timeout.min(timeouts.syn_recv);
    }
    now_ns.saturating_sub(flow.last_seen_ns) > timeout.saturating_mul(1_000_000_000)
}

/// Whether `flow` is a TCP connection whose handshake completed but whose
/// client has not sent a byte of payload.
pub fn is_silent(flow: &Flow) -> bool {
    u32::from(flow.state) == STATE_ESTABLISHED && flow.flags & FLOW_CARRIED_DATA == 0
}

/// 0 for an IPv4 flow, 1 for IPv6: an index into per-family arrays.
fn family(key: &FlowKey) -> usize {
    usize::from(matches!(key, FlowKey::V6(_)))
}

/// Deletes every flow of service `id` from the flow tables (the service was
/// removed, and its id may be given to another service); returns how many
/// there were.
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
    maps.record_pending_removals()?;
    Ok(doomed.len())
}

/// Tallies live flows per service id and backend slot, in an array by
/// service id (a hash map lookup per flow was a fifth of a sweep).
struct Tally {
    per_service: Vec<Option<Box<BackendConnSet>>>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            per_service: (0..MAX_SERVICES).map(|_| None).collect(),
        }
    }
}

impl Tally {
    fn add(&mut self, flow: &Flow) {
        let slot = flow.backend_slot as usize;
        let Some(set) = self.per_service.get_mut(usize::from(flow.service_id)) else {
            return;
        };
        if slot >= MAX_BACKENDS {
            return;
        }
        let conns = &mut set.get_or_insert_with(Default::default).conns[slot];
        if is_active(u32::from(flow.state)) {
            conns.active += 1;
        } else {
            conns.inactive += 1;
        }
    }

    /// The counts of every service that has flows.
    fn into_map(self) -> StdHashMap<u32, BackendConnSet> {
        (0..)
            .zip(self.per_service)
            .filter_map(|(id, set)| set.map(|set| (id, *set)))
            .collect()
    }
}

/// One walk of the flow tables: the flows found idle past their timeout,
/// the others tallied per service and slot, and the persistence templates
/// whose client has a live flow.
#[derive(Default)]
pub struct Walk {
    /// The persistence templates with a live flow.
    pub templates_in_use: HashSet<PersistKey>,
    /// Flows idle past their timeout when the walk saw them.
    pub idle: Vec<FlowKey>,
    /// Whether the IPv4 and the IPv6 connection table is under pressure.
    pub pressure: [bool; 2],
    tally: Tally,
    live: usize,
}

/// Walks the flow tables once, in batches (see [`Maps::for_each_flow`]:
/// each flow is counted once), and rebuilds the flow filter from what it
/// finds (`lb_common::flow_filter`); `services` says which are persistent.
pub fn walk(maps: &mut Maps, services: &[Service], timeouts: &Timeouts) -> anyhow::Result<Walk> {
    // The client prefix of each persistent service, by id.
    let mut prefixes = vec![None; MAX_SERVICES as usize];
    for s in services.iter().filter(|s| s.persistence_timeout_s > 0) {
        if let Some(prefix) = prefixes.get_mut(s.id as usize) {
            *prefix = Some(s.persistence_prefix);
        }
    }
    let now_ns = monotonic_ns();
    let mut walk = Walk::default();
    // Silent flows idle past the `syn_recv` timeout: expired if their table
    // turns out to be under pressure, live otherwise.
    let mut silent = Vec::new();
    let mut confirmed = [0u64; 2];
    let rebuild = maps.flow_filter.begin_rebuild()?;
    maps.for_each_flow_in_batches(LOOKUP_BATCH, |table, key, flow| {
        // Idle flows too: the data path may refresh one before `expire`.
        let kind = match table {
            FlowTable::Confirmed => {
                confirmed[family(&key)] += 1;
                FilterKind::Confirmed
            }
            FlowTable::Pending => FilterKind::Pending,
        };
        maps.flow_filter.mark_next(&rebuild, &key, kind);
        if is_expired(&flow, now_ns, timeouts, false) {
            walk.idle.push(key);
        } else if is_expired(&flow, now_ns, timeouts, true) {
            silent.push((key, flow));
        } else {
            walk.tally.add(&flow);
            walk.live += 1;
            let id = u32::from(flow.service_id);
            if let Some(&Some(prefix)) = prefixes.get(id as usize) {
                let client = addr_key(key.client()).0;
                walk.templates_in_use
                    .insert(persist_key(client, prefix, id));
            }
        }
    })?;
    maps.flow_filter.finish_rebuild(rebuild)?;
    let capacity = maps.flow_capacity()?;
    for (pressure, (held, capacity)) in walk
        .pressure
        .iter_mut()
        .zip(confirmed.into_iter().zip([capacity.ipv4, capacity.ipv6]))
    {
        *pressure = held * 100 >= u64::from(capacity) * PRESSURE_PERCENT;
    }
    for (key, flow) in silent {
        if walk.pressure[family(&key)] {
            walk.idle.push(key);
        } else {
            walk.tally.add(&flow);
            walk.live += 1;
        }
    }
    Ok(walk)
}

/// Deletes the flows of `walk.idle` that are still idle now; the others
/// (refreshed by the data path since the walk) are tallied as live.
/// Returns the flows deleted.
pub fn expire(maps: &mut Maps, walk: &mut Walk, timeouts: &Timeouts) -> Vec<(FlowKey, Flow)> {
    let mut expired = Vec::new();
    for key in std::mem::take(&mut walk.idle) {
        // Already gone (evicted, or expired by an earlier sweep) is fine.
        let Ok(Some(flow)) = maps.flow(&key) else {
            continue;
        };
        if is_expired(&flow, monotonic_ns(), timeouts, walk.pressure[family(&key)]) {
            if maps.remove_flow(&key) {
                expired.push((key, flow));
            }
        } else {
            walk.tally.add(&flow);
            walk.live += 1;
        }
    }
    expired
}

/// Refreshes, expires and drops the persistence templates of `services`
/// (see the module doc) after `walk`; returns how many are left.
pub fn sweep_templates(
    maps: &mut Maps,
    services: &[Service],
    walk: &Walk,
) -> anyhow::Result<usize> {
    let mut persistent = StdHashMap::new();
    for s in services.iter().filter(|s| s.persistence_timeout_s > 0) {
        let timeout_ns = u64::from(s.persistence_timeout_s) * 1_000_000_000;
        persistent.insert(s.id, (timeout_ns, array_get(&maps.backends, s.id)?));
    }
    let mut templates = Vec::new();
    maps.for_each_template(|key, template| templates.push((key, template)))?;
    let now_ns = monotonic_ns();
    let mut left = 0;
    for (key, template) in templates {
        let in_use = walk.templates_in_use.contains(&key);
        let keep = persistent
            .get(&key.service_id)
            .is_some_and(|(timeout_ns, backends)| {
                (in_use || now_ns.saturating_sub(template.last_used_ns) <= *timeout_ns)
                    && backends.scheduling_weight(template.backend_slot) > 0
            });
        if !keep {
            maps.remove_template(&key);
            continue;
        }
        if in_use {
            let refreshed = PersistTemplate {
                last_used_ns: now_ns,
                ..template
            };
            maps.set_template(&key, &refreshed)?;
        }
        left += 1;
    }
    Ok(left)
}

/// Expires idle flows of the flow tables and persistence templates,
/// corrects the counters of `services` (every service in use) by the
/// flows that remain, and rebuilds their scheduler trees: [`collect`] then
/// [`write_counts`].
pub fn sweep(
    maps: &mut Maps,
    services: &[Service],
    timeouts: &Timeouts,
) -> anyhow::Result<SweepReport> {
    let report = collect(maps, services, timeouts)?;
    write_counts(maps, services, &report)?;
    Ok(report)
}

/// The part of a sweep that reads the whole tables (`lb run` runs it off
/// its event loop, on a handle of its own): walks them, expires idle flows
/// and persistence templates, and tallies the flows left; the counters are
/// not written yet ([`write_counts`]).
pub fn collect(
    maps: &mut Maps,
    services: &[Service],
    timeouts: &Timeouts,
) -> anyhow::Result<SweepReport> {
    let counted_before = services
        .iter()
        .map(|s| Ok((s.id, array_get(&maps.backend_conns, s.id)?)))
        .collect::<anyhow::Result<_>>()?;
    let mut walk = walk(maps, services, timeouts)?;
    let expired = expire(maps, &mut walk, timeouts);
    maps.record_pending_removals()?;
    let templates = sweep_templates(maps, services, &walk)?;
    Ok(SweepReport {
        expired: expired.len(),
        expired_flows: expired,
        live: walk.live,
        pressure: walk.pressure,
        templates,
        conns: walk.tally.into_map(),
        counted_before,
    })
}

/// Corrects the counters of `services` by the drift `report` found (see
/// [`corrected`]) and rebuilds their scheduler trees: a few map reads and
/// writes per service. A service the sweep did not walk for (added since)
/// keeps its counters.
pub fn write_counts(
    maps: &mut Maps,
    services: &[Service],
    report: &SweepReport,
) -> anyhow::Result<()> {
    for id in services.iter().map(|s| s.id) {
        let Some(before) = report.counted_before.get(&id) else {
            continue;
        };
        let tally = report.conns.get(&id).copied().unwrap_or_default();
        let now = array_get(&maps.backend_conns, id)?;
        let conns = corrected(&now, &tally, before);
        maps.backend_conns
            .set(id, conns, 0)
            .with_context(|| format!("writing connection counts of service {id}"))?;
        let backends = array_get(&maps.backends, id)?;
        maps.rebuild_tree(id, &backends, &conns)?;
    }
    Ok(())
}

/// The counters `now` corrected by a walk that tallied `tally` while they
/// read `before` when it began: `now + (tally - before)` per slot and
/// counter, never below zero. What the data path counted since `before`
/// stays; what the walk found missing or extra is put right. A flow opened
/// during the walk and seen by it is counted twice until the next sweep.
pub fn corrected(
    now: &BackendConnSet,
    tally: &BackendConnSet,
    before: &BackendConnSet,
) -> BackendConnSet {
    let fix = |now: u64, tally: u64, before: u64| {
        // Counters wrap as the data path's atomic adds do; a correction
        // that leaves a counter below zero leaves it at zero.
        let sum = now.wrapping_add(tally).wrapping_sub(before);
        if sum > i64::MAX as u64 { 0 } else { sum }
    };
    let mut out = BackendConnSet::default();
    for (slot, out) in out.conns.iter_mut().enumerate() {
        let (n, t, b) = (now.conns[slot], tally.conns[slot], before.conns[slot]);
        out.active = fix(n.active, t.active, b.active);
        out.inactive = fix(n.inactive, t.inactive, b.inactive);
    }
    out
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
        assert!(!is_expired(
            &flow(STATE_ESTABLISHED, 10_000 - 900),
            now,
            &t,
            false
        ));
        assert!(is_expired(
            &flow(STATE_ESTABLISHED, 10_000 - 901),
            now,
            &t,
            false
        ));
        assert!(!is_expired(
            &flow(STATE_SYN_RECV, 10_000 - 60),
            now,
            &t,
            false
        ));
        assert!(is_expired(
            &flow(STATE_SYN_RECV, 10_000 - 61),
            now,
            &t,
            false
        ));
        assert!(is_expired(&flow(STATE_CLOSE, 10_000 - 11), now, &t, false));
        assert!(!is_expired(&flow(STATE_UDP, 10_000 - 299), now, &t, false));
        // A flow seen "after" now (clock read races the data path) is live.
        assert!(!is_expired(&flow(STATE_CLOSE, 10_001), now, &t, false));
    }

    #[test]
    fn silent_flows_expire_early_only_under_pressure() {
        let t = Timeouts::IPVS;
        let now = 10_000 * S;
        let silent = flow(STATE_ESTABLISHED, 10_000 - 61);
        assert!(is_silent(&silent));
        assert!(!is_expired(&silent, now, &t, false));
        assert!(is_expired(&silent, now, &t, true));
        // Within the syn_recv timeout even under pressure.
        assert!(!is_expired(
            &flow(STATE_ESTABLISHED, 10_000 - 60),
            now,
            &t,
            true
        ));
        // A flow that carried data keeps the established timeout.
        let talked = Flow {
            flags: FLOW_CARRIED_DATA,
            ..silent
        };
        assert!(!is_silent(&talked));
        assert!(!is_expired(&talked, now, &t, true));
        // Half-open and closing flows keep their own (shorter) timeouts.
        assert!(!is_silent(&flow(STATE_SYN_RECV, 0)));
        assert!(is_expired(&flow(STATE_CLOSE, 10_000 - 11), now, &t, true));
    }

    fn conns(counts: &[(u64, u64)]) -> BackendConnSet {
        let mut set = BackendConnSet::default();
        for (c, &(active, inactive)) in set.conns.iter_mut().zip(counts) {
            c.active = active;
            c.inactive = inactive;
        }
        set
    }

    #[test]
    fn a_correction_keeps_what_the_data_path_counted_during_the_walk() {
        // Before the walk: 5 active on slot 0, 2 on slot 1. The walk found 4
        // and 2 (one flow of slot 0 expired or was evicted) and 3 inactive
        // on slot 2 (installed by sync). Meanwhile the data path opened 6
        // flows on slot 1 and one moved to active on slot 0.
        let before = conns(&[(5, 1), (2, 0), (0, 0)]);
        let tally = conns(&[(4, 1), (2, 0), (0, 3)]);
        let now = conns(&[(6, 0), (8, 0), (0, 0)]);
        assert_eq!(
            corrected(&now, &tally, &before),
            conns(&[(5, 0), (8, 0), (0, 3)])
        );
        // Nothing drifted: the counters stay as the data path has them.
        assert_eq!(corrected(&now, &before, &before), now);
        // A counter the data path had wrapped below zero comes back.
        let wrapped = conns(&[(u64::MAX, 0)]);
        assert_eq!(
            corrected(&wrapped, &conns(&[(1, 0)]), &conns(&[(0, 0)])),
            conns(&[(0, 0)])
        );
        // A correction never leaves a counter below zero.
        assert_eq!(
            corrected(&conns(&[(1, 0)]), &conns(&[(0, 0)]), &conns(&[(3, 0)])),
            conns(&[(0, 0)])
        );
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
        let set = tally.per_service[3].as_deref().unwrap();
        assert_eq!(set.conns[2].active, 2);
        assert_eq!(set.conns[2].inactive, 1);
        assert_eq!(
            set.conns.iter().map(|c| c.active + c.inactive).sum::<u64>(),
            3
        );
    }
}
