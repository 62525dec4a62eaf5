//! `lb stats`: per service and per backend counters read from the pinned
//! maps of a running director, like `ipvsadm -L -n --stats` (and `--rate`),
//! and what each director NIC forwarded.
//!
//! Services are named by [`ServiceNames`].

use std::{collections::HashMap, net::IpAddr, time::Duration};

use lb_common::{
    BACKEND_STATE_DOWN, BACKEND_STATE_EMPTY, BACKEND_STATE_REMOVED, BACKEND_STATE_STANDBY,
    BACKEND_STATE_UP, Counters, EVENT_HASHED_ACK, EVENT_PENDING_FAILED, EVENT_PENDING_OPENED,
    EVENT_PENDING_REMOVED, EVENT_PROMOTED, EVENT_STATELESS_SYN, EVENT_SYNC_LOST, EVENT_TABLE_FULL,
    FlowKey, NicCounters, NicFilter, SCHEDULER_MH, SCHEDULER_RR, SCHEDULER_SH, SCHEDULER_WRR,
    addr_from_key, backend_index, in_flood, picks_up_acks, protocol_name, reason_name, vlan_ids,
    vlan_path,
};
use serde::{Deserialize, Serialize};

use super::{
    ServiceNames,
    table::{Align, endpoint, write_aligned},
};
use crate::{
    config::{
        Ports,
        values::{format_mac, vlan_suffix},
    },
    datapath::{
        flow_filter::FilterOccupancy,
        maps::{FlowTable, LOOKUP_BATCH, Maps, array_get, monotonic_ns},
    },
    sync::SyncStats,
};

/// Everything `lb stats` shows.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Services, ordered by id.
    pub services: Vec<ServiceStats>,
    /// Frames per verdict reason, over all services.
    pub verdicts: Vec<VerdictStats>,
    /// How full the connection tables are.
    pub flows: FlowTables,
    /// How many of the flow filter's marks are set: near all of a kind,
    /// SYNs look in that kind's tables as if there were no filter.
    pub filter: FilterOccupancy,
    /// What each director NIC forwarded, by ifindex.
    pub nics: Vec<NicStats>,
    /// The SYN-flood guard: its rate and whether it acts now.
    pub flood: FloodStats,
    /// Connection sync's counters, while `lb run` syncs flows (`[sync]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncStats>,
    /// CLOCK_MONOTONIC (ns) when the counters were read, for rates.
    #[serde(skip)]
    pub read_at_ns: u64,
}

/// The flow tables of both families (`lb stats`' table line, `--json`'s
/// `flows`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTables {
    /// The IPv4 tables.
    pub ipv4: FlowTableStats,
    /// The IPv6 tables.
    pub ipv6: FlowTableStats,
}

/// One family's connection table (confirmed flows; it never evicts) and
/// pending table (half-open flows and the connection table's overflow;
/// sets that evict their least recently seen flow): occupancy, capacity, insert failures and evictions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTableStats {
    /// Flows in the connection table.
    pub flows: u64,
    /// Capacity of the connection table (`max_flows`, `max_flows_v6`).
    pub capacity: u32,
    /// Flows in the pending table.
    pub pending: u64,
    /// Capacity of the pending table.
    pub pending_capacity: u32,
    /// Confirmed flows the full connection table refused (they stayed in
    /// the pending table).
    pub insert_failed: u64,
    /// New flows not even the pending table could take (forwarded without
    /// a record).
    pub pending_insert_failed: u64,
    /// Flows the pending table evicted for newer ones (opened - confirmed -
    /// removed by lb - held now; exact while the tables are still, an
    /// estimate while the data path changes them during the count).
    pub evictions: u64,
    /// SYNs forwarded in flood mode without a table entry.
    pub stateless_syns: u64,
    /// ACKs of flows no table held, picked up by the hash during or just
    /// after flood mode and recorded (pending until the client's first
    /// payload).
    pub hashed_acks: u64,
}

/// The SYN-flood guard (`lb_common::flood`; `lb stats`' "Flood guard" line,
/// `--json`'s `flood`); its counters are per family in [`FlowTableStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloodStats {
    /// New TCP flows per second on one CPU that start flood mode
    /// (`syn_flood_rate`); 0: the guard is off.
    pub syn_flood_rate: u32,
    /// Whether the director is in flood mode now: new SYNs are forwarded
    /// by the hash, unrecorded.
    pub active: bool,
    /// Whether ACKs of unknown flows are picked up by the hash now (flood
    /// mode and the grace period after it).
    pub picking_up_acks: bool,
}

impl FloodStats {
    /// The guard's setting and state from the maps, at the data path's
    /// clock.
    pub fn read(maps: &Maps) -> anyhow::Result<Self> {
        let syn_flood_rate = array_get(&maps.flood_guard, 0)?.syn_rate;
        let until = maps.flood_until()?;
        let now = monotonic_ns();
        let on = syn_flood_rate != 0;
        Ok(Self {
            syn_flood_rate,
            active: on && in_flood(now, until),
            picking_up_acks: on && picks_up_acks(now, until),
        })
    }
}

impl FlowTables {
    /// Counts the flows of the four tables (in batches) and reads their
    /// sizes and event counters.
    pub fn read(maps: &Maps) -> anyhow::Result<Self> {
        let capacity = maps.flow_capacity()?;
        let mut tables = Self {
            ipv4: FlowTableStats {
                capacity: capacity.ipv4,
                pending_capacity: capacity.pending_ipv4,
                ..FlowTableStats::default()
            },
            ipv6: FlowTableStats {
                capacity: capacity.ipv6,
                pending_capacity: capacity.pending_ipv6,
                ..FlowTableStats::default()
            },
        };
        maps.for_each_flow_in_batches(LOOKUP_BATCH, |table, key, _| {
            let family = match key {
                FlowKey::V4(_) => &mut tables.ipv4,
                FlowKey::V6(_) => &mut tables.ipv6,
            };
            match table {
                FlowTable::Confirmed => family.flows += 1,
                FlowTable::Pending => family.pending += 1,
            }
        })?;
        for (ipv6, family) in [(false, &mut tables.ipv4), (true, &mut tables.ipv6)] {
            let events = maps.flow_events(ipv6)?;
            let event = |e: u32| events[e as usize];
            family.insert_failed = event(EVENT_TABLE_FULL);
            family.pending_insert_failed = event(EVENT_PENDING_FAILED);
            family.stateless_syns = event(EVENT_STATELESS_SYN);
            family.hashed_acks = event(EVENT_HASHED_ACK);
            family.evictions = event(EVENT_PENDING_OPENED)
                .saturating_sub(event(EVENT_PROMOTED))
                .saturating_sub(event(EVENT_PENDING_REMOVED))
                .saturating_sub(family.pending);
        }
        Ok(tables)
    }
}

/// What one director NIC forwarded: frames to backends, by the NIC they
/// arrived on (`in`) and the NIC they left through (`out`); bytes are
/// IP-layer bytes. A frame for a backend on-link through the NIC it arrived
/// on leaves through it again (`XDP_TX`); one for a backend behind another
/// NIC is redirected there, counted `out` of that NIC and `redirected` on
/// this one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicStats {
    /// The NIC's name.
    pub name: String,
    /// Its interface index (in the director's network namespace).
    pub ifindex: u32,
    /// Forwarded frames that arrived on it.
    pub in_pkts: u64,
    /// Their bytes.
    pub in_bytes: u64,
    /// Forwarded frames that left through it.
    pub out_pkts: u64,
    /// Their bytes.
    pub out_bytes: u64,
    /// Frames that arrived on it and were redirected out of another NIC.
    pub redirected_pkts: u64,
    /// Their bytes.
    pub redirected_bytes: u64,
}

impl NicStats {
    /// The NIC `filter` registers, with its counters `c`.
    fn new(filter: &NicFilter, c: &NicCounters) -> Self {
        Self {
            name: filter.name().to_owned(),
            ifindex: filter.ifindex,
            in_pkts: c.tx_packets.wrapping_add(c.redirected_out_packets),
            in_bytes: c.tx_bytes.wrapping_add(c.redirected_out_bytes),
            out_pkts: c.tx_packets.wrapping_add(c.redirected_in_packets),
            out_bytes: c.tx_bytes.wrapping_add(c.redirected_in_bytes),
            redirected_pkts: c.redirected_out_packets,
            redirected_bytes: c.redirected_out_bytes,
        }
    }
}

/// One virtual service.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceStats {
    /// Service id (index in the maps).
    pub id: u32,
    /// Name from the config, else `VIP:PORT/proto`.
    pub name: String,
    /// Virtual IP.
    pub vip: IpAddr,
    /// The port it is known by (its first; 0: every port).
    pub port: u16,
    /// Every port it covers, compactly (`2811,50000-51000`; `0`: every port).
    pub ports: String,
    /// "tcp" or "udp".
    pub protocol: &'static str,
    /// Its scheduler, as ipvsadm names it: `wlc`, `rr`, `wrr`, `sh`, `mh`.
    pub scheduler: &'static str,
    /// The VLAN ids of its frames, outermost first (none: untagged).
    pub vlan: Vec<u16>,
    /// Connections scheduled (IPVS Conns).
    pub conns: u64,
    /// Packets forwarded (InPkts).
    pub in_pkts: u64,
    /// IP-layer bytes forwarded (InBytes).
    pub in_bytes: u64,
    /// Flows in ESTABLISHED over all backends (ActiveConn).
    pub active_conns: u64,
    /// Flows in other states over all backends (InActConn).
    pub inactive_conns: u64,
    /// Persistence templates over all backends (IPVS PersistConn).
    pub persist_conns: u64,
    /// Rates between two readings (`lb stats --rate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rates>,
    /// The real servers.
    pub backends: Vec<BackendStats>,
}

/// One real server of a service.
#[derive(Clone, Debug, Serialize)]
pub struct BackendStats {
    /// Slot within the service.
    pub slot: u32,
    /// Real server address.
    pub address: IpAddr,
    /// MAC frames are sent to.
    pub mac: String,
    /// WLC weight.
    pub weight: u32,
    /// "up", "down" (health check failed, or MAC not resolved yet),
    /// "removed" (taken out of the config, flows finishing), or the raw
    /// state number.
    pub state: String,
    /// Flows in ESTABLISHED (ActiveConn).
    pub active_conns: u64,
    /// Flows in other states (InActConn).
    pub inactive_conns: u64,
    /// Persistence templates of clients bound to it (IPVS PersistConn).
    pub persist_conns: u64,
    /// Connections scheduled to it (Conns).
    pub conns: u64,
    /// Packets forwarded to it (InPkts).
    pub in_pkts: u64,
    /// IP-layer bytes forwarded to it (InBytes).
    pub in_bytes: u64,
    /// Rates between two readings (`lb stats --rate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rates>,
}

/// Per-second rates between two readings, as `ipvsadm -L --rate` shows
/// them (but a plain difference over the interval, not the kernel's
/// exponentially weighted estimator).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Rates {
    /// Connections scheduled per second (CPS).
    pub cps: u64,
    /// Packets forwarded per second (InPPS).
    pub in_pps: u64,
    /// IP-layer bytes forwarded per second (InBPS).
    pub in_bps: u64,
}

/// Frames that got one verdict reason.
#[derive(Clone, Debug, Serialize)]
pub struct VerdictStats {
    /// Reason name (`forwarded`, `pass_no_service`, `drop_malformed`, ...).
    pub reason: &'static str,
    /// Frames.
    pub packets: u64,
    /// IP-layer bytes.
    pub bytes: u64,
}

impl Snapshot {
    /// Reads every counter from the maps; services are named `VIP:PORT/proto`
    /// (see [`Snapshot::read_named`]).
    pub fn read(maps: &Maps) -> anyhow::Result<Self> {
        Self::read_named(maps, &ServiceNames::default())
    }

    /// Reads every counter from the maps, naming services from `names`.
    pub fn read_named(maps: &Maps, names: &ServiceNames) -> anyhow::Result<Self> {
        let mut templates: HashMap<(u32, u32), u64> = HashMap::new();
        maps.for_each_template(|key, template| {
            *templates
                .entry((key.service_id, template.backend_slot))
                .or_default() += 1;
        })?;
        let mut services = Vec::new();
        for installed in maps.services_by_id()? {
            let (key, service) = (installed.keys[0], installed.service);
            let totals = maps.service_counters(service.id)?;
            let set = array_get(&maps.backends, service.id)?;
            let conns = array_get(&maps.backend_conns, service.id)?;
            let mut backends = Vec::new();
            for (slot, b) in set.backends.iter().enumerate().take(set.len as usize) {
                if b.state == BACKEND_STATE_EMPTY {
                    continue;
                }
                let c =
                    Maps::counters(&maps.backend_stats, backend_index(service.id, slot as u32))?;
                backends.push(BackendStats {
                    slot: slot as u32,
                    address: addr_from_key(b.addr, key.family),
                    mac: format_mac(&b.mac),
                    weight: b.weight,
                    state: backend_state_name(b.state),
                    // Transiently wrapped counters (a decrement racing the
                    // sweeper's reset) show as zero.
                    active_conns: nonnegative(conns.conns[slot].active),
                    inactive_conns: nonnegative(conns.conns[slot].inactive),
                    persist_conns: templates
                        .get(&(service.id, slot as u32))
                        .copied()
                        .unwrap_or(0),
                    conns: c.new_conns,
                    in_pkts: c.packets,
                    in_bytes: c.bytes,
                    rate: None,
                });
            }
            let vip = addr_from_key(key.addr, key.family);
            services.push(ServiceStats {
                id: service.id,
                name: names.name(vip, key.port, key.proto, key.vlan),
                vip,
                port: key.port,
                ports: Ports::of_key_ports(installed.keys.iter().map(|k| k.port)).to_string(),
                protocol: protocol_name(key.proto),
                scheduler: scheduler_name(service.scheduler),
                vlan: vlan_ids(key.vlan).collect(),
                conns: totals.new_conns,
                in_pkts: totals.packets,
                in_bytes: totals.bytes,
                active_conns: backends.iter().map(|b| b.active_conns).sum(),
                inactive_conns: backends.iter().map(|b| b.inactive_conns).sum(),
                persist_conns: backends.iter().map(|b| b.persist_conns).sum(),
                rate: None,
                backends,
            });
        }
        services.sort_by_key(|s| s.id);
        let forwarded = services.iter().fold(Counters::default(), |sum, s| {
            sum + Counters {
                packets: s.in_pkts,
                bytes: s.in_bytes,
                new_conns: s.conns,
            }
        });
        let verdicts = maps
            .verdict_counters(forwarded)?
            .into_iter()
            .zip(0..)
            .map(|(c, reason)| VerdictStats {
                reason: reason_name(reason),
                packets: c.packets,
                bytes: c.bytes,
            })
            .collect();
        let nics = maps
            .nic_counters()?
            .iter()
            .map(|(filter, counters)| NicStats::new(filter, counters))
            .collect();
        Ok(Self {
            services,
            verdicts,
            flows: FlowTables::read(maps)?,
            filter: maps.flow_filter.occupancy()?,
            flood: FloodStats::read(maps)?,
            nics,
            sync: read_sync(maps)?,
            read_at_ns: monotonic_ns(),
        })
    }

    /// Fills in the rates of every service and backend from an `earlier`
    /// reading: the counter differences divided by the time between the two
    /// readings. A service or backend absent from `earlier` (or whose
    /// counters went down: a restarted director) gets zero rates.
    pub fn set_rates(&mut self, earlier: &Snapshot) {
        let elapsed_ns = self.read_at_ns.saturating_sub(earlier.read_at_ns).max(1);
        for s in &mut self.services {
            let before = earlier
                .services
                .iter()
                .find(|e| e.id == s.id && e.vip == s.vip && e.port == s.port && e.vlan == s.vlan);
            s.rate = Some(rates(
                (s.conns, s.in_pkts, s.in_bytes),
                before.map(|e| (e.conns, e.in_pkts, e.in_bytes)),
                elapsed_ns,
            ));
            for b in &mut s.backends {
                let before = before
                    .and_then(|e| {
                        e.backends
                            .iter()
                            .find(|eb| eb.slot == b.slot && eb.address == b.address)
                    })
                    .map(|eb| (eb.conns, eb.in_pkts, eb.in_bytes));
                b.rate = Some(rates((b.conns, b.in_pkts, b.in_bytes), before, elapsed_ns));
            }
        }
    }

    /// The ipvsadm-style table (with CPS, InPPS and InBPS columns when the
    /// rates are set).
    pub fn table(&self) -> String {
        use Align::{Left, Right};
        let with_rates = self.services.iter().any(|s| s.rate.is_some());
        let mut header = vec![
            ("Prot", Left),
            ("LocalAddress:Port / -> RemoteAddress:Port", Left),
            ("Name", Left),
            ("Weight", Right),
            ("Health", Left),
            ("ActiveConn", Right),
            ("InActConn", Right),
            ("Conns", Right),
            ("InPkts", Right),
            ("InBytes", Right),
        ];
        // As `ipvsadm -L --persistent-conn`, when some client has a template.
        let with_persistence = self.services.iter().any(|s| s.persist_conns > 0);
        if with_persistence {
            header.push(("PersistConn", Right));
        }
        if with_rates {
            header.extend([("CPS", Right), ("InPPS", Right), ("InBPS", Right)]);
        }
        let persist_cell = |count: u64| -> Vec<String> {
            if with_persistence {
                vec![count.to_string()]
            } else {
                Vec::new()
            }
        };
        let rate_cells = |rate: Option<Rates>| -> Vec<String> {
            match rate {
                Some(r) if with_rates => {
                    vec![
                        r.cps.to_string(),
                        r.in_pps.to_string(),
                        r.in_bps.to_string(),
                    ]
                }
                _ => Vec::new(),
            }
        };
        let mut rows: Vec<Vec<String>> = Vec::new();
        for s in &self.services {
            let mut row = vec![
                s.protocol.to_uppercase(),
                endpoint(s.vip, &s.ports) + &vlan_suffix(vlan_path(&s.vlan)),
                s.name.clone(),
                String::new(),
                String::new(),
                s.active_conns.to_string(),
                s.inactive_conns.to_string(),
                s.conns.to_string(),
                s.in_pkts.to_string(),
                s.in_bytes.to_string(),
            ];
            row.extend(persist_cell(s.persist_conns));
            row.extend(rate_cells(s.rate));
            rows.push(row);
            for b in &s.backends {
                let mut row = vec![
                    String::new(),
                    format!("  -> {}", endpoint(b.address, &s.ports)),
                    String::new(),
                    b.weight.to_string(),
                    b.state.clone(),
                    b.active_conns.to_string(),
                    b.inactive_conns.to_string(),
                    b.conns.to_string(),
                    b.in_pkts.to_string(),
                    b.in_bytes.to_string(),
                ];
                row.extend(persist_cell(b.persist_conns));
                row.extend(rate_cells(b.rate));
                rows.push(row);
            }
        }
        let mut out = Vec::new();
        write_aligned(&mut out, &header, &rows).expect("writing to a Vec cannot fail");

        out.extend_from_slice(b"\nFlow tables:\n");
        for (family, t) in [("IPv4", &self.flows.ipv4), ("IPv6", &self.flows.ipv6)] {
            out.extend_from_slice(
                format!(
                    "  {family}: {} of {} flows, {} of {} pending; {} insert failures \
                     (table full), {} unrecorded, {} pending evicted\n",
                    t.flows,
                    t.capacity,
                    t.pending,
                    t.pending_capacity,
                    t.insert_failed,
                    t.pending_insert_failed,
                    t.evictions
                )
                .as_bytes(),
            );
        }
        out.extend_from_slice(filter_line(&self.filter).as_bytes());
        out.extend_from_slice(flood_line(&self.flood, &self.flows).as_bytes());
        if let Some(sync) = &self.sync {
            out.extend_from_slice(sync_line(sync).as_bytes());
        }
        out.extend_from_slice(b"\nNICs (forwarded frames):\n");
        let nic_rows: Vec<Vec<String>> = self
            .nics
            .iter()
            .map(|n| {
                vec![
                    format!("  {}", n.name),
                    n.ifindex.to_string(),
                    n.in_pkts.to_string(),
                    n.in_bytes.to_string(),
                    n.out_pkts.to_string(),
                    n.out_bytes.to_string(),
                    n.redirected_pkts.to_string(),
                    n.redirected_bytes.to_string(),
                ]
            })
            .collect();
        write_aligned(
            &mut out,
            &[
                ("  NIC", Left),
                ("Ifindex", Right),
                ("InPkts", Right),
                ("InBytes", Right),
                ("OutPkts", Right),
                ("OutBytes", Right),
                ("RedirectedPkts", Right),
                ("RedirectedBytes", Right),
            ],
            &nic_rows,
        )
        .expect("writing to a Vec cannot fail");
        out.extend_from_slice(b"\nVerdicts (all NICs):\n");
        let verdict_rows: Vec<Vec<String>> = self
            .verdicts
            .iter()
            .map(|v| {
                vec![
                    format!("  {}", v.reason),
                    v.packets.to_string(),
                    v.bytes.to_string(),
                ]
            })
            .collect();
        write_aligned(
            &mut out,
            &[("  Reason", Left), ("Packets", Right), ("Bytes", Right)],
            &verdict_rows,
        )
        .expect("writing to a Vec cannot fail");
        String::from_utf8(out).expect("the table is UTF-8")
    }
}

/// Rates from the counters (conns, packets, bytes) `now` and `before`.
fn rates(now: (u64, u64, u64), before: Option<(u64, u64, u64)>, elapsed_ns: u64) -> Rates {
    let Some(before) = before else {
        return Rates::default();
    };
    let per_second = |now: u64, before: u64| -> u64 {
        let delta = u128::from(now.saturating_sub(before));
        let elapsed = u128::from(elapsed_ns);
        // Rounded to the nearest integer, as ipvsadm prints them.
        u64::try_from((delta * 1_000_000_000 + elapsed / 2) / elapsed).unwrap_or(u64::MAX)
    };
    Rates {
        cps: per_second(now.0, before.0),
        in_pps: per_second(now.1, before.1),
        in_bps: per_second(now.2, before.2),
    }
}

/// Parses `--interval`: `1s`, `500ms`, `2m` or plain seconds (`1.5`); 10 ms
/// to 1 hour.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 1s, 500ms, 2)"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?} (valid: ms, s, m)"
            ));
        }
    };
    if !(0.01..=3600.0).contains(&seconds) {
        return Err(format!("{text:?} is out of range (valid: 10ms to 1h)"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Name of a `BACKEND_STATE_*` value.
fn backend_state_name(state: u32) -> String {
    match state {
        BACKEND_STATE_UP => "up".to_owned(),
        BACKEND_STATE_DOWN => "down".to_owned(),
        BACKEND_STATE_REMOVED => "removed".to_owned(),
        BACKEND_STATE_STANDBY => "standby".to_owned(),
        other => other.to_string(),
    }
}

/// A counter that may transiently read as negative (wrapped) shows as zero.
fn nonnegative(raw: u64) -> u64 {
    if (raw as i64) < 0 { 0 } else { raw }
}

/// The ipvsadm name of `SCHEDULER_*` number `scheduler`.
fn scheduler_name(scheduler: u32) -> &'static str {
    match scheduler {
        SCHEDULER_RR => "rr",
        SCHEDULER_WRR => "wrr",
        SCHEDULER_SH => "sh",
        SCHEDULER_MH => "mh",
        _ => "wlc",
    }
}

/// The flow filter's line of `lb stats`: how many marks of each kind are
/// set in the generation SYNs read.
fn filter_line(f: &FilterOccupancy) -> String {
    format!(
        "  Flow filter: {} of {} confirmed marks set, {} of {} pending marks set\n",
        f.confirmed.set, f.confirmed.positions, f.pending.set, f.pending.positions
    )
}

/// The table's flood-guard line.
fn flood_line(f: &FloodStats, flows: &FlowTables) -> String {
    let counts = format!(
        "{} SYNs forwarded unrecorded, {} ACKs picked up",
        flows.ipv4.stateless_syns + flows.ipv6.stateless_syns,
        flows.ipv4.hashed_acks + flows.ipv6.hashed_acks
    );
    if f.syn_flood_rate == 0 {
        return format!("\nFlood guard: off (syn_flood_rate = 0); {counts}\n");
    }
    let now = if f.active {
        "IN FLOOD MODE (new SYNs by hash, unrecorded)"
    } else if f.picking_up_acks {
        "flood mode ended, picking up ACKs"
    } else {
        "idle"
    };
    format!(
        "\nFlood guard: above {} new TCP flows/s on one CPU; now {now}; {counts}\n",
        f.syn_flood_rate
    )
}

/// Connection sync's counters, if `lb run` syncs flows.
fn read_sync(maps: &Maps) -> anyhow::Result<Option<SyncStats>> {
    if array_get(&maps.sync_enabled, 0)? == 0 {
        return Ok(None);
    }
    let lost = maps.flow_events(false)?[EVENT_SYNC_LOST as usize]
        + maps.flow_events(true)?[EVENT_SYNC_LOST as usize];
    Ok(Some(SyncStats::new(&array_get(&maps.sync_stats, 0)?, lost)))
}

/// The table's sync line.
fn sync_line(s: &SyncStats) -> String {
    let ms = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v} ms"));
    format!(
        "\nSync: sent {} messages ({} flows); received {} ({} flows: {} installed, {} copies \
         expired, {} rejected); refused {} unauthenticated, {} replayed, {} malformed; tables \
         {} requested, {} sent; {} changes lost; lag {}, last message {} ago\n",
        s.messages_sent,
        s.flows_sent,
        s.messages_received,
        s.flows_received,
        s.flows_installed,
        s.flows_expired,
        s.flows_rejected,
        s.messages_rejected_auth,
        s.messages_rejected_replay,
        s.messages_rejected_malformed,
        s.tables_requested,
        s.tables_sent,
        s.changes_lost,
        ms(s.lag_ms),
        ms(s.last_received_ms_ago),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(slot: u32, address: &str, conns: u64, in_pkts: u64, in_bytes: u64) -> BackendStats {
        BackendStats {
            slot,
            address: address.parse().unwrap(),
            mac: "02:00:00:00:00:11".to_owned(),
            weight: 1000,
            state: "up".to_owned(),
            active_conns: conns,
            inactive_conns: 0,
            persist_conns: 0,
            conns,
            in_pkts,
            in_bytes,
            rate: None,
        }
    }

    fn snapshot(read_at_ns: u64, conns: u64, in_pkts: u64, in_bytes: u64) -> Snapshot {
        Snapshot {
            services: vec![ServiceStats {
                id: 0,
                name: "web".to_owned(),
                vip: "192.0.2.200".parse().unwrap(),
                port: 8080,
                ports: "8080".to_owned(),
                protocol: "tcp",
                scheduler: "wlc",
                vlan: Vec::new(),
                conns,
                in_pkts,
                in_bytes,
                active_conns: conns,
                inactive_conns: 0,
                persist_conns: 0,
                rate: None,
                backends: vec![
                    backend(0, "192.0.2.11", conns, in_pkts, in_bytes),
                    backend(1, "192.0.2.12", 0, 0, 0),
                ],
            }],
            verdicts: vec![VerdictStats {
                reason: "forwarded",
                packets: in_pkts,
                bytes: in_bytes,
            }],
            flows: FlowTables::default(),
            filter: FilterOccupancy::default(),
            flood: FloodStats {
                syn_flood_rate: 100_000,
                ..FloodStats::default()
            },
            nics: vec![NicStats {
                name: "eth0".to_owned(),
                ifindex: 2,
                in_pkts,
                in_bytes,
                out_pkts: in_pkts,
                out_bytes: in_bytes,
                ..NicStats::default()
            }],
            sync: None,
            read_at_ns,
        }
    }

    #[test]
    fn rates_are_differences_over_the_measured_interval() {
        const S: u64 = 1_000_000_000;
        let before = snapshot(10 * S, 100, 1_000, 60_000);
        let mut after = snapshot(12 * S, 130, 2_001, 120_000);
        after.set_rates(&before);
        let s = &after.services[0];
        assert_eq!(
            s.rate,
            Some(Rates {
                cps: 15,
                in_pps: 501, // 500.5 rounds up
                in_bps: 30_000,
            })
        );
        assert_eq!(s.backends[0].rate, s.rate);
        assert_eq!(s.backends[1].rate, Some(Rates::default()));

        // Counters that went down (a restarted director) and services that
        // were not there before give zero.
        let mut restarted = snapshot(13 * S, 1, 1, 1);
        restarted.set_rates(&after);
        assert_eq!(restarted.services[0].rate, Some(Rates::default()));
        let mut empty_before = snapshot(10 * S, 0, 0, 0);
        empty_before.services.clear();
        let mut new = snapshot(11 * S, 5, 5, 5);
        new.set_rates(&empty_before);
        assert_eq!(new.services[0].rate, Some(Rates::default()));
    }

    #[test]
    fn json_keeps_the_field_names_and_adds_name_and_rate() {
        let snap = snapshot(0, 3, 12, 720);
        let json = serde_json::to_value(&snap).unwrap();
        let s = &json["services"][0];
        for field in [
            "id", "name", "vip", "port", "protocol", "vlan", "conns", "in_pkts", "in_bytes",
            "backends",
        ] {
            assert!(s.get(field).is_some(), "service field {field}: {s}");
        }
        assert_eq!(s["vlan"], serde_json::json!([]));
        assert!(s.get("rate").is_none(), "no rate without --rate: {s}");
        let b = &s["backends"][0];
        for field in [
            "slot",
            "address",
            "mac",
            "weight",
            "state",
            "active_conns",
            "inactive_conns",
            "conns",
            "in_pkts",
            "in_bytes",
        ] {
            assert!(b.get(field).is_some(), "backend field {field}: {b}");
        }
        assert!(json.get("read_at_ns").is_none());
        let nic = &json["nics"][0];
        for field in [
            "name",
            "ifindex",
            "in_pkts",
            "in_bytes",
            "out_pkts",
            "out_bytes",
            "redirected_pkts",
            "redirected_bytes",
        ] {
            assert!(nic.get(field).is_some(), "NIC field {field}: {nic}");
        }
        let mut later = snapshot(1_000_000_000, 4, 14, 800);
        later.set_rates(&snap);
        let json = serde_json::to_value(&later).unwrap();
        assert_eq!(
            json["services"][0]["rate"],
            serde_json::json!({"cps": 1, "in_pps": 2, "in_bps": 80})
        );
        assert_eq!(
            json["services"][0]["backends"][0]["rate"],
            serde_json::json!({"cps": 1, "in_pps": 2, "in_bps": 80})
        );
    }

    #[test]
    fn table_columns_fit_their_content() {
        let table = snapshot(0, 30, 120, 6_480).table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[..4],
            [
                "Prot  LocalAddress:Port / -> RemoteAddress:Port  Name  Weight  Health  ActiveConn  InActConn  Conns  InPkts  InBytes",
                "TCP   192.0.2.200:8080                           web                           30          0     30     120     6480",
                "        -> 192.0.2.11:8080                               1000  up              30          0     30     120     6480",
                "        -> 192.0.2.12:8080                               1000  up               0          0      0       0        0",
            ]
        );
        assert_eq!(
            lines[4..],
            [
                "",
                "Flow tables:",
                "  IPv4: 0 of 0 flows, 0 of 0 pending; 0 insert failures (table full), 0 unrecorded, 0 pending evicted",
                "  IPv6: 0 of 0 flows, 0 of 0 pending; 0 insert failures (table full), 0 unrecorded, 0 pending evicted",
                "  Flow filter: 0 of 0 confirmed marks set, 0 of 0 pending marks set",
                "",
                "Flood guard: above 100000 new TCP flows/s on one CPU; now idle; 0 SYNs forwarded unrecorded, 0 ACKs picked up",
                "",
                "NICs (forwarded frames):",
                "  NIC   Ifindex  InPkts  InBytes  OutPkts  OutBytes  RedirectedPkts  RedirectedBytes",
                "  eth0        2     120     6480      120      6480               0                0",
                "",
                "Verdicts (all NICs):",
                "  Reason     Packets  Bytes",
                "  forwarded      120   6480",
            ]
        );
        let mut later = snapshot(2_000_000_000, 32, 140, 7_680);
        later.set_rates(&snapshot(0, 30, 120, 6_480));
        let table = later.table();
        let first = table.lines().next().unwrap();
        assert!(first.ends_with("InBytes  CPS  InPPS  InBPS"), "{first}");
        let service = table.lines().nth(1).unwrap();
        assert!(service.ends_with("7680    1     10    600"), "{service}");
    }

    #[test]
    fn services_on_a_vlan_show_it_after_their_address() {
        let mut tagged = snapshot(0, 30, 120, 6_480);
        tagged.services[0].vlan = vec![4001];
        let table = tagged.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[..3],
            [
                "Prot  LocalAddress:Port / -> RemoteAddress:Port  Name  Weight  Health  ActiveConn  InActConn  Conns  InPkts  InBytes",
                "TCP   192.0.2.200:8080 vlan 4001                 web                           30          0     30     120     6480",
                "        -> 192.0.2.11:8080                               1000  up              30          0     30     120     6480",
            ]
        );
        tagged.services[0].vlan = vec![100, 4001];
        let json = serde_json::to_value(&tagged).unwrap();
        assert_eq!(json["services"][0]["vlan"], serde_json::json!([100, 4001]));
        let table = tagged.table();
        assert!(
            table
                .lines()
                .nth(1)
                .unwrap()
                .starts_with("TCP   192.0.2.200:8080 vlan 100.4001             web  "),
            "{table}"
        );
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_interval("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_interval("1h").unwrap_err().contains("unit"));
        assert!(parse_interval("0").unwrap_err().contains("range"));
        assert!(
            parse_interval("fast")
                .unwrap_err()
                .contains("not a duration")
        );
    }
}
