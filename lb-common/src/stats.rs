//! Counters: the value of the three stats maps, the verdict reasons that
//! index the verdict counters, and where each backend's counters are.

use crate::limits::{MAX_BACKENDS, MAX_SERVICES};

/// Packet, byte and new-connection counters (per CPU in the stats maps).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets (IPVS InPkts).
    pub packets: u64,
    /// IP-layer bytes, Ethernet header excluded (IPVS InBytes).
    pub bytes: u64,
    /// New flows scheduled (IPVS Conns); zero in the verdict counters.
    pub new_conns: u64,
}

impl core::ops::Add for Counters {
    type Output = Self;

    /// Field by field (wrapping, as the kernel's counters do).
    fn add(self, other: Self) -> Self {
        Self {
            packets: self.packets.wrapping_add(other.packets),
            bytes: self.bytes.wrapping_add(other.bytes),
            new_conns: self.new_conns.wrapping_add(other.new_conns),
        }
    }
}

/// Verdict reason: forwarded to a backend (`XDP_TX`, or `XDP_REDIRECT` to
/// the director NIC the backend is on-link through).
pub const REASON_FORWARDED: u32 = 0;
/// Verdict reason: not IPv4/IPv6 (ARP, LLDP, ...): `XDP_PASS`.
pub const REASON_NOT_IP: u32 = 1;
/// Verdict reason: IP but not TCP/UDP (and not an ICMP error counted under
/// [`REASON_ICMP_FORWARDED`] or [`REASON_ICMP_NO_FLOW`]), or an IPv6
/// extension header we do not walk: `XDP_PASS`.
pub const REASON_NOT_L4: u32 = 2;
/// Verdict reason: an IP fragment that belongs to no service (not to a VIP,
/// or not TCP/UDP): `XDP_PASS`.
pub const REASON_FRAGMENT: u32 = 3;
/// Verdict reason: no service for (destination, port, protocol): `XDP_PASS`.
pub const REASON_NO_SERVICE: u32 = 4;
/// Verdict reason: truncated or inconsistent headers: `XDP_DROP`.
pub const REASON_MALFORMED: u32 = 5;
/// Verdict reason: a new flow for a service with no healthy backend of weight > 0: `XDP_DROP`.
pub const REASON_NO_BACKEND: u32 = 6;
/// Verdict reason: the maps disagree (a service id past the backend map):
/// `XDP_DROP`. Never expected; counted to make it visible.
pub const REASON_INTERNAL: u32 = 7;
/// Verdict reason: a frame for a service, but addressed to another MAC than
/// the NIC's own and its VRRP virtual MACs (a promiscuous NIC, a flooding
/// switch): `XDP_PASS`.
pub const REASON_NOT_FOR_US: u32 = 8;
/// Verdict reason: a TCP SYN for a service with no usable backend and
/// [`SERVICE_FLAG_REJECT`], answered with a TCP RST (`XDP_TX` back to the
/// client).
///
/// [`SERVICE_FLAG_REJECT`]: crate::service::SERVICE_FLAG_REJECT
pub const REASON_REJECTED: u32 = 9;
/// Verdict reason: a TCP packet other than a SYN for a flow the tables do
/// not know, for a service without [`SERVICE_FLAG_SLOPPY_TCP`]: `XDP_DROP`.
///
/// [`SERVICE_FLAG_SLOPPY_TCP`]: crate::service::SERVICE_FLAG_SLOPPY_TCP
pub const REASON_NO_FLOW: u32 = 10;
/// Verdict reason: an ICMP error (IPv4 destination unreachable or time
/// exceeded; ICMPv6 destination unreachable, packet too big or time
/// exceeded) about a packet from a VIP to the client of a known flow, sent
/// on unchanged but its MAC addresses to the flow's backend (`XDP_TX`), so
/// that path MTU discovery works for the real server. Counted here only, not
/// in the backend's counters.
pub const REASON_ICMP_FORWARDED: u32 = 11;
/// Verdict reason: an ICMP error as for [`REASON_ICMP_FORWARDED`] about a
/// packet of a service whose flow the tables do not know: `XDP_PASS`.
pub const REASON_ICMP_NO_FLOW: u32 = 12;
/// Verdict reason: a later IP fragment (no ports) of TCP/UDP to a VIP whose
/// datagram's first fragment was not seen within
/// [`FRAGMENT_LIFETIME_NS`]: `XDP_DROP`.
///
/// [`FRAGMENT_LIFETIME_NS`]: crate::fragment::FRAGMENT_LIFETIME_NS
pub const REASON_FRAGMENT_ORPHAN: u32 = 13;
/// Verdict reason: a frame for a backend on-link through another director
/// NIC than the one it arrived on, which is not in [`TX_PORTS_MAP`] (lb is
/// not attached to it): `XDP_DROP`.
///
/// [`TX_PORTS_MAP`]: crate::limits::TX_PORTS_MAP
pub const REASON_NO_TX_PORT: u32 = 14;
/// Number of verdict reasons (size of [`VERDICT_STATS_MAP`]).
///
/// [`VERDICT_STATS_MAP`]: crate::limits::VERDICT_STATS_MAP
pub const NUM_REASONS: u32 = 15;

/// Human-readable name of a verdict reason, for `lb stats`.
pub const fn reason_name(reason: u32) -> &'static str {
    match reason {
        REASON_FORWARDED => "forwarded",
        REASON_NOT_IP => "pass_not_ip",
        REASON_NOT_L4 => "pass_not_tcp_udp",
        REASON_FRAGMENT => "pass_fragment",
        REASON_NO_SERVICE => "pass_no_service",
        REASON_MALFORMED => "drop_malformed",
        REASON_NO_BACKEND => "drop_no_backend",
        REASON_INTERNAL => "drop_internal",
        REASON_NOT_FOR_US => "pass_not_for_us",
        REASON_REJECTED => "reset_no_backend",
        REASON_NO_FLOW => "drop_no_flow",
        REASON_ICMP_FORWARDED => "icmp_forwarded",
        REASON_ICMP_NO_FLOW => "pass_icmp_no_flow",
        REASON_FRAGMENT_ORPHAN => "drop_fragment_orphan",
        REASON_NO_TX_PORT => "drop_no_tx_port",
        _ => "unknown",
    }
}

/// Index of a backend's counters in [`BACKEND_STATS_MAP`].
///
/// [`BACKEND_STATS_MAP`]: crate::limits::BACKEND_STATS_MAP
pub const fn backend_index(service_id: u32, slot: u32) -> u32 {
    service_id * MAX_BACKENDS as u32 + slot
}

/// Size of [`BACKEND_STATS_MAP`].
///
/// [`BACKEND_STATS_MAP`]: crate::limits::BACKEND_STATS_MAP
pub const BACKEND_STATS_ENTRIES: u32 = MAX_SERVICES * MAX_BACKENDS as u32;

/// Flow-table event: a flow entered its family's pending table (a half-open
/// TCP flow, or a flow the full connection table refused).
pub const EVENT_PENDING_OPENED: u32 = 0;
/// Flow-table event: a pending flow was confirmed and moved to its
/// connection table.
pub const EVENT_PROMOTED: u32 = 1;
/// Flow-table event: the connection table was full and refused a confirmed
/// flow (an insert failure); the flow stays in (or enters) the pending table.
pub const EVENT_TABLE_FULL: u32 = 2;
/// Flow-table event: the pending table could not take a flow either (the
/// kernel had no free entry); the packet was forwarded without a record.
pub const EVENT_PENDING_FAILED: u32 = 3;
/// Flow-table event: the control plane removed a flow from the pending
/// table (expired, or its service was removed). With the others and the
/// flows present, it tells how many the pending table evicted:
/// opened - promoted - removed - present.
pub const EVENT_PENDING_REMOVED: u32 = 4;
/// Flow-table event: a change for connection sync (a confirmed flow, a
/// state change) that the full `FLOW_CHANGES` ring could not take; the
/// other directors learn of that flow at the next refresh.
pub const EVENT_SYNC_LOST: u32 = 5;
/// Flow-table event: a SYN forwarded in flood mode without a table entry
/// (see [`crate::flood`]).
pub const EVENT_STATELESS_SYN: u32 = 6;
/// Flow-table event: an ACK of a flow no table knew, picked up by the hash
/// during or just after flood mode and recorded (see [`crate::flood`]).
pub const EVENT_HASHED_ACK: u32 = 7;
/// Number of flow-table events per family.
pub const NUM_FLOW_EVENTS: u32 = 8;
/// Size of [`FLOW_EVENTS_MAP`]: the events of IPv4, then of IPv6.
///
/// [`FLOW_EVENTS_MAP`]: crate::limits::FLOW_EVENTS_MAP
pub const FLOW_EVENTS_ENTRIES: u32 = 2 * NUM_FLOW_EVENTS;

/// Index of `event` (`EVENT_*`) of the IPv4 (`ipv6` false) or IPv6 tables in
/// [`FLOW_EVENTS_MAP`].
///
/// [`FLOW_EVENTS_MAP`]: crate::limits::FLOW_EVENTS_MAP
#[inline(always)]
pub const fn flow_event_index(ipv6: bool, event: u32) -> u32 {
    if ipv6 { NUM_FLOW_EVENTS + event } else { event }
}

const _: () = assert!(size_of::<Counters>() == 24);

#[cfg(feature = "user")]
mod pod {
    use super::Counters;

    // SAFETY: it is #[repr(C)], holds only integers, and has no implicit
    // padding (the size assertion and layout test here).
    unsafe impl aya::Pod for Counters {}
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;

    #[test]
    fn counters_layout() {
        assert_eq!(offset_of!(Counters, packets), 0);
        assert_eq!(offset_of!(Counters, bytes), 8);
        assert_eq!(offset_of!(Counters, new_conns), 16);
    }

    #[test]
    fn every_reason_has_a_name() {
        for reason in 0..NUM_REASONS {
            assert_ne!(reason_name(reason), "unknown", "reason {reason}");
        }
        assert_eq!(reason_name(NUM_REASONS), "unknown");
    }

    #[test]
    fn backend_index_is_dense() {
        assert_eq!(backend_index(0, 0), 0);
        assert_eq!(backend_index(1, 0), MAX_BACKENDS as u32);
        assert_eq!(
            backend_index(MAX_SERVICES - 1, MAX_BACKENDS as u32 - 1),
            BACKEND_STATS_ENTRIES - 1
        );
    }
}
