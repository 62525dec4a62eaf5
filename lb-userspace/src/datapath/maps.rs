//! Typed handles on the data path's maps ([`Maps`]) and every read and
//! write the control plane makes through them: services and their backend
//! sets, scheduler trees, the connection tables and the per-CPU counters.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap, HashSet},
    io,
    net::SocketAddr,
    os::fd::{AsFd as _, AsRawFd as _},
};

use super::{
    flow_filter::FlowFilter,
    flow_set::{FlowSetKey, FlowSetTable},
};
use anyhow::{Context as _, anyhow, bail};
use aya::{
    Pod,
    maps::{
        Array, DevMapHash, HashMap, IterableMap as _, Map, MapData, MapError, PerCpuArray,
        PerCpuValues, RingBuf,
    },
};
use lb_common::{
    ANY_PORT, BACKEND_CONNS_MAP, BACKEND_STATS_MAP, BACKENDS_MAP, BackendConnSet, BackendSet,
    CONFIRMED4_MAP, CONFIRMED6_MAP, CONNTRACK4_MAP, CONNTRACK6_MAP, Counters, DEFAULT_MAX_FLOWS,
    DEFAULT_MAX_FLOWS_V6, EVENT_PENDING_REMOVED, FLOOD_GUARD_MAP, FLOOD_UNTIL_MAP, FLOW_CACHE_SETS,
    FLOW_CHANGES_MAP, FLOW_EVENTS_MAP, FLOW_FILTER_MAP, FLOW_FILTER_STATE_MAP, FloodGuard, Flow,
    FlowFilterLine, FlowFilterState, FlowKey, FlowKey4, FlowKey6, FlowSet4, FlowSet6, LAYOUT_MAP,
    LAYOUT_VERSION, LoadTree, MAX_BACKENDS, MAX_SERVICES, NIC_FILTER_ENTRIES, NIC_FILTER_MAP,
    NIC_STATS_MAP, NUM_FLOW_EVENTS, NUM_REASONS, NicCounters, NicFilter, PENDING4_MAP,
    PENDING6_MAP, PERSIST_MAP, PersistKey, PersistTemplate, REASON_FORWARDED, SCHEDULE_TABLES_MAP,
    SERVICE_PORTS_MAP, SERVICE_STATS_MAP, SERVICES_MAP, SYN_WINDOW_MAP, SYNC_ENABLED_MAP,
    SYNC_STATS_MAP, ScheduleTable, Service, ServiceKey, SynWindow, SyncCounters, TX_PORTS_MAP,
    VERDICT_STATS_MAP, VIPS_MAP, VipKey, WLC_TREE_MAP, backend_index, flow_event_index,
    nic_filter_index, pending_capacity, port_bit, protocol_name, wlc,
};

/// Every map the control plane reads or writes, in pin order (the names of
/// `MAP_LAYOUT`).
pub const MAP_NAMES: [&str; MAP_LAYOUT.len()] = {
    let mut names = [""; MAP_LAYOUT.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = MAP_LAYOUT[i].0;
        i += 1;
    }
    names
};

/// Every map the control plane reads or writes with its key and value
/// sizes, to recognise a pinned data path made by a build with another map
/// layout before adopting it.
pub(super) const MAP_LAYOUT: [(&str, usize, usize); 30] = [
    (LAYOUT_MAP, 4, 4),
    (NIC_FILTER_MAP, 4, size_of::<NicFilter>()),
    // The kernel's `struct bpf_devmap_val`: an ifindex and a program.
    (TX_PORTS_MAP, 4, 8),
    (NIC_STATS_MAP, 4, size_of::<NicCounters>()),
    (SERVICES_MAP, size_of::<ServiceKey>(), size_of::<Service>()),
    (BACKENDS_MAP, 4, size_of::<BackendSet>()),
    (BACKEND_CONNS_MAP, 4, size_of::<BackendConnSet>()),
    (WLC_TREE_MAP, 4, size_of::<LoadTree>()),
    (SCHEDULE_TABLES_MAP, 4, size_of::<ScheduleTable>()),
    (CONFIRMED4_MAP, 4, size_of::<FlowSet4>()),
    (CONFIRMED6_MAP, 4, size_of::<FlowSet6>()),
    (CONNTRACK4_MAP, size_of::<FlowKey4>(), size_of::<Flow>()),
    (CONNTRACK6_MAP, size_of::<FlowKey6>(), size_of::<Flow>()),
    (PENDING4_MAP, 4, size_of::<FlowSet4>()),
    (PENDING6_MAP, 4, size_of::<FlowSet6>()),
    (FLOW_FILTER_MAP, 4, size_of::<FlowFilterLine>()),
    (FLOW_FILTER_STATE_MAP, 4, size_of::<FlowFilterState>()),
    (SERVICE_PORTS_MAP, 4, 4),
    (VIPS_MAP, size_of::<VipKey>(), 4),
    (VERDICT_STATS_MAP, 4, size_of::<Counters>()),
    (SERVICE_STATS_MAP, 4, size_of::<Counters>()),
    (BACKEND_STATS_MAP, 4, size_of::<Counters>()),
    (FLOW_EVENTS_MAP, 4, 8),
    (SYNC_ENABLED_MAP, 4, 4),
    // A ring buffer has neither keys nor values.
    (FLOW_CHANGES_MAP, 0, 0),
    (SYNC_STATS_MAP, 4, size_of::<SyncCounters>()),
    (FLOOD_GUARD_MAP, 4, size_of::<FloodGuard>()),
    (FLOOD_UNTIL_MAP, 4, 8),
    (SYN_WINDOW_MAP, 4, size_of::<SynWindow>()),
    (
        PERSIST_MAP,
        size_of::<PersistKey>(),
        size_of::<PersistTemplate>(),
    ),
];

/// How many flows each of the four flow tables holds: each family's
/// connection table (`max_flows`, `max_flows_v6`) and pending table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowCapacity {
    /// Capacity of the IPv4 connection table's overflow hash
    /// (`CONNTRACK4`); its sets (`CONFIRMED4`) hold
    /// `lb_common::confirmed_set_capacity` of it.
    pub ipv4: u32,
    /// Capacity of the IPv6 connection table's overflow hash
    /// (`CONNTRACK6`), as `ipv4`.
    pub ipv6: u32,
    /// Capacity of the IPv4 pending table (`PENDING4`).
    pub pending_ipv4: u32,
    /// Capacity of the IPv6 pending table (`PENDING6`).
    pub pending_ipv6: u32,
}

impl FlowCapacity {
    /// Flows the two connection tables are sized for (`max_flows`,
    /// `max_flows_v6`; their sets and overflow hashes can hold more): what
    /// the flow filter is sized for (its confirmed marks; the pending
    /// marks are a third as many).
    pub const fn confirmed(&self) -> u64 {
        self.ipv4 as u64 + self.ipv6 as u64
    }

    /// Connection tables of `ipv4` and `ipv6` flows, with the pending
    /// tables lb sizes beside them (`lb_common::pending_capacity`).
    pub const fn with_pending_tables(ipv4: u32, ipv6: u32) -> Self {
        Self {
            ipv4,
            ipv6,
            pending_ipv4: pending_capacity(ipv4),
            pending_ipv6: pending_capacity(ipv6),
        }
    }
}

impl Default for FlowCapacity {
    /// `lb_common::DEFAULT_MAX_FLOWS` IPv4 and `DEFAULT_MAX_FLOWS_V6` IPv6
    /// flows, and their pending tables.
    fn default() -> Self {
        Self::with_pending_tables(DEFAULT_MAX_FLOWS, DEFAULT_MAX_FLOWS_V6)
    }
}

/// Typed handles on the data path's maps (the `lb_common` crate doc lists every map).
pub struct Maps {
    /// The layout stamp: [`LAYOUT_VERSION`] at index 0.
    pub layout: Array<MapData, u32>,
    /// The destination MACs each director NIC accepts, and its name.
    pub nic_filter: Array<MapData, NicFilter>,
    /// The NICs frames may be redirected to (ifindex -> ifindex).
    pub tx_ports: DevMapHash<MapData>,
    /// Per-CPU counters per NIC (`lb_common::nic_filter_index`).
    pub nic_stats: PerCpuArray<MapData, NicCounters>,
    /// (VIP, port, protocol) -> service id.
    pub services: HashMap<MapData, ServiceKey, Service>,
    /// Service id -> its backends.
    pub backends: Array<MapData, BackendSet>,
    /// Service id -> active/inactive counts per backend.
    pub backend_conns: Array<MapData, BackendConnSet>,
    /// Service id -> the scheduler's tournament tree of its backends.
    pub wlc_tree: Array<MapData, LoadTree>,
    /// Service id -> the table of its `rr`, `wrr`, `sh` or `mh` scheduler.
    pub schedule_tables: Array<MapData, ScheduleTable>,
    /// The IPv4 connection table's sets: confirmed flows (sets of flows in
    /// an array, mapped).
    pub confirmed4: FlowSetTable<FlowKey4>,
    /// The IPv6 connection table's sets, as `confirmed4`.
    pub confirmed6: FlowSetTable<FlowKey6>,
    /// The IPv4 connection table's overflow hash: the confirmed flows whose
    /// set was full.
    pub conntrack4: HashMap<MapData, FlowKey4, Flow>,
    /// The IPv6 connection table's overflow hash, as `conntrack4`.
    pub conntrack6: HashMap<MapData, FlowKey6, Flow>,
    /// The IPv4 pending table: half-open flows and the connection table's
    /// overflow (sets of flows in an array, mapped).
    pub pending4: FlowSetTable<FlowKey4>,
    /// The IPv6 pending table, as `pending4`.
    pub pending6: FlowSetTable<FlowKey6>,
    /// The flow filter: which flow keys the four tables may hold.
    pub flow_filter: FlowFilter,
    /// Destination port -> `PORT_*` bits of the protocols services use on it.
    pub service_ports: Array<MapData, u32>,
    /// VIP -> `PORT_*` bits of the protocols its services use.
    pub vips: HashMap<MapData, VipKey, u32>,
    /// Per-CPU counters per verdict reason.
    pub verdict_stats: PerCpuArray<MapData, Counters>,
    /// Per-CPU counters per service.
    pub service_stats: PerCpuArray<MapData, Counters>,
    /// Per-CPU counters per backend (`lb_common::backend_index`).
    pub backend_stats: PerCpuArray<MapData, Counters>,
    /// Per-CPU flow-table event counts (`lb_common::flow_event_index`).
    pub flow_events: PerCpuArray<MapData, u64>,
    /// Persistence templates: (service, masked client) -> backend slot.
    pub persist: HashMap<MapData, PersistKey, PersistTemplate>,
    /// 1 at index 0 while connection sync is on.
    pub sync_enabled: Array<MapData, u32>,
    /// Flows confirmed in or changing state in the connection tables, for
    /// connection sync (`lb_common::FlowChange`s); `None` once taken by its
    /// one reader ([`Maps::take_flow_changes`]).
    flow_changes: Option<RingBuf<MapData>>,
    /// Connection sync's counters (index 0).
    pub sync_stats: Array<MapData, SyncCounters>,
    /// The SYN-flood guard's setting (index 0).
    pub flood_guard: Array<MapData, FloodGuard>,
    /// Until when the director is in flood mode (index 0: coarse monotonic
    /// ns; 0: never was).
    pub flood_until: Array<MapData, u64>,
    /// Each CPU's SYN count in its current window (index 0).
    pub syn_window: PerCpuArray<MapData, SynWindow>,
    /// Flows removed from the IPv4 and IPv6 pending tables since the last
    /// [`Maps::record_pending_removals`].
    pending_removed: [u64; 2],
    /// What this `lb` wrote to `services` (or found there when adopting):
    /// service id -> its value and its keys, one per port it covers.
    written: StdHashMap<u32, (Service, Vec<ServiceKey>)>,
}

/// A service found in the maps: its value, its keys (one per port it
/// covers, by port) and its backend set.
#[derive(Clone, Debug)]
pub struct InstalledService {
    /// Its value (id, flags, persistence).
    pub service: Service,
    /// Its keys in `SERVICES`, sorted by port: the first is the one it is
    /// known by.
    pub keys: Vec<ServiceKey>,
    /// Its backend set.
    pub backends: BackendSet,
}

impl Maps {
    /// Builds typed handles from a map source (`take(name)` yields the map).
    pub(super) fn from_source(
        mut take: impl FnMut(&str) -> anyhow::Result<Map>,
    ) -> anyhow::Result<Self> {
        fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
            take: &mut impl FnMut(&str) -> anyhow::Result<Map>,
            name: &str,
        ) -> anyhow::Result<T> {
            T::try_from(take(name)?).with_context(|| format!("map {name} has an unexpected type"))
        }
        Ok(Self {
            layout: typed(&mut take, LAYOUT_MAP)?,
            nic_filter: typed(&mut take, NIC_FILTER_MAP)?,
            tx_ports: typed(&mut take, TX_PORTS_MAP)?,
            nic_stats: typed(&mut take, NIC_STATS_MAP)?,
            services: typed(&mut take, SERVICES_MAP)?,
            backends: typed(&mut take, BACKENDS_MAP)?,
            backend_conns: typed(&mut take, BACKEND_CONNS_MAP)?,
            wlc_tree: typed(&mut take, WLC_TREE_MAP)?,
            schedule_tables: typed(&mut take, SCHEDULE_TABLES_MAP)?,
            confirmed4: FlowSetTable::new(take(CONFIRMED4_MAP)?, CONFIRMED4_MAP)?,
            confirmed6: FlowSetTable::new(take(CONFIRMED6_MAP)?, CONFIRMED6_MAP)?,
            conntrack4: typed(&mut take, CONNTRACK4_MAP)?,
            conntrack6: typed(&mut take, CONNTRACK6_MAP)?,
            pending4: FlowSetTable::new(take(PENDING4_MAP)?, PENDING4_MAP)?,
            pending6: FlowSetTable::new(take(PENDING6_MAP)?, PENDING6_MAP)?,
            flow_filter: FlowFilter::new(
                typed(&mut take, FLOW_FILTER_MAP)?,
                typed(&mut take, FLOW_FILTER_STATE_MAP)?,
            )?,
            service_ports: typed(&mut take, SERVICE_PORTS_MAP)?,
            vips: typed(&mut take, VIPS_MAP)?,
            verdict_stats: typed(&mut take, VERDICT_STATS_MAP)?,
            service_stats: typed(&mut take, SERVICE_STATS_MAP)?,
            backend_stats: typed(&mut take, BACKEND_STATS_MAP)?,
            flow_events: typed(&mut take, FLOW_EVENTS_MAP)?,
            persist: typed(&mut take, PERSIST_MAP)?,
            sync_enabled: typed(&mut take, SYNC_ENABLED_MAP)?,
            flow_changes: Some(typed(&mut take, FLOW_CHANGES_MAP)?),
            sync_stats: typed(&mut take, SYNC_STATS_MAP)?,
            flood_guard: typed(&mut take, FLOOD_GUARD_MAP)?,
            flood_until: typed(&mut take, FLOOD_UNTIL_MAP)?,
            syn_window: typed(&mut take, SYN_WINDOW_MAP)?,
            pending_removed: [0; 2],
            written: StdHashMap::new(),
        })
    }

    /// Sums a per-CPU counter over all CPUs.
    pub fn sum(values: &aya::maps::PerCpuValues<Counters>) -> Counters {
        values.iter().fold(Counters::default(), |acc, c| Counters {
            packets: acc.packets + c.packets,
            bytes: acc.bytes + c.bytes,
            new_conns: acc.new_conns + c.new_conns,
        })
    }

    /// Counters of one per-CPU stats array entry, summed over CPUs.
    pub fn counters(map: &PerCpuArray<MapData, Counters>, index: u32) -> anyhow::Result<Counters> {
        Ok(Self::sum(&map.get(&index, 0)?))
    }
}

impl Maps {
    /// Writes this build's [`LAYOUT_VERSION`] into the layout stamp (once,
    /// when the data path is loaded).
    pub(super) fn stamp_layout(&mut self) -> anyhow::Result<()> {
        self.layout
            .set(0, LAYOUT_VERSION, 0)
            .context("writing the layout stamp")
    }

    /// Makes NIC `filter.ifindex` accept only frames to its MAC and its
    /// VRRP virtual MACs. Returns the ifindex of another NIC whose entry
    /// this one replaced, if any (that NIC's frames are then not filtered).
    pub fn set_nic_filter(&mut self, filter: &NicFilter) -> anyhow::Result<Option<u32>> {
        let index = nic_filter_index(filter.ifindex);
        let before = array_get(&self.nic_filter, index)?;
        self.nic_filter
            .set(index, filter, 0)
            .with_context(|| format!("writing the MAC filter of ifindex {}", filter.ifindex))?;
        Ok((before.ifindex != 0 && before.ifindex != filter.ifindex).then_some(before.ifindex))
    }

    /// Lets the data path redirect frames to NIC `ifindex` (for backends
    /// on-link through it that other NICs receive frames for).
    pub fn set_tx_port(&mut self, ifindex: u32) -> anyhow::Result<()> {
        self.tx_ports
            .insert(ifindex, ifindex, None, 0)
            .with_context(|| format!("adding ifindex {ifindex} to {TX_PORTS_MAP}"))
    }

    /// Forgets the NIC named `name` (being detached): removes it from the
    /// redirect targets, empties its MAC filter entry and zeroes its
    /// counters. Returns its ifindex, or `None` when no entry names it.
    pub fn remove_nic(&mut self, name: &str) -> anyhow::Result<Option<u32>> {
        let mut found = None;
        for index in 0..NIC_FILTER_ENTRIES {
            let filter = array_get(&self.nic_filter, index)?;
            if filter.ifindex != 0 && filter.name() == name {
                found = Some((index, filter.ifindex));
                break;
            }
        }
        let Some((index, ifindex)) = found else {
            return Ok(None);
        };
        deleted_or_absent(self.tx_ports.remove(ifindex))
            .with_context(|| format!("removing ifindex {ifindex} from {TX_PORTS_MAP}"))?;
        self.nic_filter
            .set(index, NicFilter::default(), 0)
            .with_context(|| format!("clearing the MAC filter of {name}"))?;
        zero_counters(&mut self.nic_stats, index)
            .with_context(|| format!("zeroing the counters of {name}"))?;
        Ok(Some(ifindex))
    }

    /// Every NIC the control plane registered ([`Maps::set_nic_filter`]),
    /// with its counters summed over CPUs, by ifindex.
    pub fn nic_counters(&self) -> anyhow::Result<Vec<(NicFilter, NicCounters)>> {
        let mut nics = Vec::new();
        for index in 0..NIC_FILTER_ENTRIES {
            let filter = array_get(&self.nic_filter, index)?;
            if filter.ifindex == 0 {
                continue;
            }
            let counters = self
                .nic_stats
                .get(&index, 0)
                .with_context(|| format!("reading {NIC_STATS_MAP}[{index}]"))?
                .iter()
                .fold(NicCounters::default(), |sum, c| sum + *c);
            nics.push((filter, counters));
        }
        nics.sort_by_key(|(filter, _)| filter.ifindex);
        Ok(nics)
    }

    /// The layout version the data path was loaded with.
    pub fn layout_version(&self) -> anyhow::Result<u32> {
        array_get(&self.layout, 0)
    }
}

impl Maps {
    /// Installs (or replaces) service `id` under `key` with `backends`, and
    /// opens the service's port in the port prefilter and its protocol on
    /// its VIP in the VIP map.
    ///
    /// Backends are written before the service becomes visible, so the data
    /// path never finds a service without its backend set. The connection
    /// counters are left alone: flows already bound to the service keep
    /// counting (the sweeper reconciles them).
    ///
    /// The data path forwards a known flow by the service id and slot stored
    /// in the flow, without looking the service up: removing or renumbering
    /// a service must first empty its old backend set (an empty slot makes
    /// the flow's next packet look the service up again).
    ///
    /// A service covers one key per port (`keys`, all of one VIP, protocol
    /// and VLAN; port `ANY_PORT` for every port): each is opened in the port
    /// prefilter and written with the same value. Keys the service had
    /// before and no longer has are deleted; keys it keeps are written again
    /// only when its value changed.
    pub fn set_service(
        &mut self,
        keys: &[ServiceKey],
        service: Service,
        backends: &BackendSet,
    ) -> anyhow::Result<()> {
        let id = service.id;
        self.set_backends(id, backends)?;
        // wlc services keep a Maglev table too: flood mode picks by hash.
        self.schedule_tables
            .set(id, crate::schedule::table(service.scheduler, backends), 0)
            .with_context(|| {
                format!("writing the scheduler table of service {id} to {SCHEDULE_TABLES_MAP}")
            })?;
        let (old_value, old_keys) = self
            .written
            .remove(&id)
            .map_or((None, Vec::new()), |(value, keys)| (Some(value), keys));
        let kept: HashSet<&ServiceKey> = old_keys.iter().collect();
        for key in keys {
            if old_value == Some(service) && kept.contains(key) {
                continue;
            }
            // A service over every port opens every port of the prefilter.
            let ports = match key.port {
                ANY_PORT => 0..=u16::MAX,
                port => port..=port,
            };
            for port in ports.map(u32::from) {
                let bits = self.service_ports.get(&port, 0)? | port_bit(key.proto);
                self.service_ports
                    .set(port, bits, 0)
                    .with_context(|| format!("opening port {port} in {SERVICE_PORTS_MAP}"))?;
            }
            self.open_vip(key, id)?;
            self.services
                .insert(*key, service, 0)
                .with_context(|| format!("writing service {id} to {SERVICES_MAP}"))?;
        }
        let new: HashSet<&ServiceKey> = keys.iter().collect();
        let stale: Vec<ServiceKey> = old_keys.into_iter().filter(|k| !new.contains(k)).collect();
        self.written.insert(id, (service, keys.to_vec()));
        self.delete_keys(id, &stale)
    }

    /// Adds the protocol of `key` (of service `id`) to its VIP in `VIPS`.
    fn open_vip(&mut self, key: &ServiceKey, id: u32) -> anyhow::Result<()> {
        let vip = VipKey::of(key);
        let bits = match self.vips.get(&vip, 0) {
            Ok(bits) => bits,
            Err(MapError::KeyNotFound) => 0,
            Err(e) => return Err(e).context(format!("reading {VIPS_MAP}")),
        };
        if bits & port_bit(key.proto) != 0 {
            return Ok(());
        }
        self.vips
            .insert(vip, bits | port_bit(key.proto), 0)
            .with_context(|| format!("writing the VIP of service {id} to {VIPS_MAP}"))
    }

    /// Deletes `keys` (of service `id`) from `SERVICES`, and their ports
    /// from the prefilter and their protocol from their VIP unless a key
    /// still written uses them.
    fn delete_keys(&mut self, id: u32, keys: &[ServiceKey]) -> anyhow::Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        for key in keys {
            deleted_or_absent(self.services.remove(key))
                .with_context(|| format!("deleting service {id}"))?;
        }
        let mut port_bits: StdHashMap<u16, u32> = StdHashMap::new();
        let mut vip_bits: StdHashMap<VipKey, u32> = StdHashMap::new();
        for key in self.written.values().flat_map(|(_, keys)| keys) {
            *port_bits.entry(key.port).or_default() |= port_bit(key.proto);
            *vip_bits.entry(VipKey::of(key)).or_default() |= port_bit(key.proto);
        }
        // The protocols of the services left over every port keep every
        // port open; a deleted every-port key closes all the others.
        let every = port_bits.get(&ANY_PORT).copied().unwrap_or(0);
        let ports: BTreeSet<u16> = if keys.iter().any(|k| k.port == ANY_PORT) {
            (0..=u16::MAX).collect()
        } else {
            keys.iter().map(|k| k.port).collect()
        };
        for port in ports {
            let bits = port_bits.get(&port).copied().unwrap_or(0) | every;
            self.service_ports.set(u32::from(port), bits, 0)?;
        }
        let vips: HashSet<VipKey> = keys.iter().map(VipKey::of).collect();
        for vip in vips {
            let written = match vip_bits.get(&vip) {
                None => deleted_or_absent(self.vips.remove(&vip)),
                Some(&bits) => self.vips.insert(vip, bits, 0),
            };
            written.with_context(|| format!("removing the VIP of service {id} from {VIPS_MAP}"))?;
        }
        Ok(())
    }

    /// Removes service `id`: empties its backend set first (so its known
    /// flows stop being forwarded), deletes its keys, closes their ports in
    /// the prefilter and their protocol on their VIP unless a service that
    /// remains still uses them, and zeroes its counters. The caller deletes
    /// its flows (`sweeper::forget_service`) before giving the id out again.
    pub fn remove_service(&mut self, id: u32) -> anyhow::Result<()> {
        self.set_backends(id, &BackendSet::default())?;
        let keys = self
            .written
            .remove(&id)
            .map(|(_, keys)| keys)
            .unwrap_or_default();
        self.delete_keys(id, &keys)?;
        self.backend_conns.set(id, BackendConnSet::default(), 0)?;
        // What the service forwarded stays in the `forwarded` verdict total.
        fold_counters(
            &self.service_stats,
            id,
            &mut self.verdict_stats,
            REASON_FORWARDED,
        )?;
        zero_counters(&mut self.service_stats, id)?;
        for slot in 0..MAX_BACKENDS as u32 {
            let index = backend_index(id, slot);
            fold_counters(
                &self.backend_stats,
                index,
                &mut self.verdict_stats,
                REASON_FORWARDED,
            )?;
            zero_counters(&mut self.backend_stats, index)?;
        }
        Ok(())
    }

    /// Zeroes the counters of backend `slot` of service `id` (a new backend
    /// takes the slot), keeping what it forwarded in the service's totals.
    pub fn reset_backend_stats(&mut self, id: u32, slot: u32) -> anyhow::Result<()> {
        let index = backend_index(id, slot);
        fold_counters(&self.backend_stats, index, &mut self.service_stats, id)?;
        zero_counters(&mut self.backend_stats, index)
    }

    /// Counters of service `id` (IPVS Conns, InPkts, InBytes), summed over
    /// CPUs: what its backends forwarded, including backends whose slots
    /// were given to others since.
    ///
    /// The data path counts each forwarded packet once, per backend
    /// (`BACKEND_STATS`); `SERVICE_STATS` holds only what earlier backends
    /// of the service forwarded ([`Maps::reset_backend_stats`] moves it there).
    pub fn service_counters(&self, id: u32) -> anyhow::Result<Counters> {
        let mut total = Self::counters(&self.service_stats, id)?;
        for slot in 0..MAX_BACKENDS as u32 {
            total = total + Self::counters(&self.backend_stats, backend_index(id, slot))?;
        }
        Ok(total)
    }

    /// The sum of [`Maps::service_counters`] over every installed service.
    /// A service entry with an id past the maps (never written by `lb`; the
    /// data path drops its packets as `drop_internal`) forwarded nothing.
    pub fn forwarded_by_services(&self) -> anyhow::Result<Counters> {
        let mut ids = BTreeSet::new();
        for entry in self.services.iter() {
            let (_, service) = entry?;
            if service.id < MAX_SERVICES {
                // A service over several ports has an entry per port.
                ids.insert(service.id);
            }
        }
        ids.into_iter().try_fold(Counters::default(), |total, id| {
            Ok(total + self.service_counters(id)?)
        })
    }

    /// Counters per verdict reason (`REASON_*`), summed over CPUs.
    ///
    /// The data path does not count forwarded packets under a verdict (they
    /// are counted per backend); `forwarded` is `forwarded_by_services` (see
    /// [`Maps::forwarded_by_services`]) plus what removed services had
    /// forwarded, which [`Maps::remove_service`] keeps in `VERDICT_STATS`.
    /// Verdict counters count no connections.
    pub fn verdict_counters(
        &self,
        forwarded_by_services: Counters,
    ) -> anyhow::Result<Vec<Counters>> {
        (0..NUM_REASONS)
            .map(|reason| {
                let counted = Self::counters(&self.verdict_stats, reason)?;
                Ok(if reason == REASON_FORWARDED {
                    Counters {
                        new_conns: 0,
                        ..counted + forwarded_by_services
                    }
                } else {
                    counted
                })
            })
            .collect()
    }

    /// Reads every service: its keys (one per port it covers, sorted), its
    /// value and its backend set (to adopt a running data path: from then
    /// on, [`Maps::set_service`] and [`Maps::remove_service`] know them).
    pub fn installed_services(&mut self) -> anyhow::Result<Vec<InstalledService>> {
        let found = self.services_by_id()?;
        self.written = found
            .iter()
            .map(|s| (s.service.id, (s.service, s.keys.clone())))
            .collect();
        Ok(found)
    }

    /// Every service in `SERVICES`, its keys grouped by id, by id.
    pub fn services_by_id(&self) -> anyhow::Result<Vec<InstalledService>> {
        let mut by_id: BTreeMap<u32, (Service, Vec<ServiceKey>)> = BTreeMap::new();
        for entry in self.services.iter() {
            let (key, service) = entry.context("reading the service map")?;
            by_id
                .entry(service.id)
                .or_insert_with(|| (service, Vec::new()))
                .1
                .push(key);
        }
        by_id
            .into_values()
            .map(|(service, mut keys)| {
                keys.sort_by_key(|k| k.port);
                Ok(InstalledService {
                    backends: array_get(&self.backends, service.id)?,
                    service,
                    keys,
                })
            })
            .collect()
    }

    /// Replaces the backend set of service `id` (weights, health, MACs) and
    /// rebuilds its scheduler tree to match.
    ///
    /// The only writer of [`BACKENDS_MAP`]. The data path takes a new flow's
    /// backend from the tree's root and its MAC from the set, so the tree
    /// must never name a backend the set it reads does not hold. The tree is
    /// written twice: first over the backends that may take flows in both
    /// the old and the new set (a backend that stops taking flows leaves the
    /// tree before the set changes), then, once the new set is in place,
    /// over the new set (a new backend joins only then). A packet that reads
    /// a tree while it is being rewritten may see a root whose weight is
    /// already 0; it refuses it (`drop_no_backend`, the client's SYN is
    /// retransmitted) rather than use it.
    pub fn set_backends(&mut self, id: u32, backends: &BackendSet) -> anyhow::Result<()> {
        let old = array_get(&self.backends, id)?;
        let conns = array_get(&self.backend_conns, id)?;
        let mut in_both = *backends;
        for (slot, backend) in in_both.backends.iter_mut().enumerate() {
            if old.scheduling_weight(slot as u32) == 0 {
                backend.weight = 0;
            }
        }
        self.rebuild_tree(id, &in_both, &conns)?;
        self.backends
            .set(id, backends, 0)
            .with_context(|| format!("writing backends of service {id} to {BACKENDS_MAP}"))?;
        self.rebuild_tree(id, backends, &conns)
    }

    /// Rebuilds the scheduler tree of service `id` for `backends` and the
    /// connection counters `conns`.
    pub fn rebuild_tree(
        &mut self,
        id: u32,
        backends: &BackendSet,
        conns: &BackendConnSet,
    ) -> anyhow::Result<()> {
        let mut tree = LoadTree::default();
        wlc::rebuild(&mut tree, backends, conns);
        self.wlc_tree
            .set(id, tree, 0)
            .with_context(|| format!("writing the tree of service {id} to {WLC_TREE_MAP}"))
    }
}

/// Which of its family's two tables holds a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowTable {
    /// The connection table (its sets `CONFIRMED4`/`CONFIRMED6` and its
    /// overflow hash `CONNTRACK4`/`CONNTRACK6`): confirmed flows.
    Confirmed,
    /// The pending table (`PENDING4`/`PENDING6`): half-open flows and the
    /// connection table's overflow.
    Pending,
}

/// Every flow of the overflow hash `map`, key by key (entries that vanish
/// mid-walk are skipped), its keys made a [`FlowKey`] by `family`.
fn hash_flows<K: Pod>(
    map: &HashMap<MapData, K, Flow>,
    family: fn(K) -> FlowKey,
) -> Vec<(FlowKey, Flow)> {
    map.iter()
        .filter_map(Result::ok)
        .map(|(key, flow)| (family(key), flow))
        .collect()
}

/// Every flow of the table of flow sets `table`, set by set, its keys made
/// a [`FlowKey`] by `family`.
fn set_flows<K: FlowSetKey>(
    table: &FlowSetTable<K>,
    family: fn(K) -> FlowKey,
) -> Vec<(FlowKey, Flow)> {
    let mut flows = vec![];
    table.for_each(|key, flow| flows.push((family(key), flow)));
    flows
}

/// The four flow tables (a connection table, of sets and an overflow hash,
/// and a pending table per family), behind one key type.
impl Maps {
    /// The flow under `key`, from the tables of its family, the connection
    /// table first, as the data path looks (`None`: no such flow).
    pub fn flow(&self, key: &FlowKey) -> anyhow::Result<Option<Flow>> {
        Ok(self.flow_in(key)?.map(|(_, flow)| flow))
    }

    /// The flow under `key` and the table that holds it.
    pub fn flow_in(&self, key: &FlowKey) -> anyhow::Result<Option<(FlowTable, Flow)>> {
        let in_set = match key {
            FlowKey::V4(k) => self.confirmed4.get(k),
            FlowKey::V6(k) => self.confirmed6.get(k),
        };
        if let Some(flow) = in_set {
            return Ok(Some((FlowTable::Confirmed, flow)));
        }
        let confirmed = match key {
            FlowKey::V4(k) => self.conntrack4.get(k, 0),
            FlowKey::V6(k) => self.conntrack6.get(k, 0),
        };
        match confirmed {
            Ok(flow) => return Ok(Some((FlowTable::Confirmed, flow))),
            Err(MapError::KeyNotFound) => {}
            Err(e) => {
                return Err(e).with_context(|| format!("looking up flow {}", describe_flow(key)));
            }
        }
        let pending = match key {
            FlowKey::V4(k) => self.pending4.get(k),
            FlowKey::V6(k) => self.pending6.get(k),
        };
        Ok(pending.map(|flow| (FlowTable::Pending, flow)))
    }

    /// Calls `each` for every flow of the four tables (the connection
    /// tables' sets and overflow hashes, then the pending tables; IPv4
    /// before IPv6), reading the overflow hashes with
    /// `BPF_MAP_LOOKUP_BATCH`, [`LOOKUP_BATCH`] entries a system call, and
    /// the sets through their mappings. The kernel copies a hash bucket by
    /// bucket and never starts over, so a flow that stays in its table for
    /// the whole walk is seen exactly once; one added, removed or moved
    /// meanwhile may be seen or not (or twice, when the data path confirms
    /// it between its two tables).
    pub fn for_each_flow(&self, mut each: impl FnMut(FlowKey, Flow)) -> anyhow::Result<()> {
        self.for_each_flow_in_batches(LOOKUP_BATCH, |_, key, flow| each(key, flow))
    }

    /// [`Maps::for_each_flow`] with (at first) `batch` entries a system
    /// call, saying which table each flow is in.
    pub fn for_each_flow_in_batches(
        &self,
        batch: usize,
        mut each: impl FnMut(FlowTable, FlowKey, Flow),
    ) -> anyhow::Result<()> {
        self.confirmed4
            .for_each(|key, flow| each(FlowTable::Confirmed, FlowKey::V4(key), flow));
        self.confirmed6
            .for_each(|key, flow| each(FlowTable::Confirmed, FlowKey::V6(key), flow));
        lookup_batched(self.conntrack4.map(), batch, |key, flow| {
            each(FlowTable::Confirmed, FlowKey::V4(key), flow)
        })
        .with_context(|| format!("reading {CONNTRACK4_MAP} in batches"))?;
        lookup_batched(self.conntrack6.map(), batch, |key, flow| {
            each(FlowTable::Confirmed, FlowKey::V6(key), flow)
        })
        .with_context(|| format!("reading {CONNTRACK6_MAP} in batches"))?;
        self.pending4
            .for_each(|key, flow| each(FlowTable::Pending, FlowKey::V4(key), flow));
        self.pending6
            .for_each(|key, flow| each(FlowTable::Pending, FlowKey::V6(key), flow));
        Ok(())
    }

    /// Every flow of the four tables, IPv4 first: the overflow hashes key
    /// by key (two system calls a flow), skipping entries that vanish
    /// mid-walk, the sets set by set. The walk does not freeze
    /// the tables: a flow may be missed, or seen twice when the entry the
    /// walk stands on is deleted and the kernel starts over; the control
    /// plane reads them with [`Maps::for_each_flow`] instead, and tests use
    /// this as an independent reference.
    pub fn flows(&self) -> impl Iterator<Item = (FlowKey, Flow)> + '_ {
        [
            set_flows(&self.confirmed4, FlowKey::V4),
            hash_flows(&self.conntrack4, FlowKey::V4),
            set_flows(&self.pending4, FlowKey::V4),
            set_flows(&self.confirmed6, FlowKey::V6),
            hash_flows(&self.conntrack6, FlowKey::V6),
            set_flows(&self.pending6, FlowKey::V6),
        ]
        .into_iter()
        .flatten()
    }

    /// Deletes the flow under `key` from whichever table of its family holds
    /// it; whether it was there. Failing to delete is treated as absence:
    /// the data path may have evicted, moved, refreshed or re-created the
    /// flow meanwhile (a pending flow is only removed as it was read), and
    /// the next sweep sees it again. A removal from a pending table is
    /// counted once [`Maps::record_pending_removals`] runs.
    pub fn remove_flow(&mut self, key: &FlowKey) -> bool {
        let (confirmed, pending) = match key {
            FlowKey::V4(k) => (
                self.confirmed4.remove(k) || self.conntrack4.remove(k).is_ok(),
                self.pending4.remove(k),
            ),
            FlowKey::V6(k) => (
                self.confirmed6.remove(k) || self.conntrack6.remove(k).is_ok(),
                self.pending6.remove(k),
            ),
        };
        if pending {
            self.pending_removed[usize::from(matches!(key, FlowKey::V6(_)))] += 1;
        }
        confirmed || pending
    }

    /// Adds the pending flows [`Maps::remove_flow`] removed since the last
    /// call to the `EVENT_PENDING_REMOVED` counters (so that evictions,
    /// derived from them, are not overstated).
    pub fn record_pending_removals(&mut self) -> anyhow::Result<()> {
        for (ipv6, removed) in [
            (false, self.pending_removed[0]),
            (true, self.pending_removed[1]),
        ] {
            if removed == 0 {
                continue;
            }
            let index = flow_event_index(ipv6, EVENT_PENDING_REMOVED);
            let mut values: Vec<u64> = self
                .flow_events
                .get(&index, 0)
                .with_context(|| format!("reading {FLOW_EVENTS_MAP}[{index}]"))?
                .iter()
                .copied()
                .collect();
            values[0] += removed;
            self.flow_events
                .set(index, PerCpuValues::try_from(values)?, 0)
                .with_context(|| format!("writing {FLOW_EVENTS_MAP}[{index}]"))?;
            self.pending_removed[usize::from(ipv6)] = 0;
        }
        Ok(())
    }

    /// The flow-table event counts (`lb_common::EVENT_*`) of the IPv4 or
    /// (`ipv6`) IPv6 tables, summed over CPUs.
    pub fn flow_events(&self, ipv6: bool) -> anyhow::Result<[u64; NUM_FLOW_EVENTS as usize]> {
        let mut events = [0; NUM_FLOW_EVENTS as usize];
        for (event, total) in (0..).zip(&mut events) {
            let index = flow_event_index(ipv6, event);
            *total = self
                .flow_events
                .get(&index, 0)
                .with_context(|| format!("reading {FLOW_EVENTS_MAP}[{index}]"))?
                .iter()
                .fold(0u64, |sum, count| sum.wrapping_add(*count));
        }
        Ok(events)
    }

    /// Writes (adds or replaces) the flow under `key` in the connection
    /// table of its family, as the data path would: where the table holds
    /// it, else in its set, else (a full set) in the overflow hash; and
    /// marks it in the flow filter. `flow.last_seen_ns` must not be 0 (an
    /// empty way's).
    pub fn insert_flow(&mut self, key: &FlowKey, flow: &Flow) -> anyhow::Result<()> {
        if flow.last_seen_ns == 0 {
            bail!("flow {} has last-seen time 0", describe_flow(key));
        }
        fn write<K: FlowSetKey + Pod>(
            sets: &FlowSetTable<K>,
            overflow: &mut HashMap<MapData, K, Flow>,
            key: &K,
            flow: &Flow,
        ) -> Result<(), MapError> {
            let in_overflow = match overflow.get(key, 0) {
                Ok(_) => true,
                Err(MapError::KeyNotFound) => false,
                Err(e) => return Err(e),
            };
            if in_overflow || !sets.insert(key, flow) {
                overflow.insert(key, flow, 0)?;
            }
            Ok(())
        }
        let written = match key {
            FlowKey::V4(k) => write(&self.confirmed4, &mut self.conntrack4, k, flow),
            FlowKey::V6(k) => write(&self.confirmed6, &mut self.conntrack6, k, flow),
        };
        written.with_context(|| format!("writing flow {}", describe_flow(key)))?;
        self.flow_filter.mark(key)
    }

    /// How many flows the four tables hold (a walk of their keys).
    pub fn flow_count(&self) -> usize {
        self.confirmed4.len()
            + self.confirmed6.len()
            + self.conntrack4.keys().count()
            + self.conntrack6.keys().count()
            + self.pending4.len()
            + self.pending6.len()
    }

    /// The flow-change ring, for its one reader (connection sync); `None`
    /// when taken before.
    pub fn take_flow_changes(&mut self) -> Option<RingBuf<MapData>> {
        self.flow_changes.take()
    }

    /// Turns the data path's writes to the flow-change ring on or off.
    pub fn set_sync_enabled(&mut self, on: bool) -> anyhow::Result<()> {
        self.sync_enabled
            .set(0, u32::from(on), 0)
            .with_context(|| format!("writing {SYNC_ENABLED_MAP}"))
    }

    /// Sets the SYN-flood guard: above `syn_rate` new TCP flows per second
    /// on one CPU, SYNs are scheduled by the hash without a table entry
    /// (`lb_common::flood`); 0 turns the guard off.
    pub fn set_flood_guard(&mut self, syn_rate: u32) -> anyhow::Result<()> {
        self.flood_guard
            .set(0, FloodGuard { syn_rate, _pad: 0 }, 0)
            .with_context(|| format!("writing {FLOOD_GUARD_MAP}"))
    }

    /// Until when the data path is in flood mode (the clock of
    /// [`monotonic_ns`]); 0 when it never was.
    pub fn flood_until(&self) -> anyhow::Result<u64> {
        self.flood_until
            .get(&0, 0)
            .with_context(|| format!("reading {FLOOD_UNTIL_MAP}"))
    }

    /// Capacity of the four flow tables, as the kernel created them.
    pub fn flow_capacity(&self) -> anyhow::Result<FlowCapacity> {
        Ok(FlowCapacity {
            ipv4: max_entries(self.conntrack4.map(), CONNTRACK4_MAP)?,
            ipv6: max_entries(self.conntrack6.map(), CONNTRACK6_MAP)?,
            pending_ipv4: self.pending4.capacity(),
            pending_ipv6: self.pending6.capacity(),
        })
    }
}

/// The persistence templates.
impl Maps {
    /// Calls `each` for every persistence template, read in batches (as
    /// [`Maps::for_each_flow`]).
    pub fn for_each_template(
        &self,
        each: impl FnMut(PersistKey, PersistTemplate),
    ) -> anyhow::Result<()> {
        lookup_batched(self.persist.map(), LOOKUP_BATCH, each)
            .with_context(|| format!("reading {PERSIST_MAP} in batches"))
    }

    /// Writes template `template` under `key`.
    pub fn set_template(
        &mut self,
        key: &PersistKey,
        template: &PersistTemplate,
    ) -> anyhow::Result<()> {
        self.persist.insert(key, template, 0).with_context(|| {
            format!(
                "writing a template of service {} to {PERSIST_MAP}",
                key.service_id
            )
        })
    }

    /// Deletes the template under `key`; whether it was there.
    pub fn remove_template(&mut self, key: &PersistKey) -> bool {
        self.persist.remove(key).is_ok()
    }
}

/// The size map `name` was created with.
fn max_entries(map: &MapData, name: &str) -> anyhow::Result<u32> {
    map.info()
        .map(|info| info.max_entries())
        .with_context(|| format!("reading the size of {name}"))
}

/// A flow as error messages name it: `tcp 192.0.2.10:40000 -> 192.0.2.200:80`.
fn describe_flow(key: &FlowKey) -> String {
    let client = SocketAddr::new(key.client(), key.client_port());
    let vip = SocketAddr::new(key.vip(), key.port());
    format!("{} {client} -> {vip}", protocol_name(key.proto()))
}

/// Adds every CPU's counters at `from` in `from_map` to the same CPU's
/// counters at `to` in `to_map`. Only the control plane writes `to`.
fn fold_counters(
    from_map: &PerCpuArray<MapData, Counters>,
    from: u32,
    to_map: &mut PerCpuArray<MapData, Counters>,
    to: u32,
) -> anyhow::Result<()> {
    let add = from_map
        .get(&from, 0)
        .with_context(|| format!("reading counters {from}"))?;
    let into = to_map
        .get(&to, 0)
        .with_context(|| format!("reading counters {to}"))?;
    let sums: Vec<Counters> = into.iter().zip(add.iter()).map(|(a, b)| *a + *b).collect();
    to_map
        .set(to, PerCpuValues::try_from(sums)?, 0)
        .with_context(|| format!("writing counters {to}"))
}

/// Entries of each flow cache: `FLOW_CACHE_SETS` for every possible CPU
/// (see `lb_common::flow_cache_index`).
pub fn flow_cache_sets() -> anyhow::Result<u32> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    u32::try_from(cpus)
        .ok()
        .and_then(|cpus| cpus.checked_mul(FLOW_CACHE_SETS))
        .ok_or_else(|| anyhow!("{cpus} possible CPUs: too many for the flow caches"))
}

/// Sets every CPU's counters at `index` to zero.
fn zero_counters<T: Pod + Default>(
    map: &mut PerCpuArray<MapData, T>,
    index: u32,
) -> anyhow::Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let zeros = PerCpuValues::try_from(vec![T::default(); cpus])?;
    map.set(index, zeros, 0)
        .with_context(|| format!("zeroing counters {index}"))
}

/// `result`, a map delete's, with a key that was not there counted as
/// deleted: aya reports that as the syscall's `ENOENT`, not as
/// `MapError::KeyNotFound` (which only lookups return).
fn deleted_or_absent(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// Reads one value of an array map (used for the large backend values).
pub fn array_get<V: Pod>(map: &Array<MapData, V>, index: u32) -> anyhow::Result<V> {
    map.get(&index, 0)
        .with_context(|| format!("reading entry {index}"))
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the data path's flow
/// timestamps (`bpf_ktime_get_coarse_ns()`, the same clock at tick resolution).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
/// `BPF_MAP_LOOKUP_BATCH`, the `bpf(2)` command that copies a map's
/// entries in batches (`linux/bpf.h`; Linux 5.6 and later).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries one `BPF_MAP_LOOKUP_BATCH` call may copy.
pub const LOOKUP_BATCH: usize = 4096;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Calls `each` for every entry of the hash map `map`, copied `batch` at
/// a time (see [`Maps::for_each_flow`]). The kernel copies whole buckets: a
/// bucket larger than the batch doubles the batch for the rest of the walk.
fn lookup_batched<K: Pod, V: Pod>(
    map: &MapData,
    batch: usize,
    mut each: impl FnMut(K, V),
) -> io::Result<()> {
    let mut batch = batch.max(1);
    // SAFETY: `Pod` types are plain integers and arrays: all zeroes is a value.
    let zero = || unsafe { (std::mem::zeroed::<K>(), std::mem::zeroed::<V>()) };
    let (mut keys, mut values) = (vec![zero().0; batch], vec![zero().1; batch]);
    // The kernel's position in a hash map: a bucket index.
    let (mut position, mut next) = (0u32, 0u32);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                (&raw const position) as u64
            },
            out_batch: (&raw mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: batch as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `attr` describes buffers of `batch` keys and values
        // of the map's own key and value types, and two u32 positions, all
        // alive across the call; the kernel writes at most `count` of each.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let error = (ret < 0).then(io::Error::last_os_error);
        let copied = (attr.count as usize).min(batch);
        for (key, value) in keys.iter().zip(&values).take(copied) {
            each(*key, *value);
        }
        if let Some(error) = error {
            match error.raw_os_error() {
                // The end of the map (this call may still have copied some).
                Some(libc::ENOENT) => return Ok(()),
                // The next bucket does not fit: the same position, a larger batch.
                Some(libc::ENOSPC) if copied == 0 && batch < u32::MAX as usize / 2 => {
                    batch *= 2;
                    keys.resize(batch, zero().0);
                    values.resize(batch, zero().1);
                    continue;
                }
                _ => return Err(error),
            }
        }
        position = next;
        first = false;
    }
}
