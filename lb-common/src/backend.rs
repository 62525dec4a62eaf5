//! Real servers: the backend states, the backend set of a service (the
//! backend map's value) and the per-backend connection counters.

use core::net::IpAddr;

use crate::{ip::addr_key, limits::MAX_BACKENDS};

/// Backend slot is unused.
pub const BACKEND_STATE_EMPTY: u32 = 0;
/// Backend is healthy and may receive new flows (if its weight is above zero).
pub const BACKEND_STATE_UP: u32 = 1;
/// Backend failed its health check: no new flows; existing flows continue.
pub const BACKEND_STATE_DOWN: u32 = 2;
/// Backend was removed from the service while flows still use it: no new
/// flows; existing flows finish on it, then the control plane empties the slot.
pub const BACKEND_STATE_REMOVED: u32 = 3;
/// A sorry server standing by while its service has its quorum: no new
/// flows; the flows it took while the quorum was lost continue.
pub const BACKEND_STATE_STANDBY: u32 = 4;

/// One real server of a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Real server address (network byte order, IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// Real server MAC: the destination MAC of forwarded frames.
    pub mac: [u8; 6],
    /// MAC of the director NIC the real server is reached through: the
    /// source MAC of forwarded frames.
    pub nic_mac: [u8; 6],
    /// Director NIC through which the real server is reached.
    pub ifindex: u32,
    /// WLC weight, `0..=MAX_WEIGHT`; 0 quiesces the backend (no new flows).
    pub weight: u32,
    /// One of the `BACKEND_STATE_*` constants.
    pub state: u32,
}

/// Where a backend is on the network: its MAC, and the director NIC (index
/// and MAC) it is on-link through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The real server's MAC (destination MAC of forwarded frames).
    pub mac: [u8; 6],
    /// The director NIC's MAC (source MAC of forwarded frames).
    pub nic_mac: [u8; 6],
    /// The director NIC's index.
    pub ifindex: u32,
}

impl Backend {
    /// The slot of the real server at `addr`, reached as `attachment` says,
    /// as the data path stores it; `state` is one of the `BACKEND_STATE_*`
    /// constants.
    pub fn new(addr: IpAddr, attachment: Attachment, weight: u32, state: u32) -> Self {
        let Attachment {
            mac,
            nic_mac,
            ifindex,
        } = attachment;
        Self {
            addr: addr_key(addr).0,
            mac,
            nic_mac,
            ifindex,
            weight,
            state,
        }
    }
}

/// Value of [`BACKENDS_MAP`]: all backends of one service.
///
/// [`BACKENDS_MAP`]: crate::limits::BACKENDS_MAP
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSet {
    /// Number of slots in use: backends live in `backends[..len]`.
    pub len: u32,
    /// Backend slots; a slot keeps its index for the life of the backend, so
    /// flows in the connection table stay bound to it.
    pub backends: [Backend; MAX_BACKENDS],
}

impl Default for BackendSet {
    fn default() -> Self {
        Self {
            len: 0,
            backends: [Backend::default(); MAX_BACKENDS],
        }
    }
}

impl BackendSet {
    /// The weight with which the backend in `slot` competes for new flows:
    /// its weight if it is in use (below `len`) and up, otherwise 0 (it takes
    /// no new flows).
    #[inline(always)]
    pub fn scheduling_weight(&self, slot: u32) -> u32 {
        if slot >= self.len {
            return 0;
        }
        let backend = &self.backends[slot as usize & (MAX_BACKENDS - 1)];
        if backend.state == BACKEND_STATE_UP {
            backend.weight
        } else {
            0
        }
    }
}

/// Connection counters of one backend, as IPVS's ActiveConn / InActConn.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendConns {
    /// Flows in ESTABLISHED.
    pub active: u64,
    /// Flows in any other state (SYN_RECV, FIN_WAIT, CLOSE, UDP).
    pub inactive: u64,
}

/// Value of [`BACKEND_CONNS_MAP`]: the counters of every slot of one service.
///
/// [`BACKEND_CONNS_MAP`]: crate::limits::BACKEND_CONNS_MAP
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendConnSet {
    /// Counters indexed by backend slot.
    pub conns: [BackendConns; MAX_BACKENDS],
}

impl Default for BackendConnSet {
    fn default() -> Self {
        Self {
            conns: [BackendConns::default(); MAX_BACKENDS],
        }
    }
}

const _: () = {
    assert!(size_of::<Backend>() == 40);
    assert!(size_of::<BackendSet>() == 4 + 40 * MAX_BACKENDS);
    assert!(size_of::<BackendConns>() == 16);
    assert!(size_of::<BackendConnSet>() == 16 * MAX_BACKENDS);
};

#[cfg(feature = "user")]
mod pod {
    use super::{BackendConnSet, BackendSet};

    // SAFETY: both are #[repr(C)], hold only integers and byte arrays, and
    // have no implicit padding (the size assertions and layout tests here).
    unsafe impl aya::Pod for BackendConnSet {}
    unsafe impl aya::Pod for BackendSet {}
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use super::*;

    #[test]
    fn backend_layout() {
        assert_eq!(offset_of!(Backend, addr), 0);
        assert_eq!(offset_of!(Backend, mac), 16);
        assert_eq!(offset_of!(Backend, nic_mac), 22);
        assert_eq!(offset_of!(Backend, ifindex), 28);
        assert_eq!(offset_of!(Backend, weight), 32);
        assert_eq!(offset_of!(Backend, state), 36);
        assert_eq!(offset_of!(BackendSet, len), 0);
        assert_eq!(offset_of!(BackendSet, backends), 4);
    }

    #[test]
    fn conns_layout() {
        assert_eq!(offset_of!(BackendConns, active), 0);
        assert_eq!(offset_of!(BackendConns, inactive), 8);
        assert_eq!(offset_of!(BackendConnSet, conns), 0);
    }

    #[test]
    fn only_up_backends_with_weight_compete_for_new_flows() {
        let mut set = BackendSet::default();
        let states = [
            (BACKEND_STATE_UP, 100),
            (BACKEND_STATE_DOWN, 100),
            (BACKEND_STATE_UP, 0),
            (BACKEND_STATE_REMOVED, 100),
            (BACKEND_STATE_EMPTY, 100),
            (BACKEND_STATE_UP, 7),
        ];
        for (slot, &(state, weight)) in states.iter().enumerate() {
            set.backends[slot] = Backend {
                state,
                weight,
                ..Backend::default()
            };
        }
        set.len = states.len() as u32;
        let weights: [u32; 7] = core::array::from_fn(|slot| set.scheduling_weight(slot as u32));
        assert_eq!(weights, [100, 0, 0, 0, 0, 7, 0]);
        // Slots past `len` take no flows even if they hold a backend.
        set.len = 1;
        assert_eq!(set.scheduling_weight(5), 0);
        assert_eq!(set.scheduling_weight(u32::MAX), 0);
    }

    #[test]
    fn backends_from_their_parts() {
        let attachment = Attachment {
            mac: [2, 0, 0, 0, 0, 1],
            nic_mac: [2, 0, 0, 0, 0, 2],
            ifindex: 3,
        };
        assert_eq!(
            Backend::new(
                IpAddr::from([10, 0, 0, 7]),
                attachment,
                100,
                BACKEND_STATE_UP
            ),
            Backend {
                addr: [10, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                mac: [2, 0, 0, 0, 0, 1],
                nic_mac: [2, 0, 0, 0, 0, 2],
                ifindex: 3,
                weight: 100,
                state: BACKEND_STATE_UP,
            }
        );
        let v6 = Backend::new(IpAddr::from([0x20; 16]), attachment, 0, BACKEND_STATE_DOWN);
        assert_eq!(
            (v6.addr, v6.weight, v6.state),
            ([0x20; 16], 0, BACKEND_STATE_DOWN)
        );
    }
}
