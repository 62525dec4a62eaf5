//! What the control plane asks the kernel over route netlink: a NIC's index
//! and MAC, which NIC a real server is on-link through, and the real
//! server's MAC from the neighbour table (asking the kernel to resolve it
//! when it is missing).
//!
//! Uses the `rtnetlink` crate (rust-netlink) rather than parsing `ip`
//! output or hand-rolling netlink messages.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    net::IpAddr,
};

use anyhow::{Context as _, anyhow, bail};
use futures::TryStreamExt as _;
use rtnetlink::{
    Handle,
    packet_route::{
        address::AddressAttribute,
        link::LinkAttribute,
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState},
    },
};

use super::Nic;

/// How the director reaches one real server (see [`Netlink::on_link`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnLink<'a> {
    /// The director NIC the real server is on-link through.
    pub nic: &'a Nic,
    /// The director's own address in the real server's prefix on that NIC.
    pub source: Option<IpAddr>,
}

/// A route-netlink session (needs a running tokio runtime).
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a netlink socket in the current network namespace.
    pub fn open() -> anyhow::Result<Self> {
        let (connection, handle, _) =
            rtnetlink::new_connection().context("opening a route netlink socket")?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// Looks up a NIC by name; the error lists the NICs that exist.
    ///
    /// Dumps are read to the end before they are searched (here and below):
    /// a dump dropped half-read leaves replies the netlink connection can no
    /// longer deliver, and it logs a warning for each.
    pub async fn nic(&self, name: &str) -> anyhow::Result<Nic> {
        let links: Vec<_> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .context("listing network interfaces")?;
        let mut names = Vec::new();
        for link in links {
            let mut link_name = None;
            let mut mac = None;
            for attr in &link.attributes {
                match attr {
                    LinkAttribute::IfName(n) => link_name = Some(n.clone()),
                    LinkAttribute::Address(a) if a.len() == 6 => {
                        mac = Some(<[u8; 6]>::try_from(a.as_slice()).expect("length checked"))
                    }
                    _ => {}
                }
            }
            let Some(link_name) = link_name else { continue };
            if link_name == name {
                let mac = mac.ok_or_else(|| {
                    anyhow!("network interface {name} has no Ethernet address (XDP DR needs an Ethernet NIC)")
                })?;
                return Ok(Nic {
                    name: link_name,
                    index: link.header.index,
                    mac,
                });
            }
            names.push(link_name);
        }
        bail!(
            "no network interface named {name:?} in this network namespace (existing: {})",
            names.join(", ")
        )
    }

    /// How a real server at `addr` is reached: the first of `nics` with an
    /// address prefix containing `addr` (the NIC through which it is on-link,
    /// as direct routing requires), and the director's own address in that
    /// prefix, the source its health checks must use. Addresses in
    /// `not_sources` (the VIPs) are never a source: the kernel would pick a
    /// VIP on the NIC for some backends (for IPv6, a VIP/128 beats the NIC's
    /// /64 address by longest match), and a real server answers a VIP-sourced
    /// check to its own `lo`. The source is `None` when the NIC has no other
    /// address in that prefix.
    pub async fn on_link<'a>(
        &self,
        nics: &'a [Nic],
        addr: IpAddr,
        not_sources: &HashSet<IpAddr>,
    ) -> anyhow::Result<Option<OnLink<'a>>> {
        let addresses: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .context("listing addresses")?;
        let mut found: Option<OnLink<'a>> = None;
        for msg in addresses {
            let Some(nic) = nics.iter().find(|n| n.index == msg.header.index) else {
                continue;
            };
            if found.as_ref().is_some_and(|f| f.nic.index != nic.index) {
                continue;
            }
            for attr in &msg.attributes {
                let AddressAttribute::Address(prefix) = attr else {
                    continue;
                };
                if !same_prefix(*prefix, addr, msg.header.prefix_len) {
                    continue;
                }
                let link = found.get_or_insert(OnLink { nic, source: None });
                if link.source.is_none() && !not_sources.contains(prefix) {
                    link.source = Some(*prefix);
                }
            }
        }
        Ok(found)
    }

    /// The kernel's resolved neighbour entries: (NIC index, address) -> MAC.
    /// Entries still being resolved or that failed are left out.
    pub async fn neighbours(&self) -> anyhow::Result<StdHashMap<(u32, IpAddr), [u8; 6]>> {
        let mut table = StdHashMap::new();
        let mut neighbours = self.handle.neighbours().get().execute();
        while let Some(msg) = neighbours.try_next().await.context("listing neighbours")? {
            if matches!(
                msg.header.state,
                NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
            ) {
                continue;
            }
            let mut dest = None;
            let mut mac = None;
            for attr in &msg.attributes {
                match attr {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                        dest = Some(IpAddr::V4(*a))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                        dest = Some(IpAddr::V6(*a))
                    }
                    NeighbourAttribute::LinkLayerAddress(l) => {
                        mac = <[u8; 6]>::try_from(l.as_slice()).ok()
                    }
                    _ => {}
                }
            }
            if let (Some(dest), Some(mac)) = (dest, mac) {
                table.insert((msg.header.ifindex, dest), mac);
            }
        }
        Ok(table)
    }

    /// Asks the kernel to resolve `addr` on NIC `index` (ARP or neighbour
    /// solicitation), as `ip neigh replace ADDR dev NIC use` does: the
    /// `NTF_USE` flag sends a probe without changing an existing entry.
    pub async fn solicit(&self, index: u32, addr: IpAddr) -> anyhow::Result<()> {
        self.handle
            .neighbours()
            .add(index, addr)
            .flags(NeighbourFlags::Use)
            .state(NeighbourState::Incomplete)
            .replace()
            .execute()
            .await
            .with_context(|| format!("asking the kernel to resolve {addr}"))
    }
}

/// Whether `a` and `b` share their first `prefix_len` bits (same family only).
fn same_prefix(a: IpAddr, b: IpAddr, prefix_len: u8) -> bool {
    let (a, b, bits) = match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) as u128, u32::from(b) as u128, 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    let prefix_len = u32::from(prefix_len).min(bits);
    if prefix_len == 0 {
        return true;
    }
    let shift = bits - prefix_len;
    (a >> shift) == (b >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(same_prefix(ip("192.0.2.1"), ip("192.0.2.200"), 24));
        assert!(!same_prefix(ip("192.0.2.1"), ip("192.0.3.1"), 24));
        assert!(same_prefix(ip("192.0.2.1"), ip("192.0.2.1"), 32));
        assert!(same_prefix(ip("2001:db8::1"), ip("2001:db8::ffff"), 64));
        assert!(!same_prefix(ip("2001:db8::1"), ip("2001:db9::1"), 64));
        assert!(!same_prefix(ip("192.0.2.1"), ip("2001:db8::1"), 0));
    }
}
