//! The LVS-DR test bed: one L2 segment built from network namespaces.
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
pub const DIRECTOR_IFACE: &str = "lbd0";

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
    // Field order is drop order: the XDP_PASS program goes first.
    _pass: PassGuard,
    client: Host,
    director: Host,
    real_servers: Vec<Host>,
    switch: NetNs,
}

impl TestBed {
    /// Builds the bed with `real_servers` real servers; `tag` (see
    /// [`crate::unique_tag`]) makes every name unique.
    pub fn build(tag: &str, real_servers: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (1..=80).contains(&real_servers),
            "1 to 80 real servers, not {real_servers}"
        );
        let switch = NetNs::create(&format!("lbt{tag}-sw"))?;
        switch.ip(&[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        switch.ip(&["link", "set", "br0", "up"])?;

        let client = add_host(&switch, tag, "client", "c0", "eth0", 10)?;
        client
            .ns
            .exec("ethtool", &["-K", &client.iface, "tx", "off"])?;

        let director = add_host(&switch, tag, "director", "d0", DIRECTOR_IFACE, 2)?;
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

        let mut servers = Vec::with_capacity(real_servers);
        for i in 1..=real_servers {
            let rs = add_host(
                &switch,
                tag,
                &format!("rs{i}"),
                &format!("r{i}"),
                "eth0",
                10 + i,
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
            servers.push(rs);
        }

        let pass = PassGuard::attach(&switch, "d0")?;
        Ok(Self {
            tag: tag.to_owned(),
            _pass: pass,
            client,
            director,
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

    /// The director.
    pub fn director(&self) -> &Host {
        &self.director
    }

    /// The real servers, `rs1` first.
    pub fn real_servers(&self) -> &[Host] {
        &self.real_servers
    }

    /// The switch namespace (holds bridge `br0`).
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
            vlan: Vec::new(),
        }
    }

    /// An `lb` config for this bed's director: its NIC, a pin directory
    /// named after the bed's tag, connection tables of 65 536 IPv4 and
    /// 16 384 IPv6 flows, and `services`.
    pub fn lb_config(&self, services: Vec<ServiceConfig>) -> LbConfig {
        LbConfig {
            interfaces: vec![DIRECTOR_IFACE.to_owned()],
            pin_path: pin_path_for(&self.tag),
            max_flows: 65_536,
            max_flows_v6: 16_384,
            sweep_interval: None,
            syn_recv_timeout: None,
            services,
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

/// Creates host `role` (namespace `lbt<tag>-<role>`) with a veth pair:
/// `sw_if` on the bridge, `iface` in the host, addresses 192.0.2.`host` and
/// 2001:db8::`host` (the same digits, read as hex).
fn add_host(
    switch: &NetNs,
    tag: &str,
    role: &str,
    sw_if: &str,
    iface: &str,
    host: usize,
) -> anyhow::Result<Host> {
    let ns = NetNs::create(&format!("lbt{tag}-{role}"))?;
    // Before the veth exists, so it inherits them.
    ns.sysctls(&[
        ("net.ipv6.conf.all.accept_dad", "0"),
        ("net.ipv6.conf.default.accept_dad", "0"),
        ("net.ipv6.conf.all.dad_transmits", "0"),
        ("net.ipv6.conf.default.dad_transmits", "0"),
    ])?;
    let mac = format!("02:00:00:00:00:{host:02}");
    let ipv4 = Ipv4Addr::new(192, 0, 2, u8::try_from(host)?);
    let ipv6: Ipv6Addr = format!("2001:db8::{host}").parse()?;
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
        .with_context(|| format!("creating the veth pair of {role}"))?;
    switch.ip(&["link", "set", sw_if, "master", "br0", "up"])?;
    ns.ip(&["addr", "add", &format!("{ipv4}/24"), "dev", iface])?;
    ns.ip(&["addr", "add", &format!("{ipv6}/64"), "dev", iface, "nodad"])?;
    ns.ip(&["link", "set", iface, "up"])?;
    Ok(Host {
        ns,
        role: role.to_owned(),
        iface: iface.to_owned(),
        ipv4,
        ipv6,
        mac,
    })
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
