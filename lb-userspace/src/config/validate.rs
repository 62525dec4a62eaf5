//! The validator: turns the raw file into a [`Config`], checking every
//! value's type and range and the file's consistency (unique names, VIPs
//! and backends), and collecting every problem it finds.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    ops::RangeInclusive,
    path::{Component, Path, PathBuf},
    time::Duration,
};

use lb_common::{ANY_PORT, MAX_SERVICE_KEYS, conn_state::Timeouts};
use toml::{Spanned, Value};

use super::{
    AnnounceConfig, BPFFS_ROOT, BackendConfig, Config, DEFAULT_ANNOUNCE_DEVICE,
    DEFAULT_ANNOUNCE_TABLE, DEFAULT_CONTROL_SOCKET, DEFAULT_FALL, DEFAULT_HEALTH_INTERVAL,
    DEFAULT_HTTP_PATH, DEFAULT_HTTP_STATUS, DEFAULT_PIN_PATH, DEFAULT_QUORUM, DEFAULT_RISE,
    DEFAULT_SYNC_PORT, DEFAULT_WEIGHT, DirectorConfig, ExecCheck, HealthConfig, HealthKind,
    HttpCheck, Keyword, KindWord, MIN_SYNC_KEY, NoBackend, Persistence, Ports, Problem, Protocol,
    Scheduler, ServiceConfig, SyncConfig, SyncPeers, default_health_timeout, parse_keyword,
    raw::{
        Field, RawAnnounce, RawBackend, RawConfig, RawDirector, RawHealth, RawService, RawSync,
        RawTimeouts, backend_label, health_label, key, line_of, service_label,
    },
    values::{
        check_ifname, describe_value, format_duration, http_path_problem, is_valid_http_host,
        parse_duration, parse_listen, parse_mac, parse_md5, vlan_suffix,
    },
};

// Valid ranges.
const MAX_FLOWS: RangeInclusive<u32> = 1024..=16_777_216;
/// `syn_flood_rate`: 0 (the guard off) or new TCP flows per second on one CPU.
const SYN_FLOOD_RATE: RangeInclusive<u32> = 0..=100_000_000;
const SWEEP_INTERVAL: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(60);
const TIMEOUT: RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(7 * 86_400);
/// A health check's `interval`, `timeout` and `retry_delay`.
pub(crate) const HEALTH_INTERVAL: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);
const PORT: RangeInclusive<u16> = 1..=u16::MAX;
/// A VLAN id a service may be bound to.
const VLAN_ID: RangeInclusive<i64> = 1..=lb_common::VLAN_ID_MAX as i64;
/// A health check's `fall` and `rise`.
pub(crate) const FALL_RISE: RangeInclusive<u32> = 1..=100;
/// The longest service name.
pub(crate) const NAME_MAX: usize = 32;
/// A health check's `warmup`.
pub(crate) const WARMUP: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(3600);
/// The status codes an http check may expect.
pub(crate) const HTTP_STATUS: RangeInclusive<u16> = 100..=599;
/// `sun_path` of a Unix socket address holds 108 bytes with the final NUL.
const UNIX_PATH_MAX: usize = 107;

const DURATION_EXAMPLES: &str = "\"500ms\", \"10s\", \"2m\", \"1h\", \"1m30s\"";

/// Checks the raw file `text` was parsed into: the [`Config`], or every
/// problem found, in line order.
pub(super) fn validate(text: &str, raw: &RawConfig) -> Result<Config, Vec<Problem>> {
    let mut validator = ConfigValidator {
        text,
        problems: Vec::new(),
    };
    match validator.config(raw) {
        Some(config) if validator.problems.is_empty() => Ok(config),
        _ => {
            debug_assert!(!validator.problems.is_empty(), "rejected without a reason");
            validator.problems.sort_by_key(|p| p.line);
            Err(validator.problems)
        }
    }
}

/// Turns the raw file into a [`Config`], collecting every problem.
///
/// Each check returns `None` after recording why, so a section is built only
/// when all of its fields are valid, and one bad field does not hide others.
struct ConfigValidator<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl ConfigValidator<'_> {
    fn report_line(&mut self, line: Option<usize>, context: &str, message: impl fmt::Display) {
        self.problems.push(Problem {
            line,
            message: format!("{context}: {message}"),
        });
    }

    fn report(&mut self, offset: usize, context: &str, message: impl fmt::Display) {
        let line = Some(line_of(self.text, offset));
        self.report_line(line, context, message);
    }

    fn report_at(&mut self, value: &Spanned<Value>, context: &str, message: impl fmt::Display) {
        self.report(value.span().start, context, message);
    }

    /// Line of a `[header]` written out in the file, for the sections that
    /// toml gives no position (see [`RawConfig`]).
    fn header_line(&self, header: &str) -> Option<usize> {
        self.text
            .lines()
            .position(|l| l.trim_start().starts_with(header))
            .map(|i| i + 1)
    }

    fn config(&mut self, raw: &RawConfig) -> Option<Config> {
        let director = match &raw.director {
            Some(director) => self.director(director),
            None => {
                self.problems.push(Problem {
                    line: None,
                    message: "missing [director] table; it needs at least \
                              interfaces = [\"eth0\"] (the NICs to attach to)"
                        .to_owned(),
                });
                None
            }
        };
        let services = self.services(raw.service.as_deref().unwrap_or_default());
        let sync = match &raw.sync {
            Some(sync) => self.sync(sync).map(Some),
            None => Some(None),
        };
        let announce = match &raw.announce {
            Some(announce) => self.announce(announce).map(Some),
            None => Some(None),
        };
        Some(Config {
            director: director?,
            services: services?,
            sync: sync?,
            announce: announce?,
        })
    }

    /// `[announce]`: a routing table that is none of the kernel's own, and
    /// a device name.
    fn announce(&mut self, raw: &RawAnnounce) -> Option<AnnounceConfig> {
        const CTX: &str = "[announce]";
        let table = match &raw.table {
            Some(v) => self
                .integer(CTX, key::TABLE, v, 1..=u32::MAX)
                .and_then(|table| {
                    if (253..=255).contains(&table) {
                        self.report_at(
                            v,
                            CTX,
                            format_args!(
                                "table {table} is the kernel's own (default, main or local) \
                             (valid: a table of lb's own, 1..=252 or above 255, e.g. \
                             {DEFAULT_ANNOUNCE_TABLE})"
                            ),
                        );
                        None
                    } else {
                        Some(table)
                    }
                }),
            None => Some(DEFAULT_ANNOUNCE_TABLE),
        };
        let device = match &raw.device {
            Some(v) => self.string(CTX, key::DEVICE, v).and_then(|name| {
                check_ifname(name)
                    .map_err(|why| {
                        self.report_at(
                            v,
                            CTX,
                            format_args!("device {name:?} is not a valid interface name: {why}"),
                        )
                    })
                    .ok()
                    .map(|()| name.to_owned())
            }),
            None => Some(DEFAULT_ANNOUNCE_DEVICE.to_owned()),
        };
        Some(AnnounceConfig {
            table: table?,
            device: device?,
        })
    }

    /// `[sync]`: an interface, unicast `peers` or a multicast `group` (one
    /// of the two), a port and an absolute `key_file`.
    fn sync(&mut self, raw: &RawSync) -> Option<SyncConfig> {
        const CTX: &str = "[sync]";
        let line = self.header_line(CTX);
        let interface = match &raw.interface {
            Some(v) => self.string(CTX, key::INTERFACE, v).and_then(|name| {
                check_ifname(name)
                    .map_err(|why| {
                        self.report_at(
                            v,
                            CTX,
                            format_args!("interface {name:?} is not a valid interface name: {why}"),
                        )
                    })
                    .ok()
                    .map(|()| name.to_owned())
            }),
            None => {
                self.report_line(
                    line,
                    CTX,
                    "missing required field \"interface\" (the NIC sync messages use, \
                     e.g. interface = \"eth0\")",
                );
                None
            }
        };
        let peers = match (&raw.peers, &raw.group) {
            (Some(peers), None) => self.sync_peers(peers).map(SyncPeers::Unicast),
            (None, Some(group)) => self.sync_group(group).map(SyncPeers::Multicast),
            (Some(_), Some(group)) => {
                self.report_at(
                    group,
                    CTX,
                    "peers and group are both set (valid: one of them: peers = [\"192.0.2.3\"] \
                     for unicast, or group = \"239.0.0.81\" for multicast)",
                );
                None
            }
            (None, None) => {
                self.report_line(
                    line,
                    CTX,
                    "says neither whom to sync with (valid: peers = [\"192.0.2.3\"], the other \
                     directors' addresses, or group = \"239.0.0.81\", a multicast group)",
                );
                None
            }
        };
        let port = match &raw.port {
            Some(v) => self.integer(CTX, key::PORT, v, 1..=u16::MAX),
            None => Some(DEFAULT_SYNC_PORT),
        };
        let key_file = match &raw.key_file {
            Some(v) => self.string(CTX, key::KEY_FILE, v).and_then(|text| {
                let path = Path::new(text);
                if path.is_absolute() && path.file_name().is_some() {
                    Some(path.to_path_buf())
                } else {
                    self.report_at(
                        v,
                        CTX,
                        format_args!(
                            "key_file {text:?} is not an absolute file path (valid: e.g. \
                             \"/etc/lb/sync.key\", a file of at least {MIN_SYNC_KEY} bytes \
                             readable by root only)"
                        ),
                    );
                    None
                }
            }),
            None => {
                self.report_line(
                    line,
                    CTX,
                    format_args!(
                        "missing required field \"key_file\" (the shared secret sync \
                         messages are authenticated with: a file of at least {MIN_SYNC_KEY} \
                         bytes readable by root only, e.g. key_file = \"/etc/lb/sync.key\")"
                    ),
                );
                None
            }
        };
        Some(SyncConfig {
            interface: interface?,
            peers: peers?,
            port: port?,
            key_file: key_file?,
        })
    }

    /// `[sync] peers`: unicast addresses of one family, each once.
    fn sync_peers(&mut self, v: &Spanned<Value>) -> Option<Vec<IpAddr>> {
        const CTX: &str = "[sync]";
        const VALID: &str = "valid: the other directors' addresses, all IPv4 or all IPv6, \
                             e.g. peers = [\"192.0.2.3\"]";
        let items = match v.get_ref() {
            Value::Array(items) if !items.is_empty() => items,
            other => {
                self.report_at(
                    v,
                    CTX,
                    format_args!("peers holds {} ({VALID})", describe_value(other)),
                );
                return None;
            }
        };
        let mut peers: Vec<IpAddr> = Vec::with_capacity(items.len());
        for item in items {
            let parsed = match item {
                Value::String(text) => text.trim().parse::<IpAddr>().ok(),
                _ => None,
            };
            let problem = match parsed {
                None => Some(format!("peers holds {}", describe_value(item))),
                Some(peer) if unusable(peer).is_some() => Some(format!(
                    "peer {peer} is {}",
                    unusable(peer).unwrap_or_default()
                )),
                Some(peer) if peers.contains(&peer) => Some(format!("peers lists {peer} twice")),
                Some(peer) if peers.first().is_some_and(|p| p.is_ipv4() != peer.is_ipv4()) => {
                    Some(format!("peers mixes IPv4 and IPv6 ({peer})"))
                }
                Some(peer) => {
                    peers.push(peer);
                    None
                }
            };
            if let Some(problem) = problem {
                self.report_at(v, CTX, format_args!("{problem} ({VALID})"));
                return None;
            }
        }
        Some(peers)
    }

    /// `[sync] group`: a multicast address.
    fn sync_group(&mut self, v: &Spanned<Value>) -> Option<IpAddr> {
        const CTX: &str = "[sync]";
        let text = self.string(CTX, key::GROUP, v)?;
        match text.trim().parse::<IpAddr>() {
            Ok(group) if group.is_multicast() => Some(group),
            _ => {
                self.report_at(
                    v,
                    CTX,
                    format_args!(
                        "group {text:?} is not a multicast address (valid: e.g. \
                         \"239.0.0.81\" or \"ff02::81\")"
                    ),
                );
                None
            }
        }
    }

    fn director(&mut self, raw: &RawDirector) -> Option<DirectorConfig> {
        const CTX: &str = "[director]";
        let interfaces = match &raw.interfaces {
            Some(v) => self.interfaces(v),
            None => {
                let line = self.header_line(CTX);
                self.report_line(
                    line,
                    CTX,
                    "missing required field \"interfaces\" (e.g. interfaces = [\"eth0\"])",
                );
                None
            }
        };
        let default = DirectorConfig::new(Vec::new());
        let xdp_mode = self.keyword_or(CTX, key::XDP_MODE, &raw.xdp_mode, default.xdp_mode);
        let pin_path = match &raw.pin_path {
            Some(v) => self.pin_path(v),
            None => Some(default.pin_path),
        };
        let max_flows = match &raw.max_flows {
            Some(v) => self.integer(CTX, key::MAX_FLOWS, v, MAX_FLOWS),
            None => Some(default.max_flows),
        };
        let max_flows_v6 = match &raw.max_flows_v6 {
            Some(v) => self.integer(CTX, key::MAX_FLOWS_V6, v, MAX_FLOWS),
            None => Some(default.max_flows_v6),
        };
        let sweep_interval = match &raw.sweep_interval {
            Some(v) => self.duration(CTX, key::SWEEP_INTERVAL, v, SWEEP_INTERVAL),
            None => Some(default.sweep_interval),
        };
        let timeouts = match &raw.timeouts {
            Some(t) => self.timeouts(t, default.timeouts),
            None => Some(default.timeouts),
        };
        let control_socket = match &raw.control_socket {
            Some(v) => self.control_socket(v),
            None => Some(default.control_socket),
        };
        let metrics_listen = match &raw.metrics_listen {
            Some(v) => self.metrics_listen(v).map(Some),
            None => Some(default.metrics_listen),
        };
        let expire_nodest_conn = match &raw.expire_nodest_conn {
            Some(v) => self.boolean(CTX, key::EXPIRE_NODEST_CONN, v),
            None => Some(default.expire_nodest_conn),
        };
        let vrrp_vrids = match &raw.vrrp_vrids {
            Some(v) => self.vrrp_vrids(v),
            None => Some(default.vrrp_vrids),
        };
        let syn_flood_rate = match &raw.syn_flood_rate {
            Some(v) => self.integer(CTX, key::SYN_FLOOD_RATE, v, SYN_FLOOD_RATE),
            None => Some(default.syn_flood_rate),
        };
        Some(DirectorConfig {
            interfaces: interfaces?,
            xdp_mode: xdp_mode?,
            pin_path: pin_path?,
            max_flows: max_flows?,
            max_flows_v6: max_flows_v6?,
            sweep_interval: sweep_interval?,
            timeouts: timeouts?,
            control_socket: control_socket?,
            metrics_listen: metrics_listen?,
            expire_nodest_conn: expire_nodest_conn?,
            vrrp_vrids: vrrp_vrids?,
            syn_flood_rate: syn_flood_rate?,
        })
    }

    fn control_socket(&mut self, v: &Spanned<Value>) -> Option<PathBuf> {
        const CTX: &str = "[director]";
        let text = self.string(CTX, key::CONTROL_SOCKET, v)?;
        let path = Path::new(text);
        let why = if !path.is_absolute() {
            Some("is not an absolute path")
        } else if path.components().any(|c| c == Component::ParentDir) {
            Some("contains \"..\"")
        } else if text.ends_with('/') || path.file_name().is_none() {
            Some("names a directory, not a socket file")
        } else if text.len() > UNIX_PATH_MAX {
            Some("is too long for a Unix socket")
        } else if text.contains('\0') {
            Some("contains a NUL byte")
        } else {
            None
        };
        if let Some(why) = why {
            self.report_at(
                v,
                CTX,
                format_args!(
                    "control_socket {text:?} {why} (valid: an absolute file path of at most \
                     {UNIX_PATH_MAX} bytes without \"..\", e.g. {DEFAULT_CONTROL_SOCKET:?})"
                ),
            );
            return None;
        }
        Some(path.to_path_buf())
    }

    /// VRRP router ids: integers from 1 to 255, each once; returned sorted.
    fn vrrp_vrids(&mut self, v: &Spanned<Value>) -> Option<Vec<u8>> {
        const CTX: &str = "[director]";
        const VALID: &str = "valid: an array of VRRP router ids from 1 to 255, as keepalived's \
                             virtual_router_id, e.g. vrrp_vrids = [51]";
        let Value::Array(items) = v.get_ref() else {
            self.report_at(
                v,
                CTX,
                format_args!(
                    "vrrp_vrids must be an array (found {}; {VALID})",
                    describe_value(v.get_ref())
                ),
            );
            return None;
        };
        let mut vrids = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Value::Integer(n) if (1..=255).contains(n) => {
                    let vrid = *n as u8;
                    if vrids.contains(&vrid) {
                        self.report_at(
                            v,
                            CTX,
                            format_args!("vrrp_vrids lists {vrid} twice ({VALID})"),
                        );
                        return None;
                    }
                    vrids.push(vrid);
                }
                other => {
                    self.report_at(
                        v,
                        CTX,
                        format_args!("vrrp_vrids holds {} ({VALID})", describe_value(other)),
                    );
                    return None;
                }
            }
        }
        vrids.sort_unstable();
        Some(vrids)
    }

    /// `"ADDR:PORT"`, or a port (number or string) on 127.0.0.1.
    fn metrics_listen(&mut self, v: &Spanned<Value>) -> Option<SocketAddr> {
        const CTX: &str = "[director]";
        const VALID: &str = "valid: \"ADDR:PORT\" such as \"127.0.0.1:9100\" or \"[::1]:9100\", \
                             or a port such as 9100 for 127.0.0.1:9100";
        match v.get_ref() {
            Value::Integer(_) => self
                .integer(CTX, key::METRICS_LISTEN, v, PORT)
                .map(|port| SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port))),
            Value::String(text) => {
                let text = text.trim();
                match parse_listen(text) {
                    Some(address) if address.port() != 0 => Some(address),
                    Some(_) => {
                        self.report_at(
                            v,
                            CTX,
                            format_args!("metrics_listen {text:?} has port 0 ({VALID})"),
                        );
                        None
                    }
                    None => {
                        self.report_at(
                            v,
                            CTX,
                            format_args!(
                                "metrics_listen {text:?} is not an address and port ({VALID})"
                            ),
                        );
                        None
                    }
                }
            }
            other => {
                self.report_at(
                    v,
                    CTX,
                    format_args!(
                        "metrics_listen must be a string or a port number (found {}; {VALID})",
                        describe_value(other)
                    ),
                );
                None
            }
        }
    }

    fn interfaces(&mut self, v: &Spanned<Value>) -> Option<Vec<String>> {
        const CTX: &str = "[director]";
        let Value::Array(items) = v.get_ref() else {
            self.report_at(
                v,
                CTX,
                format_args!(
                    "interfaces must be an array of interface names, e.g. \
                     interfaces = [\"eth0\"] (found {})",
                    describe_value(v.get_ref())
                ),
            );
            return None;
        };
        let before = self.problems.len();
        if items.is_empty() {
            self.report_at(
                v,
                CTX,
                "interfaces is empty; list at least one network interface, e.g. \
                 interfaces = [\"eth0\"]",
            );
        }
        if items.len() > lb_common::MAX_IFACES as usize {
            self.report_at(
                v,
                CTX,
                format_args!(
                    "interfaces lists {} interfaces (valid: at most {})",
                    items.len(),
                    lb_common::MAX_IFACES
                ),
            );
        }
        let mut names: Vec<String> = Vec::with_capacity(items.len());
        for item in items {
            let Value::String(name) = item else {
                self.report_at(
                    v,
                    CTX,
                    format_args!(
                        "interfaces must hold interface names as strings, e.g. \
                         interfaces = [\"eth0\"] (found {})",
                        describe_value(item)
                    ),
                );
                continue;
            };
            if let Err(why) = check_ifname(name) {
                self.report_at(
                    v,
                    CTX,
                    format_args!("interface {name:?} is not a valid interface name: {why}"),
                );
            } else if names.contains(name) {
                self.report_at(
                    v,
                    CTX,
                    format_args!("interface {name:?} is listed twice in interfaces"),
                );
            } else {
                names.push(name.clone());
            }
        }
        (self.problems.len() == before).then_some(names)
    }

    fn pin_path(&mut self, v: &Spanned<Value>) -> Option<PathBuf> {
        let path = Path::new(self.string("[director]", key::PIN_PATH, v)?);
        // "/", "sys", "fs", "bpf" and at least one more, none of them "..".
        let under_bpffs = path.is_absolute()
            && path.starts_with(BPFFS_ROOT)
            && path.components().count() > 4
            && !path.components().any(|c| c == Component::ParentDir);
        if !under_bpffs {
            self.report_at(
                v,
                "[director]",
                format_args!(
                    "pin_path {:?} is not under /sys/fs/bpf/ (valid: an absolute path \
                     below the BPF filesystem without \"..\", e.g. {DEFAULT_PIN_PATH:?})",
                    path.display().to_string()
                ),
            );
            return None;
        }
        Some(path.to_path_buf())
    }

    fn timeouts(&mut self, raw: &RawTimeouts, d: Timeouts) -> Option<Timeouts> {
        let established = self.seconds(key::ESTABLISHED, &raw.established, d.established);
        let syn_recv = self.seconds(key::SYN_RECV, &raw.syn_recv, d.syn_recv);
        let fin_wait = self.seconds(key::FIN_WAIT, &raw.fin_wait, d.fin_wait);
        let close = self.seconds(key::CLOSE, &raw.close, d.close);
        let udp = self.seconds(key::UDP, &raw.udp, d.udp);
        Some(Timeouts {
            established: established?,
            syn_recv: syn_recv?,
            fin_wait: fin_wait?,
            close: close?,
            udp: udp?,
        })
    }

    /// A `[director.timeouts]` entry: a duration of whole seconds.
    fn seconds(&mut self, key: &str, field: &Field, default: u64) -> Option<u64> {
        const CTX: &str = "[director.timeouts]";
        let Some(v) = field else {
            return Some(default);
        };
        let duration = self.duration(CTX, key, v, TIMEOUT)?;
        if duration.subsec_nanos() != 0 {
            self.report_at(
                v,
                CTX,
                format_args!(
                    "{key} {} is not a whole number of seconds",
                    format_duration(duration)
                ),
            );
            return None;
        }
        Some(duration.as_secs())
    }

    fn services(&mut self, raw: &[Spanned<RawService>]) -> Option<Vec<ServiceConfig>> {
        let before = self.problems.len();
        let max = lb_common::MAX_SERVICES as usize;
        if let Some(extra) = raw.get(max) {
            let label = service_label(max, extra.get_ref().name.as_ref().map(|v| v.get_ref()));
            self.report(
                extra.span().start,
                &label,
                format_args!("too many services: {} (valid: at most {max})", raw.len()),
            );
        }
        // Every VIP in the file, to reject a backend that is one.
        let mut vips: HashMap<IpAddr, String> = HashMap::new();
        for (index, service) in raw.iter().enumerate() {
            let service = service.get_ref();
            if let Some(Value::String(vip)) = service.vip.as_ref().map(|v| v.get_ref())
                && let Ok(vip) = vip.parse()
            {
                vips.entry(vip).or_insert_with(|| {
                    service_label(index, service.name.as_ref().map(|v| v.get_ref()))
                });
            }
        }
        let mut seen = Seen {
            vips,
            names: HashMap::new(),
            ports: Vec::new(),
            keys: 0,
        };
        let services: Vec<ServiceConfig> = raw
            .iter()
            .enumerate()
            .filter_map(|(index, service)| self.service(index, service, &mut seen))
            .collect();
        (self.problems.len() == before).then_some(services)
    }

    fn service(
        &mut self,
        index: usize,
        spanned: &Spanned<RawService>,
        seen: &mut Seen,
    ) -> Option<ServiceConfig> {
        let at = spanned.span().start;
        let raw = spanned.get_ref();
        let ctx = service_label(index, raw.name.as_ref().map(|v| v.get_ref()));

        let name = self
            .required(at, &ctx, key::NAME, &raw.name, "name = \"gridftp\"")
            .and_then(|v| Some((v, self.service_name(&ctx, v)?)));
        let name = name.and_then(|(v, name)| {
            let line = line_of(self.text, v.span().start);
            match seen.names.get(&name) {
                Some(first) => {
                    self.report_at(
                        v,
                        &ctx,
                        format_args!(
                            "name {name:?} is already used by the service at line {first} \
                             (service names must be unique)"
                        ),
                    );
                    None
                }
                None => {
                    seen.names.insert(name.clone(), line);
                    Some(name)
                }
            }
        });
        let vip = self
            .required(at, &ctx, key::VIP, &raw.vip, "vip = \"192.0.2.200\"")
            .and_then(|v| self.address(&ctx, key::VIP, v));
        let ports = self.service_ports(at, &ctx, raw);
        let protocol = self.keyword_or(&ctx, key::PROTOCOL, &raw.protocol, Protocol::Tcp);
        let scheduler = self.keyword_or(&ctx, key::SCHEDULER, &raw.scheduler, Scheduler::Wlc);
        let mut no_backend =
            self.keyword_or(&ctx, key::NO_BACKEND, &raw.no_backend, NoBackend::Drop);
        if let (Some(NoBackend::Reject), Some(Protocol::Udp), Some(v)) =
            (no_backend, protocol, &raw.no_backend)
        {
            self.report_at(
                v,
                &ctx,
                "no_backend \"reject\" answers with a TCP RST, and this is a udp service \
                 (valid for udp: \"drop\")",
            );
            no_backend = None;
        }

        let vlan = match &raw.vlan {
            Some(v) => self.vlan(&ctx, v),
            None => Some(Vec::new()),
        };

        if let (Some(vip), Some((field, ports)), Some(protocol), Some(vlan)) =
            (vip, &ports, protocol, &vlan)
        {
            self.unique_ports(&ctx, field, (vip, protocol, vlan), ports, seen);
        }
        let port = ports.as_ref().map(|(_, ports)| ports.first());

        let sloppy_tcp = match &raw.sloppy_tcp {
            Some(v) => self.boolean(&ctx, key::SLOPPY_TCP, v),
            None => Some(false),
        };
        let port_field = ports.as_ref().map(|(field, _)| *field);
        let health = self.health(&ctx, raw.health.as_ref(), vip, protocol, port, port_field);
        let backends = match raw.backend.as_deref() {
            Some(list) if !list.is_empty() => self.backends(&ctx, list, vip, &seen.vips),
            _ => {
                self.report(
                    at,
                    &ctx,
                    "no backends; add at least one [[service.backend]] with an address",
                );
                None
            }
        };

        let sorry_server = match &raw.sorry_server {
            Some(v) => self
                .sorry_server(&ctx, v, vip, backends.as_deref(), &seen.vips)
                .map(Some),
            None => Some(None),
        };
        let (quorum, hysteresis) = self.quorum(&ctx, raw);
        let persistence = self.persistence(&ctx, raw, vip);

        Some(ServiceConfig {
            name: name?,
            vip: vip?,
            ports: ports?.1,
            protocol: protocol?,
            scheduler: scheduler?,
            no_backend: no_backend?,
            sloppy_tcp: sloppy_tcp?,
            sorry_server: sorry_server?,
            quorum: quorum?,
            hysteresis: hysteresis?,
            persistence: persistence?,
            vlan: vlan?,
            health: health?,
            backends: backends?,
        })
    }

    /// `sorry_server`: an address of the VIP's family that is neither a
    /// VIP nor one of the service's backends.
    fn sorry_server(
        &mut self,
        ctx: &str,
        v: &Spanned<Value>,
        vip: Option<IpAddr>,
        backends: Option<&[BackendConfig]>,
        vips: &HashMap<IpAddr, String>,
    ) -> Option<IpAddr> {
        let address = self.address(ctx, key::SORRY_SERVER, v)?;
        let why = if let Some(owner) = vips.get(&address) {
            format!("the vip of {owner}")
        } else if backends.is_some_and(|b| b.iter().any(|b| b.address == address)) {
            "one of the service's backends".to_owned()
        } else if let Some(vip) = vip.filter(|vip| vip.is_ipv4() != address.is_ipv4()) {
            format!(
                "{} but the service's vip {vip} is {}",
                family(address),
                family(vip)
            )
        } else {
            return Some(address);
        };
        self.report_at(
            v,
            ctx,
            format_args!(
                "sorry_server {address} is {why} (valid: a real server of the VIP's family \
                 that is not a backend of the service)"
            ),
        );
        None
    }

    /// `persistence_timeout` and `persistence_netmask` (a prefix length of
    /// the VIP's family; only with a timeout).
    fn persistence(
        &mut self,
        ctx: &str,
        raw: &RawService,
        vip: Option<IpAddr>,
    ) -> Option<Option<Persistence>> {
        let bits = if vip.is_some_and(|vip| vip.is_ipv6()) {
            128
        } else {
            32
        };
        let prefix = match &raw.persistence_netmask {
            Some(v) => self.integer(ctx, key::PERSISTENCE_NETMASK, v, 0..=bits)?,
            None => bits,
        };
        let Some(v) = &raw.persistence_timeout else {
            if let Some(v) = &raw.persistence_netmask {
                self.report_at(
                    v,
                    ctx,
                    "persistence_netmask needs persistence_timeout (valid: set both, e.g. \
                     persistence_timeout = \"10m\")",
                );
                return None;
            }
            return Some(None);
        };
        let timeout = self.duration(ctx, key::PERSISTENCE_TIMEOUT, v, TIMEOUT)?;
        Some(Some(Persistence { timeout, prefix }))
    }

    /// `quorum` (at least 1) and `hysteresis` (below the quorum).
    fn quorum(&mut self, ctx: &str, raw: &RawService) -> (Option<u32>, Option<u32>) {
        let quorum = match &raw.quorum {
            Some(v) => self.integer(ctx, key::QUORUM, v, 1..=u32::MAX),
            None => Some(DEFAULT_QUORUM),
        };
        let hysteresis = match (&raw.hysteresis, quorum) {
            (Some(v), Some(quorum)) => self.integer(ctx, key::HYSTERESIS, v, 0..=quorum - 1),
            (Some(_), None) => None,
            (None, _) => Some(0),
        };
        (quorum, hysteresis)
    }

    /// The ports of a service: `port = N` (0: every port) or `ports = [...]`,
    /// with the field that gave them.
    fn service_ports<'v>(
        &mut self,
        at: usize,
        ctx: &str,
        raw: &'v RawService,
    ) -> Option<(&'v Spanned<Value>, Ports)> {
        match (&raw.port, &raw.ports) {
            (Some(_), Some(v)) => {
                self.report_at(
                    v,
                    ctx,
                    "both port and ports are set (valid: port = 2811 for one port, port = 0 \
                     for every port, or ports = [2811, \"50000-51000\"] for several)",
                );
                None
            }
            (Some(v), None) => {
                let port = self.integer(ctx, key::PORT, v, 0..=u16::MAX)?;
                Some((v, Ports::single(port)))
            }
            (None, Some(v)) => Some((v, self.port_list(ctx, v)?)),
            (None, None) => {
                self.required(at, ctx, key::PORT, &raw.port, "port = 2811");
                None
            }
        }
    }

    /// `ports = [2811, "50000-51000"]`: ports (1 to 65535) and inclusive
    /// ranges, none listed twice.
    fn port_list(&mut self, ctx: &str, v: &Spanned<Value>) -> Option<Ports> {
        const VALID: &str = "valid: a list of ports from 1 to 65535 and ranges \"FIRST-LAST\", \
                             e.g. ports = [2811, \"50000-51000\"]; port = 0 for every port";
        let Value::Array(items) = v.get_ref() else {
            self.report_at(
                v,
                ctx,
                format_args!(
                    "ports must be a list (found {}; {VALID})",
                    describe_value(v.get_ref())
                ),
            );
            return None;
        };
        if items.is_empty() {
            self.report_at(v, ctx, format_args!("ports is empty ({VALID})"));
            return None;
        }
        let mut ranges = Vec::with_capacity(items.len());
        for item in items {
            let range = match item {
                Value::Integer(n) => u16::try_from(*n).ok().filter(|&p| p >= 1).map(|p| (p, p)),
                Value::String(text) => text.split_once('-').and_then(|(a, b)| {
                    let (a, b) = (a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?);
                    (1 <= a && a <= b).then_some((a, b))
                }),
                _ => None,
            };
            match range {
                Some(range) => ranges.push(range),
                None => {
                    self.report_at(
                        v,
                        ctx,
                        format_args!("ports has {} ({VALID})", describe_value(item)),
                    );
                    return None;
                }
            }
        }
        match Ports::from_ranges(ranges) {
            Ok(ports) => Some(ports),
            Err(port) => {
                self.report_at(
                    v,
                    ctx,
                    format_args!("ports lists port {port} twice ({VALID})"),
                );
                None
            }
        }
    }

    /// Checks that no earlier service of the same VIP, protocol and VLAN
    /// covers one of `ports`, and that all services together fit the
    /// service map; records them.
    fn unique_ports(
        &mut self,
        ctx: &str,
        field: &Spanned<Value>,
        (vip, protocol, vlan): (IpAddr, Protocol, &Vec<u16>),
        ports: &Ports,
        seen: &mut Seen,
    ) {
        let scope = (vip, protocol, vlan.clone());
        let clash = seen
            .ports
            .iter()
            .find_map(|(other_scope, other, label, line)| {
                let port = (*other_scope == scope).then(|| ports.shared_port(other))??;
                Some((port, label.clone(), *line))
            });
        if let Some((port, other, first)) = clash {
            let what = if port == ANY_PORT {
                "every port".to_owned()
            } else {
                format!("port {port}")
            };
            self.report_at(
                field,
                ctx,
                format_args!(
                    "{what} of {vip} {protocol}{} is already covered by {other} at line {first} \
                     (a port of a VIP, protocol and VLAN belongs to one service)",
                    vlan_suffix(lb_common::vlan_path(vlan)),
                ),
            );
            return;
        }
        seen.keys += ports.key_count();
        if seen.keys > MAX_SERVICE_KEYS {
            self.report_at(
                field,
                ctx,
                format_args!(
                    "the services up to this one cover {} ports, more than the {MAX_SERVICE_KEYS} \
                     service-map entries lb has (valid: at most {MAX_SERVICE_KEYS} ports in all; \
                     a service over every port, port = 0, takes one)",
                    seen.keys
                ),
            );
        }
        let line = line_of(self.text, field.span().start);
        seen.ports
            .push((scope, ports.clone(), ctx.to_owned(), line));
    }

    /// `vlan = 4001` or `vlan = [100, 4001]` (QinQ, outer first): the VLAN
    /// ids, each 1 to 4094.
    fn vlan(&mut self, ctx: &str, v: &Spanned<Value>) -> Option<Vec<u16>> {
        const VALID: &str = "valid: a VLAN id from 1 to 4094, e.g. vlan = 4001, or the outer \
                             and inner ids of QinQ, e.g. vlan = [100, 4001]; leave vlan out for \
                             untagged frames";
        let items = match v.get_ref() {
            Value::Array(items) if (1..=lb_common::MAX_VLAN_TAGS).contains(&items.len()) => {
                items.as_slice()
            }
            Value::Array(items) => {
                self.report_at(
                    v,
                    ctx,
                    format_args!("vlan lists {} ids ({VALID})", items.len()),
                );
                return None;
            }
            single => std::slice::from_ref(single),
        };
        let mut ids = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Value::Integer(n) if VLAN_ID.contains(n) => ids.push(*n as u16),
                Value::Integer(n) => {
                    self.report_at(v, ctx, format_args!("vlan {n} is out of range ({VALID})"));
                    return None;
                }
                other => {
                    self.report_at(
                        v,
                        ctx,
                        format_args!(
                            "vlan must be an integer or an array of two (found {}; {VALID})",
                            describe_value(other)
                        ),
                    );
                    return None;
                }
            }
        }
        Some(ids)
    }

    fn service_name(&mut self, ctx: &str, v: &Spanned<Value>) -> Option<String> {
        let name = self.string(ctx, key::NAME, v)?;
        if !is_valid_service_name(name) {
            self.report_at(
                v,
                ctx,
                format_args!(
                    "name {name:?} is not valid (valid: 1 to {NAME_MAX} characters from \
                     A-Z a-z 0-9 _ . -)"
                ),
            );
            return None;
        }
        Some(name.to_owned())
    }

    fn health(
        &mut self,
        service: &str,
        raw: Option<&RawHealth>,
        vip: Option<IpAddr>,
        protocol: Option<Protocol>,
        service_port: Option<u16>,
        port_field: Option<&Spanned<Value>>,
    ) -> Option<HealthConfig> {
        let ctx = health_label(service);
        let ctx = ctx.as_str();
        let empty = RawHealth::default();
        let raw = raw.unwrap_or(&empty);

        let kind = match &raw.kind {
            Some(v) => self.keyword(ctx, key::KIND, v),
            // Without a check of their own protocol, UDP backends stay up.
            None => protocol.map(|p| match p {
                Protocol::Tcp => KindWord::Tcp,
                Protocol::Udp => KindWord::None,
            }),
        };
        let kind = self.kind_fields(ctx, raw, kind);
        let interval = match &raw.interval {
            Some(v) => self.duration(ctx, key::INTERVAL, v, HEALTH_INTERVAL),
            None => Some(DEFAULT_HEALTH_INTERVAL),
        };
        let timeout = match &raw.timeout {
            Some(v) => match (
                self.duration(ctx, key::TIMEOUT, v, HEALTH_INTERVAL),
                interval,
            ) {
                (Some(timeout), Some(interval)) if timeout > interval => {
                    self.report_at(
                        v,
                        ctx,
                        format_args!(
                            "timeout {} is longer than interval {} (valid: at most the interval)",
                            format_duration(timeout),
                            format_duration(interval)
                        ),
                    );
                    None
                }
                (timeout, _) => timeout,
            },
            None => interval.map(default_health_timeout),
        };
        let port = match (&raw.port, service_port) {
            (Some(v), _) => self.integer(ctx, key::PORT, v, PORT),
            (None, Some(ANY_PORT)) if !matches!(kind, Some(HealthKind::None)) => {
                let line = port_field.map(|f| line_of(self.text, f.span().start));
                self.report_line(
                    line,
                    ctx,
                    "a service over every port (port = 0) has no port to check: give the \
                     check's port (valid: e.g. port = 2811 under [service.health], or kind = \
                     \"none\")",
                );
                None
            }
            (None, port) => port,
        };
        let fall = match &raw.fall {
            Some(v) => self.integer(ctx, key::FALL, v, FALL_RISE),
            None => Some(DEFAULT_FALL),
        };
        let rise = match &raw.rise {
            Some(v) => self.integer(ctx, key::RISE, v, FALL_RISE),
            None => Some(DEFAULT_RISE),
        };
        let retry_delay = match &raw.retry_delay {
            Some(v) => self.duration(ctx, key::RETRY_DELAY, v, HEALTH_INTERVAL),
            None => interval,
        };
        let warmup = match &raw.warmup {
            Some(v) => self.duration(ctx, key::WARMUP, v, WARMUP),
            None => interval,
        };
        let inhibit_on_failure = match &raw.inhibit_on_failure {
            Some(v) => self.boolean(ctx, key::INHIBIT_ON_FAILURE, v),
            None => Some(false),
        };
        let notify = match &raw.notify {
            Some(v) => self.argv(
                ctx,
                key::NOTIFY,
                v,
                "[\"/usr/local/bin/lb-notify\", \"--syslog\"]",
            ),
            None => Some(Vec::new()),
        };
        let bind_to = match &raw.bind_to {
            Some(v) => self.bind_to(ctx, v, vip).map(Some),
            None => Some(None),
        };
        Some(HealthConfig {
            kind: kind?,
            interval: interval?,
            timeout: timeout?,
            port: port?,
            fall: fall?,
            rise: rise?,
            retry_delay: retry_delay?,
            warmup: warmup?,
            inhibit_on_failure: inhibit_on_failure?,
            notify: notify?,
            bind_to: bind_to?,
        })
    }

    /// `bind_to`: an address of the VIP's family, not the VIP (a real server
    /// answers a check from the VIP to its own `lo`).
    fn bind_to(&mut self, ctx: &str, v: &Spanned<Value>, vip: Option<IpAddr>) -> Option<IpAddr> {
        let address = self.address(ctx, key::BIND_TO, v)?;
        let Some(vip) = vip else {
            return Some(address);
        };
        let problem = if address == vip {
            "is the service's VIP, which a real server answers on its own lo"
        } else if address.is_ipv4() != vip.is_ipv4() {
            "is not of the VIP's address family"
        } else {
            return Some(address);
        };
        self.report_at(
            v,
            ctx,
            format_args!(
                "{} {address} {problem} (valid: an address of the director's own in the \
                 backends' subnet, of the VIP's family)",
                key::BIND_TO
            ),
        );
        None
    }

    /// The fields that belong to one kind of check (`path`, `command`...):
    /// each is checked wherever it is, and is an error with another kind.
    fn kind_fields(
        &mut self,
        ctx: &str,
        raw: &RawHealth,
        kind: Option<KindWord>,
    ) -> Option<HealthKind> {
        let before = self.problems.len();
        let path = raw.path.as_ref().and_then(|v| self.http_path(ctx, v));
        let status = raw.status.as_ref().and_then(|v| self.http_status(ctx, v));
        let digest = raw.digest.as_ref().and_then(|v| self.digest(ctx, v));
        let host = raw.host.as_ref().and_then(|v| self.http_host(ctx, v));
        let command = raw.command.as_ref().and_then(|v| {
            let example = "[\"/usr/local/bin/check-gridftp\", \"--quiet\"]";
            let argv = self.argv(ctx, key::COMMAND, v, example)?;
            if argv.is_empty() {
                self.report_at(
                    v,
                    ctx,
                    format_args!(
                        "command is empty (valid: the program and its arguments, e.g. \
                         command = {example})"
                    ),
                );
                return None;
            }
            Some(argv)
        });
        let kind = kind?;
        let owned = [
            (key::PATH, &raw.path, KindWord::Http),
            (key::STATUS, &raw.status, KindWord::Http),
            (key::DIGEST, &raw.digest, KindWord::Http),
            (key::HOST, &raw.host, KindWord::Http),
            (key::COMMAND, &raw.command, KindWord::Exec),
        ];
        for (key, field, owner) in owned {
            if let Some(v) = field
                && owner != kind
            {
                self.report_at(
                    v,
                    ctx,
                    format_args!(
                        "{key} belongs to kind \"{}\" checks, but this check is kind \"{}\" \
                         (valid: set kind = \"{}\", or remove {key})",
                        owner.keyword(),
                        kind.keyword(),
                        owner.keyword()
                    ),
                );
            }
        }
        if kind == KindWord::Exec && raw.command.is_none() {
            let line = raw
                .kind
                .as_ref()
                .map(|v| line_of(self.text, v.span().start));
            self.report_line(
                line,
                ctx,
                "missing required field \"command\" for kind \"exec\" (e.g. command = \
                 [\"/usr/local/bin/check-gridftp\", \"--quiet\"])",
            );
        }
        if self.problems.len() != before {
            return None;
        }
        Some(match kind {
            KindWord::Tcp => HealthKind::Tcp,
            KindWord::Http => HealthKind::Http(HttpCheck {
                path: path.unwrap_or_else(|| DEFAULT_HTTP_PATH.to_owned()),
                status: status.unwrap_or_else(|| vec![DEFAULT_HTTP_STATUS]),
                digest,
                host,
            }),
            KindWord::Exec => HealthKind::Exec(ExecCheck { command: command? }),
            KindWord::None => HealthKind::None,
        })
    }

    /// `path` of an http check: what goes on the request line.
    fn http_path(&mut self, ctx: &str, v: &Spanned<Value>) -> Option<String> {
        let path = self.string(ctx, key::PATH, v)?;
        if let Some(why) = http_path_problem(path) {
            self.report_at(
                v,
                ctx,
                format_args!(
                    "path {path:?} {why} (valid: an absolute path with an optional query, \
                     e.g. \"/\" or \"/health?full=1\")"
                ),
            );
            return None;
        }
        Some(path.to_owned())
    }

    /// `status` of an http check: an array of status codes, or one.
    fn http_status(&mut self, ctx: &str, v: &Spanned<Value>) -> Option<Vec<u16>> {
        let items = match v.get_ref() {
            Value::Array(items) => items.as_slice(),
            Value::Integer(_) => std::slice::from_ref(v.get_ref()),
            other => {
                self.report_at(
                    v,
                    ctx,
                    format_args!(
                        "status must be an array of HTTP status codes, e.g. status = [200, 204] \
                         (found {})",
                        describe_value(other)
                    ),
                );
                return None;
            }
        };
        if items.is_empty() {
            self.report_at(
                v,
                ctx,
                "status is empty (valid: at least one HTTP status code, e.g. status = [200])",
            );
            return None;
        }
        let before = self.problems.len();
        let mut codes = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Value::Integer(n) => match u16::try_from(*n) {
                    Ok(code) if HTTP_STATUS.contains(&code) => codes.push(code),
                    _ => self.report_at(
                        v,
                        ctx,
                        format_args!(
                            "status {n} is out of range (valid: {}..={})",
                            HTTP_STATUS.start(),
                            HTTP_STATUS.end()
                        ),
                    ),
                },
                other => self.report_at(
                    v,
                    ctx,
                    format_args!(
                        "status must hold HTTP status codes as integers, e.g. status = [200, 204] \
                         (found {})",
                        describe_value(other)
                    ),
                ),
            }
        }
        (self.problems.len() == before).then_some(codes)
    }

    /// `digest` of an http check: an MD5 as 32 hex digits.
    fn digest(&mut self, ctx: &str, v: &Spanned<Value>) -> Option<[u8; 16]> {
        let text = self.string(ctx, key::DIGEST, v)?;
        let Some(digest) = parse_md5(text) else {
            self.report_at(
                v,
                ctx,
                format_args!(
                    "digest {text:?} is not an MD5 digest (valid: 32 hex digits as printed by \
                     md5sum or genhash, e.g. \"d41d8cd98f00b204e9800998ecf8427e\")"
                ),
            );
            return None;
        };
        Some(digest)
    }

    /// `host` of an http check: a `Host` header value.
    fn http_host(&mut self, ctx: &str, v: &Spanned<Value>) -> Option<String> {
        let host = self.string(ctx, key::HOST, v)?;
        if !is_valid_http_host(host) {
            self.report_at(
                v,
                ctx,
                format_args!(
                    "host {host:?} is not a valid Host header (valid: a host name or address, \
                     optionally with :port, e.g. \"www.example.org\" or \"[2001:db8::1]:8080\")"
                ),
            );
            return None;
        }
        Some(host.to_owned())
    }

    /// A command and its arguments: an array of strings whose first one
    /// is not empty. May be empty.
    fn argv(
        &mut self,
        ctx: &str,
        key: &str,
        v: &Spanned<Value>,
        example: &str,
    ) -> Option<Vec<String>> {
        let Value::Array(items) = v.get_ref() else {
            self.report_at(
                v,
                ctx,
                format_args!(
                    "{key} must be an array of strings, the program and its arguments, e.g. \
                     {key} = {example} (found {})",
                    describe_value(v.get_ref())
                ),
            );
            return None;
        };
        let mut argv = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Value::String(arg) if arg.contains('\0') => {
                    self.report_at(
                        v,
                        ctx,
                        format_args!("{key} argument {arg:?} contains a NUL character"),
                    );
                    return None;
                }
                Value::String(arg) => argv.push(arg.clone()),
                other => {
                    self.report_at(
                        v,
                        ctx,
                        format_args!(
                            "{key} must hold strings, e.g. {key} = {example} (found {})",
                            describe_value(other)
                        ),
                    );
                    return None;
                }
            }
        }
        if argv.first().is_some_and(|program| program.is_empty()) {
            self.report_at(
                v,
                ctx,
                format_args!(
                    "{key} starts with an empty program name (valid: the program to run, then \
                     its arguments, e.g. {key} = {example})"
                ),
            );
            return None;
        }
        Some(argv)
    }

    fn backends(
        &mut self,
        service: &str,
        raw: &[Spanned<RawBackend>],
        vip: Option<IpAddr>,
        vips: &HashMap<IpAddr, String>,
    ) -> Option<Vec<BackendConfig>> {
        let before = self.problems.len();
        if let Some(extra) = raw.get(lb_common::MAX_BACKENDS) {
            self.report(
                extra.span().start,
                &backend_label(service, lb_common::MAX_BACKENDS),
                format_args!(
                    "too many backends: {} (valid: at most {} per service)",
                    raw.len(),
                    lb_common::MAX_BACKENDS
                ),
            );
        }
        // Address -> 1-based number of the backend that has it.
        let mut addresses: HashMap<IpAddr, usize> = HashMap::new();
        let mut backends = Vec::with_capacity(raw.len());
        for (index, spanned) in raw.iter().enumerate() {
            let ctx = backend_label(service, index);
            let ctx = ctx.as_str();
            let b = spanned.get_ref();
            let address = self
                .required(
                    spanned.span().start,
                    ctx,
                    key::ADDRESS,
                    &b.address,
                    "address = \"198.51.100.24\"",
                )
                .and_then(|v| Some((v, self.address(ctx, key::ADDRESS, v)?)));
            if let Some((v, address)) = address {
                if let Some(first) = addresses.get(&address) {
                    self.report_at(
                        v,
                        ctx,
                        format_args!(
                            "address {address} is already backend {first} of this service \
                             (valid: each address once per service)"
                        ),
                    );
                } else {
                    addresses.insert(address, index + 1);
                }
                if let Some(owner) = vips.get(&address) {
                    self.report_at(
                        v,
                        ctx,
                        format_args!(
                            "address {address} is the vip of {owner}; a backend must be a \
                             real server, not a VIP"
                        ),
                    );
                }
                if let Some(vip) = vip.filter(|vip| vip.is_ipv4() != address.is_ipv4()) {
                    self.report_at(
                        v,
                        ctx,
                        format_args!(
                            "address {address} is {} but the service's vip {vip} is {} \
                             (valid: the VIP's address family; use a separate service \
                             for the other family)",
                            family(address),
                            family(vip)
                        ),
                    );
                }
            }
            let weight = match &b.weight {
                Some(v) => self.integer(ctx, key::WEIGHT, v, 0..=lb_common::MAX_WEIGHT),
                None => Some(DEFAULT_WEIGHT),
            };
            let mac = match &b.mac {
                Some(v) => self.mac(ctx, v).map(Some),
                None => Some(None),
            };
            if let (Some((_, address)), Some(weight), Some(mac)) = (address, weight, mac) {
                backends.push(BackendConfig {
                    address,
                    weight,
                    mac,
                });
            }
        }
        (self.problems.len() == before).then_some(backends)
    }

    fn mac(&mut self, ctx: &str, v: &Spanned<Value>) -> Option<[u8; 6]> {
        let text = self.string(ctx, key::MAC, v)?;
        let Some(mac) = parse_mac(text) else {
            self.report_at(
                v,
                ctx,
                format_args!(
                    "mac {text:?} is not a MAC address (valid: six two-digit hex bytes \
                     separated by colons, e.g. \"02:00:c6:33:64:18\")"
                ),
            );
            return None;
        };
        if mac[0] & 1 != 0 || mac == [0; 6] {
            self.report_at(
                v,
                ctx,
                format_args!(
                    "mac {text:?} is not a unicast MAC address (valid: a real server's NIC address)"
                ),
            );
            return None;
        }
        Some(mac)
    }

    // -- Field checks. Each reports its own problem and returns None.

    fn required<'v>(
        &mut self,
        table_start: usize,
        ctx: &str,
        key: &str,
        field: &'v Field,
        example: &str,
    ) -> Option<&'v Spanned<Value>> {
        if field.is_none() {
            self.report(
                table_start,
                ctx,
                format_args!("missing required field {key:?} (e.g. {example})"),
            );
        }
        field.as_ref()
    }

    fn string<'v>(&mut self, ctx: &str, key: &str, v: &'v Spanned<Value>) -> Option<&'v str> {
        match v.get_ref() {
            Value::String(s) => Some(s),
            other => {
                self.report_at(
                    v,
                    ctx,
                    format_args!("{key} must be a string (found {})", describe_value(other)),
                );
                None
            }
        }
    }

    fn integer<T>(
        &mut self,
        ctx: &str,
        key: &str,
        v: &Spanned<Value>,
        valid: RangeInclusive<T>,
    ) -> Option<T>
    where
        T: TryFrom<i64> + PartialOrd + fmt::Display,
    {
        let Value::Integer(n) = v.get_ref() else {
            self.report_at(
                v,
                ctx,
                format_args!(
                    "{key} must be an integer (found {})",
                    describe_value(v.get_ref())
                ),
            );
            return None;
        };
        match T::try_from(*n) {
            Ok(x) if valid.contains(&x) => Some(x),
            _ => {
                self.report_at(
                    v,
                    ctx,
                    format_args!(
                        "{key} {n} is out of range (valid: {}..={})",
                        valid.start(),
                        valid.end()
                    ),
                );
                None
            }
        }
    }

    fn duration(
        &mut self,
        ctx: &str,
        key: &str,
        v: &Spanned<Value>,
        valid: RangeInclusive<Duration>,
    ) -> Option<Duration> {
        let text = match v.get_ref() {
            Value::String(text) => text,
            Value::Integer(n) => {
                self.report_at(
                    v,
                    ctx,
                    format_args!(
                        "{key} = {n} has no unit; write a duration string such as \
                         {key} = \"{n}s\" (valid examples: {DURATION_EXAMPLES})"
                    ),
                );
                return None;
            }
            other => {
                self.report_at(
                    v,
                    ctx,
                    format_args!(
                        "{key} must be a duration string (found {}; valid examples: \
                         {DURATION_EXAMPLES})",
                        describe_value(other)
                    ),
                );
                return None;
            }
        };
        match parse_duration(text) {
            Ok(d) if valid.contains(&d) => Some(d),
            Ok(_) => {
                self.report_at(
                    v,
                    ctx,
                    format_args!(
                        "{key} {text:?} is out of range (valid: {}..={})",
                        format_duration(*valid.start()),
                        format_duration(*valid.end())
                    ),
                );
                None
            }
            Err(why) => {
                self.report_at(
                    v,
                    ctx,
                    format_args!(
                        "{key} {text:?} is not a duration: {why} (valid examples: \
                         {DURATION_EXAMPLES})"
                    ),
                );
                None
            }
        }
    }

    fn address(&mut self, ctx: &str, key: &str, v: &Spanned<Value>) -> Option<IpAddr> {
        let text = self.string(ctx, key, v)?;
        let Ok(address) = text.trim().parse::<IpAddr>() else {
            self.report_at(
                v,
                ctx,
                format_args!(
                    "{key} {text:?} is not an IP address (valid: IPv4 or IPv6, e.g. \
                     \"192.0.2.200\" or \"2001:db8::200\")"
                ),
            );
            return None;
        };
        if let Some(why) = unusable(address) {
            self.report_at(
                v,
                ctx,
                format_args!("{key} {address} is {why} (valid: a unicast address)"),
            );
            return None;
        }
        Some(address)
    }

    fn boolean(&mut self, ctx: &str, key: &str, v: &Spanned<Value>) -> Option<bool> {
        match v.get_ref() {
            Value::Boolean(b) => Some(*b),
            other => {
                self.report_at(
                    v,
                    ctx,
                    format_args!(
                        "{key} must be true or false (found {})",
                        describe_value(other)
                    ),
                );
                None
            }
        }
    }

    fn keyword<T: Keyword>(&mut self, ctx: &str, key: &str, v: &Spanned<Value>) -> Option<T> {
        let text = self.string(ctx, key, v)?;
        parse_keyword(text)
            .map_err(|why| self.report_at(v, ctx, format_args!("{key} {why}")))
            .ok()
    }

    fn keyword_or<T: Keyword>(
        &mut self,
        ctx: &str,
        key: &str,
        field: &Field,
        default: T,
    ) -> Option<T> {
        match field {
            Some(v) => self.keyword(ctx, key, v),
            None => Some(default),
        }
    }
}

/// What has been seen so far across services, for uniqueness checks.
struct Seen {
    /// VIP -> label of the first service that has it.
    vips: HashMap<IpAddr, String>,
    /// Service name -> line it was first defined on.
    names: HashMap<String, usize>,
    /// The ports of every service so far: scope, ports, label and line.
    ports: Vec<(PortScope, Ports, String, usize)>,
    /// Service-map entries the services so far take.
    keys: u32,
}

/// Where a service's ports must be unique: its VIP, protocol and VLAN ids.
type PortScope = (IpAddr, Protocol, Vec<u16>);

/// Whether `name` can name a service: 1 to [`NAME_MAX`] characters from
/// `A-Z a-z 0-9 _ . -`.
pub(crate) fn is_valid_service_name(name: &str) -> bool {
    (1..=NAME_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Why an address cannot be a VIP or a real server, if it cannot.
fn unusable(address: IpAddr) -> Option<&'static str> {
    if address.is_unspecified() {
        Some("the unspecified address")
    } else if address.is_loopback() {
        Some("a loopback address")
    } else if address.is_multicast() {
        Some("a multicast address")
    } else if matches!(address, IpAddr::V4(v4) if v4.is_broadcast()) {
        Some("the broadcast address")
    } else {
        None
    }
}

/// `IPv4` or `IPv6`, for messages.
fn family(address: IpAddr) -> &'static str {
    if address.is_ipv4() { "IPv4" } else { "IPv6" }
}
