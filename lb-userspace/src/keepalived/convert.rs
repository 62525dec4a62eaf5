//! The conversion: keepalived's `virtual_server`s, `real_server`s and
//! checkers, and the [`Converter`] that turns them into lb's services (the
//! model of [`crate::config`]), with a [`Diagnostic`] for everything it
//! does not carry over.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::IpAddr,
    time::Duration,
};

use super::{
    Diagnostic, Severity,
    syntax::{Stmt, SyntaxError},
};
use crate::config::{
    BackendConfig, DEFAULT_SYNC_KEY_FILE, DEFAULT_SYNC_PORT, ExecCheck, HealthConfig, HealthKind,
    HttpCheck, NoBackend, Persistence, Ports, Protocol, Scheduler, ServiceConfig, SyncConfig,
    SyncPeers,
    validate::{FALL_RISE, HEALTH_INTERVAL, HTTP_STATUS, NAME_MAX, WARMUP, is_valid_service_name},
    values::{format_duration_in_seconds, http_path_problem, is_valid_http_host, parse_md5},
    write::health_lines,
};

// ---------------------------------------------------------------------------
// What keepalived.conf says

/// Checker timers that keepalived inherits from virtual server to real
/// server to checker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Timers {
    delay_loop: Option<Duration>,
    connect_timeout: Option<Duration>,
    retry: Option<u32>,
    delay_before_retry: Option<Duration>,
    warmup: Option<Duration>,
}

impl Timers {
    /// The first set value of `self`, then `parents` in order.
    fn pick<T: Copy>(
        &self,
        parents: &[&Timers],
        field: impl Fn(&Timers) -> Option<T>,
    ) -> Option<T> {
        std::iter::once(self)
            .chain(parents.iter().copied())
            .find_map(field)
    }
}

/// What a checker checks.
#[derive(Clone, Debug, PartialEq, Eq)]
enum CheckType {
    /// TCP connect (TCP_CHECK, and SSL_GET / SMTP_CHECK reduced to it).
    Tcp,
    /// HTTP_GET with the first `url`.
    Http {
        path: String,
        /// Inclusive ranges; empty: keepalived's default 200-299.
        status: Vec<(u16, u16)>,
        digest: Option<[u8; 16]>,
        /// The url's `virtualhost`.
        host: Option<String>,
    },
    /// MISC_CHECK.
    Exec {
        command: String,
        timeout: Option<Duration>,
    },
}

/// One checker block of a real server (`TCP_CHECK`, `HTTP_GET`...).
#[derive(Clone, Debug)]
struct KeepalivedCheck {
    line: usize,
    check: CheckType,
    /// keepalived's `retry` when none is set at any level.
    default_retry: u32,
    /// keepalived's `delay_before_retry` when none is set at any level.
    default_retry_delay: Duration,
    connect_port: Option<u16>,
    /// The checker's `virtualhost` (HTTP_GET).
    host: Option<String>,
    timers: Timers,
}

/// One `real_server`.
#[derive(Clone, Debug)]
struct RealServer {
    line: usize,
    address: IpAddr,
    port: u16,
    weight: Option<u32>,
    inhibit: Option<bool>,
    host: Option<String>,
    timers: Timers,
    checkers: Vec<KeepalivedCheck>,
}

/// One `virtual_server`, as far as lb can use it.
#[derive(Clone, Debug)]
struct VirtualServer {
    line: usize,
    vip: IpAddr,
    /// The first of `ports` (0: every port).
    port: u16,
    /// Every port it covers (a group's, or a firewall mark's).
    ports: Ports,
    /// `lb_algo` (`lvs_sched`), when lb has it.
    scheduler: Option<Scheduler>,
    protocol: Protocol,
    weight: Option<u32>,
    inhibit: bool,
    host: Option<String>,
    snmp_name: Option<String>,
    timers: Timers,
    real_servers: Vec<RealServer>,
    /// `sorry_server`: its address and line.
    sorry_server: Option<(IpAddr, usize)>,
    /// `quorum` (at least 1).
    quorum: Option<u32>,
    /// `hysteresis`, and its line.
    hysteresis: Option<(u32, usize)>,
    /// `persistence_timeout`, in seconds.
    persistence_timeout: Option<u32>,
    /// `persistence_granularity` as a prefix length, and its line.
    persistence_granularity: Option<(u8, usize)>,
}

// ---------------------------------------------------------------------------
// Conversion

// keepalived's defaults, from its sources (acassen/keepalived,
// keepalived/check/ and keepalived/include/).
/// keepalived's `persistence_timeout` without a value (6 minutes), in
/// seconds (check_parser.c).
const KA_PERSISTENCE_TIMEOUT: u32 = 360;
/// lb's longest `persistence_timeout` (7 days), in seconds.
const KA_MAX_PERSISTENCE_TIMEOUT: u32 = 7 * 24 * 3600;
/// `KEEPALIVED_DEFAULT_DELAY` (include/check_data.h).
const KA_DELAY_LOOP: Duration = Duration::from_secs(60);
/// `alloc_vs`: `connection_to = 5 * TIMER_HZ` (check_data.c).
const KA_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// `default_retry = 1` for every checker (check_api.c)...
const KA_RETRY: u32 = 1;
/// ...but `default_retry = 0` for MISC_CHECK (`misc_check_handler`,
/// check_misc.c).
const KA_MISC_RETRY: u32 = 0;
/// `default_delay_before_retry = 1 * TIMER_HZ` (check_api.c)...
const KA_DELAY_BEFORE_RETRY: Duration = Duration::from_secs(1);
/// ...and `3 * TIMER_HZ` for HTTP_GET and SSL_GET (`http_get_handler`,
/// check_http.c).
const KA_HTTP_DELAY_BEFORE_RETRY: Duration = Duration::from_secs(3);
/// `HTTP_DEFAULT_STATUS_CODE_MIN/MAX` (include/check_http.h), used when a
/// url has no `status_code`.
const KA_HTTP_STATUS: (u16, u16) = (200, 299);
/// A real server's weight without `weight` (IPVS's default).
const KA_WEIGHT: u32 = 1;

/// Why a firewall mark (`mark`, if it is one) is not converted, and what
/// would convert it.
fn fwmark_help(mark: Option<u32>) -> String {
    let mark = mark.map_or_else(|| "N".to_owned(), |m| m.to_string());
    format!(
        "lb matches packets by VIP and port, and the firewall rule that sets mark {mark} is not \
         in keepalived.conf; say what it selects with --fwmark {mark}=VIP:PORTS (e.g. --fwmark \
         {mark}=192.0.2.10:2811,50000-51000)"
    )
}

/// The VIPs of a `virtual_server_group` entry: one address, or a range
/// `FIRST-LAST` where LAST replaces the last part of FIRST (`192.0.2.10-20`;
/// `2001:db8::10-1f`, in hex), as keepalived writes them.
fn group_vips(text: &str) -> Option<Vec<IpAddr>> {
    let Some((first, last)) = text.split_once('-') else {
        return Some(vec![parse_address(text)?]);
    };
    match parse_address(first)? {
        IpAddr::V4(a) => {
            let [p, q, r, start] = a.octets();
            let end = last.parse::<u8>().ok().filter(|&end| end >= start)?;
            Some((start..=end).map(|s| IpAddr::from([p, q, r, s])).collect())
        }
        IpAddr::V6(a) => {
            let mut segments = a.segments();
            let start = segments[7];
            let end = u16::from_str_radix(last, 16)
                .ok()
                .filter(|&end| end >= start)?;
            Some(
                (start..=end)
                    .map(|s| {
                        segments[7] = s;
                        IpAddr::from(segments)
                    })
                    .collect(),
            )
        }
    }
}

/// A `[[service]]` made from a `virtual_server`.
pub(super) struct Imported {
    /// How the `virtual_server` is written (`virtual_server 192.0.2.10
    /// 2811`), for a comment.
    pub(super) source: String,
    /// The line of the `virtual_server`.
    pub(super) line: usize,
    /// The service.
    pub(super) service: ServiceConfig,
}

/// Walks the statement tree and collects diagnostics.
#[derive(Default)]
pub(super) struct Converter {
    /// Everything not carried over, in the order it was found.
    pub(super) diagnostics: Vec<Diagnostic>,
    /// The VRRP note was given.
    vrrp_noted: bool,
    /// Router ids of the `vrrp_instance`s with `use_vmac`: the director's
    /// NICs must accept their virtual MACs (`[director] vrrp_vrids`).
    pub(super) vmac_router_ids: Vec<u8>,
    /// Service names used so far.
    names: HashSet<String>,
    /// (VIP, ports, protocol) of the services so far, with their lines.
    services: Vec<(IpAddr, Ports, Protocol, usize)>,
    /// The `virtual_server_group`s: name -> (VIP, ports) per VIP, and the
    /// line of the group.
    groups: HashMap<String, (Vec<(IpAddr, Ports)>, usize)>,
    /// What each firewall mark selects (`--fwmark MARK=VIP:PORTS`).
    pub(super) fwmarks: HashMap<u32, (IpAddr, Ports)>,
    /// `[sync]`, from `global_defs { lvs_sync_daemon ... }`.
    pub(super) sync: Option<SyncConfig>,
}

impl Converter {
    fn warn(&mut self, line: usize, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic {
            line: Some(line),
            severity: Severity::Warning,
            message: message.into(),
        });
    }

    /// Warns that a keyword is not carried over, and why.
    fn dropped(&mut self, stmt: &Stmt, why: &str) {
        let message = format!("{} is not carried over: {why}", describe_stmt(stmt));
        self.warn(stmt.line, message);
    }

    fn unknown(&mut self, stmt: &Stmt, block: &str) {
        let message = format!(
            "unknown keyword `{}` in {block}: not carried over",
            stmt.keyword
        );
        self.warn(stmt.line, message);
    }

    /// One statement at the top of the file: a service when it is a
    /// `virtual_server` lb can balance.
    pub(super) fn top_level(&mut self, stmt: &Stmt) -> Result<Vec<Imported>, SyntaxError> {
        let keyword = stmt.keyword.as_str();
        match keyword {
            "virtual_server" => return self.virtual_server(stmt),
            // Read before every virtual_server (see `group`).
            "virtual_server_group" => {}
            "include" => self.dropped(
                stmt,
                "included files are not read; convert each of them with `lb import-keepalived` \
                 and merge their [[service]] tables",
            ),
            _ if keyword.starts_with('$') || keyword.starts_with('@') => self.dropped(
                stmt,
                "keepalived's $VARIABLES and @conditional lines are not expanded; \
                 expand them by hand first",
            ),
            "vrrp_instance" => {
                self.note_vrrp(stmt);
                self.vmac_instance(stmt);
            }
            _ if keyword.starts_with("vrrp_") => self.note_vrrp(stmt),
            "global_defs" => {
                for def in stmt.children() {
                    if def.keyword == "lvs_sync_daemon" {
                        self.sync_daemon(def);
                    }
                }
            }
            // static_ipaddress...: not lb's business.
            _ => {}
        }
        Ok(Vec::new())
    }

    /// A `virtual_server_group NAME { VIP PORT | VIP-RANGE PORT | fwmark N
    /// ... }`: its VIPs and the ports of each (port 0: every port), for the
    /// `virtual_server group NAME` that uses it, wherever it is in the
    /// file: `convert` reads every group first.
    pub(super) fn group(&mut self, stmt: &Stmt) -> Result<(), SyntaxError> {
        let Some(name) = stmt.arg() else {
            return Err(SyntaxError::new(
                stmt.line,
                "virtual_server_group needs a name (e.g. `virtual_server_group gridftp {`)",
            ));
        };
        let mut by_vip: Vec<(IpAddr, Vec<u16>)> = Vec::new();
        let mut add = |vip: IpAddr, ports: &mut dyn Iterator<Item = u16>| match by_vip
            .iter_mut()
            .find(|(v, _)| *v == vip)
        {
            Some((_, list)) => list.extend(ports),
            None => by_vip.push((vip, ports.collect())),
        };
        for entry in stmt.children() {
            if entry.keyword == "fwmark" {
                let mark = entry.arg().and_then(|m| m.parse::<u32>().ok());
                match mark.and_then(|m| self.fwmarks.get(&m).cloned()) {
                    Some((vip, ports)) => add(vip, &mut ports.key_ports()),
                    None => self.dropped(entry, &fwmark_help(mark)),
                }
                continue;
            }
            let port = entry.arg().and_then(|p| p.parse::<u16>().ok());
            let vips = group_vips(&entry.keyword);
            match (vips, port) {
                (Some(vips), Some(port)) => {
                    for vip in vips {
                        add(vip, &mut std::iter::once(port));
                    }
                }
                _ => self.dropped(
                    entry,
                    "not an entry of a virtual_server_group (valid: `VIP PORT`, \
                     `VIP-LAST PORT` for a range of VIPs, `fwmark N`)",
                ),
            }
        }
        let vips = by_vip
            .into_iter()
            .map(|(vip, ports)| (vip, Ports::of_key_ports(ports)))
            .collect();
        self.groups.insert(name.to_owned(), (vips, stmt.line));
        Ok(())
    }

    /// `lvs_sync_daemon INTERFACE VRRP_INSTANCE [id N] [maxlen N] [port P]
    /// [ttl N] [group ADDR]`: IPVS's sync daemon becomes lb's `[sync]` on
    /// the same interface, port and multicast group (IPVS's 224.0.0.81 by
    /// default), with a key file that must be made.
    fn sync_daemon(&mut self, stmt: &Stmt) {
        let Some(interface) = stmt.arg() else {
            self.dropped(stmt, "it names no interface");
            return;
        };
        let mut port = DEFAULT_SYNC_PORT;
        let mut group = IpAddr::from([224, 0, 0, 81]);
        for pair in stmt.args.get(2..).unwrap_or_default().chunks(2) {
            match pair {
                [key, value] if key == "port" => match value.parse() {
                    Ok(p) if p > 0 => port = p,
                    _ => self.warn(stmt.line, format!("lvs_sync_daemon port {value:?} ignored")),
                },
                [key, value] if key == "group" => match value.parse::<IpAddr>() {
                    Ok(g) if g.is_multicast() => group = g,
                    _ => self.warn(
                        stmt.line,
                        format!("lvs_sync_daemon group {value:?} ignored"),
                    ),
                },
                // id, maxlen, ttl: IPVS's own.
                _ => {}
            }
        }
        self.sync = Some(SyncConfig {
            interface: interface.to_owned(),
            peers: SyncPeers::Multicast(group),
            port,
            key_file: DEFAULT_SYNC_KEY_FILE.into(),
        });
        self.diagnostics.push(Diagnostic {
            line: Some(stmt.line),
            severity: Severity::Warning,
            message: format!(
                "lvs_sync_daemon: wrote [sync] on {interface}, group {group}, port {port}; lb's \
                 sync is authenticated: put the same key on every director (`head -c 32 \
                 /dev/urandom | base64 > {DEFAULT_SYNC_KEY_FILE}; chmod 600 \
                 {DEFAULT_SYNC_KEY_FILE}`), and keep the vrrp_instance in keepalived \
                 (docs/ha.md)"
            ),
        });
    }

    /// The note, once, that VRRP stays with keepalived.
    fn note_vrrp(&mut self, stmt: &Stmt) {
        let keyword = stmt.keyword.as_str();
        if !self.vrrp_noted {
            self.vrrp_noted = true;
            self.diagnostics.push(Diagnostic {
                line: Some(stmt.line),
                severity: Severity::Note,
                message: format!(
                    "{keyword} and the other VRRP blocks are not converted: VIP failover \
                         between directors is not lb's job and stays with keepalived (keep \
                         them, without the virtual_server blocks)"
                ),
            });
        }
    }

    /// A `vrrp_instance` with `use_vmac` moves its VIPs to the virtual MAC
    /// `00:00:5e:00:01:ID` (`:02:` for IPv6): its router id goes to
    /// `[director] vrrp_vrids`, or lb would pass the frames to that MAC.
    fn vmac_instance(&mut self, stmt: &Stmt) {
        let children = stmt.children();
        if !children.iter().any(|c| c.keyword == "use_vmac") {
            return;
        }
        let id = children
            .iter()
            .find(|c| c.keyword == "virtual_router_id")
            .and_then(Stmt::arg)
            .and_then(|id| id.parse::<u8>().ok())
            .filter(|&id| id >= 1);
        match id {
            Some(id) => {
                if !self.vmac_router_ids.contains(&id) {
                    self.vmac_router_ids.push(id);
                }
                self.diagnostics.push(Diagnostic {
                    line: Some(stmt.line),
                    severity: Severity::Note,
                    message: format!(
                        "{} uses use_vmac: wrote vrrp_vrids with its virtual_router_id {id}, \
                         so the director's NICs accept frames to its virtual MAC",
                        describe_stmt(stmt)
                    ),
                });
            }
            None => self.warn(
                stmt.line,
                format!(
                    "{} uses use_vmac without a virtual_router_id from 1 to 255: add its id \
                     to [director] vrrp_vrids by hand, or lb passes the frames to its virtual MAC",
                    describe_stmt(stmt)
                ),
            ),
        }
    }

    /// A `virtual_server` block: one service, or one per VIP of its group;
    /// none when it is skipped (with a warning).
    fn virtual_server(&mut self, stmt: &Stmt) -> Result<Vec<Imported>, SyntaxError> {
        let targets = match stmt.arg() {
            Some("fwmark") => {
                let mark = stmt.args.get(1).and_then(|m| m.parse::<u32>().ok());
                let Some(target) = mark.and_then(|m| self.fwmarks.get(&m).cloned()) else {
                    self.dropped(stmt, &(fwmark_help(mark) + "; virtual_server skipped"));
                    return Ok(Vec::new());
                };
                vec![target]
            }
            Some("group") => {
                let name = stmt.args.get(1).map_or("", String::as_str);
                let Some((vips, line)) = self.groups.get(name).cloned() else {
                    self.dropped(
                        stmt,
                        "there is no virtual_server_group of that name; virtual_server skipped",
                    );
                    return Ok(Vec::new());
                };
                if vips.is_empty() {
                    self.dropped(
                        stmt,
                        &format!(
                            "virtual_server_group {name} (line {line}) has no entry lb can use; \
                             virtual_server skipped"
                        ),
                    );
                }
                if vips.len() > 1 {
                    self.warn(
                        stmt.line,
                        format!(
                            "virtual_server_group {name} (line {line}) has {} VIPs: lb writes a \
                             service per VIP, each over its ports (a client's persistence \
                             does not span the VIPs)",
                            vips.len()
                        ),
                    );
                }
                vips
            }
            _ => vec![self.address_and_port(stmt)?],
        };
        let mut imported = Vec::new();
        for (vip, ports) in targets {
            imported.extend(self.virtual_server_on(stmt, vip, ports)?);
        }
        Ok(imported)
    }

    /// The `ADDRESS PORT` of a `virtual_server`.
    fn address_and_port(&mut self, stmt: &Stmt) -> Result<(IpAddr, Ports), SyntaxError> {
        let (Some(address), Some(port)) = (stmt.args.first(), stmt.args.get(1)) else {
            return Err(SyntaxError::new(
                stmt.line,
                "virtual_server needs an address and a port (e.g. `virtual_server 192.0.2.10 2811 {`)",
            ));
        };
        let vip = parse_address(address).ok_or_else(|| {
            SyntaxError::new(
                stmt.line,
                format!("virtual_server address {address:?} is not an IP address"),
            )
        })?;
        let port = match port.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => {
                return Err(SyntaxError::new(
                    stmt.line,
                    format!("virtual_server port {port:?} is not a port (valid: 1 to 65535)"),
                ));
            }
        };
        if stmt.args.len() > 2 {
            self.warn(
                stmt.line,
                format!(
                    "extra words after the virtual_server port are ignored: {}",
                    stmt.args[2..].join(" ")
                ),
            );
        }
        Ok((vip, Ports::single(port)))
    }

    /// The `virtual_server` block `stmt` on `vip` over `ports`; `None` when
    /// it is skipped (with a warning).
    fn virtual_server_on(
        &mut self,
        stmt: &Stmt,
        vip: IpAddr,
        ports: Ports,
    ) -> Result<Option<Imported>, SyntaxError> {
        let mut vs = VirtualServer {
            line: stmt.line,
            vip,
            port: ports.first(),
            ports,
            scheduler: None,
            protocol: Protocol::Tcp,
            weight: None,
            inhibit: false,
            host: None,
            snmp_name: None,
            timers: Timers::default(),
            real_servers: Vec::new(),
            sorry_server: None,
            quorum: None,
            hysteresis: None,
            persistence_timeout: None,
            persistence_granularity: None,
        };
        // A virtual server lb cannot balance at all is skipped with that
        // reason only, not a warning for every setting in it.
        let mut skip = false;
        for child in stmt.children() {
            match child.keyword.as_str() {
                "lb_kind" | "lvs_method" if !self.forwarding(child, "virtual_server skipped") => {
                    skip = true;
                }
                "protocol" => match child.arg().map(str::to_ascii_uppercase).as_deref() {
                    Some("TCP") => vs.protocol = Protocol::Tcp,
                    Some("UDP") => vs.protocol = Protocol::Udp,
                    _ => {
                        self.dropped(
                            child,
                            "lb balances TCP and UDP only; virtual_server skipped",
                        );
                        skip = true;
                    }
                },
                _ => {}
            }
        }
        if skip {
            return Ok(None);
        }
        for child in stmt.children() {
            if self.timer(child, &mut vs.timers) {
                continue;
            }
            match child.keyword.as_str() {
                // Seen above.
                "lb_kind" | "lvs_method" | "protocol" => {}
                "lb_algo" | "lvs_sched" => vs.scheduler = self.scheduler(child),
                "weight" => vs.weight = self.weight(child),
                "inhibit_on_failure" => {
                    if let Some(inhibit) = self.flag(child) {
                        vs.inhibit = inhibit;
                    }
                }
                "virtualhost" => vs.host = self.string(child),
                "snmp_name" => vs.snmp_name = self.string(child),
                "ip_family" => {
                    let matches = match child.arg() {
                        Some("inet") => vip.is_ipv4(),
                        Some("inet6") => vip.is_ipv6(),
                        _ => false,
                    };
                    if !matches {
                        self.dropped(child, "the VIP's own address family is used");
                    }
                }
                "real_server" => {
                    if let Some(rs) = self.real_server(child, &vs)? {
                        vs.real_servers.push(rs);
                    }
                }
                // keepalived's default when the keyword has no value: 6 minutes.
                "persistence_timeout" if child.arg().is_none() => {
                    vs.persistence_timeout = Some(KA_PERSISTENCE_TIMEOUT);
                }
                "persistence_timeout" => vs.persistence_timeout = self.count(child),
                "persistence_granularity" => {
                    vs.persistence_granularity = self
                        .granularity(child, vip)
                        .map(|prefix| (prefix, child.line));
                }
                "persistence_engine" => self.dropped(
                    child,
                    "lb's persistence is by client address only (no SIP engine)",
                ),
                "quorum" => {
                    vs.quorum = self.count(child).map(|quorum| {
                        if quorum == 0 {
                            self.warn(child.line, "quorum 0 is not a quorum; using 1 (lb's minimum)");
                        }
                        quorum.max(1)
                    });
                }
                "hysteresis" => vs.hysteresis = self.count(child).map(|h| (h, child.line)),
                "quorum_up" | "quorum_down" => self.dropped(
                    child,
                    "lb runs no quorum scripts; it logs when a service loses or regains its \
                     quorum",
                ),
                "sorry_server" => vs.sorry_server = self.sorry_server(child, &vs)?,
                "sorry_server_inhibit" => self.dropped(
                    child,
                    "lb's sorry server takes new connections only while the service has lost \
                     its quorum, and never otherwise",
                ),
                "sorry_server_lvs_method" => {
                    self.forwarding(child, "sorry_server_lvs_method not carried over");
                }
                "alpha" => self.dropped(
                    child,
                    "lb has no alpha mode: a backend starts up and goes down after `fall` failed checks",
                ),
                "omega" => self.dropped(child, "lb has no omega mode (no quorum scripts)"),
                "ha_suspend" => self.dropped(
                    child,
                    "lb checks backends whether or not the VIP is on this director",
                ),
                "smtp_alert" => self.dropped(
                    child,
                    "lb sends no e-mail; use a `notify` command in [service.health]",
                ),
                "hashed" | "ops" | "flag-1" | "flag-2" | "flag-3" | "sh-port" | "sh-fallback"
                | "mh-port" | "mh-fallback" => self.dropped(
                    child,
                    "an IPVS scheduler flag; lb's wlc scheduler has no flags",
                ),
                _ => self.unknown(child, "virtual_server"),
            }
        }
        Ok(self.service(stmt, vs))
    }

    /// A `real_server` block; `None` when it is skipped (with a warning).
    /// `persistence_granularity`: an IPv4 netmask (`255.255.255.0`) or a
    /// prefix length, as a prefix length of `vip`'s family.
    fn granularity(&mut self, stmt: &Stmt, vip: IpAddr) -> Option<u8> {
        let text = stmt.arg()?;
        let bits = if vip.is_ipv4() { 32 } else { 128 };
        let prefix = match text.parse::<std::net::Ipv4Addr>() {
            Ok(mask) if vip.is_ipv4() => {
                let mask = u32::from(mask);
                (mask.leading_ones() + mask.trailing_zeros() == 32)
                    .then(|| mask.leading_ones() as u8)
            }
            Ok(_) => None,
            Err(_) => text.parse::<u8>().ok().filter(|p| *p <= bits),
        };
        if prefix.is_none() {
            self.dropped(
                stmt,
                if vip.is_ipv4() {
                    "not a contiguous IPv4 netmask (e.g. 255.255.255.0) or a prefix length"
                } else {
                    "not an IPv6 prefix length (0 to 128)"
                },
            );
        }
        prefix
    }

    /// `sorry_server ADDRESS [PORT]`: the address, if it can be one (direct
    /// routing cannot change its port).
    fn sorry_server(
        &mut self,
        stmt: &Stmt,
        vs: &VirtualServer,
    ) -> Result<Option<(IpAddr, usize)>, SyntaxError> {
        let Some(address) = stmt.arg().and_then(parse_address) else {
            return Err(SyntaxError::new(
                stmt.line,
                "sorry_server needs an address (e.g. `sorry_server 198.51.100.99 2811`)",
            ));
        };
        if address.is_ipv4() != vs.vip.is_ipv4() {
            self.dropped(stmt, "it is not of the VIP's address family");
            return Ok(None);
        }
        if let Some(port) = stmt.args.get(1).filter(|p| **p != vs.port.to_string()) {
            self.warn(
                stmt.line,
                format!(
                    "sorry_server {address} port {port} is not the VIP's port {}: direct \
                     routing cannot translate ports, so it gets the connections on port {}",
                    vs.port, vs.port
                ),
            );
        }
        Ok(Some((address, stmt.line)))
    }

    fn real_server(
        &mut self,
        stmt: &Stmt,
        vs: &VirtualServer,
    ) -> Result<Option<RealServer>, SyntaxError> {
        let Some(address) = stmt.arg() else {
            return Err(SyntaxError::new(
                stmt.line,
                "real_server needs an address (e.g. `real_server 198.51.100.11 2811 {`)",
            ));
        };
        let address = parse_address(address).ok_or_else(|| {
            SyntaxError::new(
                stmt.line,
                format!("real_server address {address:?} is not an IP address"),
            )
        })?;
        let port = match stmt.args.get(1) {
            None => vs.port,
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => {
                    return Err(SyntaxError::new(
                        stmt.line,
                        format!("real_server port {port:?} is not a port (valid: 1 to 65535)"),
                    ));
                }
            },
        };
        let mut rs = RealServer {
            line: stmt.line,
            address,
            port,
            weight: None,
            inhibit: None,
            host: None,
            timers: Timers::default(),
            checkers: Vec::new(),
        };
        let mut skip = false;
        for child in stmt.children() {
            if self.timer(child, &mut rs.timers) {
                continue;
            }
            match child.keyword.as_str() {
                "weight" => rs.weight = self.weight(child),
                "inhibit_on_failure" => rs.inhibit = self.flag(child),
                "virtualhost" => rs.host = self.string(child),
                "lvs_method" => {
                    if !self.forwarding(child, "real_server skipped") {
                        skip = true;
                    }
                }
                "notify_up" | "notify_down" => self.dropped(
                    child,
                    "lb runs one `notify` command per service, with the service, the backend \
                     and its new state appended; set `notify` in [service.health] by hand",
                ),
                "alpha" => self.dropped(
                    child,
                    "lb has no alpha mode: a backend starts up and goes down after `fall` failed checks",
                ),
                "uthreshold" | "lthreshold" => {
                    self.dropped(child, "lb has no per-backend connection thresholds")
                }
                "smtp_alert" => self.dropped(
                    child,
                    "lb sends no e-mail; use a `notify` command in [service.health]",
                ),
                "snmp_name" => self.dropped(child, "lb has no SNMP agent"),
                "TCP_CHECK" | "HTTP_GET" | "MISC_CHECK" | "SSL_GET" | "SMTP_CHECK" => {
                    if let Some(checker) = self.checker(child) {
                        rs.checkers.push(checker);
                    }
                }
                "DNS_CHECK" | "UDP_CHECK" | "PING_CHECK" | "FILE_CHECK" | "BFD_CHECK" => self
                    .dropped(
                        child,
                        "lb checks with TCP connect, HTTP GET or a command (exec) only",
                    ),
                _ => self.unknown(child, "real_server"),
            }
        }
        if skip {
            return Ok(None);
        }
        Ok(Some(rs))
    }

    /// A checker block.
    fn checker(&mut self, stmt: &Stmt) -> Option<KeepalivedCheck> {
        let kind = stmt.keyword.as_str();
        let mut checker = KeepalivedCheck {
            line: stmt.line,
            check: CheckType::Tcp,
            default_retry: KA_RETRY,
            default_retry_delay: KA_DELAY_BEFORE_RETRY,
            connect_port: None,
            host: None,
            timers: Timers::default(),
        };
        let mut urls = Vec::new();
        let mut misc_path = None;
        let mut misc_timeout = None;
        match kind {
            "HTTP_GET" => checker.default_retry_delay = KA_HTTP_DELAY_BEFORE_RETRY,
            "SSL_GET" => {
                checker.default_retry_delay = KA_HTTP_DELAY_BEFORE_RETRY;
                self.warn(
                    stmt.line,
                    "SSL_GET is carried over as a TCP connect check of the same port: \
                     lb does not check over TLS",
                );
            }
            "SMTP_CHECK" => self.warn(
                stmt.line,
                "SMTP_CHECK is carried over as a TCP connect check of the same port: \
                 lb does not speak SMTP",
            ),
            "MISC_CHECK" => checker.default_retry = KA_MISC_RETRY,
            _ => {}
        }
        let http = kind == "HTTP_GET";
        for child in stmt.children() {
            if self.timer(child, &mut checker.timers) {
                continue;
            }
            match child.keyword.as_str() {
                "connect_port" => {
                    checker.connect_port = match child.arg().map(str::parse::<u16>) {
                        Some(Ok(port)) if port > 0 => Some(port),
                        _ => {
                            self.invalid(child, "a port, 1 to 65535");
                            None
                        }
                    }
                }
                "nb_get_retry" if http || kind == "SSL_GET" => {
                    checker.timers.retry = self.count(child);
                }
                "virtualhost" if http || kind == "SSL_GET" => checker.host = self.string(child),
                "url" if http || kind == "SSL_GET" => urls.push(child),
                "misc_path" if kind == "MISC_CHECK" => {
                    if child.args.is_empty() {
                        self.invalid(child, "a command");
                    } else {
                        misc_path = Some(child.args.join(" "));
                    }
                }
                "misc_timeout" if kind == "MISC_CHECK" => misc_timeout = self.duration(child),
                "misc_dynamic" if kind == "MISC_CHECK" => self.dropped(
                    child,
                    "lb does not take weights from the exit status: 0 is up, anything else \
                     is down",
                ),
                "user" if kind == "MISC_CHECK" => {
                    self.dropped(child, "lb runs the command as its own user")
                }
                "connect_ip" => self.dropped(child, "lb checks the backend's own address"),
                "bindto" | "bind_port" | "bind_if" => self.dropped(
                    child,
                    "lb's checks leave from the director's own address in each backend's prefix (`bind_to` in [service.health] picks another)",
                ),
                "fwmark" => self.dropped(child, "lb does not mark check packets"),
                "alpha" => self.dropped(
                    child,
                    "lb has no alpha mode: a backend starts up and goes down after `fall` failed checks",
                ),
                "log_all_failures" => {
                    self.dropped(child, "lb logs every state change, not every failure")
                }
                "http_protocol" | "enable_sni" | "sni_name" | "fast_recovery" | "tls_compliant"
                    if http || kind == "SSL_GET" =>
                {
                    self.dropped(child, "lb's HTTP check has no such option");
                }
                _ => self.unknown(child, kind),
            }
        }
        match kind {
            "HTTP_GET" => {
                let Some((first, rest)) = urls.split_first() else {
                    self.warn(
                        stmt.line,
                        "HTTP_GET without a url block checks nothing in keepalived; \
                         not carried over",
                    );
                    return None;
                };
                for url in rest {
                    self.warn(
                        url.line,
                        "only the first url of an HTTP_GET is carried over: lb's HTTP check \
                         gets one path",
                    );
                }
                checker.check = self.url(first)?;
            }
            "MISC_CHECK" => {
                let Some(command) = misc_path else {
                    self.warn(
                        stmt.line,
                        "MISC_CHECK without misc_path is skipped by keepalived; not carried over",
                    );
                    return None;
                };
                checker.check = CheckType::Exec {
                    command,
                    timeout: misc_timeout,
                };
            }
            _ => {}
        }
        Some(checker)
    }

    /// The `url` block of an HTTP_GET.
    fn url(&mut self, stmt: &Stmt) -> Option<CheckType> {
        let mut path = None;
        let mut status = Vec::new();
        let mut digest = None;
        let mut host = None;
        for child in stmt.children() {
            match child.keyword.as_str() {
                "path" => path = self.string(child),
                "status_code" => {
                    for code in &child.args {
                        match parse_status(code) {
                            Some(range) => status.push(range),
                            None => self.warn(
                                child.line,
                                format!(
                                    "status_code {code:?} is not a status or a range of them \
                                     (100 to 599, e.g. 200 or 200-299); ignored, as keepalived \
                                     does"
                                ),
                            ),
                        }
                    }
                }
                "digest" => match child.arg().and_then(parse_md5) {
                    Some(d) => digest = Some(d),
                    None => self.invalid(child, "an MD5 digest, 32 hex digits"),
                },
                "virtualhost" => host = self.string(child),
                "regex" | "regex_no_match" | "regex_options" | "regex_min_offset"
                | "regex_max_offset" | "regex_stack" => self.dropped(
                    child,
                    "lb's HTTP check compares the status and the body's MD5 digest only",
                ),
                "tls_compliant" => self.dropped(child, "lb's HTTP check has no such option"),
                _ => self.unknown(child, "url"),
            }
        }
        let Some(path) = path else {
            self.warn(
                stmt.line,
                "url without path is ignored by keepalived; HTTP_GET not carried over",
            );
            return None;
        };
        Some(CheckType::Http {
            path,
            status,
            digest,
            host,
        })
    }

    /// `delay_loop`, `connect_timeout`, `retry`, `delay_before_retry`,
    /// `warmup`: true when `stmt` was one of them.
    fn timer(&mut self, stmt: &Stmt, timers: &mut Timers) -> bool {
        match stmt.keyword.as_str() {
            "delay_loop" => timers.delay_loop = self.duration(stmt).or(timers.delay_loop),
            "connect_timeout" => {
                timers.connect_timeout = self.duration(stmt).or(timers.connect_timeout);
            }
            "retry" => timers.retry = self.count(stmt).or(timers.retry),
            "delay_before_retry" => {
                timers.delay_before_retry = self.duration(stmt).or(timers.delay_before_retry);
            }
            "warmup" => timers.warmup = self.duration(stmt).or(timers.warmup),
            _ => return false,
        }
        true
    }

    /// `lb_algo` / `lvs_sched`.
    fn scheduler(&mut self, stmt: &Stmt) -> Option<Scheduler> {
        let algo = stmt.arg().unwrap_or("");
        if let Ok(scheduler) = algo.parse::<Scheduler>() {
            return Some(scheduler);
        }
        let why = match algo {
            "lc" => ", which ignores the weights (wlc with equal weights does the same)",
            "dh" => ", hashing by destination (a client's connections are kept by sh)",
            _ => "",
        };
        self.warn(
            stmt.line,
            format!(
                "{} {algo}: lb schedules with wlc, rr, wrr, sh or mh, not {algo}{why}; using wlc",
                stmt.keyword
            ),
        );
        None
    }

    /// `lb_kind` / `lvs_method`: true for DR; otherwise a warning saying
    /// what is skipped.
    fn forwarding(&mut self, stmt: &Stmt, skipped: &str) -> bool {
        let method = stmt.arg().unwrap_or("").to_ascii_uppercase();
        if method == "DR" {
            return true;
        }
        self.warn(
            stmt.line,
            format!(
                "{} {}: lb only does direct routing (DR); {skipped}",
                stmt.keyword,
                stmt.arg().unwrap_or("")
            ),
        );
        false
    }

    /// A real server or virtual server `weight`.
    fn weight(&mut self, stmt: &Stmt) -> Option<u32> {
        let weight = self.count(stmt)?;
        if weight > lb_common::MAX_WEIGHT {
            self.warn(
                stmt.line,
                format!(
                    "weight {weight} is above lb's maximum {}; using {}",
                    lb_common::MAX_WEIGHT,
                    lb_common::MAX_WEIGHT
                ),
            );
            return Some(lb_common::MAX_WEIGHT);
        }
        Some(weight)
    }

    /// A keyword with an optional true/false argument (absent: true).
    fn flag(&mut self, stmt: &Stmt) -> Option<bool> {
        match stmt.arg().map(str::to_ascii_lowercase).as_deref() {
            None | Some("true" | "on" | "yes") => Some(true),
            Some("false" | "off" | "no") => Some(false),
            Some(_) => {
                self.invalid(stmt, "true or false");
                None
            }
        }
    }

    /// A keyword's single string argument.
    fn string(&mut self, stmt: &Stmt) -> Option<String> {
        let value = stmt.arg();
        if value.is_none() {
            self.invalid(stmt, "a value");
        }
        self.extra_words(stmt, 1);
        value.map(str::to_owned)
    }

    /// A keyword's unsigned integer argument.
    fn count(&mut self, stmt: &Stmt) -> Option<u32> {
        let value = stmt.arg().and_then(|v| v.parse::<u32>().ok());
        if value.is_none() {
            self.invalid(stmt, "a whole number");
        }
        self.extra_words(stmt, 1);
        value
    }

    /// A keyword's timer argument: seconds, possibly with decimals.
    fn duration(&mut self, stmt: &Stmt) -> Option<Duration> {
        let Some(micros) = stmt.arg().and_then(parse_seconds) else {
            self.invalid(stmt, "seconds, e.g. 10 or 0.5");
            return None;
        };
        self.extra_words(stmt, 1);
        let millis = micros.div_ceil(1000);
        if millis * 1000 != micros {
            self.warn(
                stmt.line,
                format!(
                    "{} {}: lb counts milliseconds; using {}",
                    stmt.keyword,
                    stmt.args[0],
                    format_duration_in_seconds(Duration::from_millis(millis))
                ),
            );
        }
        Some(Duration::from_millis(millis))
    }

    /// Warns about arguments after the `expected` ones: keepalived reads a
    /// keyword per line and ignores them (e.g. `connect_timeout 3
    /// connect_port 2811` on one line sets no port).
    fn extra_words(&mut self, stmt: &Stmt, expected: usize) {
        if stmt.args.len() > expected {
            let message = format!(
                "{}: keepalived ignores the words after the first value ({}), so does this \
                 conversion; write one keyword per line",
                stmt.keyword,
                stmt.args[expected..].join(" ")
            );
            self.warn(stmt.line, message);
        }
    }

    /// Warns about a value keepalived would reject (and ignore).
    fn invalid(&mut self, stmt: &Stmt, valid: &str) {
        let message = format!(
            "{}: invalid value (valid: {valid}); ignored, as keepalived does",
            describe_stmt(stmt)
        );
        self.warn(stmt.line, message);
    }

    /// Turns a parsed virtual server into a service: backends, the one
    /// health check, the name.
    fn service(&mut self, stmt: &Stmt, vs: VirtualServer) -> Option<Imported> {
        if let Some(&(.., line)) = self.services.iter().find(|(vip, ports, protocol, _)| {
            (*vip, *protocol) == (vs.vip, vs.protocol) && ports.shared_port(&vs.ports).is_some()
        }) {
            self.warn(
                vs.line,
                format!(
                    "a port of the same VIP and protocol as the virtual_server at line {line}; \
                     skipped"
                ),
            );
            return None;
        }
        // Backends.
        let mut backends: Vec<BackendConfig> = Vec::new();
        let mut used: Vec<&RealServer> = Vec::new();
        for rs in &vs.real_servers {
            if rs.address.is_ipv4() != vs.vip.is_ipv4() {
                self.warn(
                    rs.line,
                    format!(
                        "real_server {} is not of the VIP's address family; skipped (so does \
                         keepalived for DR)",
                        rs.address
                    ),
                );
                continue;
            }
            if backends.iter().any(|b| b.address == rs.address) {
                self.warn(
                    rs.line,
                    format!(
                        "real_server {} is listed twice; lb has one backend per address, the \
                         second is skipped",
                        rs.address
                    ),
                );
                continue;
            }
            if backends.len() == lb_common::MAX_BACKENDS {
                self.warn(
                    rs.line,
                    format!(
                        "lb takes at most {} backends per service; real_server {} skipped",
                        lb_common::MAX_BACKENDS,
                        rs.address
                    ),
                );
                continue;
            }
            if vs.ports.is_single() && vs.ports != Ports::Every && rs.port != vs.port {
                self.warn(
                    rs.line,
                    format!(
                        "real_server {} port {} is not the VIP's port {}: direct routing cannot \
                         translate ports, so it gets the connections on port {}",
                        rs.address, rs.port, vs.port, vs.port
                    ),
                );
            }
            backends.push(BackendConfig {
                address: rs.address,
                weight: rs.weight.or(vs.weight).unwrap_or(KA_WEIGHT),
                mac: None,
            });
            used.push(rs);
        }
        if backends.is_empty() {
            self.warn(
                vs.line,
                "virtual_server has no usable real_server; skipped (lb needs at least one backend)",
            );
            return None;
        }
        if self.services.len() == lb_common::MAX_SERVICES as usize {
            self.warn(
                vs.line,
                format!(
                    "lb takes at most {} services; virtual_server skipped",
                    lb_common::MAX_SERVICES
                ),
            );
            return None;
        }
        let (sorry_server, quorum, hysteresis) = self.quorum(&vs, &backends);
        let persistence = self.persistence(&vs);
        // Without a checker, the backends are always up.
        let health = self
            .health(&vs, &used)
            .unwrap_or_else(|| HealthConfig::new(HealthKind::None, vs.port));
        let name = self.name(&vs);
        self.services
            .push((vs.vip, vs.ports.clone(), vs.protocol, vs.line));
        Some(Imported {
            source: format!("{} {}", stmt.keyword, stmt.args.join(" ")),
            line: vs.line,
            service: ServiceConfig {
                name,
                vip: vs.vip,
                ports: vs.ports.clone(),
                protocol: vs.protocol,
                scheduler: vs.scheduler.unwrap_or(Scheduler::Wlc),
                no_backend: NoBackend::Drop,
                sloppy_tcp: false,
                sorry_server,
                quorum,
                hysteresis,
                persistence,
                vlan: Vec::new(),
                health,
                backends,
            },
        })
    }

    /// The service's persistence: `persistence_timeout` (brought within lb's
    /// range, 1 s to 7 days) with `persistence_granularity`; a granularity
    /// without a timeout is not carried over.
    fn persistence(&mut self, vs: &VirtualServer) -> Option<Persistence> {
        let Some(seconds) = vs.persistence_timeout else {
            if let Some((_, line)) = vs.persistence_granularity {
                self.warn(
                    line,
                    "persistence_granularity is not carried over: the virtual_server has no \
                     persistence_timeout",
                );
            }
            return None;
        };
        let within = seconds.clamp(1, KA_MAX_PERSISTENCE_TIMEOUT);
        if within != seconds {
            self.warn(
                vs.line,
                format!(
                    "persistence_timeout {seconds} is outside lb's range (1 s to 7 days); \
                     using {within}"
                ),
            );
        }
        let bits = if vs.vip.is_ipv4() { 32 } else { 128 };
        Some(Persistence {
            timeout: Duration::from_secs(u64::from(within)),
            prefix: vs
                .persistence_granularity
                .map_or(bits, |(prefix, _)| prefix),
        })
    }

    /// The service's sorry server, quorum and hysteresis: a sorry server
    /// that is also a real server is dropped; a hysteresis not below the
    /// quorum becomes the quorum less 1, as lb requires (keepalived would
    /// never lose such a quorum).
    fn quorum(
        &mut self,
        vs: &VirtualServer,
        backends: &[BackendConfig],
    ) -> (Option<IpAddr>, u32, u32) {
        let sorry_server = vs.sorry_server.and_then(|(address, line)| {
            if backends.iter().any(|b| b.address == address) {
                self.warn(
                    line,
                    format!(
                        "sorry_server {address} is also a real_server of this virtual_server; \
                         not carried over"
                    ),
                );
                return None;
            }
            Some(address)
        });
        let quorum = vs.quorum.unwrap_or(1);
        let hysteresis = match vs.hysteresis {
            Some((hysteresis, line)) if hysteresis >= quorum => {
                self.warn(
                    line,
                    format!(
                        "hysteresis {hysteresis} is not below the quorum {quorum}; using {}",
                        quorum - 1
                    ),
                );
                quorum - 1
            }
            Some((hysteresis, _)) => hysteresis,
            None => 0,
        };
        (sorry_server, quorum, hysteresis)
    }

    /// The one check of a service: the first checker of the first real
    /// server that has one, with a warning for each real server whose
    /// check differs.
    fn health(&mut self, vs: &VirtualServer, real_servers: &[&RealServer]) -> Option<HealthConfig> {
        let (first, chosen) = real_servers
            .iter()
            .find_map(|rs| Some((*rs, rs.checkers.first()?)))?;
        let health = resolve(vs, first, chosen);
        let base = health_lines(&health, vs.port);
        for rs in real_servers {
            let Some(checker) = rs.checkers.first() else {
                self.warn(
                    rs.line,
                    format!(
                        "real_server {} has no checker, but lb checks every backend of a \
                         service with the service's one check (from real_server {}, line {})",
                        rs.address, first.address, chosen.line
                    ),
                );
                continue;
            };
            for extra in &rs.checkers[1..] {
                self.warn(
                    extra.line,
                    format!(
                        "real_server {} has more than one checker; lb runs one check per \
                         service: this one is not carried over",
                        rs.address
                    ),
                );
            }
            if std::ptr::eq(checker, chosen) {
                continue;
            }
            let lines = health_lines(&resolve(vs, rs, checker), vs.port);
            let differences = describe_differences(&base, &lines);
            if !differences.is_empty() {
                self.warn(
                    checker.line,
                    format!(
                        "real_server {} is checked differently from real_server {} ({}); \
                         lb runs one check per service and uses the one at line {}",
                        rs.address, first.address, differences, chosen.line
                    ),
                );
            }
        }
        Some(self.fit(health, chosen.line))
    }

    /// Brings the check of the checker at `line` within lb's limits, with a
    /// warning for each change.
    fn fit(&mut self, mut health: HealthConfig, line: usize) -> HealthConfig {
        let (min, max) = (*HEALTH_INTERVAL.start(), *HEALTH_INTERVAL.end());
        let delay_loop = health.interval;
        let clamped = delay_loop.clamp(min, max);
        if clamped != delay_loop {
            self.warn(
                line,
                format!(
                    "delay_loop {} is outside lb's range {}..={}; using {}",
                    format_duration_in_seconds(delay_loop),
                    format_duration_in_seconds(min),
                    format_duration_in_seconds(max),
                    format_duration_in_seconds(clamped)
                ),
            );
            health.interval = clamped;
        }
        let what = match health.kind {
            HealthKind::Exec(_) => "misc_timeout",
            _ => "connect_timeout",
        };
        if health.timeout < min {
            self.warn(
                line,
                format!(
                    "{what} {} is below lb's minimum {}; using {}",
                    format_duration_in_seconds(health.timeout),
                    format_duration_in_seconds(min),
                    format_duration_in_seconds(min)
                ),
            );
            health.timeout = min;
        }
        if health.timeout > health.interval {
            self.warn(
                line,
                format!(
                    "{what} {} is longer than delay_loop {}, which lb does not allow; \
                     using {}",
                    format_duration_in_seconds(health.timeout),
                    format_duration_in_seconds(health.interval),
                    format_duration_in_seconds(health.interval)
                ),
            );
            health.timeout = health.interval;
        }
        let fall_max = *FALL_RISE.end();
        if health.fall > fall_max {
            self.warn(
                line,
                format!(
                    "retry {} is above lb's maximum {}; using fall = {fall_max}",
                    health.fall - 1,
                    fall_max - 1
                ),
            );
            health.fall = fall_max;
        }
        if health.fall > 1 {
            let clamped = health.retry_delay.clamp(min, max);
            if clamped != health.retry_delay {
                self.warn(
                    line,
                    format!(
                        "delay_before_retry {} is outside lb's range {}..={}; using {}",
                        format_duration_in_seconds(health.retry_delay),
                        format_duration_in_seconds(min),
                        format_duration_in_seconds(max),
                        format_duration_in_seconds(clamped)
                    ),
                );
                health.retry_delay = clamped;
            }
        } else {
            // Without retries the next check comes after the interval.
            health.retry_delay = health.interval;
        }
        let warmup_max = *WARMUP.end();
        if health.warmup == delay_loop {
            // keepalived's default (and lb's): the interval, as fitted.
            health.warmup = health.interval;
        } else if health.warmup > warmup_max {
            self.warn(
                line,
                format!(
                    "warmup {} is above lb's maximum {}; using {}",
                    format_duration_in_seconds(health.warmup),
                    format_duration_in_seconds(warmup_max),
                    format_duration_in_seconds(warmup_max)
                ),
            );
            health.warmup = warmup_max;
        }
        if let HealthKind::Http(HttpCheck { path, host, .. }) = &mut health.kind {
            if http_path_problem(path).is_some() {
                let message = format!(
                    "url path {path:?} is not an absolute path lb can request; using \"/\""
                );
                self.warn(line, message);
                *path = "/".to_owned();
            }
            if let Some(name) = host.take_if(|h| !is_valid_http_host(h)) {
                let message = format!(
                    "virtualhost {name:?} is not a valid Host header; lb sends the backend's \
                     address instead"
                );
                self.warn(line, message);
            }
        }
        health
    }

    /// `snmp_name` when it is a valid, unused lb name, else
    /// `vs-<vip>-<port>` (with `-udp` for UDP), shortened to 32
    /// characters and made unique.
    fn name(&mut self, vs: &VirtualServer) -> String {
        if let Some(name) = &vs.snmp_name
            && is_valid_service_name(name)
            && !self.names.contains(name)
        {
            self.names.insert(name.clone());
            return name.clone();
        }
        let address = vs.vip.to_string().replace(':', "-");
        let suffix = match vs.protocol {
            Protocol::Tcp => format!("-{}", vs.port),
            Protocol::Udp => format!("-{}-udp", vs.port),
        };
        for n in 1.. {
            let unique = if n == 1 {
                String::new()
            } else {
                format!("-{n}")
            };
            let room = NAME_MAX - "vs-".len() - suffix.len() - unique.len();
            // Keep the end of a long (IPv6) address: it tells VIPs apart.
            let tail = &address[address.len().saturating_sub(room)..];
            let name = format!("vs-{}{suffix}{unique}", tail.trim_start_matches('-'));
            if self.names.insert(name.clone()) {
                return name;
            }
        }
        unreachable!("names are finite")
    }
}

/// The check a real server's checker amounts to, with keepalived's
/// inheritance (checker, then real server, then virtual server, then
/// keepalived's default).
fn resolve(vs: &VirtualServer, rs: &RealServer, checker: &KeepalivedCheck) -> HealthConfig {
    let parents = [&rs.timers, &vs.timers];
    let timers = &checker.timers;
    let interval = timers
        .pick(&parents, |t| t.delay_loop)
        .unwrap_or(KA_DELAY_LOOP);
    let connect_timeout = timers
        .pick(&parents, |t| t.connect_timeout)
        .unwrap_or(KA_CONNECT_TIMEOUT);
    let retry = timers
        .pick(&parents, |t| t.retry)
        .unwrap_or(checker.default_retry);
    let retry_delay = timers
        .pick(&parents, |t| t.delay_before_retry)
        .unwrap_or(checker.default_retry_delay);
    let warmup = timers.pick(&parents, |t| t.warmup);
    let connect_port = checker.connect_port.unwrap_or(rs.port);
    let (kind, timeout, port) = match &checker.check {
        CheckType::Tcp => (HealthKind::Tcp, connect_timeout, connect_port),
        CheckType::Http {
            path,
            status,
            digest,
            host,
        } => {
            let ranges = if status.is_empty() {
                std::slice::from_ref(&KA_HTTP_STATUS)
            } else {
                status.as_slice()
            };
            let status: BTreeSet<u16> = ranges.iter().flat_map(|&(lo, hi)| lo..=hi).collect();
            let host = host
                .clone()
                .or_else(|| checker.host.clone())
                .or_else(|| rs.host.clone())
                .or_else(|| vs.host.clone());
            let http = HttpCheck {
                path: path.clone(),
                status: status.into_iter().collect(),
                digest: *digest,
                host,
            };
            (HealthKind::Http(http), connect_timeout, connect_port)
        }
        CheckType::Exec { command, timeout } => {
            let command = vec!["/bin/sh".to_owned(), "-c".to_owned(), command.clone()];
            (
                HealthKind::Exec(ExecCheck { command }),
                // keepalived: misc_timeout, else the virtual server's delay_loop.
                timeout.unwrap_or(vs.timers.delay_loop.unwrap_or(KA_DELAY_LOOP)),
                // MISC_CHECK connects nowhere: lb's default, the service's port.
                vs.port,
            )
        }
    };
    let fall = retry.saturating_add(1);
    HealthConfig {
        kind,
        interval,
        timeout,
        port,
        fall,
        // Up again after one good check.
        rise: 1,
        // Without retries, keepalived checks again after delay_loop.
        retry_delay: if fall > 1 { retry_delay } else { interval },
        warmup: warmup.unwrap_or(interval),
        inhibit_on_failure: rs.inhibit.unwrap_or(vs.inhibit),
        notify: Vec::new(),
        bind_to: None,
    }
}

/// `timeout "3s" here, "5s" there; ...` for the fields two checks differ in.
fn describe_differences(base: &[(&str, String)], other: &[(&str, String)]) -> String {
    let value = |fields: &[(&str, String)], key: &str| {
        fields
            .iter()
            .find(|(k, _)| *k == key)
            .map_or_else(|| "(none)".to_owned(), |(_, v)| shorten(v))
    };
    let mut keys: Vec<&str> = base.iter().map(|(k, _)| *k).collect();
    for (key, _) in other {
        if !keys.contains(key) {
            keys.push(key);
        }
    }
    keys.into_iter()
        .filter(|key| value(base, key) != value(other, key))
        .map(|key| format!("{key} {} vs {}", value(other, key), value(base, key)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A value for a one-line message: long arrays are cut.
fn shorten(value: &str) -> String {
    let flat = value.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > 40 {
        let cut: String = flat.chars().take(37).collect();
        format!("{cut}...")
    } else {
        flat
    }
}

/// `weight 1000` or `TCP_CHECK`: a statement as written, for messages.
fn describe_stmt(stmt: &Stmt) -> String {
    if stmt.args.is_empty() {
        stmt.keyword.clone()
    } else {
        format!("{} {}", stmt.keyword, stmt.args.join(" "))
    }
}

/// An IPv4 or IPv6 address, IPv6 possibly in brackets.
fn parse_address(text: &str) -> Option<IpAddr> {
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse().ok()
}

/// keepalived's timer syntax (seconds, up to 6 decimals) in microseconds.
fn parse_seconds(text: &str) -> Option<u64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || fraction.len() > 6
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: u64 = whole.parse().ok()?;
    let fraction: u64 = format!("{fraction:0<6}").parse().ok()?;
    whole.checked_mul(1_000_000)?.checked_add(fraction)
}

/// `200` or `200-299`, of the status codes lb checks for (100 to 599).
fn parse_status(text: &str) -> Option<(u16, u16)> {
    let (lo, hi) = text.split_once('-').unwrap_or((text, text));
    let (lo, hi) = (lo.parse::<u16>().ok()?, hi.parse::<u16>().ok()?);
    (HTTP_STATUS.contains(&lo) && HTTP_STATUS.contains(&hi) && lo <= hi).then_some((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generated names are shortened to lb's limit and made unique.
    #[test]
    fn long_names_are_shortened_and_made_unique() {
        let mut converter = Converter::default();
        let vs = VirtualServer {
            line: 1,
            vip: "2001:db8:1234:5678:9abc:def0:1234:5678".parse().unwrap(),
            port: 2811,
            ports: Ports::single(2811),
            scheduler: None,
            protocol: Protocol::Tcp,
            weight: None,
            inhibit: false,
            host: None,
            snmp_name: Some("bad name".into()),
            timers: Timers::default(),
            real_servers: Vec::new(),
            sorry_server: None,
            quorum: None,
            hysteresis: None,
            persistence_timeout: None,
            persistence_granularity: None,
        };
        let first = converter.name(&vs);
        let second = converter.name(&vs);
        assert_eq!(first, "vs-5678-9abc-def0-1234-5678-2811");
        assert_eq!(second, "vs-78-9abc-def0-1234-5678-2811-2");
        assert!(is_valid_service_name(&second) && second.len() <= 32);
    }

    #[test]
    fn durations_and_values() {
        assert_eq!(parse_seconds("10"), Some(10_000_000));
        assert_eq!(parse_seconds("0.5"), Some(500_000));
        assert_eq!(parse_seconds("1.000001"), Some(1_000_001));
        for bad in ["", "-1", "1.2.3", "1e3", ".5", "1.0000001", "ten"] {
            assert_eq!(parse_seconds(bad), None, "{bad}");
        }
        assert_eq!(parse_status("200-299"), Some((200, 299)));
        assert_eq!(parse_status("299-200"), None);
        assert_eq!(parse_status("99"), None);
        assert_eq!(parse_address("[2001:db8::1]"), "2001:db8::1".parse().ok());
    }
}
