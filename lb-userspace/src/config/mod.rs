//! The `lb` configuration file: TOML parsing and validation.
//!
//! [`Config::load`] reads a file such as `examples/lb.toml` and checks all of
//! it before anything touches the system, the way `lb check` and `lb run` need
//! it. Every error names the file, the line, the section and the field, and
//! says what would be valid, e.g.
//!
//! ```text
//! lb.toml:14: service "gridftp", backend 2: weight 70000 is out of range (valid: 0..=65535)
//! ```
//!
//! Parsing has three steps. The text is first parsed as a plain TOML table,
//! so that syntax errors are reported as such. It is then deserialized into
//! private `Raw*` structs that reject unknown fields and keep every value as a
//! [`toml::Spanned`] [`toml::Value`], so that serde itself only ever fails on
//! an unknown field or a misplaced table. Finally the values are type- and
//! range-checked one by one; that step reports every problem it finds, not
//! only the first.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    ops::RangeInclusive,
    path::{Component, Path, PathBuf},
    time::Duration,
};

use lb_common::conn_state::Timeouts;
use serde::{Deserialize, de::IgnoredAny};
use toml::{Spanned, Value};

/// A validated configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The `[director]` table: where and how the data path runs.
    pub director: Director,
    /// The `[[service]]` tables, in file order (at most
    /// [`lb_common::MAX_SERVICES`]).
    pub services: Vec<ServiceConfig>,
}

/// The `[director]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Director {
    /// Network interfaces the XDP program attaches to (at least one, each a
    /// valid Linux interface name, no duplicates).
    pub interfaces: Vec<String>,
    /// How the XDP program is attached.
    pub xdp_mode: XdpMode,
    /// bpffs directory the maps and program are pinned under (below
    /// `/sys/fs/bpf/`).
    pub pin_path: PathBuf,
    /// Capacity of the IPv4 connection table (flows tracked at once).
    pub max_flows: u32,
    /// Capacity of the IPv6 connection table (flows tracked at once).
    pub max_flows_v6: u32,
    /// How often the control plane sweeps the connection table.
    pub sweep_interval: Duration,
    /// Idle timeouts per connection state, in seconds.
    pub timeouts: Timeouts,
    /// Unix socket of the control interface (`lb` commands talk to the
    /// running daemon through it); an absolute path.
    pub control_socket: PathBuf,
    /// Where the Prometheus metrics endpoint listens; `None`: no endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// What happens to the flows of a backend that was removed: `false`
    /// (the default) lets them finish on it, `true` reschedules each on its
    /// next packet (IPVS's `expire_nodest_conn` sysctl).
    pub expire_nodest_conn: bool,
}

/// How the XDP program is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpMode {
    /// Native XDP in the NIC driver (the default; the driver must support it).
    Driver,
    /// Generic XDP on the socket buffer: works with any driver, but slower.
    Skb,
}

/// One `[[service]]`: a virtual server (VIP, port, protocol) and its backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Unique name, 1 to 32 characters from `A-Z a-z 0-9 _ . -`.
    pub name: String,
    /// The virtual IP clients connect to.
    pub vip: IpAddr,
    /// The port clients connect to (1 to 65535).
    pub port: u16,
    /// Transport protocol of the service.
    pub protocol: Protocol,
    /// How new connections are spread over the backends.
    pub scheduler: Scheduler,
    /// Health check of the backends.
    pub health: HealthConfig,
    /// The real servers (`[[service.backend]]`), 1 to
    /// [`lb_common::MAX_BACKENDS`], of the VIP's address family, each listed
    /// once.
    pub backends: Vec<BackendConfig>,
}

/// Transport protocol of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The IP protocol number the data path matches on.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::PROTO_TCP,
            Protocol::Udp => lb_common::PROTO_UDP,
        }
    }
}

/// How a service picks the backend of a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduler {
    /// Weighted least-connection, exactly as IPVS.
    Wlc,
}

/// The `[service.health]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// What kind of check to run, with the fields of that kind.
    pub kind: HealthKind,
    /// Time between two checks of a backend (keepalived `delay_loop`).
    pub interval: Duration,
    /// How long one check may take (`connect_timeout`), at most `interval`.
    pub timeout: Duration,
    /// Port the check connects to (`connect_port`); an `exec` check only
    /// passes it to its command.
    pub port: u16,
    /// Consecutive failures before a backend is marked down.
    pub fall: u32,
    /// Consecutive successes before a down backend is marked up.
    pub rise: u32,
    /// Delay before the next check after a failed one (keepalived
    /// `delay_before_retry`); default `interval`.
    pub retry_delay: Duration,
    /// The first check of each backend waits a uniformly random delay in
    /// `[0, warmup]`, so that backends are not probed in lockstep; default
    /// `interval`.
    pub warmup: Duration,
    /// On failure, set the backend's weight to 0 instead of marking it down
    /// (keepalived `inhibit_on_failure`).
    pub inhibit_on_failure: bool,
    /// Command (argv) run with SERVICE BACKEND STATE appended when a backend
    /// changes state; empty: none.
    pub notify: Vec<String>,
}

/// Kind of health check, with the fields that only that kind has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthKind {
    /// TCP connect to the backend (keepalived `TCP_CHECK`).
    Tcp,
    /// HTTP GET of a path (keepalived `HTTP_GET`).
    Http(HttpCheck),
    /// A command whose exit status decides (keepalived `MISC_CHECK`).
    Exec(ExecCheck),
    /// No check: the backend is always up.
    None,
}

/// The fields of an `http` check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCheck {
    /// Path (and query) to GET; starts with `/`, no whitespace. Default `/`.
    pub path: String,
    /// Status codes that count as up, each 100 to 599. Default `[200]`.
    pub status: Vec<u16>,
    /// MD5 the response body must have (keepalived's `digest`), if any.
    pub digest: Option<[u8; 16]>,
    /// `Host` header; default the backend address (and the port if not 80).
    pub host: Option<String>,
}

/// The fields of an `exec` check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecCheck {
    /// The command and its arguments (run without a shell); exit status 0
    /// means up.
    pub command: Vec<String>,
}

/// One `[[service.backend]]`: a real server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    /// Address of the real server.
    pub address: IpAddr,
    /// Relative capacity (0 to [`lb_common::MAX_WEIGHT`]); 0 quiesces it.
    pub weight: u32,
    /// Static MAC address, overriding the neighbour table.
    pub mac: Option<[u8; 6]>,
}

/// Why a configuration file was rejected: one or more problems, each with
/// the file name and (where there is one) the line.
///
/// Displayed as one `file:line: message` line per problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    origin: String,
    problems: Vec<Problem>,
}

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Problem {
    /// 1-based line, if the problem has one.
    line: Option<usize>,
    message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match problem.line {
                Some(line) => write!(f, "{}:{line}: {}", self.origin, problem.message)?,
                None => write!(f, "{}: {}", self.origin, problem.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    fn new(origin: &str, line: Option<usize>, message: String) -> Self {
        ConfigError {
            origin: origin.to_owned(),
            problems: vec![Problem { line, message }],
        }
    }
}

impl Config {
    /// Reads and validates a config file. Touches nothing else on the system.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(&origin, None, format!("cannot read config file: {e}"))
        })?;
        Config::parse(&text, &origin)
    }

    /// Parses and validates config text; `origin` is the file name used in
    /// messages.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        if let Err(e) = toml::from_str::<toml::Table>(text) {
            let message = e.message().lines().collect::<Vec<_>>().join(": ");
            let line = e.span().map(|s| line_of(text, s.start));
            return Err(ConfigError::new(
                origin,
                line,
                format!("TOML syntax error: {message}"),
            ));
        }
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            ConfigError::new(origin, line, shape_error(text, &e))
        })?;
        let mut checker = Checker {
            text,
            problems: Vec::new(),
        };
        let config = checker.config(&raw);
        match config {
            Some(config) if checker.problems.is_empty() => Ok(config),
            _ => {
                debug_assert!(!checker.problems.is_empty(), "rejected without a reason");
                checker.problems.sort_by_key(|p| p.line);
                Err(ConfigError {
                    origin: origin.to_owned(),
                    problems: checker.problems,
                })
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Keywords

/// A closed set of string values of a config field.
trait Keyword: Copy + 'static {
    /// Every value, in the order messages list them.
    const ALL: &'static [Self];
    /// The value as written in the config file.
    fn keyword(self) -> &'static str;
}

impl Keyword for XdpMode {
    const ALL: &'static [Self] = &[XdpMode::Driver, XdpMode::Skb];
    fn keyword(self) -> &'static str {
        match self {
            XdpMode::Driver => "driver",
            XdpMode::Skb => "skb",
        }
    }
}

impl Keyword for Protocol {
    const ALL: &'static [Self] = &[Protocol::Tcp, Protocol::Udp];
    fn keyword(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl Keyword for Scheduler {
    const ALL: &'static [Self] = &[Scheduler::Wlc];
    fn keyword(self) -> &'static str {
        match self {
            Scheduler::Wlc => "wlc",
        }
    }
}

/// The `kind` of a health check as written; [`HealthKind`] holds the
/// fields of the kind too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KindWord {
    Tcp,
    Http,
    Exec,
    None,
}

impl Keyword for KindWord {
    const ALL: &'static [Self] = &[
        KindWord::Tcp,
        KindWord::Http,
        KindWord::Exec,
        KindWord::None,
    ];
    fn keyword(self) -> &'static str {
        match self {
            KindWord::Tcp => "tcp",
            KindWord::Http => "http",
            KindWord::Exec => "exec",
            KindWord::None => "none",
        }
    }
}

impl HealthKind {
    fn word(&self) -> KindWord {
        match self {
            HealthKind::Tcp => KindWord::Tcp,
            HealthKind::Http(_) => KindWord::Http,
            HealthKind::Exec(_) => KindWord::Exec,
            HealthKind::None => KindWord::None,
        }
    }
}

/// `tcp, udp`: the valid values of a keyword field, for messages.
fn keywords<T: Keyword>() -> String {
    T::ALL
        .iter()
        .map(|k| k.keyword())
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keyword())
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keyword())
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keyword())
    }
}

/// The kind's name as written in the config: `tcp`, `http`, `exec`, `none`.
impl fmt::Display for HealthKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word().keyword())
    }
}

// ---------------------------------------------------------------------------
// The file as written

/// A leaf value with its position; its type is checked by [`Checker`].
type Field = Option<Spanned<Value>>;

/// The whole file. Tables that may be implicit in TOML (`[director]` when
/// only `[director.timeouts]` is written, dotted keys) carry no span: toml
/// cannot give them one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    director: Option<RawDirector>,
    service: Option<Vec<Spanned<RawService>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDirector {
    interfaces: Field,
    xdp_mode: Field,
    pin_path: Field,
    max_flows: Field,
    max_flows_v6: Field,
    sweep_interval: Field,
    control_socket: Field,
    metrics_listen: Field,
    expire_nodest_conn: Field,
    timeouts: Option<RawTimeouts>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    established: Field,
    syn_recv: Field,
    fin_wait: Field,
    close: Field,
    udp: Field,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Field,
    vip: Field,
    port: Field,
    protocol: Field,
    scheduler: Field,
    health: Option<RawHealth>,
    backend: Option<Vec<Spanned<RawBackend>>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    kind: Field,
    interval: Field,
    timeout: Field,
    port: Field,
    fall: Field,
    rise: Field,
    retry_delay: Field,
    warmup: Field,
    inhibit_on_failure: Field,
    notify: Field,
    // kind "http"
    path: Field,
    status: Field,
    digest: Field,
    host: Field,
    // kind "exec"
    command: Field,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Field,
    weight: Field,
    mac: Field,
}

/// Where the services and backends are, to name the section of an error
/// that serde reports (unknown field) when [`RawConfig`] cannot be built.
#[derive(Deserialize)]
struct Skeleton {
    #[serde(default)]
    service: Vec<Spanned<SkeletonService>>,
}

#[derive(Deserialize)]
struct SkeletonService {
    name: Option<Value>,
    #[serde(default)]
    backend: Vec<Spanned<IgnoredAny>>,
}

/// How messages name a service: `service "gridftp"`, or `service 2` (its
/// position in the file) when it has no usable name.
fn service_label(index: usize, name: Option<&Value>) -> String {
    match name {
        Some(Value::String(name)) => format!("service {name:?}"),
        _ => format!("service {}", index + 1),
    }
}

fn health_label(service: &str) -> String {
    format!("{service}, health check")
}

fn backend_label(service: &str, index: usize) -> String {
    format!("{service}, backend {}", index + 1)
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Rewrites a serde error from building [`RawConfig`] for people.
fn shape_error(text: &str, err: &toml::de::Error) -> String {
    let message = err.message();
    if message.starts_with("unknown field `") {
        // serde: "unknown field `x`, expected one of `a`, `b`" (or "expected
        // `a` or `b`", "expected `a`", "there are no fields").
        let quoted: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
        if let Some((field, valid)) = quoted.split_first() {
            let place = err
                .span()
                .map_or_else(String::new, |s| section_at(text, s.start, valid.first()));
            return format!(
                "unknown field {field:?} {place} (valid: {})",
                valid.join(", ")
            );
        }
    }
    if let Some((found, expected)) = message
        .strip_prefix("invalid type: ")
        .and_then(|rest| rest.split_once(", expected "))
    {
        let what = match expected {
            "struct RawDirector" => "director must be a table ([director])",
            "struct RawTimeouts" => "timeouts must be a table ([director.timeouts])",
            "struct RawHealth" => "health must be a table ([service.health])",
            "struct RawService" => "each service must be a table ([[service]])",
            "struct RawBackend" => "each backend must be a table ([[service.backend]])",
            "a sequence" => {
                "service and backend must be arrays of tables: write [[service]] and \
                     [[service.backend]] with double brackets"
            }
            _ => return message.to_owned(),
        };
        let found = if found == "map" { "a table" } else { found };
        return format!("{what} (found {found})");
    }
    message.to_owned()
}

/// `in [director]`, `in service "gridftp", backend 2`...: the section an
/// unknown field at `offset` is in, told by the first field serde lists as
/// valid there (each section has a different one).
fn section_at(text: &str, offset: usize, first_valid: Option<&&str>) -> String {
    let skeleton = toml::from_str::<Skeleton>(text).ok();
    // The last service (and backend) starting before the field holds it.
    let service = skeleton.as_ref().and_then(|sk| {
        let index = sk.service.iter().rposition(|s| s.span().start <= offset)?;
        let service = &sk.service[index];
        let label = service_label(index, service.get_ref().name.as_ref());
        let backend = service
            .get_ref()
            .backend
            .iter()
            .rposition(|b| b.span().start <= offset);
        Some((label, backend))
    });
    match (first_valid.copied(), service) {
        (Some("director"), _) => "at the top level".to_owned(),
        (Some("interfaces"), _) => "in [director]".to_owned(),
        (Some("established"), _) => "in [director.timeouts]".to_owned(),
        (Some("name"), Some((label, _))) => format!("in {label}"),
        (Some("kind"), Some((label, _))) => format!("in {}", health_label(&label)),
        (Some("address"), Some((label, Some(b)))) => format!("in {}", backend_label(&label, b)),
        (Some("name"), _) => "in [[service]]".to_owned(),
        (Some("kind"), _) => "in [service.health]".to_owned(),
        (Some("address"), _) => "in [[service.backend]]".to_owned(),
        _ => "here".to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Checking

// Valid ranges.
const MAX_FLOWS: RangeInclusive<u32> = 1024..=16_777_216;
const SWEEP_INTERVAL: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(60);
const TIMEOUT: RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(7 * 86_400);
const HEALTH_INTERVAL: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);
const PORT: RangeInclusive<u16> = 1..=u16::MAX;
const FALL_RISE: RangeInclusive<u32> = 1..=100;
const NAME_MAX: usize = 32;
const WARMUP: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(3600);
const HTTP_STATUS: RangeInclusive<u16> = 100..=599;
/// `sun_path` of a Unix socket address holds 108 bytes with the final NUL.
const UNIX_PATH_MAX: usize = 107;
/// Linux IFNAMSIZ - 1.
const IFNAME_MAX: usize = 15;

// Defaults.
/// Default `[director] pin_path`.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/lb";
const DEFAULT_CONTROL_SOCKET: &str = "/run/lb/lb.sock";
const DEFAULT_HTTP_PATH: &str = "/";
const DEFAULT_HTTP_STATUS: u16 = 200;
const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_FALL: u32 = 3;
const DEFAULT_RISE: u32 = 2;
const DEFAULT_WEIGHT: u32 = 1;

const DURATION_EXAMPLES: &str = "\"500ms\", \"10s\", \"2m\", \"1h\", \"1m30s\"";

/// Turns the raw file into a [`Config`], collecting every problem.
///
/// Each check returns `None` after recording why, so a section is built only
/// when all of its fields are valid, and one bad field does not hide others.
struct Checker<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
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
        Some(Config {
            director: director?,
            services: services?,
        })
    }

    fn director(&mut self, raw: &RawDirector) -> Option<Director> {
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
        let xdp_mode = self.keyword_or(CTX, "xdp_mode", &raw.xdp_mode, XdpMode::Driver);
        let pin_path = match &raw.pin_path {
            Some(v) => self.pin_path(v),
            None => Some(PathBuf::from(DEFAULT_PIN_PATH)),
        };
        let max_flows = match &raw.max_flows {
            Some(v) => self.integer(CTX, "max_flows", v, MAX_FLOWS),
            None => Some(lb_common::DEFAULT_MAX_FLOWS),
        };
        let max_flows_v6 = match &raw.max_flows_v6 {
            Some(v) => self.integer(CTX, "max_flows_v6", v, MAX_FLOWS),
            None => Some(lb_common::DEFAULT_MAX_FLOWS_V6),
        };
        let sweep_interval = match &raw.sweep_interval {
            Some(v) => self.duration(CTX, "sweep_interval", v, SWEEP_INTERVAL),
            None => Some(DEFAULT_SWEEP_INTERVAL),
        };
        let timeouts = match &raw.timeouts {
            Some(t) => self.timeouts(t),
            None => Some(Timeouts::IPVS),
        };
        let control_socket = match &raw.control_socket {
            Some(v) => self.control_socket(v),
            None => Some(PathBuf::from(DEFAULT_CONTROL_SOCKET)),
        };
        let metrics_listen = match &raw.metrics_listen {
            Some(v) => self.metrics_listen(v).map(Some),
            None => Some(None),
        };
        let expire_nodest_conn = match &raw.expire_nodest_conn {
            Some(v) => self.boolean(CTX, "expire_nodest_conn", v),
            None => Some(false),
        };
        Some(Director {
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
        })
    }

    fn control_socket(&mut self, v: &Spanned<Value>) -> Option<PathBuf> {
        const CTX: &str = "[director]";
        let text = self.string(CTX, "control_socket", v)?;
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

    /// `"ADDR:PORT"`, or a port (number or string) on 127.0.0.1.
    fn metrics_listen(&mut self, v: &Spanned<Value>) -> Option<SocketAddr> {
        const CTX: &str = "[director]";
        const VALID: &str = "valid: \"ADDR:PORT\" such as \"127.0.0.1:9100\" or \"[::1]:9100\", \
                             or a port such as 9100 for 127.0.0.1:9100";
        match v.get_ref() {
            Value::Integer(_) => self
                .integer(CTX, "metrics_listen", v, PORT)
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
                        describe(other)
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
                    describe(v.get_ref())
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
                        describe(item)
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
        let path = Path::new(self.string("[director]", "pin_path", v)?);
        // "/", "sys", "fs", "bpf" and at least one more, none of them "..".
        let under_bpffs = path.is_absolute()
            && path.starts_with("/sys/fs/bpf")
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

    fn timeouts(&mut self, raw: &RawTimeouts) -> Option<Timeouts> {
        let d = Timeouts::IPVS;
        let established = self.seconds("established", &raw.established, d.established);
        let syn_recv = self.seconds("syn_recv", &raw.syn_recv, d.syn_recv);
        let fin_wait = self.seconds("fin_wait", &raw.fin_wait, d.fin_wait);
        let close = self.seconds("close", &raw.close, d.close);
        let udp = self.seconds("udp", &raw.udp, d.udp);
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
                    fmt_duration(duration)
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
            keys: HashMap::new(),
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
            .required(at, &ctx, "name", &raw.name, "name = \"gridftp\"")
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
            .required(at, &ctx, "vip", &raw.vip, "vip = \"192.0.2.200\"")
            .and_then(|v| self.address(&ctx, "vip", v));
        let port_field = self.required(at, &ctx, "port", &raw.port, "port = 2811");
        let port = port_field.and_then(|v| self.integer(&ctx, "port", v, PORT));
        let protocol = self.keyword_or(&ctx, "protocol", &raw.protocol, Protocol::Tcp);
        let scheduler = self.keyword_or(&ctx, "scheduler", &raw.scheduler, Scheduler::Wlc);

        if let (Some(vip), Some(port), Some(protocol), Some(port_field)) =
            (vip, port, protocol, port_field)
        {
            let line = line_of(self.text, port_field.span().start);
            match seen.keys.get(&(vip, port, protocol)) {
                Some((other, first)) => self.report_at(
                    port_field,
                    &ctx,
                    format_args!(
                        "{} {protocol} is already used by {other} at line {first} \
                         (vip, port and protocol must be unique)",
                        SocketAddr::new(vip, port)
                    ),
                ),
                None => {
                    seen.keys.insert((vip, port, protocol), (ctx.clone(), line));
                }
            }
        }

        let health = self.health(&ctx, raw.health.as_ref(), protocol, port);
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

        Some(ServiceConfig {
            name: name?,
            vip: vip?,
            port: port?,
            protocol: protocol?,
            scheduler: scheduler?,
            health: health?,
            backends: backends?,
        })
    }

    fn service_name(&mut self, ctx: &str, v: &Spanned<Value>) -> Option<String> {
        let name = self.string(ctx, "name", v)?;
        let valid = (1..=NAME_MAX).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !valid {
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
        protocol: Option<Protocol>,
        service_port: Option<u16>,
    ) -> Option<HealthConfig> {
        let ctx = health_label(service);
        let ctx = ctx.as_str();
        let empty = RawHealth::default();
        let raw = raw.unwrap_or(&empty);

        let kind = match &raw.kind {
            Some(v) => self.keyword(ctx, "kind", v),
            // Without a check of their own protocol, UDP backends stay up.
            None => protocol.map(|p| match p {
                Protocol::Tcp => KindWord::Tcp,
                Protocol::Udp => KindWord::None,
            }),
        };
        let kind = self.kind_fields(ctx, raw, kind);
        let interval = match &raw.interval {
            Some(v) => self.duration(ctx, "interval", v, HEALTH_INTERVAL),
            None => Some(DEFAULT_HEALTH_INTERVAL),
        };
        let timeout = match &raw.timeout {
            Some(v) => match (self.duration(ctx, "timeout", v, HEALTH_INTERVAL), interval) {
                (Some(timeout), Some(interval)) if timeout > interval => {
                    self.report_at(
                        v,
                        ctx,
                        format_args!(
                            "timeout {} is longer than interval {} (valid: at most the interval)",
                            fmt_duration(timeout),
                            fmt_duration(interval)
                        ),
                    );
                    None
                }
                (timeout, _) => timeout,
            },
            None => interval.map(|i| i.min(DEFAULT_HEALTH_TIMEOUT)),
        };
        let port = match &raw.port {
            Some(v) => self.integer(ctx, "port", v, PORT),
            None => service_port,
        };
        let fall = match &raw.fall {
            Some(v) => self.integer(ctx, "fall", v, FALL_RISE),
            None => Some(DEFAULT_FALL),
        };
        let rise = match &raw.rise {
            Some(v) => self.integer(ctx, "rise", v, FALL_RISE),
            None => Some(DEFAULT_RISE),
        };
        let retry_delay = match &raw.retry_delay {
            Some(v) => self.duration(ctx, "retry_delay", v, HEALTH_INTERVAL),
            None => interval,
        };
        let warmup = match &raw.warmup {
            Some(v) => self.duration(ctx, "warmup", v, WARMUP),
            None => interval,
        };
        let inhibit_on_failure = match &raw.inhibit_on_failure {
            Some(v) => self.boolean(ctx, "inhibit_on_failure", v),
            None => Some(false),
        };
        let notify = match &raw.notify {
            Some(v) => self.argv(
                ctx,
                "notify",
                v,
                "[\"/usr/local/bin/lb-notify\", \"--syslog\"]",
            ),
            None => Some(Vec::new()),
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
        })
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
            let argv = self.argv(ctx, "command", v, example)?;
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
            ("path", &raw.path, KindWord::Http),
            ("status", &raw.status, KindWord::Http),
            ("digest", &raw.digest, KindWord::Http),
            ("host", &raw.host, KindWord::Http),
            ("command", &raw.command, KindWord::Exec),
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
        let path = self.string(ctx, "path", v)?;
        let why = if !path.starts_with('/') {
            Some("does not start with '/'")
        } else if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Some("contains whitespace or a control character")
        } else if !path.is_ascii() {
            Some("contains a non-ASCII character (percent-encode it)")
        } else if path.parse::<hyper::http::uri::PathAndQuery>().is_err() || path.contains('#') {
            Some("is not a valid URI path")
        } else {
            None
        };
        if let Some(why) = why {
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
                        describe(other)
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
                        describe(other)
                    ),
                ),
            }
        }
        (self.problems.len() == before).then_some(codes)
    }

    /// `digest` of an http check: an MD5 as 32 hex digits.
    fn digest(&mut self, ctx: &str, v: &Spanned<Value>) -> Option<[u8; 16]> {
        let text = self.string(ctx, "digest", v)?;
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
        let host = self.string(ctx, "host", v)?;
        let valid = !host.is_empty()
            && !host.contains('@')
            && host.parse::<hyper::http::uri::Authority>().is_ok()
            && host_port_is_valid(host);
        if !valid {
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
                    describe(v.get_ref())
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
                            describe(other)
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
                    "address",
                    &b.address,
                    "address = \"198.51.100.24\"",
                )
                .and_then(|v| Some((v, self.address(ctx, "address", v)?)));
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
                Some(v) => self.integer(ctx, "weight", v, 0..=lb_common::MAX_WEIGHT),
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
        let text = self.string(ctx, "mac", v)?;
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
                    format_args!("{key} must be a string (found {})", describe(other)),
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
                format_args!("{key} must be an integer (found {})", describe(v.get_ref())),
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
                        describe(other)
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
                        fmt_duration(*valid.start()),
                        fmt_duration(*valid.end())
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
                    format_args!("{key} must be true or false (found {})", describe(other)),
                );
                None
            }
        }
    }

    fn keyword<T: Keyword>(&mut self, ctx: &str, key: &str, v: &Spanned<Value>) -> Option<T> {
        let text = self.string(ctx, key, v)?;
        let found = T::ALL
            .iter()
            .copied()
            .find(|k| k.keyword().eq_ignore_ascii_case(text));
        if found.is_none() {
            self.report_at(
                v,
                ctx,
                format_args!(
                    "{key} {text:?} is not supported (valid: {})",
                    keywords::<T>()
                ),
            );
        }
        found
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
    /// (VIP, port, protocol) -> label and line of the service that has it.
    keys: HashMap<(IpAddr, u16, Protocol), (String, usize)>,
}

// ---------------------------------------------------------------------------
// Value syntax

/// How messages show a TOML value of the wrong type.
fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("string {s:?}"),
        Value::Integer(n) => format!("integer {n}"),
        Value::Float(x) => format!("float {x}"),
        Value::Boolean(b) => format!("boolean {b}"),
        Value::Datetime(d) => format!("date-time {d}"),
        Value::Array(_) => "an array".to_owned(),
        Value::Table(_) => "a table".to_owned(),
    }
}

/// Why a Linux interface name is invalid (as the kernel's `dev_valid_name`).
fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("it is empty".to_owned())
    } else if name.len() > IFNAME_MAX {
        Err(format!("it is longer than {IFNAME_MAX} bytes"))
    } else if name == "." || name == ".." {
        Err("\".\" and \"..\" are reserved".to_owned())
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Err("it contains '/', ':' or whitespace".to_owned())
    } else {
        Ok(())
    }
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

fn family(address: IpAddr) -> &'static str {
    if address.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// A listen address: `ADDR:PORT`, or a bare `PORT` meaning 127.0.0.1:PORT
/// (port 0 parses; callers refuse it).
pub fn parse_listen(text: &str) -> Option<SocketAddr> {
    if text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<u16>()
            .ok()
            .map(|port| SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)))
    } else {
        text.parse().ok()
    }
}

/// `aa:bb:cc:dd:ee:ff` (either case).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Whether the `:port` of a `host[:port]` (host possibly `[IPv6]`), if
/// there is one, is a port number.
fn host_port_is_valid(host: &str) -> bool {
    let port = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((_, "")) => return true,
            Some((_, after)) => match after.strip_prefix(':') {
                Some(port) => port,
                None => return false,
            },
            None => return false,
        },
        None => match host.rsplit_once(':') {
            Some((_, port)) => port,
            None => return true,
        },
    };
    !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok()
}

/// 32 hex digits (either case).
fn parse_md5(text: &str) -> Option<[u8; 16]> {
    if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut digest = [0u8; 16];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(digest)
}

/// A duration such as `500ms`, `10s`, `2m`, `1h`, `7d` or `1m30s`: one or
/// more whole numbers, each followed by a unit.
fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err("it is empty".to_owned());
    }
    let mut rest = text;
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(format!("expected a number at {rest:?}"));
        }
        let (number, after) = rest.split_at(digits);
        let letters = after.len()
            - after
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let (unit, after) = after.split_at(letters);
        let unit_ms: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err(format!("{number} has no unit (ms, s, m, h or d)")),
            other => return Err(format!("unknown unit {other:?} (valid: ms, s, m, h, d)")),
        };
        total_ms = number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(unit_ms))
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| "it is too long".to_owned())?;
        rest = after;
    }
    Ok(Duration::from_millis(total_ms))
}

/// The shortest way to write a duration in the config's syntax.
fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 || !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let secs = ms / 1000;
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const EXAMPLE: &str = include_str!("../../examples/lb.toml");

    /// A valid file to start from: `[director]` on line 1, the service on
    /// line 4, its backends on lines 9 and 12.
    const BASE: &str = r#"[director]
interfaces = ["eth0"]

[[service]]
name = "gridftp"
vip = "192.0.2.200"
port = 2811

[[service.backend]]
address = "198.51.100.24"

[[service.backend]]
address = "198.51.100.25"
"#;

    fn parse(text: &str) -> Config {
        match Config::parse(text, "lb.toml") {
            Ok(config) => config,
            Err(e) => panic!("unexpected error:\n{e}\nin:\n{text}"),
        }
    }

    fn error(text: &str) -> String {
        match Config::parse(text, "lb.toml") {
            Ok(config) => panic!("accepted {config:?}\nfrom:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    /// 1-based line of the first line of `text` containing `needle`.
    fn line(text: &str, needle: &str) -> usize {
        text.lines()
            .position(|l| l.contains(needle))
            .map(|i| i + 1)
            .unwrap_or_else(|| panic!("{needle:?} not in text"))
    }

    /// 1-based line where `key` is set (`key = ...`, `table.key = ...`) or
    /// names a table (`[[table.key]]`).
    fn key_line(text: &str, key: &str) -> usize {
        let set = format!("{key} =");
        let header = format!(".{key}]");
        text.lines()
            .position(|l| {
                l.starts_with(&set) || l.contains(&format!(".{set}")) || l.contains(&header)
            })
            .map(|i| i + 1)
            .unwrap_or_else(|| panic!("{key:?} not set in text"))
    }

    /// BASE with `from` replaced by `to`; panics if `from` is not there.
    fn base_with(from: &str, to: &str) -> String {
        assert!(BASE.contains(from), "{from:?} not in BASE");
        BASE.replacen(from, to, 1)
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    /// The health check a tcp service on `port` gets without a
    /// `[service.health]` table.
    fn default_health(port: u16) -> HealthConfig {
        HealthConfig {
            kind: HealthKind::Tcp,
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(3),
            port,
            fall: 3,
            rise: 2,
            retry_delay: Duration::from_secs(10),
            warmup: Duration::from_secs(10),
            inhibit_on_failure: false,
            notify: Vec::new(),
        }
    }

    /// BASE with `lines` added to `[director]` (from line 3 on).
    fn director_with(lines: &str) -> String {
        base_with("[\"eth0\"]\n", &format!("[\"eth0\"]\n{lines}\n"))
    }

    /// BASE with a `[service.health]` table (header on line 8, `lines` from
    /// line 9 on).
    fn health_with(lines: &str) -> String {
        base_with(
            "port = 2811\n",
            &format!("port = 2811\n[service.health]\n{lines}\n"),
        )
    }

    fn health(lines: &str) -> HealthConfig {
        parse(&health_with(lines)).services.remove(0).health
    }

    /// Asserts that `[service.health]` holding `lines` is rejected with
    /// exactly `expected` (one `line: message` per problem, `\n`-separated;
    /// the `lb.toml:` prefix and the context are added).
    fn assert_health_error(lines: &str, expected: &[(usize, &str)]) {
        let expected: Vec<String> = expected
            .iter()
            .map(|(line, message)| {
                format!("lb.toml:{line}: service \"gridftp\", health check: {message}")
            })
            .collect();
        assert_eq!(
            error(&health_with(lines)),
            expected.join("\n"),
            "for:\n{lines}"
        );
    }

    #[test]
    fn example_parses() {
        let config = parse(EXAMPLE);
        assert_eq!(
            config.director,
            Director {
                interfaces: vec!["eth0".to_owned()],
                xdp_mode: XdpMode::Driver,
                pin_path: PathBuf::from("/sys/fs/bpf/lb"),
                max_flows: lb_common::DEFAULT_MAX_FLOWS,
                max_flows_v6: lb_common::DEFAULT_MAX_FLOWS_V6,
                sweep_interval: Duration::from_secs(2),
                timeouts: Timeouts::IPVS,
                control_socket: PathBuf::from("/run/lb/lb.sock"),
                metrics_listen: None,
                expire_nodest_conn: false,
            }
        );
        let backend = |address, weight| BackendConfig {
            address,
            weight,
            mac: None,
        };
        assert_eq!(
            config.services,
            vec![ServiceConfig {
                name: "gridftp".to_owned(),
                vip: v4(192, 0, 2, 200),
                port: 2811,
                protocol: Protocol::Tcp,
                scheduler: Scheduler::Wlc,
                health: HealthConfig {
                    kind: HealthKind::Tcp,
                    interval: Duration::from_secs(10),
                    timeout: Duration::from_secs(3),
                    port: 2811,
                    fall: 3,
                    rise: 2,
                    retry_delay: Duration::from_secs(3),
                    warmup: Duration::from_secs(10),
                    inhibit_on_failure: false,
                    notify: Vec::new(),
                },
                backends: vec![
                    backend(v4(198, 51, 100, 24), 1000),
                    backend(v4(198, 51, 100, 25), 500),
                    backend(v4(198, 51, 100, 26), 800),
                ],
            }]
        );
    }

    /// The commented-out parts of the example (`#key = ...` lines, as
    /// opposed to `# prose`) are valid too once uncommented.
    #[test]
    fn example_commented_parts_parse() {
        let uncommented: String = EXAMPLE
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.is_empty() || !rest.starts_with([' ', '#']) => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let config = parse(&uncommented);
        assert_eq!(
            config.services[0].backends[0].mac,
            Some([0x02, 0x00, 0xc6, 0x33, 0x64, 0x18])
        );
        let v6 = &config.services[1];
        assert_eq!(v6.name, "gridftp-v6");
        assert_eq!(
            v6.vip,
            IpAddr::V6("2001:db8::200".parse::<Ipv6Addr>().unwrap())
        );
        assert_eq!(
            v6.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
            [1000, 500, 800]
        );
        assert!(v6.backends.iter().all(|b| b.address.is_ipv6()));
        assert_eq!(v6.health, default_health(2811));
        assert_eq!(
            config.director.metrics_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9100)))
        );
        assert_eq!(
            config.services[0].health.notify,
            ["/usr/local/bin/lb-notify", "--syslog"]
        );
    }

    #[test]
    fn defaults() {
        let config = parse(BASE);
        assert_eq!(config.director.xdp_mode, XdpMode::Driver);
        assert_eq!(config.director.pin_path, Path::new("/sys/fs/bpf/lb"));
        assert_eq!(config.director.max_flows, lb_common::DEFAULT_MAX_FLOWS);
        assert_eq!(
            config.director.max_flows_v6,
            lb_common::DEFAULT_MAX_FLOWS_V6
        );
        assert_eq!(config.director.sweep_interval, Duration::from_secs(2));
        assert_eq!(config.director.timeouts, Timeouts::IPVS);
        assert_eq!(config.director.control_socket, Path::new("/run/lb/lb.sock"));
        assert_eq!(config.director.metrics_listen, None);
        assert!(!config.director.expire_nodest_conn);
        let service = &config.services[0];
        assert_eq!(service.protocol, Protocol::Tcp);
        assert_eq!(service.scheduler, Scheduler::Wlc);
        assert_eq!(service.health, default_health(2811));
        assert_eq!(service.backends[0].weight, 1);
        assert_eq!(service.backends[0].mac, None);
    }

    #[test]
    fn udp_service_defaults_to_no_health_check() {
        let config = parse(&base_with("port = 2811", "port = 53\nprotocol = \"udp\""));
        let service = &config.services[0];
        assert_eq!(service.protocol, Protocol::Udp);
        assert_eq!(service.protocol.number(), lb_common::PROTO_UDP);
        assert_eq!(service.health.kind, HealthKind::None);
        assert_eq!(service.health.port, 53);
    }

    #[test]
    fn default_health_timeout_fits_a_short_interval() {
        let text = base_with(
            "port = 2811\n",
            "port = 2811\n[service.health]\ninterval = \"1s\"\n",
        );
        let health = &parse(&text).services[0].health;
        assert_eq!(health.interval, Duration::from_secs(1));
        assert_eq!(health.timeout, Duration::from_secs(1));
    }

    #[test]
    fn explicit_values() {
        let text = r#"
[director]
interfaces = ["eth0", "eth1"]
xdp_mode = "skb"
pin_path = "/sys/fs/bpf/lb-test"
max_flows = 4096
max_flows_v6 = 2048
sweep_interval = "500ms"
control_socket = "/var/run/lb-test/control.sock"
metrics_listen = "[2001:db8::1]:9100"
expire_nodest_conn = true
[director.timeouts]
established = "1h30m"
udp = "30s"

[[service]]
name = "dns"
vip = "2001:db8::53"
port = 53
protocol = "UDP"
health = { kind = "tcp", interval = "2s", timeout = "2s", port = 5353, fall = 1, rise = 100, retry_delay = "500ms", warmup = "0s", inhibit_on_failure = true, notify = ["/bin/notify"] }
backend = [{ address = "2001:db8::1", weight = 0, mac = "02:AB:cd:00:00:01" }]
"#;
        let config = parse(text);
        let d = &config.director;
        assert_eq!(d.interfaces, ["eth0", "eth1"]);
        assert_eq!(d.xdp_mode, XdpMode::Skb);
        assert_eq!(d.pin_path, Path::new("/sys/fs/bpf/lb-test"));
        assert_eq!(d.max_flows, 4096);
        assert_eq!(d.max_flows_v6, 2048);
        assert_eq!(d.sweep_interval, Duration::from_millis(500));
        assert_eq!(d.control_socket, Path::new("/var/run/lb-test/control.sock"));
        assert_eq!(
            d.metrics_listen,
            Some("[2001:db8::1]:9100".parse().unwrap())
        );
        assert!(d.expire_nodest_conn);
        assert_eq!(
            d.timeouts,
            Timeouts {
                established: 5400,
                udp: 30,
                ..Timeouts::IPVS
            }
        );
        let s = &config.services[0];
        assert_eq!(s.protocol, Protocol::Udp);
        assert_eq!(
            s.health,
            HealthConfig {
                kind: HealthKind::Tcp,
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(2),
                port: 5353,
                fall: 1,
                rise: 100,
                retry_delay: Duration::from_millis(500),
                warmup: Duration::ZERO,
                inhibit_on_failure: true,
                notify: vec!["/bin/notify".to_owned()],
            }
        );
        assert_eq!(
            s.backends,
            [BackendConfig {
                address: "2001:db8::1".parse().unwrap(),
                weight: 0,
                mac: Some([0x02, 0xab, 0xcd, 0, 0, 1]),
            }]
        );
    }

    /// Tables that toml builds implicitly (dotted keys, a sub-table without
    /// its parent's header) have no position; they must still work.
    #[test]
    fn implicit_tables() {
        let text = "director.interfaces = [\"eth0\"]\n\
                    director.timeouts.udp = \"1m\"\n"
            .to_owned()
            + BASE.trim_start_matches("[director]\ninterfaces = [\"eth0\"]\n");
        assert_eq!(parse(&text).director.timeouts.udp, 60);

        let text = "[director.timeouts]\nudp = \"1m\"\n";
        assert_eq!(
            error(text),
            "lb.toml: [director]: missing required field \"interfaces\" (e.g. interfaces = [\"eth0\"])"
        );
    }

    #[test]
    fn no_services_is_valid() {
        assert!(
            parse("[director]\ninterfaces = [\"eth0\"]\n")
                .services
                .is_empty()
        );
    }

    // -- Errors from toml and serde

    #[test]
    fn syntax_error() {
        let text = base_with("port = 2811", "port = 2811 2812");
        let e = error(&text);
        assert!(
            e.starts_with(&format!(
                "lb.toml:{}: TOML syntax error: ",
                line(&text, "port")
            )),
            "{e}"
        );
    }

    #[test]
    fn unknown_field_in_director() {
        let text = base_with("interfaces", "interfacs");
        assert_eq!(
            error(&text),
            "lb.toml:2: unknown field \"interfacs\" in [director] (valid: interfaces, xdp_mode, \
             pin_path, max_flows, max_flows_v6, sweep_interval, control_socket, metrics_listen, \
             expire_nodest_conn, timeouts)"
        );
    }

    #[test]
    fn unknown_field_everywhere_names_its_section() {
        // (replace, by, unknown field, where)
        let cases = [
            (
                "[director]",
                "services = 1\n[director]",
                "services",
                "at the top level",
            ),
            (
                "[[service]]",
                "[director.timeouts]\nestablised = \"1h\"\n\n[[service]]",
                "establised",
                "in [director.timeouts]",
            ),
            (
                "port = 2811",
                "port = 2811\nvips = 1",
                "vips",
                "in service \"gridftp\"",
            ),
            (
                "port = 2811",
                "port = 2811\n[service.health]\ninterval = \"5s\"\nintervall = \"5s\"",
                "intervall",
                "in service \"gridftp\", health check",
            ),
            (
                "address = \"198.51.100.25\"",
                "address = \"198.51.100.25\"\nwieght = 2",
                "wieght",
                "in service \"gridftp\", backend 2",
            ),
            (
                "port = 2811",
                "port = 2811\n[[service.backends]]",
                "backends",
                "in service \"gridftp\"",
            ),
        ];
        for (from, to, bad, place) in cases {
            let text = base_with(from, to);
            let e = error(&text);
            let expected = format!(
                "lb.toml:{}: unknown field \"{bad}\" {place} (valid: ",
                key_line(&text, bad)
            );
            assert!(e.starts_with(&expected), "{e}\nexpected {expected}");
        }
        // In a second, unnamed service: the right one is named.
        for (in_service, at_end, bad, place) in [
            (
                "sheduler = 1\n",
                "",
                "sheduler",
                "in service 2 (valid: name, vip,",
            ),
            (
                "health.knd = 1\n",
                "",
                "knd",
                "in service 2, health check (valid: kind,",
            ),
            (
                "",
                "[[service.backend]]\naddres = 1\n",
                "addres",
                "in service 2, backend 2 (valid: address,",
            ),
        ] {
            let text = format!(
                "{BASE}\n[[service]]\nvip = \"192.0.2.201\"\nport = 80\n{in_service}\
                 [[service.backend]]\naddress = \"198.51.100.30\"\n{at_end}"
            );
            let e = error(&text);
            let expected = format!(
                "lb.toml:{}: unknown field \"{bad}\" {place}",
                key_line(&text, bad)
            );
            assert!(e.starts_with(&expected), "{e}\nexpected {expected}");
        }
    }

    #[test]
    fn single_bracket_service() {
        let e = error("[director]\ninterfaces = [\"eth0\"]\n[service]\nname = \"x\"\n");
        assert!(
            e.starts_with(
                "lb.toml:3: service and backend must be arrays of tables: write [[service]]"
            ),
            "{e}"
        );
    }

    // -- Errors from validation

    #[test]
    fn weight_out_of_range() {
        let text = base_with(
            "address = \"198.51.100.25\"",
            "address = \"198.51.100.25\"\nweight = 70000",
        );
        assert_eq!(
            error(&text),
            "lb.toml:14: service \"gridftp\", backend 2: weight 70000 is out of range (valid: 0..=65535)"
        );
    }

    #[test]
    fn duplicate_service() {
        let second = "\n[[service]]\nname = \"gridftp2\"\nvip = \"192.0.2.200\"\nport = 2811\n\
                      [[service.backend]]\naddress = \"198.51.100.30\"\n";
        let text = format!("{BASE}{second}");
        assert_eq!(
            error(&text),
            "lb.toml:18: service \"gridftp2\": 192.0.2.200:2811 tcp is already used by \
             service \"gridftp\" at line 7 (vip, port and protocol must be unique)"
        );
        // Another protocol on the same VIP and port is another service.
        parse(&format!(
            "{BASE}{}",
            second.replace("port = 2811", "port = 2811\nprotocol = \"udp\"")
        ));
    }

    #[test]
    fn duplicate_name() {
        let text = format!(
            "{BASE}\n[[service]]\nname = \"gridftp\"\nvip = \"192.0.2.201\"\nport = 2811\n\
             [[service.backend]]\naddress = \"198.51.100.30\"\n"
        );
        assert_eq!(
            error(&text),
            "lb.toml:16: service \"gridftp\": name \"gridftp\" is already used by the service \
             at line 5 (service names must be unique)"
        );
    }

    #[test]
    fn backend_is_a_vip() {
        // The VIP of a service further down the file counts too.
        let text = format!(
            "{}\n[[service]]\nname = \"other\"\nvip = \"198.51.100.25\"\nport = 80\n\
             [[service.backend]]\naddress = \"198.51.100.30\"\n",
            BASE
        );
        assert_eq!(
            error(&text),
            "lb.toml:13: service \"gridftp\", backend 2: address 198.51.100.25 is the vip of \
             service \"other\"; a backend must be a real server, not a VIP"
        );
    }

    #[test]
    fn mixed_address_families() {
        let text = base_with("\"198.51.100.25\"", "\"2001:db8::25\"");
        assert_eq!(
            error(&text),
            "lb.toml:13: service \"gridftp\", backend 2: address 2001:db8::25 is IPv6 but the \
             service's vip 192.0.2.200 is IPv4 (valid: the VIP's address family; use a \
             separate service for the other family)"
        );
        let text = base_with("\"192.0.2.200\"", "\"2001:db8::200\"");
        let e = error(&text);
        assert!(
            e.starts_with(
                "lb.toml:10: service \"gridftp\", backend 1: address 198.51.100.24 is IPv4 but \
                 the service's vip 2001:db8::200 is IPv6"
            ),
            "{e}"
        );
        assert_eq!(e.lines().count(), 2, "{e}");
    }

    #[test]
    fn duplicate_backend() {
        let text = base_with("\"198.51.100.25\"", "\"198.51.100.24\"");
        assert_eq!(
            error(&text),
            "lb.toml:13: service \"gridftp\", backend 2: address 198.51.100.24 is already \
             backend 1 of this service (valid: each address once per service)"
        );
    }

    #[test]
    fn no_backends() {
        let text = "[director]\ninterfaces = [\"eth0\"]\n\n[[service]]\nname = \"gridftp\"\n\
                    vip = \"192.0.2.200\"\nport = 2811\n";
        assert_eq!(
            error(text),
            "lb.toml:4: service \"gridftp\": no backends; add at least one [[service.backend]] \
             with an address"
        );
        let e = error(&format!("{text}backend = []\n"));
        assert!(
            e.starts_with("lb.toml:4: service \"gridftp\": no backends"),
            "{e}"
        );
    }

    #[test]
    fn too_many_services() {
        let mut text = "[director]\ninterfaces = [\"eth0\"]\n".to_owned();
        for i in 0..=lb_common::MAX_SERVICES {
            text += &format!(
                "[[service]]\nname = \"s{i}\"\nvip = \"192.0.2.1\"\nport = {}\n\
                 [[service.backend]]\naddress = \"198.51.100.1\"\n",
                i + 1
            );
        }
        let max = lb_common::MAX_SERVICES;
        assert_eq!(
            error(&text),
            format!(
                "lb.toml:{}: service \"s{max}\": too many services: {} (valid: at most {max})",
                line(&text, &format!("name = \"s{max}\"")) - 1,
                max + 1
            )
        );
    }

    #[test]
    fn too_many_backends() {
        let mut text = base_with("address = \"198.51.100.25\"\n", "");
        text.truncate(text.trim_end().rfind('\n').unwrap());
        for i in 0..=lb_common::MAX_BACKENDS {
            text += &format!(
                "\n[[service.backend]]\naddress = \"10.0.{}.{}\"",
                i / 200,
                i % 200 + 1
            );
        }
        let e = error(&text);
        assert!(
            e.ends_with(
                "service \"gridftp\", backend 257: too many backends: 258 (valid: at most 256 per service)"
            ),
            "{e}"
        );
    }

    #[test]
    fn interfaces() {
        let cases = [
            (
                "[]",
                "interfaces is empty; list at least one network interface",
            ),
            (
                "[\"eth0\", \"eth0\"]",
                "interface \"eth0\" is listed twice in interfaces",
            ),
            (
                "[\"a-very-long-interface\"]",
                "interface \"a-very-long-interface\" is not a valid interface name: it is longer than 15 bytes",
            ),
            (
                "[\"eth0:1\"]",
                "interface \"eth0:1\" is not a valid interface name: it contains",
            ),
            (
                "[\"\"]",
                "interface \"\" is not a valid interface name: it is empty",
            ),
            ("[1]", "interfaces must hold interface names as strings"),
            ("\"eth0\"", "interfaces must be an array of interface names"),
        ];
        for (value, message) in cases {
            let e = error(&base_with("[\"eth0\"]", value));
            assert!(
                e.starts_with(&format!("lb.toml:2: [director]: {message}")),
                "{e}"
            );
        }
        let e = error("[director]\nxdp_mode = \"skb\"\n");
        assert_eq!(
            e,
            "lb.toml:1: [director]: missing required field \"interfaces\" (e.g. interfaces = [\"eth0\"])"
        );
    }

    #[test]
    fn missing_director() {
        let text = BASE.replacen("[director]\ninterfaces = [\"eth0\"]\n", "", 1);
        assert!(error(&text).starts_with("lb.toml: missing [director] table"));
    }

    #[test]
    fn bad_mac() {
        for (mac, message) in [
            (
                "02:00:00:00:00",
                "is not a MAC address (valid: six two-digit hex bytes",
            ),
            ("02:00:00:00:00:0g", "is not a MAC address"),
            ("0200.0000.0001", "is not a MAC address"),
            ("01:00:5e:00:00:01", "is not a unicast MAC address"),
            ("00:00:00:00:00:00", "is not a unicast MAC address"),
        ] {
            let text = base_with(
                "address = \"198.51.100.24\"",
                &format!("address = \"198.51.100.24\"\nmac = \"{mac}\""),
            );
            let e = error(&text);
            let expected =
                format!("lb.toml:11: service \"gridftp\", backend 1: mac \"{mac}\" {message}");
            assert!(e.starts_with(&expected), "{e}\nexpected {expected}");
        }
    }

    #[test]
    fn bad_durations() {
        let cases = [
            (
                "10",
                "sweep_interval = 10 has no unit; write a duration string such as sweep_interval = \"10s\" (valid examples: \"500ms\"",
            ),
            (
                "\"10\"",
                "sweep_interval \"10\" is not a duration: 10 has no unit",
            ),
            (
                "\"10 s\"",
                "sweep_interval \"10 s\" is not a duration: 10 has no unit",
            ),
            (
                "\"10sec\"",
                "sweep_interval \"10sec\" is not a duration: unknown unit \"sec\" (valid: ms, s, m, h, d)",
            ),
            ("\"\"", "sweep_interval \"\" is not a duration: it is empty"),
            ("\"1.5s\"", "sweep_interval \"1.5s\" is not a duration"),
            (
                "\"99999999999999999999s\"",
                "sweep_interval \"99999999999999999999s\" is not a duration: it is too long",
            ),
            (
                "\"2m\"",
                "sweep_interval \"2m\" is out of range (valid: 100ms..=1m)",
            ),
            (
                "\"50ms\"",
                "sweep_interval \"50ms\" is out of range (valid: 100ms..=1m)",
            ),
            (
                "true",
                "sweep_interval must be a duration string (found boolean true; valid examples",
            ),
        ];
        for (value, message) in cases {
            let text = base_with(
                "[\"eth0\"]",
                &format!("[\"eth0\"]\nsweep_interval = {value}"),
            );
            let e = error(&text);
            assert!(
                e.starts_with(&format!("lb.toml:3: [director]: {message}")),
                "{e}\nexpected {message}"
            );
        }
        let text = base_with(
            "[\"eth0\"]",
            "[\"eth0\"]\n[director.timeouts]\nclose = \"1500ms\"",
        );
        assert_eq!(
            error(&text),
            "lb.toml:4: [director.timeouts]: close 1500ms is not a whole number of seconds"
        );
        let text = base_with(
            "[\"eth0\"]",
            "[\"eth0\"]\n[director.timeouts]\nestablished = \"8d\"",
        );
        assert_eq!(
            error(&text),
            "lb.toml:4: [director.timeouts]: established \"8d\" is out of range (valid: 1s..=7d)"
        );
    }

    #[test]
    fn timeout_longer_than_interval() {
        let text = base_with(
            "port = 2811\n",
            "port = 2811\n[service.health]\ninterval = \"2s\"\ntimeout = \"5s\"\n",
        );
        assert_eq!(
            error(&text),
            "lb.toml:10: service \"gridftp\", health check: timeout 5s is longer than interval 2s \
             (valid: at most the interval)"
        );
    }

    #[test]
    fn unknown_keywords() {
        let cases = [
            (
                "protocol",
                "\"sctp\"",
                "protocol \"sctp\" is not supported (valid: tcp, udp)",
            ),
            (
                "scheduler",
                "\"rr\"",
                "scheduler \"rr\" is not supported (valid: wlc)",
            ),
            (
                "protocol",
                "6",
                "protocol must be a string (found integer 6)",
            ),
        ];
        for (key, value, message) in cases {
            let text = base_with("port = 2811", &format!("port = 2811\n{key} = {value}"));
            assert_eq!(
                error(&text),
                format!("lb.toml:8: service \"gridftp\": {message}")
            );
        }
        for (value, message) in [
            (
                "HTTP_GET",
                "kind \"HTTP_GET\" is not supported (valid: tcp, http, exec, none)",
            ),
            (
                "udp",
                "kind \"udp\" is not supported (valid: tcp, http, exec, none)",
            ),
        ] {
            let text = base_with(
                "port = 2811",
                &format!("port = 2811\nhealth.kind = \"{value}\""),
            );
            assert_eq!(
                error(&text),
                format!("lb.toml:8: service \"gridftp\", health check: {message}")
            );
        }
        let text = base_with("[\"eth0\"]", "[\"eth0\"]\nxdp_mode = \"native\"");
        assert_eq!(
            error(&text),
            "lb.toml:3: [director]: xdp_mode \"native\" is not supported (valid: driver, skb)"
        );
    }

    #[test]
    fn ports() {
        let cases = [
            (
                "port = 2811",
                "port = 0",
                7,
                "service \"gridftp\": port 0 is out of range (valid: 1..=65535)",
            ),
            (
                "port = 2811",
                "port = 65536",
                7,
                "service \"gridftp\": port 65536 is out of range (valid: 1..=65535)",
            ),
            (
                "port = 2811",
                "port = \"2811\"",
                7,
                "service \"gridftp\": port must be an integer (found string \"2811\")",
            ),
            (
                "port = 2811",
                "port = 2811\n[service.health]\nport = -1",
                9,
                "service \"gridftp\", health check: port -1 is out of range (valid: 1..=65535)",
            ),
        ];
        for (from, to, line, message) in cases {
            assert_eq!(
                error(&base_with(from, to)),
                format!("lb.toml:{line}: {message}")
            );
        }
    }

    #[test]
    fn missing_required_fields() {
        let cases = [
            (
                "name = \"gridftp\"\n",
                4,
                "service 1: missing required field \"name\" (e.g. name = \"gridftp\")",
            ),
            (
                "vip = \"192.0.2.200\"\n",
                4,
                "service \"gridftp\": missing required field \"vip\" (e.g. vip = \"192.0.2.200\")",
            ),
            (
                "port = 2811\n",
                4,
                "service \"gridftp\": missing required field \"port\" (e.g. port = 2811)",
            ),
            (
                "address = \"198.51.100.25\"\n",
                12,
                "service \"gridftp\", backend 2: missing required field \"address\" (e.g. address = \"198.51.100.24\")",
            ),
        ];
        for (field, line, message) in cases {
            assert_eq!(
                error(&base_with(field, "")),
                format!("lb.toml:{line}: {message}")
            );
        }
    }

    #[test]
    fn other_field_checks() {
        let cases = [
            (
                "name = \"gridftp\"",
                "name = \"grid ftp\"",
                "lb.toml:5: service \"grid ftp\": name \"grid ftp\" is not valid (valid: 1 to 32 characters from A-Z a-z 0-9 _ . -)",
            ),
            (
                "\"192.0.2.200\"",
                "\"192.0.2\"",
                "lb.toml:6: service \"gridftp\": vip \"192.0.2\" is not an IP address (valid: IPv4 or IPv6, e.g. \"192.0.2.200\" or \"2001:db8::200\")",
            ),
            (
                "\"192.0.2.200\"",
                "\"0.0.0.0\"",
                "lb.toml:6: service \"gridftp\": vip 0.0.0.0 is the unspecified address (valid: a unicast address)",
            ),
            (
                "\"198.51.100.24\"",
                "\"224.0.0.1\"",
                "lb.toml:10: service \"gridftp\", backend 1: address 224.0.0.1 is a multicast address (valid: a unicast address)",
            ),
            (
                "[\"eth0\"]",
                "[\"eth0\"]\nmax_flows = 100",
                "lb.toml:3: [director]: max_flows 100 is out of range (valid: 1024..=16777216)",
            ),
            (
                "[\"eth0\"]",
                "[\"eth0\"]\nmax_flows_v6 = 16777217",
                "lb.toml:3: [director]: max_flows_v6 16777217 is out of range (valid: 1024..=16777216)",
            ),
            (
                "[\"eth0\"]",
                "[\"eth0\"]\npin_path = \"/tmp/lb\"",
                "lb.toml:3: [director]: pin_path \"/tmp/lb\" is not under /sys/fs/bpf/ (valid: an absolute path below the BPF filesystem without \"..\", e.g. \"/sys/fs/bpf/lb\")",
            ),
            (
                "port = 2811",
                "port = 2811\nhealth = { fall = 0 }",
                "lb.toml:8: service \"gridftp\", health check: fall 0 is out of range (valid: 1..=100)",
            ),
        ];
        for (from, to, message) in cases {
            assert_eq!(error(&base_with(from, to)), message);
        }
        for path in [
            "/sys/fs/bpf",
            "/sys/fs/bpf/",
            "/sys/fs/bpf/../lb",
            "sys/fs/bpf/lb",
        ] {
            let e = error(&base_with(
                "[\"eth0\"]",
                &format!("[\"eth0\"]\npin_path = \"{path}\""),
            ));
            assert!(e.contains("is not under /sys/fs/bpf/"), "{path}: {e}");
        }
    }

    #[test]
    fn every_problem_is_reported() {
        let text = base_with("\"198.51.100.24\"", "\"198.51.100.25\"\nweight = -1")
            .replacen("port = 2811", "port = 0", 1)
            .replacen("[\"eth0\"]", "[]", 1);
        let e = error(&text);
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines.len(), 4, "{e}");
        assert!(
            lines[0].starts_with("lb.toml:2: [director]: interfaces is empty"),
            "{e}"
        );
        assert!(
            lines[1].starts_with("lb.toml:7: service \"gridftp\": port 0"),
            "{e}"
        );
        assert!(
            lines[2].starts_with("lb.toml:11: service \"gridftp\", backend 1: weight -1"),
            "{e}"
        );
        assert!(lines[3].starts_with("lb.toml:14: service \"gridftp\", backend 2: address 198.51.100.25 is already backend 1"), "{e}");
    }

    #[test]
    fn load_names_the_file() {
        let e = Config::load(Path::new("/nonexistent/lb.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/nonexistent/lb.toml: cannot read config file: "),
            "{e}"
        );
    }

    #[test]
    fn error_converts_into_anyhow() {
        fn is_anyhow_compatible<E: std::error::Error + Send + Sync + 'static>() {}
        is_anyhow_compatible::<ConfigError>();
    }

    /// `--xdp-mode` (clap) and `xdp_mode` (the file) take the same words.
    #[test]
    fn xdp_mode_keywords_match_clap() {
        use clap::ValueEnum;
        for mode in XdpMode::ALL {
            assert_eq!(XdpMode::from_str(mode.keyword(), false), Ok(*mode));
        }
        assert_eq!(XdpMode::value_variants().len(), XdpMode::ALL.len());
    }

    #[test]
    fn protocol_numbers_and_names() {
        assert_eq!(Protocol::Tcp.number(), lb_common::PROTO_TCP);
        assert_eq!(Protocol::Udp.number(), lb_common::PROTO_UDP);
        assert_eq!(Protocol::Tcp.to_string(), "tcp");
        assert_eq!(Protocol::Udp.to_string(), "udp");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(fmt_duration(Duration::from_millis(100)), "100ms");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(fmt_duration(Duration::from_secs(90)), "90s");
        assert_eq!(fmt_duration(Duration::from_secs(120)), "2m");
        assert_eq!(fmt_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(fmt_duration(Duration::from_secs(86_400)), "1d");
    }

    // -- [director]: control socket, metrics, expire_nodest_conn

    #[test]
    fn control_socket() {
        let config = parse(&director_with("control_socket = \"/run/lb2/ctl.sock\""));
        assert_eq!(
            config.director.control_socket,
            Path::new("/run/lb2/ctl.sock")
        );
        let long = format!("/run/{}", "x".repeat(103));
        for (value, message) in [
            (
                "\"lb.sock\"",
                "control_socket \"lb.sock\" is not an absolute path",
            ),
            (
                "\"/run/../lb.sock\"",
                "control_socket \"/run/../lb.sock\" contains \"..\"",
            ),
            (
                "\"/run/lb/\"",
                "control_socket \"/run/lb/\" names a directory, not a socket file",
            ),
            (
                "\"/\"",
                "control_socket \"/\" names a directory, not a socket file",
            ),
        ] {
            assert_eq!(
                error(&director_with(&format!("control_socket = {value}"))),
                format!(
                    "lb.toml:3: [director]: {message} (valid: an absolute file path of at most \
                     107 bytes without \"..\", e.g. \"/run/lb/lb.sock\")"
                )
            );
        }
        let e = error(&director_with(&format!("control_socket = \"{long}\"")));
        assert!(
            e.starts_with(&format!(
                "lb.toml:3: [director]: control_socket \"{long}\" is too long for a Unix socket"
            )),
            "{e}"
        );
        // 107 bytes is the most a sun_path holds.
        let longest = format!("/run/{}", "x".repeat(102));
        parse(&director_with(&format!("control_socket = \"{longest}\"")));
        assert_eq!(
            error(&director_with("control_socket = 1")),
            "lb.toml:3: [director]: control_socket must be a string (found integer 1)"
        );
    }

    #[test]
    fn metrics_listen() {
        let cases = [
            ("9100", "127.0.0.1:9100"),
            ("\"9100\"", "127.0.0.1:9100"),
            ("\"0.0.0.0:9100\"", "0.0.0.0:9100"),
            ("\"192.0.2.1:80\"", "192.0.2.1:80"),
            ("\"[::1]:9100\"", "[::1]:9100"),
        ];
        for (value, expected) in cases {
            let config = parse(&director_with(&format!("metrics_listen = {value}")));
            assert_eq!(
                config.director.metrics_listen,
                Some(expected.parse().unwrap()),
                "{value}"
            );
        }
        const VALID: &str = "valid: \"ADDR:PORT\" such as \"127.0.0.1:9100\" or \
                             \"[::1]:9100\", or a port such as 9100 for 127.0.0.1:9100";
        let cases = [
            (
                "0",
                "metrics_listen 0 is out of range (valid: 1..=65535)".to_owned(),
            ),
            (
                "70000",
                "metrics_listen 70000 is out of range (valid: 1..=65535)".to_owned(),
            ),
            (
                "\"70000\"",
                format!("metrics_listen \"70000\" is not an address and port ({VALID})"),
            ),
            (
                "\"localhost:9100\"",
                format!("metrics_listen \"localhost:9100\" is not an address and port ({VALID})"),
            ),
            (
                "\"::1:9100\"",
                format!("metrics_listen \"::1:9100\" is not an address and port ({VALID})"),
            ),
            (
                "\"\"",
                format!("metrics_listen \"\" is not an address and port ({VALID})"),
            ),
            (
                "\"127.0.0.1:0\"",
                format!("metrics_listen \"127.0.0.1:0\" has port 0 ({VALID})"),
            ),
            (
                "\"0\"",
                format!("metrics_listen \"0\" has port 0 ({VALID})"),
            ),
            (
                "true",
                format!(
                    "metrics_listen must be a string or a port number (found boolean true; {VALID})"
                ),
            ),
        ];
        for (value, message) in cases {
            assert_eq!(
                error(&director_with(&format!("metrics_listen = {value}"))),
                format!("lb.toml:3: [director]: {message}")
            );
        }
    }

    #[test]
    fn expire_nodest_conn() {
        let config = parse(&director_with("expire_nodest_conn = true"));
        assert!(config.director.expire_nodest_conn);
        let config = parse(&director_with("expire_nodest_conn = false"));
        assert!(!config.director.expire_nodest_conn);
        assert_eq!(
            error(&director_with("expire_nodest_conn = \"yes\"")),
            "lb.toml:3: [director]: expire_nodest_conn must be true or false (found string \"yes\")"
        );
        assert_eq!(
            error(&director_with("expire_nodest_conn = 1")),
            "lb.toml:3: [director]: expire_nodest_conn must be true or false (found integer 1)"
        );
    }

    // -- [service.health]: common fields

    #[test]
    fn retry_delay_and_warmup() {
        // Both default to the interval.
        let h = health("interval = \"5s\"");
        assert_eq!(h.retry_delay, Duration::from_secs(5));
        assert_eq!(h.warmup, Duration::from_secs(5));
        let h = health("retry_delay = \"1s\"\nwarmup = \"0s\"");
        assert_eq!(h.interval, Duration::from_secs(10));
        assert_eq!(h.retry_delay, Duration::from_secs(1));
        assert_eq!(h.warmup, Duration::ZERO);
        let h = health("retry_delay = \"1h\"\nwarmup = \"1h\"");
        assert_eq!(h.retry_delay, Duration::from_secs(3600));
        assert_eq!(h.warmup, Duration::from_secs(3600));
        for (lines, message) in [
            (
                "retry_delay = \"0s\"",
                "retry_delay \"0s\" is out of range (valid: 100ms..=1h)",
            ),
            (
                "retry_delay = \"50ms\"",
                "retry_delay \"50ms\" is out of range (valid: 100ms..=1h)",
            ),
            (
                "retry_delay = 3",
                "retry_delay = 3 has no unit; write a duration string such as retry_delay = \
                 \"3s\" (valid examples: \"500ms\", \"10s\", \"2m\", \"1h\", \"1m30s\")",
            ),
            (
                "warmup = \"2h\"",
                "warmup \"2h\" is out of range (valid: 0ms..=1h)",
            ),
            (
                "warmup = \"soon\"",
                "warmup \"soon\" is not a duration: expected a number at \"soon\" (valid \
                 examples: \"500ms\", \"10s\", \"2m\", \"1h\", \"1m30s\")",
            ),
        ] {
            assert_health_error(lines, &[(9, message)]);
        }
    }

    #[test]
    fn inhibit_on_failure() {
        assert!(!health("").inhibit_on_failure);
        assert!(health("inhibit_on_failure = true").inhibit_on_failure);
        assert_health_error(
            "inhibit_on_failure = \"true\"",
            &[(
                9,
                "inhibit_on_failure must be true or false (found string \"true\")",
            )],
        );
    }

    #[test]
    fn notify() {
        assert!(health("").notify.is_empty());
        assert!(health("notify = []").notify.is_empty());
        assert_eq!(
            health("notify = [\"/usr/local/bin/lb-notify\", \"\", \"x y\"]").notify,
            ["/usr/local/bin/lb-notify", "", "x y"]
        );
        assert_eq!(health("notify = [\"lb-notify\"]").notify, ["lb-notify"]);
        const EXAMPLE: &str = "notify = [\"/usr/local/bin/lb-notify\", \"--syslog\"]";
        for (value, message) in [
            (
                "\"/usr/local/bin/lb-notify\"",
                format!(
                    "notify must be an array of strings, the program and its arguments, e.g. \
                     {EXAMPLE} (found string \"/usr/local/bin/lb-notify\")"
                ),
            ),
            (
                "[\"\", \"up\"]",
                format!(
                    "notify starts with an empty program name (valid: the program to run, then \
                     its arguments, e.g. {EXAMPLE})"
                ),
            ),
            (
                "[\"/bin/notify\", 1]",
                format!("notify must hold strings, e.g. {EXAMPLE} (found integer 1)"),
            ),
            (
                "[\"/bin/notify\\u0000\"]",
                "notify argument \"/bin/notify\\0\" contains a NUL character".to_owned(),
            ),
        ] {
            assert_health_error(&format!("notify = {value}"), &[(9, &message)]);
        }
    }

    // -- [service.health]: kinds

    #[test]
    fn http_check_defaults() {
        let h = health("kind = \"http\"");
        assert_eq!(
            h.kind,
            HealthKind::Http(HttpCheck {
                path: "/".to_owned(),
                status: vec![200],
                digest: None,
                host: None,
            })
        );
        assert_eq!(h.kind.to_string(), "http");
        assert_eq!(h.port, 2811);
    }

    #[test]
    fn http_check_fields() {
        let h = health(
            "kind = \"HTTP\"\npath = \"/health?full=1&x=%20\"\nstatus = [200, 204, 301]\n\
             digest = \"D41D8CD98F00B204E9800998ECF8427E\"\nhost = \"www.example.org\"\nport = 8080",
        );
        assert_eq!(
            h.kind,
            HealthKind::Http(HttpCheck {
                path: "/health?full=1&x=%20".to_owned(),
                status: vec![200, 204, 301],
                digest: Some([
                    0xd4, 0x1d, 0x8c, 0xd9, 0x8f, 0x00, 0xb2, 0x04, 0xe9, 0x80, 0x09, 0x98, 0xec,
                    0xf8, 0x42, 0x7e
                ]),
                host: Some("www.example.org".to_owned()),
            })
        );
        assert_eq!(h.port, 8080);
        // One status code alone is accepted too.
        let h = health("kind = \"http\"\nstatus = 204");
        assert!(matches!(h.kind, HealthKind::Http(HttpCheck { status, .. }) if status == [204]));
        for host in [
            "[2001:db8::1]:8080",
            "192.0.2.1",
            "gridftp.example.org:2811",
        ] {
            let h = health(&format!("kind = \"http\"\nhost = \"{host}\""));
            assert!(
                matches!(&h.kind, HealthKind::Http(HttpCheck { host: Some(h), .. }) if h == host),
                "{host}"
            );
        }
    }

    #[test]
    fn http_path_errors() {
        const VALID: &str = "(valid: an absolute path with an optional query, e.g. \"/\" or \
                             \"/health?full=1\")";
        for (path, why) in [
            ("health", "does not start with '/'"),
            ("", "does not start with '/'"),
            ("http://host/", "does not start with '/'"),
            ("/a b", "contains whitespace or a control character"),
            ("/a\\tb", "contains whitespace or a control character"),
            ("/a#frag", "is not a valid URI path"),
            (
                "/caf\u{e9}",
                "contains a non-ASCII character (percent-encode it)",
            ),
        ] {
            let shown = format!("{:?}", path.replace("\\t", "\t"));
            assert_health_error(
                &format!("kind = \"http\"\npath = \"{path}\""),
                &[(10, &format!("path {shown} {why} {VALID}"))],
            );
        }
        assert_health_error(
            "kind = \"http\"\npath = [\"/\"]",
            &[(10, "path must be a string (found an array)")],
        );
    }

    #[test]
    fn http_status_errors() {
        for (value, message) in [
            (
                "[]",
                "status is empty (valid: at least one HTTP status code, e.g. status = [200])",
            ),
            ("[99]", "status 99 is out of range (valid: 100..=599)"),
            ("600", "status 600 is out of range (valid: 100..=599)"),
            ("[200, -1]", "status -1 is out of range (valid: 100..=599)"),
            (
                "\"200\"",
                "status must be an array of HTTP status codes, e.g. status = [200, 204] \
                 (found string \"200\")",
            ),
            (
                "[200, \"204\"]",
                "status must hold HTTP status codes as integers, e.g. status = [200, 204] \
                 (found string \"204\")",
            ),
        ] {
            assert_health_error(
                &format!("kind = \"http\"\nstatus = {value}"),
                &[(10, message)],
            );
        }
        // Every bad code is named.
        assert_health_error(
            "kind = \"http\"\nstatus = [1, 200, 1000]",
            &[
                (10, "status 1 is out of range (valid: 100..=599)"),
                (10, "status 1000 is out of range (valid: 100..=599)"),
            ],
        );
    }

    #[test]
    fn http_digest_errors() {
        for digest in [
            "d41d8cd98f00b204e9800998ecf8427",
            "d41d8cd98f00b204e9800998ecf8427e0",
            "d41d8cd98f00b204e9800998ecf8427g",
            "+41d8cd98f00b204e9800998ecf8427e",
            "d41d8cd9-8f00b204e9800998ecf842",
            "",
        ] {
            assert_health_error(
                &format!("kind = \"http\"\ndigest = \"{digest}\""),
                &[(
                    10,
                    &format!(
                        "digest \"{digest}\" is not an MD5 digest (valid: 32 hex digits as \
                         printed by md5sum or genhash, e.g. \"d41d8cd98f00b204e9800998ecf8427e\")"
                    ),
                )],
            );
        }
    }

    #[test]
    fn http_host_errors() {
        for host in [
            "",
            "www example.org",
            "user@www.example.org",
            "a/b",
            "host:port",
            "host:",
            "host:70000",
            "2001:db8::1",
            "[2001:db8::1]x",
            "[2001:db8::1]:",
        ] {
            assert_health_error(
                &format!("kind = \"http\"\nhost = \"{host}\""),
                &[(
                    10,
                    &format!(
                        "host \"{host}\" is not a valid Host header (valid: a host name or \
                         address, optionally with :port, e.g. \"www.example.org\" or \
                         \"[2001:db8::1]:8080\")"
                    ),
                )],
            );
        }
    }

    #[test]
    fn exec_check() {
        let h = health("kind = \"exec\"\ncommand = [\"/usr/local/bin/check\", \"-q\", \"\"]");
        assert_eq!(
            h.kind,
            HealthKind::Exec(ExecCheck {
                command: vec![
                    "/usr/local/bin/check".to_owned(),
                    "-q".to_owned(),
                    String::new()
                ],
            })
        );
        assert_eq!(h.kind.to_string(), "exec");
        // The port is only passed to the command; it still defaults.
        assert_eq!(h.port, 2811);
    }

    #[test]
    fn exec_check_errors() {
        const EXAMPLE: &str = "[\"/usr/local/bin/check-gridftp\", \"--quiet\"]";
        assert_health_error(
            "kind = \"exec\"",
            &[(
                9,
                &format!(
                    "missing required field \"command\" for kind \"exec\" (e.g. command = {EXAMPLE})"
                ),
            )],
        );
        for (value, message) in [
            (
                "[]",
                format!(
                    "command is empty (valid: the program and its arguments, e.g. command = \
                     {EXAMPLE})"
                ),
            ),
            (
                "\"/usr/local/bin/check -q\"",
                format!(
                    "command must be an array of strings, the program and its arguments, e.g. \
                     command = {EXAMPLE} (found string \"/usr/local/bin/check -q\")"
                ),
            ),
            (
                "[\"\"]",
                format!(
                    "command starts with an empty program name (valid: the program to run, \
                     then its arguments, e.g. command = {EXAMPLE})"
                ),
            ),
            (
                "[\"/bin/check\", false]",
                format!(
                    "command must hold strings, e.g. command = {EXAMPLE} (found boolean false)"
                ),
            ),
        ] {
            assert_health_error(
                &format!("kind = \"exec\"\ncommand = {value}"),
                &[(10, &message)],
            );
        }
    }

    #[test]
    fn fields_of_another_kind() {
        let wrong = |key: &str, owner: &str, kind: &str| {
            format!(
                "{key} belongs to kind \"{owner}\" checks, but this check is kind \"{kind}\" \
                 (valid: set kind = \"{owner}\", or remove {key})"
            )
        };
        // kind "tcp" by default.
        assert_health_error("path = \"/\"", &[(9, &wrong("path", "http", "tcp"))]);
        assert_health_error(
            "kind = \"tcp\"\nhost = \"www.example.org\"\ncommand = [\"/bin/true\"]",
            &[
                (10, &wrong("host", "http", "tcp")),
                (11, &wrong("command", "exec", "tcp")),
            ],
        );
        assert_health_error(
            "kind = \"http\"\ncommand = [\"/bin/true\"]",
            &[(10, &wrong("command", "exec", "http"))],
        );
        assert_health_error(
            "kind = \"exec\"\ncommand = [\"/bin/true\"]\nstatus = [200]\ndigest = \
             \"d41d8cd98f00b204e9800998ecf8427e\"",
            &[
                (11, &wrong("status", "http", "exec")),
                (12, &wrong("digest", "http", "exec")),
            ],
        );
        assert_health_error(
            "kind = \"none\"\npath = \"/\"",
            &[(10, &wrong("path", "http", "none"))],
        );
        // A udp service's check is "none" by default.
        let text = base_with(
            "port = 2811\n",
            "port = 53\nprotocol = \"udp\"\n[service.health]\nstatus = [200]\n",
        );
        assert_eq!(
            error(&text),
            format!(
                "lb.toml:10: service \"gridftp\", health check: {}",
                wrong("status", "http", "none")
            )
        );
        // A bad value of a misplaced field is reported as well.
        assert_health_error(
            "kind = \"tcp\"\nstatus = [0]",
            &[
                (10, "status 0 is out of range (valid: 100..=599)"),
                (10, &wrong("status", "http", "tcp")),
            ],
        );
        // With an unknown kind, only the kind is wrong.
        assert_health_error(
            "kind = \"smtp\"\npath = \"/\"",
            &[(
                9,
                "kind \"smtp\" is not supported (valid: tcp, http, exec, none)",
            )],
        );
    }

    #[test]
    fn every_health_problem_is_reported() {
        assert_health_error(
            "kind = \"http\"\npath = \"x\"\nstatus = []\nretry_delay = \"0s\"\nnotify = \"x\"\n\
             inhibit_on_failure = 1",
            &[
                (
                    10,
                    "path \"x\" does not start with '/' (valid: an absolute path with an \
                     optional query, e.g. \"/\" or \"/health?full=1\")",
                ),
                (
                    11,
                    "status is empty (valid: at least one HTTP status code, e.g. status = [200])",
                ),
                (12, "retry_delay \"0s\" is out of range (valid: 100ms..=1h)"),
                (
                    13,
                    "notify must be an array of strings, the program and its arguments, e.g. \
                     notify = [\"/usr/local/bin/lb-notify\", \"--syslog\"] (found string \"x\")",
                ),
                (
                    14,
                    "inhibit_on_failure must be true or false (found integer 1)",
                ),
            ],
        );
    }

    #[test]
    fn health_kind_names() {
        assert_eq!(HealthKind::Tcp.to_string(), "tcp");
        assert_eq!(HealthKind::None.to_string(), "none");
    }

    /// Every ```toml block of docs/health-checks.md is a valid
    /// `[service.health]` table of the BASE service.
    #[test]
    fn health_docs_examples_parse() {
        const DOCS: &str = include_str!("../../docs/health-checks.md");
        let mut blocks = 0;
        let mut rest = DOCS;
        while let Some(start) = rest.find("```toml\n") {
            let after = &rest[start + "```toml\n".len()..];
            let end = after.find("```").expect("an unclosed ```toml block");
            let block = &after[..end];
            assert!(block.starts_with("[service.health]\n"), "{block}");
            let text = base_with("port = 2811\n", &format!("port = 2811\n{block}"));
            if let Err(e) = Config::parse(&text, "docs/health-checks.md") {
                panic!("{e}\nin:\n{block}");
            }
            blocks += 1;
            rest = &after[end + 3..];
        }
        assert!(blocks >= 3, "only {blocks} ```toml blocks");
    }
}
