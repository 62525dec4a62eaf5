//! Connection states and the TCP state machine the XDP program applies to
//! every packet of a flow.
//!
//! The director of a direct-routing service sees only the client-to-server
//! direction, so this follows IPVS's "input only" TCP table: the client's SYN
//! opens a flow in SYN_RECV (inactive), its first ACK makes it ESTABLISHED
//! (active), a FIN moves it to FIN_WAIT and an RST to CLOSE (both inactive).
//! Flag precedence is IPVS's: RST, then SYN, then FIN, then ACK.

/// No state yet (never stored in the connection table).
pub const STATE_NONE: u32 = 0;
/// TCP: SYN seen, handshake not completed by the client's ACK. Inactive.
pub const STATE_SYN_RECV: u32 = 1;
/// TCP: client ACKed; data flowing. The only *active* state.
pub const STATE_ESTABLISHED: u32 = 2;
/// TCP: the client sent FIN. Inactive.
pub const STATE_FIN_WAIT: u32 = 3;
/// TCP: the client sent RST. Inactive.
pub const STATE_CLOSE: u32 = 4;
/// UDP flow (no states). Inactive, as in IPVS.
pub const STATE_UDP: u32 = 5;
/// Number of states (for tables indexed by state).
pub const NUM_STATES: u32 = 6;

/// TCP flag bits as they appear in byte 13 of the TCP header.
pub const TCP_FIN: u8 = 0x01;
/// SYN flag bit.
pub const TCP_SYN: u8 = 0x02;
/// RST flag bit.
pub const TCP_RST: u8 = 0x04;
/// ACK flag bit.
pub const TCP_ACK: u8 = 0x10;

/// The state a TCP flow in `state` moves to when the client sends `flags`.
///
/// A flow that is not yet in the table is in [`STATE_NONE`]. A packet with
/// none of SYN/FIN/RST/ACK leaves the state unchanged.
///
/// The common case is answered first: data on an established flow (no SYN,
/// FIN or RST) leaves it established, so the flow cache's "does this packet
/// change the state" costs two tests for it.
#[inline(always)]
pub const fn tcp_next_state(state: u32, flags: u8) -> u32 {
    if state == STATE_ESTABLISHED && flags & (TCP_RST | TCP_SYN | TCP_FIN) == 0 {
        STATE_ESTABLISHED
    } else if flags & TCP_RST != 0 {
        STATE_CLOSE
    } else if flags & TCP_SYN != 0 {
        // A SYN does not reopen an established flow (a retransmitted or
        // simultaneous SYN); anywhere else it starts a new handshake.
        if state == STATE_ESTABLISHED {
            STATE_ESTABLISHED
        } else {
            STATE_SYN_RECV
        }
    } else if flags & TCP_FIN != 0 {
        match state {
            STATE_NONE | STATE_CLOSE => STATE_CLOSE,
            _ => STATE_FIN_WAIT,
        }
    } else if flags & TCP_ACK != 0 {
        match state {
            // An ACK for a flow we have no record of (the table was full, or
            // the director restarted) is a flow already in progress.
            STATE_NONE | STATE_SYN_RECV | STATE_ESTABLISHED => STATE_ESTABLISHED,
            _ => state,
        }
    } else if state == STATE_NONE {
        STATE_SYN_RECV
    } else {
        state
    }
}

/// Whether a flow in `state` counts as active (IPVS ActiveConn) rather than
/// inactive (InActConn) in weighted least-connection.
#[inline(always)]
pub const fn is_active(state: u32) -> bool {
    state == STATE_ESTABLISHED
}

/// IPVS-style name of a state, for `lb conns` and logs.
pub const fn state_name(state: u32) -> &'static str {
    match state {
        STATE_NONE => "NONE",
        STATE_SYN_RECV => "SYN_RECV",
        STATE_ESTABLISHED => "ESTABLISHED",
        STATE_FIN_WAIT => "FIN_WAIT",
        STATE_CLOSE => "CLOSE",
        STATE_UDP => "UDP",
        _ => "UNKNOWN",
    }
}

/// Idle timeouts per state, in seconds (IPVS defaults in [`Timeouts::IPVS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// ESTABLISHED (IPVS default 900 s).
    pub established: u64,
    /// SYN_RECV (IPVS default 60 s).
    pub syn_recv: u64,
    /// FIN_WAIT (IPVS default 120 s).
    pub fin_wait: u64,
    /// CLOSE (IPVS default 10 s).
    pub close: u64,
    /// UDP (IPVS default 300 s).
    pub udp: u64,
}

impl Timeouts {
    /// IPVS's default timeouts.
    pub const IPVS: Self = Self {
        established: 900,
        syn_recv: 60,
        fin_wait: 120,
        close: 10,
        udp: 300,
    };

    /// Idle timeout of a flow in `state`, in seconds.
    pub const fn for_state(&self, state: u32) -> u64 {
        match state {
            STATE_ESTABLISHED => self.established,
            STATE_SYN_RECV => self.syn_recv,
            STATE_FIN_WAIT => self.fin_wait,
            STATE_UDP => self.udp,
            // CLOSE, and anything unknown: expire quickly.
            _ => self.close,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self::IPVS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [u32; 5] = [
        STATE_NONE,
        STATE_SYN_RECV,
        STATE_ESTABLISHED,
        STATE_FIN_WAIT,
        STATE_CLOSE,
    ];

    #[test]
    fn established_data_stays_established() {
        for flags in 0..=u8::MAX {
            if flags & (TCP_RST | TCP_SYN | TCP_FIN) == 0 {
                assert_eq!(
                    tcp_next_state(STATE_ESTABLISHED, flags),
                    STATE_ESTABLISHED,
                    "flags {flags:#04x}"
                );
            }
        }
    }

    #[test]
    fn handshake_data_and_close() {
        let s = tcp_next_state(STATE_NONE, TCP_SYN);
        assert_eq!(s, STATE_SYN_RECV);
        assert!(!is_active(s));
        let s = tcp_next_state(s, TCP_ACK);
        assert_eq!(s, STATE_ESTABLISHED);
        assert!(is_active(s));
        let s = tcp_next_state(s, TCP_ACK | 0x08); // ACK|PSH
        assert_eq!(s, STATE_ESTABLISHED);
        let s = tcp_next_state(s, TCP_FIN | TCP_ACK);
        assert_eq!(s, STATE_FIN_WAIT);
        assert!(!is_active(s));
        let s = tcp_next_state(s, TCP_ACK);
        assert_eq!(s, STATE_FIN_WAIT);
    }

    #[test]
    fn rst_wins_over_every_other_flag() {
        for state in ALL {
            assert_eq!(tcp_next_state(state, TCP_RST), STATE_CLOSE);
            assert_eq!(
                tcp_next_state(state, TCP_RST | TCP_SYN | TCP_ACK),
                STATE_CLOSE
            );
        }
    }

    #[test]
    fn syn_restarts_all_but_established() {
        assert_eq!(
            tcp_next_state(STATE_ESTABLISHED, TCP_SYN),
            STATE_ESTABLISHED
        );
        for state in [STATE_NONE, STATE_SYN_RECV, STATE_FIN_WAIT, STATE_CLOSE] {
            assert_eq!(tcp_next_state(state, TCP_SYN), STATE_SYN_RECV);
        }
    }

    #[test]
    fn ack_without_record_is_established() {
        assert_eq!(tcp_next_state(STATE_NONE, TCP_ACK), STATE_ESTABLISHED);
        assert_eq!(tcp_next_state(STATE_CLOSE, TCP_ACK), STATE_CLOSE);
    }

    #[test]
    fn fin_and_flagless() {
        assert_eq!(tcp_next_state(STATE_NONE, TCP_FIN), STATE_CLOSE);
        assert_eq!(tcp_next_state(STATE_SYN_RECV, TCP_FIN), STATE_FIN_WAIT);
        assert_eq!(tcp_next_state(STATE_NONE, 0), STATE_SYN_RECV);
        assert_eq!(tcp_next_state(STATE_ESTABLISHED, 0), STATE_ESTABLISHED);
    }

    #[test]
    fn timeouts_follow_state() {
        let t = Timeouts::IPVS;
        assert_eq!(t.for_state(STATE_ESTABLISHED), 900);
        assert_eq!(t.for_state(STATE_SYN_RECV), 60);
        assert_eq!(t.for_state(STATE_FIN_WAIT), 120);
        assert_eq!(t.for_state(STATE_CLOSE), 10);
        assert_eq!(t.for_state(STATE_UDP), 300);
    }

    #[test]
    fn every_state_has_a_name() {
        for s in 0..NUM_STATES {
            assert_ne!(state_name(s), "UNKNOWN");
        }
    }
}
