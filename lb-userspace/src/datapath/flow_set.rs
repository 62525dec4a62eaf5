//! The control plane's side of a table of flow sets (`lb_common::flow_set`:
//! a pending table, or a connection table's sets): its sets mapped into
//! this process, read way by way and emptied with a compare-and-swap on a
//! flow's last-seen time, so that a flow the data path refreshed or
//! replaced meanwhile is never removed; a flow is installed in an empty
//! way claimed the same way.

use std::{
    marker::PhantomData,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context as _, bail};
use aya::maps::{Map, MapData};
use lb_common::{FLOW_SET_WAYS, Flow, FlowKey4, FlowKey6, FlowSet, FlowSetEntry, flow_set_index};

use super::mapping::SharedMapping;

/// A key of a table of flow sets: where its set is.
pub trait FlowSetKey: Copy + PartialEq {
    /// The key's set in a table of `sets` sets.
    fn set(&self, sets: u32) -> u32;
}

impl FlowSetKey for FlowKey4 {
    fn set(&self, sets: u32) -> u32 {
        flow_set_index(&self.words(), sets)
    }
}

impl FlowSetKey for FlowKey6 {
    fn set(&self, sets: u32) -> u32 {
        flow_set_index(&self.words(), sets)
    }
}

/// One table of flow sets (`PENDING4`, `PENDING6`, `CONFIRMED4` or
/// `CONFIRMED6`), mapped.
pub struct FlowSetTable<K> {
    /// The map (kept open for the mapping).
    _map: MapData,
    /// The sets; every access is a volatile read of an entry or an atomic
    /// compare-and-swap of a last-seen time.
    mapping: SharedMapping,
    /// The key type of the sets.
    _sets_of: PhantomData<K>,
}

impl<K: FlowSetKey> FlowSetTable<K> {
    /// Maps `map`, the table of flow sets named `name` (an mmapable array of
    /// [`FlowSet`]s).
    pub fn new(map: Map, name: &'static str) -> anyhow::Result<Self> {
        let Map::Array(map) = map else {
            bail!("map {name} has an unexpected type (an array of flow sets was expected)");
        };
        let info = map
            .info()
            .with_context(|| format!("reading the size of {name}"))?;
        if info.value_size() as usize != size_of::<FlowSet<K>>() {
            bail!(
                "map {name} holds values of {} bytes where a flow set has {}",
                info.value_size(),
                size_of::<FlowSet<K>>()
            );
        }
        let sets = info.max_entries();
        let mapping = SharedMapping::new(&map, sets as usize * size_of::<FlowSet<K>>(), name)?;
        Ok(Self {
            _map: map,
            mapping,
            _sets_of: PhantomData,
        })
    }

    /// How many sets the table has (the mapping holds them all).
    fn sets(&self) -> u32 {
        (self.mapping.byte_len() / size_of::<FlowSet<K>>()) as u32
    }

    /// How many flows the table holds at most.
    pub fn capacity(&self) -> u32 {
        self.sets() * FLOW_SET_WAYS as u32
    }

    /// Way `way` of set `set`.
    fn entry(&self, set: u32, way: usize) -> *mut FlowSetEntry<K> {
        debug_assert!(set < self.sets() && way < FLOW_SET_WAYS);
        // SAFETY: inside the mapping (`set` below `sets`, `way` below the ways).
        unsafe {
            (&raw mut (*self
                .mapping
                .start()
                .cast::<FlowSet<K>>()
                .as_ptr()
                .add(set as usize))
            .ways)
                .cast::<FlowSetEntry<K>>()
                .add(way)
        }
    }

    /// A copy of way `way` of set `set`.
    fn read(&self, set: u32, way: usize) -> FlowSetEntry<K> {
        // SAFETY: an entry inside the mapping; every byte pattern is a valid
        // entry (integers and byte arrays).
        unsafe { self.entry(set, way).read_volatile() }
    }

    /// The way of `key`'s set holding it, and its flow.
    fn find(&self, key: &K) -> Option<(u32, usize, Flow)> {
        let set = key.set(self.sets());
        (0..FLOW_SET_WAYS).find_map(|way| {
            let entry = self.read(set, way);
            (entry.is_used() && entry.key == *key).then_some((set, way, entry.flow))
        })
    }

    /// The flow under `key`, if the table holds it.
    pub fn get(&self, key: &K) -> Option<Flow> {
        self.find(key).map(|(_, _, flow)| flow)
    }

    /// Calls `each` for every flow of the table, set by set. A flow the data
    /// path adds or moves meanwhile may be seen or not.
    pub fn for_each(&self, mut each: impl FnMut(K, Flow)) {
        for set in 0..self.sets() {
            for way in 0..FLOW_SET_WAYS {
                let entry = self.read(set, way);
                if entry.is_used() {
                    each(entry.key, entry.flow);
                }
            }
        }
    }

    /// How many flows the table holds (a walk of every set).
    pub fn len(&self) -> usize {
        let mut count = 0;
        self.for_each(|_, _| count += 1);
        count
    }

    /// Whether the table holds no flow.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes the flow under `key` if it is still as this call reads it:
    /// its last-seen time is swapped to 0 (an empty way) only if the data
    /// path has neither refreshed nor replaced it since. Whether it was
    /// removed.
    pub fn remove(&self, key: &K) -> bool {
        let Some((set, way, flow)) = self.find(key) else {
            return false;
        };
        // SAFETY: an 8-byte aligned u64 inside the mapping (a `Flow` starts
        // with it, at an 8-byte aligned offset of the entry); the data path
        // writes it with plain and locked stores, never torn.
        let last_seen =
            unsafe { AtomicU64::from_ptr(&raw mut (*self.entry(set, way)).flow.last_seen_ns) };
        last_seen
            .compare_exchange(flow.last_seen_ns, 0, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
    }

    /// Writes `flow` under `key`: over the flow of its way if the table
    /// holds the key, else into an empty way of its set, claimed by swapping
    /// its last-seen time from 0 to the flow's (`flow.last_seen_ns` must not
    /// be 0), as the data path claims one. Whether the flow was written
    /// (false: the key's set is full).
    pub fn insert(&self, key: &K, flow: &Flow) -> bool {
        debug_assert!(
            flow.last_seen_ns != 0,
            "a flow of time 0 reads as an empty way"
        );
        if let Some((set, way, _)) = self.find(key) {
            // SAFETY: an entry inside the mapping; the data path writes a
            // flow's entry only from the CPU its packets come to.
            unsafe { (&raw mut (*self.entry(set, way)).flow).write_volatile(*flow) };
            return true;
        }
        let set = key.set(self.sets());
        (0..FLOW_SET_WAYS).any(|way| {
            let entry = self.entry(set, way);
            // SAFETY: as in `remove`.
            let last_seen = unsafe { AtomicU64::from_ptr(&raw mut (*entry).flow.last_seen_ns) };
            if last_seen
                .compare_exchange(0, flow.last_seen_ns, Ordering::SeqCst, Ordering::Relaxed)
                .is_err()
            {
                return false;
            }
            // SAFETY: the way is this call's since the swap; the key last,
            // as the data path writes it.
            unsafe {
                (&raw mut (*entry).flow).write_volatile(*flow);
                (&raw mut (*entry).key).write_volatile(*key);
            }
            true
        })
    }
}
