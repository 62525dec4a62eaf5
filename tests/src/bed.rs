//! The LVS-DR test beds, built from network namespaces: one L2 segment
//! ([`Layout::OneSegment`]), or a dual-homed director between a front and a
//! back network ([`Layout::DualHomed`], drawn at the end).
//!
//! ```text
//!                 switch namespace (bridge br0, mcast snooping off)
//!        c0 ─────────── d0 (+XDP_PASS) ──────── r1 … rN
//!        │              │                       │
//!   client: eth0    director: lbd0          real server i: eth0
//!   192.0.2.10      192.0.2.2 + VIP/32      192.0.2.(10+i), VIP/32 on lo
//!   2001:db8::10    2001:db8::2 + VIP/128   2001:db8::(10+i), VIP/128 on lo
//! ```
//!
//! [`TestBed::build_behind_router`] puts the client on a network of its own
//! instead, behind a router on the segment (see there).
//!
//! [`TestBed::build_pair`] ([`Layout::Pair`]) lays the segment out as a
//! VRRP pair of directors is: a second director `director2` beside the
//! first, and the VIPs on neither, for a VIP manager (keepalived) to move.
//!
//! ```text
//!                 switch namespace (bridge br0, mcast snooping off)
//!        c0 ──── d0 (+XDP_PASS) ──── d2 (+XDP_PASS) ──── r1 … rN
//!        │       │                   │                   │
//!   client    director: lbd0      director2: lbd0     real servers
//!   .10       192.0.2.2           192.0.2.3           as above
//!             2001:db8::2         2001:db8::3
//!             (VIP when master)   (VIP when master)
//! ```
//!
//! Each veth pair is created inside the switch namespace with its other end
//! placed straight into the host's namespace, so interface names only need
//! to be unique per namespace and tests never collide on them. Namespaces
//! are named `lbt<pid>-<n>-<role>`.
//!
//! What makes DR work between namespaces (see the platform notes):
//! - the director's bridge-side veth (`d0`) carries an `XDP_PASS` program, or
//!   frames the director sends with `XDP_TX` are dropped;
//! - TX checksum offload is off on the client and real servers, or frames
//!   forwarded by XDP keep partial checksums and get dropped;
//! - real servers hold the VIPs on `lo` with `arp_ignore=1`, `arp_announce=2`;
//! - DAD is off and addresses are `nodad`, so IPv6 works at once.
//!
//! The dual-homed bed: clients on the front network, real servers on the
//! back network (default route through the router, which carries their
//! direct replies to the client), the director on both, holding the VIPs on
//! its front NIC. The client reaches the VIPs through the director, which
//! redirects every frame to its back NIC; both of the director's switch-side
//! veths carry an `XDP_PASS` program (a veth delivers redirected frames, too,
//! only when its peer runs one).
//!
//! ```text
//!  front (br0) 203.0.113.0/24, 2001:db8:a::/64   back (br1) 198.51.100.0/24, 2001:db8:b::/64
//!   client: eth0 .10 ── c0                        r1 … rN ── real server i: eth0 .(10+i),
//!   director: lbd0 .2 + VIPs ── d0 (+XDP_PASS)    d1 (+XDP_PASS) ── director: lbd1 .2     VIPs on lo
//!   router: eth0 .1 ── g0                         g1 ── router: eth1 .1
//! ```

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::mpsc,
    thread::JoinHandle,
};

use anyhow::{Context as _, anyhow};
use lb::datapath::PassProgram;

use crate::{
    NetNs, RealServer,
    daemon::{Health, LbConfig, Protocol, ServiceConfig, pin_path_for},
};

/// The IPv4 VIP.
pub const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 200);
/// The IPv6 VIP.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x200);

/// Name of the director's NIC (in its namespace): put it in `lb`'s config.
/// On the dual-homed bed, its front NIC.
pub const DIRECTOR_IFACE: &str = "lbd0";
/// Name of the dual-homed director's back NIC, towards the real servers.
pub const DIRECTOR_BACK_IFACE: &str = "lbd1";

/// How a bed's hosts are wired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One segment: client, director and real servers on one bridge.
    OneSegment,
    /// Clients on a front network, real servers on a back network, the
    /// director on both and a router between them.
    DualHomed,
    /// One segment, but the client behind a router on it, alone on a link
    /// of MTU `client_mtu` (see [`TestBed::build_behind_router`]).
    BehindRouter {
        /// MTU of the client's link to the router.
        client_mtu: u32,
    },
    /// One segment with two directors, `director` (.2) and `director2`
    /// (.3), their NICs both named [`DIRECTOR_IFACE`], and the VIPs on
    /// neither (see [`TestBed::build_pair`]).
    Pair,
    /// [`Layout::Pair`]'s two directors, with the client behind a router on
    /// the segment as in [`Layout::BehindRouter`] (a 1,500-byte link): the
    /// router reaches the VIPs through whichever directors announce them
    /// (an ECMP group; see [`TestBed::build_ecmp`]).
    EcmpPair,
}

/// One L2 network of a bed: a bridge in the switch namespace and the
/// addresses of its hosts.
#[derive(Clone, Copy, Debug)]
struct Segment {
    /// The bridge.
    bridge: &'static str,
    /// The IPv4 /24 (first three octets).
    ipv4: [u8; 3],
    /// The IPv6 /64, as text ending in `::`.
    ipv6: &'static str,
    /// The fifth byte of its hosts' MACs.
    mac: u8,
}

/// The one segment of [`Layout::OneSegment`].
const ONLY: Segment = Segment {
    bridge: "br0",
    ipv4: [192, 0, 2],
    ipv6: "2001:db8::",
    mac: 0,
};
/// The front network of [`Layout::DualHomed`]: clients and the VIPs.
const FRONT: Segment = Segment {
    bridge: "br0",
    ipv4: [203, 0, 113],
    ipv6: "2001:db8:a::",
    mac: 0x0a,
};
/// The back network of [`Layout::DualHomed`]: the real servers.
const BACK: Segment = Segment {
    bridge: "br1",
    ipv4: [198, 51, 100],
    ipv6: "2001:db8:b::",
    mac: 0x0b,
};

/// The router's address on the segment, in [`TestBed::build_behind_router`].
pub const ROUTER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The router's IPv6 address on the segment.
pub const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// The client's network behind the router, and the client's address in it
/// (the router is .1).
pub const ROUTED_CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// The client's IPv6 network behind the router, and the client's address
/// in it (the router is ::1).
pub const ROUTED_CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0x10);

/// One host on the segment.
#[derive(Debug)]
pub struct Host {
    /// Its namespace.
    pub ns: NetNs,
    /// Its role: `client`, `director`, `rs1`, `rs2`, ...
    pub role: String,
    /// Its NIC (in its namespace).
    pub iface: String,
    /// Its IPv4 address on the segment.
    pub ipv4: Ipv4Addr,
    /// Its IPv6 address on the segment.
    pub ipv6: Ipv6Addr,
    /// Its NIC's MAC address.
    pub mac: String,
}

impl Host {
    /// Its address of the same family as `like`.
    pub fn addr_like(&self, like: IpAddr) -> IpAddr {
        match like {
            IpAddr::V4(_) => self.ipv4.into(),
            IpAddr::V6(_) => self.ipv6.into(),
        }
    }
}

/// The whole bed. Dropping it deletes every namespace it made (by name).
pub struct TestBed {
    tag: String,
    // Field order is drop order: the XDP_PASS programs go first.
    _pass: Vec<PassGuard>,
    client: Host,
    router: Option<Host>,
    director: Host,
    /// The second director of [`Layout::Pair`].
    director2: Option<Host>,
    /// The director's NICs, the front one first: what `lb` attaches to.
    director_ifaces: Vec<String>,
    real_servers: Vec<Host>,
    switch: NetNs,
}

impl TestBed {
    /// Builds the one-segment bed with `real_servers` real servers; `tag`
    /// (see [`crate::unique_tag`]) makes every name unique.
    pub fn build(tag: &str, real_servers: usize) -> anyhow::Result<Self> {
        Self::build_as(Layout::OneSegment, tag, real_servers)
    }

    /// Builds the bed with the client behind a router, as a client on the
    /// Internet is: the router is on the segment (192.0.2.1, 2001:db8::1,
    /// forwarding), the client alone on a link of MTU `client_mtu` to it
    /// (198.51.100.10/24 and 2001:db8:c::10/64, the router .1 and ::1), and
    /// the director and real servers reach the client's networks through
    /// the router. The client still advertises the TCP MSS of a 1,500-byte
    /// link (1,460, IPv6 1,440: a route `advmss`), as a client on an
    /// Ethernet LAN behind a narrower link does: full-sized segments of the
    /// real servers reach the router, which must answer them with ICMP
    /// errors (IPv4 fragmentation needed, IPv6 packet too big) to the VIP.
    pub fn build_behind_router(
        tag: &str,
        real_servers: usize,
        client_mtu: u32,
    ) -> anyhow::Result<Self> {
        Self::build_as(Layout::BehindRouter { client_mtu }, tag, real_servers)
    }

    /// Builds the one-segment bed of a VRRP pair of directors
    /// ([`Layout::Pair`]): the director at 192.0.2.2 and 2001:db8::2, a
    /// second director `director2` at 192.0.2.3 and 2001:db8::3, each with
    /// its NIC [`DIRECTOR_IFACE`] on the bridge and an `XDP_PASS` program on
    /// its switch-side veth (`d0`, `d2`), and `real_servers` real servers.
    /// Neither director holds the VIPs: whichever VIP manager the test runs
    /// adds them to the master's NIC. TX checksum offload is off on both
    /// directors' NICs, as on a real NIC that puts full checksums on the
    /// wire: what one director sends the other (sync messages) then
    /// arrives as it would from a wire, through the peer's XDP program.
    pub fn build_pair(tag: &str, real_servers: usize) -> anyhow::Result<Self> {
        Self::build_as(Layout::Pair, tag, real_servers)
    }

    /// Builds an ECMP group of two directors ([`Layout::EcmpPair`]): the
    /// directors of [`TestBed::build_pair`] (the VIPs on neither), the
    /// router of [`TestBed::build_behind_router`] at 192.0.2.1 with the
    /// client behind it; the test makes the router's routes to the VIPs.
    pub fn build_ecmp(tag: &str, real_servers: usize) -> anyhow::Result<Self> {
        Self::build_as(Layout::EcmpPair, tag, real_servers)
    }

    /// Builds the bed of `layout` with `real_servers` real servers.
    pub fn build_as(layout: Layout, tag: &str, real_servers: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (1..=80).contains(&real_servers),
            "1 to 80 real servers, not {real_servers}"
        );
        let (front, back) = match layout {
            Layout::OneSegment | Layout::BehindRouter { .. } | Layout::Pair | Layout::EcmpPair => {
                (ONLY, ONLY)
            }
            Layout::DualHomed => (FRONT, BACK),
        };
        let switch = NetNs::create(&format!("lbt{tag}-sw"))?;
        add_bridge(&switch, front.bridge)?;
        if back.bridge != front.bridge {
            add_bridge(&switch, back.bridge)?;
        }

        let (client, mut router) = match layout {
            Layout::BehindRouter { client_mtu } => {
                let (client, router) = routed_client(&switch, tag, client_mtu)?;
                (client, Some(router))
            }
            Layout::EcmpPair => {
                let (client, router) = routed_client(&switch, tag, 1500)?;
                (client, Some(router))
            }
            Layout::OneSegment | Layout::DualHomed | Layout::Pair => (
                add_host(&switch, tag, "client", "c0", "eth0", 10, front)?,
                None,
            ),
        };
        client
            .ns
            .exec("ethtool", &["-K", &client.iface, "tx", "off"])?;

        let director = add_host(&switch, tag, "director", "d0", DIRECTOR_IFACE, 2, front)?;
        let mut director_ifaces = vec![DIRECTOR_IFACE.to_owned()];
        let mut pass_on = vec!["d0"];
        let mut director2 = None;
        if matches!(layout, Layout::Pair | Layout::EcmpPair) {
            let second = add_host(&switch, tag, "director2", "d2", DIRECTOR_IFACE, 3, front)?;
            for host in [&director, &second] {
                host.ns.exec("ethtool", &["-K", &host.iface, "tx", "off"])?;
            }
            pass_on.push("d2");
            director2 = Some(second);
        } else {
            director
                .ns
                .ip(&["addr", "add", &format!("{VIP4}/32"), "dev", DIRECTOR_IFACE])?;
            director.ns.ip(&[
                "addr",
                "add",
                &format!("{VIP6}/128"),
                "dev",
                DIRECTOR_IFACE,
                "nodad",
            ])?;
        }

        // The router's back addresses: the real servers' default routes.
        let mut back_gateway = None;
        if layout == Layout::DualHomed {
            add_nic(&switch, &director.ns, "d1", DIRECTOR_BACK_IFACE, 2, BACK)?;
            director_ifaces.push(DIRECTOR_BACK_IFACE.to_owned());
            pass_on.push("d1");
            let gateway = add_host(&switch, tag, "router", "g0", "eth0", 1, FRONT)?;
            let (v4, v6, _) = add_nic(&switch, &gateway.ns, "g1", "eth1", 1, BACK)?;
            back_gateway = Some((v4, v6));
            gateway.ns.sysctls(&[
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
                ("net.ipv6.conf.all.forwarding", "1"),
            ])?;
            // The VIPs are the director's, on the front network.
            for (vip, via) in [
                (format!("{VIP4}/32"), director.ipv4.to_string()),
                (format!("{VIP6}/128"), director.ipv6.to_string()),
            ] {
                client.ns.ip(&["route", "add", &vip, "via", &via])?;
            }
            router = Some(gateway);
        }

        let mut servers = Vec::with_capacity(real_servers);
        for i in 1..=real_servers {
            let rs = add_host(
                &switch,
                tag,
                &format!("rs{i}"),
                &format!("r{i}"),
                "eth0",
                10 + i,
                back,
            )?;
            rs.ns
                .ip(&["addr", "add", &format!("{VIP4}/32"), "dev", "lo"])?;
            rs.ns
                .ip(&["addr", "add", &format!("{VIP6}/128"), "dev", "lo", "nodad"])?;
            let iface = rs.iface.clone();
            rs.ns.sysctls(&[
                ("net.ipv4.conf.all.arp_ignore", "1"),
                ("net.ipv4.conf.all.arp_announce", "2"),
                (&format!("net.ipv4.conf.{iface}.arp_ignore"), "1"),
                (&format!("net.ipv4.conf.{iface}.arp_announce"), "2"),
            ])?;
            rs.ns.exec("ethtool", &["-K", &rs.iface, "tx", "off"])?;
            if let Some((v4, v6)) = back_gateway {
                // Direct replies to the client go through the router.
                rs.ns
                    .ip(&["route", "add", "default", "via", &v4.to_string()])?;
                rs.ns
                    .ip(&["-6", "route", "add", "default", "via", &v6.to_string()])?;
            }
            servers.push(rs);
        }

        if matches!(layout, Layout::BehindRouter { .. } | Layout::EcmpPair) {
            for host in servers.iter().chain([&director]).chain(director2.as_ref()) {
                host.ns.ip(&[
                    "route",
                    "add",
                    "198.51.100.0/24",
                    "via",
                    &ROUTER4.to_string(),
                ])?;
                host.ns.ip(&[
                    "-6",
                    "route",
                    "add",
                    "2001:db8:c::/64",
                    "via",
                    &ROUTER6.to_string(),
                ])?;
            }
        }

        let pass = pass_on
            .into_iter()
            .map(|peer| PassGuard::attach(&switch, peer))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            tag: tag.to_owned(),
            _pass: pass,
            client,
            router,
            director,
            director2,
            director_ifaces,
            real_servers: servers,
            switch,
        })
    }

    /// The tag every name of this bed contains.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The client.
    pub fn client(&self) -> &Host {
        &self.client
    }

    /// The router: the one the client is behind ([`Layout::BehindRouter`])
    /// or the one between the dual-homed bed's networks.
    pub fn router(&self) -> Option<&Host> {
        self.router.as_ref()
    }

    /// The director (its front NIC on the dual-homed bed).
    pub fn director(&self) -> &Host {
        &self.director
    }

    /// The second director of [`Layout::Pair`] (`None` on other beds).
    pub fn director2(&self) -> Option<&Host> {
        self.director2.as_ref()
    }

    /// The real servers, `rs1` first.
    pub fn real_servers(&self) -> &[Host] {
        &self.real_servers
    }

    /// The switch namespace (holds bridge `br0`, and `br1` on the
    /// dual-homed bed).
    pub fn switch(&self) -> &NetNs {
        &self.switch
    }

    /// A wlc service on `vip`:`port` over the real servers, the i-th weighted
    /// `weights[i]`, addressed in `vip`'s family.
    pub fn service(
        &self,
        name: &str,
        vip: IpAddr,
        port: u16,
        protocol: Protocol,
        health: Health,
        weights: &[u32],
    ) -> ServiceConfig {
        ServiceConfig {
            name: name.to_owned(),
            vip,
            port,
            protocol,
            health,
            backends: self
                .real_servers
                .iter()
                .zip(weights)
                .map(|(rs, &w)| (rs.addr_like(vip), w))
                .collect(),
            reject_without_backend: false,
            sorry_server: None,
            quorum: None,
            persistence: None,
            vlan: Vec::new(),
            more_ports: Vec::new(),
            scheduler: "wlc",
        }
    }

    /// An `lb` config for this bed's director: its NICs, a pin directory
    /// named after the bed's tag, connection tables of 65 536 IPv4 and
    /// 16 384 IPv6 flows, and `services`.
    pub fn lb_config(&self, services: Vec<ServiceConfig>) -> LbConfig {
        LbConfig {
            interfaces: self.director_ifaces.clone(),
            pin_path: pin_path_for(&self.tag),
            max_flows: 65_536,
            max_flows_v6: 16_384,
            sweep_interval: None,
            timeouts: Vec::new(),
            services,
            sync: None,
            announce_table: None,
            syn_flood_rate: None,
        }
    }

    /// The `lb` config of [`Layout::Pair`]'s second director: as
    /// [`TestBed::lb_config`], with a pin directory (and so a control
    /// socket) of its own.
    pub fn director2_lb_config(&self, services: Vec<ServiceConfig>) -> LbConfig {
        LbConfig {
            pin_path: pin_path_for(&format!("{}-director2", self.tag)),
            ..self.lb_config(services)
        }
    }

    /// Starts a [`RealServer`] on every real server, named after its role:
    /// TCP on `port`, UDP on each of `udp`.
    pub fn start_servers(&self, port: u16, udp: &[SocketAddr]) -> anyhow::Result<Vec<RealServer>> {
        self.real_servers
            .iter()
            .map(|h| {
                RealServer::start(&h.ns, &h.role, port, udp)
                    .with_context(|| format!("starting {}", h.role))
            })
            .collect()
    }
}

impl Segment {
    /// The IPv4 address of host `host`: `.host` in the /24.
    fn address4(self, host: usize) -> Ipv4Addr {
        let [a, b, c] = self.ipv4;
        Ipv4Addr::new(a, b, c, host as u8)
    }

    /// The IPv6 address of host `host`: the same digits, read as hex.
    fn address6(self, host: usize) -> anyhow::Result<Ipv6Addr> {
        Ok(format!("{}{host}", self.ipv6).parse()?)
    }
}

/// Creates a bridge named `name` in the switch namespace.
fn add_bridge(switch: &NetNs, name: &str) -> anyhow::Result<()> {
    switch.ip(&["link", "add", name, "type", "bridge", "mcast_snooping", "0"])?;
    switch.ip(&["link", "set", name, "up"])?;
    Ok(())
}

/// The client of [`Layout::BehindRouter`] and its router: the router on the
/// switch's one segment, the client alone on a link of MTU `client_mtu` to
/// it (see [`TestBed::build_behind_router`]).
fn routed_client(switch: &NetNs, tag: &str, client_mtu: u32) -> anyhow::Result<(Host, Host)> {
    let router = add_host(switch, tag, "router", "rt0", "lan0", 1, ONLY)?;
    router.ns.sysctls(&[
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv6.conf.all.forwarding", "1"),
    ])?;
    router
        .ns
        .exec("ethtool", &["-K", &router.iface, "tx", "off"])?;
    let ns = host_ns(tag, "client")?;
    let mac = "02:00:00:00:01:10";
    let mtu = client_mtu.to_string();
    router
        .ns
        .ip(&[
            "link",
            "add",
            "cl0",
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "mtu",
            &mtu,
            "address",
            mac,
            "netns",
            ns.name(),
        ])
        .context("creating the client's link to the router")?;
    router
        .ns
        .ip(&["addr", "add", "198.51.100.1/24", "dev", "cl0"])?;
    router
        .ns
        .ip(&["addr", "add", "2001:db8:c::1/64", "dev", "cl0", "nodad"])?;
    router.ns.ip(&["link", "set", "cl0", "up"])?;
    ns.ip(&[
        "addr",
        "add",
        &format!("{ROUTED_CLIENT4}/24"),
        "dev",
        "eth0",
    ])?;
    ns.ip(&[
        "addr",
        "add",
        &format!("{ROUTED_CLIENT6}/64"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        "198.51.100.1",
        "advmss",
        "1460",
    ])?;
    ns.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        "2001:db8:c::1",
        "advmss",
        "1440",
    ])?;
    let client = Host {
        ns,
        role: "client".to_owned(),
        iface: "eth0".to_owned(),
        ipv4: ROUTED_CLIENT4,
        ipv6: ROUTED_CLIENT6,
        mac: mac.to_owned(),
    };
    Ok((client, router))
}

/// Creates host `role` (namespace `lbt<tag>-<role>`) with a NIC on
/// `segment` (see [`add_nic`]).
fn add_host(
    switch: &NetNs,
    tag: &str,
    role: &str,
    sw_if: &str,
    iface: &str,
    host: usize,
    segment: Segment,
) -> anyhow::Result<Host> {
    let ns = host_ns(tag, role)?;
    let (ipv4, ipv6, mac) = add_nic(switch, &ns, sw_if, iface, host, segment)
        .with_context(|| format!("the NIC of {role}"))?;
    Ok(Host {
        ns,
        role: role.to_owned(),
        iface: iface.to_owned(),
        ipv4,
        ipv6,
        mac,
    })
}

/// Gives the host in `ns` a NIC `iface` on `segment`: a veth pair with
/// `sw_if` on the segment's bridge, MAC `02:00:00:00:<segment>:<host>`
/// and addresses `host` of the segment's prefixes. Returns them.
fn add_nic(
    switch: &NetNs,
    ns: &NetNs,
    sw_if: &str,
    iface: &str,
    host: usize,
    segment: Segment,
) -> anyhow::Result<(Ipv4Addr, Ipv6Addr, String)> {
    let mac = format!("02:00:00:00:{:02x}:{host:02}", segment.mac);
    let ipv4 = segment.address4(host);
    let ipv6 = segment.address6(host)?;
    switch
        .ip(&[
            "link",
            "add",
            sw_if,
            "type",
            "veth",
            "peer",
            "name",
            iface,
            "address",
            &mac,
            "netns",
            ns.name(),
        ])
        .with_context(|| format!("creating the veth pair {sw_if}, {iface}"))?;
    switch.ip(&["link", "set", sw_if, "master", segment.bridge, "up"])?;
    ns.ip(&["addr", "add", &format!("{ipv4}/24"), "dev", iface])?;
    ns.ip(&["addr", "add", &format!("{ipv6}/64"), "dev", iface, "nodad"])?;
    ns.ip(&["link", "set", iface, "up"])?;
    Ok((ipv4, ipv6, mac))
}

/// Creates the namespace `lbt<tag>-<role>` of a host, with duplicate
/// address detection off (before any veth exists, so that it inherits it).
fn host_ns(tag: &str, role: &str) -> anyhow::Result<NetNs> {
    let ns = NetNs::create(&format!("lbt{tag}-{role}"))?;
    ns.sysctls(&[
        ("net.ipv6.conf.all.accept_dad", "0"),
        ("net.ipv6.conf.default.accept_dad", "0"),
        ("net.ipv6.conf.all.dad_transmits", "0"),
        ("net.ipv6.conf.default.dad_transmits", "0"),
    ])?;
    Ok(ns)
}

/// Keeps `lb`'s `XDP_PASS` program attached to a veth in another namespace:
/// a thread inside that namespace attaches it and holds it until dropped, so
/// attach and detach both happen in the right namespace.
struct PassGuard {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl PassGuard {
    fn attach(ns: &NetNs, ifname: &str) -> anyhow::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let (ready, attached) = mpsc::channel();
        let name = ifname.to_owned();
        let thread = ns.spawn("xdp-pass", move || {
            let program = match PassProgram::attach(&name) {
                Ok(p) => p,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return Ok(());
                }
            };
            let _ = ready.send(Ok(()));
            // Until the guard drops its sender.
            let _ = stopped.recv();
            drop(program);
            Ok(())
        })?;
        let guard = Self {
            stop: Some(stop),
            thread: Some(thread),
        };
        attached
            .recv()
            .map_err(|_| anyhow!("the XDP_PASS thread died"))?
            .with_context(|| format!("attaching XDP_PASS to {ifname} in {}", ns.name()))?;
        Ok(guard)
    }
}

impl Drop for PassGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("test bed: XDP_PASS thread: {e:#}"),
                Err(_) => eprintln!("test bed: XDP_PASS thread panicked"),
            }
        }
    }
}
