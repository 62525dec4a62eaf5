//! The output of `lb stats --json` (and `--rate`), typed.

use std::{ffi::OsStr, net::IpAddr, path::Path, process::Command};

use anyhow::Context as _;
use lb::inspect::stats::{FlowTables, NicStats};
use serde::Deserialize;

use crate::cmd;

/// Everything `lb stats --json` reports.
#[derive(Clone, Debug, Deserialize)]
pub struct Stats {
    /// One entry per configured service.
    pub services: Vec<ServiceStats>,
    /// Packet counts per verdict reason.
    pub verdicts: Vec<VerdictStats>,
    /// The connection tables' occupancy (`lb`'s own type).
    pub flows: FlowTables,
    /// What each director NIC forwarded (`lb`'s own type).
    pub nics: Vec<NicStats>,
    /// Connection sync with the other directors (`None` from an lb
    /// without it).
    #[serde(default)]
    pub sync: Option<SyncStats>,
    /// The SYN-flood guard (`None` from an lb without it).
    #[serde(default)]
    pub flood: Option<FloodStats>,
}

/// The `flood` object of `lb stats --json`: lb's own type.
pub use lb::inspect::stats::FloodStats;

/// The `sync` object of `lb stats --json`: lb's own type.
pub use lb::sync::SyncStats;

/// [`SyncStats`]' rejection counters at once.
pub trait SyncRejections {
    /// The three rejection counters: (auth, replay, malformed).
    fn rejected(&self) -> (u64, u64, u64);
}

impl SyncRejections for SyncStats {
    fn rejected(&self) -> (u64, u64, u64) {
        (
            self.messages_rejected_auth,
            self.messages_rejected_replay,
            self.messages_rejected_malformed,
        )
    }
}

/// Counters of one service.
#[derive(Clone, Debug, Deserialize)]
pub struct ServiceStats {
    /// Service id (index in the data path's maps).
    pub id: u32,
    /// Name from the config (`--config`), else `VIP:PORT/proto`.
    pub name: String,
    /// The virtual IP.
    pub vip: IpAddr,
    /// The port it is known by (its first; 0: every port).
    pub port: u16,
    /// Every port it covers (`2811,50000-51000`; `0`: every port).
    pub ports: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The VLAN ids of its frames, outermost first (none: untagged).
    pub vlan: Vec<u16>,
    /// New connections (flows) scheduled.
    pub conns: u64,
    /// Packets forwarded.
    pub in_pkts: u64,
    /// Bytes forwarded.
    pub in_bytes: u64,
    /// Connections in ESTABLISHED over all its real servers.
    pub active_conns: u64,
    /// Connections in other states over all its real servers.
    pub inactive_conns: u64,
    /// Persistence templates over all its real servers.
    pub persist_conns: u64,
    /// Rates, with `--rate`.
    #[serde(default)]
    pub rate: Option<Rate>,
    /// Its real servers.
    pub backends: Vec<BackendStats>,
}

/// Counters and state of one real server of a service.
#[derive(Clone, Debug, Deserialize)]
pub struct BackendStats {
    /// Slot in the service's backend set.
    pub slot: u32,
    /// Real server address.
    pub address: IpAddr,
    /// MAC the data path sends to.
    pub mac: String,
    /// Scheduling weight.
    pub weight: u32,
    /// `up`, `down` (health check) or `removed`.
    pub state: String,
    /// Connections in ESTABLISHED.
    pub active_conns: u64,
    /// Connections in other states.
    pub inactive_conns: u64,
    /// New connections scheduled to it.
    pub conns: u64,
    /// Packets forwarded to it.
    pub in_pkts: u64,
    /// Bytes forwarded to it.
    pub in_bytes: u64,
    /// Rates, with `--rate`.
    #[serde(default)]
    pub rate: Option<Rate>,
}

/// Per-second rates between two readings (`lb stats --rate`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Rate {
    /// New connections per second (CPS).
    pub cps: u64,
    /// Packets forwarded per second (InPPS).
    pub in_pps: u64,
    /// Bytes forwarded per second (InBPS).
    pub in_bps: u64,
}

/// Packet count of one verdict reason.
#[derive(Clone, Debug, Deserialize)]
pub struct VerdictStats {
    /// Reason name, e.g. `forwarded` or `no_service`.
    pub reason: String,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

impl Stats {
    /// Runs `LB stats --pin-path PIN --json`, where `lb` is a command that
    /// runs the `lb` binary, and parses it.
    pub fn query(mut lb: Command, pin_path: &Path) -> anyhow::Result<Self> {
        let out = cmd::run(
            lb.arg("stats")
                .arg("--pin-path")
                .arg(pin_path)
                .arg("--json"),
        )?;
        serde_json::from_str(&out).with_context(|| format!("parsing `lb stats --json`: {out}"))
    }

    /// Runs `LB stats ARGS... --json` (e.g. `--config FILE --rate`) and parses it.
    pub fn query_args<S: AsRef<OsStr>>(lb: &Path, args: &[S]) -> anyhow::Result<Self> {
        let out = cmd::run(Command::new(lb).arg("stats").args(args).arg("--json"))?;
        serde_json::from_str(&out).with_context(|| format!("parsing `lb stats --json`: {out}"))
    }

    /// Packets of verdict `reason` (0 for a reason lb does not report).
    pub fn verdict_packets(&self, reason: &str) -> u64 {
        self.verdicts
            .iter()
            .find(|v| v.reason == reason)
            .map_or(0, |v| v.packets)
    }

    /// The service on `vip`:`port`, if any.
    pub fn service(&self, vip: IpAddr, port: u16) -> Option<&ServiceStats> {
        self.services
            .iter()
            .find(|s| s.vip == vip && s.port == port)
    }
}

impl Stats {
    /// Every backend, of every service, that is not up.
    pub fn backends_not_up(&self) -> Vec<&BackendStats> {
        self.services
            .iter()
            .flat_map(|s| &s.backends)
            .filter(|b| b.state != "up")
            .collect()
    }

    /// The `sync` object, or an error saying lb reported none (an lb
    /// without sync, or one run without a `[sync]` section).
    pub fn sync(&self) -> anyhow::Result<&SyncStats> {
        self.sync
            .as_ref()
            .context("`lb stats --json` has no \"sync\" object")
    }

    /// The `flood` object, or an error saying lb reported none (an lb
    /// without the SYN-flood guard).
    pub fn flood(&self) -> anyhow::Result<&FloodStats> {
        self.flood
            .as_ref()
            .context("`lb stats --json` has no \"flood\" object")
    }

    /// Flows in the connection and pending tables, both families: what
    /// forged sync messages must not change.
    pub fn flow_count(&self) -> u64 {
        let FlowTables { ipv4, ipv6 } = self.flows;
        ipv4.flows + ipv4.pending + ipv6.flows + ipv6.pending
    }

    /// Packets forwarded over all services.
    pub fn forwarded_pkts(&self) -> u64 {
        self.services.iter().map(|s| s.in_pkts).sum()
    }
}

impl Stats {
    /// The counters of the director NIC `name`, if lb attached to it.
    pub fn nic(&self, name: &str) -> Option<&NicStats> {
        self.nics.iter().find(|n| n.name == name)
    }
}

impl ServiceStats {
    /// The backend with address `address`, if any.
    pub fn backend(&self, address: IpAddr) -> Option<&BackendStats> {
        self.backends.iter().find(|b| b.address == address)
    }
}
