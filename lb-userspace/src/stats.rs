//! `lb stats`: per service and per backend counters read from the pinned
//! maps of a running director, like `ipvsadm -L -n --stats` (and `--rate`).
//!
//! The maps hold no service names: [`ServiceNames`] takes them from the
//! config file, and a service the config does not name shows as
//! `VIP:PORT/proto`. [`InspectConfig`] resolves the config and pin path the
//! read-only commands (`lb stats`, `lb conns`) use.

use std::{collections::HashMap, fmt::Write as _, io, net::IpAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use lb_common::{
    BACKEND_STATE_DOWN, BACKEND_STATE_EMPTY, BACKEND_STATE_REMOVED, BACKEND_STATE_UP, Counters,
    PROTO_TCP, PROTO_UDP, backend_index, reason_name,
};
use serde::Serialize;

use crate::{
    config::{Config, DEFAULT_PIN_PATH, values::format_mac},
    datapath::{Maps, addr_from_key, array_get},
    sweeper::monotonic_ns,
};

/// Config file the read-only commands use when `--config` is not given (and
/// it exists).
pub const DEFAULT_CONFIG: &str = "/etc/lb/lb.toml";

/// The config and pin path of a read-only command (`lb stats`, `lb conns`).
#[derive(Debug)]
pub struct InspectConfig {
    /// The config file, if one was given or [`DEFAULT_CONFIG`] exists.
    pub config: Option<Config>,
    /// `--pin-path`, else the config's `pin_path`, else [`DEFAULT_PIN_PATH`].
    pub pin_path: PathBuf,
}

impl InspectConfig {
    /// Loads `config` (or [`DEFAULT_CONFIG`] when it exists) and picks the
    /// pin path. A config that exists but is invalid is an error: its
    /// service names and pin path would otherwise be silently wrong.
    pub fn resolve(pin_path: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<Self> {
        let path = config.or_else(|| {
            let default = PathBuf::from(DEFAULT_CONFIG);
            default.exists().then_some(default)
        });
        let config = match path {
            Some(path) => Some(Config::load(&path).with_context(|| {
                format!(
                    "reading {} for service names and the pin path (give another with --config)",
                    path.display()
                )
            })?),
            None => None,
        };
        let pin_path = pin_path
            .or_else(|| config.as_ref().map(|c| c.director.pin_path.clone()))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_PATH));
        Ok(Self { config, pin_path })
    }

    /// The service names of the config (none without one).
    pub fn names(&self) -> ServiceNames {
        ServiceNames::from_config(self.config.as_ref())
    }
}

/// Service names by (VIP, port, protocol), from the config.
#[derive(Clone, Debug, Default)]
pub struct ServiceNames {
    by_key: HashMap<(IpAddr, u16, u8), String>,
}

impl ServiceNames {
    /// The names of `config`'s services (none without a config).
    pub fn from_config(config: Option<&Config>) -> Self {
        let by_key = config
            .iter()
            .flat_map(|c| &c.services)
            .map(|s| ((s.vip, s.port, s.protocol.number()), s.name.clone()))
            .collect();
        Self { by_key }
    }

    /// The name of the service (`vip`, `port`, `proto`): the config's, else
    /// `VIP:PORT/proto`.
    pub fn name(&self, vip: IpAddr, port: u16, proto: u8) -> String {
        match self.by_key.get(&(vip, port, proto)) {
            Some(name) => name.clone(),
            None => format!("{}/{}", endpoint(vip, port), protocol_name(proto)),
        }
    }
}

/// Everything `lb stats` shows.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Services, ordered by id.
    pub services: Vec<ServiceStats>,
    /// Frames per verdict reason, over all services.
    pub verdicts: Vec<VerdictStats>,
    /// CLOCK_MONOTONIC (ns) when the counters were read, for rates.
    #[serde(skip)]
    pub read_at_ns: u64,
}

/// One virtual service.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceStats {
    /// Service id (index in the maps).
    pub id: u32,
    /// Name from the config, else `VIP:PORT/proto`.
    pub name: String,
    /// Virtual IP.
    pub vip: IpAddr,
    /// Virtual port.
    pub port: u16,
    /// "tcp" or "udp".
    pub protocol: &'static str,
    /// Connections scheduled (IPVS Conns).
    pub conns: u64,
    /// Packets forwarded (InPkts).
    pub in_pkts: u64,
    /// IP-layer bytes forwarded (InBytes).
    pub in_bytes: u64,
    /// Flows in ESTABLISHED over all backends (ActiveConn).
    pub active_conns: u64,
    /// Flows in other states over all backends (InActConn).
    pub inactive_conns: u64,
    /// Rates between two readings (`lb stats --rate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rates>,
    /// The real servers.
    pub backends: Vec<BackendStats>,
}

/// One real server of a service.
#[derive(Clone, Debug, Serialize)]
pub struct BackendStats {
    /// Slot within the service.
    pub slot: u32,
    /// Real server address.
    pub address: IpAddr,
    /// MAC frames are sent to.
    pub mac: String,
    /// WLC weight.
    pub weight: u32,
    /// "up", "down" (health check failed, or MAC not resolved yet),
    /// "removed" (taken out of the config, flows finishing), or the raw
    /// state number.
    pub state: String,
    /// Flows in ESTABLISHED (ActiveConn).
    pub active_conns: u64,
    /// Flows in other states (InActConn).
    pub inactive_conns: u64,
    /// Connections scheduled to it (Conns).
    pub conns: u64,
    /// Packets forwarded to it (InPkts).
    pub in_pkts: u64,
    /// IP-layer bytes forwarded to it (InBytes).
    pub in_bytes: u64,
    /// Rates between two readings (`lb stats --rate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rates>,
}

/// Per-second rates between two readings, as `ipvsadm -L --rate` shows
/// them (but a plain difference over the interval, not the kernel's
/// exponentially weighted estimator).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Rates {
    /// Connections scheduled per second (CPS).
    pub cps: u64,
    /// Packets forwarded per second (InPPS).
    pub in_pps: u64,
    /// IP-layer bytes forwarded per second (InBPS).
    pub in_bps: u64,
}

/// Frames that got one verdict reason.
#[derive(Clone, Debug, Serialize)]
pub struct VerdictStats {
    /// Reason name (`forwarded`, `pass_no_service`, `drop_malformed`, ...).
    pub reason: &'static str,
    /// Frames.
    pub packets: u64,
    /// IP-layer bytes.
    pub bytes: u64,
}

impl Snapshot {
    /// Reads every counter from the maps; services are named `VIP:PORT/proto`
    /// (see [`Snapshot::read_named`]).
    pub fn read(maps: &Maps) -> anyhow::Result<Self> {
        Self::read_named(maps, &ServiceNames::default())
    }

    /// Reads every counter from the maps, naming services from `names`.
    pub fn read_named(maps: &Maps, names: &ServiceNames) -> anyhow::Result<Self> {
        let mut services = Vec::new();
        for entry in maps.services.iter() {
            let (key, service) = entry?;
            let totals = maps.service_counters(service.id)?;
            let set = array_get(&maps.backends, service.id)?;
            let conns = array_get(&maps.backend_conns, service.id)?;
            let mut backends = Vec::new();
            for (slot, b) in set.backends.iter().enumerate().take(set.len as usize) {
                if b.state == BACKEND_STATE_EMPTY {
                    continue;
                }
                let c =
                    Maps::counters(&maps.backend_stats, backend_index(service.id, slot as u32))?;
                backends.push(BackendStats {
                    slot: slot as u32,
                    address: addr_from_key(b.addr, key.family),
                    mac: format_mac(&b.mac),
                    weight: b.weight,
                    state: backend_state_name(b.state),
                    // Transiently wrapped counters (a decrement racing the
                    // sweeper's reset) show as zero.
                    active_conns: nonnegative(conns.conns[slot].active),
                    inactive_conns: nonnegative(conns.conns[slot].inactive),
                    conns: c.new_conns,
                    in_pkts: c.packets,
                    in_bytes: c.bytes,
                    rate: None,
                });
            }
            let vip = addr_from_key(key.addr, key.family);
            services.push(ServiceStats {
                id: service.id,
                name: names.name(vip, key.port, key.proto),
                vip,
                port: key.port,
                protocol: protocol_name(key.proto),
                conns: totals.new_conns,
                in_pkts: totals.packets,
                in_bytes: totals.bytes,
                active_conns: backends.iter().map(|b| b.active_conns).sum(),
                inactive_conns: backends.iter().map(|b| b.inactive_conns).sum(),
                rate: None,
                backends,
            });
        }
        services.sort_by_key(|s| s.id);
        let forwarded = services.iter().fold(Counters::default(), |sum, s| {
            sum + Counters {
                packets: s.in_pkts,
                bytes: s.in_bytes,
                new_conns: s.conns,
            }
        });
        let verdicts = maps
            .verdict_counters(forwarded)?
            .into_iter()
            .zip(0..)
            .map(|(c, reason)| VerdictStats {
                reason: reason_name(reason),
                packets: c.packets,
                bytes: c.bytes,
            })
            .collect();
        Ok(Self {
            services,
            verdicts,
            read_at_ns: monotonic_ns(),
        })
    }

    /// Fills in the rates of every service and backend from an `earlier`
    /// reading: the counter differences divided by the time between the two
    /// readings. A service or backend absent from `earlier` (or whose
    /// counters went down: a restarted director) gets zero rates.
    pub fn set_rates(&mut self, earlier: &Snapshot) {
        let elapsed_ns = self.read_at_ns.saturating_sub(earlier.read_at_ns).max(1);
        for s in &mut self.services {
            let before = earlier
                .services
                .iter()
                .find(|e| e.id == s.id && e.vip == s.vip && e.port == s.port);
            s.rate = Some(rates(
                (s.conns, s.in_pkts, s.in_bytes),
                before.map(|e| (e.conns, e.in_pkts, e.in_bytes)),
                elapsed_ns,
            ));
            for b in &mut s.backends {
                let before = before
                    .and_then(|e| {
                        e.backends
                            .iter()
                            .find(|eb| eb.slot == b.slot && eb.address == b.address)
                    })
                    .map(|eb| (eb.conns, eb.in_pkts, eb.in_bytes));
                b.rate = Some(rates((b.conns, b.in_pkts, b.in_bytes), before, elapsed_ns));
            }
        }
    }

    /// The ipvsadm-style table (with CPS, InPPS and InBPS columns when the
    /// rates are set).
    pub fn table(&self) -> String {
        use Align::{Left, Right};
        let with_rates = self.services.iter().any(|s| s.rate.is_some());
        let mut header = vec![
            ("Prot", Left),
            ("LocalAddress:Port / -> RemoteAddress:Port", Left),
            ("Name", Left),
            ("Weight", Right),
            ("Health", Left),
            ("ActiveConn", Right),
            ("InActConn", Right),
            ("Conns", Right),
            ("InPkts", Right),
            ("InBytes", Right),
        ];
        if with_rates {
            header.extend([("CPS", Right), ("InPPS", Right), ("InBPS", Right)]);
        }
        let rate_cells = |rate: Option<Rates>| -> Vec<String> {
            match rate {
                Some(r) if with_rates => {
                    vec![
                        r.cps.to_string(),
                        r.in_pps.to_string(),
                        r.in_bps.to_string(),
                    ]
                }
                _ => Vec::new(),
            }
        };
        let mut rows: Vec<Vec<String>> = Vec::new();
        for s in &self.services {
            let mut row = vec![
                s.protocol.to_uppercase(),
                endpoint(s.vip, s.port),
                s.name.clone(),
                String::new(),
                String::new(),
                s.active_conns.to_string(),
                s.inactive_conns.to_string(),
                s.conns.to_string(),
                s.in_pkts.to_string(),
                s.in_bytes.to_string(),
            ];
            row.extend(rate_cells(s.rate));
            rows.push(row);
            for b in &s.backends {
                let mut row = vec![
                    String::new(),
                    format!("  -> {}", endpoint(b.address, s.port)),
                    String::new(),
                    b.weight.to_string(),
                    b.state.clone(),
                    b.active_conns.to_string(),
                    b.inactive_conns.to_string(),
                    b.conns.to_string(),
                    b.in_pkts.to_string(),
                    b.in_bytes.to_string(),
                ];
                row.extend(rate_cells(b.rate));
                rows.push(row);
            }
        }
        let mut out = Vec::new();
        write_aligned(&mut out, &header, &rows).expect("writing to a Vec cannot fail");

        out.extend_from_slice(b"\nVerdicts (all NICs):\n");
        let verdict_rows: Vec<Vec<String>> = self
            .verdicts
            .iter()
            .map(|v| {
                vec![
                    format!("  {}", v.reason),
                    v.packets.to_string(),
                    v.bytes.to_string(),
                ]
            })
            .collect();
        write_aligned(
            &mut out,
            &[("  Reason", Left), ("Packets", Right), ("Bytes", Right)],
            &verdict_rows,
        )
        .expect("writing to a Vec cannot fail");
        String::from_utf8(out).expect("the table is UTF-8")
    }
}

/// Rates from the counters (conns, packets, bytes) `now` and `before`.
fn rates(now: (u64, u64, u64), before: Option<(u64, u64, u64)>, elapsed_ns: u64) -> Rates {
    let Some(before) = before else {
        return Rates::default();
    };
    let per_second = |now: u64, before: u64| -> u64 {
        let delta = u128::from(now.saturating_sub(before));
        let elapsed = u128::from(elapsed_ns);
        // Rounded to the nearest integer, as ipvsadm prints them.
        u64::try_from((delta * 1_000_000_000 + elapsed / 2) / elapsed).unwrap_or(u64::MAX)
    };
    Rates {
        cps: per_second(now.0, before.0),
        in_pps: per_second(now.1, before.1),
        in_bps: per_second(now.2, before.2),
    }
}

/// Parses `--interval`: `1s`, `500ms`, `2m` or plain seconds (`1.5`); 10 ms
/// to 1 hour.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 1s, 500ms, 2)"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?} (valid: ms, s, m)"
            ));
        }
    };
    if !(0.01..=3600.0).contains(&seconds) {
        return Err(format!("{text:?} is out of range (valid: 10ms to 1h)"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// How a column is aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Text to the left (padded on the right).
    Left,
    /// Text to the right (numbers).
    Right,
}

/// Column widths computed from content, for the aligned tables of
/// `lb stats` and `lb conns`: [`Columns::measure`] every row, then
/// [`Columns::write_row`] them. Nothing is buffered, so a table of a million
/// rows costs two formatting passes and no memory.
#[derive(Clone, Debug)]
pub struct Columns {
    widths: Vec<usize>,
    align: Vec<Align>,
}

impl Columns {
    /// Columns sized for `header`.
    pub fn new(header: &[(&str, Align)]) -> Self {
        Self {
            widths: header.iter().map(|(h, _)| h.chars().count()).collect(),
            align: header.iter().map(|&(_, a)| a).collect(),
        }
    }

    /// Widens the columns to fit `cells`.
    pub fn measure<S: AsRef<str>>(&mut self, cells: &[S]) {
        for (w, cell) in self.widths.iter_mut().zip(cells) {
            *w = (*w).max(cell.as_ref().chars().count());
        }
    }

    /// Writes one row, columns separated by two spaces, no trailing blanks.
    pub fn write_row<S: AsRef<str>>(
        &self,
        out: &mut impl io::Write,
        cells: &[S],
    ) -> io::Result<()> {
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let width = self.widths.get(i).copied().unwrap_or(0);
            if i > 0 {
                line.push_str("  ");
            }
            let _ = match self.align.get(i).copied().unwrap_or(Align::Left) {
                Align::Left => write!(line, "{:<width$}", cell.as_ref()),
                Align::Right => write!(line, "{:>width$}", cell.as_ref()),
            };
        }
        writeln!(out, "{}", line.trim_end())
    }
}

/// Writes `header` and `rows` as an aligned table.
fn write_aligned(
    out: &mut impl io::Write,
    header: &[(&str, Align)],
    rows: &[Vec<String>],
) -> io::Result<()> {
    let mut columns = Columns::new(header);
    for row in rows {
        columns.measure(row);
    }
    let names: Vec<&str> = header.iter().map(|(h, _)| *h).collect();
    columns.write_row(out, &names)?;
    for row in rows {
        columns.write_row(out, row)?;
    }
    Ok(())
}

/// Name of a `BACKEND_STATE_*` value.
fn backend_state_name(state: u32) -> String {
    match state {
        BACKEND_STATE_UP => "up".to_owned(),
        BACKEND_STATE_DOWN => "down".to_owned(),
        BACKEND_STATE_REMOVED => "removed".to_owned(),
        other => other.to_string(),
    }
}

/// "tcp", "udp", or "unknown".
pub fn protocol_name(proto: u8) -> &'static str {
    match proto {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        _ => "unknown",
    }
}

/// A counter that may transiently read as negative (wrapped) shows as zero.
fn nonnegative(raw: u64) -> u64 {
    if (raw as i64) < 0 { 0 } else { raw }
}

/// `addr:port`, with brackets for IPv6.
pub fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn backend(slot: u32, address: &str, conns: u64, in_pkts: u64, in_bytes: u64) -> BackendStats {
        BackendStats {
            slot,
            address: address.parse().unwrap(),
            mac: "02:00:00:00:00:11".to_owned(),
            weight: 1000,
            state: "up".to_owned(),
            active_conns: conns,
            inactive_conns: 0,
            conns,
            in_pkts,
            in_bytes,
            rate: None,
        }
    }

    fn snapshot(read_at_ns: u64, conns: u64, in_pkts: u64, in_bytes: u64) -> Snapshot {
        Snapshot {
            services: vec![ServiceStats {
                id: 0,
                name: "web".to_owned(),
                vip: "192.0.2.200".parse().unwrap(),
                port: 8080,
                protocol: "tcp",
                conns,
                in_pkts,
                in_bytes,
                active_conns: conns,
                inactive_conns: 0,
                rate: None,
                backends: vec![
                    backend(0, "192.0.2.11", conns, in_pkts, in_bytes),
                    backend(1, "192.0.2.12", 0, 0, 0),
                ],
            }],
            verdicts: vec![VerdictStats {
                reason: "forwarded",
                packets: in_pkts,
                bytes: in_bytes,
            }],
            read_at_ns,
        }
    }

    #[test]
    fn rates_are_differences_over_the_measured_interval() {
        const S: u64 = 1_000_000_000;
        let before = snapshot(10 * S, 100, 1_000, 60_000);
        let mut after = snapshot(12 * S, 130, 2_001, 120_000);
        after.set_rates(&before);
        let s = &after.services[0];
        assert_eq!(
            s.rate,
            Some(Rates {
                cps: 15,
                in_pps: 501, // 500.5 rounds up
                in_bps: 30_000,
            })
        );
        assert_eq!(s.backends[0].rate, s.rate);
        assert_eq!(s.backends[1].rate, Some(Rates::default()));

        // Counters that went down (a restarted director) and services that
        // were not there before give zero.
        let mut restarted = snapshot(13 * S, 1, 1, 1);
        restarted.set_rates(&after);
        assert_eq!(restarted.services[0].rate, Some(Rates::default()));
        let mut empty_before = snapshot(10 * S, 0, 0, 0);
        empty_before.services.clear();
        let mut new = snapshot(11 * S, 5, 5, 5);
        new.set_rates(&empty_before);
        assert_eq!(new.services[0].rate, Some(Rates::default()));
    }

    #[test]
    fn json_keeps_the_field_names_and_adds_name_and_rate() {
        let snap = snapshot(0, 3, 12, 720);
        let json = serde_json::to_value(&snap).unwrap();
        let s = &json["services"][0];
        for field in [
            "id", "name", "vip", "port", "protocol", "conns", "in_pkts", "in_bytes", "backends",
        ] {
            assert!(s.get(field).is_some(), "service field {field}: {s}");
        }
        assert!(s.get("rate").is_none(), "no rate without --rate: {s}");
        let b = &s["backends"][0];
        for field in [
            "slot",
            "address",
            "mac",
            "weight",
            "state",
            "active_conns",
            "inactive_conns",
            "conns",
            "in_pkts",
            "in_bytes",
        ] {
            assert!(b.get(field).is_some(), "backend field {field}: {b}");
        }
        assert!(json.get("read_at_ns").is_none());
        let mut later = snapshot(1_000_000_000, 4, 14, 800);
        later.set_rates(&snap);
        let json = serde_json::to_value(&later).unwrap();
        assert_eq!(
            json["services"][0]["rate"],
            serde_json::json!({"cps": 1, "in_pps": 2, "in_bps": 80})
        );
        assert_eq!(
            json["services"][0]["backends"][0]["rate"],
            serde_json::json!({"cps": 1, "in_pps": 2, "in_bps": 80})
        );
    }

    #[test]
    fn table_columns_fit_their_content() {
        let table = snapshot(0, 30, 120, 6_480).table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[..4],
            [
                "Prot  LocalAddress:Port / -> RemoteAddress:Port  Name  Weight  Health  ActiveConn  InActConn  Conns  InPkts  InBytes",
                "TCP   192.0.2.200:8080                           web                           30          0     30     120     6480",
                "        -> 192.0.2.11:8080                               1000  up              30          0     30     120     6480",
                "        -> 192.0.2.12:8080                               1000  up               0          0      0       0        0",
            ]
        );
        assert_eq!(
            lines[4..],
            [
                "",
                "Verdicts (all NICs):",
                "  Reason     Packets  Bytes",
                "  forwarded      120   6480",
            ]
        );
        let mut later = snapshot(2_000_000_000, 32, 140, 7_680);
        later.set_rates(&snapshot(0, 30, 120, 6_480));
        let table = later.table();
        let first = table.lines().next().unwrap();
        assert!(first.ends_with("InBytes  CPS  InPPS  InBPS"), "{first}");
        let service = table.lines().nth(1).unwrap();
        assert!(service.ends_with("7680    1     10    600"), "{service}");
    }

    #[test]
    fn service_names_come_from_the_config_else_the_address() {
        let config = Config::parse(
            r#"
[director]
interfaces = ["eth0"]

[[service]]
name = "gridftp"
vip = "192.0.2.200"
port = 2811
protocol = "tcp"

[[service.backend]]
address = "192.0.2.11"
weight = 1
"#,
            "test.toml",
        )
        .unwrap();
        let names = ServiceNames::from_config(Some(&config));
        let vip: IpAddr = "192.0.2.200".parse().unwrap();
        assert_eq!(names.name(vip, 2811, PROTO_TCP), "gridftp");
        assert_eq!(names.name(vip, 2811, PROTO_UDP), "192.0.2.200:2811/udp");
        let v6: IpAddr = "2001:db8::200".parse().unwrap();
        assert_eq!(
            ServiceNames::from_config(None).name(v6, 53, PROTO_UDP),
            "[2001:db8::200]:53/udp"
        );
    }

    #[test]
    fn inspect_config_picks_the_pin_path() {
        let dir = std::env::temp_dir().join(format!("lb-stats-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lb.toml");
        std::fs::write(
            &path,
            r#"
[director]
interfaces = ["eth0"]
pin_path = "/sys/fs/bpf/lb-test"

[[service]]
name = "web"
vip = "192.0.2.200"
port = 80
protocol = "tcp"

[[service.backend]]
address = "192.0.2.11"
weight = 1
"#,
        )
        .unwrap();
        let from_config = InspectConfig::resolve(None, Some(path.clone())).unwrap();
        assert_eq!(from_config.pin_path, Path::new("/sys/fs/bpf/lb-test"));
        let vip: IpAddr = "192.0.2.200".parse().unwrap();
        assert_eq!(from_config.names().name(vip, 80, PROTO_TCP), "web");
        let explicit =
            InspectConfig::resolve(Some(PathBuf::from("/sys/fs/bpf/other")), Some(path.clone()))
                .unwrap();
        assert_eq!(explicit.pin_path, Path::new("/sys/fs/bpf/other"));
        std::fs::write(&path, "[director]\n").unwrap();
        let e = InspectConfig::resolve(None, Some(path.clone())).unwrap_err();
        assert!(format!("{e:#}").contains("--config"), "{e:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_interval("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_interval("1h").unwrap_err().contains("unit"));
        assert!(parse_interval("0").unwrap_err().contains("range"));
        assert!(
            parse_interval("fast")
                .unwrap_err()
                .contains("not a duration")
        );
    }
}
