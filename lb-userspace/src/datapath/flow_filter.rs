//! The control plane's side of the flow filter (`lb_common::flow_filter`):
//! it sizes and readies the filter of a new data path, marks the flows it
//! installs itself ([`FlowFilter::mark`]) and rebuilds the filter from the
//! sweeper's walk ([`FlowFilter::begin_rebuild`], [`FlowFilter::mark_next`],
//! [`FlowFilter::finish_rebuild`]).
//!
//! Marks are written through a shared mapping of the map (it is mmapable),
//! one byte at a time: a whole-value update of a line would overwrite the
//! marks the data path set in it meanwhile.

use anyhow::{Context as _, bail};
use aya::maps::{Array, IterableMap as _, MapData};
use lb_common::{
    FILTER_CONFIRMED_MARKS, FILTER_LINE_BYTES, FILTER_READY, FILTER_REBUILDING, FILTER_SECOND,
    FLOW_FILTER_MAP, FLOW_FILTER_STATE_MAP, FilterKind, FlowFilterLine, FlowFilterState, FlowKey,
};
use serde::{Deserialize, Serialize};

use super::mapping::SharedMapping;

/// The flow filter's maps, and its marks mapped into this process.
pub struct FlowFilter {
    /// The marks' map (kept open for the mapping).
    _map: Array<MapData, FlowFilterLine>,
    /// Index 0: the filter's [`FlowFilterState`].
    state: Array<MapData, FlowFilterState>,
    /// The marks: both generations, a byte each.
    marks: SharedMapping,
}

/// A rebuild under way (see [`FlowFilter::begin_rebuild`]): the state it
/// will replace.
#[derive(Debug)]
pub struct Rebuild {
    before: FlowFilterState,
}

impl FlowFilter {
    /// Maps the marks of `map`, whose state is in `state`.
    pub fn new(
        map: Array<MapData, FlowFilterLine>,
        state: Array<MapData, FlowFilterState>,
    ) -> anyhow::Result<Self> {
        let len = map.len() as usize * FILTER_LINE_BYTES as usize;
        let marks = SharedMapping::new(map.map(), len, FLOW_FILTER_MAP)?;
        Ok(Self {
            _map: map,
            state,
            marks,
        })
    }

    /// The filter's state.
    fn state(&self) -> anyhow::Result<FlowFilterState> {
        self.state
            .get(&0, 0)
            .with_context(|| format!("reading {FLOW_FILTER_STATE_MAP}"))
    }

    fn set_state(&mut self, state: FlowFilterState) -> anyhow::Result<()> {
        self.state
            .set(0, state, 0)
            .with_context(|| format!("writing {FLOW_FILTER_STATE_MAP}"))
    }

    /// Readies the filter of a data path just loaded, whose tables are
    /// empty: `lines` lines per generation (the map must hold twice as many).
    pub fn ready_empty(&mut self, lines: u32) -> anyhow::Result<()> {
        let needed = 2 * lines as usize * FILTER_LINE_BYTES as usize;
        if self.marks.byte_len() != needed {
            bail!(
                "{FLOW_FILTER_MAP} holds {} bytes where two generations of {lines} lines need \
                 {needed}",
                self.marks.byte_len()
            );
        }
        self.set_state(FlowFilterState {
            phase: FILTER_READY,
            lines,
        })
    }

    /// Sets the mark of kind `kind` of `key` in `generation` of the filter
    /// `state`.
    fn set(&self, state: &FlowFilterState, key: &FlowKey, generation: u32, kind: FilterKind) {
        let position = match key {
            FlowKey::V4(k) => state.position(&k.words(), generation),
            FlowKey::V6(k) => state.position(&k.words(), generation),
        };
        let offset = position.line as usize * FILTER_LINE_BYTES as usize + position.byte(kind);
        if offset < self.marks.byte_len() {
            // SAFETY: inside the mapping.
            unsafe { self.marks.start().as_ptr().add(offset).write_volatile(1) };
        }
    }

    /// Marks flow `key`, which this process just wrote to a connection
    /// table, as the data path marks its own (see `lb_common::flow_filter`).
    pub fn mark(&self, key: &FlowKey) -> anyhow::Result<()> {
        let state = self.state()?;
        self.set(&state, key, state.current(), FilterKind::Confirmed);
        if state.rebuilding() {
            self.set(&state, key, state.next(), FilterKind::Confirmed);
        }
        Ok(())
    }

    /// Starts a rebuild: clears the generation SYNs do not read, then has
    /// every flow that enters a table from now on marked in both. Each flow
    /// of a walk of the tables that starts after this must be marked with
    /// [`FlowFilter::mark_next`] before [`FlowFilter::finish_rebuild`].
    /// One rebuild at a time: `lb run` rebuilds only from its sweeper.
    pub fn begin_rebuild(&mut self) -> anyhow::Result<Rebuild> {
        let before = self.state()?;
        let half = self.marks.byte_len() / 2;
        let start = before.next() as usize * half;
        // SAFETY: one generation of the mapping, which SYNs do not read.
        // The data path sets marks there only while a rebuild runs (one
        // that failed leaves the flag set): a mark this clear erases is a
        // flow's that was in its table before the walk that follows starts.
        unsafe { std::ptr::write_bytes(self.marks.start().as_ptr().add(start), 0, half) };
        self.set_state(FlowFilterState {
            phase: before.phase | FILTER_REBUILDING,
            ..before
        })?;
        Ok(Rebuild { before })
    }

    /// Marks flow `key`, found by the walk of `rebuild` in the table of
    /// `kind`, in the next generation.
    pub fn mark_next(&self, rebuild: &Rebuild, key: &FlowKey, kind: FilterKind) {
        self.set(&rebuild.before, key, rebuild.before.next(), kind);
    }

    /// Ends `rebuild`: its generation becomes the one SYNs read, and it
    /// holds every flow of the tables.
    pub fn finish_rebuild(&mut self, rebuild: Rebuild) -> anyhow::Result<()> {
        let before = rebuild.before;
        self.set_state(FlowFilterState {
            phase: FILTER_READY | (before.next() * FILTER_SECOND),
            lines: before.lines,
        })
    }

    /// How many marks of the current generation are set, of each kind.
    pub fn occupancy(&self) -> anyhow::Result<FilterOccupancy> {
        let state = self.state()?;
        let half = self.marks.byte_len() / 2;
        let start = state.current() as usize * half;
        // SAFETY: one generation of the mapping, read as bytes.
        let marks =
            unsafe { std::slice::from_raw_parts(self.marks.start().as_ptr().add(start), half) };
        let mut occupancy = FilterOccupancy::default();
        for line in marks.chunks_exact(FILTER_LINE_BYTES as usize) {
            let (confirmed, pending) = line.split_at(FILTER_CONFIRMED_MARKS as usize);
            occupancy.confirmed.add(confirmed);
            occupancy.pending.add(pending);
        }
        Ok(occupancy)
    }
}

/// How many marks of each kind a filter's current generation has set
/// (`lb stats`' flow-filter line, `--json`'s `filter`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterOccupancy {
    /// Confirmed marks (connection tables).
    pub confirmed: MarkCount,
    /// Pending marks (pending tables).
    pub pending: MarkCount,
}

/// Marks of one kind: how many are set, of how many.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkCount {
    /// Marks set.
    pub set: u64,
    /// Marks of this kind in a generation.
    pub positions: u64,
}

impl MarkCount {
    /// Counts the marks of `marks`, one byte each.
    fn add(&mut self, marks: &[u8]) {
        self.set += marks.iter().filter(|mark| **mark != 0).count() as u64;
        self.positions += marks.len() as u64;
    }
}
