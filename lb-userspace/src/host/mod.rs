//! What `lb` asks of and does to the host it runs on: its NICs and
//! neighbours over route [`netlink`], their receive VLAN offload over
//! [`ethtool`], the real-server set-up of
//! `lb realserver` ([`realserver`]), and whether the process has the
//! [`privilege`]s a command needs.
//!
//! [`Nic`] is here, apart from the netlink session that finds NICs, so the
//! director's bookkeeping records where backends are without depending on
//! netlink.

pub mod ethtool;
pub mod netlink;
pub mod privilege;
pub mod realserver;

/// A director NIC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// Its MAC address.
    pub mac: [u8; 6],
}
