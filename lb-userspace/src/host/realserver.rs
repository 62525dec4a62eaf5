//! `lb realserver`: prepares, checks and undoes what a host needs to be a
//! real server behind an `lb` director in direct routing (LVS-DR).
//!
//! The director only rewrites MAC addresses, so a frame reaches the real
//! server still addressed to the VIP. The real server must therefore hold
//! every VIP locally (on `lo`, as /32 or /128, so no subnet comes with it)
//! and must never answer ARP or neighbour solicitations for it, or clients'
//! routers would send the VIP's traffic straight to one real server. For
//! IPv4 that is `arp_ignore=1` / `arp_announce=2` (the kernel takes the
//! larger of `all` and the interface's value for both); IPv6 answers
//! neighbour solicitations only for addresses on the receiving interface, so
//! a /128 on `lo` with no duplicate address detection is enough.
//!
//! Addresses go through route netlink (`rtnetlink`), sysctls through
//! `/proc/sys/net` (both per network namespace).

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use futures::TryStreamExt as _;
use rtnetlink::{
    AddressMessageBuilder, Handle, LinkUnspec,
    packet_route::{
        address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage},
        link::{LinkAttribute, LinkFlags},
    },
};
use tracing::debug;

use super::privilege;

/// `lb realserver` subcommands (run them on a real server, not on the director).
#[derive(Debug, Subcommand)]
pub enum RealserverCommand {
    /// Put each VIP on lo (IPv4 /32, IPv6 /128 nodad) and set the LVS-DR ARP
    /// sysctls (arp_ignore=1, arp_announce=2 on all and lo). Idempotent.
    Setup(Vips),
    /// Report what keeps this host from serving the VIPs in direct routing,
    /// one line per problem with the command that fixes it; exits non-zero if
    /// anything is wrong.
    Check(Vips),
    /// Remove the VIPs from lo and reset the ARP sysctls of all and lo to the
    /// kernel defaults, unless another IPv4 VIP stays on lo.
    Teardown(Vips),
}

/// The VIPs a `lb realserver` command works on.
#[derive(Debug, Args)]
pub struct Vips {
    /// A virtual IP the director sends to this host: an IPv4 or IPv6 address
    /// without prefix length, e.g. 192.0.2.200 or 2001:db8::200. Repeat for
    /// several.
    #[arg(long = "vip", value_name = "ADDR", required = true, value_parser = parse_vip)]
    pub vips: Vec<IpAddr>,
}

/// Runs `lb realserver setup|check|teardown` in the current network
/// namespace. A failed `check` (or a `setup` that leaves problems it cannot
/// fix) is an error after the problems are printed.
pub fn run(command: RealserverCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        match command {
            RealserverCommand::Setup(v) => {
                ensure_net_admin("lb realserver setup")?;
                setup(&dedup(v.vips)).await
            }
            RealserverCommand::Check(v) => check(&dedup(v.vips)).await,
            RealserverCommand::Teardown(v) => {
                ensure_net_admin("lb realserver teardown")?;
                teardown(&dedup(v.vips)).await
            }
        }
    })
}

/// What would be a valid `--vip`, for error messages.
const VALID_VIP: &str = "valid: an IPv4 address such as 192.0.2.200 or an IPv6 address such as 2001:db8::200, without a prefix length";

/// Parses a `--vip`: a unicast, non-loopback IP address without prefix.
fn parse_vip(s: &str) -> Result<IpAddr, String> {
    if let Some((addr, _)) = s.split_once('/')
        && addr.parse::<IpAddr>().is_ok()
    {
        return Err(format!(
            "a VIP takes no prefix length: it always goes on lo as /32 (IPv4) or /128 (IPv6); give the bare address, e.g. {addr}"
        ));
    }
    let ip: IpAddr = s
        .parse()
        .map_err(|_| format!("not an IP address ({VALID_VIP})"))?;
    let unusable = match ip {
        IpAddr::V4(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(a) if a.is_loopback() => Some("a loopback address (127.0.0.0/8)"),
        IpAddr::V4(a) if a.is_multicast() => Some("a multicast address"),
        IpAddr::V4(a) if a.is_broadcast() => Some("the broadcast address"),
        IpAddr::V6(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(a) if a.is_loopback() => Some("the loopback address"),
        IpAddr::V6(a) if a.is_multicast() => Some("a multicast address"),
        IpAddr::V6(a) if a.is_unicast_link_local() => Some("a link-local address (fe80::/10)"),
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
            Some("an IPv4-mapped IPv6 address (give the IPv4 address itself)")
        }
        _ => None,
    };
    match unusable {
        Some(what) => Err(format!("{ip} is {what}, not a usable VIP ({VALID_VIP})")),
        None => Ok(ip),
    }
}

/// The VIPs in the order given, each once.
fn dedup(vips: Vec<IpAddr>) -> Vec<IpAddr> {
    let mut out = Vec::with_capacity(vips.len());
    for vip in vips {
        if !out.contains(&vip) {
            out.push(vip);
        }
    }
    out
}

/// Fails with a message naming `what` unless the process is root or has
/// CAP_NET_ADMIN (addresses on lo and net sysctls need it).
fn ensure_net_admin(what: &str) -> anyhow::Result<()> {
    if privilege::has(privilege::CAP_NET_ADMIN) {
        return Ok(());
    }
    bail!(
        "{what} needs root (or the capability CAP_NET_ADMIN) to change addresses on lo and \
         net.ipv4.conf sysctls; run it with sudo (`lb realserver check` works unprivileged)"
    )
}

/// The host prefix length of `ip`'s family: 32 or 128.
fn host_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// A network interface, as far as the checks care.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Link {
    /// Interface index.
    index: u32,
    /// Interface name.
    name: String,
    /// Administratively up (IFF_UP).
    up: bool,
    /// Does ARP (neither IFF_NOARP nor IFF_LOOPBACK, as `lo` is).
    arp: bool,
}

/// An address on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Addr {
    /// Index of the interface holding it.
    index: u32,
    /// The local address.
    ip: IpAddr,
    /// Its prefix length.
    prefix_len: u8,
    /// IPv6 duplicate address detection has not finished (IFA_F_TENTATIVE).
    tentative: bool,
    /// IPv6 duplicate address detection failed (IFA_F_DADFAILED).
    dad_failed: bool,
}

impl Addr {
    /// Whether the kernel accepts traffic for it (IPv6 DAD done and passed).
    fn usable(&self) -> bool {
        !self.tentative && !self.dad_failed
    }
}

/// The two ARP sysctls of one `net.ipv4.conf.NAME`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Arp {
    /// `arp_ignore`.
    ignore: u32,
    /// `arp_announce`.
    announce: u32,
}

/// The ARP sysctls a real server needs, and their kernel defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ArpKey {
    /// `arp_ignore`: 1 = answer ARP only for addresses on the receiving interface.
    Ignore,
    /// `arp_announce`: 2 = source ARP requests from the outgoing interface's address.
    Announce,
}

impl ArpKey {
    /// Both keys.
    const ALL: [ArpKey; 2] = [ArpKey::Ignore, ArpKey::Announce];

    /// The sysctl's last name component.
    fn name(self) -> &'static str {
        match self {
            ArpKey::Ignore => "arp_ignore",
            ArpKey::Announce => "arp_announce",
        }
    }

    /// The least value a DR real server needs (the kernel uses the larger of
    /// `all` and the interface's value).
    fn wanted(self) -> u32 {
        match self {
            ArpKey::Ignore => 1,
            ArpKey::Announce => 2,
        }
    }

    /// This key's value in `arp`.
    fn get(self, arp: Arp) -> u32 {
        match self {
            ArpKey::Ignore => arp.ignore,
            ArpKey::Announce => arp.announce,
        }
    }

    /// What a too-low value lets happen, for problem lines.
    fn risk(self) -> &'static str {
        match self {
            ArpKey::Ignore => {
                "the host answers ARP requests for the VIP and takes the director's traffic"
            }
            ArpKey::Announce => {
                "ARP requests may carry the VIP as source and point neighbours' caches at this host"
            }
        }
    }
}

/// The `/proc/sys` path of `net.ipv4.conf.CONF.KEY`.
fn sysctl_path(conf: &str, key: ArpKey) -> String {
    format!("/proc/sys/net/ipv4/conf/{conf}/{}", key.name())
}

/// What the checks look at: interfaces, addresses and ARP sysctls of the
/// current network namespace.
#[derive(Clone, Debug, Default)]
struct HostState {
    /// Every interface.
    links: Vec<Link>,
    /// Every address of every interface.
    addrs: Vec<Addr>,
    /// ARP sysctls by conf name: `all`, `lo` and every interface holding an
    /// IPv4 address.
    arp: BTreeMap<String, Arp>,
}

impl HostState {
    /// The loopback interface `lo`.
    fn lo(&self) -> anyhow::Result<&Link> {
        self.links
            .iter()
            .find(|l| l.name == "lo")
            .context("this network namespace has no interface named lo")
    }

    /// The name of interface `index` (or its number when unknown).
    fn name_of(&self, index: u32) -> String {
        self.links
            .iter()
            .find(|l| l.index == index)
            .map_or_else(|| format!("#{index}"), |l| l.name.clone())
    }

    /// The ARP sysctls of `conf` (`all`, `lo`, an interface); kernel
    /// defaults when not read.
    fn arp_of(&self, conf: &str) -> Arp {
        self.arp.get(conf).copied().unwrap_or_default()
    }

    /// The addresses on interface `index` equal to `ip`.
    fn copies_on(&self, index: u32, ip: IpAddr) -> impl Iterator<Item = &Addr> {
        self.addrs
            .iter()
            .filter(move |a| a.index == index && a.ip == ip)
    }
}

/// Something that keeps this host from serving a VIP in direct routing.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Problem {
    /// `lo` is down: addresses on it take no traffic.
    LoDown,
    /// The VIP is not on `lo`.
    Missing {
        /// The VIP.
        vip: IpAddr,
    },
    /// The VIP is on `lo` with a prefix wider than /32 or /128.
    WrongPrefix {
        /// The VIP.
        vip: IpAddr,
        /// Its prefix length on `lo`.
        prefix_len: u8,
    },
    /// The VIP is also on another interface, which answers ARP/ND for it.
    OnOtherInterface {
        /// The VIP.
        vip: IpAddr,
        /// That interface.
        iface: String,
        /// The prefix length there.
        prefix_len: u8,
    },
    /// The IPv6 VIP on `lo` is still tentative (DAD running).
    Tentative {
        /// The VIP.
        vip: IpAddr,
    },
    /// The IPv6 VIP on `lo` failed duplicate address detection.
    DadFailed {
        /// The VIP.
        vip: IpAddr,
    },
    /// The effective ARP sysctl of an interface is too low.
    ArpTooLow {
        /// Which sysctl.
        key: ArpKey,
        /// The interface.
        iface: String,
        /// `net.ipv4.conf.all.KEY`.
        all: u32,
        /// `net.ipv4.conf.IFACE.KEY`.
        own: u32,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::LoDown => write!(
                f,
                "lo is down, so the VIPs on it take no traffic; fix: ip link set lo up"
            ),
            Problem::Missing { vip } => write!(
                f,
                "{vip} is not on lo (a direct-routing real server must hold each VIP on lo); fix: {}",
                add_command(*vip)
            ),
            Problem::WrongPrefix { vip, prefix_len } => {
                let host = host_prefix(*vip);
                write!(
                    f,
                    "{vip}/{prefix_len} on lo has the wrong prefix length (must be /{host}: a wider prefix on lo makes the whole subnet local and swallows its traffic); fix: {} {vip}/{prefix_len} dev lo && {}",
                    ip_cmd(*vip, "del"),
                    add_command(*vip)
                )
            }
            Problem::OnOtherInterface {
                vip,
                iface,
                prefix_len,
            } => write!(
                f,
                "{vip} is also on {iface} (/{prefix_len}): the host answers {} for it there and steals the director's traffic; fix: {} {vip}/{prefix_len} dev {iface}",
                if vip.is_ipv4() {
                    "ARP"
                } else {
                    "neighbour solicitations"
                },
                ip_cmd(*vip, "del")
            ),
            Problem::Tentative { vip } => write!(
                f,
                "{vip} on lo is tentative (duplicate address detection has not finished; the kernel takes no traffic for it yet); fix: {} {vip}/128 dev lo && {}",
                ip_cmd(*vip, "del"),
                add_command(*vip)
            ),
            Problem::DadFailed { vip } => write!(
                f,
                "{vip} on lo failed duplicate address detection (the kernel takes no traffic for it); fix: {} {vip}/128 dev lo && {}",
                ip_cmd(*vip, "del"),
                add_command(*vip)
            ),
            Problem::ArpTooLow {
                key,
                iface,
                all,
                own,
            } => write!(
                f,
                "effective {name} on {iface} is {eff} (all={all}, {iface}={own}; needs >= {want}): {risk}; fix: sysctl -w net.ipv4.conf.all.{name}={want}",
                name = key.name(),
                eff = (*all).max(*own),
                want = key.wanted(),
                risk = key.risk()
            ),
        }
    }
}

/// `ip addr ACTION` or `ip -6 addr ACTION` for `ip`'s family.
fn ip_cmd(ip: IpAddr, action: &str) -> String {
    if ip.is_ipv4() {
        format!("ip addr {action}")
    } else {
        format!("ip -6 addr {action}")
    }
}

/// The command that puts `vip` on `lo` the way `setup` does.
fn add_command(vip: IpAddr) -> String {
    match vip {
        IpAddr::V4(_) => format!("ip addr add {vip}/32 dev lo"),
        IpAddr::V6(_) => format!("ip -6 addr add {vip}/128 dev lo nodad"),
    }
}

/// Everything wrong with `state` for serving `vips` in direct routing.
fn problems(vips: &[IpAddr], state: &HostState) -> anyhow::Result<Vec<Problem>> {
    let lo = state.lo()?;
    let mut out = Vec::new();
    if !lo.up {
        out.push(Problem::LoDown);
    }
    for &vip in vips {
        let host = host_prefix(vip);
        let on_lo: Vec<&Addr> = state.copies_on(lo.index, vip).collect();
        if on_lo.is_empty() {
            out.push(Problem::Missing { vip });
        }
        for a in &on_lo {
            if a.prefix_len != host {
                out.push(Problem::WrongPrefix {
                    vip,
                    prefix_len: a.prefix_len,
                });
            }
            if a.dad_failed {
                out.push(Problem::DadFailed { vip });
            } else if a.tentative {
                out.push(Problem::Tentative { vip });
            }
        }
        for a in state
            .addrs
            .iter()
            .filter(|a| a.ip == vip && a.index != lo.index)
        {
            out.push(Problem::OnOtherInterface {
                vip,
                iface: state.name_of(a.index),
                prefix_len: a.prefix_len,
            });
        }
    }
    if vips.iter().any(IpAddr::is_ipv4) {
        let all = state.arp_of("all");
        for link in arp_links(state) {
            let own = state.arp_of(&link.name);
            for key in ArpKey::ALL {
                let (all, own) = (key.get(all), key.get(own));
                if all.max(own) < key.wanted() {
                    out.push(Problem::ArpTooLow {
                        key,
                        iface: link.name.clone(),
                        all,
                        own,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// The interfaces whose ARP behaviour matters: up, doing ARP, holding an
/// IPv4 address.
fn arp_links(state: &HostState) -> impl Iterator<Item = &Link> {
    state.links.iter().filter(|l| {
        l.up && l.arp
            && state
                .addrs
                .iter()
                .any(|a| a.index == l.index && a.ip.is_ipv4())
    })
}

/// One change `setup` or `teardown` makes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Change {
    /// Set `lo` up.
    LoUp {
        /// Index of `lo`.
        index: u32,
    },
    /// Put a VIP on `lo` as /32 or /128 (IPv6: nodad).
    Add {
        /// Index of `lo`.
        index: u32,
        /// The VIP.
        vip: IpAddr,
    },
    /// Remove an address from `lo`.
    Remove {
        /// The address.
        addr: Addr,
        /// Why, for the output line (`None`: teardown, no reason needed).
        why: Option<&'static str>,
    },
    /// Write `net.ipv4.conf.CONF.KEY = value`.
    Sysctl {
        /// `all` or `lo`.
        conf: &'static str,
        /// Which sysctl.
        key: ArpKey,
        /// The new value.
        value: u32,
        /// The value before.
        was: u32,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::LoUp { .. } => write!(f, "set lo up"),
            Change::Add { vip, .. } if vip.is_ipv4() => write!(f, "added {vip}/32 to lo"),
            Change::Add { vip, .. } => write!(f, "added {vip}/128 to lo (nodad)"),
            Change::Remove { addr, why: None } => {
                write!(f, "removed {}/{} from lo", addr.ip, addr.prefix_len)
            }
            Change::Remove {
                addr,
                why: Some(why),
            } => {
                write!(f, "removed {}/{} from lo ({why})", addr.ip, addr.prefix_len)
            }
            Change::Sysctl {
                conf,
                key,
                value,
                was,
            } => write!(
                f,
                "set net.ipv4.conf.{conf}.{} = {value} (was {was})",
                key.name()
            ),
        }
    }
}

/// A line of `setup`/`teardown` output: a change to make, or a note that
/// something is already right.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// Make this change (and print it).
    Change(Change),
    /// Nothing to do; print this line.
    Unchanged(String),
}

/// The sysctl confs `setup` and `teardown` write.
const ARP_CONFS: [&str; 2] = ["all", "lo"];

/// What `setup` must do to make `state` serve `vips`.
fn plan_setup(vips: &[IpAddr], state: &HostState) -> anyhow::Result<Vec<Step>> {
    let lo = state.lo()?;
    let mut steps = Vec::new();
    steps.push(if lo.up {
        Step::Unchanged("already set: lo is up".to_owned())
    } else {
        Step::Change(Change::LoUp { index: lo.index })
    });
    for &vip in vips {
        let host = host_prefix(vip);
        let mut good = false;
        for a in state.copies_on(lo.index, vip) {
            if a.prefix_len == host && a.usable() && !good {
                good = true;
            } else {
                let why = if a.prefix_len != host {
                    if vip.is_ipv4() {
                        "wrong prefix length: a VIP on lo must be /32"
                    } else {
                        "wrong prefix length: a VIP on lo must be /128"
                    }
                } else if a.dad_failed {
                    "it failed duplicate address detection"
                } else {
                    "it is tentative"
                };
                steps.push(Step::Change(Change::Remove {
                    addr: *a,
                    why: Some(why),
                }));
            }
        }
        steps.push(if good {
            Step::Unchanged(format!("already set: {vip}/{host} on lo"))
        } else {
            Step::Change(Change::Add {
                index: lo.index,
                vip,
            })
        });
    }
    if vips.iter().any(IpAddr::is_ipv4) {
        for conf in ARP_CONFS {
            let arp = state.arp_of(conf);
            for key in ArpKey::ALL {
                let (was, want) = (key.get(arp), key.wanted());
                steps.push(if was >= want {
                    Step::Unchanged(format!(
                        "already set: net.ipv4.conf.{conf}.{} = {was}",
                        key.name()
                    ))
                } else {
                    Step::Change(Change::Sysctl {
                        conf,
                        key,
                        value: want,
                        was,
                    })
                });
            }
        }
    } else {
        steps.push(Step::Unchanged(
            "not needed: ARP sysctls (no IPv4 VIP; Linux answers neighbour solicitations only \
             for addresses on the receiving interface)"
                .to_owned(),
        ));
    }
    Ok(steps)
}

/// What `teardown` must do to take `vips` off `state`.
fn plan_teardown(vips: &[IpAddr], state: &HostState) -> anyhow::Result<Vec<Step>> {
    let lo = state.lo()?;
    let mut steps = Vec::new();
    for &vip in vips {
        let mut found = false;
        for a in state.copies_on(lo.index, vip) {
            found = true;
            steps.push(Step::Change(Change::Remove {
                addr: *a,
                why: None,
            }));
        }
        if !found {
            steps.push(Step::Unchanged(format!(
                "already absent: {vip} is not on lo"
            )));
        }
    }
    let remaining: Vec<String> = state
        .addrs
        .iter()
        .filter(|a| a.index == lo.index && !vips.contains(&a.ip))
        .filter(|a| matches!(a.ip, IpAddr::V4(v4) if !v4.is_loopback()))
        .map(|a| format!("{}/{}", a.ip, a.prefix_len))
        .collect();
    if remaining.is_empty() {
        for conf in ARP_CONFS {
            let arp = state.arp_of(conf);
            for key in ArpKey::ALL {
                let was = key.get(arp);
                steps.push(if was == 0 {
                    Step::Unchanged(format!(
                        "already set: net.ipv4.conf.{conf}.{} = 0 (kernel default)",
                        key.name()
                    ))
                } else {
                    Step::Change(Change::Sysctl {
                        conf,
                        key,
                        value: 0,
                        was,
                    })
                });
            }
        }
    } else {
        steps.push(Step::Unchanged(format!(
            "left net.ipv4.conf.{{all,lo}}.{{arp_ignore,arp_announce}} as they are: {} still on lo \
             and needs them",
            remaining.join(", ")
        )));
    }
    Ok(steps)
}

/// Opens a route netlink session on the current runtime.
fn netlink() -> anyhow::Result<Handle> {
    let (connection, handle, _) =
        rtnetlink::new_connection().context("opening a route netlink socket")?;
    tokio::spawn(connection);
    Ok(handle)
}

/// Reads interfaces, addresses and the ARP sysctls that matter.
async fn read_state(handle: &Handle) -> anyhow::Result<HostState> {
    let mut state = HostState::default();
    let mut links = handle.link().get().execute();
    while let Some(msg) = links
        .try_next()
        .await
        .context("listing network interfaces")?
    {
        let Some(name) = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        }) else {
            continue;
        };
        state.links.push(Link {
            index: msg.header.index,
            name,
            up: msg.header.flags.contains(LinkFlags::Up),
            arp: !msg
                .header
                .flags
                .intersects(LinkFlags::Noarp | LinkFlags::Loopback),
        });
    }
    let mut addrs = handle.address().get().execute();
    while let Some(msg) = addrs.try_next().await.context("listing addresses")? {
        if let Some(addr) = parse_address(&msg) {
            state.addrs.push(addr);
        }
    }
    let mut confs: Vec<String> = ARP_CONFS.iter().map(|c| (*c).to_owned()).collect();
    confs.extend(arp_links(&state).map(|l| l.name.clone()));
    for conf in confs {
        let read = |key| -> anyhow::Result<u32> {
            let path = sysctl_path(&conf, key);
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
            text.trim()
                .parse()
                .with_context(|| format!("{path} holds {:?}, not a number", text.trim()))
        };
        let arp = Arp {
            ignore: read(ArpKey::Ignore)?,
            announce: read(ArpKey::Announce)?,
        };
        state.arp.insert(conf, arp);
    }
    debug!(
        links = state.links.len(),
        addrs = state.addrs.len(),
        "read interfaces, addresses and ARP sysctls"
    );
    Ok(state)
}

/// The local address of a netlink address message (IFA_LOCAL when present,
/// as `ip` shows it, else IFA_ADDRESS) with its flags.
fn parse_address(msg: &AddressMessage) -> Option<Addr> {
    let mut local = None;
    let mut address = None;
    let mut flags = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Flags(f) => flags = Some(*f),
            _ => {}
        }
    }
    let flags =
        flags.unwrap_or_else(|| AddressFlags::from_bits_retain(u32::from(msg.header.flags.bits())));
    Some(Addr {
        index: msg.header.index,
        ip: local.or(address)?,
        prefix_len: msg.header.prefix_len,
        tentative: flags.contains(AddressFlags::Tentative),
        dad_failed: flags.contains(AddressFlags::Dadfailed),
    })
}

/// Makes one change, with an error naming it.
async fn apply(handle: &Handle, change: &Change) -> anyhow::Result<()> {
    debug!(%change, "applying");
    match change {
        Change::LoUp { index } => handle
            .link()
            .set(LinkUnspec::new_with_index(*index).up().build())
            .execute()
            .await
            .context("setting lo up")?,
        Change::Add { index, vip } => {
            let mut request = handle.address().add(*index, *vip, host_prefix(*vip));
            if vip.is_ipv6() {
                let msg = request.message_mut();
                msg.header.flags = AddressHeaderFlags::Nodad;
                msg.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            request
                .execute()
                .await
                .with_context(|| format!("adding {vip}/{} to lo", host_prefix(*vip)))?
        }
        Change::Remove { addr, .. } => handle
            .address()
            .del(address_message(addr))
            .execute()
            .await
            .with_context(|| format!("removing {}/{} from lo", addr.ip, addr.prefix_len))?,
        Change::Sysctl {
            conf, key, value, ..
        } => {
            let path = sysctl_path(conf, *key);
            std::fs::write(&path, format!("{value}\n"))
                .with_context(|| format!("writing {value} to {path}"))?
        }
    }
    Ok(())
}

/// A netlink message naming `addr` for deletion.
fn address_message(addr: &Addr) -> AddressMessage {
    match addr.ip {
        IpAddr::V4(ip) => AddressMessageBuilder::<Ipv4Addr>::new()
            .index(addr.index)
            .address(ip, addr.prefix_len)
            .build(),
        IpAddr::V6(ip) => AddressMessageBuilder::<Ipv6Addr>::new()
            .index(addr.index)
            .address(ip, addr.prefix_len)
            .build(),
    }
}

/// Runs the steps, printing one line each (changes after they succeed).
async fn execute(handle: &Handle, steps: &[Step]) -> anyhow::Result<()> {
    for step in steps {
        match step {
            Step::Change(change) => {
                apply(handle, change).await?;
                println!("{change}");
            }
            Step::Unchanged(line) => println!("{line}"),
        }
    }
    Ok(())
}

/// Prints the problems, one `PROBLEM:` line each.
fn print_problems(problems: &[Problem]) {
    for p in problems {
        println!("PROBLEM: {p}");
    }
}

/// The VIPs as `a, b` for messages.
fn list(vips: &[IpAddr]) -> String {
    vips.iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `lb realserver setup`.
async fn setup(vips: &[IpAddr]) -> anyhow::Result<()> {
    let handle = netlink()?;
    let state = read_state(&handle).await?;
    execute(&handle, &plan_setup(vips, &state)?).await?;
    let left = problems(vips, &read_state(&handle).await?)?;
    if !left.is_empty() {
        print_problems(&left);
        bail!(
            "setup made its changes, but {} problem(s) remain that it does not fix (listed above)",
            left.len()
        );
    }
    Ok(())
}

/// `lb realserver check`.
async fn check(vips: &[IpAddr]) -> anyhow::Result<()> {
    let handle = netlink()?;
    let state = read_state(&handle).await?;
    let found = problems(vips, &state)?;
    if !found.is_empty() {
        print_problems(&found);
        let args: String = vips.iter().map(|v| format!(" --vip {v}")).collect();
        bail!(
            "{} problem(s) keep this host from serving {} in direct routing (listed above); \
             `lb realserver setup{args}` fixes those on lo and the ARP sysctls",
            found.len(),
            list(vips)
        );
    }
    let on_lo: Vec<String> = vips
        .iter()
        .map(|v| format!("{v}/{}", host_prefix(*v)))
        .collect();
    let mut ok = format!("OK: {} on lo and on no other interface", on_lo.join(", "));
    if vips.iter().any(IpAddr::is_ipv4) {
        let names: Vec<String> = arp_links(&state).map(|l| l.name.clone()).collect();
        if names.is_empty() {
            ok.push_str("; no interface that does ARP holds an IPv4 address");
        } else {
            ok.push_str(&format!(
                "; effective arp_ignore >= 1 and arp_announce >= 2 on {}",
                names.join(", ")
            ));
        }
    }
    println!("{ok}");
    Ok(())
}

/// `lb realserver teardown`.
async fn teardown(vips: &[IpAddr]) -> anyhow::Result<()> {
    let handle = netlink()?;
    let state = read_state(&handle).await?;
    execute(&handle, &plan_teardown(vips, &state)?).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn addr(index: u32, s: &str, prefix_len: u8) -> Addr {
        Addr {
            index,
            ip: ip(s),
            prefix_len,
            tentative: false,
            dad_failed: false,
        }
    }

    /// lo (1) and eth0 (2, 198.51.100.1/24), no VIPs, default sysctls.
    fn bare() -> HostState {
        let mut arp = BTreeMap::new();
        for conf in ["all", "lo", "eth0"] {
            arp.insert(conf.to_owned(), Arp::default());
        }
        HostState {
            links: vec![
                Link {
                    index: 1,
                    name: "lo".into(),
                    up: true,
                    arp: false,
                },
                Link {
                    index: 2,
                    name: "eth0".into(),
                    up: true,
                    arp: true,
                },
            ],
            addrs: vec![
                addr(1, "127.0.0.1", 8),
                addr(1, "::1", 128),
                addr(2, "198.51.100.1", 24),
                addr(2, "2001:db8::1", 64),
            ],
            arp,
        }
    }

    /// `bare` after a correct setup of 192.0.2.200 and 2001:db8::200.
    fn ready() -> HostState {
        let mut s = bare();
        s.addrs.push(addr(1, "192.0.2.200", 32));
        s.addrs.push(addr(1, "2001:db8::200", 128));
        for conf in ["all", "lo"] {
            s.arp.insert(
                conf.into(),
                Arp {
                    ignore: 1,
                    announce: 2,
                },
            );
        }
        s
    }

    fn vips() -> Vec<IpAddr> {
        vec![ip("192.0.2.200"), ip("2001:db8::200")]
    }

    fn changes(steps: &[Step]) -> Vec<Change> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Change(c) => Some(c.clone()),
                Step::Unchanged(_) => None,
            })
            .collect()
    }

    #[test]
    fn bare_host_has_every_problem() {
        let p = problems(&vips(), &bare()).unwrap();
        assert_eq!(
            p,
            vec![
                Problem::Missing {
                    vip: ip("192.0.2.200")
                },
                Problem::Missing {
                    vip: ip("2001:db8::200")
                },
                Problem::ArpTooLow {
                    key: ArpKey::Ignore,
                    iface: "eth0".into(),
                    all: 0,
                    own: 0
                },
                Problem::ArpTooLow {
                    key: ArpKey::Announce,
                    iface: "eth0".into(),
                    all: 0,
                    own: 0
                },
            ]
        );
        let text = p[0].to_string();
        assert!(
            text.contains("fix: ip addr add 192.0.2.200/32 dev lo"),
            "{text}"
        );
        let text = p[1].to_string();
        assert!(
            text.contains("ip -6 addr add 2001:db8::200/128 dev lo nodad"),
            "{text}"
        );
        let text = p[2].to_string();
        assert!(
            text.contains("sysctl -w net.ipv4.conf.all.arp_ignore=1"),
            "{text}"
        );
    }

    #[test]
    fn ready_host_has_no_problem() {
        assert_eq!(problems(&vips(), &ready()).unwrap(), vec![]);
    }

    #[test]
    fn effective_arp_value_is_the_max_of_all_and_the_interface() {
        let mut s = ready();
        s.arp.insert("all".into(), Arp::default());
        s.arp.insert(
            "eth0".into(),
            Arp {
                ignore: 1,
                announce: 2,
            },
        );
        assert_eq!(problems(&vips(), &s).unwrap(), vec![]);
        s.arp.insert(
            "eth0".into(),
            Arp {
                ignore: 1,
                announce: 0,
            },
        );
        assert_eq!(
            problems(&vips(), &s).unwrap(),
            vec![Problem::ArpTooLow {
                key: ArpKey::Announce,
                iface: "eth0".into(),
                all: 0,
                own: 0
            }]
        );
    }

    #[test]
    fn arp_ignores_down_noarp_and_ipv4less_interfaces_and_ipv6_only_vips() {
        let mut s = ready();
        s.arp.insert("all".into(), Arp::default());
        s.links.push(Link {
            index: 3,
            name: "eth1".into(),
            up: false,
            arp: true,
        });
        s.addrs.push(addr(3, "203.0.113.1", 24));
        s.links.push(Link {
            index: 4,
            name: "eth2".into(),
            up: true,
            arp: true,
        });
        s.addrs.push(addr(4, "2001:db8:1::1", 64));
        s.links[1].up = false; // eth0
        assert_eq!(problems(&vips(), &s).unwrap(), vec![]);
        s.links[1].up = true;
        assert_eq!(problems(&vips(), &s).unwrap().len(), 2);
        assert_eq!(problems(&[ip("2001:db8::200")], &s).unwrap(), vec![]);
    }

    #[test]
    fn wrong_prefix_other_interface_and_dad_are_named() {
        let mut s = ready();
        s.addrs.retain(|a| a.ip != ip("192.0.2.200"));
        s.addrs.push(addr(1, "192.0.2.200", 24));
        s.addrs.push(addr(2, "192.0.2.200", 32));
        for a in &mut s.addrs {
            if a.ip == ip("2001:db8::200") {
                a.dad_failed = true;
            }
        }
        let p = problems(&vips(), &s).unwrap();
        assert_eq!(
            p,
            vec![
                Problem::WrongPrefix {
                    vip: ip("192.0.2.200"),
                    prefix_len: 24
                },
                Problem::OnOtherInterface {
                    vip: ip("192.0.2.200"),
                    iface: "eth0".into(),
                    prefix_len: 32
                },
                Problem::DadFailed {
                    vip: ip("2001:db8::200")
                },
            ]
        );
        assert!(p[0].to_string().contains(
            "fix: ip addr del 192.0.2.200/24 dev lo && ip addr add 192.0.2.200/32 dev lo"
        ));
        assert!(
            p[1].to_string()
                .contains("fix: ip addr del 192.0.2.200/32 dev eth0")
        );
    }

    #[test]
    fn lo_down_is_a_problem_and_setup_brings_it_up() {
        let mut s = ready();
        s.links[0].up = false;
        assert_eq!(problems(&vips(), &s).unwrap(), vec![Problem::LoDown]);
        assert_eq!(
            changes(&plan_setup(&vips(), &s).unwrap()),
            vec![Change::LoUp { index: 1 }]
        );
    }

    #[test]
    fn setup_plans_everything_on_a_bare_host_and_nothing_on_a_ready_one() {
        let c = changes(&plan_setup(&vips(), &bare()).unwrap());
        assert_eq!(c.len(), 6, "{c:?}");
        assert_eq!(
            c[0],
            Change::Add {
                index: 1,
                vip: ip("192.0.2.200")
            }
        );
        assert_eq!(c[0].to_string(), "added 192.0.2.200/32 to lo");
        assert_eq!(c[1].to_string(), "added 2001:db8::200/128 to lo (nodad)");
        assert_eq!(
            c[2].to_string(),
            "set net.ipv4.conf.all.arp_ignore = 1 (was 0)"
        );
        assert_eq!(
            c[5].to_string(),
            "set net.ipv4.conf.lo.arp_announce = 2 (was 0)"
        );

        let steps = plan_setup(&vips(), &ready()).unwrap();
        assert_eq!(changes(&steps), vec![]);
        assert!(steps.contains(&Step::Unchanged("already set: 192.0.2.200/32 on lo".into())));
        assert!(steps.contains(&Step::Unchanged(
            "already set: net.ipv4.conf.all.arp_ignore = 1".into()
        )));
    }

    #[test]
    fn setup_replaces_a_wrong_prefix_and_keeps_higher_sysctls() {
        let mut s = ready();
        s.addrs.retain(|a| a.ip != ip("192.0.2.200"));
        s.addrs.push(addr(1, "192.0.2.200", 24));
        s.arp.insert(
            "all".into(),
            Arp {
                ignore: 2,
                announce: 2,
            },
        );
        let c = changes(&plan_setup(&vips(), &s).unwrap());
        assert_eq!(
            c,
            vec![
                Change::Remove {
                    addr: addr(1, "192.0.2.200", 24),
                    why: Some("wrong prefix length: a VIP on lo must be /32")
                },
                Change::Add {
                    index: 1,
                    vip: ip("192.0.2.200")
                },
            ]
        );
    }

    #[test]
    fn setup_of_ipv6_only_leaves_arp_sysctls() {
        let c = changes(&plan_setup(&[ip("2001:db8::200")], &bare()).unwrap());
        assert_eq!(
            c,
            vec![Change::Add {
                index: 1,
                vip: ip("2001:db8::200")
            }]
        );
    }

    #[test]
    fn teardown_removes_vips_and_resets_sysctls() {
        let c = changes(&plan_teardown(&vips(), &ready()).unwrap());
        assert_eq!(c.len(), 6, "{c:?}");
        assert_eq!(c[0].to_string(), "removed 192.0.2.200/32 from lo");
        assert_eq!(
            c[2].to_string(),
            "set net.ipv4.conf.all.arp_ignore = 0 (was 1)"
        );
        let steps = plan_teardown(&vips(), &bare()).unwrap();
        assert_eq!(changes(&steps), vec![]);
        assert!(steps.contains(&Step::Unchanged(
            "already absent: 2001:db8::200 is not on lo".into()
        )));
    }

    #[test]
    fn teardown_keeps_sysctls_while_another_ipv4_vip_stays() {
        let mut s = ready();
        s.addrs.push(addr(1, "192.0.2.201", 32));
        let steps = plan_teardown(&vips(), &s).unwrap();
        assert_eq!(changes(&steps).len(), 2);
        assert!(steps.iter().any(|st| matches!(
            st,
            Step::Unchanged(l) if l.contains("192.0.2.201/32 still on lo")
        )));
    }

    #[test]
    fn vip_parsing() {
        assert_eq!(parse_vip("192.0.2.200"), Ok(ip("192.0.2.200")));
        assert_eq!(parse_vip("2001:db8::200"), Ok(ip("2001:db8::200")));
        let e = parse_vip("foo").unwrap_err();
        assert!(
            e.contains("not an IP address") && e.contains("192.0.2.200"),
            "{e}"
        );
        assert!(
            parse_vip("192.0.2.200/32")
                .unwrap_err()
                .contains("no prefix length")
        );
        for bad in [
            "0.0.0.0",
            "127.0.0.1",
            "224.0.0.1",
            "::",
            "::1",
            "fe80::1",
            "::ffff:192.0.2.1",
        ] {
            assert!(parse_vip(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            dedup(vec![ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.1")]),
            vec![ip("192.0.2.1"), ip("192.0.2.2")]
        );
    }
}
