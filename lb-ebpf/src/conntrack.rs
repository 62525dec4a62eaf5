//! The flow tables: an existing flow keeps its backend and advances its TCP
//! state; a new flow gets a backend by weighted least-connection.
//!
//! Each address family has two tables. A new TCP flow (a SYN) opens in the
//! pending table, sets of two flows in an array (`lb_common::flow_set`:
//! one cache line written, no kernel hash insert); the client's ACK that
//! completes the handshake confirms it and moves it to the connection
//! table, which never evicts: a flood of spoofed SYNs or fake handshakes
//! can only evict pending flows and fill free room, never push out a
//! confirmed one. The connection table is sets of two flows too
//! (`CONFIRMED4`/`CONFIRMED6`: a lookup reads one cache line), a way
//! claimed with a compare-and-swap ([`claim`]), and a plain hash
//! (`CONNTRACK4`/`CONNTRACK6`) for the flows whose set is full. UDP flows
//! and flows a `sloppy_tcp` service picks up mid-way are confirmed at once.
//! A confirmed flow the full connection table refuses (its set and the
//! overflow hash both full) stays pending (counted) and tries again with
//! the client's first payload; an ACK picked up in flood mode
//! (`crate::flood`) waits in the pending table for that payload. Every
//! flow that enters a table is marked in the flow filter
//! ([`filter::mark`]), with a mark of that table's kind: a SYN skips each
//! table whose mark it finds clear, and a flood of new flows, which sets
//! pending marks only, leaves the confirmed ones useful.
//! The per-backend active/inactive counters follow every state change, with
//! atomic adds because several CPUs schedule flows of one service at once,
//! and each change replays the backend's matches in the service's scheduler
//! tree (`lb_common::wlc`).
//!
//! While the control plane syncs flows with other directors, every flow that
//! enters a connection table and every state change there is also written
//! to the `FLOW_CHANGES` ring ([`announce`]). A flow installed by sync
//! carries `FLOW_SYNCED` until this director forwards a packet of it.
//!
//! In front of the tables sits a per-CPU flow cache: a four-way
//! set-associative copy of the flows this CPU forwarded recently, in the
//! CPU's own block of sets of `FLOW_CACHE4`/`FLOW_CACHE6`, indexed by a
//! multiplicative hash of the key (`lb_common::FlowCacheSet` says which way
//! a flow takes, and why a flow of the current period keeps its way). A
//! packet whose flow is cached from the current cache period and whose
//! state does not change is forwarded from the cache alone, without
//! the kernel's hash lookup or a clock read. Everything else (a state change,
//! a new period, a miss) goes to the table, which stays the one source of
//! truth: its state, its last-seen time (refreshed at least once per period
//! for every active flow) and the connection counters. A cached flow whose
//! backend slot was emptied is not used, exactly as for the table.

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};

use aya_ebpf::helpers::bpf_get_smp_processor_id;
use lb_common::{
    AlignedServiceKey, BACKEND_STATE_EMPTY, BACKEND_STATE_UP, Backend, BackendConnSet,
    BackendConns, BackendSet, CachedFlow4, CachedFlow6, EVENT_HASHED_ACK, EVENT_PENDING_FAILED,
    EVENT_PENDING_OPENED, EVENT_PROMOTED, EVENT_STATELESS_SYN, EVENT_SYNC_LOST, EVENT_TABLE_FULL,
    FLOW_CACHE_WAYS, FLOW_CARRIED_DATA, FLOW_SET_WAYS, FLOW_SYNCED, FilterKind, FilterPosition,
    Flow, FlowCacheSet, FlowChange, FlowFilterState, FlowKey4, FlowKey6, FlowSet, LoadTree,
    MAX_BACKENDS, PROTO_TCP, PersistTemplate, REASON_NO_BACKEND, Service,
    conn_state::{STATE_ESTABLISHED, STATE_NONE, STATE_UDP, is_active, tcp_next_state},
    flow_cache_index, flow_cache_set, flow_event_index, flow_hash, flow_set_index, persist_key,
    wlc,
};

use crate::{
    clock::Tick,
    filter::{self, MayHold},
    flood::{self, Opening},
    maps::{
        BACKEND_CONNS, BACKENDS, CONFIRMED4, CONFIRMED6, CONNTRACK4, CONNTRACK6, FLOW_CACHE4,
        FLOW_CACHE6, FLOW_CHANGES, PENDING4, PENDING6, PERSIST, SYNC_ENABLED, SetTable, WLC_TREE,
        set_count,
    },
    parse::Packet,
    schedule, stats,
    verdict::Verdict,
};

/// Insert whether or not the key exists (`BPF_ANY`).
const BPF_ANY: u64 = 0;
/// Insert only if the key is absent (`BPF_NOEXIST`): into a full plain hash
/// this fails instead of replacing anything.
const BPF_NOEXIST: u64 = 1;

/// Which of its family's two tables holds a flow.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// The connection table (its sets `CONFIRMED4`/`CONFIRMED6`, then its
    /// overflow hash `CONNTRACK4`/`CONNTRACK6`): confirmed flows.
    Confirmed,
    /// The pending table (`PENDING4`/`PENDING6`): half-open flows, and
    /// flows the full connection table refused.
    Pending,
}

impl Table {
    /// The kind of the flow filter's marks of this table.
    #[inline(always)]
    const fn filter_kind(self) -> FilterKind {
        match self {
            Self::Confirmed => FilterKind::Confirmed,
            Self::Pending => FilterKind::Pending,
        }
    }
}

/// Keeps a way index provably inside a flow set for the verifier.
#[inline(always)]
const fn set_way(way: usize) -> usize {
    way & (FLOW_SET_WAYS - 1)
}

/// Records new confirmed flow `flow` of `key` in the first empty way of
/// `set` (its set of the connection table's sets); whether it took one.
/// The way is claimed by swapping its last-seen time from 0 (empty) to the
/// flow's with a compare-and-swap: two CPUs confirming two flows of one
/// set at once never take the same way (the one that loses goes to the
/// overflow hash), and a confirmed flow is never overwritten by another.
#[inline(always)]
fn claim<K: TableKey>(set: &mut FlowSet<K>, key: &K, flow: &Flow) -> bool {
    let way = set_way(usize::from(set.ways[0].is_used()));
    let entry = &mut set.ways[way];
    // SAFETY: a field of a map value, 8-byte aligned. The control plane's
    // expiry swaps the same word from a flow's time to 0; an empty way's is
    // 0 and stays so until claimed.
    let (_, claimed) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            &raw mut entry.flow.last_seen_ns,
            0,
            flow.last_seen_ns,
        )
    };
    if claimed {
        // The way is this flow's: its other fields, then its key (a reader
        // on another CPU matches the key only once it is written; until
        // then it sees another key).
        entry.flow = *flow;
        entry.key = *key;
    }
    claimed
}

/// A flow key, tied to the tables of its address family.
pub trait TableKey: Copy + 'static {
    /// Whether the key is an IPv6 one (which event counters it uses).
    const IPV6: bool;
    /// The flow's entry in `table`, if it has one there (in the connection
    /// table: in its set, else in the overflow hash).
    fn lookup(&self, table: Table) -> Option<*mut Flow>;
    /// Records `flow` under this key in `table`, with `BPF_ANY` (over the
    /// flow's entry where it has one) or `BPF_NOEXIST` (a new flow: in the
    /// connection table, an empty way of its set ([`claim`]), else the
    /// overflow hash).
    fn insert(&self, table: Table, flow: &Flow, mode: u64) -> Result<(), i32>;
    /// Deletes the key from the pending table; whether it was there.
    fn remove_pending(&self) -> bool;
    /// The key's set of the connection table's sets or of the pending
    /// table (see `lb_common::flow_set`).
    fn set(&self, table: SetTable) -> Option<&'static mut FlowSet<Self>>;
    /// The client's address in 16 bytes (IPv4 in the first 4).
    fn client_addr(&self) -> [u8; 16];
    /// A hash of the flow's 5-tuple and VLAN (`mh`).
    fn flow_hash(&self) -> u64;
    /// A hash of the client's address (`sh`).
    fn client_hash(&self) -> u64;
    /// The service the flow is addressed to.
    fn service_key(&self) -> AlignedServiceKey;
    /// A flow-cache set of this key's family.
    type CacheSet: 'static;
    /// This CPU's flow-cache set for the flow (see [`own_set`]): found once
    /// per packet, then probed and refilled through the reference.
    fn cache_set(&self) -> Option<&'static mut Self::CacheSet>;
    /// The flow's copy in `set` (its [`TableKey::cache_set`]), if it was
    /// cached in `period`: its service id and its binding (slot not yet
    /// bounded, state as cached).
    fn cached(&self, set: &Self::CacheSet, period: u64) -> Option<(u32, Binding)>;
    /// Caches the flow of service `service_id` bound as `binding` in `set`
    /// (its [`TableKey::cache_set`]) in `period`, if the set has a way for it.
    fn cache(&self, set: &mut Self::CacheSet, service_id: u32, binding: &Binding, period: u64);
    /// Where this key's marks are in generation `generation` of the flow
    /// filter (`crate::filter`) that `state` describes.
    fn filter_position(&self, state: &FlowFilterState, generation: u32) -> FilterPosition;
}

/// Implements [`TableKey`] for the key type of one address family, with its
/// connection table and flow cache (the two families differ only in types).
macro_rules! table_key {
    (
        $key:ty,
        $ipv6:literal,
        $sets:ident,
        $overflow:ident,
        $pending:ident,
        $cache:ident,
        $entry:ident
    ) => {
        impl TableKey for $key {
            const IPV6: bool = $ipv6;
            type CacheSet = FlowCacheSet<$entry>;

            #[inline(always)]
            fn lookup(&self, table: Table) -> Option<*mut Flow> {
                match table {
                    Table::Confirmed => {
                        if let Some(set) = self.set(SetTable::Confirmed)
                            && let Some(way) = set.find(|key| key.same_as(self))
                        {
                            return Some(&raw mut set.ways[set_way(way)].flow);
                        }
                        $overflow.get_ptr_mut(self)
                    }
                    Table::Pending => {
                        let set = self.set(SetTable::Pending)?;
                        let way = set_way(set.find(|key| key.same_as(self))?);
                        Some(&raw mut set.ways[way].flow)
                    }
                }
            }

            #[inline(always)]
            fn insert(&self, table: Table, flow: &Flow, mode: u64) -> Result<(), i32> {
                match table {
                    Table::Confirmed => {
                        if let Some(set) = self.set(SetTable::Confirmed) {
                            if mode == BPF_ANY {
                                if let Some(way) = set.find(|key| key.same_as(self)) {
                                    set.ways[set_way(way)].flow = *flow;
                                    return Ok(());
                                }
                            } else if claim(set, self, flow) {
                                return Ok(());
                            }
                        }
                        $overflow.insert(self, flow, mode)
                    }
                    Table::Pending => {
                        // No set: the loader sized the table to none (never
                        // by lb's own loader).
                        let set = self.set(SetTable::Pending).ok_or(-1)?;
                        let way = set_way(set.way_for(|key| key.same_as(self)));
                        set.ways[way].key = *self;
                        set.ways[way].flow = *flow;
                        Ok(())
                    }
                }
            }

            #[inline(always)]
            fn remove_pending(&self) -> bool {
                let Some(set) = self.set(SetTable::Pending) else {
                    return false;
                };
                let Some(way) = set.find(|key| key.same_as(self)) else {
                    return false;
                };
                let last_seen: *mut u64 = &raw mut set.ways[set_way(way)].flow.last_seen_ns;
                // SAFETY: a field of a map value. The atomic add of 0 is a
                // locked instruction before the store that empties the way
                // (see `filter::mark`); the control plane's expiry swaps
                // the same word, and a swap between the two is harmless.
                unsafe {
                    atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(last_seen, 0);
                    last_seen.write_volatile(0);
                }
                true
            }

            #[inline(always)]
            fn filter_position(&self, state: &FlowFilterState, generation: u32) -> FilterPosition {
                state.position(&self.words(), generation)
            }

            #[inline(always)]
            fn client_addr(&self) -> [u8; 16] {
                let mut addr = [0; 16];
                addr[..self.src_addr.len()].copy_from_slice(&self.src_addr);
                addr
            }

            #[inline(always)]
            fn flow_hash(&self) -> u64 {
                flow_hash(&self.words())
            }

            #[inline(always)]
            fn client_hash(&self) -> u64 {
                // SAFETY: 16 bytes as two words; every bit pattern is valid.
                let words: [u64; 2] = unsafe { core::mem::transmute(self.client_addr()) };
                flow_hash(&words)
            }

            #[inline(always)]
            fn service_key(&self) -> AlignedServiceKey {
                <$key>::service_key(self)
            }

            #[inline(always)]
            fn set(&self, table: SetTable) -> Option<&'static mut FlowSet<$key>> {
                let index = flow_set_index(&self.words(), set_count(table, $ipv6));
                let set = match table {
                    SetTable::Confirmed => $sets.get_ptr_mut(index),
                    SetTable::Pending => $pending.get_ptr_mut(index),
                }?;
                // SAFETY: a valid array value. Other CPUs may write the same
                // set at once (two new flows hashing to it in the same
                // instant; see [`claim`]); a flow's own packets come to one
                // CPU.
                Some(unsafe { &mut *set })
            }

            #[inline(always)]
            fn cache_set(&self) -> Option<&'static mut Self::CacheSet> {
                let set = $cache.get_ptr_mut(own_set(&self.words()))?;
                // SAFETY: this CPU's own set: nothing else reads or writes it
                // while this program run holds it.
                Some(unsafe { &mut *set })
            }

            #[inline(always)]
            fn cached(&self, set: &Self::CacheSet, period: u64) -> Option<(u32, Binding)> {
                let entry = &set.ways[way_index(set.hit(&self.words(), period)?)];
                Some((
                    u32::from(entry.service_id),
                    Binding {
                        slot: u32::from(entry.backend_slot),
                        state: u32::from(entry.state),
                        flags: entry.flags,
                        new_flow: false,
                    },
                ))
            }

            #[inline(always)]
            fn cache(
                &self,
                set: &mut Self::CacheSet,
                service_id: u32,
                binding: &Binding,
                period: u64,
            ) {
                if let Some(way) = set.way_for(&self.words(), period) {
                    set.ways[way_index(way)] = $entry {
                        key: *self,
                        service_id: service_id as u16,
                        backend_slot: binding.slot as u16,
                        state: binding.state as u16,
                        flags: binding.flags,
                        stamp: period,
                    };
                }
            }
        }
    };
}

table_key!(
    FlowKey4,
    false,
    CONFIRMED4,
    CONNTRACK4,
    PENDING4,
    FLOW_CACHE4,
    CachedFlow4
);
table_key!(
    FlowKey6,
    true,
    CONFIRMED6,
    CONNTRACK6,
    PENDING6,
    FLOW_CACHE6,
    CachedFlow6
);

/// Counts flow-table event `event` (`lb_common::EVENT_*`) of `K`'s family.
#[inline(always)]
fn count_event<K: TableKey>(event: u32) {
    stats::count_flow_event(flow_event_index(K::IPV6, event));
}

/// The flow-cache index of this CPU's set for the key with the words `words`.
/// XDP runs with migration off and does not nest on a CPU, so the set is this
/// program run's alone, as a per-CPU map value would be.
#[inline(always)]
fn own_set<const N: usize>(words: &[u64; N]) -> u32 {
    // SAFETY: a helper without arguments (inlined by the verifier on x86-64).
    flow_cache_index(unsafe { bpf_get_smp_processor_id() }, flow_cache_set(words))
}

/// Keeps a way index provably inside a flow-cache set for the verifier.
#[inline(always)]
const fn way_index(way: usize) -> usize {
    way & (FLOW_CACHE_WAYS - 1)
}

/// The backend a packet goes to.
#[derive(Clone, Copy)]
pub struct Binding {
    /// Backend slot, always below [`MAX_BACKENDS`].
    pub slot: u32,
    /// The flow's state after this packet.
    pub state: u32,
    /// The flow's `Flow::flags` after this packet.
    pub flags: u16,
    /// Whether this packet opened the flow (counted as a new connection).
    pub new_flow: bool,
}

/// A packet of flow `key` that this CPU's flow cache can forward on its own:
/// cached in `set` (the key's [`TableKey::cache_set`]) in `period`, its
/// state and flags unchanged by the packet, its backend slot not emptied. Returns the
/// service id, the service's backends and the backend, like [`known`].
#[inline(always)]
pub fn cached<K: TableKey>(
    key: &K,
    set: &K::CacheSet,
    packet: &Packet,
    period: u64,
) -> Option<(u32, &'static BackendSet, Binding)> {
    let (service_id, binding) = key.cached(set, period)?;
    if next_state(packet, binding.state) != binding.state
        || next_flags(packet, binding.flags) != binding.flags
    {
        return None;
    }
    let (backends, slot) = backend_in_use(service_id, binding.slot)?;
    Some((service_id, backends, Binding { slot, ..binding }))
}

/// The backends of service `service_id` and slot `slot`, bounded for the
/// verifier, if that slot still holds a backend. An emptied slot (its
/// backend or service was removed: the control plane empties a service's
/// backend set before it removes or renumbers the service) gives `None`,
/// so that its flows are scheduled again.
#[inline(always)]
fn backend_in_use(service_id: u32, slot: u32) -> Option<(&'static BackendSet, u32)> {
    let backends = BACKENDS.get(service_id)?;
    let slot = bounded(slot);
    (backends.backends[slot as usize].state != BACKEND_STATE_EMPTY).then_some((backends, slot))
}

/// The backend flow `key` is bound to, if one of its tables (the connection
/// table first) holds it and its slot still holds a backend. The flow is
/// only read: its state, flags and last-seen time stay as they are.
#[inline(always)]
pub fn backend_of<K: TableKey>(key: &K) -> Option<&'static Backend> {
    let flow = key
        .lookup(Table::Confirmed)
        .or_else(|| key.lookup(Table::Pending))?;
    // SAFETY: a valid entry of a flow table; two fields copied at once.
    let (service_id, slot) = unsafe { ((*flow).service_id, (*flow).backend_slot) };
    let (backends, slot) = backend_in_use(u32::from(service_id), u32::from(slot))?;
    Some(&backends.backends[slot as usize])
}

/// Keeps a slot index provably inside the backend arrays for the verifier.
#[inline(always)]
const fn bounded(slot: u32) -> u32 {
    slot & (MAX_BACKENDS as u32 - 1)
}

/// The state of a flow after `packet`, starting from `state`.
#[inline(always)]
fn next_state(packet: &Packet, state: u32) -> u32 {
    if packet.proto == PROTO_TCP {
        tcp_next_state(state, packet.tcp_flags)
    } else {
        STATE_UDP
    }
}

/// The flags of a flow after `packet`, starting from `flags`: a packet
/// forwarded here makes a flow learnt by sync this director's own.
#[inline(always)]
fn next_flags(packet: &Packet, flags: u16) -> u16 {
    let flags = flags & !FLOW_SYNCED;
    if packet.carries_data {
        flags | FLOW_CARRIED_DATA
    } else {
        flags
    }
}

/// Tells the control plane's connection sync that flow `key` entered its
/// connection table or changed state there (now `flow`), while sync is on.
/// A full ring loses the change (counted); the periodic refresh sends the
/// flow later. A BPF function of its own, called only when a flow is
/// confirmed or changes state: inlined at its four call sites, it made the
/// program's hot paths slower.
#[inline(never)]
fn announce<K: TableKey>(key: &K, flow: &Flow) {
    if SYNC_ENABLED.get(0).is_none_or(|on| *on == 0) {
        return;
    }
    let change = FlowChange {
        flow: *flow,
        key: *key,
    };
    if FLOW_CHANGES
        .output_untyped::<FlowChange<K>>(&change, 0)
        .is_err()
    {
        count_event::<K>(EVENT_SYNC_LOST);
    }
}

/// What the flow tables say about a packet's flow.
pub enum Lookup {
    /// The flow: its service id, the service's backends and its backend.
    Found(u32, &'static BackendSet, Binding),
    /// No flow in either table: a SYN opens one (any packet, for UDP and for
    /// a service with `sloppy_tcp`).
    Missing,
    /// A flow whose backend slot was emptied (see [`backend_in_use`]), in
    /// the table given: its next packet, whatever it is, is scheduled again.
    Orphaned(Table),
    /// A SYN on the tuple of a flow whose backend takes no new flows (see
    /// [`reuses_tuple`]), in the table given: schedule it, and replace any
    /// cached copy of the old flow.
    Reused(Table),
}

/// A packet of flow `key`: if the flow is in one of its tables (the
/// connection table first), advances its state and flags and returns it
/// ([`Lookup::Found`]); the handshake's ACK moves a pending flow to the
/// connection table ([`promote`]). The flow keeps its backend while the
/// backend exists, even when it is quiesced or down, except for a new
/// connection on its tuple ([`Lookup::Reused`]). A SYN skips each table
/// whose mark for its key the flow filter has clear ([`filter::may_hold`]).
/// `tick`: the packet's (its flow's last-seen time).
#[inline(always)]
pub fn known<K: TableKey>(key: &K, packet: &Packet, tick: Tick) -> Lookup {
    let may_hold = if packet.opens_connection() {
        filter::may_hold(key, !flood::flooding())
    } else {
        MayHold::BOTH
    };
    let confirmed = if may_hold.confirmed {
        key.lookup(Table::Confirmed)
    } else {
        None
    };
    let (table, flow) = match confirmed {
        Some(flow) => (Table::Confirmed, flow),
        None if !may_hold.pending => return Lookup::Missing,
        None => match key.lookup(Table::Pending) {
            Some(flow) => (Table::Pending, flow),
            None => return Lookup::Missing,
        },
    };
    // SAFETY: a valid entry of the connection table; this CPU is the only
    // writer of a given flow while its packets arrive on one RX queue.
    let flow = unsafe { &mut *flow };
    let service_id = u32::from(flow.service_id);
    let Some((backends, slot)) = backend_in_use(service_id, u32::from(flow.backend_slot)) else {
        return Lookup::Orphaned(table);
    };
    let old_state = u32::from(flow.state);
    if reuses_tuple(packet, old_state, backends, slot) {
        count_change(service_id, slot, is_active(old_state), None);
        return Lookup::Reused(table);
    }
    let state = next_state(packet, old_state);
    let old_flags = flow.flags;
    let flags = next_flags(packet, old_flags);
    if state != old_state {
        flow.state = state as u16;
    }
    if flags != old_flags {
        flow.flags = flags;
    }
    // After the lookup: the clock read overlaps its cache misses.
    flow.last_seen_ns = tick.now();
    // Confirmed by the handshake's ACK, or (an ACK picked up in flood mode,
    // or a flow the full connection table refused) by the client's first
    // payload.
    let first_payload = flags & FLOW_CARRIED_DATA != 0 && old_flags & FLOW_CARRIED_DATA == 0;
    if table == Table::Pending
        && state == STATE_ESTABLISHED
        && (old_state != STATE_ESTABLISHED || first_payload)
    {
        promote(key, flow);
    } else if table == Table::Confirmed && state != old_state {
        announce(key, flow);
    }
    // The flow is written: the counters follow from its copies alone (the
    // verifier then checks what follows once, whichever table held it).
    if state != old_state {
        count_change(
            service_id,
            slot,
            is_active(old_state),
            Some(is_active(state)),
        );
    }
    Lookup::Found(
        service_id,
        backends,
        Binding {
            slot,
            state,
            flags,
            new_flow: false,
        },
    )
}

/// Follows a state change of a flow of service `service_id` on backend
/// `slot` in the backend's counters and the service's scheduler tree: from
/// its active (`was_active`) or inactive counter to the one `now_active`
/// says, or out of both (`None`: the flow is replaced).
#[inline(always)]
fn count_change(service_id: u32, slot: u32, was_active: bool, now_active: Option<bool>) {
    let (Some(conns), Some(tree)) = (
        BACKEND_CONNS.get_ptr_mut(service_id),
        WLC_TREE.get_ptr_mut(service_id),
    ) else {
        return;
    };
    match now_active {
        Some(now_active) => move_count(conns, slot, was_active, now_active),
        None => add_count(conns, slot, was_active, 1u64.wrapping_neg()),
    }
    repair(tree, conns, slot);
}

/// Moves pending flow `flow` of `key`, which its client just confirmed, to
/// the connection table. A full table refuses it (counted): it stays pending.
#[inline(always)]
fn promote<K: TableKey>(key: &K, flow: &Flow) {
    // A copy: removing the flow from its set empties what `flow` points at.
    let flow = *flow;
    if key.insert(Table::Confirmed, &flow, BPF_NOEXIST).is_err() {
        count_event::<K>(EVENT_TABLE_FULL);
        return;
    }
    if key.remove_pending() {
        count_event::<K>(EVENT_PROMOTED);
    }
    // After the removal's locked instruction: see `filter::mark`.
    filter::mark(key, FilterKind::Confirmed);
    announce(key, &flow);
}

/// Whether `packet` is a new connection on the tuple of a flow in
/// `old_state` whose backend (slot `slot` of `backends`) takes no new flows:
/// a SYN on a flow that is not ESTABLISHED, with its backend down, drained
/// (weight 0) or removed. As IPVS does (`conn_reuse_mode`,
/// `expire_nodest_conn`), such a connection is scheduled afresh instead of
/// following the old flow to a backend that would not get it otherwise.
#[inline(always)]
fn reuses_tuple(packet: &Packet, old_state: u32, backends: &BackendSet, slot: u32) -> bool {
    if !packet.opens_connection() || old_state == STATE_ESTABLISHED {
        return false;
    }
    let backend = &backends.backends[bounded(slot) as usize];
    backend.state != BACKEND_STATE_UP || backend.weight == 0
}

/// Opens flow `key` for `packet` in `service` (whose backends are
/// `backends`) at `now` as `opening` says: picks its backend ([`choose`]) and
/// records it ([`record`]; over the flow it `replaces`, in that flow's
/// table), except for a SYN in flood mode, which is forwarded unrecorded;
/// `Drop(REASON_NO_BACKEND)` when no backend can take it.
#[inline(always)]
pub fn open<K: TableKey>(
    key: &K,
    packet: &Packet,
    service: &Service,
    (backends, conns, tree): (&BackendSet, *mut BackendConnSet, *mut LoadTree),
    replaces: Option<Table>,
    (opening, now): (Opening, u64),
) -> Result<Binding, Verdict> {
    let service_id = service.id;
    let Some(slot) = choose(key, service, (backends, tree), opening, now) else {
        return Err(Verdict::Drop(REASON_NO_BACKEND));
    };
    let state = next_state(packet, STATE_NONE);
    let flags = next_flags(packet, 0);
    let binding = Binding {
        slot,
        state,
        flags,
        // A picked-up ACK's SYN was counted.
        new_flow: opening != Opening::HashedAck,
    };
    if opening == Opening::StatelessSyn {
        count_event::<K>(EVENT_STATELESS_SYN);
        return Ok(binding);
    }
    // Service ids are below MAX_SERVICES and slots below MAX_BACKENDS: both fit.
    let flow = Flow {
        last_seen_ns: now,
        service_id: service_id as u16,
        backend_slot: slot as u16,
        state: state as u16,
        flags,
    };
    // A picked-up ACK without payload waits in the pending table for the
    // client's first payload: an ACK flood during flood mode cannot fill
    // the connection table, which never evicts.
    let confirm = opening != Opening::HashedAck || flags & FLOW_CARRIED_DATA != 0;
    // Unrecorded, the packet is still forwarded, and the flow's next packet
    // is scheduled again (a SYN) or dropped.
    if let Some(table) = record(key, &flow, replaces, confirm) {
        add_count(conns, slot, is_active(state), 1);
        // After the count's atomic add: see `filter::mark`.
        filter::mark(key, table.filter_kind());
        repair(tree, conns, slot);
        if opening == Opening::HashedAck {
            count_event::<K>(EVENT_HASHED_ACK);
        }
    }
    Ok(binding)
}

/// The backend slot of a new flow of `service` from `key`'s client, by the
/// service's scheduler ([`schedule::pick`]; `tree`: its wlc tree), or by
/// the hash when `opening` is one of flood mode's; for a persistent
/// service, the slot of the client's template while it lives and its
/// backend takes new flows, else the pick, which becomes the client's
/// template (except for a SYN in flood mode: a flood of spoofed clients
/// must not evict the real ones' templates). `None` when no backend can
/// take the flow. `now`: the time of the packet.
#[inline(always)]
fn choose<K: TableKey>(
    key: &K,
    service: &Service,
    (backends, tree): (&BackendSet, *mut LoadTree),
    opening: Opening,
    now: u64,
) -> Option<u32> {
    // SAFETY: `tree` points at this service's entry in WLC_TREE.
    let tree = unsafe { &*tree };
    let by_hash = opening != Opening::Scheduled;
    if service.persistence_timeout_s == 0 {
        return schedule::pick(key, service, backends, tree, by_hash).map(bounded);
    }
    let template = persist_key(key.client_addr(), service.persistence_prefix, service.id);
    if let Some(found) = PERSIST.get_ptr_mut(template) {
        // SAFETY: a valid entry of the template map.
        let found = unsafe { &mut *found };
        let slot = bounded(found.backend_slot);
        let timeout_ns = u64::from(service.persistence_timeout_s) * 1_000_000_000;
        if now.saturating_sub(found.last_used_ns) <= timeout_ns
            && backends.scheduling_weight(slot) > 0
        {
            found.last_used_ns = now;
            return Some(slot);
        }
    }
    let slot = bounded(schedule::pick(key, service, backends, tree, by_hash)?);
    if opening == Opening::StatelessSyn {
        return Some(slot);
    }
    let chosen = PersistTemplate {
        last_used_ns: now,
        backend_slot: slot,
        _pad: 0,
    };
    // A template that cannot be written only costs the next connection its
    // persistence.
    let _ = PERSIST.insert(template, chosen, BPF_ANY);
    Some(slot)
}

/// Records new flow `flow` of `key`: over the flow it `replaces`, in that
/// flow's table; else a confirmed flow (ESTABLISHED: a sloppy pick-up or,
/// with payload, one in flood mode; UDP) in the connection table when
/// `confirm`, and any other, or one the full connection table refuses, in
/// the pending table (over the least recently seen flow of its set when
/// the set is full; it only fails without a set). Returns the table it was
/// recorded in; counted.
#[inline(always)]
fn record<K: TableKey>(
    key: &K,
    flow: &Flow,
    replaces: Option<Table>,
    confirm: bool,
) -> Option<Table> {
    if let Some(table) = replaces {
        key.insert(table, flow, BPF_ANY).ok()?;
        if table == Table::Confirmed {
            announce(key, flow);
        }
        return Some(table);
    }
    let state = u32::from(flow.state);
    if confirm && (state == STATE_ESTABLISHED || state == STATE_UDP) {
        if key.insert(Table::Confirmed, flow, BPF_NOEXIST).is_ok() {
            announce(key, flow);
            return Some(Table::Confirmed);
        }
        count_event::<K>(EVENT_TABLE_FULL);
    }
    if key.insert(Table::Pending, flow, BPF_ANY).is_ok() {
        count_event::<K>(EVENT_PENDING_OPENED);
        Some(Table::Pending)
    } else {
        count_event::<K>(EVENT_PENDING_FAILED);
        None
    }
}

/// Replays the matches of backend `slot` in its service's scheduler tree,
/// after its counters changed.
#[inline(always)]
fn repair(tree: *mut LoadTree, conns: *mut BackendConnSet, slot: u32) {
    // SAFETY: both point at this service's map values. Other CPUs may repair
    // the same nodes at once; `lb_common::wlc` explains why that is harmless.
    unsafe { wlc::repair(&mut *tree, &*conns, slot) }
}

/// Atomically adds `delta` (two's complement for a decrement) to a backend's
/// active or inactive counter.
#[inline(always)]
fn add_count(conns: *mut BackendConnSet, slot: u32, active: bool, delta: u64) {
    // SAFETY: `slot` is bounded; the counters live in a map value.
    unsafe {
        let counters: *mut BackendConns = &raw mut (*conns).conns[slot as usize];
        let counter = if active {
            &raw mut (*counters).active
        } else {
            &raw mut (*counters).inactive
        };
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, delta);
    }
}

/// Moves one flow between a backend's inactive and active counters.
#[inline(always)]
fn move_count(conns: *mut BackendConnSet, slot: u32, was_active: bool, now_active: bool) {
    if was_active != now_active {
        add_count(conns, slot, was_active, 1u64.wrapping_neg());
        add_count(conns, slot, now_active, 1);
    }
}
