//! What the control plane asks the kernel over route netlink: a NIC's index
//! and MAC, which NIC a real server is on-link through (a director NIC, the
//! bond it is enslaved to, or a VLAN device stacked on either), and the
//! real server's MAC from the neighbour table (asking the kernel to resolve
//! it when it is missing).
//!
//! Uses the `rtnetlink` crate (rust-netlink) rather than parsing `ip`
//! output or hand-rolling netlink messages.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, anyhow, bail};
use futures::TryStreamExt as _;
use lb_common::MAX_VLAN_TAGS;
use rtnetlink::{
    Handle, LinkUnspec, RouteMessageBuilder,
    packet_route::{
        address::AddressAttribute,
        link::{InfoData, InfoKind, InfoVlan, LinkAttribute, LinkInfo, LinkMessage},
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState},
    },
};

use super::Nic;

/// How the director reaches one real server (see [`Netlink::on_link`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnLink {
    /// The interface the real server is on-link through: a director NIC,
    /// the bond a director NIC is enslaved to, or a VLAN device stacked on
    /// either. Its neighbour table holds the real server's MAC, and its MAC
    /// is the source of the frames forwarded to it.
    pub nic: Nic,
    /// The VLAN ids of that interface's frames on the director NIC,
    /// outermost first (none: untagged).
    pub vlan: Vec<u16>,
    /// The director's own address in the real server's prefix on that
    /// interface.
    pub source: Option<IpAddr>,
}

/// A network interface, as far as finding NICs and their VLANs needs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Link {
    index: u32,
    name: String,
    /// Its Ethernet address, if it has one.
    mac: Option<[u8; 6]>,
    /// The bond (or bridge, team) it is enslaved to (`IFLA_MASTER`).
    master: Option<u32>,
    /// For a VLAN device: its VLAN id and the device it is stacked on.
    vlan: Option<(u16, u32)>,
}

impl Link {
    fn of(message: &LinkMessage) -> Option<Self> {
        let mut name = None;
        let mut mac = None;
        let mut master = None;
        let mut lower = None;
        let mut vlan_id = None;
        for attr in &message.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::Address(a) => mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
                LinkAttribute::Controller(index) => master = Some(*index),
                LinkAttribute::Link(index) => lower = Some(*index),
                LinkAttribute::LinkInfo(infos) => {
                    let is_vlan = infos.contains(&LinkInfo::Kind(InfoKind::Vlan));
                    for info in infos {
                        if let LinkInfo::Data(InfoData::Vlan(data)) = info
                            && is_vlan
                        {
                            vlan_id = data.iter().find_map(|d| match d {
                                InfoVlan::Id(id) => Some(*id),
                                _ => None,
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        Some(Self {
            index: message.header.index,
            name: name?,
            mac,
            master,
            vlan: vlan_id.zip(lower),
        })
    }

    /// The link as a [`Nic`], if it has an Ethernet address.
    fn nic(&self) -> Option<Nic> {
        Some(Nic {
            name: self.name.clone(),
            index: self.index,
            mac: self.mac?,
        })
    }
}

/// The VLAN ids (outermost first) that the frames of link `index` carry on
/// a director NIC of `nics`, as lb's XDP program sees them there: none for
/// a director NIC itself or the bond (bridge, team) one is enslaved to;
/// the ids of a VLAN device stacked on one of those (at most
/// [`MAX_VLAN_TAGS`]). `None` for a link whose frames do not pass a
/// director NIC.
fn vlan_ids_on_nics(links: &[Link], nics: &[Nic], index: u32) -> Option<Vec<u16>> {
    let is_nic = |index: u32| nics.iter().any(|n| n.index == index);
    let mut ids = Vec::new();
    let mut index = index;
    for _ in 0..=MAX_VLAN_TAGS {
        let enslaves_a_nic = links
            .iter()
            .any(|l| l.master == Some(index) && is_nic(l.index));
        if is_nic(index) || enslaves_a_nic {
            ids.reverse();
            return Some(ids);
        }
        let (id, lower) = links.iter().find(|l| l.index == index)?.vlan?;
        ids.push(id);
        index = lower;
    }
    None
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

    /// Every network interface of this namespace.
    ///
    /// Dumps are read to the end before they are searched (here and below):
    /// a dump dropped half-read leaves replies the netlink connection can no
    /// longer deliver, and it logs a warning for each.
    async fn links(&self) -> anyhow::Result<Vec<Link>> {
        let messages: Vec<_> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .context("listing network interfaces")?;
        Ok(messages.iter().filter_map(Link::of).collect())
    }

    /// Looks up a NIC by name; the error lists the NICs that exist.
    pub async fn nic(&self, name: &str) -> anyhow::Result<Nic> {
        let links = self.links().await?;
        named(&links, name)?.nic().ok_or_else(|| {
            anyhow!(
                "network interface {name} has no Ethernet address (XDP DR needs an Ethernet NIC)"
            )
        })
    }

    /// The interfaces enslaved to NIC `index` (a bond's slaves; none for a
    /// plain NIC). An XDP program attached to a bond runs on its slaves'
    /// receive queues: their indexes are its frames' ingress.
    pub async fn ports(&self, index: u32) -> anyhow::Result<Vec<Nic>> {
        let links = self.links().await?;
        Ok(links
            .iter()
            .filter(|l| l.master == Some(index))
            .filter_map(Link::nic)
            .collect())
    }

    /// How a real server at `addr` is reached from the director NICs
    /// `nics`, for a service on VLAN `vlan` (ids outermost first, none:
    /// untagged): the interface with an address prefix containing `addr`
    /// (the one through which it is on-link, as direct routing requires)
    /// among the NICs, the bonds they are enslaved to and the VLAN devices
    /// stacked on either, preferring one on `vlan` (the first found
    /// otherwise); and the director's own address in that prefix, the
    /// source its health checks must use. Addresses in `not_sources` (the
    /// VIPs) are never a source: the kernel would pick a VIP on the NIC for
    /// some backends (for IPv6, a VIP/128 beats the NIC's /64 address by
    /// longest match), and a real server answers a VIP-sourced check to its
    /// own `lo`. The source is `None` when the interface has no other
    /// address in that prefix.
    pub async fn on_link(
        &self,
        nics: &[Nic],
        addr: IpAddr,
        not_sources: &HashSet<IpAddr>,
        vlan: &[u16],
    ) -> anyhow::Result<Option<OnLink>> {
        let links = self.links().await?;
        let addresses: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .context("listing addresses")?;
        let mut found: Vec<OnLink> = Vec::new();
        for msg in addresses {
            let index = msg.header.index;
            let Some(ids) = vlan_ids_on_nics(&links, nics, index) else {
                continue;
            };
            let Some(nic) = links.iter().find(|l| l.index == index).and_then(Link::nic) else {
                continue;
            };
            for attr in &msg.attributes {
                let AddressAttribute::Address(prefix) = attr else {
                    continue;
                };
                if !same_prefix(*prefix, addr, msg.header.prefix_len) {
                    continue;
                }
                let link = match found.iter().position(|f| f.nic.index == index) {
                    Some(at) => &mut found[at],
                    None => {
                        found.push(OnLink {
                            nic: nic.clone(),
                            vlan: ids.clone(),
                            source: None,
                        });
                        found.last_mut().expect("just pushed")
                    }
                };
                if link.source.is_none() && !not_sources.contains(prefix) {
                    link.source = Some(*prefix);
                }
            }
        }
        let preferred = found.iter().position(|f| f.vlan == vlan).unwrap_or(0);
        Ok((!found.is_empty()).then(|| found.swap_remove(preferred)))
    }

    /// Interface `name`'s index and the director's own address on it to
    /// talk to `toward` (a peer: an address in its prefix if there is one;
    /// a multicast group: any address of its family), never one of
    /// `not_sources` (the VIPs, which keepalived may have put there).
    pub async fn own_address(
        &self,
        name: &str,
        toward: IpAddr,
        not_sources: &HashSet<IpAddr>,
    ) -> anyhow::Result<(u32, IpAddr)> {
        let links = self.links().await?;
        let link = named(&links, name)?;
        let addresses: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute()
            .try_collect()
            .await
            .with_context(|| format!("listing the addresses of {name}"))?;
        let mut candidates = Vec::new();
        for msg in &addresses {
            for attr in &msg.attributes {
                if let AddressAttribute::Address(addr) = attr
                    && addr.is_ipv4() == toward.is_ipv4()
                    && !not_sources.contains(addr)
                {
                    candidates.push((*addr, msg.header.prefix_len));
                }
            }
        }
        let on_link = candidates
            .iter()
            .find(|(addr, len)| !toward.is_multicast() && same_prefix(*addr, toward, *len));
        match on_link.or(candidates.first()) {
            Some((addr, _)) => Ok((link.index, *addr)),
            None => bail!(
                "interface {name} has no {} address of its own to sync with {toward} from \
                 (the VIPs do not count; give it one)",
                if toward.is_ipv4() { "IPv4" } else { "IPv6" }
            ),
        }
    }

    /// The index of interface `name`, if it exists.
    pub async fn link_index(&self, name: &str) -> anyhow::Result<Option<u32>> {
        let links = self.links().await?;
        Ok(links.iter().find(|l| l.name == name).map(|l| l.index))
    }

    /// Sets interface `index` up.
    pub async fn set_link_up(&self, index: u32) -> anyhow::Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .with_context(|| format!("setting interface {index} up"))
    }

    /// Adds (`add`) or deletes the host route to `addr` (a /32 or /128)
    /// through interface `index` in routing table `table`.
    pub async fn host_route(
        &self,
        add: bool,
        table: u32,
        addr: IpAddr,
        index: u32,
    ) -> anyhow::Result<()> {
        let message = match addr {
            IpAddr::V4(v4) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(v4, 32)
                .output_interface(index)
                .table_id(table)
                .build(),
            IpAddr::V6(v6) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(v6, 128)
                .output_interface(index)
                .table_id(table)
                .build(),
        };
        let routes = self.handle.route();
        let done = if add {
            routes.add(message).replace().execute().await
        } else {
            routes.del(message).execute().await
        };
        done.with_context(|| {
            format!(
                "{} the route to {addr} in table {table}",
                if add { "adding" } else { "deleting" }
            )
        })
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
/// The interface of `links` named `name`; the error lists those that exist.
fn named<'a>(links: &'a [Link], name: &str) -> anyhow::Result<&'a Link> {
    links.iter().find(|l| l.name == name).ok_or_else(|| {
        anyhow!(
            "no network interface named {name:?} in this network namespace (existing: {})",
            links
                .iter()
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

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

    /// A link named `name` with index `index`, enslaved to `master`, or a
    /// VLAN device of `vlan` (id, lower device).
    fn link(index: u32, name: &str, master: Option<u32>, vlan: Option<(u16, u32)>) -> Link {
        Link {
            index,
            name: name.to_owned(),
            mac: Some([2, 0, 0, 0, 0, index as u8]),
            master,
            vlan,
        }
    }

    /// `bond0` over `eth0` and `eth1`, with `bond0.4001` and QinQ
    /// `bond0.100.4001` (and a third tag on that), beside `eth2` and
    /// `eth2.7`.
    fn host() -> Vec<Link> {
        vec![
            link(1, "eth0", Some(3), None),
            link(2, "eth1", Some(3), None),
            link(3, "bond0", None, None),
            link(4, "bond0.4001", None, Some((4001, 3))),
            link(5, "bond0.100", None, Some((100, 3))),
            link(6, "bond0.100.4001", None, Some((4001, 5))),
            link(7, "eth2", None, None),
            link(8, "eth2.7", None, Some((7, 7))),
            link(9, "bond0.100.4001.5", None, Some((5, 6))),
        ]
    }

    #[test]
    fn vlan_devices_on_a_bond_and_its_slaves() {
        let links = host();
        let nics_of = |names: &[&str]| -> Vec<Nic> {
            links
                .iter()
                .filter(|l| names.contains(&l.name.as_str()))
                .filter_map(Link::nic)
                .collect()
        };
        let slaves = nics_of(&["eth0", "eth1"]);
        let bond = nics_of(&["bond0"]);
        for nics in [&slaves, &bond] {
            let on = |index| vlan_ids_on_nics(&links, nics, index);
            assert_eq!(on(3), Some(vec![]), "bond0 over {nics:?}");
            assert_eq!(on(4), Some(vec![4001]), "bond0.4001 over {nics:?}");
            assert_eq!(on(5), Some(vec![100]), "bond0.100 over {nics:?}");
            assert_eq!(on(6), Some(vec![100, 4001]), "bond0.100.4001 over {nics:?}");
            assert_eq!(on(9), None, "three tags, over {nics:?}");
            assert_eq!(on(7), None, "eth2 is not a director NIC");
            assert_eq!(on(8), None, "eth2.7 is not on a director NIC");
        }
        assert_eq!(vlan_ids_on_nics(&links, &slaves, 1), Some(vec![]));
        assert_eq!(
            vlan_ids_on_nics(&links, &nics_of(&["eth2"]), 8),
            Some(vec![7])
        );
        assert_eq!(vlan_ids_on_nics(&links, &slaves, 42), None, "no such link");
    }

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
