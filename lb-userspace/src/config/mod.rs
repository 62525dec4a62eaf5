//! The `lb` configuration file: the model, TOML parsing and validation.
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
//! the `Raw*` structs of `raw`, which reject unknown fields and keep every
//! value as a [`toml::Spanned`] [`toml::Value`], so that serde itself only
//! ever fails on an unknown field or a misplaced table. Finally `validate`
//! checks the values' types and ranges one by one; that step reports every
//! problem it finds, not only the first. [`values`] holds the syntax of the
//! values (durations, MAC addresses...), and [`write`](mod@write) writes a
//! [`Config`] back as TOML (for `lb import-keepalived`).

mod ports;
mod raw;
pub(crate) mod validate;
pub mod values;
pub mod write;

pub use ports::Ports;

#[cfg(test)]
mod tests;

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use lb_common::conn_state::Timeouts;

use self::raw::{RawConfig, line_of, shape_error};

/// A validated configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The `[director]` table: where and how the data path runs.
    pub director: DirectorConfig,
    /// The `[[service]]` tables, in file order (at most
    /// [`lb_common::MAX_SERVICES`]).
    pub services: Vec<ServiceConfig>,
    /// The `[sync]` table: connection sync with other directors; `None`:
    /// no sync.
    pub sync: Option<SyncConfig>,
    /// The `[announce]` table: VIPs announced to the routers through a BGP
    /// speaker; `None`: no announcements.
    pub announce: Option<AnnounceConfig>,
}

/// The `[announce]` table (see `crate::announce`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceConfig {
    /// The kernel routing table lb writes announced VIPs into, for the BGP
    /// speaker to learn.
    pub table: u32,
    /// The name of lb's TUN device the routes point at.
    pub device: String,
}

/// `[announce] table` unless set.
pub const DEFAULT_ANNOUNCE_TABLE: u32 = 200;
/// `[announce] device` unless set.
pub const DEFAULT_ANNOUNCE_DEVICE: &str = "lbvip";

/// The `[sync]` table: where this director exchanges its flows with the
/// others (see `crate::sync`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncConfig {
    /// The NIC sync messages leave by and arrive on.
    pub interface: String,
    /// Who gets this director's flows.
    pub peers: SyncPeers,
    /// The UDP port, on every director.
    pub port: u16,
    /// The file holding the shared secret messages are authenticated with
    /// (an absolute path; its content is checked when `lb run` reads it).
    pub key_file: PathBuf,
}

/// The directors a [`SyncConfig`] sends to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncPeers {
    /// These addresses, each by unicast (all of one family); messages are
    /// accepted from these addresses only.
    Unicast(Vec<IpAddr>),
    /// A multicast group joined on the sync interface.
    Multicast(IpAddr),
}

/// The UDP port of connection sync unless `[sync] port` says otherwise
/// (IPVS's sync daemon's).
pub const DEFAULT_SYNC_PORT: u16 = 8848;
/// `lb run`'s `--sync-*` flags: each replaces its `[sync]` field; without
/// a `[sync]` table, an interface, a key file and peers or a group make
/// one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncOverrides {
    /// `--sync-interface`.
    pub interface: Option<String>,
    /// `--sync-peer` (repeated).
    pub peers: Vec<IpAddr>,
    /// `--sync-group`.
    pub group: Option<IpAddr>,
    /// `--sync-port`.
    pub port: Option<u16>,
    /// `--sync-key`.
    pub key_file: Option<PathBuf>,
}

impl SyncOverrides {
    /// `base` (the file's `[sync]`) with these flags applied; an error says
    /// what is missing or wrong.
    pub fn apply(&self, base: Option<SyncConfig>) -> anyhow::Result<Option<SyncConfig>> {
        if *self == Self::default() {
            return Ok(base);
        }
        let peers = match (&self.peers[..], self.group) {
            ([], None) => None,
            (peers, None) => {
                if peers.iter().any(|p| p.is_ipv4() != peers[0].is_ipv4()) {
                    anyhow::bail!("--sync-peer: the peers mix IPv4 and IPv6 (valid: one family)");
                }
                Some(SyncPeers::Unicast(peers.to_vec()))
            }
            ([], Some(group)) if group.is_multicast() => Some(SyncPeers::Multicast(group)),
            ([], Some(group)) => anyhow::bail!(
                "--sync-group {group} is not a multicast address (valid: e.g. 239.0.0.81)"
            ),
            (_, Some(_)) => anyhow::bail!("give --sync-peer or --sync-group, not both"),
        };
        if let Some(name) = &self.interface {
            values::check_ifname(name)
                .map_err(|why| anyhow::anyhow!("--sync-interface {name:?}: {why}"))?;
        }
        let missing = |what: &str| {
            anyhow::anyhow!(
                "the --sync-* flags need {what} (or a [sync] table in the config that has it)"
            )
        };
        let sync = match base {
            Some(base) => SyncConfig {
                interface: self.interface.clone().unwrap_or(base.interface),
                peers: peers.unwrap_or(base.peers),
                port: self.port.unwrap_or(base.port),
                key_file: self.key_file.clone().unwrap_or(base.key_file),
            },
            None => SyncConfig {
                interface: self
                    .interface
                    .clone()
                    .ok_or_else(|| missing("--sync-interface"))?,
                peers: peers.ok_or_else(|| missing("--sync-peer or --sync-group"))?,
                port: self.port.unwrap_or(DEFAULT_SYNC_PORT),
                key_file: self.key_file.clone().ok_or_else(|| missing("--sync-key"))?,
            },
        };
        Ok(Some(sync))
    }
}

/// Where docs and `lb import-keepalived` put the sync key.
pub const DEFAULT_SYNC_KEY_FILE: &str = "/etc/lb/sync.key";
/// The shortest sync key file `lb run` accepts, in bytes.
pub const MIN_SYNC_KEY: usize = 16;

/// The `[director]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectorConfig {
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
    /// VRRP router ids (1 to 255) whose virtual MACs (`00:00:5e:00:01:ID`,
    /// `00:00:5e:00:02:ID`) the director NICs accept besides their own MAC;
    /// frames to any other MAC are passed, not balanced. Sorted, no
    /// duplicates.
    pub vrrp_vrids: Vec<u8>,
    /// New TCP flows per second on one CPU above which the data path enters
    /// flood mode: SYNs are scheduled by a hash of their tuple without a
    /// table entry, and the handshake's ACK records the flow
    /// (`lb_common::flood`); 0 turns the guard off.
    pub syn_flood_rate: u32,
}

impl DirectorConfig {
    /// The `[director]` table that sets only `interfaces`: every other
    /// setting at its default.
    pub fn new(interfaces: Vec<String>) -> Self {
        DirectorConfig {
            interfaces,
            xdp_mode: XdpMode::Driver,
            pin_path: PathBuf::from(DEFAULT_PIN_PATH),
            max_flows: lb_common::DEFAULT_MAX_FLOWS,
            max_flows_v6: lb_common::DEFAULT_MAX_FLOWS_V6,
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
            timeouts: Timeouts::IPVS,
            control_socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            metrics_listen: None,
            expire_nodest_conn: false,
            vrrp_vrids: Vec::new(),
            syn_flood_rate: lb_common::DEFAULT_SYN_FLOOD_RATE,
        }
    }
}

/// How the XDP program is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// The ports clients connect to (`port`, or `ports`).
    pub ports: Ports,
    /// Transport protocol of the service.
    pub protocol: Protocol,
    /// How new connections are spread over the backends.
    pub scheduler: Scheduler,
    /// What a new connection gets when no backend can take it.
    pub no_backend: NoBackend,
    /// Any TCP packet of an unknown flow opens one (IPVS's `sloppy_tcp`),
    /// not only a SYN; default `false`.
    pub sloppy_tcp: bool,
    /// Where new connections go while the service has lost its quorum
    /// (keepalived's `sorry_server`): a server of the VIP's family, not
    /// one of the backends, never health-checked.
    pub sorry_server: Option<IpAddr>,
    /// The weight of up backends the service needs (keepalived's `quorum`,
    /// default 1): below it, with a sorry server, new connections go to
    /// the sorry server alone.
    pub quorum: u32,
    /// Dampens quorum flapping (keepalived's `hysteresis`, default 0, below
    /// `quorum`): quorum is lost below `quorum - hysteresis` and regained
    /// at `quorum + hysteresis`.
    pub hysteresis: u32,
    /// Client persistence (keepalived's `persistence_timeout` and
    /// `persistence_granularity`, IPVS's `-p` and `-M`), if any.
    pub persistence: Option<Persistence>,
    /// The VLAN ids of the frames the service takes, outermost first: none
    /// (the default) for untagged frames, one (`vlan = 4001`) for an
    /// 802.1Q VLAN, two (`vlan = [100, 4001]`) for QinQ; each 1 to 4094.
    pub vlan: Vec<u16>,
    /// Health check of the backends.
    pub health: HealthConfig,
    /// The real servers (`[[service.backend]]`), 1 to
    /// [`lb_common::MAX_BACKENDS`], of the VIP's address family, each listed
    /// once.
    pub backends: Vec<BackendConfig>,
}

/// Client persistence: while a client's template lives, its new
/// connections go to the backend its first one went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Persistence {
    /// How long a template lives after the client's last connection
    /// (`persistence_timeout`, 1 s to 7 days).
    pub timeout: Duration,
    /// How many leading bits of the client's address a template covers
    /// (`persistence_netmask`: default 32 for IPv4, 128 for IPv6; 24 puts a
    /// whole /24 on one backend).
    pub prefix: u8,
}

/// Transport protocol of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl ServiceConfig {
    /// Every server the director forwards to: the backends, then the sorry
    /// server.
    pub fn servers(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.backends
            .iter()
            .map(|b| b.address)
            .chain(self.sorry_server)
    }

    /// The data path's value of this service under id `id`.
    pub fn service_value(&self, id: u32) -> lb_common::Service {
        let (persistence_timeout_s, persistence_prefix) = self.persistence.map_or((0, 0), |p| {
            (
                u32::try_from(p.timeout.as_secs()).unwrap_or(u32::MAX),
                u32::from(p.prefix),
            )
        });
        lb_common::Service {
            id,
            flags: self.flags(),
            persistence_timeout_s,
            persistence_prefix,
            scheduler: self.scheduler.number(),
        }
    }

    /// The `SERVICE_FLAG_*` bits the data path acts on for this service.
    pub fn flags(&self) -> u32 {
        let sloppy = if self.sloppy_tcp {
            lb_common::SERVICE_FLAG_SLOPPY_TCP
        } else {
            0
        };
        self.no_backend.flags() | sloppy
    }

    /// The VLAN path the data path matches the service's frames on (see
    /// [`lb_common::vlan`]).
    pub fn vlan_path(&self) -> u32 {
        lb_common::vlan_path(&self.vlan)
    }
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

/// What a new connection gets when no backend of its service is up with a
/// weight above zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoBackend {
    /// Its packets are dropped (the default): the client retries its SYN.
    Drop,
    /// A TCP SYN is answered with a TCP RST from XDP, so the client fails
    /// at once (TCP services only).
    Reject,
}

impl NoBackend {
    /// The `SERVICE_FLAG_*` bits the data path acts on.
    pub fn flags(self) -> u32 {
        match self {
            NoBackend::Drop => 0,
            NoBackend::Reject => lb_common::SERVICE_FLAG_REJECT,
        }
    }
}

/// How a service picks the backend of a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduler {
    /// Weighted least-connection, exactly as IPVS.
    Wlc,
    /// Round robin over the backends that take new flows.
    Rr,
    /// Weighted round robin.
    Wrr,
    /// Source hashing: a client's connections go to one backend (weighted,
    /// consistent: a Maglev table indexed by the client address).
    Sh,
    /// Maglev hashing of the 5-tuple (weighted, consistent): directors with
    /// the same config agree on every flow.
    Mh,
}

impl Scheduler {
    /// The data path's `SCHEDULER_*` number.
    pub fn number(self) -> u32 {
        match self {
            Scheduler::Wlc => lb_common::SCHEDULER_WLC,
            Scheduler::Rr => lb_common::SCHEDULER_RR,
            Scheduler::Wrr => lb_common::SCHEDULER_WRR,
            Scheduler::Sh => lb_common::SCHEDULER_SH,
            Scheduler::Mh => lb_common::SCHEDULER_MH,
        }
    }
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
    /// The director address checks leave from (keepalived `bindto`);
    /// `None`: the director's own address in each backend's prefix on the
    /// NIC it is on-link through, never a VIP.
    pub bind_to: Option<IpAddr>,
}

impl HealthConfig {
    /// The `[service.health]` table that sets only `kind`, of a service on
    /// `port`: every other setting at its default.
    pub fn new(kind: HealthKind, port: u16) -> Self {
        HealthConfig {
            kind,
            interval: DEFAULT_HEALTH_INTERVAL,
            timeout: default_health_timeout(DEFAULT_HEALTH_INTERVAL),
            port,
            fall: DEFAULT_FALL,
            rise: DEFAULT_RISE,
            retry_delay: DEFAULT_HEALTH_INTERVAL,
            warmup: DEFAULT_HEALTH_INTERVAL,
            inhibit_on_failure: false,
            notify: Vec::new(),
            bind_to: None,
        }
    }
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
        validate::validate(text, &raw).map_err(|problems| ConfigError {
            origin: origin.to_owned(),
            problems,
        })
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
    const ALL: &'static [Self] = &[
        Scheduler::Wlc,
        Scheduler::Rr,
        Scheduler::Wrr,
        Scheduler::Sh,
        Scheduler::Mh,
    ];
    fn keyword(self) -> &'static str {
        match self {
            Scheduler::Wlc => "wlc",
            Scheduler::Rr => "rr",
            Scheduler::Wrr => "wrr",
            Scheduler::Sh => "sh",
            Scheduler::Mh => "mh",
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

/// The value written `text` (in any case), or why there is none:
/// `"turbo" is not supported (valid: driver, skb)`.
fn parse_keyword<T: Keyword>(text: &str) -> Result<T, String> {
    T::ALL
        .iter()
        .copied()
        .find(|k| k.keyword().eq_ignore_ascii_case(text))
        .ok_or_else(|| format!("{text:?} is not supported (valid: {})", keywords::<T>()))
}

/// The words of `scheduler` (and keepalived's `lb_algo`): `wlc`, `rr`,
/// `wrr`, `sh`, `mh`.
impl FromStr for Scheduler {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_keyword(text)
    }
}

/// The words of `xdp_mode` (and `lb run --xdp-mode`): `driver`, `skb`.
impl FromStr for XdpMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_keyword(text)
    }
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

impl Keyword for NoBackend {
    const ALL: &'static [Self] = &[NoBackend::Drop, NoBackend::Reject];
    fn keyword(self) -> &'static str {
        match self {
            NoBackend::Drop => "drop",
            NoBackend::Reject => "reject",
        }
    }
}

impl fmt::Display for NoBackend {
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
// Defaults

/// Default `[director] pin_path`.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/lb";

/// Where bpffs is mounted (by `lb run` if no one did): `pin_path` must lie
/// below it.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
const DEFAULT_CONTROL_SOCKET: &str = "/run/lb/lb.sock";
const DEFAULT_HTTP_PATH: &str = "/";
const DEFAULT_HTTP_STATUS: u16 = 200;
const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_FALL: u32 = 3;
const DEFAULT_RISE: u32 = 2;
const DEFAULT_WEIGHT: u32 = 1;
/// keepalived's default `quorum`: one unit of weight.
const DEFAULT_QUORUM: u32 = 1;

/// The default `timeout` of a check every `interval`: 3 s, or the interval
/// if that is shorter.
fn default_health_timeout(interval: Duration) -> Duration {
    interval.min(DEFAULT_HEALTH_TIMEOUT)
}
