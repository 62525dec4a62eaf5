//! Connection sync between directors: what the XDP program tells the
//! control plane about the connection tables, and the flow flag that marks
//! a flow learnt from another director.

use crate::flow::Flow;

/// One entry of the `FLOW_CHANGES` ring: a flow that entered a connection
/// table (confirmed: its handshake completed, a UDP flow, a `sloppy_tcp`
/// pick-up, or a flow scheduled again) or changed state there, with its key
/// ([`FlowKey4`](crate::flow::FlowKey4) or
/// [`FlowKey6`](crate::flow::FlowKey6): the entry's size tells which).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowChange<K> {
    /// The flow as the table now holds it.
    pub flow: Flow,
    /// Its key.
    pub key: K,
}

/// [`Flow::flags`] bit: the flow was installed by connection sync from
/// another director and this director has not forwarded a packet of it
/// since. The data path clears it on the flow's first packet here; only
/// such a replica may be removed by another director's expiry.
pub const FLOW_SYNCED: u16 = 2;

const _: () = {
    assert!(size_of::<FlowChange<crate::flow::FlowKey4>>() == 32);
    assert!(size_of::<FlowChange<crate::flow::FlowKey6>>() == 56);
};

/// Value of `SYNC_STATS` (index 0): connection sync's counters, written by
/// the control plane (the data path's own sync counter is
/// `EVENT_SYNC_LOST`), pinned with the other maps so that `lb stats` and a
/// restarted `lb run` read them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncCounters {
    /// Messages sent.
    pub messages_sent: u64,
    /// Messages received and accepted.
    pub messages_received: u64,
    /// Flows sent (new, changed, refreshed, expired, whole tables).
    pub flows_sent: u64,
    /// Flows in accepted messages.
    pub flows_received: u64,
    /// Received flows installed or refreshed in a connection table.
    pub flows_installed: u64,
    /// Received flow copies removed because their owner expired them.
    pub flows_expired: u64,
    /// Received flows not installed (unknown service or backend, a flow
    /// forwarded here to another backend, a full table).
    pub flows_rejected: u64,
    /// Datagrams refused for a wrong tag or a source that is not a peer.
    pub rejected_auth: u64,
    /// Authenticated messages refused as replays.
    pub rejected_replay: u64,
    /// Datagrams refused as malformed.
    pub rejected_malformed: u64,
    /// Whole tables asked of the peers.
    pub tables_requested: u64,
    /// Whole tables sent to peers that asked.
    pub tables_sent: u64,
    /// Milliseconds between the sending and the receipt of the last
    /// accepted message; `u64::MAX` before the first.
    pub lag_ms: u64,
    /// When the last message was accepted (Unix ms); 0 before the first.
    pub last_received_unix_ms: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] and only u64 fields: no padding, any bit pattern valid.
    unsafe impl aya::Pod for super::SyncCounters {}
}
